//! The `tollgate router` commands' stable interface: what other tools parse.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const LIGHT: &str = "mixtral-8x7b-instruct";
const HEAVY: &str = "gpt-4-1106-preview";

fn tollgate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn score_writes_one_score_line_per_input_line_and_nothing_else() {
    let input = concat!(
        r#"{"prompt": "Prove that the square root of 2 is irrational."}"#,
        "\n",
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Convert this CSV to a markdown table: a,b\n1,2"}]}]}"#,
        "\n",
        r#"{"prompt": ""}"#,
        "\n",
        r#"{"prompt": "hi", "extra": {"ignored": true}}"#,
        "\n\n",
    );
    let out = tollgate(&["router", "score", "--input", "-"], Some(input));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for l in &lines {
        assert!(l.starts_with("{\"score\": "), "{l}");
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
        let s = v["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s), "{l}");
    }
    // Short prompts: the lowest score.
    assert_eq!(lines[2], "{\"score\": 0}");
    assert_eq!(lines[3], "{\"score\": 0}");
}

#[test]
fn a_bad_line_fails_the_command_with_nothing_on_stdout() {
    let input = "{\"prompt\": \"fine prompt here ok\"}\nnot json\n{\"prompt\": 3}\n";
    let out = tollgate(&["router", "score", "--input", "-"], Some(input));
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:") && err.contains(":3:"), "{err}");
}

#[test]
fn eval_prints_the_metrics_and_dollar_savings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("costed.jsonl");
    // dev rows with per-model costs: the heavy model costs 10x the light one.
    let dev = std::fs::read_to_string(repo("data/router/dev.jsonl")).unwrap();
    let mut f = std::fs::File::create(&data).unwrap();
    for line in dev.lines().take(400) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["costs"] = serde_json::json!({LIGHT: 0.0002, HEAVY: 0.002});
        writeln!(f, "{v}").unwrap();
    }
    drop(f);
    let data = data.to_string_lossy().into_owned();
    let args = [
        "router", "eval", "--data", &data, "--light", LIGHT, "--heavy", HEAVY,
    ];
    let out = tollgate(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "rows: 400",
        "APGR: 0.",
        "APGR (RouteLLM trapezoid): 0.",
        "CPT(50%): ",
        "CPT(80%): ",
        "at 95% of heavy quality (best threshold on this data): ",
        "saving $",
        "of $0.800000000",
    ] {
        assert!(text.contains(key), "{key:?} not in\n{text}");
    }
    let out = tollgate(&[&args[..], &["--json"]].concat(), None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["apgr"].as_f64().unwrap() > 0.5);
    let at = &v["at_95pct_heavy_quality"];
    assert_eq!(at["cost_all_heavy_usd"], "0.800000000");
    assert!(at["saving_fraction"].as_f64().unwrap() > 0.0);
}

#[test]
fn train_writes_a_model_that_score_and_eval_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("small.jsonl");
    let dev = std::fs::read_to_string(repo("data/router/dev.jsonl")).unwrap();
    std::fs::write(&data, dev.lines().take(300).collect::<Vec<_>>().join("\n")).unwrap();
    let model = dir.path().join("m.bin");
    let (data, model) = (
        data.to_string_lossy().into_owned(),
        model.to_string_lossy().into_owned(),
    );
    let out = tollgate(
        &[
            "router", "train", "--data", &data, "--light", LIGHT, "--heavy", HEAVY, "--out",
            &model, "--bits", "14", "--cv", "3",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("converged") && text.contains("3-fold CV"),
        "{text}"
    );
    let out = tollgate(
        &["router", "score", "--input", &data, "--model", &model],
        None,
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 300);
    let out = tollgate(
        &[
            "router", "eval", "--data", &data, "--light", LIGHT, "--heavy", HEAVY, "--model",
            &model,
        ],
        None,
    );
    assert!(out.status.success());
}

//! The `tollgate cache similarity` command's stable interface: what other tools parse.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tollgate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

#[test]
fn similarity_writes_one_score_per_line_and_the_threshold_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"cached": "How do I reset my password?", "query": "I forgot my password, how can I get a new one?"}"#,
            "\n",
            r#"{"cached": "How do I reset my password?", "query": "What is the capital of Australia?", "label": 0}"#,
            "\n",
            r#"{"cached": "", "query": "anything"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = tollgate(
        &["cache", "similarity", "--input", path.to_str().unwrap()],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let scores: Vec<f64> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 1, "only the score: {l}");
            v["score"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(scores.len(), 3);
    assert!(
        scores[0] > scores[1] + 0.2,
        "paraphrase {} vs unrelated {}",
        scores[0],
        scores[1]
    );
    assert_eq!(scores[2], 0.0, "an empty text is the zero vector");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let summary = stderr.lines().last().unwrap();
    assert!(summary.starts_with("threshold=0."), "{stderr}");
    assert!(summary.contains("model=static-minilm-96"), "{stderr}");
    assert!(summary.contains("pairs=3"), "{stderr}");
    // the same through standard input
    let again = tollgate(
        &["cache", "similarity", "--input", "-"],
        &std::fs::read_to_string(&path).unwrap(),
    );
    assert_eq!(String::from_utf8(again.stdout).unwrap(), stdout);
}

#[test]
fn a_bad_line_names_its_number_and_writes_nothing() {
    let input = concat!(
        r#"{"cached": "a", "query": "b"}"#,
        "\n",
        r#"{"cached": "a"}"#,
        "\n"
    );
    let out = tollgate(&["cache", "similarity", "--input", "-"], input);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn a_model_dir_without_the_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate(
        &[
            "cache",
            "similarity",
            "--input",
            "-",
            "--model-dir",
            dir.path().to_str().unwrap(),
        ],
        r#"{"cached": "a", "query": "b"}"#,
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("model.safetensors")
    );
}

//! The `tollgate prune` command's stable interface: one pruned `messages` array per input
//! line on stdout, same order; errors name the line; `--stats` counts tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::process::{Command, Output};

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_LOG", "warn")
        .output()
        .unwrap()
}

fn conversation(steps: usize) -> Value {
    let mut m = vec![
        json!({"role": "system", "content": "You are a coding agent."}),
        json!({"role": "user", "content": "Fix the payments build."}),
    ];
    for i in 0..steps {
        let id = format!("call_{i}");
        let mut out: String = (0..40)
            .map(|j| format!("let total_{i}_{j} = ledger_sum(invoice_{j}, {j});\n"))
            .collect();
        if i == 0 {
            out.push_str("The release v3.1.4 is pinned to commit 9f2c41aa07be\n");
        }
        m.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]}));
        m.push(json!({"role": "tool", "tool_call_id": id, "content": out}));
    }
    m.push(json!({"role": "user", "content": "Which commit is release v3.1.4 pinned to?"}));
    json!({"messages": m, "id": "ignored"})
}

#[test]
fn prune_writes_one_array_per_line_keeping_the_needed_fact() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let stats = dir.path().join("stats.jsonl");
    let short = json!({"messages": [{"role": "user", "content": "hi"}]});
    std::fs::write(
        &input,
        format!("{}\n{}\n{}\n", conversation(30), short, conversation(10)),
    )
    .unwrap();
    let out = tollgate(&[
        "prune",
        "--input",
        input.to_str().unwrap(),
        "--ratio",
        "0.5",
        "--stats",
        stats.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    // Same messages, same order, roles and tool-call ids; the fact kept.
    for (got, want) in lines
        .iter()
        .zip([conversation(30), short.clone(), conversation(10)])
    {
        let got = got.as_array().unwrap();
        let want = want["messages"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["role"], w["role"]);
            assert_eq!(g["tool_call_id"], w["tool_call_id"]);
            assert_eq!(g["tool_calls"], w["tool_calls"]);
        }
        assert_eq!(got.last(), want.last());
    }
    assert_eq!(lines[1], short["messages"]);
    assert!(lines[0].to_string().contains("9f2c41aa07be"));
    assert!(lines[0].to_string().contains("[tollgate: "));
    let stats: Vec<Value> = std::fs::read_to_string(&stats)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stats.len(), 3);
    let (b, a) = (
        stats[0]["tokens_before"].as_u64().unwrap(),
        stats[0]["tokens_after"].as_u64().unwrap(),
    );
    assert!(a * 2 <= b + 100, "{b} → {a}");
    assert_eq!(stats[1]["tokens_before"], stats[1]["tokens_after"]);
}

#[test]
fn a_bad_line_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        format!("{}\n{{\"messages\": 3}}\n", conversation(2)),
    )
    .unwrap();
    let out = tollgate(&[
        "prune",
        "--input",
        input.to_str().unwrap(),
        "--target-tokens",
        "100",
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");

    std::fs::write(&input, "not json\n").unwrap();
    let out = tollgate(&[
        "prune",
        "--input",
        input.to_str().unwrap(),
        "--ratio",
        "0.5",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));

    // A target is required, and a ratio must be a share.
    let out = tollgate(&["prune", "--input", input.to_str().unwrap()]);
    assert!(!out.status.success());
    let out = tollgate(&["prune", "--input", input.to_str().unwrap(), "--ratio", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ratio"));
}

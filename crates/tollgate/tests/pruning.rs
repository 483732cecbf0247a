//! Token pruning through the gateway in the three ingress formats (OpenAI chat,
//! Anthropic Messages, Bedrock Converse), in front of the simulator: a long tool-heavy
//! history is pruned before it is sent (the upstream reports fewer prompt tokens), the
//! response says how many tokens before and after, the ledger row records them and the
//! cost of the unpruned prompt, the savings view shows a `pruning` line, and
//! `x-tollgate-prune: off` sends the history whole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tollgate_providers::bedrock::model_path;
use tollgate_testkit::harness::{MASTER_KEY, TestGateway};
use tollgate_testkit::sim::{self, SimConfig, SimUpstream};

const FACT: &str = "STAGING_DB_PORT=26433";
const QUESTION: &str = "Before you finish: which port does the staging database listen on?";

async fn setup() -> (SimUpstream, TestGateway) {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let v1 = sim.base_url();
    let origin = v1.trim_end_matches("/v1").to_string();
    let cfg = format!(
        r#"
[pruning]
enabled = true
trigger_tokens = 3000
ratio = 0.5

[[upstreams]]
name = "oai"
kind = "openai"
base_url = "{v1}"
[[upstreams]]
name = "ant"
kind = "anthropic"
base_url = "{v1}"
api_key_env = "ANTHROPIC_TEST_KEY"
[[upstreams]]
name = "aws"
kind = "bedrock"
base_url = "{origin}"
region = "us-east-1"

[[deployments]]
name = "gpt-4o-mini"
upstream = "oai"
[[deployments]]
name = "claude-haiku-4-5"
upstream = "ant"
[[deployments]]
name = "us.amazon.nova-2-lite-v1:0"
upstream = "aws"
"#
    );
    let env: HashMap<String, String> = [
        ("ANTHROPIC_TEST_KEY", "sk-ant"),
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let gw = TestGateway::start(&cfg, env).await;
    (sim, gw)
}

fn http() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Tool output number `i`: 40 lines of code, the fact in output 1.
fn output(i: usize) -> String {
    let mut s: String = (0..40)
        .map(|j| format!("    let total_{i}_{j} = ledger_sum(invoice_{j}, account_{i}, {j});\n"))
        .collect();
    if i == 1 {
        s.push_str(FACT);
    }
    s
}

const STEPS: usize = 24;

#[derive(Debug, Clone, Copy)]
enum Format {
    OpenAi,
    Anthropic,
    Bedrock,
}

fn request(f: Format) -> (String, Value) {
    match f {
        Format::OpenAi => {
            let mut m = vec![
                json!({"role": "system", "content": "You are a coding agent."}),
                json!({"role": "user", "content": "Fix the failing payments build."}),
            ];
            for i in 0..STEPS {
                let id = format!("call_{i}");
                m.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "read_file", "arguments": "{}"}}]}));
                m.push(json!({"role": "tool", "tool_call_id": id, "content": output(i)}));
            }
            m.push(json!({"role": "user", "content": QUESTION}));
            (
                "/v1/chat/completions".into(),
                json!({"model": "gpt-4o-mini", "max_tokens": 50, "messages": m}),
            )
        }
        Format::Anthropic => {
            let mut m = vec![json!({"role": "user", "content": "Fix the failing payments build."})];
            for i in 0..STEPS {
                let id = format!("toolu_{i}");
                m.push(json!({"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "read_file", "input": {}}]}));
                m.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": output(i)}]}));
            }
            m.push(json!({"role": "assistant", "content": "Done reading."}));
            m.push(json!({"role": "user", "content": QUESTION}));
            (
                "/v1/messages".into(),
                json!({"model": "claude-haiku-4-5", "max_tokens": 50, "system": "You are a coding agent.", "messages": m}),
            )
        }
        Format::Bedrock => {
            let mut m = vec![
                json!({"role": "user", "content": [{"text": "Fix the failing payments build."}]}),
            ];
            for i in 0..STEPS {
                let id = format!("tooluse_{i}");
                m.push(json!({"role": "assistant", "content": [{"toolUse": {"toolUseId": id, "name": "read_file", "input": {}}}]}));
                m.push(json!({"role": "user", "content": [{"toolResult": {"toolUseId": id, "content": [{"text": output(i)}]}}]}));
            }
            m.push(json!({"role": "assistant", "content": [{"text": "Done reading."}]}));
            m.push(json!({"role": "user", "content": [{"text": QUESTION}]}));
            (
                model_path("us.amazon.nova-2-lite-v1:0", false),
                json!({"system": [{"text": "You are a coding agent."}], "inferenceConfig": {"maxTokens": 50},
                    "toolConfig": {"tools": [{"toolSpec": {"name": "read_file", "inputSchema": {"json": {"type": "object"}}}}]},
                    "messages": m}),
            )
        }
    }
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn long_histories_are_pruned_in_every_format_and_off_sends_them_whole() {
    let (_sim, gw) = setup().await;
    let mut pruned = Vec::new();
    let mut whole = Vec::new();
    for f in [Format::OpenAi, Format::Anthropic, Format::Bedrock] {
        for off in [false, true] {
            let (path, body) = request(f);
            let mut req = http().post(gw.url(&path)).bearer_auth(&gw.key).json(&body);
            if off {
                req = req.header("x-tollgate-prune", "off");
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{f:?} off={off}");
            let id = r.headers()["x-tollgate-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let before = header(&r, "x-tollgate-prune-tokens-before");
            let after = header(&r, "x-tollgate-prune-tokens-after");
            if off {
                assert!(before.is_none() && after.is_none(), "{f:?}");
                whole.push((f, id));
            } else {
                let (b, a) = (before.unwrap(), after.unwrap());
                assert!(b > 3000 && a * 2 <= b + 200, "{f:?}: {b} → {a}");
                pruned.push((f, id, b, a));
            }
        }
    }
    // A bad header value is refused in the API's own shape.
    let (path, body) = request(Format::Anthropic);
    let r = http()
        .post(gw.url(&path))
        .bearer_auth(&gw.key)
        .header("x-tollgate-prune", "maybe")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error", "{e}");

    for _ in 0..200 {
        if gw.store.ledger_count().unwrap() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sv: Value = http()
        .get(gw.url("/admin/savings?since=1h"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let line = sv["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mechanism"] == "pruning")
        .unwrap_or_else(|| panic!("no pruning line: {sv}"))
        .clone();
    assert_eq!(line["requests"], 3, "{line}");
    assert!(
        line["saved_usd"].as_str().unwrap().parse::<f64>().unwrap() > 0.0,
        "{line}"
    );

    let store = gw.stop().await;
    for (f, id, b, a) in &pruned {
        let row = store.ledger_row(id).unwrap().unwrap();
        let p = row
            .prune
            .clone()
            .unwrap_or_else(|| panic!("{f:?}: no prune record"));
        assert_eq!((p.tokens_before, p.tokens_after), (*b, *a), "{f:?}");
        assert!(
            p.cost_without > row.cost,
            "{f:?}: {p:?} vs {}",
            row.cost.nanos()
        );
        // What went upstream was the pruned prompt.
        assert!(
            row.usage.prompt_total() * 10 < *b * 7,
            "{f:?}: {:?}",
            row.usage
        );
    }
    for (f, id) in &whole {
        let row = store.ledger_row(id).unwrap().unwrap();
        assert!(row.prune.is_none(), "{f:?}");
        assert!(row.usage.prompt_total() > 3000, "{f:?}: {:?}", row.usage);
    }
}

//! Every ingress format against every upstream format (3 × 3, native included), JSON
//! and streaming, through a real gateway in front of the simulator (which speaks all
//! three): the client reads the answer in its own format, and the ledger agrees with
//! the usage the client was told.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_providers::bedrock::model_path;
use tollgate_providers::eventstream::{FrameDecoder, Message};
use tollgate_testkit::harness::TestGateway;
use tollgate_testkit::sim::{self, SimConfig, SimUpstream};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    OpenAi,
    Anthropic,
    Bedrock,
}

const CLIENTS: [Client; 3] = [Client::OpenAi, Client::Anthropic, Client::Bedrock];
/// One deployment per upstream format.
const DEPLOYMENTS: [&str; 3] = [
    "gpt-4o-mini",
    "claude-haiku-4-5",
    "us.amazon.nova-2-lite-v1:0",
];

async fn setup() -> (SimUpstream, TestGateway) {
    setup_with(SimConfig::default()).await
}

async fn setup_with(cfg: SimConfig) -> (SimUpstream, TestGateway) {
    let sim = sim::spawn(cfg).await.unwrap();
    let v1 = sim.base_url();
    let origin = v1.trim_end_matches("/v1").to_string();
    let cfg = format!(
        r#"
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

/// A request in the client's format: a system prompt, a user turn, optionally a tool.
fn request(c: Client, model: &str, stream: bool, user: &str, tool: bool) -> (String, Value) {
    let schema = json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]});
    match c {
        Client::OpenAi => {
            let mut b = json!({"model": model, "stream": stream, "max_tokens": 200,
                "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": user}]});
            if stream {
                b["stream_options"] = json!({"include_usage": true});
            }
            if tool {
                b["tools"] = json!([{"type": "function", "function": {"name": "lookup", "description": "Look it up", "parameters": schema}}]);
            }
            ("/v1/chat/completions".into(), b)
        }
        Client::Anthropic => {
            let mut b = json!({"model": model, "stream": stream, "max_tokens": 200, "system": "You are terse.",
                "messages": [{"role": "user", "content": user}]});
            if tool {
                b["tools"] = json!([{"name": "lookup", "description": "Look it up", "input_schema": schema}]);
            }
            ("/v1/messages".into(), b)
        }
        Client::Bedrock => {
            let mut b = json!({"system": [{"text": "You are terse."}], "inferenceConfig": {"maxTokens": 200},
                "messages": [{"role": "user", "content": [{"text": user}]}]});
            if tool {
                b["toolConfig"] = json!({"tools": [{"toolSpec": {"name": "lookup", "description": "Look it up", "inputSchema": {"json": schema}}}]});
            }
            (model_path(model, stream), b)
        }
    }
}

/// What a client reads: text, tool calls (name, input), usage (prompt, output).
#[derive(Debug, Default)]
struct Read {
    text: String,
    tools: Vec<(String, Value)>,
    prompt: u64,
    output: u64,
}

fn read_json(c: Client, v: &Value) -> Read {
    let mut r = Read::default();
    match c {
        Client::OpenAi => {
            let m = &v["choices"][0]["message"];
            r.text = m["content"].as_str().unwrap_or("").to_string();
            for t in m["tool_calls"].as_array().cloned().unwrap_or_default() {
                r.tools.push((
                    t["function"]["name"].as_str().unwrap().to_string(),
                    serde_json::from_str(t["function"]["arguments"].as_str().unwrap()).unwrap(),
                ));
            }
            r.prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
            r.output = v["usage"]["completion_tokens"].as_u64().unwrap();
        }
        Client::Anthropic => {
            for b in v["content"].as_array().unwrap() {
                match b["type"].as_str().unwrap() {
                    "text" => r.text.push_str(b["text"].as_str().unwrap()),
                    "tool_use" => r
                        .tools
                        .push((b["name"].as_str().unwrap().to_string(), b["input"].clone())),
                    _ => {}
                }
            }
            let u = &v["usage"];
            r.prompt = [
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ]
            .iter()
            .map(|k| u[k].as_u64().unwrap_or(0))
            .sum();
            r.output = u["output_tokens"].as_u64().unwrap();
        }
        Client::Bedrock => {
            for b in v["output"]["message"]["content"].as_array().unwrap() {
                if let Some(t) = b["text"].as_str() {
                    r.text.push_str(t);
                }
                if let Some(t) = b.get("toolUse") {
                    r.tools
                        .push((t["name"].as_str().unwrap().to_string(), t["input"].clone()));
                }
            }
            let u = &v["usage"];
            r.prompt = u["totalTokens"].as_u64().unwrap() - u["outputTokens"].as_u64().unwrap();
            r.output = u["outputTokens"].as_u64().unwrap();
        }
    }
    r
}

/// Read a stream the way each SDK assembles it. `Err` carries the error the stream
/// ended with.
fn read_stream(c: Client, bytes: &[u8]) -> Result<Read, String> {
    let mut r = Read::default();
    let mut args: HashMap<u64, (String, String)> = HashMap::new();
    let mut order = Vec::new();
    match c {
        Client::OpenAi | Client::Anthropic => {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let mut saw_end = false;
            for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if data == "[DONE]" {
                    saw_end = true;
                    continue;
                }
                let v: Value = serde_json::from_str(&data).map_err(|e| format!("{e}: {data}"))?;
                if v.get("error").is_some_and(Value::is_object) {
                    return Err(v["error"].to_string());
                }
                if c == Client::OpenAi {
                    if let Some(d) = v["choices"].get(0).map(|c| &c["delta"]) {
                        r.text.push_str(d["content"].as_str().unwrap_or(""));
                        for t in d["tool_calls"].as_array().cloned().unwrap_or_default() {
                            let k = t["index"].as_u64().unwrap();
                            let e = args.entry(k).or_insert_with(|| {
                                order.push(k);
                                (String::new(), String::new())
                            });
                            if let Some(n) = t["function"]["name"].as_str() {
                                e.0.push_str(n);
                            }
                            e.1.push_str(t["function"]["arguments"].as_str().unwrap_or(""));
                        }
                    }
                    if v["usage"].is_object() {
                        r.prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
                        r.output = v["usage"]["completion_tokens"].as_u64().unwrap();
                    }
                } else {
                    match v["type"].as_str().unwrap_or("") {
                        "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                            let k = v["index"].as_u64().unwrap();
                            order.push(k);
                            args.insert(
                                k,
                                (
                                    v["content_block"]["name"].as_str().unwrap().to_string(),
                                    String::new(),
                                ),
                            );
                        }
                        "content_block_delta" => {
                            let d = &v["delta"];
                            r.text.push_str(d["text"].as_str().unwrap_or(""));
                            if let Some(p) = d["partial_json"].as_str() {
                                args.get_mut(&v["index"].as_u64().unwrap())
                                    .unwrap()
                                    .1
                                    .push_str(p);
                            }
                        }
                        "message_delta" => {
                            let u = &v["usage"];
                            r.prompt = [
                                "input_tokens",
                                "cache_creation_input_tokens",
                                "cache_read_input_tokens",
                            ]
                            .iter()
                            .map(|k| u[k].as_u64().unwrap_or(0))
                            .sum();
                            r.output = u["output_tokens"].as_u64().unwrap();
                        }
                        "message_stop" => saw_end = true,
                        _ => {}
                    }
                }
            }
            if !saw_end {
                return Err("stream ended without its end marker".into());
            }
        }
        Client::Bedrock => {
            let mut d = FrameDecoder::default();
            let frames: Vec<Message> = d.feed(bytes).into_iter().map(|(_, m)| m).collect();
            if d.error.is_some() || d.pending_len() > 0 {
                return Err("bad frames".into());
            }
            let mut saw_end = false;
            for m in frames {
                if m.message_type() == Some("exception") {
                    return Err(m.header(":exception-type").unwrap_or("").to_string());
                }
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                match m.header(":event-type").unwrap_or("") {
                    "contentBlockStart" => {
                        let k = v["contentBlockIndex"].as_u64().unwrap();
                        order.push(k);
                        args.insert(
                            k,
                            (
                                v["start"]["toolUse"]["name"].as_str().unwrap().to_string(),
                                String::new(),
                            ),
                        );
                    }
                    "contentBlockDelta" => {
                        r.text.push_str(v["delta"]["text"].as_str().unwrap_or(""));
                        if let Some(i) = v["delta"]["toolUse"]["input"].as_str() {
                            args.get_mut(&v["contentBlockIndex"].as_u64().unwrap())
                                .unwrap()
                                .1
                                .push_str(i);
                        }
                    }
                    "metadata" => {
                        saw_end = true;
                        let u = &v["usage"];
                        r.prompt = u["totalTokens"].as_u64().unwrap()
                            - u["outputTokens"].as_u64().unwrap();
                        r.output = u["outputTokens"].as_u64().unwrap();
                    }
                    _ => {}
                }
            }
            if !saw_end {
                return Err("stream ended without metadata".into());
            }
        }
    }
    for k in order {
        let (name, a) = args.remove(&k).unwrap();
        r.tools.push((name, serde_json::from_str(&a).unwrap()));
    }
    Ok(r)
}

async fn call(
    gw: &TestGateway,
    c: Client,
    model: &str,
    stream: bool,
    user: &str,
    tool: bool,
) -> reqwest::Response {
    let (path, body) = request(c, model, stream, user, tool);
    let req = http().post(gw.url(&path)).json(&body);
    let req = match c {
        Client::Anthropic => req.header("x-api-key", &gw.key),
        _ => req.bearer_auth(&gw.key),
    };
    req.send().await.unwrap()
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_pair_json_and_stream_gives_the_same_answer_and_usage_as_the_ledger() {
    let (_sim, gw) = setup().await;
    let mut checks = Vec::new();
    for c in CLIENTS {
        for d in DEPLOYMENTS {
            for stream in [false, true] {
                let r = call(
                    &gw,
                    c,
                    d,
                    stream,
                    "Name three colors of the rainbow.",
                    false,
                )
                .await;
                assert_eq!(r.status(), 200, "{c:?} → {d} stream={stream}");
                let id = request_id(&r);
                let read = if stream {
                    read_stream(c, &r.bytes().await.unwrap())
                        .unwrap_or_else(|e| panic!("{c:?} → {d}: {e}"))
                } else {
                    read_json(c, &r.json().await.unwrap())
                };
                // The simulator answers one token per word.
                assert!(!read.text.is_empty(), "{c:?} → {d} stream={stream}");
                assert_eq!(
                    read.output,
                    read.text.split_whitespace().count() as u64,
                    "{c:?} → {d} stream={stream}: {}",
                    read.text
                );
                assert!(read.tools.is_empty());
                checks.push((c, d, stream, id, read));
            }
        }
    }
    let store = gw.stop().await;
    for (c, d, stream, id, read) in checks {
        let row = store.ledger_row(&id).unwrap().unwrap();
        let what = format!("{c:?} → {d} stream={stream}");
        assert_eq!(row.usage_source.as_str(), "reported", "{what}");
        assert_eq!(row.usage.prompt_total(), read.prompt, "{what}");
        assert_eq!(row.usage.output, read.output, "{what}");
        assert!(row.priced && row.cost.nanos() > 0, "{what}");
        assert!(row.error_code.is_none() && !row.partial, "{what}");
        assert_eq!(row.route.deployment, d);
        assert_eq!(row.stream, stream);
    }
}

#[tokio::test]
async fn tool_calls_cross_every_pair() {
    let (_sim, gw) = setup().await;
    // The simulated Anthropic and Bedrock models call the first declared tool.
    for c in CLIENTS {
        for d in &DEPLOYMENTS[1..] {
            for stream in [false, true] {
                let r = call(&gw, c, d, stream, "Find the weather in Paris", true).await;
                assert_eq!(r.status(), 200, "{c:?} → {d}");
                let read = if stream {
                    read_stream(c, &r.bytes().await.unwrap()).unwrap()
                } else {
                    read_json(c, &r.json().await.unwrap())
                };
                assert_eq!(read.tools.len(), 1, "{c:?} → {d} stream={stream}: {read:?}");
                assert_eq!(read.tools[0].0, "lookup");
                assert_eq!(
                    read.tools[0].1,
                    json!({"query": "Find the weather in Paris"})
                );
            }
        }
    }
}

#[tokio::test]
async fn upstream_errors_arrive_in_the_clients_shape_with_their_status() {
    let (_sim, gw) = setup().await;
    for c in CLIENTS {
        for d in DEPLOYMENTS {
            let r = call(&gw, c, d, false, "hello [[sim:error=429]]", false).await;
            assert_eq!(r.status(), 429, "{c:?} → {d}");
            let errortype = r.headers().get("x-amzn-errortype").cloned();
            let v: Value = r.json().await.unwrap();
            match c {
                Client::OpenAi => assert!(v["error"]["message"].is_string(), "{v}"),
                Client::Anthropic => {
                    assert_eq!(v["type"], "error");
                    assert_eq!(v["error"]["type"], "rate_limit_error", "{c:?} → {d}: {v}");
                }
                Client::Bedrock => {
                    assert!(
                        errortype
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .starts_with("ThrottlingException"),
                        "{d}"
                    );
                    assert!(v["message"].is_string());
                }
            }
        }
    }
}

#[tokio::test]
async fn cut_and_malformed_streams_end_with_an_error_in_the_clients_format() {
    // Tokens a millisecond apart, so a cut comes after the response head is out.
    let (_sim, gw) = setup_with(SimConfig {
        inter_token_latency: std::time::Duration::from_millis(1),
        ..SimConfig::default()
    })
    .await;
    let mut ids = Vec::new();
    for c in CLIENTS {
        for d in DEPLOYMENTS {
            for (fault, code) in [
                ("[[sim:cut]]", "upstream_cut"),
                ("[[sim:malformed]]", "upstream_malformed"),
            ] {
                // OpenAI → OpenAI passes malformed chunks through untouched (the SDK
                // raises on them); every decoded stream stops at them.
                if c == Client::OpenAi && d == "gpt-4o-mini" && code == "upstream_malformed" {
                    continue;
                }
                let r = call(&gw, c, d, true, &format!("Tell me a story {fault}"), false).await;
                assert_eq!(r.status(), 200, "{c:?} → {d} {fault}");
                let id = request_id(&r);
                let got = read_stream(c, &r.bytes().await.unwrap());
                assert!(got.is_err(), "{c:?} → {d} {fault}: {got:?}");
                ids.push((format!("{c:?} → {d} {fault}"), id, code));
            }
        }
    }
    let store = gw.stop().await;
    for (what, id, code) in ids {
        let row = store.ledger_row(&id).unwrap().unwrap();
        assert_eq!(row.error_code.as_deref(), Some(code), "{what}");
        assert!(row.partial, "{what}");
        assert!(row.usage.input > 0, "{what}: the prompt is billed");
    }
}

#[tokio::test]
async fn untranslatable_features_are_a_400_naming_them() {
    let (_sim, gw) = setup().await;
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"50256": -100}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "logit_bias");
    assert_eq!(v["error"]["code"], "unsupported_feature");
    let r = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.key)
        .json(&json!({"model": "us.amazon.nova-2-lite-v1:0", "max_tokens": 10, "top_k": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("top_k"),
        "{v}"
    );
    let r = http()
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "claude-haiku-4-5", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

//! The APIs today's clients call, through a real gateway in front of the simulator:
//! OpenAI Responses (`POST /v1/responses`, JSON and its typed stream) on an OpenAI,
//! an Anthropic and a Bedrock upstream, `previous_response_id`, a function-call round
//! trip; structured output (`response_format` / `text.format`) on Anthropic and
//! Bedrock as a forced tool call; `GET /v1/models/{id}`; the APIs not served. Each
//! answer is checked against its ledger row (usage, cost).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_testkit::harness::TestGateway;
use tollgate_testkit::sim::{self, SimConfig, SimUpstream};

const OPENAI: &str = "gpt-4o-mini";
const ANTHROPIC: &str = "claude-haiku-4-5";
const BEDROCK: &str = "us.amazon.nova-2-lite-v1:0";
const ALL: [&str; 3] = [OPENAI, ANTHROPIC, BEDROCK];

async fn setup() -> (SimUpstream, TestGateway) {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
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
name = "{OPENAI}"
upstream = "oai"
[[deployments]]
name = "{ANTHROPIC}"
upstream = "ant"
[[deployments]]
name = "{BEDROCK}"
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
    (sim, TestGateway::start(&cfg, env).await)
}

fn http() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(gw: &TestGateway, path: &str, body: &Value) -> reqwest::Response {
    http()
        .post(gw.url(path))
        .bearer_auth(&gw.key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

fn cost_header(r: &reqwest::Response) -> String {
    r.headers()["x-tollgate-cost-usd"]
        .to_str()
        .unwrap()
        .to_string()
}

/// The text of a response object's message items.
fn output_text(v: &Value) -> String {
    let mut t = String::new();
    for item in v["output"].as_array().unwrap() {
        if item["type"] == "message" {
            for p in item["content"].as_array().unwrap() {
                assert_eq!(p["type"], "output_text");
                t.push_str(p["text"].as_str().unwrap());
            }
        }
    }
    t
}

/// A Responses stream's events `(type, payload)`, checking the `event:` lines match
/// the payloads' types and the sequence numbers count up from 0.
fn events(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let kind = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("no event line in {block}"));
        let data: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["type"], kind, "{block}");
        assert_eq!(v["sequence_number"], out.len() as u64, "{block}");
        out.push((kind.to_string(), v));
    }
    out
}

#[tokio::test]
async fn responses_json_and_stream_on_every_upstream_metered_like_chat() {
    let (_sim, gw) = setup().await;
    let mut rows = Vec::new();
    for model in ALL {
        let input = format!("Tell me about tide pools on {model}.");
        // The same question through Chat Completions, for comparison.
        let chat = post(
            &gw,
            "/v1/chat/completions",
            &json!({"model": model, "max_tokens": 200, "messages": [
                {"role": "system", "content": "You are terse."}, {"role": "user", "content": input}]}),
        )
        .await;
        assert_eq!(chat.status(), 200);
        let chat_id = request_id(&chat);
        let chat_body: Value = chat.json().await.unwrap();

        let r = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "instructions": "You are terse.", "input": input,
                "max_output_tokens": 200, "metadata": {"run": "t1"}}),
        )
        .await;
        assert_eq!(r.status(), 200, "{model}");
        let id = request_id(&r);
        let cost = cost_header(&r);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "response", "{model}");
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], model);
        assert_eq!(v["instructions"], "You are terse.");
        assert_eq!(v["metadata"], json!({"run": "t1"}));
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["role"], "assistant");
        assert_eq!(
            output_text(&v),
            chat_body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap(),
            "{model}: the same answer as chat"
        );
        let u = &v["usage"];
        assert_eq!(
            u["input_tokens"], chat_body["usage"]["prompt_tokens"],
            "{model}"
        );
        assert_eq!(u["output_tokens"], chat_body["usage"]["completion_tokens"]);
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap()
        );
        assert!(u["input_tokens_details"]["cached_tokens"].is_u64());
        assert!(u["output_tokens_details"]["reasoning_tokens"].is_u64());

        let s = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "instructions": "You are terse.", "input": input,
                "max_output_tokens": 200, "stream": true}),
        )
        .await;
        assert_eq!(s.status(), 200);
        assert!(
            s.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let sid = request_id(&s);
        let evs = events(&s.text().await.unwrap());
        let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            &kinds[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ],
            "{model}"
        );
        assert_eq!(
            &kinds[kinds.len() - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ],
            "{model}"
        );
        let deltas: String = evs
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, v)| v["delta"].as_str().unwrap())
            .collect();
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(deltas, output_text(done));
        assert_eq!(deltas, output_text(&v), "{model}: stream and JSON agree");
        assert_eq!(done["usage"], v["usage"], "{model}");
        rows.push((model, chat_id, id, cost, sid, v["usage"].clone()));
    }
    let stopped = gw.stop().await;
    let store = &stopped.store;
    for (model, chat_id, id, cost, sid, usage) in rows {
        let chat = store.ledger_row(&chat_id).unwrap().unwrap();
        let row = store.ledger_row(&id).unwrap().unwrap();
        let srow = store.ledger_row(&sid).unwrap().unwrap();
        assert_eq!(row.endpoint.as_str(), "responses");
        assert_eq!(row.route.deployment, model);
        assert_eq!(row.usage_source.as_str(), "reported");
        assert!(row.priced && row.cost.nanos() > 0, "{model}");
        assert_eq!(row.cost.to_string(), cost, "{model}: the header is the row");
        assert_eq!(row.usage, chat.usage, "{model}: metered like chat");
        assert_eq!(row.cost, chat.cost, "{model}");
        assert_eq!(row.usage.prompt_total(), usage["input_tokens"]);
        assert_eq!(row.usage.output, usage["output_tokens"]);
        assert!(srow.stream && srow.error_code.is_none() && !srow.partial);
        assert_eq!(srow.usage, row.usage, "{model}: stream metered the same");
        assert_eq!(srow.cost, row.cost);
    }
}

#[tokio::test]
async fn previous_response_id_continues_the_conversation_of_the_same_key() {
    let (_sim, gw) = setup().await;
    for model in [OPENAI, ANTHROPIC] {
        let first: Value = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "input": "Name a colour."}),
        )
        .await
        .json()
        .await
        .unwrap();
        let again = |prev: &Value, stream: bool| {
            json!({"model": model, "input": "And another one?", "stream": stream,
                "previous_response_id": prev["id"]})
        };
        let r = post(&gw, "/v1/responses", &again(&first, false)).await;
        assert_eq!(r.status(), 200);
        let second: Value = r.json().await.unwrap();
        assert_eq!(second["previous_response_id"], first["id"]);
        // Without the history the same input is a shorter prompt.
        let alone: Value = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "input": "And another one?"}),
        )
        .await
        .json()
        .await
        .unwrap();
        let with = second["usage"]["input_tokens"].as_u64().unwrap();
        let without = alone["usage"]["input_tokens"].as_u64().unwrap();
        let first_in = first["usage"]["input_tokens"].as_u64().unwrap();
        assert!(
            with > without + first_in - 3,
            "{model}: history sent ({with} vs {without} + {first_in})"
        );
        // A chain: the second's id continues too, streamed.
        let s = post(&gw, "/v1/responses", &again(&second, true)).await;
        assert_eq!(s.status(), 200);
        let evs = events(&s.text().await.unwrap());
        let third = &evs.last().unwrap().1["response"];
        assert!(third["usage"]["input_tokens"].as_u64().unwrap() > with);
        // The streamed answer is stored as well.
        let r = post(&gw, "/v1/responses", &again(third, false)).await;
        assert_eq!(r.status(), 200);
    }
    // Unknown, and not stored (`store: false`): a 400 in OpenAI's shape.
    let unknown = post(
        &gw,
        "/v1/responses",
        &json!({"model": ANTHROPIC, "input": "hi", "previous_response_id": "resp_nope"}),
    )
    .await;
    assert_eq!(unknown.status(), 400);
    let e: Value = unknown.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resp_nope")
    );
    let unstored: Value = post(
        &gw,
        "/v1/responses",
        &json!({"model": ANTHROPIC, "input": "hi", "store": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    let r = post(
        &gw,
        "/v1/responses",
        &json!({"model": ANTHROPIC, "input": "hi", "previous_response_id": unstored["id"]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    // Another key cannot continue this key's conversation.
    let created: Value = http()
        .post(gw.url("/admin/keys"))
        .bearer_auth(tollgate_testkit::harness::MASTER_KEY)
        .json(&json!({"team": "team-b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = created["key"].as_str().unwrap().to_string();
    let r = http()
        .post(gw.url("/v1/responses"))
        .bearer_auth(&other)
        .json(&json!({"model": ANTHROPIC, "input": "hi", "previous_response_id": unstored["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    gw.stop().await;
}

#[tokio::test]
async fn a_function_call_round_trip_through_responses() {
    let (_sim, gw) = setup().await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        "strict": true}]);
    let mut ids = Vec::new();
    for model in [ANTHROPIC, BEDROCK, OPENAI] {
        let r = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "input": "What is the weather in Lisbon?", "tools": tools}),
        )
        .await;
        assert_eq!(r.status(), 200);
        ids.push(request_id(&r));
        let v: Value = r.json().await.unwrap();
        let call = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "function_call")
            .cloned();
        let Some(call) = call else {
            // The simulator's OpenAI face does not call tools: it answers.
            assert_eq!(model, OPENAI);
            assert!(!output_text(&v).is_empty());
            continue;
        };
        assert_eq!(call["name"], "get_weather");
        assert_eq!(call["status"], "completed");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"query": "What is the weather in"}));
        assert_eq!(v["tools"], tools, "the tools are echoed");
        // The result goes back as a function_call_output, by id and by full input.
        let by_id = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "tools": tools, "previous_response_id": v["id"],
                "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 24°C"}]}),
        )
        .await;
        assert_eq!(by_id.status(), 200);
        ids.push(request_id(&by_id));
        let answer: Value = by_id.json().await.unwrap();
        assert_eq!(answer["output"][0]["type"], "message", "{model}: {answer}");
        assert!(!output_text(&answer).is_empty());
        // What an agent loop sends without previous_response_id: its input, the
        // answer's output items as they came, the tool's result.
        let mut full_input = vec![json!({"role": "user", "content": [
            {"type": "input_text", "text": "What is the weather in Lisbon?"}]})];
        full_input.extend(v["output"].as_array().unwrap().iter().cloned());
        full_input.push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 24°C"}));
        let full = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "tools": tools, "stream": true, "input": full_input}),
        )
        .await;
        assert_eq!(full.status(), 200);
        let evs = events(&full.text().await.unwrap());
        assert_eq!(
            output_text(&evs.last().unwrap().1["response"]),
            output_text(&answer),
            "{model}: the same conversation, the same answer"
        );
        // Streamed, the call comes as argument deltas.
        let s = post(
            &gw,
            "/v1/responses",
            &json!({"model": model, "input": "What is the weather in Lisbon?", "tools": tools, "stream": true}),
        )
        .await;
        let evs = events(&s.text().await.unwrap());
        let args: String = evs
            .iter()
            .filter(|(k, _)| k == "response.function_call_arguments.delta")
            .map(|(_, v)| v["delta"].as_str().unwrap())
            .collect();
        let done = evs
            .iter()
            .find(|(k, _)| k == "response.function_call_arguments.done")
            .unwrap();
        assert_eq!(done.1["arguments"], args.as_str());
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"query": "What is the weather in"})
        );
    }
    let stopped = gw.stop().await;
    let store = &stopped.store;
    for id in ids {
        let row = store.ledger_row(&id).unwrap().unwrap();
        assert!(row.priced && row.cost.nanos() > 0 && row.error_code.is_none());
    }
}

fn person_schema() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}}},
        "required": ["name", "age", "pets"], "additionalProperties": false,
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]}}})
}

fn assert_person(text: &str, what: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert!(v["name"].is_string(), "{what}: {v}");
    assert!(v["age"].is_u64(), "{what}: {v}");
    assert_eq!(v["pets"][0]["kind"], "cat", "{what}: {v}");
}

#[tokio::test]
async fn structured_output_on_anthropic_and_bedrock_as_a_forced_tool() {
    let (_sim, gw) = setup().await;
    let mut ids = Vec::new();
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}});
    for model in [ANTHROPIC, BEDROCK] {
        let body = json!({"model": model, "response_format": format,
            "messages": [{"role": "user", "content": "Describe a person."}]});
        let r = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(r.status(), 200, "{model}");
        ids.push(request_id(&r));
        let v: Value = r.json().await.unwrap();
        let m = &v["choices"][0]["message"];
        assert!(m.get("tool_calls").is_none(), "{model}: {v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_person(m["content"].as_str().unwrap(), model);
        // Streamed.
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let s = post(&gw, "/v1/chat/completions", &sb).await;
        assert_eq!(s.status(), 200);
        ids.push(request_id(&s));
        let text = s.text().await.unwrap();
        let mut content = String::new();
        let mut finish = None;
        for d in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if d == "[DONE]" {
                continue;
            }
            let c: Value = serde_json::from_str(d).unwrap();
            assert!(c["choices"][0]["delta"].get("tool_calls").is_none(), "{c}");
            content.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        assert_person(&content, model);
        assert_eq!(finish.as_deref(), Some("stop"));
        // json_object: any object.
        let r = post(
            &gw,
            "/v1/chat/completions",
            &json!({"model": model, "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": "Give me JSON."}]}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
        // And the Responses API's text.format, JSON and streamed.
        for stream in [false, true] {
            let r = post(
                &gw,
                "/v1/responses",
                &json!({"model": model, "input": "Describe a person.", "stream": stream,
                    "text": {"format": {"type": "json_schema", "name": "person", "schema": person_schema(), "strict": true}}}),
            )
            .await;
            assert_eq!(r.status(), 200);
            ids.push(request_id(&r));
            let v = if stream {
                events(&r.text().await.unwrap()).pop().unwrap().1["response"].clone()
            } else {
                r.json().await.unwrap()
            };
            assert_eq!(v["output"].as_array().unwrap().len(), 1, "{v}");
            assert_person(&output_text(&v), model);
            assert_eq!(v["text"]["format"]["name"], "person");
        }
    }
    // A tool may not take the gateway's name for it.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &json!({"model": ANTHROPIC, "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "json_answer", "parameters": {"type": "object"}}}],
            "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let stopped = gw.stop().await;
    let store = &stopped.store;
    for id in ids {
        let row = store.ledger_row(&id).unwrap().unwrap();
        assert!(row.priced && row.cost.nanos() > 0, "{id}");
        assert!(row.usage.output > 0 && row.error_code.is_none());
    }
}

#[tokio::test]
async fn models_by_id_and_the_apis_not_served() {
    let (_sim, gw) = setup().await;
    let get = |path: &str| http().get(gw.url(path)).bearer_auth(&gw.key).send();
    let r = get(&format!("/v1/models/{BEDROCK}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].as_str(), v["object"].as_str()),
        (Some(BEDROCK), Some("model"))
    );
    let r = get("/v1/models/nope").await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    for path in [
        "/v1/completions",
        "/v1/batches",
        "/v1/files",
        "/v1/batches/batch_1/cancel",
    ] {
        let r = post(&gw, path, &json!({"model": OPENAI, "prompt": "x"})).await;
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unsupported_endpoint", "{path}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("not"),
            "{path}"
        );
    }
    let r = get("/v1/files").await.unwrap();
    assert_eq!(r.status(), 404);
    let r = post(&gw, "/v1/messages/batches", &json!({"requests": []})).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not supported through tollgate")
    );
    // Responses features with no translation: a 400 naming them, in OpenAI's shape.
    let r = post(
        &gw,
        "/v1/responses",
        &json!({"model": ANTHROPIC, "input": "x", "tools": [{"type": "web_search"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unsupported_feature");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web_search")
    );
    gw.stop().await;
}

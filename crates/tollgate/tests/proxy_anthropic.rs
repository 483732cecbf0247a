//! The Anthropic Messages endpoint against an Anthropic upstream, end to end: a real
//! gateway, a stub upstream replaying documented payloads, and the ledger checked after.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::TestGateway;

fn config(base_url: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{base_url}"
api_key_env = "ANTHROPIC_TEST_KEY"

[[deployments]]
name = "claude-sonnet-4-5"
upstream = "claude"
model = "claude-sonnet-4-5-20250929"
"#
    )
}

async fn setup(fixture: Fixture) -> (FixtureUpstream, TestGateway) {
    let up = FixtureUpstream::start(fixture).await.unwrap();
    let env: HashMap<String, String> =
        [("ANTHROPIC_TEST_KEY".to_string(), "sk-ant-test".to_string())].into();
    let gw = TestGateway::start(&config(&up.base_url()), env).await;
    (up, gw)
}

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn body(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
        "messages": [{"role": "user", "content": "Hello, Claude"}]})
}

async fn post(gw: &TestGateway, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
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

#[tokio::test]
async fn json_is_passed_through_priced_and_attributed() {
    let (up, gw) = setup(Fixture::json(200, Fixture::file("anthropic/message.json"))).await;
    let resp = client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &gw.key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 1024,
            "metadata": {"user_id": "end-user-9", "tollgate_task": "t-1"},
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Hello, Claude"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    // 2,095 × $3/M + 503 × $15/M
    assert_eq!(resp.headers()["x-tollgate-cost-usd"], "0.013830000");
    assert_eq!(
        resp.bytes().await.unwrap(),
        Fixture::file("anthropic/message.json")
    );
    let sent = up.last_body().unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(sent["metadata"], json!({"user_id": "end-user-9"}));
    assert_eq!(
        sent["system"][0]["cache_control"],
        json!({"type": "ephemeral"}),
        "cache_control is passed through"
    );
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-api-key"], "sk-ant-test");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["anthropic-beta"], "prompt-caching-2024-07-31");
    assert_eq!(up.last_path().as_deref(), Some("/v1/messages"));

    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert_eq!(row.endpoint.as_str(), "messages");
    assert_eq!((row.usage.input, row.usage.output), (2095, 503));
    assert_eq!(row.cost.nanos(), 13_830_000);
    assert_eq!(row.attribution.user.as_deref(), Some("end-user-9"));
    assert_eq!(row.attribution.task.as_deref(), Some("t-1"));
    assert_eq!(row.route.upstream_model, "claude-sonnet-4-5-20250929");
}

#[tokio::test]
async fn cache_writes_are_priced_by_ttl() {
    let (_up, gw) = setup(Fixture::json(
        200,
        Fixture::file("anthropic/message_cached.json"),
    ))
    .await;
    let r = post(&gw, &gw.key, &body(false)).await;
    // 21 × $3/M + 88,086 × $3.75/M (5 min) + 100,000 × $6/M (1 h) + 393 × $15/M
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.936280500");
    let id = request_id(&r);
    let store = gw.stop().await;
    let u = store.ledger_row(&id).unwrap().unwrap().usage;
    assert_eq!(
        (
            u.input,
            u.cache_read,
            u.cache_write_5m,
            u.cache_write_1h,
            u.output
        ),
        (21, 0, 88_086, 100_000, 393)
    );
}

#[tokio::test]
async fn every_stream_shape_passes_through_byte_for_byte_and_is_metered() {
    for (file, usage, nanos) in [
        ("anthropic/stream.sse", (25, 0, 15), 300_000),
        ("anthropic/stream_tool_use.sse", (472, 0, 89), 2_751_000),
        ("anthropic/stream_thinking.sse", (47, 0, 260), 4_041_000),
        // 12 × $3/M + 188,086 × $0.30/M (cache read) + 8 × $15/M
        ("anthropic/stream_cached.sse", (12, 188_086, 8), 56_581_800),
    ] {
        let (_up, gw) = setup(Fixture::sse(Fixture::file(file))).await;
        let r = post(&gw, &gw.key, &body(true)).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let id = request_id(&r);
        assert_eq!(r.bytes().await.unwrap(), Fixture::file(file), "{file}");
        let store = gw.stop().await;
        let row = store.ledger_row(&id).unwrap().unwrap();
        assert_eq!(
            (row.usage.input, row.usage.cache_read, row.usage.output),
            usage,
            "{file}"
        );
        assert_eq!(row.cost.nanos(), nanos, "{file}");
        assert_eq!(row.usage_source.as_str(), "reported");
        assert!(
            row.stream && !row.partial && row.error_code.is_none(),
            "{file}"
        );
    }
}

#[tokio::test]
async fn a_cut_stream_is_metered_as_far_as_it_went_and_ends_with_an_error_event() {
    let full = Fixture::file("anthropic/stream.sse");
    let cut = String::from_utf8(full.to_vec())
        .unwrap()
        .find("\"!\"")
        .unwrap();
    let mut f = Fixture::sse(full.clone());
    f.cut_after = Some(cut);
    f.chunk_delay = std::time::Duration::from_millis(5);
    let (_up, gw) = setup(f).await;
    let r = post(&gw, &gw.key, &body(true)).await;
    let id = request_id(&r);
    let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("\"Hello\""), "{text}");
    assert!(
        text.ends_with(
            "event: error\ndata: {\"error\":{\"message\":\"The upstream stream ended before it was complete.\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n"
        ),
        "{text}"
    );
    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert!(row.partial);
    assert_eq!(row.error_code.as_deref(), Some("upstream_cut"));
    assert_eq!(row.usage_source.as_str(), "estimated");
    // The prompt as message_start reported it; the output counted locally.
    assert_eq!(row.usage.input, 25);
    assert!(row.usage.output >= 1);
    assert!(row.cost.nanos() > 0);
}

#[tokio::test]
async fn an_error_event_mid_stream_is_recorded() {
    let (_up, gw) = setup(Fixture::sse(Fixture::file("anthropic/stream_error.sse"))).await;
    let r = post(&gw, &gw.key, &body(true)).await;
    let id = request_id(&r);
    assert_eq!(
        r.bytes().await.unwrap(),
        Fixture::file("anthropic/stream_error.sse")
    );
    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert_eq!(row.error_code.as_deref(), Some("upstream_error"));
    assert!(row.partial);
    assert_eq!(row.usage.input, 25);
}

#[tokio::test]
async fn a_malformed_stream_is_an_upstream_error_not_a_panic() {
    let bad = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\": not json\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (_up, gw) = setup(Fixture::sse(bad)).await;
    let r = post(&gw, &gw.key, &body(true)).await;
    let id = request_id(&r);
    let text = r.text().await.unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("malformed"), "{text}");
    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert_eq!(row.error_code.as_deref(), Some("upstream_malformed"));
    assert_eq!(row.usage.input, 9);
}

#[tokio::test]
async fn upstream_errors_pass_through_and_gateway_errors_are_anthropic_shaped() {
    let (up, gw) = setup(
        Fixture::json(429, Fixture::file("anthropic/error_429.json"))
            .with_header("retry-after", "7"),
    )
    .await;
    let r = post(&gw, &gw.key, &body(false)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let limited = request_id(&r);
    assert_eq!(
        r.bytes().await.unwrap(),
        Fixture::file("anthropic/error_429.json")
    );
    up.set(Fixture::json(
        529,
        Fixture::file("anthropic/error_529.json"),
    ));
    assert_eq!(post(&gw, &gw.key, &body(false)).await.status(), 529);

    let cases = [
        ("nope", body(false), 401, "authentication_error"),
        (
            gw.key.as_str(),
            json!({"model": "no-such-model", "max_tokens": 5, "messages": []}),
            404,
            "not_found_error",
        ),
        (
            gw.key.as_str(),
            json!({"model": "claude-sonnet-4-5", "messages": []}),
            400,
            "invalid_request_error",
        ),
    ];
    for (key, b, status, kind) in cases {
        let r = post(&gw, key, &b).await;
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    let store = gw.stop().await;
    let row = store.ledger_row(&limited).unwrap().unwrap();
    assert_eq!(
        (row.status, row.error_code.as_deref()),
        (429, Some("upstream_rate_limited"))
    );
    assert_eq!(row.cost.nanos(), 0);
}

/// `POST /v1/messages/count_tokens` is answered by the gateway: counted locally over
/// system, messages and tools, authenticated like `/v1/messages`, errors in Anthropic's
/// shape, no upstream call and no ledger row.
#[tokio::test]
async fn count_tokens_is_answered_locally_without_a_ledger_row() {
    use tollgate_providers::tokenizer::Encoding;
    let (up, gw) = setup(Fixture::json(200, Fixture::file("anthropic/message.json"))).await;
    let count = |key: &str, body: Value| {
        client()
            .post(gw.url("/v1/messages/count_tokens"))
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let messages = json!([{"role": "user", "content": "Hello, Claude"}]);
    let tools = json!([{"name": "get_weather", "description": "Get the weather",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]);
    let r = count(
        &gw.key,
        json!({"model": "claude-sonnet-4-5", "system": "Be brief.",
            "messages": messages, "tools": tools}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-tollgate-request-id"));
    let n = r.json::<Value>().await.unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    let enc = Encoding::for_model("claude-sonnet-4-5-20250929");
    let expected = enc.count_anthropic_prompt(
        Some(&json!("Be brief.")),
        messages.as_array().unwrap(),
        Some(&tools),
    );
    assert_eq!(n, expected);
    let bare = count(
        &gw.key,
        json!({"model": "claude-sonnet-4-5", "messages": messages}),
    )
    .await
    .unwrap();
    let bare = bare.json::<Value>().await.unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    assert!(bare > 0 && bare < n, "{bare} < {n}");

    // Errors, in Anthropic's shape.
    let err = |r: Value| (r["type"].clone(), r["error"]["type"].clone());
    let r = count(
        "tg-wrong",
        json!({"model": "claude-sonnet-4-5", "messages": []}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        err(r.json().await.unwrap()),
        (json!("error"), json!("authentication_error"))
    );
    let r = count(&gw.key, json!({"model": "claude-nope", "messages": []}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        err(r.json().await.unwrap()),
        (json!("error"), json!("not_found_error"))
    );
    let r = count(&gw.key, json!({"model": "claude-sonnet-4-5"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("messages"),
        "{e}"
    );
    let r = client()
        .post(gw.url("/v1/messages/count_tokens"))
        .header("x-api-key", &gw.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    assert_eq!(up.calls(), 0, "no upstream was called");
    let store = gw.stop().await;
    assert_eq!(
        store.ledger_count().unwrap(),
        0,
        "counting writes no ledger row"
    );
}

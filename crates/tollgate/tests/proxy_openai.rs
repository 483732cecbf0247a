//! The OpenAI-compatible proxy, end to end: a real gateway on a port, a stub upstream
//! replaying documented payloads, a real HTTP client, and the ledger checked after.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::{MASTER_KEY, TestGateway, config_for};

const DEPLOYMENTS: &[(&str, &str)] = &[
    ("gpt-4.1", "gpt-4.1"),
    ("gpt-4o", "gpt-4o"),
    ("o3", "o3"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("text-embedding-3-small", "text-embedding-3-small"),
];

async fn setup(fixture: Fixture, extra: &str) -> (FixtureUpstream, TestGateway) {
    let up = FixtureUpstream::start(fixture).await.unwrap();
    let cfg = config_for(&up.base_url(), DEPLOYMENTS, extra);
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    (up, gw)
}

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"}]})
}

async fn post(gw: &TestGateway, path: &str, key: &str, body: Value) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .bearer_auth(key)
        .json(&body)
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

/// Stop the gateway (flushing the ledger) and fetch one row.
async fn row_after_stop(gw: TestGateway, id: &str) -> tollgate_domain::ledger::LedgerRow {
    let store = gw.stop().await;
    store.ledger_row(id).unwrap().expect("ledger row")
}

#[tokio::test]
async fn chat_json_is_passed_through_priced_and_attributed() {
    let (up, gw) = setup(Fixture::json(200, Fixture::file("openai/chat.json")), "").await;
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .header("x-tollgate-task", "task-7")
        .header("x-tollgate-agent", "impostor")
        .header("x-tollgate-tags", "env:test,feature:greet")
        .json(&json!({"model": "gpt-4.1", "user": "end-user-1",
            "metadata": {"tollgate_team": "ignored-key-owns-team", "tollgate_agent": "x"},
            "messages": [{"role": "user", "content": "Hello!"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    assert_eq!(resp.headers()["x-tollgate-cost-usd"], "0.000118000");
    assert_eq!(resp.headers()["x-request-id"], "req_fixture_upstream");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body, Fixture::file("openai/chat.json"), "byte-for-byte");
    // The upstream got its own model id, no tollgate metadata, and our upstream key.
    let sent = up.last_body().unwrap();
    assert_eq!(sent["model"], "gpt-4.1");
    assert!(sent.get("metadata").is_none(), "{sent}");
    assert_eq!(up.calls(), 1);

    let row = row_after_stop(gw, &id).await;
    assert_eq!(row.cost.nanos(), 118_000);
    assert_eq!((row.usage.input, row.usage.output), (19, 10));
    assert_eq!(row.usage_source.as_str(), "reported");
    assert_eq!(row.attribution.team.as_deref(), Some("team-a"));
    assert_eq!(
        row.attribution.agent.as_deref(),
        Some("agent-a"),
        "key owner wins"
    );
    assert_eq!(row.attribution.task.as_deref(), Some("task-7"));
    assert_eq!(row.attribution.user.as_deref(), Some("end-user-1"));
    assert_eq!(row.attribution.tags, vec!["env:test", "feature:greet"]);
    assert_eq!(row.route.requested_model, "gpt-4.1");
    assert_eq!(row.route.upstream, "up");
    assert!(row.priced && !row.partial && !row.stream);
    assert_eq!(row.status, 200);
    assert_eq!(row.price_hash.len(), 16);
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_priced_exactly() {
    let (up, gw) = setup(
        Fixture::json(200, Fixture::file("openai/chat_cached.json")),
        "",
    )
    .await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4o", false),
    )
    .await;
    // 86 × $2.50/M + 1,920 × $1.25/M (cached) + 300 × $10/M
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.005615000");
    let cached_id = request_id(&r);
    up.set(Fixture::json(
        200,
        Fixture::file("openai/chat_reasoning.json"),
    ));
    let r = post(&gw, "/v1/chat/completions", &gw.key, chat_body("o3", false)).await;
    // 75 × $2/M + 1,186 × $8/M (1,024 of them reasoning, billed as output)
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.009638000");
    let reasoning_id = request_id(&r);
    let store = gw.stop().await;
    let c = store.ledger_row(&cached_id).unwrap().unwrap();
    assert_eq!(
        (c.usage.input, c.usage.cache_read, c.usage.output),
        (86, 1920, 300)
    );
    let o = store.ledger_row(&reasoning_id).unwrap().unwrap();
    assert_eq!((o.usage.output, o.usage.reasoning), (1186, 1024));
}

/// Read a streamed body, returning its bytes.
async fn read_all(r: reqwest::Response) -> Bytes {
    r.bytes().await.unwrap()
}

#[tokio::test]
async fn stream_without_client_usage_gets_usage_injected_and_stripped() {
    let (up, gw) = setup(
        Fixture::sse(Fixture::file("openai/chat_stream_usage.sse")),
        "",
    )
    .await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4o-mini", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let id = request_id(&r);
    let got = read_all(r).await;
    let sent = up.last_body().unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asks for usage"
    );
    // What the client sees: every event but the usage-only chunk, bytes unchanged.
    let full = String::from_utf8(Fixture::file("openai/chat_stream_usage.sse").to_vec()).unwrap();
    let expected: String = full
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect();
    assert_eq!(String::from_utf8(got.to_vec()).unwrap(), expected);
    let row = row_after_stop(gw, &id).await;
    assert_eq!((row.usage.input, row.usage.output), (9, 9));
    assert_eq!(row.usage_source.as_str(), "reported");
    // 9 × $0.15/M + 9 × $0.60/M
    assert_eq!(row.cost.nanos(), 6_750);
    assert!(row.stream && !row.partial);
    assert!(row.ttft_us.is_some());
}

#[tokio::test]
async fn stream_with_client_usage_is_byte_for_byte() {
    for file in [
        "openai/chat_stream_usage.sse",
        "openai/chat_stream_usage_null_choices.sse",
    ] {
        let (up, gw) = setup(Fixture::sse(Fixture::file(file)), "").await;
        let mut body = chat_body("gpt-4o-mini", true);
        body["stream_options"] = json!({"include_usage": true});
        let r = post(&gw, "/v1/chat/completions", &gw.key, body).await;
        let id = request_id(&r);
        assert_eq!(read_all(r).await, Fixture::file(file), "{file}");
        assert_eq!(
            up.last_body().unwrap()["stream_options"]["include_usage"],
            true
        );
        let row = row_after_stop(gw, &id).await;
        assert_eq!(row.cost.nanos(), 6_750, "{file}");
    }
}

#[tokio::test]
async fn stream_without_any_usage_is_counted_locally() {
    let (_up, gw) = setup(Fixture::sse(Fixture::file("openai/chat_stream.sse")), "").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4o-mini", true),
    )
    .await;
    let id = request_id(&r);
    assert_eq!(read_all(r).await, Fixture::file("openai/chat_stream.sse"));
    let row = row_after_stop(gw, &id).await;
    assert_eq!(row.usage_source.as_str(), "estimated");
    // o200k_base: the prompt is 19 tokens; "Hello! How can I assist you today?" is 9.
    assert_eq!((row.usage.input, row.usage.output), (19, 9));
    assert!(!row.partial, "the stream completed with [DONE]");
}

#[tokio::test]
async fn upstream_cut_mid_stream_is_metered_as_partial() {
    let mut f = Fixture::sse(Fixture::file("openai/chat_stream_usage.sse"));
    f.cut_after = Some(700);
    f.chunk_delay = Duration::from_millis(5);
    let (_up, gw) = setup(f, "").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4o-mini", true),
    )
    .await;
    let id = request_id(&r);
    let got = String::from_utf8(read_all(r).await.to_vec()).unwrap();
    assert!(got.ends_with("\n\n"), "{got:?}");
    let last = got.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.contains("\"error\""), "the client is told: {last}");
    let row = row_after_stop(gw, &id).await;
    assert!(row.partial);
    assert_eq!(row.error_code.as_deref(), Some("upstream_cut"));
    assert_eq!(row.usage_source.as_str(), "estimated");
    assert_eq!(row.usage.input, 19);
    assert!(row.usage.output >= 1, "tokens received so far are counted");
    assert!(row.cost.nanos() > 0);
}

#[tokio::test]
async fn client_disconnect_mid_stream_still_writes_the_row() {
    let mut f = Fixture::sse(Fixture::file("openai/chat_stream_usage.sse"));
    f.chunk_size = Some(40);
    f.chunk_delay = Duration::from_millis(30);
    let (_up, gw) = setup(f, "").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4o-mini", true),
    )
    .await;
    let id = request_id(&r);
    let mut r = r;
    // Take a few chunks, then hang up.
    for _ in 0..3 {
        let _ = r.chunk().await.unwrap();
    }
    drop(r);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = row_after_stop(gw, &id).await;
    assert!(row.partial);
    assert_eq!(row.status, 499);
    assert_eq!(row.error_code.as_deref(), Some("client_disconnected"));
    assert_eq!(row.usage_source.as_str(), "estimated");
    assert_eq!(row.usage.input, 19);
}

#[tokio::test]
async fn upstream_errors_pass_through_with_their_bodies() {
    let mut f = Fixture::json(429, Fixture::file("openai/error_429.json"));
    f.content_type = "application/json".into();
    let (up, gw) = setup(f, "").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4o-mini", false),
    )
    .await;
    assert_eq!(r.status(), 429);
    let id429 = request_id(&r);
    assert_eq!(
        r.bytes().await.unwrap(),
        Fixture::file("openai/error_429.json")
    );
    for (status, file) in [
        (400, "openai/error_400.json"),
        (500, "openai/error_500.json"),
    ] {
        up.set(Fixture::json(status, Fixture::file(file)));
        let r = post(
            &gw,
            "/v1/chat/completions",
            &gw.key,
            chat_body("gpt-4o-mini", false),
        )
        .await;
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.bytes().await.unwrap(), Fixture::file(file));
    }
    let row = row_after_stop(gw, &id429).await;
    assert_eq!(row.status, 429);
    assert_eq!(row.error_code.as_deref(), Some("upstream_rate_limited"));
    assert_eq!(row.cost.nanos(), 0);
}

#[tokio::test]
async fn upstream_timeout_is_504_in_openai_shape() {
    let mut f = Fixture::json(200, Fixture::file("openai/chat.json"));
    f.delay = Duration::from_millis(1500);
    let (_up, gw) = setup(f, "[server]\nupstream_timeout_ms = 200\n").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4.1", false),
    )
    .await;
    assert_eq!(r.status(), 504);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"].get("param").is_some());
    let row = row_after_stop(gw, &id).await;
    assert_eq!(row.status, 504);
    assert_eq!(row.error_code.as_deref(), Some("upstream_timeout"));
    // The prompt was sent, so it is metered as far as it can be.
    assert_eq!(row.usage_source.as_str(), "estimated");
}

#[tokio::test]
async fn malformed_upstream_json_is_an_upstream_error_and_still_metered() {
    let (_up, gw) = setup(
        Fixture::json(200, Bytes::from_static(b"<html>bad gateway</html>")),
        "",
    )
    .await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key,
        chat_body("gpt-4.1", false),
    )
    .await;
    assert_eq!(r.status(), 502);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["type"], "upstream_error");
    let row = row_after_stop(gw, &id).await;
    assert_eq!(row.error_code.as_deref(), Some("upstream_error"));
    assert!(row.usage.input > 0);
}

#[tokio::test]
async fn embeddings_are_metered() {
    let (_up, gw) = setup(
        Fixture::json(200, Fixture::file("openai/embeddings.json")),
        "",
    )
    .await;
    let r = post(&gw, "/v1/embeddings", &gw.key,
        json!({"model": "text-embedding-3-small", "input": "The food was delicious and the waiter..."})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.000000160");
    let id = request_id(&r);
    assert_eq!(
        r.bytes().await.unwrap(),
        Fixture::file("openai/embeddings.json")
    );
    let row = row_after_stop(gw, &id).await;
    assert_eq!(row.usage.input, 8);
    assert_eq!(row.endpoint.as_str(), "embeddings");
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_errors_and_rows() {
    let (up, gw) = setup(
        Fixture::json(200, Fixture::file("openai/chat.json")),
        "[server]\nmax_body_bytes = 2048\n",
    )
    .await;
    let c = client();
    let send = |body: Bytes, key: Option<&str>| {
        let mut rb = c
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        rb.send()
    };
    let cases: Vec<(Bytes, Option<&str>, u16, &str)> = vec![
        (
            Bytes::from_static(b"{not json"),
            Some(&gw.key),
            400,
            "invalid_request",
        ),
        (
            Bytes::from_static(b"[1,2]"),
            Some(&gw.key),
            400,
            "invalid_request",
        ),
        (
            Bytes::from(vec![b'x'; 4096]),
            Some(&gw.key),
            413,
            "request_too_large",
        ),
        (
            Bytes::from(json!({"model":"nope","messages":[]}).to_string()),
            Some(&gw.key),
            404,
            "model_not_found",
        ),
        (
            Bytes::from(json!({"model":"gpt-4.1","messages":"hi"}).to_string()),
            Some(&gw.key),
            400,
            "invalid_request",
        ),
        (
            Bytes::from(chat_body("gpt-4.1", false).to_string()),
            None,
            401,
            "invalid_api_key",
        ),
        (
            Bytes::from(chat_body("gpt-4.1", false).to_string()),
            Some("tg-wrong"),
            401,
            "invalid_api_key",
        ),
    ];
    for (body, key, status, code) in cases {
        let r = send(body, key).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        assert!(r.headers().contains_key("x-tollgate-request-id"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
        for f in ["message", "type", "param", "code"] {
            assert!(v["error"].get(f).is_some(), "{f} in {v}");
        }
    }
    let r = c.get(gw.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(up.calls(), 0, "nothing bad reached the upstream");
    let store = gw.stop().await;
    // Authenticated failures are in the ledger (5); unauthenticated ones are not.
    assert_eq!(store.ledger_count().unwrap(), 5);
}

#[tokio::test]
async fn arbitrary_bodies_never_crash_the_server() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let (_up, gw) = setup(Fixture::json(200, Fixture::file("openai/chat.json")), "").await;
    let c = client();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let bodies = proptest::collection::vec(any::<u8>(), 0..600);
    use proptest::strategy::ValueTree;
    let mut samples: Vec<Vec<u8>> = (0..64)
        .map(|_| bodies.new_tree(&mut runner).unwrap().current())
        .collect();
    // Structured near-misses too.
    for s in [
        r#"{"model": null, "messages": []}"#,
        r#"{"model": "gpt-4.1", "messages": [], "stream": "yes"}"#,
        r#"{"model": "gpt-4.1", "messages": [], "max_tokens": -5}"#,
        r#"{"model": "gpt-4.1", "messages": [], "metadata": {"tollgate_agent": 7}}"#,
        "\u{0}\u{ffff}",
    ] {
        samples.push(s.as_bytes().to_vec());
    }
    for path in ["/v1/chat/completions", "/v1/embeddings"] {
        for b in &samples {
            let r = c
                .post(gw.url(path))
                .bearer_auth(&gw.key)
                .body(b.clone())
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_client_error() || r.status().is_success(),
                "{}",
                r.status()
            );
        }
    }
    let r = c.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn models_and_admin_usage() {
    let (_up, gw) = setup(Fixture::json(200, Fixture::file("openai/chat.json")), "").await;
    let c = client();
    let v: Value = c
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4.1") && ids.contains(&"o3"));
    for _ in 0..3 {
        post(
            &gw,
            "/v1/chat/completions",
            &gw.key,
            chat_body("gpt-4.1", false),
        )
        .await;
    }
    // Admin: a new key via the API is usable at once.
    let k: Value = c
        .post(gw.url("/admin/keys"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"team": "t2", "agent": "a2", "models": ["gpt-4.1"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key2 = k["key"].as_str().unwrap().to_string();
    let r = post(
        &gw,
        "/v1/chat/completions",
        &key2,
        chat_body("gpt-4.1", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(&gw, "/v1/chat/completions", &key2, chat_body("o3", false)).await;
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_allowed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let u: Value = c
        .get(gw.url("/admin/usage?group_by=agent&since=1h"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = u["groups"].as_array().unwrap();
    let a = groups.iter().find(|g| g["group"] == "agent-a").unwrap();
    assert_eq!(a["requests"], 3);
    assert_eq!(a["cost_usd"], "0.000354000");
    assert_eq!(u["total"]["requests"], 5);
    // Without the master key: 401 in OpenAI's shape.
    let r = c
        .get(gw.url("/admin/usage"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/admin/usage?group_by=planet"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// Issue 18, item 7: a native OpenAI stream whose upstream sends a `data:` event that
/// is not JSON stops there as `upstream_malformed` (row flagged, partial, an error
/// chunk at the end), as every other format's undecodable frame does.
#[tokio::test]
async fn a_non_json_event_on_a_native_stream_is_upstream_malformed() {
    let good = Fixture::file("openai/chat_stream.sse");
    let first_event_end = good.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    let mut bytes = good[..first_event_end].to_vec();
    bytes.extend_from_slice(b"data: <html>502 Bad Gateway</html>\n\n");
    bytes.extend_from_slice(&good[first_event_end..]);
    let (_up, gw) = setup(Fixture::sse(Bytes::from(bytes)), "").await;
    let r = post(
        &gw,
        "/v1/chat/completions",
        &gw.key.clone(),
        chat_body("gpt-4.1", true),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = r.text().await.unwrap();
    assert!(text.contains("upstream_malformed"), "{text}");
    let row = row_after_stop(gw, &id).await;
    assert_eq!(row.error_code.as_deref(), Some("upstream_malformed"));
    assert!(row.partial);
}

//! The Bedrock Converse / ConverseStream endpoints against a Bedrock upstream, end to
//! end: SigV4-signed client requests (as boto3 signs them), a stub upstream replaying
//! documented payloads (event streams encoded frame by frame), the ledger checked after.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use bytes::Bytes;
use http::HeaderMap;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_providers::bedrock::model_path;
use tollgate_providers::eventstream::{FrameDecoder, Message};
use tollgate_providers::sigv4::{self, Credentials};
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::TestGateway;

const MODEL: &str = "us.amazon.nova-2-lite-v1:0";

fn config(origin: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "aws"
kind = "bedrock"
base_url = "{origin}"
region = "us-east-1"
aws_session_token_env = "AWS_SESSION_TOKEN"

[[deployments]]
name = "{MODEL}"
upstream = "aws"
"#
    )
}

async fn setup(fixture: Fixture) -> (FixtureUpstream, TestGateway) {
    let up = FixtureUpstream::start(fixture).await.unwrap();
    let env: HashMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", "AKIDUPSTREAM"),
        ("AWS_SECRET_ACCESS_KEY", "upstream-secret"),
        ("AWS_SESSION_TOKEN", "upstream-session"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let gw = TestGateway::start(&config(&up.origin()), env).await;
    (up, gw)
}

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn now() -> i64 {
    tollgate_server::clock::now_ms() / 1000
}

/// POST signed the way botocore signs: SigV4, service `bedrock`, any region.
async fn signed(
    gw: &TestGateway,
    stream: bool,
    body: &Value,
    key_id: &str,
    secret: &str,
    at: i64,
) -> reqwest::Response {
    let path = model_path(MODEL, stream);
    let bytes = serde_json::to_vec(body).unwrap();
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let creds = Credentials {
        access_key_id: key_id.to_string(),
        secret_access_key: SecretString::from(secret.to_string()),
        session_token: None,
    };
    sigv4::sign(
        "POST",
        &gw.addr.to_string(),
        &path,
        "",
        &mut h,
        &bytes,
        &creds,
        "us-west-2",
        "bedrock",
        at,
    );
    client()
        .post(gw.url(&path))
        .headers(h)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

fn body() -> Value {
    json!({"messages": [{"role": "user", "content": [{"text": "Create a list of 3 pop songs."}]}],
        "system": [{"text": "You are a music expert."}, {"cachePoint": {"type": "default"}}],
        // Above the documented answers' 628 output tokens: an answer past the request's
        // cap would be priced at the cap and flagged `usage_suspect`.
        "inferenceConfig": {"maxTokens": 1024, "temperature": 0.5},
        "requestMetadata": {"tollgate_task": "playlist-1", "campaign": "spring"}})
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string()
}

fn frames(bytes: &[u8]) -> Vec<Message> {
    let mut d = FrameDecoder::default();
    let out = d.feed(bytes).into_iter().map(|(_, m)| m).collect();
    assert!(
        d.error.is_none() && d.pending_len() == 0,
        "client got bad frames"
    );
    out
}

#[tokio::test]
async fn converse_is_signed_both_ways_passed_through_and_priced() {
    let (up, gw) = setup(Fixture::json(200, Fixture::file("bedrock/converse.json"))).await;
    let r = signed(&gw, false, &body(), &gw.key_id, &gw.key, now()).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    // 30 × $0.33/M + 628 × $2.75/M
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.001736900");
    assert_eq!(
        r.bytes().await.unwrap(),
        Fixture::file("bedrock/converse.json")
    );
    // Upstream: the model in the path, tollgate's metadata removed, signed with the
    // configured credentials (verified here with the upstream's secret).
    let path = up.last_path().unwrap();
    assert_eq!(path, "/model/us.amazon.nova-2-lite-v1%3A0/converse");
    let sent = up.last_body().unwrap();
    assert_eq!(sent["requestMetadata"], json!({"campaign": "spring"}));
    assert_eq!(
        sent["system"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    let h = up.last_headers().unwrap();
    assert_eq!(h["x-amz-security-token"], "upstream-session");
    let auth = sigv4::parse_authorization(h["authorization"].to_str().unwrap()).unwrap();
    assert_eq!(
        (
            auth.access_key_id.as_str(),
            auth.region.as_str(),
            auth.service.as_str()
        ),
        ("AKIDUPSTREAM", "us-east-1", "bedrock")
    );
    let raw = up.last_body_bytes().unwrap();
    let received = sigv4::Received {
        method: "POST",
        raw_path: &path,
        raw_query: "",
        headers: &h,
        body: &raw,
    };
    assert_eq!(
        sigv4::verify(&auth, "upstream-secret", &received, now()),
        Ok(())
    );

    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert_eq!(row.endpoint.as_str(), "converse");
    assert_eq!((row.usage.input, row.usage.output), (30, 628));
    assert_eq!(row.attribution.task.as_deref(), Some("playlist-1"));
    assert_eq!(row.attribution.team.as_deref(), Some("team-a"));
    assert_eq!(row.route.upstream_model, MODEL);
    assert!(row.priced);
}

#[tokio::test]
async fn cached_tokens_are_beside_input_tokens() {
    let (_up, gw) = setup(Fixture::json(
        200,
        Fixture::file("bedrock/converse_cached.json"),
    ))
    .await;
    let r = signed(&gw, false, &body(), &gw.key_id, &gw.key, now()).await;
    // 120 × $0.33/M + 3,200 × $0.0825/M (read) + 1,600 × $0.33/M (write: no premium
    // listed) + 40 × $2.75/M
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.000941600");
    let id = request_id(&r);
    let store = gw.stop().await;
    let u = store.ledger_row(&id).unwrap().unwrap().usage;
    assert_eq!(
        (u.input, u.cache_read, u.cache_write_5m, u.output),
        (120, 3200, 1600, 40)
    );
}

#[tokio::test]
async fn every_stream_shape_passes_through_frame_for_frame_and_is_metered() {
    for (file, usage) in [
        ("bedrock/converse_stream.events.json", (30, 0, 628)),
        ("bedrock/converse_stream_tool_use.events.json", (375, 0, 56)),
        (
            "bedrock/converse_stream_cached.events.json",
            (120, 3200, 40),
        ),
        (
            "bedrock/converse_stream_reasoning.events.json",
            (47, 0, 260),
        ),
    ] {
        let (up, gw) = setup(Fixture::eventstream(file)).await;
        let r = signed(&gw, true, &body(), &gw.key_id, &gw.key, now()).await;
        assert_eq!(r.status(), 200, "{file}");
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.amazon.eventstream"
        );
        let id = request_id(&r);
        let got = r.bytes().await.unwrap();
        assert_eq!(got, Fixture::eventstream_bytes(file), "{file}");
        assert_eq!(
            up.last_path().unwrap(),
            "/model/us.amazon.nova-2-lite-v1%3A0/converse-stream"
        );
        let store = gw.stop().await;
        let row = store.ledger_row(&id).unwrap().unwrap();
        assert_eq!(
            (row.usage.input, row.usage.cache_read, row.usage.output),
            usage,
            "{file}"
        );
        assert_eq!(row.usage_source.as_str(), "reported");
        assert!(row.stream && !row.partial, "{file}");
    }
}

#[tokio::test]
async fn a_truncated_event_stream_is_metered_and_ends_with_an_exception() {
    let full = Fixture::eventstream_bytes("bedrock/converse_stream.events.json");
    let mut f = Fixture::eventstream("bedrock/converse_stream.events.json");
    f.cut_after = Some(full.len() - 10);
    f.chunk_delay = std::time::Duration::from_millis(5);
    let (_up, gw) = setup(f).await;
    let r = signed(&gw, true, &body(), &gw.key_id, &gw.key, now()).await;
    let id = request_id(&r);
    let got = frames(&r.bytes().await.unwrap());
    let last = got.last().unwrap();
    assert_eq!(last.message_type(), Some("exception"));
    assert_eq!(
        last.header(":exception-type"),
        Some("internalServerException")
    );
    let text: String = got
        .iter()
        .filter(|m| m.header(":event-type") == Some("contentBlockDelta"))
        .map(|m| {
            serde_json::from_slice::<Value>(&m.payload).unwrap()["delta"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, "Here are three pop songs.");
    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert!(row.partial);
    assert_eq!(row.error_code.as_deref(), Some("upstream_cut"));
    assert_eq!(row.usage_source.as_str(), "estimated");
    assert!(row.usage.input > 0 && row.usage.output > 0);
}

#[tokio::test]
async fn a_corrupt_frame_is_an_upstream_error_not_a_panic() {
    let mut bytes = Fixture::eventstream_bytes("bedrock/converse_stream.events.json").to_vec();
    let first = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    bytes[first + 20] ^= 0x55; // inside the second frame's headers: its CRC fails
    let (_up, gw) = setup(Fixture {
        content_type: "application/vnd.amazon.eventstream".into(),
        chunk_size: Some(50),
        ..Fixture::json(200, Bytes::from(bytes))
    })
    .await;
    let r = signed(&gw, true, &body(), &gw.key_id, &gw.key, now()).await;
    let id = request_id(&r);
    let got = frames(&r.bytes().await.unwrap());
    assert_eq!(got.len(), 2, "the good frame, then the exception");
    assert_eq!(got[1].message_type(), Some("exception"));
    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert_eq!(row.error_code.as_deref(), Some("upstream_malformed"));
    assert!(row.partial);
}

#[tokio::test]
async fn an_exception_mid_stream_reaches_the_client_and_the_ledger() {
    let file = "bedrock/converse_stream_throttled.events.json";
    let (_up, gw) = setup(Fixture::eventstream(file)).await;
    let r = signed(&gw, true, &body(), &gw.key_id, &gw.key, now()).await;
    let id = request_id(&r);
    assert_eq!(r.bytes().await.unwrap(), Fixture::eventstream_bytes(file));
    let store = gw.stop().await;
    let row = store.ledger_row(&id).unwrap().unwrap();
    assert_eq!(row.error_code.as_deref(), Some("upstream_error"));
}

#[tokio::test]
async fn forged_stale_and_unknown_signatures_are_403_in_bedrock_shape_and_unmetered() {
    let (up, gw) = setup(Fixture::json(200, Fixture::file("bedrock/converse.json"))).await;
    let cases = [
        (
            gw.key_id.clone(),
            "not-the-secret".to_string(),
            now(),
            "InvalidSignatureException",
        ),
        (
            gw.key_id.clone(),
            gw.key.clone(),
            now() - 20 * 60,
            "InvalidSignatureException",
        ),
        (
            "tgk_nobody".to_string(),
            gw.key.clone(),
            now(),
            "UnrecognizedClientException",
        ),
    ];
    for (id, secret, at, kind) in cases {
        let r = signed(&gw, false, &body(), &id, &secret, at).await;
        assert_eq!(r.status(), 403, "{kind}");
        assert_eq!(r.headers()["x-amzn-errortype"], kind);
        let v: Value = r.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().len() > 10, "{v}");
    }
    // No credentials at all.
    let r = client()
        .post(gw.url(&model_path(MODEL, false)))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert_eq!(up.calls(), 0);
    // A bearer token (Bedrock API keys) works too.
    let r = client()
        .post(gw.url(&model_path(MODEL, false)))
        .bearer_auth(&gw.key)
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = gw.stop().await;
    assert_eq!(
        store.ledger_count().unwrap(),
        1,
        "only the authenticated request"
    );
}

#[tokio::test]
async fn errors_are_bedrock_shaped() {
    let (up, gw) = setup(
        Fixture::json(429, Fixture::file("bedrock/error_429.json")).with_header(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
        ),
    )
    .await;
    let r = signed(&gw, false, &body(), &gw.key_id, &gw.key, now()).await;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ThrottlingException")
    );
    assert_eq!(
        r.bytes().await.unwrap(),
        Fixture::file("bedrock/error_429.json")
    );
    // Gateway errors: unknown model, malformed body.
    let r = client()
        .post(gw.url(&model_path("no.such-model-v1:0", false)))
        .bearer_auth(&gw.key)
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-amzn-errortype"], "ResourceNotFoundException");
    let r = client()
        .post(gw.url(&model_path(MODEL, false)))
        .bearer_auth(&gw.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
    assert_eq!(up.calls(), 1);
}

/// Issue 18, item 7: attribution a SigV4 signature does not cover is ignored. An
/// `x-tollgate-task` added after signing is treated as absent (the body's metadata
/// names the task); the same header signed is used.
#[tokio::test]
async fn unsigned_attribution_headers_are_ignored() {
    let (_up, gw) = setup(Fixture::json(200, Fixture::file("bedrock/converse.json"))).await;
    let path = model_path(MODEL, false);
    let bytes = serde_json::to_vec(&body()).unwrap();
    let creds = Credentials {
        access_key_id: gw.key_id.clone(),
        secret_access_key: SecretString::from(gw.key.clone()),
        session_token: None,
    };
    let send = |signed_task: bool| {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        if signed_task {
            h.insert("x-tollgate-task", "signed-task".parse().unwrap());
        }
        sigv4::sign(
            "POST",
            &gw.addr.to_string(),
            &path,
            "",
            &mut h,
            &bytes,
            &creds,
            "us-west-2",
            "bedrock",
            now(),
        );
        let mut req = client().post(gw.url(&path)).headers(h).body(bytes.clone());
        if !signed_task {
            req = req.header("x-tollgate-task", "injected-task");
        }
        req.send()
    };
    let unsigned = send(false).await.unwrap();
    assert_eq!(unsigned.status(), 200);
    let unsigned_id = request_id(&unsigned);
    let signed_r = send(true).await.unwrap();
    assert_eq!(signed_r.status(), 200);
    let signed_id = request_id(&signed_r);
    let store = gw.stop().await;
    let task = |id: &str| store.ledger_row(id).unwrap().unwrap().attribution.task;
    assert_eq!(task(&unsigned_id).as_deref(), Some("playlist-1"));
    assert_eq!(task(&signed_id).as_deref(), Some("signed-task"));
}

/// Issue 18, item 7: `inferenceConfig.maxTokens` that is not a positive integer is a
/// 400 ValidationException, never forwarded (as chat and messages refuse theirs).
#[tokio::test]
async fn converse_max_tokens_is_validated() {
    let (up, gw) = setup(Fixture::json(200, Fixture::file("bedrock/converse.json"))).await;
    for bad in [json!("ten"), json!(-5), json!(1e30)] {
        let mut b = body();
        b["inferenceConfig"]["maxTokens"] = bad.clone();
        let r = signed(&gw, false, &b, &gw.key_id, &gw.key, now()).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
    }
    // 2^64 does not fit any integer type: sent as raw JSON text.
    let raw = serde_json::to_string(&body())
        .unwrap()
        .replace("\"maxTokens\":1024", "\"maxTokens\":18446744073709551616");
    assert!(raw.contains("18446744073709551616"));
    let r = client()
        .post(gw.url(&model_path(MODEL, false)))
        .bearer_auth(&gw.key)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
    assert_eq!(up.calls(), 0);
}

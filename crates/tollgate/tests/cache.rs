//! Caching through the real HTTP path: provider prompt-cache breakpoints injected where
//! reuse pays (and only there), and the response cache (exact and semantic) answering
//! repeats at $0 within one tenant, replaying streams in the client's own format.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tollgate_domain::ledger::{CacheKind, LedgerRow};
use tollgate_domain::money::Money;
use tollgate_domain::value::Mechanism;
use tollgate_providers::bedrock::model_path;
use tollgate_providers::eventstream::FrameDecoder;
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::TestGateway;
use tollgate_testkit::sim::{self, SimConfig, SimUpstream};

const CLAUDE: &str = "claude-sonnet-4-5";
const NOVA: &str = "us.amazon.nova-2-lite-v1:0";
const GPT: &str = "gpt-4o-mini";

fn env() -> HashMap<String, String> {
    [
        ("ANTHROPIC_TEST_KEY", "sk-ant"),
        ("OPENAI_TEST_KEY", "sk-oai"),
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One deployment per upstream format, all on one simulator (or fixture upstream).
fn config(v1: &str, extra: &str) -> String {
    let origin = v1.trim_end_matches("/v1");
    format!(
        r#"{extra}
[[upstreams]]
name = "oai"
kind = "openai"
base_url = "{v1}"
api_key_env = "OPENAI_TEST_KEY"
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
name = "{GPT}"
upstream = "oai"
[[deployments]]
name = "{CLAUDE}"
upstream = "ant"
[[deployments]]
name = "{NOVA}"
upstream = "aws"
"#
    )
}

async fn sim_gateway(extra: &str) -> (SimUpstream, TestGateway) {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let gw = TestGateway::start(&config(&sim.base_url(), extra), env()).await;
    (sim, gw)
}

fn http() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A support handbook of about `words` words: the large shared context agents resend.
fn handbook(words: usize) -> String {
    let topics = [
        "refunds",
        "invoices",
        "passwords",
        "shipping",
        "warranty",
        "accounts",
        "exports",
        "billing",
        "security",
        "onboarding",
        "pricing",
        "support",
    ];
    let mut s = String::from("You are the Acme support assistant. Follow the handbook.\n");
    let mut i = 0;
    while s.split_whitespace().count() < words {
        let t = topics[i % topics.len()];
        s.push_str(&format!(
            "Rule {i} on {t}: agents answer questions about {t} within {} hours, cite section {} \
             of the {t} policy, and escalate case class {} to the {t} lead.\n",
            i % 24 + 1,
            i * 7 % 90 + 3,
            i * 13 % 40 + 1
        ));
        i += 1;
    }
    s
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    OpenAi,
    Anthropic,
    Bedrock,
}

/// A request in the client's format with a system prompt and one user turn.
fn request(c: Client, model: &str, system: &str, user: &str, stream: bool) -> (String, Value) {
    match c {
        Client::OpenAi => {
            let mut b = json!({"model": model, "stream": stream, "max_tokens": 100, "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]});
            if stream {
                b["stream_options"] = json!({"include_usage": true});
            }
            ("/v1/chat/completions".into(), b)
        }
        Client::Anthropic => (
            "/v1/messages".into(),
            json!({"model": model, "stream": stream, "max_tokens": 100, "temperature": 0,
                "system": system, "messages": [{"role": "user", "content": user}]}),
        ),
        Client::Bedrock => (
            model_path(model, stream),
            json!({"system": [{"text": system}], "inferenceConfig": {"maxTokens": 100, "temperature": 0},
                "messages": [{"role": "user", "content": [{"text": user}]}]}),
        ),
    }
}

async fn send(
    gw: &TestGateway,
    key: &str,
    c: Client,
    (path, body): &(String, Value),
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http().post(gw.url(path)).json(body);
    req = match c {
        Client::Anthropic => req
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01"),
        _ => req.bearer_auth(key),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// The answer's text, read as the client's SDK reads it (JSON or stream).
fn text_of(c: Client, stream: bool, bytes: &[u8]) -> String {
    if !stream {
        let v: Value = serde_json::from_slice(bytes).unwrap();
        return match c {
            Client::OpenAi => v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            Client::Anthropic => v["content"][0]["text"].as_str().unwrap().to_string(),
            Client::Bedrock => v["output"]["message"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string(),
        };
    }
    let mut out = String::new();
    let mut ended = false;
    let mut usage = false;
    match c {
        Client::OpenAi | Client::Anthropic => {
            let s = std::str::from_utf8(bytes).unwrap();
            for event in s.split("\n\n").filter(|e| !e.trim().is_empty()) {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if data == "[DONE]" {
                    ended = true;
                    continue;
                }
                let v: Value =
                    serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
                if c == Client::OpenAi {
                    if let Some(d) = v["choices"].get(0) {
                        out.push_str(d["delta"]["content"].as_str().unwrap_or(""));
                    }
                    usage |= v["usage"]["completion_tokens"].is_u64();
                } else {
                    match v["type"].as_str().unwrap() {
                        "content_block_delta" => {
                            out.push_str(v["delta"]["text"].as_str().unwrap_or(""))
                        }
                        "message_delta" => usage |= v["usage"]["output_tokens"].is_u64(),
                        "message_stop" => ended = true,
                        _ => {}
                    }
                }
            }
        }
        Client::Bedrock => {
            let mut d = FrameDecoder::default();
            let frames = d.feed(bytes);
            assert!(d.error.is_none() && d.pending_len() == 0, "bad frames");
            for (_, m) in frames {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                match m.header(":event-type").unwrap_or("") {
                    "contentBlockDelta" => out.push_str(v["delta"]["text"].as_str().unwrap_or("")),
                    "metadata" => {
                        ended = true;
                        usage = v["usage"]["outputTokens"].is_u64();
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(ended, "{c:?} stream has no end marker");
    assert!(usage, "{c:?} stream has no usage");
    out
}

/// Rows are written by a background writer: wait until `id` is there.
async fn row_eventually(gw: &TestGateway, id: &str) -> LedgerRow {
    for _ in 0..200 {
        if let Some(r) = gw.store.ledger_row(id).unwrap() {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no ledger row for {id}");
}

#[tokio::test]
async fn breakpoints_are_injected_once_reuse_pays_and_the_provider_reads_them() {
    let (_sim, gw) = sim_gateway("").await;
    let system = handbook(2_500);
    let off = [("x-tollgate-cache", "off")];
    for (c, model) in [(Client::Anthropic, CLAUDE), (Client::Bedrock, NOVA)] {
        let mut ids = Vec::new();
        let mut shaped = Vec::new();
        for q in [
            "How long do refunds take?",
            "Where do I find my invoices?",
            "How do I reset a password?",
        ] {
            let r = send(&gw, &gw.key, c, &request(c, model, &system, q, false), &off).await;
            assert_eq!(r.status(), 200, "{c:?}");
            shaped.push(header(&r, "x-tollgate-prompt-cache"));
            ids.push(header(&r, "x-tollgate-request-id").unwrap());
            r.bytes().await.unwrap();
        }
        // First sight of the prefix: nothing is known about its reuse, no breakpoint.
        // It came back within five minutes: a 5-minute breakpoint pays from then on.
        assert_eq!(shaped[0], None, "{c:?}");
        assert_eq!(shaped[1].as_deref(), Some("1 (5m)"), "{c:?}");
        assert_eq!(shaped[2].as_deref(), Some("1 (5m)"), "{c:?}");
        let rows = [
            row_eventually(&gw, &ids[0]).await,
            row_eventually(&gw, &ids[1]).await,
            row_eventually(&gw, &ids[2]).await,
        ];
        assert!(rows[0].cache.is_none());
        assert_eq!(rows[0].usage.cache_write_5m + rows[0].usage.cache_read, 0);
        // The simulator caches only behind a breakpoint it received: markers were on the wire.
        let written = rows[1].usage.cache_write_5m;
        assert!(written > 2_000, "{c:?}: {:?}", rows[1].usage);
        assert_eq!(rows[2].usage.cache_read, written, "{c:?}");
        assert_eq!(rows[2].usage.cache_write_5m, 0, "{c:?}");
        for r in &rows[1..] {
            let k = r.cache.as_ref().unwrap();
            assert_eq!(k.kind, CacheKind::PromptInjected);
            assert!(!k.miss, "{c:?}: expected {k:?}, got {:?}", r.usage);
        }
        assert!(rows[2].cost < rows[0].cost, "{c:?}: a read is cheaper");
    }
    let s = gw.store.savings_report(None, 0, i64::MAX).unwrap();
    let injected = s
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::PromptCacheInjected)
        .unwrap();
    assert_eq!(injected.requests, 4);
    assert_eq!(injected.misses, 0);
    // Two writes at the 1.25x premium, two reads at 0.1x: a net saving.
    assert!(injected.saved() > Money::ZERO, "{injected:?}");
    let m = http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("mechanism=\"prompt_cache_injected\""), "{m}");
    assert!(!m.contains("tollgate_prompt_cache_misses_total{"), "{m}");
}

#[tokio::test]
async fn markers_respect_the_minimum_and_the_clients_own() {
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("anthropic/message.json")))
        .await
        .unwrap();
    let gw = TestGateway::start(&config(&up.base_url(), ""), env()).await;
    let always = [
        ("x-tollgate-prompt-cache", "always"),
        ("x-tollgate-cache", "off"),
    ];
    let count = |v: &Value| v.to_string().matches("cache_control").count();

    // Long system prompt, asked always: the system prompt and the last message.
    let long = handbook(2_500);
    let r = send(
        &gw,
        &gw.key,
        Client::Anthropic,
        &request(Client::Anthropic, CLAUDE, &long, "Hi", false),
        &always,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-prompt-cache").as_deref(),
        Some("2 (5m, 5m)")
    );
    let sent = up.last_body().unwrap();
    assert_eq!(count(&sent), 2, "{sent}");
    assert_eq!(
        sent["messages"][0]["content"][0]["cache_control"]["type"],
        "ephemeral"
    );
    assert_eq!(sent["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(sent["system"][0]["text"], long.as_str());

    // Below the model's minimum (1,024 tokens): nothing, even when asked always.
    let r = send(
        &gw,
        &gw.key,
        Client::Anthropic,
        &request(Client::Anthropic, CLAUDE, "Be brief.", "Hi", false),
        &always,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-prompt-cache"), None);
    assert_eq!(count(&up.last_body().unwrap()), 0);

    // The client's own markers win: with four placed, the request goes as it was sent.
    let mut body = json!({"model": CLAUDE, "max_tokens": 100,
        "system": [{"type": "text", "text": long, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": []});
    for i in 0..3 {
        body["messages"].as_array_mut().unwrap().push(json!({"role": if i % 2 == 0 {"user"} else {"assistant"},
            "content": [{"type": "text", "text": handbook(600 + i), "cache_control": {"type": "ephemeral"}}]}));
    }
    let r = send(
        &gw,
        &gw.key,
        Client::Anthropic,
        &("/v1/messages".into(), body.clone()),
        &always,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-prompt-cache"), None);
    assert_eq!(up.last_body().unwrap(), body);

    // One marker of the client's: kept as placed (its 1-hour TTL too), at most four in all.
    body["messages"] = json!([{"role": "user", "content": handbook(1_500)},
        {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Now answer."}]);
    let r = send(
        &gw,
        &gw.key,
        Client::Anthropic,
        &("/v1/messages".into(), body.clone()),
        &always,
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = up.last_body().unwrap();
    assert_eq!(sent["system"], body["system"]);
    assert!((2..=4).contains(&count(&sent)), "{sent}");

    // OpenAI: a prompt_cache_key (the tenant and prefix), asked for with `always` on a
    // server that is not api.openai.com; `auto` leaves such a server's body alone.
    up.set(Fixture::json(200, Fixture::file("openai/chat.json")));
    let req = request(Client::OpenAi, GPT, &long, "Hi", false);
    let r = send(&gw, &gw.key, Client::OpenAi, &req, &always).await;
    assert_eq!(r.status(), 200);
    let k = up.last_body().unwrap()["prompt_cache_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(k.starts_with("tg-") && k.len() == 35, "{k}");
    let r = send(
        &gw,
        &gw.key,
        Client::OpenAi,
        &req,
        &[("x-tollgate-cache", "off")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(up.last_body().unwrap().get("prompt_cache_key").is_none());
}

#[tokio::test]
async fn exact_hits_are_free_metered_and_never_cross_tenants() {
    let (sim, gw) = sim_gateway("").await;
    let req = request(
        Client::OpenAi,
        GPT,
        "You are terse.",
        "Name three primary colors.",
        false,
    );
    let a = send(&gw, &gw.key, Client::OpenAi, &req, &[]).await;
    assert_eq!(header(&a, "x-tollgate-cache").as_deref(), Some("miss"));
    let first_id = header(&a, "x-tollgate-request-id").unwrap();
    let a_text = text_of(Client::OpenAi, false, &a.bytes().await.unwrap());
    let first = row_eventually(&gw, &first_id).await;

    let b = send(&gw, &gw.key, Client::OpenAi, &req, &[]).await;
    assert_eq!(b.status(), 200);
    assert_eq!(header(&b, "x-tollgate-cache").as_deref(), Some("hit"));
    assert_eq!(
        header(&b, "x-tollgate-cache-kind").as_deref(),
        Some("exact")
    );
    let charged: f64 = header(&b, "x-tollgate-cost-usd").unwrap().parse().unwrap();
    assert_eq!(charged, 0.0);
    let id = header(&b, "x-tollgate-request-id").unwrap();
    assert_eq!(
        text_of(Client::OpenAi, false, &b.bytes().await.unwrap()),
        a_text
    );
    assert_eq!(
        sim.stats.chat.load(Ordering::SeqCst),
        1,
        "no second upstream call"
    );
    let hit = row_eventually(&gw, &id).await;
    assert_eq!(hit.cost, Money::ZERO);
    let k = hit.cache.as_ref().unwrap();
    assert_eq!(k.kind, CacheKind::ResponseExact);
    assert_eq!(k.avoided_cost, first.cost);
    // No provider tokens were consumed: the row's usage is zero (so bill reconciliation
    // stays exact); what the answer would have cost is the avoided cost.
    assert_eq!(hit.usage.input + hit.usage.output + hit.usage.cache_read, 0);

    // The same question from another team is a miss: entries never cross tenants.
    let k: Value = http()
        .post(gw.url("/admin/keys"))
        .bearer_auth(tollgate_testkit::harness::MASTER_KEY)
        .json(&json!({"team": "team-b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = k["key"].as_str().unwrap().to_string();
    let c = send(&gw, &other, Client::OpenAi, &req, &[]).await;
    assert_eq!(c.status(), 200);
    assert_eq!(header(&c, "x-tollgate-cache").as_deref(), Some("miss"));
    c.bytes().await.unwrap();
    assert_eq!(sim.stats.chat.load(Ordering::SeqCst), 2);

    // A sampling request is not cached unless asked; `refresh` calls upstream again.
    let mut sampled = req.clone();
    sampled.1["temperature"] = json!(0.9);
    for _ in 0..2 {
        let r = send(&gw, &gw.key, Client::OpenAi, &sampled, &[]).await;
        assert_eq!(header(&r, "x-tollgate-cache").as_deref(), Some("bypass"));
        r.bytes().await.unwrap();
    }
    let r = send(
        &gw,
        &gw.key,
        Client::OpenAi,
        &req,
        &[("x-tollgate-cache", "refresh")],
    )
    .await;
    assert_eq!(header(&r, "x-tollgate-cache").as_deref(), Some("miss"));
    r.bytes().await.unwrap();
    assert_eq!(sim.stats.chat.load(Ordering::SeqCst), 5);

    let s = gw.store.savings_report(None, 0, i64::MAX).unwrap();
    let exact = s
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::ResponseCacheExact)
        .unwrap();
    assert_eq!((exact.requests, exact.saved()), (1, first.cost));
    let m = http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("tollgate_response_cache_lookups_total{result=\"hit_exact\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_response_cache_lookups_total{result=\"miss\"} 2\n"),
        "{m}"
    );
    assert!(m.contains("tollgate_response_cache_entries 2\n"), "{m}");
    let saved = m
        .lines()
        .find(|l| {
            l.starts_with("tollgate_savings_usd{")
                && l.contains("mechanism=\"response_cache_exact\"")
        })
        .unwrap();
    assert!(saved.ends_with(&format!(" {}", first.cost)), "{saved}");
}

#[tokio::test]
async fn a_paraphrase_in_the_same_context_is_a_semantic_hit() {
    let (sim, gw) = sim_gateway("").await;
    let system = "You are the Acme help desk.";
    let ask = |q: &str| request(Client::OpenAi, GPT, system, q, false);
    let a = send(
        &gw,
        &gw.key,
        Client::OpenAi,
        &ask("How do I reset my password?"),
        &[],
    )
    .await;
    assert_eq!(header(&a, "x-tollgate-cache").as_deref(), Some("miss"));
    let a_text = text_of(Client::OpenAi, false, &a.bytes().await.unwrap());

    let b = send(
        &gw,
        &gw.key,
        Client::OpenAi,
        &ask("How can I reset my password?"),
        &[],
    )
    .await;
    assert_eq!(header(&b, "x-tollgate-cache").as_deref(), Some("hit"));
    assert_eq!(
        header(&b, "x-tollgate-cache-kind").as_deref(),
        Some("semantic")
    );
    let sim_score: f64 = header(&b, "x-tollgate-cache-similarity")
        .unwrap()
        .parse()
        .unwrap();
    let threshold: f64 = header(&b, "x-tollgate-cache-threshold")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        sim_score >= threshold && sim_score < 1.0,
        "{sim_score} vs {threshold}"
    );
    let id = header(&b, "x-tollgate-request-id").unwrap();
    assert_eq!(
        text_of(Client::OpenAi, false, &b.bytes().await.unwrap()),
        a_text
    );
    let hit = row_eventually(&gw, &id).await;
    let k = hit.cache.unwrap();
    assert_eq!(k.kind, CacheKind::ResponseSemantic);
    assert!(k.similarity_ppm.unwrap() >= (threshold * 1e6) as u32 - 1);

    // Another question, or the same one under another system prompt: a miss.
    let c = send(
        &gw,
        &gw.key,
        Client::OpenAi,
        &ask("How do I delete my account?"),
        &[],
    )
    .await;
    assert_eq!(header(&c, "x-tollgate-cache").as_deref(), Some("miss"));
    c.bytes().await.unwrap();
    let other = request(
        Client::OpenAi,
        GPT,
        "You are a pirate.",
        "How can I reset my password?",
        false,
    );
    let d = send(&gw, &gw.key, Client::OpenAi, &other, &[]).await;
    assert_eq!(header(&d, "x-tollgate-cache").as_deref(), Some("miss"));
    d.bytes().await.unwrap();
    assert_eq!(sim.stats.chat.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn streams_are_replayed_in_each_format_and_cut_streams_are_not_cached() {
    let (sim, gw) = sim_gateway("").await;
    let mut calls = 0;
    for (c, model) in [
        (Client::OpenAi, GPT),
        (Client::Anthropic, CLAUDE),
        (Client::Bedrock, NOVA),
    ] {
        let req = request(
            c,
            model,
            "You are terse.",
            &format!("List two fruits ({c:?})."),
            true,
        );
        let a = send(&gw, &gw.key, c, &req, &[]).await;
        assert_eq!(
            header(&a, "x-tollgate-cache").as_deref(),
            Some("miss"),
            "{c:?}"
        );
        let a_text = text_of(c, true, &a.bytes().await.unwrap());
        calls += 1;
        // The entry is stored when the stream completed; the meter finishes just after.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let b = send(&gw, &gw.key, c, &req, &[]).await;
        assert_eq!(b.status(), 200);
        assert_eq!(
            header(&b, "x-tollgate-cache").as_deref(),
            Some("hit"),
            "{c:?}"
        );
        let id = header(&b, "x-tollgate-request-id").unwrap();
        assert_eq!(text_of(c, true, &b.bytes().await.unwrap()), a_text, "{c:?}");
        let hit = row_eventually(&gw, &id).await;
        assert!(hit.stream && hit.cost == Money::ZERO, "{c:?}");
        assert!(hit.cache.unwrap().avoided_cost > Money::ZERO, "{c:?}");

        // An answer the upstream cut mid-stream is never stored.
        let cut = request(
            c,
            model,
            "You are terse.",
            &format!("Go on [[sim:cut]] ({c:?})"),
            true,
        );
        for _ in 0..2 {
            let r = send(&gw, &gw.key, c, &cut, &[]).await;
            assert_ne!(
                header(&r, "x-tollgate-cache").as_deref(),
                Some("hit"),
                "{c:?}"
            );
            let _ = r.bytes().await;
            calls += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(sim.stats.chat.load(Ordering::SeqCst), calls, "{c:?}");
    }
}

//! Budgets and rate limits end to end: a real gateway, a counting stub upstream, real
//! HTTP clients racing, the ledger and the counters checked after.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::{MASTER_KEY, TestGateway};

/// One request costs exactly $0.001: the fixture reports 10 completion tokens, output
/// is $100 per Mtok, input is free; with `max_tokens = 10` the worst case equals it.
const COST_NANOS: i64 = 1_000_000;

fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"{extra}
[[upstreams]]
name = "up"
base_url = "{upstream}"

[[deployments]]
name = "m"
upstream = "up"
model = "gpt-4.1"
price = {{ input = "0", output = "100" }}
"#
    )
}

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

fn chat(max_tokens: Option<u64>) -> Value {
    let mut b = json!({"model": "m", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"}]});
    if let Some(n) = max_tokens {
        b["max_tokens"] = json!(n);
    }
    b
}

async fn fixture(delay_ms: u64) -> FixtureUpstream {
    let mut f = Fixture::json(200, Fixture::file("openai/chat.json"));
    f.delay = Duration::from_millis(delay_ms);
    FixtureUpstream::start(f).await.unwrap()
}

async fn admin_budgets(gw: &TestGateway) -> Value {
    client()
        .get(gw.url("/admin/budgets"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Fire `n` chat requests at once across `gateways`; return the statuses.
async fn race(gateways: &[(&TestGateway, String)], n: usize, body: Value) -> Vec<u16> {
    let http = client();
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..n {
        let (gw, key) = &gateways[i % gateways.len()];
        let req = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body);
        joins.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let mut out = Vec::new();
    while let Some(s) = joins.join_next().await {
        out.push(s.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_requests_never_overspend() {
    let up = fixture(20).await;
    let cfg = config(
        &up.base_url(),
        r#"[[budgets.limits]]
scope = "org"
period = "lifetime"
limit_usd = "0.1"
"#,
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let statuses = race(&[(&gw, gw.key.clone())], 500, chat(Some(10))).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(ok + refused, 500, "{statuses:?}");
    // Let every settlement land, then check the live counters: nothing left reserved.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let live = &admin_budgets(&gw).await["budgets"][0]["current"][0]["live"];
    assert_eq!(live["reserved_usd"], "0.000000000", "{live}");
    let store = gw.stop().await;
    let forwarded = up.calls();
    let rep = store.usage_report(None, 0, i64::MAX).unwrap();
    eprintln!(
        "500 concurrent requests, budget $0.1 at $0.001 each: {ok} forwarded (upstream saw {forwarded}), \
         {refused} refused with 402; settled spend ${} in {} ledger rows",
        rep.total.cost, rep.total.requests
    );
    assert_eq!(ok, 100, "the budget affords exactly 100");
    assert_eq!(
        forwarded, ok,
        "every forwarded request was paid for, no refused one reached the upstream"
    );
    assert!(rep.total.cost.nanos() <= 100 * COST_NANOS);
    assert_eq!(rep.total.cost.nanos(), ok as i64 * COST_NANOS);
    assert_eq!(
        rep.total.requests, 500,
        "every request, refused or not, has its row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_openai_shaped_with_sdk_headers() {
    let up = fixture(0).await;
    let cfg = config(
        &up.base_url(),
        r#"[[budgets.limits]]
scope = "agent:*"
period = "day"
limit_usd = "0.0025"
alert_at = [50, 100]

[[rate_limits]]
scope = "team:team-a"
requests_per_minute = 3
"#,
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let http = client();
    let send = |key: &str| {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat(Some(10)))
            .send()
    };
    let r = send(&gw.key).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-tollgate-budget-remaining-usd"],
        "0.001500000"
    );
    assert_eq!(r.headers()["x-tollgate-ratelimit-remaining-requests"], "2");
    assert_eq!(send(&gw.key).await.unwrap().status(), 200);
    // $0.0005 left: a $0.001 worst case does not fit.
    let r = send(&gw.key).await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["x-should-retry"], "false");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "budget_exceeded");
    assert_eq!(e["error"]["type"], "insufficient_quota");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("agent:agent-a") && msg.contains("$0.000500000 left"),
        "{msg}"
    );
    // A refused request took nothing from the team's rate limit: another agent of the
    // team has its own budget and the team's third request of the minute.
    let other: Value = http
        .post(gw.url("/admin/keys"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"team": "team-a", "agent": "agent-b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = other["key"].as_str().unwrap().to_string();
    assert_eq!(send(&other).await.unwrap().status(), 200);
    let r = send(&other).await.unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "3");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(h["x-should-retry"], "true");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    let retry_ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=120).contains(&retry) && retry_ms <= retry * 1000,
        "{retry} {retry_ms}"
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limited");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team:team-a")
    );
    assert_eq!(up.calls(), 3);
    // The 50% threshold fired once (the alert is recorded even without a webhook).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let store = gw.stop().await;
    let alerts = store.alerts(None, 10).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, "budget_threshold");
    assert_eq!(alerts[0].status, "no_webhook");
    assert!(alerts[0].text.contains("50%"), "{}", alerts[0].text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_is_clamped_to_what_the_budget_can_pay() {
    let up = fixture(0).await;
    let cfg = config(
        &up.base_url(),
        r#"[budgets]
clamp_max_tokens = true
min_clamped_tokens = 5
[[budgets.limits]]
scope = "team:team-a"
period = "month"
limit_usd = "0.0015"
"#,
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let http = client();
    let send = |n| {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&chat(n))
            .send()
    };
    // No max_tokens: the default cap (4096 tokens, $0.41) is clamped to 15 tokens.
    let r = send(None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-max-tokens-clamped"], "15");
    assert_eq!(up.last_body().unwrap()["max_tokens"], 15);
    // $0.0005 left pays 5 tokens: clamped again. Then below 5: refused.
    let r = send(Some(100)).await.unwrap();
    assert_eq!(r.headers()["x-tollgate-max-tokens-clamped"], "5");
    assert_eq!(up.last_body().unwrap()["max_tokens"], 5);
    // The fixture still reports 10 tokens, more than the 5 the upstream was allowed:
    // not believed, the call is charged its cap (no overage) and flagged
    // `usage_suspect`. The budget is then spent: refused.
    assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.000500000");
    let suspect = r.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let r = send(Some(100)).await.unwrap();
    assert_eq!(r.status(), 402);
    let stats = admin_budgets(&gw).await["stats"].clone();
    assert_eq!(stats["clamped"], 2);
    assert_eq!(stats["overages"], 0);
    assert_eq!(stats["overage_usd"], "0.000000000");
    assert_eq!(up.calls(), 2);
    let store = gw.stop().await;
    assert!(store.ledger_row(&suspect).unwrap().unwrap().usage_suspect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_restart_and_runtime_budgets_count_past_spend() {
    let up = fixture(0).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let cfg = config(
        &up.base_url(),
        r#"[[budgets.limits]]
scope = "org"
period = "day"
limit_usd = "0.003"
"#,
    );
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;
    let http = client();
    for _ in 0..2 {
        let r = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&chat(Some(10)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    gw.stop().await;
    // A new process on the same database: $0.002 of $0.003 is already spent today.
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;
    let send = || {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&chat(Some(10)))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(send().await.unwrap().status(), 402);
    // A budget set at run time on a scope that already spent counts that spend (what the
    // ledger holds: wait for the batched writer, milliseconds behind, to commit).
    for _ in 0..200 {
        if gw.store.ledger_count().unwrap() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = http
        .put(gw.url("/admin/budgets"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"scope": "team:team-a", "period": "week", "limit_usd": "0.0035"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Lift the org budget with a bigger run-time one; the team's ($0.003 spent) rules.
    let r = http
        .put(gw.url("/admin/budgets"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"scope": "org", "period": "day", "limit_usd": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = send().await.unwrap();
    assert_eq!(r.status(), 402);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team:team-a"),
        "{e}"
    );
    let b = admin_budgets(&gw).await;
    let team = b["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["scope"] == "team:team-a")
        .unwrap()
        .clone();
    assert_eq!(team["source"], "runtime");
    assert_eq!(team["current"][0]["live"]["spent_usd"], "0.003000000");
    assert_eq!(up.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_sharing_redis_never_overspend() {
    let url = match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_REDIS_URL is not set");
            return;
        }
    };
    let up = fixture(10).await;
    let prefix = format!(
        "tgtest:{}:{}:replicas",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let cfg = config(
        &up.base_url(),
        &format!(
            r#"[budgets]
counters = "redis"
redis_url = "{url}"
redis_prefix = "{prefix}"
[[budgets.limits]]
scope = "org"
period = "day"
limit_usd = "0.06"
"#
        ),
    );
    // Two replicas, each with its own SQLite ledger, one Redis.
    let a = TestGateway::start(&cfg, HashMap::new()).await;
    let b = TestGateway::start(&cfg, HashMap::new()).await;
    let statuses = race(
        &[(&a, a.key.clone()), (&b, b.key.clone())],
        300,
        chat(Some(10)),
    )
    .await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = admin_budgets(&a).await["budgets"][0]["current"][0]["live"].clone();
    let (sa, sb) = (a.stop().await, b.stop().await);
    let spent = sa
        .usage_report(None, 0, i64::MAX)
        .unwrap()
        .total
        .cost
        .nanos()
        + sb.usage_report(None, 0, i64::MAX)
            .unwrap()
            .total
            .cost
            .nanos();
    eprintln!(
        "two replicas, one Redis, 300 requests, budget $0.06: {ok} forwarded, upstream saw {}, spent ${}",
        up.calls(),
        spent as f64 / 1e9
    );
    assert_eq!(ok, 60);
    assert_eq!(up.calls(), 60);
    assert_eq!(spent, 60 * COST_NANOS);
    assert_eq!(live["spent_usd"], "0.060000000", "{live}");
    assert_eq!(live["reserved_usd"], "0.000000000", "{live}");
    let r = tollgate_store::counters::RedisCounters::connect(&url, &prefix)
        .await
        .unwrap();
    r.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_are_released_on_every_path() {
    let up = fixture(0).await;
    let cfg = config(
        &up.base_url(),
        r#"[[budgets.limits]]
scope = "org"
period = "day"
limit_usd = "1"
"#,
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let http = client();
    let post = |body: Value| {
        http.post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&body)
            .send()
    };
    // 1. A JSON success.
    assert_eq!(post(chat(Some(10))).await.unwrap().status(), 200);
    // 2. A stream read to the end.
    let mut f = Fixture::sse(Fixture::file("openai/chat_stream_usage.sse"));
    up.set(f.clone());
    let mut s = chat(Some(10));
    s["stream"] = json!(true);
    let r = post(s.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // 3. A stream the client hangs up on half way.
    f.chunk_size = Some(40);
    f.chunk_delay = Duration::from_millis(30);
    up.set(f);
    let mut r = post(s).await.unwrap();
    for _ in 0..3 {
        let _ = r.chunk().await.unwrap();
    }
    drop(r);
    // 4. An upstream error.
    up.set(Fixture::json(500, Fixture::file("openai/error_500.json")));
    assert_eq!(post(chat(Some(10))).await.unwrap().status(), 500);
    // 5. A client that gives up while the upstream is still thinking (the handler
    //    future is dropped mid-call).
    let mut slow = Fixture::json(200, Fixture::file("openai/chat.json"));
    slow.delay = Duration::from_millis(500);
    up.set(slow);
    let gave_up = tokio::time::timeout(Duration::from_millis(100), post(chat(Some(10)))).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(800)).await;

    let live = admin_budgets(&gw).await["budgets"][0]["current"][0]["live"].clone();
    assert_eq!(live["reserved_usd"], "0.000000000", "{live}");
    let store = gw.stop().await;
    let rep = store.usage_report(None, 0, i64::MAX).unwrap();
    assert_eq!(rep.total.requests, 5);
    assert_eq!(
        live["spent_usd"],
        rep.total.cost.to_string(),
        "the counters agree with the ledger"
    );
}

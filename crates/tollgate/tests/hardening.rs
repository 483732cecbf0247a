//! Hard limits against bad upstreams, bad clients and other tenants (issue 18): each
//! test is an attack from the adversarial probe, run against a real gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::{MASTER_KEY, TestGateway, config_for};

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat(max_tokens: u64) -> Value {
    json!({"model": "gpt-4.1", "max_tokens": max_tokens, "messages": [
        {"role": "user", "content": "Hello!"}]})
}

/// The documented chat answer with its usage replaced.
fn chat_answer(prompt: u64, completion: u64) -> Fixture {
    let mut v: Value = serde_json::from_slice(&Fixture::file("openai/chat.json")).unwrap();
    v["usage"]["prompt_tokens"] = json!(prompt);
    v["usage"]["completion_tokens"] = json!(completion);
    v["usage"]["total_tokens"] = json!(prompt.saturating_add(completion));
    Fixture::json(200, serde_json::to_vec(&v).unwrap())
}

async fn admin(gw: &TestGateway, path: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const BUDGET: &str = r#"
[[budgets.limits]]
scope = "org"
period = "lifetime"
limit_usd = "100"
"#;

/// Issue 18, item 1: an upstream reporting 10^17 tokens. The row is priced at what the
/// request could have used (gpt-4.1's 1,047,576-token context window at $2/Mtok and
/// the request's `max_tokens = 50` at $8/Mtok = $2.095552), flagged `usage_suspect`,
/// alerted and counted; later calls, reports, budgets, the admin API and a restart all
/// keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_reported_usage_is_bounded_flagged_and_bricks_nothing() {
    let up = FixtureUpstream::start(chat_answer(10u64.pow(17), 10u64.pow(17)))
        .await
        .unwrap();
    let cfg = config_for(&up.base_url(), &[("gpt-4.1", "gpt-4.1")], BUDGET);
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let http = client();
    let bad = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&chat(50))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 200);
    assert_eq!(bad.headers()["x-tollgate-cost-usd"], "2.095552000");
    let bad_id = bad.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    up.set(Fixture::json(200, Fixture::file("openai/chat.json")));
    let mut good_ids = Vec::new();
    for _ in 0..3 {
        let r = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&chat(50))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // 19 prompt tokens at $2/Mtok + 10 output at $8/Mtok.
        assert_eq!(r.headers()["x-tollgate-cost-usd"], "0.000118000");
        good_ids.push(
            r.headers()["x-tollgate-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    for path in ["/admin/usage", "/admin/budgets", "/admin/dashboard"] {
        let (status, body) = admin(&gw, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let metrics = http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_usage_suspect_total{deployment=\"gpt-4.1\"} 1"),
        "{metrics}"
    );
    let stopped = gw.stop().await;
    let row = stopped.ledger_row(&bad_id).unwrap().unwrap();
    assert!(row.usage_suspect);
    assert_eq!(row.usage.prompt_total(), 1_047_576);
    assert_eq!(row.usage.output, 50);
    assert_eq!(row.cost.nanos(), 2_095_552_000);
    for id in &good_ids {
        assert!(!stopped.ledger_row(id).unwrap().unwrap().usage_suspect);
    }
    let alerts = stopped.alerts(Some("gpt-4.1"), 10).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, "usage_suspect");
    let rep = stopped.usage_report(None, 0, i64::MAX).unwrap();
    assert_eq!(rep.total.requests, 4);
    assert_eq!(rep.total.cost.nanos(), 2_095_552_000 + 3 * 118_000);

    // Restart on the same ledger: the counters seed from it, and the gateway serves.
    let db = stopped.path().to_path_buf();
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;
    let r = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&chat(50))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, budgets) = admin(&gw, "/admin/budgets").await;
    assert_eq!(status, 200, "{budgets}");
    let spent = budgets["budgets"][0]["current"][0]["spent_usd"].clone();
    assert_eq!(spent, "2.095906000", "{budgets}");
    drop(stopped);
    gw.stop().await;
}

async fn task_call(
    gw: &TestGateway,
    key: &str,
    task: &str,
    messages: Vec<Value>,
) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-tollgate-task", task)
        .json(&json!({"model": "gpt-4.1", "messages": messages, "max_tokens": 50}))
        .send()
        .await
        .unwrap()
}

/// Issue 18, item 3: a key of team A looping on team B's task id. Before, A's calls
/// counted in B's task and halted it (B's next call got 409). Now A is refused (403,
/// OpenAI-shaped) before the guard counts anything, its rows do not name the task, and
/// B's task runs on, also after a restart (the owner is learnt from the ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_team_cannot_count_in_or_halt_your_task() {
    use tollgate_testkit::agents::{self, Runaway};
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let cfg = config_for(
        &up.base_url(),
        &[("gpt-4.1", "gpt-4.1")],
        "[guard]\nloop_max_repeats = 3\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let store = tollgate_store::SqliteStore::open(&db).unwrap();
    let (_, key_b) = store
        .create_key(
            &tollgate_store::NewKey {
                team: Some("team-b".into()),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;

    let (goal, steps) = agents::healthy(5, 12);
    for i in 0..2 {
        let r = task_call(
            &gw,
            &key_b,
            "task-b",
            agents::conversation(&goal, &steps, i + 1),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // Team A replays the same call on B's task id, far past the loop limit.
    let (rgoal, rsteps) = agents::runaway(7, Runaway::Replay, 1, 10);
    let before = up.calls();
    for i in 0..rsteps.len() {
        let r = task_call(
            &gw,
            &gw.key,
            "task-b",
            agents::conversation(&rgoal, &rsteps, i + 1),
        )
        .await;
        assert_eq!(r.status(), 403, "call {i} of the other team");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "permission_error", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("task-b"),
            "{e}"
        );
    }
    assert_eq!(
        up.calls(),
        before,
        "no call of the other team went upstream"
    );
    // B's task runs on.
    for i in 2..6 {
        let r = task_call(
            &gw,
            &key_b,
            "task-b",
            agents::conversation(&goal, &steps, i + 1),
        )
        .await;
        assert_eq!(r.status(), 200, "B's call {i}");
    }
    let stopped = gw.stop().await;
    let rows = stopped.ledger_rows(0, i64::MAX, 1000).unwrap();
    let in_b: Vec<_> = rows
        .iter()
        .filter(|r| r.attribution.task.as_deref() == Some("task-b"))
        .collect();
    assert_eq!(in_b.len(), 6, "only B's calls are in B's task");
    assert!(
        in_b.iter()
            .all(|r| r.attribution.team.as_deref() == Some("team-b"))
    );
    assert!(
        stopped.task_record("task-b").unwrap().is_none(),
        "never halted"
    );

    // After a restart the other team calls first: still refused (learnt from the ledger).
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;
    let r = task_call(
        &gw,
        &gw.key,
        "task-b",
        agents::conversation(&rgoal, &rsteps, 1),
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = task_call(
        &gw,
        &key_b,
        "task-b",
        agents::conversation(&goal, &steps, 7),
    )
    .await;
    assert_eq!(r.status(), 200);
    // A's own task ids are A's.
    let r = task_call(
        &gw,
        &gw.key,
        "task-a",
        agents::conversation(&rgoal, &rsteps, 1),
    )
    .await;
    assert_eq!(r.status(), 200);
    gw.stop().await;
    drop(stopped);
}

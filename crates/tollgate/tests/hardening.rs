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
    assert!(
        metrics.contains("\ntollgate_ledger_queue_depth "),
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

/// An HTTP/1.1 request written by hand: the head, then as much body as the test says.
async fn raw_head(gw: &TestGateway, head: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Read one response (head and a `content-length` body): status, head, body.
async fn read_response(s: &mut tokio::net::TcpStream) -> (u16, String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    (status, head, body)
}

/// Send one chunk of `n` bytes of a chunked body (not the last); `false` once the
/// gateway has closed the connection.
async fn send_chunk(s: &mut tokio::net::TcpStream, n: usize) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut c = format!("{n:x}\r\n").into_bytes();
    c.extend(std::iter::repeat_n(b' ', n));
    c.extend_from_slice(b"\r\n");
    s.write_all(&c).await.is_ok()
}

/// Issue 18, item 4: 12 concurrent 30 MB chunked bodies with a wrong bearer key or an
/// unknown SigV4 key id. Each is answered (401 / 403, in its API's shape) after the
/// client has sent only its first 64 KiB chunk: nothing waits for, or buffers, the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let cfg = config_for(&up.base_url(), &[("gpt-4.1", "gpt-4.1")], "");
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let amz = tollgate_providers::sigv4::amz_date(tollgate_server::clock::now_ms() / 1000);
    let heads = [
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tgk_wrong\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_string(),
        format!(
            "POST /model/gpt-4.1/converse HTTP/1.1\r\nhost: x\r\nx-amz-date: {amz}\r\n\
             authorization: AWS4-HMAC-SHA256 Credential=tgk_unknown0000/{}/us-east-1/bedrock/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            &amz[..8],
            "0".repeat(64)
        ),
    ];
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..12 {
        let head = heads[i % 2].clone();
        let gw_addr = gw.addr;
        joins.spawn(async move {
            let fake = TestGatewayAddr(gw_addr);
            let mut s = fake.connect(&head).await;
            // 64 KiB of the announced 30 MB, then wait for the answer.
            assert!(send_chunk(&mut s, 64 << 10).await);
            let (status, head, body) = read_response(&mut s).await;
            (i % 2, status, head, body)
        });
    }
    while let Some(j) = joins.join_next().await {
        let (kind, status, head, body) = j.unwrap();
        if kind == 0 {
            assert_eq!(status, 401, "{head}{body}");
            assert!(body.contains("\"invalid_api_key\""), "{body}");
        } else {
            assert_eq!(status, 403, "{head}{body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("x-amzn-errortype: unrecognizedclientexception"),
                "{head}"
            );
        }
    }
    assert_eq!(up.calls(), 0);
    gw.stop().await;
}

/// A gateway's address, to connect from spawned tasks.
struct TestGatewayAddr(std::net::SocketAddr);

impl TestGatewayAddr {
    async fn connect(&self, head: &str) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(self.0).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s
    }
}

/// The global budget of body bytes being read: with 1.5 MB in flight allowed, a
/// second 1 MB body while the first is still arriving gets 503 (OpenAI's shape, with
/// `retry-after`); once the first is done the budget is back; a body over
/// `max_body_bytes` gets 413, declared or chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_share_one_byte_budget() {
    use tokio::io::AsyncWriteExt;
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let cfg = config_for(
        &up.base_url(),
        &[("gpt-4.1", "gpt-4.1")],
        "[server]\nmax_body_bytes = 1000000\nmax_body_bytes_in_flight = 1500000\n",
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    // A valid 1 MB JSON body: the chat request padded with spaces.
    let json = serde_json::to_string(&chat(5)).unwrap();
    let pad = 1_000_000 - json.len();
    let head = |len: usize| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {len}\r\n\r\n",
            gw.key
        )
    };
    let mut first = raw_head(&gw, &head(1_000_000)).await;
    first.write_all(json.as_bytes()).await.unwrap();
    first.write_all(&vec![b' '; pad / 2]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut second = raw_head(&gw, &head(1_000_000)).await;
    let (status, h, body) = read_response(&mut second).await;
    assert_eq!(status, 503, "{h}{body}");
    assert!(h.to_ascii_lowercase().contains("retry-after: 1"), "{h}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["code"], "overloaded", "{e}");

    first.write_all(&vec![b' '; pad - pad / 2]).await.unwrap();
    let (status, h, body) = read_response(&mut first).await;
    assert_eq!(status, 200, "{h}{body}");

    let mut third = raw_head(&gw, &head(1_000_000)).await;
    third.write_all(json.as_bytes()).await.unwrap();
    third.write_all(&vec![b' '; pad]).await.unwrap();
    assert_eq!(
        read_response(&mut third).await.0,
        200,
        "the budget came back"
    );

    let mut declared = raw_head(&gw, &head(1_000_001)).await;
    assert_eq!(read_response(&mut declared).await.0, 413);
    let mut chunked = raw_head(
        &gw,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            gw.key
        ),
    )
    .await;
    for _ in 0..16 {
        if !send_chunk(&mut chunked, 100_000).await {
            break;
        }
    }
    let (status, _, body) = read_response(&mut chunked).await;
    assert_eq!(status, 413, "{body}");
    gw.stop().await;
}

/// Issue 18, item 2: a provider that counts the prompt `factor` times what the local
/// tokenizer does. After three sequential calls have taught the deployment's
/// correction, 30 concurrent calls against what is left of a $1.00 hard budget settle
/// within it. Without the correction each call reserved a fifth of its cost (at 5×)
/// and all 30 were admitted: $1.65 settled on a $1.00 budget.
async fn overcounting_provider(factor_pct: u64) -> (i64, u64, String) {
    let messages = vec![
        json!({"role": "user", "content": "Summarise the quarterly report for the finance team, \
        listing revenue, costs, margins and the three largest risks, each with one line of context, \
        and end with a recommendation for the board about next year's budget and hiring plan."}),
    ];
    let local = tollgate_providers::tokenizer::Encoding::O200kBase.count_chat_prompt(&messages);
    let mut f = chat_answer(local * factor_pct / 100, 1);
    f.delay = std::time::Duration::from_millis(20);
    let up = FixtureUpstream::start(f).await.unwrap();
    // $0.0005 per prompt token as the provider counts it: a call costs local × factor ×
    // $0.0005 (≈ $0.05 at 5×); output is free.
    let cfg = format!(
        r#"
[[budgets.limits]]
scope = "org"
period = "lifetime"
limit_usd = "1.00"

[[upstreams]]
name = "up"
base_url = "{}"

[[deployments]]
name = "m"
upstream = "up"
model = "gpt-4.1"
price = {{ input = "500", output = "0" }}
"#,
        up.base_url()
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    let http = client();
    let body = json!({"model": "m", "messages": messages, "max_tokens": 1});
    for _ in 0..3 {
        let r = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut joins = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let req = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .json(&body);
        joins.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    while let Some(s) = joins.join_next().await {
        let s = s.unwrap();
        assert!(s == 200 || s == 402, "{s}");
    }
    let metrics = http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ratio = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_prompt_correction_ratio{deployment=\"m\"}"))
        .unwrap_or_default()
        .to_string();
    let overages = metrics
        .lines()
        .find(|l| l.starts_with("tollgate_budget_overages_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stopped = gw.stop().await;
    let spent = stopped
        .usage_report(None, 0, i64::MAX)
        .unwrap()
        .total
        .cost
        .nanos();
    (spent, overages, ratio)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_counting_more_prompt_tokens_cannot_overspend_a_budget() {
    for factor in [130, 500] {
        let (spent, overages, ratio) = overcounting_provider(factor).await;
        eprintln!(
            "provider counts {factor}% of the local prompt: settled ${:.6} on a $1.00 budget, \
             {overages} overages, {ratio}",
            spent as f64 / 1e9
        );
        assert!(
            spent <= 1_000_000_000,
            "{factor}%: settled {spent} nano-USD"
        );
        assert!(ratio.contains("deployment=\"m\""), "{ratio}");
    }
}

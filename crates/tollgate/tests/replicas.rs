//! Several replicas, one truth: three real `tollgate serve` processes on one PostgreSQL
//! store and one Redis, 1,000 concurrent requests on one hard budget, one replica
//! SIGKILLed mid-load. Needs `TOLLGATE_TEST_POSTGRES_URL` and `TOLLGATE_TEST_REDIS_URL`
//! (`.ci/run` sets both); skipped without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_store::config::PostgresSettings;
use tollgate_store::{KeyStore, LedgerStore, NewKey, ReportStore, Store};
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};

const MASTER: &str = "tg-master-replicas";
/// What one answer costs: 10 output tokens at $100 per million (input free).
const COST_NANOS: i64 = 1_000_000;
const LIMIT_NANOS: i64 = 300 * COST_NANOS;

fn urls() -> Option<(String, String)> {
    match (
        std::env::var("TOLLGATE_TEST_POSTGRES_URL"),
        std::env::var("TOLLGATE_TEST_REDIS_URL"),
    ) {
        (Ok(pg), Ok(redis)) if !pg.is_empty() && !redis.is_empty() => Some((pg, redis)),
        _ => {
            eprintln!(
                "skipped: TOLLGATE_TEST_POSTGRES_URL and TOLLGATE_TEST_REDIS_URL are not both set"
            );
            None
        }
    }
}

/// `n` distinct free ports (held open together while picked, so none is handed out
/// twice).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

struct Replica {
    child: Child,
    base: String,
}

fn start(dir: &Path, n: usize, port: u16, shared: &str, pg: &str) -> Replica {
    let cfg = dir.join(format!("gw{n}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[ledger]\npath = \"{}\"\ndurability = \"strict\"\n\
             [store]\nkind = \"postgres\"\nurl_env = \"TOLLGATE_REPLICAS_PG\"\nreplica = \"gw-{n}\"\n{shared}",
            dir.join(format!("gw{n}.db")).display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("TOLLGATE_REPLICAS_PG", pg)
        .env("TOLLGATE_MASTER_KEY", MASTER)
        .env("TOLLGATE_LOG", "warn")
        .env_remove("TOLLGATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "replica {base} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn live_budget(http: &reqwest::Client, base: &str) -> Value {
    let v: Value = http
        .get(format!("{base}/admin/budgets"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["budgets"][0]["current"][0]["live"].clone()
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Request ids of answers received in full (status 200, a complete body).
    answered: Vec<String>,
    /// Request ids of every response that came back (any status).
    responded: Vec<String>,
    refused: usize,
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_budget_no_overspend_no_lost_or_double_rows_when_one_is_killed() {
    let Some((pg, redis)) = urls() else { return };
    tollgate_providers::client::install_crypto_provider();
    let tag = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let schema = format!("tg_replicas_{tag}");
    let prefix = format!("tgtest:replicas:{tag}");
    let dir = tempfile::tempdir().unwrap();

    // The upstream answers in 10 s: the budget's calls are all at the upstream (their
    // reservations held, and renewed by live replicas past several 3 s leases) while the
    // refusals come back, which is when the kill comes.
    let mut fixture = Fixture::json(200, Fixture::file("openai/chat.json"));
    fixture.delay = Duration::from_millis(10_000);
    let up = FixtureUpstream::start(fixture).await.unwrap();

    // One key, created in the shared store before the replicas start.
    let mut settings = PostgresSettings::new(&pg, dir.path().join("setup.spool"));
    settings.schema = Some(schema.clone());
    let store = Store::open(&tollgate_store::config::StoreSettings::Postgres(settings))
        .await
        .unwrap();
    let (_, key) = store
        .create_key(
            &NewKey {
                agent: Some("replicated".into()),
                ..NewKey::default()
            },
            0,
            None,
        )
        .await
        .unwrap();

    let shared = format!(
        "schema = \"{schema}\"\n[budgets]\ncounters = \"redis\"\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\nhold_s = 60\nlease_s = 3\n\
         [[budgets.limits]]\nscope = \"org\"\nperiod = \"day\"\nlimit_usd = \"0.30\"\n\
         [[upstreams]]\nname = \"up\"\nbase_url = \"{}\"\n\
         [[deployments]]\nname = \"m\"\nupstream = \"up\"\nmodel = \"gpt-4.1\"\nprice = {{ input = \"0\", output = \"100\" }}\n",
        up.base_url()
    );
    let ports = free_ports(3);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|n| start(dir.path(), n, ports[n], &shared, &pg))
        .collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for r in &replicas {
        wait_healthy(&http, &r.base).await;
    }

    // 1,000 requests at once, round robin over the three replicas.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let base = replicas[i % 3].base.clone();
        let (http, key, seen) = (http.clone(), key.clone(), seen.clone());
        joins.spawn(async move {
            let body = json!({"model": "m", "max_tokens": 10,
                "messages": [{"role": "user", "content": format!("request {i}")}]});
            let resp = match http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    seen.lock().unwrap().failed += 1;
                    return;
                }
            };
            let status = resp.status().as_u16();
            let id = resp
                .headers()
                .get("x-tollgate-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let complete = match resp.bytes().await {
                Ok(b) => serde_json::from_slice::<Value>(&b).is_ok(),
                Err(_) => false,
            };
            let mut s = seen.lock().unwrap();
            match (id, complete) {
                (Some(id), true) => {
                    s.responded.push(id.clone());
                    if status == 200 {
                        s.answered.push(id);
                    } else {
                        s.refused += 1;
                    }
                }
                _ => s.failed += 1,
            }
        });
    }
    // SIGKILL the third replica once refusals are coming back (the budget is all
    // reserved) and its forwarded calls are still at the upstream: no drain, no shutdown.
    let t0 = Instant::now();
    while seen.lock().unwrap().refused < 100 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replicas[2].child.kill().unwrap();
    let _ = replicas[2].child.wait();
    let killed_after = t0.elapsed();
    let killed_at = Instant::now();
    let gone = http
        .get(format!("{}/healthz", replicas[2].base))
        .send()
        .await;
    assert!(gone.is_err(), "replica 3 is gone: {gone:?}");
    let held_at_kill = live_budget(&http, &replicas[0].base).await;
    // Six seconds on (two leases of 3 s and a sweep): the dead replica's holds are back,
    // the live replicas' calls, still at the upstream, keep theirs (renewed).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held_later = live_budget(&http, &replicas[0].base).await;
    let in_flight_elsewhere = killed_at.elapsed() < Duration::from_secs(9);
    while joins.join_next().await.is_some() {}
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // The ledger: every replica's rows, in the one store.
    let rows = store.ledger_rows(0, i64::MAX, 10_000).await.unwrap();
    let ids: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let spent: i64 = rows.iter().map(|r| r.cost.nanos()).sum();
    let forwarded = rows.iter().filter(|r| r.status == 200).count();
    let lost: Vec<&String> = seen
        .responded
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    // Per-replica sequence numbers: every replica's rows are numbered without a gap
    // (a gap would be a row lost between the replica and the store).
    let seqs = store.ledger_sequences(0, i64::MAX).await.unwrap();
    let by_replica: Vec<(String, u64)> = seqs
        .iter()
        .map(|s| (s.replica_id.clone(), s.rows))
        .collect();
    eprintln!(
        "3 replicas on one PostgreSQL + Redis, 1,000 concurrent requests, hard budget $0.30, \
         replica 3 SIGKILLed after {killed_after:?}: {} answered, {} refused, {} cut by the kill; \
         ledger {} rows ({} forwarded, by replica {by_replica:?}), spent ${:.3}, upstream saw {}",
        seen.answered.len(),
        seen.refused,
        seen.failed,
        rows.len(),
        forwarded,
        spent as f64 / 1e9,
        up.calls()
    );
    assert!(
        seen.failed > 0,
        "the kill cut some calls (else it came too late)"
    );
    assert!(spent <= LIMIT_NANOS, "overspent: ${}", spent as f64 / 1e9);
    assert_eq!(
        spent,
        forwarded as i64 * COST_NANOS,
        "each forwarded call priced once"
    );
    assert!(lost.is_empty(), "responses without a ledger row: {lost:?}");
    assert!(seqs.len() >= 2, "{by_replica:?}");
    for s in &seqs {
        assert_eq!(
            s.missing(),
            0,
            "replica {} has gaps {:?}",
            s.replica_id,
            s.gaps
        );
    }
    assert_eq!(ids.len(), rows.len(), "no request counted twice");
    assert!(forwarded >= seen.answered.len());
    assert!(
        up.calls() >= forwarded && up.calls() <= forwarded + 3 * 200,
        "upstream calls {} vs forwarded rows {forwarded}",
        up.calls()
    );

    // What was held: at the kill, every forwarded call's hold; six seconds later only the
    // live replicas' (their calls were still running, their leases renewed), the dead
    // replica's released; after the calls end, nothing.
    let nanos = |v: &Value| -> i64 {
        let t = v.as_str().unwrap();
        let (a, b) = t.split_once('.').unwrap();
        a.parse::<i64>().unwrap() * 1_000_000_000 + b.parse::<i64>().unwrap()
    };
    eprintln!("at the kill: {held_at_kill}; 6 s later: {held_later}");
    // Every forwarded call in the ledger is a live replica's (the dead one's never
    // answered: the upstream takes 10 s).
    let survivors_forwarded = forwarded as i64;
    assert!(
        in_flight_elsewhere,
        "the check came before the live calls ended"
    );
    assert!(nanos(&held_at_kill["reserved_usd"]) > nanos(&held_later["reserved_usd"]));
    assert_eq!(
        nanos(&held_later["reserved_usd"]),
        survivors_forwarded * COST_NANOS,
        "6 s after the kill, only the live replicas' running calls hold budget"
    );
    let survivor = replicas[0].base.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = live_budget(&http, &survivor).await;
    eprintln!("after the calls: {live}");
    assert_eq!(live["reserved_usd"], "0.000000000", "{live}");
    assert_eq!(
        live["spent_usd"],
        format!("{}.{:09}", spent / 1_000_000_000, spent % 1_000_000_000),
        "{live}"
    );
    let probe = http
        .post(format!("{survivor}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "after the hold"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        probe.status(),
        200,
        "the released budget pays for a new call"
    );
    let _ = probe.bytes().await;
    let spent = spent + COST_NANOS;
    // Any replica's report shows every replica's traffic.
    let report = store.usage_report(None, 0, i64::MAX).await.unwrap();
    assert_eq!(report.total.cost.nanos(), spent);
    assert_eq!(report.total.requests as usize, rows.len() + 1);

    for r in replicas.iter_mut().take(2) {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    tollgate_store::counters::RedisCounters::connect(&redis, &prefix)
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    let mut driver = tokio::task::JoinSet::new();
    driver.spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
}

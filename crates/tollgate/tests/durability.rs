//! Crash durability: SIGKILL the real `tollgate` process under load and check the ledger.
//!
//! Strict mode promises that a response's last byte is released only after its row is
//! durable, so every response a client received in full must have its row. Batched mode
//! promises a bounded loss window: at most the queued rows (the ledger channel's
//! capacity); the test measures it and prints the figure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_store::{NewKey, SqliteStore};
use tollgate_testkit::sim::{self, SimConfig};

struct Outcome {
    completed: Vec<String>,
    rows_found: usize,
    missing: Vec<String>,
}

async fn crash_under_load(durability: &str, channel_capacity: usize) -> Outcome {
    tollgate_providers::client::install_crypto_provider();
    let sim = sim::spawn(SimConfig {
        first_token_latency: Duration::from_millis(2),
        inter_token_latency: Duration::ZERO,
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let store = SqliteStore::open(&db).unwrap();
    let (_, key) = store
        .create_key(
            &NewKey {
                agent: Some("crash-test".into()),
                ..NewKey::default()
            },
            0,
        )
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[ledger]\npath = \"{}\"\ndurability = \"{durability}\"\nchannel_capacity = {channel_capacity}\n\
             [[upstreams]]\nname = \"sim\"\nbase_url = \"{}\"\n[[deployments]]\nname = \"gpt-4o-mini\"\nupstream = \"sim\"\n",
            db.display(),
            sim.base_url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("TOLLGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..24 {
        let http = http.clone();
        let base = base.clone();
        let key = key.clone();
        let completed = completed.clone();
        let stop = stop.clone();
        workers.spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let stream = (w + i).is_multiple_of(3);
                let body = json!({"model": "gpt-4o-mini", "stream": stream,
                    "messages": [{"role": "user", "content": format!("worker {w} request {i}")}]});
                let Ok(resp) = http
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                else {
                    continue;
                };
                if !resp.status().is_success() {
                    continue;
                }
                let Some(id) = resp
                    .headers()
                    .get("x-tollgate-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                else {
                    continue;
                };
                // Completed = the client received the whole response.
                let Ok(bytes) = resp.bytes().await else {
                    continue;
                };
                let done = if stream {
                    String::from_utf8_lossy(&bytes)
                        .trim_end()
                        .ends_with("data: [DONE]")
                } else {
                    serde_json::from_slice::<Value>(&bytes).is_ok()
                };
                if done {
                    completed.lock().unwrap().push(id);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL: no drain, no shutdown hook.
    child.kill().unwrap();
    let _ = child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while workers.join_next().await.is_some() {}

    let completed = completed.lock().unwrap().clone();
    let mut found = HashSet::new();
    for id in &completed {
        if store.ledger_row(id).unwrap().is_some() {
            found.insert(id.clone());
        }
    }
    let missing: Vec<String> = completed
        .iter()
        .filter(|id| !found.contains(*id))
        .cloned()
        .collect();
    Outcome {
        rows_found: found.len(),
        completed,
        missing,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_loses_no_completed_response_on_sigkill() {
    let o = crash_under_load("strict", 16_384).await;
    println!(
        "strict: {} completed responses before SIGKILL, {} with rows, {} missing",
        o.completed.len(),
        o.rows_found,
        o.missing.len()
    );
    assert!(
        o.completed.len() >= 100,
        "too little load to mean anything: {}",
        o.completed.len()
    );
    assert!(
        o.missing.is_empty(),
        "rows missing for completed responses: {:?}",
        &o.missing[..o.missing.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_loss_is_bounded_by_the_queue() {
    let capacity = 256;
    let o = crash_under_load("batched", capacity).await;
    println!(
        "batched: {} completed responses before SIGKILL, {} with rows, {} missing (bound: {capacity})",
        o.completed.len(),
        o.rows_found,
        o.missing.len()
    );
    assert!(o.completed.len() >= 100);
    assert!(o.missing.len() <= capacity);
}

//! What budgets, rate limits and the task guard add to a request: admission (count the
//! prompt, fingerprint the call, reserve across every line) plus settlement, measured
//! in process against a naive baseline. A benchmark, not a test: it prints numbers.
//!
//!     cargo bench -p tollgate-server --bench admission
//!     TOLLGATE_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p tollgate-server --bench admission

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_domain::attribution::Attribution;
use tollgate_domain::budget::Line;
use tollgate_domain::ledger::Endpoint;
use tollgate_domain::money::Money;
use tollgate_server::Gateway;
use tollgate_server::config::RawConfig;
use tollgate_server::ingress::{Ingress, IngressRequest};
use tollgate_server::limits::Call;
use tollgate_store::counters::{Counters, RateLine, ReserveRequest};

const N: usize = 20_000;

fn stats(name: &str, mut xs: Vec<Duration>) -> f64 {
    xs.sort_unstable();
    let p =
        |q: f64| xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)].as_nanos() as f64 / 1000.0;
    println!(
        "{name:<62} p50 {:>7.2} µs   p90 {:>7.2} µs   p99 {:>7.2} µs",
        p(0.5),
        p(0.9),
        p(0.99)
    );
    p(0.5)
}

async fn gateway(extra: &str) -> (Arc<Gateway>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{extra}
[ledger]
path = "{}"
[[upstreams]]
name = "up"
base_url = "http://127.0.0.1:9/v1"
[[deployments]]
name = "m"
upstream = "up"
model = "gpt-4o"
price = {{ input = "2.5", output = "10" }}
"#,
        dir.path().join("b.db").display()
    );
    let env = HashMap::new();
    let cfg = RawConfig::from_toml(&text, &env)
        .unwrap()
        .validate(&env)
        .unwrap();
    let (gw, writer) = tollgate_server::build(cfg).await.unwrap();
    std::mem::forget(writer); // the ledger writer is not part of what is measured
    (gw, dir)
}

const LIMITS: &str = r#"
[[budgets.limits]]
scope = "org"
period = "month"
limit_usd = "1000000"
[[budgets.limits]]
scope = "team:*"
period = "day"
limit_usd = "100000"
[[budgets.limits]]
scope = "agent:*"
period = "day"
limit_usd = "100000"
[[rate_limits]]
scope = "agent:*"
requests_per_minute = 100000000
tokens_per_minute = 100000000000
usd_per_minute = "1000000"
[guard]
loop_max_repeats = 0
no_progress_calls = 0
"#;

/// A typical agent turn: system prompt, a question, a tool call and its result.
/// `fresh`: every call's messages are new (nothing is in the token-count cache), as
/// for a stream of unrelated one-shot requests; otherwise the conversation repeats, as
/// an agent's does.
fn body_of(i: usize, fresh: bool) -> Map<String, Value> {
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let w = if fresh {
        format!("{} number {i}", words[i % words.len()])
    } else {
        words[i % words.len()].to_string()
    };
    json!({"model": "m", "max_tokens": 512, "messages": [
        {"role": "system", "content": "You are a support agent for Acme. Answer precisely, cite the policy section, escalate refunds above five hundred dollars."},
        {"role": "user", "content": format!("Customer {w} asks whether the kettle bought twelve days ago can be refunded.")},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "lookup_order", "arguments": format!("{{\"customer\":\"{w}\"}}")}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": format!("order for {w}: kettle, 64 USD, delivered, unused")}
    ]})
    .as_object()
    .unwrap()
    .clone()
}

fn body(i: usize) -> Map<String, Value> {
    body_of(i, false)
}

async fn admit_settle(gw: &Arc<Gateway>, label: &str, fresh: bool) -> f64 {
    let cfg = gw.config.load_full();
    let dep = cfg.deployments["m"].clone();
    let mut samples = Vec::with_capacity(N);
    for i in 0..N + 2000 {
        let attr = Attribution {
            key_id: Some("tgk_bench".into()),
            team: Some("support".into()),
            agent: Some(format!("agent-{}", i % 8)),
            user: Some("alice".into()),
            task: Some(format!("task-{}", i % 500)),
            tags: Vec::new(),
        };
        let b = Value::Object(body_of(i, fresh)).to_string();
        let req = IngressRequest::parse(&Ingress::ChatCompletions, b.as_bytes()).unwrap();
        let id = format!("req_{i}");
        let t = Instant::now();
        let admitted = gw
            .limits
            .admit(
                &cfg.limits,
                Call {
                    request_id: &id,
                    attribution: &attr,
                    retry: false,
                    deployment: Some(&dep),
                    request: &req,
                },
            )
            .await
            .unwrap();
        {
            let ticket = admitted.ticket;
            let mut row = tollgate_domain::ledger::LedgerRow {
                ts_ms: 0,
                request_id: format!("req_{i}"),
                endpoint: Endpoint::ChatCompletions,
                attribution: Attribution::default(),
                route: Default::default(),
                usage: tollgate_domain::usage::Usage {
                    input: 80,
                    output: 40,
                    ..Default::default()
                },
                usage_source: tollgate_domain::usage::UsageSource::Reported,
                cost: Money::from_nanos(600_000),
                cost_without_cache: Money::from_nanos(600_000),
                priced: true,
                price_hash: String::new(),
                latency_us: 0,
                ttft_us: None,
                status: 200,
                error_code: None,
                stream: false,
                partial: false,
                routing: None,
                cache: None,
                prune: None,
                usage_suspect: false,
                service_tier: None,
                prefix: None,
            };
            row.cost = Money::from_nanos(600_000);
            gw.limits.settle(ticket, &row, None);
        }
        let dt = t.elapsed();
        if i >= 2000 {
            samples.push(dt);
        }
    }
    stats(label, samples)
}

fn lines(i: usize) -> ReserveRequest {
    ReserveRequest {
        id: format!("r{i}"),
        now_ms: 1_750_000_000_000 + i as i64,
        budget: [
            "b:month:2025-06:org",
            "b:day:2025-06-15:team:support",
            "b:day:2025-06-15:agent:a",
        ]
        .iter()
        .map(|k| Line {
            key: (*k).into(),
            limit: Some(Money::from_nanos(i64::MAX / 4)),
            amount: Money::from_nanos(1000),
        })
        .collect(),
        expire_at_ms: vec![Some(4_102_444_800_000); 3],
        rate: ["r:requests:agent:a", "r:tokens:agent:a", "r:usd:agent:a"]
            .iter()
            .map(|b| RateLine {
                base: (*b).into(),
                limit: u64::MAX / 4,
                cost: 100,
                window_ms: 60_000,
            })
            .collect(),
        hold_ms: 600_000,
    }
}

async fn counters(c: &Counters, label: &str) -> f64 {
    let mut samples = Vec::with_capacity(N);
    for i in 0..N + 2000 {
        let req = lines(i);
        let t = Instant::now();
        let g = c.reserve(&req).await.unwrap().unwrap();
        c.settle(&g.reservation, Money::from_nanos(700), &[1, 80, 700])
            .await
            .unwrap();
        let dt = t.elapsed();
        if i >= 2000 {
            samples.push(dt);
        }
    }
    stats(label, samples)
}

/// The obvious implementation: one mutex over a map, check and add per line.
fn naive(label: &str) -> f64 {
    let m: Mutex<HashMap<String, i64>> = Mutex::new(HashMap::new());
    let mut samples = Vec::with_capacity(N);
    for i in 0..N + 2000 {
        let req = lines(i);
        let t = Instant::now();
        {
            let mut g = m.lock().unwrap();
            let ok = req.budget.iter().all(|l| {
                g.get(&l.key).copied().unwrap_or(0) + l.amount.nanos() <= l.limit.unwrap().nanos()
            });
            if ok {
                for l in &req.budget {
                    *g.entry(l.key.clone()).or_default() += l.amount.nanos();
                }
            }
        }
        {
            let mut g = m.lock().unwrap();
            for l in &req.budget {
                *g.entry(l.key.clone()).or_default() -= 300;
            }
        }
        let dt = t.elapsed();
        if i >= 2000 {
            samples.push(dt);
        }
    }
    stats(label, samples)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("admission + settlement, in process, {N} iterations after 2000 warm-up (one thread, sequential)");
        let (bare, _d1) = gateway("[guard]\nenabled = false\n").await;
        let base = admit_settle(&bare, "baseline: admit+settle, no budget/limit/guard applies", false).await;
        let (full, _d2) = gateway(LIMITS).await;
        let with = admit_settle(&full, "admit+settle: 3 budgets, 3 rate limits, guard; agent turns", false).await;
        println!("  → added to the hot path by budgets, rate limits and the guard: {:.2} µs p50", with - base);
        let (cold, _d3) = gateway(LIMITS).await;
        let fresh = admit_settle(&cold, "the same, every message new (prompt tokenised each time)", true).await;
        println!("  → with a ~100-token prompt tokenised on every call: {:.2} µs p50", fresh - base);
        let mem = counters(&Counters::memory(), "counters only: memory reserve+settle, 3 budget + 3 rate lines").await;
        let nv = naive("naive baseline: Mutex<HashMap> check-and-add, 3 lines, no rates");
        println!("  → memory counters vs the naive map: {:+.2} µs p50", mem - nv);
        let enc = tollgate_providers::tokenizer::Encoding::O200kBase;
        let parts = |label: &str, f: &dyn Fn(usize)| {
            let mut xs = Vec::new();
            for i in 0..5000 {
                let t = Instant::now();
                f(i);
                xs.push(t.elapsed());
            }
            stats(label, xs);
        };
        parts("  part: counting this request's prompt (tiktoken)", &|i| {
            let b = body(i);
            let t = Instant::now();
            std::hint::black_box(enc.count_chat_prompt(b["messages"].as_array().unwrap()));
            let _ = t;
        });
        parts("  part: fingerprinting the call (SimHash)", &|i| {
            let b = body(i);
            std::hint::black_box(tollgate_domain::loopguard::Fingerprint::of_chat(b["messages"].as_array().unwrap()));
        });
        parts("  part: 3 calendar windows (jiff)", &|i| {
            for p in [tollgate_domain::budget::Period::Month, tollgate_domain::budget::Period::Day, tollgate_domain::budget::Period::Week] {
                std::hint::black_box(tollgate_domain::budget::window(p, 1_750_000_000_000 + i as i64, &jiff::tz::TimeZone::UTC));
            }
        });
        parts("  part: cloning the request body (included in both lines above)", &|i| {
            std::hint::black_box(body(i));
        });
        let long: Vec<Value> = vec![json!({"role": "user", "content": "the refund policy allows returns within thirty days ".repeat(400)})];
        let mut xs = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            std::hint::black_box(enc.count_chat_prompt(&long));
            xs.push(t.elapsed());
        }
        stats("for scale: counting a ~3,600-token prompt locally (tiktoken)", xs);
        match std::env::var("TOLLGATE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => {
                let prefix = format!("tgbench:{}", std::process::id());
                let r = tollgate_store::counters::RedisCounters::connect(&url, &prefix).await.unwrap();
                r.seed(&[], true).await.unwrap();
                counters(&Counters::Redis(r.clone()), "counters only: Redis reserve+settle (2 scripts, 2 round trips)").await;
                r.clear().await.unwrap();
                // The task guard alone (no budget or rate limit), its state in this
                // process vs shared by replicas through Redis.
                const GUARD: &str = "[guard]\nloop_max_repeats = 0\nno_progress_calls = 0\nmax_iterations = 1000000000\n";
                let (gm, _d4) = gateway(GUARD).await;
                let local = admit_settle(&gm, "guard only, task state in this process: admit+settle", false).await;
                let shared_prefix = format!("{prefix}:guard");
                let (gr, _d5) = gateway(&format!(
                    "[budgets]\ncounters = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{shared_prefix}\"\n{GUARD}"
                ))
                .await;
                let shared = admit_settle(&gr, "guard only, task state shared in Redis (1 script per call)", false).await;
                println!("  → sharing halts and task totals across replicas adds {:.2} µs p50 per request with a task", shared - local);
                // The floor of any check shared through Redis: one plain read, one round trip.
                let mut xs = Vec::with_capacity(N);
                let keys = ["b:none".to_string()];
                for i in 0..N + 2000 {
                    let t = Instant::now();
                    std::hint::black_box(r.accounts(&keys).await.unwrap());
                    if i >= 2000 {
                        xs.push(t.elapsed());
                    }
                }
                stats("naive floor: one Redis HMGET round trip", xs);
                tollgate_store::counters::RedisCounters::connect(&url, &shared_prefix).await.unwrap().clear().await.unwrap();
            }
            _ => println!("(Redis: skipped, TOLLGATE_TEST_REDIS_URL is not set)"),
        }
    });
}

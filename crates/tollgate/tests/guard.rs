//! The runaway-agent guard end to end: a looping agent is halted after the configured
//! repeats, a real webhook receiver gets exactly one alert, healthy agents run on; and
//! the false-positive rate on a varied synthetic workload.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tollgate_domain::loopguard::{Fingerprint, GuardLimits, TaskState};
use tollgate_testkit::agents::{self, Runaway};
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::{MASTER_KEY, TestGateway};
use tollgate_testkit::webhook::WebhookReceiver;

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
price = {{ input = "2", output = "8" }}
"#
    )
}

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn call(gw: &TestGateway, task: &str, messages: Vec<Value>) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .header("x-tollgate-task", task)
        .json(&json!({"model": "m", "messages": messages, "max_tokens": 50}))
        .send()
        .await
        .unwrap()
}

async fn admin(gw: &TestGateway, method: reqwest::Method, path: &str) -> Value {
    client()
        .request(method, gw.url(path))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn setup(extra: &str, fail_first: usize) -> (FixtureUpstream, WebhookReceiver, TestGateway) {
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let hook = WebhookReceiver::start(fail_first).await.unwrap();
    let cfg = config(
        &up.base_url(),
        &format!(
            "{extra}\n[alerts]\nwebhook_url = \"{}\"\nbackoff_ms = 20\n",
            hook.url()
        ),
    );
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    (up, hook, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaying_agent_is_halted_and_one_alert_is_sent_while_a_healthy_one_runs_on() {
    let (up, hook, gw) = setup("[guard]\nloop_max_repeats = 3\n", 0).await;
    // The runaway: two steps of real work, then the same search and the same empty
    // result (with fresh call ids and timestamps) over and over.
    let (goal, steps) = agents::runaway(7, Runaway::ReplayJittered, 2, 10);
    let mut statuses = Vec::new();
    for i in 0..steps.len() {
        let r = call(&gw, "ticket-77", agents::conversation(&goal, &steps, i + 1)).await;
        statuses.push(r.status().as_u16());
        if r.status() == 409 {
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "task_halted");
            assert!(
                e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("loop detected"),
                "{e}"
            );
        }
    }
    // Calls 1-2 are real work, call 3 is the first search; calls 4-6 repeat it three
    // times (the limit); call 7 would be the fourth repeat: halted, and everything after.
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 409, 409, 409, 409, 409, 409]
    );
    assert_eq!(up.calls(), 6);

    // A healthy agent with varied calls, meanwhile, is not halted.
    let (goal, steps) = agents::healthy(11, 40);
    for i in 0..steps.len() {
        let r = call(
            &gw,
            "ticket-healthy",
            agents::conversation(&goal, &steps, i + 1),
        )
        .await;
        assert_eq!(r.status(), 200, "healthy call {i} refused");
    }

    // Exactly one alert, Slack-shaped, about the runaway.
    let got = hook.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = hook.received().len().max(got.len());
    assert_eq!(got, 1, "{:?}", hook.received());
    let alert = &hook.received()[0];
    let text = alert["text"].as_str().unwrap();
    assert!(
        text.contains("ticket-77") && text.contains("agent-a"),
        "{text}"
    );
    assert_eq!(alert["blocks"][0]["type"], "header");
    assert!(alert["blocks"].as_array().unwrap().len() >= 4);

    // The incident's evidence, the delivery, and release.
    let t = admin(&gw, reqwest::Method::GET, "/admin/guard/ticket-77").await;
    assert_eq!(t["record"]["status"], "halted");
    assert_eq!(t["record"]["kind"], "loop");
    let ev = &t["incidents"][0]["evidence"];
    assert_eq!(ev["repeats"], 4);
    assert_eq!(ev["calls"], 7);
    assert!(
        ev["repeated"]
            .as_str()
            .unwrap()
            .contains("no results found"),
        "{ev}"
    );
    assert_eq!(t["alerts"][0]["status"], "delivered");
    assert_eq!(
        t["usage"]["calls"], 12,
        "refused calls have ledger rows too"
    );
    let r = admin(&gw, reqwest::Method::POST, "/admin/tasks/ticket-77/release").await;
    assert_eq!(r["released"], true);
    let r = call(&gw, "ticket-77", agents::conversation(&goal, &steps, 1)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_retried_and_the_delivery_recorded() {
    let (_up, hook, gw) = setup("[guard]\nmax_iterations = 2\n", 2).await;
    for i in 0..3 {
        let r = call(
            &gw,
            "t-iter",
            vec![json!({"role": "user", "content": format!("step {i}")})],
        )
        .await;
        assert_eq!(r.status(), if i < 2 { 200 } else { 409 });
    }
    assert_eq!(hook.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    assert_eq!(hook.attempts(), 3, "two 500s, then delivered");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = admin(&gw, reqwest::Method::GET, "/admin/guard/t-iter").await;
    assert_eq!(t["alerts"][0]["status"], "delivered");
    assert_eq!(t["alerts"][0]["attempts"], 3);
    assert_eq!(t["record"]["kind"], "iterations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_only_alerts_and_halts_survive_restarts_until_released() {
    let (up, hook, gw) = setup(
        "[guard]\nloop_max_repeats = 2\n[guard.agents.agent-a]\ndry_run = true\n",
        0,
    )
    .await;
    let msgs = vec![json!({"role": "user", "content": "poll the build"})];
    for _ in 0..8 {
        assert_eq!(call(&gw, "dry", msgs.clone()).await.status(), 200);
    }
    assert_eq!(up.calls(), 8);
    hook.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.received().len(), 1, "dry run alerts once");
    assert!(
        hook.received()[0]["text"]
            .as_str()
            .unwrap()
            .contains("would have halted")
    );
    drop(gw);

    // Halt a task, restart on the same database: still halted. Release it from another
    // process (the CLI writes the database): the running gateway lets it run again.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let cfg = config(&up.base_url(), "[guard]\nloop_max_repeats = 1\n");
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(call(&gw, "stuck", msgs.clone()).await.status().as_u16());
        }
        v
    };
    assert_eq!(codes, [200, 200, 409]);
    gw.stop().await;
    let gw = TestGateway::start_on(&cfg, HashMap::new(), &db).await;
    assert_eq!(call(&gw, "stuck", msgs.clone()).await.status(), 409);
    assert!(gw.store.release_task("stuck", 0).unwrap());
    let mut status = 409;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = call(&gw, "stuck", msgs.clone()).await.status().as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the release reached the running gateway");
}

/// The guard's defaults on a synthetic workload: how many healthy tasks it would halt
/// (false positives) and how many runaway ones it catches, and how fast.
#[test]
fn false_positive_rate_on_a_varied_workload() {
    let limits = GuardLimits::default();
    let (tasks, len) = (1000u64, 60usize);
    let mut halted = Vec::new();
    let mut calls = 0usize;
    for seed in 0..tasks {
        let (goal, steps) = agents::healthy(seed, len);
        let mut st = TaskState::new(0);
        for i in 0..steps.len() {
            calls += 1;
            let fp = Fingerprint::of_chat(&agents::conversation(&goal, &steps, i + 1));
            if let Some(h) = st.observe(Some(&fp), i as i64 * 1000, &limits) {
                let last: Vec<String> = steps[i.saturating_sub(5)..=i]
                    .iter()
                    .map(|s| format!("{}→{:.20}", s.tool, s.result))
                    .collect();
                halted.push((seed, i, format!("{} [{}]", h.reason, last.join("; "))));
                break;
            }
        }
    }
    let fp_rate = halted.len() as f64 / tasks as f64;
    let mut caught = 0;
    let mut runaway = 0;
    let mut detect_after = Vec::new();
    for seed in 0..100u64 {
        for kind in Runaway::ALL {
            runaway += 1;
            let (goal, steps) = agents::runaway(seed + 10_000, kind, 8, 40);
            let mut st = TaskState::new(0);
            for i in 0..steps.len() {
                let fp = Fingerprint::of_chat(&agents::conversation(&goal, &steps, i + 1));
                if st.observe(Some(&fp), i as i64 * 1000, &limits).is_some() {
                    if i >= 8 {
                        caught += 1;
                        detect_after.push(i + 1 - 8);
                    }
                    break;
                }
            }
        }
    }
    detect_after.sort_unstable();
    let median = detect_after
        .get(detect_after.len() / 2)
        .copied()
        .unwrap_or(0);
    let max = detect_after.last().copied().unwrap_or(0);
    eprintln!(
        "guard defaults (loop_max_repeats {:?}, distance {}, window {}, no_progress {:?} < {}%): \
         healthy tasks halted {}/{} = {:.2}% over {} calls; runaway tasks caught {}/{}; \
         looping calls before the halt: median {}, max {}",
        limits.loop_max_repeats,
        limits.loop_max_distance,
        limits.loop_window,
        limits.no_progress_calls,
        limits.min_novelty_pct,
        halted.len(),
        tasks,
        fp_rate * 100.0,
        calls,
        caught,
        runaway,
        median,
        max
    );
    for (seed, i, why) in halted.iter().take(5) {
        eprintln!("  false positive: healthy task {seed} at call {i}: {why}");
    }
    assert!(fp_rate <= 0.01, "false-positive rate {fp_rate}");
    assert_eq!(caught, runaway, "every runaway task is caught");
}

fn redis_url() -> Option<String> {
    match std::env::var("TOLLGATE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("skipped: TOLLGATE_TEST_REDIS_URL is not set");
            None
        }
    }
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tgtest:{}:{nanos}:{name}", std::process::id())
}

/// `[budgets]` with Redis counters under a fresh prefix, then `guard`.
fn redis_section(url: &str, prefix: &str, guard: &str) -> String {
    format!(
        "[budgets]\ncounters = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\n{guard}"
    )
}

/// A task's guard status as a replica's admin API lists it (`GET /admin/guard`).
async fn status_of(gw: &TestGateway, task: &str) -> Option<String> {
    let listed = admin(gw, reqwest::Method::GET, "/admin/guard").await;
    listed["guarded"]
        .as_array()?
        .iter()
        .find(|t| t["task"] == task)
        .and_then(|t| t["status"].as_str())
        .map(str::to_string)
}

/// Whether `cond` holds within 6 s (three refreshes), polling every 100 ms.
async fn eventually(mut cond: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..60 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn clear_redis(url: &str, prefix: &str) {
    tollgate_store::counters::RedisCounters::connect(url, prefix)
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
}

/// Two replicas, one Redis: a halt decided on replica A is refused by replica B on its
/// very next call for the task (A writes the halt to Redis before its own 409 goes out,
/// and every admission asks Redis), and listed by B's own views within a refresh;
/// `tollgate tasks release` (or either replica's admin API) clears it on both, and both
/// list it released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_halt_on_one_replica_holds_on_the_other_until_released_everywhere() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("halt");
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let hook = WebhookReceiver::start(0).await.unwrap();
    let cfg = config(
        &up.base_url(),
        &format!(
            "{}\n[alerts]\nwebhook_url = \"{}\"\nbackoff_ms = 20\n",
            redis_section(&url, &prefix, "[guard]\nloop_max_repeats = 3\n"),
            hook.url()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a = TestGateway::start_on(&cfg, HashMap::new(), &db_a).await;
    let b = TestGateway::start_on(&cfg, HashMap::new(), &db_b).await;

    // The runaway runs on replica A until A halts it (the same calls as the
    // single-gateway test: six forwarded, the seventh halted).
    let (goal, steps) = agents::runaway(7, Runaway::ReplayJittered, 2, 10);
    let mut statuses = Vec::new();
    for i in 0..7 {
        let r = call(&a, "ticket-88", agents::conversation(&goal, &steps, i + 1)).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 409]);
    // The agent retries on replica B, which never saw the task: refused on the first
    // call, with A's reason, in the OpenAI shape. Nothing more reached the upstream.
    for i in 7..10 {
        let r = call(&b, "ticket-88", agents::conversation(&goal, &steps, i + 1)).await;
        assert_eq!(r.status(), 409, "call {i} on replica B");
        assert_eq!(r.headers()["x-should-retry"], "false");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "task_halted");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("loop detected"),
            "{e}"
        );
    }
    assert_eq!(up.calls(), 6, "no extra call slipped through on B");
    // One incident (in A's store, which decided it), one alert.
    hook.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.received().len(), 1, "{:?}", hook.received());
    assert_eq!(a.store.incidents(Some("ticket-88"), 10).unwrap().len(), 1);
    assert!(b.store.incidents(Some("ticket-88"), 10).unwrap().is_empty());
    // B's views list A's halt within a refresh (2 s): its store, its admin API, its
    // dashboard, with A's reason, agent and halt time, marked as recorded elsewhere.
    let on_a = a.store.task_record("ticket-88").unwrap().unwrap();
    assert!(on_a.is_halted() && !on_a.recorded_elsewhere);
    assert!(
        eventually(async || status_of(&b, "ticket-88").await.as_deref() == Some("halted")).await,
        "B's /admin/guard lists the halt A recorded"
    );
    let on_b = b.store.task_record("ticket-88").unwrap().unwrap();
    assert!(on_b.is_halted() && on_b.recorded_elsewhere);
    assert_eq!(
        (&on_b.reason, &on_b.kind, on_b.halted_ms, &on_b.agent),
        (&on_a.reason, &on_a.kind, on_a.halted_ms, &on_a.agent)
    );
    assert_eq!(on_b.agent.as_deref(), Some("agent-a"));
    assert_eq!(on_b.incident_id, None);
    assert!(
        b.store
            .guarded_tasks(50)
            .unwrap()
            .iter()
            .any(|t| t.task == "ticket-88" && t.is_halted())
    );
    let listed = admin(&b, reqwest::Method::GET, "/admin/guard").await;
    let row = listed["guarded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "ticket-88")
        .unwrap()
        .clone();
    assert_eq!(row["recorded_elsewhere"], true);
    assert!(row["reason"].as_str().unwrap().contains("loop detected"));
    let shown = admin(&b, reqwest::Method::GET, "/admin/guard/ticket-88").await;
    assert_eq!(shown["record"]["status"], "halted");
    assert!(shown["incidents"].as_array().unwrap().is_empty());
    let dash = admin(&b, reqwest::Method::GET, "/admin/dashboard").await;
    assert!(
        dash["halted_tasks"]["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|t| t["task"] == "ticket-88"
                && t["status"] == "halted"
                && t["recorded_elsewhere"] == true)),
        "{}",
        dash["halted_tasks"]
    );
    // And `tollgate tasks list|show` on B's database.
    let cli_on_b = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["tasks", "--db"])
            .arg(&db_b)
            .args(args)
            .env_remove("TOLLGATE_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = cli_on_b(&["list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("ticket-88 "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("halted") && line.contains("(recorded by another replica)"),
        "{line}"
    );
    let show = cli_on_b(&["show", "ticket-88"]);
    assert!(
        show.contains("guard: halted (loop)") && show.contains("recorded by another replica"),
        "{show}"
    );

    // Release from the CLI against A's database and the shared config: both replicas
    // let the task through on the next call, with a fresh history.
    let cfg_path = dir.path().join("tollgate.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["tasks", "--config"])
        .arg(&cfg_path)
        .arg("--db")
        .arg(&db_a)
        .args(["release", "ticket-88"])
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every replica"), "{stdout}");
    for gw in [&b, &a] {
        let r = call(gw, "ticket-88", agents::conversation(&goal, &steps, 1)).await;
        assert_eq!(r.status(), 200);
    }
    // Released in A's database at once, and in B's copy within a refresh: both list it
    // released.
    assert_eq!(
        status_of(&a, "ticket-88").await.as_deref(),
        Some("released")
    );
    assert!(
        eventually(async || status_of(&b, "ticket-88").await.as_deref() == Some("released")).await,
        "B's copy of the halt is released within a refresh"
    );
    // A task polling the same thing, its calls alternating replicas: loops are judged
    // on the history both replicas share, so calls 1, 2, 3 are three repeats (the
    // limit) and call 4, on A, the fourth: halted, as on one gateway; B refuses call 5
    // and after.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let msgs = vec![json!({"role": "user", "content": "poll the build"})];
        statuses.push(call(gw, "ticket-89", msgs).await.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 409, 409, 409, 409, 409, 409, 409, 409]
    );
    let halted_in = |gw: &TestGateway| {
        gw.store
            .task_record("ticket-89")
            .unwrap()
            .is_some_and(|r| r.is_halted())
    };
    assert!(halted_in(&a));
    assert_eq!(a.store.incidents(Some("ticket-89"), 10).unwrap().len(), 1);
    assert!(
        eventually(async || halted_in(&b)).await,
        "B lists the halt A recorded"
    );
    // Released through B's admin API (B only holds A's halt as a copy): every replica
    // lets it through at once, B lists it released at once, and A's store records the
    // release within a refresh.
    let r = admin(&b, reqwest::Method::POST, "/admin/tasks/ticket-89/release").await;
    assert_eq!(r["released"], true);
    assert_eq!(
        status_of(&b, "ticket-89").await.as_deref(),
        Some("released")
    );
    let msgs = vec![json!({"role": "user", "content": "poll the build"})];
    assert_eq!(call(&a, "ticket-89", msgs).await.status(), 200);
    assert!(
        eventually(async || !halted_in(&a)).await,
        "the halting replica's store learned of the release"
    );
    assert_eq!(
        status_of(&a, "ticket-89").await.as_deref(),
        Some("released")
    );
    // And stays released on both: the release is not undone by a later refresh.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!halted_in(&a) && !halted_in(&b));
    a.stop().await;
    b.stop().await;
    clear_redis(&url, &prefix).await;
}

/// Per-task iteration and cost limits count calls on every replica: raced across two
/// replicas, exactly `max_iterations` calls pass (one atomic counter in Redis), and one
/// incident is recorded; a cost limit counts what both replicas' calls cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_limits_count_across_replicas() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("limits");
    // The upstream takes 300 ms: every racing call is admitted before any has settled
    // (so only the iteration limit can refuse them).
    let mut slow = Fixture::json(200, Fixture::file("openai/chat.json"));
    slow.delay = Duration::from_millis(300);
    let up = FixtureUpstream::start(slow).await.unwrap();
    // Each call costs $0.001 (10 output tokens at $100/Mtok, input free).
    let cfg = format!(
        "{}
[[upstreams]]
name = \"up\"
base_url = \"{}\"

[[deployments]]
name = \"m\"
upstream = \"up\"
model = \"gpt-4.1\"
price = {{ input = \"0\", output = \"100\" }}
",
        redis_section(
            &url,
            &prefix,
            "[guard]\nmax_iterations = 10\nmax_cost_usd = \"0.003\"\n\
             loop_max_repeats = 0\nno_progress_calls = 0\n",
        ),
        up.base_url()
    );
    let a = TestGateway::start(&cfg, HashMap::new()).await;
    let b = TestGateway::start(&cfg, HashMap::new()).await;

    // 40 calls of one task at once, alternating replicas.
    let http = client();
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let req = http
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .header("x-tollgate-task", "burst")
            .json(&json!({"model": "m", "max_tokens": 10,
                "messages": [{"role": "user", "content": format!("item {i}")}]}));
        joins.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let mut statuses = Vec::new();
    while let Some(s) = joins.join_next().await {
        statuses.push(s.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let halted = statuses.iter().filter(|s| **s == 409).count();
    eprintln!(
        "40 racing calls over 2 replicas, max_iterations 10: {ok} forwarded, {halted} halted"
    );
    assert_eq!((ok, halted), (10, 30), "{statuses:?}");
    assert_eq!(up.calls(), 10);
    let incidents = a.store.incidents(Some("burst"), 10).unwrap().len()
        + b.store.incidents(Some("burst"), 10).unwrap().len();
    assert_eq!(incidents, 1, "one trip, recorded by one replica");

    up.set(Fixture::json(200, Fixture::file("openai/chat.json")));
    // Cost: $0.003 per task, calls alternating replicas. Per replica it would take six
    // calls; shared, the fourth is refused. (A call's cost counts once it settles,
    // milliseconds after its response: the agent here waits a moment between calls.)
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = call(
            gw,
            "costly",
            vec![json!({"role": "user", "content": format!("step {i}")})],
        )
        .await;
        statuses.push(r.status().as_u16());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(statuses, [200, 200, 200, 409, 409, 409]);
    let t = a
        .store
        .incidents(Some("costly"), 1)
        .unwrap()
        .into_iter()
        .chain(b.store.incidents(Some("costly"), 1).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].kind, "cost");
    assert_eq!(t[0].evidence["cost_usd"], "0.003000000");
    a.stop().await;
    b.stop().await;
    clear_redis(&url, &prefix).await;
}

/// Redis counters configured but unreachable: `on_counter_error = "deny"` refuses a
/// guarded call with 503 `budget_unavailable`; `"allow"` guards it with this replica's
/// own state (a loop is still halted, here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_denies_or_falls_back_to_the_local_guard() {
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    // Nothing listens on port 1.
    let dead = "redis://127.0.0.1:1";
    let msgs = vec![json!({"role": "user", "content": "poll the build"})];
    let deny = TestGateway::start(
        &config(
            &up.base_url(),
            &redis_section(dead, "tg", "[guard]\nloop_max_repeats = 1\n"),
        ),
        HashMap::new(),
    )
    .await;
    let r = call(&deny, "t", msgs.clone()).await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "budget_unavailable");
    deny.stop().await;
    let allow = TestGateway::start(
        &config(
            &up.base_url(),
            &redis_section(
                dead,
                "tg",
                "on_counter_error = \"allow\"\n[guard]\nloop_max_repeats = 1\n",
            ),
        ),
        HashMap::new(),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&allow, "t", msgs.clone()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 409, 409]);
    assert_eq!(up.calls(), 2);
    allow.stop().await;
}

/// Redis restarts empty: the replica whose store recorded a halt writes it back (at
/// startup and on every refresh), so the other replicas refuse the task again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halts_survive_a_redis_that_lost_its_data() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("restart");
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let cfg = config(
        &up.base_url(),
        &redis_section(&url, &prefix, "[guard]\nmax_iterations = 1\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let db_a = dir.path().join("a.db");
    let a = TestGateway::start_on(&cfg, HashMap::new(), &db_a).await;
    let msgs = |i: usize| vec![json!({"role": "user", "content": format!("step {i}")})];
    assert_eq!(call(&a, "t-lost", msgs(0)).await.status(), 200);
    assert_eq!(call(&a, "t-lost", msgs(1)).await.status(), 409);
    a.stop().await;
    // Redis loses everything; replica A comes back on its database.
    clear_redis(&url, &prefix).await;
    let a = TestGateway::start_on(&cfg, HashMap::new(), &db_a).await;
    let b = TestGateway::start(&cfg, HashMap::new()).await;
    // A writes its halts back at startup (and at the latest on its next refresh, 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = call(&b, "t-lost", msgs(2)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(up.calls(), 1);
    a.stop().await;
    b.stop().await;
    clear_redis(&url, &prefix).await;
}

/// An OpenAI answer saying `text`, as JSON or as a stream with a usage chunk.
fn answer(text: &str, stream: bool) -> Fixture {
    if stream {
        let chunk = |delta: Value, usage: Value| {
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-4.1", "choices": if usage.is_null() {
                    json!([{"index": 0, "delta": delta, "finish_reason": null}])
                } else { json!([]) }, "usage": usage})
        };
        let mut sse = String::new();
        for w in text.split_inclusive(' ') {
            sse.push_str(&format!(
                "data: {}\n\n",
                chunk(json!({"content": w}), Value::Null)
            ));
        }
        let usage = json!({"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21});
        sse.push_str(&format!(
            "data: {}\n\ndata: [DONE]\n\n",
            chunk(json!({}), usage)
        ));
        Fixture::sse(sse)
    } else {
        Fixture::json(
            200,
            json!({"id": "chatcmpl-j", "object": "chat.completion", "created": 1,
                "model": "gpt-4.1", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}})
            .to_string(),
        )
    }
}

/// The same prompt sent `calls` times under one task with temperature 0.9 (what pass@k
/// harnesses do), the answer `answer_of(i)` each time, round robin over `gateways`;
/// the status of each call.
async fn sample(
    up: &FixtureUpstream,
    gateways: &[&TestGateway],
    task: &str,
    calls: usize,
    stream: bool,
    answer_of: impl Fn(usize) -> String,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..calls {
        up.set(answer(&answer_of(i), stream));
        let gw = gateways[i % gateways.len()];
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .header("x-tollgate-task", task)
            .json(&json!({"model": "m", "max_tokens": 50, "temperature": 0.9, "stream": stream,
                "messages": [{"role": "user", "content": "Write a Rust function that reverses a singly linked list in place."}]}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let _ = r.bytes().await;
        statuses.push(status);
        // Settlement (which records the answer) runs as the response ends.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    statuses
}

fn distinct(i: usize) -> String {
    format!(
        "Sample {i}: walk the list keeping prev {} and next {}, variant {}",
        i * 31,
        i * 7 + 3,
        i * 7919
    )
}

/// Repeated sampling is not a loop: twenty identical prompts at temperature 0.9 with
/// different answers all pass (JSON and streamed); the same prompts whose answers also
/// repeat are halted (one call later than a plain repeat: two answers must agree first),
/// and `sampling = "loop"` judges on the prompt alone.
#[tokio::test]
async fn sampling_with_distinct_answers_runs_on_and_repeated_answers_halt() {
    let (up, _hook, gw) = setup("[guard]\n", 0).await;
    for stream in [false, true] {
        let s = sample(
            &up,
            &[&gw],
            &format!("pass-at-k-{stream}"),
            20,
            stream,
            distinct,
        )
        .await;
        assert!(s.iter().all(|s| *s == 200), "stream {stream}: {s:?}");
        let s = sample(&up, &[&gw], &format!("stuck-{stream}"), 8, stream, |_| {
            "I am unable to complete this request right now.".into()
        })
        .await;
        assert_eq!(
            s,
            [200, 200, 200, 200, 200, 200, 409, 409],
            "stream {stream}"
        );
    }
    gw.stop().await;
    let (up, _hook, gw) = setup("[guard]\nsampling = \"loop\"\n", 0).await;
    let s = sample(&up, &[&gw], "strict", 7, false, distinct).await;
    assert_eq!(s, [200, 200, 200, 200, 200, 409, 409]);
    gw.stop().await;
}

/// Loop detection shared through Redis: an agent spread over three replicas, round
/// robin, is halted at the same call as on one gateway (the seventh, as in
/// `a_halt_on_one_replica_holds_on_the_other_until_released_everywhere`), and sampling
/// is judged on every replica's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_spread_over_three_replicas_is_caught_as_early_as_on_one() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("spread");
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat.json")))
        .await
        .unwrap();
    let cfg = config(
        &up.base_url(),
        &redis_section(&url, &prefix, "[guard]\nloop_max_repeats = 3\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut gws = Vec::new();
    for n in ["a", "b", "c"] {
        gws.push(
            TestGateway::start_on(&cfg, HashMap::new(), &dir.path().join(format!("{n}.db"))).await,
        );
    }
    let on: Vec<&TestGateway> = gws.iter().collect();
    // Single gateway, memory counters: where does this runaway halt?
    let single = TestGateway::start(
        &config(&up.base_url(), "[guard]\nloop_max_repeats = 3\n"),
        HashMap::new(),
    )
    .await;
    for kind in Runaway::ALL {
        let (goal, steps) = agents::runaway(7, kind, 2, 30);
        let mut alone = Vec::new();
        for i in 0..30 {
            let r = call(
                &single,
                &format!("alone-{kind:?}"),
                agents::conversation(&goal, &steps, i + 1),
            )
            .await;
            alone.push(r.status().as_u16());
            if alone.last() == Some(&409) {
                break;
            }
        }
        let mut spread = Vec::new();
        for i in 0..alone.len() {
            let gw = on[i % on.len()];
            let r = call(
                gw,
                &format!("spread-{kind:?}"),
                agents::conversation(&goal, &steps, i + 1),
            )
            .await;
            spread.push(r.status().as_u16());
        }
        eprintln!(
            "{kind:?}: halted at call {} alone, {:?} spread over 3 replicas",
            alone.len(),
            spread.iter().position(|s| *s == 409).map(|p| p + 1)
        );
        assert_eq!(
            alone.last(),
            Some(&409),
            "{kind:?} is caught on one gateway"
        );
        assert_eq!(
            spread, alone,
            "{kind:?}: the same calls pass and the same call halts"
        );
    }
    single.stop().await;
    let s = sample(&up, &on, "pass-at-k", 12, false, distinct).await;
    assert!(s.iter().all(|s| *s == 200), "{s:?}");
    let s = sample(&up, &on, "stuck", 8, true, |_| "No.".into()).await;
    assert_eq!(s, [200, 200, 200, 200, 200, 409, 409, 409]);
    for gw in gws {
        gw.stop().await;
    }
    clear_redis(&url, &prefix).await;
}

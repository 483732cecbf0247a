//! What-if replay end to end: `tollgate demo` writes a ledger through the real gateway
//! on the simulator, `tollgate replay` re-prices it under the shipped example policies
//! (table, JSON, CSV, SVG); `POST /admin/replay` answers the same from a running
//! gateway, whose rows carry the stable prefix the prompt-cache simulation uses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tollgate_domain::money::Money;
use tollgate_testkit::harness::{MASTER_KEY, TestGateway};
use tollgate_testkit::sim::{self, SimConfig};

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env("TOLLGATE_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/replay")
        .join(name)
}

fn replay_json(config: &Path, policy: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--since",
        "1h",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(tollgate(&args))).unwrap()
}

fn nanos(v: &Value) -> i64 {
    v.as_i64().unwrap()
}

#[test]
fn the_demo_ledger_replays_under_the_example_policies() {
    let dir = tempfile::tempdir().unwrap();
    ok(tollgate(&[
        "demo",
        "--exit",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.path().to_str().unwrap(),
    ]));
    let config = dir.path().join("tollgate.toml");
    let db = dir.path().join("ledger.db");
    let store = tollgate_store::SqliteStore::open(&db).unwrap();
    let rows = store.ledger_rows(0, i64::MAX, 100_000).unwrap();
    let recorded: i64 = rows.iter().map(|r| r.cost.nanos()).sum();
    assert!(
        rows.len() > 40,
        "the demo writes its workload: {}",
        rows.len()
    );
    assert!(
        rows.iter()
            .any(|r| r.prefix.as_ref().is_some_and(|p| p.tokens > 1000)),
        "long system prompts are recorded as stable prefixes"
    );

    // The current policy (an empty file) reproduces the recorded cost to the nano-USD.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let same = replay_json(&config, &empty, &["--by", "agent"]);
    assert_eq!(same["rows"].as_u64().unwrap(), rows.len() as u64);
    assert_eq!(nanos(&same["total"]["cost_now_nanos"]), recorded);
    assert_eq!(nanos(&same["total"]["cost_policy_nanos"]), recorded);
    assert_eq!(nanos(&same["total"]["saved_nanos"]), 0);
    let groups: i64 = same["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| nanos(&g["cost_now_nanos"]))
        .sum();
    assert_eq!(groups, recorded, "the groups sum to the total");

    // The cheaper policy: gpt-4o swapped for gpt-4o-mini, `auto` routed lighter, prompt
    // caching on. It saves money and puts the research agent's successful task at risk.
    let cheaper = replay_json(&config, &example("cheaper.toml"), &["--by", "agent"]);
    let t = &cheaper["total"];
    assert_eq!(nanos(&t["cost_now_nanos"]), recorded);
    assert!(nanos(&t["saved_nanos"]) > 0, "{t}");
    assert_eq!(
        nanos(&t["cost_now_nanos"]) - nanos(&t["cost_policy_nanos"]),
        nanos(&t["saved_nanos"])
    );
    let swapped = rows
        .iter()
        .filter(|r| r.route.deployment == "gpt-4o" && r.routing.is_none())
        .count() as u64;
    assert!(swapped > 0);
    assert!(t["calls_swapped"].as_u64().unwrap() >= swapped);
    assert!(t["calls_lighter"].as_u64().unwrap() > 0);
    let research = cheaper["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "research-agent")
        .unwrap();
    assert_eq!(research["tasks_at_risk"], research["tasks_succeeded"]);
    assert!(research["tasks_at_risk"].as_u64().unwrap() >= 1);
    assert!(t["tasks_at_risk"].as_u64().unwrap() >= 1);
    assert!(
        cheaper["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("approximation"))
    );

    // Without the gateway's caches and pruning the same workload costs more.
    let bare = replay_json(&config, &example("no-caches.toml"), &[]);
    assert!(
        nanos(&bare["total"]["saved_nanos"]) < 0,
        "{}",
        bare["total"]
    );
    assert!(bare["total"]["response_hits_lost"].as_u64().unwrap() > 0);
    assert!(
        bare["groups"].as_array().unwrap().is_empty(),
        "no --by: the total only"
    );

    // Table, CSV and the SVG chart.
    let chart = dir.path().join("replay.svg");
    let table = ok(tollgate(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--policy",
        example("cheaper.toml").to_str().unwrap(),
        "--since",
        "1h",
        "--by",
        "model",
        "--chart",
        chart.to_str().unwrap(),
    ]));
    assert!(table.contains("What-if replay: now vs policy"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("total")), "{table}");
    assert!(table.contains("gpt-4o-mini"));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">total<") && svg.contains("gpt-4o-mini"));
    let csv = ok(tollgate(&[
        "replay",
        "--db",
        db.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--policy",
        example("cheaper.toml").to_str().unwrap(),
        "--since",
        "1h",
        "--by",
        "team",
        "--format",
        "csv",
    ]));
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("group,requests,cost_now_usd,cost_policy_usd,saved_usd,cost_now_nanos")
    );
    let total = lines.last().unwrap();
    assert!(total.starts_with("total,"), "{total}");
    assert!(total.contains(&Money::from_nanos(recorded).to_string()));

    // A policy with a mistake names it and exits non-zero.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[swap]]\nfrom = \"gpt-5\"\nto = \"gpt-4o-mini\"\n").unwrap();
    let out = tollgate(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--policy",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("swap[0].from"));
}

const CLAUDE: &str = "claude-sonnet-4-5";

/// A long, stable system prompt (well past every model's minimum cacheable prefix).
fn handbook() -> String {
    let mut s = String::from("You are the Acme support assistant. Follow the handbook.\n");
    for i in 0..400 {
        s.push_str(&format!(
            "Rule {i}: answer billing questions within {} hours and cite section {}.\n",
            i % 24 + 1,
            i * 7 % 90 + 3
        ));
    }
    s
}

#[tokio::test]
async fn admin_replay_simulates_prompt_caching_on_recorded_prefixes() {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let v1 = sim.base_url();
    // Prompt caching off, strict ledger (a row is readable once its call returns).
    let config = format!(
        r#"[ledger]
durability = "strict"
[cache]
prompt = "off"
[[upstreams]]
name = "ant"
kind = "anthropic"
base_url = "{v1}"
api_key_env = "ANTHROPIC_TEST_KEY"
[[deployments]]
name = "{CLAUDE}"
upstream = "ant"
"#
    );
    let env: HashMap<String, String> = [("ANTHROPIC_TEST_KEY".to_string(), "sk-ant".to_string())]
        .into_iter()
        .collect();
    let gw = TestGateway::start(&config, env).await;
    tollgate_providers::client::install_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let system = handbook();
    for q in [
        "How do refunds work?",
        "Where is my invoice?",
        "Reset my password",
    ] {
        let r = http
            .post(gw.url("/v1/messages"))
            .header("x-api-key", &gw.key)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": CLAUDE, "max_tokens": 50, "system": system,
                "messages": [{"role": "user", "content": q}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let rows = gw.store.ledger_rows(0, i64::MAX, 100).unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let p = r.prefix.as_ref().expect("a stable prefix per row");
        assert!(p.tokens > 2000, "{p:?}");
        assert_eq!(
            p.hash,
            rows[0].prefix.as_ref().unwrap().hash,
            "same system prompt"
        );
        assert_eq!(
            r.usage.cache_read + r.usage.cache_write_5m,
            0,
            "caching was off"
        );
    }
    let recorded: i64 = rows.iter().map(|r| r.cost.nanos()).sum();

    let post = |body: &'static str, auth: bool| {
        let mut req = http
            .post(gw.url("/admin/replay?since=1h&group_by=model"))
            .body(body);
        if auth {
            req = req.header("authorization", format!("Bearer {MASTER_KEY}"));
        }
        req.send()
    };
    let r = post("[prompt_cache]\nmode = \"on\"\nttl = \"5m\"\n", true)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let t = &v["total"];
    assert_eq!(v["view"], "replay");
    assert_eq!(nanos(&t["cost_now_nanos"]), recorded);
    assert_eq!(
        (
            t["prompt_cache_writes"].as_u64(),
            t["prompt_cache_reads"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert!(nanos(&t["saved_nanos"]) > 0, "{t}");
    assert_eq!(v["groups"][0]["group"], CLAUDE);

    // Exactly what the engine computes from the rows the store returns.
    let (targets, routes) = {
        let raw = tollgate_server::config::RawConfig::from_toml(&config, &HashMap::new()).unwrap();
        let prices = raw.price_table().unwrap();
        let (t, r) = tollgate_server::replay::targets_from_raw(&raw, &prices);
        (t, (r, prices))
    };
    let policy = tollgate_server::replay::parse_policy("[prompt_cache]\nmode = \"on\"\n").unwrap();
    let prep = tollgate_server::replay::prepare(&policy, &targets, &routes.0, &routes.1).unwrap();
    let mut engine = tollgate_domain::replay::Replay::new(prep.policy, prep.catalog, None);
    let mut expect = 0i64;
    for r in &rows {
        expect += engine.add(r).cost.nanos();
    }
    assert_eq!(nanos(&t["cost_policy_nanos"]), expect);

    // The admin API's authentication and error shape.
    assert_eq!(post("", false).await.unwrap().status(), 401);
    let r = post("[routes.auto]\nthreshold = 0.5\n", true)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("routes.auto"),
        "{e}"
    );
    let r = post("[prompt_cache]\nmode = \"on\"\n", true).await.unwrap();
    assert_eq!(r.status(), 200);

    // The dashboard's panel is served and loaded by the page.
    let html = http
        .get(gw.url("/dashboard"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("/dashboard/assets/replay.js"));
    let js = http
        .get(gw.url("/dashboard/assets/replay.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("/admin/replay"));
    gw.stop().await;
}

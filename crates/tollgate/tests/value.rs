//! Value per dollar end to end: task outcomes over HTTP, the ROI/tasks/savings admin
//! views, `/metrics` scraped and parsed, the dashboard's assets, and OTLP spans received
//! and decoded by a stub collector.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_testkit::fixture::{Fixture, FixtureUpstream};
use tollgate_testkit::harness::{MASTER_KEY, TestGateway, config_for};

const DEPLOYMENTS: &[(&str, &str)] = &[("gpt-4o", "gpt-4o")];

fn client() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn setup(extra: &str) -> (FixtureUpstream, TestGateway) {
    let up = FixtureUpstream::start(Fixture::json(200, Fixture::file("openai/chat_cached.json")))
        .await
        .unwrap();
    let cfg = config_for(&up.base_url(), DEPLOYMENTS, extra);
    let gw = TestGateway::start(&cfg, HashMap::new()).await;
    (up, gw)
}

async fn chat(gw: &TestGateway, key: &str, task: &str) {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-tollgate-task", task)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn outcome(gw: &TestGateway, key: &str, task: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(gw.url(&format!("/v1/tasks/{task}/outcome")))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn admin(gw: &TestGateway, path: &str) -> Value {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// Wait until the batched ledger has `n` rows.
async fn wait_rows(gw: &TestGateway, n: u64) {
    for _ in 0..200 {
        if gw.store.ledger_count().unwrap() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("ledger never reached {n} rows");
}

#[tokio::test]
async fn outcomes_roi_and_savings() {
    // Minutes saved are priced at the agent's rate (agent-a is the harness key's agent).
    let (_up, gw) =
        setup("[outcomes]\nhourly_rate_usd = \"60\"\nagents = { agent-a = \"30\" }\n").await;
    chat(&gw, &gw.key, "t-1").await;
    chat(&gw, &gw.key, "t-1").await;
    chat(&gw, &gw.key, "t-2").await;
    wait_rows(&gw, 3).await;

    // First outcome: 201, value from minutes at the agent's rate.
    let (s, v) = outcome(
        &gw,
        &gw.key,
        "t-1",
        json!({"status": "success", "minutes_saved": 30,
        "labels": {"reviewer": "dana"}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["value_usd"], "15.000000000");
    assert_eq!(v["revision"], 1);
    assert_eq!(v["recorded_by"], format!("key:{}", gw.key_id));
    // Idempotent: the same outcome again changes nothing.
    let (s, v) = outcome(
        &gw,
        &gw.key,
        "t-1",
        json!({"status": "success", "minutes_saved": 30,
        "labels": {"reviewer": "dana"}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["changed"], false);
    assert_eq!(v["revision"], 1);
    // t-2 fails.
    let (s, _) = outcome(&gw, &gw.key, "t-2", json!({"status": "failure"})).await;
    assert_eq!(s, 201);
    // Bad input: both a value and minutes; an unknown status.
    let (s, v) = outcome(
        &gw,
        &gw.key,
        "t-2",
        json!({"status": "success", "minutes_saved": 3, "value_usd": 1}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = outcome(&gw, &gw.key, "t-2", json!({"status": "won"})).await;
    assert_eq!(s, 400);

    // Another agent's key cannot record for agent-a's task; the master key can.
    let other = client()
        .post(gw.url("/admin/keys"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"agent": "agent-b", "team": "team-b"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let other_key = other["key"].as_str().unwrap();
    let (s, v) = outcome(&gw, other_key, "t-1", json!({"status": "failure"})).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden");
    let (s, v) = outcome(
        &gw,
        MASTER_KEY,
        "t-1",
        json!({"status": "success", "value_usd": "20"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revision"], 2);
    assert_eq!(v["previous"]["value_usd"], "15.000000000");
    assert_eq!(v["recorded_by"], "master");
    let (s, _) = outcome(&gw, "tg-nope", "t-1", json!({"status": "failure"})).await;
    assert_eq!(s, 401);

    // The task's history shows both revisions.
    let t = admin(&gw, "/admin/tasks/t-1").await;
    assert_eq!(t["history"].as_array().unwrap().len(), 2);
    assert_eq!(t["summary"]["calls"], 2);
    assert_eq!(t["outcome"]["status"], "success");

    // ROI: 3 calls at 0.005615 = 0.016845; value 20; one success of two tasks.
    let roi = admin(&gw, "/admin/roi?group_by=agent&since=1h").await;
    let total = &roi["total"];
    assert_eq!(total["tasks"], 2);
    assert_eq!(total["succeeded"], 1);
    assert_eq!(total["cost_usd"], "0.016845000");
    assert_eq!(total["value_usd"], "20.000000000");
    assert_eq!(total["cost_per_successful_task_usd"], "0.016845000");
    assert_eq!(total["success_rate_pct"], "50.0%");
    assert_eq!(roi["groups"][0]["group"], "agent-a");

    // Savings: every call read 1920 cached tokens: 0.0024 saved each.
    let sv = admin(&gw, "/admin/savings?since=1h").await;
    assert_eq!(sv["mechanisms"][0]["mechanism"], "prompt_cache");
    assert_eq!(sv["mechanisms"][0]["requests"], 3);
    assert_eq!(sv["mechanisms"][0]["saved_usd"], "0.007200000");
    assert_eq!(sv["mechanisms"][0]["without_usd"], "0.024045000");

    // The dashboard's data: totals, a spend series, panels for what this build lacks.
    let d = admin(&gw, "/admin/dashboard?since=1h").await;
    assert_eq!(d["totals"]["cost_usd"], "0.016845000");
    assert_eq!(d["spend"]["series"][0]["name"], "agent-a");
    assert_eq!(d["spend"]["series"][0]["total_usd"], "0.016845000");
    // This build enforces budgets and guards tasks: their panels have data sources.
    assert_eq!(d["budgets"]["available"], true);
    assert_eq!(d["halted_tasks"]["available"], true);
    assert_eq!(d["alerts"]["available"], true);
    assert_eq!(d["top_tasks"][0]["task"], "t-1");
    // Without the master key: 401.
    let r = client()
        .get(gw.url("/admin/dashboard"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    gw.stop().await;
}

/// Parse the Prometheus text format: `name{labels} value` lines, with `# HELP`/`# TYPE`.
/// A parsed sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse_prometheus(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type line {line}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').unwrap();
                let mut m = BTreeMap::new();
                // Values here contain no commas or escaped quotes.
                for pair in l.split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    let v = v.strip_prefix('"').unwrap().strip_suffix('"').unwrap();
                    m.insert(k.to_string(), v.to_string());
                }
                (n.to_string(), m)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            .unwrap_or(&name)
            .to_string();
        assert!(
            types.contains_key(&family),
            "sample before its TYPE: {line}"
        );
        samples.push((name, labels, value));
    }
    (types, samples)
}

#[tokio::test]
async fn metrics_are_scraped_and_parse() {
    let (_up, gw) = setup("").await;
    for i in 0..3 {
        chat(&gw, &gw.key, &format!("task-{i}")).await;
    }
    wait_rows(&gw, 3).await;
    let r = client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let (types, samples) = parse_prometheus(&text);
    let get = |name: &str, want: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    };
    assert_eq!(types["tollgate_requests_total"], "counter");
    assert_eq!(types["tollgate_request_duration_seconds"], "histogram");
    assert_eq!(
        get(
            "tollgate_requests_total",
            &[("agent", "agent-a"), ("deployment", "gpt-4o")]
        ),
        3.0
    );
    assert!((get("tollgate_cost_usd_total", &[("team", "team-a")]) - 0.016845).abs() < 1e-12);
    assert_eq!(
        get("tollgate_tokens_total", &[("kind", "cache_read")]),
        3.0 * 1920.0
    );
    assert_eq!(
        get("tollgate_tokens_total", &[("kind", "input")]),
        3.0 * 86.0
    );
    assert!((get("tollgate_savings_usd", &[("mechanism", "prompt_cache")]) - 0.0072).abs() < 1e-12);
    assert_eq!(get("tollgate_request_duration_seconds_count", &[]), 3.0);
    assert_eq!(
        get(
            "tollgate_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(
        get("tollgate_responses_total", &[("status_class", "2xx")]),
        3.0
    );
    // Bounded labels: no task or request ids anywhere.
    assert!(!text.contains("task-0"));
    assert!(!text.contains("req_"));
    // No budgets in this build: the gauge family is absent, not zero.
    assert!(!types.contains_key("tollgate_budget_remaining_usd"));
    gw.stop().await;
}

#[tokio::test]
async fn dashboard_assets_are_embedded() {
    let (_up, gw) = setup("").await;
    let r = client().get(gw.url("/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("/dashboard/assets/uPlot.iife.min.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    for (asset, ty) in [
        ("uPlot.iife.min.js", "text/javascript"),
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("uPlot.min.css", "text/css"),
    ] {
        let r = client()
            .get(gw.url(&format!("/dashboard/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
    }
    let r = client()
        .get(gw.url("/dashboard/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    gw.stop().await;
}

type Received = Arc<Mutex<Vec<Value>>>;

async fn collect(
    State(rx): State<Received>,
    headers: http::HeaderMap,
    body: bytes::Bytes,
) -> &'static str {
    assert_eq!(headers["content-type"], "application/json");
    rx.lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    "{}"
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test]
async fn otlp_spans_reach_a_collector() {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    #[allow(clippy::disallowed_methods)] // the test owns its stub collector
    let collector = tokio::spawn(async move { axum::serve(listener, app).await });
    let (_up, gw) = setup(&format!(
        "[telemetry]\notlp_endpoint = \"http://{addr}\"\notlp_flush_ms = 20\nservice_name = \"tollgate-test\"\n"
    ))
    .await;
    chat(&gw, &gw.key, "t-otel").await;
    // Stopping flushes the exporter.
    gw.stop().await;
    let got = received.lock().unwrap().clone();
    collector.abort();
    let spans: Vec<&Value> = got
        .iter()
        .flat_map(|r| r["resourceSpans"].as_array().unwrap())
        .inspect(|rs| {
            assert_eq!(
                rs["resource"]["attributes"][0]["value"]["stringValue"],
                "tollgate-test"
            );
        })
        .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
        .flat_map(|ss| ss["spans"].as_array().unwrap())
        .collect();
    assert_eq!(spans.len(), 2, "{got:?}");
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let client_span = spans.iter().find(|s| s["kind"] == 3).unwrap();
    assert_eq!(server["traceId"], client_span["traceId"]);
    assert_eq!(client_span["parentSpanId"], server["spanId"]);
    assert_eq!(server["traceId"].as_str().unwrap().len(), 32);
    assert_eq!(server["spanId"].as_str().unwrap().len(), 16);
    assert_eq!(server["name"], "POST /v1/chat/completions");
    assert_eq!(client_span["name"], "chat gpt-4o");
    assert_eq!(
        attr(client_span, "gen_ai.operation.name").unwrap()["stringValue"],
        "chat"
    );
    assert_eq!(
        attr(client_span, "gen_ai.provider.name").unwrap()["stringValue"],
        "openai"
    );
    assert_eq!(
        attr(client_span, "gen_ai.request.model").unwrap()["stringValue"],
        "gpt-4o"
    );
    assert_eq!(
        attr(client_span, "gen_ai.usage.input_tokens").unwrap()["intValue"],
        "2006"
    );
    assert_eq!(
        attr(client_span, "gen_ai.usage.output_tokens").unwrap()["intValue"],
        "300"
    );
    assert_eq!(
        attr(client_span, "gen_ai.usage.cache_read.input_tokens").unwrap()["intValue"],
        "1920"
    );
    assert_eq!(
        attr(client_span, "tollgate.cost.nanos").unwrap()["intValue"],
        "5615000"
    );
    assert!(
        (attr(client_span, "tollgate.cost.usd").unwrap()["doubleValue"]
            .as_f64()
            .unwrap()
            - 0.005615)
            .abs()
            < 1e-12
    );
    assert_eq!(
        attr(server, "tollgate.task").unwrap()["stringValue"],
        "t-otel"
    );
    assert_eq!(
        attr(server, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    let start: u128 = server["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = server["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start);
}

/// A request carrying a W3C `traceparent` joins the caller's trace; the upstream call
/// carries a `traceparent` naming the client span; a malformed one starts a new trace
/// (the request still succeeds); an unsampled caller's request exports no spans.
#[tokio::test]
async fn otlp_spans_join_the_callers_trace_and_propagate_it_upstream() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    #[allow(clippy::disallowed_methods)] // the test owns its stub collector
    let collector = tokio::spawn(async move { axum::serve(listener, app).await });
    let (up, gw) = setup(&format!(
        "[telemetry]\notlp_endpoint = \"http://{addr}\"\notlp_flush_ms = 20\n"
    ))
    .await;
    let send = |task: &'static str, traceparent: &'static str| {
        client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&gw.key)
            .header("x-tollgate-task", task)
            .header("traceparent", traceparent)
            .header("tracestate", "caller=1")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
    };
    let upstream_traceparent = || {
        up.last_headers().unwrap()["traceparent"]
            .to_str()
            .unwrap()
            .to_string()
    };
    // 1. A sampled caller.
    let tp = format!("00-{TRACE}-{PARENT}-01").leak();
    assert_eq!(send("t-joined", tp).await.unwrap().status(), 200);
    let sent_joined = upstream_traceparent();
    assert_eq!(up.last_headers().unwrap()["tracestate"], "caller=1");
    // 2. A malformed traceparent: ignored.
    assert_eq!(
        send("t-malformed", "00-nonsense-01")
            .await
            .unwrap()
            .status(),
        200
    );
    let sent_fresh = upstream_traceparent();
    assert!(up.last_headers().unwrap().get("tracestate").is_none());
    // 3. An unsampled caller: propagated as unsampled, nothing exported.
    let tp = format!("00-{TRACE}-{PARENT}-00").leak();
    assert_eq!(send("t-unsampled", tp).await.unwrap().status(), 200);
    let sent_unsampled = upstream_traceparent();
    gw.stop().await;
    let got = received.lock().unwrap().clone();
    collector.abort();
    let spans: Vec<Value> = got
        .iter()
        .flat_map(|r| r["resourceSpans"].as_array().unwrap())
        .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
        .flat_map(|ss| ss["spans"].as_array().unwrap())
        .cloned()
        .collect();
    let of_task = |task: &str, kind: i64| {
        spans
            .iter()
            .find(|s| {
                s["kind"] == kind
                    && attr(s, "tollgate.task").map(|v| v["stringValue"] == task) == Some(true)
            })
            .cloned()
    };
    let server = of_task("t-joined", 2).unwrap();
    let client_span = of_task("t-joined", 3).unwrap();
    assert_eq!(server["traceId"], TRACE);
    assert_eq!(server["parentSpanId"], PARENT);
    assert_eq!(client_span["traceId"], TRACE);
    assert_eq!(client_span["parentSpanId"], server["spanId"]);
    assert_eq!(
        sent_joined,
        format!("00-{TRACE}-{}-01", client_span["spanId"].as_str().unwrap())
    );
    let server = of_task("t-malformed", 2).unwrap();
    let client_span = of_task("t-malformed", 3).unwrap();
    assert_ne!(server["traceId"], TRACE);
    assert!(server.get("parentSpanId").is_none(), "{server}");
    assert_eq!(
        sent_fresh,
        format!(
            "00-{}-{}-01",
            server["traceId"].as_str().unwrap(),
            client_span["spanId"].as_str().unwrap()
        )
    );
    assert!(of_task("t-unsampled", 2).is_none() && of_task("t-unsampled", 3).is_none());
    assert!(
        sent_unsampled.starts_with(&format!("00-{TRACE}-")) && sent_unsampled.ends_with("-00"),
        "{sent_unsampled}"
    );
    assert_eq!(spans.len(), 4, "two requests sampled, two spans each");
}

fn tollgate(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_records_outcomes_and_reports_roi() {
    let (_up, gw) = setup("").await;
    chat(&gw, &gw.key, "t-cli").await;
    let stopped = gw.stop().await;
    let db = stopped.path().display().to_string();
    let (ok, out, err) = tollgate(&[
        "tasks",
        "--db",
        &db,
        "outcome",
        "t-cli",
        "--status",
        "success",
        "--minutes-saved",
        "30",
        "--hourly-rate-usd",
        "80",
        "--label",
        "reviewer=dana",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["value_usd"], "40.000000000");
    assert_eq!(v["recorded_by"], "cli");
    assert_eq!(v["labels"]["reviewer"], "dana");
    // Minutes without any rate (no request rate, no [outcomes] config) are refused.
    let (ok, _, err) = tollgate(&[
        "tasks",
        "--db",
        &db,
        "outcome",
        "t-cli",
        "--status",
        "success",
        "--minutes-saved",
        "5",
    ]);
    assert!(!ok);
    assert!(err.contains("hourly"), "{err}");
    let (ok, out, err) = tollgate(&[
        "report", "--db", &db, "--view", "roi", "--since", "1h", "--format", "json",
    ]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["total"]["succeeded"], 1);
    assert_eq!(r["total"]["value_usd"], "40.000000000");
    assert_eq!(r["total"]["cost_usd"], "0.005615000");
    for view in ["tasks", "savings", "roi"] {
        let (ok, out, err) = tollgate(&["report", "--db", &db, "--view", view, "--since", "1h"]);
        assert!(ok, "{view}: {err}");
        assert!(out.contains("t-cli") || view != "tasks", "{out}");
    }
    let (ok, out, _) = tollgate(&["tasks", "--db", &db, "show", "t-cli"]);
    assert!(ok);
    assert!(out.contains("outcome: success"), "{out}");
    let focus = std::env::temp_dir().join(format!("tollgate-focus-{}.csv", std::process::id()));
    let (ok, _, err) = tollgate(&[
        "export",
        "--db",
        &db,
        "--format",
        "focus",
        "--since",
        "1h",
        "--out",
        focus.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(&focus).unwrap();
    let _ = std::fs::remove_file(&focus);
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}"); // input, cached input, output
}

//! Tiered routing through the real HTTP path, in front of the simulator: a routed model
//! name (`auto`) sends easy prompts to the light tier and hard ones to the heavy tier, in
//! every ingress format; the ledger carries the decision and the heaviest tier's cost
//! (checked to the nano-USD); shadow mode forwards the default and records what routing
//! would have saved; a conversation sticks to its tier when its warm cache is worth more
//! than the switch; a failed light answer is escalated once (two rows); a route's
//! allow-list refuses others in the API's error shape; `tollgate report --view savings`
//! shows routing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::{Value, json};
use std::collections::HashMap;
use tollgate_domain::ledger::{LedgerRow, RouteMode};
use tollgate_domain::money::Money;
use tollgate_domain::usage::Usage;
use tollgate_domain::value::Mechanism;
use tollgate_testkit::harness::{MASTER_KEY, Stopped, TestGateway};
use tollgate_testkit::sim::{self, SimConfig, SimUpstream};

/// The router's threshold in these tests. The built-in router was trained on MMLU and
/// GSM8K outcomes (Mixtral-8x7B vs GPT-4): its notion of "needs the heavy model" is that
/// data's, so the two prompts are questions of its dev set that it scores far on either
/// side of this threshold (0.47 and 0.71).
const THRESHOLD: f64 = 0.6;

/// A dev-set question the router sends to the light tier.
const EASY: &str = "What is the sum of all positive integer values of $n$ such that $n^2$ is a factor of $1200$?\nA. 42\nB. 12\nC. 36\nD. 39\nAnswer:";
/// A dev-set question the router sends to the heavy tier.
const HARD: &str = "For which of these two scenarios does the main character (who uses I/me/my) do something clearly morally wrong, according to ordinary moral standards in the US as of 2020? Scenario 1 | I cut many of the children last week. Scenario 2 | I took pictures of her while she was at the baby shower.\nA. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:";

/// Per-million-token prices: light (1 in / 0.1 cache read / 5 out), heavy (3 / 0.3 / 15),
/// cheap (0.1 / 0.01 / 0.5). In nano-USD per token: ×1000.
fn config(sim: &SimUpstream, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "sim"
base_url = "{v1}"
[[upstreams]]
name = "ant"
kind = "anthropic"
base_url = "{v1}"
api_key_env = "ANTHROPIC_TEST_KEY"

[[deployments]]
name = "light"
upstream = "sim"
model = "gpt-4o-mini"
price = {{ input = "1", cache_read = "0.1", output = "5" }}
[[deployments]]
name = "heavy"
upstream = "sim"
model = "gpt-4o"
price = {{ input = "3", cache_read = "0.3", output = "15" }}
[[deployments]]
name = "cheap"
upstream = "sim"
model = "gpt-4o-mini"
price = {{ input = "0.1", cache_read = "0.01", output = "0.5" }}

[[routes]]
name = "auto"
tiers = ["light", "heavy"]
thresholds = [{THRESHOLD}]
escalate = true
[[routes]]
name = "plain-auto"
tiers = ["light", "heavy"]
thresholds = [{THRESHOLD}]
[[routes]]
name = "cheap-auto"
tiers = ["cheap", "heavy"]
thresholds = [{THRESHOLD}]
[[routes]]
name = "shadow-auto"
tiers = ["light", "heavy"]
thresholds = [{THRESHOLD}]
mode = "shadow"
[[routes]]
name = "support-auto"
tiers = ["light", "heavy"]
thresholds = [{THRESHOLD}]
teams = ["support"]
{extra}
"#,
        v1 = sim.base_url()
    )
}

async fn setup(extra: &str) -> (SimUpstream, TestGateway) {
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let env: HashMap<String, String> = [("ANTHROPIC_TEST_KEY".to_string(), "sk-ant".to_string())]
        .into_iter()
        .collect();
    let gw = TestGateway::start(&config(&sim, extra), env).await;
    (sim, gw)
}

fn http() -> reqwest::Client {
    tollgate_providers::client::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn request_id(&self) -> String {
        self.header("x-tollgate-request-id").unwrap().to_string()
    }

    fn text(&self) -> &str {
        self.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
    }
}

/// `x-tollgate-route-tier` and `x-tollgate-route-deployment`: `"0 light"`.
fn tier(a: &Answer) -> String {
    format!(
        "{} {}",
        a.header("x-tollgate-route-tier").unwrap_or("-"),
        a.header("x-tollgate-route-deployment").unwrap_or("-")
    )
}

async fn post(gw: &TestGateway, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut r = http()
        .post(gw.url(path))
        .bearer_auth(&gw.key)
        .header("x-api-key", &gw.key)
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

async fn chat(gw: &TestGateway, model: &str, prompt: &str, headers: &[(&str, &str)]) -> Answer {
    let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    post(gw, "/v1/chat/completions", body, headers).await
}

fn rows(s: &Stopped) -> Vec<LedgerRow> {
    s.ledger_rows(0, i64::MAX, 1000).unwrap()
}

fn row<'a>(rows: &'a [LedgerRow], id: &str) -> &'a LedgerRow {
    rows.iter().find(|r| r.request_id == id).unwrap()
}

/// Exact cost at per-million prices given in nano-USD per token.
fn priced(u: &Usage, input: i64, read: i64, output: i64) -> Money {
    let n = |v: u64| v as i64;
    Money::from_nanos(n(u.input) * input + n(u.cache_read) * read + n(u.output) * output)
}

fn heavy_cost(u: &Usage) -> Money {
    priced(u, 3000, 300, 15_000)
}

fn light_cost(u: &Usage) -> Money {
    priced(u, 1000, 100, 5000)
}

#[tokio::test]
async fn easy_goes_light_hard_goes_heavy_in_every_format() {
    let (_sim, gw) = setup("").await;
    let easy = chat(&gw, "auto", EASY, &[]).await;
    assert_eq!(easy.status, 200, "{}", easy.body);
    assert_eq!(easy.header("x-tollgate-route"), Some("auto"));
    assert_eq!(tier(&easy), "0 light");
    assert_eq!(easy.header("x-tollgate-route-mode"), Some("enforce"));
    let easy_score: f64 = easy
        .header("x-tollgate-route-score")
        .unwrap()
        .parse()
        .unwrap();
    assert!(easy_score < THRESHOLD, "{easy_score}");
    let hard = chat(&gw, "auto", HARD, &[]).await;
    assert_eq!(hard.status, 200);
    assert_eq!(tier(&hard), "1 heavy");
    let hard_score: f64 = hard
        .header("x-tollgate-route-score")
        .unwrap()
        .parse()
        .unwrap();
    assert!(hard_score >= THRESHOLD, "{hard_score}");

    // The same decision whatever API the client speaks (Anthropic Messages here, to an
    // OpenAI-format upstream through translation).
    let ant = post(
        &gw,
        "/v1/messages",
        json!({"model": "auto", "max_tokens": 200, "system": "Be brief.",
               "messages": [{"role": "user", "content": [{"type": "text", "text": HARD}]}]}),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(ant.status, 200, "{}", ant.body);
    assert_eq!(tier(&ant), "1 heavy");
    assert_eq!(ant.body["type"], "message");
    // And Bedrock Converse, whose model id is in the path.
    let br = post(
        &gw,
        "/model/auto/converse",
        json!({"messages": [{"role": "user", "content": [{"text": EASY}]}]}),
        &[],
    )
    .await;
    assert_eq!(br.status, 200, "{}", br.body);
    assert_eq!(tier(&br), "0 light");
    assert!(br.body["output"]["message"]["content"][0]["text"].is_string());

    // GET /v1/models lists the routed names this key may use, not the others.
    let models: Value = http()
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"auto") && ids.contains(&"shadow-auto"),
        "{ids:?}"
    );
    assert!(!ids.contains(&"support-auto"), "{ids:?}");

    let (e_id, h_id, a_id) = (easy.request_id(), hard.request_id(), ant.request_id());
    let b_id = br.request_id();
    let s = gw.stop().await;
    let rows = rows(&s);
    let e = row(&rows, &e_id);
    assert_eq!(e.route.requested_model, "auto");
    assert_eq!(e.route.deployment, "light");
    assert_eq!(e.route.upstream_model, "gpt-4o-mini");
    let r = e.routing.as_ref().unwrap();
    assert_eq!(
        (r.name.as_str(), r.tier, r.tier_deployment.as_str()),
        ("auto", 0, "light")
    );
    assert_eq!(r.mode, RouteMode::Enforce);
    assert_eq!(r.escalated, None);
    assert!((f64::from(r.score_ppm) / 1e6 - easy_score).abs() < 1e-4);
    // Exact money: the row is priced on the light tier, the heavy figure on the heavy
    // deployment's prices for the same token counts.
    assert!(e.usage.input > 0 && e.usage.output > 0);
    assert_eq!(e.cost, light_cost(&e.usage));
    assert_eq!(r.tier_cost, e.cost);
    assert_eq!(r.heavy_cost, heavy_cost(&e.usage));
    assert!(r.heavy_cost > e.cost);

    let h = row(&rows, &h_id);
    assert_eq!(h.route.deployment, "heavy");
    let r = h.routing.as_ref().unwrap();
    assert_eq!((r.tier, r.tier_deployment.as_str()), (1, "heavy"));
    assert_eq!(h.cost, heavy_cost(&h.usage));
    assert_eq!((r.heavy_cost, r.tier_cost), (h.cost, h.cost));
    let a = row(&rows, &a_id);
    assert_eq!(a.routing.as_ref().unwrap().tier, 1);
    let b = row(&rows, &b_id);
    assert_eq!(
        (b.route.deployment.as_str(), b.cost),
        ("light", light_cost(&b.usage))
    );
    assert_eq!(b.routing.as_ref().unwrap().heavy_cost, heavy_cost(&b.usage));

    // The savings view: heavy − actual over the enforced rows.
    let sv = s.savings_report(None, 0, i64::MAX).unwrap();
    let routing = sv
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::Routing)
        .unwrap();
    assert_eq!(routing.requests, 4);
    let want: i64 = [e, h, a, b]
        .iter()
        .map(|x| x.routing.as_ref().unwrap().heavy_cost.nanos() - x.cost.nanos())
        .sum();
    assert_eq!(routing.saved().nanos(), want);
    assert!(want > 0);
}

#[tokio::test]
async fn shadow_mode_forwards_the_default_and_records_what_routing_would_save() {
    let (_sim, gw) = setup("").await;
    let a = chat(&gw, "shadow-auto", EASY, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-tollgate-route-mode"), Some("shadow"));
    assert_eq!(tier(&a), "0 light");
    // A concrete model with an `x-tollgate-route` header: served as asked, decided in
    // shadow under that route.
    let b = chat(&gw, "heavy", EASY, &[("x-tollgate-route", "auto")]).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.header("x-tollgate-route-mode"), Some("shadow"));
    let unknown = chat(&gw, "heavy", EASY, &[("x-tollgate-route", "nope")]).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["param"], "x-tollgate-route");
    let plain = chat(&gw, "heavy", EASY, &[]).await;
    assert_eq!(plain.header("x-tollgate-route"), None);

    let ids = [a.request_id(), b.request_id()];
    let plain_id = plain.request_id();
    let s = gw.stop().await;
    let rows = rows(&s);
    let mut would = 0;
    for id in &ids {
        let x = row(&rows, id);
        assert_eq!(x.route.deployment, "heavy", "shadow forwards the default");
        assert_eq!(x.cost, heavy_cost(&x.usage));
        let r = x.routing.as_ref().unwrap();
        assert_eq!(r.mode, RouteMode::Shadow);
        assert_eq!((r.tier, r.tier_deployment.as_str()), (0, "light"));
        assert_eq!(r.tier_cost, light_cost(&x.usage));
        assert_eq!(r.heavy_cost, x.cost);
        would += x.cost.nanos() - r.tier_cost.nanos();
    }
    assert_eq!(row(&rows, &plain_id).routing, None);
    let sv = s.savings_report(None, 0, i64::MAX).unwrap();
    let shadow = sv
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::RoutingShadow)
        .unwrap();
    assert_eq!(shadow.requests, 2);
    assert_eq!(shadow.saved().nanos(), would);
    assert!(would > 0);
    let enforced = sv
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::Routing)
        .unwrap();
    assert_eq!(enforced.requests, 0);
}

#[tokio::test]
async fn a_routes_allow_list_refuses_others_in_the_apis_shape() {
    let (_sim, gw) = setup("").await;
    let a = chat(&gw, "support-auto", EASY, &[]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body["error"]["code"], "model_not_allowed");
    assert_eq!(a.body["error"]["type"], "permission_error");
    assert_eq!(a.body["error"]["param"], "model");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team `team-a`")
    );
    let b = post(
        &gw,
        "/v1/messages",
        json!({"model": "support-auto", "max_tokens": 10,
               "messages": [{"role": "user", "content": "hi"}]}),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(b.status, 403);
    assert_eq!(b.body["type"], "error");
    assert_eq!(b.body["error"]["type"], "permission_error");
    // Routes serve chat, not embeddings.
    let emb = post(
        &gw,
        "/v1/embeddings",
        json!({"model": "auto", "input": "hello"}),
        &[],
    )
    .await;
    assert_eq!(emb.status, 400);
    assert_eq!(emb.body["error"]["param"], "model");
    // A key of the listed team gets through (a key owner's team is not overridden by
    // headers).
    let support: Value = http()
        .post(gw.url("/admin/keys"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"agent": "helpdesk", "team": "support"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(support["key"].as_str().unwrap())
        .json(&json!({"model": "support-auto", "messages": [{"role": "user", "content": EASY}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    assert_eq!(c.headers()["x-tollgate-route"], "support-auto");
    let id = a.request_id();
    let s = gw.stop().await;
    let rows = rows(&s);
    let r = row(&rows, &id);
    assert_eq!(r.error_code.as_deref(), Some("model_not_allowed"));
    assert_eq!(r.routing, None);
}

/// A long, neutral system prompt (a few hundred tokens), the same for every call of the
/// task, so the heavy tier's cache holds it.
fn system_prompt() -> String {
    "You are a helpful assistant for an online bookshop. Answer politely. ".repeat(40)
}

async fn task_call(gw: &TestGateway, model: &str, task: &str, prompt: &str) -> Answer {
    let body = json!({"model": model, "max_tokens": 12, "messages": [
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": prompt}]});
    post(
        gw,
        "/v1/chat/completions",
        body,
        &[("x-tollgate-task", task)],
    )
    .await
}

#[tokio::test]
async fn a_conversation_sticks_to_its_tier_while_its_warm_cache_is_worth_more() {
    let (_sim, gw) = setup("").await;
    // The easy prompt alone goes light.
    // (`plain-auto` does not escalate: these calls stop at 12 tokens, `finish_reason`
    // `length`, which `auto` would retry on the heavy tier.)
    let alone = task_call(&gw, "plain-auto", "t-alone", EASY).await;
    assert_eq!(
        tier(&alone),
        "0 light",
        "{:?} {}",
        alone.header("x-tollgate-route-score"),
        alone.body
    );
    // Task 1 starts hard (heavy); its next, easy call stays on heavy: re-reading the
    // warm prompt at $0.30/M beats sending it cold to the light tier at $1/M.
    let first = task_call(&gw, "plain-auto", "t-1", HARD).await;
    assert_eq!(tier(&first), "1 heavy");
    let next = task_call(&gw, "plain-auto", "t-1", EASY).await;
    assert_eq!(tier(&next), "1 heavy");
    let score: f64 = next
        .header("x-tollgate-route-score")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        score < THRESHOLD,
        "the router alone would have gone light: {score}"
    );
    // Against a light tier at $0.10/M the warm cache is not worth keeping: it switches.
    let first2 = task_call(&gw, "cheap-auto", "t-2", HARD).await;
    assert_eq!(tier(&first2), "1 heavy");
    let next2 = task_call(&gw, "cheap-auto", "t-2", EASY).await;
    assert_eq!(tier(&next2), "0 cheap");
    // Going up is never held back by the cache.
    let up = task_call(&gw, "cheap-auto", "t-2", HARD).await;
    assert_eq!(tier(&up), "1 heavy");

    let id = next.request_id();
    let s = gw.stop().await;
    let rows = rows(&s);
    let r = row(&rows, &id);
    assert_eq!(r.route.deployment, "heavy");
    assert_eq!(r.routing.as_ref().unwrap().tier, 1);
}

#[tokio::test]
async fn a_failed_light_answer_is_escalated_once_and_both_calls_are_metered() {
    let (_sim, gw) = setup(
        "[[budgets.limits]]\nscope = \"team:team-a\"\nperiod = \"lifetime\"\nlimit_usd = \"100\"\n",
    )
    .await;
    for (fault, code) in [
        ("empty", "empty"),
        ("refusal", "refusal"),
        ("length", "length"),
    ] {
        let prompt = format!("{EASY} [[sim:{fault}=gpt-4o-mini]]");
        let a = chat(&gw, "auto", &prompt, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-tollgate-route-escalated"), Some(code));
        assert_eq!(tier(&a), "1 heavy");
        assert!(
            !a.text().is_empty(),
            "{fault}: the client sees the heavy answer"
        );
    }
    // JSON asked for and not given.
    let body = json!({"model": "auto", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": format!("{EASY} [[sim:not-json=gpt-4o-mini]]")}]});
    let j = post(&gw, "/v1/chat/completions", body, &[]).await;
    assert_eq!(j.header("x-tollgate-route-escalated"), Some("invalid_json"));
    assert!(
        serde_json::from_str::<Value>(j.text()).is_ok(),
        "{}",
        j.text()
    );
    // A good light answer is not escalated.
    let ok = chat(&gw, "auto", EASY, &[]).await;
    assert_eq!(ok.header("x-tollgate-route-escalated"), None);
    // Streams are not escalated: their bytes have reached the client.
    let s = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&gw.key)
        .json(&json!({"model": "auto", "stream": true,
            "messages": [{"role": "user", "content": format!("{EASY} [[sim:empty=gpt-4o-mini]]")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(s.status(), 200);
    assert_eq!(s.headers().get("x-tollgate-route-tier").unwrap(), "0");
    assert_eq!(
        s.headers().get("x-tollgate-route-deployment").unwrap(),
        "light"
    );
    let _ = s.text().await.unwrap();

    // Both calls of every escalation settled their reservation: nothing left reserved,
    // and the budget's spend is the ledger's.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let budgets: Value = http()
        .get(gw.url("/admin/budgets"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live = budgets["budgets"][0]["current"][0]["live"].clone();
    assert_eq!(live["reserved_usd"], "0.000000000", "{budgets}");

    let second = j.request_id();
    let s = gw.stop().await;
    let rows = rows(&s);
    // 4 escalations × 2 rows + the good call + the stream.
    assert_eq!(rows.len(), 10);
    let escalated: Vec<&LedgerRow> = rows
        .iter()
        .filter(|r| r.routing.as_ref().unwrap().escalated.is_some())
        .collect();
    assert_eq!(escalated.len(), 4);
    for r in &escalated {
        assert_eq!(r.route.deployment, "light");
        assert_eq!(r.status, 200);
        assert!(
            r.cost > Money::ZERO,
            "the failed call is billed and metered"
        );
    }
    let last = row(&rows, &second);
    assert_eq!(last.route.deployment, "heavy");
    assert_eq!(last.routing.as_ref().unwrap().tier, 1);
    assert_eq!(last.routing.as_ref().unwrap().escalated, None);
    // Savings count an escalated call as a loss (without routing it would not exist).
    let sv = s.savings_report(None, 0, i64::MAX).unwrap();
    let routing = sv
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::Routing)
        .unwrap();
    let want: i64 = rows
        .iter()
        .map(|r| {
            let rt = r.routing.as_ref().unwrap();
            let base = if rt.escalated.is_some() {
                0
            } else {
                rt.heavy_cost.nanos()
            };
            base - r.cost.nanos()
        })
        .sum();
    assert_eq!(routing.saved().nanos(), want);
    let total: i64 = rows.iter().map(|r| r.cost.nanos()).sum();
    assert_eq!(
        live["spent_usd"].as_str().unwrap(),
        Money::from_nanos(total).to_string(),
        "{live}"
    );
}

#[tokio::test]
async fn report_view_savings_shows_routing() {
    let (_sim, gw) = setup("").await;
    for p in [EASY, EASY, HARD] {
        assert_eq!(chat(&gw, "auto", p, &[]).await.status, 200);
    }
    assert_eq!(chat(&gw, "shadow-auto", EASY, &[]).await.status, 200);
    // Batched rows reach the database within milliseconds.
    for _ in 0..200 {
        if gw.store.ledger_count().unwrap() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let sv: Value = http()
        .get(gw.url("/admin/savings?since=1h&group_by=agent"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mech = |name: &str| {
        sv["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mechanism"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(mech("routing")["requests"], 3);
    assert_eq!(mech("routing")["realised"], true);
    assert_eq!(mech("routing_shadow")["requests"], 1);
    assert_eq!(mech("routing_shadow")["realised"], false);
    let metrics = http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mechanism=\"routing\""), "{metrics}");
    assert!(
        metrics.contains("tollgate_routed_requests_total"),
        "{metrics}"
    );

    let s = gw.stop().await;
    let db = s.path().display().to_string();
    let report = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([
                "report", "--db", &db, "--view", "savings", "--since", "1h", "--by", "agent",
                "--format", format,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let sv = s
        .savings_report(Some(tollgate_domain::report::GroupBy::Agent), 0, i64::MAX)
        .unwrap();
    let saved = sv
        .groups
        .iter()
        .find(|g| g.0.as_deref() == Some("agent-a"))
        .unwrap()
        .1
        .iter()
        .find(|m| m.mechanism == Mechanism::Routing)
        .unwrap()
        .saved();
    assert!(saved > Money::ZERO);
    let json: Value = serde_json::from_str(&report("json")).unwrap();
    let group = json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "agent-a")
        .unwrap();
    let line = group["mechanisms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mechanism"] == "routing")
        .unwrap();
    assert_eq!(line["saved_nanos"], saved.nanos());
    let table = report("table");
    assert!(
        table
            .lines()
            .any(|l| l.contains("agent-a") && l.contains("routing")),
        "{table}"
    );
    assert!(table.contains("routing_shadow"), "{table}");
}

#[tokio::test]
async fn recorded_samples_keep_no_text_and_train_a_router() {
    let (_sim, gw) = setup("[routing]\nrecord_samples = true\n").await;
    // Light calls in tasks that then succeed or fail, a light call that is escalated,
    // heavy calls (unlabelled: what light would have done is unknown).
    let mut tasks = Vec::new();
    for i in 0..6 {
        let task = format!("s-{i}");
        let prompt = if i % 2 == 0 { EASY } else { HARD };
        let a = post(
            &gw,
            "/v1/chat/completions",
            json!({"model": "plain-auto", "messages": [{"role": "user", "content": prompt}]}),
            &[("x-tollgate-task", &task)],
        )
        .await;
        assert_eq!(a.status, 200);
        tasks.push(task);
    }
    let esc = chat(
        &gw,
        "auto",
        &format!("{EASY} [[sim:empty=gpt-4o-mini]]"),
        &[],
    )
    .await;
    assert_eq!(esc.header("x-tollgate-route-escalated"), Some("empty"));
    for (i, t) in tasks.iter().enumerate() {
        let status = if i % 4 == 0 { "success" } else { "failure" };
        let r = http()
            .post(gw.url(&format!("/v1/tasks/{t}/outcome")))
            .bearer_auth(&gw.key)
            .json(&json!({"status": status}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let s = gw.stop().await;
    let samples = s.route_samples().unwrap();
    // Six plain-auto calls and the first (light) call of the escalation; its retry on
    // the heavy tier carries no sample (the same prompt).
    assert_eq!(samples.len(), 7);
    for x in &samples {
        assert!(!x.features.contains("scenarios") && !x.features.contains("integer"));
        assert_eq!(x.model, "embedded");
    }
    let db = s.path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mine.bin");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "router",
            "train",
            "--from-ledger",
            &db,
            "--light",
            "light",
            "--heavy",
            "heavy",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Labelled: the 3 light calls in tasks with an outcome, and the escalated call;
    // unlabelled: the 3 heavy calls.
    assert!(
        stdout.contains("7 routing sample(s); 4 labelled"),
        "{stdout}"
    );
    assert!(stdout.contains("3 unlabelled"), "{stdout}");
    let bytes = std::fs::read(&out).unwrap();
    let r = tollgate_domain::routing::Router::from_bytes(&bytes).unwrap();
    assert!((0.0..=1.0).contains(&r.score(EASY)));
}

/// Admission runs after the decision, so budgets reserve the chosen tier's worst case:
/// with $0.01 left, 1,000 output tokens fit on the light tier ($5/M) but not on the heavy
/// one ($15/M).
#[tokio::test]
async fn budgets_reserve_against_the_chosen_tiers_prices() {
    let (_sim, gw) = setup(
        "[[budgets.limits]]\nscope = \"team:team-a\"\nperiod = \"lifetime\"\nlimit_usd = \"0.01\"\n",
    )
    .await;
    let call = |prompt: &'static str| {
        let body = json!({"model": "plain-auto", "max_tokens": 1000,
            "messages": [{"role": "user", "content": prompt}]});
        post(&gw, "/v1/chat/completions", body, &[])
    };
    let light = call(EASY).await;
    assert_eq!(light.status, 200, "{}", light.body);
    assert_eq!(tier(&light), "0 light");
    let heavy = call(HARD).await;
    assert_eq!(heavy.status, 402, "{}", heavy.body);
    assert_eq!(heavy.body["error"]["code"], "budget_exceeded");
    let id = heavy.request_id();
    let s = gw.stop().await;
    let rows = rows(&s);
    let r = row(&rows, &id);
    // The refused request was decided (heavy) and recorded with its decision, at no cost.
    assert_eq!(r.route.deployment, "heavy");
    assert_eq!(r.routing.as_ref().unwrap().tier, 1);
    assert_eq!(r.cost, Money::ZERO);
    // A refused call consumed nothing: no routing saving or loss is counted for it.
    let sv = s.savings_report(None, 0, i64::MAX).unwrap();
    let routing = sv
        .total
        .iter()
        .find(|m| m.mechanism == Mechanism::Routing)
        .unwrap();
    assert_eq!(routing.requests, 1);
}

/// An answer cut off at the client's own `max_tokens` is what it asked for: the next tier
/// would stop at the same place, so it is not escalated. A light model that stops short
/// of the cap (its own limit) is. And when the retry is refused, the client keeps the
/// first answer it paid for, told why.
#[tokio::test]
async fn escalation_respects_the_clients_cap_and_keeps_a_paid_answer_if_the_retry_fails() {
    let (_sim, gw) = setup(
        "[[budgets.limits]]\nscope = \"team:team-a\"\nperiod = \"lifetime\"\nlimit_usd = \"100\"\n",
    )
    .await;
    let capped = json!({"model": "auto", "max_tokens": 3,
        "messages": [{"role": "user", "content": EASY}]});
    let a = post(&gw, "/v1/chat/completions", capped, &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["choices"][0]["finish_reason"], "length");
    assert_eq!(a.body["usage"]["completion_tokens"], 3);
    assert_eq!(a.header("x-tollgate-route-escalated"), None);
    assert_eq!(tier(&a), "0 light");

    // Anthropic clients count tokens before sending: a routed name answers too.
    let n = post(
        &gw,
        "/v1/messages/count_tokens",
        json!({"model": "auto", "messages": [{"role": "user", "content": EASY}]}),
        &[],
    )
    .await;
    assert_eq!(n.status, 200, "{}", n.body);
    assert!(n.body["input_tokens"].as_u64().unwrap() > 10, "{}", n.body);

    let short = json!({"model": "auto", "max_tokens": 4000,
        "messages": [{"role": "user", "content": format!("{EASY} [[sim:length=gpt-4o-mini]]")}]});
    let b = post(&gw, "/v1/chat/completions", short, &[]).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.header("x-tollgate-route-escalated"), Some("length"));
    assert_eq!(tier(&b), "1 heavy");
    let s = gw.stop().await;
    assert_eq!(
        rows(&s).len(),
        3,
        "one row for the capped call, two for the escalation"
    );

    // $0.01 left: the light call's worst case (1,000 tokens at $5/M) fits, the heavy
    // retry's ($15/M) does not.
    let (_sim, gw) = setup(
        "[[budgets.limits]]\nscope = \"team:team-a\"\nperiod = \"lifetime\"\nlimit_usd = \"0.01\"\n",
    )
    .await;
    let body = json!({"model": "auto", "max_tokens": 1000,
        "messages": [{"role": "user", "content": format!("{EASY} [[sim:empty=gpt-4o-mini]]")}]});
    let c = post(&gw, "/v1/chat/completions", body, &[]).await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(
        c.header("x-tollgate-route-escalated"),
        Some("empty; retry failed (402)")
    );
    assert_eq!(tier(&c), "0 light");
    assert_eq!(c.body["choices"][0]["message"]["content"], "");
    let first = c.request_id();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let budgets: Value = http()
        .get(gw.url("/admin/budgets"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live = budgets["budgets"][0]["current"][0]["live"].clone();
    assert_eq!(live["reserved_usd"], "0.000000000", "{budgets}");
    let s = gw.stop().await;
    let rows = rows(&s);
    assert_eq!(rows.len(), 2, "the paid light call and the refused retry");
    let light = row(&rows, &first);
    assert_eq!(light.status, 200);
    assert!(light.cost > Money::ZERO);
    assert_eq!(
        light.routing.as_ref().unwrap().escalated.as_deref(),
        Some("empty")
    );
    let retry = rows.iter().find(|r| r.request_id != first).unwrap();
    assert_eq!(retry.status, 402);
    assert_eq!(retry.route.deployment, "heavy");
    assert_eq!(retry.cost, Money::ZERO);
}

//! `tollgate demo`: the whole product in one command, on nothing but this binary.
//!
//! A simulated provider starts in-process (it speaks OpenAI, Anthropic and Bedrock);
//! the gateway starts in front of it on the embedded SQLite ledger; five agents with
//! their own keys run tasks through the real HTTP path (streaming and not, cached
//! prompts, reasoning tokens, embeddings, an upstream rate limit and a stream cut
//! short, an OpenAI-format agent served by Nova 2 Lite on Bedrock, an Anthropic-format
//! client, a helpdesk agent asking for the routed model `auto`); then the spend, ROI and
//! savings reports are printed and the gateway keeps serving.

use crate::cli::DemoArgs;
use crate::report::render_table;
use crate::serve::shutdown_signal;
use anyhow::{Context, Result};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate_domain::report::GroupBy;
use tollgate_server::clock::now_ms;
use tollgate_server::config::RawConfig;
use tollgate_store::{NewKey, SqliteStore};
use tollgate_testkit::sim::{self, SimConfig};

const MASTER_KEY: &str = "tg-demo-master";

/// A long, stable system prompt: big enough (> 1,024 tokens) for provider prompt caching
/// to kick in on later turns.
fn policy_prompt() -> String {
    let clause = "Refunds are allowed within thirty days of purchase when the item is unused; \
        escalate any refund above five hundred dollars to a human supervisor; never share \
        another customer's data; answer in the customer's language; cite the policy section. ";
    let mut s = String::from("You are the support assistant for Acme. Policy handbook follows.\n");
    for i in 1..=28 {
        s.push_str(&format!("Section {i}. {clause}"));
    }
    s
}

struct Agent {
    name: &'static str,
    team: &'static str,
    user: &'static str,
    key: String,
}

struct Workload {
    http: reqwest::Client,
    base: String,
    sent: AtomicU64,
}

impl Workload {
    async fn chat(&self, agent: &Agent, task: &str, body: Value) -> Result<Value> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let stream = body["stream"].as_bool().unwrap_or(false);
        let resp = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&agent.key)
            .header("x-tollgate-task", task)
            .header("x-tollgate-tags", "env:demo")
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        if stream && status.is_success() {
            // Read the stream to the end, collecting the text like an SDK would.
            let text = resp.text().await.unwrap_or_default();
            let mut out = String::new();
            for line in text.lines() {
                if let Some(p) = line.strip_prefix("data: ")
                    && let Ok(v) = serde_json::from_str::<Value>(p)
                    && let Some(c) = v["choices"][0]["delta"]["content"].as_str()
                {
                    out.push_str(c);
                }
            }
            return Ok(json!({"choices": [{"message": {"role": "assistant", "content": out}}]}));
        }
        Ok(resp.json().await.unwrap_or(Value::Null))
    }

    /// An Anthropic Messages call (`POST /v1/messages`), read whole or as a stream.
    async fn messages(&self, agent: &Agent, task: &str, body: Value) -> Result<String> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let stream = body["stream"].as_bool().unwrap_or(false);
        let resp = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", &agent.key)
            .header("anthropic-version", "2023-06-01")
            .header("x-tollgate-task", task)
            .header("x-tollgate-tags", "env:demo")
            .json(&body)
            .send()
            .await?;
        if stream {
            let text = resp.text().await.unwrap_or_default();
            let mut out = String::new();
            for line in text.lines() {
                if let Some(p) = line.strip_prefix("data: ")
                    && let Ok(v) = serde_json::from_str::<Value>(p)
                    && let Some(t) = v["delta"]["text"].as_str()
                {
                    out.push_str(t);
                }
            }
            return Ok(out);
        }
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        Ok(v["content"][0]["text"].as_str().unwrap_or("").to_string())
    }

    async fn embed(&self, agent: &Agent, task: &str, inputs: &[&str]) -> Result<()> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.http
            .post(format!("{}/v1/embeddings", self.base))
            .bearer_auth(&agent.key)
            .header("x-tollgate-task", task)
            .json(&json!({"model": "text-embedding-3-small", "input": inputs}))
            .send()
            .await?
            .bytes()
            .await?;
        Ok(())
    }
}

fn reply_text(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Support: multi-turn tickets on the light model; the long policy prompt is cached
/// from the second turn on. One ticket hits an upstream rate limit.
async fn support(w: &Workload, a: &Agent) -> Result<()> {
    let system = policy_prompt();
    for t in 0..4 {
        let task = format!("ticket-{}", 1001 + t);
        let mut messages = vec![json!({"role": "system", "content": system})];
        let questions = [
            "I bought a kettle 12 days ago and it leaks. Can I get a refund?",
            "It was 640 dollars, does that change anything?",
            "Please confirm what I need to send you.",
        ];
        for (i, q) in questions.iter().enumerate() {
            let q = if t == 3 && i == 1 {
                format!("{q} [[sim:error=429]]")
            } else {
                q.to_string()
            };
            messages.push(json!({"role": "user", "content": q}));
            let r = w
                .chat(
                    a,
                    &task,
                    json!({"model": "gpt-4o-mini", "messages": messages, "user": a.user}),
                )
                .await?;
            messages.push(json!({"role": "assistant", "content": reply_text(&r)}));
        }
    }
    Ok(())
}

/// Research: streamed long-form answers on the heavy model, plus embeddings.
async fn research(w: &Workload, a: &Agent) -> Result<()> {
    for (task, topic) in [
        ("report-q3-churn", "customer churn in Q3"),
        ("report-pricing", "competitor pricing"),
    ] {
        w.embed(
            a,
            task,
            &[
                "quarterly churn by segment",
                "support ticket themes",
                "pricing page changes",
            ],
        )
        .await?;
        let mut messages = vec![
            json!({"role": "system", "content": "You are a research analyst. Be precise and cite data."}),
        ];
        for step in [
            "Outline a report on",
            "Draft the findings section on",
            "Write the executive summary on",
        ] {
            messages.push(json!({"role": "user", "content": format!("{step} {topic}.")}));
            let r = w
                .chat(
                    a,
                    task,
                    json!({"model": "gpt-4o", "stream": true, "messages": messages}),
                )
                .await?;
            messages.push(json!({"role": "assistant", "content": reply_text(&r)}));
        }
    }
    // A stream the upstream cuts half way: metered as partial, tokens counted locally.
    w.chat(
        a,
        "report-pricing",
        json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "Summarise the appendix. [[sim:cut]]"}]}),
    )
    .await?;
    Ok(())
}

/// Code review: a reasoning model, billed for its hidden reasoning tokens.
async fn review(w: &Workload, a: &Agent) -> Result<()> {
    for pr in [4821, 4822, 4823] {
        let task = format!("pr-{pr}");
        let diff = format!(
            "diff --git a/src/billing.rs b/src/billing.rs\n@@ -10,7 +10,9 @@\n-    let total = items.iter().map(|i| i.price).sum::<f64>();\n+    let total: i64 = items.iter().map(|i| i.price_nanos).sum();\n+    // PR {pr}: money as integers\n"
        );
        let r = w
            .chat(a, &task, json!({"model": "o3-mini", "messages": [
                {"role": "system", "content": "You review Rust pull requests for correctness and money handling."},
                {"role": "user", "content": format!("Review this diff:\n{diff}")}]}))
            .await?;
        w.chat(a, &task, json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": format!("Turn this review into a short PR comment:\n{}", reply_text(&r))}]}))
            .await?;
    }
    Ok(())
}

/// Operations: a deploy watcher that gets stuck polling a job that never finishes. The
/// runaway-agent guard halts its task and alerts (the demo's webhook receiver prints it).
async fn runaway(w: &Workload, a: &Agent) -> Result<String> {
    let task = "deploy-watch-7";
    let mut messages = vec![
        json!({"role": "system", "content": "You are an ops agent. Use tools until the deployment is healthy."}),
        json!({"role": "user", "content": "Watch deployment deploy-7 and report when it is live."}),
    ];
    for i in 0..30 {
        w.sent.fetch_add(1, Ordering::Relaxed);
        let resp = w
            .http
            .post(format!("{}/v1/chat/completions", w.base))
            .bearer_auth(&a.key)
            .header("x-tollgate-task", task)
            .json(&json!({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 64}))
            .send()
            .await?;
        if resp.status().as_u16() == 409 {
            let e: Value = resp.json().await.unwrap_or(Value::Null);
            return Ok(format!(
                "{task}: halted at call {} with 409 {}: {}",
                i + 1,
                e["error"]["code"].as_str().unwrap_or(""),
                e["error"]["message"].as_str().unwrap_or("")
            ));
        }
        resp.bytes().await?;
        let id = format!("call_{i:04}");
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "job_status", "arguments": "{\"job\":\"deploy-7\"}"}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": id,
            "content": format!("status: pending (checked at 2026-01-01T10:{:02}:00Z)", i % 60)}));
    }
    Ok(format!("{task}: never halted"))
}

/// Budgets, the task guard and alerts for the demo: a research budget small enough to
/// cross its alert thresholds (and to have `max_tokens` clamped near its end), an org
/// budget, a rate limit, and a webhook (the demo's own receiver).
fn limits_config(hook_url: &str) -> String {
    format!(
        r#"
[budgets]
default_max_tokens = 1024
clamp_max_tokens = true

[[budgets.limits]]
scope = "team:research"
period = "day"
limit_usd = "0.012"
alert_at = [25, 50, 80, 100]

[[budgets.limits]]
scope = "org"
period = "month"
limit_usd = "100"

[[rate_limits]]
scope = "agent:*"
requests_per_minute = 600

[guard]
loop_max_repeats = 4

[alerts]
webhook_url = "{hook_url}"
"#
    )
}

/// Triage: an OpenAI-format agent (the OpenAI SDK, unchanged) whose model is Nova 2 Lite
/// on Bedrock: tollgate translates each call to Converse, signs it with SigV4, and
/// translates the answers (and streams) back.
async fn triage(w: &Workload, a: &Agent) -> Result<()> {
    let tools = json!([{"type": "function", "function": {"name": "lookup_order",
        "description": "Find an order by id", "parameters": {"type": "object",
        "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]);
    for (i, ticket) in [
        "Order 7731 arrived damaged, customer wants a replacement.",
        "Where is my parcel? It has been two weeks.",
        "Please cancel my subscription before the renewal.",
    ]
    .iter()
    .enumerate()
    {
        let task = format!("triage-{}", 501 + i);
        let mut messages = vec![
            json!({"role": "system", "content": "Classify the ticket (refund, shipping, account) and look up orders when needed."}),
            json!({"role": "user", "content": ticket}),
        ];
        let r = w
            .chat(
                a,
                &task,
                json!({"model": "nova-2-lite", "messages": messages, "tools": tools}),
            )
            .await?;
        if let Some(call) = r["choices"][0]["message"]["tool_calls"][0].as_object() {
            messages.push(r["choices"][0]["message"].clone());
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"status\": \"delivered\"}"}));
            w.chat(
                a,
                &task,
                json!({"model": "nova-2-lite", "messages": messages, "stream": true}),
            )
            .await?;
        }
    }
    Ok(())
}

/// Writer: an Anthropic-format client (the Anthropic SDK's wire format) on Claude, with
/// a cached style guide (`cache_control`): written once, read on every later call.
async fn copywriter(w: &Workload, a: &Agent) -> Result<()> {
    let guide = policy_prompt().replace("support assistant", "copywriter");
    for (i, brief) in [
        "Write a product blurb for a leak-proof kettle.",
        "Write a subject line for the spring sale email.",
        "Write a two-sentence apology for a delayed shipment.",
    ]
    .iter()
    .enumerate()
    {
        w.messages(
            a,
            "copy-spring-campaign",
            json!({"model": "claude-haiku-4-5", "max_tokens": 300, "stream": i == 2,
                "system": [{"type": "text", "text": guide, "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": brief}]}),
        )
        .await?;
    }
    Ok(())
}

/// FAQ bot: a large shared handbook (no cache markers of its own) and repeated or
/// reworded questions at temperature 0. The gateway places the prompt-cache breakpoint
/// once the handbook recurs (`prompt_cache_injected`), answers the repeat from the exact
/// response cache and the rewording from the semantic one (`response_cache_exact`,
/// `response_cache_semantic`), each at $0 with the avoided cost as the saving.
async fn faq(w: &Workload, a: &Agent) -> Result<()> {
    let handbook = (1..=3)
        .map(|part| policy_prompt().replace("Section ", &format!("Part {part}, section ")))
        .collect::<Vec<_>>()
        .join("\n");
    for q in [
        "How do I reset my password?",
        "What is the refund policy for annual plans?",
        "How do I reset my password?",
        "What is the refund policy for annual subscriptions?",
        "How can I reset my password?",
        "Can I change the email address on my account?",
    ] {
        w.messages(
            a,
            "faq-desk",
            json!({"model": "claude-haiku-4-5", "max_tokens": 200, "temperature": 0,
                "system": handbook, "messages": [{"role": "user", "content": q}]}),
        )
        .await?;
    }
    Ok(())
}

/// Helpdesk: asks for the routed model `auto` (gpt-4o-mini → gpt-4o, routed to keep 95 %
/// of the heavy model's quality on the router's calibration set). Questions the router
/// judges routine go to the light tier, the others to the heavy tier; the ledger records what the heavy tier
/// would have cost, and the savings report shows the difference. Its calls carry no task
/// id (one-off questions).
async fn helpdesk(w: &Workload, a: &Agent) -> Result<()> {
    // Every 134th question of the router's dev set (`data/router/dev.jsonl`, MMLU and
    // GSM8K): the kind of prompt the built-in router was trained and calibrated on.
    let prompts = [
        "Find all zeros in the indicated finite field of the given polynomial with coefficients in that field. x^3 + 2x + 2 in Z_7\nA. 1\nB. 2\nC. 2,3\nD. 6\nAnswer:",
        "Why would a ping sweep be used?\nA. To identify live systems\nB. To locate live systems\nC. To identify open ports\nD. To locate firewalls\nAnswer:",
        "Which is correct about the calcium atom?\nA. It contains 20 protons and neutrons\nB. It contains 20 protons and 20 electrons\nC. It contains 20 protons, neutrons, and electrons\nD. All atoms of calcium have a mass of 40.078 u\nAnswer:",
        "The market demand curve for labor will shift to the right when\nA. the number of firms increases\nB. the price of output decreases\nC. the labor supply curve shifts to the right\nD. the labor supply curve shifts to the left\nAnswer:",
        "Which of the following appears to lower bad cholesterol?\nA. Vitamin D\nB. Niacin\nC. Thiamine\nD. Riboflavin\nAnswer:",
        "Which of the following is an example of a concurrent power?\nA. The printing and coining of money\nB. The power to declare war\nC. The process of naturalization\nD. The levying of taxes\nAnswer:",
        "For which of these two scenarios does the main character (who uses I/me/my) do something clearly morally wrong, according to ordinary moral standards in the US as of 2020? Scenario 1 | The excitement of the car race made me cheer. Scenario 2 | I drove through the intersection before the stoplight turned green.\nA. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:",
        "A company whose stock is trading at $10 per share has 1,000 shares of $1 par common stock outstanding when the board of directors declares a 30% common stock dividend. Which of the following adjustments should be made when recording the stock dividend?\nA. Treasury stock is debited for $300.\nB. Additional paid-in capital is credited for $2,700.\nC. Retained earnings is debited for $300.\nD. Common stock is debited for $3,000.\nAnswer:",
        "Defendant was on trial for robbery. Defendant's direct examination continued until late in the day when it finally concluded. At this time, the trial court judge adjourned the proceedings for the evening. The judge then instructed Defendant not to speak with anyone during the night and scheduled cross- examination to begin in the morning. The judge's instruction to Defendant was\nA. proper, because a judge has broad discretion to instruct witnesses in such a manner.\nB. proper, because it would have the same effect as permitting cross-examination to continue after direct was concluded.\nC. improper, because it violates the defendant's Sixth Amendment right to counsel.\nD. improper, because it violates the attorney-client privilege.\nAnswer:",
        "In their study of depression, Brown & Harris (1978) found that:\nA. women's susceptibility to stress depended on their levels of social support\nB. self-reported depression is highest amongst men and the relatively affluent\nC. men and women have fairly similar levels of diagnosed depression\nD. men are more vulnerable to depression because of conventional gender roles\nAnswer:",
        "Matthew has a collection of 12 unique toy soldiers. He wants to sell them for a fair price. He found a buyer who is willing to pay for half his collection $5 per toy, and for the other half $7 per toy. If Matthew would agree to that offer, how much money would he earn?",
    ];
    for p in prompts {
        w.sent.fetch_add(1, Ordering::Relaxed);
        let resp = w
            .http
            .post(format!("{}/v1/chat/completions", w.base))
            .bearer_auth(&a.key)
            .header("x-tollgate-tags", "env:demo")
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": p}]}))
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("routed call: {}", resp.text().await?);
        }
    }
    Ok(())
}

/// What the agents' owners report when each task ends: value in USD or minutes of work
/// saved (priced at the `[outcomes]` hourly rates), or a failure.
async fn record_outcomes(w: &Workload, agents: &[Agent]) -> Result<()> {
    let outcomes: [(usize, &str, Value); 13] = [
        (
            0,
            "ticket-1001",
            json!({"status": "success", "minutes_saved": 24}),
        ),
        (
            0,
            "ticket-1002",
            json!({"status": "success", "minutes_saved": 12}),
        ),
        (
            0,
            "ticket-1003",
            json!({"status": "success", "minutes_saved": 36, "labels": {"csat": "5"}}),
        ),
        (
            0,
            "ticket-1004",
            json!({"status": "abandoned", "labels": {"reason": "upstream rate limit"}}),
        ),
        (
            1,
            "report-q3-churn",
            json!({"status": "success", "value_usd": "120.00"}),
        ),
        (
            1,
            "report-pricing",
            json!({"status": "failure", "labels": {"reason": "stream cut"}}),
        ),
        (
            2,
            "pr-4821",
            json!({"status": "success", "minutes_saved": 30}),
        ),
        (
            2,
            "pr-4822",
            json!({"status": "success", "minutes_saved": 10}),
        ),
        (2, "pr-4823", json!({"status": "failure"})),
        (
            3,
            "triage-501",
            json!({"status": "success", "minutes_saved": 6}),
        ),
        (
            3,
            "triage-502",
            json!({"status": "success", "minutes_saved": 3}),
        ),
        (3, "triage-503", json!({"status": "failure"})),
        (
            4,
            "copy-spring-campaign",
            json!({"status": "success", "value_usd": "25.00"}),
        ),
    ];
    for (a, task, body) in outcomes {
        let resp = w
            .http
            .post(format!("{}/v1/tasks/{task}/outcome", w.base))
            .bearer_auth(&agents[a].key)
            .json(&body)
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("recording the outcome of {task}: {}", resp.text().await?);
        }
    }
    Ok(())
}

fn demo_config(sim_base: &str, listen: &str, db: &std::path::Path) -> String {
    format!(
        r#"# Written by `tollgate demo`.
[server]
listen = "{listen}"

[ledger]
path = "{db}"
durability = "batched"

[[upstreams]]
name = "sim"
kind = "openai"
base_url = "{sim_base}"

[[deployments]]
name = "gpt-4o"
upstream = "sim"
model = "gpt-4o"

[[deployments]]
name = "gpt-4o-mini"
upstream = "sim"
model = "gpt-4o-mini"

[[deployments]]
name = "o3-mini"
upstream = "sim"
model = "o3-mini"

[[deployments]]
name = "text-embedding-3-small"
upstream = "sim"
model = "text-embedding-3-small"

# The same simulator, spoken to as Anthropic and as Bedrock (SigV4-signed).
[[upstreams]]
name = "sim-anthropic"
kind = "anthropic"
base_url = "{sim_base}"
api_key_env = "SIM_ANTHROPIC_KEY"

[[upstreams]]
name = "sim-bedrock"
kind = "bedrock"
base_url = "{sim_origin}"
region = "us-east-1"

[[deployments]]
name = "claude-haiku-4-5"
upstream = "sim-anthropic"

[[deployments]]
name = "nova-2-lite"
upstream = "sim-bedrock"
model = "us.amazon.nova-2-lite-v1:0"

# Tiered routing: clients ask for `auto`; the built-in router sends each request to the
# light or the heavy deployment, keeping 95 % of the heavy model's quality (calibrated).
[[routes]]
name = "auto"
tiers = ["gpt-4o-mini", "gpt-4o"]
quality_target = 0.95

# What an hour of the work an agent saves is worth (for outcomes given in minutes saved).
[outcomes]
hourly_rate_usd = "60"
agents = {{ support-bot = "35" }}
"#,
        db = db.display().to_string().replace('\\', "/"),
        sim_origin = sim_base.trim_end_matches("/v1"),
    )
}

pub async fn demo(args: DemoArgs) -> Result<ExitCode> {
    let dir: PathBuf = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("tollgate-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("ledger.db");

    let sim = sim::spawn(SimConfig {
        first_token_latency: Duration::from_millis(args.latency_ms),
        inter_token_latency: Duration::from_millis(args.token_ms),
    })
    .await?;
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}: {e}; using a free port instead", args.listen);
            tokio::net::TcpListener::bind("127.0.0.1:0").await?
        }
    };
    let addr = listener.local_addr()?;
    let hook = tollgate_testkit::webhook::WebhookReceiver::start(0).await?;
    let config_text =
        demo_config(&sim.base_url(), &addr.to_string(), &db) + &limits_config(&hook.url());
    let config_file = dir.join("tollgate.toml");
    std::fs::write(&config_file, &config_text)?;
    // The simulator checks no credentials; the Bedrock upstream still signs with these.
    let env: HashMap<String, String> = [
        ("TOLLGATE_MASTER_KEY", MASTER_KEY),
        ("SIM_ANTHROPIC_KEY", "sk-ant-simulated"),
        ("AWS_ACCESS_KEY_ID", "AKIDSIMULATED"),
        ("AWS_SECRET_ACCESS_KEY", "simulated-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = RawConfig::from_toml(&config_text, &env)?.validate(&env)?;

    let store = SqliteStore::open(&db)?;
    let mut agents = Vec::new();
    for (name, team, user) in [
        ("support-bot", "customer-support", "alice"),
        ("research-agent", "research", "bob"),
        ("code-reviewer", "platform", "carol"),
        ("triage-agent", "operations", "dave"),
        ("writer-assistant", "marketing", "erin"),
        ("ops-agent", "platform", "frank"),
        ("helpdesk-router", "customer-support", "grace"),
        ("faq-bot", "customer-support", "heidi"),
    ] {
        let (_, key) = store.create_key(
            &NewKey {
                name: Some(format!("{name} key")),
                team: Some(team.into()),
                agent: Some(name.into()),
                user: Some(user.into()),
                models: Vec::new(),
            },
            now_ms(),
        )?;
        agents.push(Agent {
            name,
            team,
            user,
            key,
        });
    }

    let (gw, writer) = tollgate_server::build(cfg).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let server = {
        let stop = stop.clone();
        // Not on the gateway's own tracker: `serve` waits for that tracker to drain, so a
        // server task tracked there would wait for itself and never stop.
        tokio_util::task::TaskTracker::new().spawn(tollgate_server::serve(
            listener,
            gw.clone(),
            writer,
            async move { stop.cancelled().await },
        ))
    };

    println!("tollgate demo");
    println!(
        "  simulated provider  {} (first token {} ms, {} ms/token)",
        sim.base_url(),
        args.latency_ms,
        args.token_ms
    );
    println!("  gateway             http://{addr}");
    println!("  ledger              {} (SQLite, batched)", db.display());
    println!("  price table         {}", gw.config.load().prices.hash());
    println!();

    tollgate_providers::client::install_crypto_provider();
    let w = Workload {
        http: reqwest::Client::builder().no_proxy().build()?,
        base: format!("http://{addr}"),
        sent: AtomicU64::new(0),
    };
    let started = Instant::now();
    let names: Vec<&str> = agents.iter().map(|a| a.name).collect();
    println!(
        "running {} agents ({}) through the gateway...",
        agents.len(),
        names.join(", ")
    );
    let results = join_all([
        Box::pin(support(&w, &agents[0]))
            as std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>,
        Box::pin(research(&w, &agents[1])),
        Box::pin(review(&w, &agents[2])),
        Box::pin(triage(&w, &agents[3])),
        Box::pin(copywriter(&w, &agents[4])),
        Box::pin(helpdesk(&w, &agents[6])),
        Box::pin(faq(&w, &agents[7])),
    ])
    .await;
    for r in results {
        r?;
    }
    let halted = runaway(&w, &agents[5]).await?;
    record_outcomes(&w, &agents).await?;
    let sent = w.sent.load(Ordering::Relaxed);
    // Wait until every request's row is in the ledger (batched rows land within ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ledger_count()? < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{sent} requests in {:.2} s; {} ledger rows\n",
        started.elapsed().as_secs_f64(),
        store.ledger_count()?
    );
    let since = now_ms() - 3_600_000;
    for by in [GroupBy::Agent, GroupBy::Model, GroupBy::Task] {
        let rep = store.usage_report(Some(by), since, now_ms() + 1)?;
        println!("{}", render_table(&rep));
    }
    let roi = store.roi_report(GroupBy::Agent, since, now_ms() + 1)?;
    println!("{}", crate::views::roi_table(&roi));
    let savings = store.savings_report(Some(GroupBy::Agent), since, now_ms() + 1)?;
    println!("{}", crate::views::savings_table(&savings));
    println!("Runaway-agent guard:\n  {halted}");
    let alerts = hook.wait_for(1, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "Alerts received by the webhook ({}):",
        hook.received().len().max(alerts.len())
    );
    for a in hook.received() {
        println!("  - {}", a["text"].as_str().unwrap_or(""));
    }
    println!();
    let exe = std::env::args().next().unwrap_or_else(|| "tollgate".into());
    println!(
        "Budgets and halted tasks:  {exe} budgets list --db {db}   |   {exe} tasks show deploy-watch-7 --db {db}",
        db = db.display()
    );
    println!(
        "The same figures, any time:  {exe} report --db {} --by agent|model|task|team|key",
        db.display()
    );
    println!(
        "As JSON:  curl -s -H 'Authorization: Bearer {MASTER_KEY}' 'http://{addr}/admin/usage?group_by=agent&since=1h'"
    );

    if args.exit {
        stop.cancel();
        // The server stops its ledger writer once every handle on the state is gone.
        drop(gw);
        let _ = server.await;
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "The gateway is listening on http://{addr} (OpenAI-compatible: base_url http://{addr}/v1)."
    );
    println!("Try it with the support agent's key:");
    println!(
        "  curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {}' -H 'content-type: application/json' \\\n    -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'",
        agents[0].key
    );
    let _ = (agents[0].team, agents[0].user);
    println!("Dashboard: http://{addr}/dashboard (sign in with the master key {MASTER_KEY})");
    println!("Metrics:   http://{addr}/metrics");
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    stop.cancel();
    drop(gw);
    let _ = server.await;
    Ok(ExitCode::SUCCESS)
}

//! What tiered routing adds to a request on the hot path: [`routing::decide`] on parsed
//! request bodies (turns out of the client's JSON, the router's text, the score, the
//! stickiness lookup), against the baseline of resolving a concrete model name. A
//! benchmark, not a test: it prints numbers.
//!
//!     cargo bench -p tollgate-server --bench routing
//!     taskset -c 0 target/release/deps/routing-*   # pinned to one core

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use serde_json::{Value, json};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_server::Gateway;
use tollgate_server::config::RawConfig;
use tollgate_server::ingress::{Ingress, IngressRequest};
use tollgate_server::routing;

const N: usize = 50_000;
const WARM: usize = 5_000;

fn stats(name: &str, mut xs: Vec<Duration>) -> (f64, f64) {
    xs.sort_unstable();
    let p =
        |q: f64| xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)].as_nanos() as f64 / 1000.0;
    println!(
        "| {name:<58} | {:>7.2} | {:>7.2} | {:>7.2} | {:>7.2} |",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999)
    );
    (p(0.5), p(0.99))
}

fn gateway() -> (Arc<Gateway>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[ledger]
path = "{}"
[[upstreams]]
name = "up"
base_url = "http://127.0.0.1:9/v1"
[[deployments]]
name = "light"
upstream = "up"
model = "gpt-4o-mini"
[[deployments]]
name = "heavy"
upstream = "up"
model = "gpt-4o"
[[routes]]
name = "auto"
tiers = ["light", "heavy"]
quality_target = 0.95
[[routes]]
name = "auto-loose"
tiers = ["light", "heavy"]
quality_target = 0.95
sticky = false
"#,
        dir.path().join("b.db").display()
    );
    let env = HashMap::new();
    let cfg = RawConfig::from_toml(&text, &env)
        .unwrap()
        .validate(&env)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (gw, writer) = rt.block_on(tollgate_server::build(cfg)).unwrap();
    std::mem::forget(writer);
    (gw, dir)
}

const QUESTIONS: &[&str] = &[
    "What is the capital of Portugal?",
    "Translate 'thank you for your order' into Spanish.",
    "Prove that the sum of the first n odd numbers is n squared.",
    "Design a sharded rate limiter for a multi-region API gateway and justify the trade-offs.",
    "Summarise in one sentence: the delivery was late but the product works well.",
    "A train leaves at 3pm at 80 km/h; another at 4pm at 100 km/h. When does the second catch up?",
];

/// An OpenAI chat body: a system prompt and `turns` user/assistant exchanges of about
/// `turn_bytes` each, ending with a question.
fn chat_body(i: usize, turns: usize, turn_bytes: usize) -> Value {
    let q = QUESTIONS[i % QUESTIONS.len()];
    let filler = |k: usize| {
        let mut s = format!("Turn {k} of case {i}. ");
        while s.len() < turn_bytes {
            s.push_str(QUESTIONS[(i + k + s.len()) % QUESTIONS.len()]);
            s.push(' ');
        }
        s
    };
    let mut messages = vec![
        json!({"role": "system", "content": "You are a helpful assistant for Acme. Answer precisely and cite sources."}),
    ];
    for k in 0..turns {
        messages.push(json!({"role": "user", "content": filler(2 * k)}));
        messages.push(json!({"role": "assistant", "content": filler(2 * k + 1)}));
    }
    messages.push(json!({"role": "user", "content": q}));
    json!({"model": "auto", "max_tokens": 512, "messages": messages})
}

fn anthropic_body(i: usize) -> Value {
    json!({"model": "auto", "max_tokens": 512,
        "system": [{"type": "text", "text": "You are a helpful assistant for Acme."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTIONS[i % QUESTIONS.len()]}]}]})
}

fn parse(ingress: &Ingress, v: &Value) -> IngressRequest {
    IngressRequest::parse(ingress, &serde_json::to_vec(v).unwrap()).unwrap()
}

fn run(label: &str, reqs: &[IngressRequest], f: &mut dyn FnMut(&IngressRequest)) -> (f64, f64) {
    let mut xs = Vec::with_capacity(N);
    for i in 0..N + WARM {
        let r = &reqs[i % reqs.len()];
        let t = Instant::now();
        f(r);
        let dt = t.elapsed();
        if i >= WARM {
            xs.push(dt);
        }
    }
    stats(label, xs)
}

fn main() {
    let (gw, _dir) = gateway();
    let cfg = gw.config.load_full();
    let auto = cfg.routes["auto"].clone();
    let loose = cfg.routes["auto-loose"].clone();
    let chat = Ingress::ChatCompletions;
    let sets: Vec<(&str, Vec<IngressRequest>)> = vec![
        (
            "one-shot question (~100 B)",
            (0..64).map(|i| parse(&chat, &chat_body(i, 0, 0))).collect(),
        ),
        (
            "agent turn, 2 exchanges (~1 KB)",
            (0..64)
                .map(|i| parse(&chat, &chat_body(i, 2, 250)))
                .collect(),
        ),
        (
            "conversation, 8 exchanges (~8 KB)",
            (0..64)
                .map(|i| parse(&chat, &chat_body(i, 8, 500)))
                .collect(),
        ),
        (
            "long conversation, 16 exchanges (~64 KB)",
            (0..16)
                .map(|i| parse(&chat, &chat_body(i, 16, 2000)))
                .collect(),
        ),
        (
            "Anthropic Messages one-shot",
            (0..64)
                .map(|i| parse(&Ingress::Messages, &anthropic_body(i)))
                .collect(),
        ),
    ];
    println!(
        "routing decision on parsed request bodies, {N} timings after {WARM} warm-up (µs, one thread)\n"
    );
    println!(
        "| {:<58} | {:>7} | {:>7} | {:>7} | {:>7} |",
        "what", "p50", "p90", "p99", "p99.9"
    );
    println!(
        "|{}|---------|---------|---------|---------|",
        "-".repeat(60)
    );
    // Every conversation is known (on the heavy tier, with a 5,000-token prompt and a
    // 300-token answer), so the sticky lines weigh a switch on every call.
    for (_, reqs) in &sets {
        for r in reqs {
            let d = routing::decide(&gw.routing, &auto, r, Some("task-1"), None, false);
            if let Some(id) = d.conversation {
                gw.routing.remember(
                    id,
                    tollgate_domain::routing::sticky::Stuck {
                        tier: 1,
                        prompt_tokens: 5000,
                        output_tokens: 300,
                    },
                );
            }
        }
    }
    for (name, reqs) in &sets {
        run(
            &format!("baseline: resolve a concrete model ({name})"),
            reqs,
            &mut |r| {
                black_box(cfg.deployments.get("heavy").cloned());
                black_box(r.model());
            },
        );
        run(
            &format!("decide, sticky (known task): {name}"),
            reqs,
            &mut |r| {
                black_box(routing::decide(
                    &gw.routing,
                    &auto,
                    r,
                    Some("task-1"),
                    None,
                    false,
                ));
            },
        );
        run(&format!("decide, not sticky: {name}"), reqs, &mut |r| {
            black_box(routing::decide(&gw.routing, &loose, r, None, None, false));
        });
    }
    // The router alone on the same texts, for scale (what phase 1's `bench router` times).
    let texts: Vec<String> = sets[1]
        .1
        .iter()
        .map(|r| tollgate_domain::routing::prompt_text(routing::turns(r)))
        .collect();
    let mut xs = Vec::with_capacity(N);
    for i in 0..N + WARM {
        let t = Instant::now();
        black_box(auto.router.decide(&texts[i % texts.len()], &auto.policy));
        let dt = t.elapsed();
        if i >= WARM {
            xs.push(dt);
        }
    }
    stats(
        "for scale: Router::decide alone on the ~1 KB agent turns' text",
        xs,
    );
    println!(
        "\nconversations remembered for stickiness: {}",
        gw.routing.len()
    );
}

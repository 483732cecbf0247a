//! `prune`: time to prune one request at 10k, 50k and 200k prompt tokens, on one core,
//! with a naive baseline.
//!
//! ```sh
//! cargo build --release -p tollgate-bench
//! taskset -c 0 target/release/prune            # markdown table on stdout
//! ```
//!
//! Each case is an OpenAI-format coding-agent history (system prompt, task, assistant
//! turns with tool calls, tool outputs of code, logs and search results, a final
//! question), built deterministically to the size. What is timed is what the gateway's
//! shape stage does: the body read as texts (`tollgate_providers::prune::view`), the
//! domain's pruning to half its tokens with the default strategies, and the edits
//! written back (`apply`) into a copy of the body made before the clock starts. Baseline: counting the same prompt once with the real BPE (`o200k_base`),
//! which a pruner deciding with exact counts would at least have to do.

use anyhow::Result;
use clap::Parser;
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::time::Instant;
use tollgate_domain::prune::{Policy, prune, tokens::estimate};
use tollgate_providers::prune::{apply, view};
use tollgate_providers::tokenizer::Encoding;
use tollgate_providers::translate::Format;

#[derive(Parser, Debug)]
#[command(about = "Pruning latency benchmark")]
struct Cli {
    /// Timings per size (the 200k case takes a quarter of them).
    #[arg(long, default_value_t = 400)]
    samples: usize,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "account", "invoice", "ledger", "payment", "refund", "order", "customer", "session", "token",
    "cache", "queue", "worker", "batch", "retry", "timeout", "schema", "record", "handler",
    "request", "response", "client", "server", "config", "parser", "router",
];

fn line(r: &mut Rng) -> String {
    match r.below(4) {
        0 => format!(
            "def {}_{}({}, {}={}):",
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
            r.below(999)
        ),
        1 => format!(
            "2026-11-{:02}T10:{:02}:00Z INFO {}: {} {} took {}ms",
            1 + r.below(28),
            r.below(60),
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
            r.below(999)
        ),
        2 => format!(
            "src/{}/{}.py:{}:    {}_{} = {}()",
            r.pick(WORDS),
            r.pick(WORDS),
            r.below(999),
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS)
        ),
        _ => format!(
            "    {}_{} = {}({}, {}={})",
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
            r.pick(WORDS),
            r.below(999)
        ),
    }
}

/// A history of about `tokens` tokens (by the domain's estimate).
fn history(tokens: u64, seed: u64) -> Map<String, Value> {
    let mut r = Rng(seed | 1);
    let mut m = vec![
        json!({"role": "system", "content": "You are a coding agent. Use the tools; answer from what you saw."}),
        json!({"role": "user", "content": "The billing batch times out; find the cause and fix it."}),
    ];
    let mut total = 40;
    let mut i = 0;
    while total < tokens {
        let lines = if r.below(100) < 85 {
            4 + r.below(36)
        } else {
            80 + r.below(220)
        };
        let out: Vec<String> = (0..lines).map(|_| line(&mut r)).collect();
        let out = out.join("\n");
        total += estimate(&out) + 30;
        let id = format!("call_{i:04}");
        m.push(json!({"role": "assistant", "content": "Checking the next file.", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "read_file", "arguments": "{\"path\":\"src/a.py\"}"}}]}));
        m.push(json!({"role": "tool", "tool_call_id": id, "content": out}));
        i += 1;
    }
    m.push(json!({"role": "user", "content": "Which handler logged the slowest request?"}));
    json!({"model": "gpt-4o", "messages": m})
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn time(samples: usize, mut f: impl FnMut(usize) -> u64) -> (f64, f64, f64, u64) {
    // Warm-up.
    for i in 0..samples.div_ceil(10) {
        black_box(f(i));
    }
    let mut ns = Vec::with_capacity(samples);
    let mut last = 0;
    for i in 0..samples {
        let t = Instant::now();
        last = black_box(f(i));
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    (
        percentile(&ns, 0.5),
        percentile(&ns, 0.99),
        percentile(&ns, 1.0),
        last,
    )
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let policy = Policy::default();
    let enc = Encoding::O200kBase;
    println!(
        "| prompt tokens (o200k) | cases | method | p50 µs | p99 µs | max µs | tokens after (estimate) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for size in [10_000u64, 50_000, 200_000] {
        let cases: Vec<Map<String, Value>> = (0..8).map(|s| history(size, 0x9e37 + s)).collect();
        let real: u64 = cases
            .iter()
            .map(|c| enc.count_chat_prompt(c["messages"].as_array().map_or(&[][..], |v| v)))
            .sum::<u64>()
            / cases.len() as u64;
        let samples = if size >= 200_000 {
            cli.samples / 4
        } else {
            cli.samples
        }
        .max(10);
        // The bodies edited in place, cloned before the clock starts.
        let mut bodies: Vec<Map<String, Value>> = (0..samples + samples.div_ceil(10))
            .map(|i| cases[i % cases.len()].clone())
            .collect();
        let mut next = 0;
        let (p50, p99, max, after) = time(samples, |i| {
            let body = &cases[i % cases.len()];
            let out = &mut bodies[next];
            next += 1;
            let Some(v) = view(Format::OpenAi, body) else {
                return 0;
            };
            let p = prune(&v.conversation, &policy);
            let after = p.tokens_after;
            let paths = v.paths;
            apply(out, &paths, p.edits);
            black_box(&*out);
            after
        });
        println!(
            "| {real} | {} | tollgate prune (view + prune + apply) | {p50:.0} | {p99:.0} | {max:.0} | {after} |",
            cases.len()
        );
        let base_samples = (samples / 10).max(5);
        let (p50, p99, max, n) = time(base_samples, |i| {
            let body = &cases[i % cases.len()];
            enc.count_chat_prompt(body["messages"].as_array().map_or(&[][..], |v| v))
        });
        println!(
            "| {real} | {} | baseline: one o200k count of the prompt | {p50:.0} | {p99:.0} | {max:.0} | ({n} counted) |",
            cases.len()
        );
    }
    Ok(())
}

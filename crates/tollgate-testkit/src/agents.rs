//! Synthetic agent conversations for the runaway-agent guard: healthy agents doing
//! varied work (research, coding, data, operations, with the repeats real agents make:
//! polling a job, re-reading a file after editing it, re-running tests, paging), and
//! runaway ones (replaying a tool call, replaying it with fresh ids and timestamps,
//! cycling over a few calls, polling something that never changes).
//!
//! Deterministic from a seed. Each step is one model turn: an assistant tool call and
//! the tool's result; call `i` of a task sends the conversation up to step `i`.

use serde_json::{Value, json};

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const NOUNS: &[&str] = &[
    "invoice",
    "customer",
    "refund",
    "contract",
    "shipment",
    "ticket",
    "order",
    "account",
    "report",
    "forecast",
    "budget",
    "vendor",
    "payment",
    "policy",
    "renewal",
    "discount",
    "region",
    "pipeline",
    "deployment",
    "cluster",
    "latency",
    "error",
    "migration",
    "schema",
    "table",
    "index",
    "query",
    "module",
    "function",
    "test",
    "build",
    "release",
    "branch",
    "review",
    "incident",
    "alert",
    "metric",
    "dashboard",
    "quota",
    "license",
    "supplier",
    "warehouse",
    "inventory",
    "catalog",
    "price",
    "tax",
    "audit",
    "ledger",
    "subscription",
];
const VERBS: &[&str] = &[
    "shows",
    "lists",
    "reports",
    "contains",
    "mentions",
    "describes",
    "confirms",
    "denies",
    "updates",
    "references",
    "summarises",
    "compares",
    "flags",
    "links",
    "tracks",
    "exceeds",
];
const ADJS: &[&str] = &[
    "overdue",
    "pending",
    "approved",
    "rejected",
    "late",
    "duplicate",
    "missing",
    "urgent",
    "quarterly",
    "annual",
    "regional",
    "enterprise",
    "legacy",
    "new",
    "failed",
    "healthy",
    "slow",
    "critical",
    "minor",
    "draft",
    "final",
    "open",
    "closed",
    "partial",
];
const NAMES: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "gringotts",
    "oscorp",
    "vandelay",
    "pied piper",
    "massive dynamic",
];
const FILES: &[&str] = &[
    "src/billing.rs",
    "src/invoice.rs",
    "src/tax.rs",
    "src/api/routes.rs",
    "src/db/schema.rs",
    "tests/billing_test.rs",
    "Cargo.toml",
    "README.md",
    "src/payments/stripe.rs",
    "src/main.rs",
];

fn sentence(r: &mut Rng) -> String {
    format!(
        "The {} {} {} {} for {} {}.",
        r.pick(ADJS),
        r.pick(NOUNS),
        r.pick(VERBS),
        r.below(900) + 3,
        r.pick(NAMES),
        r.pick(NOUNS)
    )
}

fn paragraph(r: &mut Rng, n: u64) -> String {
    (0..n).map(|_| sentence(r)).collect::<Vec<_>>().join(" ")
}

/// One model turn: the call and its result.
#[derive(Debug, Clone)]
pub struct Step {
    pub tool: String,
    pub args: String,
    pub result: String,
}

fn step(tool: &str, args: Value, result: String) -> Step {
    Step {
        tool: tool.into(),
        args: args.to_string(),
        result,
    }
}

/// The messages of call `upto` (0-based): the task prompt, then steps `..upto`.
pub fn conversation(goal: &str, steps: &[Step], upto: usize) -> Vec<Value> {
    let mut m = vec![
        json!({"role": "system", "content": "You are an autonomous operations agent. Use the tools to finish the task."}),
        json!({"role": "user", "content": goal}),
    ];
    for (i, s) in steps.iter().take(upto).enumerate() {
        let id = format!("call_{:08x}", (i as u64 + 1).wrapping_mul(0x9e37_79b9));
        m.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": s.tool, "arguments": s.args}}]}));
        m.push(json!({"role": "tool", "tool_call_id": id, "content": s.result}));
    }
    m
}

/// A healthy task of `len` steps.
pub fn healthy(seed: u64, len: usize) -> (String, Vec<Step>) {
    let mut r = Rng::new(seed);
    let who = *r.pick(NAMES);
    let kind = r.below(4);
    let goal = match kind {
        0 => format!("Research {who}'s {} and write a summary.", r.pick(NOUNS)),
        1 => format!(
            "Fix the failing {} tests in the billing service.",
            r.pick(ADJS)
        ),
        2 => format!(
            "Find why {who}'s {} numbers changed last quarter.",
            r.pick(NOUNS)
        ),
        _ => format!(
            "Bring the {} {} deployment back to healthy.",
            who,
            r.pick(NOUNS)
        ),
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut failing = 3 + r.below(6);
    let mut page = 1;
    let mut job_polls = 0;
    while steps.len() < len {
        // Real agents repeat themselves a little: re-read a file, run the same query.
        if !steps.is_empty() && r.chance(4) {
            let again =
                steps[steps.len() - 1 - r.below(steps.len().min(6) as u64) as usize].clone();
            steps.push(again);
            continue;
        }
        let s = match (kind, r.below(5)) {
            (0, 0) | (2, 0) => {
                let q = format!("{} {} {}", who, r.pick(ADJS), r.pick(NOUNS));
                page = if r.chance(30) { page + 1 } else { 1 };
                step(
                    "web_search",
                    json!({"query": q, "page": page}),
                    format!(
                        "Results page {page} for {q}: 1. {} 2. {} 3. {}",
                        sentence(&mut r),
                        sentence(&mut r),
                        sentence(&mut r)
                    ),
                )
            }
            (0, 1) | (0, 2) => step(
                "open_url",
                json!({"url": format!("https://{}.example.com/{}/{}", who.replace(' ', ""), r.pick(NOUNS), r.below(5000))}),
                paragraph(&mut r, 4),
            ),
            (1, 0) | (1, 1) => {
                let f = *r.pick(FILES);
                step(
                    "read_file",
                    json!({"path": f}),
                    format!("// {f}\n{}", paragraph(&mut r, 5)),
                )
            }
            (1, 2) => {
                let f = *r.pick(FILES);
                step(
                    "write_file",
                    json!({"path": f, "content": paragraph(&mut r, 2)}),
                    format!("wrote {} bytes to {f}", 200 + r.below(4000)),
                )
            }
            (1, _) => {
                failing = failing.saturating_sub(r.below(2));
                let names: Vec<String> = (0..failing.min(4))
                    .map(|_| format!("test_{}_{}", r.pick(NOUNS), r.pick(ADJS)))
                    .collect();
                step(
                    "run_tests",
                    json!({"filter": r.pick(NOUNS)}),
                    format!(
                        "{failing} failed, {} passed. Failing: {}. {}",
                        40 + r.below(60),
                        names.join(", "),
                        sentence(&mut r)
                    ),
                )
            }
            (2, _) => step(
                "sql",
                json!({"query": format!("SELECT {}, SUM({}) FROM {} WHERE {} = '{}' GROUP BY 1", r.pick(NOUNS), r.pick(NOUNS), r.pick(NOUNS), r.pick(NOUNS), r.pick(ADJS))}),
                (0..3)
                    .map(|_| format!("{} | {}", r.pick(NOUNS), r.below(100_000)))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            (3, 0) => {
                // Polling a job: a few identical answers, then it moves on.
                job_polls += 1;
                let status = if job_polls % 4 == 0 {
                    "succeeded"
                } else {
                    "running"
                };
                step(
                    "job_status",
                    json!({"job": format!("deploy-{who}")}),
                    format!("status: {status}"),
                )
            }
            (_, 1) => step(
                "get_metrics",
                json!({"service": r.pick(NOUNS), "window": "15m"}),
                format!(
                    "p50 {} ms, p99 {} ms, errors {}. {}",
                    r.below(200),
                    200 + r.below(3000),
                    r.below(50),
                    sentence(&mut r)
                ),
            ),
            (_, 2) => step(
                "read_logs",
                json!({"service": r.pick(NOUNS), "level": "error"}),
                paragraph(&mut r, 3),
            ),
            _ => step(
                "send_message",
                json!({"to": r.pick(NAMES), "text": sentence(&mut r)}),
                format!("delivered to {}", r.pick(NAMES)),
            ),
        };
        steps.push(s);
    }
    (goal, steps)
}

/// How a runaway task loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runaway {
    /// The same call and result, again and again.
    Replay,
    /// The same call; the result differs only in ids and timestamps.
    ReplayJittered,
    /// Cycling over three calls with the same results.
    Cycle,
    /// Polling a status that never changes.
    StuckPoll,
}

impl Runaway {
    pub const ALL: [Runaway; 4] = [
        Runaway::Replay,
        Runaway::ReplayJittered,
        Runaway::Cycle,
        Runaway::StuckPoll,
    ];
}

/// A task that does `healthy_prefix` steps of real work, then loops for `len` steps.
pub fn runaway(seed: u64, kind: Runaway, healthy_prefix: usize, len: usize) -> (String, Vec<Step>) {
    let (goal, mut steps) = healthy(seed, healthy_prefix);
    let mut r = Rng::new(seed ^ 0xdead_beef);
    let q = format!("{} {} {}", r.pick(NAMES), r.pick(ADJS), r.pick(NOUNS));
    let cycle: Vec<Step> = (0..3)
        .map(|_| {
            step(
                "open_url",
                json!({"url": format!("https://x.example.com/{}", r.pick(NOUNS))}),
                paragraph(&mut r, 2),
            )
        })
        .collect();
    for i in 0..len {
        let s = match kind {
            Runaway::Replay => step(
                "web_search",
                json!({"query": q}),
                format!("No results found for {q}."),
            ),
            Runaway::ReplayJittered => step(
                "web_search",
                json!({"query": q}),
                format!(
                    "No results found for {q}. (request {:010x}, 2025-06-04T12:{:02}:{:02}Z)",
                    r.next_u64() & 0xff_ffff_ffff,
                    i / 60,
                    i % 60
                ),
            ),
            Runaway::Cycle => cycle[i % 3].clone(),
            Runaway::StuckPoll => step(
                "job_status",
                json!({"job": "deploy-42"}),
                "status: running".into(),
            ),
        };
        steps.push(s);
    }
    (goal, steps)
}

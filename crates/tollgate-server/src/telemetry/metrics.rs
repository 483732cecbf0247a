//! Prometheus metrics, fed by every settled ledger row, rendered in the text exposition
//! format at `GET /metrics`.
//!
//! Labels are of bounded cardinality: deployment, agent, team, status class, token kind,
//! mechanism. No task, request or key ids. Each label keeps at most [`MAX_LABEL_VALUES`]
//! distinct values; later ones are counted under `other`.
//!
//! Series are atomics behind a read-mostly map: an observation takes a read lock to find
//! its series (a write lock only the first time a label set is seen) and never holds a
//! lock across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tollgate_domain::ledger::{CacheKind, LedgerRow, RouteMode};
use tollgate_domain::outcome::OutcomeStatus;

/// Distinct values kept per label before new ones become `other`.
pub const MAX_LABEL_VALUES: usize = 50;

/// Latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Caps the distinct values of one label.
#[derive(Default)]
struct LabelCap {
    seen: RwLock<HashSet<String>>,
}

impl LabelCap {
    fn get(&self, v: &str) -> String {
        if let Ok(seen) = self.seen.read()
            && seen.contains(v)
        {
            return v.to_string();
        }
        match self.seen.write() {
            Ok(mut seen) => {
                if seen.contains(v) || seen.len() < MAX_LABEL_VALUES {
                    seen.insert(v.to_string());
                    v.to_string()
                } else {
                    "other".to_string()
                }
            }
            Err(_) => "other".to_string(),
        }
    }
}

/// `deployment`, `agent`, `team`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Who {
    deployment: String,
    agent: String,
    team: String,
}

#[derive(Default)]
struct Series {
    requests: AtomicU64,
    cost_nanos: AtomicI64,
    tokens: [AtomicU64; 5],
    /// Net nano-USD saved by prompt caching (may go down: a cache write costs more).
    cache_saved_nanos: AtomicI64,
    /// What the calls would have cost without prompt caching.
    cache_baseline_nanos: AtomicI64,
    /// Routed calls (enforce, shadow).
    routed: [AtomicU64; 2],
    /// Enforced routing: the heaviest tier's cost of the same calls (zero for a call
    /// that was escalated: without routing it would not have been made), and that minus
    /// what was charged.
    routing_baseline_nanos: AtomicI64,
    routing_saved_nanos: AtomicI64,
    /// Shadow routing: what was charged, and that minus the chosen tier's cost (would
    /// have saved).
    shadow_baseline_nanos: AtomicI64,
    shadow_saved_nanos: AtomicI64,
    /// The gateway's own mechanisms ([`GATEWAY_MECHANISMS`]): calls, baseline, saved.
    mech_requests: [AtomicU64; 4],
    mech_baseline_nanos: [AtomicI64; 4],
    mech_saved_nanos: [AtomicI64; 4],
    /// Injected prompt-cache breakpoints the provider did not honour as planned.
    prompt_cache_misses: AtomicU64,
}

/// Savings the gateway makes by itself, beside the client's own prompt caching and
/// routing: one slot each in [`Series`].
const GATEWAY_MECHANISMS: [&str; 4] = [
    "prompt_cache_injected",
    "response_cache_exact",
    "response_cache_semantic",
    "pruning",
];

const TOKEN_KINDS: [&str; 5] = ["input", "cache_read", "cache_write", "output", "reasoning"];

struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, us: u64) {
        let secs = us as f64 / 1e6;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A budget's remaining amount, as the budget module reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    pub scope: String,
    pub name: String,
    pub period: String,
}

/// Every metric tollgate exposes.
#[derive(Default)]
pub struct Metrics {
    deployments: LabelCap,
    agents: LabelCap,
    teams: LabelCap,
    by_who: RwLock<HashMap<Who, Arc<Series>>>,
    /// (deployment, status class) → requests.
    by_status: RwLock<HashMap<(String, &'static str), Arc<AtomicU64>>>,
    latency: RwLock<HashMap<String, Arc<Histogram>>>,
    ttft: RwLock<HashMap<String, Arc<Histogram>>>,
    outcomes: [AtomicU64; 3],
    /// Registered only once a budget reports (issue 4's budgets call
    /// [`Metrics::set_budget_remaining`]); absent otherwise.
    budgets: RwLock<BTreeMap<BudgetKey, i64>>,
    /// deployment → rows whose reported usage was past what the request could use.
    suspect: RwLock<HashMap<String, Arc<AtomicU64>>>,
    /// Spans dropped because the export queue was full.
    pub spans_dropped: AtomicU64,
    pub spans_exported: AtomicU64,
}

fn status_class(row: &LedgerRow) -> &'static str {
    match row.status {
        200..=299 if row.error_code.is_none() => "2xx",
        200..=299 => "cut",
        499 => "client_closed",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

fn entry<K, V>(map: &RwLock<HashMap<K, Arc<V>>>, key: K) -> Option<Arc<V>>
where
    K: std::hash::Hash + Eq,
    V: Default,
{
    if let Ok(m) = map.read()
        && let Some(v) = m.get(&key)
    {
        return Some(v.clone());
    }
    let mut m = map.write().ok()?;
    Some(m.entry(key).or_default().clone())
}

impl Metrics {
    /// Count one settled request.
    pub fn observe(&self, row: &LedgerRow) {
        let a = &row.attribution;
        let deployment = if row.route.deployment.is_empty() {
            "(none)".to_string()
        } else {
            self.deployments.get(&row.route.deployment)
        };
        let who = Who {
            deployment: deployment.clone(),
            agent: self.agents.get(a.agent.as_deref().unwrap_or("(none)")),
            team: self.teams.get(a.team.as_deref().unwrap_or("(none)")),
        };
        if let Some(s) = entry(&self.by_who, who) {
            s.requests.fetch_add(1, Ordering::Relaxed);
            s.cost_nanos.fetch_add(row.cost.nanos(), Ordering::Relaxed);
            let u = &row.usage;
            let kinds = [
                u.input,
                u.cache_read,
                u.cache_write_5m + u.cache_write_1h,
                u.output,
                u.reasoning,
            ];
            for (slot, n) in s.tokens.iter().zip(kinds) {
                slot.fetch_add(n, Ordering::Relaxed);
            }
            let injected = row
                .cache
                .as_ref()
                .is_some_and(|c| c.kind == CacheKind::PromptInjected);
            let mech = |i: usize, base: i64| {
                s.mech_requests[i].fetch_add(1, Ordering::Relaxed);
                s.mech_baseline_nanos[i].fetch_add(base, Ordering::Relaxed);
                s.mech_saved_nanos[i].fetch_add(base - row.cost.nanos(), Ordering::Relaxed);
            };
            if let Some(c) = &row.cache {
                match c.kind {
                    CacheKind::PromptInjected => {
                        mech(0, row.cost_without_cache.nanos());
                        if c.miss {
                            s.prompt_cache_misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    CacheKind::ResponseExact => mech(1, row.cost.nanos() + c.avoided_cost.nanos()),
                    CacheKind::ResponseSemantic => {
                        mech(2, row.cost.nanos() + c.avoided_cost.nanos())
                    }
                }
            }
            if let Some(p) = &row.prune {
                mech(3, p.cost_without.nanos());
            }
            if !injected && u.cache_read + u.cache_write_5m + u.cache_write_1h > 0 {
                let base = row.cost_without_cache.nanos();
                s.cache_baseline_nanos.fetch_add(base, Ordering::Relaxed);
                s.cache_saved_nanos
                    .fetch_add(base - row.cost.nanos(), Ordering::Relaxed);
            }
            if let Some(r) = &row.routing
                && u.prompt_total() + u.output > 0
            {
                match r.mode {
                    RouteMode::Enforce => {
                        let base = if r.escalated.is_some() {
                            0
                        } else {
                            r.heavy_cost.nanos()
                        };
                        s.routed[0].fetch_add(1, Ordering::Relaxed);
                        s.routing_baseline_nanos.fetch_add(base, Ordering::Relaxed);
                        s.routing_saved_nanos
                            .fetch_add(base - row.cost.nanos(), Ordering::Relaxed);
                    }
                    RouteMode::Shadow => {
                        s.routed[1].fetch_add(1, Ordering::Relaxed);
                        s.shadow_baseline_nanos
                            .fetch_add(row.cost.nanos(), Ordering::Relaxed);
                        s.shadow_saved_nanos
                            .fetch_add(row.cost.nanos() - r.tier_cost.nanos(), Ordering::Relaxed);
                    }
                }
            }
        }
        if row.usage_suspect
            && let Some(c) = entry(&self.suspect, deployment.clone())
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(c) = entry(&self.by_status, (deployment.clone(), status_class(row))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = entry(&self.latency, deployment.clone()) {
            h.observe(row.latency_us);
        }
        if row.stream
            && let Some(t) = row.ttft_us
            && let Some(h) = entry(&self.ttft, deployment)
        {
            h.observe(t);
        }
    }

    /// Count a recorded (changed) task outcome.
    pub fn outcome(&self, status: OutcomeStatus) {
        let i = match status {
            OutcomeStatus::Success => 0,
            OutcomeStatus::Failure => 1,
            OutcomeStatus::Abandoned => 2,
        };
        self.outcomes[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Report a budget's remaining amount (nano-USD). The gauge family appears once the
    /// first budget reports.
    pub fn set_budget_remaining(&self, key: BudgetKey, remaining_nanos: i64) {
        if let Ok(mut b) = self.budgets.write() {
            b.insert(key, remaining_nanos);
        }
    }

    /// The text exposition format (version 0.0.4). `ledger` adds the writer's counters
    /// and its queue depth.
    pub fn render(&self, ledger: Option<(&tollgate_store::LedgerStats, usize)>) -> String {
        let mut out = String::with_capacity(8192);
        let mut who: Vec<(Who, Arc<Series>)> = self
            .by_who
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        who.sort_by(|a, b| a.0.cmp(&b.0));
        let labels = |w: &Who| {
            format!(
                "deployment=\"{}\",agent=\"{}\",team=\"{}\"",
                esc(&w.deployment),
                esc(&w.agent),
                esc(&w.team)
            )
        };

        header(
            &mut out,
            "tollgate_requests_total",
            "counter",
            "Requests metered (one per ledger row).",
        );
        for (w, s) in &who {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{{}}} {}",
                labels(w),
                s.requests.load(Ordering::Relaxed)
            );
        }
        let mut status: Vec<((String, &str), u64)> = self
            .by_status
            .read()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default();
        status.sort();
        header(
            &mut out,
            "tollgate_responses_total",
            "counter",
            "Requests by deployment and status class (2xx, 4xx, 5xx, cut, client_closed).",
        );
        for ((d, class), n) in &status {
            let _ = writeln!(
                out,
                "tollgate_responses_total{{deployment=\"{}\",status_class=\"{class}\"}} {n}",
                esc(d)
            );
        }
        let mut suspect: Vec<(String, u64)> = self
            .suspect
            .read()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default();
        suspect.sort();
        header(
            &mut out,
            "tollgate_usage_suspect_total",
            "counter",
            "Rows whose upstream reported more tokens than the request could use (priced at the bound, flagged usage_suspect).",
        );
        for (d, n) in &suspect {
            let _ = writeln!(
                out,
                "tollgate_usage_suspect_total{{deployment=\"{}\"}} {n}",
                esc(d)
            );
        }
        header(
            &mut out,
            "tollgate_cost_usd_total",
            "counter",
            "What was charged, in USD (exact nano-USD sums).",
        );
        for (w, s) in &who {
            let _ = writeln!(
                out,
                "tollgate_cost_usd_total{{{}}} {}",
                labels(w),
                usd(s.cost_nanos.load(Ordering::Relaxed))
            );
        }
        header(
            &mut out,
            "tollgate_tokens_total",
            "counter",
            "Tokens by kind: input (uncached), cache_read, cache_write, output, reasoning (part of output).",
        );
        for (w, s) in &who {
            for (kind, n) in TOKEN_KINDS.iter().zip(&s.tokens) {
                let _ = writeln!(
                    out,
                    "tollgate_tokens_total{{{},kind=\"{kind}\"}} {}",
                    labels(w),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "tollgate_cost_baseline_usd_total",
            "counter",
            "What calls touched by a saving mechanism would have cost without it, in USD.",
        );
        for (w, s) in &who {
            let _ = writeln!(
                out,
                "tollgate_cost_baseline_usd_total{{{},mechanism=\"prompt_cache\"}} {}",
                labels(w),
                usd(s.cache_baseline_nanos.load(Ordering::Relaxed))
            );
            for (i, (mech, v)) in [
                ("routing", &s.routing_baseline_nanos),
                ("routing_shadow", &s.shadow_baseline_nanos),
            ]
            .into_iter()
            .enumerate()
            {
                if s.routed[i].load(Ordering::Relaxed) > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_cost_baseline_usd_total{{{},mechanism=\"{mech}\"}} {}",
                        labels(w),
                        usd(v.load(Ordering::Relaxed))
                    );
                }
            }
            for (i, mech) in GATEWAY_MECHANISMS.iter().enumerate() {
                if s.mech_requests[i].load(Ordering::Relaxed) > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_cost_baseline_usd_total{{{},mechanism=\"{mech}\"}} {}",
                        labels(w),
                        usd(s.mech_baseline_nanos[i].load(Ordering::Relaxed))
                    );
                }
            }
        }
        header(
            &mut out,
            "tollgate_savings_usd",
            "gauge",
            "Net USD saved by each mechanism since start (baseline minus charged; negative when cache writes cost more than reads saved; routing_shadow is what shadow routing would have saved, not money saved).",
        );
        for (w, s) in &who {
            let _ = writeln!(
                out,
                "tollgate_savings_usd{{{},mechanism=\"prompt_cache\"}} {}",
                labels(w),
                usd(s.cache_saved_nanos.load(Ordering::Relaxed))
            );
            for (i, (mech, v)) in [
                ("routing", &s.routing_saved_nanos),
                ("routing_shadow", &s.shadow_saved_nanos),
            ]
            .into_iter()
            .enumerate()
            {
                if s.routed[i].load(Ordering::Relaxed) > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_savings_usd{{{},mechanism=\"{mech}\"}} {}",
                        labels(w),
                        usd(v.load(Ordering::Relaxed))
                    );
                }
            }
            for (i, mech) in GATEWAY_MECHANISMS.iter().enumerate() {
                if s.mech_requests[i].load(Ordering::Relaxed) > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_savings_usd{{{},mechanism=\"{mech}\"}} {}",
                        labels(w),
                        usd(s.mech_saved_nanos[i].load(Ordering::Relaxed))
                    );
                }
            }
        }
        header(
            &mut out,
            "tollgate_prompt_cache_misses_total",
            "counter",
            "Calls with gateway-placed prompt-cache breakpoints where the provider reported no cache read (or no write) where one was expected: a model whose real minimum or TTL differs from the documented one.",
        );
        for (w, s) in &who {
            let n = s.prompt_cache_misses.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "tollgate_prompt_cache_misses_total{{{}}} {n}",
                    labels(w)
                );
            }
        }
        header(
            &mut out,
            "tollgate_routed_requests_total",
            "counter",
            "Routed requests that consumed tokens, by mode (enforce: served by the chosen tier; shadow: decided and recorded only).",
        );
        for (w, s) in &who {
            for (i, mode) in ["enforce", "shadow"].into_iter().enumerate() {
                let n = s.routed[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_routed_requests_total{{{},mode=\"{mode}\"}} {n}",
                        labels(w)
                    );
                }
            }
        }
        render_histograms(
            &mut out,
            "tollgate_request_duration_seconds",
            "Whole request, arrival to last byte.",
            &self.latency,
        );
        render_histograms(
            &mut out,
            "tollgate_time_to_first_token_seconds",
            "Streams: arrival to the first byte of the response body.",
            &self.ttft,
        );
        header(
            &mut out,
            "tollgate_task_outcomes_total",
            "counter",
            "Task outcomes recorded (changes only; a repeated identical outcome is not counted).",
        );
        for (status, n) in OutcomeStatus::ALL.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "tollgate_task_outcomes_total{{status=\"{}\"}} {}",
                status.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        if let Ok(b) = self.budgets.read()
            && !b.is_empty()
        {
            header(
                &mut out,
                "tollgate_budget_remaining_usd",
                "gauge",
                "What is left of each budget in its current period, in USD.",
            );
            for (k, v) in b.iter() {
                let _ = writeln!(
                    out,
                    "tollgate_budget_remaining_usd{{scope=\"{}\",name=\"{}\",period=\"{}\"}} {}",
                    esc(&k.scope),
                    esc(&k.name),
                    esc(&k.period),
                    usd(*v)
                );
            }
        }
        header(
            &mut out,
            "tollgate_trace_spans_total",
            "counter",
            "OpenTelemetry spans exported or dropped (queue full or collector failing).",
        );
        let _ = writeln!(
            out,
            "tollgate_trace_spans_total{{result=\"exported\"}} {}",
            self.spans_exported.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tollgate_trace_spans_total{{result=\"dropped\"}} {}",
            self.spans_dropped.load(Ordering::Relaxed)
        );
        if let Some((l, queued)) = ledger {
            header(
                &mut out,
                "tollgate_ledger_queue_depth",
                "gauge",
                "Ledger rows queued for the writer, not yet in a batch (batched durability: what a crash would lose beyond the batch being committed).",
            );
            let _ = writeln!(out, "tollgate_ledger_queue_depth {queued}");
            for (name, help, v) in [
                (
                    "tollgate_ledger_rows_written_total",
                    "Ledger rows committed.",
                    &l.rows_written,
                ),
                (
                    "tollgate_ledger_commit_failures_total",
                    "Ledger commits that failed (and were retried).",
                    &l.commit_failures,
                ),
                (
                    "tollgate_ledger_rows_to_fallback_total",
                    "Ledger rows saved to the fallback file.",
                    &l.rows_to_fallback,
                ),
            ] {
                header(&mut out, name, "counter", help);
                let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
            }
        }
        out
    }
}

/// Budget overspend (settlements that cost more than their reservation) and the prompt
/// correction learnt per deployment (ppm), appended to [`Metrics::render`]'s text.
pub fn render_overspend(
    out: &mut String,
    overages: u64,
    overage_nanos: i64,
    corrections: &[(String, u64)],
) {
    header(
        out,
        "tollgate_budget_overages_total",
        "counter",
        "Settlements whose actual cost exceeded their reservation (the provider counted more than the gateway reserved).",
    );
    let _ = writeln!(out, "tollgate_budget_overages_total {overages}");
    header(
        out,
        "tollgate_budget_overage_usd_total",
        "counter",
        "What those settlements cost beyond their reservations, in USD.",
    );
    let _ = writeln!(
        out,
        "tollgate_budget_overage_usd_total {}",
        usd(overage_nanos)
    );
    header(
        out,
        "tollgate_prompt_correction_ratio",
        "gauge",
        "Factor applied to locally counted prompt tokens when reserving (provider-reported / local, learnt per deployment, plus a 10% margin, at least 1).",
    );
    for (d, ppm) in corrections {
        let _ = writeln!(
            out,
            "tollgate_prompt_correction_ratio{{deployment=\"{}\"}} {}.{:06}",
            esc(d),
            ppm / 1_000_000,
            ppm % 1_000_000
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_histograms(
    out: &mut String,
    name: &str,
    help: &str,
    map: &RwLock<HashMap<String, Arc<Histogram>>>,
) {
    header(out, name, "histogram", help);
    let mut hs: Vec<(String, Arc<Histogram>)> = map
        .read()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    hs.sort_by(|a, b| a.0.cmp(&b.0));
    for (d, h) in hs {
        let d = esc(&d);
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{deployment=\"{d}\",le=\"{le}\"}} {}",
                h.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{deployment=\"{d}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{deployment=\"{d}\"}} {}",
            h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{deployment=\"{d}\"}} {count}");
    }
}

/// nano-USD as a decimal USD sample value (exact digits, no float rounding).
fn usd(nanos: i64) -> String {
    tollgate_domain::money::Money::from_nanos(nanos).to_string()
}

/// Escape a label value: backslash, double quote and line feed.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_capped() {
        let cap = LabelCap::default();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(cap.get(&format!("a{i}")), format!("a{i}"));
        }
        assert_eq!(cap.get("one-too-many"), "other");
        assert_eq!(cap.get("a3"), "a3");
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(usd(1_500_000_000), "1.500000000");
    }
}

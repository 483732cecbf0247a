//! Budgets, rate limits and the runaway-agent guard: the component admission asks
//! before a request goes upstream, and settlement tells after.
//!
//! [`Limits::admit`] does, in order:
//! 1. the task guard: a halted task is refused (409 `task_halted`); otherwise the call
//!    is fingerprinted and checked for loops and limits, and may halt the task here
//!    (with Redis counters the halt, the call count and the cost are shared by every
//!    replica: `halts::shared_verdict`);
//! 2. the request's worst case: prompt tokens counted locally × the dearest input rate,
//!    plus `max_tokens` (or `budgets.default_max_tokens`) × the dearer of the output and
//!    reasoning rates;
//! 3. one atomic reservation across every budget line (each covering scope in its
//!    current period) and every rate-limit line; refused → 402 `budget_exceeded` or 429
//!    `rate_limited`, before any provider is called. With `clamp_max_tokens`, a request
//!    the budget cannot pay in full gets its `max_tokens` lowered to what it can pay.
//!
//! [`Limits::settle`] runs from the meter's settlement (commit, reject, or `Drop` on a
//! client disconnect or a cancelled handler), exactly once per [`Ticket`] because the
//! meter `take`s it: the actual cost is charged, the rest released, rate windows
//! refunded what was not used, thresholds crossed alert, the task guard learns the
//! cost. In memory this is a few hundred nanoseconds under one mutex, done inline; with
//! Redis it is one script run from a tracked task, so a dropped future cannot lose it.
//!
//! The component holds the handles it needs (counters, the store, alerts, the task
//! tracker) and takes the request's config snapshot (`&LimitsConfig`) as an argument;
//! it never sees the gateway.
//!
//! # Layout
//! - [`admit`]: lines, the worst case, the reservation, clamping, response headers.
//! - [`guard`]: per-task state and halted tasks at run time ([`guard::TaskGuard`]).
//! - `leases`: with Redis, this replica's open reservations and the renewal of their
//!   leases, so a dead replica's holds come back within `budgets.lease_s`.
//! - [`halts`]: the guard at admission (shared verdicts, trips, their incidents and
//!   alerts) and halts kept in step with Redis.
//! - [`owners`]: task ids scoped to their owner (team, or key), checked before the
//!   cache and the guard.
//! - [`refresh`]: run-time budgets and halted tasks re-read from the store; seeding.
//! - [`settle`]: settlement, overage, threshold alerts.

use crate::alerts::Alerts;
use crate::clock::now_ms;
use crate::config::LimitsConfig;
use crate::config::limits::CountersConfig;
use crate::tokens::TokenCache;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use tokio_util::task::TaskTracker;
use tollgate_domain::budget::{
    BudgetRule, Period, PeriodWindow, PromptCorrection, Scope, ScopeKind, counter_key, merge_rules,
    window,
};
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::RateKind;
use tollgate_store::counters::{CounterError, Counters, HaltCursor, Reservation, Seed, TaskRun};
use tollgate_store::{BudgetStore, Store, StoreError, TaskStore};

pub mod admit;
pub mod guard;
mod halts;
mod leases;
pub mod owners;
mod refresh;
mod settle;

pub use admit::{Admitted, Call};
pub use guard::{TaskGuard, Verdict};

/// How long a finished period's counters are kept (for `budgets show`).
const PERIOD_GRACE_MS: i64 = 35 * 86_400_000;

/// Why the limits could not start.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Counters(#[from] CounterError),
}

/// Counters of what admission did, for `/healthz` and the benchmark.
#[derive(Debug, Default)]
pub struct LimitStats {
    pub reserved: AtomicU64,
    pub refused_budget: AtomicU64,
    pub refused_rate: AtomicU64,
    pub refused_halted: AtomicU64,
    pub clamped: AtomicU64,
    pub settled: AtomicU64,
    pub settle_errors: AtomicU64,
    /// Settlements whose actual cost exceeded the reservation, and by how much in all.
    pub overages: AtomicU64,
    pub overage_nanos: AtomicI64,
    pub halts: AtomicU64,
}

/// The gateway's budgets, rate limits and task guard.
pub struct Limits {
    pub counters: Counters,
    pub guard: TaskGuard,
    /// The config file's budgets with the run-time ones (database) merged over them.
    rules: ArcSwap<Vec<BudgetRule>>,
    seed_lock: tokio::sync::Mutex<()>,
    /// When the counters were last fully seeded (requests that waited for a reseed
    /// running in parallel do not run it again).
    seeded_at_ms: AtomicI64,
    /// With Redis: how far this replica has read the index of halts (`import_halts`).
    /// Held only to copy or replace it, never across an `.await`.
    halt_cursor: std::sync::Mutex<HaltCursor>,
    pub tokens: TokenCache,
    /// Who owns each task id.
    pub owners: owners::TaskOwners,
    /// Per deployment: how many more prompt tokens its provider counts than the local
    /// tokenizer (reservations are scaled by it). Never held across an `.await`.
    corrections: std::sync::Mutex<HashMap<String, PromptCorrection>>,
    pub stats: LimitStats,
    /// Budgets, incidents and halts live here; spend is summed from its ledger.
    store: Store,
    /// Where trips and crossed thresholds are announced.
    alerts: Arc<Alerts>,
    /// Settlements and shared task costs that must outlive the request (Redis).
    tasks: TaskTracker,
    /// With Redis: this replica's open reservations, whose leases it renews.
    leases: leases::Leases,
}

/// The counters of `rules` in their current periods, with spend summed from the ledger.
pub async fn seeds_for(
    store: &Store,
    rules: &[BudgetRule],
    now_ms: i64,
    tz: &jiff::tz::TimeZone,
) -> Result<Vec<Seed>, StoreError> {
    let mut out: HashMap<String, Seed> = HashMap::new();
    for r in rules {
        let w = window(r.period, now_ms, tz);
        for (name, spent) in store.spend_by_scope(&r.scope, w.start_ms, w.end_ms).await? {
            let scope = match r.scope.kind {
                ScopeKind::Org => Scope::org(),
                k => Scope::new(k, name),
            };
            let key = counter_key(&scope, &w);
            out.insert(
                key.clone(),
                Seed {
                    key,
                    spent,
                    expire_at_ms: expiry(&w),
                },
            );
        }
    }
    Ok(out.into_values().collect())
}

fn expiry(w: &PeriodWindow) -> Option<i64> {
    w.end_ms.map(|e| e.saturating_add(PERIOD_GRACE_MS))
}

impl Limits {
    /// Counters, budgets and halted tasks from the config and the store. In-memory
    /// counters are rebuilt from the ledger here, before the first request.
    pub async fn new(
        lc: &LimitsConfig,
        store: Store,
        alerts: Arc<Alerts>,
        tasks: TaskTracker,
    ) -> Result<Limits, LimitsError> {
        let counters = match &lc.counters {
            CountersConfig::Memory => Counters::memory(),
            CountersConfig::Redis { url, prefix } => {
                use secrecy::ExposeSecret;
                Counters::Redis(tollgate_store::counters::RedisCounters::new(
                    url.expose_secret(),
                    prefix,
                )?)
            }
        };
        let rules = merge_rules(&lc.budgets, &store.list_budgets().await?);
        if let Counters::Memory(m) = &counters {
            m.seed(&seeds_for(&store, &rules, now_ms(), &lc.time_zone).await?);
        }
        let guard = TaskGuard::default();
        guard.sync_halted(&store.halted_tasks().await?);
        Ok(Limits {
            counters,
            guard,
            rules: ArcSwap::from_pointee(rules),
            seed_lock: tokio::sync::Mutex::new(()),
            seeded_at_ms: AtomicI64::new(i64::MIN),
            halt_cursor: std::sync::Mutex::new(HaltCursor::default()),
            tokens: TokenCache::default(),
            owners: owners::TaskOwners::default(),
            corrections: std::sync::Mutex::new(HashMap::new()),
            stats: LimitStats::default(),
            store,
            alerts,
            tasks,
            leases: leases::Leases::default(),
        })
    }

    /// Refuse (403) a call naming a task id another owner uses.
    pub async fn check_task_owner(
        &self,
        task: &str,
        key: &tollgate_store::VirtualKey,
    ) -> Result<(), crate::error::ApiError> {
        self.owners.check(&self.store, task, key).await
    }

    /// `local` prompt tokens as `deployment`'s provider is expected to count them.
    pub fn corrected_prompt(&self, deployment: &str, local: u64) -> u64 {
        self.corrections
            .lock()
            .ok()
            .and_then(|m| m.get(deployment).map(|c| c.apply(local)))
            .unwrap_or(local)
    }

    /// The correction factor learnt for `deployment` (1.0 before any call), in ppm.
    pub fn prompt_correction_ppm(&self, deployment: &str) -> u64 {
        self.corrections
            .lock()
            .ok()
            .and_then(|m| m.get(deployment).map(PromptCorrection::factor_ppm))
            .unwrap_or(1_000_000)
    }

    /// Every deployment's learnt correction (ppm), sorted by name.
    pub fn prompt_corrections(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .corrections
            .lock()
            .map(|m| m.iter().map(|(k, c)| (k.clone(), c.factor_ppm())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn learn_prompt(&self, deployment: &str, local: u64, reported: u64) {
        if let Ok(mut m) = self.corrections.lock() {
            m.entry(deployment.to_string())
                .or_default()
                .observe(local, reported);
        }
    }

    /// The budgets in force.
    pub fn rules(&self) -> Arc<Vec<BudgetRule>> {
        self.rules.load_full()
    }
}

/// What a budget line is for (alerts and error messages).
#[derive(Debug, Clone)]
struct LineInfo {
    scope: Scope,
    period: Period,
    label: String,
    /// Every rule counting on this line: its limit, whether hard, its alert thresholds.
    rules: Vec<(Money, bool, Vec<u8>)>,
}

/// What admission leaves with the meter for settlement.
#[derive(Debug, Default)]
pub struct Ticket {
    task: Option<String>,
    /// With Redis: the run of the task the call was counted in (its cost goes there).
    task_run: Option<TaskRun>,
    reservation: Option<Reservation>,
    lines: Vec<LineInfo>,
    rate_kinds: Vec<RateKind>,
    /// The deployment and the prompt tokens counted locally (what the provider reports
    /// for them teaches the deployment's correction).
    prompt_counted: Option<(String, u64)>,
    /// A sampled call judged by its answers: the call's SimHash, which the answer's
    /// SimHash is recorded against when it settles.
    sample: Option<u64>,
}

impl Ticket {
    /// Whether settlement wants the answer's SimHash (the call is a sample the guard
    /// judges by its answers).
    pub fn wants_answer(&self) -> bool {
        self.sample.is_some()
    }
}

fn period_text(p: Period, label: &str) -> String {
    match p {
        Period::Lifetime => "lifetime".into(),
        p => format!("{} {label}", p.as_str()),
    }
}

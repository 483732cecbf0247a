//! Admission: the step between resolving a deployment and calling the upstream, and
//! its counterpart, settlement, which the [`Meter`] runs on every path.
//!
//! [`admit`] does, in order:
//! 1. the task guard: a halted task is refused (409 `task_halted`); otherwise the call
//!    is fingerprinted and checked for loops and limits, and may halt the task here
//!    (with Redis counters the halt, the call count and the cost are shared by every
//!    replica: [`shared_verdict`]);
//! 2. the request's worst case: prompt tokens counted locally × the dearest input rate,
//!    plus `max_tokens` (or `budgets.default_max_tokens`) × the dearer of the output and
//!    reasoning rates;
//! 3. one atomic reservation across every budget line (each covering scope in its
//!    current period) and every rate-limit line; refused → 402 `budget_exceeded` or 429
//!    `rate_limited`, before any provider is called. With `clamp_max_tokens`, a request
//!    the budget cannot pay in full gets its `max_tokens` lowered to what it can pay.
//!
//! [`settle`] runs from the meter's settlement (commit, reject, or `Drop` on a client
//! disconnect or a cancelled handler), exactly once per ticket because the meter
//! `take`s it: the actual cost is charged, the rest released, rate windows refunded
//! what was not used, thresholds crossed alert, the task guard learns the cost. In
//! memory this is a few hundred nanoseconds under one mutex, done inline; with Redis it
//! is one script run from a tracked task, so a dropped future cannot lose it.

use crate::alerts::{self, Alert};
use crate::config::Config;
use crate::error::ApiError;
use crate::guard::{TaskGuard, Verdict};
use crate::headers;
use crate::meter::Meter;
use crate::state::{Gateway, now_ms};
use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use tollgate_domain::attribution::Attribution;
use tollgate_domain::budget::{
    BudgetRule, Line, Period, PeriodWindow, Scope, ScopeKind, SettledLine, affordable_output,
    counter_key, crossed_thresholds, scopes_of, window, worst_case,
};
use tollgate_domain::ledger::LedgerRow;
use tollgate_domain::loopguard::{Fingerprint, GuardLimits, Halt};
use tollgate_domain::money::Money;
use tollgate_domain::pricing::EffectiveRates;
use tollgate_domain::ratelimit::{MINUTE_MS, RateKind};
use tollgate_providers::tokenizer::Encoding;
use tollgate_store::counters::{
    CounterError, Counters, HaltClaim, HaltCursor, KnownHalt, RateLine, RedisCounters, Refusal,
    Reservation, ReserveError, ReserveRequest, Reserved, Seed, TaskAdmit, TaskRun,
};
use tollgate_store::{SqliteStore, StoreError};

/// How long a finished period's counters are kept (for `budgets show`).
const PERIOD_GRACE_MS: i64 = 35 * 86_400_000;
/// Most halts recorded by other replicas copied into this replica's store per refresh
/// (a replica starting next to many halts catches up over a few refreshes).
const SHARED_HALTS_PER_REFRESH: usize = 500;

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
    pub alerts: AtomicU64,
    pub alerts_delivered: AtomicU64,
    pub alerts_failed: AtomicU64,
}

/// Token counts per message (and per tool list), so an agent's conversation, resent
/// whole on every call, is tokenised once per message rather than once per call.
/// Bounded: a full shard is cleared.
#[derive(Default)]
pub struct TokenCache {
    shards: [std::sync::Mutex<HashMap<u64, u32>>; 8],
}

const TOKEN_CACHE_PER_SHARD: usize = 16_384;

fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => h.write_u8(1 + u8::from(*b)),
        Value::Number(n) => {
            h.write_u8(3);
            match n.as_i64() {
                Some(i) => h.write_i64(i),
                None => h.write_u64(n.as_f64().unwrap_or(0.0).to_bits()),
            }
        }
        Value::String(s) => {
            h.write_u8(4);
            h.write(s.as_bytes());
            h.write_u8(0xff);
        }
        Value::Array(a) => {
            h.write_u8(5);
            h.write_usize(a.len());
            for x in a {
                hash_value(x, h);
            }
        }
        Value::Object(o) => {
            h.write_u8(6);
            h.write_usize(o.len());
            for (k, x) in o {
                h.write(k.as_bytes());
                h.write_u8(0xff);
                hash_value(x, h);
            }
        }
    }
}

impl TokenCache {
    fn get_or(&self, enc: Encoding, v: &Value, count: impl FnOnce() -> u64) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u8(enc as u8);
        hash_value(v, &mut h);
        let key = h.finish();
        let shard = &self.shards[(key % 8) as usize];
        if let Some(n) = shard.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return u64::from(*n);
        }
        let n = count();
        let mut g = shard.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= TOKEN_CACHE_PER_SHARD {
            g.clear();
        }
        g.insert(key, u32::try_from(n).unwrap_or(u32::MAX));
        n
    }

    /// Prompt tokens of a chat request, as [`Encoding::count_chat_prompt`] counts them,
    /// plus its tool definitions.
    pub fn chat_prompt(&self, enc: Encoding, messages: &[Value], tools: Option<&Value>) -> u64 {
        let mut n = 3;
        for m in messages {
            n += self.get_or(enc, m, || {
                enc.count_chat_prompt(std::slice::from_ref(m))
                    .saturating_sub(3)
            });
        }
        if let Some(t) = tools.filter(|t| !t.is_null()) {
            n += self.get_or(enc, t, || enc.count(&t.to_string()));
        }
        n
    }
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
    pub stats: LimitStats,
}

/// Config budgets, with database budgets replacing those on the same scope and period.
pub fn merge_rules(config: &[BudgetRule], db: &[BudgetRule]) -> Vec<BudgetRule> {
    let mut out: Vec<BudgetRule> = config
        .iter()
        .filter(|c| {
            !db.iter()
                .any(|d| d.scope == c.scope && d.period == c.period)
        })
        .cloned()
        .collect();
    out.extend(db.iter().cloned());
    out
}

/// The counters of `rules` in their current periods, with spend summed from the ledger.
pub fn seeds_for(
    store: &SqliteStore,
    rules: &[BudgetRule],
    now_ms: i64,
    tz: &jiff::tz::TimeZone,
) -> Result<Vec<Seed>, StoreError> {
    let mut out: HashMap<String, Seed> = HashMap::new();
    for r in rules {
        let w = window(r.period, now_ms, tz);
        for (name, spent) in store.spend_by_scope(&r.scope, w.start_ms, w.end_ms)? {
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
    pub fn new(cfg: &Config, store: &SqliteStore) -> Result<Limits, crate::ServerError> {
        let lc = &cfg.limits;
        let counters = match &lc.counters {
            crate::config::limits::CountersConfig::Memory => Counters::memory(),
            crate::config::limits::CountersConfig::Redis { url, prefix } => {
                use secrecy::ExposeSecret;
                Counters::Redis(tollgate_store::counters::RedisCounters::new(
                    url.expose_secret(),
                    prefix,
                )?)
            }
        };
        let rules = merge_rules(&lc.budgets, &store.list_budgets()?);
        if let Counters::Memory(m) = &counters {
            m.seed(&seeds_for(store, &rules, now_ms(), &lc.time_zone)?);
        }
        let guard = TaskGuard::default();
        guard.sync_halted(&store.halted_tasks()?);
        Ok(Limits {
            counters,
            guard,
            rules: ArcSwap::from_pointee(rules),
            seed_lock: tokio::sync::Mutex::new(()),
            seeded_at_ms: AtomicI64::new(i64::MIN),
            halt_cursor: std::sync::Mutex::new(HaltCursor::default()),
            tokens: TokenCache::default(),
            stats: LimitStats::default(),
        })
    }

    /// The budgets in force.
    pub fn rules(&self) -> Arc<Vec<BudgetRule>> {
        self.rules.load_full()
    }
}

/// Re-read run-time budgets and halted tasks from the store (every few seconds, and
/// right after an admin change). New budgets are seeded from the ledger before they
/// take effect, so a budget set mid-period counts what was already spent. With Redis,
/// the store's halts are reconciled with the shared state first, and halts recorded by
/// other replicas are copied into it.
pub async fn refresh(gw: &Arc<Gateway>) -> Result<(), ApiError> {
    let store = gw.store.clone();
    let (db_rules, halted) = tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>((store.list_budgets()?, store.halted_tasks()?))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let halted = match &gw.limits.counters {
        Counters::Redis(r) => {
            let halted = reconcile_halts(gw, r, halted).await;
            import_halts(gw, r, halted).await
        }
        Counters::Memory(_) => halted,
    };
    gw.limits.guard.sync_halted(&halted);
    let cfg = gw.config.load_full();
    let merged = merge_rules(&cfg.limits.budgets, &db_rules);
    let current = gw.limits.rules();
    if *current == merged {
        return Ok(());
    }
    let fresh: Vec<BudgetRule> = merged
        .iter()
        .filter(|r| {
            !current
                .iter()
                .any(|c| c.scope == r.scope && c.period == r.period)
        })
        .cloned()
        .collect();
    if !fresh.is_empty() {
        seed(gw, &fresh, false).await?;
    }
    gw.limits.rules.store(Arc::new(merged));
    Ok(())
}

/// Seed the counters of `rules` from the ledger (`mark`: record the store as seeded).
async fn seed(gw: &Arc<Gateway>, rules: &[BudgetRule], mark: bool) -> Result<(), ApiError> {
    let store = gw.store.clone();
    let rules = rules.to_vec();
    let tz = gw.config.load().limits.time_zone.clone();
    let seeds = tokio::task::spawn_blocking(move || seeds_for(&store, &rules, now_ms(), &tz))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let n = gw
        .limits
        .counters
        .seed(&seeds, mark)
        .await
        .map_err(|e| ApiError::CountersUnavailable(e.0))?;
    tracing::info!(
        counters = n,
        of = seeds.len(),
        store = gw.limits.counters.name(),
        "budget counters seeded from the ledger"
    );
    Ok(())
}

/// The counter store lost its data (a Redis restarted empty): rebuild every budget's
/// current counters from the ledger, once, however many requests notice at the same time.
async fn reseed(gw: &Arc<Gateway>, noticed_ms: i64) -> Result<(), ApiError> {
    let _one = gw.limits.seed_lock.lock().await;
    if gw.limits.seeded_at_ms.load(Ordering::Acquire) >= noticed_ms {
        return Ok(());
    }
    let rules = gw.limits.rules();
    seed(gw, &rules, true).await?;
    gw.limits.seeded_at_ms.store(now_ms(), Ordering::Release);
    Ok(())
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
}

/// The request's size, as far as the gateway can tell before forwarding it.
struct Estimate {
    prompt_tokens: u64,
    /// `max_completion_tokens` / `max_tokens` as the client sent it.
    max_output: Option<u64>,
    chat: bool,
}

fn estimate(cache: &TokenCache, enc: Encoding, body: &Map<String, Value>) -> Estimate {
    if let Some(Value::Array(messages)) = body.get("messages") {
        let mut prompt = cache.chat_prompt(enc, messages, body.get("tools"));
        // Anthropic and Bedrock keep the system prompt (and Bedrock the tools) apart.
        for extra in ["system", "toolConfig"] {
            if let Some(v) = body.get(extra).filter(|v| !v.is_null()) {
                prompt += cache.get_or(enc, v, || enc.count(&v.to_string()));
            }
        }
        let max_output = crate::ingress::max_output_tokens(body);
        Estimate {
            prompt_tokens: prompt,
            max_output,
            chat: true,
        }
    } else {
        Estimate {
            prompt_tokens: body
                .get("input")
                .map(|i| enc.count_embedding_input(i))
                .unwrap_or(0),
            max_output: Some(0),
            chat: false,
        }
    }
}

/// Write a clamped `max_tokens` in the field the client used (reasoning models only take
/// `max_completion_tokens`).
fn set_max_tokens(body: &mut Map<String, Value>, model: &str, n: u64) {
    if let Some(Value::Object(c)) = body.get_mut("inferenceConfig") {
        c.insert("maxTokens".into(), Value::from(n));
        return;
    }
    let field = if body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else if body.contains_key("max_tokens") {
        "max_tokens"
    } else if model.starts_with('o') || model.starts_with("gpt-5") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(field.into(), Value::from(n));
}

/// [`admit`] for a request in any ingress format (OpenAI chat and embeddings, Anthropic
/// Messages, Bedrock Converse): their bodies all carry `messages` and a max-tokens
/// field that [`admit`] reads (and may lower).
pub async fn admit_request(
    gw: &Arc<Gateway>,
    meter: &mut Meter,
    req: &mut crate::ingress::IngressRequest,
) -> Result<(), ApiError> {
    use crate::ingress::IngressRequest;
    let body = match req {
        IngressRequest::Chat(r) => &mut r.body,
        IngressRequest::Embeddings(r) => &mut r.body,
        IngressRequest::Messages(r) => &mut r.body,
        IngressRequest::Converse(r) => &mut r.body,
    };
    admit(gw, meter, body).await
}

/// Admit a request: guard its task, reserve its worst case across every budget and rate
/// limit it falls under, maybe clamp `max_tokens`. `body` is the OpenAI-shaped request
/// (`messages` or `input`, `max_tokens`), before it is serialised for the upstream.
pub async fn admit(
    gw: &Arc<Gateway>,
    meter: &mut Meter,
    body: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    let cfg = gw.config.load_full();
    let lc = &cfg.limits;
    let now = now_ms();
    let attr = meter.attribution().clone();
    let mut ticket = Ticket::default();

    // 1. The task guard (an escalation retry is part of the call it retries: the guard
    //    admitted that one moments ago and does not count it twice).
    if let Some(task) = &attr.task
        && lc.guard.enabled
        && meter.retry_of.is_none()
    {
        let (limits, dry_run) = lc.guard.for_agent(attr.agent.as_deref());
        let fp = match body.get("messages") {
            Some(Value::Array(m)) => Some(Fingerprint::of_chat(m)),
            _ => None,
        };
        let (verdict, run, halted_ms) = match &gw.limits.counters {
            Counters::Redis(r) => {
                let who = (task.as_str(), attr.agent.as_deref());
                shared_verdict(gw, r, who, fp.as_ref(), now, limits, dry_run).await?
            }
            Counters::Memory(_) => (
                gw.limits
                    .guard
                    .observe(task, fp.as_ref(), now, limits, dry_run),
                None,
                None,
            ),
        };
        match verdict {
            Verdict::Continue => {}
            Verdict::Halted(reason) => {
                gw.limits
                    .stats
                    .refused_halted
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::TaskHalted {
                    task: task.clone(),
                    reason,
                });
            }
            Verdict::Trip(halt) => {
                trip(
                    gw,
                    &attr,
                    task,
                    halt,
                    dry_run,
                    meter.request_id(),
                    halted_ms,
                )
                .await?;
            }
        }
        ticket.task = Some(task.clone());
        ticket.task_run = run;
    }

    // 2. Which budgets and rate limits apply.
    let rules = gw.limits.rules();
    let scopes = scopes_of(&attr);
    let mut budget: Vec<Line> = Vec::new();
    let mut expire: Vec<Option<i64>> = Vec::new();
    let mut infos: Vec<LineInfo> = Vec::new();
    for r in rules.iter() {
        for s in scopes.iter().filter(|s| r.scope.covers(s)) {
            let w = window(r.period, now, &lc.time_zone);
            let key = counter_key(s, &w);
            let hard = r.hard.then_some(r.limit);
            match budget.iter().position(|l| l.key == key) {
                // Two rules on one counter (`agent:*` and `agent:bot`): one line, the
                // stricter hard limit, both rules' alerts.
                Some(i) => {
                    budget[i].limit = match (budget[i].limit, hard) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    infos[i].rules.push((r.limit, r.hard, r.alert_at.clone()));
                }
                None => {
                    budget.push(Line {
                        key,
                        limit: hard,
                        amount: Money::ZERO,
                    });
                    expire.push(expiry(&w));
                    infos.push(LineInfo {
                        scope: s.clone(),
                        period: r.period,
                        label: w.label.clone(),
                        rules: vec![(r.limit, r.hard, r.alert_at.clone())],
                    });
                }
            }
        }
    }
    let mut rate: Vec<RateLine> = Vec::new();
    let mut rate_scopes: Vec<String> = Vec::new();
    for r in &lc.rate_limits {
        for s in scopes.iter().filter(|s| r.scope.covers(s)) {
            for (kind, limit) in r.limits() {
                let base = format!("r:{}:{s}", kind.as_str());
                if rate.iter().any(|l| l.base == base) {
                    continue;
                }
                rate.push(RateLine {
                    base,
                    limit,
                    cost: 0,
                    window_ms: MINUTE_MS,
                });
                ticket.rate_kinds.push(kind);
                rate_scopes.push(s.to_string());
            }
        }
    }
    if budget.is_empty() && rate.is_empty() {
        meter.admission = Some(ticket);
        return Ok(());
    }

    // 3. The worst case, then one atomic reservation (clamping if allowed).
    let deployment = meter.deployment().cloned();
    let enc = deployment
        .as_ref()
        .map(|d| d.encoding)
        .unwrap_or(Encoding::O200kBase);
    let est = estimate(&gw.limits.tokens, enc, body);
    let tier = body.get("service_tier").and_then(Value::as_str);
    let rates: Option<EffectiveRates> = deployment
        .as_ref()
        .and_then(|d| d.price.as_ref())
        .and_then(|p| p.rates(est.prompt_tokens, tier));
    let requested = if est.chat {
        est.max_output.unwrap_or(lc.default_max_tokens)
    } else {
        0
    };
    let mut max_out = requested;
    let mut req = ReserveRequest {
        id: meter.request_id().to_string(),
        now_ms: now,
        budget,
        expire_at_ms: expire,
        rate,
        hold_ms: lc.hold_ms,
    };
    let granted = loop {
        let amount = rates
            .as_ref()
            .map(|r| worst_case(r, est.prompt_tokens, max_out))
            .unwrap_or(Money::ZERO);
        for l in &mut req.budget {
            l.amount = amount;
        }
        for (l, kind) in req.rate.iter_mut().zip(&ticket.rate_kinds) {
            l.cost = match kind {
                RateKind::Requests => 1,
                RateKind::Tokens => est.prompt_tokens.saturating_add(max_out),
                RateKind::Usd => amount.nanos().max(0) as u64,
            };
        }
        match reserve(gw, &req).await? {
            None => break None,
            Some(Ok(g)) => break Some(g),
            Some(Err(Refusal::Budget { line, remaining })) => {
                let clamp_to = rates
                    .as_ref()
                    .filter(|_| lc.clamp_max_tokens && est.chat)
                    .and_then(|r| affordable_output(r, est.prompt_tokens, remaining))
                    .filter(|n| *n >= lc.min_clamped_tokens && *n < max_out);
                if let Some(n) = clamp_to {
                    max_out = n;
                    continue;
                }
                gw.limits
                    .stats
                    .refused_budget
                    .fetch_add(1, Ordering::Relaxed);
                let info = &infos[line];
                let limit = req.budget[line].limit.unwrap_or(Money::ZERO);
                return Err(ApiError::BudgetExceeded {
                    scope: info.scope.to_string(),
                    period: period_text(info.period, &info.label),
                    limit,
                    remaining,
                    needed: amount,
                });
            }
            Some(Err(Refusal::Rate {
                line,
                retry_after_ms,
                remaining,
            })) => {
                gw.limits.stats.refused_rate.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::RateLimited {
                    scope: rate_scopes[line].clone(),
                    kind: ticket.rate_kinds[line].as_str(),
                    limit: req.rate[line].limit,
                    remaining,
                    retry_after_ms,
                });
            }
        }
    };
    let Some(granted) = granted else {
        // Counters unreachable and `on_counter_error = "allow"`: forwarded unbudgeted.
        meter.admission = Some(ticket);
        return Ok(());
    };
    gw.limits.stats.reserved.fetch_add(1, Ordering::Relaxed);
    if max_out < requested {
        gw.limits.stats.clamped.fetch_add(1, Ordering::Relaxed);
        let model = deployment.as_ref().map(|d| d.model.as_str()).unwrap_or("");
        set_max_tokens(body, model, max_out);
        put(
            &mut meter.limit_headers,
            headers::MAX_TOKENS_CLAMPED,
            max_out.to_string(),
        );
    }
    success_headers(&mut meter.limit_headers, &req, &granted, &ticket.rate_kinds);
    ticket.reservation = Some(granted.reservation);
    ticket.lines = infos;
    meter.admission = Some(ticket);
    Ok(())
}

fn period_text(p: Period, label: &str) -> String {
    match p {
        Period::Lifetime => "lifetime".into(),
        p => format!("{} {label}", p.as_str()),
    }
}

fn put(h: &mut HeaderMap, name: &'static str, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(name, v);
    }
}

/// `x-tollgate-budget-remaining-usd`: the least any hard budget of the request has left
/// with its worst case held; `x-tollgate-ratelimit-remaining-*`: the least left per kind.
fn success_headers(h: &mut HeaderMap, req: &ReserveRequest, g: &Reserved, kinds: &[RateKind]) {
    if let Some(min) = req
        .budget
        .iter()
        .zip(&g.budget_remaining)
        .filter(|(l, _)| l.limit.is_some())
        .map(|(_, r)| *r)
        .min()
    {
        put(h, headers::BUDGET_REMAINING_USD, min.to_string());
    }
    for kind in [RateKind::Requests, RateKind::Tokens, RateKind::Usd] {
        if let Some(min) = kinds
            .iter()
            .zip(&g.rate_remaining)
            .filter(|(k, _)| **k == kind)
            .map(|(_, r)| *r)
            .min()
            && let Ok(name) = http::HeaderName::from_bytes(
                format!("{}{}", headers::RATELIMIT_REMAINING_PREFIX, kind.as_str()).as_bytes(),
            )
            && let Ok(v) = HeaderValue::from_str(&min.to_string())
        {
            h.insert(name, v);
        }
    }
}

/// Reserve, reseeding a store that lost its data. `None`: the store is unreachable and
/// the config says to forward anyway.
async fn reserve(
    gw: &Arc<Gateway>,
    req: &ReserveRequest,
) -> Result<Option<Result<Reserved, Refusal>>, ApiError> {
    let unreachable = |e: CounterError| {
        if gw.config.load().limits.fail_open {
            tracing::error!(error = %e, "budget counters unreachable; forwarding without a reservation");
            Ok(None)
        } else {
            Err(ApiError::CountersUnavailable(e.0))
        }
    };
    match gw.limits.counters.reserve(req).await {
        Ok(r) => Ok(Some(r)),
        Err(ReserveError::Store(e)) => unreachable(e),
        Err(ReserveError::Unseeded) => {
            reseed(gw, now_ms()).await?;
            match gw.limits.counters.reserve(req).await {
                Ok(r) => Ok(Some(r)),
                Err(ReserveError::Store(e)) => unreachable(e),
                Err(ReserveError::Unseeded) => Err(ApiError::CountersUnavailable(
                    "the counters were reset again while seeding".into(),
                )),
            }
        }
    }
}

/// The guard's verdict on a call when replicas share Redis: one script refuses a task
/// any replica halted or counts the call across replicas; the limits are checked on
/// those shared totals and loops on this replica's history. A halt is written to Redis
/// before this call's 409 goes out, so from then on every replica refuses the task; the
/// replica that wrote it first records the incident and alerts (once, however many
/// replicas tripped at the same time), with the halt's time as Redis gave it. Also
/// returns the run of the task the call was counted in, for its cost. `who`: the task
/// and its agent.
async fn shared_verdict(
    gw: &Arc<Gateway>,
    redis: &RedisCounters,
    (task, agent): (&str, Option<&str>),
    fp: Option<&Fingerprint>,
    now: i64,
    limits: &GuardLimits,
    dry_run: bool,
) -> Result<(Verdict, Option<TaskRun>, Option<i64>), ApiError> {
    let velocity = limits.max_cost_per_minute.is_some();
    let (totals, run) = match redis.task_admit(task, now, velocity).await {
        Ok(TaskAdmit::Halted(reason)) => return Ok((Verdict::Halted(reason), None, None)),
        Ok(TaskAdmit::Counted(t, run)) => (t, run),
        Err(e) if gw.config.load().limits.fail_open => {
            tracing::error!(task, error = %e, "task guard: Redis unreachable; guarding with this replica's state only");
            let verdict = gw.limits.guard.observe(task, fp, now, limits, dry_run);
            return Ok((verdict, None, None));
        }
        Err(e) => return Err(ApiError::CountersUnavailable(e.0)),
    };
    let Some(halt) = gw
        .limits
        .guard
        .observe_counted(task, &totals, fp, now, limits, dry_run)
    else {
        return Ok((Verdict::Continue, Some(run), None));
    };
    let (verdict, halted_ms) = match redis
        .task_halt(task, agent, run, &halt.reason, halt.kind.as_str(), dry_run)
        .await
    {
        Ok(HaltClaim::Already(_)) if dry_run => (Verdict::Continue, None),
        Ok(HaltClaim::Already(reason)) => (Verdict::Halted(reason), None),
        // Released (on some replica) since this call was counted: the halt was decided
        // on a run that is over, and the call is let through.
        Ok(HaltClaim::Stale) => (Verdict::Continue, None),
        Ok(HaltClaim::First { halted_ms }) => {
            if !dry_run {
                gw.limits.guard.mark_halted(task, &halt.reason);
            }
            (Verdict::Trip(halt), Some(halted_ms))
        }
        Err(e) => {
            // Halted here and in this replica's store; the next refresh writes it to
            // Redis (`reconcile_halts`).
            tracing::error!(task, error = %e, "could not share the halt through Redis");
            if !dry_run {
                gw.limits.guard.mark_halted(task, &halt.reason);
            }
            (Verdict::Trip(halt), None)
        }
    };
    Ok((verdict, Some(run), halted_ms))
}

/// With Redis: make this replica's store and Redis agree on halted tasks. Halts
/// released elsewhere (`tollgate tasks release`, another replica's admin API) are
/// released in this store too; halts Redis lost (it restarted empty) are written back.
/// Returns the store's halts still in force.
async fn reconcile_halts(
    gw: &Arc<Gateway>,
    redis: &RedisCounters,
    halted: Vec<tollgate_store::tasks::TaskRecord>,
) -> Vec<tollgate_store::tasks::TaskRecord> {
    if halted.is_empty() {
        return halted;
    }
    let known: Vec<KnownHalt> = halted
        .iter()
        .map(|r| KnownHalt {
            task: r.task.clone(),
            halted_ms: r.halted_ms,
            reason: r.reason.clone(),
            kind: r.kind.clone(),
            agent: r.agent.clone(),
        })
        .collect();
    let released = match redis.task_reconcile(&known).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not compare halted tasks with Redis");
            return halted;
        }
    };
    if released.is_empty() {
        return halted;
    }
    let store = gw.store.clone();
    let tasks = released.clone();
    let done = tokio::task::spawn_blocking(move || {
        for t in &tasks {
            store.release_task(t, now_ms())?;
        }
        Ok::<_, StoreError>(())
    })
    .await;
    if !matches!(done, Ok(Ok(()))) {
        tracing::warn!("could not record releases made on another replica");
    }
    for t in &released {
        tracing::info!(task = %t, "task released on another replica");
    }
    halted
        .into_iter()
        .filter(|r| !released.contains(&r.task))
        .collect()
}

/// With Redis: copy into this replica's store the halts other replicas recorded that it
/// lacks (so its `tollgate tasks`, `/admin/guard` and dashboard list every halt in
/// force), marked as recorded elsewhere and timed as Redis timed them, which is what
/// lets `reconcile_halts` release them when they are released anywhere (a release
/// landing between reading a halt here and storing it is caught by the next refresh's
/// reconcile the same way). Reads the index of halts from where the last refresh
/// stopped, at most [`SHARED_HALTS_PER_REFRESH`] tasks; the cursor moves on only once
/// they are stored. Runs on the refresh task, never on a request. Returns `halted`
/// with the copied halts added.
async fn import_halts(
    gw: &Arc<Gateway>,
    redis: &RedisCounters,
    mut halted: Vec<tollgate_store::tasks::TaskRecord>,
) -> Vec<tollgate_store::tasks::TaskRecord> {
    let cursor = gw
        .limits
        .halt_cursor
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (tasks, next) = match redis
        .task_halts_since(&cursor, SHARED_HALTS_PER_REFRESH)
        .await
    {
        Ok(page) => page,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the halts other replicas recorded");
            return halted;
        }
    };
    let known: HashSet<&str> = halted.iter().map(|r| r.task.as_str()).collect();
    let missing: Vec<String> = tasks
        .into_iter()
        .filter(|t| !known.contains(t.as_str()))
        .collect();
    let halts = match redis.task_halts(&missing).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the halts other replicas recorded");
            return halted;
        }
    };
    if halts.is_empty() {
        advance_halt_cursor(gw, next);
        return halted;
    }
    let store = gw.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for h in &halts {
            if store.record_shared_halt(h)? {
                tracing::info!(task = %h.task, reason = %h.reason, "task halted on another replica");
            }
            out.extend(store.task_record(&h.task)?.filter(|r| r.is_halted()));
        }
        Ok::<_, StoreError>(out)
    })
    .await;
    match stored {
        Ok(Ok(records)) => {
            advance_halt_cursor(gw, next);
            halted.extend(records);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not record halts made on another replica");
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record halts made on another replica");
        }
    }
    halted
}

/// Two refreshes can read the index at once (the periodic one and one after an admin
/// change): the cursor never moves back within one index.
fn advance_halt_cursor(gw: &Gateway, next: HaltCursor) {
    let mut c = gw
        .limits
        .halt_cursor
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if next.is_past(&c) {
        *c = next;
    }
}

/// The guard tripped on this call: record the incident (the halt is persisted before
/// the 409 goes out, so a restart keeps it), alert, and refuse, unless in dry run.
/// `halted_ms`: the halt's time as Redis recorded it (else this replica's clock).
async fn trip(
    gw: &Arc<Gateway>,
    attr: &Attribution,
    task: &str,
    halt: Halt,
    dry_run: bool,
    request_id: &str,
    halted_ms: Option<i64>,
) -> Result<(), ApiError> {
    gw.limits.stats.halts.fetch_add(1, Ordering::Relaxed);
    let mut evidence = halt.evidence.clone();
    if let Value::Object(e) = &mut evidence {
        e.insert("request_id".into(), Value::from(request_id));
        e.insert("agent".into(), Value::from(attr.agent.clone()));
    }
    let store = gw.store.clone();
    let (t, agent, kind, reason, ev, rid) = (
        task.to_string(),
        attr.agent.clone(),
        halt.kind.as_str(),
        halt.reason.clone(),
        evidence.clone(),
        request_id.to_string(),
    );
    let persisted = tokio::task::spawn_blocking(move || {
        store.record_incident(
            &tollgate_store::tasks::NewIncident {
                task: &t,
                agent: agent.as_deref(),
                kind,
                reason: &reason,
                evidence: &ev,
                dry_run,
                request_id: Some(&rid),
            },
            halted_ms.unwrap_or_else(now_ms),
        )
    })
    .await;
    match persisted {
        Ok(Ok(_)) => gw.limits.guard.persisted(task),
        Ok(Err(e)) => tracing::error!(task, error = %e, "could not persist the halt"),
        Err(e) => tracing::error!(task, error = %e, "could not persist the halt"),
    }
    alerts::send(gw, task_alert(attr, task, &halt, &evidence, dry_run));
    if dry_run {
        tracing::warn!(
            task,
            kind = halt.kind.as_str(),
            "guard (dry run): {}",
            halt.reason
        );
        return Ok(());
    }
    tracing::warn!(
        task,
        kind = halt.kind.as_str(),
        "task halted: {}",
        halt.reason
    );
    Err(ApiError::TaskHalted {
        task: task.to_string(),
        reason: halt.reason,
    })
}

fn task_alert(
    attr: &Attribution,
    task: &str,
    halt: &Halt,
    evidence: &Value,
    dry_run: bool,
) -> Alert {
    let agent = attr.agent.as_deref().unwrap_or("-");
    let calls = evidence["calls"].as_u64().unwrap_or(0);
    let cost = evidence["cost_usd"].as_str().unwrap_or("0").to_string();
    let (title, verb) = if dry_run {
        ("Runaway agent (dry run)".to_string(), "would have halted")
    } else {
        ("Task halted".to_string(), "halted")
    };
    Alert {
        kind: if dry_run {
            "task_flagged"
        } else {
            "task_halted"
        },
        subject: task.to_string(),
        title: format!("{title}: {task}"),
        text: format!(
            "tollgate {verb} task `{task}` of agent `{agent}`: {}. {calls} calls, ${cost} so far.",
            halt.reason
        ),
        fields: vec![
            ("Task".into(), task.to_string()),
            ("Agent".into(), agent.to_string()),
            ("Why".into(), halt.kind.as_str().to_string()),
            ("Calls".into(), calls.to_string()),
            ("Cost so far".into(), format!("${cost}")),
            (
                "Team / user".into(),
                format!(
                    "{} / {}",
                    attr.team.as_deref().unwrap_or("-"),
                    attr.user.as_deref().unwrap_or("-")
                ),
            ),
        ],
        excerpt: evidence["repeated"]
            .as_str()
            .or_else(|| evidence["last"].as_str())
            .map(str::to_string),
        footer: if dry_run {
            "Dry run: the task keeps running. Set `guard.dry_run = false` to halt.".into()
        } else {
            format!(
                "Every later call gets 409 task_halted. Release: `tollgate tasks release {task}`"
            )
        },
    }
}

/// Settle a ticket with the request's final row. Called once, from the meter's
/// settlement, whatever path the request took.
pub fn settle(gw: &Arc<Gateway>, ticket: Ticket, row: &LedgerRow) {
    let now = now_ms();
    if let Some(task) = &ticket.task {
        gw.limits.guard.record_cost(task, row.cost, now);
        if let Counters::Redis(r) = &gw.limits.counters
            && row.cost > Money::ZERO
            && let Some(run) = ticket.task_run
        {
            share_task_cost(gw, r, task, run, row);
        }
    }
    let Some(res) = ticket.reservation else {
        return;
    };
    let rate_actual: Vec<u64> = ticket
        .rate_kinds
        .iter()
        .map(|k| match k {
            RateKind::Requests => 1,
            RateKind::Tokens => row.usage.total(),
            RateKind::Usd => row.cost.nanos().max(0) as u64,
        })
        .collect();
    let actual = row.cost;
    match &gw.limits.counters {
        Counters::Memory(m) => {
            let out = m.settle(&res, actual, &rate_actual);
            settled(gw, &ticket.lines, &out, &row.request_id);
        }
        Counters::Redis(_) => {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                tracing::error!(request_id = %row.request_id, "settlement outside a runtime; the hold is reclaimed after budgets.hold_s");
                return;
            };
            let gw2 = gw.clone();
            let request_id = row.request_id.clone();
            gw.tasks.spawn_on(
                async move {
                    match gw2.limits.counters.settle(&res, actual, &rate_actual).await {
                        Ok(out) => settled(&gw2, &ticket.lines, &out, &request_id),
                        Err(e) => {
                            gw2.limits.stats.settle_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(request_id, error = %e, "settlement failed; the hold is reclaimed after budgets.hold_s");
                        }
                    }
                },
                &handle,
            );
        }
    }
}

/// Add a settled call's cost to the shared totals of the run of its task it was counted
/// in, from a tracked task.
fn share_task_cost(
    gw: &Arc<Gateway>,
    redis: &RedisCounters,
    task: &str,
    run: TaskRun,
    row: &LedgerRow,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::error!(request_id = %row.request_id, "task cost outside a runtime; not shared");
        return;
    };
    let (redis, task, cost, id) = (
        redis.clone(),
        task.to_string(),
        row.cost,
        row.request_id.clone(),
    );
    gw.tasks.spawn_on(
        async move {
            if let Err(e) = redis.task_cost(&task, run, cost, now_ms(), &id).await {
                tracing::error!(task, request_id = id, error = %e, "could not add the call's cost to the task's shared totals");
            }
        },
        &handle,
    );
}

/// After settling: record overage, send threshold alerts.
fn settled(gw: &Arc<Gateway>, lines: &[LineInfo], out: &[SettledLine], request_id: &str) {
    gw.limits.stats.settled.fetch_add(1, Ordering::Relaxed);
    if let Some(over) = out.iter().map(|s| s.overage).max()
        && over > Money::ZERO
    {
        gw.limits.stats.overages.fetch_add(1, Ordering::Relaxed);
        gw.limits
            .stats
            .overage_nanos
            .fetch_add(over.nanos(), Ordering::Relaxed);
        tracing::warn!(request_id, overage_usd = %over, "actual cost exceeded the reservation");
    }
    for (info, s) in lines.iter().zip(out) {
        for (limit, hard, alert_at) in &info.rules {
            for pct in crossed_thresholds(*limit, s.spent_before, s.spent_after, alert_at) {
                alerts::send(gw, budget_alert(info, *limit, *hard, pct, s.spent_after));
            }
        }
    }
}

fn budget_alert(info: &LineInfo, limit: Money, hard: bool, pct: u8, spent: Money) -> Alert {
    let period = period_text(info.period, &info.label);
    let what = if pct >= 100 && hard {
        "is exhausted: further requests are refused (402 budget_exceeded)"
    } else if pct >= 100 {
        "is used up (a soft budget: requests continue)"
    } else {
        "crossed an alert threshold"
    };
    Alert {
        kind: "budget_threshold",
        subject: format!("{} {}", info.scope, period),
        title: format!("Budget {pct}%: {}", info.scope),
        text: format!(
            "The {period} budget of {} {what}: ${spent} spent of ${limit} ({pct}% threshold).",
            info.scope
        ),
        fields: vec![
            ("Scope".into(), info.scope.to_string()),
            ("Period".into(), period.clone()),
            ("Spent".into(), format!("${spent}")),
            (
                "Limit".into(),
                format!("${limit}{}", if hard { "" } else { " (soft)" }),
            ),
        ],
        excerpt: None,
        footer: "Adjust with `tollgate budgets set`; see `tollgate budgets show`.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::budget::ScopeSpec;

    #[test]
    fn database_budgets_replace_config_ones_on_the_same_scope_and_period() {
        let rule = |scope: &str, period, usd: i64| BudgetRule {
            scope: ScopeSpec::parse(scope).unwrap(),
            period,
            limit: Money::from_nanos(usd),
            hard: true,
            alert_at: vec![],
        };
        let merged = merge_rules(
            &[
                rule("org", Period::Month, 1),
                rule("team:a", Period::Day, 2),
            ],
            &[
                rule("team:a", Period::Day, 3),
                rule("team:a", Period::Week, 4),
            ],
        );
        let limits: Vec<i64> = merged.iter().map(|r| r.limit.nanos()).collect();
        assert_eq!(limits, [1, 3, 4]);
    }

    #[test]
    fn estimates_count_the_prompt_and_read_max_tokens() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"Hello!"}],"max_tokens":50}"#,
        )
        .unwrap();
        let cache = TokenCache::default();
        let e = estimate(&cache, Encoding::O200kBase, &body);
        assert!(e.chat && e.prompt_tokens > 3);
        // Cached per message: the same count, and the same as counting whole.
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(e.prompt_tokens, Encoding::O200kBase.count_chat_prompt(msgs));
        assert_eq!(
            estimate(&cache, Encoding::O200kBase, &body).prompt_tokens,
            e.prompt_tokens
        );
        assert_eq!(e.max_output, Some(50));
        let emb: Map<String, Value> = serde_json::from_str(r#"{"input":["a b c"]}"#).unwrap();
        let e = estimate(&cache, Encoding::Cl100kBase, &emb);
        assert_eq!((e.chat, e.max_output), (false, Some(0)));
        let mut b = Map::new();
        set_max_tokens(&mut b, "o3-mini", 9);
        assert_eq!(b["max_completion_tokens"], 9);
        let mut b = Map::new();
        set_max_tokens(&mut b, "gpt-4o", 9);
        assert_eq!(b["max_tokens"], 9);
    }
}

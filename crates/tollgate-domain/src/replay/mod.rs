//! What-if replay: re-price a recorded workload under another policy.
//!
//! A [`Replay`] takes ledger rows oldest first (a stream: it keeps only per-group sums,
//! the prompt-cache simulation's last arrival per prefix and the tasks seen per group)
//! and, for each row, works out what the request would have cost had another policy been
//! in force. The levers, in the order they act on a row:
//!
//! 1. **Response cache** ([`ResponseCacheLever`]): off, every recorded hit is a miss and
//!    pays for its recorded usage; at a higher similarity threshold, semantic hits below
//!    it become misses. A lower threshold cannot be replayed (the similarity of a miss is
//!    not recorded), nor new exact hits.
//! 2. **Pruning** ([`PruningLever`]): off, a pruned row is sent unpruned (the removed
//!    tokens as uncached input, what it wrote to the prompt cache read instead, as the
//!    meter's own `cost_without_pruning` counts it).
//! 3. **Routing** ([`RoutePolicy`] per routed name): the row's recorded router score
//!    mapped through another [`TierPolicy`] and ladder; a row that would have run on a
//!    lighter tier than it did is a quality risk.
//! 4. **Model swap** ([`Swap`]): a deployment's traffic re-priced as another target's,
//!    every token count scaled by the tokenizer ratio between the two (an approximation:
//!    the same text in another tokenizer; 1 when both use the same encoding). A swap
//!    to a lighter model is a quality risk like a lighter tier.
//! 5. **Prompt caching** ([`PromptCacheLever`]): off, every prompt token at the input
//!    rate; on with a TTL, rows that used no prompt cache get one simulated on their
//!    recorded stable prefix (tools and system prompt: hash and token count): the first
//!    arrival of a prefix per tenant and target (or one after the TTL lapsed) writes it,
//!    a later one within the TTL reads it, each read refreshing the TTL, as the providers
//!    do; prefixes shorter than the target model's minimum cacheable length do neither.
//! 6. **Prices** ([`Catalog`]): every target's price; a row whose deployment, token
//!    counts and price table are unchanged keeps its recorded cost exactly, any other is
//!    priced with [`crate::cost::cost`] at its recorded service tier.
//!
//! Replaying the current policy (no lever, the current catalog) reproduces the recorded
//! cost exactly, row by row; so does re-pricing every row at the same prices under
//! another table hash (a property test below checks both).
//!
//! Quality risk: the share of successful tasks (outcomes recorded as `success`) that had
//! at least one call moved to a lighter tier. Pure: no clock, no IO.

use crate::cost::cost;
use crate::ledger::{CacheKind, LedgerRow};
use crate::money::Money;
use crate::pricing::ModelPrice;
use crate::prompt_cache::Ttl;
use crate::report::GroupBy;
use crate::routing::TierPolicy;
use crate::usage::Usage;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Parts per million: 1.0 as a ratio.
pub const PPM: u64 = 1_000_000;

/// Where a row can be sent: a deployment (or a catalog model named by the policy) with
/// its price and prompt-cache minimum.
#[derive(Debug, Clone)]
pub struct Target {
    pub price: Option<Arc<ModelPrice>>,
    /// The shortest prefix the target's provider caches; `None`: it does not cache (or
    /// the model has no known rule), so nothing is simulated on it.
    pub cache_min_tokens: Option<u64>,
    /// The tokenizer the target counts with (`o200k_base`, `claude`, ...), when known.
    pub encoding: Option<String>,
}

/// The prices a replay uses: targets by name, and the hash of the table they come from.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Hash of the price table; rows priced under another hash are re-priced.
    pub hash: String,
    pub targets: HashMap<String, Target>,
}

/// Send one deployment's traffic (or all, `from = "*"`) to another target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    pub from: String,
    pub to: String,
    /// Tokens on `to` per token on `from`, in millionths (1_000_000: the same count).
    pub token_ratio_ppm: u64,
    /// `to` is a lighter model than `from` (its calls count as a quality risk, as a
    /// call routed to a lighter tier does).
    pub lighter: bool,
}

/// Another tier policy and ladder for one routed name.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// Target names, lightest first.
    pub tiers: Vec<String>,
    pub policy: TierPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptCacheLever {
    /// The token classes as recorded.
    #[default]
    AsRecorded,
    /// No provider prompt caching: every prompt token at the input rate.
    Off,
    /// Cache the stable prefix of rows that used no prompt cache, with this TTL.
    On(Ttl),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseCacheLever {
    #[default]
    AsRecorded,
    /// No response cache: every hit pays.
    Off,
    /// Semantic hits below this similarity (millionths) become misses.
    MinSimilarity(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PruningLever {
    #[default]
    AsRecorded,
    /// Nothing pruned: pruned rows are sent whole.
    Off,
}

/// A policy to replay: all levers default to "as recorded".
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub swaps: Vec<Swap>,
    pub routes: BTreeMap<String, RoutePolicy>,
    pub prompt_cache: PromptCacheLever,
    pub response_cache: ResponseCacheLever,
    pub pruning: PruningLever,
}

/// One group's (or the total's) figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayGroup {
    pub key: String,
    pub requests: u64,
    /// What was charged.
    pub cost_now: Money,
    /// What the policy would have charged.
    pub cost_policy: Money,
    /// `cost_now − cost_policy` (negative: the policy costs more).
    pub saved: Money,
    /// Calls the policy runs on a lighter / heavier tier than they ran.
    pub lighter: u64,
    pub heavier: u64,
    /// Calls re-priced on a swapped target.
    pub swapped: u64,
    /// Response-cache hits the policy turns into paid calls.
    pub hits_lost: u64,
    /// Calls with a simulated prompt-cache read / write.
    pub cache_reads: u64,
    pub cache_writes: u64,
    /// Calls whose policy target has no price (kept at their recorded cost).
    pub unpriced: u64,
    /// Tasks with a `success` outcome seen in this group, and those of them with a call
    /// moved to a lighter tier.
    pub tasks_succeeded: u64,
    pub tasks_at_risk: u64,
    /// `tasks_at_risk / tasks_succeeded` in millionths (0 with no successful task).
    pub quality_risk_ppm: u64,
}

/// The replay's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub group_by: Option<&'static str>,
    pub groups: Vec<ReplayGroup>,
    pub total: ReplayGroup,
}

/// What the policy does to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReplay {
    pub cost: Money,
    pub target: String,
    pub usage: Usage,
    pub lighter: bool,
    pub heavier: bool,
    pub swapped: bool,
    pub hit_lost: bool,
    pub cache_read: bool,
    pub cache_write: bool,
    pub unpriced: bool,
}

#[derive(Default)]
struct Acc {
    requests: u64,
    now: i128,
    policy: i128,
    lighter: u64,
    heavier: u64,
    swapped: u64,
    hits_lost: u64,
    cache_reads: u64,
    cache_writes: u64,
    unpriced: u64,
    /// Task → moved to a lighter tier at least once.
    tasks: BTreeMap<String, bool>,
}

fn money(n: i128) -> Money {
    Money::from_nanos(n.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

impl Acc {
    fn add(&mut self, row: &LedgerRow, r: &RowReplay) {
        self.requests += 1;
        self.now += i128::from(row.cost.nanos());
        self.policy += i128::from(r.cost.nanos());
        self.lighter += u64::from(r.lighter);
        self.heavier += u64::from(r.heavier);
        self.swapped += u64::from(r.swapped);
        self.hits_lost += u64::from(r.hit_lost);
        self.cache_reads += u64::from(r.cache_read);
        self.cache_writes += u64::from(r.cache_write);
        self.unpriced += u64::from(r.unpriced);
        if let Some(t) = &row.attribution.task {
            let e = self.tasks.entry(t.clone()).or_insert(false);
            *e |= r.lighter;
        }
    }

    fn finish(&self, key: String, succeeded: &BTreeSet<String>) -> ReplayGroup {
        let ok = self.tasks.keys().filter(|t| succeeded.contains(*t)).count() as u64;
        let risk = self
            .tasks
            .iter()
            .filter(|(t, lighter)| **lighter && succeeded.contains(*t))
            .count() as u64;
        ReplayGroup {
            key,
            requests: self.requests,
            cost_now: money(self.now),
            cost_policy: money(self.policy),
            saved: money(self.now - self.policy),
            lighter: self.lighter,
            heavier: self.heavier,
            swapped: self.swapped,
            hits_lost: self.hits_lost,
            cache_reads: self.cache_reads,
            cache_writes: self.cache_writes,
            unpriced: self.unpriced,
            tasks_succeeded: ok,
            tasks_at_risk: risk,
            quality_risk_ppm: (risk * PPM).checked_div(ok).unwrap_or(0),
        }
    }
}

/// The group a row belongs to.
pub fn group_key(row: &LedgerRow, by: GroupBy) -> String {
    let a = &row.attribution;
    let v = match by {
        GroupBy::Agent => a.agent.clone(),
        GroupBy::Team => a.team.clone(),
        GroupBy::Task => a.task.clone(),
        GroupBy::Key => a.key_id.clone(),
        GroupBy::User => a.user.clone(),
        GroupBy::Model | GroupBy::Deployment => Some(row.route.deployment.clone()),
        GroupBy::Upstream => Some(row.route.upstream.clone()),
        GroupBy::Route => row.routing.as_ref().map(|r| r.name.clone()),
    };
    match v {
        Some(s) if !s.is_empty() => s,
        _ => "(none)".to_string(),
    }
}

/// `n × ratio`, rounded up (a converted count never rounds a token away).
fn scale(n: u64, ratio_ppm: u64) -> u64 {
    if ratio_ppm == PPM {
        return n;
    }
    let v = (u128::from(n) * u128::from(ratio_ppm)).div_ceil(u128::from(PPM));
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn flatten_cache(u: &Usage) -> Usage {
    Usage {
        input: u.prompt_total(),
        cache_read: 0,
        cache_write_5m: 0,
        cache_write_1h: 0,
        ..*u
    }
}

/// The replay engine: feed rows oldest first, then [`Replay::finish`].
pub struct Replay {
    policy: Policy,
    catalog: Catalog,
    by: Option<GroupBy>,
    total: Acc,
    groups: BTreeMap<String, Acc>,
    /// (tenant, target, prefix hash) → until when the provider holds the prefix.
    prefixes: HashMap<(String, String, String), i64>,
}

impl Replay {
    pub fn new(policy: Policy, catalog: Catalog, by: Option<GroupBy>) -> Replay {
        Replay {
            policy,
            catalog,
            by,
            total: Acc::default(),
            groups: BTreeMap::new(),
            prefixes: HashMap::new(),
        }
    }

    /// Replay one row (rows must come oldest first for the prompt-cache simulation).
    pub fn add(&mut self, row: &LedgerRow) -> RowReplay {
        let r = self.replay_row(row);
        self.total.add(row, &r);
        if let Some(by) = self.by {
            self.groups
                .entry(group_key(row, by))
                .or_default()
                .add(row, &r);
        }
        r
    }

    /// The report; `succeeded`: the tasks whose outcome is `success`.
    pub fn finish(self, succeeded: &BTreeSet<String>) -> ReplayReport {
        ReplayReport {
            group_by: self.by.map(GroupBy::as_str),
            groups: self
                .groups
                .iter()
                .map(|(k, a)| a.finish(k.clone(), succeeded))
                .collect(),
            total: self.total.finish("total".into(), succeeded),
        }
    }

    fn replay_row(&mut self, row: &LedgerRow) -> RowReplay {
        let recorded = row.route.deployment.clone();
        let mut out = RowReplay {
            cost: row.cost,
            target: recorded.clone(),
            usage: row.usage,
            lighter: false,
            heavier: false,
            swapped: false,
            hit_lost: false,
            cache_read: false,
            cache_write: false,
            unpriced: false,
        };
        if recorded.is_empty() {
            // Never reached a deployment (rejected before resolving): nothing to re-price.
            return out;
        }
        // 1. Response cache.
        if let Some(c) = &row.cache
            && c.kind.is_hit()
        {
            let lost = match self.policy.response_cache {
                ResponseCacheLever::AsRecorded => false,
                ResponseCacheLever::Off => true,
                ResponseCacheLever::MinSimilarity(min) => {
                    c.kind == CacheKind::ResponseSemantic
                        && c.similarity_ppm.is_none_or(|s| s < min)
                }
            };
            if !lost {
                return out; // still answered from the cache: free.
            }
            out.hit_lost = true;
        }
        let mut usage = row.usage;
        let mut changed = out.hit_lost;
        // 2. Pruning.
        if self.policy.pruning == PruningLever::Off
            && let Some(p) = &row.prune
            && usage.prompt_total() > 0
        {
            let removed = p.tokens_before.saturating_sub(p.tokens_after);
            if removed > 0 {
                usage = Usage {
                    input: usage.input.saturating_add(removed),
                    cache_read: usage
                        .cache_read
                        .saturating_add(usage.cache_write_5m)
                        .saturating_add(usage.cache_write_1h),
                    cache_write_5m: 0,
                    cache_write_1h: 0,
                    ..usage
                };
                changed = true;
            }
        }
        // 3. Routing.
        let mut target = recorded.clone();
        if let Some(rr) = &row.routing
            && let Some(rp) = self.policy.routes.get(&rr.name)
            && !rp.tiers.is_empty()
        {
            let tier = rp
                .policy
                .tier(f64::from(rr.score_ppm) / PPM as f64)
                .min(rp.tiers.len() - 1);
            // Compare with the tier the request actually ran on (shadow mode: the route's
            // default, which served it; its position in the new ladder, else the recorded tier).
            let ran = rp
                .tiers
                .iter()
                .position(|t| *t == recorded)
                .unwrap_or(rr.tier as usize);
            out.lighter = tier < ran;
            out.heavier = tier > ran;
            target = rp.tiers[tier].clone();
        }
        // 4. Model swap.
        let mut ratio = PPM;
        if let Some(s) = self
            .policy
            .swaps
            .iter()
            .find(|s| s.from == target || s.from == "*")
            && s.to != target
        {
            target = s.to.clone();
            ratio = s.token_ratio_ppm;
            out.swapped = true;
            out.lighter |= s.lighter;
        }
        if target != recorded {
            changed = true;
        }
        if ratio != PPM {
            usage = Usage {
                input: scale(usage.input, ratio),
                cache_read: scale(usage.cache_read, ratio),
                cache_write_5m: scale(usage.cache_write_5m, ratio),
                cache_write_1h: scale(usage.cache_write_1h, ratio),
                output: scale(usage.output, ratio),
                reasoning: scale(usage.reasoning, ratio),
            };
        }
        // 5. Prompt caching.
        let tgt = self.catalog.targets.get(&target);
        match self.policy.prompt_cache {
            PromptCacheLever::AsRecorded => {}
            PromptCacheLever::Off => {
                let flat = flatten_cache(&usage);
                changed |= flat != usage;
                usage = flat;
            }
            PromptCacheLever::On(ttl) => {
                let uses_cache = usage.prompt_total() != usage.input;
                if let Some(p) = &row.prefix
                    && let Some(min) = tgt.and_then(|t| t.cache_min_tokens)
                {
                    let tokens = scale(p.tokens, ratio).min(usage.prompt_total());
                    if tokens >= min && tokens > 0 {
                        let tenant = row.attribution.key_id.clone().unwrap_or_default();
                        let slot = self
                            .prefixes
                            .entry((tenant, target.clone(), p.hash.clone()))
                            .or_insert(i64::MIN);
                        // A row that used the provider's cache keeps its recorded token
                        // classes; it still holds the prefix warm for the rows after it.
                        if !uses_cache {
                            usage.input -= tokens;
                            if *slot >= row.ts_ms {
                                usage.cache_read += tokens;
                                out.cache_read = true;
                            } else {
                                match ttl {
                                    Ttl::FiveMinutes => usage.cache_write_5m += tokens,
                                    Ttl::OneHour => usage.cache_write_1h += tokens,
                                }
                                out.cache_write = true;
                            }
                            changed = true;
                        }
                        *slot = row.ts_ms.saturating_add(ttl.ms());
                    }
                }
            }
        }
        out.target = target;
        out.usage = usage;
        // 6. Prices.
        let same_table = self.catalog.hash == row.price_hash;
        if !changed && same_table {
            return out;
        }
        match tgt
            .and_then(|t| t.price.as_deref())
            .and_then(|p| cost(&usage, p, row.service_tier.as_deref()))
        {
            Some(c) => out.cost = c.charged,
            None if !changed && !row.priced => out.cost = row.cost,
            None => {
                out.unpriced = true;
                out.cost = row.cost;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;

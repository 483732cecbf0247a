//! `[guard]`: the runaway-agent guard's per-task limits, with overrides per agent.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use tollgate_domain::loopguard::{GuardLimits, Sampling};
use tollgate_domain::money::Money;

use super::usd::{UsdText, usd};

/// Per-task limits; 0 disables a limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardLimits {
    pub dry_run: Option<bool>,
    pub max_iterations: Option<u64>,
    pub max_cost_usd: Option<UsdText>,
    pub max_duration_s: Option<u64>,
    pub max_usd_per_minute: Option<UsdText>,
    pub loop_window: Option<u64>,
    pub loop_max_repeats: Option<u64>,
    pub loop_max_distance: Option<u64>,
    pub no_progress_calls: Option<u64>,
    pub min_novelty_pct: Option<u64>,
    /// `answers` (default) or `loop`: see [`Sampling`].
    pub sampling: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// Default true.
    pub enabled: Option<bool>,
    pub dry_run: Option<bool>,
    pub max_iterations: Option<u64>,
    pub max_cost_usd: Option<UsdText>,
    pub max_duration_s: Option<u64>,
    pub max_usd_per_minute: Option<UsdText>,
    pub loop_window: Option<u64>,
    pub loop_max_repeats: Option<u64>,
    pub loop_max_distance: Option<u64>,
    pub no_progress_calls: Option<u64>,
    pub min_novelty_pct: Option<u64>,
    /// `answers` (default): a repeated call that asks for a fresh sample (temperature
    /// above 0, `n` above 1, a seed) is a repeat only if the answers repeat too;
    /// `loop`: the prompt alone decides.
    pub sampling: Option<String>,
    /// Overrides per agent name.
    #[serde(default)]
    pub agents: BTreeMap<String, RawGuardLimits>,
}

#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub enabled: bool,
    pub dry_run: bool,
    pub defaults: GuardLimits,
    /// Per agent: its limits and whether it only alerts.
    pub agents: HashMap<String, (GuardLimits, bool)>,
}

impl GuardConfig {
    /// The limits and dry-run flag for `agent`'s tasks.
    pub fn for_agent(&self, agent: Option<&str>) -> (&GuardLimits, bool) {
        match agent.and_then(|a| self.agents.get(a)) {
            Some((l, dry)) => (l, *dry),
            None => (&self.defaults, self.dry_run),
        }
    }
}

/// Apply `raw` over `base`; a 0 disables a limit.
fn guard_limits(
    errs: &mut Vec<String>,
    at: &str,
    base: &GuardLimits,
    raw: &RawGuardLimits,
) -> GuardLimits {
    let nz = |v: Option<u64>, old: Option<u64>| match v {
        Some(0) => None,
        Some(n) => Some(n),
        None => old,
    };
    let mut g = base.clone();
    g.max_iterations = nz(raw.max_iterations, g.max_iterations);
    g.max_duration_ms = match raw.max_duration_s {
        Some(0) => None,
        Some(s) => Some(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
        None => g.max_duration_ms,
    };
    if raw.max_cost_usd.is_some() {
        g.max_cost = usd(errs, &format!("{at}.max_cost_usd"), &raw.max_cost_usd)
            .filter(|m| *m > Money::ZERO);
    }
    if raw.max_usd_per_minute.is_some() {
        g.max_cost_per_minute = usd(
            errs,
            &format!("{at}.max_usd_per_minute"),
            &raw.max_usd_per_minute,
        )
        .filter(|m| *m > Money::ZERO);
    }
    if let Some(w) = raw.loop_window {
        if !(2..=1000).contains(&w) {
            errs.push(format!("{at}.loop_window: must be between 2 and 1000"));
        }
        g.loop_window = w.clamp(2, 1000) as usize;
    }
    g.loop_max_repeats = nz(raw.loop_max_repeats, g.loop_max_repeats.map(u64::from))
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    if let Some(d) = raw.loop_max_distance {
        if d > 32 {
            errs.push(format!("{at}.loop_max_distance: at most 32 of 64 bits"));
        }
        g.loop_max_distance = d.min(32) as u32;
    }
    g.no_progress_calls = nz(raw.no_progress_calls, g.no_progress_calls.map(u64::from))
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    if let Some(p) = raw.min_novelty_pct {
        if p > 100 {
            errs.push(format!("{at}.min_novelty_pct: at most 100"));
        }
        g.min_novelty_pct = p.min(100) as u8;
    }
    match raw.sampling.as_deref() {
        None => {}
        Some("answers") => g.sampling = Sampling::Answers,
        Some("loop") => g.sampling = Sampling::Loop,
        Some(other) => errs.push(format!(
            "{at}.sampling: {other:?} is not \"answers\" or \"loop\""
        )),
    }
    g
}

/// Validate `[guard]`.
pub fn validate(guard: &RawGuard, errs: &mut Vec<String>) -> GuardConfig {
    let top = RawGuardLimits {
        dry_run: guard.dry_run,
        max_iterations: guard.max_iterations,
        max_cost_usd: guard.max_cost_usd.clone(),
        max_duration_s: guard.max_duration_s,
        max_usd_per_minute: guard.max_usd_per_minute.clone(),
        loop_window: guard.loop_window,
        loop_max_repeats: guard.loop_max_repeats,
        loop_max_distance: guard.loop_max_distance,
        no_progress_calls: guard.no_progress_calls,
        min_novelty_pct: guard.min_novelty_pct,
        sampling: guard.sampling.clone(),
    };
    let defaults = guard_limits(errs, "guard", &GuardLimits::default(), &top);
    let dry_run = guard.dry_run.unwrap_or(false);
    let agents = guard
        .agents
        .iter()
        .map(|(name, raw)| {
            let l = guard_limits(errs, &format!("guard.agents.{name}"), &defaults, raw);
            (name.clone(), (l, raw.dry_run.unwrap_or(dry_run)))
        })
        .collect();
    GuardConfig {
        enabled: guard.enabled.unwrap_or(true),
        dry_run,
        defaults,
        agents,
    }
}

//! `[budgets]`: budget limits per scope and period, where the counters live (memory or
//! Redis), and the reservation knobs (default output tokens, clamping, hold time).

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use tollgate_domain::budget::{BudgetRule, Period, ScopeSpec};

use super::usd::{UsdText, usd};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// IANA time zone for calendar periods (default `UTC`).
    pub time_zone: Option<String>,
    /// Output tokens reserved for a request that sets no `max_tokens` (default 4096).
    pub default_max_tokens: Option<u64>,
    /// Lower `max_tokens` to what the budget can still pay instead of refusing.
    pub clamp_max_tokens: Option<bool>,
    /// Refuse rather than clamp below this many output tokens (default 16).
    pub min_clamped_tokens: Option<u64>,
    /// `memory` (default) or `redis` (shared by replicas).
    pub counters: Option<String>,
    pub redis_url: Option<String>,
    /// Environment variable holding the Redis URL (when it carries a password).
    pub redis_url_env: Option<String>,
    pub redis_prefix: Option<String>,
    /// `deny` (default: refuse with 503 while counters are unreachable) or `allow`.
    pub on_counter_error: Option<String>,
    /// A reservation is never held longer than this, even by a live replica whose call
    /// hangs (default 7200 s).
    pub hold_s: Option<u64>,
    /// With Redis: an unsettled reservation is reclaimed this long after its replica
    /// last renewed it (every `lease_s / 3`), so a dead replica's holds come back within
    /// seconds (default 15 s; at least 3, at most `hold_s`).
    pub lease_s: Option<u64>,
    #[serde(default)]
    pub limits: Vec<RawBudget>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// `org`, `team:NAME`, `agent:NAME`, `user:NAME`, `key:ID`, `task:ID`, or `KIND:*`.
    pub scope: String,
    /// `day`, `week`, `month` or `lifetime`.
    pub period: String,
    pub limit_usd: Option<UsdText>,
    /// Default true: refuse past the limit. False: only alert.
    pub hard: Option<bool>,
    /// Percentages that alert once per period (default `[50, 80, 100]`).
    pub alert_at: Option<Vec<u64>>,
}

/// Where the counters live.
#[derive(Debug)]
pub enum CountersConfig {
    Memory,
    Redis { url: SecretString, prefix: String },
}

/// `[budgets]` validated.
#[derive(Debug)]
pub struct BudgetSettings {
    pub time_zone: jiff::tz::TimeZone,
    pub default_max_tokens: u64,
    pub clamp_max_tokens: bool,
    pub min_clamped_tokens: u64,
    pub counters: CountersConfig,
    pub fail_open: bool,
    pub hold_ms: i64,
    pub lease_ms: i64,
    pub rules: Vec<BudgetRule>,
}

/// Validate `[budgets]`, reading a Redis URL from `env` if it names a variable.
pub fn validate(
    budgets: &RawBudgets,
    env: &HashMap<String, String>,
    errs: &mut Vec<String>,
) -> BudgetSettings {
    let tz_name = budgets.time_zone.as_deref().unwrap_or("UTC");
    let time_zone = jiff::tz::TimeZone::get(tz_name).unwrap_or_else(|e| {
        errs.push(format!(
            "budgets.time_zone: {tz_name:?} is not a known IANA time zone: {e}"
        ));
        jiff::tz::TimeZone::UTC
    });
    let counters = match budgets.counters.as_deref() {
        None | Some("memory") => CountersConfig::Memory,
        Some("redis") => {
            let url = match (&budgets.redis_url, &budgets.redis_url_env) {
                (_, Some(var)) => env.get(var).filter(|v| !v.is_empty()).cloned().or_else(|| {
                    errs.push(format!(
                        "budgets.redis_url_env: environment variable {var} is not set"
                    ));
                    None
                }),
                (Some(u), None) => Some(u.clone()),
                (None, None) => {
                    errs.push("budgets.redis_url: needed when budgets.counters = \"redis\"".into());
                    None
                }
            };
            if let Some(u) = &url
                && let Err(e) = redis_url_ok(u)
            {
                errs.push(format!("budgets.redis_url: {e}"));
            }
            CountersConfig::Redis {
                url: SecretString::from(url.unwrap_or_default()),
                prefix: budgets
                    .redis_prefix
                    .clone()
                    .unwrap_or_else(|| "tollgate".into()),
            }
        }
        Some(o) => {
            errs.push(format!(
                "budgets.counters: {o:?} is not one of \"memory\", \"redis\""
            ));
            CountersConfig::Memory
        }
    };
    let fail_open = match budgets.on_counter_error.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(o) => {
            errs.push(format!(
                "budgets.on_counter_error: {o:?} is not one of \"deny\", \"allow\""
            ));
            false
        }
    };
    let mut rules: Vec<BudgetRule> = Vec::new();
    for (i, b) in budgets.limits.iter().enumerate() {
        let at = format!("budgets.limits[{i}]");
        let scope = ScopeSpec::parse(&b.scope).map_err(|e| errs.push(format!("{at}.scope: {e}")));
        let period = Period::parse(&b.period).ok_or_else(|| {
            errs.push(format!(
                "{at}.period: {:?} is not one of day, week, month, lifetime",
                b.period
            ))
        });
        let limit = match &b.limit_usd {
            Some(v) => usd(errs, &format!("{at}.limit_usd"), &Some(v.clone())),
            None => {
                errs.push(format!("{at}.limit_usd: required"));
                None
            }
        };
        let alert_at = b.alert_at.clone().unwrap_or_else(|| vec![50, 80, 100]);
        if alert_at.iter().any(|p| *p == 0 || *p > 100) {
            errs.push(format!("{at}.alert_at: percentages between 1 and 100"));
        }
        if let (Ok(scope), Ok(period), Some(limit)) = (scope, period, limit) {
            if rules.iter().any(|r| r.scope == scope && r.period == period) {
                errs.push(format!(
                    "{at}: a second budget on {scope} per {}",
                    period.as_str()
                ));
            }
            rules.push(BudgetRule {
                scope,
                period,
                limit,
                hard: b.hard.unwrap_or(true),
                alert_at: alert_at.iter().map(|p| (*p).clamp(1, 100) as u8).collect(),
            });
        }
    }
    let hold_s = budgets.hold_s.unwrap_or(7200).max(60);
    let hold_ms = i64::try_from(hold_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let lease_s = budgets.lease_s.unwrap_or(15);
    if !(3..=hold_s).contains(&lease_s) {
        errs.push(format!(
            "budgets.lease_s: {lease_s} must be between 3 and budgets.hold_s ({hold_s})"
        ));
    }
    let lease_ms = i64::try_from(lease_s.clamp(3, hold_s).saturating_mul(1000)).unwrap_or(i64::MAX);
    BudgetSettings {
        time_zone,
        default_max_tokens: budgets.default_max_tokens.unwrap_or(4096),
        clamp_max_tokens: budgets.clamp_max_tokens.unwrap_or(false),
        min_clamped_tokens: budgets.min_clamped_tokens.unwrap_or(16).max(1),
        counters,
        fail_open,
        hold_ms,
        lease_ms,
        rules,
    }
}

fn redis_url_ok(u: &str) -> Result<(), String> {
    match reqwest::Url::parse(u) {
        Ok(url) if ["redis", "rediss", "redis+unix", "unix"].contains(&url.scheme()) => Ok(()),
        Ok(url) => Err(format!("scheme {:?} is not redis or rediss", url.scheme())),
        Err(e) => Err(e.to_string()),
    }
}

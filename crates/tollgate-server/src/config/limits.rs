//! The `[budgets]`, `[[rate_limits]]`, `[guard]` and `[alerts]` sections: raw, and
//! validated into [`LimitsConfig`]. Time zones are looked up here (the domain only
//! takes a resolved `TimeZone`).

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tollgate_domain::budget::{BudgetRule, Period, ScopeSpec};
use tollgate_domain::loopguard::GuardLimits;
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::RateRule;

/// A dollar amount written as a string (`"12.50"`, exact) or a TOML number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UsdText {
    Text(String),
    Float(f64),
    Int(i64),
}

impl UsdText {
    pub fn parse(&self) -> Result<Money, String> {
        let text = match self {
            UsdText::Text(s) => s.clone(),
            UsdText::Float(f) => format!("{f}"),
            UsdText::Int(i) => i.to_string(),
        };
        let m = Money::parse_usd(&text).map_err(|e| e.to_string())?;
        if m.is_negative() {
            return Err(format!("{text:?} is negative"));
        }
        Ok(m)
    }
}

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
    /// An unsettled reservation is reclaimed after this long (default 7200 s).
    pub hold_s: Option<u64>,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub scope: String,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub usd_per_minute: Option<UsdText>,
}

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
    /// Overrides per agent name.
    #[serde(default)]
    pub agents: BTreeMap<String, RawGuardLimits>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// A Slack-compatible incoming webhook. Prefer `webhook_url_env`: such URLs are
    /// secrets.
    pub webhook_url: Option<String>,
    pub webhook_url_env: Option<String>,
    /// Delivery attempts before giving up (default 5).
    pub max_attempts: Option<u32>,
    /// Per attempt (default 5000 ms).
    pub timeout_ms: Option<u64>,
    /// First retry delay, doubling each time (default 500 ms).
    pub backoff_ms: Option<u64>,
}

/// Where the counters live.
#[derive(Debug)]
pub enum CountersConfig {
    Memory,
    Redis { url: SecretString, prefix: String },
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

#[derive(Debug)]
pub struct AlertConfig {
    pub webhook_url: Option<SecretString>,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub backoff: Duration,
}

/// Budgets, rate limits, the task guard and alerting, validated.
#[derive(Debug)]
pub struct LimitsConfig {
    pub time_zone: jiff::tz::TimeZone,
    pub default_max_tokens: u64,
    pub clamp_max_tokens: bool,
    pub min_clamped_tokens: u64,
    pub counters: CountersConfig,
    /// Forward requests while the counters are unreachable (unmetered by budgets).
    pub fail_open: bool,
    pub hold_ms: i64,
    /// Budgets from the config file (run-time budgets from the database are merged over
    /// them by the gateway).
    pub budgets: Vec<BudgetRule>,
    pub rate_limits: Vec<RateRule>,
    pub guard: GuardConfig,
    pub alerts: AlertConfig,
}

fn usd(errs: &mut Vec<String>, at: &str, v: &Option<UsdText>) -> Option<Money> {
    let v = v.as_ref()?;
    match v.parse() {
        Ok(m) => Some(m),
        Err(e) => {
            errs.push(format!("{at}: {e}"));
            None
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
    g
}

/// Validate the limits sections. Problems go to `errs` with their field paths.
pub fn validate(
    budgets: &RawBudgets,
    rate_limits: &[RawRateLimit],
    guard: &RawGuard,
    alerts: &RawAlerts,
    env: &HashMap<String, String>,
    errs: &mut Vec<String>,
) -> LimitsConfig {
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
    let mut rates = Vec::new();
    for (i, r) in rate_limits.iter().enumerate() {
        let at = format!("rate_limits[{i}]");
        let scope = ScopeSpec::parse(&r.scope).map_err(|e| errs.push(format!("{at}.scope: {e}")));
        let usd_pm = usd(errs, &format!("{at}.usd_per_minute"), &r.usd_per_minute);
        for (name, v) in [
            ("requests_per_minute", r.requests_per_minute),
            ("tokens_per_minute", r.tokens_per_minute),
        ] {
            if v == Some(0) {
                errs.push(format!("{at}.{name}: must be greater than zero"));
            }
        }
        if usd_pm == Some(Money::ZERO) {
            errs.push(format!("{at}.usd_per_minute: must be greater than zero"));
        }
        if r.requests_per_minute.is_none()
            && r.tokens_per_minute.is_none()
            && r.usd_per_minute.is_none()
        {
            errs.push(format!(
                "{at}: set requests_per_minute, tokens_per_minute or usd_per_minute"
            ));
        }
        if let Ok(scope) = scope {
            rates.push(RateRule {
                scope,
                requests_per_minute: r.requests_per_minute.filter(|v| *v > 0),
                tokens_per_minute: r.tokens_per_minute.filter(|v| *v > 0),
                usd_per_minute: usd_pm.filter(|m| *m > Money::ZERO),
            });
        }
    }
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
    let webhook_url = match (&alerts.webhook_url, &alerts.webhook_url_env) {
        (_, Some(var)) => match env.get(var).filter(|v| !v.is_empty()) {
            Some(v) => Some(v.clone()),
            None => {
                errs.push(format!(
                    "alerts.webhook_url_env: environment variable {var} is not set"
                ));
                None
            }
        },
        (Some(u), None) => Some(u.clone()),
        (None, None) => None,
    };
    if let Some(u) = &webhook_url {
        match reqwest::Url::parse(u) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            _ => errs.push("alerts.webhook_url: not an http(s) URL".into()),
        }
    }
    LimitsConfig {
        time_zone,
        default_max_tokens: budgets.default_max_tokens.unwrap_or(4096),
        clamp_max_tokens: budgets.clamp_max_tokens.unwrap_or(false),
        min_clamped_tokens: budgets.min_clamped_tokens.unwrap_or(16).max(1),
        counters,
        fail_open,
        hold_ms: i64::try_from(budgets.hold_s.unwrap_or(7200).max(60).saturating_mul(1000))
            .unwrap_or(i64::MAX),
        budgets: rules,
        rate_limits: rates,
        guard: GuardConfig {
            enabled: guard.enabled.unwrap_or(true),
            dry_run,
            defaults,
            agents,
        },
        alerts: AlertConfig {
            webhook_url: webhook_url.map(SecretString::from),
            max_attempts: alerts.max_attempts.unwrap_or(5).max(1),
            timeout: Duration::from_millis(alerts.timeout_ms.unwrap_or(5000).max(1)),
            backoff: Duration::from_millis(alerts.backoff_ms.unwrap_or(500)),
        },
    }
}

fn redis_url_ok(u: &str) -> Result<(), String> {
    match reqwest::Url::parse(u) {
        Ok(url) if ["redis", "rediss", "redis+unix", "unix"].contains(&url.scheme()) => Ok(()),
        Ok(url) => Err(format!("scheme {:?} is not redis or rediss", url.scheme())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RawConfig;
    use std::collections::HashMap;
    use tollgate_domain::money::Money;

    #[test]
    fn limits_sections_validate_with_paths() {
        let text = r#"
            [budgets]
            time_zone = "Europe/Paris"
            clamp_max_tokens = true
            [[budgets.limits]]
            scope = "team:support"
            period = "month"
            limit_usd = "500"
            alert_at = [50, 90]
            [[budgets.limits]]
            scope = "agent:*"
            period = "day"
            limit_usd = 2.5
            hard = false
            [[rate_limits]]
            scope = "agent:*"
            requests_per_minute = 60
            usd_per_minute = "0.5"
            [guard]
            loop_max_repeats = 3
            max_cost_usd = "10"
            [guard.agents.researcher]
            max_cost_usd = "25"
            dry_run = true
            loop_max_repeats = 0
            [alerts]
            webhook_url = "http://127.0.0.1:9/hook"
        "#;
        let env = HashMap::new();
        let c = RawConfig::from_toml(text, &env)
            .unwrap()
            .validate(&env)
            .unwrap();
        let l = &c.limits;
        assert_eq!(l.budgets.len(), 2);
        assert_eq!(l.budgets[0].limit, Money::from_nanos(500_000_000_000));
        assert_eq!(l.budgets[0].alert_at, vec![50, 90]);
        assert!(!l.budgets[1].hard);
        assert_eq!(
            l.rate_limits[0].usd_per_minute,
            Some(Money::from_nanos(500_000_000))
        );
        assert!(l.clamp_max_tokens);
        let (d, dry) = l.guard.for_agent(Some("planner"));
        assert_eq!(
            (d.loop_max_repeats, d.max_cost, dry),
            (Some(3), Some(Money::from_nanos(10_000_000_000)), false)
        );
        let (r, dry) = l.guard.for_agent(Some("researcher"));
        assert_eq!(
            (r.loop_max_repeats, r.max_cost, dry),
            (None, Some(Money::from_nanos(25_000_000_000)), true)
        );

        let bad = r#"
            [budgets]
            time_zone = "Mars/Olympus"
            counters = "redis"
            [[budgets.limits]]
            scope = "planet:x"
            period = "fortnight"
            [[rate_limits]]
            scope = "org"
            [alerts]
            webhook_url = "ftp://x"
        "#;
        let errs = RawConfig::from_toml(bad, &env)
            .unwrap()
            .validate(&env)
            .unwrap_err()
            .0
            .join("\n");
        for needle in [
            "budgets.time_zone",
            "budgets.redis_url",
            "budgets.limits[0].scope",
            "budgets.limits[0].period",
            "budgets.limits[0].limit_usd",
            "rate_limits[0]: set",
            "alerts.webhook_url",
        ] {
            assert!(errs.contains(needle), "missing {needle} in:\n{errs}");
        }
    }
}

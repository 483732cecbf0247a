//! Budgets, rate limits, the task guard and alerting, validated together into
//! [`LimitsConfig`] (what admission reads). Each section has its own file:
//! [`super::budgets`], [`super::rate_limits`], [`super::guard`], [`super::alerts`].
//! Time zones are looked up here (the domain only takes a resolved `TimeZone`).

use std::collections::HashMap;
use tollgate_domain::budget::BudgetRule;
use tollgate_domain::ratelimit::RateRule;

pub use super::alerts::{AlertConfig, RawAlerts};
pub use super::budgets::{CountersConfig, RawBudget, RawBudgets};
pub use super::guard::{GuardConfig, RawGuard, RawGuardLimits};
pub use super::rate_limits::RawRateLimit;
pub use super::usd::UsdText;

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
    /// With Redis: how long an unrenewed reservation is held (see `budgets.lease_s`).
    pub lease_ms: i64,
    /// Budgets from the config file (run-time budgets from the database are merged over
    /// them by the gateway).
    pub budgets: Vec<BudgetRule>,
    pub rate_limits: Vec<RateRule>,
    pub guard: GuardConfig,
    pub alerts: AlertConfig,
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
    let b = super::budgets::validate(budgets, env, errs);
    LimitsConfig {
        time_zone: b.time_zone,
        default_max_tokens: b.default_max_tokens,
        clamp_max_tokens: b.clamp_max_tokens,
        min_clamped_tokens: b.min_clamped_tokens,
        counters: b.counters,
        fail_open: b.fail_open,
        hold_ms: b.hold_ms,
        lease_ms: b.lease_ms,
        budgets: b.rules,
        rate_limits: super::rate_limits::validate(rate_limits, errs),
        guard: super::guard::validate(guard, errs),
        alerts: super::alerts::validate(alerts, env, errs),
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

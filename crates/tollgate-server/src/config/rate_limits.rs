//! `[[rate_limits]]`: requests, tokens and dollars per minute per scope.

use serde::Deserialize;
use tollgate_domain::budget::ScopeSpec;
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::RateRule;

use super::usd::{UsdText, usd};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub scope: String,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub usd_per_minute: Option<UsdText>,
}

/// Validate `[[rate_limits]]`.
pub fn validate(rate_limits: &[RawRateLimit], errs: &mut Vec<String>) -> Vec<RateRule> {
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
    rates
}

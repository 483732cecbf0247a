//! Rate limits: requests, tokens and dollars per minute per scope, over a rolling window.
//!
//! A sliding-window counter (two fixed windows, the previous one weighted by how much of
//! it still overlaps the last `window_ms`): constant memory per scope, no burst at a
//! window boundary, and the same arithmetic in memory and in the Redis script. A request
//! is charged its *estimate* when admitted (tokens: prompt + `max_tokens`, the way
//! OpenAI counts against TPM; dollars: the budget reservation); what it did not use is
//! refunded to the window it was charged in when it settles.

use crate::budget::{Scope, ScopeSpec};
use crate::money::Money;
use serde::{Deserialize, Serialize};

/// The default window: one minute.
pub const MINUTE_MS: i64 = 60_000;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKind {
    Requests,
    Tokens,
    /// nano-USD.
    Usd,
}

impl RateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
            RateKind::Usd => "usd",
        }
    }
}

/// Limits on one scope (or each scope of a kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRule {
    pub scope: ScopeSpec,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub usd_per_minute: Option<Money>,
}

impl RateRule {
    /// The limits this rule sets, as `(kind, limit per window)`.
    pub fn limits(&self) -> impl Iterator<Item = (RateKind, u64)> + '_ {
        [
            self.requests_per_minute.map(|l| (RateKind::Requests, l)),
            self.tokens_per_minute.map(|l| (RateKind::Tokens, l)),
            self.usd_per_minute
                .map(|l| (RateKind::Usd, u64::try_from(l.nanos()).unwrap_or(0))),
        ]
        .into_iter()
        .flatten()
    }
}

/// The counter key of `scope`'s `kind` limit in fixed window `index`.
pub fn rate_key(scope: &Scope, kind: RateKind, index: i64) -> String {
    format!("r:{}:{}:{index}", kind.as_str(), scope)
}

/// The fixed window containing `now_ms`, and how far into it `now_ms` is.
pub fn window_of(now_ms: i64, window_ms: i64) -> (i64, i64) {
    (now_ms.div_euclid(window_ms), now_ms.rem_euclid(window_ms))
}

/// The rolling count at `elapsed` ms into the current window: the current window's
/// count plus the share of the previous window still inside the last `window_ms`,
/// rounded up (never under-counts).
pub fn rolling(prev: u64, cur: u64, elapsed: i64, window_ms: i64) -> u64 {
    let w = i128::from(window_ms.max(1));
    let left = i128::from((window_ms - elapsed).clamp(0, window_ms));
    let weighted = (i128::from(prev) * left + w - 1) / w;
    u64::try_from(weighted)
        .unwrap_or(u64::MAX)
        .saturating_add(cur)
}

/// A request the limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRefusal {
    /// How long until a request of the same cost would be admitted.
    pub retry_after_ms: i64,
    pub remaining: u64,
}

/// Admit `cost` under `limit` with `prev`/`cur` already counted? On success, what
/// remains after it. A cost above the whole limit is treated as the limit (admitted only
/// into an empty window), so one large request is slow, never impossible.
pub fn admit(
    prev: u64,
    cur: u64,
    elapsed: i64,
    window_ms: i64,
    limit: u64,
    cost: u64,
) -> Result<u64, RateRefusal> {
    let cost = cost.min(limit);
    let used = rolling(prev, cur, elapsed, window_ms);
    if used.saturating_add(cost) <= limit && (limit > 0) {
        return Ok(limit - used - cost);
    }
    Err(RateRefusal {
        retry_after_ms: retry_after(prev, cur, elapsed, window_ms, limit, cost),
        remaining: limit.saturating_sub(used),
    })
}

/// The time until `rolling + cost <= limit`.
fn retry_after(prev: u64, cur: u64, elapsed: i64, window_ms: i64, limit: u64, cost: u64) -> i64 {
    let w = i128::from(window_ms);
    let room = i128::from(limit) - i128::from(cost);
    if room < 0 {
        return window_ms;
    }
    let (p, c, e0) = if i128::from(cur) > room {
        // Not before the next window starts; then the current count is the previous one.
        (i128::from(cur), 0i128, i128::from(window_ms - elapsed))
    } else {
        (i128::from(prev), i128::from(cur), 0i128)
    };
    // Need ceil(p × (w - e) / w) + c <= room, with e the time into that window.
    let budget = room - c;
    let e = if p == 0 || p <= budget {
        0
    } else {
        // p × (w - e) <= budget × w  ⇔  e >= w - budget × w / p
        w - (budget * w) / p
    };
    let since_now = if e0 > 0 {
        e0 + e
    } else {
        e - i128::from(elapsed)
    };
    i64::try_from(since_now.clamp(1, 2 * w)).unwrap_or(window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admits_up_to_the_limit_then_refuses() {
        let (mut cur, w) = (0u64, MINUTE_MS);
        for i in 0..10 {
            assert_eq!(admit(0, cur, 1000, w, 10, 1), Ok(9 - i));
            cur += 1;
        }
        let r = admit(0, cur, 1000, w, 10, 1).unwrap_err();
        assert_eq!(r.remaining, 0);
        // Only the next window frees room: 59 s from now (+ enough overlap to fade).
        assert!(r.retry_after_ms >= 59_000, "{r:?}");
    }

    #[test]
    fn previous_window_fades_linearly() {
        // 10 used in the previous window; half-way through the current one, 5 count.
        assert_eq!(rolling(10, 0, 30_000, 60_000), 5);
        assert_eq!(rolling(10, 0, 0, 60_000), 10);
        assert_eq!(rolling(10, 0, 60_000, 60_000), 0);
        assert!(admit(10, 0, 30_000, 60_000, 10, 5).is_ok());
        let r = admit(10, 0, 30_000, 60_000, 10, 6).unwrap_err();
        // 6 fits once the previous window weighs 4: 36 s into the window, 6 s from now.
        assert_eq!(r.retry_after_ms, 6_000);
    }

    #[test]
    fn a_cost_bigger_than_the_limit_waits_for_an_empty_window() {
        assert!(admit(0, 0, 0, 60_000, 100, 5_000).is_ok());
        assert!(admit(0, 1, 0, 60_000, 100, 5_000).is_err());
    }

    proptest! {
        #[test]
        fn retry_after_is_enough_and_not_much_more(
            prev in 0u64..1000, cur in 0u64..1000, elapsed in 0i64..60_000,
            limit in 1u64..1000, cost in 1u64..100,
        ) {
            let w = 60_000;
            if let Err(r) = admit(prev, cur, elapsed, w, limit, cost) {
                prop_assert!(r.retry_after_ms > 0);
                // Waiting that long (and charging nothing meanwhile) admits the request.
                let t = elapsed + r.retry_after_ms;
                let (p, c, e) = if t >= w { (cur, 0, t - w) } else { (prev, cur, t) };
                let (p, c, e) = if e >= w { (0, 0, 0) } else { (p, c, e) };
                prop_assert!(admit(p, c, e, w, limit, cost).is_ok(), "{r:?} → {t}");
                // And a millisecond less would not have (unless the minimum wait applies).
                if r.retry_after_ms > 1 {
                    let t = t - 1;
                    let (p, c, e) = if t >= w { (cur, 0, t - w) } else { (prev, cur, t) };
                    prop_assert!(e >= w || admit(p, c, e, w, limit, cost).is_err());
                }
            }
        }

        #[test]
        fn rolling_count_never_exceeds_the_limit(costs in proptest::collection::vec((0i64..3000, 1u64..20), 1..300)) {
            // Admit a stream of requests at increasing times; the rolling count stays ≤ limit.
            let (w, limit) = (60_000i64, 50u64);
            let mut t = 0i64;
            let mut counts: std::collections::HashMap<i64, u64> = Default::default();
            for (dt, cost) in costs {
                t += dt;
                let (idx, e) = window_of(t, w);
                let prev = counts.get(&(idx - 1)).copied().unwrap_or(0);
                let cur = counts.get(&idx).copied().unwrap_or(0);
                if admit(prev, cur, e, w, limit, cost).is_ok() {
                    *counts.entry(idx).or_default() += cost.min(limit);
                    let cur = counts[&idx];
                    prop_assert!(rolling(prev, cur, e, w) <= limit);
                }
            }
        }
    }
}

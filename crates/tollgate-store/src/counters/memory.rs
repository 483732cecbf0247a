//! Counters in this process's memory: one mutex, held only for the arithmetic.

use super::{Refusal, Reservation, ReserveRequest, Reserved, Seed};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tollgate_domain::budget::{Account, Book, SettledLine};
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::{self, window_of};

/// Sweep forgotten counters every this many operations.
const SWEEP_EVERY: u64 = 4096;

/// One rate limit's two fixed windows: constant memory per scope.
#[derive(Debug, Clone, Copy, Default)]
struct RateWindow {
    index: i64,
    cur: u64,
    prev: u64,
    window_ms: i64,
}

impl RateWindow {
    /// `(prev, cur)` as seen from window `idx`.
    fn at(&self, idx: i64) -> (u64, u64) {
        if self.index == idx {
            (self.prev, self.cur)
        } else if self.index == idx - 1 {
            (self.cur, 0)
        } else {
            (0, 0)
        }
    }

    fn charge(&mut self, idx: i64, cost: u64, window_ms: i64) {
        let (prev, cur) = self.at(idx);
        *self = RateWindow {
            index: idx,
            prev,
            cur: cur.saturating_add(cost),
            window_ms,
        };
    }

    fn refund(&mut self, idx: i64, amount: u64) {
        if self.index == idx {
            self.cur = self.cur.saturating_sub(amount);
        } else if self.index == idx + 1 {
            self.prev = self.prev.saturating_sub(amount);
        }
    }
}

#[derive(Default)]
struct Inner {
    book: Book,
    expiry: HashMap<String, i64>,
    rates: HashMap<String, RateWindow>,
    ops: u64,
}

/// In-process counters. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryCounters {
    inner: Mutex<Inner>,
}

impl MemoryCounters {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the arithmetic half done (every
        // mutation is a plain field update), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reserve(&self, req: &ReserveRequest) -> Result<Reserved, Refusal> {
        let mut g = self.lock();
        let inner = &mut *g;
        // Rate windows first (read only), so a refusal changes nothing.
        let mut rate_remaining = Vec::with_capacity(req.rate.len());
        for (i, r) in req.rate.iter().enumerate() {
            let (idx, elapsed) = window_of(req.now_ms, r.window_ms);
            let (prev, cur) = inner
                .rates
                .get(&r.base)
                .map(|w| w.at(idx))
                .unwrap_or_default();
            match ratelimit::admit(prev, cur, elapsed, r.window_ms, r.limit, r.cost) {
                Ok(left) => rate_remaining.push(left),
                Err(e) => {
                    return Err(Refusal::Rate {
                        line: i,
                        retry_after_ms: e.retry_after_ms,
                        remaining: e.remaining,
                    });
                }
            }
        }
        let budget_remaining = inner
            .book
            .reserve(&req.budget)
            .map_err(|s| Refusal::Budget {
                line: s.line,
                remaining: s.remaining,
            })?;
        for r in &req.rate {
            let (idx, _) = window_of(req.now_ms, r.window_ms);
            inner.rates.entry(r.base.clone()).or_default().charge(
                idx,
                r.cost.min(r.limit),
                r.window_ms,
            );
        }
        for (l, exp) in req.budget.iter().zip(&req.expire_at_ms) {
            if let Some(t) = exp {
                inner.expiry.insert(l.key.clone(), *t);
            }
        }
        inner.ops += 1;
        if inner.ops.is_multiple_of(SWEEP_EVERY) {
            sweep(inner, req.now_ms);
        }
        Ok(Reserved {
            budget_remaining,
            rate_remaining,
            reservation: req.reservation(),
        })
    }

    pub fn settle(
        &self,
        res: &Reservation,
        actual: Money,
        rate_actual: &[u64],
    ) -> Vec<SettledLine> {
        let mut g = self.lock();
        let out = g.book.settle(&res.budget, actual);
        for (i, r) in res.rate.iter().enumerate() {
            let charged = r.cost.min(r.limit);
            let used = rate_actual.get(i).copied().unwrap_or(charged);
            if used < charged
                && let Some(w) = g.rates.get_mut(&r.base)
            {
                w.refund(res.rate_window[i], charged - used);
            }
        }
        out
    }

    pub fn account(&self, key: &str) -> Account {
        self.lock().book.account(key)
    }

    pub fn seed(&self, entries: &[Seed]) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        for e in entries {
            if g.book.seed(&e.key, e.spent) {
                n += 1;
                if let Some(t) = e.expire_at_ms {
                    g.expiry.insert(e.key.clone(), t);
                }
            }
        }
        n
    }

    /// Counters currently held (for tests and `/healthz`).
    pub fn len(&self) -> usize {
        self.lock().book.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forget budget counters past their expiry and rate windows long over.
fn sweep(inner: &mut Inner, now_ms: i64) {
    let expired: Vec<String> = inner
        .expiry
        .iter()
        .filter(|(_, t)| **t <= now_ms)
        .map(|(k, _)| k.clone())
        .collect();
    for k in expired {
        if inner.book.remove_idle(&k) {
            inner.expiry.remove(&k);
        }
    }
    inner
        .rates
        .retain(|_, w| w.index >= window_of(now_ms, w.window_ms.max(1)).0 - 1);
}

//! With Redis counters: the reservations this replica holds open, and their leases.
//!
//! A reservation in Redis is reclaimed at its deadline unless renewed: the replica that
//! holds it renews every open one every `budgets.lease_s / 3` ([`Limits::renew_leases`],
//! from a tracked task), so a live replica's calls keep their holds however long they
//! run (up to `budgets.hold_s`), and a replica that died stops renewing: its holds come
//! back within one lease (plus the survivors' next refresh sweep).

use super::Limits;
use crate::clock::now_ms;
use crate::config::LimitsConfig;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use tollgate_store::counters::Counters;

const SHARDS: usize = 16;

/// Open reservation ids and when each was made (sharded maps; a lock is held only to
/// insert, remove or copy, never across an `.await`).
#[derive(Default)]
pub struct Leases {
    shards: [Mutex<HashMap<String, i64>>; SHARDS],
}

impl Leases {
    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        self.shards[(h.finish() % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self, id: &str, now_ms: i64) {
        self.shard(id).insert(id.to_string(), now_ms);
    }

    pub fn close(&self, id: &str) {
        self.shard(id).remove(id);
    }

    /// The ids to renew: opened after `since_ms` (older ones have reached `hold_s` and
    /// are let go, so a hung call cannot hold a budget for ever). The rest are forgotten.
    fn renewable(&self, since_ms: i64) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut m = s.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, opened| *opened > since_ms);
            out.extend(m.keys().cloned());
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Limits {
    /// Renew the leases of this replica's open reservations (Redis counters only).
    pub async fn renew_leases(&self, lc: &LimitsConfig) {
        let Counters::Redis(r) = &self.counters else {
            return;
        };
        let now = now_ms();
        let ids = self.leases.renewable(now - lc.hold_ms);
        if ids.is_empty() {
            return;
        }
        if let Err(e) = r.renew(&ids, now + lc.lease_ms).await {
            tracing::warn!(error = %e, reservations = ids.len(), "could not renew reservation leases");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_open_reservations_until_the_hold_ends() {
        let l = Leases::default();
        l.open("a", 1_000);
        l.open("b", 5_000);
        l.open("c", 6_000);
        l.close("c");
        let mut ids = l.renewable(0);
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        // Past a's hold: let go and forgotten.
        assert_eq!(l.renewable(2_000), ["b"]);
        assert_eq!(l.len(), 1);
    }
}

//! Exact response cache index: a bounded LRU map from a 128-bit request hash to a value id.

use super::{Bounds, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Index bytes charged per entry (key, value id, size, expiry, recency tick, map slots).
pub const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: ValueId,
    bytes: usize,
    expires_ms: u64,
    tick: u64,
}

/// Bounded LRU map by 128-bit key with a TTL.
#[derive(Debug)]
pub struct ExactIndex {
    bounds: Bounds,
    map: HashMap<u128, Entry>,
    lru: BTreeMap<u64, u128>,
    tick: u64,
    bytes: usize,
    expired: Vec<ValueId>,
}

impl ExactIndex {
    /// An empty index.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            map: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            expired: Vec::new(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The value for `key` if present and not expired; marks it most recently used. An
    /// expired entry is removed (its id is then in [`Self::drain_expired`]).
    pub fn get(&mut self, key: u128, now_ms: u64) -> Option<ValueId> {
        let e = *self.map.get(&key)?;
        if now_ms >= e.expires_ms {
            self.remove(key);
            self.expired.push(e.value);
            return None;
        }
        self.tick += 1;
        self.lru.remove(&e.tick);
        self.lru.insert(self.tick, key);
        if let Some(m) = self.map.get_mut(&key) {
            m.tick = self.tick;
        }
        Some(e.value)
    }

    /// Inserts (or replaces) `key → value`, `value_bytes` being the cached response's
    /// size. Returns the value ids no longer held (a replaced value, and what was evicted
    /// to fit), for the caller to drop. An entry larger than `max_bytes` alone is not
    /// kept (its own id comes back).
    pub fn insert(
        &mut self,
        key: u128,
        value: ValueId,
        value_bytes: usize,
        now_ms: u64,
    ) -> Vec<ValueId> {
        let mut gone = Vec::new();
        if let Some(old) = self.remove(key)
            && old != value
        {
            gone.push(old);
        }
        let bytes = ENTRY_OVERHEAD + value_bytes;
        if bytes > self.bounds.max_bytes || self.bounds.max_entries == 0 {
            gone.push(value);
            return gone;
        }
        while self.map.len() >= self.bounds.max_entries
            || self.bytes + bytes > self.bounds.max_bytes
        {
            let Some((_, &victim)) = self.lru.iter().next() else {
                break;
            };
            if let Some(v) = self.remove(victim) {
                gone.push(v);
            }
        }
        self.tick += 1;
        let expires_ms = now_ms.saturating_add(self.bounds.ttl_ms);
        self.map.insert(
            key,
            Entry {
                value,
                bytes,
                expires_ms,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, key);
        self.bytes += bytes;
        gone
    }

    /// Value ids removed because they expired, since the last call (for the caller to
    /// drop the responses).
    pub fn drain_expired(&mut self) -> Vec<ValueId> {
        std::mem::take(&mut self.expired)
    }

    /// Removes `key` if it maps to `value` (a value being dropped must not take a newer
    /// value under the same key with it). Returns whether it did.
    pub fn remove_value(&mut self, key: u128, value: ValueId) -> bool {
        if self.map.get(&key).is_some_and(|e| e.value == value) {
            self.remove(key);
            true
        } else {
            false
        }
    }

    /// Removes `key`; returns its value id if it was held.
    pub fn remove(&mut self, key: u128) -> Option<ValueId> {
        let e = self.map.remove(&key)?;
        self.lru.remove(&e.tick);
        self.bytes -= e.bytes;
        Some(e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(n: usize, bytes: usize) -> ExactIndex {
        ExactIndex::new(Bounds {
            max_entries: n,
            max_bytes: bytes,
            ttl_ms: 1000,
        })
    }

    #[test]
    fn lru_by_count_ttl_and_bytes() {
        let mut c = idx(2, 1 << 20);
        assert!(c.insert(1, 10, 0, 0).is_empty());
        assert!(c.insert(2, 20, 0, 0).is_empty());
        assert_eq!(c.get(1, 5), Some(10)); // 1 is now the most recent
        assert_eq!(c.insert(3, 30, 0, 5), vec![20]);
        assert_eq!(c.get(2, 5), None);
        assert_eq!(c.get(1, 999), Some(10));
        assert_eq!(c.get(1, 1000), None, "expired at insert + ttl");
        assert_eq!(c.drain_expired(), vec![10]);
        assert_eq!(c.len(), 1);

        let mut c = idx(100, 2 * ENTRY_OVERHEAD + 150);
        c.insert(1, 1, 100, 0);
        assert_eq!(c.insert(2, 2, 100, 0), vec![1], "bytes bound evicts");
        assert_eq!(c.bytes(), ENTRY_OVERHEAD + 100);
        assert_eq!(
            c.insert(3, 3, 10_000, 0),
            vec![3],
            "too large alone: not kept"
        );
        assert_eq!(
            c.insert(2, 4, 100, 0),
            vec![2],
            "replacing returns the old value"
        );
        assert_eq!(c.remove(2), Some(4));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }
}

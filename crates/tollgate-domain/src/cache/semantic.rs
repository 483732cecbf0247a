//! Semantic response cache index: per context key, the int8-quantised embeddings of the
//! cached requests' last user turns; a lookup returns the most similar entry of the same
//! context whose cosine reaches the threshold.
//!
//! Layout: one bucket per [`ContextKey`], its entries in parallel arrays (the codes of
//! all entries back to back, split into a prefix of a third of the dimensions and the
//! rest; scales, norms of the rest, expiries, ids), so a lookup is a linear pass over
//! contiguous memory. It is exact (no approximate index that could miss a match) but
//! prunes: the prefix dot product of every entry is computed, and the rest of an
//! entry's vector only when `prefix + |q_rest| × |v_rest|` (Cauchy–Schwarz: an upper
//! bound of its cosine) reaches both the threshold and the best match so far. Static
//! model dimensions come from a PCA, largest variance first, so the bound is tight.
//! (`benches/embed_cache.rs` measures 10k and 100k entries in one bucket.)
//! An embedding `v` (unit length) is stored as `codes = round(v / s)` with
//! `s = max|v| / 127`; cosine ≈ `Σ codes_a · codes_b × s_a × s_b`, within about 0.005 of
//! the `f32` cosine.

use super::{Bounds, ContextKey, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Index bytes charged per entry besides its `dim` code bytes: scale, tail norm, expiry
/// and id in the bucket (24), the entry record and its hash-map slot (~56), the recency
/// tree node (~40).
pub const ENTRY_OVERHEAD: usize = 120;

/// A match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The cached value's id.
    pub value: ValueId,
    /// Its cosine with the query (from the quantised codes).
    pub similarity: f32,
}

#[derive(Debug, Default)]
struct Bucket {
    head: Vec<i8>,
    tail: Vec<i8>,
    scales: Vec<f32>,
    /// Norm of each entry's tail codes times its scale.
    tail_norms: Vec<f32>,
    expires: Vec<u64>,
    ids: Vec<ValueId>,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    key: ContextKey,
    slot: usize,
    bytes: usize,
    tick: u64,
}

/// Bounded, TTL'd, LRU semantic index.
#[derive(Debug)]
pub struct SemanticIndex {
    dim: usize,
    head: usize,
    bounds: Bounds,
    buckets: HashMap<ContextKey, Bucket>,
    entries: HashMap<ValueId, Meta>,
    lru: BTreeMap<u64, ValueId>,
    tick: u64,
    bytes: usize,
    expired: Vec<ValueId>,
    scratch: Vec<i8>,
}

/// Quantises a vector to int8 codes, returning the scale.
fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let s = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.clear();
    out.extend(v.iter().map(|x| (x / s).round().clamp(-127.0, 127.0) as i8));
    s
}

#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            acc[k] += i32::from(x[k]) * i32::from(y[k]);
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += i32::from(*x) * i32::from(*y);
    }
    s
}

fn norm_i8(a: &[i8]) -> f32 {
    (dot_i8(a, a) as f32).sqrt()
}

/// Dimensions scanned for every entry; the rest only where the bound says the entry can
/// still win. A third of the vector (a multiple of 16), all of it below 48.
fn prefix_len(dim: usize) -> usize {
    if dim < 48 {
        dim
    } else {
        (dim / 3).div_ceil(16) * 16
    }
}

impl SemanticIndex {
    /// An empty index for embeddings of `dim` dimensions.
    pub fn new(dim: usize, bounds: Bounds) -> Self {
        Self {
            dim,
            head: prefix_len(dim),
            bounds,
            buckets: HashMap::new(),
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            expired: Vec::new(),
            scratch: Vec::with_capacity(dim),
        }
    }

    /// Embedding dimensions.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes charged against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes one entry is charged, before its value bytes.
    pub fn entry_bytes(&self) -> usize {
        self.dim + ENTRY_OVERHEAD
    }

    /// The entry of `key`'s context most similar to `query` (an L2-normalised embedding
    /// of `dim` values), if its cosine is at least `threshold`; marks it most recently
    /// used. Expired entries met on the way are removed (their ids are then in
    /// [`Self::drain_expired`]). A query of the wrong length finds nothing.
    pub fn lookup(
        &mut self,
        key: ContextKey,
        query: &[f32],
        threshold: f32,
        now_ms: u64,
    ) -> Option<Hit> {
        if query.len() != self.dim {
            return None;
        }
        let mut q = std::mem::take(&mut self.scratch);
        let qs = quantize(query, &mut q);
        let mut best: Option<(usize, f32)> = None;
        let mut stale = Vec::new();
        let (h, t) = (self.head, self.dim - self.head);
        let (qh, qt) = q.split_at(h);
        let q_tail = norm_i8(qt) * qs;
        if let Some(b) = self.buckets.get(&key) {
            for (slot, codes) in b.head.chunks_exact(h).enumerate() {
                if now_ms >= b.expires[slot] {
                    stale.push(b.ids[slot]);
                    continue;
                }
                let s = b.scales[slot];
                let head = dot_i8(qh, codes) as f32 * qs * s;
                let cutoff = best.map_or(threshold, |(_, bs)| bs.max(threshold));
                // 1e-4: float rounding of the bound, so the pruning never drops a winner
                if head + q_tail * b.tail_norms[slot] + 1e-4 < cutoff {
                    continue;
                }
                let tail = b
                    .tail
                    .get(slot * t..(slot + 1) * t)
                    .map_or(0, |v| dot_i8(qt, v));
                let sim = head + tail as f32 * qs * s;
                if best.is_none_or(|(_, bs)| sim > bs) {
                    best = Some((slot, sim));
                }
            }
        }
        self.scratch = q;
        let hit = match best {
            Some((slot, sim)) if sim >= threshold => {
                let value = self.buckets.get(&key).map(|b| b.ids[slot]);
                value.map(|value| Hit {
                    value,
                    similarity: sim.min(1.0),
                })
            }
            _ => None,
        };
        for id in stale {
            self.remove(id);
            self.expired.push(id);
        }
        if let Some(h) = hit {
            self.touch(h.value);
        }
        hit
    }

    /// Inserts (or replaces) `value` under `key` with the embedding of its last user
    /// turn, `value_bytes` being the cached response's size. Returns the value ids no
    /// longer held (what was evicted to fit, for the caller to drop). An entry larger
    /// than `max_bytes` alone, or an embedding of the wrong length, is not kept (its own
    /// id comes back).
    pub fn insert(
        &mut self,
        key: ContextKey,
        embedding: &[f32],
        value: ValueId,
        value_bytes: usize,
        now_ms: u64,
    ) -> Vec<ValueId> {
        let mut gone = Vec::new();
        self.remove(value);
        let bytes = self.entry_bytes() + value_bytes;
        if embedding.len() != self.dim
            || bytes > self.bounds.max_bytes
            || self.bounds.max_entries == 0
        {
            gone.push(value);
            return gone;
        }
        while self.entries.len() >= self.bounds.max_entries
            || self.bytes + bytes > self.bounds.max_bytes
        {
            let Some((_, &victim)) = self.lru.iter().next() else {
                break;
            };
            self.remove(victim);
            gone.push(victim);
        }
        let mut q = std::mem::take(&mut self.scratch);
        let s = quantize(embedding, &mut q);
        let b = self.buckets.entry(key).or_default();
        let slot = b.ids.len();
        let (qh, qt) = q.split_at(self.head);
        b.head.extend_from_slice(qh);
        b.tail.extend_from_slice(qt);
        b.tail_norms.push(norm_i8(qt) * s);
        b.scales.push(s);
        b.expires.push(now_ms.saturating_add(self.bounds.ttl_ms));
        b.ids.push(value);
        self.scratch = q;
        self.tick += 1;
        self.entries.insert(
            value,
            Meta {
                key,
                slot,
                bytes,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, value);
        self.bytes += bytes;
        gone
    }

    /// Removes `value`; true if it was held.
    pub fn remove(&mut self, value: ValueId) -> bool {
        let Some(m) = self.entries.remove(&value) else {
            return false;
        };
        self.lru.remove(&m.tick);
        self.bytes -= m.bytes;
        let (h, t) = (self.head, self.dim - self.head);
        let mut empty = false;
        if let Some(b) = self.buckets.get_mut(&m.key) {
            let last = b.ids.len() - 1;
            if m.slot != last {
                let moved = b.ids[last];
                b.head.copy_within(last * h..(last + 1) * h, m.slot * h);
                b.tail.copy_within(last * t..(last + 1) * t, m.slot * t);
                b.tail_norms[m.slot] = b.tail_norms[last];
                b.scales[m.slot] = b.scales[last];
                b.expires[m.slot] = b.expires[last];
                b.ids[m.slot] = moved;
                if let Some(mm) = self.entries.get_mut(&moved) {
                    mm.slot = m.slot;
                }
            }
            b.head.truncate(last * h);
            b.tail.truncate(last * t);
            b.tail_norms.truncate(last);
            b.scales.truncate(last);
            b.expires.truncate(last);
            b.ids.truncate(last);
            empty = last == 0;
        }
        if empty {
            self.buckets.remove(&m.key);
        }
        true
    }

    /// Value ids removed because they expired, since the last call.
    pub fn drain_expired(&mut self) -> Vec<ValueId> {
        std::mem::take(&mut self.expired)
    }

    fn touch(&mut self, value: ValueId) {
        if let Some(m) = self.entries.get_mut(&value) {
            self.lru.remove(&m.tick);
            self.tick += 1;
            m.tick = self.tick;
            self.lru.insert(self.tick, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        crate::embed::l2_normalize(&mut v);
        v
    }

    fn bounds(n: usize) -> Bounds {
        Bounds {
            max_entries: n,
            max_bytes: 1 << 30,
            ttl_ms: 1_000,
        }
    }

    #[test]
    fn finds_the_best_match_only_in_its_context_and_above_threshold() {
        let mut ix = SemanticIndex::new(32, bounds(100));
        let (k1, k2) = (ContextKey(1), ContextKey(2));
        for i in 0..20 {
            ix.insert(k1, &unit(i, 32), i, 0, 0);
        }
        ix.insert(k2, &unit(100, 32), 100, 0, 0);
        let hit = ix.lookup(k1, &unit(7, 32), 0.9, 10).unwrap();
        assert_eq!(hit.value, 7);
        assert!((hit.similarity - 1.0).abs() < 0.01);
        assert_eq!(ix.lookup(k2, &unit(7, 32), 0.9, 10), None, "other context");
        assert_eq!(
            ix.lookup(ContextKey(3), &unit(7, 32), 0.0, 10),
            None,
            "no bucket"
        );
        // a random unit vector has cosine ~0 with the stored ones
        assert_eq!(ix.lookup(k1, &unit(999, 32), 0.9, 10), None);
        assert_eq!(ix.lookup(k1, &[0.5; 3], 0.0, 10), None, "wrong length");
    }

    #[test]
    fn quantised_cosine_is_close_to_the_float_one() {
        let mut ix = SemanticIndex::new(96, bounds(10));
        let (a, b) = (unit(1, 96), unit(2, 96));
        let mut mix: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.8 * x + 0.2 * y).collect();
        crate::embed::l2_normalize(&mut mix);
        ix.insert(ContextKey(0), &a, 1, 0, 0);
        let exact = crate::embed::cosine(&a, &mix);
        let hit = ix.lookup(ContextKey(0), &mix, -1.0, 0).unwrap();
        assert!(
            (hit.similarity - exact).abs() < 0.01,
            "{} vs {exact}",
            hit.similarity
        );
    }

    #[test]
    fn evicts_least_recently_used_by_count_and_bytes_and_expires() {
        let k = ContextKey(9);
        let mut ix = SemanticIndex::new(16, bounds(3));
        for i in 0..3 {
            assert!(ix.insert(k, &unit(i, 16), i, 0, 0).is_empty());
        }
        assert!(ix.lookup(k, &unit(0, 16), 0.9, 1).is_some()); // 0 becomes most recent
        assert_eq!(ix.insert(k, &unit(3, 16), 3, 0, 1), vec![1]);
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.lookup(k, &unit(1, 16), 0.9, 1), None);
        // everything expires at insert + ttl
        assert_eq!(ix.lookup(k, &unit(3, 16), 0.9, 1_001), None);
        let mut exp = ix.drain_expired();
        exp.sort_unstable();
        assert_eq!(exp, vec![0, 2, 3]);
        assert!(ix.is_empty());
        assert_eq!(ix.bytes(), 0);

        let per = 16 + ENTRY_OVERHEAD;
        let mut ix = SemanticIndex::new(
            16,
            Bounds {
                max_entries: 100,
                max_bytes: 2 * per + 100,
                ttl_ms: 10,
            },
        );
        ix.insert(k, &unit(0, 16), 0, 50, 0);
        ix.insert(k, &unit(1, 16), 1, 50, 0);
        assert_eq!(ix.insert(k, &unit(2, 16), 2, 50, 0), vec![0], "bytes bound");
        assert_eq!(
            ix.insert(k, &unit(3, 16), 3, 1 << 20, 0),
            vec![3],
            "too large alone"
        );
        assert_eq!(ix.bytes(), 2 * per + 100);
    }

    #[test]
    fn pruned_scan_returns_what_a_full_scan_would() {
        // vectors close to each other so many entries pass the bound; the answer must be
        // the exact arg-max of the quantised cosine
        let dim = 96;
        let base = unit(1, dim);
        let mut ix = SemanticIndex::new(dim, bounds(1000));
        let mut stored = Vec::new();
        for i in 0..300u64 {
            let noise = unit(1000 + i, dim);
            let w = 0.2 + 0.6 * (i % 7) as f32 / 7.0;
            let mut v: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + w * b).collect();
            crate::embed::l2_normalize(&mut v);
            ix.insert(ContextKey(0), &v, i, 0, 0);
            stored.push(v);
        }
        for j in 0..50u64 {
            let noise = unit(5000 + j, dim);
            let mut q: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + 0.3 * b).collect();
            crate::embed::l2_normalize(&mut q);
            let (want, ws) = stored
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, crate::embed::cosine(&q, v)))
                .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
            let hit = ix.lookup(ContextKey(0), &q, 0.0, 0).unwrap();
            assert!((hit.similarity - ws).abs() < 0.01);
            if hit.value != want {
                // only a near tie may differ (quantisation), never a clearly better entry
                assert!((crate::embed::cosine(&q, &stored[hit.value as usize]) - ws).abs() < 0.01);
            }
        }
    }

    #[test]
    fn remove_keeps_the_other_slots_right() {
        let k = ContextKey(5);
        let mut ix = SemanticIndex::new(8, bounds(100));
        for i in 0..10 {
            ix.insert(k, &unit(i, 8), i, 0, 0);
        }
        assert!(ix.remove(0));
        assert!(!ix.remove(0));
        assert!(ix.remove(5));
        for i in [1, 2, 3, 4, 6, 7, 8, 9] {
            assert_eq!(ix.lookup(k, &unit(i, 8), 0.95, 0).map(|h| h.value), Some(i));
        }
        // re-inserting an id replaces it
        ix.insert(k, &unit(50, 8), 9, 0, 0);
        assert_eq!(ix.len(), 8);
        assert_eq!(
            ix.lookup(k, &unit(50, 8), 0.95, 0).map(|h| h.value),
            Some(9)
        );
    }
}

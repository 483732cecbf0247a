//! The gateway's response cache indexes: exact (by a 128-bit hash of the whole request)
//! and semantic (by embedding similarity of the last user turn, only among entries whose
//! hash of everything else matches). Both are bounded by entry count and by bytes, expire
//! entries after a TTL (the caller passes `now`; nothing here reads a clock) and evict the
//! least recently used entry first. They hold value ids and sizes, not responses: the
//! caller stores the response and drops the ones whose ids come back as evicted.
//!
//! - [`exact::ExactIndex`]: key → value id.
//! - [`semantic::SemanticIndex`]: (context key, last-turn embedding) → best value id with
//!   cosine ≥ the threshold.
//! - [`key`]: the keys themselves (what an answer depends on, hashed prefix-free).

pub mod exact;
pub mod key;
pub mod semantic;

/// Hash of everything in a request but the last user turn (tenant, deployment, system
/// prompt, tools, parameters, earlier turns), computed by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextKey(pub u128);

/// The caller's id for a cached response.
pub type ValueId = u64;

/// Bounds shared by both indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most entries kept.
    pub max_entries: usize,
    /// Most bytes kept: each entry's own index bytes plus the value bytes its insert
    /// declared (the cached response's size).
    pub max_bytes: usize,
    /// Entries older than this (milliseconds since insert) are never returned.
    pub ttl_ms: u64,
}

//! Stickiness: a conversation stays on the tier it is on unless switching is worth the
//! warm prompt cache it throws away.
//!
//! A provider's prompt cache lives per model: the prefix a conversation has already sent
//! to tier A is cheap to read again on tier A (the cache-read rate) and full price on tier
//! B (a cold start). The rule compares, for the request about to be sent, what staying
//! costs (the known prefix read from cache, the rest at the input rate, the expected output)
//! with what switching costs (every prompt token and the output at the other tier's rates).
//!
//! - A switch **up** (towards a heavier tier) is made whatever it costs: the router judged
//!   the request to need a stronger model, and quality comes before the cache.
//! - A switch **down** is made only if it is cheaper on this request, cache included:
//!   `cached × (in_light − read_current) + … < 0`, see [`should_switch`].
//!
//! [`StickyMap`] remembers, per conversation, the tier it is on and how many prompt and
//! output tokens its last call used; it is bounded (two generations: when the young one
//! is full the old one is dropped), so it cannot grow without limit.

use crate::money::Rate;
use std::collections::HashMap;

/// The rates of one tier that matter for the switch rule, in atto-USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierRates {
    pub input: Rate,
    /// The cache-read rate (the input rate when the deployment has no prompt cache).
    pub cache_read: Rate,
    pub output: Rate,
}

/// What is known of the conversation's next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallEstimate {
    /// Prompt tokens of the call (at least the prefix already sent).
    pub prompt_tokens: u64,
    /// Tokens of that prompt that are warm in the current tier's cache.
    pub cached_prefix_tokens: u64,
    /// Expected output tokens.
    pub output_tokens: u64,
}

/// The cost in atto-USD of a call on a tier, reading `cached` prompt tokens from cache.
pub fn call_cost_atto(r: &TierRates, prompt: u64, cached: u64, output: u64) -> u128 {
    let cached = cached.min(prompt);
    r.cache_read.times(cached) + r.input.times(prompt - cached) + r.output.times(output)
}

/// Whether a conversation on tier `current` (rates `cur`) should move to tier `wanted`
/// (rates `new`) for its next call. Switching up always happens; switching down happens
/// only when the call is cheaper on the lighter tier even though its cache is cold there,
/// i.e. when the expected saving exceeds the value of the warm prefix thrown away.
pub fn should_switch(
    current: usize,
    wanted: usize,
    cur: &TierRates,
    new: &TierRates,
    call: &CallEstimate,
) -> bool {
    if wanted == current {
        return false;
    }
    if wanted > current {
        return true;
    }
    let stay = call_cost_atto(
        cur,
        call.prompt_tokens,
        call.cached_prefix_tokens,
        call.output_tokens,
    );
    let switch = call_cost_atto(new, call.prompt_tokens, 0, call.output_tokens);
    switch < stay
}

/// What the map remembers of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck {
    /// The tier its last call went to.
    pub tier: usize,
    /// Prompt tokens of that call (all of them are now a warm prefix on that tier).
    pub prompt_tokens: u64,
    /// Output tokens of that call (the estimate of the next one's).
    pub output_tokens: u64,
}

/// A bounded map from a conversation id to its tier: at most `capacity` entries. Two
/// generations; a lookup in the old one moves the entry to the young one, and when the
/// young one holds `capacity / 2` entries the old one is dropped (least recently used
/// conversations go first, in bulk).
#[derive(Debug, Clone)]
pub struct StickyMap {
    young: HashMap<u64, Stuck>,
    old: HashMap<u64, Stuck>,
    half: usize,
}

impl StickyMap {
    pub fn new(capacity: usize) -> StickyMap {
        StickyMap {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&mut self, id: u64) -> Option<Stuck> {
        if let Some(s) = self.young.get(&id) {
            return Some(*s);
        }
        let s = self.old.remove(&id)?;
        self.put(id, s);
        Some(s)
    }

    pub fn put(&mut self, id: u64, s: Stuck) {
        if !self.young.contains_key(&id) && self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&id);
        self.young.insert(id, s);
    }
}

/// A stable 64-bit id (FNV-1a) of a conversation: its route and either its task id or its
/// system prompt and first user message.
pub fn conversation_id<'a>(route: &str, parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(route.as_bytes());
    for p in parts {
        eat(p.as_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_mtok(s: &str) -> Rate {
        Rate::parse_usd_per_mtok(s).unwrap().0
    }

    fn rates(input: &str, read: &str, output: &str) -> TierRates {
        TierRates {
            input: per_mtok(input),
            cache_read: per_mtok(read),
            output: per_mtok(output),
        }
    }

    #[test]
    fn switch_rule_table() {
        // heavy: $3 in, $0.30 cache read, $15 out; light: $0.25 in, $0.025 read, $1.25 out.
        let heavy = rates("3", "0.3", "15");
        let light = rates("0.25", "0.025", "1.25");
        let no_cache = rates("3", "3", "15");
        let cases: &[(&str, usize, usize, TierRates, TierRates, CallEstimate, bool)] = &[
            (
                "same tier",
                1,
                1,
                heavy,
                heavy,
                CallEstimate::default(),
                false,
            ),
            (
                "up always",
                0,
                1,
                light,
                heavy,
                CallEstimate {
                    prompt_tokens: 100_000,
                    cached_prefix_tokens: 100_000,
                    output_tokens: 10,
                },
                true,
            ),
            // 100k warm tokens on heavy: stay = 100k×0.3 + 10×15 = $0.03015; switch =
            // 100k×0.25 + 10×1.25 = $0.0250125 → cheaper to switch.
            (
                "down, cheap light beats cache",
                1,
                0,
                heavy,
                light,
                CallEstimate {
                    prompt_tokens: 100_000,
                    cached_prefix_tokens: 100_000,
                    output_tokens: 10,
                },
                true,
            ),
            // A light tier at $0.40 input loses to the $0.30 cache read on heavy.
            (
                "down, cache worth more",
                1,
                0,
                heavy,
                rates("0.4", "0.04", "1.25"),
                CallEstimate {
                    prompt_tokens: 100_000,
                    cached_prefix_tokens: 100_000,
                    output_tokens: 10,
                },
                false,
            ),
            // ... unless the expected output saving outweighs it.
            (
                "down, output saving wins",
                1,
                0,
                heavy,
                rates("0.4", "0.04", "1.25"),
                CallEstimate {
                    prompt_tokens: 100_000,
                    cached_prefix_tokens: 100_000,
                    output_tokens: 1_000,
                },
                true,
            ),
            (
                "down, no cache on current",
                1,
                0,
                no_cache,
                rates("2.9", "2.9", "15"),
                CallEstimate {
                    prompt_tokens: 50_000,
                    cached_prefix_tokens: 50_000,
                    output_tokens: 0,
                },
                true,
            ),
            (
                "down, nothing cached",
                1,
                0,
                heavy,
                rates("2.9", "2.9", "15"),
                CallEstimate {
                    prompt_tokens: 5_000,
                    cached_prefix_tokens: 0,
                    output_tokens: 100,
                },
                true,
            ),
            (
                "down, equal cost stays",
                1,
                0,
                heavy,
                heavy,
                CallEstimate {
                    prompt_tokens: 5_000,
                    cached_prefix_tokens: 0,
                    output_tokens: 100,
                },
                false,
            ),
        ];
        for (name, cur, want, a, b, call, expect) in cases {
            assert_eq!(should_switch(*cur, *want, a, b, call), *expect, "{name}");
        }
    }

    #[test]
    fn cached_never_exceeds_prompt() {
        let r = rates("1", "0.1", "2");
        assert_eq!(
            call_cost_atto(&r, 10, 1_000, 0),
            call_cost_atto(&r, 10, 10, 0)
        );
    }

    #[test]
    fn map_is_bounded_and_keeps_recent_entries() {
        let mut m = StickyMap::new(100);
        let s = |t| Stuck {
            tier: t,
            prompt_tokens: 1,
            output_tokens: 1,
        };
        for i in 0..10_000u64 {
            m.put(i, s((i % 2) as usize));
            assert!(m.len() <= 100);
            // The entry just written and a recently touched one survive.
            assert_eq!(m.get(i).map(|x| x.tier), Some((i % 2) as usize));
        }
        // A conversation touched regularly is never forgotten.
        let mut m = StickyMap::new(10);
        m.put(u64::MAX, s(1));
        for i in 0..1_000u64 {
            m.put(i, s(0));
            assert_eq!(m.get(u64::MAX).map(|x| x.tier), Some(1));
        }
    }

    #[test]
    fn conversation_ids_separate_routes_and_parts() {
        let a = conversation_id("auto", ["sys", "hello"]);
        assert_eq!(a, conversation_id("auto", ["sys", "hello"]));
        assert_ne!(a, conversation_id("other", ["sys", "hello"]));
        assert_ne!(a, conversation_id("auto", ["sysh", "ello"]));
    }
}

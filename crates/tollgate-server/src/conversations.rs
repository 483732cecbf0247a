//! Recent OpenAI Responses answers, kept so a later request can name one as its
//! `previous_response_id`: per key, in memory, bounded. Each entry holds the whole
//! conversation up to and including that answer (its input items, the history it
//! continued, its output items), so following one needs no chain walk.
//!
//! Bounds: [`MAX_PER_KEY`] answers and [`MAX_BYTES_PER_KEY`] bytes per key (the
//! oldest go first), [`TTL_MS`] of age, [`MAX_KEYS`] keys (a key beyond that is not
//! stored; its `previous_response_id` then gets the same clear 400 as an expired one).
//! Nothing survives a restart.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Answers kept per key.
pub const MAX_PER_KEY: usize = 256;
/// Bytes (of JSON) kept per key.
pub const MAX_BYTES_PER_KEY: usize = 16 * 1024 * 1024;
/// How long an answer can be continued.
pub const TTL_MS: i64 = 6 * 60 * 60 * 1000;
/// Keys with stored answers.
pub const MAX_KEYS: usize = 4096;

struct Stored {
    id: String,
    items: Arc<Vec<Value>>,
    bytes: usize,
    at_ms: i64,
}

#[derive(Default)]
struct PerKey {
    entries: VecDeque<Stored>,
    bytes: usize,
}

impl PerKey {
    fn expire(&mut self, now_ms: i64) {
        while let Some(e) = self.entries.front() {
            let over = now_ms - e.at_ms > TTL_MS
                || self.entries.len() > MAX_PER_KEY
                || self.bytes > MAX_BYTES_PER_KEY;
            if !over {
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.bytes;
            }
        }
    }
}

/// The store (a std mutex, never held across an `.await`).
#[derive(Default)]
pub struct Conversations {
    keys: Mutex<HashMap<String, PerKey>>,
}

impl Conversations {
    /// The conversation of answer `id`, if key `key` stored it and it is still kept.
    pub fn get(&self, key: &str, id: &str, now_ms: i64) -> Option<Arc<Vec<Value>>> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let k = keys.get_mut(key)?;
        k.expire(now_ms);
        k.entries
            .iter()
            .rev()
            .find(|e| e.id == id)
            .map(|e| e.items.clone())
    }

    /// Keep answer `id` of key `key`: the conversation up to and including it.
    pub fn put(&self, key: &str, id: &str, items: Vec<Value>, now_ms: i64) {
        let bytes: usize = items.iter().map(|v| v.to_string().len()).sum();
        if bytes > MAX_BYTES_PER_KEY {
            return;
        }
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(key) {
            if keys.len() >= MAX_KEYS {
                keys.retain(|_, k| {
                    k.expire(now_ms);
                    !k.entries.is_empty()
                });
            }
            if keys.len() >= MAX_KEYS {
                return;
            }
        }
        let k = keys.entry(key.to_string()).or_default();
        k.entries.push_back(Stored {
            id: id.to_string(),
            items: Arc::new(items),
            bytes,
            at_ms: now_ms,
        });
        k.bytes += bytes;
        k.expire(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kept_per_key_bounded_and_expiring() {
        let c = Conversations::default();
        c.put(
            "k1",
            "resp_a",
            vec![json!({"role": "user", "content": "hi"})],
            0,
        );
        assert_eq!(c.get("k1", "resp_a", 10).unwrap().len(), 1);
        // Another key cannot continue it.
        assert!(c.get("k2", "resp_a", 10).is_none());
        // Expired.
        assert!(c.get("k1", "resp_a", TTL_MS + 1).is_none());
        // Bounded in count: the oldest goes.
        for i in 0..=MAX_PER_KEY {
            c.put("k3", &format!("resp_{i}"), vec![json!(i)], 0);
        }
        assert!(c.get("k3", "resp_0", 0).is_none());
        assert!(c.get("k3", &format!("resp_{MAX_PER_KEY}"), 0).is_some());
        // Bounded in bytes.
        let big = "x".repeat(MAX_BYTES_PER_KEY / 2);
        for i in 0..3 {
            c.put("k4", &format!("b{i}"), vec![json!(big)], 0);
        }
        assert!(c.get("k4", "b0", 0).is_none());
        assert!(c.get("k4", "b2", 0).is_some());
    }
}

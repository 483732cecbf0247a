//! Local token counting for admission's worst case, cached per message: an agent
//! resends its whole conversation on every call, so each message is tokenised once.

use serde_json::Value;
use std::collections::HashMap;
use tollgate_providers::tokenizer::Encoding;

/// Token counts per message (and per tool list), so an agent's conversation, resent
/// whole on every call, is tokenised once per message rather than once per call.
/// Bounded: a full shard is cleared.
#[derive(Default)]
pub struct TokenCache {
    shards: [std::sync::Mutex<HashMap<u64, u32>>; 8],
}

const TOKEN_CACHE_PER_SHARD: usize = 16_384;

fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => h.write_u8(1 + u8::from(*b)),
        Value::Number(n) => {
            h.write_u8(3);
            match n.as_i64() {
                Some(i) => h.write_i64(i),
                None => h.write_u64(n.as_f64().unwrap_or(0.0).to_bits()),
            }
        }
        Value::String(s) => {
            h.write_u8(4);
            h.write(s.as_bytes());
            h.write_u8(0xff);
        }
        Value::Array(a) => {
            h.write_u8(5);
            h.write_usize(a.len());
            for x in a {
                hash_value(x, h);
            }
        }
        Value::Object(o) => {
            h.write_u8(6);
            h.write_usize(o.len());
            for (k, x) in o {
                h.write(k.as_bytes());
                h.write_u8(0xff);
                hash_value(x, h);
            }
        }
    }
}

impl TokenCache {
    pub fn get_or(&self, enc: Encoding, v: &Value, count: impl FnOnce() -> u64) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u8(enc as u8);
        hash_value(v, &mut h);
        let key = h.finish();
        let shard = &self.shards[(key % 8) as usize];
        if let Some(n) = shard.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return u64::from(*n);
        }
        let n = count();
        let mut g = shard.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= TOKEN_CACHE_PER_SHARD {
            g.clear();
        }
        g.insert(key, u32::try_from(n).unwrap_or(u32::MAX));
        n
    }

    /// Prompt tokens of a chat request, as [`Encoding::count_chat_prompt`] counts them,
    /// plus its tool definitions.
    pub fn chat_prompt(&self, enc: Encoding, messages: &[Value], tools: Option<&Value>) -> u64 {
        let mut n = 3;
        for m in messages {
            n += self.get_or(enc, m, || {
                enc.count_chat_prompt(std::slice::from_ref(m))
                    .saturating_sub(3)
            });
        }
        if let Some(t) = tools.filter(|t| !t.is_null()) {
            n += self.get_or(enc, t, || enc.count(&t.to_string()));
        }
        n
    }
}

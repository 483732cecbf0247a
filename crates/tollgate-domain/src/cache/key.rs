//! Response-cache keys: a 128-bit hash of everything that can change an answer, and of
//! nothing that cannot.
//!
//! The parts are a struct that is destructured when hashed ([`KeyParts`]), so a part
//! added later breaks the build until it is hashed; the request body is hashed whole,
//! every field but the ones [`EXCLUDED`] names (attribution and transport fields), so a
//! field this code has never heard of splits the cache rather than merging two
//! different requests. Values are hashed with type tags and length prefixes, object
//! keys in sorted order, so the encoding is prefix-free and independent of key order.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Top-level body fields that never change the answer: attribution, transport and
/// bookkeeping. (Metadata is dropped whole: tollgate's own keys are attribution and the
/// rest is the client's bookkeeping; `user` is an end-user id.)
pub const EXCLUDED: [&str; 8] = [
    "metadata",
    "requestMetadata",
    "user",
    "stream",
    "stream_options",
    "store",
    "service_tier",
    "prompt_cache_key",
];

/// What an exact key covers.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    /// Who may share the entry (`team:support`, `key:tgk_...`): entries never cross it.
    pub scope: &'a str,
    /// The deployment that answered (a routed request: the tier served).
    pub deployment: &'a str,
    /// The API the client called (`chat_completions`, `messages`, `converse`, ...): the
    /// cached bytes are in its shape.
    pub api: &'a str,
    /// Streamed and whole answers are kept apart (the bytes differ).
    pub stream: bool,
    /// The body, minus [`EXCLUDED`] and minus whatever the caller removed (the last user
    /// turn, for a semantic context key).
    pub body: &'a Map<String, Value>,
}

/// The 128-bit key of `parts`.
pub fn key(parts: &KeyParts<'_>) -> u128 {
    let KeyParts {
        scope,
        deployment,
        api,
        stream,
        body,
    } = *parts;
    let mut h = Sha256::new();
    h.update(b"tollgate-response-cache-v1\0");
    str_part(&mut h, scope);
    str_part(&mut h, deployment);
    str_part(&mut h, api);
    h.update([u8::from(stream)]);
    let mut keys: Vec<&String> = body
        .keys()
        .filter(|k| !EXCLUDED.contains(&k.as_str()))
        .collect();
    keys.sort();
    h.update((keys.len() as u64).to_le_bytes());
    for k in keys {
        str_part(&mut h, k);
        if let Some(v) = body.get(k) {
            value(&mut h, v);
        }
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_le_bytes(b)
}

fn str_part(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn value(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update([0]),
        Value::Bool(b) => h.update([1, u8::from(*b)]),
        Value::Number(n) => {
            // The number's text: 0 and 0.0 are different requests to some servers.
            h.update([2]);
            str_part(h, &n.to_string());
        }
        Value::String(s) => {
            h.update([3]);
            str_part(h, s);
        }
        Value::Array(a) => {
            h.update([4]);
            h.update((a.len() as u64).to_le_bytes());
            for x in a {
                value(h, x);
            }
        }
        Value::Object(o) => {
            h.update([5]);
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            h.update((keys.len() as u64).to_le_bytes());
            for k in keys {
                str_part(h, k);
                if let Some(x) = o.get(k) {
                    value(h, x);
                }
            }
        }
    }
}

/// Whether a request's answer is deterministic enough to cache by default: a
/// temperature of 0 (OpenAI, Anthropic: `temperature`; Bedrock Converse:
/// `inferenceConfig.temperature`), or a `seed`. Absent temperature means the API's
/// default (1.0 for these APIs): not deterministic.
pub fn deterministic(body: &Map<String, Value>) -> bool {
    let zero = |v: Option<&Value>| v.and_then(Value::as_f64).is_some_and(|t| t == 0.0);
    zero(body.get("temperature"))
        || zero(
            body.get("inferenceConfig")
                .and_then(|c| c.get("temperature")),
        )
        || body.get("seed").is_some_and(|s| !s.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(scope: &str, body: Value) -> u128 {
        let b = body.as_object().cloned().unwrap_or_default();
        key(&KeyParts {
            scope,
            deployment: "d",
            api: "chat_completions",
            stream: false,
            body: &b,
        })
    }

    #[test]
    fn keys_cover_what_changes_an_answer_and_nothing_else() {
        let base = json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});
        let same = json!({"messages": [{"content": "hi", "role": "user"}], "temperature": 0, "model": "m",
                          "user": "u1", "metadata": {"tollgate_task": "t"}, "stream_options": {"include_usage": true}});
        assert_eq!(k("team:a", base.clone()), k("team:a", same));
        // Tenants never share.
        assert_ne!(k("team:a", base.clone()), k("team:b", base.clone()));
        // Any other field, known or not, splits.
        for other in [
            json!({"model": "m", "temperature": 0.0, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "temperature": 0, "seed": 1, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi "}]}),
            json!({"model": "m", "temperature": 0, "messages": [{"role": "system", "content": "hi"}]}),
            json!({"model": "m", "temperature": 0, "x_new_field": true, "messages": [{"role": "user", "content": "hi"}]}),
        ] {
            assert_ne!(k("team:a", base.clone()), k("team:a", other));
        }
        // Prefix-free: moving text between adjacent strings changes the key.
        assert_ne!(
            k("team:a", json!({"a": "xy", "b": "z"})),
            k("team:a", json!({"a": "x", "b": "yz"}))
        );
        let b = json!({"a": 1}).as_object().cloned().unwrap_or_default();
        let with = |stream, deployment| {
            key(&KeyParts {
                scope: "s",
                deployment,
                api: "messages",
                stream,
                body: &b,
            })
        };
        assert_ne!(with(false, "d"), with(true, "d"));
        assert_ne!(with(false, "d"), with(false, "e"));
    }

    #[test]
    fn determinism_is_temperature_zero_or_a_seed() {
        let d = |v: Value| deterministic(v.as_object().unwrap_or(&Map::new()));
        assert!(d(json!({"temperature": 0})));
        assert!(d(json!({"temperature": 0.0})));
        assert!(d(json!({"seed": 42, "temperature": 0.7})));
        assert!(d(json!({"inferenceConfig": {"temperature": 0}})));
        assert!(!d(json!({})));
        assert!(!d(json!({"temperature": 0.2})));
        assert!(!d(json!({"seed": null})));
    }
}

//! Prompt-cache breakpoints in each wire format: reading a request body as the parts a
//! provider caches in order (tools, system, messages), with the client's own markers,
//! and writing the breakpoints the gateway decided on (see
//! `tollgate_domain::prompt_cache`).
//!
//! - Anthropic Messages: `cache_control: {"type": "ephemeral"}` (with `"ttl": "1h"` for
//!   an hour) on the last tool, the last system block, or a message's last block
//!   (`thinking` blocks take none: the block before it does).
//! - Bedrock Converse: a `{"cachePoint": {"type": "default"}}` entry after the last tool,
//!   the last system block, or a message's last content block.
//! - OpenAI: no breakpoints; a `prompt_cache_key` (when the client sent none) routes
//!   requests sharing a prefix to the same cache.
//!
//! Part hashes name the prefixes the tracker has seen; they are process-local (std's
//! SipHash with fixed keys), never stored.

use crate::translate::Format;
use serde_json::{Map, Value, json};
use std::hash::{Hash, Hasher};
use tollgate_domain::prompt_cache::{Breakpoint, PartKind, Ttl};

/// One part of a request body, before token counting.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyPart<'a> {
    pub kind: PartKind,
    /// What the part is, for counting and hashing.
    pub value: &'a Value,
    /// The client's breakpoint at its end, if any.
    pub client_marker: Option<Ttl>,
}

fn hash_value(v: &Value, h: &mut impl Hasher) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => h.write_u8(1 + u8::from(*b)),
        Value::Number(n) => {
            h.write_u8(3);
            n.to_string().hash(h);
        }
        Value::String(s) => {
            h.write_u8(4);
            s.hash(h);
        }
        Value::Array(a) => {
            // A Bedrock cache point is an element of its own: skipped like a marker.
            let content = |x: &&Value| x.get("cachePoint").is_none();
            h.write_u8(5);
            h.write_usize(a.iter().filter(content).count());
            for x in a.iter().filter(content) {
                hash_value(x, h);
            }
        }
        Value::Object(o) => {
            // Cache markers are not content: a prefix is the same with or without one.
            let content = |k: &String| k != "cache_control" && k != "cachePoint";
            h.write_u8(6);
            h.write_usize(o.keys().filter(|k| content(k)).count());
            for (k, x) in o.iter().filter(|(k, _)| content(k)) {
                k.hash(h);
                hash_value(x, h);
            }
        }
    }
}

/// A part's 128-bit hash (two SipHash runs with different prefixes).
pub fn part_hash(kind: PartKind, v: &Value) -> u128 {
    let run = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u8(salt);
        match kind {
            PartKind::Tools => h.write_u8(1),
            PartKind::System => h.write_u8(2),
            PartKind::Message { .. } => h.write_u8(3),
        }
        hash_value(v, &mut h);
        h.finish()
    };
    (u128::from(run(0x5a)) << 64) | u128::from(run(0xa5))
}

fn anthropic_ttl(block: &Value) -> Option<Ttl> {
    let cc = block.get("cache_control")?;
    Some(match cc.get("ttl").and_then(Value::as_str) {
        Some("1h") => Ttl::OneHour,
        _ => Ttl::FiveMinutes,
    })
}

fn bedrock_ttl(blocks: &[Value]) -> Option<Ttl> {
    let cp = blocks.iter().rev().find_map(|b| b.get("cachePoint"))?;
    Some(match cp.get("ttl").and_then(Value::as_str) {
        Some("1h") => Ttl::OneHour,
        _ => Ttl::FiveMinutes,
    })
}

fn has_tool_result(content: Option<&Value>, key: &str, type_name: &str) -> bool {
    match content {
        Some(Value::Array(blocks)) => blocks.iter().any(|b| {
            b.get(key).is_some() || b.get("type").and_then(Value::as_str) == Some(type_name)
        }),
        _ => false,
    }
}

/// The parts of a request body in the provider's rendered order, or `None` for a format
/// without breakpoints (OpenAI) or a body without messages.
pub fn parts(format: Format, body: &Map<String, Value>) -> Option<Vec<BodyPart<'_>>> {
    let mut out = Vec::new();
    match format {
        Format::OpenAi | Format::Responses => return None,
        Format::Anthropic => {
            if let Some(Value::Array(tools)) = body.get("tools")
                && let (Some(t), Some(last)) = (body.get("tools"), tools.last())
            {
                out.push(BodyPart {
                    kind: PartKind::Tools,
                    value: t,
                    client_marker: anthropic_ttl(last),
                });
            }
            match body.get("system") {
                Some(s @ Value::String(_)) => out.push(BodyPart {
                    kind: PartKind::System,
                    value: s,
                    client_marker: None,
                }),
                Some(s @ Value::Array(blocks)) if !blocks.is_empty() => out.push(BodyPart {
                    kind: PartKind::System,
                    value: s,
                    client_marker: blocks.iter().rev().find_map(anthropic_ttl),
                }),
                _ => {}
            }
            for m in body.get("messages")?.as_array()? {
                let content = m.get("content");
                let marker = match content {
                    Some(Value::Array(blocks)) => blocks.iter().rev().find_map(anthropic_ttl),
                    _ => None,
                };
                out.push(BodyPart {
                    kind: PartKind::Message {
                        tool_result: has_tool_result(content, "tool_use_id", "tool_result"),
                    },
                    value: m,
                    client_marker: marker,
                });
            }
        }
        Format::Bedrock => {
            if let Some(tc) = body.get("toolConfig")
                && let Some(Value::Array(tools)) = tc.get("tools")
                && !tools.is_empty()
            {
                out.push(BodyPart {
                    kind: PartKind::Tools,
                    value: tc,
                    client_marker: bedrock_ttl(tools),
                });
            }
            if let Some(s @ Value::Array(blocks)) = body.get("system")
                && !blocks.is_empty()
            {
                out.push(BodyPart {
                    kind: PartKind::System,
                    value: s,
                    client_marker: bedrock_ttl(blocks),
                });
            }
            for m in body.get("messages")?.as_array()? {
                let content = m.get("content");
                let marker = match content {
                    Some(Value::Array(blocks)) => bedrock_ttl(blocks),
                    _ => None,
                };
                out.push(BodyPart {
                    kind: PartKind::Message {
                        tool_result: has_tool_result(content, "toolResult", "toolResult"),
                    },
                    value: m,
                    client_marker: marker,
                });
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn cache_control(ttl: Ttl) -> Value {
    match ttl {
        Ttl::FiveMinutes => json!({"type": "ephemeral"}),
        Ttl::OneHour => json!({"type": "ephemeral", "ttl": "1h"}),
    }
}

fn cache_point(ttl: Ttl) -> Value {
    match ttl {
        Ttl::FiveMinutes => json!({"cachePoint": {"type": "default"}}),
        Ttl::OneHour => json!({"cachePoint": {"type": "default", "ttl": "1h"}}),
    }
}

/// Put `cache_control` on the last block of an Anthropic content (a string becomes one
/// text block); `thinking` blocks are skipped.
fn mark_anthropic_content(content: &mut Value, ttl: Ttl) -> bool {
    if let Value::String(s) = content {
        *content = json!([{"type": "text", "text": std::mem::take(s)}]);
    }
    let Value::Array(blocks) = content else {
        return false;
    };
    let Some(b) = blocks.iter_mut().rev().find(|b| {
        !matches!(
            b.get("type").and_then(Value::as_str),
            Some("thinking" | "redacted_thinking")
        )
    }) else {
        return false;
    };
    match b {
        Value::Object(o) => {
            o.insert("cache_control".into(), cache_control(ttl));
            true
        }
        _ => false,
    }
}

/// Write the breakpoints into a body read by [`parts`] (the same body, unchanged since).
/// Returns how many were written.
pub fn apply(format: Format, body: &mut Map<String, Value>, breakpoints: &[Breakpoint]) -> usize {
    if breakpoints.is_empty() {
        return 0;
    }
    // Part indices as `parts` numbered them.
    let has_tools = match format {
        Format::Anthropic => matches!(body.get("tools"), Some(Value::Array(t)) if !t.is_empty()),
        Format::Bedrock => body
            .get("toolConfig")
            .and_then(|t| t.get("tools"))
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        Format::OpenAi | Format::Responses => return 0,
    };
    let has_system = match body.get("system") {
        Some(Value::String(_)) => format == Format::Anthropic,
        Some(Value::Array(b)) => !b.is_empty(),
        _ => false,
    };
    let first_message = usize::from(has_tools) + usize::from(has_system);
    let mut written = 0;
    for bp in breakpoints {
        let tools_at = has_tools.then_some(0);
        let system_at = has_system.then_some(usize::from(has_tools));
        let done = if Some(bp.part) == tools_at {
            match format {
                Format::Anthropic => body
                    .get_mut("tools")
                    .and_then(Value::as_array_mut)
                    .and_then(|t| t.last_mut())
                    .and_then(Value::as_object_mut)
                    .map(|o| o.insert("cache_control".into(), cache_control(bp.ttl)))
                    .is_some(),
                _ => body
                    .get_mut("toolConfig")
                    .and_then(|t| t.get_mut("tools"))
                    .and_then(Value::as_array_mut)
                    .map(|t| t.push(cache_point(bp.ttl)))
                    .is_some(),
            }
        } else if Some(bp.part) == system_at {
            match (format, body.get_mut("system")) {
                (Format::Anthropic, Some(s)) => mark_anthropic_content(s, bp.ttl),
                (Format::Bedrock, Some(Value::Array(blocks))) => {
                    blocks.push(cache_point(bp.ttl));
                    true
                }
                _ => false,
            }
        } else {
            let i = bp.part.wrapping_sub(first_message);
            let msg = body
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .and_then(|m| m.get_mut(i))
                .and_then(|m| m.get_mut("content"));
            match (format, msg) {
                (Format::Anthropic, Some(c)) => mark_anthropic_content(c, bp.ttl),
                (Format::Bedrock, Some(Value::Array(blocks))) => {
                    blocks.push(cache_point(bp.ttl));
                    true
                }
                _ => false,
            }
        };
        written += usize::from(done);
    }
    written
}

/// OpenAI: set `prompt_cache_key` to `key` unless the client set one. Returns whether it
/// was set.
pub fn set_openai_key(body: &mut Map<String, Value>, key: &str) -> bool {
    if body.contains_key("prompt_cache_key") {
        return false;
    }
    body.insert("prompt_cache_key".into(), Value::String(key.to_string()));
    true
}

/// The OpenAI parts a `prompt_cache_key` is derived from: tools and the leading system
/// or developer messages (what requests sharing a cache have in common).
pub fn openai_stable_prefix(body: &Map<String, Value>) -> u128 {
    let mut h: u128 = 0;
    if let Some(t) = body.get("tools") {
        h ^= part_hash(PartKind::Tools, t);
    }
    if let Some(Value::Array(ms)) = body.get("messages") {
        for m in ms.iter().take_while(|m| {
            matches!(
                m.get("role").and_then(Value::as_str),
                Some("system" | "developer")
            )
        }) {
            h = h.rotate_left(13) ^ part_hash(PartKind::System, m);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::prompt_cache::PrefixKind;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn anthropic_parts_and_breakpoints() {
        let mut body = obj(json!({
            "model": "m", "max_tokens": 10,
            "tools": [{"name": "a", "input_schema": {"type": "object"}}],
            "system": "You are the handbook.",
            "messages": [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "..."}, {"type": "text", "text": "a1"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "r"}]}
            ]
        }));
        let p = parts(Format::Anthropic, &body).unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(p[0].kind, PartKind::Tools);
        assert_eq!(p[1].kind, PartKind::System);
        assert_eq!(p[4].kind, PartKind::Message { tool_result: true });
        assert!(p.iter().all(|x| x.client_marker.is_none()));
        let bp = |part, ttl| Breakpoint {
            part,
            ttl,
            kind: PrefixKind::System,
        };
        let n = apply(
            Format::Anthropic,
            &mut body,
            &[
                bp(1, Ttl::OneHour),
                bp(3, Ttl::FiveMinutes),
                bp(4, Ttl::FiveMinutes),
            ],
        );
        assert_eq!(n, 3);
        assert_eq!(
            body["system"][0]["cache_control"],
            json!({"type": "ephemeral", "ttl": "1h"})
        );
        assert_eq!(body["system"][0]["text"], "You are the handbook.");
        // Not on the thinking block.
        assert!(
            body["messages"][1]["content"][0]
                .get("cache_control")
                .is_none()
        );
        assert_eq!(
            body["messages"][1]["content"][1]["cache_control"]["type"],
            "ephemeral"
        );
        assert!(
            body["messages"][2]["content"][0]
                .get("cache_control")
                .is_some()
        );
        // Read back: the markers are now the client's, and the hashes did not change.
        let again = parts(Format::Anthropic, &body).unwrap();
        assert_eq!(again[1].client_marker, Some(Ttl::OneHour));
        let plain = obj(
            json!({"system": [{"type": "text", "text": "You are the handbook."}], "messages": []}),
        );
        let before = parts(Format::Anthropic, &plain).unwrap();
        assert_eq!(
            part_hash(PartKind::System, again[1].value),
            part_hash(PartKind::System, before[0].value)
        );
    }

    #[test]
    fn bedrock_parts_and_cache_points() {
        let mut body = obj(json!({
            "system": [{"text": "handbook"}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": {}}}}]},
            "messages": [{"role": "user", "content": [{"text": "q"}]}]
        }));
        let p = parts(Format::Bedrock, &body).unwrap();
        assert_eq!(
            p.iter().map(|x| x.kind).collect::<Vec<_>>(),
            [
                PartKind::Tools,
                PartKind::System,
                PartKind::Message { tool_result: false }
            ]
        );
        let n = apply(
            Format::Bedrock,
            &mut body,
            &[
                Breakpoint {
                    part: 1,
                    ttl: Ttl::FiveMinutes,
                    kind: PrefixKind::System,
                },
                Breakpoint {
                    part: 2,
                    ttl: Ttl::FiveMinutes,
                    kind: PrefixKind::History,
                },
            ],
        );
        assert_eq!(n, 2);
        assert_eq!(
            body["system"][1],
            json!({"cachePoint": {"type": "default"}})
        );
        assert_eq!(
            body["messages"][0]["content"][1],
            json!({"cachePoint": {"type": "default"}})
        );
        assert_eq!(
            parts(Format::Bedrock, &body).unwrap()[2].client_marker,
            Some(Ttl::FiveMinutes)
        );
    }

    #[test]
    fn openai_gets_a_key_not_markers() {
        let mut body = obj(
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}),
        );
        assert!(parts(Format::OpenAi, &body).is_none());
        let k1 = openai_stable_prefix(&body);
        let other = obj(
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "other"}]}),
        );
        assert_eq!(k1, openai_stable_prefix(&other));
        assert!(set_openai_key(&mut body, "tg-abc"));
        assert!(!set_openai_key(&mut body, "tg-def"));
        assert_eq!(body["prompt_cache_key"], "tg-abc");
    }
}

//! The Anthropic Messages wire format: requests as clients send them, usage as
//! Anthropic reports it, error bodies.
//!
//! Usage semantics: `input_tokens` counts only the uncached part of the prompt;
//! `cache_read_input_tokens` and `cache_creation_input_tokens` are beside it, the latter
//! split by TTL in `cache_creation.{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}`
//! when present. In streams `message_start` carries the prompt's usage and each
//! `message_delta` the cumulative usage so far.

use crate::openai::RequestError;
use crate::translate::ErrorClass;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tollgate_domain::usage::Usage;

/// The `anthropic-version` sent upstream when the client gave none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// A parsed `POST /v1/messages` body, kept whole so it can be forwarded as written.
#[derive(Debug, Clone)]
pub struct MessagesRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

/// A parsed `POST /v1/messages/count_tokens` body: a Messages request without
/// `max_tokens`; only what goes into the prompt is kept.
#[derive(Debug, Clone)]
pub struct CountTokensRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub system: Option<Value>,
    pub tools: Option<Value>,
}

impl CountTokensRequest {
    pub fn parse(bytes: &[u8]) -> Result<CountTokensRequest, RequestError> {
        let mut body = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(RequestError::NotAnObject),
            Err(e) => return Err(RequestError::InvalidJson(e.to_string())),
        };
        let model = match body.remove("model") {
            Some(Value::String(m)) if !m.is_empty() => m,
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(RequestError::Missing("model"));
            }
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "model",
                    expected: "a string",
                });
            }
        };
        let messages = match body.remove("messages") {
            Some(Value::Array(m)) => m,
            None | Some(Value::Null) => return Err(RequestError::Missing("messages")),
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "messages",
                    expected: "an array",
                });
            }
        };
        let system = match body.remove("system") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Array(_))) => Some(v),
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "system",
                    expected: "a string or an array of text blocks",
                });
            }
        };
        let tools = match body.remove("tools") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Array(_)) => Some(v),
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "tools",
                    expected: "an array",
                });
            }
        };
        Ok(CountTokensRequest {
            model,
            messages,
            system,
            tools,
        })
    }
}

impl MessagesRequest {
    pub fn parse(bytes: &[u8]) -> Result<MessagesRequest, RequestError> {
        let body = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(RequestError::NotAnObject),
            Err(e) => return Err(RequestError::InvalidJson(e.to_string())),
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(RequestError::Missing("model"));
            }
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "model",
                    expected: "a string",
                });
            }
        };
        match body.get("messages") {
            Some(Value::Array(_)) => {}
            None | Some(Value::Null) => return Err(RequestError::Missing("messages")),
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "messages",
                    expected: "an array",
                });
            }
        }
        match body.get("max_tokens") {
            Some(v) if v.as_u64().is_some() => {}
            None | Some(Value::Null) => return Err(RequestError::Missing("max_tokens")),
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "max_tokens",
                    expected: "a non-negative integer",
                });
            }
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "stream",
                    expected: "a boolean",
                });
            }
        };
        Ok(MessagesRequest {
            body,
            model,
            stream,
        })
    }

    /// `metadata.user_id`.
    pub fn user(&self) -> Option<&str> {
        self.body.get("metadata")?.get("user_id")?.as_str()
    }

    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.body.get("metadata").and_then(Value::as_object)
    }

    /// The body to forward to an Anthropic upstream: the upstream's model id.
    pub fn upstream_body(&mut self, upstream_model: &str) -> Bytes {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_string()));
        Bytes::from(serde_json::to_vec(&self.body).unwrap_or_default())
    }
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Anthropic `usage` → neutral usage.
pub fn usage_from_wire(u: &Value) -> Usage {
    let creation = n(u, "cache_creation_input_tokens");
    let (w5, w1) = match u.get("cache_creation").filter(|c| c.is_object()) {
        Some(c) => {
            let w1 = n(c, "ephemeral_1h_input_tokens");
            let w5 = n(c, "ephemeral_5m_input_tokens");
            // The breakdown should add up to the total; if it does not, the rest is 5 min.
            (w5.max(creation.saturating_sub(w1)), w1)
        }
        None => (creation, 0),
    };
    Usage {
        input: n(u, "input_tokens"),
        cache_read: n(u, "cache_read_input_tokens"),
        cache_write_5m: w5,
        cache_write_1h: w1,
        output: n(u, "output_tokens"),
        reasoning: 0,
    }
}

/// Neutral usage → Anthropic `usage`.
pub fn usage_to_wire(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input,
        "cache_creation_input_tokens": u.cache_write_5m + u.cache_write_1h,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_5m,
            "ephemeral_1h_input_tokens": u.cache_write_1h,
        },
        "output_tokens": u.output,
    })
}

/// Usage of a non-streaming message body; `Err` if it is not a message object.
pub fn response_usage(body: &[u8]) -> Result<Option<Usage>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(v.get("usage")
        .filter(|u| u.is_object())
        .map(usage_from_wire))
}

/// Generated text of a message body (for local counting when usage is missing).
pub fn response_text(body: &[u8]) -> String {
    let mut out = String::new();
    if let Ok(r) = crate::translate::anthropic::response_to_ir(body) {
        crate::translate::blocks_text(&r.content, &mut out);
    }
    out
}

/// Anthropic's `error.type` for an error class.
pub fn error_type(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::InvalidRequest => "invalid_request_error",
        ErrorClass::Authentication => "authentication_error",
        ErrorClass::Permission => "permission_error",
        ErrorClass::NotFound => "not_found_error",
        ErrorClass::TooLarge => "request_too_large",
        ErrorClass::RateLimited => "rate_limit_error",
        ErrorClass::Timeout => "timeout_error",
        ErrorClass::Overloaded => "overloaded_error",
        ErrorClass::Server => "api_error",
    }
}

/// An error body in Anthropic's shape.
pub fn error_body(class: ErrorClass, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(class), "message": message}})
}

/// The message and class of an Anthropic error body, if it is one.
pub fn parse_error(body: &[u8]) -> Option<(ErrorClass, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    Some((
        crate::translate::anthropic::error_class(e.get("type")?.as_str()?),
        e.get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_keeps_cache_tokens_beside_input() {
        let u = usage_from_wire(
            &json!({"input_tokens": 50, "cache_creation_input_tokens": 1500,
            "cache_read_input_tokens": 8000, "output_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000}}),
        );
        assert_eq!(
            (
                u.input,
                u.cache_read,
                u.cache_write_5m,
                u.cache_write_1h,
                u.output
            ),
            (50, 8000, 500, 1000, 300)
        );
        assert_eq!(u.prompt_total(), 9550);
        let old = usage_from_wire(
            &json!({"input_tokens": 5, "cache_creation_input_tokens": 7, "output_tokens": 1}),
        );
        assert_eq!((old.cache_write_5m, old.cache_write_1h), (7, 0));
        assert_eq!(usage_from_wire(&usage_to_wire(&u)), u);
    }

    #[test]
    fn parses_requests() {
        let r = MessagesRequest::parse(br#"{"model":"claude-sonnet-4-5","max_tokens":10,"stream":true,"messages":[],"metadata":{"user_id":"u"}}"#).unwrap();
        assert!(r.stream);
        assert_eq!(r.user(), Some("u"));
        assert_eq!(
            MessagesRequest::parse(br#"{"model":"m","messages":[]}"#).unwrap_err(),
            RequestError::Missing("max_tokens")
        );
    }
}

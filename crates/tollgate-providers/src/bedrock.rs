//! The Amazon Bedrock Converse / ConverseStream wire format: requests as clients send
//! them (`POST /model/{modelId}/converse[-stream]`), usage as Bedrock reports it, errors
//! (`x-amzn-ErrorType` header and a `{"message"}` body; exception frames in streams).
//!
//! Usage semantics: `inputTokens` counts the uncached prompt only; cache reads and
//! writes are reported beside it in `cacheReadInputTokens` / `cacheWriteInputTokens`
//! (`totalTokens` is the sum of all four). A write's TTL is in `cacheDetails` when the
//! model supports more than one. In streams, usage comes in the final `metadata` event.

use crate::openai::RequestError;
use crate::translate::ErrorClass;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tollgate_domain::usage::Usage;

/// A parsed Converse body; the model and streaming come from the URL path.
#[derive(Debug, Clone)]
pub struct ConverseRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

impl ConverseRequest {
    pub fn parse(bytes: &[u8], model: &str, stream: bool) -> Result<ConverseRequest, RequestError> {
        let body = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(RequestError::NotAnObject),
            Err(e) => return Err(RequestError::InvalidJson(e.to_string())),
        };
        if model.is_empty() {
            return Err(RequestError::Missing("modelId"));
        }
        match body.get("messages") {
            Some(Value::Array(_)) | None | Some(Value::Null) => {}
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "messages",
                    expected: "an array",
                });
            }
        }
        // The output cap bounds the reservation and the usage believed: it must be what
        // Bedrock accepts, a positive integer (not "ten", -5, 2^64 or 1e30).
        match body.get("inferenceConfig") {
            None | Some(Value::Null) => {}
            Some(Value::Object(c)) => match c.get("maxTokens") {
                None | Some(Value::Null) => {}
                Some(v)
                    if v.as_u64()
                        .is_some_and(|n| n >= 1 && n <= u64::from(u32::MAX)) => {}
                Some(_) => {
                    return Err(RequestError::WrongType {
                        field: "inferenceConfig.maxTokens",
                        expected: "a positive integer",
                    });
                }
            },
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "inferenceConfig",
                    expected: "an object",
                });
            }
        }
        Ok(ConverseRequest {
            body,
            model: model.to_string(),
            stream,
        })
    }

    /// `requestMetadata` (string → string), where Bedrock clients can put attribution.
    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.body.get("requestMetadata").and_then(Value::as_object)
    }

    /// The body to forward to a Bedrock upstream (the model is in the URL).
    pub fn upstream_body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.body).unwrap_or_default())
    }
}

/// The request path for a model: `/model/{modelId}/converse` or `.../converse-stream`,
/// the model id percent-encoded (`:` → `%3A`).
pub fn model_path(model: &str, stream: bool) -> String {
    format!(
        "/model/{}/{}",
        crate::sigv4::uri_encode(model, false),
        if stream {
            "converse-stream"
        } else {
            "converse"
        }
    )
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Bedrock `usage` → neutral usage.
pub fn usage_from_wire(u: &Value) -> Usage {
    let write = n(u, "cacheWriteInputTokens");
    let w1: u64 = u
        .get("cacheDetails")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter(|c| c.get("ttl").and_then(Value::as_str) == Some("1h"))
                .map(|c| n(c, "inputTokens"))
                .sum()
        })
        .unwrap_or(0)
        .min(write);
    Usage {
        input: n(u, "inputTokens"),
        cache_read: n(u, "cacheReadInputTokens"),
        cache_write_5m: write - w1,
        cache_write_1h: w1,
        output: n(u, "outputTokens"),
        reasoning: 0,
    }
}

/// Neutral usage → Bedrock `usage`.
pub fn usage_to_wire(u: &Usage) -> Value {
    let write = u.cache_write_5m + u.cache_write_1h;
    let mut v = json!({
        "inputTokens": u.input,
        "outputTokens": u.output,
        "totalTokens": u.total(),
        "cacheReadInputTokens": u.cache_read,
        "cacheWriteInputTokens": write,
    });
    if u.cache_write_1h > 0 {
        let mut details = vec![json!({"ttl": "1h", "inputTokens": u.cache_write_1h})];
        if u.cache_write_5m > 0 {
            details.push(json!({"ttl": "5m", "inputTokens": u.cache_write_5m}));
        }
        v["cacheDetails"] = Value::Array(details);
    }
    v
}

/// Usage of a non-streaming Converse body; `Err` if it is not a JSON object.
pub fn response_usage(body: &[u8]) -> Result<Option<Usage>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(v.get("usage")
        .filter(|u| u.is_object())
        .map(usage_from_wire))
}

/// Generated text of a Converse body.
pub fn response_text(body: &[u8]) -> String {
    let mut out = String::new();
    if let Ok(r) = crate::translate::bedrock::response_to_ir(body) {
        crate::translate::blocks_text(&r.content, &mut out);
    }
    out
}

/// The `x-amzn-ErrorType` for an error class.
pub fn error_type(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::InvalidRequest | ErrorClass::TooLarge => "ValidationException",
        ErrorClass::Authentication | ErrorClass::Permission => "AccessDeniedException",
        ErrorClass::NotFound => "ResourceNotFoundException",
        ErrorClass::RateLimited => "ThrottlingException",
        ErrorClass::Timeout => "ModelTimeoutException",
        ErrorClass::Overloaded => "ServiceUnavailableException",
        ErrorClass::Server => "InternalServerException",
    }
}

/// The class of an `x-amzn-ErrorType` (which may carry a `:namespace` suffix) or a
/// stream exception type (`throttlingException`).
pub fn error_class(error_type: &str) -> ErrorClass {
    let t = error_type.split(':').next().unwrap_or("");
    match t.to_ascii_lowercase().as_str() {
        "validationexception" | "servicequotaexceededexception" => ErrorClass::InvalidRequest,
        "accessdeniedexception" => ErrorClass::Permission,
        "unrecognizedclientexception" | "invalidsignatureexception" | "expiredtokenexception" => {
            ErrorClass::Authentication
        }
        "resourcenotfoundexception" => ErrorClass::NotFound,
        "throttlingexception" | "modelnotreadyexception" => ErrorClass::RateLimited,
        "modeltimeoutexception" => ErrorClass::Timeout,
        "serviceunavailableexception" => ErrorClass::Overloaded,
        _ => ErrorClass::Server,
    }
}

/// The stream exception name for an error class (ConverseStream's union members).
pub fn stream_exception_type(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::InvalidRequest | ErrorClass::TooLarge | ErrorClass::NotFound => {
            "validationException"
        }
        ErrorClass::RateLimited => "throttlingException",
        ErrorClass::Overloaded => "serviceUnavailableException",
        ErrorClass::Timeout => "modelStreamErrorException",
        ErrorClass::Authentication | ErrorClass::Permission | ErrorClass::Server => {
            "internalServerException"
        }
    }
}

/// An error body in Bedrock's shape (the type goes in the `x-amzn-ErrorType` header).
pub fn error_body(message: &str) -> Value {
    json!({ "message": message })
}

/// The message of a Bedrock error body.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_keeps_cache_tokens_beside_input() {
        let u = usage_from_wire(
            &json!({"inputTokens": 20, "outputTokens": 30, "totalTokens": 1250,
            "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 200}),
        );
        assert_eq!(
            (u.input, u.cache_read, u.cache_write_5m, u.output),
            (20, 1000, 200, 30)
        );
        assert_eq!(u.total(), 1250);
        assert_eq!(usage_from_wire(&usage_to_wire(&u)), u);
        let ttl = usage_from_wire(
            &json!({"inputTokens": 1, "outputTokens": 1, "cacheWriteInputTokens": 300,
            "cacheDetails": [{"ttl": "1h", "inputTokens": 100}, {"ttl": "5m", "inputTokens": 200}]}),
        );
        assert_eq!((ttl.cache_write_5m, ttl.cache_write_1h), (200, 100));
        assert_eq!(usage_from_wire(&usage_to_wire(&ttl)), ttl);
    }

    #[test]
    fn converse_max_tokens_must_be_a_positive_integer() {
        for bad in [r#""ten""#, "-5", "18446744073709551616", "1e30", "0", "2.5"] {
            let body = format!(r#"{{"messages":[],"inferenceConfig":{{"maxTokens":{bad}}}}}"#);
            let e = ConverseRequest::parse(body.as_bytes(), "m", false).unwrap_err();
            assert_eq!(e.param(), Some("inferenceConfig.maxTokens"), "{bad}");
        }
        let ok = br#"{"messages":[],"inferenceConfig":{"maxTokens":512}}"#;
        assert!(ConverseRequest::parse(ok, "m", false).is_ok());
        assert!(ConverseRequest::parse(br#"{"inferenceConfig":5}"#, "m", false).is_err());
    }

    #[test]
    fn paths_and_errors() {
        assert_eq!(
            model_path("us.amazon.nova-2-lite-v1:0", true),
            "/model/us.amazon.nova-2-lite-v1%3A0/converse-stream"
        );
        assert_eq!(
            error_class("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            ErrorClass::RateLimited
        );
        assert_eq!(error_class("throttlingException"), ErrorClass::RateLimited);
        assert_eq!(
            error_type(ErrorClass::NotFound),
            "ResourceNotFoundException"
        );
    }
}

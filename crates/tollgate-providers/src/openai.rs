//! The OpenAI wire format (Chat Completions and Embeddings), as clients send it and as
//! any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter, ...)
//! answers it.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_domain::usage::Usage;

/// A client request the gateway could not accept, said in OpenAI's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("The request body must be a JSON object.")]
    NotAnObject,
    #[error("you must provide a {0} parameter")]
    Missing(&'static str),
    #[error("Invalid type for '{field}': expected {expected}.")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
}

impl RequestError {
    /// The request field at fault (OpenAI's `param`).
    pub fn param(&self) -> Option<&'static str> {
        match self {
            RequestError::Missing(f) => Some(f),
            RequestError::WrongType { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A parsed `POST /v1/chat/completions` body. The body is kept whole (as a JSON map)
/// so everything the gateway does not touch is forwarded as the client wrote it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The client itself asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(RequestError::NotAnObject),
        Err(e) => Err(RequestError::InvalidJson(e.to_string())),
    }
}

fn model_of(body: &Map<String, Value>) -> Result<String, RequestError> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(RequestError::Missing("model")),
        Some(_) => Err(RequestError::WrongType {
            field: "model",
            expected: "a string",
        }),
    }
}

fn opt_u64(body: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(RequestError::WrongType {
            field,
            expected: "a non-negative integer",
        }),
    }
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<ChatRequest, RequestError> {
        let body = object(bytes)?;
        let model = model_of(&body)?;
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
        let client_wants_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let max_tokens = match opt_u64(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => opt_u64(&body, "max_tokens")?,
        };
        Ok(ChatRequest {
            body,
            model,
            stream,
            client_wants_usage,
            max_tokens,
        })
    }

    /// The body to send upstream: the upstream's model id, and (for streams the client
    /// did not ask usage for) `stream_options.include_usage = true` so the upstream
    /// reports usage. Returns whether usage was injected (the gateway then strips the
    /// extra usage chunk from what the client sees).
    pub fn upstream_body(&mut self, upstream_model: &str) -> (Bytes, bool) {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_string()));
        let inject = self.stream && !self.client_wants_usage;
        if inject {
            let opts = self
                .body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !opts.is_object() {
                *opts = Value::Object(Map::new());
            }
            if let Value::Object(o) = opts {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        let bytes = serde_json::to_vec(&self.body).unwrap_or_default();
        (Bytes::from(bytes), inject)
    }

    pub fn user(&self) -> Option<&str> {
        self.body.get("user").and_then(Value::as_str)
    }

    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.body.get("metadata").and_then(Value::as_object)
    }

    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// A parsed `POST /v1/embeddings` body.
#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    pub body: Map<String, Value>,
    pub model: String,
}

impl EmbeddingsRequest {
    pub fn parse(bytes: &[u8]) -> Result<EmbeddingsRequest, RequestError> {
        let body = object(bytes)?;
        let model = model_of(&body)?;
        match body.get("input") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            None | Some(Value::Null) => return Err(RequestError::Missing("input")),
            Some(_) => {
                return Err(RequestError::WrongType {
                    field: "input",
                    expected: "a string or an array",
                });
            }
        }
        Ok(EmbeddingsRequest { body, model })
    }

    pub fn upstream_body(&mut self, upstream_model: &str) -> Bytes {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_string()));
        Bytes::from(serde_json::to_vec(&self.body).unwrap_or_default())
    }

    pub fn user(&self) -> Option<&str> {
        self.body.get("user").and_then(Value::as_str)
    }

    /// The input texts (token-id inputs are counted by the caller as given).
    pub fn input(&self) -> Option<&Value> {
        self.body.get("input")
    }
}

/// `usage` as OpenAI-compatible servers send it (every field optional: servers differ).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek reports cache hits here instead of `prompt_tokens_details`.
    #[serde(default)]
    pub prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// To the neutral shape, with OpenAI's semantics (cached inside prompt, reasoning
    /// inside completion). `total_tokens` fills a missing completion count.
    pub fn to_usage(&self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let completion = self
            .completion_tokens
            .or_else(|| self.total_tokens.map(|t| t.saturating_sub(prompt)))
            .unwrap_or(0);
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or(self.prompt_cache_hit_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        Usage::from_openai(prompt, cached, completion, reasoning)
    }
}

/// What a response says about its own cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeter {
    /// `None` when the upstream did not report usage.
    pub usage: Option<Usage>,
    pub service_tier: Option<String>,
}

#[derive(Deserialize)]
struct ResponseLite {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    service_tier: Option<String>,
}

/// Read usage from a non-streaming response body (chat or embeddings). Anything that is
/// not a JSON object is malformed.
pub fn response_meter(body: &[u8]) -> Result<ResponseMeter, String> {
    let lite: ResponseLite = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(ResponseMeter {
        usage: lite.usage.as_ref().map(WireUsage::to_usage),
        service_tier: lite.service_tier,
    })
}

/// The text a chat response produced (message content, reasoning, tool-call names and
/// arguments), for counting tokens when the upstream reported none.
pub fn response_text(body: &[u8]) -> String {
    let mut out = String::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(choices) = v.get("choices").and_then(Value::as_array)
    {
        for c in choices {
            if let Some(m) = c.get("message") {
                collect_message_text(m, &mut out);
            }
        }
    }
    out
}

/// Append a message's (or stream delta's) generated text to `out`.
pub fn collect_message_text(m: &Value, out: &mut String) {
    for field in ["content", "reasoning_content", "reasoning", "refusal"] {
        if let Some(s) = m.get(field).and_then(Value::as_str) {
            out.push_str(s);
        }
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            if let Some(f) = call.get("function") {
                for field in ["name", "arguments"] {
                    if let Some(s) = f.get(field).and_then(Value::as_str) {
                        out.push_str(s);
                    }
                }
            }
        }
    }
}

/// An error body in OpenAI's shape.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    serde_json::json!({
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prepares_a_stream_request() {
        let mut r = ChatRequest::parse(
            br#"{"model":"fast","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":50,"user":"u1"}"#,
        )
        .unwrap();
        assert_eq!(r.model, "fast");
        assert!(r.stream && !r.client_wants_usage);
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.user(), Some("u1"));
        let (body, injected) = r.upstream_body("gpt-4o-mini-2024-07-18");
        assert!(injected);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "hi");
    }

    #[test]
    fn client_usage_request_is_left_alone() {
        let mut r = ChatRequest::parse(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .unwrap();
        assert!(r.client_wants_usage);
        assert!(!r.upstream_body("x").1);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert!(matches!(
            ChatRequest::parse(b"{nope"),
            Err(RequestError::InvalidJson(_))
        ));
        assert_eq!(
            ChatRequest::parse(b"[]").unwrap_err(),
            RequestError::NotAnObject
        );
        assert_eq!(
            ChatRequest::parse(br#"{"messages":[]}"#).unwrap_err(),
            RequestError::Missing("model")
        );
        assert_eq!(
            ChatRequest::parse(br#"{"model":1,"messages":[]}"#)
                .unwrap_err()
                .param(),
            Some("model")
        );
        assert_eq!(
            ChatRequest::parse(br#"{"model":"m"}"#).unwrap_err(),
            RequestError::Missing("messages")
        );
        assert_eq!(
            ChatRequest::parse(br#"{"model":"m","messages":[],"stream":"yes"}"#)
                .unwrap_err()
                .param(),
            Some("stream")
        );
        assert_eq!(
            ChatRequest::parse(br#"{"model":"m","messages":[],"max_tokens":-1}"#)
                .unwrap_err()
                .param(),
            Some("max_tokens")
        );
        assert_eq!(
            EmbeddingsRequest::parse(br#"{"model":"e"}"#).unwrap_err(),
            RequestError::Missing("input")
        );
    }

    #[test]
    fn reads_usage_with_cached_and_reasoning_tokens() {
        let m = response_meter(
            br#"{"id":"x","choices":[],"service_tier":"default","usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,
                "prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":256,"audio_tokens":0}}}"#,
        )
        .unwrap();
        let u = m.usage.unwrap();
        assert_eq!(
            (u.input, u.cache_read, u.output, u.reasoning),
            (86, 1920, 300, 256)
        );
        assert_eq!(m.service_tier.as_deref(), Some("default"));
        // DeepSeek's cache fields.
        let d = response_meter(
            br#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#,
        )
        .unwrap();
        assert_eq!(d.usage.unwrap().cache_read, 64);
        assert_eq!(response_meter(br#"{"choices":[]}"#).unwrap().usage, None);
        assert!(response_meter(b"<html>").is_err());
    }

    #[test]
    fn response_text_collects_content_and_tool_calls() {
        let t = response_text(
            br#"{"choices":[{"message":{"content":"Hello","tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
        );
        assert_eq!(t, "Hellof{\"a\":1}");
    }
}

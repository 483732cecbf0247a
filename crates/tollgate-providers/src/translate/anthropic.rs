//! Anthropic Messages ⇄ the canonical representation.

use super::{
    Block, BlockStart, CacheTtl, Delta, ErrorClass, Event, Format, Frame, Message, Request,
    Response, Role, StopReason, SystemPart, Tool, ToolChoice, TranslateError,
};
use crate::anthropic::{error_type, usage_from_wire, usage_to_wire};
use crate::sse::{SseFramer, event_fields};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};
use tollgate_domain::usage::Usage;

const ME: Format = Format::Anthropic;

/// Used when a client of another format sets no limit (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

const KNOWN: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

fn cache_of(v: &Value) -> Option<CacheTtl> {
    let c = v.get("cache_control")?;
    if c.is_null() {
        return None;
    }
    Some(match c.get("ttl").and_then(Value::as_str) {
        Some("1h") => CacheTtl::OneHour,
        _ => CacheTtl::FiveMinutes,
    })
}

fn cache_to_wire(c: Option<CacheTtl>, v: &mut Value) {
    match c {
        None => {}
        Some(CacheTtl::FiveMinutes) => v["cache_control"] = json!({"type": "ephemeral"}),
        Some(CacheTtl::OneHour) => v["cache_control"] = json!({"type": "ephemeral", "ttl": "1h"}),
    }
}

fn blocks_of(content: &Value, to: Format) -> Result<Vec<Block>, TranslateError> {
    let items = match content {
        Value::String(s) => {
            return Ok(vec![Block::Text {
                text: s.clone(),
                cache: None,
            }]);
        }
        Value::Array(a) => a,
        _ => {
            return Err(TranslateError::Invalid(
                "content must be a string or an array".into(),
            ));
        }
    };
    let mut out = Vec::new();
    for b in items {
        let cache = cache_of(b);
        let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
        out.push(match ty {
            "text" => Block::Text {
                text: b["text"].as_str().unwrap_or("").to_string(),
                cache,
            },
            "image" => {
                let src = &b["source"];
                if src["type"].as_str() != Some("base64") {
                    return Err(TranslateError::unsupported(
                        "image sources other than base64",
                        ME,
                        to,
                    ));
                }
                Block::Image {
                    media_type: src["media_type"].as_str().unwrap_or("").to_string(),
                    data: src["data"].as_str().unwrap_or("").to_string(),
                    cache,
                }
            }
            "tool_use" => Block::ToolUse {
                id: b["id"].as_str().unwrap_or("").to_string(),
                name: b["name"].as_str().unwrap_or("").to_string(),
                input: b.get("input").cloned().unwrap_or_else(|| json!({})),
                cache,
            },
            "tool_result" => {
                let content = match &b["content"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    Value::Array(parts) => {
                        let mut texts = Vec::new();
                        for p in parts {
                            match p["type"].as_str() {
                                Some("text") => {
                                    texts.push(p["text"].as_str().unwrap_or("").to_string())
                                }
                                _ => {
                                    return Err(TranslateError::unsupported(
                                        "tool_result content other than text",
                                        ME,
                                        to,
                                    ));
                                }
                            }
                        }
                        texts.join("\n")
                    }
                    _ => return Err(TranslateError::Invalid("tool_result.content".into())),
                };
                Block::ToolResult {
                    id: b["tool_use_id"].as_str().unwrap_or("").to_string(),
                    content,
                    is_error: b["is_error"].as_bool().unwrap_or(false),
                    cache,
                }
            }
            "thinking" => Block::Thinking {
                text: b["thinking"].as_str().unwrap_or("").to_string(),
                signature: b["signature"].as_str().map(str::to_string),
            },
            other => {
                return Err(TranslateError::unsupported(
                    format!("content block `{other}`"),
                    ME,
                    to,
                ));
            }
        });
    }
    Ok(out)
}

/// An Anthropic Messages request body → the canonical request.
pub fn request_to_ir(body: &Map<String, Value>, to: Format) -> Result<Request, TranslateError> {
    for (k, v) in body {
        if !v.is_null() && !KNOWN.contains(&k.as_str()) {
            return Err(TranslateError::unsupported(k.clone(), ME, to));
        }
    }
    let mut req = Request::default();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.system.push(SystemPart {
            text: s.clone(),
            cache: None,
        }),
        Some(Value::Array(parts)) => {
            for p in parts {
                if p["type"].as_str() != Some("text") {
                    return Err(TranslateError::unsupported(
                        "system blocks other than text",
                        ME,
                        to,
                    ));
                }
                req.system.push(SystemPart {
                    text: p["text"].as_str().unwrap_or("").to_string(),
                    cache: cache_of(p),
                });
            }
        }
        Some(_) => {
            return Err(TranslateError::Invalid(
                "system must be a string or an array".into(),
            ));
        }
    }
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::Invalid("messages must be an array".into()))?;
    for m in msgs {
        let role = match m["role"].as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(TranslateError::Invalid(format!(
                    "unknown message role {other:?}"
                )));
            }
        };
        let content = blocks_of(&m["content"], to)?;
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => req.messages.push(Message { role, content }),
        }
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for t in tools {
            if let Some(ty) = t.get("type").and_then(Value::as_str)
                && ty != "custom"
            {
                return Err(TranslateError::unsupported(
                    format!("server tool `{ty}`"),
                    ME,
                    to,
                ));
            }
            req.tools.push(Tool {
                name: t["name"].as_str().unwrap_or("").to_string(),
                description: t["description"].as_str().map(str::to_string),
                schema: t
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
                cache: cache_of(t),
            });
        }
    }
    if let Some(c) = body.get("tool_choice").filter(|c| c.is_object()) {
        req.tool_choice = Some(match c["type"].as_str() {
            Some("auto") => ToolChoice::Auto,
            Some("any") => ToolChoice::Any,
            Some("none") => ToolChoice::None,
            Some("tool") => ToolChoice::Tool(c["name"].as_str().unwrap_or("").to_string()),
            other => {
                return Err(TranslateError::Invalid(format!(
                    "unknown tool_choice type {other:?}"
                )));
            }
        });
        if c["disable_parallel_tool_use"].as_bool() == Some(true) {
            req.parallel_tool_calls = Some(false);
        }
    }
    req.max_tokens = body.get("max_tokens").and_then(Value::as_u64);
    req.temperature = body.get("temperature").and_then(Value::as_f64);
    req.top_p = body.get("top_p").and_then(Value::as_f64);
    req.stop = body
        .get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    req.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    req.user = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(req)
}

fn block_to_wire(b: &Block) -> Value {
    match b {
        Block::Text { text, cache } => {
            let mut v = json!({"type": "text", "text": text});
            cache_to_wire(*cache, &mut v);
            v
        }
        Block::Image {
            media_type,
            data,
            cache,
        } => {
            let mut v = json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
            cache_to_wire(*cache, &mut v);
            v
        }
        Block::ToolUse {
            id,
            name,
            input,
            cache,
        } => {
            let mut v = json!({"type": "tool_use", "id": id, "name": name, "input": input});
            cache_to_wire(*cache, &mut v);
            v
        }
        Block::ToolResult {
            id,
            content,
            is_error,
            cache,
        } => {
            let mut v = json!({"type": "tool_result", "tool_use_id": id, "content": content});
            if *is_error {
                v["is_error"] = Value::Bool(true);
            }
            cache_to_wire(*cache, &mut v);
            v
        }
        Block::Thinking { text, signature } => {
            json!({"type": "thinking", "thinking": text, "signature": signature.clone().unwrap_or_default()})
        }
    }
}

/// The canonical request → an Anthropic Messages body for `model`.
pub fn request_from_ir(req: &Request, model: &str) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": req.messages.iter().map(|m| json!({
            "role": match m.role { Role::User => "user", Role::Assistant => "assistant" },
            "content": m.content.iter().map(block_to_wire).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if !req.system.is_empty() {
        body["system"] = Value::Array(
            req.system
                .iter()
                .map(|p| {
                    let mut v = json!({"type": "text", "text": p.text});
                    cache_to_wire(p.cache, &mut v);
                    v
                })
                .collect(),
        );
    }
    if !req.tools.is_empty() {
        body["tools"] = Value::Array(
            req.tools
                .iter()
                .map(|t| {
                    let mut v = json!({"name": t.name, "input_schema": t.schema});
                    if let Some(d) = &t.description {
                        v["description"] = Value::String(d.clone());
                    }
                    cache_to_wire(t.cache, &mut v);
                    v
                })
                .collect(),
        );
    }
    let mut choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::Any) => Some(json!({"type": "any"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Tool(n)) => Some(json!({"type": "tool", "name": n})),
    };
    if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if let Some(c) = choice {
        body["tool_choice"] = c;
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = req.top_p {
        body["top_p"] = json!(t);
    }
    if !req.stop.is_empty() {
        body["stop_sequences"] = json!(req.stop);
    }
    if let Some(u) = &req.user {
        body["metadata"] = json!({"user_id": u});
    }
    if req.stream {
        body["stream"] = Value::Bool(true);
    }
    body
}

pub fn stop_from_wire(s: &str) -> StopReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "refusal" => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

pub fn stop_to_wire(s: StopReason) -> &'static str {
    match s {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFilter => "refusal",
    }
}

/// An Anthropic message body → the canonical response.
pub fn response_to_ir(body: &[u8]) -> Result<Response, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let items = v["content"].as_array().ok_or("no content array")?;
    let mut content = Vec::new();
    for b in items {
        match b["type"].as_str() {
            Some("text") => content.push(Block::Text {
                text: b["text"].as_str().unwrap_or("").to_string(),
                cache: None,
            }),
            Some("tool_use") => content.push(Block::ToolUse {
                id: b["id"].as_str().unwrap_or("").to_string(),
                name: b["name"].as_str().unwrap_or("").to_string(),
                input: b.get("input").cloned().unwrap_or_else(|| json!({})),
                cache: None,
            }),
            Some("thinking") => content.push(Block::Thinking {
                text: b["thinking"].as_str().unwrap_or("").to_string(),
                signature: b["signature"].as_str().map(str::to_string),
            }),
            _ => {}
        }
    }
    Ok(Response {
        id: v["id"].as_str().unwrap_or("").to_string(),
        model: v["model"].as_str().unwrap_or("").to_string(),
        content,
        stop: stop_from_wire(v["stop_reason"].as_str().unwrap_or("end_turn")),
        usage: usage_from_wire(&v["usage"]),
    })
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_string()
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}

/// The canonical response → an Anthropic message body.
pub fn response_from_ir(r: &Response, model: &str) -> Value {
    json!({
        "id": message_id(&r.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": r.content.iter().map(block_to_wire).collect::<Vec<_>>(),
        "stop_reason": stop_to_wire(r.stop),
        "stop_sequence": null,
        "usage": usage_to_wire(&r.usage),
    })
}

pub fn error_class(t: &str) -> ErrorClass {
    match t {
        "invalid_request_error" => ErrorClass::InvalidRequest,
        "authentication_error" => ErrorClass::Authentication,
        "permission_error" => ErrorClass::Permission,
        "not_found_error" => ErrorClass::NotFound,
        "request_too_large" => ErrorClass::TooLarge,
        "rate_limit_error" => ErrorClass::RateLimited,
        "timeout_error" => ErrorClass::Timeout,
        "overloaded_error" => ErrorClass::Overloaded,
        _ => ErrorClass::Server,
    }
}

#[derive(serde::Deserialize)]
struct DeltaEvent {
    #[serde(default)]
    index: usize,
    delta: DeltaBody,
}

#[derive(serde::Deserialize)]
struct DeltaBody {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
    partial_json: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
}

/// Upstream Anthropic SSE → events.
#[derive(Debug, Default)]
pub struct Decoder {
    framer: SseFramer,
    /// `message_start`'s usage, overlaid by each `message_delta`'s (cumulative) usage.
    usage: Map<String, Value>,
    /// An event whose data is not JSON arrived.
    bad: bool,
}

impl Decoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.framer
            .feed(chunk)
            .into_iter()
            .map(|raw| {
                let events = self.events(&raw);
                Frame { raw, events }
            })
            .collect()
    }

    pub fn finish(&mut self) -> Option<Frame> {
        let raw = self.framer.finish()?;
        let events = self.events(&raw);
        Some(Frame { raw, events })
    }

    pub fn malformed(&self) -> bool {
        self.framer.overflow || self.bad
    }

    fn merge_usage(&mut self, u: &Value) {
        if let Some(o) = u.as_object() {
            for (k, v) in o {
                if !v.is_null() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn events(&mut self, raw: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        let (name, data) = event_fields(raw);
        if data.is_empty() {
            return out;
        }
        // The frequent event is read into a small typed struct, not a `Value`.
        if name == Some("content_block_delta") {
            match serde_json::from_slice::<DeltaEvent>(&data) {
                Ok(d) => {
                    let delta = match d.delta.kind.as_str() {
                        "text_delta" => d.delta.text.map(Delta::Text),
                        "input_json_delta" => d.delta.partial_json.map(Delta::ToolInput),
                        "thinking_delta" => d.delta.thinking.map(Delta::Thinking),
                        "signature_delta" => d.delta.signature.map(Delta::Signature),
                        _ => None,
                    };
                    if let Some(delta) = delta {
                        out.push(Event::Delta {
                            index: d.index,
                            delta,
                        });
                    }
                }
                Err(_) => self.bad = true,
            }
            return out;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            self.bad = true;
            return out;
        };
        let index = v["index"].as_u64().unwrap_or(0) as usize;
        match v["type"].as_str().unwrap_or("") {
            "message_start" => {
                let m = &v["message"];
                out.push(Event::Start {
                    id: m["id"].as_str().unwrap_or("").to_string(),
                    model: m["model"].as_str().unwrap_or("").to_string(),
                });
                self.merge_usage(&m["usage"]);
                out.push(Event::Usage {
                    usage: usage_from_wire(&Value::Object(self.usage.clone())),
                    final_count: false,
                });
            }
            "content_block_start" => {
                let b = &v["content_block"];
                let block = match b["type"].as_str() {
                    Some("tool_use") => BlockStart::ToolUse {
                        id: b["id"].as_str().unwrap_or("").to_string(),
                        name: b["name"].as_str().unwrap_or("").to_string(),
                    },
                    Some("thinking") => BlockStart::Thinking,
                    _ => BlockStart::Text,
                };
                out.push(Event::BlockStart { index, block });
                if let Some(t) = b["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push(Event::Delta {
                        index,
                        delta: Delta::Text(t.to_string()),
                    });
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                let delta = match d["type"].as_str() {
                    Some("text_delta") => {
                        Some(Delta::Text(d["text"].as_str().unwrap_or("").to_string()))
                    }
                    Some("input_json_delta") => Some(Delta::ToolInput(
                        d["partial_json"].as_str().unwrap_or("").to_string(),
                    )),
                    Some("thinking_delta") => Some(Delta::Thinking(
                        d["thinking"].as_str().unwrap_or("").to_string(),
                    )),
                    Some("signature_delta") => Some(Delta::Signature(
                        d["signature"].as_str().unwrap_or("").to_string(),
                    )),
                    _ => None,
                };
                if let Some(delta) = delta {
                    out.push(Event::Delta { index, delta });
                }
            }
            "content_block_stop" => out.push(Event::BlockStop { index }),
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    out.push(Event::Stop {
                        reason: stop_from_wire(r),
                    });
                }
                self.merge_usage(&v["usage"]);
                out.push(Event::Usage {
                    usage: usage_from_wire(&Value::Object(self.usage.clone())),
                    final_count: true,
                });
            }
            "message_stop" => out.push(Event::End),
            "error" => out.push(Event::Error {
                class: error_class(v["error"]["type"].as_str().unwrap_or("")),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("upstream error")
                    .to_string(),
            }),
            _ => {}
        }
        out
    }
}

/// Events → Anthropic SSE for the client.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    stop: Option<StopReason>,
    usage: Usage,
    open: Option<usize>,
}

fn sse(out: &mut BytesMut, name: &str, data: &Value) {
    out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
}

impl Encoder {
    pub fn new(model: &str) -> Encoder {
        Encoder {
            model: model.to_string(),
            stop: None,
            usage: Usage::default(),
            open: None,
        }
    }

    pub fn encode(&mut self, ev: &Event, out: &mut BytesMut) {
        match ev {
            Event::Start { id, .. } => sse(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {"id": message_id(id), "type": "message",
                    "role": "assistant", "model": self.model, "content": [], "stop_reason": null,
                    "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ),
            Event::BlockStart { index, block } => {
                if let Some(i) = self.open.take()
                    && i != *index
                {
                    sse(
                        out,
                        "content_block_stop",
                        &json!({"type": "content_block_stop", "index": i}),
                    );
                }
                self.open = Some(*index);
                let b = match block {
                    BlockStart::Text => json!({"type": "text", "text": ""}),
                    BlockStart::ToolUse { id, name } => {
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}})
                    }
                    BlockStart::Thinking => {
                        json!({"type": "thinking", "thinking": "", "signature": ""})
                    }
                };
                sse(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index, "content_block": b}),
                );
            }
            Event::Delta { index, delta } => {
                let d = match delta {
                    Delta::Text(t) => json!({"type": "text_delta", "text": t}),
                    Delta::ToolInput(p) => json!({"type": "input_json_delta", "partial_json": p}),
                    Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
                    Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
                };
                sse(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": d}),
                );
            }
            Event::BlockStop { index } => {
                if self.open == Some(*index) {
                    self.open = None;
                }
                sse(
                    out,
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}),
                );
            }
            Event::Stop { reason } => self.stop = Some(*reason),
            Event::Usage { usage, .. } => self.usage = *usage,
            Event::Error { class, message } => sse(
                out,
                "error",
                &json!({"type": "error", "error": {"type": error_type(*class), "message": message}}),
            ),
            Event::End => {
                if let Some(i) = self.open.take() {
                    sse(
                        out,
                        "content_block_stop",
                        &json!({"type": "content_block_stop", "index": i}),
                    );
                }
                let stop = self.stop.unwrap_or(StopReason::EndTurn);
                sse(
                    out,
                    "message_delta",
                    &json!({"type": "message_delta", "delta": {"stop_reason": stop_to_wire(stop), "stop_sequence": null},
                        "usage": usage_to_wire(&self.usage)}),
                );
                sse(out, "message_stop", &json!({"type": "message_stop"}));
            }
        }
    }

    /// Bytes that tell the client the stream broke off.
    pub fn cut(message: &str) -> Bytes {
        let mut out = BytesMut::new();
        sse(
            &mut out,
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        );
        out.freeze()
    }
}

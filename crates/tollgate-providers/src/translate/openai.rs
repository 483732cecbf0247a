//! OpenAI Chat Completions ⇄ the canonical representation.

use super::{
    Block, BlockStart, CacheTtl, Delta, ErrorClass, Event, Format, Frame, Message, Request,
    Response, ResponseFormat, Role, StopReason, SystemPart, Tool, ToolChoice, TranslateError,
    parse_arguments, parse_data_url,
};
use crate::openai::WireUsage;
use crate::sse::{SseFramer, event_fields};
use bytes::BytesMut;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use tollgate_domain::usage::Usage;

const ME: Format = Format::OpenAi;

/// Request fields translated (or harmlessly left behind: `store`, `metadata`,
/// `prompt_cache_key` only concern OpenAI itself).
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "metadata",
    "store",
    "prompt_cache_key",
    "n",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
];

fn text_of(content: &Value, field: &str, to: Format) -> Result<String, TranslateError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(p["text"].as_str().unwrap_or("").to_string()),
                    Some(other) => {
                        return Err(TranslateError::unsupported(
                            format!("{field} content part `{other}`"),
                            ME,
                            to,
                        ));
                    }
                    None => {
                        return Err(TranslateError::Invalid(format!(
                            "{field}: a content part has no type"
                        )));
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(TranslateError::Invalid(format!(
            "{field}: content must be a string or an array"
        ))),
    }
}

fn user_blocks(content: &Value, to: Format) -> Result<Vec<Block>, TranslateError> {
    match content {
        Value::String(s) => Ok(vec![Block::Text {
            text: s.clone(),
            cache: None,
        }]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(Block::Text {
                        text: p["text"].as_str().unwrap_or("").to_string(),
                        cache: None,
                    }),
                    Some("image_url") => {
                        let url = p["image_url"]["url"].as_str().unwrap_or("");
                        let Some((media_type, data)) = parse_data_url(url) else {
                            return Err(TranslateError::unsupported(
                                "image_url with an http(s) URL (send the image as a base64 data URL)",
                                ME,
                                to,
                            ));
                        };
                        out.push(Block::Image {
                            media_type,
                            data,
                            cache: None,
                        });
                    }
                    Some(other) => {
                        return Err(TranslateError::unsupported(
                            format!("content part `{other}`"),
                            ME,
                            to,
                        ));
                    }
                    None => {
                        return Err(TranslateError::Invalid("a content part has no type".into()));
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(Vec::new()),
        _ => Err(TranslateError::Invalid(
            "content must be a string or an array".into(),
        )),
    }
}

/// Append a message, merging it into the previous one when the role repeats (the
/// other formats want turns to alternate; OpenAI's tool messages become user turns).
fn push(messages: &mut Vec<Message>, role: Role, content: Vec<Block>) {
    if content.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == role => last.content.extend(content),
        _ => messages.push(Message { role, content }),
    }
}

/// An OpenAI chat request body → the canonical request.
pub fn request_to_ir(body: &Map<String, Value>, to: Format) -> Result<Request, TranslateError> {
    for (k, v) in body {
        if v.is_null() {
            continue;
        }
        let harmless = match k.as_str() {
            "n" => v.as_u64() == Some(1),
            "presence_penalty" | "frequency_penalty" => v.as_f64() == Some(0.0),
            "logprobs" => v.as_bool() == Some(false),
            other => KNOWN.contains(&other),
        };
        if !harmless {
            return Err(TranslateError::unsupported(k.clone(), ME, to));
        }
    }
    let mut req = Request::default();
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::Invalid("messages must be an array".into()))?;
    for m in msgs {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                let text = text_of(content, "system", to)?;
                req.system.push(SystemPart { text, cache: None });
            }
            "user" => push(&mut req.messages, Role::User, user_blocks(content, to)?),
            "assistant" => {
                let mut blocks = Vec::new();
                let text = text_of(content, "assistant", to)?;
                if !text.is_empty() {
                    blocks.push(Block::Text { text, cache: None });
                }
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let f = &c["function"];
                        blocks.push(Block::ToolUse {
                            id: c["id"].as_str().unwrap_or("").to_string(),
                            name: f["name"].as_str().unwrap_or("").to_string(),
                            input: parse_arguments(f["arguments"].as_str().unwrap_or("")),
                            cache: None,
                        });
                    }
                }
                push(&mut req.messages, Role::Assistant, blocks);
            }
            "tool" => {
                let block = Block::ToolResult {
                    id: m["tool_call_id"].as_str().unwrap_or("").to_string(),
                    content: text_of(content, "tool", to)?,
                    is_error: false,
                    cache: None,
                };
                push(&mut req.messages, Role::User, vec![block]);
            }
            "function" => return Err(TranslateError::unsupported("function messages", ME, to)),
            other => {
                return Err(TranslateError::Invalid(format!(
                    "unknown message role {other:?}"
                )));
            }
        }
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        for t in tools {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(TranslateError::unsupported(
                    "tools of a type other than function",
                    ME,
                    to,
                ));
            }
            let f = &t["function"];
            req.tools.push(Tool {
                name: f["name"].as_str().unwrap_or("").to_string(),
                description: f["description"].as_str().map(str::to_string),
                schema: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                cache: None,
            });
        }
    }
    req.tool_choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Any,
            other => {
                return Err(TranslateError::Invalid(format!(
                    "unknown tool_choice {other:?}"
                )));
            }
        }),
        Some(v) => match v["function"]["name"].as_str() {
            Some(n) => Some(ToolChoice::Tool(n.to_string())),
            None => return Err(TranslateError::unsupported("tool_choice", ME, to)),
        },
    };
    req.parallel_tool_calls = body.get("parallel_tool_calls").and_then(Value::as_bool);
    req.max_tokens = body
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64));
    req.temperature = body.get("temperature").and_then(Value::as_f64);
    req.top_p = body.get("top_p").and_then(Value::as_f64);
    req.stop = match body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    req.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    req.response_format = match body.get("response_format") {
        None | Some(Value::Null) => None,
        Some(f) => response_format(f, "response_format", to)?,
    };
    req.user = body
        .get("user")
        .or_else(|| body.get("safety_identifier"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(req)
}

/// An OpenAI `response_format` object (`{"type": "json_schema", "json_schema": {...}}`)
/// → the canonical one; `text` is no format at all.
pub fn response_format(
    f: &Value,
    field: &str,
    to: Format,
) -> Result<Option<ResponseFormat>, TranslateError> {
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let js = &f["json_schema"];
            let Some(schema) = js.get("schema").filter(|s| s.is_object()) else {
                return Err(TranslateError::Invalid(format!(
                    "{field}.json_schema.schema must be a JSON Schema object"
                )));
            };
            Ok(Some(ResponseFormat::JsonSchema {
                name: js["name"].as_str().unwrap_or("response").to_string(),
                description: js["description"].as_str().map(str::to_string),
                schema: schema.clone(),
                strict: js["strict"].as_bool(),
            }))
        }
        Some(other) => Err(TranslateError::unsupported(
            format!("{field} type `{other}`"),
            ME,
            to,
        )),
        None => Err(TranslateError::Invalid(format!("{field} has no type"))),
    }
}

/// The canonical response format → OpenAI's `response_format`.
pub fn response_format_to_wire(f: &ResponseFormat) -> Value {
    match f {
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            strict,
        } => {
            let mut js = json!({"name": name, "schema": schema});
            if let Some(d) = description {
                js["description"] = json!(d);
            }
            if let Some(s) = strict {
                js["strict"] = json!(s);
            }
            json!({"type": "json_schema", "json_schema": js})
        }
    }
}

fn stop_to_wire(s: StopReason) -> &'static str {
    match s {
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::ContentFilter => "content_filter",
    }
}

fn stop_from_wire(s: &str) -> StopReason {
    match s {
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

fn ttl_dropped(_: Option<CacheTtl>) {}

/// The canonical request → an OpenAI chat body for `model`. Streams ask for usage.
pub fn request_from_ir(req: &Request, model: &str, from: Format) -> Result<Value, TranslateError> {
    let mut messages = Vec::new();
    if !req.system.is_empty() {
        let text: Vec<&str> = req.system.iter().map(|p| p.text.as_str()).collect();
        messages.push(json!({"role": "system", "content": text.join("\n")}));
    }
    for m in &req.messages {
        match m.role {
            Role::User => {
                let mut parts = Vec::new();
                for b in &m.content {
                    match b {
                        Block::ToolResult {
                            id, content, cache, ..
                        } => {
                            ttl_dropped(*cache);
                            messages.push(
                                json!({"role": "tool", "tool_call_id": id, "content": content}),
                            );
                        }
                        Block::Text { text, .. } => {
                            parts.push(json!({"type": "text", "text": text}))
                        }
                        Block::Image {
                            media_type, data, ..
                        } => parts.push(json!({"type": "image_url",
                            "image_url": {"url": format!("data:{media_type};base64,{data}")}})),
                        Block::ToolUse { .. } => {
                            return Err(TranslateError::Invalid(
                                "a user message cannot hold a tool call".into(),
                            ));
                        }
                        Block::Thinking { .. } => {
                            return Err(TranslateError::unsupported("thinking blocks", from, ME));
                        }
                    }
                }
                if parts.len() == 1 && parts[0]["type"] == "text" {
                    messages.push(json!({"role": "user", "content": parts[0]["text"]}));
                } else if !parts.is_empty() {
                    messages.push(json!({"role": "user", "content": parts}));
                }
            }
            Role::Assistant => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for b in &m.content {
                    match b {
                        Block::Text { text: t, .. } => text.push_str(t),
                        Block::ToolUse {
                            id, name, input, ..
                        } => calls.push(json!({"id": id, "type": "function",
                            "function": {"name": name, "arguments": input.to_string()}})),
                        Block::Thinking { .. } => {
                            return Err(TranslateError::unsupported("thinking blocks", from, ME));
                        }
                        Block::Image { .. } | Block::ToolResult { .. } => {
                            return Err(TranslateError::unsupported(
                                "images or tool results in assistant turns",
                                from,
                                ME,
                            ));
                        }
                    }
                }
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
        }
    }
    let mut body = json!({"model": model, "messages": messages});
    let o = body
        .as_object_mut()
        .ok_or_else(|| TranslateError::Invalid("internal".into()))?;
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.schema});
                if let Some(d) = &t.description {
                    f["description"] = Value::String(d.clone());
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = &req.tool_choice {
        o.insert(
            "tool_choice".into(),
            match c {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Any => json!("required"),
                ToolChoice::None => json!("none"),
                ToolChoice::Tool(n) => json!({"type": "function", "function": {"name": n}}),
            },
        );
    }
    if let Some(p) = req.parallel_tool_calls {
        o.insert("parallel_tool_calls".into(), Value::Bool(p));
    }
    if let Some(n) = req.max_tokens {
        o.insert("max_completion_tokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        o.insert("top_p".into(), json!(t));
    }
    if !req.stop.is_empty() {
        o.insert("stop".into(), json!(req.stop));
    }
    if let Some(u) = &req.user {
        o.insert("user".into(), json!(u));
    }
    if let Some(f) = &req.response_format {
        o.insert("response_format".into(), response_format_to_wire(f));
    }
    if req.stream {
        o.insert("stream".into(), Value::Bool(true));
        o.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(body)
}

/// An OpenAI chat completion body → the canonical response.
pub fn response_to_ir(body: &[u8]) -> Result<Response, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    if !msg.is_object() {
        return Err("no choices[0].message".into());
    }
    let mut content = Vec::new();
    for f in ["reasoning_content", "reasoning"] {
        if let Some(t) = msg[f].as_str().filter(|t| !t.is_empty()) {
            content.push(Block::Thinking {
                text: t.to_string(),
                signature: None,
            });
            break;
        }
    }
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(Block::Text {
            text: t.to_string(),
            cache: None,
        });
    }
    if let Some(calls) = msg["tool_calls"].as_array() {
        for c in calls {
            content.push(Block::ToolUse {
                id: c["id"].as_str().unwrap_or("").to_string(),
                name: c["function"]["name"].as_str().unwrap_or("").to_string(),
                input: parse_arguments(c["function"]["arguments"].as_str().unwrap_or("")),
                cache: None,
            });
        }
    }
    let usage = serde_json::from_value::<WireUsage>(v["usage"].clone())
        .map(|u| u.to_usage())
        .unwrap_or_default();
    Ok(Response {
        id: v["id"].as_str().unwrap_or("").to_string(),
        model: v["model"].as_str().unwrap_or("").to_string(),
        content,
        stop: stop_from_wire(choice["finish_reason"].as_str().unwrap_or("stop")),
        usage,
    })
}

/// OpenAI's `usage` object for neutral usage.
pub fn usage_to_wire(u: &Usage) -> Value {
    let prompt = u.prompt_total();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output,
        "total_tokens": prompt + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

/// The canonical response → an OpenAI chat completion body.
pub fn response_from_ir(r: &Response, model: &str, created: u64) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for b in &r.content {
        match b {
            Block::Text { text: t, .. } => text.push_str(t),
            Block::Thinking { text: t, .. } => reasoning.push_str(t),
            Block::ToolUse {
                id, name, input, ..
            } => calls.push(json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": input.to_string()}})),
            Block::Image { .. } | Block::ToolResult { .. } => {}
        }
    }
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    json!({
        "id": openai_id(&r.id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": stop_to_wire(r.stop)}],
        "usage": usage_to_wire(&r.usage),
    })
}

fn openai_id(id: &str) -> String {
    if id.starts_with("chatcmpl-") {
        id.to_string()
    } else {
        format!("chatcmpl-{id}")
    }
}

/// The error class of an OpenAI stream `error` object.
fn error_class(e: &Value) -> ErrorClass {
    let t = e["type"]
        .as_str()
        .or_else(|| e["code"].as_str())
        .unwrap_or("");
    match t {
        "invalid_request_error" => ErrorClass::InvalidRequest,
        "authentication_error" => ErrorClass::Authentication,
        "rate_limit_exceeded" | "requests" | "tokens" => ErrorClass::RateLimited,
        _ => ErrorClass::Server,
    }
}

/// The OpenAI `error.type` for an error class.
pub fn error_type(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::InvalidRequest | ErrorClass::NotFound | ErrorClass::TooLarge => {
            "invalid_request_error"
        }
        ErrorClass::Authentication => "authentication_error",
        ErrorClass::Permission => "permission_error",
        ErrorClass::RateLimited => "rate_limit_error",
        ErrorClass::Timeout | ErrorClass::Overloaded | ErrorClass::Server => "server_error",
    }
}

/// Upstream OpenAI SSE → events.
#[derive(Debug, Default)]
pub struct Decoder {
    framer: SseFramer,
    started: bool,
    /// The open block: (canonical index, kind), kind 0 text, 1 thinking, 2 tool.
    open: Option<(usize, u8)>,
    next_index: usize,
    /// OpenAI tool-call index → canonical block index.
    tools: HashMap<u64, usize>,
    /// A chunk whose data is not JSON arrived.
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

    fn open_block(&mut self, kind: u8, block: BlockStart, out: &mut Vec<Event>) -> usize {
        if let Some((i, _)) = self.open.take() {
            out.push(Event::BlockStop { index: i });
        }
        let i = self.next_index;
        self.next_index += 1;
        self.open = Some((i, kind));
        out.push(Event::BlockStart { index: i, block });
        i
    }

    fn events(&mut self, raw: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        let (_, data) = event_fields(raw);
        if data.is_empty() {
            return out;
        }
        if data == b"[DONE]" {
            if let Some((i, _)) = self.open.take() {
                out.push(Event::BlockStop { index: i });
            }
            out.push(Event::End);
            return out;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            self.bad = true;
            return out;
        };
        if let Some(e) = v.get("error").filter(|e| e.is_object()) {
            out.push(Event::Error {
                class: error_class(e),
                message: e["message"]
                    .as_str()
                    .unwrap_or("upstream error")
                    .to_string(),
            });
            return out;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: v["id"].as_str().unwrap_or("").to_string(),
                model: v["model"].as_str().unwrap_or("").to_string(),
            });
        }
        if let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) {
            let d = &choice["delta"];
            for f in ["reasoning_content", "reasoning"] {
                if let Some(t) = d[f].as_str().filter(|t| !t.is_empty()) {
                    let i = match self.open {
                        Some((i, 1)) => i,
                        _ => self.open_block(1, BlockStart::Thinking, &mut out),
                    };
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Thinking(t.to_string()),
                    });
                    break;
                }
            }
            if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
                let i = match self.open {
                    Some((i, 0)) => i,
                    _ => self.open_block(0, BlockStart::Text, &mut out),
                };
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::Text(t.to_string()),
                });
            }
            if let Some(calls) = d["tool_calls"].as_array() {
                for c in calls {
                    let k = c["index"].as_u64().unwrap_or(0);
                    let i = match self.tools.get(&k) {
                        Some(i) => *i,
                        None => {
                            let block = BlockStart::ToolUse {
                                id: c["id"].as_str().unwrap_or("").to_string(),
                                name: c["function"]["name"].as_str().unwrap_or("").to_string(),
                            };
                            let i = self.open_block(2, block, &mut out);
                            self.tools.insert(k, i);
                            i
                        }
                    };
                    if let Some(a) = c["function"]["arguments"]
                        .as_str()
                        .filter(|a| !a.is_empty())
                    {
                        out.push(Event::Delta {
                            index: i,
                            delta: Delta::ToolInput(a.to_string()),
                        });
                    }
                }
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                if let Some((i, _)) = self.open.take() {
                    out.push(Event::BlockStop { index: i });
                }
                out.push(Event::Stop {
                    reason: stop_from_wire(r),
                });
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object())
            && let Ok(w) = serde_json::from_value::<WireUsage>(u.clone())
        {
            out.push(Event::Usage {
                usage: w.to_usage(),
                final_count: true,
            });
        }
        out
    }
}

/// Events → OpenAI SSE for the client.
#[derive(Debug)]
pub struct Encoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    tools: HashMap<usize, usize>,
    usage: Option<Usage>,
    stopped: bool,
}

impl Encoder {
    /// `include_usage`: the client asked for `stream_options.include_usage`.
    pub fn new(model: &str, created: u64, include_usage: bool) -> Encoder {
        Encoder {
            id: String::new(),
            model: model.to_string(),
            created,
            include_usage,
            tools: HashMap::new(),
            usage: None,
            stopped: false,
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let mut c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
    }

    pub fn encode(&mut self, ev: &Event, out: &mut BytesMut) {
        match ev {
            Event::Start { id, .. } => {
                self.id = openai_id(id);
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            Event::BlockStart {
                index,
                block: BlockStart::ToolUse { id, name },
            } => {
                let k = self.tools.len();
                self.tools.insert(*index, k);
                self.chunk(
                    out,
                    json!({"tool_calls": [{"index": k, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                    None,
                );
            }
            Event::BlockStart { .. } | Event::BlockStop { .. } => {}
            Event::Delta { index, delta } => match delta {
                Delta::Text(t) => self.chunk(out, json!({"content": t}), None),
                Delta::Thinking(t) => self.chunk(out, json!({"reasoning_content": t}), None),
                Delta::ToolInput(a) => {
                    let k = self.tools.get(index).copied().unwrap_or(0);
                    self.chunk(
                        out,
                        json!({"tool_calls": [{"index": k, "function": {"arguments": a}}]}),
                        None,
                    );
                }
                Delta::Signature(_) => {}
            },
            Event::Stop { reason } => {
                self.stopped = true;
                self.chunk(out, json!({}), Some(stop_to_wire(*reason)));
            }
            Event::Usage { usage, .. } => self.usage = Some(*usage),
            Event::Error { class, message } => {
                let e = crate::openai::error_body(message, error_type(*class), None, None);
                out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
            }
            Event::End => {
                if self.include_usage
                    && let Some(u) = &self.usage
                {
                    let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage_to_wire(u)});
                    out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
    }
}

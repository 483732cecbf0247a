//! Bedrock Converse ⇄ the canonical representation.

use super::{
    Block, BlockStart, CacheTtl, Delta, Event, Format, Frame, Message, Request, Response, Role,
    StopReason, SystemPart, Tool, ToolChoice, TranslateError,
};
use crate::bedrock::{error_class, stream_exception_type, usage_from_wire, usage_to_wire};
use crate::eventstream::{FrameDecoder, Message as EsMessage};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use tollgate_domain::usage::Usage;

const ME: Format = Format::Bedrock;

const KNOWN: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "requestMetadata",
    "modelId",
];

fn cache_point_ttl(v: &Value) -> CacheTtl {
    match v.get("ttl").and_then(Value::as_str) {
        Some("1h") => CacheTtl::OneHour,
        _ => CacheTtl::FiveMinutes,
    }
}

fn cache_point(c: CacheTtl) -> Value {
    match c {
        CacheTtl::FiveMinutes => json!({"cachePoint": {"type": "default"}}),
        CacheTtl::OneHour => json!({"cachePoint": {"type": "default", "ttl": "1h"}}),
    }
}

fn set_cache(b: &mut Block, ttl: CacheTtl) {
    match b {
        Block::Text { cache, .. }
        | Block::Image { cache, .. }
        | Block::ToolUse { cache, .. }
        | Block::ToolResult { cache, .. } => *cache = Some(ttl),
        Block::Thinking { .. } => {}
    }
}

fn media_type(format: &str) -> String {
    format!("image/{}", if format == "jpg" { "jpeg" } else { format })
}

fn image_format(media_type: &str) -> &str {
    media_type.strip_prefix("image/").unwrap_or(media_type)
}

fn blocks_of(items: &[Value], to: Format) -> Result<Vec<Block>, TranslateError> {
    let mut out: Vec<Block> = Vec::new();
    for b in items {
        let Some((kind, v)) = b.as_object().and_then(|o| o.iter().next()) else {
            return Err(TranslateError::Invalid("an empty content block".into()));
        };
        match kind.as_str() {
            "text" => out.push(Block::Text {
                text: v.as_str().unwrap_or("").to_string(),
                cache: None,
            }),
            "image" => {
                let Some(data) = v["source"]["bytes"].as_str() else {
                    return Err(TranslateError::unsupported(
                        "image sources other than bytes",
                        ME,
                        to,
                    ));
                };
                out.push(Block::Image {
                    media_type: media_type(v["format"].as_str().unwrap_or("png")),
                    data: data.to_string(),
                    cache: None,
                });
            }
            "toolUse" => out.push(Block::ToolUse {
                id: v["toolUseId"].as_str().unwrap_or("").to_string(),
                name: v["name"].as_str().unwrap_or("").to_string(),
                input: v.get("input").cloned().unwrap_or_else(|| json!({})),
                cache: None,
            }),
            "toolResult" => {
                let mut texts = Vec::new();
                for c in v["content"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    if let Some(t) = c.get("text").and_then(Value::as_str) {
                        texts.push(t.to_string());
                    } else if let Some(j) = c.get("json") {
                        texts.push(j.to_string());
                    } else {
                        return Err(TranslateError::unsupported(
                            "toolResult content other than text or json",
                            ME,
                            to,
                        ));
                    }
                }
                out.push(Block::ToolResult {
                    id: v["toolUseId"].as_str().unwrap_or("").to_string(),
                    content: texts.join("\n"),
                    is_error: v["status"].as_str() == Some("error"),
                    cache: None,
                });
            }
            "reasoningContent" => {
                let r = &v["reasoningText"];
                if r.is_null() {
                    return Err(TranslateError::unsupported(
                        "redacted reasoningContent",
                        ME,
                        to,
                    ));
                }
                out.push(Block::Thinking {
                    text: r["text"].as_str().unwrap_or("").to_string(),
                    signature: r["signature"].as_str().map(str::to_string),
                });
            }
            "cachePoint" => match out.last_mut() {
                Some(last) => set_cache(last, cache_point_ttl(v)),
                None => {
                    return Err(TranslateError::Invalid(
                        "a cachePoint must follow a content block".into(),
                    ));
                }
            },
            other => {
                return Err(TranslateError::unsupported(
                    format!("content block `{other}`"),
                    ME,
                    to,
                ));
            }
        }
    }
    Ok(out)
}

/// A Converse request body → the canonical request.
pub fn request_to_ir(
    body: &Map<String, Value>,
    stream: bool,
    to: Format,
) -> Result<Request, TranslateError> {
    for (k, v) in body {
        let empty = v.is_null()
            || v.as_object().is_some_and(Map::is_empty)
            || v.as_array().is_some_and(Vec::is_empty);
        if !empty && !KNOWN.contains(&k.as_str()) {
            return Err(TranslateError::unsupported(k.clone(), ME, to));
        }
    }
    let mut req = Request {
        stream,
        ..Request::default()
    };
    for s in body
        .get("system")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let Some(t) = s.get("text").and_then(Value::as_str) {
            req.system.push(SystemPart {
                text: t.to_string(),
                cache: None,
            });
        } else if let Some(c) = s.get("cachePoint") {
            match req.system.last_mut() {
                Some(p) => p.cache = Some(cache_point_ttl(c)),
                None => {
                    return Err(TranslateError::Invalid(
                        "a cachePoint must follow a system block".into(),
                    ));
                }
            }
        } else {
            return Err(TranslateError::unsupported(
                "system blocks other than text and cachePoint",
                ME,
                to,
            ));
        }
    }
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let role = match m["role"].as_str() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(TranslateError::Invalid(format!(
                    "unknown message role {other:?}"
                )));
            }
        };
        let content = blocks_of(
            m["content"].as_array().map(Vec::as_slice).unwrap_or(&[]),
            to,
        )?;
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => req.messages.push(Message { role, content }),
        }
    }
    if let Some(tc) = body.get("toolConfig").filter(|t| t.is_object()) {
        for t in tc["tools"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(spec) = t.get("toolSpec") {
                req.tools.push(Tool {
                    name: spec["name"].as_str().unwrap_or("").to_string(),
                    description: spec["description"].as_str().map(str::to_string),
                    schema: spec["inputSchema"]["json"].clone(),
                    cache: None,
                });
            } else if let Some(c) = t.get("cachePoint") {
                if let Some(last) = req.tools.last_mut() {
                    last.cache = Some(cache_point_ttl(c));
                }
            } else {
                return Err(TranslateError::unsupported(
                    "tools other than toolSpec",
                    ME,
                    to,
                ));
            }
        }
        if let Some(c) = tc.get("toolChoice").and_then(Value::as_object) {
            req.tool_choice = if c.contains_key("auto") {
                Some(ToolChoice::Auto)
            } else if c.contains_key("any") {
                Some(ToolChoice::Any)
            } else {
                c.get("tool")
                    .map(|t| ToolChoice::Tool(t["name"].as_str().unwrap_or("").to_string()))
            };
        }
    }
    if let Some(ic) = body.get("inferenceConfig") {
        req.max_tokens = ic.get("maxTokens").and_then(Value::as_u64);
        req.temperature = ic.get("temperature").and_then(Value::as_f64);
        req.top_p = ic.get("topP").and_then(Value::as_f64);
        req.stop = ic
            .get("stopSequences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
    }
    Ok(req)
}

fn block_to_wire(b: &Block, out: &mut Vec<Value>) {
    let cache = match b {
        Block::Text { text, cache } => {
            out.push(json!({"text": text}));
            *cache
        }
        Block::Image {
            media_type,
            data,
            cache,
        } => {
            out.push(
                json!({"image": {"format": image_format(media_type), "source": {"bytes": data}}}),
            );
            *cache
        }
        Block::ToolUse {
            id,
            name,
            input,
            cache,
        } => {
            out.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
            *cache
        }
        Block::ToolResult {
            id,
            content,
            is_error,
            cache,
        } => {
            out.push(
                json!({"toolResult": {"toolUseId": id, "content": [{"text": content}],
                "status": if *is_error { "error" } else { "success" }}}),
            );
            *cache
        }
        Block::Thinking { text, signature } => {
            let mut r = json!({"text": text});
            if let Some(s) = signature {
                r["signature"] = Value::String(s.clone());
            }
            out.push(json!({"reasoningContent": {"reasoningText": r}}));
            None
        }
    };
    if let Some(c) = cache {
        out.push(cache_point(c));
    }
}

/// The canonical request → a Converse body (the model goes in the URL).
pub fn request_from_ir(req: &Request, from: Format) -> Result<Value, TranslateError> {
    let mut body = json!({
        "messages": req.messages.iter().map(|m| {
            let mut content = Vec::new();
            for b in &m.content {
                block_to_wire(b, &mut content);
            }
            json!({"role": match m.role { Role::User => "user", Role::Assistant => "assistant" }, "content": content})
        }).collect::<Vec<_>>(),
    });
    if !req.system.is_empty() {
        let mut sys = Vec::new();
        for p in &req.system {
            sys.push(json!({"text": p.text}));
            if let Some(c) = p.cache {
                sys.push(cache_point(c));
            }
        }
        body["system"] = Value::Array(sys);
    }
    if req.parallel_tool_calls == Some(false) && !req.tools.is_empty() {
        return Err(TranslateError::unsupported(
            "parallel_tool_calls = false",
            from,
            ME,
        ));
    }
    if !req.tools.is_empty() {
        let mut tools = Vec::new();
        for t in &req.tools {
            let mut spec = json!({"name": t.name, "inputSchema": {"json": t.schema}});
            if let Some(d) = &t.description {
                spec["description"] = Value::String(d.clone());
            }
            tools.push(json!({"toolSpec": spec}));
            if let Some(c) = t.cache {
                tools.push(cache_point(c));
            }
        }
        let mut tc = json!({"tools": tools});
        match &req.tool_choice {
            None => {}
            Some(ToolChoice::Auto) => tc["toolChoice"] = json!({"auto": {}}),
            Some(ToolChoice::Any) => tc["toolChoice"] = json!({"any": {}}),
            Some(ToolChoice::Tool(n)) => tc["toolChoice"] = json!({"tool": {"name": n}}),
            Some(ToolChoice::None) => {
                return Err(TranslateError::unsupported("tool_choice none", from, ME));
            }
        }
        body["toolConfig"] = tc;
    }
    let mut ic = Map::new();
    if let Some(n) = req.max_tokens {
        ic.insert("maxTokens".into(), json!(n));
    }
    if let Some(t) = req.temperature {
        ic.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        ic.insert("topP".into(), json!(t));
    }
    if !req.stop.is_empty() {
        ic.insert("stopSequences".into(), json!(req.stop));
    }
    if !ic.is_empty() {
        body["inferenceConfig"] = Value::Object(ic);
    }
    Ok(body)
}

pub fn stop_from_wire(s: &str) -> StopReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "guardrail_intervened" | "content_filtered" => StopReason::ContentFilter,
        _ => StopReason::EndTurn,
    }
}

pub fn stop_to_wire(s: StopReason) -> &'static str {
    match s {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::ContentFilter => "content_filtered",
    }
}

/// A Converse response body → the canonical response.
pub fn response_to_ir(body: &[u8]) -> Result<Response, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let items = v["output"]["message"]["content"]
        .as_array()
        .ok_or("no output.message.content")?;
    let content = blocks_of(items, Format::OpenAi).map_err(|e| e.to_string())?;
    Ok(Response {
        id: String::new(),
        model: String::new(),
        content,
        stop: stop_from_wire(v["stopReason"].as_str().unwrap_or("end_turn")),
        usage: usage_from_wire(&v["usage"]),
    })
}

/// The canonical response → a Converse response body.
pub fn response_from_ir(r: &Response, latency_ms: u64) -> Value {
    let mut content = Vec::new();
    for b in &r.content {
        block_to_wire(b, &mut content);
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_to_wire(r.stop),
        "usage": usage_to_wire(&r.usage),
        "metrics": {"latencyMs": latency_ms},
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaEvent {
    #[serde(default)]
    content_block_index: usize,
    delta: DeltaBody,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaBody {
    text: Option<String>,
    tool_use: Option<ToolInput>,
    reasoning_content: Option<Reasoning>,
}

#[derive(serde::Deserialize)]
struct ToolInput {
    input: String,
}

#[derive(serde::Deserialize)]
struct Reasoning {
    text: Option<String>,
    signature: Option<String>,
}

/// Upstream event stream → events.
#[derive(Debug, Default)]
pub struct Decoder {
    frames: FrameDecoder,
    open: HashSet<usize>,
}

impl Decoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.frames
            .feed(chunk)
            .into_iter()
            .map(|(raw, m)| {
                let events = self.events(&m);
                Frame { raw, events }
            })
            .collect()
    }

    /// Event streams have no partial last frame to recover.
    pub fn finish(&mut self) -> Option<Frame> {
        None
    }

    pub fn malformed(&self) -> bool {
        self.frames.error.is_some()
    }

    fn ensure_open(&mut self, index: usize, block: BlockStart, out: &mut Vec<Event>) {
        if self.open.insert(index) {
            out.push(Event::BlockStart { index, block });
        }
    }

    fn events(&mut self, m: &EsMessage) -> Vec<Event> {
        let mut out = Vec::new();
        match m.message_type() {
            Some("event") => {}
            Some("exception") | Some("error") => {
                let kind = m
                    .header(":exception-type")
                    .or_else(|| m.header(":error-code"))
                    .unwrap_or("internalServerException");
                let message = crate::bedrock::error_message(&m.payload)
                    .or_else(|| m.header(":error-message").map(str::to_string))
                    .unwrap_or_else(|| kind.to_string());
                out.push(Event::Error {
                    class: error_class(kind),
                    message,
                });
                return out;
            }
            _ => return out,
        }
        // The frequent event is read into a small typed struct, not a `Value`.
        if m.header(":event-type") == Some("contentBlockDelta") {
            let Ok(d) = serde_json::from_slice::<DeltaEvent>(&m.payload) else {
                return out;
            };
            let index = d.content_block_index;
            if let Some(t) = d.delta.text {
                self.ensure_open(index, BlockStart::Text, &mut out);
                out.push(Event::Delta {
                    index,
                    delta: Delta::Text(t),
                });
            } else if let Some(t) = d.delta.tool_use {
                let block = BlockStart::ToolUse {
                    id: String::new(),
                    name: String::new(),
                };
                self.ensure_open(index, block, &mut out);
                out.push(Event::Delta {
                    index,
                    delta: Delta::ToolInput(t.input),
                });
            } else if let Some(r) = d.delta.reasoning_content {
                self.ensure_open(index, BlockStart::Thinking, &mut out);
                if let Some(t) = r.text {
                    out.push(Event::Delta {
                        index,
                        delta: Delta::Thinking(t),
                    });
                }
                if let Some(s) = r.signature {
                    out.push(Event::Delta {
                        index,
                        delta: Delta::Signature(s),
                    });
                }
            }
            return out;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            return out;
        };
        let index = v["contentBlockIndex"].as_u64().unwrap_or(0) as usize;
        match m.header(":event-type").unwrap_or("") {
            "messageStart" => out.push(Event::Start {
                id: String::new(),
                model: String::new(),
            }),
            "contentBlockStart" => {
                let t = &v["start"]["toolUse"];
                let block = if t.is_object() {
                    BlockStart::ToolUse {
                        id: t["toolUseId"].as_str().unwrap_or("").to_string(),
                        name: t["name"].as_str().unwrap_or("").to_string(),
                    }
                } else {
                    BlockStart::Text
                };
                self.ensure_open(index, block, &mut out);
            }
            "contentBlockStop" => {
                self.open.remove(&index);
                out.push(Event::BlockStop { index });
            }
            "messageStop" => out.push(Event::Stop {
                reason: stop_from_wire(v["stopReason"].as_str().unwrap_or("end_turn")),
            }),
            "metadata" => {
                out.push(Event::Usage {
                    usage: usage_from_wire(&v["usage"]),
                    final_count: true,
                });
                out.push(Event::End);
            }
            _ => {}
        }
        out
    }
}

/// Events → an event stream for the client.
#[derive(Debug, Default)]
pub struct Encoder {
    usage: Usage,
    stopped: bool,
    open: HashSet<usize>,
}

fn frame(out: &mut BytesMut, event_type: &str, payload: &Value) {
    out.extend_from_slice(&EsMessage::event(event_type, payload.to_string().as_bytes()).encode());
}

impl Encoder {
    pub fn encode(&mut self, ev: &Event, out: &mut BytesMut) {
        match ev {
            Event::Start { .. } => frame(out, "messageStart", &json!({"role": "assistant"})),
            Event::BlockStart { index, block } => {
                self.open.insert(*index);
                if let BlockStart::ToolUse { id, name } = block {
                    frame(
                        out,
                        "contentBlockStart",
                        &json!({"contentBlockIndex": index,
                        "start": {"toolUse": {"toolUseId": id, "name": name}}}),
                    );
                }
            }
            Event::Delta { index, delta } => {
                let d = match delta {
                    Delta::Text(t) => json!({"text": t}),
                    Delta::ToolInput(i) => json!({"toolUse": {"input": i}}),
                    Delta::Thinking(t) => json!({"reasoningContent": {"text": t}}),
                    Delta::Signature(s) => json!({"reasoningContent": {"signature": s}}),
                };
                frame(
                    out,
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": index, "delta": d}),
                );
            }
            Event::BlockStop { index } => {
                self.open.remove(index);
                frame(
                    out,
                    "contentBlockStop",
                    &json!({"contentBlockIndex": index}),
                );
            }
            Event::Stop { reason } => {
                self.close_open(out);
                self.stopped = true;
                frame(
                    out,
                    "messageStop",
                    &json!({"stopReason": stop_to_wire(*reason)}),
                );
            }
            Event::Usage { usage, .. } => self.usage = *usage,
            Event::Error { class, message } => {
                out.extend_from_slice(
                    &EsMessage::exception(stream_exception_type(*class), message).encode(),
                );
            }
            Event::End => {
                if !self.stopped {
                    self.close_open(out);
                    self.stopped = true;
                    frame(out, "messageStop", &json!({"stopReason": "end_turn"}));
                }
                frame(
                    out,
                    "metadata",
                    &json!({"usage": usage_to_wire(&self.usage), "metrics": {"latencyMs": 0}}),
                );
            }
        }
    }

    fn close_open(&mut self, out: &mut BytesMut) {
        let mut open: Vec<usize> = self.open.drain().collect();
        open.sort_unstable();
        for index in open {
            frame(
                out,
                "contentBlockStop",
                &json!({"contentBlockIndex": index}),
            );
        }
    }

    /// Bytes that tell the client the stream broke off.
    pub fn cut(message: &str) -> Bytes {
        EsMessage::exception("internalServerException", message).encode()
    }
}

//! The OpenAI Responses API (`POST /v1/responses`), as a client's format.
//!
//! A request is rewritten as the Chat Completions body it means ([`request_to_chat`]):
//! `instructions` → a system message, `input` items → messages (`message` items with
//! `input_text` / `output_text` / `input_image` parts, `function_call` → an assistant
//! tool call, `function_call_output` → a tool message), Responses-shape function tools →
//! chat tools, `text.format` → `response_format`, `max_output_tokens` →
//! `max_completion_tokens`. From there it takes the chat path to the canonical request,
//! so every upstream kind serves it. Answers are written from the canonical response
//! ([`response_from_ir`]) and streams from canonical events ([`Encoder`]: the typed
//! `response.*` events, each with its `sequence_number`).
//!
//! Not translated, refused with the field named: built-in tools (web search, file
//! search, ...), `reasoning` settings, `background`, `conversation`, `prompt`,
//! `truncation: auto`, `top_logprobs`, `max_tool_calls`, file inputs. `reasoning` input
//! items (the encrypted reasoning of an earlier OpenAI answer) are skipped; `include`
//! is ignored (it only asks for optional extra fields).

use super::{Block, BlockStart, Delta, Event, Format, Response, StopReason, TranslateError};
use bytes::BytesMut;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use tollgate_domain::usage::Usage;

const ME: Format = Format::Responses;

/// Request fields that have a Chat Completions equivalent or concern only the gateway.
const KNOWN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "text",
    "stream",
    "stream_options",
    "store",
    "previous_response_id",
    "metadata",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "include",
    "truncation",
    "reasoning",
    "top_logprobs",
];

fn unsupported(feature: impl Into<String>, to: Format) -> TranslateError {
    TranslateError::unsupported(feature, ME, to)
}

/// The text of a content array's text parts (`input_text`, `output_text`, `text`,
/// `refusal`).
fn parts_text(parts: &[Value], field: &str, to: Format) -> Result<String, TranslateError> {
    let mut out = String::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                out.push_str(p["text"].as_str().unwrap_or(""))
            }
            Some("refusal") => out.push_str(p["refusal"].as_str().unwrap_or("")),
            Some(other) => return Err(unsupported(format!("{field} part `{other}`"), to)),
            None => {
                return Err(TranslateError::Invalid(format!(
                    "{field}: a content part has no type"
                )));
            }
        }
    }
    Ok(out)
}

/// A `message` item's content → chat message content.
fn message_content(role: &str, content: &Value, to: Format) -> Result<Value, TranslateError> {
    let parts = match content {
        Value::String(s) => return Ok(Value::String(s.clone())),
        Value::Array(parts) => parts,
        _ => {
            return Err(TranslateError::Invalid(
                "input: a message's content must be a string or an array".into(),
            ));
        }
    };
    if role != "user" {
        return Ok(Value::String(parts_text(parts, "input", to)?));
    }
    let mut out = Vec::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                out.push(json!({"type": "text", "text": p["text"].as_str().unwrap_or("")}))
            }
            Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
                Some(url) => out.push(json!({"type": "image_url", "image_url": {"url": url}})),
                None => {
                    return Err(unsupported(
                        "input_image by file_id (send the image as a data URL)",
                        to,
                    ));
                }
            },
            Some(other) => return Err(unsupported(format!("input part `{other}`"), to)),
            None => {
                return Err(TranslateError::Invalid(
                    "input: a content part has no type".into(),
                ));
            }
        }
    }
    Ok(Value::Array(out))
}

/// The request's `input` as a list of items (a string is one user message).
pub fn input_items(body: &Map<String, Value>) -> Result<Vec<Value>, TranslateError> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![
            json!({"type": "message", "role": "user", "content": s}),
        ]),
        Some(Value::Array(items)) => Ok(items.clone()),
        None | Some(Value::Null) => Err(TranslateError::Invalid("input is required".into())),
        Some(_) => Err(TranslateError::Invalid(
            "input must be a string or an array of items".into(),
        )),
    }
}

/// Items → chat messages (after the `instructions` system message, if any).
fn items_to_messages(items: &[Value], to: Format) -> Result<Vec<Value>, TranslateError> {
    let mut messages: Vec<Value> = Vec::new();
    for item in items {
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => {
                let role = item["role"].as_str().unwrap_or("");
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(TranslateError::Invalid(format!(
                        "input: unknown message role {role:?}"
                    )));
                }
                let content = message_content(role, &item["content"], to)?;
                messages.push(json!({"role": role, "content": content}));
            }
            Some("function_call") => {
                let call = json!({
                    "id": item["call_id"].as_str().unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": item["name"].as_str().unwrap_or(""),
                        "arguments": item["arguments"].as_str().unwrap_or(""),
                    },
                });
                match messages.last_mut() {
                    Some(m) if m["role"] == "assistant" => {
                        match m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => m["tool_calls"] = json!([call]),
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => parts_text(parts, "function_call_output", to)?,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": item["call_id"].as_str().unwrap_or(""),
                    "content": output,
                }));
            }
            // An earlier OpenAI answer's reasoning (encrypted for OpenAI): nothing the
            // chat path can carry; the answer it led to is in the other items.
            Some("reasoning") => {}
            Some(other) => return Err(unsupported(format!("input item type `{other}`"), to)),
        }
    }
    Ok(messages)
}

/// A Responses request body → the Chat Completions body it means, with `history` (the
/// items of the response named by `previous_response_id`) before its own input. `to`
/// names the upstream format in errors.
pub fn request_to_chat(
    body: &Map<String, Value>,
    history: &[Value],
    to: Format,
) -> Result<Map<String, Value>, TranslateError> {
    for (k, v) in body {
        if v.is_null() {
            continue;
        }
        let ok = match k.as_str() {
            "truncation" => v.as_str() == Some("disabled"),
            "top_logprobs" => v.as_u64() == Some(0),
            "reasoning" => v.as_object().is_none_or(|o| o.values().all(Value::is_null)),
            other => KNOWN.contains(&other),
        };
        if !ok {
            return Err(unsupported(k.clone(), to));
        }
    }
    let mut messages = Vec::new();
    if let Some(i) = body.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    let mut items = history.to_vec();
    items.extend(input_items(body)?);
    messages.extend(items_to_messages(&items, to)?);
    let mut chat = Map::new();
    chat.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = body.get("tools").and_then(Value::as_array)
        && !tools.is_empty()
    {
        let mut out = Vec::new();
        for t in tools {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = json!({"name": t["name"].as_str().unwrap_or("")});
                    for k in ["description", "parameters", "strict"] {
                        if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                            f[k] = v.clone();
                        }
                    }
                    out.push(json!({"type": "function", "function": f}));
                }
                Some(other) => return Err(unsupported(format!("tools of type `{other}`"), to)),
                None => return Err(TranslateError::Invalid("a tool has no type".into())),
            }
        }
        chat.insert("tools".into(), Value::Array(out));
    }
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            chat.insert("tool_choice".into(), Value::String(s.clone()));
        }
        Some(c) if c["type"] == "function" => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": c["name"]}}),
            );
        }
        Some(c) => {
            return Err(unsupported(
                format!("tool_choice of type {}", c["type"]),
                to,
            ));
        }
    }
    if let Some(f) = body.get("text").and_then(|t| t.get("format"))
        && !f.is_null()
    {
        let rf = match f["type"].as_str() {
            Some("text") => None,
            Some("json_object") => Some(json!({"type": "json_object"})),
            Some("json_schema") => {
                let mut js = json!({
                    "name": f["name"].as_str().unwrap_or("response"),
                    "schema": f.get("schema").cloned().unwrap_or(Value::Null),
                });
                for k in ["description", "strict"] {
                    if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                        js[k] = v.clone();
                    }
                }
                Some(json!({"type": "json_schema", "json_schema": js}))
            }
            other => {
                return Err(unsupported(
                    format!("text.format type {}", other.unwrap_or("(none)")),
                    to,
                ));
            }
        };
        if let Some(rf) = rf {
            chat.insert("response_format".into(), rf);
        }
    }
    if let Some(v) = body.get("text").and_then(|t| t.get("verbosity"))
        && !v.is_null()
        && v.as_str() != Some("medium")
    {
        return Err(unsupported("text.verbosity", to));
    }
    let copy = [
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("stream", "stream"),
        ("metadata", "metadata"),
        ("user", "user"),
        ("safety_identifier", "safety_identifier"),
        ("prompt_cache_key", "prompt_cache_key"),
    ];
    for (from, to_key) in copy {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            chat.insert(to_key.into(), v.clone());
        }
    }
    if let Some(t) = body
        .get("service_tier")
        .and_then(Value::as_str)
        .filter(|t| !matches!(*t, "auto" | "default"))
    {
        chat.insert("service_tier".into(), json!(t));
    }
    Ok(chat)
}

/// What a response object repeats of its request, and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// `resp_...`
    pub id: String,
    /// The model name the client asked for.
    pub model: String,
    pub created_at: u64,
    /// Request fields the response object echoes (see [`echo`]).
    pub echo: Map<String, Value>,
}

/// The request fields a response object carries, with OpenAI's defaults.
pub fn echo(body: &Map<String, Value>) -> Map<String, Value> {
    let get = |k: &str, default: Value| body.get(k).cloned().unwrap_or(default);
    let mut text = get("text", json!({"format": {"type": "text"}}));
    if text.get("format").is_none_or(Value::is_null) {
        text["format"] = json!({"type": "text"});
    }
    let mut e = Map::new();
    e.insert("instructions".into(), get("instructions", Value::Null));
    e.insert(
        "max_output_tokens".into(),
        get("max_output_tokens", Value::Null),
    );
    e.insert(
        "metadata".into(),
        match body.get("metadata") {
            Some(Value::Object(m)) => Value::Object(
                m.iter()
                    .filter(|(k, _)| !k.starts_with("tollgate_"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            _ => json!({}),
        },
    );
    e.insert(
        "parallel_tool_calls".into(),
        get("parallel_tool_calls", json!(true)),
    );
    e.insert(
        "previous_response_id".into(),
        get("previous_response_id", Value::Null),
    );
    e.insert("reasoning".into(), json!({"effort": null, "summary": null}));
    e.insert("store".into(), get("store", json!(true)));
    e.insert("temperature".into(), get("temperature", json!(1.0)));
    e.insert("text".into(), text);
    e.insert("tool_choice".into(), get("tool_choice", json!("auto")));
    e.insert("tools".into(), get("tools", json!([])));
    e.insert("top_p".into(), get("top_p", json!(1.0)));
    e.insert("truncation".into(), get("truncation", json!("disabled")));
    e.insert("user".into(), get("user", Value::Null));
    e
}

/// Responses' `usage` object.
pub fn usage_to_wire(u: &Usage) -> Value {
    let input = u.prompt_total();
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": input + u.output,
    })
}

fn item_id(prefix: &str, meta: &Meta, n: usize) -> String {
    let base = meta.id.strip_prefix("resp_").unwrap_or(&meta.id);
    format!("{prefix}_{base}{n:02}")
}

fn response_object(
    meta: &Meta,
    status: &str,
    output: Vec<Value>,
    stop: Option<StopReason>,
    usage: Option<&Usage>,
) -> Value {
    let incomplete = match stop {
        Some(StopReason::MaxTokens) => json!({"reason": "max_output_tokens"}),
        Some(StopReason::ContentFilter) => json!({"reason": "content_filter"}),
        _ => Value::Null,
    };
    let mut o = json!({
        "id": meta.id,
        "object": "response",
        "created_at": meta.created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "model": meta.model,
        "output": output,
        "usage": usage.map(usage_to_wire),
    });
    if let Some(m) = o.as_object_mut() {
        for (k, v) in &meta.echo {
            m.insert(k.clone(), v.clone());
        }
    }
    o
}

fn final_status(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContentFilter => "incomplete",
        _ => "completed",
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [],
        "content": [{"type": "reasoning_text", "text": text}]})
}

/// The canonical response → a Responses `response` object.
pub fn response_from_ir(r: &Response, meta: &Meta) -> Value {
    let mut output = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, output: &mut Vec<Value>| {
        if !text.is_empty() {
            let id = item_id("msg", meta, output.len());
            output.push(message_item(&id, "completed", vec![text_part(text)]));
            text.clear();
        }
    };
    for b in &r.content {
        match b {
            Block::Text { text: t, .. } => text.push_str(t),
            Block::ToolUse {
                id, name, input, ..
            } => {
                flush(&mut text, &mut output);
                let item = item_id("fc", meta, output.len());
                output.push(call_item(&item, "completed", id, name, &input.to_string()));
            }
            Block::Thinking { text: t, .. } => {
                flush(&mut text, &mut output);
                let item = item_id("rs", meta, output.len());
                output.push(reasoning_item(&item, t));
            }
            Block::Image { .. } | Block::ToolResult { .. } => {}
        }
    }
    flush(&mut text, &mut output);
    response_object(
        meta,
        final_status(r.stop),
        output,
        Some(r.stop),
        Some(&r.usage),
    )
}

#[derive(Debug)]
enum Open {
    Message {
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
    Reasoning {
        text: String,
    },
}

#[derive(Debug)]
struct OpenItem {
    output_index: usize,
    id: String,
    open: Open,
}

/// Canonical events → the Responses stream (`event:` lines, typed `response.*`
/// payloads numbered by `sequence_number`).
#[derive(Debug)]
pub struct Encoder {
    meta: Meta,
    seq: u64,
    started: bool,
    output: Vec<Option<Value>>,
    open: HashMap<usize, OpenItem>,
    stop: Option<StopReason>,
    usage: Option<Usage>,
    done: Option<Value>,
}

impl Encoder {
    pub fn new(meta: Meta) -> Encoder {
        Encoder {
            meta,
            seq: 0,
            started: false,
            output: Vec::new(),
            open: HashMap::new(),
            stop: None,
            usage: None,
            done: None,
        }
    }

    /// The final response object, once `response.completed` (or `incomplete`) is sent.
    pub fn completed(&self) -> Option<&Value> {
        self.done.as_ref()
    }

    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut payload: Value) {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend_from_slice(format!("event: {kind}\ndata: {payload}\n\n").as_bytes());
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let r = response_object(&self.meta, "in_progress", Vec::new(), None, None);
        self.emit(out, "response.created", json!({"response": r}));
        let r = response_object(&self.meta, "in_progress", Vec::new(), None, None);
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn open_item(&mut self, index: usize, block: &BlockStart, out: &mut BytesMut) {
        let output_index = self.output.len();
        self.output.push(None);
        let (id, open, item) = match block {
            BlockStart::Text => {
                let id = item_id("msg", &self.meta, output_index);
                let item = message_item(&id, "in_progress", Vec::new());
                (
                    id,
                    Open::Message {
                        text: String::new(),
                    },
                    item,
                )
            }
            BlockStart::ToolUse { id: call_id, name } => {
                let id = item_id("fc", &self.meta, output_index);
                let item = call_item(&id, "in_progress", call_id, name, "");
                (
                    id,
                    Open::Call {
                        call_id: call_id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                    item,
                )
            }
            BlockStart::Thinking => {
                let id = item_id("rs", &self.meta, output_index);
                let item = json!({"type": "reasoning", "id": id, "summary": []});
                (
                    id,
                    Open::Reasoning {
                        text: String::new(),
                    },
                    item,
                )
            }
        };
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": item}),
        );
        if matches!(open, Open::Message { .. }) {
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": output_index, "content_index": 0,
                    "part": text_part("")}),
            );
        }
        self.open.insert(
            index,
            OpenItem {
                output_index,
                id,
                open,
            },
        );
    }

    fn close_item(&mut self, index: usize, out: &mut BytesMut) {
        let Some(it) = self.open.remove(&index) else {
            return;
        };
        let (oi, id) = (it.output_index, it.id.clone());
        let item = match it.open {
            Open::Message { text } => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": oi, "content_index": 0,
                        "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": oi, "content_index": 0,
                        "part": text_part(&text)}),
                );
                message_item(&id, "completed", vec![text_part(&text)])
            }
            Open::Call {
                call_id,
                name,
                arguments,
            } => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": oi, "name": name,
                        "arguments": arguments}),
                );
                call_item(&id, "completed", &call_id, &name, &arguments)
            }
            Open::Reasoning { text } => reasoning_item(&id, &text),
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": oi, "item": item}),
        );
        if let Some(slot) = self.output.get_mut(oi) {
            *slot = Some(item);
        }
    }

    pub fn encode(&mut self, ev: &Event, out: &mut BytesMut) {
        match ev {
            Event::Start { .. } => self.start(out),
            Event::BlockStart { index, block } => {
                self.start(out);
                self.close_item(*index, out);
                self.open_item(*index, block, out);
            }
            Event::Delta { index, delta } => {
                let Some(it) = self.open.get_mut(index) else {
                    return;
                };
                let (oi, id) = (it.output_index, it.id.clone());
                match (&mut it.open, delta) {
                    (Open::Message { text }, Delta::Text(t)) => {
                        text.push_str(t);
                        self.emit(
                            out,
                            "response.output_text.delta",
                            json!({"item_id": id, "output_index": oi, "content_index": 0,
                                "delta": t, "logprobs": []}),
                        );
                    }
                    (Open::Call { arguments, .. }, Delta::ToolInput(a)) => {
                        arguments.push_str(a);
                        self.emit(
                            out,
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": oi, "delta": a}),
                        );
                    }
                    (Open::Reasoning { text }, Delta::Thinking(t)) => text.push_str(t),
                    _ => {}
                }
            }
            Event::BlockStop { index } => self.close_item(*index, out),
            Event::Stop { reason } => self.stop = Some(*reason),
            Event::Usage { usage, .. } => self.usage = Some(*usage),
            Event::Error { class, message } => {
                self.emit(
                    out,
                    "error",
                    json!({"code": super::openai::error_type(*class), "message": message,
                        "param": null}),
                );
            }
            Event::End => {
                self.start(out);
                let mut open: Vec<usize> = self.open.keys().copied().collect();
                open.sort_unstable();
                for i in open {
                    self.close_item(i, out);
                }
                let stop = self.stop.unwrap_or(StopReason::EndTurn);
                let status = final_status(stop);
                let output: Vec<Value> = self.output.iter().flatten().cloned().collect();
                let r =
                    response_object(&self.meta, status, output, Some(stop), self.usage.as_ref());
                let kind = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.emit(out, kind, json!({"response": r.clone()}));
                self.done = Some(r);
            }
        }
    }

    /// A streamed `error` event for a stream that broke off.
    pub fn cut(message: &str, code: &str) -> bytes::Bytes {
        let e = json!({"type": "error", "code": code, "message": message, "param": null,
            "sequence_number": 0});
        bytes::Bytes::from(format!("event: error\ndata: {e}\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn items_become_chat_messages() {
        let b = body(json!({
            "model": "m", "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 50,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "store": true,
        }));
        let history = [json!({"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi"}]})];
        let c = request_to_chat(&b, &history, Format::Anthropic).unwrap();
        assert_eq!(
            c["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ])
        );
        assert_eq!(c["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(c["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(c["max_completion_tokens"], 50);
        assert_eq!(c["response_format"]["json_schema"]["name"], "w");
        assert!(c.get("store").is_none());
        // Then through the chat path.
        let ir = super::super::openai::request_to_ir(&c, Format::Anthropic).unwrap();
        assert_eq!(ir.messages.len(), 4);
        assert!(ir.response_format.is_some());
    }

    #[test]
    fn structured_output_becomes_a_forced_tool_and_back() {
        use super::super::{
            JSON_TOOL, JsonAnswer, Request, ResponseFormat, ToolChoice, json_answer, json_tool,
        };
        let mut req = Request {
            response_format: Some(ResponseFormat::JsonSchema {
                name: "person".into(),
                description: None,
                schema: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
                strict: Some(true),
            }),
            ..Request::default()
        };
        assert!(json_tool(&mut req, Format::OpenAi, Format::Anthropic).unwrap());
        assert_eq!(req.tool_choice, Some(ToolChoice::Tool(JSON_TOOL.into())));
        assert_eq!(req.tools[0].schema["properties"]["name"]["type"], "string");
        assert!(req.response_format.is_none());
        let body = super::super::anthropic::request_from_ir(&req, "claude");
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL})
        );
        let mut r = Response {
            id: "m".into(),
            model: "m".into(),
            content: vec![
                Block::Text {
                    text: "Sure.".into(),
                    cache: None,
                },
                Block::ToolUse {
                    id: "t".into(),
                    name: JSON_TOOL.into(),
                    input: json!({"name": "Ada"}),
                    cache: None,
                },
            ],
            stop: StopReason::ToolUse,
            usage: Usage::default(),
        };
        json_answer(&mut r);
        assert_eq!(
            r.content,
            vec![Block::Text {
                text: "{\"name\":\"Ada\"}".into(),
                cache: None
            }]
        );
        assert_eq!(r.stop, StopReason::EndTurn);
        // Streams: the preamble text is dropped, the tool's input is the text.
        let mut j = JsonAnswer::default();
        let evs = vec![
            Event::BlockStart {
                index: 0,
                block: BlockStart::Text,
            },
            Event::Delta {
                index: 0,
                delta: Delta::Text("Sure.".into()),
            },
            Event::BlockStop { index: 0 },
            Event::BlockStart {
                index: 1,
                block: BlockStart::ToolUse {
                    id: "t".into(),
                    name: JSON_TOOL.into(),
                },
            },
            Event::Delta {
                index: 1,
                delta: Delta::ToolInput("{}".into()),
            },
            Event::BlockStop { index: 1 },
            Event::Stop {
                reason: StopReason::ToolUse,
            },
        ];
        let out: Vec<Event> = evs.into_iter().filter_map(|e| j.map(e)).collect();
        assert_eq!(
            out,
            vec![
                Event::BlockStart {
                    index: 1,
                    block: BlockStart::Text
                },
                Event::Delta {
                    index: 1,
                    delta: Delta::Text("{}".into())
                },
                Event::BlockStop { index: 1 },
                Event::Stop {
                    reason: StopReason::EndTurn
                },
            ]
        );
        // With tools of its own the model must call one of them or the JSON tool.
        let mut req = Request {
            tools: vec![super::super::Tool {
                name: "f".into(),
                description: None,
                schema: json!({}),
                cache: None,
            }],
            response_format: Some(ResponseFormat::JsonObject),
            ..Request::default()
        };
        assert!(json_tool(&mut req, Format::OpenAi, Format::Bedrock).unwrap());
        assert_eq!(req.tool_choice, Some(ToolChoice::Any));
    }

    #[test]
    fn refuses_what_it_cannot_carry() {
        for extra in [
            json!({"tools": [{"type": "web_search"}]}),
            json!({"background": true}),
            json!({"truncation": "auto"}),
            json!({"reasoning": {"effort": "high"}}),
            json!({"input": [{"type": "item_reference", "id": "x"}]}),
        ] {
            let mut b = body(json!({"model": "m", "input": "hi"}));
            b.extend(body(extra.clone()));
            let e = request_to_chat(&b, &[], Format::Bedrock).unwrap_err();
            assert!(
                matches!(e, TranslateError::Unsupported { .. }),
                "{extra}: {e}"
            );
        }
        let e = request_to_chat(&body(json!({"model": "m"})), &[], Format::OpenAi).unwrap_err();
        assert!(e.to_string().contains("input is required"));
    }

    fn meta() -> Meta {
        Meta {
            id: "resp_abc".into(),
            model: "claude".into(),
            created_at: 7,
            echo: echo(&body(json!({"instructions": "x"}))),
        }
    }

    #[test]
    fn a_response_has_items_status_and_usage() {
        let r = Response {
            id: "msg_1".into(),
            model: "m".into(),
            content: vec![
                Block::Text {
                    text: "Let me check.".into(),
                    cache: None,
                },
                Block::ToolUse {
                    id: "toolu_1".into(),
                    name: "f".into(),
                    input: json!({"a": 1}),
                    cache: None,
                },
            ],
            stop: StopReason::ToolUse,
            usage: Usage {
                input: 10,
                cache_read: 5,
                output: 7,
                reasoning: 2,
                ..Usage::default()
            },
        };
        let v = response_from_ir(&r, &meta());
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["instructions"], "x");
        assert_eq!(v["output"][0]["content"][0]["text"], "Let me check.");
        assert_eq!(v["output"][1]["type"], "function_call");
        assert_eq!(v["output"][1]["call_id"], "toolu_1");
        assert_eq!(v["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 15, "input_tokens_details": {"cached_tokens": 5},
                "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 22})
        );
    }

    #[test]
    fn a_stream_has_typed_numbered_events() {
        let mut e = Encoder::new(meta());
        let mut out = BytesMut::new();
        let evs = [
            Event::Start {
                id: "x".into(),
                model: "m".into(),
            },
            Event::BlockStart {
                index: 0,
                block: BlockStart::Text,
            },
            Event::Delta {
                index: 0,
                delta: Delta::Text("Hel".into()),
            },
            Event::Delta {
                index: 0,
                delta: Delta::Text("lo".into()),
            },
            Event::BlockStop { index: 0 },
            Event::BlockStart {
                index: 1,
                block: BlockStart::ToolUse {
                    id: "c".into(),
                    name: "f".into(),
                },
            },
            Event::Delta {
                index: 1,
                delta: Delta::ToolInput("{}".into()),
            },
            Event::Stop {
                reason: StopReason::ToolUse,
            },
            Event::Usage {
                usage: Usage {
                    input: 3,
                    output: 4,
                    ..Usage::default()
                },
                final_count: true,
            },
            Event::End,
        ];
        for ev in &evs {
            e.encode(ev, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let seqs: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| {
                serde_json::from_str::<Value>(d).unwrap()["sequence_number"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, (0..14).collect::<Vec<u64>>());
        let done = e.completed().unwrap();
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{}");
        assert_eq!(done["usage"]["total_tokens"], 7);
    }
}

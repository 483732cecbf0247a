//! The simulator's Anthropic Messages (`POST /v1/messages`) and Bedrock Converse
//! (`POST /model/{id}/converse`, `/converse-stream`) faces.
//!
//! Same determinism and fault directives as the OpenAI face. Prompt caching follows
//! each provider's explicit breakpoints (`cache_control`, `cachePoint`): the prompt up
//! to the last breakpoint, when it is 1,024 tokens or more, is written to the cache the
//! first time and read from it afterwards. With tools declared, the simulated model
//! calls the first tool until the conversation holds a tool result, then answers. A
//! tool the request forces (`tool_choice` `{"type": "tool"}`, Bedrock `toolChoice.tool`)
//! is always called, without text before it, with an input made from its input
//! schema (every property filled, deterministically), as structured output needs.

use super::{Fault, Sim, approx_tokens, directive, fault_of, fnv, generate};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tollgate_providers::eventstream::Message as EsMessage;

/// What the simulated model does for a request.
struct Turn {
    model: String,
    prompt_tokens: u64,
    cache_read: u64,
    cache_write: u64,
    cache_1h: bool,
    words: Vec<String>,
    max_hit: bool,
    /// `(id, name, input)` when the model calls a tool.
    tool: Option<(String, String, Value)>,
    fault: Fault,
    seed: u64,
}

/// Texts of a conversation in order, with the index just after the last cache
/// breakpoint (and whether it asked for a 1-hour TTL).
struct Prompt {
    texts: Vec<String>,
    breakpoint: Option<(usize, bool)>,
    has_tool_result: bool,
    /// Tool names and input schemas.
    tools: Vec<(String, Value)>,
    /// The tool the request forces.
    forced: Option<String>,
}

/// A value matching `schema` (objects get every property; `$ref`s into `$defs` are
/// followed), deterministic in `seed`; strings named `query` get `query`.
fn sample(schema: &Value, root: &Value, seed: u64, query: &str, name: &str, depth: u32) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(r) = schema["$ref"].as_str() {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(root, |v, k| &v[k]))
            .unwrap_or(&Value::Null);
        return sample(target, root, seed, query, name, depth + 1);
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema[k].as_array().and_then(|a| a.first()) {
            return sample(first, root, seed, query, name, depth + 1);
        }
    }
    if let Some(first) = schema["enum"].as_array().and_then(|a| a.first()) {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    let h = fnv(format!("{seed}\u{0}{name}").as_bytes());
    match kind {
        "object" => {
            let mut o = serde_json::Map::new();
            if let Some(props) = schema["properties"].as_object() {
                for (k, v) in props {
                    o.insert(k.clone(), sample(v, root, seed, query, k, depth + 1));
                }
            }
            Value::Object(o)
        }
        "array" => json!([sample(&schema["items"], root, seed, query, name, depth + 1)]),
        "integer" => json!(h % 100),
        "number" => json!((h % 1000) as f64 / 10.0),
        "boolean" => json!(h.is_multiple_of(2)),
        "null" => Value::Null,
        _ if name == "query" => json!(query),
        _ => json!(generate(h, 2).concat()),
    }
}

fn plan(sim: &Sim, model: &str, p: Prompt, max: u64) -> Turn {
    let last = p.texts.last().cloned().unwrap_or_default();
    let fault = fault_of(&last);
    let tokens: Vec<u64> = p.texts.iter().map(|t| 4 + approx_tokens(t)).collect();
    let prompt_tokens: u64 = 3 + tokens.iter().sum::<u64>();
    let (mut cache_read, mut cache_write, mut cache_1h) = (0, 0, false);
    if let Some((upto, one_hour)) = p.breakpoint {
        let prefix: u64 = 3 + tokens.iter().take(upto).sum::<u64>();
        if prefix >= 1024 {
            let h = fnv(format!("{model}\u{2}{}", p.texts[..upto].join("\u{1}")).as_bytes());
            let mut seen = sim.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(h) {
                cache_write = prefix;
                cache_1h = one_hour;
            } else {
                cache_read = prefix;
            }
        }
    }
    let seed = fnv(format!("{model}\u{0}{}", p.texts.join("\u{1}")).as_bytes());
    let n = ((seed % 120) as usize + 12).min(max.max(1) as usize);
    let forced = p
        .forced
        .as_ref()
        .and_then(|f| p.tools.iter().find(|(n, _)| n == f));
    let query = last
        .split_whitespace()
        .take(5)
        .collect::<Vec<_>>()
        .join(" ");
    let id = format!("toolu_sim{:012x}", seed & 0xffff_ffff_ffff);
    let tool = match (forced, p.tools.first(), p.has_tool_result) {
        (Some((name, schema)), _, _) => Some((
            id,
            name.clone(),
            sample(schema, schema, seed, &query, "", 0),
        )),
        (None, Some((name, _)), false) => Some((id, name.clone(), json!({"query": query}))),
        _ => None,
    };
    Turn {
        model: model.to_string(),
        prompt_tokens,
        cache_read,
        cache_write,
        cache_1h,
        words: if forced.is_some() {
            Vec::new()
        } else if tool.is_some() {
            generate(seed, 6)
        } else {
            generate(seed, n)
        },
        max_hit: tool.is_none() && n as u64 == max,
        tool,
        fault,
        seed,
    }
}

impl Turn {
    fn input(&self) -> u64 {
        self.prompt_tokens - self.cache_read - self.cache_write
    }

    fn output(&self) -> u64 {
        self.words.len() as u64 + if self.tool.is_some() { 12 } else { 0 }
    }
}

async fn pause(text: &str, sim: &Sim) {
    if let Some(ms) = directive(text, "delay-ms").and_then(|d| d.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    tokio::time::sleep(sim.cfg.first_token_latency).await;
}

// ----------------------------------------------------------------------------------
// Anthropic

fn anthropic_error(status: u16) -> Response {
    let (kind, msg) = match status {
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        529 => ("overloaded_error", "Overloaded"),
        400 => ("invalid_request_error", "messages: roles must alternate"),
        401 => ("authentication_error", "invalid x-api-key"),
        404 => ("not_found_error", "model: not found"),
        _ => ("api_error", "Internal server error"),
    };
    let mut r = (
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"type": "error", "error": {"type": kind, "message": msg}})),
    )
        .into_response();
    if status == 429 {
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
    }
    r
}

fn anthropic_prompt(req: &Value) -> Prompt {
    let mut texts = Vec::new();
    let mut breakpoint = None;
    let mut has_tool_result = false;
    let mut mark = |texts: &Vec<String>, b: &Value| {
        if let Some(c) = b.get("cache_control").filter(|c| c.is_object()) {
            breakpoint = Some((texts.len(), c["ttl"] == "1h"));
        }
    };
    match &req["system"] {
        Value::String(s) => texts.push(s.clone()),
        Value::Array(parts) => {
            for p in parts {
                texts.push(p["text"].as_str().unwrap_or("").to_string());
                mark(&texts, p);
            }
        }
        _ => {}
    }
    for m in req["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        match &m["content"] {
            Value::String(s) => texts.push(s.clone()),
            Value::Array(blocks) => {
                for b in blocks {
                    let t = match b["type"].as_str() {
                        Some("text") => b["text"].as_str().unwrap_or("").to_string(),
                        Some("tool_result") => {
                            has_tool_result = true;
                            match &b["content"] {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            }
                        }
                        Some("tool_use") => b["input"].to_string(),
                        _ => String::new(),
                    };
                    texts.push(t);
                    mark(&texts, b);
                }
            }
            _ => {}
        }
    }
    let tools = req["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| Some((t["name"].as_str()?.to_string(), t["input_schema"].clone())))
                .collect()
        })
        .unwrap_or_default();
    let forced = (req["tool_choice"]["type"] == "tool")
        .then(|| req["tool_choice"]["name"].as_str().map(str::to_string))
        .flatten();
    // The last user message's text decides faults and tool queries: put it last.
    if let Some(last) = req["messages"].as_array().and_then(|m| m.last()) {
        let t = match &last["content"] {
            Value::String(s) => s.clone(),
            Value::Array(b) => b
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        if texts.last() != Some(&t) && !t.is_empty() {
            texts.push(t);
        }
    }
    Prompt {
        texts,
        breakpoint,
        has_tool_result,
        tools,
        forced,
    }
}

fn anthropic_usage(t: &Turn, output: u64) -> Value {
    let (w5, w1) = if t.cache_1h {
        (0, t.cache_write)
    } else {
        (t.cache_write, 0)
    };
    json!({"input_tokens": t.input(), "cache_creation_input_tokens": t.cache_write,
        "cache_read_input_tokens": t.cache_read, "output_tokens": output,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "service_tier": "standard"})
}

fn sse(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(super) async fn messages(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    sim.stats.chat.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return anthropic_error(400);
    };
    let model = req["model"].as_str().unwrap_or("claude-sim").to_string();
    let max = req["max_tokens"].as_u64().unwrap_or(1024);
    let prompt = anthropic_prompt(&req);
    let last = prompt.texts.last().cloned().unwrap_or_default();
    let t = plan(&sim, &model, prompt, max);
    pause(&last, &sim).await;
    if let Fault::Status(s) = t.fault {
        return anthropic_error(s);
    }
    let id = format!("msg_sim{:016x}", t.seed);
    let stop = if t.tool.is_some() {
        "tool_use"
    } else if t.max_hit {
        "max_tokens"
    } else {
        "end_turn"
    };
    let stream = req["stream"].as_bool().unwrap_or(false);
    if !stream {
        if let Fault::Malformed = t.fault {
            return (http::StatusCode::OK, "<html>upstream proxy error</html>").into_response();
        }
        let mut content = Vec::new();
        if !t.words.is_empty() || t.tool.is_none() {
            content.push(json!({"type": "text", "text": t.words.concat()}));
        }
        if let Some((tid, name, input)) = &t.tool {
            content.push(json!({"type": "tool_use", "id": tid, "name": name, "input": input}));
        }
        let mut body = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": anthropic_usage(&t, t.output())});
        if let Fault::NoUsage = t.fault
            && let Some(o) = body.as_object_mut()
        {
            o.remove("usage");
        }
        return Json(body).into_response();
    }
    let inter = sim.cfg.inter_token_latency;
    let s = async_stream::stream! {
        let start = json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": t.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(&t, 1)}});
        yield Ok::<Bytes, std::io::Error>(sse("message_start", &start));
        yield Ok(sse("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        yield Ok(sse("ping", &json!({"type": "ping"})));
        let total = t.words.len();
        for (i, w) in t.words.iter().enumerate() {
            if matches!(t.fault, Fault::Cut) && i == total / 2 {
                yield Err(std::io::Error::other("simulated connection reset"));
                return;
            }
            if matches!(t.fault, Fault::Malformed) && i == total / 2 {
                yield Ok(Bytes::from_static(b"event: content_block_delta\ndata: {\"type\": this is not json\n\n"));
            }
            if !inter.is_zero() {
                tokio::time::sleep(inter).await;
            }
            yield Ok(sse("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})));
        }
        yield Ok(sse("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
        if let Some((tid, name, input)) = &t.tool {
            yield Ok(sse("content_block_start", &json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}}})));
            let s = input.to_string();
            let mid = (0..=s.len() / 2).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            let (a, b) = s.split_at(mid);
            for part in [a, b] {
                yield Ok(sse("content_block_delta", &json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
            yield Ok(sse("content_block_stop", &json!({"type": "content_block_stop", "index": 1})));
        }
        let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": anthropic_usage(&t, t.output())});
        if let Fault::NoUsage = t.fault {
            delta["usage"] = json!({"output_tokens": null});
        }
        yield Ok(sse("message_delta", &delta));
        yield Ok(sse("message_stop", &json!({"type": "message_stop"})));
    };
    Response::builder()
        .header(
            http::header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8",
        )
        .header("request-id", "req_sim")
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| anthropic_error(500))
}

// ----------------------------------------------------------------------------------
// Bedrock

fn bedrock_error(status: u16) -> Response {
    let (kind, msg) = match status {
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        400 => (
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        ),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => ("ResourceNotFoundException", "The model does not exist."),
        408 => ("ModelTimeoutException", "The model timed out."),
        503 => ("ServiceUnavailableException", "The service is unavailable."),
        _ => (
            "InternalServerException",
            "The server encountered an error processing the request.",
        ),
    };
    let mut r = (
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"message": msg})),
    )
        .into_response();
    r.headers_mut()
        .insert("x-amzn-errortype", http::HeaderValue::from_static(kind));
    r
}

fn bedrock_prompt(req: &Value) -> Prompt {
    let mut texts = Vec::new();
    let mut breakpoint = None;
    let mut has_tool_result = false;
    for s in req["system"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(t) = s["text"].as_str() {
            texts.push(t.to_string());
        } else if s.get("cachePoint").is_some() {
            breakpoint = Some((texts.len(), s["cachePoint"]["ttl"] == "1h"));
        }
    }
    for m in req["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        for b in m["content"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(t) = b["text"].as_str() {
                texts.push(t.to_string());
            } else if let Some(r) = b.get("toolResult") {
                has_tool_result = true;
                texts.push(r["content"].to_string());
            } else if let Some(u) = b.get("toolUse") {
                texts.push(u["input"].to_string());
            } else if b.get("cachePoint").is_some() {
                breakpoint = Some((texts.len(), b["cachePoint"]["ttl"] == "1h"));
            }
        }
    }
    if let Some(last) = req["messages"].as_array().and_then(|m| m.last()) {
        let t = last["content"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        if texts.last() != Some(&t) && !t.is_empty() {
            texts.push(t);
        }
    }
    let tools = req["toolConfig"]["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| {
                    let spec = &t["toolSpec"];
                    Some((
                        spec["name"].as_str()?.to_string(),
                        spec["inputSchema"]["json"].clone(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let forced = req["toolConfig"]["toolChoice"]["tool"]["name"]
        .as_str()
        .map(str::to_string);
    Prompt {
        texts,
        breakpoint,
        has_tool_result,
        tools,
        forced,
    }
}

fn bedrock_usage(t: &Turn) -> Value {
    let mut u = json!({"inputTokens": t.input(), "outputTokens": t.output(),
        "totalTokens": t.prompt_tokens + t.output(),
        "cacheReadInputTokens": t.cache_read, "cacheWriteInputTokens": t.cache_write});
    if t.cache_1h && t.cache_write > 0 {
        u["cacheDetails"] = json!([{"ttl": "1h", "inputTokens": t.cache_write}]);
    }
    u
}

fn frame(event: &str, payload: &Value) -> Bytes {
    EsMessage::event(event, payload.to_string().as_bytes()).encode()
}

pub(super) async fn converse(
    State(sim): State<Arc<Sim>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    bedrock(sim, model, body, false).await
}

pub(super) async fn converse_stream(
    State(sim): State<Arc<Sim>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    bedrock(sim, model, body, true).await
}

async fn bedrock(sim: Arc<Sim>, model: String, body: Bytes, stream: bool) -> Response {
    sim.stats.chat.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bedrock_error(400);
    };
    let max = req["inferenceConfig"]["maxTokens"].as_u64().unwrap_or(1024);
    let prompt = bedrock_prompt(&req);
    let last = prompt.texts.last().cloned().unwrap_or_default();
    let t = plan(&sim, &model, prompt, max);
    pause(&last, &sim).await;
    if let Fault::Status(s) = t.fault {
        return bedrock_error(s);
    }
    let stop = if t.tool.is_some() {
        "tool_use"
    } else if t.max_hit {
        "max_tokens"
    } else {
        "end_turn"
    };
    if !stream {
        if let Fault::Malformed = t.fault {
            return (http::StatusCode::OK, "<html>upstream proxy error</html>").into_response();
        }
        let mut content = Vec::new();
        if !t.words.is_empty() || t.tool.is_none() {
            content.push(json!({"text": t.words.concat()}));
        }
        if let Some((tid, name, input)) = &t.tool {
            content.push(json!({"toolUse": {"toolUseId": tid, "name": name, "input": input}}));
        }
        let mut body = json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": bedrock_usage(&t), "metrics": {"latencyMs": 42}});
        if let Fault::NoUsage = t.fault
            && let Some(o) = body.as_object_mut()
        {
            o.remove("usage");
        }
        return Json(body).into_response();
    }
    let inter = sim.cfg.inter_token_latency;
    let s = async_stream::stream! {
        yield Ok::<Bytes, std::io::Error>(frame("messageStart", &json!({"role": "assistant"})));
        let total = t.words.len();
        for (i, w) in t.words.iter().enumerate() {
            if matches!(t.fault, Fault::Cut) && i == total / 2 {
                yield Err(std::io::Error::other("simulated connection reset"));
                return;
            }
            if matches!(t.fault, Fault::Malformed) && i == total / 2 {
                let mut bad = frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": w}})).to_vec();
                let n = bad.len();
                bad[n - 1] ^= 0xff;
                yield Ok(Bytes::from(bad));
            }
            if !inter.is_zero() {
                tokio::time::sleep(inter).await;
            }
            yield Ok(frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": w}})));
        }
        yield Ok(frame("contentBlockStop", &json!({"contentBlockIndex": 0})));
        if let Some((tid, name, input)) = &t.tool {
            yield Ok(frame("contentBlockStart", &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": tid, "name": name}}})));
            yield Ok(frame("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": input.to_string()}}})));
            yield Ok(frame("contentBlockStop", &json!({"contentBlockIndex": 1})));
        }
        yield Ok(frame("messageStop", &json!({"stopReason": stop})));
        if !matches!(t.fault, Fault::NoUsage) {
            yield Ok(frame("metadata", &json!({"usage": bedrock_usage(&t), "metrics": {"latencyMs": 42}})));
        }
    };
    Response::builder()
        .header(
            http::header::CONTENT_TYPE,
            "application/vnd.amazon.eventstream",
        )
        .header("x-amzn-requestid", "sim-request")
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| bedrock_error(500))
}

//! A simulated provider: deterministic answers with realistic token counts, prompt
//! caching, reasoning tokens, configurable latency, and faults on demand. It speaks
//! OpenAI Chat Completions and embeddings (`/v1/chat/completions`, `/v1/embeddings`),
//! Anthropic Messages (`/v1/messages`) and Bedrock Converse / ConverseStream
//! (`/model/{id}/converse[-stream]`, see [`native`]).
//!
//! The same request always gets the same answer (text, token counts), so demos and
//! tests are reproducible. Faults are asked for inside the last message's text:
//! `[[sim:error=429]]`, `[[sim:error=500]]`, `[[sim:malformed]]`, `[[sim:no-usage]]`,
//! `[[sim:cut]]` (stream stops half way without `[DONE]`), `[[sim:delay-ms=N]]`.
//! Poor answers (OpenAI chat, non-streaming), to exercise routing's escalation:
//! `[[sim:empty]]` (no content), `[[sim:refusal]]` (a stock refusal), `[[sim:length]]`
//! (`finish_reason` `length`), `[[sim:not-json]]` (text that is not JSON); each may name
//! the one model it applies to (`[[sim:empty=gpt-4o-mini]]`), so a retry on another
//! model answers normally.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod native;

#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    /// Time before the first byte of an answer.
    pub first_token_latency: Duration,
    /// Time between streamed tokens.
    pub inter_token_latency: Duration,
}

#[derive(Default)]
pub struct SimStats {
    pub chat: AtomicU64,
    pub embeddings: AtomicU64,
}

struct Sim {
    cfg: SimConfig,
    /// Prompt prefixes seen before (for cache hits).
    prefixes: Mutex<HashSet<u64>>,
    stats: Arc<SimStats>,
}

/// A running simulator.
pub struct SimUpstream {
    pub addr: SocketAddr,
    pub stats: Arc<SimStats>,
    stop: CancellationToken,
}

impl SimUpstream {
    /// `http://127.0.0.1:PORT/v1`, the base URL to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for SimUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Start the simulator on `listener`.
pub fn spawn_on(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimUpstream> {
    let addr = listener.local_addr()?;
    let stats = Arc::new(SimStats::default());
    let sim = Arc::new(Sim {
        cfg,
        prefixes: Mutex::new(HashSet::new()),
        stats: stats.clone(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(native::messages))
        .route("/model/{model}/converse", post(native::converse))
        .route(
            "/model/{model}/converse-stream",
            post(native::converse_stream),
        )
        .with_state(sim);
    let stop = CancellationToken::new();
    let s = stop.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    #[allow(clippy::disallowed_methods)]
    // the simulator is not part of the gateway's tracked tasks
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok(SimUpstream { addr, stats, stop })
}

/// Start the simulator on a free local port.
pub async fn spawn(cfg: SimConfig) -> std::io::Result<SimUpstream> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn_on(listener, cfg)
}

/// FNV-1a, for deterministic choices.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A rough tokenizer: about four characters a token, as OpenAI's rule of thumb says.
fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn message_text(m: &Value) -> String {
    match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

const WORDS: &[&str] = &[
    "the",
    "plan",
    "is",
    "to",
    "review",
    "each",
    "invoice",
    "and",
    "flag",
    "anomalies",
    "before",
    "approval",
    "we",
    "checked",
    "three",
    "sources",
    "for",
    "consistency",
    "result",
    "summary",
    "customer",
    "asked",
    "about",
    "a",
    "refund",
    "policy",
    "allows",
    "it",
    "within",
    "thirty",
    "days",
    "next",
    "step",
    "call",
    "tool",
    "with",
    "query",
    "returned",
    "rows",
    "data",
    "shows",
    "growth",
    "in",
    "region",
    "north",
    "latency",
    "improved",
    "after",
    "cache",
    "deploy",
    "config",
    "update",
    "test",
    "passed",
    "ticket",
    "resolved",
    "escalate",
    "owner",
    "budget",
    "forecast",
    "quarter",
    "risk",
    "low",
    "medium",
    "high",
    "contract",
    "clause",
    "liability",
    "limited",
    "draft",
    "reply",
    "sent",
    "answer",
    "final",
    "because",
    "so",
];

fn generate(seed: u64, n: usize) -> Vec<String> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = WORDS[(x % WORDS.len() as u64) as usize];
            if i == 0 {
                let mut c = w.chars();
                match c.next() {
                    Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                    None => String::new(),
                }
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

enum Fault {
    None,
    Status(u16),
    Malformed,
    NoUsage,
    Cut,
}

fn directive(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("[[sim:{name}"))?;
    let rest = &text[start + 6 + name.len()..];
    let end = rest.find("]]")?;
    Some(rest[..end].trim_start_matches('=').to_string())
}

fn fault_of(text: &str) -> Fault {
    if let Some(code) = directive(text, "error").and_then(|c| c.parse().ok()) {
        Fault::Status(code)
    } else if directive(text, "malformed").is_some() {
        Fault::Malformed
    } else if directive(text, "no-usage").is_some() {
        Fault::NoUsage
    } else if directive(text, "cut").is_some() {
        Fault::Cut
    } else {
        Fault::None
    }
}

/// A poor answer asked for (for `model`): `empty`, `refusal`, `length` or `not-json`.
fn poor_answer(text: &str, model: &str) -> Option<&'static str> {
    ["empty", "refusal", "length", "not-json"]
        .into_iter()
        .find(|k| directive(text, k).is_some_and(|m| m.is_empty() || m == model))
}

fn error_response(status: u16) -> Response {
    let (kind, code, msg) = match status {
        429 => (
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests",
        ),
        400 => (
            "invalid_request_error",
            "invalid_value",
            "Invalid value for 'messages'",
        ),
        _ => ("server_error", "server_error", "The server had an error"),
    };
    let mut r = (
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
        Json(json!({"error": {"message": msg, "type": kind, "param": null, "code": code}})),
    )
        .into_response();
    if status == 429 {
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("1"));
    }
    r
}

async fn chat(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    sim.stats.chat.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error_response(400);
    };
    let model = req["model"].as_str().unwrap_or("sim").to_string();
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let texts: Vec<String> = messages.iter().map(message_text).collect();
    let last = texts.last().cloned().unwrap_or_default();
    if let Some(ms) = directive(&last, "delay-ms").and_then(|d| d.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fault = fault_of(&last);
    if let Fault::Status(s) = fault {
        return error_response(s);
    }
    let prompt_tokens: u64 = 3 + texts.iter().map(|t| 4 + approx_tokens(t)).sum::<u64>();
    // Prompt caching, as OpenAI does it: the longest message prefix of 1,024+ tokens seen
    // before is served from cache, in 128-token increments.
    let cached = {
        let mut seen = sim.prefixes.lock().unwrap_or_else(|p| p.into_inner());
        let mut tokens = 3u64;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut best = 0;
        for t in texts.iter().take(texts.len().saturating_sub(1)) {
            tokens += 4 + approx_tokens(t);
            h = fnv(format!("{h:x}\u{1}{t}").as_bytes());
            if tokens >= 1024 && !seen.insert(h) {
                best = tokens / 128 * 128;
            }
        }
        best
    };
    let seed = fnv(format!("{model}\u{0}{}", texts.join("\u{1}")).as_bytes());
    let max = req["max_completion_tokens"]
        .as_u64()
        .or_else(|| req["max_tokens"].as_u64())
        .unwrap_or(512)
        .max(1);
    let n = ((seed % 120) as usize + 12).min(max as usize);
    let words = generate(seed, n);
    let completion_tokens = words.len() as u64;
    let reasoning = if model.starts_with('o') || model.starts_with("gpt-5") {
        completion_tokens * 2 + seed % 64
    } else {
        0
    };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens + reasoning,
        "total_tokens": prompt_tokens + completion_tokens + reasoning,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    });
    let id = format!("chatcmpl-sim{:016x}", seed);
    let created = 1_760_000_000u64;
    tokio::time::sleep(sim.cfg.first_token_latency).await;
    let stream = req["stream"].as_bool().unwrap_or(false);
    if !stream {
        if let Fault::Malformed = fault {
            return (http::StatusCode::OK, "<html>upstream proxy error</html>").into_response();
        }
        let poor = poor_answer(&last, &model);
        let content = match poor {
            Some("empty") => String::new(),
            Some("refusal") => "I'm sorry, but I can't help with that.".to_string(),
            Some("not-json") => format!("Sure! {}", words.concat()),
            _ => words.concat(),
        };
        let json_asked = req["response_format"]["type"].as_str() == Some("json_object");
        let content = if json_asked && poor.is_none() {
            json!({"answer": words.concat().trim()}).to_string()
        } else {
            content
        };
        let finish = if n as u64 == max || poor == Some("length") {
            "length"
        } else {
            "stop"
        };
        let mut body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null, "annotations": []},
                         "logprobs": null, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": "fp_sim"
        });
        if let Fault::NoUsage = fault
            && let Some(o) = body.as_object_mut()
        {
            o.remove("usage");
        }
        return Json(body).into_response();
    }
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
        && !matches!(fault, Fault::NoUsage);
    let inter = sim.cfg.inter_token_latency;
    let cut = matches!(fault, Fault::Cut);
    let malformed = matches!(fault, Fault::Malformed);
    let finish = if n as u64 == max { "length" } else { "stop" };
    let usage_null = if req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
    {
        ",\"usage\":null"
    } else {
        ""
    };
    let s = async_stream::stream! {
        let head = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": null}]});
        let head = head.to_string();
        yield Ok::<Bytes, std::io::Error>(Bytes::from(format!("data: {}{usage_null}}}\n\n", &head[..head.len() - 1])));
        let total = words.len();
        for (i, w) in words.into_iter().enumerate() {
            if cut && i == total / 2 {
                yield Err(std::io::Error::other("simulated connection reset"));
                return;
            }
            if malformed && i == total / 2 {
                yield Ok(Bytes::from_static(b"data: {\"choices\": [ this is not json\n\n"));
            }
            if !inter.is_zero() {
                tokio::time::sleep(inter).await;
            }
            let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_sim",
                "choices": [{"index": 0, "delta": {"content": w}, "logprobs": null, "finish_reason": null}]}).to_string();
            yield Ok(Bytes::from(format!("data: {}{usage_null}}}\n\n", &c[..c.len() - 1])));
        }
        let end = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}]}).to_string();
        yield Ok(Bytes::from(format!("data: {}{usage_null}}}\n\n", &end[..end.len() - 1])));
        if include_usage {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_sim", "choices": [], "usage": usage});
            yield Ok(Bytes::from(format!("data: {u}\n\n")));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    Response::builder()
        .header(
            http::header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8",
        )
        .body(Body::from_stream(s))
        .unwrap_or_else(|_| error_response(500))
}

async fn embeddings(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    sim.stats.embeddings.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error_response(400);
    };
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        _ => return error_response(400),
    };
    tokio::time::sleep(sim.cfg.first_token_latency).await;
    let tokens: u64 = inputs.iter().map(|t| approx_tokens(t).max(1)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let h = fnv(t.as_bytes());
            let v: Vec<f64> = (0..8)
                .map(|k| (((h >> (k * 8)) & 0xff) as f64 - 127.5) / 128.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Json(
        json!({"object": "list", "data": data, "model": req["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
    .into_response()
}

async fn models() -> Response {
    Json(json!({"object": "list", "data": [{"id": "sim", "object": "model", "created": 0, "owned_by": "tollgate-sim"}]}))
        .into_response()
}

//! What tollgate sends upstream and how it reads the answers (a component the egress
//! and respond stages call): the upstream request for
//! a deployment (native or translated, signed when the upstream is Bedrock), usage out
//! of each format's JSON, translated answers and errors.

use crate::config::{Deployment, Endpoint, UpstreamAuth};
use crate::error::{ApiError, class_for_status};
use crate::ingress::IngressRequest;
use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use std::borrow::Cow;
use std::time::Duration;
use tollgate_domain::usage::Usage;
use tollgate_providers::stream::ClientStream;
use tollgate_providers::translate::{self, ErrorClass, Format};
use tollgate_providers::{UpstreamRequest, anthropic, bedrock, openai, sigv4};

/// The call to make, and how to read its answer.
pub struct UpstreamCall {
    pub request: UpstreamRequest,
    /// The format the upstream answers in.
    pub upstream: Format,
    /// The client's format differs: the answer is translated.
    pub translated: bool,
    pub stream: bool,
    /// OpenAI → OpenAI streams: the gateway asked for the usage chunk itself.
    pub injected_usage: bool,
    /// Structured output was asked of the upstream as a forced tool call
    /// ([`translate::json_tool`]): its call is the answer's text.
    pub json_tool: bool,
}

/// Build the upstream request for `req` on deployment `d`.
pub fn prepare(
    d: &Deployment,
    req: &mut IngressRequest,
    client_headers: &HeaderMap,
    timeout: Duration,
    now_unix: i64,
) -> Result<UpstreamCall, ApiError> {
    let upstream = d.upstream.kind.format();
    let client = req.format();
    let translated = upstream != client;
    let model = d.model.as_str();
    let mut injected_usage = false;
    let mut json_tool = false;
    let mut stream = req.stream();
    let endpoint = match (&*req, stream) {
        (IngressRequest::Embeddings(_), _) => Endpoint::Embeddings,
        (_, true) => Endpoint::ChatStream,
        (_, false) => Endpoint::Chat,
    };
    let (path, body) = match (req, upstream) {
        (IngressRequest::Chat(r), Format::OpenAi) => {
            let (b, injected) = r.upstream_body(model);
            injected_usage = injected;
            (Cow::Borrowed("/chat/completions"), b)
        }
        (IngressRequest::Embeddings(r), Format::OpenAi) => {
            (Cow::Borrowed("/embeddings"), r.upstream_body(model))
        }
        (IngressRequest::Messages(r), Format::Anthropic) => {
            (Cow::Borrowed("/messages"), r.upstream_body(model))
        }
        (IngressRequest::Converse(r), Format::Bedrock) => (
            Cow::Owned(bedrock::model_path(model, r.stream)),
            r.upstream_body(),
        ),
        (r, to) => {
            let mut ir = r.to_ir(to)?;
            stream = ir.stream;
            if matches!(to, Format::Anthropic | Format::Bedrock) {
                json_tool = translate::json_tool(&mut ir, client, to)?;
            }
            let (path, v) = match to {
                Format::OpenAi | Format::Responses => (
                    Cow::Borrowed("/chat/completions"),
                    translate::openai::request_from_ir(&ir, model, client)?,
                ),
                Format::Anthropic => (
                    Cow::Borrowed("/messages"),
                    translate::anthropic::request_from_ir(&ir, model),
                ),
                Format::Bedrock => (
                    Cow::Owned(bedrock::model_path(model, ir.stream)),
                    translate::bedrock::request_from_ir(&ir, client)?,
                ),
            };
            let bytes = serde_json::to_vec(&v).map_err(|e| {
                ApiError::Internal(format!("serializing the upstream request: {e}"))
            })?;
            (path, Bytes::from(bytes))
        }
    };
    let mut headers = d.upstream.request_headers.clone();
    if upstream == Format::Anthropic {
        let version = client_headers
            .get("anthropic-version")
            .filter(|_| client == Format::Anthropic)
            .cloned()
            .or_else(|| http::HeaderValue::from_str(&d.upstream.anthropic_version).ok());
        if let Some(v) = version {
            headers.insert("anthropic-version", v);
        }
        if client == Format::Anthropic {
            for v in client_headers.get_all("anthropic-beta") {
                headers.append("anthropic-beta", v.clone());
            }
        }
    }
    if let UpstreamAuth::SigV4 {
        credentials,
        region,
        host,
        base_path,
    } = &d.upstream.auth
    {
        sigv4::sign(
            "POST",
            host,
            &format!("{base_path}{path}"),
            "",
            &mut headers,
            &body,
            credentials,
            region,
            "bedrock",
            now_unix,
        );
    }
    Ok(UpstreamCall {
        request: UpstreamRequest {
            url: d
                .urls
                .get(endpoint, &d.upstream.base_url, &path)
                .map_err(ApiError::Internal)?,
            headers,
            body,
            timeout,
        },
        upstream,
        translated,
        stream,
        injected_usage,
        json_tool,
    })
}

/// Whether an upstream response is the stream its format promises.
pub fn is_stream(upstream: Format, headers: &HeaderMap) -> bool {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match upstream {
        Format::OpenAi | Format::Anthropic | Format::Responses => {
            ct.starts_with("text/event-stream")
        }
        Format::Bedrock => ct.starts_with("application/vnd.amazon.eventstream"),
    }
}

/// What a successful JSON answer says it cost.
pub struct JsonUsage {
    pub usage: Option<Usage>,
    pub service_tier: Option<String>,
}

/// Usage of a successful non-streaming answer; `Err` when the body is not what the
/// upstream's API promises.
pub fn json_usage(upstream: Format, body: &[u8]) -> Result<JsonUsage, String> {
    match upstream {
        Format::OpenAi | Format::Responses => openai::response_meter(body).map(|m| JsonUsage {
            usage: m.usage,
            service_tier: m.service_tier,
        }),
        Format::Anthropic => anthropic::response_usage(body).map(|usage| JsonUsage {
            usage,
            service_tier: None,
        }),
        Format::Bedrock => bedrock::response_usage(body).map(|usage| JsonUsage {
            usage,
            service_tier: None,
        }),
    }
}

/// Generated text of a successful non-streaming chat answer.
pub fn json_text(upstream: Format, body: &[u8]) -> String {
    match upstream {
        Format::OpenAi | Format::Responses => openai::response_text(body),
        Format::Anthropic => anthropic::response_text(body),
        Format::Bedrock => bedrock::response_text(body),
    }
}

/// A successful answer in the canonical form (`Err` when it is not a chat answer).
fn response_ir(upstream: Format, body: &[u8]) -> Result<translate::Response, String> {
    match upstream {
        Format::OpenAi | Format::Responses => translate::openai::response_to_ir(body),
        Format::Anthropic => translate::anthropic::response_to_ir(body),
        Format::Bedrock => translate::bedrock::response_to_ir(body),
    }
}

/// The escalation check on a successful non-streaming answer (see
/// [`tollgate_domain::routing::check`]). An answer that does not parse is not judged
/// here (metering reports it as malformed). `json_tool`: structured output was asked
/// as a forced tool call, whose input is the answer.
pub fn answer_check(
    upstream: Format,
    body: &[u8],
    json_requested: bool,
    json_tool: bool,
) -> Option<tollgate_domain::routing::check::Failure> {
    use tollgate_domain::routing::check::{Answer, check};
    use translate::{Block, StopReason};
    let mut r = response_ir(upstream, body).ok()?;
    if json_tool {
        translate::json_answer(&mut r);
    }
    let mut text = String::new();
    let mut tool_call = false;
    for b in &r.content {
        match b {
            Block::Text { text: t, .. } => text.push_str(t),
            Block::ToolUse { .. } => tool_call = true,
            _ => {}
        }
    }
    let finish = match r.stop {
        StopReason::MaxTokens => "length",
        StopReason::ContentFilter => "refusal",
        StopReason::ToolUse => "tool_use",
        StopReason::EndTurn | StopReason::StopSequence => "stop",
    };
    check(&Answer {
        text: &text,
        tool_call,
        finish: Some(finish),
        json_requested,
    })
}

/// Whether a successful non-streaming answer stopped at its token cap (such an answer is
/// not cached: it is cut, not finished).
pub fn stopped_at_cap(upstream: Format, body: &[u8]) -> bool {
    match response_ir(upstream, body) {
        Ok(r) => r.stop == translate::StopReason::MaxTokens,
        // Not readable as a chat answer (embeddings): nothing to stop.
        Err(_) => false,
    }
}

/// Rewrite a successful answer from the upstream's format into the client's
/// (`client`: its format, model name, and for Responses the response's identity).
pub fn translate_json(
    upstream: Format,
    client: &ClientStream,
    body: &[u8],
    request_id: &str,
    latency_ms: u64,
    now_unix: i64,
) -> Result<(Bytes, Option<Value>), String> {
    let mut r = response_ir(upstream, body)?;
    if client.json_tool {
        translate::json_answer(&mut r);
    }
    if r.id.is_empty() {
        r.id = request_id.to_string();
    }
    let model = client.model.as_str();
    let v = match client.format {
        Format::OpenAi => translate::openai::response_from_ir(&r, model, now_unix.max(0) as u64),
        Format::Anthropic => translate::anthropic::response_from_ir(&r, model),
        Format::Bedrock => translate::bedrock::response_from_ir(&r, latency_ms),
        Format::Responses => match &client.responses {
            Some(meta) => translate::responses::response_from_ir(&r, meta),
            None => return Err("a Responses answer without its identity".into()),
        },
    };
    let output = (client.format == Format::Responses).then(|| v["output"].clone());
    serde_json::to_vec(&v)
        .map(|b| (Bytes::from(b), output))
        .map_err(|e| e.to_string())
}

/// An upstream error status, read in the upstream's terms, to be passed on in the
/// client's.
pub fn upstream_error(upstream: Format, status: u16, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let by_status = class_for_status(status);
    let (class, message): (ErrorClass, Option<String>) = match upstream {
        Format::OpenAi | Format::Responses => {
            let msg = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                v.get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            (by_status, msg)
        }
        Format::Anthropic => match anthropic::parse_error(body) {
            Some((c, m)) => (c, Some(m)),
            None => (by_status, None),
        },
        Format::Bedrock => {
            let class = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(bedrock::error_class)
                .unwrap_or(by_status);
            (class, bedrock::error_message(body))
        }
    };
    ApiError::UpstreamStatus {
        status,
        class,
        message: message
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| format!("The upstream answered with status {status}.")),
    }
}

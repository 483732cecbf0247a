//! Stage 8: the answer. JSON is read whole, metered, and passed through or translated;
//! streams go through the tee whole event by whole event (the upstream's own bytes, or
//! re-encoded for another format) and are metered when they end, fail, or the client
//! goes away; errors come back in the client's API shape. A routed answer below the
//! heaviest tier may be judged here and handed back for escalation.

use super::egress::Sent;
use super::meter::{Consumed, Meter, Outcome, stream_consumed};
use crate::clock::now_ms;
use crate::conversations::Conversations;
use crate::error::ApiError;
use crate::headers;
use crate::response_cache::ResponseCache;
use crate::upstream;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use tollgate_domain::loopguard::answer_hash;
use tollgate_domain::routing::check::Failure;
use tollgate_providers::client;
use tollgate_providers::stream::StreamTap;
use tollgate_providers::translate::Format;

/// What the caller of a non-streaming answer does next.
pub enum Answered {
    /// Send this response.
    Done(Response),
    /// The answer failed its escalation check: it was committed (paid) and `first` is
    /// what the client gets if the retry on the next tier fails.
    Escalate {
        first: Response,
        failure: Failure,
        meter: Box<Meter>,
    },
}

/// A routed request that may be retried once on the next tier if its answer fails the
/// check.
pub struct Escalation {
    /// The client asked for JSON (the check then also parses the answer).
    pub json_requested: bool,
}

/// Copy the upstream's response headers a client may want (content type, rate limits,
/// request ids, ...), leaving out hop-by-hop and framing headers.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !headers::is_hop_or_framing(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// The error code of an upstream status the gateway passes through.
fn upstream_status_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "upstream_rate_limited",
        400..=499 => "upstream_client_error",
        _ => "upstream_server_error",
    }
}

/// A non-streaming upstream answer: read it whole, meter it, pass it through (or
/// translate it). With `escalation`, a failed answer is handed back for a retry on the
/// next tier (its row committed, marked escalated).
pub async fn json(
    mut meter: Meter,
    sent: Sent,
    escalation: Option<Escalation>,
    cache: &ResponseCache,
    conversations: &Conversations,
) -> Answered {
    let (max, timeout) = (
        meter.ctx.cfg.server.max_response_bytes,
        meter.ctx.cfg.server.upstream_timeout,
    );
    let Sent {
        resp,
        upstream,
        translated,
        chat,
        client: client_stream,
        output_cap,
        conversation,
        ..
    } = sent;
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = match client::read_body(resp, max, timeout).await {
        Ok(b) => b,
        Err(e) => return Answered::Done(meter.reject(e.into()).await),
    };
    meter.ctx.first_byte();
    if !status.is_success() {
        // Providers do not bill errors. The same format passes them through as they
        // are; another format gets them in its own shape, with the same status.
        let outcome = Outcome {
            status: status.as_u16(),
            error_code: Some(upstream_status_code(status)),
            consumed: Consumed::Nothing,
            service_tier: None,
            partial: false,
        };
        let row = meter.commit(outcome).await;
        if translated {
            let err = upstream::upstream_error(upstream, status.as_u16(), &upstream_headers, &body);
            let mut out = err.into_response_as(client_stream.format, Some(&row.request_id));
            if let Some(v) = upstream_headers.get(http::header::RETRY_AFTER) {
                out.headers_mut()
                    .insert(http::header::RETRY_AFTER, v.clone());
            }
            return Answered::Done(out);
        }
        let mut out = Response::new(Body::from(body));
        *out.status_mut() = status;
        copy_headers(&upstream_headers, out.headers_mut());
        headers::set_request_id(out.headers_mut(), &row.request_id);
        return Answered::Done(out);
    }
    let metered = match upstream::json_usage(upstream, &body) {
        Ok(m) => m,
        // Metered as far as it can be (the prompt was sent), then an error.
        Err(e) => return Answered::Done(meter.reject(ApiError::UpstreamMalformed(e)).await),
    };
    let out_body = if translated {
        let latency = meter.ctx.started.elapsed().as_millis() as u64;
        match upstream::translate_json(
            upstream,
            &client_stream,
            &body,
            meter.request_id(),
            latency,
            now_ms() / 1000,
        ) {
            Ok((b, output)) => {
                if let (Some((id, items)), Some(output)) = (conversation, output) {
                    remember(conversations, &meter, id, items, output);
                }
                b
            }
            Err(e) => return Answered::Done(meter.reject(ApiError::UpstreamMalformed(e)).await),
        }
    } else {
        body.clone()
    };
    let consumed = match metered.usage {
        Some(u) => Consumed::Reported(u),
        None if chat => Consumed::Estimate(upstream::json_text(upstream, &body)),
        None => Consumed::Estimate(String::new()),
    };
    let output = match &consumed {
        Consumed::Reported(u) => Some(u.output),
        _ => None,
    };
    let failure = escalation.and_then(|e| {
        let failure =
            upstream::answer_check(upstream, &body, e.json_requested, client_stream.json_tool)?;
        // Cut off at the client's own cap: the next tier would stop at the same place
        // (unknown output counts as reaching it).
        if failure == Failure::Length
            && let Some(cap) = output_cap
            && output.is_none_or(|n| n >= cap)
        {
            return None;
        }
        Some(failure)
    });
    if let Some(failure) = failure
        && let Some(r) = meter.ctx.route.as_mut()
    {
        r.escalated = Some(failure);
    }
    // A complete answer the cache may keep: usage reported, not stopped at its token
    // cap, and not one that failed its escalation check.
    let fill = meter.ctx.cache_fill.take().filter(|_| failure.is_none());
    let store = match (&consumed, fill) {
        (Consumed::Reported(u), Some(fill)) if !upstream::stopped_at_cap(upstream, &body) => {
            Some((fill, *u))
        }
        _ => None,
    };
    let tier = metered.service_tier.clone();
    if meter.ctx.ticket.as_ref().is_some_and(|t| t.wants_answer()) {
        meter.ctx.answer = Some(answer_hash(&upstream::json_text(upstream, &body)));
    }
    let row = meter
        .commit(Outcome::ok(consumed, metered.service_tier))
        .await;
    if let Some((fill, usage)) = store {
        let ct = if translated {
            "application/json".to_string()
        } else {
            upstream_headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string()
        };
        cache.insert(
            fill.keys,
            out_body.clone(),
            ct,
            false,
            usage,
            tier,
            &row.route.deployment,
            fill.ttl_ms,
            now_ms(),
        );
    }
    let mut out = Response::new(Body::from(out_body));
    *out.status_mut() = status;
    if translated {
        out.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if client_stream.format == Format::Bedrock
            && let Ok(v) = HeaderValue::from_str(&row.request_id)
        {
            out.headers_mut().insert("x-amzn-requestid", v);
        }
    } else {
        copy_headers(&upstream_headers, out.headers_mut());
    }
    out.headers_mut()
        .extend(std::mem::take(&mut meter.ctx.response_headers));
    if let Some(r) = &meter.ctx.route {
        r.write_headers(out.headers_mut());
    }
    headers::set_request_id(out.headers_mut(), &row.request_id);
    if let Ok(v) = HeaderValue::from_str(&row.cost.to_string()) {
        out.headers_mut().insert(headers::COST_USD, v);
    }
    super::cache::status_header(&meter.ctx, out.headers_mut());
    match failure {
        Some(failure) => Answered::Escalate {
            first: out,
            failure,
            meter: Box::new(meter),
        },
        None => Answered::Done(out),
    }
}

/// Keep a Responses answer for `previous_response_id`: the conversation so far and the
/// answer's output items, under the key that asked.
fn remember(
    conversations: &Conversations,
    meter: &Meter,
    id: String,
    mut items: Vec<serde_json::Value>,
    output: serde_json::Value,
) {
    if let serde_json::Value::Array(out) = output {
        items.extend(out);
    }
    let key = meter.ctx.attribution.key_id.as_deref().unwrap_or("");
    conversations.put(key, &id, items, now_ms());
}

/// A streamed answer: whole events go to the client as they come (the upstream's own
/// bytes, or translated), through the tee, and the stream is metered when it ends,
/// fails, or the client goes away.
pub fn stream(
    mut meter: Meter,
    sent: Sent,
    cache: Arc<ResponseCache>,
    conversations: Arc<Conversations>,
) -> Response {
    let Sent {
        resp,
        upstream,
        translated,
        injected_usage,
        client: client_stream,
        conversation,
        ..
    } = sent;
    let client = client_stream.format;
    let strict = meter.durability() == tollgate_store::Durability::Strict;
    let tap = if upstream == Format::OpenAi && !translated {
        StreamTap::openai_native(injected_usage, strict)
    } else {
        StreamTap::decoded(upstream, client_stream, strict)
    };
    let idle = meter.ctx.cfg.server.stream_idle_timeout;
    let mut tap = tap;
    let wants_answer = meter.ctx.ticket.as_ref().is_some_and(|t| t.wants_answer());
    if wants_answer {
        tap.keep_text();
    }
    meter.scanner = Some(tap);
    let mut head = HeaderMap::new();
    if translated {
        let ct = match client {
            Format::Bedrock => "application/vnd.amazon.eventstream",
            Format::OpenAi | Format::Anthropic | Format::Responses => {
                "text/event-stream; charset=utf-8"
            }
        };
        head.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    } else {
        copy_headers(resp.headers(), &mut head);
    }
    head.extend(std::mem::take(&mut meter.ctx.response_headers));
    if let Some(r) = &meter.ctx.route {
        r.write_headers(&mut head);
    }
    super::cache::status_header(&meter.ctx, &mut head);
    let request_id = meter.request_id().to_string();
    // A stream is cached only once complete: its bytes are kept as they go out (up to
    // the cache's entry size), and stored after the last one.
    let mut record = match meter.ctx.cache_fill.take() {
        Some(fill) => {
            let ct = head
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/event-stream")
                .to_string();
            Some((cache, fill, ct, Vec::<u8>::new()))
        }
        _ => None,
    };
    let body = async_stream::stream! {
        let mut meter = meter;
        let mut upstream = resp.bytes_stream();
        let mut failure: Option<&'static str> = None;
        loop {
            match tokio::time::timeout(idle, upstream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let (out, malformed) = match meter.scanner.as_mut() {
                        Some(s) => (s.feed(chunk), s.malformed()),
                        None => (chunk, false),
                    };
                    if !out.is_empty() {
                        meter.ctx.first_byte();
                        if let Some((c, _, _, buf)) = record.as_mut() {
                            if buf.len() + out.len() <= c.max_entry_bytes() {
                                buf.extend_from_slice(&out);
                            } else {
                                record = None;
                            }
                        }
                        yield Ok::<Bytes, Infallible>(out);
                    }
                    if malformed {
                        failure = Some("upstream_malformed");
                        break;
                    }
                }
                Ok(Some(Err(_))) => {
                    failure = Some("upstream_cut");
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    failure = Some("upstream_timeout");
                    break;
                }
            }
        }
        drop(upstream);
        let (tail, outcome, cut_tail) = match meter.scanner.as_mut() {
            Some(s) => {
                let tail = s.finish(failure.is_none());
                let complete = failure.is_none() && s.completed();
                let error_code = if s.error().is_some() {
                    Some("upstream_error")
                } else if !complete {
                    Some(failure.unwrap_or("upstream_cut"))
                } else {
                    None
                };
                let outcome = Outcome {
                    status: 200,
                    error_code,
                    consumed: stream_consumed(s),
                    service_tier: s.service_tier(),
                    partial: error_code.is_some(),
                };
                let message = match error_code {
                    Some("upstream_malformed") => "The upstream sent a malformed stream.",
                    _ => "The upstream stream ended before it was complete.",
                };
                (tail, outcome, s.cut_tail(message, error_code.unwrap_or("upstream_cut")))
            }
            None => (Bytes::new(), Outcome::ok(Consumed::Nothing, None), Bytes::new()),
        };
        if outcome.error_code.is_none()
            && let (Some((id, items)), Some(done)) = (
                conversation,
                meter.scanner.as_ref().and_then(|s| s.responses_completed()),
            )
        {
            let output = done["output"].clone();
            remember(&conversations, &meter, id, items, output);
        }
        if wants_answer && outcome.error_code.is_none() {
            meter.ctx.answer = meter
                .scanner
                .as_ref()
                .and_then(|s| s.generated_text())
                .map(|t| answer_hash(&t));
        }
        let cut = outcome.error_code.is_some_and(|c| c != "upstream_error");
        let store_usage = match (&outcome.consumed, outcome.error_code) {
            (Consumed::Reported(u), None) => Some((*u, outcome.service_tier.clone())),
            _ => None,
        };
        let row = meter.commit(outcome).await;
        if let (Some((c, fill, ct, mut buf)), Some((usage, tier))) = (record.take(), store_usage)
            && buf.len() + tail.len() <= c.max_entry_bytes()
        {
            buf.extend_from_slice(&tail);
            c.insert(
                fill.keys,
                Bytes::from(buf),
                ct,
                true,
                usage,
                tier,
                &row.route.deployment,
                fill.ttl_ms,
                now_ms(),
            );
        }
        if !tail.is_empty() {
            yield Ok(tail);
        }
        if cut && !cut_tail.is_empty() {
            // Tell the client the stream is incomplete, in its API's streamed error
            // shape, so SDKs raise instead of returning a silently truncated answer.
            yield Ok(cut_tail);
        }
    };
    let mut out = Response::new(Body::from_stream(body));
    *out.headers_mut() = head;
    out.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    headers::set_request_id(out.headers_mut(), &request_id);
    if client == Format::Bedrock
        && let Ok(v) = HeaderValue::from_str(&request_id)
    {
        out.headers_mut().insert("x-amzn-requestid", v);
    }
    out
}

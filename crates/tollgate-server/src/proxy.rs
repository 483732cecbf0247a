//! The OpenAI-compatible proxy endpoints.
//!
//! Per request: authenticate the key → read the body (bounded) → parse → resolve the
//! deployment → attribute → forward → meter. The [`Meter`] exists from authentication
//! on, so every later step, error, or disconnect produces its ledger row.

use crate::auth::authenticate;
use crate::config::Deployment;
use crate::error::ApiError;
use crate::headers;
use crate::meter::{Consumed, Meter, Outcome, Prompt};
use crate::state::Gateway;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tollgate_domain::attribution::{self, Attribution, Labels};
use tollgate_domain::ledger::Endpoint;
use tollgate_providers::openai::{self, ChatRequest, EmbeddingsRequest};
use tollgate_providers::sse::SseScanner;
use tollgate_providers::{UpstreamRequest, client};
use tollgate_store::VirtualKey;

/// Metadata keys that carry attribution and are removed before forwarding.
const METADATA_KEYS: [&str; 5] = [
    "tollgate_agent",
    "tollgate_task",
    "tollgate_user",
    "tollgate_team",
    "tollgate_tags",
];

/// Read the request body, refusing more than `limit` bytes.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::BodyTooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge(limit)),
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// The attribution a key owner gives: its id and owner labels.
fn key_attribution(key: &VirtualKey) -> Attribution {
    Attribution {
        key_id: Some(key.id.clone()),
        user: key.user.clone(),
        team: key.team.clone(),
        agent: key.agent.clone(),
        task: None,
        tags: Vec::new(),
    }
}

fn invalid(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParam {
        param: field.to_string(),
        message: e.to_string(),
    }
}

/// Labels from `x-tollgate-*` headers.
fn header_labels(h: &HeaderMap) -> Result<Labels, ApiError> {
    let get = |name: &'static str| -> Result<Option<String>, ApiError> {
        match h.get(name) {
            None => Ok(None),
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| invalid(name, "header is not visible ASCII"))?;
                attribution::label(name, s).map_err(|e| invalid(name, e))
            }
        }
    };
    let tags = match h.get(headers::TAGS) {
        None => Vec::new(),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| invalid(headers::TAGS, "header is not visible ASCII"))?;
            attribution::tags(headers::TAGS, s).map_err(|e| invalid(headers::TAGS, e))?
        }
    };
    Ok(Labels {
        user: get(headers::USER)?,
        team: get(headers::TEAM)?,
        agent: get(headers::AGENT)?,
        task: get(headers::TASK)?,
        tags,
    })
}

/// Labels from the body's `user` and `metadata` (`agent`/`tollgate_agent`, ...).
fn body_labels(
    user: Option<&str>,
    metadata: Option<&Map<String, Value>>,
) -> Result<Labels, ApiError> {
    let meta = |k: &str| -> Result<Option<String>, ApiError> {
        let Some(m) = metadata else { return Ok(None) };
        let v = m
            .get(&format!("tollgate_{k}"))
            .or_else(|| m.get(k))
            .and_then(Value::as_str);
        match v {
            Some(s) => attribution::label(&format!("metadata.{k}"), s)
                .map_err(|e| invalid(&format!("metadata.{k}"), e)),
            None => Ok(None),
        }
    };
    let user = match user {
        Some(u) => attribution::label("user", u).map_err(|e| invalid("user", e))?,
        None => meta("user")?,
    };
    let tags = match metadata.and_then(|m| m.get("tollgate_tags").or_else(|| m.get("tags"))) {
        Some(Value::String(s)) => {
            attribution::tags("metadata.tags", s).map_err(|e| invalid("metadata.tags", e))?
        }
        Some(Value::Array(items)) => {
            let joined = items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",");
            attribution::tags("metadata.tags", &joined).map_err(|e| invalid("metadata.tags", e))?
        }
        _ => Vec::new(),
    };
    Ok(Labels {
        user,
        team: meta("team")?,
        agent: meta("agent")?,
        task: meta("task")?,
        tags,
    })
}

/// Remove tollgate's own metadata keys (and an emptied `metadata`) before forwarding.
fn strip_tollgate_metadata(body: &mut Map<String, Value>) {
    let empty = match body.get_mut("metadata") {
        Some(Value::Object(m)) => {
            for k in METADATA_KEYS {
                m.remove(k);
            }
            m.is_empty()
        }
        _ => false,
    };
    if empty {
        body.remove("metadata");
    }
}

fn resolve(gw: &Gateway, key: &VirtualKey, model: &str) -> Result<Arc<Deployment>, ApiError> {
    let cfg = gw.config.load();
    let d = cfg
        .deployments
        .get(model)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))?;
    if !key.allows_model(model) {
        return Err(ApiError::ModelNotAllowed(model.to_string()));
    }
    Ok(d)
}

fn upstream_request(gw: &Gateway, d: &Deployment, path: &str, body: Bytes) -> UpstreamRequest {
    let cfg = gw.config.load();
    UpstreamRequest {
        url: format!("{}{path}", d.upstream.base_url),
        headers: d.upstream.request_headers.clone(),
        body,
        timeout: cfg.server.upstream_timeout,
    }
}

fn request_id_header(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(headers::REQUEST_ID, v);
    }
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

/// Shared start of every proxy request: request id, key, meter. On failure, the error
/// and the request id to answer with.
fn begin(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Result<(Meter, Arc<VirtualKey>), (ApiError, String)> {
    let started = Instant::now();
    let request_id = gw.ids.next();
    let key = match authenticate(&gw.keys, headers) {
        Ok(k) => k,
        Err(e) => return Err((e, request_id)),
    };
    let meter = Meter::new(
        gw.clone(),
        request_id,
        endpoint,
        started,
        key_attribution(&key),
    );
    Ok((meter, key))
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (mut meter, key) = match begin(&gw, &headers, Endpoint::ChatCompletions) {
        Ok(v) => v,
        Err((e, id)) => return e.into_response(Some(&id)),
    };
    let limit = gw.config.load().server.max_body_bytes;
    let bytes = match read_body(body, &headers, limit).await {
        Ok(b) => b,
        Err(e) => return meter.reject(e).await,
    };
    let mut req = match ChatRequest::parse(&bytes) {
        Ok(r) => r,
        Err(e) => return meter.reject(e.into()).await,
    };
    meter.set_requested_model(&req.model);
    meter.set_stream(req.stream);
    let labels =
        header_labels(&headers).and_then(|h| Ok((h, body_labels(req.user(), req.metadata())?)));
    let (h, b) = match labels {
        Ok(v) => v,
        Err(e) => return meter.reject(e).await,
    };
    meter.attribution_mut().fill_from(h);
    meter.attribution_mut().fill_from(b);
    let deployment = match resolve(&gw, &key, &req.model) {
        Ok(d) => d,
        Err(e) => return meter.reject(e).await,
    };
    meter.set_deployment(&deployment, gw.config.load().prices.hash());
    strip_tollgate_metadata(&mut req.body);
    if let Err(e) = crate::admission::admit(&gw, &mut meter, &mut req.body).await {
        return meter.reject(e).await;
    }
    let (upstream_body, injected_usage) = req.upstream_body(&deployment.model);
    let stream = req.stream;
    if let Some(Value::Array(messages)) = req.body.remove("messages") {
        meter.prompt = Prompt::Chat(messages);
    }
    drop(req);

    let upstream_req = upstream_request(&gw, &deployment, "/chat/completions", upstream_body);
    meter.upstream_called = true;
    let resp = match gw.client.post(upstream_req).await {
        Ok(r) => r,
        Err(e) => return meter.reject(e.into()).await,
    };
    let is_sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if stream && resp.status().is_success() && is_sse {
        return stream_response(gw, meter, resp, injected_usage);
    }
    json_response(&gw, meter, resp, true).await
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (mut meter, key) = match begin(&gw, &headers, Endpoint::Embeddings) {
        Ok(v) => v,
        Err((e, id)) => return e.into_response(Some(&id)),
    };
    let limit = gw.config.load().server.max_body_bytes;
    let bytes = match read_body(body, &headers, limit).await {
        Ok(b) => b,
        Err(e) => return meter.reject(e).await,
    };
    let mut req = match EmbeddingsRequest::parse(&bytes) {
        Ok(r) => r,
        Err(e) => return meter.reject(e.into()).await,
    };
    meter.set_requested_model(&req.model);
    let labels = header_labels(&headers).and_then(|h| {
        let meta = req.body.get("metadata").and_then(Value::as_object);
        Ok((h, body_labels(req.user(), meta)?))
    });
    let (h, b) = match labels {
        Ok(v) => v,
        Err(e) => return meter.reject(e).await,
    };
    meter.attribution_mut().fill_from(h);
    meter.attribution_mut().fill_from(b);
    let deployment = match resolve(&gw, &key, &req.model) {
        Ok(d) => d,
        Err(e) => return meter.reject(e).await,
    };
    meter.set_deployment(&deployment, gw.config.load().prices.hash());
    strip_tollgate_metadata(&mut req.body);
    if let Err(e) = crate::admission::admit(&gw, &mut meter, &mut req.body).await {
        return meter.reject(e).await;
    }
    let upstream_body = req.upstream_body(&deployment.model);
    if let Some(input) = req.body.remove("input") {
        meter.prompt = Prompt::Embeddings(input);
    }
    let upstream_req = upstream_request(&gw, &deployment, "/embeddings", upstream_body);
    meter.upstream_called = true;
    let resp = match gw.client.post(upstream_req).await {
        Ok(r) => r,
        Err(e) => return meter.reject(e.into()).await,
    };
    json_response(&gw, meter, resp, false).await
}

/// A non-streaming upstream answer: read it whole, meter it, pass it through.
async fn json_response(
    gw: &Gateway,
    mut meter: Meter,
    resp: reqwest::Response,
    chat: bool,
) -> Response {
    let (max, timeout) = {
        let cfg = gw.config.load();
        (cfg.server.max_response_bytes, cfg.server.upstream_timeout)
    };
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = match client::read_body(resp, max, timeout).await {
        Ok(b) => b,
        Err(e) => return meter.reject(e.into()).await,
    };
    meter.first_byte();
    let outcome = if status.is_success() {
        match openai::response_meter(&body) {
            Ok(m) => Outcome::ok(
                match m.usage {
                    Some(u) => Consumed::Reported(u),
                    None if chat => Consumed::Estimate(openai::response_text(&body)),
                    None => Consumed::Estimate(String::new()),
                },
                m.service_tier,
            ),
            Err(e) => {
                // Metered as far as it can be (the prompt was sent), then an error.
                return meter.reject(ApiError::UpstreamMalformed(e)).await;
            }
        }
    } else {
        // Upstream errors are passed through as they are; providers do not bill them.
        Outcome {
            status: status.as_u16(),
            error_code: Some(upstream_status_code(status)),
            consumed: Consumed::Nothing,
            service_tier: None,
            partial: false,
        }
    };
    let row = meter.commit(outcome).await;
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    copy_headers(&upstream_headers, out.headers_mut());
    out.headers_mut()
        .extend(std::mem::take(&mut meter.limit_headers));
    request_id_header(&mut out, &row.request_id);
    if let Ok(v) = HeaderValue::from_str(&row.cost.to_string()) {
        out.headers_mut().insert(headers::COST_USD, v);
    }
    out
}

/// An SSE answer: pass the bytes through as they come, tee them through the scanner,
/// and meter when the stream ends, fails, or the client goes away.
fn stream_response(
    gw: Arc<Gateway>,
    mut meter: Meter,
    resp: reqwest::Response,
    injected_usage: bool,
) -> Response {
    let idle = gw.config.load().server.stream_idle_timeout;
    let strict = meter.durability() == tollgate_store::Durability::Strict;
    meter.scanner = Some(SseScanner::new(injected_usage, strict));
    let mut head = HeaderMap::new();
    copy_headers(resp.headers(), &mut head);
    head.extend(std::mem::take(&mut meter.limit_headers));
    let request_id = meter.request_id().to_string();
    let body = async_stream::stream! {
        let mut meter = meter;
        let mut upstream = resp.bytes_stream();
        let mut failure: Option<&'static str> = None;
        loop {
            match tokio::time::timeout(idle, upstream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let out = match meter.scanner.as_mut() {
                        Some(s) => s.feed(chunk),
                        None => chunk,
                    };
                    if !out.is_empty() {
                        meter.first_byte();
                        yield Ok::<Bytes, Infallible>(out);
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
        let (tail, outcome) = match meter.scanner.as_mut() {
            Some(s) => {
                let tail = s.finish(failure.is_none());
                let complete = failure.is_none() && (s.saw_done || s.usage.is_some());
                let error_code = if s.error.is_some() {
                    Some("upstream_error")
                } else if !complete {
                    Some(failure.unwrap_or("upstream_cut"))
                } else {
                    None
                };
                let consumed = match &s.usage {
                    Some(u) => Consumed::Reported(u.to_usage()),
                    None => Consumed::Estimate(s.generated_text().unwrap_or_default()),
                };
                let outcome = Outcome {
                    status: 200,
                    error_code,
                    consumed,
                    service_tier: s.service_tier.clone(),
                    partial: error_code.is_some(),
                };
                (tail, outcome)
            }
            None => (Bytes::new(), Outcome::ok(Consumed::Nothing, None)),
        };
        let cut = outcome.error_code.is_some_and(|c| c != "upstream_error");
        let row = meter.commit(outcome).await;
        if !tail.is_empty() {
            yield Ok(tail);
        }
        if cut {
            // Tell the client the stream is incomplete, in OpenAI's streamed error shape,
            // so SDKs raise instead of returning a silently truncated answer.
            let err = openai::error_body(
                "The upstream stream ended before it was complete.",
                "upstream_error",
                None,
                row.error_code.as_deref(),
            );
            yield Ok(Bytes::from(format!("data: {err}\n\n")));
        }
    };
    let mut out = Response::new(Body::from_stream(body));
    *out.headers_mut() = head;
    out.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    request_id_header(&mut out, &request_id);
    out
}

/// `GET /v1/models`: the deployments this key may call, in OpenAI's list shape.
pub async fn list_models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let key = match authenticate(&gw.keys, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(None),
    };
    let cfg = gw.config.load();
    let data: Vec<Value> = cfg
        .deployments
        .values()
        .filter(|d| key.allows_model(&d.name))
        .map(|d| {
            serde_json::json!({
                "id": d.name,
                "object": "model",
                "created": 0,
                "owned_by": d.upstream.name,
            })
        })
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_labels_and_stripping() {
        let mut body: Map<String, Value> = serde_json::from_str(
            r#"{"metadata":{"tollgate_agent":"a1","task":"t9","tollgate_tags":"x,y"}}"#,
        )
        .unwrap();
        let l = body_labels(Some("u1"), body.get("metadata").and_then(Value::as_object)).unwrap();
        assert_eq!(l.agent.as_deref(), Some("a1"));
        assert_eq!(l.task.as_deref(), Some("t9"));
        assert_eq!(l.user.as_deref(), Some("u1"));
        assert_eq!(l.tags, vec!["x".to_string(), "y".to_string()]);
        strip_tollgate_metadata(&mut body);
        assert_eq!(body["metadata"], serde_json::json!({"task": "t9"}));
        let mut only: Map<String, Value> =
            serde_json::from_str(r#"{"metadata":{"tollgate_agent":"a1"}}"#).unwrap();
        strip_tollgate_metadata(&mut only);
        assert!(only.get("metadata").is_none());
    }

    #[test]
    fn header_labels_validate() {
        let mut h = HeaderMap::new();
        h.insert(headers::AGENT, "planner".parse().unwrap());
        h.insert(headers::TAGS, "a, b".parse().unwrap());
        let l = header_labels(&h).unwrap();
        assert_eq!(l.agent.as_deref(), Some("planner"));
        assert_eq!(l.tags.len(), 2);
        h.insert(headers::TASK, "x".repeat(300).parse().unwrap());
        assert!(matches!(
            header_labels(&h),
            Err(ApiError::InvalidParam { .. })
        ));
    }
}

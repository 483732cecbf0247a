//! The proxy endpoints and the one pipeline they all run.
//!
//! Every API tollgate serves (OpenAI chat and embeddings, Anthropic Messages, Bedrock
//! Converse / ConverseStream) has a thin handler that names its [`Ingress`] and hands
//! the request to [`pipeline`]: authenticate → read and parse the body into a
//! format-tagged [`IngressRequest`] → attribute → resolve the deployment → (admission)
//! → call the upstream, natively or translated → answer, natively or translated, JSON
//! or stream → meter. The [`Meter`] exists from authentication on, so every later step,
//! error, or disconnect produces its ledger row.

use crate::auth::{authenticate, authenticate_sigv4, sigv4_header};
use crate::config::Deployment;
use crate::egress::{self, UpstreamCall};
use crate::error::ApiError;
use crate::headers;
use crate::ingress::{Ingress, IngressRequest};
use crate::meter::{Consumed, Meter, Outcome, stream_consumed};
use crate::routing::{self, Routed};
use crate::state::{Gateway, now_ms};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tollgate_domain::attribution::{self, Attribution, Labels};
use tollgate_domain::ledger::RouteMode;
use tollgate_domain::routing::check::Failure;
use tollgate_providers::client;
use tollgate_providers::sigv4::Received;
use tollgate_providers::stream::{ClientStream, StreamTap};
use tollgate_providers::translate::Format;
use tollgate_store::VirtualKey;

/// Read the request body, refusing more than `limit` bytes.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
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

/// Step 5: the deployment that serves the request. A routed model name (`auto`) is
/// decided here, so admission reserves against the chosen tier's prices; a concrete model
/// with an `x-tollgate-route` header is shadow-decided under that route and served as
/// asked.
fn resolve(
    gw: &Gateway,
    key: &VirtualKey,
    attr: &Attribution,
    req: &IngressRequest,
    headers: &HeaderMap,
) -> Result<(Arc<Deployment>, Option<Routed>), ApiError> {
    let cfg = gw.config.load();
    let model = req.model();
    let route_allowed = |route: &crate::config::Route| -> Result<(), ApiError> {
        if route.allows(attr.team.as_deref(), attr.agent.as_deref()) {
            return Ok(());
        }
        let who = match (&attr.team, &attr.agent) {
            (Some(t), Some(a)) => format!("team `{t}` / agent `{a}`"),
            (Some(t), None) => format!("team `{t}`"),
            (None, Some(a)) => format!("agent `{a}`"),
            (None, None) => "callers without a team or agent".to_string(),
        };
        Err(ApiError::RouteNotAllowed {
            route: route.name.clone(),
            who,
        })
    };
    if let Some(route) = cfg.routes.get(model) {
        if !key.allows_model(model) {
            return Err(ApiError::ModelNotAllowed(model.to_string()));
        }
        if matches!(req, IngressRequest::Embeddings(_)) {
            return Err(invalid(
                "model",
                format!("`{model}` is a routed name; routes serve chat requests, not embeddings"),
            ));
        }
        route_allowed(route)?;
        let r = routing::decide(
            &gw.routing,
            route,
            req,
            attr.task.as_deref(),
            None,
            cfg.routing.record_samples,
        );
        return Ok((r.served.clone(), Some(r)));
    }
    let d = cfg
        .deployments
        .get(model)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))?;
    if !key.allows_model(model) {
        return Err(ApiError::ModelNotAllowed(model.to_string()));
    }
    // Routes judge chat prompts: an embeddings request is served as asked, with no
    // shadow decision (its cost on a chat tier would be a made-up saving).
    let Some(name) = headers
        .get(headers::ROUTE)
        .filter(|_| !matches!(req, IngressRequest::Embeddings(_)))
    else {
        return Ok((d, None));
    };
    let name = name
        .to_str()
        .map_err(|_| invalid(headers::ROUTE, "header is not visible ASCII"))?;
    let route = cfg.routes.get(name).ok_or_else(|| {
        invalid(
            headers::ROUTE,
            format!("no route named {name:?} (see GET /v1/models)"),
        )
    })?;
    route_allowed(route)?;
    let r = routing::decide(
        &gw.routing,
        route,
        req,
        attr.task.as_deref(),
        Some(d.clone()),
        cfg.routing.record_samples,
    );
    Ok((d, Some(r)))
}

/// `x-tollgate-route`, `-route-tier`, `-route-deployment`, `-route-score`, `-route-mode`
/// on a routed answer.
fn route_headers(r: &Routed, h: &mut HeaderMap) {
    let mut set = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set(headers::ROUTE, &r.route.name);
    set(headers::ROUTE_TIER, &r.tier.to_string());
    set(headers::ROUTE_DEPLOYMENT, &r.tier_deployment().name);
    set(headers::ROUTE_SCORE, &format!("{:.4}", r.score));
    set(headers::ROUTE_MODE, r.mode.as_str());
}

/// A copy of a routed request kept for one retry on the next tier (escalation).
struct Escalation {
    req: IngressRequest,
    headers: HeaderMap,
    json_requested: bool,
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

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    pipeline(gw, Ingress::ChatCompletions, method, uri, headers, body).await
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    pipeline(gw, Ingress::Embeddings, method, uri, headers, body).await
}

/// `POST /v1/messages` (Anthropic Messages)
pub async fn messages(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    pipeline(gw, Ingress::Messages, method, uri, headers, body).await
}

/// `POST /model/{modelId}/converse` (Bedrock Converse)
pub async fn converse(
    State(gw): State<Arc<Gateway>>,
    Path(model): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ingress = Ingress::Converse {
        model,
        stream: false,
    };
    pipeline(gw, ingress, method, uri, headers, body).await
}

/// `POST /model/{modelId}/converse-stream` (Bedrock ConverseStream)
pub async fn converse_stream(
    State(gw): State<Arc<Gateway>>,
    Path(model): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ingress = Ingress::Converse {
        model,
        stream: true,
    };
    pipeline(gw, ingress, method, uri, headers, body).await
}

/// Steps 2 and 3a: who is calling, and the body. The meter is created as soon as the
/// key is known, so a body error is metered; SigV4 signs the body, so for a signed
/// request the body is read (bounded) before the key is trusted, and failures up to
/// that point are answered unmetered (like any unauthenticated request).
#[allow(clippy::too_many_arguments)]
async fn authenticate_and_read(
    gw: &Arc<Gateway>,
    ingress: &Ingress,
    request_id: String,
    started: Instant,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Meter, Arc<VirtualKey>, Bytes), Response> {
    let format = ingress.format();
    let (limit, master_env) = {
        let cfg = gw.config.load();
        (cfg.server.max_body_bytes, cfg.server.master_key_env.clone())
    };
    if format == Format::Bedrock
        && let Some(authorization) = sigv4_header(headers)
    {
        let bytes = match read_body(body, headers, limit).await {
            Ok(b) => b,
            Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
        };
        let received = Received {
            method: method.as_str(),
            raw_path: uri.path(),
            raw_query: uri.query().unwrap_or(""),
            headers,
            body: &bytes,
        };
        let key = match authenticate_sigv4(
            &gw.keys,
            gw.sealer.as_deref(),
            &master_env,
            authorization,
            &received,
            now_ms() / 1000,
        ) {
            Ok(k) => k,
            Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
        };
        let meter = Meter::new(
            gw.clone(),
            request_id,
            ingress.endpoint(),
            started,
            key_attribution(&key),
        );
        return Ok((meter, key, bytes));
    }
    let key = match authenticate(&gw.keys, headers) {
        Ok(k) => k,
        Err(ApiError::MissingKey) if format == Format::Bedrock => {
            return Err(ApiError::MissingSignature.into_response_as(format, Some(&request_id)));
        }
        Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
    };
    let mut meter = Meter::new(
        gw.clone(),
        request_id,
        ingress.endpoint(),
        started,
        key_attribution(&key),
    );
    match read_body(body, headers, limit).await {
        Ok(b) => Ok((meter, key, b)),
        Err(e) => Err(meter.reject(e).await),
    }
}

/// The one path every proxy request takes, whatever API it came in on.
pub async fn pipeline(
    gw: Arc<Gateway>,
    ingress: Ingress,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // 1. request id
    let started = Instant::now();
    let request_id = gw.ids.next();

    // 2. auth, 3a. body (bounded)
    let (mut meter, key, bytes) = match authenticate_and_read(
        &gw, &ingress, request_id, started, &method, &uri, &headers, body,
    )
    .await
    {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if gw.telemetry.traces() {
        meter.trace = Some(crate::otel::TraceContext::from_headers(&headers));
    }

    // 3b. parse into a format-tagged request
    let req = match IngressRequest::parse(&ingress, &bytes) {
        Ok(r) => r,
        Err(e) => return meter.reject(e).await,
    };
    drop(bytes);
    meter.set_requested_model(req.model());
    meter.set_stream(req.stream());

    // 4. attribution: key owner, then headers, then body
    let labels = header_labels(&headers).and_then(|h| Ok((h, req.body_labels()?)));
    let (h, b) = match labels {
        Ok(v) => v,
        Err(e) => return meter.reject(e).await,
    };
    meter.attribution_mut().fill_from(h);
    meter.attribution_mut().fill_from(b);

    // 5. deployment (a routed name is decided here)
    let (deployment, routed) = match resolve(&gw, &key, meter.attribution(), &req, &headers) {
        Ok(d) => d,
        Err(e) => return meter.reject(e).await,
    };
    meter.set_deployment(&deployment, gw.config.load().prices.hash());
    // Escalation applies to enforced, non-streaming requests below the heaviest tier:
    // a streamed answer has reached the client before it could be judged.
    let escalation = routed
        .as_ref()
        .filter(|r| {
            r.route.escalate
                && r.mode == RouteMode::Enforce
                && r.tier < r.route.heaviest()
                && !req.stream()
        })
        .map(|_| Escalation {
            req: req.clone(),
            headers: headers.clone(),
            json_requested: req.json_requested(),
        });
    meter.routed = routed;
    forward(gw, meter, req, deployment, &headers, started, escalation).await
}

/// Steps 6 to 9 for a resolved request (and again for an escalated one).
async fn forward(
    gw: Arc<Gateway>,
    mut meter: Meter,
    mut req: IngressRequest,
    deployment: Arc<Deployment>,
    headers: &HeaderMap,
    started: Instant,
    escalation: Option<Escalation>,
) -> Response {
    let format = req.format();
    // ── Admission ─────────────────────────────────────────────────────────────────
    // Steps that decide whether, and where, this request may go belong here: after
    // the deployment is known (routing has picked the tier), before anything is sent
    // upstream (budget reserve, task guard). A refusal is
    // `return meter.reject(err).await`; settlement happens in the Meter whatever the
    // outcome.
    // ──────────────────────────────────────────────────────────────────────────────
    if let Err(e) = crate::admission::admit_request(&gw, &mut meter, &mut req).await {
        return meter.reject(e).await;
    }

    // The output cap as sent (after any clamping): an answer cut off at it is what the
    // client asked for, not a reason to escalate.
    let output_cap = escalation.as_ref().and_then(|_| req.max_output_tokens());

    // 6. upstream call: the same format forwards the body with the model replaced;
    //    another format goes through the canonical representation.
    req.strip_tollgate_metadata();
    let client = ClientStream {
        format,
        model: req.model().to_string(),
        created: (now_ms() / 1000).max(0) as u64,
        include_usage: req.client_wants_usage(),
    };
    let chat = !matches!(req, IngressRequest::Embeddings(_));
    let timeout = gw.config.load().server.upstream_timeout;
    let call = match egress::prepare(&deployment, &mut req, headers, timeout, now_ms() / 1000) {
        Ok(c) => c,
        Err(e) => return meter.reject(e).await,
    };
    meter.prompt = req.into_prompt();
    let UpstreamCall {
        mut request,
        upstream,
        translated,
        stream,
        injected_usage,
    } = call;
    if let Some(t) = &meter.trace {
        t.inject(&mut request.headers);
    }
    meter.upstream_called = true;
    let resp = match gw.client.post(request).await {
        Ok(r) => r,
        Err(e) => return meter.reject(e.into()).await,
    };

    // 7. response, 8. meter
    if stream && resp.status().is_success() && egress::is_stream(upstream, resp.headers()) {
        let tap = if upstream == Format::OpenAi && !translated {
            StreamTap::openai_native(
                injected_usage,
                meter.durability() == tollgate_store::Durability::Strict,
            )
        } else {
            StreamTap::decoded(
                upstream,
                client,
                meter.durability() == tollgate_store::Durability::Strict,
            )
        };
        return stream_response(gw, meter, resp, tap, translated, format);
    }
    let answer = Answer {
        upstream,
        client: format,
        translated,
        chat,
        model: client.model,
        started,
        escalation,
        output_cap,
    };
    json_response(gw, meter, resp, answer).await
}

/// The light tier's answer failed its check: its row is committed (marked escalated) and
/// its answer built; the request goes once more to the next tier, as a call of its own
/// (own request id, own admission, own ledger row). The client gets the second answer,
/// or, if the retry fails (refused by a budget, an upstream error, ...), the first one,
/// which was paid for, with `x-tollgate-route-escalated: <check>; retry failed (<status>)`.
///
/// Boxed (and `Send` by signature): `forward` → `json_response` → `escalate` → `forward`
/// is a cycle the compiler cannot size or prove `Send` through without it.
fn escalate(
    gw: Arc<Gateway>,
    meter: Meter,
    mut next: Routed,
    failure: tollgate_domain::routing::check::Failure,
    e: Escalation,
    mut first: Response,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        let started = Instant::now();
        let mut second = meter.follow_up(gw.ids.next(), started);
        drop(meter);
        next.tier = (next.tier + 1).min(next.route.heaviest());
        next.served = next.route.tiers[next.tier].clone();
        next.escalated = None;
        // The sample belongs to the first call's row (same prompt).
        next.sample = None;
        let Escalation {
            req,
            headers: client_headers,
            ..
        } = e;
        second.set_deployment(&next.served, gw.config.load().prices.hash());
        let deployment = next.served.clone();
        second.routed = Some(next);
        let mut resp = forward(gw, second, req, deployment, &client_headers, started, None).await;
        if resp.status().is_success() {
            if let Ok(v) = HeaderValue::from_str(failure.code()) {
                resp.headers_mut().insert(headers::ROUTE_ESCALATED, v);
            }
            return resp;
        }
        let note = format!(
            "{}; retry failed ({})",
            failure.code(),
            resp.status().as_u16()
        );
        if let Ok(v) = HeaderValue::from_str(&note) {
            first.headers_mut().insert(headers::ROUTE_ESCALATED, v);
        }
        first
    })
}

/// How to give a non-streaming answer back.
struct Answer {
    upstream: Format,
    client: Format,
    translated: bool,
    /// Chat (text is counted if usage is missing) rather than embeddings.
    chat: bool,
    model: String,
    started: Instant,
    /// Set when a failed answer may be retried on the next tier.
    escalation: Option<Escalation>,
    /// The request's output cap as sent upstream.
    output_cap: Option<u64>,
}

/// A non-streaming upstream answer: read it whole, meter it, pass it through (or
/// translate it).
async fn json_response(
    gw: Arc<Gateway>,
    mut meter: Meter,
    resp: reqwest::Response,
    mut a: Answer,
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
        if a.translated {
            let err = egress::upstream_error(a.upstream, status.as_u16(), &upstream_headers, &body);
            let mut out = err.into_response_as(a.client, Some(&row.request_id));
            if let Some(v) = upstream_headers.get(http::header::RETRY_AFTER) {
                out.headers_mut()
                    .insert(http::header::RETRY_AFTER, v.clone());
            }
            return out;
        }
        let mut out = Response::new(Body::from(body));
        *out.status_mut() = status;
        copy_headers(&upstream_headers, out.headers_mut());
        request_id_header(&mut out, &row.request_id);
        return out;
    }
    let metered = match egress::json_usage(a.upstream, &body) {
        Ok(m) => m,
        // Metered as far as it can be (the prompt was sent), then an error.
        Err(e) => return meter.reject(ApiError::UpstreamMalformed(e)).await,
    };
    let out_body = if a.translated {
        let latency = a.started.elapsed().as_millis() as u64;
        match egress::translate_json(
            a.upstream,
            a.client,
            &body,
            &a.model,
            meter.request_id(),
            latency,
            now_ms() / 1000,
        ) {
            Ok(b) => b,
            Err(e) => return meter.reject(ApiError::UpstreamMalformed(e)).await,
        }
    } else {
        body.clone()
    };
    let consumed = match metered.usage {
        Some(u) => Consumed::Reported(u),
        None if a.chat => Consumed::Estimate(egress::json_text(a.upstream, &body)),
        None => Consumed::Estimate(String::new()),
    };
    let output = match &consumed {
        Consumed::Reported(u) => Some(u.output),
        _ => None,
    };
    let escalation = a.escalation.take().and_then(|e| {
        let next = meter.routed.clone()?;
        let failure = egress::answer_check(a.upstream, &body, e.json_requested)?;
        // Cut off at the client's own cap: the next tier would stop at the same place
        // (unknown output counts as reaching it).
        if failure == Failure::Length
            && let Some(cap) = a.output_cap
            && output.is_none_or(|n| n >= cap)
        {
            return None;
        }
        Some((e, next, failure))
    });
    if let Some((_, _, failure)) = &escalation
        && let Some(r) = meter.routed.as_mut()
    {
        r.escalated = Some(*failure);
    }
    let row = meter
        .commit(Outcome::ok(consumed, metered.service_tier))
        .await;
    let mut out = Response::new(Body::from(out_body));
    *out.status_mut() = status;
    if a.translated {
        out.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if a.client == Format::Bedrock
            && let Ok(v) = HeaderValue::from_str(&row.request_id)
        {
            out.headers_mut().insert("x-amzn-requestid", v);
        }
    } else {
        copy_headers(&upstream_headers, out.headers_mut());
    }
    out.headers_mut()
        .extend(std::mem::take(&mut meter.limit_headers));
    if let Some(r) = &meter.routed {
        route_headers(r, out.headers_mut());
    }
    request_id_header(&mut out, &row.request_id);
    if let Ok(v) = HeaderValue::from_str(&row.cost.to_string()) {
        out.headers_mut().insert(headers::COST_USD, v);
    }
    if let Some((e, next, failure)) = escalation {
        return escalate(gw, meter, next, failure, e, out).await;
    }
    out
}

/// A streamed answer: whole events go to the client as they come (the upstream's own
/// bytes, or translated), through the tee, and the stream is metered when it ends,
/// fails, or the client goes away.
fn stream_response(
    gw: Arc<Gateway>,
    mut meter: Meter,
    resp: reqwest::Response,
    tap: StreamTap,
    translated: bool,
    client: Format,
) -> Response {
    let idle = gw.config.load().server.stream_idle_timeout;
    meter.scanner = Some(tap);
    let mut head = HeaderMap::new();
    if translated {
        let ct = match client {
            Format::Bedrock => "application/vnd.amazon.eventstream",
            Format::OpenAi | Format::Anthropic => "text/event-stream; charset=utf-8",
        };
        head.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    } else {
        copy_headers(resp.headers(), &mut head);
    }
    head.extend(std::mem::take(&mut meter.limit_headers));
    if let Some(r) = &meter.routed {
        route_headers(r, &mut head);
    }
    let request_id = meter.request_id().to_string();
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
                        meter.first_byte();
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
        let cut = outcome.error_code.is_some_and(|c| c != "upstream_error");
        meter.commit(outcome).await;
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
    request_id_header(&mut out, &request_id);
    if client == Format::Bedrock
        && let Ok(v) = HeaderValue::from_str(&request_id)
    {
        out.headers_mut().insert("x-amzn-requestid", v);
    }
    out
}

/// `GET /v1/models`: the deployments this key may call, in OpenAI's list shape.
pub async fn list_models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let key = match authenticate(&gw.keys, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(None),
    };
    let cfg = gw.config.load();
    let mut data: Vec<Value> = cfg
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
    // Routed names this key's owner may use, with their ladders.
    data.extend(
        cfg.routes
            .values()
            .filter(|r| key.allows_model(&r.name))
            .filter(|r| r.allows(key.team.as_deref(), key.agent.as_deref()))
            .map(|r| {
                serde_json::json!({
                    "id": r.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate-router",
                    "tiers": r.tiers.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
                    "mode": r.mode.as_str(),
                })
            }),
    );
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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

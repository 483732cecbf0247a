//! Stage 1: the request id, the config snapshot, who is calling, and the body.
//!
//! The meter is created as soon as the key is known, so a body error is metered; SigV4
//! signs the body, so for a signed request the body is read (bounded) before the key is
//! trusted, and failures up to that point are answered unmetered (like any
//! unauthenticated request).

use super::Pipeline;
use super::ctx::RequestCtx;
use super::meter::Meter;
use crate::auth::{authenticate, authenticate_sigv4, sigv4_header};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::ingress::Ingress;
use crate::telemetry::otel::TraceContext;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tollgate_domain::attribution::Attribution;
use tollgate_providers::sigv4::Received;
use tollgate_providers::translate::Format;
use tollgate_store::VirtualKey;

/// Request ids: a random per-process prefix and a counter, unique across restarts and
/// replicas without coordination.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            prefix: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("req_{}{:08x}", self.prefix, n)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// Read the request body, refusing more than `limit` bytes.
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
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

/// Authenticate and read the body. `Err` is the response to send (unmetered before
/// the key is known, metered after).
pub async fn identify(
    p: &Pipeline,
    ingress: Ingress,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Meter, Arc<VirtualKey>, Bytes), Response> {
    let started = Instant::now();
    let cfg = p.config.load_full();
    let request_id = p.ids.next();
    let format = ingress.format();
    let limit = cfg.server.max_body_bytes;
    let traces = p.telemetry.traces();
    let start = |cfg, request_id, key: &VirtualKey| {
        let mut ctx = RequestCtx::new(cfg, request_id, ingress, started, now_ms());
        ctx.attribution = key_attribution(key);
        if traces {
            ctx.trace = Some(TraceContext::from_headers(headers));
        }
        Meter::new(p.settlement.clone(), ctx)
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
            &p.keys,
            p.sealer.as_deref(),
            &cfg.server.master_key_env,
            authorization,
            &received,
            now_ms() / 1000,
        ) {
            Ok(k) => k,
            Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
        };
        let meter = start(cfg, request_id, &key);
        return Ok((meter, key, bytes));
    }
    let key = match authenticate(&p.keys, headers) {
        Ok(k) => k,
        Err(ApiError::MissingKey) if format == Format::Bedrock => {
            return Err(ApiError::MissingSignature.into_response_as(format, Some(&request_id)));
        }
        Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
    };
    let mut meter = start(cfg, request_id, &key);
    match read_body(body, headers, limit).await {
        Ok(b) => Ok((meter, key, b)),
        Err(e) => Err(meter.reject(e).await),
    }
}

//! Stage 1: the request id, the config snapshot, who is calling, and the body.
//!
//! No body is read before the caller is known: a bearer key is checked first; a SigV4
//! request's key id, credential scope (`bedrock`) and date are checked from its headers,
//! then the body is read and the signature over it verified (failures up to that point
//! are answered unmetered, like any unauthenticated request), and `x-tollgate-*`
//! headers it did not sign are dropped (treated as absent). The meter is created as
//! soon as the key is trusted, so a later body error is metered. Bodies being read hold
//! their bytes from one global budget ([`BodyBudget`]): past it, 503 in the API's shape.

use super::Pipeline;
use super::ctx::RequestCtx;
use super::meter::Meter;
use crate::auth::{authenticate, sigv4_header, sigv4_signer};
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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

/// The bytes of request bodies being read at once, across every connection: a body
/// holds its share from its first byte until it has been parsed, so many large bodies
/// at once are refused (503) instead of growing the heap.
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// A body's share of the [`BodyBudget`]; given back when dropped.
pub struct BodyPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes not held by a body being read.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    fn take(&self, n: usize, held: &mut Option<OwnedSemaphorePermit>) -> Result<(), ApiError> {
        if n == 0 {
            return Ok(());
        }
        let n32 = u32::try_from(n).map_err(|_| ApiError::BodyTooLarge(n))?;
        match self.bytes.clone().try_acquire_many_owned(n32) {
            Ok(p) => {
                match held {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                Ok(())
            }
            Err(_) => Err(ApiError::Busy(format!(
                "tollgate is reading too many request bodies at once ({} bytes in flight); retry shortly",
                self.total
            ))),
        }
    }
}

/// Read the request body, refusing more than `limit` bytes (413) and more than the
/// budget has left (503). A declared length is taken from the budget before the first
/// byte is read; a chunked body takes its share chunk by chunk.
pub async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyPermit), ApiError> {
    let mut held = None;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > limit as u64 {
            return Err(ApiError::BodyTooLarge(limit));
        }
        budget.take(len as usize, &mut held)?;
    }
    let mut body = Limited::new(body, limit);
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::BodyTooLarge(limit));
            }
            Err(e) => return Err(ApiError::BodyRead(e.to_string())),
        };
        if let Ok(data) = frame.into_data() {
            let past = (buf.len() + data.len()).saturating_sub(declared.unwrap_or(0) as usize);
            let already = buf.len().saturating_sub(declared.unwrap_or(0) as usize);
            budget.take(past - already, &mut held)?;
            buf.extend_from_slice(&data);
        }
    }
    Ok((buf.freeze(), BodyPermit(held)))
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
    headers: &mut HeaderMap,
    body: Body,
) -> Result<(Meter, Arc<VirtualKey>, Bytes, BodyPermit), Response> {
    let started = Instant::now();
    let cfg = p.config.load_full();
    let request_id = p.ids.next();
    let format = ingress.format();
    let limit = cfg.server.max_body_bytes;
    let traces = p.telemetry.traces();
    let start = |cfg, request_id, key: &VirtualKey, headers: &HeaderMap| {
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
        let now = now_ms() / 1000;
        // Who signed, from the headers: an unknown key id, another service's scope or
        // a stale date is refused before one byte of the body is read.
        let signer = match sigv4_signer(
            &p.keys,
            p.sealer.as_deref(),
            &cfg.server.master_key_env,
            authorization,
            headers,
            now,
        ) {
            Ok(s) => s,
            Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
        };
        let (bytes, permit) = match read_body(body, headers, limit, &p.bodies).await {
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
        if let Err(e) = signer.verify(&received, now) {
            return Err(e.into_response_as(format, Some(&request_id)));
        }
        // Attribution a signature does not cover could have been added by anyone on
        // the way: unsigned `x-tollgate-*` headers are treated as absent.
        let unsigned: Vec<http::HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("x-tollgate-") && !signer.signed(n.as_str()))
            .cloned()
            .collect();
        for n in unsigned {
            headers.remove(&n);
        }
        let meter = start(cfg, request_id, &signer.key, headers);
        return Ok((meter, signer.key.clone(), bytes, permit));
    }
    let key = match authenticate(&p.keys, headers) {
        Ok(k) => k,
        Err(ApiError::MissingKey) if format == Format::Bedrock => {
            return Err(ApiError::MissingSignature.into_response_as(format, Some(&request_id)));
        }
        Err(e) => return Err(e.into_response_as(format, Some(&request_id))),
    };
    let mut meter = start(cfg, request_id, &key, headers);
    match read_body(body, headers, limit, &p.bodies).await {
        Ok((b, permit)) => Ok((meter, key, b, permit)),
        Err(e) => Err(meter.reject(e).await),
    }
}

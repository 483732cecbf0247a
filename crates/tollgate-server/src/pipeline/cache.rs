//! Stage 4: the response-cache lookup. Runs after the deployment is known and before
//! the request is shaped and admitted, so a hit reserves nothing and calls no upstream:
//! its row is metered at $0 with what it avoided (the cached answer's usage at the
//! deployment's prices) recorded as the saving.
//!
//! Whether to look at all: the request's cache policy (`[cache]`, by deployment, route,
//! key or team), narrowed by the request (`x-tollgate-cache: on | off | refresh`,
//! `Cache-Control: no-store | no-cache | max-age=N`); by default only deterministic
//! requests (temperature 0, or a seed) are cached. Entries are scoped to the key owner
//! (its team, or the key alone), never to what a request's headers claim. A task the
//! guard halted is refused here too, before any answer is replayed.

use super::ctx::{CacheFill, CacheStatus, RequestCtx};
use super::meter::{Consumed, Meter, Outcome};
use crate::config::cache::{ResponseMode, Scope};
use crate::error::ApiError;
use crate::headers;
use crate::ingress::IngressRequest;
use crate::limits::Limits;
use crate::response_cache::{Found, ResponseCache};
use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue};
use tollgate_domain::cost::cost;
use tollgate_domain::ledger::{CacheKind, CacheRecord};
use tollgate_domain::money::Money;
use tollgate_providers::translate::Format;
use tollgate_store::VirtualKey;

/// What the client asked of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Asked {
    /// `x-tollgate-cache: off` / `Cache-Control: no-store`.
    off: bool,
    /// `x-tollgate-cache: on`: cache even a sampling request.
    on: bool,
    /// `x-tollgate-cache: refresh` / `Cache-Control: no-cache`: store, do not replay.
    refresh: bool,
    max_age_ms: Option<u64>,
    ttl_ms: Option<u64>,
}

fn asked(h: &HeaderMap) -> Result<Asked, ApiError> {
    let mut a = Asked::default();
    let text = |name: &'static str| -> Result<Option<String>, ApiError> {
        match h.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.trim().to_ascii_lowercase()))
                .map_err(|_| ApiError::InvalidParam {
                    param: name.into(),
                    message: "header is not visible ASCII".into(),
                }),
        }
    };
    match text(headers::CACHE)?.as_deref() {
        None => {}
        Some("on") => a.on = true,
        Some("off") => a.off = true,
        Some("refresh") => a.refresh = true,
        Some(o) => {
            return Err(ApiError::InvalidParam {
                param: headers::CACHE.into(),
                message: format!("{o:?} is not one of on, off, refresh"),
            });
        }
    }
    if let Some(cc) = text("cache-control")? {
        for d in cc.split(',').map(str::trim) {
            if d == "no-store" {
                a.off = true;
            } else if d == "no-cache" {
                a.refresh = true;
            } else if let Some(n) = d.strip_prefix("max-age=") {
                a.max_age_ms = n.parse::<u64>().ok().map(|s| s.saturating_mul(1000));
            }
        }
    }
    if let Some(t) = text(headers::CACHE_TTL)? {
        let s: u64 = t.parse().map_err(|_| ApiError::InvalidParam {
            param: headers::CACHE_TTL.into(),
            message: format!("{t:?} is not a number of seconds"),
        })?;
        a.ttl_ms = Some(s.saturating_mul(1000));
    }
    Ok(a)
}

/// The tenant a cache entry or a tracked prompt prefix belongs to: the key owner's,
/// never a header's.
pub fn scope(s: Scope, key: &VirtualKey) -> String {
    match (s, &key.team) {
        (Scope::Org, _) => "org".into(),
        (Scope::Team, Some(t)) => format!("team:{t}"),
        _ => format!("key:{}", key.id),
    }
}

/// Look the request up. `Ok(Some(response))`: a hit, metered and ready to send.
pub async fn lookup(
    cache: &ResponseCache,
    limits: &Limits,
    m: &mut Meter,
    key: &VirtualKey,
    req: &IngressRequest,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<Option<Response>, ApiError> {
    let ctx = &mut m.ctx;
    let Some(d) = ctx.deployment.clone() else {
        return Ok(None);
    };
    let policy = ctx.cfg.cache.policy(
        &d.name,
        ctx.route.as_ref().map(|r| r.route.name.as_str()),
        &key.id,
        key.team.as_deref(),
    );
    ctx.cache_policy = Some(policy);
    let a = asked(headers)?;
    let eligible = !a.off
        && match policy.response {
            ResponseMode::Off => a.on,
            ResponseMode::Deterministic => a.on || req.deterministic(),
            ResponseMode::Always => true,
        };
    if !eligible {
        ctx.cache_status = Some(CacheStatus::Bypass);
        return Ok(None);
    }
    let scope = scope(ctx.cfg.cache.scope, key);
    let keys = cache.keys(req, &scope, &d.name);
    if !a.refresh
        && let Some(found) = cache.lookup(&keys, a.max_age_ms, now_ms)
    {
        if let Some(task) = &ctx.attribution.task
            && ctx.cfg.limits.guard.enabled
            && let Some(reason) = limits.guard.halted_reason(task)
        {
            return Err(ApiError::TaskHalted {
                task: task.clone(),
                reason,
            });
        }
        return Ok(Some(hit(m, found, cache.threshold()).await));
    }
    ctx.cache_status = Some(CacheStatus::Miss);
    ctx.cache_fill = Some(CacheFill {
        keys,
        ttl_ms: a.ttl_ms.unwrap_or(policy.ttl_ms),
    });
    Ok(None)
}

/// Answer from a cached entry: the row (at $0, the avoided cost recorded), then the
/// recorded bytes.
async fn hit(m: &mut Meter, found: Found, threshold: f32) -> Response {
    let (entry, kind, similarity) = match found {
        Found::Exact(e) => (e, CacheKind::ResponseExact, None),
        Found::Semantic(e, s) => (e, CacheKind::ResponseSemantic, Some(s)),
    };
    let avoided = m
        .ctx
        .deployment
        .as_ref()
        .and_then(|d| d.price.as_ref())
        .and_then(|p| cost(&entry.usage, p, entry.service_tier.as_deref()))
        .map_or(Money::ZERO, |c| c.charged);
    m.ctx.cache_status = Some(CacheStatus::Hit);
    m.ctx.cache = Some(CacheRecord {
        kind,
        similarity_ppm: similarity.map(|s| (s.clamp(0.0, 1.0) * 1e6).round() as u32),
        avoided_cost: avoided,
        expected_write: 0,
        expected_read: 0,
        miss: false,
    });
    m.ctx.first_byte();
    let row = m.commit(Outcome::ok(Consumed::Nothing, None)).await;
    let mut out = Response::new(Body::from(entry.body.clone()));
    let h = out.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&entry.content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if entry.stream {
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
    }
    h.insert(headers::CACHE, HeaderValue::from_static("hit"));
    h.insert(
        headers::CACHE_KIND,
        HeaderValue::from_static(match kind {
            CacheKind::ResponseSemantic => "semantic",
            _ => "exact",
        }),
    );
    if let Some(s) = similarity {
        if let Ok(v) = HeaderValue::from_str(&format!("{s:.4}")) {
            h.insert(headers::CACHE_SIMILARITY, v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{threshold:.4}")) {
            h.insert(headers::CACHE_THRESHOLD, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&row.cost.to_string()) {
        h.insert(headers::COST_USD, v);
    }
    if let Some(r) = &m.ctx.route {
        r.write_headers(h);
    }
    if m.format() == Format::Bedrock
        && let Ok(v) = HeaderValue::from_str(&row.request_id)
    {
        h.insert("x-amzn-requestid", v);
    }
    headers::set_request_id(out.headers_mut(), &row.request_id);
    out
}

/// The response header for a request that was not a hit.
pub fn status_header(ctx: &RequestCtx, h: &mut HeaderMap) {
    if let Some(s) = ctx.cache_status {
        h.insert(headers::CACHE, HeaderValue::from_static(s.as_str()));
    }
}

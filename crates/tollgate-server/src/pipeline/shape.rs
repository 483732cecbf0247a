//! Stage 5: the request as it will be sent, before admission prices it (so budgets and
//! the guard see what goes upstream): tollgate's own attribution keys removed from the
//! body's metadata; provider prompt-cache breakpoints placed where they pay
//! ([`PromptCache`]: `[cache] prompt = off | auto | always`, per deployment, route, key
//! or team, or `x-tollgate-prompt-cache` per request). Pruning of long histories comes
//! here too, after the breakpoints are known.

use super::cache::scope;
use super::ctx::RequestCtx;
use crate::error::ApiError;
use crate::headers;
use crate::ingress::IngressRequest;
use crate::prompt_cache::PromptCache;
use crate::tokens::TokenCache;
use http::{HeaderMap, HeaderValue};
use tollgate_domain::ledger::{CacheKind, CacheRecord};
use tollgate_domain::prompt_cache::Mode;
use tollgate_store::VirtualKey;

/// Shape the request in place.
pub fn shape(
    ctx: &mut RequestCtx,
    req: &mut IngressRequest,
    prompt_cache: &PromptCache,
    tokens: &TokenCache,
    key: &VirtualKey,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<(), ApiError> {
    req.strip_tollgate_metadata();
    let Some(d) = ctx.deployment.clone() else {
        return Ok(());
    };
    let mut mode = ctx.cache_policy.map_or(ctx.cfg.cache.prompt, |p| p.prompt);
    if let Some(v) = headers.get(headers::PROMPT_CACHE) {
        mode = v
            .to_str()
            .ok()
            .and_then(|s| Mode::parse(s.trim()))
            .ok_or_else(|| ApiError::InvalidParam {
                param: headers::PROMPT_CACHE.into(),
                message: "one of off, auto, always".into(),
            })?;
    }
    let tenant = scope(ctx.cfg.cache.scope, key);
    let shaped = prompt_cache.shape(req, &d, &tenant, mode, tokens, now_ms);
    if let Some(plan) = shaped.plan {
        let ttls: Vec<&str> = plan.breakpoints.iter().map(|b| b.ttl.as_str()).collect();
        if let Ok(v) =
            HeaderValue::from_str(&format!("{} ({})", plan.breakpoints.len(), ttls.join(", ")))
        {
            ctx.response_headers.insert(headers::PROMPT_CACHE, v);
        }
        ctx.cache = Some(CacheRecord {
            kind: CacheKind::PromptInjected,
            similarity_ppm: None,
            avoided_cost: tollgate_domain::money::Money::ZERO,
            expected_write: plan.expected_write,
            expected_read: plan.expected_read,
            miss: false,
        });
    }
    Ok(())
}

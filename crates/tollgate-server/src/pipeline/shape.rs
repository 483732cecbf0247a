//! Stage 5: the request as it will be sent, before admission prices it (so budgets and
//! the guard see what goes upstream): tollgate's own attribution keys removed from the
//! body's metadata; provider prompt-cache breakpoints placed where they pay
//! ([`PromptCache`]: `[cache] prompt = off | auto | always`, per deployment, route, key
//! or team, or `x-tollgate-prompt-cache` per request); long histories pruned
//! (`[pruning]`, per deployment, route, key or team, or `x-tollgate-prune` per request).
//!
//! Order: pruning runs before the gateway places its breakpoints, so they are placed on
//! the prompt as sent and nothing is pruned before one of them in this request; the
//! client's own markers (`cache_control`, `cachePoint`) are a floor pruning never goes
//! below. A prompt is pruned only from `trigger_tokens` on, to well below it, so a
//! conversation is pruned in large steps rather than a little on every call.

use super::cache::scope;
use super::ctx::RequestCtx;
use crate::config::Deployment;
use crate::error::ApiError;
use crate::headers;
use crate::ingress::IngressRequest;
use crate::prompt_cache::PromptCache;
use crate::tokens::TokenCache;
use http::{HeaderMap, HeaderValue};
use tollgate_domain::ledger::{CacheKind, CacheRecord, PruneRecord};
use tollgate_domain::prompt_cache::Mode;
use tollgate_domain::prune::{Policy, Target};
use tollgate_providers::prune as wire;
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
    prune(ctx, req, &d, tokens, key, headers)?;
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
    ctx.prefix = prompt_cache.stable_prefix(req, &d, tokens);
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

/// Prune the request's history where its policy says so; records what it did in
/// `ctx.prune` and the response headers.
fn prune(
    ctx: &mut RequestCtx,
    req: &mut IngressRequest,
    d: &Deployment,
    tokens: &TokenCache,
    key: &VirtualKey,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let p = ctx.cfg.pruning.policy(
        &d.name,
        ctx.route.as_ref().map(|r| r.route.name.as_str()),
        &key.id,
        key.team.as_deref(),
    );
    let mut enabled = p.enabled;
    if let Some(v) = headers.get(headers::PRUNE) {
        enabled = match v.to_str().map(str::trim) {
            Ok("off") => false,
            Ok("on") => true,
            _ => {
                return Err(ApiError::InvalidParam {
                    param: headers::PRUNE.into(),
                    message: "one of off, on".into(),
                });
            }
        };
    }
    if !enabled || matches!(req, IngressRequest::Embeddings(_)) {
        return Ok(());
    }
    let enc = d.encoding;
    let before = req.estimate(tokens, enc).prompt_tokens;
    if before < p.trigger_tokens {
        return Ok(());
    }
    // The decisions use the domain's estimate; an absolute target becomes a share of the
    // prompt as admission counts it.
    let target = match p.policy.target {
        Target::Tokens(n) => Target::Ratio((n as f64 / before.max(1) as f64).min(1.0)),
        r => r,
    };
    let policy = Policy { target, ..p.policy };
    let format = req.format();
    let (edits, paths) = {
        let Some(v) = wire::view(format, req.body()) else {
            return Ok(());
        };
        let pruned = tollgate_domain::prune::prune(&v.conversation, &policy);
        if pruned.edits.is_empty() {
            return Ok(());
        }
        (pruned.edits, v.paths)
    };
    wire::apply(req.body_mut(), &paths, edits);
    let after = req.estimate(tokens, enc).prompt_tokens.min(before);
    for (name, n) in [
        (headers::PRUNE_TOKENS_BEFORE, before),
        (headers::PRUNE_TOKENS_AFTER, after),
    ] {
        ctx.response_headers.insert(name, HeaderValue::from(n));
    }
    ctx.prune = Some(PruneRecord {
        tokens_before: before,
        tokens_after: after,
        // Priced by the meter, from the usage the provider reports.
        cost_without: tollgate_domain::money::Money::ZERO,
    });
    Ok(())
}

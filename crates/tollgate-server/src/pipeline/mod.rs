//! The request pipeline: every proxy request, whatever API it came in on (OpenAI chat,
//! Responses and embeddings, Anthropic Messages, Bedrock Converse / ConverseStream), runs these
//! stages in this order, in one direction. Each stage is a module; each takes the
//! [`RequestCtx`] (inside the [`Meter`]) and the component handles it needs, never the
//! whole gateway.
//!
//! 1. [`identify`]: request id, the config snapshot, auth (bearer key, `x-api-key`, or
//!    AWS SigV4, whose key, scope and date are checked before the body is read and its
//!    signature after), the body read with a size cap (413) within a global budget of
//!    bytes being read (503); unsigned `x-tollgate-*` headers of a SigV4 request
//!    dropped. 401/403 before a key is known are answered unmetered; from the key on,
//!    the [`Meter`] exists and stage 9 runs whatever happens.
//! 2. [`attribute`]: the body parsed into a format-tagged request (400; a Responses
//!    `previous_response_id` is looked up among the key's recent answers, 400 when
//!    unknown); attribution:
//!    key owner, then `x-tollgate-*` headers, then body metadata; a task id another
//!    owner (team, or key without a team) uses is refused (403, `limits::owners`).
//! 3. [`resolve`]: the deployment (404/403); a routed name (`auto`) is scored and
//!    resolved to a tier's deployment, so admission prices the tier served.
//! 4. [`cache`]: the response cache (exact, then a similar last turn in the same
//!    context); a hit answers here, metered at $0, and reserves nothing (the cache phase
//!    runs before admission). A halted task is refused (409) before any replay.
//! 5. [`shape`]: the request as it will be sent (tollgate's metadata removed, a long
//!    history pruned (400 on a bad `x-tollgate-prune`), then provider prompt-cache
//!    breakpoints placed where they pay), so budgets and the guard see what is sent.
//! 6. [`admission`]: task guard (409), worst-case reservation across every budget and
//!    rate limit (402/429), maybe a clamped output cap.
//! 7. [`egress`]: the upstream call, native or translated (400 naming a feature that
//!    cannot be), SigV4-signed for Bedrock, with the trace context.
//! 8. [`respond`]: JSON read whole, or a stream passed through whole event by whole event
//!    with a usage tee (or translated event by event); errors in the client's shape; a
//!    Responses answer kept for `previous_response_id` (unless `store: false`). A
//!    failed routed answer below the heaviest tier goes round stages 6–8 once more on
//!    the next tier (escalation, a loop in [`Pipeline::run`], not a recursion).
//! 9. [`meter`]: pricing (exact, rounded up to the nano-USD), the ticket settled, the
//!    ledger row queued (batched) or committed (strict) before the response's last
//!    byte, telemetry; on success, error and client disconnect alike.
//!
//! # The request context
//! Who writes each field of [`RequestCtx`] (W) and who reads it (R), by stage number:
//! 1. `cfg`: W1 (one snapshot per request; an escalation retry keeps it); R2–R9.
//! 2. `request_id`, `started`, `ts_ms`, `ingress`: W1; R6 (id), R8 (format, latency),
//!    R9 (row).
//! 3. `attribution`: W1 (key owner), W2 (headers, body; the task cleared when refused);
//!    R3 (route allow-lists),
//!    R6 (scopes, task), R9 (row).
//! 4. `requested_model`, `stream`: W2; R9.
//! 5. `deployment`: W3; R6 (tokenizer, prices, clamped field), R7 (upstream), R9 (price).
//! 6. `route`: W3, W8 (escalated); R8 (headers, the check), R9 (route columns,
//!    stickiness).
//! 7. `trace`: W1; R7 (`traceparent`), R9 (span).
//! 8. `ticket`: W6; R9 (settled exactly once).
//! 9. `response_headers`: W5 (prompt cache, pruning), W6 (budget, rate limits,
//!    clamping); R8.
//! 10. `retry_of`: W8 (escalation's follow-up context); R6 (the guard does not count a
//!     retry).
//! 11. `prompt`, `upstream_called`: W7; R9 (estimates when the upstream reports nothing;
//!     the local count that widens a suspect prompt's bound).
//! 12. `ttft_us`: W4 (a hit), W8; R9.
//! 13. `cache_policy`: W4; R5 (prompt caching's mode).
//! 14. `cache_status`: W4; R8 (`x-tollgate-cache`).
//! 15. `cache_fill`: W4 (a miss that may be stored); R8 (stored once complete).
//! 16. `cache`: W4 (a hit: kind, similarity, avoided cost), W5 (breakpoints injected,
//!     expected cache tokens); R9 (the row's cache columns; a miss checked against the
//!     provider's reported cache tokens).
//! 17. `prune`: W5 (tokens before and after); R9 (prices the unpruned prompt).
//! 18. `output_cap`: W7 (the cap as sent); R9 (reported output past it is clamped and
//!     the row flagged `usage_suspect`).
//! 19. `prefix`: W5 (the stable prefix as sent: hash and tokens); R9 (the row's
//!     `prefix_*` columns, for what-if replay).
//! 20. `answer`: W8 (the answer's SimHash, for a sample the guard judges by its
//!     answers); R9 (settlement gives it to the guard).

pub mod admission;
pub mod attribute;
pub mod cache;
pub mod ctx;
pub mod egress;
pub mod identify;
pub mod meter;
pub mod resolve;
pub mod respond;
pub mod shape;

pub use ctx::RequestCtx;
pub use identify::{BodyBudget, RequestIds};
pub use meter::{Meter, Settlement};

use crate::auth::KeyCache;
use crate::clock::now_ms;
use crate::config::Config;
use crate::conversations::Conversations;
use crate::headers;
use crate::ingress::{Ingress, IngressRequest};
use crate::limits::Limits;
use crate::prompt_cache::PromptCache;
use crate::response_cache::ResponseCache;
use crate::routing::RoutingState;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method, Uri};
use respond::{Answered, Escalation};
use std::sync::Arc;
use std::time::Instant;
use tollgate_domain::ledger::RouteMode;
use tollgate_domain::routing::check::Failure;
use tollgate_providers::UpstreamClient;
use tollgate_store::SecretSealer;

/// The handles the request path needs, and nothing else.
pub struct Pipeline {
    pub config: Arc<ArcSwap<Config>>,
    pub keys: Arc<KeyCache>,
    /// Opens sealed key secrets for SigV4 verification; `None` without a master key.
    pub sealer: Option<Arc<SecretSealer>>,
    pub ids: RequestIds,
    /// The bytes of request bodies being read at once.
    pub bodies: identify::BodyBudget,
    pub routing: Arc<RoutingState>,
    pub limits: Arc<Limits>,
    pub client: UpstreamClient,
    pub telemetry: Arc<Telemetry>,
    pub settlement: Arc<Settlement>,
    pub prompt_cache: Arc<PromptCache>,
    pub response_cache: Arc<ResponseCache>,
    /// Recent Responses answers, for `previous_response_id`.
    pub conversations: Arc<Conversations>,
}

impl Pipeline {
    /// The one path every proxy request takes, whatever API it came in on.
    pub async fn run(
        &self,
        ingress: Ingress,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Body,
    ) -> Response {
        // 1. identify
        let (mut m, key, bytes, permit) =
            match identify::identify(self, ingress, &method, &uri, &mut headers, body).await {
                Ok(v) => v,
                Err(resp) => return resp,
            };
        // 2. attribute
        let mut req = match attribute::attribute(&mut m.ctx, &bytes, &headers, &self.conversations)
        {
            Ok(r) => r,
            Err(e) => return m.reject(e).await,
        };
        drop(bytes);
        drop(permit);
        // A task id is its owner's: another team's (or key's) call naming it is refused
        // before the cache or the guard see it, and its row does not name the task.
        if let Some(task) = m.ctx.attribution.task.clone()
            && let Err(e) = self.limits.check_task_owner(&task, &key).await
        {
            tracing::warn!(request_id = %m.ctx.request_id, task = %task, key = %key.id, "call refused: the task id belongs to another owner");
            m.ctx.attribution.task = None;
            return m.reject(e).await;
        }
        // 3. resolve
        if let Err(e) = resolve::resolve(&self.routing, &mut m.ctx, &key, &req, &headers) {
            return m.reject(e).await;
        }
        // 4. cache lookup
        match cache::lookup(
            &self.response_cache,
            &self.limits,
            &mut m,
            &key,
            &req,
            &headers,
            now_ms(),
        )
        .await
        {
            Ok(Some(hit)) => return hit,
            Ok(None) => {}
            Err(e) => return m.reject(e).await,
        }
        // 5. shape
        if let Err(e) = shape::shape(
            &mut m.ctx,
            &mut req,
            &self.prompt_cache,
            &self.limits.tokens,
            &key,
            &headers,
            now_ms(),
        ) {
            return m.reject(e).await;
        }
        // Escalation applies to enforced, non-streaming requests below the heaviest tier
        // (a streamed answer has reached the client before it could be judged): keep a
        // copy of the request as it was before admission, for one retry.
        let mut retry = m
            .ctx
            .route
            .as_ref()
            .filter(|r| {
                r.route.escalate
                    && r.mode == RouteMode::Enforce
                    && r.tier < r.route.heaviest()
                    && !req.stream()
            })
            .map(|_| req.clone());
        let mut escalation = retry.as_ref().map(|r| Escalation {
            json_requested: r.json_requested(),
        });
        // The light tier's answer that failed its check (committed, marked escalated)
        // and the check; the request then goes once more to the next tier, as a call of
        // its own (own request id, own admission, own ledger row). The client gets the
        // second answer or, if the retry fails (refused by a budget, an upstream error,
        // ...), the first one, which was paid for.
        let mut failed: Option<(Response, Failure)> = None;
        loop {
            match self.forward(m, req, &headers, escalation.take()).await {
                Answered::Done(resp) => {
                    return match failed {
                        Some((first, failure)) => escalated(first, resp, failure),
                        None => resp,
                    };
                }
                Answered::Escalate {
                    first,
                    failure,
                    meter,
                } => {
                    // A retry is never judged again (it is sent without `escalation`).
                    let Some(again) = retry.take() else {
                        return first;
                    };
                    m = self.follow_up(&meter);
                    drop(meter);
                    req = again;
                    failed = Some((first, failure));
                }
            }
        }
    }

    /// Stages 6 to 8 (and 9 on every path) for a resolved, shaped request.
    async fn forward(
        &self,
        mut m: Meter,
        mut req: IngressRequest,
        headers: &HeaderMap,
        escalation: Option<Escalation>,
    ) -> Answered {
        // 6. admission
        if let Err(e) = admission::admit(&self.limits, &mut m.ctx, &mut req).await {
            return Answered::Done(m.reject(e).await);
        }
        // 7. egress
        let sent =
            match egress::send(&self.client, &mut m, req, headers, escalation.is_some()).await {
                Ok(s) => s,
                Err(e) => return Answered::Done(m.reject(e).await),
            };
        // 8. respond (9. meter: inside, on every path)
        if sent.stream
            && sent.resp.status().is_success()
            && crate::upstream::is_stream(sent.upstream, sent.resp.headers())
        {
            return Answered::Done(respond::stream(
                m,
                sent,
                self.response_cache.clone(),
                self.conversations.clone(),
            ));
        }
        respond::json(
            m,
            sent,
            escalation,
            &self.response_cache,
            &self.conversations,
        )
        .await
    }

    /// The meter of an escalation's second call: the next tier of the same route.
    fn follow_up(&self, first: &Meter) -> Meter {
        let mut ctx = first
            .ctx
            .follow_up(self.ids.next(), Instant::now(), now_ms());
        if let Some(r) = &first.ctx.route {
            let mut next = r.clone();
            next.tier = (next.tier + 1).min(next.route.heaviest());
            next.served = next.route.tiers[next.tier].clone();
            next.escalated = None;
            // The sample belongs to the first call's row (same prompt).
            next.sample = None;
            ctx.deployment = Some(next.served.clone());
            ctx.route = Some(next);
        }
        first.follow_up(ctx)
    }
}

/// The answer after an escalation: the retry's if it succeeded, marked with the check
/// the first answer failed; else the first (paid) answer with
/// `x-tollgate-route-escalated: <check>; retry failed (<status>)`.
fn escalated(mut first: Response, mut second: Response, failure: Failure) -> Response {
    if second.status().is_success() {
        if let Ok(v) = HeaderValue::from_str(failure.code()) {
            second.headers_mut().insert(headers::ROUTE_ESCALATED, v);
        }
        return second;
    }
    let note = format!(
        "{}; retry failed ({})",
        failure.code(),
        second.status().as_u16()
    );
    if let Ok(v) = HeaderValue::from_str(&note) {
        first.headers_mut().insert(headers::ROUTE_ESCALATED, v);
    }
    first
}

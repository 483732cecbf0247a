//! Stage 9, the final hook: the one step that always runs.
//!
//! A [`Meter`] is created as soon as a request is authenticated; it owns the request's
//! [`RequestCtx`] and travels with it: through the stages, and for streams into the
//! response body. Whatever happens next (success, an error, an upstream cut, the client
//! going away, the handler future being dropped) exactly one ledger row comes out of it:
//! - [`Meter::commit`] settles the outcome and records the row (waiting for durability
//!   in strict mode);
//! - [`Meter::reject`] commits an error outcome and renders the error in the client's
//!   API shape;
//! - if the meter is dropped first, `Drop` settles it as a client disconnect and hands
//!   the row to a tracked task. A row already queued is recorded again only if its
//!   queueing was interrupted; the ledger ignores a second row with the same request id.
//!
//! Settling prices the usage with the deployment's rates (and without prompt caching,
//! and at the route's heaviest and chosen tiers), settles admission's ticket, updates the
//! conversation's tier, and feeds telemetry, through the handles in [`Settlement`].

use super::ctx::RequestCtx;
use crate::alerts::{Alert, Alerts};
use crate::clock::now_ms;
use crate::config::Deployment;
use crate::error::ApiError;
use crate::ingress::Prompt;
use crate::limits::Limits;
use crate::routing::{Routed, RoutingState};
use crate::telemetry::Telemetry;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tollgate_domain::cost::{cost, cost_without_prompt_cache, cost_without_pruning};
use tollgate_domain::ledger::{CacheKind, LedgerRow, Route, RouteRecord};
use tollgate_domain::money::Money;
use tollgate_domain::prompt_cache::{Plan, missed};
use tollgate_domain::routing::sticky::Stuck;
use tollgate_domain::usage::{Usage, UsageBound, UsageSource};
use tollgate_providers::stream::StreamTap;
use tollgate_providers::tokenizer::Encoding;
use tollgate_providers::translate::Format;
use tollgate_store::{Durability, Ledger};

/// What settling a request touches: the ledger, the limits (the ticket), routing's
/// stickiness, telemetry, and the task tracker for rows that must wait for room.
pub struct Settlement {
    pub ledger: Ledger,
    /// For `usage_suspect` alerts (at most one per deployment per minute).
    pub alerts: Arc<Alerts>,
    /// When each deployment last raised a `usage_suspect` alert (Unix ms).
    pub suspect_alerted: std::sync::Mutex<HashMap<String, i64>>,
    pub limits: Arc<Limits>,
    pub routing: Arc<RoutingState>,
    pub telemetry: Arc<Telemetry>,
    pub tasks: TaskTracker,
}

/// How many tokens a finished request used, as far as the gateway knows.
pub enum Consumed {
    /// The upstream reported usage.
    Reported(Usage),
    /// The upstream worked but reported nothing: count the prompt and this output text.
    Estimate(String),
    /// The upstream reported the prompt's usage but the stream stopped before its final
    /// count: the prompt as reported, the output counted from this text (estimated).
    Partial { prompt: Usage, text: String },
    /// No upstream work was done (or none is billable: upstream 4xx/5xx).
    Nothing,
}

pub struct Outcome {
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub consumed: Consumed,
    pub service_tier: Option<String>,
    pub partial: bool,
}

impl Outcome {
    pub fn ok(consumed: Consumed, service_tier: Option<String>) -> Outcome {
        Outcome {
            status: 200,
            error_code: None,
            consumed,
            service_tier,
            partial: false,
        }
    }
}

pub struct Meter {
    pub ctx: RequestCtx,
    hook: Arc<Settlement>,
    /// For streams: the tee, so a dropped stream can still be metered.
    pub scanner: Option<StreamTap>,
    settled: bool,
    /// A settled row whose hand-off to the ledger has not completed yet.
    in_flight: Option<LedgerRow>,
}

impl Meter {
    pub fn new(hook: Arc<Settlement>, ctx: RequestCtx) -> Meter {
        Meter {
            ctx,
            hook,
            scanner: None,
            settled: false,
            in_flight: None,
        }
    }

    /// A meter for a second call made on behalf of this request (escalation), with its
    /// own request id.
    pub fn follow_up(&self, ctx: RequestCtx) -> Meter {
        Meter::new(self.hook.clone(), ctx)
    }

    pub fn request_id(&self) -> &str {
        &self.ctx.request_id
    }

    pub fn durability(&self) -> Durability {
        self.hook.ledger.durability()
    }

    fn encoding(&self) -> Encoding {
        self.ctx
            .deployment
            .as_ref()
            .map(|d| d.encoding)
            .unwrap_or(Encoding::O200kBase)
    }

    fn prompt_tokens(&self) -> u64 {
        let enc = self.encoding();
        match &self.ctx.prompt {
            Prompt::None => 0,
            Prompt::Chat(messages) => enc.count_chat_prompt(messages),
            Prompt::Embeddings(input) => enc.count_embedding_input(input),
            Prompt::Json(v) => enc.count_json(v),
        }
    }

    /// The bound `usage` is past, if it is past one: the model's context window (widened
    /// by the local count of what was sent, in case the catalog is stale) and the
    /// request's output cap (else the model's).
    fn bound(&self, usage: &Usage) -> Option<UsageBound> {
        let price = self
            .ctx
            .deployment
            .as_ref()
            .and_then(|d| d.price.as_deref());
        let mut b = UsageBound::of(
            price.and_then(|p| p.max_input_tokens),
            price.and_then(|p| p.max_output_tokens),
            self.ctx.output_cap,
        );
        if usage.prompt_total() > b.prompt {
            b = b.with_local_prompt(self.prompt_tokens());
        }
        usage.exceeds(b).then_some(b)
    }

    /// Log, and alert at most once a minute per deployment.
    fn alert_suspect(&self, row: &LedgerRow, reported: &Usage, b: UsageBound) {
        tracing::warn!(
            request_id = %row.request_id,
            deployment = %row.route.deployment,
            reported_prompt = reported.prompt_total(),
            reported_output = reported.output,
            bound_prompt = b.prompt,
            bound_output = b.output,
            "upstream reported usage past what the request could use; priced at the bound"
        );
        let now = now_ms();
        let due = match self.hook.suspect_alerted.lock() {
            Ok(mut m) => {
                let last = m.entry(row.route.deployment.clone()).or_insert(i64::MIN);
                let due = now.saturating_sub(*last) >= 60_000;
                if due {
                    *last = now;
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.hook.alerts.send(Alert::usage_suspect(
                &row.route.deployment,
                &row.request_id,
                reported,
                b,
                row.cost,
            ));
        }
    }

    /// Turn an outcome into the final row, and settle everything that depends on it.
    fn settle(&mut self, outcome: Outcome) -> LedgerRow {
        self.settled = true;
        let upstream_said = matches!(
            outcome.consumed,
            Consumed::Reported(_) | Consumed::Partial { .. }
        );
        let (usage, source) = match outcome.consumed {
            Consumed::Reported(u) => (u, UsageSource::Reported),
            Consumed::Estimate(text) => (
                Usage {
                    input: self.prompt_tokens(),
                    output: self.encoding().count(&text),
                    ..Usage::default()
                },
                UsageSource::Estimated,
            ),
            Consumed::Partial { prompt, text } => (
                Usage {
                    output: prompt.output.max(self.encoding().count(&text)),
                    reasoning: 0,
                    ..prompt
                },
                UsageSource::Estimated,
            ),
            Consumed::Nothing => (Usage::default(), UsageSource::None),
        };
        // Never believe more than the request could use: past the bound, the row is
        // priced at the bound (an upstream's word is not a blank cheque).
        let reported = usage;
        let (usage, suspect) = match self.bound(&usage) {
            Some(b) => (usage.clamped(b), Some(b)),
            None => (usage, None),
        };
        // A local estimate past the bound is clamped but says nothing about the upstream.
        let suspect = suspect.filter(|_| upstream_said);
        let ctx = &self.ctx;
        let price = ctx.deployment.as_ref().and_then(|d| d.price.clone());
        let (charged, priced) = match &price {
            Some(p) => match cost(&usage, p, outcome.service_tier.as_deref()) {
                Some(c) => (c.charged, true),
                None => (Money::ZERO, false),
            },
            None => (Money::ZERO, false),
        };
        let without_cache = price
            .as_ref()
            .and_then(|p| cost_without_prompt_cache(&usage, p, outcome.service_tier.as_deref()))
            .map_or(charged, |c| c.charged);
        let route = match &ctx.deployment {
            Some(d) => Route {
                requested_model: ctx.requested_model.clone(),
                deployment: d.name.clone(),
                upstream: d.upstream.name.clone(),
                upstream_model: d.model.clone(),
            },
            None => Route {
                requested_model: ctx.requested_model.clone(),
                ..Route::default()
            },
        };
        let row = LedgerRow {
            ts_ms: ctx.ts_ms,
            request_id: ctx.request_id.clone(),
            endpoint: ctx.ingress.endpoint(),
            attribution: ctx.attribution.clone(),
            route,
            usage,
            usage_source: source,
            cost: charged,
            cost_without_cache: without_cache,
            priced,
            price_hash: if ctx.deployment.is_some() {
                ctx.cfg.prices.hash().to_string()
            } else {
                String::new()
            },
            latency_us: ctx.started.elapsed().as_micros() as u64,
            ttft_us: ctx.ttft_us,
            status: outcome.status,
            error_code: outcome.error_code.map(str::to_string),
            stream: ctx.stream,
            partial: outcome.partial,
            routing: ctx
                .route
                .as_ref()
                .map(|r| route_record(r, &usage, outcome.service_tier.as_deref())),
            cache: ctx.cache.clone().map(|mut c| {
                // Injected breakpoints: did the provider write and read what was expected?
                if c.kind == CacheKind::PromptInjected && source == UsageSource::Reported {
                    c.miss = missed(
                        &Plan {
                            breakpoints: Vec::new(),
                            expected_write: c.expected_write,
                            expected_read: c.expected_read,
                        },
                        usage.cache_read,
                        usage.cache_write_5m + usage.cache_write_1h,
                    ) && (200..300).contains(&outcome.status);
                }
                c
            }),
            prune: ctx.prune.clone().map(|mut p| {
                let removed = p.tokens_before.saturating_sub(p.tokens_after);
                p.cost_without = price
                    .as_ref()
                    .and_then(|pr| {
                        cost_without_pruning(&usage, pr, removed, outcome.service_tier.as_deref())
                    })
                    .map_or(charged, |c| c.charged);
                p
            }),
            usage_suspect: suspect.is_some(),
            service_tier: outcome.service_tier.clone(),
            prefix: ctx.prefix.clone(),
        };
        if let Some(b) = suspect {
            self.alert_suspect(&row, &reported, b);
        }
        if let Some(r) = &ctx.route
            && let Some(id) = r.conversation
            && row.is_success()
            && r.escalated.is_none()
        {
            self.hook.routing.remember(
                id,
                Stuck {
                    tier: r.tier,
                    prompt_tokens: usage.prompt_total(),
                    output_tokens: usage.output,
                },
            );
        }
        if let Some(ticket) = self.ctx.ticket.take() {
            self.hook.limits.settle(ticket, &row, self.ctx.answer);
        }
        // Metrics and trace spans, where the row is settled (commit and drop alike).
        self.hook.telemetry.observe(&row, self.ctx.trace.as_ref());
        row
    }

    /// Settle and record. Returns the row (its cost goes in the response headers).
    pub async fn commit(&mut self, outcome: Outcome) -> LedgerRow {
        let row = self.settle(outcome);
        self.record(row.clone()).await;
        row
    }

    /// Record an error outcome and render the error for the client.
    pub async fn reject(&mut self, err: ApiError) -> axum::response::Response {
        // The upstream may have done (and billed) work before failing; count the prompt.
        let consumed =
            if self.ctx.upstream_called && err.fault() != tollgate_providers::Fault::Client {
                Consumed::Estimate(String::new())
            } else {
                Consumed::Nothing
            };
        self.commit(Outcome {
            status: err.status().as_u16(),
            error_code: Some(err.code()),
            consumed,
            service_tier: None,
            partial: false,
        })
        .await;
        tracing::debug!(request_id = %self.ctx.request_id, code = err.code(), "request failed: {err}");
        err.into_response_as(self.format(), Some(&self.ctx.request_id))
    }

    /// The API format the client called (errors are rendered in it).
    pub fn format(&self) -> Format {
        self.ctx.ingress.format()
    }

    async fn record(&mut self, row: LedgerRow) {
        let ledger = self.hook.ledger.clone();
        match ledger.durability() {
            Durability::Batched => {
                if let Err(row) = ledger.try_record(row) {
                    // Queue full: wait (backpressure). Keep a copy in case this future is
                    // dropped before the row is queued.
                    self.in_flight = Some((*row).clone());
                    let _ = ledger.record(*row).await;
                    self.in_flight = None;
                }
            }
            Durability::Strict => {
                self.in_flight = Some(row.clone());
                let _ = ledger.record(row).await;
                self.in_flight = None;
            }
        }
    }

    /// The outcome of a request whose client went away before it finished.
    fn disconnected(&mut self) -> Outcome {
        let (consumed, service_tier) = match &self.scanner {
            Some(s) => (stream_consumed(s), s.service_tier()),
            None if self.ctx.upstream_called => (Consumed::Estimate(String::new()), None),
            None => (Consumed::Nothing, None),
        };
        Outcome {
            status: 499,
            error_code: Some("client_disconnected"),
            consumed,
            service_tier,
            partial: true,
        }
    }
}

/// The routing columns: the decision, and what the heaviest and the chosen tiers would
/// have charged for these token counts (each priced exactly, like the row itself).
fn route_record(r: &Routed, usage: &Usage, service_tier: Option<&str>) -> RouteRecord {
    let price = |d: &Deployment| {
        d.price
            .as_ref()
            .and_then(|p| cost(usage, p, service_tier))
            .map_or(Money::ZERO, |c| c.charged)
    };
    RouteRecord {
        name: r.route.name.clone(),
        tier: u32::try_from(r.tier).unwrap_or(u32::MAX),
        tier_deployment: r.tier_deployment().name.clone(),
        score_ppm: (r.score.clamp(0.0, 1.0) * 1e6).round() as u32,
        mode: r.mode,
        heavy_cost: price(r.heavy_deployment()),
        tier_cost: price(r.tier_deployment()),
        escalated: r.escalated.map(|f| f.code().to_string()),
        sample: r.sample.clone(),
    }
}

/// What a stream consumed, as far as its tee saw.
pub fn stream_consumed(s: &StreamTap) -> Consumed {
    let text = || s.generated_text().unwrap_or_default();
    match (s.reported_usage(), s.partial_usage()) {
        (Some(u), _) => Consumed::Reported(u),
        (None, Some(prompt)) => Consumed::Partial {
            prompt,
            text: text(),
        },
        (None, None) => Consumed::Estimate(text()),
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let row = if !self.settled {
            let outcome = self.disconnected();
            Some(self.settle(outcome))
        } else {
            self.in_flight.take()
        };
        let Some(row) = row else { return };
        let ledger = self.hook.ledger.clone();
        let Err(row) = ledger.try_record(row) else {
            return;
        };
        // The queue is full: wait for room in a tracked task.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                self.hook.tasks.spawn_on(
                    async move {
                        let _ = ledger.record(*row).await;
                    },
                    &handle,
                );
            }
            Err(_) => {
                tracing::error!(request_id = %row.request_id, "ledger row could not be queued outside a runtime");
            }
        }
    }
}

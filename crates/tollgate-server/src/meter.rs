//! Metering: the step that always runs.
//!
//! A [`Meter`] is created as soon as a request is authenticated and travels with it: into
//! the handler, and for streams into the response body. Whatever happens next (success,
//! an error, an upstream cut, the client going away, the handler future being dropped)
//! exactly one ledger row comes out of it:
//! - [`Meter::commit`] settles the outcome and records the row (waiting for durability
//!   in strict mode);
//! - if the meter is dropped first, `Drop` settles it as a client disconnect and hands
//!   the row to a tracked task. A row already queued is recorded again only if its queueing
//!   was interrupted; the ledger ignores a second row with the same request id.

use crate::config::Deployment;
use crate::error::ApiError;
use crate::state::{Gateway, now_ms};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::cost::{cost, cost_without_prompt_cache};
use tollgate_domain::ledger::{Endpoint, LedgerRow, Route, RouteRecord};
use tollgate_domain::money::Money;
use tollgate_domain::usage::{Usage, UsageSource};
use tollgate_providers::stream::StreamTap;
use tollgate_providers::tokenizer::Encoding;
use tollgate_providers::translate::Format;
use tollgate_store::Durability;

/// What the request sent, kept only to count its tokens if the upstream never reports.
pub enum Prompt {
    None,
    Chat(Vec<Value>),
    Embeddings(Value),
    /// Any other request body (Anthropic, Bedrock): its text fields are counted.
    Json(Value),
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
    gw: Arc<Gateway>,
    row: LedgerRow,
    started: Instant,
    deployment: Option<Arc<Deployment>>,
    pub prompt: Prompt,
    /// Set once the upstream has been sent the request (it may bill from then on).
    pub upstream_called: bool,
    /// For streams: the tee, so a dropped stream can still be metered.
    pub scanner: Option<StreamTap>,
    settled: bool,
    /// A settled row whose hand-off to the ledger has not completed yet.
    in_flight: Option<LedgerRow>,
    /// What admission reserved; settled (taken) with the row, on every path.
    pub admission: Option<crate::admission::Ticket>,
    /// Budget and rate-limit headers for the response.
    pub limit_headers: http::HeaderMap,
    /// Where the request sits in a trace (OTLP traces on only).
    pub trace: Option<crate::otel::TraceContext>,
    /// Set on an escalation retry: the request id of the call it retries. The runaway
    /// guard does not count a retry as another iteration of the task.
    pub retry_of: Option<String>,
    /// The routing decision, when the request went through a route.
    pub routed: Option<crate::routing::Routed>,
}

impl Meter {
    pub fn new(
        gw: Arc<Gateway>,
        request_id: String,
        endpoint: Endpoint,
        started: Instant,
        attribution: Attribution,
    ) -> Meter {
        Meter {
            gw,
            row: LedgerRow {
                ts_ms: now_ms(),
                request_id,
                endpoint,
                attribution,
                route: Route::default(),
                usage: Usage::default(),
                usage_source: UsageSource::None,
                cost: Money::ZERO,
                cost_without_cache: Money::ZERO,
                priced: false,
                price_hash: String::new(),
                latency_us: 0,
                ttft_us: None,
                status: 0,
                error_code: None,
                stream: false,
                partial: false,
                routing: None,
            },
            started,
            deployment: None,
            prompt: Prompt::None,
            upstream_called: false,
            scanner: None,
            settled: false,
            in_flight: None,
            admission: None,
            limit_headers: http::HeaderMap::new(),
            trace: None,
            retry_of: None,
            routed: None,
        }
    }

    /// A new meter for a second call made on behalf of the same request (escalation):
    /// same endpoint, attribution, requested model and stream flag, its own request id.
    pub fn follow_up(&self, request_id: String, started: Instant) -> Meter {
        let mut m = Meter::new(
            self.gw.clone(),
            request_id,
            self.row.endpoint,
            started,
            self.row.attribution.clone(),
        );
        m.row.route.requested_model = self.row.route.requested_model.clone();
        m.row.stream = self.row.stream;
        m.trace = self
            .trace
            .as_ref()
            .map(crate::otel::TraceContext::follow_up);
        m.retry_of = Some(self.row.request_id.clone());
        m
    }

    pub fn attribution(&self) -> &Attribution {
        &self.row.attribution
    }

    pub fn deployment(&self) -> Option<&Arc<Deployment>> {
        self.deployment.as_ref()
    }

    pub fn request_id(&self) -> &str {
        &self.row.request_id
    }

    pub fn attribution_mut(&mut self) -> &mut Attribution {
        &mut self.row.attribution
    }

    pub fn set_requested_model(&mut self, model: &str) {
        self.row.route.requested_model = model.to_string();
    }

    pub fn set_stream(&mut self, stream: bool) {
        self.row.stream = stream;
    }

    pub fn set_deployment(&mut self, d: &Arc<Deployment>, price_hash: &str) {
        self.row.route.deployment = d.name.clone();
        self.row.route.upstream = d.upstream.name.clone();
        self.row.route.upstream_model = d.model.clone();
        self.row.price_hash = price_hash.to_string();
        self.deployment = Some(d.clone());
    }

    pub fn durability(&self) -> Durability {
        self.gw.ledger.durability()
    }

    /// Mark the first response byte.
    pub fn first_byte(&mut self) {
        if self.row.ttft_us.is_none() {
            self.row.ttft_us = Some(self.started.elapsed().as_micros() as u64);
        }
    }

    fn encoding(&self) -> Encoding {
        self.deployment
            .as_ref()
            .map(|d| d.encoding)
            .unwrap_or(Encoding::O200kBase)
    }

    fn prompt_tokens(&self) -> u64 {
        let enc = self.encoding();
        match &self.prompt {
            Prompt::None => 0,
            Prompt::Chat(messages) => enc.count_chat_prompt(messages),
            Prompt::Embeddings(input) => enc.count_embedding_input(input),
            Prompt::Json(v) => enc.count_json(v),
        }
    }

    /// Turn an outcome into the final row.
    fn settle(&mut self, outcome: Outcome) -> LedgerRow {
        self.settled = true;
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
        let price = self.deployment.as_ref().and_then(|d| d.price.clone());
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
        let mut row = self.row.clone();
        row.cost_without_cache = without_cache;
        row.usage = usage;
        row.usage_source = source;
        row.cost = charged;
        row.priced = priced;
        row.latency_us = self.started.elapsed().as_micros() as u64;
        row.status = outcome.status;
        row.error_code = outcome.error_code.map(str::to_string);
        row.partial = outcome.partial;
        if let Some(r) = &self.routed {
            row.routing = Some(self.route_record(r, &usage, outcome.service_tier.as_deref()));
            if let Some(id) = r.conversation
                && row.is_success()
                && r.escalated.is_none()
            {
                self.gw.routing.remember(
                    id,
                    tollgate_domain::routing::sticky::Stuck {
                        tier: r.tier,
                        prompt_tokens: usage.prompt_total(),
                        output_tokens: usage.output,
                    },
                );
            }
        }
        if let Some(ticket) = self.admission.take() {
            crate::admission::settle(&self.gw, ticket, &row);
        }
        // Metrics and trace spans, where the row is settled (commit and drop alike).
        self.gw.telemetry.observe(&row, self.trace.as_ref());
        row
    }

    /// The routing columns: the decision, and what the heaviest and the chosen tiers would
    /// have charged for these token counts (each priced exactly, like the row itself).
    fn route_record(
        &self,
        r: &crate::routing::Routed,
        usage: &Usage,
        service_tier: Option<&str>,
    ) -> RouteRecord {
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

    /// Settle and record. Returns the row (its cost goes in the response headers).
    pub async fn commit(&mut self, outcome: Outcome) -> LedgerRow {
        let row = self.settle(outcome);
        self.record(row.clone()).await;
        row
    }

    /// Record an error outcome and render the error for the client.
    pub async fn reject(&mut self, err: ApiError) -> axum::response::Response {
        // The upstream may have done (and billed) work before failing; count the prompt.
        let consumed = if self.upstream_called && err.fault() != tollgate_providers::Fault::Client {
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
        tracing::debug!(request_id = %self.row.request_id, code = err.code(), "request failed: {err}");
        err.into_response_as(self.format(), Some(&self.row.request_id))
    }

    /// The API format the client called (errors are rendered in it).
    pub fn format(&self) -> Format {
        match self.row.endpoint {
            Endpoint::ChatCompletions | Endpoint::Embeddings => Format::OpenAi,
            Endpoint::Messages => Format::Anthropic,
            Endpoint::Converse => Format::Bedrock,
        }
    }

    async fn record(&mut self, row: LedgerRow) {
        let ledger = self.gw.ledger.clone();
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
            None if self.upstream_called => (Consumed::Estimate(String::new()), None),
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
        let ledger = self.gw.ledger.clone();
        let Err(row) = ledger.try_record(row) else {
            return;
        };
        // The queue is full: wait for room in a tracked task.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                self.gw.tasks.spawn_on(
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

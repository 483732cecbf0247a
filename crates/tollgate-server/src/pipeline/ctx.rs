//! [`RequestCtx`]: the one plain struct a request carries through the stages. Which
//! stage writes and which reads each field is listed at the top of [`super`].

use crate::config::cache::CachePolicy;
use crate::config::{Config, Deployment};
use crate::ingress::{Ingress, Prompt};
use crate::limits::Ticket;
use crate::response_cache::Keys;
use crate::routing::Routed;
use crate::telemetry::otel::TraceContext;
use http::HeaderMap;
use std::sync::Arc;
use std::time::Instant;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::ledger::{CacheRecord, PrefixRecord, PruneRecord};

/// What the response cache did for a request (the `x-tollgate-cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from the cache.
    Hit,
    /// Looked up (or refreshed) and not found: the answer may be stored.
    Miss,
    /// Not looked up (off, not deterministic, or the client said so).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// Where a fresh answer goes in the response cache once it is complete.
#[derive(Debug, Clone)]
pub struct CacheFill {
    pub keys: Keys,
    pub ttl_ms: u64,
}

/// Everything the pipeline knows about one request.
pub struct RequestCtx {
    /// The configuration snapshot the whole request sees (loaded once).
    pub cfg: Arc<Config>,
    pub request_id: String,
    /// When the request arrived (latency and time to first byte are measured from here).
    pub started: Instant,
    /// The same moment as Unix milliseconds (the ledger row's time).
    pub ts_ms: i64,
    /// The API the client called (its errors are rendered in that API's shape).
    pub ingress: Ingress,
    pub attribution: Attribution,
    /// The model name the client asked for (a deployment or a routed name).
    pub requested_model: String,
    pub stream: bool,
    /// The deployment that serves the request.
    pub deployment: Option<Arc<Deployment>>,
    /// The routing decision, when the request went through a route.
    pub route: Option<Routed>,
    /// What admission reserved; the meter takes it and settles it exactly once.
    pub ticket: Option<Ticket>,
    /// Where the request sits in a trace (OTLP traces on only).
    pub trace: Option<TraceContext>,
    /// Headers for the client's response (budget and rate-limit standing, clamping).
    pub response_headers: HeaderMap,
    /// On an escalation retry: the request id of the call it retries. The guard does
    /// not count a retry as another iteration of the task.
    pub retry_of: Option<String>,
    /// What was sent, kept only to count its tokens if the upstream never reports.
    pub prompt: Prompt,
    /// The request's output cap as sent (after any clamping): no answer can be longer.
    pub output_cap: Option<u64>,
    /// Set once the upstream has been sent the request (it may bill from then on).
    pub upstream_called: bool,
    /// Time to the first response byte, in microseconds.
    pub ttft_us: Option<u64>,
    /// The caching that applies to the request (its deployment's, route's, key's or
    /// team's, under `[cache]`).
    pub cache_policy: Option<CachePolicy>,
    /// What the response cache did.
    pub cache_status: Option<CacheStatus>,
    /// A miss whose answer should be stored.
    pub cache_fill: Option<CacheFill>,
    /// The row's cache columns: a hit, or the breakpoints the gateway injected.
    pub cache: Option<CacheRecord>,
    /// What pruning took out of the prompt.
    pub prune: Option<PruneRecord>,
    /// The SimHash of the answer's text, when the ticket wants it (a sample the guard
    /// judges by its answers).
    pub answer: Option<u64>,
    /// The prompt's stable prefix (tools and system prompt) as sent: hash and tokens,
    /// recorded for what-if replay of prompt caching (set by the shape stage).
    pub prefix: Option<PrefixRecord>,
}

impl RequestCtx {
    pub fn new(
        cfg: Arc<Config>,
        request_id: String,
        ingress: Ingress,
        started: Instant,
        ts_ms: i64,
    ) -> RequestCtx {
        RequestCtx {
            cfg,
            request_id,
            started,
            ts_ms,
            ingress,
            attribution: Attribution::default(),
            requested_model: String::new(),
            stream: false,
            deployment: None,
            route: None,
            ticket: None,
            trace: None,
            response_headers: HeaderMap::new(),
            retry_of: None,
            prompt: Prompt::None,
            output_cap: None,
            upstream_called: false,
            ttft_us: None,
            cache_policy: None,
            cache_status: None,
            cache_fill: None,
            cache: None,
            prune: None,
            answer: None,
            prefix: None,
        }
    }

    /// The context of a second call made on behalf of this request (escalation): the
    /// same snapshot, API, attribution, requested model and stream flag, a child span of
    /// this call's, its own request id and clock.
    pub fn follow_up(&self, request_id: String, started: Instant, ts_ms: i64) -> RequestCtx {
        let mut c = RequestCtx::new(
            self.cfg.clone(),
            request_id,
            self.ingress.clone(),
            started,
            ts_ms,
        );
        c.attribution = self.attribution.clone();
        c.requested_model = self.requested_model.clone();
        c.stream = self.stream;
        c.trace = self.trace.as_ref().map(TraceContext::follow_up);
        c.retry_of = Some(self.request_id.clone());
        c
    }

    /// Mark the first response byte.
    pub fn first_byte(&mut self) {
        if self.ttft_us.is_none() {
            self.ttft_us = Some(self.started.elapsed().as_micros() as u64);
        }
    }
}

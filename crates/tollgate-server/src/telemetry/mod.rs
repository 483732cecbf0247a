//! Telemetry: what every settled request feeds besides the ledger. Prometheus metrics
//! ([`metrics`]) always; OpenTelemetry spans ([`otel`]) when `[telemetry]
//! otlp_endpoint` is set.
//!
//! The meter calls [`Telemetry::observe`] once per request, where the ledger row is
//! settled (commit and drop alike). It never blocks: metrics are atomics, spans go to a
//! bounded queue that drops (and counts) when full.

pub mod metrics;
pub mod otel;

use crate::config::TelemetrySettings;
use metrics::Metrics;
use otel::{SpanQueue, TraceContext};
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_domain::ledger::LedgerRow;

/// The gateway's telemetry sinks.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    spans: Option<SpanQueue>,
}

impl Telemetry {
    pub fn new(settings: &TelemetrySettings) -> Telemetry {
        Telemetry {
            metrics: Arc::new(Metrics::default()),
            spans: settings.otlp.clone().map(SpanQueue::new),
        }
    }

    /// Record one settled request (in the trace it arrived in, if traces are on).
    /// Never blocks.
    pub fn observe(&self, row: &LedgerRow, trace: Option<&TraceContext>) {
        self.metrics.observe(row);
        if let Some(q) = &self.spans {
            q.push(row, trace, &self.metrics);
        }
    }

    /// Whether spans are exported (then each request gets a [`TraceContext`]).
    pub fn traces(&self) -> bool {
        self.spans.is_some()
    }

    /// Start the span exporter (if traces are on) on `tasks`.
    pub fn start(
        &self,
        tasks: &tokio_util::task::TaskTracker,
        client: tollgate_providers::UpstreamClient,
        providers: HashMap<String, String>,
    ) {
        if let Some(q) = &self.spans
            && let Some(fut) = q.exporter(client, providers, self.metrics.clone())
        {
            tasks.spawn(fut);
        }
    }

    /// Stop taking spans; the exporter flushes what is queued and ends.
    pub fn close(&self) {
        if let Some(q) = &self.spans {
            q.close();
        }
    }
}

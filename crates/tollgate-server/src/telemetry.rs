//! Telemetry: what every settled request feeds besides the ledger. Prometheus metrics
//! ([`crate::metrics`]) always; OpenTelemetry spans ([`crate::otel`]) when
//! `[telemetry] otlp_endpoint` is set.
//!
//! The meter calls [`Telemetry::observe`] once per request, where the ledger row is
//! settled (commit and drop alike). It never blocks: metrics are atomics, spans go to a
//! bounded queue that drops (and counts) when full.

use crate::metrics::Metrics;
use crate::otel::{OtlpSettings, SpanQueue, TraceContext};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tollgate_domain::ledger::LedgerRow;

/// `[telemetry]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Serve `GET /metrics` (default true).
    pub metrics: Option<bool>,
    /// OTLP/HTTP collector base URL (`http://127.0.0.1:4318`) or full traces URL
    /// (`.../v1/traces`). Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// Extra headers sent to the collector.
    #[serde(default)]
    pub otlp_headers: BTreeMap<String, String>,
    /// `service.name` of the spans (default `tollgate`).
    pub service_name: Option<String>,
    /// Spans queued before new ones are dropped (default 8192).
    pub otlp_queue_capacity: Option<u64>,
    /// Most spans per export request (default 512).
    pub otlp_max_batch: Option<u64>,
    /// Longest a span waits for its batch, in milliseconds (default 1000).
    pub otlp_flush_ms: Option<u64>,
    /// Export request timeout, in milliseconds (default 5000).
    pub otlp_timeout_ms: Option<u64>,
}

/// `[telemetry]` validated.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub metrics: bool,
    pub otlp: Option<OtlpSettings>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            metrics: true,
            otlp: None,
        }
    }
}

/// Validate `[telemetry]`, pushing problems (with their field paths) to `errs`.
pub fn validate(raw: &RawTelemetry, errs: &mut Vec<String>) -> TelemetrySettings {
    let otlp = raw.otlp_endpoint.as_deref().and_then(|url| {
        let base = url.trim_end_matches('/');
        let traces_url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let traces_url = match reqwest::Url::parse(&traces_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            _ => {
                errs.push(format!(
                    "telemetry.otlp_endpoint: {url:?} is not an http(s) URL"
                ));
                return None;
            }
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        for (k, v) in &raw.otlp_headers {
            match (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.insert(k, v);
                }
                _ => errs.push(format!(
                    "telemetry.otlp_headers.{k}: not a valid HTTP header"
                )),
            }
        }
        let positive = |errs: &mut Vec<String>, name: &str, v: Option<u64>, d: u64| match v {
            Some(0) => {
                errs.push(format!("telemetry.{name}: must be greater than zero"));
                d
            }
            Some(n) => n,
            None => d,
        };
        Some(OtlpSettings {
            traces_url,
            service_name: raw
                .service_name
                .clone()
                .unwrap_or_else(|| "tollgate".into()),
            headers,
            queue_capacity: positive(errs, "otlp_queue_capacity", raw.otlp_queue_capacity, 8192)
                as usize,
            max_batch: positive(errs, "otlp_max_batch", raw.otlp_max_batch, 512) as usize,
            flush_interval: Duration::from_millis(positive(
                errs,
                "otlp_flush_ms",
                raw.otlp_flush_ms,
                1000,
            )),
            timeout: Duration::from_millis(positive(
                errs,
                "otlp_timeout_ms",
                raw.otlp_timeout_ms,
                5000,
            )),
        })
    });
    TelemetrySettings {
        metrics: raw.metrics.unwrap_or(true),
        otlp,
    }
}

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

/// `GET /metrics`: the Prometheus text exposition format (unauthenticated, like most
/// scrape targets; it carries no task, request or key ids). `[telemetry] metrics =
/// false` turns it off.
pub async fn metrics_endpoint(
    axum::extract::State(gw): axum::extract::State<Arc<crate::state::Gateway>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !gw.config.load().telemetry.metrics {
        return crate::error::ApiError::NotFound(
            "metrics are disabled ([telemetry] metrics = false)".into(),
        )
        .into_response(None);
    }
    let body = gw.telemetry.metrics.render(Some(gw.ledger.stats()));
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

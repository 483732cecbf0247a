//! `[telemetry]`: Prometheus metrics on or off, and the OTLP/HTTP trace exporter.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Validated `[telemetry]` OTLP settings.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// Full URL spans are POSTed to (`.../v1/traces`).
    pub traces_url: tollgate_providers::Url,
    pub service_name: String,
    pub headers: http::HeaderMap,
    /// Spans waiting for export before new ones are dropped.
    pub queue_capacity: usize,
    /// Most spans per export request.
    pub max_batch: usize,
    /// Longest a span waits before its batch is sent.
    pub flush_interval: Duration,
    pub timeout: Duration,
}

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

//! OpenTelemetry traces over OTLP/HTTP with the JSON encoding, hand-rolled (the
//! opentelemetry crates are heavy for what this needs).
//!
//! Each settled request becomes a SERVER span (the gateway handling it) and, when an
//! upstream was called, a CLIENT child span with the GenAI semantic-convention
//! attributes (`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.usage.*`) and tollgate's own (`tollgate.cost.usd`,
//! ...). Spans are queued on a bounded channel with `try_send` (a full queue drops the
//! span and counts it: the request path never waits) and exported in batches by one
//! background task.

use crate::metrics::Metrics;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tollgate_domain::ledger::{Endpoint, LedgerRow};
use tollgate_providers::{UpstreamClient, UpstreamRequest};

/// Validated `[telemetry]` OTLP settings.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// Full URL spans are POSTed to (`.../v1/traces`).
    pub traces_url: String,
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

/// The request-path half: queue a row's spans.
pub struct SpanQueue {
    tx: std::sync::RwLock<Option<mpsc::Sender<LedgerRow>>>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<LedgerRow>>>,
    settings: OtlpSettings,
}

impl SpanQueue {
    pub fn new(settings: OtlpSettings) -> SpanQueue {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        SpanQueue {
            tx: std::sync::RwLock::new(Some(tx)),
            rx: std::sync::Mutex::new(Some(rx)),
            settings,
        }
    }

    /// Queue without waiting; a full queue drops the span (counted in `metrics`).
    pub fn push(&self, row: &LedgerRow, metrics: &Metrics) {
        let Ok(tx) = self.tx.read() else { return };
        if let Some(tx) = tx.as_ref()
            && tx.try_send(row.clone()).is_err()
        {
            metrics
                .spans_dropped
                .fetch_add(spans_in(std::slice::from_ref(row)), Ordering::Relaxed);
        }
    }

    /// Stop accepting spans: the exporter sends what is queued and stops.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.write() {
            tx.take();
        }
    }

    /// The exporter loop, to run on the server's task tracker. `None` if already taken.
    pub fn exporter(
        &self,
        client: UpstreamClient,
        providers: HashMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut rx = self.rx.lock().ok()?.take()?;
        let s = self.settings.clone();
        Some(async move {
            let mut batch: Vec<LedgerRow> = Vec::with_capacity(s.max_batch);
            // `recv_many` returns 0 only once the queue is closed and drained.
            while rx.recv_many(&mut batch, s.max_batch).await > 0 {
                // Gather more for a moment so a burst goes in one request.
                let deadline = tokio::time::sleep(s.flush_interval);
                tokio::pin!(deadline);
                while batch.len() < s.max_batch {
                    let room = s.max_batch - batch.len();
                    tokio::select! {
                        m = rx.recv_many(&mut batch, room) => if m == 0 { break },
                        _ = &mut deadline => break,
                    }
                }
                if !batch.is_empty() {
                    let body = export_request(&batch, &s.service_name, &providers);
                    let spans = spans_in(&batch);
                    let sent = client
                        .post(UpstreamRequest {
                            url: s.traces_url.clone(),
                            headers: s.headers.clone(),
                            body: body.to_string().into(),
                            timeout: s.timeout,
                        })
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            metrics.spans_exported.fetch_add(spans, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            tracing::warn!(status = %r.status(), "OTLP collector refused {spans} spans");
                            metrics.spans_dropped.fetch_add(spans, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "OTLP export failed; {spans} spans dropped");
                            metrics.spans_dropped.fetch_add(spans, Ordering::Relaxed);
                        }
                    }
                    batch.clear();
                }
            }
        })
    }
}

fn spans_in(rows: &[LedgerRow]) -> u64 {
    rows.iter().map(|r| 1 + u64::from(upstream_called(r))).sum()
}

/// Whether the request reached an upstream (a client span exists).
fn upstream_called(row: &LedgerRow) -> bool {
    !row.route.upstream.is_empty()
        && !matches!(
            row.error_code.as_deref(),
            Some(
                "invalid_request"
                    | "request_too_large"
                    | "model_not_found"
                    | "model_not_allowed"
                    | "unsupported_feature"
                    | "invalid_api_key"
                    | "invalid_signature"
                    | "signature_expired"
                    | "sigv4_unavailable"
            )
        )
}

fn operation(e: Endpoint) -> &'static str {
    match e {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Converse => "chat",
        Endpoint::Embeddings => "embeddings",
    }
}

fn path(e: Endpoint) -> &'static str {
    match e {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Messages => "/v1/messages",
        Endpoint::Converse => "/model/{modelId}/converse",
    }
}

fn s(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

fn i(k: &str, v: i64) -> Value {
    // OTLP/JSON: 64-bit integers are decimal strings.
    json!({"key": k, "value": {"intValue": v.to_string()}})
}

fn d(k: &str, v: f64) -> Value {
    json!({"key": k, "value": {"doubleValue": v}})
}

fn b(k: &str, v: bool) -> Value {
    json!({"key": k, "value": {"boolValue": v}})
}

/// A random non-zero id of 16 (trace) or 8 (span) bytes, hex.
fn random_hex(bytes: usize) -> String {
    if bytes == 16 {
        format!("{:032x}", rand::random::<u128>() | 1)
    } else {
        format!("{:016x}", rand::random::<u64>() | 1)
    }
}

/// The spans of one settled request.
pub fn spans(row: &LedgerRow, providers: &HashMap<String, String>) -> Vec<Value> {
    let trace_id = random_hex(16);
    let server_id = random_hex(8);
    let start = (row.ts_ms.max(0) as u128 * 1_000_000).to_string();
    let end_ns = row.ts_ms.max(0) as u128 * 1_000_000 + u128::from(row.latency_us) * 1_000;
    let end = end_ns.to_string();
    let a = &row.attribution;
    let error = row.status >= 400 || row.error_code.is_some();
    let status = if row.status >= 500 || (error && row.status < 400) {
        json!({"code": 2, "message": row.error_code.clone().unwrap_or_default()})
    } else {
        json!({"code": 0})
    };
    let mut common = vec![
        s("tollgate.request_id", &row.request_id),
        d("tollgate.cost.usd", row.cost.as_usd_f64()),
        i("tollgate.cost.nanos", row.cost.nanos()),
        d(
            "tollgate.cost.without_cache.usd",
            row.cost_without_cache.as_usd_f64(),
        ),
        b("tollgate.priced", row.priced),
        s("tollgate.usage.source", row.usage_source.as_str()),
        s("tollgate.price_table", &row.price_hash),
        b("tollgate.partial", row.partial),
    ];
    for (k, v) in [
        ("tollgate.key_id", &a.key_id),
        ("tollgate.agent", &a.agent),
        ("tollgate.team", &a.team),
        ("tollgate.user", &a.user),
        ("tollgate.task", &a.task),
    ] {
        if let Some(v) = v {
            common.push(s(k, v));
        }
    }
    if let Some(r) = &row.routing {
        common.push(s("tollgate.route.name", &r.name));
        common.push(i("tollgate.route.tier", i64::from(r.tier)));
        common.push(s("tollgate.route.deployment", &r.tier_deployment));
        common.push(d("tollgate.route.score", f64::from(r.score_ppm) / 1e6));
        common.push(s("tollgate.route.mode", r.mode.as_str()));
        common.push(d(
            "tollgate.route.heavy_cost.usd",
            r.heavy_cost.as_usd_f64(),
        ));
        if let Some(e) = &r.escalated {
            common.push(s("tollgate.route.escalated", e));
        }
    }
    if let Some(e) = &row.error_code {
        common.push(s("error.type", e));
    }
    let route = path(row.endpoint);
    let mut server_attrs = vec![
        s("http.request.method", "POST"),
        s("http.route", route),
        i("http.response.status_code", i64::from(row.status)),
        s("gen_ai.operation.name", operation(row.endpoint)),
    ];
    if !row.route.requested_model.is_empty() {
        server_attrs.push(s("gen_ai.request.model", &row.route.requested_model));
    }
    server_attrs.extend(common.iter().cloned());
    let mut out = vec![json!({
        "traceId": trace_id,
        "spanId": server_id,
        "name": format!("POST {route}"),
        "kind": 2,
        "startTimeUnixNano": start,
        "endTimeUnixNano": end,
        "attributes": server_attrs,
        "status": status,
    })];
    if upstream_called(row) {
        let u = &row.usage;
        let provider = providers
            .get(&row.route.upstream)
            .map(String::as_str)
            .unwrap_or("openai");
        let mut attrs = vec![
            s("gen_ai.operation.name", operation(row.endpoint)),
            s("gen_ai.provider.name", provider),
            s("gen_ai.request.model", &row.route.upstream_model),
            s("gen_ai.response.model", &row.route.upstream_model),
            i("gen_ai.usage.input_tokens", u.prompt_total() as i64),
            i("gen_ai.usage.output_tokens", u.output as i64),
            i("gen_ai.usage.cache_read.input_tokens", u.cache_read as i64),
            i(
                "gen_ai.usage.cache_creation.input_tokens",
                (u.cache_write_5m + u.cache_write_1h) as i64,
            ),
            i("gen_ai.usage.reasoning.output_tokens", u.reasoning as i64),
            s("tollgate.deployment", &row.route.deployment),
            s("tollgate.upstream", &row.route.upstream),
            b("tollgate.stream", row.stream),
        ];
        if let Some(t) = row.ttft_us {
            attrs.push(d("tollgate.time_to_first_byte.seconds", t as f64 / 1e6));
        }
        attrs.extend(common);
        out.push(json!({
            "traceId": trace_id,
            "spanId": random_hex(8),
            "parentSpanId": server_id,
            "name": format!("{} {}", operation(row.endpoint), row.route.upstream_model),
            "kind": 3,
            "startTimeUnixNano": start,
            "endTimeUnixNano": end,
            "attributes": attrs,
            "status": status,
        }));
    }
    out
}

/// An `ExportTraceServiceRequest` in OTLP/JSON.
pub fn export_request(
    rows: &[LedgerRow],
    service_name: &str,
    providers: &HashMap<String, String>,
) -> Value {
    let spans: Vec<Value> = rows.iter().flat_map(|r| spans(r, providers)).collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                s("service.name", service_name),
                s("service.version", env!("CARGO_PKG_VERSION")),
            ]},
            "scopeSpans": [{
                "scope": {"name": "tollgate", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
}

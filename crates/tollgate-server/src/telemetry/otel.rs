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
//!
//! Trace context (W3C Trace Context): a request carrying a valid `traceparent` joins
//! that trace: its server span takes the trace id and has the caller's span as parent,
//! and the caller's sampled flag decides whether its spans are exported (parent-based
//! sampling; a request without one is sampled). A malformed `traceparent` is ignored
//! (a new trace starts; the request is never refused for it). The upstream call carries
//! a `traceparent` naming the client span, and the caller's `tracestate` unchanged.

use super::metrics::Metrics;
use crate::config::OtlpSettings;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tollgate_domain::ledger::{Endpoint, LedgerRow};
use tollgate_providers::{UpstreamClient, UpstreamRequest};

/// One request's place in a trace: ids chosen (or received) when the request arrives,
/// used for the upstream call's `traceparent` and, once settled, for its spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span (16 hex digits) when the request carried a valid
    /// `traceparent`.
    pub parent_span_id: Option<String>,
    pub server_span_id: String,
    pub client_span_id: String,
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged (only with a valid `traceparent`).
    pub tracestate: Option<http::HeaderValue>,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A `traceparent` value, if valid: (trace id, parent span id, flags). Version 00 is
/// exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later version may append `-...` fields,
/// which are ignored; version `ff`, all-zero ids and upper-case hex are invalid.
pub fn parse_traceparent(v: &str) -> Option<(&str, &str, u8)> {
    let v = v.trim_matches([' ', '\t']);
    if v.len() < 55 || !v.is_ascii() {
        return None;
    }
    let (head, rest) = v.split_at(55);
    let version = &head[0..2];
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if (version == "00" && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
        return None;
    }
    let b = head.as_bytes();
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&head[3..35], &head[36..52], &head[53..55]);
    if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
        return None;
    }
    if trace.bytes().all(|c| c == b'0') || parent.bytes().all(|c| c == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, parent, flags))
}

impl TraceContext {
    /// The context of a request with these headers: the caller's trace if it sent one
    /// valid `traceparent` header, else a new sampled trace.
    pub fn from_headers(headers: &http::HeaderMap) -> TraceContext {
        let mut values = headers.get_all("traceparent").iter();
        let parsed = match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().and_then(parse_traceparent),
            _ => None,
        };
        match parsed {
            Some((trace, parent, flags)) => TraceContext {
                trace_id: trace.to_string(),
                parent_span_id: Some(parent.to_string()),
                server_span_id: random_hex(8),
                client_span_id: random_hex(8),
                sampled: flags & 1 == 1,
                tracestate: headers.get("tracestate").cloned(),
            },
            None => TraceContext::root(),
        }
    }

    /// A call made on behalf of this one (an escalation retry): the same trace, a child
    /// of this request's server span, with span ids of its own.
    pub fn follow_up(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id.clone(),
            parent_span_id: Some(self.server_span_id.clone()),
            server_span_id: random_hex(8),
            client_span_id: random_hex(8),
            sampled: self.sampled,
            tracestate: self.tracestate.clone(),
        }
    }

    /// A new trace, sampled.
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: random_hex(16),
            parent_span_id: None,
            server_span_id: random_hex(8),
            client_span_id: random_hex(8),
            sampled: true,
            tracestate: None,
        }
    }

    /// The `traceparent` for the upstream call: this trace, the client span as parent.
    pub fn upstream_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.client_span_id,
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Add `traceparent` (and the caller's `tracestate`) to the upstream request.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Ok(v) = http::HeaderValue::from_str(&self.upstream_traceparent()) {
            headers.insert("traceparent", v);
        }
        if let Some(ts) = &self.tracestate {
            headers.insert("tracestate", ts.clone());
        }
    }
}

/// A settled row and the trace it belongs to, waiting for export.
type Queued = (LedgerRow, Option<TraceContext>);

/// The request-path half: queue a row's spans.
pub struct SpanQueue {
    tx: std::sync::RwLock<Option<mpsc::Sender<Queued>>>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Queued>>>,
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

    /// Queue without waiting; a full queue drops the span (counted in `metrics`). A
    /// request whose caller's trace is not sampled has no spans.
    pub fn push(&self, row: &LedgerRow, trace: Option<&TraceContext>, metrics: &Metrics) {
        if trace.is_some_and(|t| !t.sampled) {
            return;
        }
        let Ok(tx) = self.tx.read() else { return };
        if let Some(tx) = tx.as_ref()
            && tx.try_send((row.clone(), trace.cloned())).is_err()
        {
            metrics
                .spans_dropped
                .fetch_add(spans_in([row]), Ordering::Relaxed);
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
            let mut batch: Vec<Queued> = Vec::with_capacity(s.max_batch);
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
                    let spans = spans_in(batch.iter().map(|(r, _)| r));
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

fn spans_in<'a>(rows: impl IntoIterator<Item = &'a LedgerRow>) -> u64 {
    rows.into_iter()
        .map(|r| 1 + u64::from(upstream_called(r)))
        .sum()
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
        Endpoint::Responses => "responses",
        Endpoint::Embeddings => "embeddings",
    }
}

fn path(e: Endpoint) -> &'static str {
    match e {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Messages => "/v1/messages",
        Endpoint::Converse => "/model/{modelId}/converse",
        Endpoint::Responses => "/v1/responses",
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

/// The spans of one settled request, in its trace (a new one if `None`).
pub fn spans(
    row: &LedgerRow,
    trace: Option<&TraceContext>,
    providers: &HashMap<String, String>,
) -> Vec<Value> {
    let fresh;
    let t = match trace {
        Some(t) => t,
        None => {
            fresh = TraceContext::root();
            &fresh
        }
    };
    let trace_id = t.trace_id.clone();
    let server_id = t.server_span_id.clone();
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
    let mut server = json!({
        "traceId": trace_id,
        "spanId": server_id,
        "name": format!("POST {route}"),
        "kind": 2,
        "startTimeUnixNano": start,
        "endTimeUnixNano": end,
        "attributes": server_attrs,
        "status": status,
    });
    if let (Some(parent), Value::Object(o)) = (&t.parent_span_id, &mut server) {
        o.insert("parentSpanId".into(), Value::from(parent.clone()));
        // W3C flags (sampled) plus OTLP's "the parent is remote" bits.
        o.insert("flags".into(), Value::from(0x300 | u32::from(t.sampled)));
    }
    let mut out = vec![server];
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
            "spanId": t.client_span_id.clone(),
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
    rows: &[Queued],
    service_name: &str,
    providers: &HashMap<String, String>,
) -> Value {
    let spans: Vec<Value> = rows
        .iter()
        .flat_map(|(r, t)| spans(r, t.as_ref(), providers))
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparent_is_parsed_by_the_w3c_rules() {
        let ok = format!("00-{TRACE}-{PARENT}-01");
        assert_eq!(parse_traceparent(&ok), Some((TRACE, PARENT, 1)));
        assert_eq!(
            parse_traceparent(&format!("00-{TRACE}-{PARENT}-00")),
            Some((TRACE, PARENT, 0))
        );
        // A later version may carry more fields after a dash.
        assert_eq!(
            parse_traceparent(&format!("01-{TRACE}-{PARENT}-09-extra")),
            Some((TRACE, PARENT, 9))
        );
        let bad = [
            String::new(),
            "garbage".to_string(),
            format!("00-{TRACE}-{PARENT}-01-extra"), // version 00 has exactly 4 fields
            format!("ff-{TRACE}-{PARENT}-01"),       // version ff is invalid
            format!("01-{TRACE}-{PARENT}-01x"),      // more fields need a dash
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{PARENT}-0g"),
            format!("00_{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}"),
            format!("00-{TRACE}-{}-01", "é".repeat(8)),
        ];
        for b in &bad {
            assert_eq!(parse_traceparent(b), None, "{b:?}");
        }
    }

    #[test]
    fn a_request_joins_the_callers_trace_and_names_its_client_span_upstream() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
        );
        h.insert("tracestate", "vendor=abc".parse().unwrap());
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, TRACE);
        assert_eq!(t.parent_span_id.as_deref(), Some(PARENT));
        assert!(t.sampled);
        let mut up = http::HeaderMap::new();
        t.inject(&mut up);
        assert_eq!(
            up["traceparent"],
            format!("00-{TRACE}-{}-01", t.client_span_id).as_str()
        );
        assert_eq!(up["tracestate"], "vendor=abc");
        // Two traceparent headers, or a malformed one: a new trace, no tracestate.
        h.append("traceparent", "00-x".parse().unwrap());
        let t2 = TraceContext::from_headers(&h);
        assert_ne!(t2.trace_id, TRACE);
        assert_eq!(
            (t2.parent_span_id, t2.tracestate, t2.sampled),
            (None, None, true)
        );
        assert_eq!(t2.trace_id.len(), 32);
        assert_eq!(t2.client_span_id.len(), 16);
    }
}

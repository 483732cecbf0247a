//! The ledger row: one per request that reached the gateway's metering step.

use crate::attribution::Attribution;
use crate::money::Money;
use crate::usage::{Usage, UsageSource};
use serde::{Deserialize, Serialize};

/// Which API the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    Messages,
    Converse,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Converse => "converse",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        match s {
            "chat_completions" => Some(Endpoint::ChatCompletions),
            "embeddings" => Some(Endpoint::Embeddings),
            "messages" => Some(Endpoint::Messages),
            "converse" => Some(Endpoint::Converse),
            _ => None,
        }
    }
}

/// How the request was routed: the model the client asked for, the deployment that
/// served it, the upstream and the upstream's own model id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub requested_model: String,
    pub deployment: String,
    pub upstream: String,
    pub upstream_model: String,
}

/// One metered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// Unix time in milliseconds when the request arrived.
    pub ts_ms: i64,
    pub request_id: String,
    pub endpoint: Endpoint,
    pub attribution: Attribution,
    pub route: Route,
    pub usage: Usage,
    pub usage_source: UsageSource,
    /// What was charged (rounded up to the nano-USD).
    pub cost: Money,
    /// What this request would have cost without provider prompt caching (every prompt
    /// token at the input rate); equal to `cost` when no cache was read or written.
    #[serde(default)]
    pub cost_without_cache: Money,
    /// `false` when the model had no price: the row is flagged, never priced at zero
    /// silently.
    pub priced: bool,
    /// Hash of the price table that priced this row.
    pub price_hash: String,
    /// Whole request, arrival to last byte (or to the error), in microseconds.
    pub latency_us: u64,
    /// Time to the first byte of the response body, for streams.
    pub ttft_us: Option<u64>,
    /// HTTP status the client got (499 when the client went away first).
    pub status: u16,
    /// Stable error code (`upstream_timeout`, `client_disconnected`, ...) when not a success.
    pub error_code: Option<String>,
    pub stream: bool,
    /// The response was cut short (client disconnect, upstream cut, timeout mid-stream).
    pub partial: bool,
}

impl LedgerRow {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status) && !self.partial
    }
}

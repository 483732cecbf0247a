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
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Converse => "converse",
            Endpoint::Responses => "responses",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        match s {
            "chat_completions" => Some(Endpoint::ChatCompletions),
            "embeddings" => Some(Endpoint::Embeddings),
            "messages" => Some(Endpoint::Messages),
            "converse" => Some(Endpoint::Converse),
            "responses" => Some(Endpoint::Responses),
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

/// Whether a route's decision was applied or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteMode {
    /// The request went to the tier the router chose.
    Enforce,
    /// The request went to the route's default (what the client would have got anyway);
    /// the decision is recorded to show what routing would have saved.
    Shadow,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Enforce => "enforce",
            RouteMode::Shadow => "shadow",
        }
    }

    pub fn parse(s: &str) -> Option<RouteMode> {
        match s {
            "enforce" => Some(RouteMode::Enforce),
            "shadow" => Some(RouteMode::Shadow),
            _ => None,
        }
    }
}

/// What the router decided for a request asking for a routed model name (or carrying an
/// `x-tollgate-route` header). Costs are for the row's own token counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// The routed model name (`auto`, `support-auto`).
    pub name: String,
    /// The tier the router chose (after stickiness), 0 = lightest.
    pub tier: u32,
    /// That tier's deployment (in shadow mode, not the one that served the request).
    pub tier_deployment: String,
    /// The router's score in millionths (0..=1_000_000), so the row stays `Eq`.
    pub score_ppm: u32,
    pub mode: RouteMode,
    /// What the heaviest tier would have charged for these token counts.
    pub heavy_cost: Money,
    /// What the chosen tier would have charged for these token counts (its actual cost
    /// in enforce mode; what it would have cost in shadow mode).
    pub tier_cost: Money,
    /// This call's answer failed the escalation check and was retried on the next tier
    /// (its reason code: `empty`, `refusal`, `invalid_json`, `length`).
    pub escalated: Option<String>,
    /// The request's hashed feature vector, when `routing.record_samples` is on (written
    /// to the `route_samples` table, not to the ledger row).
    #[serde(default)]
    pub sample: Option<RouteSample>,
}

/// A routed request's features for training (see `routing::sample`): no prompt text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSample {
    /// Which router's feature space (`embedded` or the model file's hash).
    pub model: String,
    pub tokens: u32,
    /// `routing::sample::Sample` as JSON.
    pub features: String,
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
    /// The routing decision, for requests that went through a route.
    #[serde(default)]
    pub routing: Option<RouteRecord>,
    /// What the gateway's caching did for this request (prompt-cache breakpoints it
    /// injected, or a response-cache hit).
    #[serde(default)]
    pub cache: Option<CacheRecord>,
    /// What pruning took out of the prompt before it was sent.
    #[serde(default)]
    pub prune: Option<PruneRecord>,
    /// The upstream reported more than the request could have used (past the model's
    /// context window or the request's output cap): the row is priced at that bound
    /// instead of the reported figures.
    #[serde(default)]
    pub usage_suspect: bool,
    /// The service tier the provider reported (`flex`, `priority`), which chose the
    /// rates; kept so a replay re-prices the row exactly.
    #[serde(default)]
    pub service_tier: Option<String>,
    /// The prompt's stable prefix (tools and system prompt), for replaying prompt
    /// caching: its hash and token count, never its text.
    #[serde(default)]
    pub prefix: Option<PrefixRecord>,
}

/// A prompt's stable prefix as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRecord {
    /// 32 hex digits (a 128-bit hash of the parts; not reversible to the text).
    pub hash: String,
    /// Its tokens, counted locally with the deployment's tokenizer.
    pub tokens: u64,
}

/// The most any one stored token count can be: 10^10 (a thousand times the largest
/// context window). Past it the row is stored clamped and flagged `usage_suspect`, so
/// that sums over any realistic number of rows fit in `i64` (SQLite's `SUM` fails on
/// overflow, PostgreSQL's cast back to `BIGINT` too).
pub const STORED_TOKENS_MAX: u64 = 10_000_000_000;
/// The most any one stored amount can be: $100,000 (10^14 nano-USD) for one request,
/// a thousand times the dearest real request today.
pub const STORED_NANOS_MAX: i64 = 100_000_000_000_000;

/// A token count as stored (clamped to [`STORED_TOKENS_MAX`]).
pub fn stored_tokens(n: u64) -> i64 {
    n.min(STORED_TOKENS_MAX) as i64
}

/// An amount as stored (clamped to ±[`STORED_NANOS_MAX`]).
pub fn stored_nanos(m: Money) -> i64 {
    m.nanos().clamp(-STORED_NANOS_MAX, STORED_NANOS_MAX)
}

impl LedgerRow {
    /// Whether storing this row clamps one of its figures (it is then flagged
    /// `usage_suspect`).
    pub fn past_storage_caps(&self) -> bool {
        let u = &self.usage;
        let tokens = [
            u.input,
            u.cache_read,
            u.cache_write_5m,
            u.cache_write_1h,
            u.output,
            u.reasoning,
        ];
        let mut money = vec![self.cost, self.cost_without_cache];
        if let Some(r) = &self.routing {
            money.extend([r.heavy_cost, r.tier_cost]);
        }
        if let Some(c) = &self.cache {
            money.push(c.avoided_cost);
        }
        if let Some(p) = &self.prune {
            money.push(p.cost_without);
        }
        tokens.iter().any(|n| *n > STORED_TOKENS_MAX)
            || money
                .iter()
                .any(|m| m.nanos().unsigned_abs() > STORED_NANOS_MAX as u64)
    }

    /// The `usage_suspect` column: flagged by the meter, or clamped by the store.
    pub fn stored_suspect(&self) -> bool {
        self.usage_suspect || self.past_storage_caps()
    }
}

/// Which of the gateway's caches acted on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// The gateway placed provider prompt-cache breakpoints (Anthropic `cache_control`,
    /// Bedrock `cachePoint`) the client had not.
    PromptInjected,
    /// Answered from the response cache: the same request, exactly.
    ResponseExact,
    /// Answered from the response cache: a similar last turn in the same context.
    ResponseSemantic,
}

impl CacheKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::PromptInjected => "prompt_injected",
            CacheKind::ResponseExact => "response_exact",
            CacheKind::ResponseSemantic => "response_semantic",
        }
    }

    pub fn parse(s: &str) -> Option<CacheKind> {
        match s {
            "prompt_injected" => Some(CacheKind::PromptInjected),
            "response_exact" => Some(CacheKind::ResponseExact),
            "response_semantic" => Some(CacheKind::ResponseSemantic),
            _ => None,
        }
    }

    /// A response-cache hit (no upstream call, nothing charged).
    pub fn is_hit(self) -> bool {
        !matches!(self, CacheKind::PromptInjected)
    }
}

/// The cache columns of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub kind: CacheKind,
    /// A semantic hit: the cosine similarity of the two last turns, in millionths.
    #[serde(default)]
    pub similarity_ppm: Option<u32>,
    /// A response-cache hit: what the answer would have cost (the recorded usage at
    /// the row's deployment prices); the saving, since the row itself costs nothing.
    #[serde(default)]
    pub avoided_cost: Money,
    /// Injected breakpoints: the prompt tokens the gateway expected the provider to
    /// write into its cache, and to read from it, on this call.
    #[serde(default)]
    pub expected_write: u64,
    #[serde(default)]
    pub expected_read: u64,
    /// Injected breakpoints the provider did not act on as expected (a read expected
    /// and none reported, or neither a write nor a read reported): a sign that the
    /// model's real minimum cacheable length or TTL differs from the documented one.
    #[serde(default)]
    pub miss: bool,
}

/// The pruning columns of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRecord {
    /// Prompt tokens before and after pruning, counted locally.
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// What the row would have cost with the unpruned prompt, at the same prices, plus
    /// the prompt-cache rewrite pruning caused (so the saving is net of it).
    pub cost_without: Money,
}

impl LedgerRow {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status) && !self.partial
    }
}

//! Header names tollgate reads and writes.

pub const REQUEST_ID: &str = "x-tollgate-request-id";
pub const COST_USD: &str = "x-tollgate-cost-usd";
pub const AGENT: &str = "x-tollgate-agent";
pub const TASK: &str = "x-tollgate-task";
pub const USER: &str = "x-tollgate-user";
pub const TEAM: &str = "x-tollgate-team";
pub const TAGS: &str = "x-tollgate-tags";
/// What the strictest hard budget of the request has left after its reservation.
pub const BUDGET_REMAINING_USD: &str = "x-tollgate-budget-remaining-usd";
/// Set when `max_tokens` was lowered to what the budget can pay.
pub const MAX_TOKENS_CLAMPED: &str = "x-tollgate-max-tokens-clamped";
/// Request: shadow-decide under this route while forwarding the concrete model asked
/// for. Response: the route that decided the request.
pub const ROUTE: &str = "x-tollgate-route";
/// Response: the index of the tier chosen in the route's ladder (0 = lightest).
pub const ROUTE_TIER: &str = "x-tollgate-route-tier";
/// Response: the chosen tier's deployment (in shadow mode, not the one that served).
pub const ROUTE_DEPLOYMENT: &str = "x-tollgate-route-deployment";
/// Response: the router's score, in [0, 1].
pub const ROUTE_SCORE: &str = "x-tollgate-route-score";
/// Response: `enforce` or `shadow`.
pub const ROUTE_MODE: &str = "x-tollgate-route-mode";
/// Response: the light tier's answer failed this check and the request was retried on
/// the next tier (`empty`, `refusal`, `invalid_json`, `length`).
pub const ROUTE_ESCALATED: &str = "x-tollgate-route-escalated";
/// Request: `on` (cache this request even if it samples), `off` (neither look up nor
/// store), `refresh` (store a fresh answer). Response: `hit`, `miss` or `bypass`.
pub const CACHE: &str = "x-tollgate-cache";
/// Request: how long a stored answer lives, in seconds.
pub const CACHE_TTL: &str = "x-tollgate-cache-ttl";
/// Response: `exact` or `semantic` on a hit.
pub const CACHE_KIND: &str = "x-tollgate-cache-kind";
/// Response: a semantic hit's cosine similarity, and the threshold it passed.
pub const CACHE_SIMILARITY: &str = "x-tollgate-cache-similarity";
pub const CACHE_THRESHOLD: &str = "x-tollgate-cache-threshold";
/// Request: `off`, `auto` or `always` for provider prompt caching. Response: the
/// breakpoints the gateway placed (`2 (5m, 5m)`), when it placed any.
pub const PROMPT_CACHE: &str = "x-tollgate-prompt-cache";
/// Request: `off` (send the history whole) or `on` (prune under the request's policy
/// even where pruning is not enabled).
pub const PRUNE: &str = "x-tollgate-prune";
/// Response: prompt tokens before and after pruning, when the gateway pruned.
pub const PRUNE_TOKENS_BEFORE: &str = "x-tollgate-prune-tokens-before";
pub const PRUNE_TOKENS_AFTER: &str = "x-tollgate-prune-tokens-after";
/// What tollgate's own rate limits have left (`-requests`, `-tokens`, `-usd`).
pub const RATELIMIT_REMAINING_PREFIX: &str = "x-tollgate-ratelimit-remaining-";

/// Upstream response headers never passed to the client: hop-by-hop headers, framing
/// the gateway recomputes, and cookies.
pub fn is_hop_or_framing(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "set-cookie"
            | "date"
            | "server"
            | "alt-svc"
    )
}

/// Set `x-tollgate-request-id`.
pub fn set_request_id(h: &mut http::HeaderMap, id: &str) {
    if let Ok(v) = http::HeaderValue::from_str(id) {
        h.insert(REQUEST_ID, v);
    }
}

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

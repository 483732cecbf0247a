//! What can go wrong talking to an upstream.

/// Whose fault an error is: decides billing, retries and failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No response (headers, or the whole body for non-streaming calls) in time.
    #[error("the upstream did not answer within {0} ms")]
    Timeout(u64),
    /// Could not connect (DNS, refused, TLS).
    #[error("could not reach the upstream: {0}")]
    Unreachable(String),
    /// The connection failed after it was established.
    #[error("the upstream connection failed: {0}")]
    Transport(String),
    /// The upstream answered 2xx with something that is not what its API promises.
    #[error("the upstream sent a malformed response: {0}")]
    Malformed(String),
    /// The upstream's body was larger than the configured limit.
    #[error("the upstream response exceeded {0} bytes")]
    TooLarge(usize),
}

impl ProviderError {
    /// Stable snake_case code (also the metric label).
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::Timeout(_) => "upstream_timeout",
            ProviderError::Unreachable(_) => "upstream_unreachable",
            ProviderError::Transport(_) => "upstream_error",
            ProviderError::Malformed(_) => "upstream_error",
            ProviderError::TooLarge(_) => "upstream_error",
        }
    }

    pub fn fault(&self) -> Fault {
        Fault::Upstream
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Timeout(_) | ProviderError::Unreachable(_) | ProviderError::Transport(_)
        )
    }

    pub(crate) fn from_reqwest(e: reqwest::Error, timeout_ms: u64) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout(timeout_ms)
        } else if e.is_connect() {
            ProviderError::Unreachable(error_chain(&e))
        } else {
            ProviderError::Transport(error_chain(&e))
        }
    }
}

/// An error and its sources on one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

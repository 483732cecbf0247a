//! Errors the gateway answers with, and the one place they become HTTP.
//!
//! Every error has a stable `code()` (also the metric label), says whose `fault()` it is
//! and whether the client may retry. [`ApiError::status`] is the only mapping from an
//! error to a status code in tollgate; [`ApiError::into_response`] renders it in the
//! ingress API's own shape so SDKs raise their usual exceptions.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use tollgate_domain::money::Money;
use tollgate_providers::openai::RequestError;
use tollgate_providers::translate::{ErrorClass, Format, TranslateError};
use tollgate_providers::{Fault, ProviderError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Missing API key. Send `Authorization: Bearer <tollgate key>`.")]
    MissingKey,
    #[error("Incorrect API key provided.")]
    InvalidKey,
    #[error("This API needs the master key (set {0} when starting tollgate).")]
    AdminDisabled(String),
    #[error("The model `{0}` is not allowed for this key.")]
    ModelNotAllowed(String),
    #[error("{0}")]
    BadRequest(#[from] RequestError),
    #[error("Invalid value for {param}: {message}")]
    InvalidParam { param: String, message: String },
    #[error("Request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    #[error("Could not read the request body: {0}")]
    BodyRead(String),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("Unknown request URL: {method} {path}.")]
    RouteNotFound { method: String, path: String },
    #[error("{0}")]
    Upstream(#[from] ProviderError),
    #[error("The upstream returned a malformed response: {0}")]
    UpstreamMalformed(String),
    #[error("Internal error: {0}")]
    Internal(String),
    #[error("Not found: {0}")]
    NotFound(String),
    #[error(
        "Budget exceeded: {scope} has ${remaining} left of its {period} budget of ${limit}; this request needs up to ${needed}."
    )]
    BudgetExceeded {
        scope: String,
        /// `day 2025-06-04`, `month 2025-06`, `lifetime`.
        period: String,
        limit: Money,
        remaining: Money,
        needed: Money,
    },
    #[error(
        "Rate limit reached for {scope}: {limit} {kind} per minute ({remaining} left). Retry in {retry_after_ms} ms."
    )]
    RateLimited {
        scope: String,
        /// `requests`, `tokens` or `usd` (nano-USD).
        kind: &'static str,
        limit: u64,
        remaining: u64,
        retry_after_ms: i64,
    },
    #[error(
        "Task `{task}` was halted by tollgate's runaway-agent guard: {reason}. An operator can release it with `tollgate tasks release {task}`."
    )]
    TaskHalted { task: String, reason: String },
    #[error("Budget counters are unavailable: {0}")]
    CountersUnavailable(String),
    /// The request needs a feature the deployment's upstream format cannot express.
    #[error("{0}")]
    Untranslatable(#[from] TranslateError),
    /// A Bedrock client sent no credentials.
    #[error("Missing Authentication Token")]
    MissingSignature,
    /// A SigV4 access key id that is no active tollgate key.
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey,
    /// SigV4 cannot be verified: no master key, or the key has no sealed secret.
    #[error("{0}")]
    SigV4Unavailable(String),
    #[error("{0}")]
    BadSignature(tollgate_providers::sigv4::SigV4Error),
    /// An upstream of another format answered with an error status; it is passed on
    /// with that status, in the client's format.
    #[error("{message}")]
    UpstreamStatus {
        status: u16,
        class: ErrorClass,
        message: String,
    },
    #[error("Forbidden: {0}")]
    Forbidden(String),
    /// The gateway is at its limit of request bodies being read at once.
    #[error("{0}")]
    Busy(String),
    /// An API tollgate does not serve (batches, files, legacy completions): 404, with
    /// what to use instead.
    #[error("{0}")]
    EndpointNotSupported(String),
    #[error(
        "The routed model `{route}` is not available to {who}: its configuration lists the teams and agents that may use it."
    )]
    RouteNotAllowed { route: String, who: String },
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => "invalid_api_key",
            ApiError::AdminDisabled(_) => "admin_disabled",
            ApiError::ModelNotAllowed(_) | ApiError::RouteNotAllowed { .. } => "model_not_allowed",
            ApiError::BadRequest(_) | ApiError::InvalidParam { .. } => "invalid_request",
            ApiError::BodyTooLarge(_) => "request_too_large",
            ApiError::BodyRead(_) => "invalid_request",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::RouteNotFound { .. } | ApiError::NotFound(_) => "not_found",
            ApiError::EndpointNotSupported(_) => "unsupported_endpoint",
            ApiError::Upstream(e) => e.code(),
            ApiError::UpstreamMalformed(_) => "upstream_error",
            ApiError::Internal(_) => "internal_error",
            ApiError::BudgetExceeded { .. } => "budget_exceeded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TaskHalted { .. } => "task_halted",
            ApiError::CountersUnavailable(_) => "budget_unavailable",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Busy(_) => "overloaded",
            ApiError::Untranslatable(TranslateError::Unsupported { .. }) => "unsupported_feature",
            ApiError::Untranslatable(TranslateError::Invalid(_)) => "invalid_request",
            ApiError::MissingSignature | ApiError::UnknownAccessKey => "invalid_api_key",
            ApiError::SigV4Unavailable(_) => "sigv4_unavailable",
            ApiError::BadSignature(tollgate_providers::sigv4::SigV4Error::Expired(_)) => {
                "signature_expired"
            }
            ApiError::BadSignature(_) => "invalid_signature",
            ApiError::UpstreamStatus { status: 429, .. } => "upstream_rate_limited",
            ApiError::UpstreamStatus { status, .. } if *status < 500 => "upstream_client_error",
            ApiError::UpstreamStatus { .. } => "upstream_server_error",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ApiError::Upstream(e) => e.fault(),
            ApiError::UpstreamMalformed(_) | ApiError::UpstreamStatus { .. } => Fault::Upstream,
            ApiError::Internal(_) | ApiError::CountersUnavailable(_) | ApiError::Busy(_) => {
                Fault::Internal
            }
            _ => Fault::Client,
        }
    }

    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Upstream(e) => e.retryable(),
            ApiError::UpstreamMalformed(_) | ApiError::Internal(_) => true,
            ApiError::RateLimited { .. } | ApiError::CountersUnavailable(_) | ApiError::Busy(_) => {
                true
            }
            ApiError::UpstreamStatus { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The one error → status mapping.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey | ApiError::AdminDisabled(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::ModelNotAllowed(_)
            | ApiError::RouteNotAllowed { .. }
            | ApiError::Forbidden(_)
            | ApiError::MissingSignature
            | ApiError::UnknownAccessKey
            | ApiError::SigV4Unavailable(_)
            | ApiError::BadSignature(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_)
            | ApiError::InvalidParam { .. }
            | ApiError::BodyRead(_)
            | ApiError::Untranslatable(_) => StatusCode::BAD_REQUEST,
            ApiError::UpstreamStatus { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ModelNotFound(_)
            | ApiError::RouteNotFound { .. }
            | ApiError::NotFound(_)
            | ApiError::EndpointNotSupported(_) => StatusCode::NOT_FOUND,
            ApiError::Upstream(ProviderError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream(_) | ApiError::UpstreamMalformed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BudgetExceeded { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TaskHalted { .. } => StatusCode::CONFLICT,
            ApiError::CountersUnavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What kind of failure this is, in the terms every API format has a word for.
    pub fn class(&self) -> ErrorClass {
        if let ApiError::UpstreamStatus { class, .. } = self {
            return *class;
        }
        class_for_status(self.status().as_u16())
    }

    /// Bedrock's `x-amzn-ErrorType` for this error.
    fn bedrock_type(&self) -> &'static str {
        match self {
            ApiError::MissingSignature => "MissingAuthenticationTokenException",
            ApiError::UnknownAccessKey => "UnrecognizedClientException",
            ApiError::BadSignature(_) => "InvalidSignatureException",
            _ => tollgate_providers::bedrock::error_type(self.class()),
        }
    }

    /// Render in the error shape of the API the client called.
    pub fn into_response_as(self, format: Format, request_id: Option<&str>) -> Response {
        let status = self.status();
        let mut resp = match format {
            Format::OpenAi | Format::Responses => return self.into_response(request_id),
            Format::Anthropic => {
                let body =
                    tollgate_providers::anthropic::error_body(self.class(), &self.to_string());
                (status, axum::Json(body)).into_response()
            }
            Format::Bedrock => {
                let body = tollgate_providers::bedrock::error_body(&self.to_string());
                let mut r = (status, axum::Json(body)).into_response();
                r.headers_mut().insert(
                    "x-amzn-errortype",
                    HeaderValue::from_static(self.bedrock_type()),
                );
                if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
                    r.headers_mut().insert("x-amzn-requestid", id);
                }
                r
            }
        };
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            resp.headers_mut().insert(crate::headers::REQUEST_ID, id);
        }
        self.limit_headers(resp.headers_mut());
        resp
    }

    /// OpenAI's `error.type`.
    fn openai_type(&self) -> &'static str {
        if let ApiError::UpstreamStatus { class, .. } = self {
            return tollgate_providers::translate::openai::error_type(*class);
        }
        match self.fault() {
            Fault::Client => match self {
                ApiError::MissingKey | ApiError::InvalidKey | ApiError::AdminDisabled(_) => {
                    "authentication_error"
                }
                ApiError::ModelNotAllowed(_)
                | ApiError::RouteNotAllowed { .. }
                | ApiError::Forbidden(_) => "permission_error",
                ApiError::MissingSignature
                | ApiError::UnknownAccessKey
                | ApiError::SigV4Unavailable(_)
                | ApiError::BadSignature(_) => "authentication_error",
                ApiError::BudgetExceeded { .. } => "insufficient_quota",
                ApiError::RateLimited { .. } => "rate_limit_error",
                _ => "invalid_request_error",
            },
            Fault::Upstream => "upstream_error",
            Fault::Internal => "server_error",
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            ApiError::BadRequest(e) => e.param().map(str::to_string),
            ApiError::Untranslatable(e) => e.param().map(str::to_string),
            ApiError::InvalidParam { param, .. } => Some(param.clone()),
            ApiError::ModelNotFound(_)
            | ApiError::ModelNotAllowed(_)
            | ApiError::RouteNotAllowed { .. } => Some("model".into()),
            _ => None,
        }
    }

    /// Render in OpenAI's error shape: `{"error":{"message","type","param","code"}}`.
    pub fn into_response(self, request_id: Option<&str>) -> Response {
        let status = self.status();
        let body = tollgate_providers::openai::error_body(
            &self.to_string(),
            self.openai_type(),
            self.param().as_deref(),
            Some(self.code()),
        );
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            resp.headers_mut().insert(crate::headers::REQUEST_ID, id);
        }
        self.limit_headers(resp.headers_mut());
        resp
    }

    /// Headers SDKs act on: `retry-after` / `retry-after-ms` and `x-ratelimit-*` on a
    /// rate limit; `x-should-retry` (read by the OpenAI SDKs, which otherwise retry
    /// every 409 and 429) on budget, rate-limit and halted-task refusals.
    fn limit_headers(&self, h: &mut http::HeaderMap) {
        let mut set = |name: &str, v: String| {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                h.insert(n, v);
            }
        };
        match self {
            ApiError::RateLimited {
                kind,
                limit,
                remaining,
                retry_after_ms,
                ..
            } => {
                let ms = (*retry_after_ms).max(1);
                set("retry-after", ((ms + 999) / 1000).to_string());
                set("retry-after-ms", ms.to_string());
                set(&format!("x-ratelimit-limit-{kind}"), limit.to_string());
                set(
                    &format!("x-ratelimit-remaining-{kind}"),
                    remaining.to_string(),
                );
                set(&format!("x-ratelimit-reset-{kind}"), reset_text(ms));
                set("x-should-retry", "true".into());
            }
            ApiError::BudgetExceeded { remaining, .. } => {
                set(crate::headers::BUDGET_REMAINING_USD, remaining.to_string());
                set("x-should-retry", "false".into());
            }
            ApiError::TaskHalted { .. } => set("x-should-retry", "false".into()),
            ApiError::Busy(_) => {
                set("retry-after", "1".into());
                set("x-should-retry", "true".into());
            }
            _ => {}
        }
    }
}

/// A wait as OpenAI writes its `x-ratelimit-reset-*` headers: `120ms`, `1.5s`, `59s`.
fn reset_text(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
            .trim_end_matches('0')
            .to_string()
    }
}

/// The kind of failure an HTTP status says (for errors that carry no more than that).
pub fn class_for_status(status: u16) -> ErrorClass {
    match status {
        401 => ErrorClass::Authentication,
        403 => ErrorClass::Permission,
        404 => ErrorClass::NotFound,
        413 => ErrorClass::TooLarge,
        408 | 504 => ErrorClass::Timeout,
        429 => ErrorClass::RateLimited,
        503 | 529 => ErrorClass::Overloaded,
        400..=499 => ErrorClass::InvalidRequest,
        _ => ErrorClass::Server,
    }
}

/// A store failure is the gateway's own (500 `internal_error`); the message names it.
impl From<tollgate_store::StoreError> for ApiError {
    fn from(e: tollgate_store::StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ApiError::into_response(self, None)
    }
}

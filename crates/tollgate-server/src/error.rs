//! Errors the gateway answers with, and the one place they become HTTP.
//!
//! Every error has a stable `code()` (also the metric label), says whose `fault()` it is
//! and whether the client may retry. [`ApiError::status`] is the only mapping from an
//! error to a status code in tollgate; [`ApiError::into_response`] renders it in the
//! ingress API's own shape so SDKs raise their usual exceptions.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use tollgate_providers::openai::RequestError;
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
    #[error("Forbidden: {0}")]
    Forbidden(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => "invalid_api_key",
            ApiError::AdminDisabled(_) => "admin_disabled",
            ApiError::ModelNotAllowed(_) => "model_not_allowed",
            ApiError::BadRequest(_) | ApiError::InvalidParam { .. } => "invalid_request",
            ApiError::BodyTooLarge(_) => "request_too_large",
            ApiError::BodyRead(_) => "invalid_request",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::RouteNotFound { .. } | ApiError::NotFound(_) => "not_found",
            ApiError::Upstream(e) => e.code(),
            ApiError::UpstreamMalformed(_) => "upstream_error",
            ApiError::Internal(_) => "internal_error",
            ApiError::Forbidden(_) => "forbidden",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ApiError::Upstream(e) => e.fault(),
            ApiError::UpstreamMalformed(_) => Fault::Upstream,
            ApiError::Internal(_) => Fault::Internal,
            _ => Fault::Client,
        }
    }

    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Upstream(e) => e.retryable(),
            ApiError::UpstreamMalformed(_) | ApiError::Internal(_) => true,
            _ => false,
        }
    }

    /// The one error → status mapping.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey | ApiError::AdminDisabled(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::ModelNotAllowed(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) | ApiError::InvalidParam { .. } | ApiError::BodyRead(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ModelNotFound(_) | ApiError::RouteNotFound { .. } | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Upstream(ProviderError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Upstream(_) | ApiError::UpstreamMalformed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn openai_type(&self) -> &'static str {
        match self.fault() {
            Fault::Client => match self {
                ApiError::MissingKey | ApiError::InvalidKey | ApiError::AdminDisabled(_) => {
                    "authentication_error"
                }
                ApiError::ModelNotAllowed(_) | ApiError::Forbidden(_) => "permission_error",
                _ => "invalid_request_error",
            },
            Fault::Upstream => "upstream_error",
            Fault::Internal => "server_error",
        }
    }

    fn param(&self) -> Option<String> {
        match self {
            ApiError::BadRequest(e) => e.param().map(str::to_string),
            ApiError::InvalidParam { param, .. } => Some(param.clone()),
            ApiError::ModelNotFound(_) | ApiError::ModelNotAllowed(_) => Some("model".into()),
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
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ApiError::into_response(self, None)
    }
}

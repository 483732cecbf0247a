//! `POST /v1/messages/count_tokens`: Anthropic's token-counting endpoint, answered by
//! the gateway itself.
//!
//! The request is authenticated like `/v1/messages` (a tollgate key as `x-api-key` or
//! bearer), its model resolved like one (unknown → 404, outside the key's allowlist →
//! 403), and its prompt (system, messages, tools) counted locally with the deployment's
//! tokenizer: `{"input_tokens": N}`. No upstream is called, so nothing is billed and no
//! ledger row is written (like `GET /v1/models`): a count costs nothing and is not a
//! use of a model. Claude's tokenizer is not public; the count is the deployment's
//! encoding's (the one admission uses for its worst case), not Anthropic's exact figure.
//! Errors are in Anthropic's shape.

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::pipeline::identify::read_body;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue};
use std::sync::Arc;
use tollgate_providers::anthropic::CountTokensRequest;
use tollgate_providers::translate::Format;

pub async fn count_tokens(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = gw.pipeline.ids.next();
    match count(&gw, &headers, body).await {
        Ok(n) => {
            let mut r = axum::Json(serde_json::json!({ "input_tokens": n })).into_response();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                r.headers_mut().insert(crate::headers::REQUEST_ID, v);
            }
            r
        }
        Err(e) => e.into_response_as(Format::Anthropic, Some(&request_id)),
    }
}

async fn count(gw: &Arc<Gateway>, headers: &HeaderMap, body: Body) -> Result<u64, ApiError> {
    let key = authenticate(&gw.keys, headers)?;
    let limit = gw.config.load().server.max_body_bytes;
    let (bytes, _permit) = read_body(body, headers, limit, &gw.pipeline.bodies).await?;
    let req = CountTokensRequest::parse(&bytes)?;
    let encoding = {
        let cfg = gw.config.load();
        // A routed name counts with its heaviest tier's tokenizer (the tier a long
        // conversation is most likely to end up on).
        let d = cfg
            .deployments
            .get(&req.model)
            .or_else(|| {
                cfg.routes
                    .get(&req.model)
                    .and_then(|r| r.tiers.get(r.heaviest()))
            })
            .ok_or_else(|| ApiError::ModelNotFound(req.model.clone()))?;
        if !key.allows_model(&req.model) {
            return Err(ApiError::ModelNotAllowed(req.model.clone()));
        }
        d.encoding
    };
    // Tokenising a large prompt is CPU work: off the request threads.
    tokio::task::spawn_blocking(move || {
        encoding.count_anthropic_prompt(req.system.as_ref(), &req.messages, req.tools.as_ref())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))
}

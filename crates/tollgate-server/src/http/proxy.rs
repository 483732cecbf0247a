//! The model endpoints. Each names the API it serves ([`Ingress`]) and hands the
//! request to the [pipeline](crate::pipeline); `GET /v1/models` lists what a key may call.

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::ingress::Ingress;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, Uri};
use serde_json::Value;
use std::sync::Arc;
use tollgate_providers::translate::Format;
use tollgate_store::VirtualKey;

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.pipeline
        .run(Ingress::ChatCompletions, method, uri, headers, body)
        .await
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.pipeline
        .run(Ingress::Embeddings, method, uri, headers, body)
        .await
}

/// `POST /v1/messages` (Anthropic Messages)
pub async fn messages(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.pipeline
        .run(Ingress::Messages, method, uri, headers, body)
        .await
}

/// `POST /v1/responses` (OpenAI Responses)
pub async fn responses(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    gw.pipeline
        .run(Ingress::Responses, method, uri, headers, body)
        .await
}

/// `POST /model/{modelId}/converse` (Bedrock Converse)
pub async fn converse(
    State(gw): State<Arc<Gateway>>,
    Path(model): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ingress = Ingress::Converse {
        model,
        stream: false,
    };
    gw.pipeline.run(ingress, method, uri, headers, body).await
}

/// `POST /model/{modelId}/converse-stream` (Bedrock ConverseStream)
pub async fn converse_stream(
    State(gw): State<Arc<Gateway>>,
    Path(model): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ingress = Ingress::Converse {
        model,
        stream: true,
    };
    gw.pipeline.run(ingress, method, uri, headers, body).await
}

/// `GET /v1/models`: the deployments this key may call, in OpenAI's list shape.
pub async fn list_models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let key = match authenticate(&gw.keys, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(None),
    };
    let data = models(&gw, &key);
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`: one of them, or 404 in OpenAI's shape.
pub async fn get_model(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = match authenticate(&gw.keys, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(None),
    };
    match models(&gw, &key)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
    {
        Some(m) => axum::Json(m).into_response(),
        None => ApiError::ModelNotFound(id).into_response(None),
    }
}

/// APIs the gateway does not serve, answered in the API's own error shape (404) with
/// what to do instead: OpenAI batches and files, Anthropic message batches, the legacy
/// OpenAI completions.
pub async fn not_served(uri: Uri) -> Response {
    let path = uri.path();
    let (format, message) = if path.starts_with("/v1/messages/batches") {
        (
            Format::Anthropic,
            "Message batches (/v1/messages/batches) are not supported through tollgate: it meters, budgets and guards each request as it is answered. Send the requests one by one to /v1/messages, or use Anthropic's batch API directly (outside the gateway's budgets and ledger).",
        )
    } else if path.ends_with("/completions") {
        (
            Format::OpenAi,
            "The legacy Completions API (/v1/completions) is not served by tollgate; use /v1/chat/completions or /v1/responses.",
        )
    } else {
        (
            Format::OpenAi,
            "Batches and files (/v1/batches, /v1/files) are not supported through tollgate: it meters, budgets and guards each request as it is answered. Send the requests one by one to /v1/chat/completions or /v1/responses, or use OpenAI's Batch API directly (outside the gateway's budgets and ledger).",
        )
    };
    ApiError::EndpointNotSupported(message.into()).into_response_as(format, None)
}

/// The models a key may call, as OpenAI model objects.
fn models(gw: &Gateway, key: &VirtualKey) -> Vec<Value> {
    let cfg = gw.config.load();
    let mut data: Vec<Value> = cfg
        .deployments
        .values()
        .filter(|d| key.allows_model(&d.name))
        .map(|d| {
            serde_json::json!({
                "id": d.name,
                "object": "model",
                "created": 0,
                "owned_by": d.upstream.name,
            })
        })
        .collect();
    // Routed names this key's owner may use, with their ladders.
    data.extend(
        cfg.routes
            .values()
            .filter(|r| key.allows_model(&r.name))
            .filter(|r| r.allows(key.team.as_deref(), key.agent.as_deref()))
            .map(|r| {
                serde_json::json!({
                    "id": r.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tollgate-router",
                    "tiers": r.tiers.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
                    "mode": r.mode.as_str(),
                })
            }),
    );
    data
}

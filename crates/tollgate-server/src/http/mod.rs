//! The HTTP layer: routes, and thin handlers that extract, call one thing, and answer.
//!
//! # Layout
//! - [`proxy`]: the model endpoints, each naming its [`Ingress`] for the pipeline;
//!   `GET /v1/models` and `/v1/models/{id}`; the APIs not served (batches, files,
//!   legacy completions) answered with a clear 404 in their own shape.
//! - [`token_count`]: Anthropic's `count_tokens`, answered locally (no upstream, no row).
//! - [`admin`]: usage, keys, ledger rows, budgets, the guard's tasks, alerts, what-if
//!   replay.
//! - [`value`]: ROI, tasks, savings and the dashboard's data.
//! - [`outcomes`]: `POST /v1/tasks/{task_id}/outcome`.
//! - [`dashboard`]: the embedded web dashboard.
//!
//! Admin handlers take the [`Admin`] extractor (the master key, checked in constant
//! time) and return `Result<_, ApiError>`; errors render in OpenAI's shape.
//!
//! [`Ingress`]: crate::ingress::Ingress

pub mod admin;
pub mod dashboard;
pub mod outcomes;
pub mod proxy;
pub mod token_count;
pub mod value;

use crate::error::ApiError;
use crate::gateway::Gateway;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use http::request::Parts;
use std::sync::Arc;

/// A request carrying the master key. Extracting it is the admin API's authentication.
pub struct Admin;

impl FromRequestParts<Arc<Gateway>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Admin, ApiError> {
        gw.master.check(&parts.headers)?;
        Ok(Admin)
    }
}

/// All routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/chat/completions", post(proxy::chat_completions))
        .route("/v1/responses", post(proxy::responses))
        .route("/responses", post(proxy::responses))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/embeddings", post(proxy::embeddings))
        .route("/v1/messages", post(proxy::messages))
        .route("/v1/messages/count_tokens", post(token_count::count_tokens))
        .route("/model/{model_id}/converse", post(proxy::converse))
        .route(
            "/model/{model_id}/converse-stream",
            post(proxy::converse_stream),
        )
        .route("/v1/models", get(proxy::list_models))
        .route("/models", get(proxy::list_models))
        .route("/v1/models/{*id}", get(proxy::get_model))
        .route("/models/{*id}", get(proxy::get_model))
        .route("/v1/completions", any(proxy::not_served))
        .route("/v1/batches", any(proxy::not_served))
        .route("/v1/batches/{*rest}", any(proxy::not_served))
        .route("/v1/files", any(proxy::not_served))
        .route("/v1/files/{*rest}", any(proxy::not_served))
        .route("/v1/messages/batches", any(proxy::not_served))
        .route("/v1/messages/batches/{*rest}", any(proxy::not_served))
        .route("/healthz", get(healthz))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/keys/{id}", delete(admin::revoke_key))
        .route("/admin/requests/{id}", get(admin::request_row))
        .route(
            "/admin/budgets",
            get(admin::list_budgets)
                .put(admin::set_budget)
                .delete(admin::delete_budget),
        )
        .route("/admin/guard", get(admin::list_tasks))
        .route("/admin/guard/{task}", get(admin::show_task))
        .route("/admin/tasks/{task}/release", post(admin::release_task))
        .route("/admin/alerts", get(admin::list_alerts))
        .route("/admin/replay", post(admin::replay))
        .route("/v1/tasks/{task_id}/outcome", post(outcomes::record))
        .route("/admin/roi", get(value::roi))
        .route("/admin/tasks", get(value::tasks))
        .route("/admin/tasks/{task}", get(value::task))
        .route("/admin/savings", get(value::savings))
        .route("/admin/dashboard", get(value::dashboard))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/assets/{name}", get(dashboard::assets))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(gw)
}

async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    let stats = gw.ledger.stats();
    axum::Json(serde_json::json!({
        "status": "ok",
        "ledger": {
            "durability": format!("{:?}", gw.ledger.durability()).to_lowercase(),
            "rows_written": stats.rows_written.load(std::sync::atomic::Ordering::Relaxed),
            "commit_failures": stats.commit_failures.load(std::sync::atomic::Ordering::Relaxed),
            "rows_spooled": stats.rows_spooled.load(std::sync::atomic::Ordering::Relaxed),
            "rows_shipped": stats.rows_shipped.load(std::sync::atomic::Ordering::Relaxed),
        },
        "store": gw.store.kind(),
        "keys": gw.keys.len(),
        "limits": {
            "counters": gw.limits.counters.name(),
            "budgets": gw.limits.rules().len(),
            "tasks_watched": gw.limits.guard.len(),
            "tasks_halted": gw.limits.guard.halted_count(),
        },
        "deployments": gw.config.load().deployments.len(),
        "price_table": gw.config.load().prices.hash(),
    }))
    .into_response()
}

/// `GET /metrics`: the Prometheus text exposition format (unauthenticated, like most
/// scrape targets; it carries no task, request or key ids). `[telemetry] metrics =
/// false` turns it off.
async fn metrics(State(gw): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    if !gw.config.load().telemetry.metrics {
        return Err(ApiError::NotFound(
            "metrics are disabled ([telemetry] metrics = false)".into(),
        ));
    }
    let mut body = gw
        .telemetry
        .metrics
        .render(Some((gw.ledger.stats(), gw.ledger.queued())));
    let st = &gw.limits.stats;
    crate::telemetry::metrics::render_overspend(
        &mut body,
        st.overages.load(std::sync::atomic::Ordering::Relaxed),
        st.overage_nanos.load(std::sync::atomic::Ordering::Relaxed),
        &gw.limits.prompt_corrections(),
    );
    gw.pipeline.response_cache.render_metrics(&mut body);
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

async fn not_found(method: http::Method, uri: http::Uri) -> Response {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response(None)
}

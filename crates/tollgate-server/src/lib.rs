//! tollgate's HTTP server.
//!
//! # The request pipeline
//! Every proxy request, whatever API it came in on (OpenAI, Anthropic, Bedrock), runs
//! [`proxy::pipeline`]: these steps in this order, in one direction; a
//! [`meter::Meter`] created at step 2 guarantees step 9 whatever happens after it.
//! 1. request id
//! 2. auth: virtual key (bearer, `x-api-key`, or AWS SigV4 for Bedrock clients) → key
//!    owner's attribution (401/403 stops here, unmetered)
//! 3. body: read with a size cap (413), parse into a format-tagged request (400)
//! 4. attribution: key owner, then `x-tollgate-*` headers, then body metadata
//! 5. deployment (404/403); a routed model name (`auto`) is scored here and resolved
//!    to a tier's deployment ([`routing::decide`]), so admission prices the tier served
//! 6. admission ([`admission::admit`]): task guard (409), worst-case reservation across
//!    every budget and rate limit (402/429), maybe a clamped `max_tokens`; the meter
//!    settles it on every path
//! 7. upstream call: same format → the body with the model id replaced (`include_usage`
//!    injected for OpenAI streams); another format → translated (400 naming a feature
//!    that cannot be); SigV4-signed for Bedrock
//! 8. response: JSON read whole; streams passed through whole event by whole event
//!    with a usage tee, or translated event by event; errors in the client's shape
//! 9. pricing and ledger: usage × the deployment's rates (exact, rounded up to the
//!    nano-USD); the row is queued (batched) or committed (strict) before the
//!    response's last byte; `x-tollgate-request-id` and `x-tollgate-cost-usd` headers
//!
//! # Layout
//! - [`config`]: raw and validated configuration.
//! - [`state`]: the shared [`state::Gateway`].
//! - [`auth`]: virtual keys and the master key.
//! - [`proxy`]: the endpoints and the one pipeline they run.
//! - [`token_count`]: Anthropic's `count_tokens`, answered locally (no upstream, no row).
//! - [`ingress`]: the APIs served and their format-tagged requests.
//! - [`egress`]: upstream requests (native, translated, signed) and reading answers.
//! - [`meter`]: the always-runs metering step.
//! - [`routing`]: routed model names on the hot path (decision, stickiness, escalation).
//! - [`admin`]: the admin API.
//! - [`admission`]: budgets, rate limits and the task guard before the upstream call;
//!   settlement after it.
//! - [`guard`]: per-task state and halted tasks at run time.
//! - [`alerts`]: Slack-compatible webhook alerts, retried and recorded.
//! - [`outcomes`]: task outcomes (`POST /v1/tasks/{task_id}/outcome`).
//! - [`value`]: ROI, tasks, savings and dashboard data (admin API).
//! - [`dashboard`]: the embedded web dashboard.
//! - [`telemetry`]: what each settled request feeds: [`metrics`] (Prometheus) and
//!   [`otel`] (OTLP traces).
//! - [`error`]: errors and their single mapping to HTTP.

pub mod admin;
pub mod admission;
pub mod alerts;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod egress;
pub mod error;
pub mod guard;
pub mod headers;
pub mod ingress;
pub mod meter;
pub mod metrics;
pub mod otel;
pub mod outcomes;
pub mod proxy;
pub mod routing;
pub mod state;
pub mod telemetry;
pub mod token_count;
pub mod value;

use crate::auth::{KeyCache, MasterKey};
use crate::config::Config;
use crate::error::ApiError;
use crate::state::{Gateway, RequestIds, now_ms};
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_providers::{ClientConfig, ProviderError, UpstreamClient};
use tollgate_store::{LedgerConfig, LedgerWriter, SecretSealer, SqliteStore, StoreError};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Counters(#[from] tollgate_store::counters::CounterError),
}

/// How often keys are reloaded from the store.
const KEY_REFRESH: Duration = Duration::from_secs(2);

/// Open the store, start the ledger writer and build the gateway state.
pub fn build(config: Config) -> Result<(Arc<Gateway>, LedgerWriter), ServerError> {
    let store = SqliteStore::open(&config.ledger.path)?;
    store.register_price_table(
        config.prices.hash(),
        &config.prices.sources,
        config.prices.len(),
        now_ms(),
    )?;
    let (ledger, writer) = store.start_ledger(&LedgerConfig {
        durability: config.ledger.durability,
        channel_capacity: config.ledger.channel_capacity,
        ..LedgerConfig::default()
    })?;
    let keys = KeyCache::default();
    keys.replace(store.list_keys()?);
    let client = UpstreamClient::new(&ClientConfig::default())?;
    let master = MasterKey::new(
        config.server.master_key.as_ref(),
        &config.server.master_key_env,
    );
    let limits = admission::Limits::new(&config, &store)?;
    let sealer = config
        .server
        .master_key
        .as_ref()
        .and_then(|k| SecretSealer::new(secrecy::ExposeSecret::expose_secret(k)))
        .map(Arc::new);
    let telemetry = telemetry::Telemetry::new(&config.telemetry);
    let routing = routing::RoutingState::new(config.routing.sticky_conversations);
    let gw = Arc::new(Gateway {
        routing,
        telemetry,
        config: ArcSwap::from_pointee(config),
        keys,
        master,
        sealer,
        ledger,
        store,
        client,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        ids: RequestIds::new(),
        limits,
    });
    Ok((gw, writer))
}

/// All routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/chat/completions", post(proxy::chat_completions))
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
        .route("/v1/tasks/{task_id}/outcome", post(outcomes::record))
        .route("/admin/roi", get(value::roi))
        .route("/admin/tasks", get(value::tasks))
        .route("/admin/tasks/{task}", get(value::task))
        .route("/admin/savings", get(value::savings))
        .route("/admin/dashboard", get(value::dashboard))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/assets/{name}", get(dashboard::assets))
        .route("/metrics", get(telemetry::metrics_endpoint))
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
        },
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

async fn not_found(method: http::Method, uri: http::Uri) -> Response {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response(None)
}

/// Serve on `listener` until `shutdown` resolves, then drain: stop accepting, let
/// in-flight requests finish (up to the configured grace), wait for background tasks,
/// and flush the ledger.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (gw, writer) = build(config)?;
    serve(listener, gw, writer, shutdown).await
}

/// [`run`] with state built by [`build`] (the demo and tests keep a handle on it).
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    writer: LedgerWriter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let refresher = {
        let gw = gw.clone();
        gw.clone().tasks.spawn(async move {
            // Once at startup too: with Redis counters this writes back halts this
            // replica's store holds and Redis lost, before the first refresh period.
            if let Err(e) = admission::refresh(&gw).await {
                tracing::warn!(error = %e, "refreshing budgets and halted tasks failed");
            }
            loop {
                tokio::select! {
                    _ = gw.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(KEY_REFRESH) => {}
                }
                let store = gw.store.clone();
                if let Ok(Ok(keys)) = tokio::task::spawn_blocking(move || store.list_keys()).await {
                    gw.keys.replace(keys);
                }
                if let Err(e) = admission::refresh(&gw).await {
                    tracing::warn!(error = %e, "refreshing budgets and halted tasks failed");
                }
            }
        })
    };
    gw.telemetry.start(&gw.tasks, gw.client.clone(), {
        let cfg = gw.config.load();
        cfg.upstreams
            .values()
            .map(|u| (u.name.clone(), u.kind.provider_name().to_string()))
            .collect()
    });
    let app = router(gw.clone());
    let grace = gw.config.load().server.shutdown_grace;
    let stop = gw.shutdown.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let result = {
        let server = axum::serve(listener, app)
            .with_graceful_shutdown({
                let stop = stop.clone();
                async move {
                    tokio::select! {
                        _ = shutdown => {}
                        _ = stop.cancelled() => {}
                    }
                    stop.cancel();
                }
            })
            .into_future();
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => r,
            _ = async {
                stop.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("shutdown grace of {grace:?} elapsed; closing remaining connections");
                Ok(())
            }
        }
        // The server future (and the router's state it holds) is dropped here.
    };
    stop.cancel();
    let _ = refresher.await;
    // No more requests: let the span exporter flush what is queued and stop.
    gw.telemetry.close();
    gw.tasks.close();
    gw.tasks.wait().await;
    drop(gw);
    // Every ledger handle is gone once the server's state is: the writer drains and
    // stops. Connections still open past the grace hold a handle; wait a bounded time.
    let join = tokio::task::spawn_blocking(move || writer.join());
    if tokio::time::timeout(grace.max(Duration::from_secs(5)), join)
        .await
        .is_err()
    {
        tracing::error!("the ledger writer did not stop in time; connections are still open");
    }
    result.map_err(ServerError::Io)
}

//! tollgate's HTTP server.
//!
//! The request path is [`pipeline`]: nine stages in one direction, listed with the
//! request context's fields (who writes, who reads) at the top of that module.
//!
//! # Layout
//! Modules import downwards only, layer by layer (a test, `tests/layout.rs`, reads the
//! source and fails on a cycle or on a component that reaches for the gateway):
//! 1. This file: startup and shutdown ([`run`], [`serve`]).
//! 2. [`http`]: routes and thin handlers (proxy endpoints, admin API, outcomes, the
//!    dashboard, `/metrics`, `/healthz`).
//! 3. [`gateway`]: the shared [`Gateway`] (every component, built once) and the
//!    [`pipeline::Pipeline`] over them.
//! 4. [`pipeline`]: the request stages and the [`pipeline::RequestCtx`]; the final
//!    stage, [`pipeline::meter`], always runs.
//! 5. Components, which receive the handles they need and never the gateway:
//!    [`limits`] (budgets, rate limits, the runaway-agent guard, settlement),
//!    [`alerts`] (webhook alerts), [`telemetry`] (Prometheus metrics, OTLP spans),
//!    [`routing`] (routed model names), [`auth`] (virtual keys, the master key),
//!    [`prompt_cache`] (breakpoints where provider caching pays), [`response_cache`]
//!    (answers replayed, exactly or by a similar last turn), [`conversations`] (recent
//!    Responses answers for `previous_response_id`), [`replay`] (what-if replay of
//!    the ledger under another policy, paged from the store), [`ingress`] (what clients send), [`upstream`] (what goes upstream and how
//!    answers are read), [`tokens`] (local token counts), [`views`] (the JSON shapes
//!    the admin API and the CLI share).
//! 6. Leaves: [`config`] (raw and validated configuration, one file per section),
//!    [`error`] (errors and their one mapping to HTTP), [`headers`], [`clock`].

pub mod alerts;
pub mod auth;
pub mod clock;
pub mod config;
pub mod conversations;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod http;
pub mod ingress;
pub mod limits;
pub mod pipeline;
pub mod prompt_cache;
pub mod replay;
pub mod response_cache;
pub mod routing;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod views;

pub use gateway::{Gateway, ServerError, build};
pub use http::router;

use crate::config::Config;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tollgate_store::LedgerWriter;

/// How often keys are reloaded from the store.
const KEY_REFRESH: Duration = Duration::from_secs(2);

/// Serve on `listener` until `shutdown` resolves, then drain: stop accepting, let
/// in-flight requests finish (up to the configured grace), wait for background tasks,
/// and flush the ledger.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (gw, writer) = build(config).await?;
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
            if let Err(e) = gw.refresh_limits().await {
                tracing::warn!(error = %e, "refreshing budgets and halted tasks failed");
            }
            loop {
                tokio::select! {
                    _ = gw.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(KEY_REFRESH) => {}
                }
                if let Ok(keys) = tollgate_store::KeyStore::list_keys(&gw.store).await {
                    gw.keys.replace(keys);
                }
                if let Err(e) = gw.refresh_limits().await {
                    tracing::warn!(error = %e, "refreshing budgets and halted tasks failed");
                }
            }
        })
    };
    // With Redis counters: renew this replica's reservation leases every third of a
    // lease, on their own loop (a slow store refresh must not let them lapse).
    let renewer = {
        let gw = gw.clone();
        gw.clone().tasks.spawn(async move {
            loop {
                let every = Duration::from_millis(
                    (gw.config.load().limits.lease_ms / 3).clamp(500, 60_000) as u64,
                );
                tokio::select! {
                    _ = gw.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let cfg = gw.config.load_full();
                gw.limits.renew_leases(&cfg.limits).await;
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
    let app = http::router(gw.clone());
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
    let _ = renewer.await;
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

//! The gateway's shared state.

use crate::auth::{KeyCache, MasterKey};
use crate::config::Config;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_providers::UpstreamClient;
use tollgate_store::{Ledger, SecretSealer, SqliteStore};

/// Everything a request handler needs. One per server, shared behind an `Arc`.
pub struct Gateway {
    /// Swapped whole on reload, so a request sees one consistent config.
    pub config: ArcSwap<Config>,
    pub keys: KeyCache,
    pub master: MasterKey,
    /// Opens sealed key secrets for SigV4 verification; `None` without a master key.
    pub sealer: Option<Arc<SecretSealer>>,
    pub ledger: Ledger,
    pub store: SqliteStore,
    pub client: UpstreamClient,
    /// Every background task the server starts, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub ids: RequestIds,
    /// Budgets, rate limits and the runaway-agent guard.
    pub limits: crate::admission::Limits,
    /// Metrics and trace spans fed by every settled request.
    pub telemetry: crate::telemetry::Telemetry,
    /// Tiered routing's per-conversation tiers (stickiness).
    pub routing: crate::routing::RoutingState,
}

/// Request ids: a random per-process prefix and a counter, unique across restarts and
/// replicas without coordination.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            prefix: format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("req_{}{:08x}", self.prefix, n)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

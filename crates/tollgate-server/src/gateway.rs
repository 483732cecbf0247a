//! The gateway's shared state: every component, built once at startup, and the
//! request [`Pipeline`] over them. Only the HTTP layer and the server's startup see
//! the [`Gateway`]; stages and components receive the handles they need.

use crate::alerts::Alerts;
use crate::auth::{KeyCache, MasterKey};
use crate::clock::now_ms;
use crate::config::Config;
use crate::config::store::StoreSettings;
use crate::limits::{Limits, LimitsError};
use crate::pipeline::{BodyBudget, Pipeline, RequestIds, Settlement};
use crate::prompt_cache::PromptCache;
use crate::response_cache::ResponseCache;
use crate::routing::RoutingState;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_providers::{ClientConfig, ProviderError, UpstreamClient};
use tollgate_store::{
    KeyStore, Ledger, LedgerConfig, LedgerStore, LedgerWriter, PriceTableStore, SecretSealer,
    Store, StoreError,
};

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
    #[error("cache: {0}")]
    Cache(String),
}

impl From<LimitsError> for ServerError {
    fn from(e: LimitsError) -> ServerError {
        match e {
            LimitsError::Store(e) => ServerError::Store(e),
            LimitsError::Counters(e) => ServerError::Counters(e),
        }
    }
}

/// Everything the server has. One per server, shared behind an `Arc`.
pub struct Gateway {
    /// Swapped whole on reload, so a request sees one consistent config.
    pub config: Arc<ArcSwap<Config>>,
    pub keys: Arc<KeyCache>,
    pub master: MasterKey,
    /// Opens sealed key secrets for SigV4 verification; `None` without a master key.
    pub sealer: Option<Arc<SecretSealer>>,
    pub ledger: Ledger,
    /// The ledger and everything beside it: SQLite, or PostgreSQL shared by replicas.
    pub store: Store,
    pub client: UpstreamClient,
    /// Every background task the server starts, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Budgets, rate limits and the runaway-agent guard.
    pub limits: Arc<Limits>,
    pub alerts: Arc<Alerts>,
    /// Metrics and trace spans fed by every settled request.
    pub telemetry: Arc<Telemetry>,
    /// Tiered routing's per-conversation tiers (stickiness).
    pub routing: Arc<RoutingState>,
    /// The request path.
    pub pipeline: Pipeline,
}

/// Open the store (migrating it), start the ledger writer and build the gateway state.
pub async fn build(config: Config) -> Result<(Arc<Gateway>, LedgerWriter), ServerError> {
    let store = Store::open(&config.store).await?;
    store
        .register_price_table(
            config.prices.hash(),
            &config.prices.sources,
            config.prices.len(),
            now_ms(),
        )
        .await?;
    let (ledger, writer) = store.start_ledger(&LedgerConfig {
        durability: config.ledger.durability,
        channel_capacity: config.ledger.channel_capacity,
        replica: match &config.store {
            StoreSettings::Postgres(p) => p.replica.clone(),
            StoreSettings::Sqlite { .. } => None,
        },
        ..LedgerConfig::default()
    })?;
    let keys = Arc::new(KeyCache::default());
    keys.replace(store.list_keys().await?);
    let client = UpstreamClient::new(&ClientConfig::default())?;
    let master = MasterKey::new(
        config.server.master_key.as_ref(),
        &config.server.master_key_env,
    );
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let alerts = Arc::new(Alerts::new(
        &config.limits.alerts,
        store.clone(),
        client.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    let limits =
        Arc::new(Limits::new(&config.limits, store.clone(), alerts.clone(), tasks.clone()).await?);
    let sealer = config
        .server
        .master_key
        .as_ref()
        .and_then(|k| SecretSealer::new(secrecy::ExposeSecret::expose_secret(k)))
        .map(Arc::new);
    let telemetry = Arc::new(Telemetry::new(&config.telemetry));
    let routing = Arc::new(RoutingState::new(config.routing.sticky_conversations));
    let config = Arc::new(ArcSwap::from_pointee(config));
    let settlement = Arc::new(Settlement {
        ledger: ledger.clone(),
        alerts: alerts.clone(),
        suspect_alerted: std::sync::Mutex::new(std::collections::HashMap::new()),
        limits: limits.clone(),
        routing: routing.clone(),
        telemetry: telemetry.clone(),
        tasks: tasks.clone(),
    });
    let now = now_ms();
    let prompt_cache = Arc::new(
        PromptCache::new(config.load().cache.prefixes_tracked).map_err(ServerError::Cache)?,
    );
    // Always built: even with every policy off, `x-tollgate-cache: on` may ask for it.
    let response_cache =
        Arc::new(ResponseCache::open(&config.load().cache, now).map_err(ServerError::Cache)?);
    let pipeline = Pipeline {
        config: config.clone(),
        keys: keys.clone(),
        sealer: sealer.clone(),
        ids: RequestIds::new(),
        bodies: BodyBudget::new(config.load().server.max_body_bytes_in_flight),
        routing: routing.clone(),
        limits: limits.clone(),
        client: client.clone(),
        telemetry: telemetry.clone(),
        settlement,
        prompt_cache,
        response_cache,
        conversations: Arc::new(crate::conversations::Conversations::default()),
    };
    let gw = Arc::new(Gateway {
        config,
        keys,
        master,
        sealer,
        ledger,
        store,
        client,
        tasks,
        shutdown,
        limits,
        alerts,
        telemetry,
        routing,
        pipeline,
    });
    Ok((gw, writer))
}

impl Gateway {
    /// Re-read run-time budgets and halted tasks (periodically, and after an admin
    /// change).
    pub async fn refresh_limits(&self) -> Result<(), crate::error::ApiError> {
        let cfg = self.config.load_full();
        self.limits.refresh(&cfg.limits).await
    }
}

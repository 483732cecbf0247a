//! tollgate's persistence.
//!
//! # Layout
//! - [`db`]: the seam. One small async trait per store concern ([`db::LedgerStore`],
//!   [`db::KeyStore`], [`db::BudgetStore`], [`db::TaskStore`], [`db::OutcomeStore`],
//!   [`db::ReportStore`], [`db::PriceTableStore`]), the backends side by side
//!   ([`SqliteStore`] here, [`db::postgres::PostgresStore`]), and [`Store`], the one
//!   delegating type that config picks (`[store] kind = "sqlite" | "postgres"`,
//!   [`config`]).
//! - [`sqlite`]: the embedded default database (one file, WAL), connections, migrations.
//! - [`ledger`]: the batched, group-committed ledger writer ([`Ledger`] handle,
//!   [`LedgerWriter`] thread) and row queries.
//! - [`keys`]: virtual keys (hashed secrets).
//! - [`report`]: usage reports grouped by a dimension.
//! - [`response_cache`]: the response cache's file (entries kept across restarts).
//! - [`counters`]: budget and rate-limit counters (in memory, or Redis for replicas).
//! - [`budgets`]: budgets set through the admin API / CLI, and spend per period from the
//!   ledger (what rebuilds the counters after a restart).
//! - [`tasks`]: halted tasks, incidents and alert deliveries.
//! - [`outcomes`]: task outcomes and their history.
//! - [`reconcile`]: the ledger summed for `tollgate reconcile` (per day × model × key ×
//!   price-table hash).
//! - [`value`]: ROI, per-task summaries, savings by mechanism, spend series, exports.
//!
//! The SQLite methods on [`SqliteStore`] are synchronous (the binary's one-shot commands
//! call them directly); the traits wrap them on tokio's blocking pool, so async callers
//! holding a [`Store`] never write `spawn_blocking` themselves.

pub mod budgets;
pub mod config;
pub mod counters;
pub mod db;
pub mod keys;
pub mod ledger;
pub mod outcomes;
pub mod reconcile;
pub mod report;
pub mod response_cache;
pub mod sqlite;
pub mod tasks;
pub mod value;

pub use db::{
    BudgetStore, KeyStore, LedgerStore, OutcomeStore, PriceTableStore, ReportStore, Store,
    TaskStore,
};
pub use keys::{NewKey, SecretSealer, VirtualKey};
pub use ledger::{
    Durability, Ledger, LedgerConfig, LedgerCursor, LedgerPage, LedgerStats, LedgerWriter,
};
pub use sqlite::SqliteStore;

/// Errors from the store. The server maps them all to a 500 `internal_error`; the
/// binary prints them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// PostgreSQL did not answer in time (connecting, or a pool with every connection
    /// busy).
    #[error("postgresql: {0}")]
    PostgresTimeout(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "database schema version {found} is newer than this tollgate knows ({known}); upgrade tollgate"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// A stored value this version cannot read back (a sum past `i64`, a bad name).
    #[error("store: {0}")]
    Invalid(String),
    /// The blocking task running a SQLite call panicked or was cancelled.
    #[error("store task: {0}")]
    Task(String),
}

impl StoreError {
    /// Stable snake_case code (also the metric label).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "store_error",
            StoreError::Postgres(_) => "store_postgres_error",
            StoreError::PostgresTimeout(_) => "store_postgres_timeout",
            StoreError::Io { .. } => "store_io_error",
            StoreError::SchemaTooNew { .. } => "store_schema_too_new",
            StoreError::Invalid(_) => "store_invalid_data",
            StoreError::Task(_) => "store_task_failed",
        }
    }

    /// Whether trying again later may succeed (the database was unreachable or busy),
    /// as opposed to a request it will always refuse.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            StoreError::PostgresTimeout(_) | StoreError::Task(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

//! tollgate's persistence.
//!
//! # Layout
//! - [`sqlite`]: the embedded default database (one file, WAL), connections, migrations.
//! - [`ledger`]: the batched, group-committed ledger writer ([`Ledger`] handle,
//!   [`LedgerWriter`] thread) and row queries.
//! - [`keys`]: virtual keys (hashed secrets).
//! - [`report`]: usage reports grouped by a dimension.
//! - [`counters`]: budget and rate-limit counters (in memory, or Redis for replicas).
//! - [`budgets`]: budgets set through the admin API / CLI, and spend per period from the
//!   ledger (what rebuilds the counters after a restart).
//! - [`tasks`]: halted tasks, incidents and alert deliveries.
//! - [`outcomes`]: task outcomes and their history.
//! - [`reconcile`]: the ledger summed for `tollgate reconcile` (per day × model × key ×
//!   price-table hash).
//! - [`value`]: ROI, per-task summaries, savings by mechanism, spend series, exports.

pub mod budgets;
pub mod counters;
pub mod keys;
pub mod ledger;
pub mod outcomes;
pub mod reconcile;
pub mod report;
pub mod sqlite;
pub mod tasks;
pub mod value;

pub use keys::{NewKey, SecretSealer, VirtualKey};
pub use ledger::{Durability, Ledger, LedgerConfig, LedgerStats, LedgerWriter};
pub use sqlite::SqliteStore;

/// Errors from the store. The server maps them all to a 500 `internal_error`; the
/// binary prints them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "database schema version {found} is newer than this tollgate knows ({known}); upgrade tollgate"
    )]
    SchemaTooNew { found: i64, known: i64 },
}

impl StoreError {
    /// Stable snake_case code (also the metric label).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Sqlite(_) => "store_error",
            StoreError::Io { .. } => "store_io_error",
            StoreError::SchemaTooNew { .. } => "store_schema_too_new",
        }
    }
}

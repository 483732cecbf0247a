//! The store seam: one small async trait per concern, the backends side by side, and
//! [`Store`], the one delegating type the configuration picks.
//!
//! # Layout
//! - this file: the traits and [`Store`].
//! - [`sqlite`]: the traits for [`SqliteStore`]: its synchronous methods run on tokio's
//!   blocking pool, so an async caller never blocks a worker thread.
//! - [`postgres`]: [`postgres::PostgresStore`]: migrations, monthly ledger partitions,
//!   a connection pool for queries, and the ledger writer with its local spool.
//!
//! Every backend keeps the same contract (one suite, `contract.rs`, runs against
//! SQLite always and PostgreSQL when `TOLLGATE_TEST_POSTGRES_URL` is set): the same
//! rows in give the same integers out.
//!
//! Methods return `impl Future + Send` (not `async fn`) so the futures are `Send` for
//! tokio; implementations write `async fn`.

pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod contract;

use crate::config::StoreSettings;
use crate::counters::KnownHalt;
use crate::keys::{NewKey, SecretSealer, VirtualKey};
use crate::ledger::{LedgerConfig, LedgerCursor, LedgerPage, ReplicaSequence, StoredSample};
use crate::outcomes::{Recorded, StoredOutcome, TaskParty};
use crate::tasks::{AlertRecord, Incident, NewIncident, TaskRecord, TaskUsage};
use crate::value::{HourlyUsage, SpendPoint};
use crate::{Ledger, LedgerWriter, SqliteStore, StoreError};
use postgres::PostgresStore;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use tollgate_domain::budget::{BudgetRule, Period, ScopeSpec};
use tollgate_domain::ledger::LedgerRow;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::TaskOutcome;
use tollgate_domain::report::{GroupBy, UsageReport};
use tollgate_domain::value::{RoiReport, SavingsReport, TaskSummary};

type R<T> = Result<T, StoreError>;

/// The ledger: the batched writer, and rows by request id.
pub trait LedgerStore {
    /// Start the batched writer (its own thread). The handle and the writer are the same
    /// types for every backend: `record` never drops a row, strict mode waits for it to
    /// be durable, and [`LedgerWriter::join`] returns once everything queued is written
    /// (PostgreSQL: or safely in the spool, shipped at the next start).
    fn start_ledger(&self, cfg: &LedgerConfig) -> R<(Ledger, LedgerWriter)>;
    /// Write rows directly, outside the writer (imports, tests). A request id already
    /// present is skipped. Returns how many rows were new.
    fn insert_rows(&self, rows: Vec<LedgerRow>) -> impl Future<Output = R<u64>> + Send;
    fn ledger_row(&self, request_id: &str) -> impl Future<Output = R<Option<LedgerRow>>> + Send;
    /// Rows in `[since_ms, until_ms)`, oldest first, at most `limit`.
    fn ledger_rows(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> impl Future<Output = R<Vec<LedgerRow>>> + Send;
    /// One page of rows in `[since_ms, until_ms)` after `after`, oldest first, at most
    /// `limit`: keyset paging, so reading a month of rows page by page stays linear.
    fn ledger_page(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<LedgerCursor>,
        limit: usize,
    ) -> impl Future<Output = R<LedgerPage>> + Send;
    fn ledger_count(&self) -> impl Future<Output = R<u64>> + Send;
    /// Every writer stream with rows in `[since_ms, until_ms)` and the numbers missing
    /// from it (the gap report).
    fn ledger_sequences(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<Vec<ReplicaSequence>>> + Send;
}

/// Virtual keys.
pub trait KeyStore {
    /// Create a key (sealed by `sealer` when given, for SigV4); returns its record and
    /// the secret, shown once.
    fn create_key(
        &self,
        new: &NewKey,
        now_ms: i64,
        sealer: Option<&SecretSealer>,
    ) -> impl Future<Output = R<(VirtualKey, String)>> + Send;
    fn list_keys(&self) -> impl Future<Output = R<Vec<VirtualKey>>> + Send;
    fn revoke_key(&self, id: &str, now_ms: i64) -> impl Future<Output = R<bool>> + Send;
}

/// Run-time budgets, and spend per scope and period from the ledger (what seeds the
/// counters).
pub trait BudgetStore {
    fn upsert_budget(&self, rule: &BudgetRule, now_ms: i64) -> impl Future<Output = R<()>> + Send;
    fn delete_budget(
        &self,
        scope: &ScopeSpec,
        period: Period,
    ) -> impl Future<Output = R<bool>> + Send;
    fn list_budgets(&self) -> impl Future<Output = R<Vec<BudgetRule>>> + Send;
    fn spend_by_scope(
        &self,
        spec: &ScopeSpec,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> impl Future<Output = R<Vec<(String, Money)>>> + Send;
}

/// The guard's records: halts (own and shared), incidents, releases, alert deliveries,
/// and per-task usage.
pub trait TaskStore {
    fn record_incident(
        &self,
        incident: &NewIncident<'_>,
        now_ms: i64,
    ) -> impl Future<Output = R<i64>> + Send;
    fn record_shared_halt(&self, halt: &KnownHalt) -> impl Future<Output = R<bool>> + Send;
    fn release_task(&self, task: &str, now_ms: i64) -> impl Future<Output = R<bool>> + Send;
    fn halted_tasks(&self) -> impl Future<Output = R<Vec<TaskRecord>>> + Send;
    fn guarded_tasks(&self, limit: usize) -> impl Future<Output = R<Vec<TaskRecord>>> + Send;
    fn task_record(&self, task: &str) -> impl Future<Output = R<Option<TaskRecord>>> + Send;
    fn incidents(
        &self,
        task: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = R<Vec<Incident>>> + Send;
    fn task_usage(
        &self,
        task: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> impl Future<Output = R<Vec<TaskUsage>>> + Send;
    fn insert_alert(
        &self,
        kind: &str,
        subject: &str,
        text: &str,
        payload: &Value,
        status: &str,
        now_ms: i64,
    ) -> impl Future<Output = R<i64>> + Send;
    fn update_alert(
        &self,
        id: i64,
        status: &str,
        attempts: u32,
        last_error: Option<&str>,
        delivered_ms: Option<i64>,
    ) -> impl Future<Output = R<()>> + Send;
    fn alerts(
        &self,
        subject: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = R<Vec<AlertRecord>>> + Send;
}

/// Task outcomes and their history.
pub trait OutcomeStore {
    fn record_outcome(
        &self,
        outcome: &TaskOutcome,
        recorded_by: &str,
        now_ms: i64,
    ) -> impl Future<Output = R<Recorded>> + Send;
    fn task_outcome(&self, task: &str) -> impl Future<Output = R<Option<StoredOutcome>>> + Send;
    fn outcome_history(&self, task: &str) -> impl Future<Output = R<Vec<StoredOutcome>>> + Send;
    fn outcomes_in_window(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<BTreeMap<String, StoredOutcome>>> + Send;
    fn task_parties(&self, task: &str) -> impl Future<Output = R<Vec<TaskParty>>> + Send;
}

/// Reports and views over the ledger: usage by dimension, ROI, tasks, savings, spend
/// series, the hourly export rows, and routing samples for `router train --from-ledger`.
pub trait ReportStore {
    fn usage_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<UsageReport>> + Send;
    fn roi_report(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<RoiReport>> + Send;
    fn task_summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> impl Future<Output = R<Vec<TaskSummary>>> + Send;
    fn task_summary(&self, task: &str) -> impl Future<Output = R<Option<TaskSummary>>> + Send;
    fn savings_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<SavingsReport>> + Send;
    fn spend_series(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> impl Future<Output = R<Vec<SpendPoint>>> + Send;
    fn ledger_span(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<Option<(i64, i64)>>> + Send;
    fn hourly_usage(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = R<Vec<HourlyUsage>>> + Send;
    fn route_samples(&self) -> impl Future<Output = R<Vec<StoredSample>>> + Send;
}

/// Which price tables priced rows (hash → sources).
pub trait PriceTableStore {
    fn register_price_table(
        &self,
        hash: &str,
        sources: &[String],
        models: usize,
        now_ms: i64,
    ) -> impl Future<Output = R<()>> + Send;
}

/// The store in use: SQLite (one file per replica) or PostgreSQL (one ledger for every
/// replica). Cheap to clone; every trait above delegates to the backend.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Open the configured backend and bring its schema up to date (SQLite: create the
    /// file; PostgreSQL: connect, migrate, create the ledger partitions ahead).
    pub async fn open(settings: &StoreSettings) -> R<Store> {
        match settings {
            StoreSettings::Sqlite { path } => {
                let path = path.clone();
                let s = tokio::task::spawn_blocking(move || SqliteStore::open(path))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))??;
                Ok(Store::Sqlite(s))
            }
            StoreSettings::Postgres(p) => Ok(Store::Postgres(PostgresStore::open(p).await?)),
        }
    }

    /// `tollgate migrate`: apply pending migrations and return the schema version.
    pub async fn migrate(settings: &StoreSettings) -> R<i64> {
        match Store::open(settings).await? {
            Store::Sqlite(_) => Ok(crate::sqlite::SCHEMA_VERSION),
            Store::Postgres(p) => p.schema_version().await,
        }
    }

    /// `sqlite` or `postgres` (for `/healthz` and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Store::Sqlite(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Store {
        Store::Sqlite(s)
    }
}

impl From<PostgresStore> for Store {
    fn from(s: PostgresStore) -> Store {
        Store::Postgres(s)
    }
}

/// `match` the backend and call the same trait method on it (the traits, not
/// `SqliteStore`'s synchronous methods of the same names).
macro_rules! delegate {
    ($self:ident, $tr:ident :: $m:ident ( $($a:expr),* )) => {
        match $self {
            Store::Sqlite(s) => $tr::$m(s, $($a),*).await,
            Store::Postgres(p) => $tr::$m(p, $($a),*).await,
        }
    };
}

impl LedgerStore for Store {
    fn start_ledger(&self, cfg: &LedgerConfig) -> R<(Ledger, LedgerWriter)> {
        match self {
            Store::Sqlite(s) => SqliteStore::start_ledger(s, cfg),
            Store::Postgres(p) => LedgerStore::start_ledger(p, cfg),
        }
    }
    async fn insert_rows(&self, rows: Vec<LedgerRow>) -> R<u64> {
        delegate!(self, LedgerStore::insert_rows(rows))
    }
    async fn ledger_row(&self, request_id: &str) -> R<Option<LedgerRow>> {
        delegate!(self, LedgerStore::ledger_row(request_id))
    }
    async fn ledger_rows(&self, since_ms: i64, until_ms: i64, limit: usize) -> R<Vec<LedgerRow>> {
        delegate!(self, LedgerStore::ledger_rows(since_ms, until_ms, limit))
    }
    async fn ledger_page(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<LedgerCursor>,
        limit: usize,
    ) -> R<LedgerPage> {
        delegate!(
            self,
            LedgerStore::ledger_page(since_ms, until_ms, after, limit)
        )
    }
    async fn ledger_count(&self) -> R<u64> {
        delegate!(self, LedgerStore::ledger_count())
    }
    async fn ledger_sequences(&self, since_ms: i64, until_ms: i64) -> R<Vec<ReplicaSequence>> {
        delegate!(self, LedgerStore::ledger_sequences(since_ms, until_ms))
    }
}

impl KeyStore for Store {
    async fn create_key(
        &self,
        new: &NewKey,
        now_ms: i64,
        sealer: Option<&SecretSealer>,
    ) -> R<(VirtualKey, String)> {
        delegate!(self, KeyStore::create_key(new, now_ms, sealer))
    }
    async fn list_keys(&self) -> R<Vec<VirtualKey>> {
        delegate!(self, KeyStore::list_keys())
    }
    async fn revoke_key(&self, id: &str, now_ms: i64) -> R<bool> {
        delegate!(self, KeyStore::revoke_key(id, now_ms))
    }
}

impl BudgetStore for Store {
    async fn upsert_budget(&self, rule: &BudgetRule, now_ms: i64) -> R<()> {
        delegate!(self, BudgetStore::upsert_budget(rule, now_ms))
    }
    async fn delete_budget(&self, scope: &ScopeSpec, period: Period) -> R<bool> {
        delegate!(self, BudgetStore::delete_budget(scope, period))
    }
    async fn list_budgets(&self) -> R<Vec<BudgetRule>> {
        delegate!(self, BudgetStore::list_budgets())
    }
    async fn spend_by_scope(
        &self,
        spec: &ScopeSpec,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> R<Vec<(String, Money)>> {
        delegate!(self, BudgetStore::spend_by_scope(spec, since_ms, until_ms))
    }
}

impl TaskStore for Store {
    async fn record_incident(&self, incident: &NewIncident<'_>, now_ms: i64) -> R<i64> {
        delegate!(self, TaskStore::record_incident(incident, now_ms))
    }
    async fn record_shared_halt(&self, halt: &KnownHalt) -> R<bool> {
        delegate!(self, TaskStore::record_shared_halt(halt))
    }
    async fn release_task(&self, task: &str, now_ms: i64) -> R<bool> {
        delegate!(self, TaskStore::release_task(task, now_ms))
    }
    async fn halted_tasks(&self) -> R<Vec<TaskRecord>> {
        delegate!(self, TaskStore::halted_tasks())
    }
    async fn guarded_tasks(&self, limit: usize) -> R<Vec<TaskRecord>> {
        delegate!(self, TaskStore::guarded_tasks(limit))
    }
    async fn task_record(&self, task: &str) -> R<Option<TaskRecord>> {
        delegate!(self, TaskStore::task_record(task))
    }
    async fn incidents(&self, task: Option<&str>, limit: usize) -> R<Vec<Incident>> {
        delegate!(self, TaskStore::incidents(task, limit))
    }
    async fn task_usage(
        &self,
        task: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> R<Vec<TaskUsage>> {
        delegate!(self, TaskStore::task_usage(task, since_ms, limit))
    }
    async fn insert_alert(
        &self,
        kind: &str,
        subject: &str,
        text: &str,
        payload: &Value,
        status: &str,
        now_ms: i64,
    ) -> R<i64> {
        delegate!(
            self,
            TaskStore::insert_alert(kind, subject, text, payload, status, now_ms)
        )
    }
    async fn update_alert(
        &self,
        id: i64,
        status: &str,
        attempts: u32,
        last_error: Option<&str>,
        delivered_ms: Option<i64>,
    ) -> R<()> {
        delegate!(
            self,
            TaskStore::update_alert(id, status, attempts, last_error, delivered_ms)
        )
    }
    async fn alerts(&self, subject: Option<&str>, limit: usize) -> R<Vec<AlertRecord>> {
        delegate!(self, TaskStore::alerts(subject, limit))
    }
}

impl OutcomeStore for Store {
    async fn record_outcome(
        &self,
        outcome: &TaskOutcome,
        recorded_by: &str,
        now_ms: i64,
    ) -> R<Recorded> {
        delegate!(
            self,
            OutcomeStore::record_outcome(outcome, recorded_by, now_ms)
        )
    }
    async fn task_outcome(&self, task: &str) -> R<Option<StoredOutcome>> {
        delegate!(self, OutcomeStore::task_outcome(task))
    }
    async fn outcome_history(&self, task: &str) -> R<Vec<StoredOutcome>> {
        delegate!(self, OutcomeStore::outcome_history(task))
    }
    async fn outcomes_in_window(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> R<BTreeMap<String, StoredOutcome>> {
        delegate!(self, OutcomeStore::outcomes_in_window(since_ms, until_ms))
    }
    async fn task_parties(&self, task: &str) -> R<Vec<TaskParty>> {
        delegate!(self, OutcomeStore::task_parties(task))
    }
}

impl ReportStore for Store {
    async fn usage_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> R<UsageReport> {
        delegate!(
            self,
            ReportStore::usage_report(group_by, since_ms, until_ms)
        )
    }
    async fn roi_report(&self, group_by: GroupBy, since_ms: i64, until_ms: i64) -> R<RoiReport> {
        delegate!(self, ReportStore::roi_report(group_by, since_ms, until_ms))
    }
    async fn task_summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> R<Vec<TaskSummary>> {
        delegate!(self, ReportStore::task_summaries(since_ms, until_ms, limit))
    }
    async fn task_summary(&self, task: &str) -> R<Option<TaskSummary>> {
        delegate!(self, ReportStore::task_summary(task))
    }
    async fn savings_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> R<SavingsReport> {
        delegate!(
            self,
            ReportStore::savings_report(group_by, since_ms, until_ms)
        )
    }
    async fn spend_series(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> R<Vec<SpendPoint>> {
        delegate!(
            self,
            ReportStore::spend_series(group_by, since_ms, until_ms, bucket_ms)
        )
    }
    async fn ledger_span(&self, since_ms: i64, until_ms: i64) -> R<Option<(i64, i64)>> {
        delegate!(self, ReportStore::ledger_span(since_ms, until_ms))
    }
    async fn hourly_usage(&self, since_ms: i64, until_ms: i64) -> R<Vec<HourlyUsage>> {
        delegate!(self, ReportStore::hourly_usage(since_ms, until_ms))
    }
    async fn route_samples(&self) -> R<Vec<StoredSample>> {
        delegate!(self, ReportStore::route_samples())
    }
}

impl PriceTableStore for Store {
    async fn register_price_table(
        &self,
        hash: &str,
        sources: &[String],
        models: usize,
        now_ms: i64,
    ) -> R<()> {
        delegate!(
            self,
            PriceTableStore::register_price_table(hash, sources, models, now_ms)
        )
    }
}

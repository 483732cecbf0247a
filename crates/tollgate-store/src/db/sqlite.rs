//! The traits for [`SqliteStore`]: each call runs the synchronous method of the same name
//! on tokio's blocking pool (SQLite calls block on the file; a tokio worker must not).
//! Borrowed arguments are copied into the blocking task.

use super::{
    BudgetStore, KeyStore, LedgerStore, OutcomeStore, PriceTableStore, R, ReportStore, TaskStore,
};
use crate::counters::KnownHalt;
use crate::keys::{NewKey, SecretSealer, VirtualKey, new_key};
use crate::ledger::{
    LedgerConfig, LedgerCursor, LedgerPage, ReplicaSequence, StoredSample, insert_stamped,
};
use crate::outcomes::{Recorded, StoredOutcome, TaskParty};
use crate::sqlite::Sync;
use crate::tasks::{AlertRecord, Incident, NewIncident, TaskRecord, TaskUsage};
use crate::value::{HourlyUsage, SpendPoint};
use crate::{Ledger, LedgerWriter, SqliteStore, StoreError};
use serde_json::Value;
use std::collections::BTreeMap;
use tollgate_domain::budget::{BudgetRule, Period, ScopeSpec};
use tollgate_domain::ledger::LedgerRow;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::TaskOutcome;
use tollgate_domain::report::{GroupBy, UsageReport};
use tollgate_domain::value::{RoiReport, SavingsReport, TaskSummary};

/// Run `f` on this store from the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &SqliteStore,
    f: impl FnOnce(&SqliteStore) -> R<T> + Send + 'static,
) -> R<T> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl LedgerStore for SqliteStore {
    fn start_ledger(&self, cfg: &LedgerConfig) -> R<(Ledger, LedgerWriter)> {
        SqliteStore::start_ledger(self, cfg)
    }
    async fn insert_rows(&self, rows: Vec<LedgerRow>) -> R<u64> {
        blocking(self, move |s| {
            let mut conn = s.connect(Sync::Normal)?;
            insert_stamped(&mut conn, rows.iter().map(|r| (r, None)))
        })
        .await
    }
    async fn ledger_row(&self, request_id: &str) -> R<Option<LedgerRow>> {
        let id = request_id.to_string();
        blocking(self, move |s| s.ledger_row(&id)).await
    }
    async fn ledger_rows(&self, since_ms: i64, until_ms: i64, limit: usize) -> R<Vec<LedgerRow>> {
        blocking(self, move |s| s.ledger_rows(since_ms, until_ms, limit)).await
    }
    async fn ledger_page(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<LedgerCursor>,
        limit: usize,
    ) -> R<LedgerPage> {
        blocking(self, move |s| {
            s.ledger_page(since_ms, until_ms, after, limit)
        })
        .await
    }
    async fn ledger_count(&self) -> R<u64> {
        blocking(self, |s| s.ledger_count()).await
    }
    async fn ledger_sequences(&self, since_ms: i64, until_ms: i64) -> R<Vec<ReplicaSequence>> {
        blocking(self, move |s| s.ledger_sequences(since_ms, until_ms)).await
    }
}

impl KeyStore for SqliteStore {
    async fn create_key(
        &self,
        new: &NewKey,
        now_ms: i64,
        sealer: Option<&SecretSealer>,
    ) -> R<(VirtualKey, String)> {
        // Sealing needs the sealer, which stays here; only the record crosses over.
        let (key, secret) = new_key(new, now_ms, sealer);
        let record = key.clone();
        blocking(self, move |s| s.insert_key(&record)).await?;
        Ok((key, secret))
    }
    async fn list_keys(&self) -> R<Vec<VirtualKey>> {
        blocking(self, |s| s.list_keys()).await
    }
    async fn revoke_key(&self, id: &str, now_ms: i64) -> R<bool> {
        let id = id.to_string();
        blocking(self, move |s| s.revoke_key(&id, now_ms)).await
    }
}

impl BudgetStore for SqliteStore {
    async fn upsert_budget(&self, rule: &BudgetRule, now_ms: i64) -> R<()> {
        let rule = rule.clone();
        blocking(self, move |s| s.upsert_budget(&rule, now_ms)).await
    }
    async fn delete_budget(&self, scope: &ScopeSpec, period: Period) -> R<bool> {
        let scope = scope.clone();
        blocking(self, move |s| s.delete_budget(&scope, period)).await
    }
    async fn list_budgets(&self) -> R<Vec<BudgetRule>> {
        blocking(self, |s| s.list_budgets()).await
    }
    async fn spend_by_scope(
        &self,
        spec: &ScopeSpec,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> R<Vec<(String, Money)>> {
        let spec = spec.clone();
        blocking(self, move |s| s.spend_by_scope(&spec, since_ms, until_ms)).await
    }
}

impl TaskStore for SqliteStore {
    async fn record_incident(&self, i: &NewIncident<'_>, now_ms: i64) -> R<i64> {
        let (task, agent, kind, reason, evidence, dry_run, request_id) = (
            i.task.to_string(),
            i.agent.map(str::to_string),
            i.kind.to_string(),
            i.reason.to_string(),
            i.evidence.clone(),
            i.dry_run,
            i.request_id.map(str::to_string),
        );
        blocking(self, move |s| {
            s.record_incident(
                &NewIncident {
                    task: &task,
                    agent: agent.as_deref(),
                    kind: &kind,
                    reason: &reason,
                    evidence: &evidence,
                    dry_run,
                    request_id: request_id.as_deref(),
                },
                now_ms,
            )
        })
        .await
    }
    async fn record_shared_halt(&self, halt: &KnownHalt) -> R<bool> {
        let halt = halt.clone();
        blocking(self, move |s| s.record_shared_halt(&halt)).await
    }
    async fn release_task(&self, task: &str, now_ms: i64) -> R<bool> {
        let task = task.to_string();
        blocking(self, move |s| s.release_task(&task, now_ms)).await
    }
    async fn halted_tasks(&self) -> R<Vec<TaskRecord>> {
        blocking(self, |s| s.halted_tasks()).await
    }
    async fn guarded_tasks(&self, limit: usize) -> R<Vec<TaskRecord>> {
        blocking(self, move |s| s.guarded_tasks(limit)).await
    }
    async fn task_record(&self, task: &str) -> R<Option<TaskRecord>> {
        let task = task.to_string();
        blocking(self, move |s| s.task_record(&task)).await
    }
    async fn incidents(&self, task: Option<&str>, limit: usize) -> R<Vec<Incident>> {
        let task = task.map(str::to_string);
        blocking(self, move |s| s.incidents(task.as_deref(), limit)).await
    }
    async fn task_usage(
        &self,
        task: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> R<Vec<TaskUsage>> {
        let task = task.map(str::to_string);
        blocking(self, move |s| {
            s.task_usage(task.as_deref(), since_ms, limit)
        })
        .await
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
        let (kind, subject, text, payload, status) = (
            kind.to_string(),
            subject.to_string(),
            text.to_string(),
            payload.clone(),
            status.to_string(),
        );
        blocking(self, move |s| {
            s.insert_alert(&kind, &subject, &text, &payload, &status, now_ms)
        })
        .await
    }
    async fn update_alert(
        &self,
        id: i64,
        status: &str,
        attempts: u32,
        last_error: Option<&str>,
        delivered_ms: Option<i64>,
    ) -> R<()> {
        let status = status.to_string();
        let last_error = last_error.map(str::to_string);
        blocking(self, move |s| {
            s.update_alert(id, &status, attempts, last_error.as_deref(), delivered_ms)
        })
        .await
    }
    async fn alerts(&self, subject: Option<&str>, limit: usize) -> R<Vec<AlertRecord>> {
        let subject = subject.map(str::to_string);
        blocking(self, move |s| s.alerts(subject.as_deref(), limit)).await
    }
}

impl OutcomeStore for SqliteStore {
    async fn record_outcome(
        &self,
        outcome: &TaskOutcome,
        recorded_by: &str,
        now_ms: i64,
    ) -> R<Recorded> {
        let outcome = outcome.clone();
        let by = recorded_by.to_string();
        blocking(self, move |s| s.record_outcome(&outcome, &by, now_ms)).await
    }
    async fn task_outcome(&self, task: &str) -> R<Option<StoredOutcome>> {
        let task = task.to_string();
        blocking(self, move |s| s.task_outcome(&task)).await
    }
    async fn outcome_history(&self, task: &str) -> R<Vec<StoredOutcome>> {
        let task = task.to_string();
        blocking(self, move |s| s.outcome_history(&task)).await
    }
    async fn outcomes_in_window(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> R<BTreeMap<String, StoredOutcome>> {
        blocking(self, move |s| s.outcomes_in_window(since_ms, until_ms)).await
    }
    async fn task_parties(&self, task: &str) -> R<Vec<TaskParty>> {
        let task = task.to_string();
        blocking(self, move |s| s.task_parties(&task)).await
    }
}

impl ReportStore for SqliteStore {
    async fn usage_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> R<UsageReport> {
        blocking(self, move |s| s.usage_report(group_by, since_ms, until_ms)).await
    }
    async fn roi_report(&self, group_by: GroupBy, since_ms: i64, until_ms: i64) -> R<RoiReport> {
        blocking(self, move |s| s.roi_report(group_by, since_ms, until_ms)).await
    }
    async fn task_summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> R<Vec<TaskSummary>> {
        blocking(self, move |s| s.task_summaries(since_ms, until_ms, limit)).await
    }
    async fn task_summary(&self, task: &str) -> R<Option<TaskSummary>> {
        let task = task.to_string();
        blocking(self, move |s| s.task_summary(&task)).await
    }
    async fn savings_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> R<SavingsReport> {
        blocking(self, move |s| {
            s.savings_report(group_by, since_ms, until_ms)
        })
        .await
    }
    async fn spend_series(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> R<Vec<SpendPoint>> {
        blocking(self, move |s| {
            s.spend_series(group_by, since_ms, until_ms, bucket_ms)
        })
        .await
    }
    async fn ledger_span(&self, since_ms: i64, until_ms: i64) -> R<Option<(i64, i64)>> {
        blocking(self, move |s| s.ledger_span(since_ms, until_ms)).await
    }
    async fn hourly_usage(&self, since_ms: i64, until_ms: i64) -> R<Vec<HourlyUsage>> {
        blocking(self, move |s| s.hourly_usage(since_ms, until_ms)).await
    }
    async fn route_samples(&self) -> R<Vec<StoredSample>> {
        blocking(self, |s| s.route_samples()).await
    }
}

impl PriceTableStore for SqliteStore {
    async fn register_price_table(
        &self,
        hash: &str,
        sources: &[String],
        models: usize,
        now_ms: i64,
    ) -> R<()> {
        let hash = hash.to_string();
        let sources = sources.to_vec();
        blocking(self, move |s| {
            s.register_price_table(&hash, &sources, models, now_ms)
        })
        .await
    }
}

//! The store traits on PostgreSQL: SQLite's queries ported, with identical results.
//!
//! What porting takes:
//! - `SUM` of a `BIGINT` is a `NUMERIC` in PostgreSQL: every sum is cast back with
//!   `::BIGINT`, exact, and an error past `i64` (as SQLite's integer overflow error).
//! - Flags are `BOOLEAN`: `SUM(partial)` becomes `SUM(CASE WHEN partial THEN 1 ELSE 0 END)`.
//! - Order: SQLite compares text byte by byte and puts NULL first; every text `ORDER BY`
//!   here says `COLLATE "C"` and `NULLS FIRST` (NULLS LAST descending) to match, and
//!   `MAX` of text is taken under `"C"` too.
//! - `user` is a reserved word: the column is `"user"`.
//! - Request ids are unique through `ledger_ids`; a lookup by request id finds the row's
//!   time there first, so the ledger lookup reads one partition.

use super::writer::{BatchState, Stamped, write_batch};
use super::{PostgresStore, R};
use crate::counters::KnownHalt;
use crate::db::{
    BudgetStore, KeyStore, LedgerStore, OutcomeStore, PriceTableStore, ReportStore, TaskStore,
};
use crate::keys::{NewKey, SecretSealer, VirtualKey, new_key};
use crate::ledger::{
    LedgerConfig, LedgerCursor, LedgerPage, ReplicaSequence, SEQ_GAPS, SEQ_SOURCE, StoredSample,
    sequences,
};
use crate::outcomes::{Recorded, StoredOutcome, TaskParty};
use crate::tasks::{AlertRecord, Incident, NewIncident, TaskRecord, TaskUsage};
use crate::value::{HourlyUsage, MechanismSql, SpendPoint, mechanism_sql};
use crate::{Ledger, LedgerWriter};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use tokio_postgres::Row;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::budget::{BudgetRule, Period, ScopeKind, ScopeSpec};
use tollgate_domain::ledger::{
    CacheKind, CacheRecord, Endpoint, LedgerRow, PrefixRecord, PruneRecord, Route, RouteMode,
    RouteRecord,
};
use tollgate_domain::money::Money;
use tollgate_domain::outcome::{OutcomeStatus, TaskOutcome, ValueBasis};
use tollgate_domain::report::{GroupBy, UsageGroup, UsageReport};
use tollgate_domain::usage::{Usage, UsageSource};
use tollgate_domain::value::{
    Mechanism, OutcomeFigure, RoiReport, Savings, SavingsReport, TaskSlice, TaskSummary, roi_groups,
};

/// The column (or expression) a dimension groups on.
fn column(g: GroupBy) -> &'static str {
    match g {
        GroupBy::Agent => "agent",
        GroupBy::Model => "upstream_model",
        GroupBy::Team => "team",
        GroupBy::Task => "task",
        GroupBy::Key => "key_id",
        GroupBy::User => "\"user\"",
        GroupBy::Deployment => "deployment",
        GroupBy::Upstream => "upstream",
        GroupBy::Route => "(requested_model || ' → ' || deployment)",
    }
}

/// The ledger column of a budget scope kind (`None`: the org).
fn scope_column(kind: ScopeKind) -> Option<&'static str> {
    match kind {
        ScopeKind::Org => None,
        ScopeKind::Team => Some("team"),
        ScopeKind::Agent => Some("agent"),
        ScopeKind::User => Some("\"user\""),
        ScopeKind::Key => Some("key_id"),
        ScopeKind::Task => Some("task"),
    }
}

/// `ORDER BY` text as SQLite does: bytewise, NULL first.
fn asc(col: &str) -> String {
    format!("{col} COLLATE \"C\" NULLS FIRST")
}

fn nanos(v: Option<i64>) -> Money {
    Money::from_nanos(v.unwrap_or(0))
}

fn count(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

fn lim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const SELECT_ROW: &str = "SELECT ts_ms, request_id, endpoint, key_id, \"user\", team, agent, task, tags,
    requested_model, deployment, upstream, upstream_model,
    input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
    usage_source, cost_nanos, priced, price_hash, latency_us, ttft_us, status, error_code, stream, partial,
    COALESCE(cost_without_cache_nanos, cost_nanos),
    route_name, route_tier, route_deployment, route_score, route_mode, route_heavy_cost_nanos,
    route_tier_cost_nanos, route_escalated,
    cache_kind, cache_similarity_ppm, cache_avoided_nanos, cache_expected_write, cache_expected_read,
    cache_miss, prune_tokens_before, prune_tokens_after, prune_cost_without_nanos,
    COALESCE(usage_suspect, FALSE),
    service_tier, prefix_hash, prefix_tokens
    FROM ledger";

fn row_from_pg(r: &Row) -> R<LedgerRow> {
    let u = |i: usize| -> R<u64> { Ok(r.try_get::<_, i64>(i)?.max(0) as u64) };
    let tags: Option<String> = r.try_get(8)?;
    let endpoint: String = r.try_get(2)?;
    let source: String = r.try_get(19)?;
    Ok(LedgerRow {
        ts_ms: r.try_get(0)?,
        request_id: r.try_get(1)?,
        endpoint: Endpoint::parse(&endpoint).unwrap_or(Endpoint::ChatCompletions),
        attribution: Attribution {
            key_id: r.try_get(3)?,
            user: r.try_get(4)?,
            team: r.try_get(5)?,
            agent: r.try_get(6)?,
            task: r.try_get(7)?,
            tags: tags
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        },
        route: Route {
            requested_model: r.try_get(9)?,
            deployment: r.try_get(10)?,
            upstream: r.try_get(11)?,
            upstream_model: r.try_get(12)?,
        },
        usage: Usage {
            input: u(13)?,
            cache_read: u(14)?,
            cache_write_5m: u(15)?,
            cache_write_1h: u(16)?,
            output: u(17)?,
            reasoning: u(18)?,
        },
        usage_source: UsageSource::parse(&source).unwrap_or(UsageSource::None),
        cost: Money::from_nanos(r.try_get(20)?),
        cost_without_cache: Money::from_nanos(r.try_get(29)?),
        priced: r.try_get(21)?,
        price_hash: r.try_get(22)?,
        latency_us: u(23)?,
        ttft_us: r.try_get::<_, Option<i64>>(24)?.map(|v| v.max(0) as u64),
        status: u16::try_from(r.try_get::<_, i32>(25)?).unwrap_or(0),
        error_code: r.try_get(26)?,
        stream: r.try_get(27)?,
        partial: r.try_get(28)?,
        routing: route_from_pg(r)?,
        cache: cache_from_pg(r)?,
        prune: prune_from_pg(r)?,
        usage_suspect: r.try_get(47)?,
        service_tier: r.try_get(48)?,
        prefix: match (
            r.try_get::<_, Option<String>>(49)?,
            r.try_get::<_, Option<i64>>(50)?,
        ) {
            (Some(hash), Some(tokens)) => Some(PrefixRecord {
                hash,
                tokens: tokens.max(0) as u64,
            }),
            _ => None,
        },
    })
}

/// Columns 38..=43 of [`SELECT_ROW`].
fn cache_from_pg(r: &Row) -> R<Option<CacheRecord>> {
    let Some(kind) = r
        .try_get::<_, Option<String>>(38)?
        .and_then(|k| CacheKind::parse(&k))
    else {
        return Ok(None);
    };
    Ok(Some(CacheRecord {
        kind,
        similarity_ppm: r
            .try_get::<_, Option<i64>>(39)?
            .and_then(|v| u32::try_from(v).ok()),
        avoided_cost: nanos(r.try_get(40)?),
        expected_write: count(r.try_get(41)?),
        expected_read: count(r.try_get(42)?),
        miss: r.try_get::<_, Option<bool>>(43)?.unwrap_or(false),
    }))
}

/// Columns 44..=46 of [`SELECT_ROW`].
fn prune_from_pg(r: &Row) -> R<Option<PruneRecord>> {
    let Some(before) = r.try_get::<_, Option<i64>>(44)? else {
        return Ok(None);
    };
    Ok(Some(PruneRecord {
        tokens_before: before.max(0) as u64,
        tokens_after: count(r.try_get(45)?),
        cost_without: nanos(r.try_get(46)?),
    }))
}

fn route_from_pg(r: &Row) -> R<Option<RouteRecord>> {
    let Some(name) = r.try_get::<_, Option<String>>(30)? else {
        return Ok(None);
    };
    let mode: Option<String> = r.try_get(34)?;
    let score: f64 = r.try_get::<_, Option<f64>>(33)?.unwrap_or(0.0);
    Ok(Some(RouteRecord {
        name,
        tier: u32::try_from(r.try_get::<_, Option<i32>>(31)?.unwrap_or(0)).unwrap_or(0),
        tier_deployment: r.try_get::<_, Option<String>>(32)?.unwrap_or_default(),
        score_ppm: (score.clamp(0.0, 1.0) * 1e6).round() as u32,
        mode: mode
            .as_deref()
            .and_then(RouteMode::parse)
            .unwrap_or(RouteMode::Enforce),
        heavy_cost: Money::from_nanos(r.try_get::<_, Option<i64>>(35)?.unwrap_or(0)),
        tier_cost: Money::from_nanos(r.try_get::<_, Option<i64>>(36)?.unwrap_or(0)),
        escalated: r.try_get(37)?,
        sample: None,
    }))
}

/// SQLite's gap query in PostgreSQL's placeholders, stream ids ordered bytewise.
fn pg_seq(sql: &str) -> String {
    sql.replace("?1", "$1")
        .replace("?2", "$2")
        .replace("ORDER BY replica_id", "ORDER BY replica_id COLLATE \"C\"")
}

impl LedgerStore for PostgresStore {
    fn start_ledger(&self, cfg: &LedgerConfig) -> R<(Ledger, LedgerWriter)> {
        super::writer::start(self, cfg)
    }

    async fn insert_rows(&self, rows: Vec<LedgerRow>) -> R<u64> {
        // One transaction; a request id twice in `rows` is written once (the first).
        let mut seen = HashSet::new();
        let batch: Vec<Stamped<'_>> = rows
            .iter()
            .filter(|r| seen.insert(r.request_id.as_str()))
            .map(|r| (r, None))
            .collect();
        let mut c = self.conn().await?;
        let mut state = BatchState::default();
        write_batch(&mut c, &batch, self.inner.method, &mut state).await
    }

    async fn ledger_row(&self, request_id: &str) -> R<Option<LedgerRow>> {
        let c = self.conn().await?;
        let Some(at) = c
            .query_opt(
                "SELECT ts_ms FROM ledger_ids WHERE request_id = $1",
                &[&request_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let ts: i64 = at.try_get(0)?;
        let row = c
            .query_opt(
                &format!("{SELECT_ROW} WHERE ts_ms = $1 AND request_id = $2"),
                &[&ts, &request_id],
            )
            .await?;
        row.as_ref().map(row_from_pg).transpose()
    }

    async fn ledger_rows(&self, since_ms: i64, until_ms: i64, limit: usize) -> R<Vec<LedgerRow>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "{SELECT_ROW} WHERE ts_ms >= $1 AND ts_ms < $2 ORDER BY ts_ms, id LIMIT $3"
                ),
                &[&since_ms, &until_ms, &lim(limit)],
            )
            .await?;
        rows.iter().map(row_from_pg).collect()
    }

    async fn ledger_page(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<LedgerCursor>,
        limit: usize,
    ) -> R<LedgerPage> {
        let c = self.conn().await?;
        let select = SELECT_ROW.replacen("\n    FROM ledger", ", id\n    FROM ledger", 1);
        let a = after.unwrap_or(LedgerCursor {
            ts_ms: i64::MIN,
            id: i64::MIN,
        });
        let rows = c
            .query(
                &format!(
                    "{select} WHERE ts_ms >= $1 AND ts_ms < $2 AND (ts_ms, id) > ($3, $4)
                     ORDER BY ts_ms, id LIMIT $5"
                ),
                &[&since_ms, &until_ms, &a.ts_ms, &a.id, &lim(limit)],
            )
            .await?;
        let mut last = None;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let row = row_from_pg(r)?;
            last = Some(LedgerCursor {
                ts_ms: row.ts_ms,
                id: r.try_get(51)?,
            });
            out.push(row);
        }
        Ok(LedgerPage::new(out, last, limit))
    }

    async fn ledger_count(&self) -> R<u64> {
        let c = self.conn().await?;
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM ledger", &[])
            .await?
            .try_get(0)?;
        Ok(n.max(0) as u64)
    }

    async fn ledger_sequences(&self, since_ms: i64, until_ms: i64) -> R<Vec<ReplicaSequence>> {
        let c = self.conn().await?;
        let summaries = c
            .query(
                &pg_seq(&format!(
                    "{SEQ_SOURCE} SELECT replica_id, COUNT(*), MIN(replica_seq), MAX(replica_seq)
                     FROM s GROUP BY replica_id ORDER BY replica_id"
                )),
                &[&since_ms, &until_ms],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<R<Vec<_>>>()?;
        let gaps = c
            .query(
                &pg_seq(&format!("{SEQ_SOURCE} {SEQ_GAPS}")),
                &[&since_ms, &until_ms],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<R<Vec<_>>>()?;
        Ok(sequences(summaries, gaps))
    }
}

const KEY_COLUMNS: &str =
    "id, hash, name, team, agent, \"user\", models, created_ms, revoked_ms, sealed_secret";

fn key_from_pg(r: &Row) -> R<VirtualKey> {
    let models: Option<String> = r.try_get(6)?;
    Ok(VirtualKey {
        id: r.try_get(0)?,
        hash: r.try_get(1)?,
        name: r.try_get(2)?,
        team: r.try_get(3)?,
        agent: r.try_get(4)?,
        user: r.try_get(5)?,
        models: models
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
        created_ms: r.try_get(7)?,
        revoked_ms: r.try_get(8)?,
        sealed_secret: r.try_get(9)?,
    })
}

impl KeyStore for PostgresStore {
    async fn create_key(
        &self,
        new: &NewKey,
        now_ms: i64,
        sealer: Option<&SecretSealer>,
    ) -> R<(VirtualKey, String)> {
        let (key, secret) = new_key(new, now_ms, sealer);
        let models = (!key.models.is_empty())
            .then(|| serde_json::to_string(&key.models).unwrap_or_default());
        let c = self.conn().await?;
        c.execute(
            &format!(
                "INSERT INTO keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            &[
                &key.id,
                &key.hash,
                &key.name,
                &key.team,
                &key.agent,
                &key.user,
                &models,
                &key.created_ms,
                &key.revoked_ms,
                &key.sealed_secret,
            ],
        )
        .await?;
        Ok((key, secret))
    }

    async fn list_keys(&self) -> R<Vec<VirtualKey>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_ms, id COLLATE \"C\""),
                &[],
            )
            .await?;
        rows.iter().map(key_from_pg).collect()
    }

    async fn revoke_key(&self, id: &str, now_ms: i64) -> R<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                &[&id, &now_ms],
            )
            .await?;
        Ok(n > 0)
    }
}

impl BudgetStore for PostgresStore {
    async fn upsert_budget(&self, rule: &BudgetRule, now_ms: i64) -> R<()> {
        let c = self.conn().await?;
        let alert_at = serde_json::to_string(&rule.alert_at).unwrap_or_else(|_| "[]".into());
        c.execute(
            "INSERT INTO budgets (scope, period, limit_nanos, hard, alert_at, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (scope, period) DO UPDATE SET limit_nanos = EXCLUDED.limit_nanos,
                 hard = EXCLUDED.hard, alert_at = EXCLUDED.alert_at, updated_ms = EXCLUDED.updated_ms",
            &[
                &rule.scope.to_string(),
                &rule.period.as_str(),
                &rule.limit.nanos(),
                &rule.hard,
                &alert_at,
                &now_ms,
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_budget(&self, scope: &ScopeSpec, period: Period) -> R<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "DELETE FROM budgets WHERE scope = $1 AND period = $2",
                &[&scope.to_string(), &period.as_str()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn list_budgets(&self) -> R<Vec<BudgetRule>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT scope, period, limit_nanos, hard, alert_at FROM budgets
                 ORDER BY scope COLLATE \"C\", period COLLATE \"C\"",
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let (scope, period, limit, hard, alert_at): (String, String, i64, bool, String) = (
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            );
            // Rows this version cannot read are skipped, as on SQLite.
            let (Ok(scope), Some(period)) = (ScopeSpec::parse(&scope), Period::parse(&period))
            else {
                continue;
            };
            out.push(BudgetRule {
                scope,
                period,
                limit: Money::from_nanos(limit),
                hard,
                alert_at: serde_json::from_str(&alert_at).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn spend_by_scope(
        &self,
        spec: &ScopeSpec,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> R<Vec<(String, Money)>> {
        let c = self.conn().await?;
        let until = until_ms.unwrap_or(i64::MAX);
        let Some(col) = scope_column(spec.kind) else {
            let total: Option<i64> = c
                .query_one(
                    "SELECT SUM(cost_nanos)::BIGINT FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2",
                    &[&since_ms, &until],
                )
                .await?
                .try_get(0)?;
            return Ok(vec![("org".into(), nanos(total))]);
        };
        match &spec.name {
            Some(name) => {
                let total: Option<i64> = c
                    .query_one(
                        &format!(
                            "SELECT SUM(cost_nanos)::BIGINT FROM ledger
                             WHERE ts_ms >= $1 AND ts_ms < $2 AND {col} = $3"
                        ),
                        &[&since_ms, &until, name],
                    )
                    .await?
                    .try_get(0)?;
                Ok(vec![(name.clone(), nanos(total))])
            }
            None => c
                .query(
                    &format!(
                        "SELECT {col}, SUM(cost_nanos)::BIGINT FROM ledger
                         WHERE ts_ms >= $1 AND ts_ms < $2 AND {col} IS NOT NULL
                         GROUP BY {col} ORDER BY {col} COLLATE \"C\""
                    ),
                    &[&since_ms, &until],
                )
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, nanos(r.try_get(1)?))))
                .collect(),
        }
    }
}

const TASK_COLUMNS: &str = "task, agent, status, kind, reason, incident_id, halted_ms, released_ms";

fn task_from(r: &Row) -> R<TaskRecord> {
    let incident_id: Option<i64> = r.try_get(5)?;
    Ok(TaskRecord {
        task: r.try_get(0)?,
        agent: r.try_get(1)?,
        status: r.try_get(2)?,
        kind: r.try_get(3)?,
        reason: r.try_get(4)?,
        incident_id,
        halted_ms: r.try_get(6)?,
        released_ms: r.try_get(7)?,
        recorded_elsewhere: incident_id.is_none(),
    })
}

impl TaskStore for PostgresStore {
    async fn record_incident(&self, i: &NewIncident<'_>, now_ms: i64) -> R<i64> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO incidents (ts_ms, task, agent, kind, reason, evidence, dry_run, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[
                    &now_ms,
                    &i.task,
                    &i.agent,
                    &i.kind,
                    &i.reason,
                    &i.evidence.to_string(),
                    &i.dry_run,
                    &i.request_id,
                ],
            )
            .await?
            .try_get(0)?;
        tx.execute(
            "INSERT INTO halted_tasks (task, agent, status, kind, reason, incident_id, halted_ms, released_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
             ON CONFLICT (task) DO UPDATE SET agent = EXCLUDED.agent, status = EXCLUDED.status,
                 kind = EXCLUDED.kind, reason = EXCLUDED.reason, incident_id = EXCLUDED.incident_id,
                 halted_ms = EXCLUDED.halted_ms, released_ms = NULL",
            &[
                &i.task,
                &i.agent,
                &if i.dry_run { "flagged" } else { "halted" },
                &i.kind,
                &i.reason,
                &id,
                &now_ms,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn record_shared_halt(&self, h: &KnownHalt) -> R<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "INSERT INTO halted_tasks (task, agent, status, kind, reason, incident_id, halted_ms, released_ms)
                 VALUES ($1, $2, 'halted', $3, $4, NULL, $5, NULL)
                 ON CONFLICT (task) DO UPDATE SET agent = EXCLUDED.agent, status = 'halted',
                     kind = EXCLUDED.kind, reason = EXCLUDED.reason, incident_id = NULL,
                     halted_ms = EXCLUDED.halted_ms, released_ms = NULL
                 WHERE halted_tasks.status <> 'halted'",
                &[&h.task, &h.agent, &h.kind, &h.reason, &h.halted_ms],
            )
            .await?;
        Ok(n > 0)
    }

    async fn release_task(&self, task: &str, now_ms: i64) -> R<bool> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE halted_tasks SET status = 'released', released_ms = $2
                 WHERE task = $1 AND status IN ('halted', 'flagged')",
                &[&task, &now_ms],
            )
            .await?;
        Ok(n > 0)
    }

    async fn halted_tasks(&self) -> R<Vec<TaskRecord>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM halted_tasks WHERE status = 'halted'
                     ORDER BY halted_ms, task COLLATE \"C\""
                ),
                &[],
            )
            .await?;
        rows.iter().map(task_from).collect()
    }

    async fn guarded_tasks(&self, limit: usize) -> R<Vec<TaskRecord>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM halted_tasks
                     ORDER BY halted_ms DESC, task COLLATE \"C\" LIMIT $1"
                ),
                &[&lim(limit)],
            )
            .await?;
        rows.iter().map(task_from).collect()
    }

    async fn task_record(&self, task: &str) -> R<Option<TaskRecord>> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                &format!("SELECT {TASK_COLUMNS} FROM halted_tasks WHERE task = $1"),
                &[&task],
            )
            .await?;
        row.as_ref().map(task_from).transpose()
    }

    async fn incidents(&self, task: Option<&str>, limit: usize) -> R<Vec<Incident>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, ts_ms, task, agent, kind, reason, evidence, dry_run, request_id
                 FROM incidents WHERE ($1::TEXT IS NULL OR task = $1) ORDER BY id DESC LIMIT $2",
                &[&task, &lim(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let evidence: String = r.try_get(6)?;
                Ok(Incident {
                    id: r.try_get(0)?,
                    ts_ms: r.try_get(1)?,
                    task: r.try_get(2)?,
                    agent: r.try_get(3)?,
                    kind: r.try_get(4)?,
                    reason: r.try_get(5)?,
                    evidence: serde_json::from_str(&evidence).unwrap_or(Value::Null),
                    dry_run: r.try_get(7)?,
                    request_id: r.try_get(8)?,
                })
            })
            .collect()
    }

    async fn task_usage(
        &self,
        task: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> R<Vec<TaskUsage>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT task, MAX(agent COLLATE \"C\"), COUNT(*), SUM(cost_nanos)::BIGINT,
                        MIN(ts_ms), MAX(ts_ms) FROM ledger
                 WHERE task IS NOT NULL AND ($1::TEXT IS NULL OR task = $1) AND ts_ms >= $2
                 GROUP BY task ORDER BY MAX(ts_ms) DESC, task COLLATE \"C\" LIMIT $3",
                &[&task, &since_ms, &lim(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskUsage {
                    task: r.try_get(0)?,
                    agent: r.try_get(1)?,
                    calls: count(r.try_get(2)?),
                    cost: nanos(r.try_get(3)?),
                    first_ms: r.try_get(4)?,
                    last_ms: r.try_get(5)?,
                })
            })
            .collect()
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
        let c = self.conn().await?;
        Ok(c.query_one(
            "INSERT INTO alerts (ts_ms, kind, subject, text, payload, status, attempts)
             VALUES ($1, $2, $3, $4, $5, $6, 0) RETURNING id",
            &[
                &now_ms,
                &kind,
                &subject,
                &text,
                &payload.to_string(),
                &status,
            ],
        )
        .await?
        .try_get(0)?)
    }

    async fn update_alert(
        &self,
        id: i64,
        status: &str,
        attempts: u32,
        last_error: Option<&str>,
        delivered_ms: Option<i64>,
    ) -> R<()> {
        let c = self.conn().await?;
        c.execute(
            "UPDATE alerts SET status = $2, attempts = $3, last_error = $4, delivered_ms = $5
             WHERE id = $1",
            &[
                &id,
                &status,
                &i64::from(attempts),
                &last_error,
                &delivered_ms,
            ],
        )
        .await?;
        Ok(())
    }

    async fn alerts(&self, subject: Option<&str>, limit: usize) -> R<Vec<AlertRecord>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, ts_ms, kind, subject, text, status, attempts, last_error, delivered_ms
                 FROM alerts WHERE ($1::TEXT IS NULL OR subject = $1) ORDER BY id DESC LIMIT $2",
                &[&subject, &lim(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertRecord {
                    id: r.try_get(0)?,
                    ts_ms: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    text: r.try_get(4)?,
                    status: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                    last_error: r.try_get(7)?,
                    delivered_ms: r.try_get(8)?,
                })
            })
            .collect()
    }
}

const OUTCOME_COLUMNS: &str =
    "task, status, value_nanos, value_basis, labels, revision, recorded_ms, recorded_by";

fn outcome_from(r: &Row) -> R<StoredOutcome> {
    let status: String = r.try_get(1)?;
    let basis: String = r.try_get(3)?;
    let labels: String = r.try_get(4)?;
    Ok(StoredOutcome {
        outcome: TaskOutcome {
            task: r.try_get(0)?,
            status: OutcomeStatus::parse(&status).unwrap_or(OutcomeStatus::Failure),
            basis: serde_json::from_str(&basis).unwrap_or(ValueBasis::None),
            labels: serde_json::from_str(&labels).unwrap_or_default(),
        },
        value: Money::from_nanos(r.try_get(2)?),
        revision: r.try_get::<_, i64>(5)?.clamp(0, i64::from(u32::MAX)) as u32,
        recorded_ms: r.try_get(6)?,
        recorded_by: r.try_get(7)?,
    })
}

impl OutcomeStore for PostgresStore {
    async fn record_outcome(
        &self,
        outcome: &TaskOutcome,
        recorded_by: &str,
        now_ms: i64,
    ) -> R<Recorded> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // Replicas recording the same task's outcome at once take turns (SQLite's
        // IMMEDIATE transaction), so revisions never collide.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('tollgate:outcome:' || $1, 0))",
            &[&outcome.task],
        )
        .await?;
        let previous = tx
            .query_opt(
                &format!("SELECT {OUTCOME_COLUMNS} FROM task_outcomes WHERE task = $1"),
                &[&outcome.task],
            )
            .await?
            .as_ref()
            .map(outcome_from)
            .transpose()?;
        if let Some(p) = &previous
            && p.outcome == *outcome
        {
            return Ok(Recorded {
                current: p.clone(),
                changed: false,
                previous: None,
            });
        }
        let current = StoredOutcome {
            outcome: outcome.clone(),
            value: outcome.value(),
            revision: previous
                .as_ref()
                .map_or(1, |p| p.revision.saturating_add(1)),
            recorded_ms: now_ms,
            recorded_by: recorded_by.to_string(),
        };
        let basis = serde_json::to_string(&current.outcome.basis).unwrap_or_default();
        let labels = serde_json::to_string(&current.outcome.labels).unwrap_or_default();
        let status = current.outcome.status.as_str();
        let revision = i64::from(current.revision);
        let value = current.value.nanos();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &current.outcome.task,
            &status,
            &value,
            &basis,
            &labels,
            &revision,
            &current.recorded_ms,
            &current.recorded_by,
        ];
        tx.execute(
            &format!(
                "INSERT INTO task_outcomes ({OUTCOME_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (task) DO UPDATE SET status = EXCLUDED.status,
                   value_nanos = EXCLUDED.value_nanos, value_basis = EXCLUDED.value_basis,
                   labels = EXCLUDED.labels, revision = EXCLUDED.revision,
                   recorded_ms = EXCLUDED.recorded_ms, recorded_by = EXCLUDED.recorded_by"
            ),
            &params,
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO task_outcome_history ({OUTCOME_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &params,
        )
        .await?;
        tx.commit().await?;
        Ok(Recorded {
            current,
            changed: true,
            previous,
        })
    }

    async fn task_outcome(&self, task: &str) -> R<Option<StoredOutcome>> {
        let c = self.conn().await?;
        c.query_opt(
            &format!("SELECT {OUTCOME_COLUMNS} FROM task_outcomes WHERE task = $1"),
            &[&task],
        )
        .await?
        .as_ref()
        .map(outcome_from)
        .transpose()
    }

    async fn outcome_history(&self, task: &str) -> R<Vec<StoredOutcome>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {OUTCOME_COLUMNS} FROM task_outcome_history WHERE task = $1
                     ORDER BY revision, id"
                ),
                &[&task],
            )
            .await?;
        rows.iter().map(outcome_from).collect()
    }

    async fn outcomes_in_window(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> R<BTreeMap<String, StoredOutcome>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {OUTCOME_COLUMNS} FROM task_outcomes WHERE task IN
                       (SELECT DISTINCT task FROM ledger
                        WHERE ts_ms >= $1 AND ts_ms < $2 AND task IS NOT NULL)"
                ),
                &[&since_ms, &until_ms],
            )
            .await?;
        rows.iter()
            .map(|r| outcome_from(r).map(|o| (o.outcome.task.clone(), o)))
            .collect()
    }

    async fn task_parties(&self, task: &str) -> R<Vec<TaskParty>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT key_id, agent, team FROM
                   (SELECT DISTINCT key_id, agent, team FROM ledger WHERE task = $1) d
                 ORDER BY key_id COLLATE \"C\" NULLS FIRST, agent COLLATE \"C\" NULLS FIRST,
                          team COLLATE \"C\" NULLS FIRST LIMIT 16",
                &[&task],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskParty {
                    key_id: r.try_get(0)?,
                    agent: r.try_get(1)?,
                    team: r.try_get(2)?,
                })
            })
            .collect()
    }
}

const SUMS: &str = "COUNT(*),
    SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END)::BIGINT,
    SUM(CASE WHEN partial THEN 1 ELSE 0 END)::BIGINT,
    SUM(CASE WHEN priced THEN 0 ELSE 1 END)::BIGINT,
    SUM(input_tokens)::BIGINT, SUM(cache_read_tokens)::BIGINT,
    SUM(cache_write_5m_tokens + cache_write_1h_tokens)::BIGINT,
    SUM(output_tokens)::BIGINT, SUM(reasoning_tokens)::BIGINT, SUM(cost_nanos)::BIGINT";

fn group_from(r: &Row, offset: usize) -> R<UsageGroup> {
    let n = |i: usize| -> R<u64> { Ok(count(r.try_get(offset + i)?)) };
    Ok(UsageGroup {
        group: None,
        requests: n(0)?,
        errors: n(1)?,
        partial: n(2)?,
        unpriced: n(3)?,
        input_tokens: n(4)?,
        cached_tokens: n(5)?,
        cache_write_tokens: n(6)?,
        output_tokens: n(7)?,
        reasoning_tokens: n(8)?,
        cost: nanos(r.try_get(offset + 9)?),
    })
}

impl PostgresStore {
    async fn summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
        task: Option<&str>,
    ) -> R<Vec<TaskSummary>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT t.task, t.calls, t.errors, t.input, t.cached, t.cache_write, t.output,
                        t.reasoning, t.cost, t.first_ms, t.last_ms, o.status, o.value_nanos FROM (
                    SELECT task,
                      COUNT(*) AS calls,
                      SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END)::BIGINT AS errors,
                      SUM(input_tokens)::BIGINT AS input, SUM(cache_read_tokens)::BIGINT AS cached,
                      SUM(cache_write_5m_tokens + cache_write_1h_tokens)::BIGINT AS cache_write,
                      SUM(output_tokens)::BIGINT AS output, SUM(reasoning_tokens)::BIGINT AS reasoning,
                      SUM(cost_nanos)::BIGINT AS cost,
                      MIN(ts_ms) AS first_ms, MAX(ts_ms + latency_us / 1000) AS last_ms
                    FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2 AND task IS NOT NULL
                      AND ($4::TEXT IS NULL OR task = $4)
                    GROUP BY task) t
                 LEFT JOIN task_outcomes o ON o.task = t.task
                 ORDER BY t.cost DESC, t.task COLLATE \"C\" LIMIT $3",
                &[&since_ms, &until_ms, &lim(limit), &task],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let first: i64 = r.try_get(9)?;
            let last: i64 = r.try_get(10)?;
            let status: Option<String> = r.try_get(11)?;
            out.push(TaskSummary {
                task: r.try_get(0)?,
                calls: count(r.try_get(1)?),
                errors: count(r.try_get(2)?),
                input_tokens: count(r.try_get(3)?),
                cached_tokens: count(r.try_get(4)?),
                cache_write_tokens: count(r.try_get(5)?),
                output_tokens: count(r.try_get(6)?),
                reasoning_tokens: count(r.try_get(7)?),
                cost: nanos(r.try_get(8)?),
                first_ms: first,
                duration_ms: (last - first).max(0),
                status: status.as_deref().and_then(OutcomeStatus::parse),
                value: r.try_get::<_, Option<i64>>(12)?.map(Money::from_nanos),
                ..TaskSummary::default()
            });
        }
        let lists = c
            .prepare(
                "SELECT DISTINCT agent, team, upstream_model FROM ledger
                 WHERE task = $1 AND ts_ms >= $2 AND ts_ms < $3",
            )
            .await?;
        for t in &mut out {
            let mut agents = BTreeSet::new();
            let mut teams = BTreeSet::new();
            let mut models = BTreeSet::new();
            for r in c.query(&lists, &[&t.task, &since_ms, &until_ms]).await? {
                let (a, tm, m): (Option<String>, Option<String>, String) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                agents.extend(a);
                teams.extend(tm);
                if !m.is_empty() {
                    models.insert(m);
                }
            }
            t.agents = agents.into_iter().collect();
            t.teams = teams.into_iter().collect();
            t.models = models.into_iter().collect();
        }
        Ok(out)
    }
}

impl ReportStore for PostgresStore {
    async fn usage_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> R<UsageReport> {
        let c = self.conn().await?;
        let total = group_from(
            &c.query_one(
                &format!("SELECT {SUMS} FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2"),
                &[&since_ms, &until_ms],
            )
            .await?,
            0,
        )?;
        let mut groups = Vec::new();
        if let Some(g) = group_by {
            let col = column(g);
            let rows = c
                .query(
                    &format!(
                        "SELECT {col}, {SUMS} FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2
                         GROUP BY {col} ORDER BY SUM(cost_nanos) DESC, COUNT(*) DESC, {}",
                        asc(col)
                    ),
                    &[&since_ms, &until_ms],
                )
                .await?;
            for r in &rows {
                let mut g = group_from(r, 1)?;
                g.group = r.try_get(0)?;
                groups.push(g);
            }
        }
        Ok(UsageReport {
            group_by,
            since_ms,
            until_ms,
            groups,
            total,
        })
    }

    async fn roi_report(&self, group_by: GroupBy, since_ms: i64, until_ms: i64) -> R<RoiReport> {
        let col = column(group_by);
        let (slices, (untasked_calls, untasked_cost)) = {
            let c = self.conn().await?;
            let slices = c
                .query(
                    &format!(
                        "SELECT task, {col}, COUNT(*), SUM(cost_nanos)::BIGINT FROM ledger
                         WHERE ts_ms >= $1 AND ts_ms < $2 AND task IS NOT NULL
                         GROUP BY task, {col} ORDER BY task COLLATE \"C\", {}",
                        asc(col)
                    ),
                    &[&since_ms, &until_ms],
                )
                .await?
                .iter()
                .map(|r| {
                    Ok(TaskSlice {
                        task: r.try_get(0)?,
                        group: r.try_get(1)?,
                        calls: count(r.try_get(2)?),
                        cost: nanos(r.try_get(3)?),
                    })
                })
                .collect::<R<Vec<_>>>()?;
            let u = c
                .query_one(
                    "SELECT COUNT(*), SUM(cost_nanos)::BIGINT FROM ledger
                     WHERE ts_ms >= $1 AND ts_ms < $2 AND task IS NULL",
                    &[&since_ms, &until_ms],
                )
                .await?;
            (slices, (count(u.try_get(0)?), nanos(u.try_get(1)?)))
        };
        let outcomes: BTreeMap<String, OutcomeFigure> = self
            .outcomes_in_window(since_ms, until_ms)
            .await?
            .into_iter()
            .map(|(task, o)| {
                (
                    task,
                    OutcomeFigure {
                        status: o.outcome.status,
                        value: o.value,
                    },
                )
            })
            .collect();
        let (groups, total) = roi_groups(&slices, &outcomes);
        Ok(RoiReport {
            group_by: Some(group_by),
            since_ms,
            until_ms,
            groups,
            total,
            untasked_calls,
            untasked_cost,
        })
    }

    async fn task_summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> R<Vec<TaskSummary>> {
        self.summaries(since_ms, until_ms, limit, None).await
    }

    async fn task_summary(&self, task: &str) -> R<Option<TaskSummary>> {
        Ok(self
            .summaries(i64::MIN, i64::MAX, 1, Some(task))
            .await?
            .pop())
    }

    async fn savings_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> R<SavingsReport> {
        let c = self.conn().await?;
        let t = c
            .query_one(
                "SELECT COUNT(*), SUM(cost_nanos)::BIGINT FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2",
                &[&since_ms, &until_ms],
            )
            .await?;
        let (requests, cost) = (count(t.try_get(0)?), nanos(t.try_get(1)?));
        let mut total = Vec::new();
        let mut groups: BTreeMap<Option<String>, Vec<Savings>> = BTreeMap::new();
        for m in Mechanism::ALL {
            let MechanismSql {
                touched,
                actual,
                baseline,
                missed,
            } = mechanism_sql(m);
            let sums = format!(
                "SUM(CASE WHEN {touched} THEN 1 ELSE 0 END)::BIGINT,
                 SUM(CASE WHEN {touched} THEN {actual} ELSE 0 END)::BIGINT,
                 SUM(CASE WHEN {touched} THEN {baseline} ELSE 0 END)::BIGINT,
                 SUM(CASE WHEN {missed} THEN 1 ELSE 0 END)::BIGINT"
            );
            let line = |r: &Row, at: usize| -> R<Savings> {
                Ok(Savings {
                    mechanism: m,
                    requests: count(r.try_get(at)?),
                    actual: nanos(r.try_get(at + 1)?),
                    baseline: nanos(r.try_get(at + 2)?),
                    misses: count(r.try_get(at + 3)?),
                })
            };
            total.push(line(
                &c.query_one(
                    &format!("SELECT {sums} FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2"),
                    &[&since_ms, &until_ms],
                )
                .await?,
                0,
            )?);
            if let Some(g) = group_by {
                let col = column(g);
                let rows = c
                    .query(
                        &format!(
                            "SELECT {col}, {sums} FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2
                             GROUP BY {col}"
                        ),
                        &[&since_ms, &until_ms],
                    )
                    .await?;
                for r in &rows {
                    groups
                        .entry(r.try_get::<_, Option<String>>(0)?)
                        .or_default()
                        .push(line(r, 1)?);
                }
            }
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        let saved = |v: &Vec<Savings>| -> i64 {
            v.iter()
                .filter(|s| s.mechanism.realised())
                .map(|s| s.saved().nanos())
                .sum()
        };
        groups.sort_by(|a, b| saved(&b.1).cmp(&saved(&a.1)).then_with(|| a.0.cmp(&b.0)));
        Ok(SavingsReport {
            group_by,
            since_ms,
            until_ms,
            requests,
            cost,
            groups,
            total,
        })
    }

    async fn spend_series(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> R<Vec<SpendPoint>> {
        let c = self.conn().await?;
        let col = column(group_by);
        let bucket = bucket_ms.max(1);
        let rows = c
            .query(
                &format!(
                    "SELECT (ts_ms / $3) * $3 AS b, {col}, SUM(cost_nanos)::BIGINT, COUNT(*) FROM ledger
                     WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY b, {col} ORDER BY b, {}",
                    asc(col)
                ),
                &[&since_ms, &until_ms, &bucket],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SpendPoint {
                    bucket_ms: r.try_get(0)?,
                    group: r.try_get(1)?,
                    cost: nanos(r.try_get(2)?),
                    requests: count(r.try_get(3)?),
                })
            })
            .collect()
    }

    async fn ledger_span(&self, since_ms: i64, until_ms: i64) -> R<Option<(i64, i64)>> {
        let c = self.conn().await?;
        let r = c
            .query_one(
                "SELECT MIN(ts_ms), MAX(ts_ms) FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2",
                &[&since_ms, &until_ms],
            )
            .await?;
        let (first, last): (Option<i64>, Option<i64>) = (r.try_get(0)?, r.try_get(1)?);
        Ok(first.zip(last))
    }

    async fn hourly_usage(&self, since_ms: i64, until_ms: i64) -> R<Vec<HourlyUsage>> {
        let c = self.conn().await?;
        let dims = [
            "key_id",
            "team",
            "agent",
            "\"user\"",
            "tags",
            "deployment",
            "upstream",
            "upstream_model",
        ];
        let order: Vec<String> = dims.iter().map(|d| asc(d)).collect();
        let rows = c
            .query(
                &format!(
                    "SELECT (ts_ms / 3600000) * 3600000 AS h, {dims}, COUNT(*),
                        SUM(input_tokens)::BIGINT, SUM(cache_read_tokens)::BIGINT,
                        SUM(cache_write_5m_tokens)::BIGINT, SUM(cache_write_1h_tokens)::BIGINT,
                        SUM(output_tokens)::BIGINT, SUM(reasoning_tokens)::BIGINT,
                        SUM(cost_nanos)::BIGINT, SUM(CASE WHEN priced THEN 0 ELSE 1 END)::BIGINT
                     FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2
                     GROUP BY h, {dims}
                     ORDER BY h, {order}",
                    dims = dims.join(", "),
                    order = order.join(", ")
                ),
                &[&since_ms, &until_ms],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(HourlyUsage {
                    hour_ms: r.try_get(0)?,
                    key_id: r.try_get(1)?,
                    team: r.try_get(2)?,
                    agent: r.try_get(3)?,
                    user: r.try_get(4)?,
                    tags: r.try_get(5)?,
                    deployment: r.try_get(6)?,
                    upstream: r.try_get(7)?,
                    upstream_model: r.try_get(8)?,
                    requests: count(r.try_get(9)?),
                    input_tokens: count(r.try_get(10)?),
                    cache_read_tokens: count(r.try_get(11)?),
                    cache_write_5m_tokens: count(r.try_get(12)?),
                    cache_write_1h_tokens: count(r.try_get(13)?),
                    output_tokens: count(r.try_get(14)?),
                    reasoning_tokens: count(r.try_get(15)?),
                    cost: nanos(r.try_get(16)?),
                    unpriced: count(r.try_get(17)?),
                })
            })
            .collect()
    }

    async fn route_samples(&self) -> R<Vec<StoredSample>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT s.request_id, s.route_name, s.task, s.model_hash, s.features,
                        l.deployment, l.route_escalated IS NOT NULL, o.status
                 FROM route_samples s
                 JOIN ledger_ids i ON i.request_id = s.request_id
                 JOIN ledger l ON l.request_id = i.request_id AND l.ts_ms = i.ts_ms
                 LEFT JOIN task_outcomes o ON o.task = s.task
                 WHERE l.status >= 200 AND l.status < 300
                 ORDER BY s.ts_ms, s.request_id COLLATE \"C\"",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSample {
                    request_id: r.try_get(0)?,
                    route_name: r.try_get(1)?,
                    task: r.try_get(2)?,
                    model: r.try_get(3)?,
                    features: r.try_get(4)?,
                    deployment: r.try_get(5)?,
                    escalated: r.try_get(6)?,
                    outcome: r.try_get(7)?,
                })
            })
            .collect()
    }
}

impl PriceTableStore for PostgresStore {
    async fn register_price_table(
        &self,
        hash: &str,
        sources: &[String],
        models: usize,
        now_ms: i64,
    ) -> R<()> {
        let c = self.conn().await?;
        c.execute(
            "INSERT INTO price_tables (hash, sources, models, first_seen_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO NOTHING",
            &[
                &hash,
                &serde_json::to_string(sources).unwrap_or_default(),
                &lim(models),
                &now_ms,
            ],
        )
        .await?;
        Ok(())
    }
}

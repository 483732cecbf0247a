//! Task outcomes: the current outcome of each task, and every change to it.
//!
//! Recording is idempotent: the same outcome twice is one revision. A different outcome
//! replaces the current one and is appended to the history, so a correction ("it was a
//! failure after all") is visible, with who made it and when.

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::{OutcomeStatus, TaskOutcome, ValueBasis};

/// An outcome as stored: the validated outcome, its value, revision and provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutcome {
    pub outcome: TaskOutcome,
    pub value: Money,
    /// 1 for the first outcome of a task, +1 for each change.
    pub revision: u32,
    pub recorded_ms: i64,
    /// `key:<key id>` or `master` (the admin key) or `cli`.
    pub recorded_by: String,
}

/// What recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub current: StoredOutcome,
    /// False when the same outcome was already recorded (nothing was written).
    pub changed: bool,
    pub previous: Option<StoredOutcome>,
}

/// Who spent on a task: the distinct (key id, agent, team) of its ledger rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskParty {
    pub key_id: Option<String>,
    pub agent: Option<String>,
    pub team: Option<String>,
}

const COLUMNS: &str =
    "task, status, value_nanos, value_basis, labels, revision, recorded_ms, recorded_by";

fn outcome_from_sql(r: &Row<'_>) -> rusqlite::Result<StoredOutcome> {
    let status: String = r.get(1)?;
    let basis: String = r.get(3)?;
    let labels: String = r.get(4)?;
    Ok(StoredOutcome {
        outcome: TaskOutcome {
            task: r.get(0)?,
            status: OutcomeStatus::parse(&status).unwrap_or(OutcomeStatus::Failure),
            basis: serde_json::from_str(&basis).unwrap_or(ValueBasis::None),
            labels: serde_json::from_str(&labels).unwrap_or_default(),
        },
        value: Money::from_nanos(r.get(2)?),
        revision: r.get::<_, i64>(5)?.clamp(0, i64::from(u32::MAX)) as u32,
        recorded_ms: r.get(6)?,
        recorded_by: r.get(7)?,
    })
}

impl SqliteStore {
    /// Record `outcome` for its task (see the module docs for idempotency).
    pub fn record_outcome(
        &self,
        outcome: &TaskOutcome,
        recorded_by: &str,
        now_ms: i64,
    ) -> Result<Recorded, StoreError> {
        let mut conn = self.connect(Sync::Normal)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let previous = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM task_outcomes WHERE task = ?1"),
                [&outcome.task],
                outcome_from_sql,
            )
            .optional()?;
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
        for table in ["task_outcomes", "task_outcome_history"] {
            let upsert = if table == "task_outcomes" {
                " ON CONFLICT (task) DO UPDATE SET status = excluded.status,
                   value_nanos = excluded.value_nanos, value_basis = excluded.value_basis,
                   labels = excluded.labels, revision = excluded.revision,
                   recorded_ms = excluded.recorded_ms, recorded_by = excluded.recorded_by"
            } else {
                ""
            };
            tx.execute(
                &format!(
                    "INSERT INTO {table} ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8){upsert}"
                ),
                params![
                    current.outcome.task,
                    status,
                    current.value.nanos(),
                    basis,
                    labels,
                    revision,
                    current.recorded_ms,
                    current.recorded_by,
                ],
            )?;
        }
        tx.commit()?;
        Ok(Recorded {
            current,
            changed: true,
            previous,
        })
    }

    /// The current outcome of a task.
    pub fn task_outcome(&self, task: &str) -> Result<Option<StoredOutcome>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        Ok(conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM task_outcomes WHERE task = ?1"),
                [task],
                outcome_from_sql,
            )
            .optional()?)
    }

    /// Every revision of a task's outcome, oldest first.
    pub fn outcome_history(&self, task: &str) -> Result<Vec<StoredOutcome>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM task_outcome_history WHERE task = ?1 ORDER BY revision, id"
        ))?;
        let rows = stmt
            .query_map([task], outcome_from_sql)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Current outcomes of the tasks that have ledger rows in `[since_ms, until_ms)`.
    pub fn outcomes_in_window(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<BTreeMap<String, StoredOutcome>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM task_outcomes WHERE task IN
               (SELECT DISTINCT task FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 AND task IS NOT NULL)"
        ))?;
        let rows = stmt
            .query_map(params![since_ms, until_ms], outcome_from_sql)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|o| (o.outcome.task.clone(), o))
            .collect())
    }

    /// Who spent on `task` (at most 16 distinct parties).
    pub fn task_parties(&self, task: &str) -> Result<Vec<TaskParty>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT DISTINCT key_id, agent, team FROM ledger WHERE task = ?1
             ORDER BY key_id, agent, team LIMIT 16",
        )?;
        let rows = stmt
            .query_map([task], |r| {
                Ok(TaskParty {
                    key_id: r.get(0)?,
                    agent: r.get(1)?,
                    team: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: OutcomeStatus, value: &str) -> TaskOutcome {
        TaskOutcome {
            task: "t-1".into(),
            status,
            basis: ValueBasis::Usd {
                value: Money::parse_usd(value).unwrap(),
            },
            labels: BTreeMap::from([("reviewer".to_string(), "dana".to_string())]),
        }
    }

    #[test]
    fn idempotent_and_replacements_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("o.db")).unwrap();
        let first = s
            .record_outcome(&outcome(OutcomeStatus::Success, "10"), "key:k1", 1)
            .unwrap();
        assert!(first.changed);
        assert_eq!(first.current.revision, 1);
        let again = s
            .record_outcome(&outcome(OutcomeStatus::Success, "10"), "key:k1", 2)
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.current.recorded_ms, 1);
        let fix = s
            .record_outcome(&outcome(OutcomeStatus::Failure, "0"), "master", 3)
            .unwrap();
        assert!(fix.changed);
        assert_eq!(fix.current.revision, 2);
        assert_eq!(fix.previous.unwrap().outcome.status, OutcomeStatus::Success);
        let now = s.task_outcome("t-1").unwrap().unwrap();
        assert_eq!(now.outcome.status, OutcomeStatus::Failure);
        assert_eq!(now.recorded_by, "master");
        assert_eq!(now.outcome.labels["reviewer"], "dana");
        let h = s.outcome_history("t-1").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].value, Money::parse_usd("10").unwrap());
        assert_eq!(h[1].revision, 2);
        assert!(s.task_outcome("nope").unwrap().is_none());
    }
}

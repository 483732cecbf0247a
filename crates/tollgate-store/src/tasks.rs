//! The runaway-agent guard's records: halted tasks (a halt survives restarts until
//! someone releases it), incidents with their evidence, and alert deliveries.
//!
//! With replicas sharing Redis, the halted tasks include halts another replica recorded
//! ([`SqliteStore::record_shared_halt`]): no incident here (`incident_id` is NULL; the
//! incident, its evidence and the alert are in that replica's database).

use crate::StoreError;
use crate::counters::KnownHalt;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_domain::money::Money;

/// A task the guard acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: String,
    pub agent: Option<String>,
    /// `halted`, `released`, or `flagged` (dry-run: reported, not halted).
    pub status: String,
    /// What tripped: `loop`, `no_progress`, `cost`, `velocity`, `iterations`, `duration`.
    pub kind: String,
    pub reason: String,
    /// This replica's incident; none for a halt another replica recorded.
    pub incident_id: Option<i64>,
    pub halted_ms: i64,
    pub released_ms: Option<i64>,
    /// Recorded by another replica sharing Redis: its incident and alert are in that
    /// replica's database (read from the row: a halt recorded here always has its
    /// incident).
    #[serde(default)]
    pub recorded_elsewhere: bool,
}

impl TaskRecord {
    pub fn is_halted(&self) -> bool {
        self.status == "halted"
    }
}

/// One trip of the guard, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub ts_ms: i64,
    pub task: String,
    pub agent: Option<String>,
    pub kind: String,
    pub reason: String,
    pub evidence: Value,
    pub dry_run: bool,
    pub request_id: Option<String>,
}

/// One alert and how its delivery went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub id: i64,
    pub ts_ms: i64,
    /// `task_halted`, `budget_threshold`.
    pub kind: String,
    /// The task, or `<scope> <period label>`.
    pub subject: String,
    pub text: String,
    /// `pending`, `delivered`, `failed`, `no_webhook`.
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
}

/// A task's calls and spend in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    pub task: String,
    pub agent: Option<String>,
    pub calls: u64,
    pub cost: Money,
    pub first_ms: i64,
    pub last_ms: i64,
}

const TASK_COLUMNS: &str = "task, agent, status, kind, reason, incident_id, halted_ms, released_ms";

fn task_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        task: r.get(0)?,
        agent: r.get(1)?,
        status: r.get(2)?,
        kind: r.get(3)?,
        reason: r.get(4)?,
        incident_id: r.get(5)?,
        halted_ms: r.get(6)?,
        released_ms: r.get(7)?,
        recorded_elsewhere: r.get::<_, Option<i64>>(5)?.is_none(),
    })
}

/// What the guard found.
pub struct NewIncident<'a> {
    pub task: &'a str,
    pub agent: Option<&'a str>,
    pub kind: &'a str,
    pub reason: &'a str,
    pub evidence: &'a Value,
    pub dry_run: bool,
    pub request_id: Option<&'a str>,
}

impl SqliteStore {
    /// Record an incident and halt the task (or, in dry run, flag it). One transaction:
    /// a halted task always has its incident. Returns the incident id.
    pub fn record_incident(&self, i: &NewIncident<'_>, now_ms: i64) -> Result<i64, StoreError> {
        let mut conn = self.connect(Sync::Normal)?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO incidents (ts_ms, task, agent, kind, reason, evidence, dry_run, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now_ms,
                i.task,
                i.agent,
                i.kind,
                i.reason,
                i.evidence.to_string(),
                i.dry_run,
                i.request_id
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO halted_tasks (task, agent, status, kind, reason, incident_id, halted_ms, released_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
             ON CONFLICT (task) DO UPDATE SET agent = ?2, status = ?3, kind = ?4, reason = ?5,
                 incident_id = ?6, halted_ms = ?7, released_ms = NULL",
            params![
                i.task,
                i.agent,
                if i.dry_run { "flagged" } else { "halted" },
                i.kind,
                i.reason,
                id,
                now_ms
            ],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Record a halt another replica recorded (learnt from the shared state), with its
    /// time as Redis gave it, unless this store has the task halted already (its own
    /// halt, with its incident, stays). Replaces a released or flagged record of the
    /// task. No incident: that is in the database of the replica that recorded it.
    /// `true` if recorded.
    pub fn record_shared_halt(&self, h: &KnownHalt) -> Result<bool, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let n = conn.execute(
            "INSERT INTO halted_tasks (task, agent, status, kind, reason, incident_id, halted_ms, released_ms)
             VALUES (?1, ?2, 'halted', ?3, ?4, NULL, ?5, NULL)
             ON CONFLICT (task) DO UPDATE SET agent = ?2, status = 'halted', kind = ?3,
                 reason = ?4, incident_id = NULL, halted_ms = ?5, released_ms = NULL
             WHERE halted_tasks.status <> 'halted'",
            params![h.task, h.agent, h.kind, h.reason, h.halted_ms],
        )?;
        Ok(n > 0)
    }

    /// Release a halted (or flagged) task. `false` if it was not halted.
    pub fn release_task(&self, task: &str, now_ms: i64) -> Result<bool, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let n = conn.execute(
            "UPDATE halted_tasks SET status = 'released', released_ms = ?2
             WHERE task = ?1 AND status IN ('halted', 'flagged')",
            params![task, now_ms],
        )?;
        Ok(n > 0)
    }

    /// Tasks currently halted.
    pub fn halted_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM halted_tasks WHERE status = 'halted' ORDER BY halted_ms, task"
        ))?;
        let rows = stmt
            .query_map([], task_from)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every task the guard acted on, newest first.
    pub fn guarded_tasks(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM halted_tasks ORDER BY halted_ms DESC, task LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([limit as i64], task_from)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn task_record(&self, task: &str) -> Result<Option<TaskRecord>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        Ok(conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM halted_tasks WHERE task = ?1"),
                [task],
                task_from,
            )
            .optional()?)
    }

    pub fn incidents(&self, task: Option<&str>, limit: usize) -> Result<Vec<Incident>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT id, ts_ms, task, agent, kind, reason, evidence, dry_run, request_id
             FROM incidents WHERE (?1 IS NULL OR task = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![task, limit as i64], |r| {
                let evidence: String = r.get(6)?;
                Ok(Incident {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    task: r.get(2)?,
                    agent: r.get(3)?,
                    kind: r.get(4)?,
                    reason: r.get(5)?,
                    evidence: serde_json::from_str(&evidence).unwrap_or(Value::Null),
                    dry_run: r.get(7)?,
                    request_id: r.get(8)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Per-task calls and spend from the ledger, most recent first (`task` set: that one).
    pub fn task_usage(
        &self,
        task: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<TaskUsage>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT task, MAX(agent), COUNT(*), SUM(cost_nanos), MIN(ts_ms), MAX(ts_ms) FROM ledger
             WHERE task IS NOT NULL AND (?1 IS NULL OR task = ?1) AND ts_ms >= ?2
             GROUP BY task ORDER BY MAX(ts_ms) DESC, task LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![task, since_ms, limit as i64], |r| {
                Ok(TaskUsage {
                    task: r.get(0)?,
                    agent: r.get(1)?,
                    calls: r.get::<_, i64>(2)?.max(0) as u64,
                    cost: Money::from_nanos(r.get::<_, Option<i64>>(3)?.unwrap_or(0)),
                    first_ms: r.get(4)?,
                    last_ms: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Record an alert before trying to deliver it. Returns its id.
    pub fn insert_alert(
        &self,
        kind: &str,
        subject: &str,
        text: &str,
        payload: &Value,
        status: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        conn.execute(
            "INSERT INTO alerts (ts_ms, kind, subject, text, payload, status, attempts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            params![now_ms, kind, subject, text, payload.to_string(), status],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Record a delivery attempt's outcome.
    pub fn update_alert(
        &self,
        id: i64,
        status: &str,
        attempts: u32,
        last_error: Option<&str>,
        delivered_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let conn = self.connect(Sync::Normal)?;
        conn.execute(
            "UPDATE alerts SET status = ?2, attempts = ?3, last_error = ?4, delivered_ms = ?5 WHERE id = ?1",
            params![id, status, attempts, last_error, delivered_ms],
        )?;
        Ok(())
    }

    /// Alerts, newest first (`subject` set: only those about it).
    pub fn alerts(
        &self,
        subject: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT id, ts_ms, kind, subject, text, status, attempts, last_error, delivered_ms
             FROM alerts WHERE (?1 IS NULL OR subject = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![subject, limit as i64], |r| {
                Ok(AlertRecord {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    kind: r.get(2)?,
                    subject: r.get(3)?,
                    text: r.get(4)?,
                    status: r.get(5)?,
                    attempts: r.get(6)?,
                    last_error: r.get(7)?,
                    delivered_ms: r.get(8)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_release_and_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("t.db")).unwrap();
        let ev = serde_json::json!({"calls": 5, "repeated": "search no results"});
        let id = s
            .record_incident(
                &NewIncident {
                    task: "t1",
                    agent: Some("a"),
                    kind: "loop",
                    reason: "loop detected",
                    evidence: &ev,
                    dry_run: false,
                    request_id: Some("req_1"),
                },
                10,
            )
            .unwrap();
        let halted = s.halted_tasks().unwrap();
        assert_eq!(halted.len(), 1);
        assert_eq!(halted[0].incident_id, Some(id));
        assert!(halted[0].is_halted());
        assert_eq!(s.incidents(Some("t1"), 10).unwrap()[0].evidence, ev);
        assert!(s.release_task("t1", 20).unwrap());
        assert!(!s.release_task("t1", 21).unwrap());
        assert!(s.halted_tasks().unwrap().is_empty());
        assert_eq!(s.task_record("t1").unwrap().unwrap().released_ms, Some(20));

        let a = s
            .insert_alert("task_halted", "t1", "halted", &ev, "pending", 11)
            .unwrap();
        s.update_alert(a, "delivered", 2, Some("HTTP 500"), Some(12))
            .unwrap();
        let al = s.alerts(Some("t1"), 10).unwrap();
        assert_eq!((al[0].status.as_str(), al[0].attempts), ("delivered", 2));
    }

    #[test]
    fn halts_recorded_elsewhere_are_listed_and_never_replace_one_recorded_here() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("t.db")).unwrap();
        let shared = |task: &str, ms: i64| KnownHalt {
            task: task.into(),
            halted_ms: ms,
            reason: "loop detected".into(),
            kind: "loop".into(),
            agent: Some("bot".into()),
        };
        // A halt only another replica saw: halted here too, marked as recorded there.
        assert!(s.record_shared_halt(&shared("t1", 10)).unwrap());
        assert!(!s.record_shared_halt(&shared("t1", 11)).unwrap());
        let r = s.task_record("t1").unwrap().unwrap();
        assert!(r.is_halted() && r.recorded_elsewhere);
        assert_eq!((r.halted_ms, r.incident_id), (10, None));
        assert_eq!(r.agent.as_deref(), Some("bot"));
        assert_eq!(s.halted_tasks().unwrap(), std::slice::from_ref(&r));
        assert_eq!(s.guarded_tasks(10).unwrap(), [r]);
        // Released (as a reconcile does), then halted again elsewhere: halted again.
        assert!(s.release_task("t1", 20).unwrap());
        assert!(!s.task_record("t1").unwrap().unwrap().is_halted());
        assert!(s.record_shared_halt(&shared("t1", 30)).unwrap());
        let r = s.task_record("t1").unwrap().unwrap();
        assert_eq!(
            (r.status.as_str(), r.halted_ms, r.released_ms),
            ("halted", 30, None)
        );
        // A halt recorded here keeps its incident.
        let ev = serde_json::json!({"calls": 3});
        let id = s
            .record_incident(
                &NewIncident {
                    task: "t2",
                    agent: None,
                    kind: "iterations",
                    reason: "too many calls",
                    evidence: &ev,
                    dry_run: false,
                    request_id: None,
                },
                40,
            )
            .unwrap();
        assert!(!s.record_shared_halt(&shared("t2", 41)).unwrap());
        let r = s.task_record("t2").unwrap().unwrap();
        assert_eq!((r.incident_id, r.halted_ms), (Some(id), 40));
        assert!(!r.recorded_elsewhere);
        assert_eq!(r.reason, "too many calls");
    }
}

//! The guard at admission and halts shared with other replicas: a call's verdict (on
//! this replica's state, or on totals counted in Redis), a trip's incident and alert,
//! and the refresh-time work that keeps this replica's store and Redis agreeing on
//! which tasks are halted.

use super::Limits;
use super::guard::Verdict;
use crate::alerts::Alert;
use crate::clock::now_ms;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::loopguard::{Fingerprint, Halt};
use tollgate_store::counters::{
    HaltClaim, HaltCursor, KnownHalt, RedisCounters, TaskAdmit, TaskRun,
};
use tollgate_store::{StoreError, TaskStore};

/// Most halts recorded by other replicas copied into this replica's store per refresh
/// (a replica starting next to many halts catches up over a few refreshes).
const SHARED_HALTS_PER_REFRESH: usize = 500;

impl Limits {
    /// The guard's verdict on a call when replicas share Redis: one script refuses a task
    /// any replica halted or counts the call across replicas; the limits are checked on
    /// those shared totals, and loops on the task's history as every replica saw it (a
    /// second script, [`RedisCounters::task_loop`]; this replica's own history only if
    /// Redis cannot answer it). A halt is written to Redis
    /// before this call's 409 goes out, so from then on every replica refuses the task; the
    /// replica that wrote it first records the incident and alerts (once, however many
    /// replicas tripped at the same time), with the halt's time as Redis gave it. Also
    /// returns the run of the task the call was counted in, for its cost. `who`: the task
    /// and its agent.
    pub(super) async fn shared_verdict(
        &self,
        lc: &LimitsConfig,
        redis: &RedisCounters,
        (task, agent): (&str, Option<&str>),
        fp: Option<&Fingerprint>,
        now: i64,
    ) -> Result<(Verdict, Option<TaskRun>, Option<i64>), ApiError> {
        let (limits, dry_run) = lc.guard.for_agent(agent);
        let velocity = limits.max_cost_per_minute.is_some();
        let (totals, run) = match redis.task_admit(task, now, velocity).await {
            Ok(TaskAdmit::Halted(reason)) => return Ok((Verdict::Halted(reason), None, None)),
            Ok(TaskAdmit::Counted(t, run)) => (t, run),
            Err(e) if lc.fail_open => {
                tracing::error!(task, error = %e, "task guard: Redis unreachable; guarding with this replica's state only");
                let verdict = self.guard.observe(task, fp, now, limits, dry_run);
                return Ok((verdict, None, None));
            }
            Err(e) => return Err(ApiError::CountersUnavailable(e.0)),
        };
        let halt = match (totals.limit_halt(now, limits), fp) {
            (Some(h), _) => Some(h),
            (None, None) => None,
            // Loops on the task's history across every replica.
            (None, Some(fp)) => match redis.task_loop(task, run, fp, now, limits).await {
                Ok(Some(step)) => step.halt(&totals, fp, now, limits),
                // Released since it was counted: decided on a run that is over.
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(task, error = %e, "task guard: shared loop history unreachable; judging loops on this replica's calls");
                    self.guard
                        .observe_counted(task, &totals, Some(fp), now, limits, dry_run)
                }
            },
        };
        let Some(halt) = halt else {
            return Ok((Verdict::Continue, Some(run), None));
        };
        let (verdict, halted_ms) = match redis
            .task_halt(task, agent, run, &halt.reason, halt.kind.as_str(), dry_run)
            .await
        {
            Ok(HaltClaim::Already(_)) if dry_run => (Verdict::Continue, None),
            Ok(HaltClaim::Already(reason)) => (Verdict::Halted(reason), None),
            // Released (on some replica) since this call was counted: the halt was decided
            // on a run that is over, and the call is let through.
            Ok(HaltClaim::Stale) => (Verdict::Continue, None),
            Ok(HaltClaim::First { halted_ms }) => {
                if !dry_run {
                    self.guard.mark_halted(task, &halt.reason);
                }
                (Verdict::Trip(halt), Some(halted_ms))
            }
            Err(e) => {
                // Halted here and in this replica's store; the next refresh writes it to
                // Redis (`reconcile_halts`).
                tracing::error!(task, error = %e, "could not share the halt through Redis");
                if !dry_run {
                    self.guard.mark_halted(task, &halt.reason);
                }
                (Verdict::Trip(halt), None)
            }
        };
        Ok((verdict, Some(run), halted_ms))
    }

    /// With Redis: make this replica's store and Redis agree on halted tasks. Halts
    /// released elsewhere (`tollgate tasks release`, another replica's admin API) are
    /// released in this store too; halts Redis lost (it restarted empty) are written back.
    /// Returns the store's halts still in force.
    pub(super) async fn reconcile_halts(
        &self,
        redis: &RedisCounters,
        halted: Vec<tollgate_store::tasks::TaskRecord>,
    ) -> Vec<tollgate_store::tasks::TaskRecord> {
        if halted.is_empty() {
            return halted;
        }
        let known: Vec<KnownHalt> = halted
            .iter()
            .map(|r| KnownHalt {
                task: r.task.clone(),
                halted_ms: r.halted_ms,
                reason: r.reason.clone(),
                kind: r.kind.clone(),
                agent: r.agent.clone(),
            })
            .collect();
        let released = match redis.task_reconcile(&known).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not compare halted tasks with Redis");
                return halted;
            }
        };
        if released.is_empty() {
            return halted;
        }
        let mut done: Result<(), StoreError> = Ok(());
        for t in &released {
            if let Err(e) = self.store.release_task(t, now_ms()).await {
                done = Err(e);
            }
        }
        if done.is_err() {
            tracing::warn!("could not record releases made on another replica");
        }
        for t in &released {
            tracing::info!(task = %t, "task released on another replica");
        }
        halted
            .into_iter()
            .filter(|r| !released.contains(&r.task))
            .collect()
    }

    /// With Redis: copy into this replica's store the halts other replicas recorded that it
    /// lacks (so its `tollgate tasks`, `/admin/guard` and dashboard list every halt in
    /// force), marked as recorded elsewhere and timed as Redis timed them, which is what
    /// lets `reconcile_halts` release them when they are released anywhere (a release
    /// landing between reading a halt here and storing it is caught by the next refresh's
    /// reconcile the same way). Reads the index of halts from where the last refresh
    /// stopped, at most [`SHARED_HALTS_PER_REFRESH`] tasks; the cursor moves on only once
    /// they are stored. Runs on the refresh task, never on a request. Returns `halted`
    /// with the copied halts added.
    pub(super) async fn import_halts(
        &self,
        redis: &RedisCounters,
        mut halted: Vec<tollgate_store::tasks::TaskRecord>,
    ) -> Vec<tollgate_store::tasks::TaskRecord> {
        let cursor = self
            .halt_cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (tasks, next) = match redis
            .task_halts_since(&cursor, SHARED_HALTS_PER_REFRESH)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the halts other replicas recorded");
                return halted;
            }
        };
        let known: HashSet<&str> = halted.iter().map(|r| r.task.as_str()).collect();
        let missing: Vec<String> = tasks
            .into_iter()
            .filter(|t| !known.contains(t.as_str()))
            .collect();
        let halts = match redis.task_halts(&missing).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the halts other replicas recorded");
                return halted;
            }
        };
        if halts.is_empty() {
            self.advance_halt_cursor(next);
            return halted;
        }
        let stored: Result<Vec<_>, StoreError> = async {
            let mut out = Vec::new();
            for h in &halts {
                if self.store.record_shared_halt(h).await? {
                    tracing::info!(task = %h.task, reason = %h.reason, "task halted on another replica");
                }
                out.extend(self.store.task_record(&h.task).await?.filter(|r| r.is_halted()));
            }
            Ok(out)
        }
        .await;
        match stored {
            Ok(records) => {
                self.advance_halt_cursor(next);
                halted.extend(records);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record halts made on another replica");
            }
        }
        halted
    }

    /// Two refreshes can read the index at once (the periodic one and one after an admin
    /// change): the cursor never moves back within one index.
    fn advance_halt_cursor(&self, next: HaltCursor) {
        let mut c = self.halt_cursor.lock().unwrap_or_else(|p| p.into_inner());
        if next.is_past(&c) {
            *c = next;
        }
    }

    /// The guard tripped on this call: record the incident (the halt is persisted before
    /// the 409 goes out, so a restart keeps it), alert, and refuse, unless in dry run.
    /// `halted_ms`: the halt's time as Redis recorded it (else this replica's clock).
    pub(super) async fn trip(
        &self,
        attr: &Attribution,
        task: &str,
        halt: Halt,
        dry_run: bool,
        request_id: &str,
        halted_ms: Option<i64>,
    ) -> Result<(), ApiError> {
        self.stats.halts.fetch_add(1, Ordering::Relaxed);
        let mut evidence = halt.evidence.clone();
        if let Value::Object(e) = &mut evidence {
            e.insert("request_id".into(), Value::from(request_id));
            e.insert("agent".into(), Value::from(attr.agent.clone()));
        }
        let persisted = self
            .store
            .record_incident(
                &tollgate_store::tasks::NewIncident {
                    task,
                    agent: attr.agent.as_deref(),
                    kind: halt.kind.as_str(),
                    reason: &halt.reason,
                    evidence: &evidence,
                    dry_run,
                    request_id: Some(request_id),
                },
                halted_ms.unwrap_or_else(now_ms),
            )
            .await;
        match persisted {
            Ok(_) => self.guard.persisted(task),
            Err(e) => tracing::error!(task, error = %e, "could not persist the halt"),
        }
        self.alerts
            .send(task_alert(attr, task, &halt, &evidence, dry_run));
        if dry_run {
            tracing::warn!(
                task,
                kind = halt.kind.as_str(),
                "guard (dry run): {}",
                halt.reason
            );
            return Ok(());
        }
        tracing::warn!(
            task,
            kind = halt.kind.as_str(),
            "task halted: {}",
            halt.reason
        );
        Err(ApiError::TaskHalted {
            task: task.to_string(),
            reason: halt.reason,
        })
    }
}

fn task_alert(
    attr: &Attribution,
    task: &str,
    halt: &Halt,
    evidence: &Value,
    dry_run: bool,
) -> Alert {
    let agent = attr.agent.as_deref().unwrap_or("-");
    let calls = evidence["calls"].as_u64().unwrap_or(0);
    let cost = evidence["cost_usd"].as_str().unwrap_or("0").to_string();
    let (title, verb) = if dry_run {
        ("Runaway agent (dry run)".to_string(), "would have halted")
    } else {
        ("Task halted".to_string(), "halted")
    };
    Alert {
        kind: if dry_run {
            "task_flagged"
        } else {
            "task_halted"
        },
        subject: task.to_string(),
        title: format!("{title}: {task}"),
        text: format!(
            "tollgate {verb} task `{task}` of agent `{agent}`: {}. {calls} calls, ${cost} so far.",
            halt.reason
        ),
        fields: vec![
            ("Task".into(), task.to_string()),
            ("Agent".into(), agent.to_string()),
            ("Why".into(), halt.kind.as_str().to_string()),
            ("Calls".into(), calls.to_string()),
            ("Cost so far".into(), format!("${cost}")),
            (
                "Team / user".into(),
                format!(
                    "{} / {}",
                    attr.team.as_deref().unwrap_or("-"),
                    attr.user.as_deref().unwrap_or("-")
                ),
            ),
        ],
        excerpt: evidence["repeated"]
            .as_str()
            .or_else(|| evidence["last"].as_str())
            .map(str::to_string),
        footer: if dry_run {
            "Dry run: the task keeps running. Set `guard.dry_run = false` to halt.".into()
        } else {
            format!(
                "Every later call gets 409 task_halted. Release: `tollgate tasks release {task}`"
            )
        },
    }
}

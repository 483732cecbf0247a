//! The runaway-agent guard at run time: each task's [`TaskState`] (sharded maps, a lock
//! held only for the arithmetic, never across an `.await`) and the set of halted tasks.
//!
//! A halt is decided and recorded in the same critical section, so two concurrent calls
//! of a looping task trip it once (one incident, one alert). Halts are persisted by the
//! caller and re-read from the store every few seconds, which is how a release from the
//! CLI reaches a running gateway; releasing also forgets the task's history, so it
//! starts afresh.
//!
//! With Redis counters the halted set, the call count, cost and velocity are shared by
//! every replica (`tollgate_store::counters::RedisCounters::task_admit`), and so is loop
//! detection's history (`RedisCounters::task_loop`): admission asks Redis first, and
//! [`TaskGuard::observe_counted`] (this replica's own loop history, checking the limits
//! on the shared totals) is the fallback when Redis cannot step the loop history.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, RwLock};
use tollgate_domain::loopguard::{Fingerprint, GuardLimits, Halt, TaskState, TaskTotals};
use tollgate_domain::money::Money;
use tollgate_store::tasks::TaskRecord;

const SHARDS: usize = 16;
/// Tasks idle this long are forgotten first when a shard is full.
const IDLE_MS: i64 = 6 * 3_600_000;
/// Tasks remembered per shard (about 32k in all; a task's state is a few KiB, at most
/// ~40 KiB).
const MAX_PER_SHARD: usize = 2048;

/// What the guard says about a call.
#[derive(Debug)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// This call tripped the guard (first time for this task).
    Trip(Halt),
    /// The task was already halted, for this reason.
    Halted(String),
}

/// A halted task: why, and whether the halt is in the store yet.
#[derive(Debug, Clone)]
struct HaltNote {
    reason: String,
    /// Decided here, not yet persisted: a refresh from the store must not drop it.
    pending: bool,
}

#[derive(Default)]
pub struct TaskGuard {
    shards: [Mutex<HashMap<String, TaskState>>; SHARDS],
    halted: RwLock<HashMap<String, HaltNote>>,
}

impl TaskGuard {
    fn shard(&self, task: &str) -> std::sync::MutexGuard<'_, HashMap<String, TaskState>> {
        let mut h = DefaultHasher::new();
        task.hash(&mut h);
        let i = (h.finish() % SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `task` is halted, if it is.
    pub fn halted_reason(&self, task: &str) -> Option<String> {
        self.halted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
            .map(|n| n.reason.clone())
    }

    /// The halt of `task` is in the store now.
    pub fn persisted(&self, task: &str) {
        if let Some(n) = self
            .halted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(task)
        {
            n.pending = false;
        }
    }

    /// Look at a call about to be forwarded. In dry run a trip is reported once per task
    /// and the task keeps running.
    pub fn observe(
        &self,
        task: &str,
        fingerprint: Option<&Fingerprint>,
        now_ms: i64,
        limits: &GuardLimits,
        dry_run: bool,
    ) -> Verdict {
        let mut shard = self.shard(task);
        if let Some(reason) = self.halted_reason(task) {
            return Verdict::Halted(reason);
        }
        if !shard.contains_key(task) && shard.len() >= MAX_PER_SHARD {
            evict(&mut shard, now_ms);
        }
        let state = shard
            .entry(task.to_string())
            .or_insert_with(|| TaskState::new(now_ms));
        let Some(halt) = state.observe(fingerprint, now_ms, limits) else {
            return Verdict::Continue;
        };
        if dry_run {
            if state.flagged.is_some() {
                return Verdict::Continue;
            }
            state.flagged = Some(halt.kind);
        } else {
            self.halted
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    task.to_string(),
                    HaltNote {
                        reason: halt.reason.clone(),
                        pending: true,
                    },
                );
        }
        Verdict::Trip(halt)
    }

    /// [`TaskGuard::observe`] for a call whose task's totals (this call included) were
    /// counted by a store shared with other replicas, which also decides whether the
    /// task is halted: the limits are checked on `totals`, loops on this replica's
    /// history of the task. A history older than the shared totals (the task was
    /// released elsewhere and started again) is dropped first. The caller records a
    /// halt in the shared store; in dry run a trip is reported once per task here.
    pub fn observe_counted(
        &self,
        task: &str,
        totals: &TaskTotals,
        fingerprint: Option<&Fingerprint>,
        now_ms: i64,
        limits: &GuardLimits,
        dry_run: bool,
    ) -> Option<Halt> {
        let mut shard = self.shard(task);
        if !shard.contains_key(task) && shard.len() >= MAX_PER_SHARD {
            evict(&mut shard, now_ms);
        }
        let state = shard
            .entry(task.to_string())
            .or_insert_with(|| TaskState::new(totals.started_ms));
        if state.started_ms != totals.started_ms {
            *state = TaskState::new(totals.started_ms);
        }
        let halt = state.observe_counted(totals, fingerprint, now_ms, limits)?;
        if dry_run {
            if state.flagged.is_some() {
                return None;
            }
            state.flagged = Some(halt.kind);
        }
        Some(halt)
    }

    /// A halt decided here and recorded in the shared store, not yet in this replica's
    /// own store.
    pub fn mark_halted(&self, task: &str, reason: &str) {
        self.halted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                task.to_string(),
                HaltNote {
                    reason: reason.to_string(),
                    pending: true,
                },
            );
    }

    /// A settled call's cost.
    pub fn record_cost(&self, task: &str, cost: Money, now_ms: i64) {
        if let Some(s) = self.shard(task).get_mut(task) {
            s.record_cost(cost, now_ms);
        }
    }

    /// A settled sample's answer (see [`TaskState::record_answer`]).
    pub fn record_answer(&self, task: &str, call_simhash: u64, answer: u64) {
        if let Some(s) = self.shard(task).get_mut(task) {
            s.record_answer(call_simhash, answer);
        }
    }

    /// Release a task: it may run again, with a fresh history.
    pub fn release(&self, task: &str) {
        self.halted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task);
        self.shard(task).remove(task);
    }

    /// Make the halted set the store's (at startup and on every refresh). Tasks no
    /// longer halted there (released from the CLI) are released here too.
    pub fn sync_halted(&self, records: &[TaskRecord]) {
        let mut now: HashMap<String, HaltNote> = records
            .iter()
            .filter(|r| r.is_halted())
            .map(|r| {
                let note = HaltNote {
                    reason: r.reason.clone(),
                    pending: false,
                };
                (r.task.clone(), note)
            })
            .collect();
        let released: Vec<String> = {
            let mut h = self.halted.write().unwrap_or_else(|p| p.into_inner());
            for (t, n) in h.iter().filter(|(_, n)| n.pending) {
                now.entry(t.clone()).or_insert_with(|| n.clone());
            }
            let gone = h
                .keys()
                .filter(|t| !now.contains_key(*t))
                .cloned()
                .collect();
            *h = now;
            gone
        };
        for t in released {
            self.shard(&t).remove(&t);
        }
    }

    /// Tasks the guard is watching.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn halted_count(&self) -> usize {
        self.halted.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Make room in a full shard: drop idle tasks, then the least recently seen quarter.
fn evict(shard: &mut HashMap<String, TaskState>, now_ms: i64) {
    shard.retain(|_, s| s.last_ms > now_ms - IDLE_MS);
    if shard.len() >= MAX_PER_SHARD {
        let mut ages: Vec<i64> = shard.values().map(|s| s.last_ms).collect();
        ages.sort_unstable();
        let cut = ages[MAX_PER_SHARD / 4];
        shard.retain(|_, s| s.last_ms > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_once_then_stays_halted_until_released() {
        let g = TaskGuard::default();
        let limits = GuardLimits {
            loop_max_repeats: Some(1),
            ..GuardLimits::default()
        };
        let fp = Fingerprint::of_text("assistant search tool no results");
        assert!(matches!(
            g.observe("t", Some(&fp), 0, &limits, false),
            Verdict::Continue
        ));
        assert!(matches!(
            g.observe("t", Some(&fp), 1, &limits, false),
            Verdict::Continue
        ));
        assert!(matches!(
            g.observe("t", Some(&fp), 2, &limits, false),
            Verdict::Trip(_)
        ));
        assert!(matches!(
            g.observe("t", Some(&fp), 3, &limits, false),
            Verdict::Halted(_)
        ));
        assert!(g.halted_reason("t").is_some());
        g.release("t");
        assert!(matches!(
            g.observe("t", Some(&fp), 4, &limits, false),
            Verdict::Continue
        ));
        // Dry run: reported once, never halted.
        for i in 0..3 {
            let _ = g.observe("d", Some(&fp), i, &limits, true);
        }
        assert!(g.halted_reason("d").is_none());
        assert!(matches!(
            g.observe("d", Some(&fp), 9, &limits, true),
            Verdict::Continue
        ));
    }

    #[test]
    fn sync_from_the_store_releases_what_the_store_released() {
        let g = TaskGuard::default();
        let rec = |task: &str, status: &str| TaskRecord {
            task: task.into(),
            agent: None,
            status: status.into(),
            kind: "loop".into(),
            reason: "loop".into(),
            incident_id: None,
            halted_ms: 0,
            released_ms: None,
            recorded_elsewhere: false,
        };
        g.sync_halted(&[rec("a", "halted"), rec("b", "halted")]);
        assert_eq!(g.halted_count(), 2);
        g.sync_halted(&[rec("a", "halted"), rec("b", "released")]);
        assert!(g.halted_reason("a").is_some() && g.halted_reason("b").is_none());
    }
}

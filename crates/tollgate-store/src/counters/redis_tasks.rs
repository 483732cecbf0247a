//! The runaway-agent guard's shared state in Redis, so every replica pointed at one Redis
//! sees one task: whether it is halted, how many calls it made, what it cost.
//!
//! Keys (under the counters' prefix; `<t>` is the task id):
//! - `th:<t>`: the halt, a hash `{reason, kind, ms}`. No expiry: a halted task stays
//!   halted until released.
//! - `tf:<t>`: a dry-run flag (the task was reported once; it keeps running).
//! - `tc:<t>`: the task's totals, a hash `{started, iter, cost}` (cost in nano-USD),
//!   expiring after [`TASK_IDLE_MS`] without a call.
//! - `tv:<t>`: settled costs of the last minute, a sorted set of `<nanos>:<request id>`
//!   by time (spend velocity).
//! - `tr:<t>`: when the task was last released (ms), kept [`RELEASED_KEEP_MS`]: how a
//!   replica whose own store still says "halted" learns that someone released it
//!   elsewhere (and tells a release from a Redis that lost its data).
//!
//! Admission is one script run ([`RedisCounters::task_admit`]): refuse if halted,
//! otherwise count the call and return the totals, atomically. The call count is
//! therefore exact across replicas: with `max_iterations = N`, exactly N calls pass
//! however they are spread and raced.

use super::{CounterError, RedisCounters};
use redis::Script;
use tollgate_domain::loopguard::TaskTotals;
use tollgate_domain::money::Money;

/// A task's totals are forgotten after this long without a call.
pub const TASK_IDLE_MS: i64 = 7 * 86_400_000;
/// How long a release is remembered.
pub const RELEASED_KEEP_MS: i64 = 30 * 86_400_000;
/// Most settled costs remembered per task for the velocity window.
const VELOCITY_ENTRIES: i64 = 4096;

const ADMIT: &str = r#"
-- KEYS: th:<t>, tc:<t>, tv:<t>;  ARGV: now, idle_ms, velocity (1/0)
local r = redis.call('HGET', KEYS[1], 'reason')
if r then return {0, r} end
local n = redis.call('HINCRBY', KEYS[2], 'iter', 1)
redis.call('HSETNX', KEYS[2], 'started', ARGV[1])
local v = redis.call('HMGET', KEYS[2], 'started', 'cost')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local spend = 0
if ARGV[3] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[1]) - 60000)
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    spend = spend + tonumber(string.match(m, '^(%d+)') or '0')
  end
end
return {1, n, tonumber(v[1]) or tonumber(ARGV[1]), tonumber(v[2] or '0') or 0, spend}
"#;

const COST: &str = r#"
-- KEYS: tc:<t>, tv:<t>;  ARGV: nanos, now, request id, most entries kept
-- A task released (or forgotten) since the call was admitted starts afresh: no charge.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(ARGV[1]) <= 0 then return 1 end
redis.call('HINCRBY', KEYS[1], 'cost', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1] .. ':' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - 60000)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', KEYS[2], 120000)
return 1
"#;

const HALT: &str = r#"
-- KEYS: th:<t> (or tf:<t> in dry run);  ARGV: reason, kind, ms, dry (1/0), idle_ms
if ARGV[4] == '1' then
  if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[5]) then return {1} end
  return {0, ''}
end
local r = redis.call('HGET', KEYS[1], 'reason')
if r then return {0, r} end
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'kind', ARGV[2], 'ms', ARGV[3])
return {1}
"#;

const RELEASE: &str = r#"
-- KEYS: th, tf, tc, tv, tr (of one task);  ARGV: now, keep_ms
local was = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[2])
return was
"#;

const RECONCILE: &str = r#"
-- KEYS: per task (th, tr);  ARGV: per task (halted_ms, reason, kind)
-- Returns the (0-based) indices of tasks released since they were halted.
local out = {}
for i = 1, #KEYS / 2 do
  local a = (i - 1) * 3
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 0 then
    local rel = tonumber(redis.call('GET', KEYS[2 * i]) or '-1') or -1
    if rel >= tonumber(ARGV[a + 1]) then
      out[#out + 1] = i - 1
    else
      redis.call('HSET', KEYS[2 * i - 1], 'reason', ARGV[a + 2], 'kind', ARGV[a + 3], 'ms', ARGV[a + 1])
    end
  end
end
return out
"#;

/// The guard's scripts (loaded once per [`RedisCounters`]).
pub(super) struct TaskScripts {
    admit: Script,
    cost: Script,
    halt: Script,
    release: Script,
    reconcile: Script,
}

impl TaskScripts {
    pub(super) fn new() -> TaskScripts {
        TaskScripts {
            admit: Script::new(ADMIT),
            cost: Script::new(COST),
            halt: Script::new(HALT),
            release: Script::new(RELEASE),
            reconcile: Script::new(RECONCILE),
        }
    }
}

/// What the shared state says about a call about to be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAdmit {
    /// Halted (by any replica), for this reason. The call was not counted.
    Halted(String),
    /// Counted: the task's totals with this call included.
    Counted(TaskTotals),
}

/// A halt (or dry-run flag) offered to the shared state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltClaim {
    /// This replica recorded it first: it records the incident and alerts.
    First,
    /// Another replica got there first; its reason (empty for a dry-run flag).
    Already(String),
}

/// A halted task as a replica's own store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHalt {
    pub task: String,
    pub halted_ms: i64,
    pub reason: String,
    pub kind: String,
}

fn err(e: impl std::fmt::Display) -> CounterError {
    CounterError(e.to_string())
}

fn int(v: &redis::Value) -> Result<i64, CounterError> {
    redis::FromRedisValue::from_redis_value_ref(v).map_err(err)
}

fn text(v: &redis::Value) -> Result<String, CounterError> {
    redis::FromRedisValue::from_redis_value_ref(v).map_err(err)
}

impl RedisCounters {
    fn task_key(&self, kind: &str, task: &str) -> String {
        self.k(&format!("{kind}:{task}"))
    }

    /// Refuse a halted task, or count a call and return the task's totals.
    /// `velocity`: also sum the last minute's settled cost (skipped when no velocity
    /// limit applies).
    pub async fn task_admit(
        &self,
        task: &str,
        now_ms: i64,
        velocity: bool,
    ) -> Result<TaskAdmit, CounterError> {
        let mut inv = self.tasks.admit.prepare_invoke();
        inv.key(self.task_key("th", task))
            .key(self.task_key("tc", task))
            .key(self.task_key("tv", task))
            .arg(now_ms)
            .arg(TASK_IDLE_MS)
            .arg(if velocity { "1" } else { "0" });
        let mut conn = self.conn().await?;
        let out: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let bad = || CounterError(format!("task admit script answered {out:?}"));
        match out.first().map(int).transpose()?.ok_or_else(bad)? {
            0 => Ok(TaskAdmit::Halted(text(out.get(1).ok_or_else(bad)?)?)),
            1 => {
                let at = |i: usize| out.get(i).ok_or_else(bad).and_then(int);
                Ok(TaskAdmit::Counted(TaskTotals {
                    iterations: at(1)?.max(0) as u64,
                    started_ms: at(2)?,
                    cost: Money::from_nanos(at(3)?),
                    spend_last_minute: Money::from_nanos(at(4)?),
                }))
            }
            _ => Err(bad()),
        }
    }

    /// Add a settled call's cost to the task's totals (and the velocity window).
    pub async fn task_cost(
        &self,
        task: &str,
        cost: Money,
        now_ms: i64,
        request_id: &str,
    ) -> Result<(), CounterError> {
        let mut inv = self.tasks.cost.prepare_invoke();
        inv.key(self.task_key("tc", task))
            .key(self.task_key("tv", task))
            .arg(cost.nanos().max(0))
            .arg(now_ms)
            .arg(request_id)
            .arg(VELOCITY_ENTRIES);
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(())
    }

    /// Record a halt (or, `dry_run`, a flag) unless one is there already. Every replica
    /// refuses the task from the moment this returns.
    pub async fn task_halt(
        &self,
        task: &str,
        reason: &str,
        kind: &str,
        now_ms: i64,
        dry_run: bool,
    ) -> Result<HaltClaim, CounterError> {
        let mut inv = self.tasks.halt.prepare_invoke();
        inv.key(self.task_key(if dry_run { "tf" } else { "th" }, task))
            .arg(reason)
            .arg(kind)
            .arg(now_ms)
            .arg(if dry_run { "1" } else { "0" })
            .arg(TASK_IDLE_MS);
        let mut conn = self.conn().await?;
        let out: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        match out.first().map(int).transpose()? {
            Some(1) => Ok(HaltClaim::First),
            Some(0) => Ok(HaltClaim::Already(
                out.get(1).map(text).transpose()?.unwrap_or_default(),
            )),
            _ => Err(CounterError(format!("task halt script answered {out:?}"))),
        }
    }

    /// Release a task everywhere: no longer halted, totals and history forgotten.
    /// `true` if it was halted.
    pub async fn task_release(&self, task: &str, now_ms: i64) -> Result<bool, CounterError> {
        let mut inv = self.tasks.release.prepare_invoke();
        for kind in ["th", "tf", "tc", "tv", "tr"] {
            inv.key(self.task_key(kind, task));
        }
        inv.arg(now_ms).arg(RELEASED_KEEP_MS);
        let mut conn = self.conn().await?;
        let was: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(was == 1)
    }

    /// Compare the halts a replica's own store holds with the shared state: a halt
    /// missing from Redis because it was released since is returned (the replica then
    /// releases it in its store); one missing because Redis lost its data is written
    /// back.
    pub async fn task_reconcile(&self, known: &[KnownHalt]) -> Result<Vec<String>, CounterError> {
        let mut released = Vec::new();
        for chunk in known.chunks(128) {
            let mut inv = self.tasks.reconcile.prepare_invoke();
            for h in chunk {
                inv.key(self.task_key("th", &h.task))
                    .key(self.task_key("tr", &h.task));
                inv.arg(h.halted_ms).arg(&h.reason).arg(&h.kind);
            }
            let mut conn = self.conn().await?;
            let idx: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(err)?;
            for i in idx {
                if let Some(h) = usize::try_from(i).ok().and_then(|i| chunk.get(i)) {
                    released.push(h.task.clone());
                }
            }
        }
        Ok(released)
    }
}

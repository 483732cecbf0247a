//! The runaway-agent guard's shared state in Redis, so every replica pointed at one Redis
//! sees one task: whether it is halted, how many calls it made, what it cost.
//!
//! Keys (under the counters' prefix; `<t>` is the task id):
//! - `th:<t>`: the halt, a hash `{reason, kind, ms, agent}` (`agent` absent for a task
//!   without one). No expiry: a halted task stays halted until released.
//! - `thi`: the index of halts, a sorted set of the halted tasks scored by when their halt
//!   was written (a sequence number from `ths`): how a replica learns of halts other
//!   replicas recorded, a page at a time and only the new ones
//!   ([`RedisCounters::task_halts_since`]). A release removes the task.
//! - `ths`: the index's sequence, a hash `{epoch, n}`; `epoch` (Redis's time when the
//!   sequence started) tells a replica that the index was lost and restarted, so it
//!   reads it again from the start.
//! - `tf:<t>`: a dry-run flag (the task was reported once; it keeps running).
//! - `tc:<t>`: the task's totals, a hash `{gen, started, iter, cost}` (cost in nano-USD),
//!   expiring after [`TASK_IDLE_MS`] without a call. `gen` names this run of the task
//!   (unique, from the `tgen` counter): a release or expiry deletes the totals, and the
//!   next call starts a run with a new `gen`.
//! - `tv:<t>`: settled costs of the last minute, a sorted set of `<nanos>:<request id>`
//!   by time (spend velocity).
//! - `tr:<t>`: when the task was last released (ms), kept [`RELEASED_KEEP_MS`]: how a
//!   replica whose own store still says "halted" learns that someone released it
//!   elsewhere (and tells a release from a Redis that lost its data).
//! - `tgen`: the last run generation handed out.
//! - `tl:<t>`: loop detection's window, a list of the task's last calls, newest first:
//!   `<simhash hi> <simhash lo> <ms> <answer hi|-> <answer lo|-> <summary>` (the SimHash
//!   halves as signed 32-bit numbers, which Lua's `bit` library works on).
//! - `tn:<t>`: the shingles the task has seen (a set, emptied when it outgrows its bound),
//!   for loop detection's novelty.
//!   Both expire with the totals, are dropped by a release, and start over when the run
//!   changes (`tc:<t>`'s `lgen` names the run they belong to); the streaks are `tc:<t>`'s
//!   `rep` and `stale`.
//!
//! Keys are built on the replica and passed to the scripts (never built inside them).
//!
//! Admission is one script run ([`RedisCounters::task_admit`]): refuse if halted,
//! otherwise count the call and return the totals and the run's generation, atomically.
//! The call count is therefore exact across replicas: with `max_iterations = N`, exactly
//! N calls pass however they are spread and raced.
//!
//! A halt and a settled cost name the run their call was admitted in, and change nothing
//! if the task was released since (an operator's release is never undone by a call that
//! was in flight when it happened, nor charged to the task's next run).
//!
//! Whether a halt was released is decided on one clock, Redis's: the halt's time (`ms`,
//! which [`RedisCounters::task_halt`] returns and the replica stores as the halt's time)
//! and the release's time are both taken from Redis (`TIME`) inside the scripts, and
//! ordered: a halt is stamped after the task's last release, a release no earlier than
//! the halt it clears. So a release is recognised whichever hosts halted and released
//! and however their clocks disagree; [`RedisCounters::task_reconcile`] compares a
//! stored halt's time with the last release's.
//!
//! Every replica's own database lists the halts in force wherever they were recorded: on
//! each refresh a replica reads the index from where it stopped
//! ([`RedisCounters::task_halts_since`], usually an empty answer) and copies the halts its
//! database lacks ([`RedisCounters::task_halts`]) as recorded by another replica. Copies
//! carry the halt's Redis time, so [`RedisCounters::task_reconcile`] releases them like
//! the replica's own when a release happens anywhere.

use super::{CounterError, RedisCounters};
use redis::Script;
use tollgate_domain::loopguard::{
    Fingerprint, GuardLimits, LoopStep, MAX_SEEN_SHINGLES, SimilarCall, TaskTotals,
};
use tollgate_domain::money::Money;

/// A task's totals are forgotten after this long without a call.
pub const TASK_IDLE_MS: i64 = 7 * 86_400_000;
/// How long a release is remembered.
pub const RELEASED_KEEP_MS: i64 = 30 * 86_400_000;
/// Most settled costs remembered per task for the velocity window.
const VELOCITY_ENTRIES: i64 = 4096;

const ADMIT: &str = r#"
-- KEYS: th:<t>, tc:<t>, tv:<t>, tgen;  ARGV: now, idle_ms, velocity (1/0)
local r = redis.call('HGET', KEYS[1], 'reason')
if r then return {0, r} end
local n = redis.call('HINCRBY', KEYS[2], 'iter', 1)
local g = redis.call('HGET', KEYS[2], 'gen')
if not g then
  g = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[2], 'gen', g)
end
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
return {1, n, tonumber(v[1]) or tonumber(ARGV[1]), tonumber(v[2] or '0') or 0, spend, tonumber(g)}
"#;

const COST: &str = r#"
-- KEYS: tc:<t>, tv:<t>;  ARGV: nanos, now, request id, most entries kept, generation
-- A call admitted in a run that was released (or forgotten) since: no charge, neither to
-- the totals nor to the velocity of the task's next run.
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[5] then return 0 end
if tonumber(ARGV[1]) <= 0 then return 1 end
redis.call('HINCRBY', KEYS[1], 'cost', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1] .. ':' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - 60000)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', KEYS[2], 120000)
return 1
"#;

const LOOP: &str = r#"
-- KEYS: tc:<t>, tl:<t>, tn:<t>
-- ARGV: gen, hi, lo, now, max_distance, min_novelty_pct, window, max_seen, idle_ms,
--       sampling (1: a sample judged by its answers), summary, shingles...
-- One call's step through loop detection, on the state every replica shares: the same
-- rules as tollgate_domain::loopguard::LoopStep::next. Returns {-1} if the call's run is
-- over, else {repeat_streak, stale_streak, window, then per near-identical earlier call
-- (newest first): distance, ms, answer hi, answer lo, summary}.
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return {-1} end
if redis.call('HGET', KEYS[1], 'lgen') ~= ARGV[1] then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'lgen', ARGV[1], 'rep', 0, 'stale', 0)
end
local function pop(x)
  local n = 0
  while x ~= 0 do x = bit.band(x, x - 1); n = n + 1 end
  return n
end
local function dist(h1, l1, h2, l2)
  return pop(bit.bxor(h1, h2)) + pop(bit.bxor(l1, l2))
end
local hi, lo, maxd = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local total = #ARGV - 11
local new = 0
if total > 0 then
  for _, m in ipairs(redis.call('SMISMEMBER', KEYS[3], unpack(ARGV, 12))) do
    if m == 0 then new = new + 1 end
  end
end
local novelty = 0
if total > 0 then novelty = math.floor(new * 100 / total) end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
local sim = {}
for _, e in ipairs(entries) do
  local h, l, at, ah, al, s = string.match(e, '^(%-?%d+) (%-?%d+) (%d+) (%S+) (%S+) (.*)$')
  if h then
    local d = dist(tonumber(h), tonumber(l), hi, lo)
    if d <= maxd then sim[#sim + 1] = {d, at, ah, al, s} end
  end
end
-- Do near-identical calls have near-identical answers (the newest answered one's and
-- another's)?
local repeats = false
local nh, nl = nil, nil
for _, c in ipairs(sim) do
  if c[3] ~= '-' then
    if nh == nil then
      nh, nl = tonumber(c[3]), tonumber(c[4])
    elseif dist(tonumber(c[3]), tonumber(c[4]), nh, nl) <= maxd then
      repeats = true
      break
    end
  end
end
local novel = novelty >= tonumber(ARGV[6])
local rep, stale = 0, 0
if not (ARGV[10] == '1' and #sim > 0 and not repeats) then
  if #sim > 0 and not novel then rep = redis.call('HINCRBY', KEYS[1], 'rep', 1) end
  if not novel then stale = redis.call('HINCRBY', KEYS[1], 'stale', 1) end
end
if rep == 0 then redis.call('HSET', KEYS[1], 'rep', 0) end
if stale == 0 then redis.call('HSET', KEYS[1], 'stale', 0) end
if total > 0 then
  if redis.call('SCARD', KEYS[3]) + total > tonumber(ARGV[8]) then redis.call('DEL', KEYS[3]) end
  redis.call('SADD', KEYS[3], unpack(ARGV, 12))
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
end
redis.call('LPUSH', KEYS[2], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' - - ' .. ARGV[11])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
local out = {rep, stale, #entries}
for _, c in ipairs(sim) do
  out[#out + 1] = c[1]; out[#out + 1] = c[2]; out[#out + 1] = c[3]
  out[#out + 1] = c[4]; out[#out + 1] = c[5]
end
return out
"#;

const ANSWER: &str = r#"
-- KEYS: tl:<t>;  ARGV: call hi, call lo, answer hi, answer lo
-- The answer goes to the newest call with that SimHash that has none yet.
for i, e in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local h, l, at, ah, rest = string.match(e, '^(%-?%d+) (%-?%d+) (%d+) (%S+) %S+ (.*)$')
  if h == ARGV[1] and l == ARGV[2] and ah == '-' then
    redis.call('LSET', KEYS[1], i - 1, h .. ' ' .. l .. ' ' .. at .. ' ' .. ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. rest)
    return 1
  end
end
return 0
"#;

/// Redis's clock in ms, as Lua (shared by the scripts that stamp halts and releases).
const REDIS_NOW: &str = r#"
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// Add a task to the index of halts (`thi`) with the next number of its sequence (`ths`,
/// whose epoch is set when the sequence starts), as Lua.
const INDEX_HALT: &str = r#"
local function index_halt(thi, ths, task)
  if redis.call('HEXISTS', ths, 'epoch') == 0 then
    local t = redis.call('TIME')
    redis.call('HSET', ths, 'epoch', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
  end
  redis.call('ZADD', thi, redis.call('HINCRBY', ths, 'n', 1), task)
end
"#;

const HALT: &str = r#"
-- KEYS: th:<t> (or tf:<t> in dry run), tc:<t>, tr:<t>, thi, ths
-- ARGV: reason, kind, dry (1/0), idle_ms, generation, task, agent ('' for none)
-- {1, ms}: recorded at ms (Redis's clock, after the task's last release); {0, reason}:
-- halted (flagged) already; {2}: the call's run was released since it was admitted.
if ARGV[3] == '1' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
else
  local r = redis.call('HGET', KEYS[1], 'reason')
  if r then return {0, r} end
end
if redis.call('HGET', KEYS[2], 'gen') ~= ARGV[5] then return {2} end
local ms = redis_now()
local rel = tonumber(redis.call('GET', KEYS[3]) or '')
if rel and ms <= rel then ms = rel + 1 end
local at = string.format('%.0f', ms)
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'kind', ARGV[2], 'ms', at)
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'agent', ARGV[7]) end
  index_halt(KEYS[4], KEYS[5], ARGV[6])
end
return {1, ms}
"#;

const RELEASE: &str = r#"
-- KEYS: th, tf, tc, tv, tr, tl, tn (of one task), thi;  ARGV: keep_ms, task
-- Stamped on Redis's clock, no earlier than the halt it clears or the last release.
local was = redis.call('EXISTS', KEYS[1])
local ms = redis_now()
local h = tonumber(redis.call('HGET', KEYS[1], 'ms') or '')
if h and h > ms then ms = h end
local prev = tonumber(redis.call('GET', KEYS[5]) or '')
if prev and prev > ms then ms = prev end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[2])
redis.call('SET', KEYS[5], string.format('%.0f', ms), 'PX', ARGV[1])
return was
"#;

const RECONCILE: &str = r#"
-- KEYS: thi, ths, then per task (th, tr);  ARGV: per task (halted_ms, reason, kind,
-- agent ('' for none), task)
-- Returns the (0-based) indices of tasks released since they were halted. A halt Redis
-- lost is written back (and indexed); one in force but not in the index (recorded by a
-- tollgate that did not index halts) is indexed.
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local th, tr = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local a = (i - 1) * 5
  if redis.call('EXISTS', th) == 0 then
    local rel = tonumber(redis.call('GET', tr) or '-1') or -1
    if rel >= tonumber(ARGV[a + 1]) then
      out[#out + 1] = i - 1
    else
      redis.call('HSET', th, 'reason', ARGV[a + 2], 'kind', ARGV[a + 3], 'ms', ARGV[a + 1])
      if ARGV[a + 4] ~= '' then redis.call('HSET', th, 'agent', ARGV[a + 4]) end
      index_halt(KEYS[1], KEYS[2], ARGV[a + 5])
    end
  elseif not redis.call('ZSCORE', KEYS[1], ARGV[a + 5]) then
    index_halt(KEYS[1], KEYS[2], ARGV[a + 5])
  end
end
return out
"#;

const HALTS_SINCE: &str = r#"
-- KEYS: thi, ths;  ARGV: epoch seen ('' for none), after (a sequence number), most
-- Returns {epoch, after, task, seq, task, seq, ...}: the tasks indexed after `after`, in
-- order; from the start if the index restarted since (another epoch).
local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
local after = tonumber(ARGV[2]) or 0
if epoch ~= ARGV[1] then after = 0 end
local out = {epoch, after}
local page = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', after), '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #page, 2 do
  out[#out + 1] = page[i]
  out[#out + 1] = tonumber(page[i + 1])
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
    halts_since: Script,
    loop_step: Script,
    answer: Script,
}

impl TaskScripts {
    pub(super) fn new() -> TaskScripts {
        TaskScripts {
            admit: Script::new(ADMIT),
            cost: Script::new(COST),
            halt: Script::new(&format!("{REDIS_NOW}{INDEX_HALT}{HALT}")),
            release: Script::new(&format!("{REDIS_NOW}{RELEASE}")),
            reconcile: Script::new(&format!("{INDEX_HALT}{RECONCILE}")),
            halts_since: Script::new(HALTS_SINCE),
            loop_step: Script::new(LOOP),
            answer: Script::new(ANSWER),
        }
    }
}

/// One run of a task in the shared state: from its first call to its release (or until
/// its totals were forgotten for idleness). A halt or cost offered for a run that is
/// over changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskRun(pub i64);

/// What the shared state says about a call about to be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAdmit {
    /// Halted (by any replica), for this reason. The call was not counted.
    Halted(String),
    /// Counted in this run of the task: its totals with this call included.
    Counted(TaskTotals, TaskRun),
}

/// A halt (or dry-run flag) offered to the shared state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltClaim {
    /// This replica recorded it first: it records the incident and alerts, and stores
    /// `halted_ms` (Redis's clock) as the halt's time, the one
    /// [`RedisCounters::task_reconcile`] compares with a release.
    First { halted_ms: i64 },
    /// Another replica got there first; its reason (empty for a dry-run flag).
    Already(String),
    /// The run the call was counted in was released (or forgotten) since: nothing was
    /// recorded, the call was decided on totals that no longer exist.
    Stale,
}

/// A halted task as a replica's own store records it, or as the shared state holds it
/// ([`RedisCounters::task_halts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHalt {
    pub task: String,
    /// The halt's time as [`HaltClaim::First`] gave it (a halt recorded while Redis was
    /// unreachable has the replica's own clock here).
    pub halted_ms: i64,
    pub reason: String,
    pub kind: String,
    pub agent: Option<String>,
}

/// Where a replica stopped reading the index of halts (`thi`): the index's epoch and the
/// last sequence number read. The default reads it from the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaltCursor {
    epoch: String,
    seq: i64,
}

impl HaltCursor {
    /// Whether `self` has read further than `other` (a later read of the same index, or a
    /// read of a newer index).
    pub fn is_past(&self, other: &HaltCursor) -> bool {
        self.epoch != other.epoch || self.seq > other.seq
    }
}

/// A SimHash as two signed 32-bit halves (Lua's `bit` library works on those).
fn halves(h: u64) -> (i32, i32) {
    ((h >> 32) as u32 as i32, h as u32 as i32)
}

fn join(hi: i64, lo: i64) -> u64 {
    (u64::from(hi as i32 as u32) << 32) | u64::from(lo as i32 as u32)
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

    /// Refuse a halted task, or count a call and return the task's totals and the run
    /// they belong to. `velocity`: also sum the last minute's settled cost (skipped when
    /// no velocity limit applies).
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
            .key(self.k("tgen"))
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
                Ok(TaskAdmit::Counted(
                    TaskTotals {
                        iterations: at(1)?.max(0) as u64,
                        started_ms: at(2)?,
                        cost: Money::from_nanos(at(3)?),
                        spend_last_minute: Money::from_nanos(at(4)?),
                    },
                    TaskRun(at(5)?),
                ))
            }
            _ => Err(bad()),
        }
    }

    /// One call's step through loop detection on the task's shared history (every
    /// replica's calls of the run), so a loop spread over replicas is caught at the same
    /// call as on one. `None` if the run is over (released since the call was counted).
    pub async fn task_loop(
        &self,
        task: &str,
        run: TaskRun,
        fp: &Fingerprint,
        now_ms: i64,
        limits: &GuardLimits,
    ) -> Result<Option<LoopStep>, CounterError> {
        let (hi, lo) = halves(fp.simhash);
        let judged_by_answers =
            fp.sampled && limits.sampling == tollgate_domain::loopguard::Sampling::Answers;
        let mut inv = self.tasks.loop_step.prepare_invoke();
        inv.key(self.task_key("tc", task))
            .key(self.task_key("tl", task))
            .key(self.task_key("tn", task))
            .arg(run.0)
            .arg(hi)
            .arg(lo)
            .arg(now_ms)
            .arg(limits.loop_max_distance)
            .arg(limits.min_novelty_pct)
            .arg(limits.loop_window.max(1))
            .arg(MAX_SEEN_SHINGLES)
            .arg(TASK_IDLE_MS)
            .arg(if judged_by_answers { "1" } else { "0" })
            .arg(&fp.summary);
        for s in &fp.shingles {
            inv.arg(*s);
        }
        let mut conn = self.conn().await?;
        let out: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let bad = || CounterError(format!("task loop script answered {out:?}"));
        let at = |i: usize| out.get(i).ok_or_else(bad).and_then(int);
        let repeat = at(0)?;
        if repeat < 0 {
            return Ok(None);
        }
        let mut similar = Vec::new();
        for c in out.get(3..).unwrap_or_default().chunks(5) {
            let [d, ms, ah, al, summary] = c else {
                return Err(bad());
            };
            let (ah, al) = (text(ah)?, text(al)?);
            let answer = match (ah.parse::<i64>(), al.parse::<i64>()) {
                (Ok(h), Ok(l)) => Some(join(h, l)),
                _ => None,
            };
            similar.push(SimilarCall {
                distance: int(d)?.clamp(0, 64) as u32,
                at_ms: text(ms)?.parse().map_err(err)?,
                summary: text(summary)?,
                answer,
            });
        }
        let sampling = judged_by_answers
            && !similar.is_empty()
            && !tollgate_domain::loopguard::answers_repeat(&similar, limits.loop_max_distance);
        Ok(Some(LoopStep {
            repeat_streak: repeat.clamp(0, i64::from(u32::MAX)) as u32,
            stale_streak: at(1)?.clamp(0, i64::from(u32::MAX)) as u32,
            window: at(2)?.max(0) as usize,
            similar,
            sampling,
        }))
    }

    /// A settled sampled call's answer (its SimHash), for the shared loop history: the
    /// newest call of the task with the call's SimHash and no answer yet gets it.
    pub async fn task_answer(
        &self,
        task: &str,
        call_simhash: u64,
        answer: u64,
    ) -> Result<(), CounterError> {
        let (ch, cl) = halves(call_simhash);
        let (ah, al) = halves(answer);
        let mut inv = self.tasks.answer.prepare_invoke();
        inv.key(self.task_key("tl", task))
            .arg(ch)
            .arg(cl)
            .arg(ah)
            .arg(al);
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(())
    }

    /// Add a settled call's cost to the totals (and the velocity window) of the run it
    /// was admitted in; nothing if that run is over (the task was released since).
    pub async fn task_cost(
        &self,
        task: &str,
        run: TaskRun,
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
            .arg(VELOCITY_ENTRIES)
            .arg(run.0);
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(())
    }

    /// Record a halt (or, `dry_run`, a flag) of `agent`'s task decided on a call counted
    /// in `run`, unless one is there already or that run is over. Every replica refuses
    /// the task from the moment this returns [`HaltClaim::First`], and lists the halt
    /// within a refresh.
    pub async fn task_halt(
        &self,
        task: &str,
        agent: Option<&str>,
        run: TaskRun,
        reason: &str,
        kind: &str,
        dry_run: bool,
    ) -> Result<HaltClaim, CounterError> {
        let mut inv = self.tasks.halt.prepare_invoke();
        inv.key(self.task_key(if dry_run { "tf" } else { "th" }, task))
            .key(self.task_key("tc", task))
            .key(self.task_key("tr", task))
            .key(self.k("thi"))
            .key(self.k("ths"))
            .arg(reason)
            .arg(kind)
            .arg(if dry_run { "1" } else { "0" })
            .arg(TASK_IDLE_MS)
            .arg(run.0)
            .arg(task)
            .arg(agent.unwrap_or(""));
        let mut conn = self.conn().await?;
        let out: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let bad = || CounterError(format!("task halt script answered {out:?}"));
        match out.first().map(int).transpose()?.ok_or_else(bad)? {
            1 => Ok(HaltClaim::First {
                halted_ms: out.get(1).ok_or_else(bad).and_then(int)?,
            }),
            0 => Ok(HaltClaim::Already(
                out.get(1).map(text).transpose()?.unwrap_or_default(),
            )),
            2 => Ok(HaltClaim::Stale),
            _ => Err(bad()),
        }
    }

    /// Release a task everywhere: no longer halted, totals and history forgotten (the
    /// run is over). The release is timed on Redis's clock. `true` if it was halted.
    pub async fn task_release(&self, task: &str) -> Result<bool, CounterError> {
        let mut inv = self.tasks.release.prepare_invoke();
        for kind in ["th", "tf", "tc", "tv", "tr", "tl", "tn"] {
            inv.key(self.task_key(kind, task));
        }
        inv.key(self.k("thi")).arg(RELEASED_KEEP_MS).arg(task);
        let mut conn = self.conn().await?;
        let was: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(was == 1)
    }

    /// Compare the halts a replica's own store holds with the shared state: a halt
    /// missing from Redis because it was released since (the last release is no earlier
    /// than its time, both on Redis's clock) is returned, and the replica then releases
    /// it in its store; one missing because Redis lost its data is written back.
    pub async fn task_reconcile(&self, known: &[KnownHalt]) -> Result<Vec<String>, CounterError> {
        let mut released = Vec::new();
        for chunk in known.chunks(128) {
            let mut inv = self.tasks.reconcile.prepare_invoke();
            inv.key(self.k("thi")).key(self.k("ths"));
            for h in chunk {
                inv.key(self.task_key("th", &h.task))
                    .key(self.task_key("tr", &h.task));
                inv.arg(h.halted_ms)
                    .arg(&h.reason)
                    .arg(&h.kind)
                    .arg(h.agent.as_deref().unwrap_or(""))
                    .arg(&h.task);
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

    /// Tasks halted (by any replica) since `cursor`, at most `most` of them in the order
    /// their halts were written, and where to read on from next time. Usually empty: one
    /// script run that reads two keys. Read from the start when the index restarted (Redis
    /// lost its data). A task halted again after a write-back or a new halt comes again.
    pub async fn task_halts_since(
        &self,
        cursor: &HaltCursor,
        most: usize,
    ) -> Result<(Vec<String>, HaltCursor), CounterError> {
        let mut inv = self.tasks.halts_since.prepare_invoke();
        inv.key(self.k("thi"))
            .key(self.k("ths"))
            .arg(&cursor.epoch)
            .arg(cursor.seq)
            .arg(most.max(1));
        let mut conn = self.conn().await?;
        let out: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let bad = || CounterError(format!("halt index script answered {out:?}"));
        let mut next = HaltCursor {
            epoch: text(out.first().ok_or_else(bad)?)?,
            seq: int(out.get(1).ok_or_else(bad)?)?,
        };
        let mut tasks = Vec::new();
        for pair in out.get(2..).unwrap_or_default().chunks(2) {
            let [task, seq] = pair else { return Err(bad()) };
            tasks.push(text(task)?);
            next.seq = next.seq.max(int(seq)?);
        }
        Ok((tasks, next))
    }

    /// The halts in force of `tasks` (one round trip); a task no longer halted (released
    /// since) is left out.
    pub async fn task_halts(&self, tasks: &[String]) -> Result<Vec<KnownHalt>, CounterError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for t in tasks {
            pipe.cmd("HMGET")
                .arg(self.task_key("th", t))
                .arg("reason")
                .arg("kind")
                .arg("ms")
                .arg("agent");
        }
        let mut conn = self.conn().await?;
        type Fields = [Option<String>; 4];
        let rows: Vec<Fields> = pipe.query_async(&mut conn).await.map_err(err)?;
        // A hash without a reason or a readable time is not a halt this tollgate wrote:
        // left out rather than failing every other one.
        Ok(tasks
            .iter()
            .zip(rows)
            .filter_map(|(task, [reason, kind, ms, agent])| {
                Some(KnownHalt {
                    task: task.clone(),
                    halted_ms: ms?.parse().ok()?,
                    reason: reason?,
                    kind: kind.unwrap_or_default(),
                    agent: agent.filter(|a| !a.is_empty()),
                })
            })
            .collect())
    }
}

//! Counters in Redis, shared by every replica: one Lua script per operation, so a
//! request's check-and-reserve across all its lines is atomic whichever replica runs it.
//!
//! Keys (all under the configured prefix):
//! - `b:<period>:<label>:<scope>`: a hash `{spent, reserved}` in nano-USD, expiring a
//!   grace after its period ends (lifetime counters never expire).
//! - `r:<kind>:<scope>:<window>`: one fixed rate window's count, expiring after two.
//! - `res:<id>`: an open reservation (`b|<key>` → amount), and the sorted set `resv` of
//!   open reservations by deadline. A reservation still open at its deadline (its
//!   replica died) is reclaimed: its holds are released, by the next reserve (up to 16
//!   at a time) and by every replica's refresh sweep ([`RedisCounters::reclaim_expired`],
//!   every few seconds), so they do not linger when no call comes.
//! - `seeded`: present once the counters were rebuilt from the ledger. A Redis that
//!   restarted empty has none, and every reserve answers "unseeded" until a gateway
//!   seeds it, so spend is never silently reset to zero.
//!
//! Amounts are integers in Redis (`HINCRBY`); the scripts compare them as Lua numbers,
//! exact up to 2^53 nano-USD (about 9 million USD per counter).

use super::{
    CounterError, RateLine, Refusal, Reservation, ReserveError, ReserveRequest, Reserved, Seed,
};
use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tollgate_domain::budget::{Account, SettledLine};
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::{self, window_of};

/// Release the holds of reservations still open at their deadline (their replica died
/// before settling them), at most `most` of them, as Lua. Returns how many.
const RECLAIM_FN: &str = r#"
local function reclaim(resv, prefix, now, most)
  local dead = redis.call('ZRANGEBYSCORE', resv, '-inf', now, 'LIMIT', 0, most)
  for _, rid in ipairs(dead) do
    local rk = prefix .. 'res:' .. rid
    local f = redis.call('HGETALL', rk)
    for i = 1, #f, 2 do
      if string.sub(f[i], 1, 2) == 'b|' then
        local key = string.sub(f[i], 3)
        local r = tonumber(redis.call('HGET', key, 'reserved') or '0')
        local take = math.min(r, tonumber(f[i + 1]))
        if take > 0 then redis.call('HINCRBY', key, 'reserved', -take) end
      end
    end
    if #f > 0 then redis.call('HSET', rk, 'reaped', '1') end
    redis.call('ZREM', resv, rid)
  end
  return #dead
end
"#;

/// The sweep every replica runs on its refresh (so a dead replica's holds are released
/// soon after their deadline even when no call reserves): KEYS resv; ARGV now, prefix,
/// most.
const SWEEP: &str = r#"
return reclaim(KEYS[1], ARGV[2], tonumber(ARGV[1]), tonumber(ARGV[3]))
"#;

const RESERVE: &str = r#"
-- KEYS: resv, res:<id>, seeded, <nb budget keys>, <nr × (cur window, prev window)>
-- ARGV: now, hold, nb, nr, id, prefix, then per budget line: limit (-1: none), amount,
--       expire_at (-1: never); then per rate line: limit, cost, window_ms, elapsed
local now = tonumber(ARGV[1])
local hold = tonumber(ARGV[2])
local nb = tonumber(ARGV[3])
local nr = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 0 then return {-2} end
-- Reclaim reservations whose replica died before settling them.
reclaim(KEYS[1], ARGV[6], now, 16)
-- Check every line before changing anything.
local left = {}
for i = 1, nb do
  local a = 7 + (i - 1) * 3
  local limit = tonumber(ARGV[a])
  local amount = tonumber(ARGV[a + 1])
  if limit >= 0 then
    local v = redis.call('HMGET', KEYS[3 + i], 'spent', 'reserved')
    local rem = limit - (tonumber(v[1]) or 0) - (tonumber(v[2]) or 0)
    if rem < 0 then rem = 0 end
    if not (rem > 0 and amount <= rem) then return {0, i - 1, rem} end
    left[i] = rem - amount
  else
    left[i] = 0
  end
end
local rbase = 7 + nb * 3
local rleft = {}
for j = 1, nr do
  local a = rbase + (j - 1) * 4
  local limit = tonumber(ARGV[a])
  local cost = math.min(tonumber(ARGV[a + 1]), limit)
  local w = tonumber(ARGV[a + 2])
  local e = tonumber(ARGV[a + 3])
  local cur = tonumber(redis.call('GET', KEYS[3 + nb + 2 * j - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[3 + nb + 2 * j]) or '0')
  local used = math.floor((prev * (w - e) + w - 1) / w) + cur
  if not (limit > 0 and used + cost <= limit) then return {-1, j - 1, prev, cur} end
  rleft[j] = limit - used - cost
end
-- Reserve.
local rec = {}
for i = 1, nb do
  local a = 7 + (i - 1) * 3
  redis.call('HINCRBY', KEYS[3 + i], 'reserved', ARGV[a + 1])
  local exp = tonumber(ARGV[a + 2])
  if exp >= 0 then redis.call('PEXPIREAT', KEYS[3 + i], exp) end
  rec[#rec + 1] = 'b|' .. KEYS[3 + i]
  rec[#rec + 1] = ARGV[a + 1]
end
for j = 1, nr do
  local a = rbase + (j - 1) * 4
  local cost = math.min(tonumber(ARGV[a + 1]), tonumber(ARGV[a]))
  local key = KEYS[3 + nb + 2 * j - 1]
  redis.call('INCRBY', key, cost)
  redis.call('PEXPIRE', key, 2 * tonumber(ARGV[a + 2]))
end
if nb > 0 then
  redis.call('HSET', KEYS[2], unpack(rec))
  redis.call('PEXPIRE', KEYS[2], hold + 86400000)
  redis.call('ZADD', KEYS[1], now + hold, ARGV[5])
end
local out = {1}
for i = 1, nb do out[#out + 1] = left[i] end
for j = 1, nr do out[#out + 1] = rleft[j] end
return out
"#;

const SETTLE: &str = r#"
-- KEYS: resv, res:<id>, <nb budget keys>, <nr rate window keys>
-- ARGV: id, actual, nb, nr, then per budget line: amount, expire_at (-1: never);
--       then per rate line: refund
local nb = tonumber(ARGV[3])
local nr = tonumber(ARGV[4])
local actual = tonumber(ARGV[2])
local reaped = false
if nb > 0 then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
  reaped = redis.call('HGET', KEYS[2], 'reaped') == '1'
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local out = {1}
for i = 1, nb do
  local key = KEYS[2 + i]
  local a = 5 + (i - 1) * 2
  local before = redis.call('HGET', key, 'spent') or '0'
  if not reaped then
    local r = tonumber(redis.call('HGET', key, 'reserved') or '0')
    local take = math.min(r, tonumber(ARGV[a]))
    if take > 0 then redis.call('HINCRBY', key, 'reserved', -take) end
  end
  if actual > 0 then redis.call('HINCRBY', key, 'spent', ARGV[2]) else redis.call('HSETNX', key, 'spent', '0') end
  local exp = tonumber(ARGV[a + 1])
  if exp >= 0 then redis.call('PEXPIREAT', key, exp) end
  out[#out + 1] = before
end
local rbase = 5 + nb * 2
for j = 1, nr do
  local refund = tonumber(ARGV[rbase + j - 1])
  if refund > 0 then
    local key = KEYS[2 + nb + j]
    local c = tonumber(redis.call('GET', key) or '0')
    local t = math.min(c, refund)
    if t > 0 then redis.call('DECRBY', key, t) end
  end
end
return out
"#;

const SEED: &str = r#"
-- KEYS: seeded, <n counter keys>;  ARGV: mark (1/0), then per key: spent, expire_at
local n = 0
for i = 2, #KEYS do
  local a = 2 + (i - 2) * 2
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'spent', ARGV[a], 'reserved', '0')
    local exp = tonumber(ARGV[a + 1])
    if exp >= 0 then redis.call('PEXPIREAT', KEYS[i], exp) end
    n = n + 1
  end
end
if ARGV[1] == '1' then redis.call('SET', KEYS[1], '1') end
return n
"#;

struct Scripts {
    sweep: Script,
    reserve: Script,
    settle: Script,
    seed: Script,
}

/// Counters in one Redis, shared by every replica pointed at the same prefix.
#[derive(Clone)]
pub struct RedisCounters {
    client: redis::Client,
    /// Connected on first use (so building the gateway needs no runtime); the manager
    /// reconnects by itself after that.
    conn: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    prefix: String,
    scripts: Arc<Scripts>,
    /// The runaway-agent guard's scripts (`redis_tasks`).
    pub(super) tasks: Arc<super::redis_tasks::TaskScripts>,
}

fn err(e: impl std::fmt::Display) -> CounterError {
    CounterError(e.to_string())
}

impl RedisCounters {
    /// Counters at `url` (not connected yet). `prefix` namespaces every key, so several
    /// deployments (or tests) can share one Redis.
    pub fn new(url: &str, prefix: &str) -> Result<RedisCounters, CounterError> {
        Ok(RedisCounters {
            client: redis::Client::open(url).map_err(err)?,
            conn: Arc::new(tokio::sync::OnceCell::new()),
            prefix: format!("{prefix}:"),
            scripts: Arc::new(Scripts {
                sweep: Script::new(&format!("{RECLAIM_FN}{SWEEP}")),
                reserve: Script::new(&format!("{RECLAIM_FN}{RESERVE}")),
                settle: Script::new(SETTLE),
                seed: Script::new(SEED),
            }),
            tasks: Arc::new(super::redis_tasks::TaskScripts::new()),
        })
    }

    /// [`RedisCounters::new`], connected.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisCounters, CounterError> {
        let r = RedisCounters::new(url, prefix)?;
        r.conn().await?;
        Ok(r)
    }

    pub(super) async fn conn(&self) -> Result<ConnectionManager, CounterError> {
        self.conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2);
                self.client
                    .get_connection_manager_with_config(cfg)
                    .await
                    .map_err(err)
            })
            .await
            .cloned()
    }

    pub(super) fn k(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub async fn reserve(
        &self,
        req: &ReserveRequest,
    ) -> Result<Result<Reserved, Refusal>, ReserveError> {
        let mut inv = self.scripts.reserve.prepare_invoke();
        inv.key(self.k("resv"))
            .key(self.k(&format!("res:{}", req.id)))
            .key(self.k("seeded"));
        for l in &req.budget {
            inv.key(self.k(&l.key));
        }
        let mut windows = Vec::with_capacity(req.rate.len());
        for r in &req.rate {
            let (idx, elapsed) = window_of(req.now_ms, r.window_ms);
            inv.key(self.k(&r.key(idx))).key(self.k(&r.key(idx - 1)));
            windows.push(elapsed);
        }
        inv.arg(req.now_ms)
            .arg(req.hold_ms)
            .arg(req.budget.len())
            .arg(req.rate.len())
            .arg(&req.id)
            .arg(&self.prefix);
        for (l, exp) in req.budget.iter().zip(&req.expire_at_ms) {
            inv.arg(l.limit.map(Money::nanos).unwrap_or(-1))
                .arg(l.amount.nanos().max(0))
                .arg(exp.unwrap_or(-1));
        }
        for (r, elapsed) in req.rate.iter().zip(&windows) {
            inv.arg(r.limit).arg(r.cost).arg(r.window_ms).arg(*elapsed);
        }
        let mut conn = self.conn().await?;
        let out: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let at = |i: usize| -> Result<i64, CounterError> {
            out.get(i)
                .copied()
                .ok_or_else(|| CounterError(format!("reserve script answered {out:?}")))
        };
        match at(0)? {
            1 => {
                let nb = req.budget.len();
                let budget_remaining = (0..nb)
                    .map(|i| at(1 + i).map(Money::from_nanos))
                    .collect::<Result<Vec<_>, _>>()?;
                let rate_remaining = (0..req.rate.len())
                    .map(|j| at(1 + nb + j).map(|v| v.max(0) as u64))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Ok(Reserved {
                    budget_remaining,
                    rate_remaining,
                    reservation: req.reservation(),
                }))
            }
            0 => Ok(Err(Refusal::Budget {
                line: at(1)? as usize,
                remaining: Money::from_nanos(at(2)?),
            })),
            -1 => {
                let j = at(1)? as usize;
                let (prev, cur) = (at(2)?.max(0) as u64, at(3)?.max(0) as u64);
                let r: &RateLine = req
                    .rate
                    .get(j)
                    .ok_or_else(|| CounterError(format!("reserve script answered {out:?}")))?;
                let (_, elapsed) = window_of(req.now_ms, r.window_ms);
                let e = ratelimit::admit(prev, cur, elapsed, r.window_ms, r.limit, r.cost)
                    .err()
                    .unwrap_or(ratelimit::RateRefusal {
                        retry_after_ms: 1,
                        remaining: 0,
                    });
                Ok(Err(Refusal::Rate {
                    line: j,
                    retry_after_ms: e.retry_after_ms,
                    remaining: e.remaining,
                }))
            }
            -2 => Err(ReserveError::Unseeded),
            _ => Err(CounterError(format!("reserve script answered {out:?}")).into()),
        }
    }

    /// Release the holds of up to `most` reservations whose deadline passed before they
    /// were settled (their replica died). Returns how many.
    pub async fn reclaim_expired(&self, now_ms: i64, most: u32) -> Result<u64, CounterError> {
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key(self.k("resv"))
            .arg(now_ms)
            .arg(&self.prefix)
            .arg(most);
        let mut conn = self.conn().await?;
        let n: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(n.max(0) as u64)
    }

    /// Renew the leases of open reservations `ids` (this replica's calls still running):
    /// reclaimed at `deadline_ms` unless renewed again. Reservations already settled or
    /// reclaimed are left alone (`ZADD XX`).
    pub async fn renew(&self, ids: &[String], deadline_ms: i64) -> Result<(), CounterError> {
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(1000) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(self.k("resv")).arg("XX");
            for id in chunk {
                cmd.arg(deadline_ms).arg(id);
            }
            let _: i64 = cmd.query_async(&mut conn).await.map_err(err)?;
        }
        Ok(())
    }

    pub async fn settle(
        &self,
        res: &Reservation,
        actual: Money,
        rate_actual: &[u64],
    ) -> Result<Vec<SettledLine>, CounterError> {
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(self.k("resv"))
            .key(self.k(&format!("res:{}", res.id)));
        for l in &res.budget {
            inv.key(self.k(&l.key));
        }
        for (r, idx) in res.rate.iter().zip(&res.rate_window) {
            inv.key(self.k(&r.key(*idx)));
        }
        let actual = actual.max(Money::ZERO);
        inv.arg(&res.id)
            .arg(actual.nanos())
            .arg(res.budget.len())
            .arg(res.rate.len());
        for (l, exp) in res.budget.iter().zip(&res.expire_at_ms) {
            inv.arg(l.amount.nanos().max(0)).arg(exp.unwrap_or(-1));
        }
        for (i, r) in res.rate.iter().enumerate() {
            let charged = r.cost.min(r.limit);
            let used = rate_actual.get(i).copied().unwrap_or(charged);
            inv.arg(charged.saturating_sub(used));
        }
        let mut conn = self.conn().await?;
        let out: Vec<redis::Value> = inv.invoke_async(&mut conn).await.map_err(err)?;
        let status: i64 = match out.first() {
            Some(v) => redis::FromRedisValue::from_redis_value_ref(v).map_err(err)?,
            None => return Err(CounterError("settle script answered nothing".into())),
        };
        if status == -1 {
            // Already settled (a retried settlement): nothing more to charge.
            return Ok(Vec::new());
        }
        res.budget
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let before: String = out
                    .get(1 + i)
                    .map(redis::FromRedisValue::from_redis_value_ref)
                    .transpose()
                    .map_err(err)?
                    .unwrap_or_default();
                let before = Money::from_nanos(before.parse().unwrap_or(0));
                Ok(SettledLine {
                    spent_before: before,
                    spent_after: before.saturating_add(actual),
                    released: l.amount.saturating_sub(actual).max(Money::ZERO),
                    overage: actual.saturating_sub(l.amount).max(Money::ZERO),
                })
            })
            .collect()
    }

    pub async fn accounts(&self, keys: &[String]) -> Result<Vec<Account>, CounterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HMGET")
                .arg(self.k(k))
                .arg("spent")
                .arg("reserved");
        }
        let mut conn = self.conn().await?;
        let rows: Vec<(Option<i64>, Option<i64>)> =
            pipe.query_async(&mut conn).await.map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|(s, r)| Account {
                spent: Money::from_nanos(s.unwrap_or(0)),
                reserved: Money::from_nanos(r.unwrap_or(0)),
            })
            .collect())
    }

    pub async fn seed(&self, entries: &[Seed], mark: bool) -> Result<usize, CounterError> {
        let mut created = 0usize;
        // In slices, so one script never runs long.
        let mut chunks: Vec<&[Seed]> = entries.chunks(256).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut inv = self.scripts.seed.prepare_invoke();
            inv.key(self.k("seeded"));
            for e in chunk {
                inv.key(self.k(&e.key));
            }
            inv.arg(if mark && i == last { "1" } else { "0" });
            for e in chunk {
                inv.arg(e.spent.nanos()).arg(e.expire_at_ms.unwrap_or(-1));
            }
            let mut conn = self.conn().await?;
            let n: i64 = inv.invoke_async(&mut conn).await.map_err(err)?;
            created += n.max(0) as usize;
        }
        Ok(created)
    }

    /// Delete every key under this prefix (tests).
    pub async fn clear(&self) -> Result<(), CounterError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(err)?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(())
    }
}

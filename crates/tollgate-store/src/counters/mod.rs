//! Budget and rate-limit counters: where reservations are held and spend is counted.
//!
//! Two implementations with one contract (tested by one suite against both):
//! - [`MemoryCounters`]: one gateway process. One mutex, held only for the arithmetic
//!   (never across an `.await`); rebuilt from the ledger at startup.
//! - [`RedisCounters`]: several replicas sharing one Redis. Each operation is one Lua
//!   script, so checking and reserving every line of a request is atomic across
//!   replicas; reservations a dead replica left behind are reclaimed after their hold.
//!
//! The runaway-agent guard's shared state (halted tasks, per-task call count, cost and
//! velocity) lives beside the Redis counters (`redis_tasks`); with in-memory counters the
//! guard keeps it in the gateway process.
//!
//! A reservation is all-or-nothing over its budget lines *and* its rate lines: either
//! every budget can hold the request's worst case and every rate window has room, or
//! nothing is changed and the refusal names the first line that said no.

mod memory;
mod redis;
mod redis_tasks;

pub use memory::MemoryCounters;
pub use redis::RedisCounters;
pub use redis_tasks::{HaltClaim, HaltCursor, KnownHalt, TaskAdmit, TaskRun};

use tollgate_domain::budget::{Account, Line, SettledLine};
use tollgate_domain::money::Money;
use tollgate_domain::ratelimit::window_of;

/// One rate limit a request is charged against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLine {
    /// `r:<kind>:<scope>`; the window index is appended per window.
    pub base: String,
    pub limit: u64,
    /// What admission charges (requests: 1, tokens: prompt + max output, usd: nanos).
    pub cost: u64,
    pub window_ms: i64,
}

impl RateLine {
    pub fn key(&self, index: i64) -> String {
        format!("{}:{index}", self.base)
    }
}

/// Everything one request asks the counters for.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// The reservation id (the request id).
    pub id: String,
    pub now_ms: i64,
    pub budget: Vec<Line>,
    /// When each budget line's counter may be forgotten (its period's end plus a grace
    /// for reports); `None` never (lifetime).
    pub expire_at_ms: Vec<Option<i64>>,
    pub rate: Vec<RateLine>,
    /// How long a reservation may stay unsettled before it is reclaimed (a replica that
    /// died holding it): with Redis, the lease its replica renews
    /// ([`RedisCounters::renew`]) while the call runs.
    pub hold_ms: i64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `budget[line]` has only `remaining` left.
    Budget { line: usize, remaining: Money },
    /// `rate[line]`'s window is full until `retry_after_ms` from now.
    Rate {
        line: usize,
        retry_after_ms: i64,
        remaining: u64,
    },
}

/// A reservation that was granted: what each line has left after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// Per budget line (zero for lines without a hard limit).
    pub budget_remaining: Vec<Money>,
    pub rate_remaining: Vec<u64>,
    pub reservation: Reservation,
}

/// What settlement needs to know about a granted reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub budget: Vec<Line>,
    pub expire_at_ms: Vec<Option<i64>>,
    pub rate: Vec<RateLine>,
    /// The fixed window each rate line was charged in (refunds go back there).
    pub rate_window: Vec<i64>,
}

impl ReserveRequest {
    fn reservation(&self) -> Reservation {
        Reservation {
            id: self.id.clone(),
            budget: self.budget.clone(),
            expire_at_ms: self.expire_at_ms.clone(),
            rate: self.rate.clone(),
            rate_window: self
                .rate
                .iter()
                .map(|r| window_of(self.now_ms, r.window_ms).0)
                .collect(),
        }
    }
}

/// The counter store is unreachable or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("budget counters: {0}")]
pub struct CounterError(pub String);

/// The counter store in use.
#[derive(Clone)]
pub enum Counters {
    Memory(std::sync::Arc<MemoryCounters>),
    Redis(RedisCounters),
}

impl Counters {
    pub fn memory() -> Counters {
        Counters::Memory(std::sync::Arc::new(MemoryCounters::default()))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Counters::Memory(_) => "memory",
            Counters::Redis(_) => "redis",
        }
    }

    /// Reserve every line of `req`, or none. `Err(Unseeded)` (Redis only) means the
    /// store lost its data: seed it from the ledger and try again.
    pub async fn reserve(
        &self,
        req: &ReserveRequest,
    ) -> Result<Result<Reserved, Refusal>, ReserveError> {
        match self {
            Counters::Memory(m) => Ok(m.reserve(req)),
            Counters::Redis(r) => r.reserve(req).await,
        }
    }

    /// Settle a reservation: charge `actual` to every budget line and release the rest;
    /// refund each rate line what it was charged beyond `rate_actual[i]`.
    pub async fn settle(
        &self,
        res: &Reservation,
        actual: Money,
        rate_actual: &[u64],
    ) -> Result<Vec<SettledLine>, CounterError> {
        match self {
            Counters::Memory(m) => Ok(m.settle(res, actual, rate_actual)),
            Counters::Redis(r) => r.settle(res, actual, rate_actual).await,
        }
    }

    /// Current spend and holds of `keys`.
    pub async fn accounts(&self, keys: &[String]) -> Result<Vec<Account>, CounterError> {
        match self {
            Counters::Memory(m) => Ok(keys.iter().map(|k| m.account(k)).collect()),
            Counters::Redis(r) => r.accounts(keys).await,
        }
    }

    /// Set each counter's settled spend, if the counter does not exist yet (rebuilding
    /// from the ledger). `mark` records that the store is seeded (Redis). Returns how
    /// many counters were created.
    pub async fn seed(&self, entries: &[Seed], mark: bool) -> Result<usize, CounterError> {
        match self {
            Counters::Memory(m) => Ok(m.seed(entries)),
            Counters::Redis(r) => r.seed(entries, mark).await,
        }
    }
}

/// One counter's spend rebuilt from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub key: String,
    pub spent: Money,
    pub expire_at_ms: Option<i64>,
}

/// Reserving failed before any decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Store(#[from] CounterError),
    /// The store has no data (a Redis that restarted empty): seed, then retry.
    #[error("budget counters are not seeded")]
    Unseeded,
}

#[cfg(test)]
mod contract;

//! The ledger writer: batched, group-committed, never drops a row.
//!
//! Requests hand rows to a bounded channel ([`Ledger::record`]); one writer thread owns
//! the SQLite connection, takes everything queued (up to `max_batch`) and commits it in
//! one transaction. While a commit runs, new rows queue up and go in the next one, so
//! the batch size follows the load (group commit). In batched mode the writer also
//! lingers [`BATCH_LINGER`] after a batch's first row before committing (flush at N rows
//! or T ms), so a moderate load does not pay one commit per row.
//!
//! - A full channel makes `record` wait: backpressure, not loss.
//! - A failed commit is retried with backoff, holding the batch; if the database is
//!   still failing when the gateway shuts down, the rows are appended to a JSON-lines
//!   fallback file next to the database instead of being dropped.
//! - [`Durability::Batched`]: `record` returns once the row is queued. A process crash
//!   loses at most the queued and in-flight rows (bounded by the channel capacity and,
//!   below it, by [`BATCH_LINGER`]); committed rows survive (WAL, `synchronous=NORMAL`).
//! - [`Durability::Strict`]: `record` returns only after the row's transaction is
//!   fsynced (`synchronous=FULL`), so a response released after it is never lost.
//! - Every row the writer takes gets its writer's stream id ([`stream_id`]) and the next
//!   number of that stream, written with the row (`replica_id`, `replica_seq`), so a row
//!   missing from the database shows as a gap ([`ReplicaSequence`]).
//!
//! The [`Ledger`] handle and the [`LedgerWriter`] are the same for every backend; the
//! PostgreSQL writer (`db::postgres::writer`) takes the same messages.

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tollgate_domain::attribution::Attribution;
use tollgate_domain::ledger::{
    CacheKind, CacheRecord, Endpoint, LedgerRow, PrefixRecord, PruneRecord, Route, RouteMode,
    RouteRecord, stored_nanos, stored_tokens,
};
use tollgate_domain::money::Money;
use tollgate_domain::usage::{Usage, UsageSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Batched,
    Strict,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "batched" => Some(Durability::Batched),
            "strict" => Some(Durability::Strict),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub durability: Durability,
    /// Rows that may wait in memory before `record` applies backpressure.
    pub channel_capacity: usize,
    /// Most rows per transaction.
    pub max_batch: usize,
    /// This replica's name, the start of its writers' stream ids (default `tollgate`).
    pub replica: Option<String>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            durability: Durability::Batched,
            channel_capacity: 16_384,
            max_batch: 4_096,
            replica: None,
        }
    }
}

/// Batched mode: how long the writer waits after a batch's first row for more rows to
/// join the same transaction. A commit costs tens of microseconds of CPU however few rows
/// it holds (WAL frames for every touched page, locks), and handing a row to a writer
/// parked on the channel wakes its thread; committing row by row at a few thousand
/// requests per second cost more CPU than the rest of the request (see BENCHMARKS.md).
/// Strict mode never lingers: its callers are waiting for the commit.
pub const BATCH_LINGER: Duration = Duration::from_millis(20);

/// Counters the writer keeps (read by `/metrics` and the benchmark).
#[derive(Debug, Default)]
pub struct LedgerStats {
    pub rows_written: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub rows_to_fallback: AtomicU64,
    /// PostgreSQL: rows written to the local spool because the database could not take
    /// them, and spooled rows shipped to it since (shipped rows count in `rows_written`
    /// too, when they are shipped).
    pub rows_spooled: AtomicU64,
    pub rows_shipped: AtomicU64,
}

pub(crate) struct Msg {
    pub(crate) row: LedgerRow,
    pub(crate) ack: Option<oneshot::Sender<()>>,
}

/// A writer's stream id: the replica's name and a random part drawn when the writer
/// starts, so two starts (or two replicas with one name) never share numbers.
pub fn stream_id(replica: Option<&str>) -> String {
    format!(
        "{}-{:016x}",
        replica.filter(|r| !r.is_empty()).unwrap_or("tollgate"),
        rand::random::<u64>()
    )
}

/// The rows of one writer stream found in the ledger over a window: how many, the
/// first and last numbers, and the ranges missing between them (both ends included).
/// A row skipped as a duplicate of an earlier request id counts as present.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaSequence {
    pub replica_id: String,
    pub rows: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub gaps: Vec<(i64, i64)>,
}

impl ReplicaSequence {
    /// Numbers missing between the first and the last.
    pub fn missing(&self) -> u64 {
        self.gaps
            .iter()
            .map(|(a, b)| (b - a + 1).max(0) as u64)
            .sum()
    }
}

/// Build [`ReplicaSequence`]s from per-stream summaries and gap rows (both ordered by
/// stream id), as both backends' gap queries return them.
pub(crate) fn sequences(
    summaries: Vec<(String, i64, i64, i64)>,
    gaps: Vec<(String, i64, i64)>,
) -> Vec<ReplicaSequence> {
    let mut out: Vec<ReplicaSequence> = summaries
        .into_iter()
        .map(|(replica_id, rows, first_seq, last_seq)| ReplicaSequence {
            replica_id,
            rows: rows.max(0) as u64,
            first_seq,
            last_seq,
            gaps: Vec::new(),
        })
        .collect();
    for (id, from, to) in gaps {
        if let Some(s) = out.iter_mut().find(|s| s.replica_id == id) {
            s.gaps.push((from, to));
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("the ledger writer has stopped")]
pub struct LedgerClosed(pub Box<LedgerRow>);

/// A cheap, cloneable handle for recording rows.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    durability: Durability,
    stats: Arc<LedgerStats>,
}

impl Ledger {
    pub(crate) fn new(
        tx: mpsc::Sender<Msg>,
        durability: Durability,
        stats: Arc<LedgerStats>,
    ) -> Ledger {
        Ledger {
            tx,
            durability,
            stats,
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    /// Rows queued for the writer and not yet taken into a batch: in batched mode, what
    /// a crash would lose beyond the batch being committed.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }

    /// Record a row. Batched: returns once queued (waits while the queue is full).
    /// Strict: returns once the row is durable on disk.
    pub async fn record(&self, row: LedgerRow) -> Result<(), LedgerClosed> {
        match self.durability {
            Durability::Batched => self
                .tx
                .send(Msg { row, ack: None })
                .await
                .map_err(|e| LedgerClosed(Box::new(e.0.row))),
            Durability::Strict => {
                let (ack, done) = oneshot::channel();
                self.tx
                    .send(Msg {
                        row,
                        ack: Some(ack),
                    })
                    .await
                    .map_err(|e| LedgerClosed(Box::new(e.0.row)))?;
                // The writer drops the sender only after the row is durable (or saved to
                // the fallback file); an error here means the same.
                let _ = done.await;
                Ok(())
            }
        }
    }

    /// Queue a row without waiting (for paths that cannot await, such as `Drop`).
    /// Gives the row back if the queue is full or closed, so the caller can await
    /// [`Ledger::record`] from a task instead.
    pub fn try_record(&self, row: LedgerRow) -> Result<(), Box<LedgerRow>> {
        self.tx
            .try_send(Msg { row, ack: None })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => {
                    Box::new(m.row)
                }
            })
    }
}

/// The writer thread. Stops after every [`Ledger`] handle is dropped and the queue is
/// drained; [`LedgerWriter::join`] waits for that.
pub struct LedgerWriter {
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<LedgerStats>,
}

impl LedgerWriter {
    pub(crate) fn new(thread: std::thread::JoinHandle<()>, stats: Arc<LedgerStats>) -> Self {
        LedgerWriter {
            thread: Some(thread),
            stats,
        }
    }

    /// Wait for the writer to drain and stop. Call after dropping every `Ledger` handle.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn stats(&self) -> &Arc<LedgerStats> {
        &self.stats
    }
}

impl SqliteStore {
    /// Start the ledger writer thread on this database.
    pub fn start_ledger(&self, cfg: &LedgerConfig) -> Result<(Ledger, LedgerWriter), StoreError> {
        let conn = self.connect(match cfg.durability {
            Durability::Batched => Sync::Normal,
            Durability::Strict => Sync::Full,
        })?;
        let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
        let stats = Arc::new(LedgerStats::default());
        let fallback = fallback_path(self.path());
        let writer_stats = stats.clone();
        let max_batch = cfg.max_batch.max(1);
        let linger = match cfg.durability {
            Durability::Batched => BATCH_LINGER,
            Durability::Strict => Duration::ZERO,
        };
        let stream = stream_id(cfg.replica.as_deref());
        let thread = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                writer_loop(
                    conn,
                    rx,
                    max_batch,
                    linger,
                    &writer_stats,
                    &fallback,
                    &stream,
                )
            })
            .map_err(|e| StoreError::Io {
                path: "ledger writer thread".into(),
                message: e.to_string(),
            })?;
        Ok((
            Ledger {
                tx,
                durability: cfg.durability,
                stats: stats.clone(),
            },
            LedgerWriter {
                thread: Some(thread),
                stats,
            },
        ))
    }
}

/// Where rows go if the database cannot take them at shutdown.
pub fn fallback_path(db: &std::path::Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".unwritten.jsonl");
    db.with_file_name(name)
}

/// Move queued rows into `batch`, up to `max_batch`.
fn drain(rx: &mut mpsc::Receiver<Msg>, batch: &mut Vec<Msg>, max_batch: usize) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    linger: Duration,
    stats: &LedgerStats,
    fallback: &std::path::Path,
    stream: &str,
) {
    let mut batch: Vec<Msg> = Vec::with_capacity(max_batch);
    let mut next_seq: i64 = 1;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch, max_batch);
        // Not full and not shutting down: give more rows a moment to join this commit.
        // Sleeping (rather than waiting on the channel) also spares the senders a
        // wake-up per row. A full channel still only makes senders wait (backpressure).
        if !linger.is_zero() && batch.len() < max_batch && !rx.is_closed() {
            std::thread::sleep(linger);
            drain(&mut rx, &mut batch, max_batch);
        }
        let first_seq = next_seq;
        next_seq += batch.len() as i64;
        let mut backoff = Duration::from_millis(50);
        loop {
            let stamped = batch
                .iter()
                .enumerate()
                .map(|(i, m)| (&m.row, Some((stream, first_seq + i as i64))));
            match insert_stamped(&mut conn, stamped) {
                Ok(_) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats
                        .rows_written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, rows = batch.len(), "ledger commit failed; retrying");
                    // Shutting down (every handle gone) and the database still refuses:
                    // save the rows to the fallback file rather than lose them.
                    if rx.is_closed() && backoff >= Duration::from_secs(2) {
                        match append_fallback(fallback, batch.iter().map(|m| &m.row)) {
                            Ok(()) => {
                                stats
                                    .rows_to_fallback
                                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                                tracing::error!(path = %fallback.display(), rows = batch.len(), "ledger rows saved to the fallback file");
                                break;
                            }
                            Err(io) => {
                                tracing::error!(error = %io, "fallback file write failed; still retrying");
                            }
                        }
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for m in batch.drain(..) {
            if let Some(ack) = m.ack {
                let _ = ack.send(());
            }
        }
    }
}

fn append_fallback<'a>(
    path: &std::path::Path,
    rows: impl Iterator<Item = &'a LedgerRow>,
) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for row in rows {
        let line = serde_json::to_string(row).map_err(std::io::Error::other)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
    }
    f.sync_all()
}

/// Where a page of [`SqliteStore::ledger_page`] (or the store trait's) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerCursor {
    pub ts_ms: i64,
    /// The backend's own row number (not part of [`LedgerRow`]).
    pub id: i64,
}

/// A page of ledger rows and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPage {
    pub rows: Vec<LedgerRow>,
    pub next: Option<LedgerCursor>,
}

impl LedgerPage {
    pub(crate) fn new(rows: Vec<LedgerRow>, last: Option<LedgerCursor>, limit: usize) -> Self {
        let next = if rows.len() >= limit.max(1) {
            last
        } else {
            None
        };
        LedgerPage { rows, next }
    }
}

const INSERT: &str = "INSERT INTO ledger (ts_ms, request_id, endpoint, key_id, user, team, agent, task, tags,
    requested_model, deployment, upstream, upstream_model,
    input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
    usage_source, cost_nanos, priced, price_hash, latency_us, ttft_us, status, error_code, stream, partial,
    cost_without_cache_nanos,
    route_name, route_tier, route_deployment, route_score, route_mode, route_heavy_cost_nanos,
    route_tier_cost_nanos, route_escalated, replica_id, replica_seq,
    cache_kind, cache_similarity_ppm, cache_avoided_nanos, cache_expected_write, cache_expected_read,
    cache_miss, prune_tokens_before, prune_tokens_after, prune_cost_without_nanos, usage_suspect,
    service_tier, prefix_hash, prefix_tokens)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30,
    ?31, ?32, ?33, ?34, ?35, ?36, ?37, ?38, ?39, ?40, ?41, ?42, ?43, ?44, ?45, ?46, ?47, ?48, ?49, ?50, ?51, ?52, ?53)
    ON CONFLICT (request_id) DO NOTHING";

/// A stamped row skipped because its request id was written already (by another row):
/// its number is accounted for. Not when the row there is this very row (a retry).
const INSERT_DUPLICATE: &str =
    "INSERT OR IGNORE INTO ledger_duplicates (replica_id, replica_seq, request_id, ts_ms)
    SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS
      (SELECT 1 FROM ledger WHERE request_id = ?3 AND replica_id IS ?1 AND replica_seq IS ?2)";

const INSERT_SAMPLE: &str =
    "INSERT INTO route_samples (request_id, ts_ms, route_name, task, model_hash, tokens, features)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (request_id) DO NOTHING";

/// Insert rows in one transaction. A row whose request id is already present is skipped
/// (a retried batch never double-counts).
pub fn insert_batch<'a>(
    conn: &mut Connection,
    rows: impl Iterator<Item = &'a LedgerRow>,
) -> Result<(), StoreError> {
    insert_stamped(conn, rows.map(|r| (r, None)))?;
    Ok(())
}

/// [`insert_batch`] with each row's writer stream and number (`None`: inserted outside
/// the writer). Returns how many rows were new.
pub fn insert_stamped<'a, 's>(
    conn: &mut Connection,
    rows: impl Iterator<Item = (&'a LedgerRow, Option<(&'s str, i64)>)>,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let mut written = 0u64;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        let mut samples = tx.prepare_cached(INSERT_SAMPLE)?;
        let mut duplicates = tx.prepare_cached(INSERT_DUPLICATE)?;
        for (r, stamp) in rows {
            let a = &r.attribution;
            let rt = r.routing.as_ref();
            let tags = if a.tags.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&a.tags).unwrap_or_default())
            };
            let n = stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.endpoint.as_str(),
                a.key_id,
                a.user,
                a.team,
                a.agent,
                a.task,
                tags,
                r.route.requested_model,
                r.route.deployment,
                r.route.upstream,
                r.route.upstream_model,
                stored_tokens(r.usage.input),
                stored_tokens(r.usage.cache_read),
                stored_tokens(r.usage.cache_write_5m),
                stored_tokens(r.usage.cache_write_1h),
                stored_tokens(r.usage.output),
                stored_tokens(r.usage.reasoning),
                r.usage_source.as_str(),
                stored_nanos(r.cost),
                r.priced,
                r.price_hash,
                sql_u64(r.latency_us),
                r.ttft_us.map(sql_u64),
                i64::from(r.status),
                r.error_code,
                r.stream,
                r.partial,
                stored_nanos(r.cost_without_cache),
                rt.map(|x| x.name.as_str()),
                rt.map(|x| i64::from(x.tier)),
                rt.map(|x| x.tier_deployment.as_str()),
                rt.map(|x| f64::from(x.score_ppm) / 1e6),
                rt.map(|x| x.mode.as_str()),
                rt.map(|x| stored_nanos(x.heavy_cost)),
                rt.map(|x| stored_nanos(x.tier_cost)),
                rt.and_then(|x| x.escalated.as_deref()),
                stamp.map(|s| s.0),
                stamp.map(|s| s.1),
                r.cache.as_ref().map(|c| c.kind.as_str()),
                r.cache
                    .as_ref()
                    .and_then(|c| c.similarity_ppm)
                    .map(i64::from),
                r.cache.as_ref().map(|c| stored_nanos(c.avoided_cost)),
                r.cache.as_ref().map(|c| stored_tokens(c.expected_write)),
                r.cache.as_ref().map(|c| stored_tokens(c.expected_read)),
                r.cache.as_ref().map(|c| c.miss),
                r.prune.as_ref().map(|p| stored_tokens(p.tokens_before)),
                r.prune.as_ref().map(|p| stored_tokens(p.tokens_after)),
                r.prune.as_ref().map(|p| stored_nanos(p.cost_without)),
                r.stored_suspect(),
                r.service_tier,
                r.prefix.as_ref().map(|p| p.hash.as_str()),
                r.prefix.as_ref().map(|p| stored_tokens(p.tokens)),
            ])?;
            written += n as u64;
            if n == 0
                && let Some((stream, seq)) = stamp
            {
                duplicates.execute(params![stream, seq, r.request_id, r.ts_ms])?;
            }
            if let Some(rt) = rt
                && let Some(smp) = &rt.sample
            {
                samples.execute(params![
                    r.request_id,
                    r.ts_ms,
                    rt.name,
                    a.task,
                    smp.model,
                    i64::from(smp.tokens),
                    smp.features,
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(written)
}

pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const SELECT: &str = "SELECT ts_ms, request_id, endpoint, key_id, user, team, agent, task, tags,
    requested_model, deployment, upstream, upstream_model,
    input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
    usage_source, cost_nanos, priced, price_hash, latency_us, ttft_us, status, error_code, stream, partial,
    COALESCE(cost_without_cache_nanos, cost_nanos),
    route_name, route_tier, route_deployment, route_score, route_mode, route_heavy_cost_nanos,
    route_tier_cost_nanos, route_escalated,
    cache_kind, cache_similarity_ppm, cache_avoided_nanos, cache_expected_write, cache_expected_read,
    cache_miss, prune_tokens_before, prune_tokens_after, prune_cost_without_nanos,
    COALESCE(usage_suspect, 0),
    service_tier, prefix_hash, prefix_tokens
    FROM ledger";

fn row_from_sql(r: &Row<'_>) -> rusqlite::Result<LedgerRow> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let tags: Option<String> = r.get(8)?;
    let endpoint: String = r.get(2)?;
    let source: String = r.get(19)?;
    Ok(LedgerRow {
        ts_ms: r.get(0)?,
        request_id: r.get(1)?,
        endpoint: Endpoint::parse(&endpoint).unwrap_or(Endpoint::ChatCompletions),
        attribution: Attribution {
            key_id: r.get(3)?,
            user: r.get(4)?,
            team: r.get(5)?,
            agent: r.get(6)?,
            task: r.get(7)?,
            tags: tags
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        },
        route: Route {
            requested_model: r.get(9)?,
            deployment: r.get(10)?,
            upstream: r.get(11)?,
            upstream_model: r.get(12)?,
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
        cost: Money::from_nanos(r.get(20)?),
        cost_without_cache: Money::from_nanos(r.get(29)?),
        priced: r.get(21)?,
        price_hash: r.get(22)?,
        latency_us: u(23)?,
        ttft_us: r.get::<_, Option<i64>>(24)?.map(|v| v.max(0) as u64),
        status: u16::try_from(r.get::<_, i64>(25)?).unwrap_or(0),
        error_code: r.get(26)?,
        stream: r.get(27)?,
        partial: r.get(28)?,
        routing: route_from_sql(r)?,
        cache: cache_from_sql(r)?,
        prune: prune_from_sql(r)?,
        usage_suspect: r.get(47)?,
        service_tier: r.get(48)?,
        prefix: match (
            r.get::<_, Option<String>>(49)?,
            r.get::<_, Option<i64>>(50)?,
        ) {
            (Some(hash), Some(tokens)) => Some(PrefixRecord {
                hash,
                tokens: tokens.max(0) as u64,
            }),
            _ => None,
        },
    })
}

/// Columns 38..=43 (after the 38 read above).
fn cache_from_sql(r: &Row<'_>) -> rusqlite::Result<Option<CacheRecord>> {
    let Some(kind) = r
        .get::<_, Option<String>>(38)?
        .and_then(|k| CacheKind::parse(&k))
    else {
        return Ok(None);
    };
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(Some(CacheRecord {
        kind,
        similarity_ppm: r
            .get::<_, Option<i64>>(39)?
            .and_then(|v| u32::try_from(v).ok()),
        avoided_cost: Money::from_nanos(r.get::<_, Option<i64>>(40)?.unwrap_or(0)),
        expected_write: n(41)?,
        expected_read: n(42)?,
        miss: r.get::<_, Option<bool>>(43)?.unwrap_or(false),
    }))
}

/// Columns 44..=46.
fn prune_from_sql(r: &Row<'_>) -> rusqlite::Result<Option<PruneRecord>> {
    let Some(before) = r.get::<_, Option<i64>>(44)? else {
        return Ok(None);
    };
    Ok(Some(PruneRecord {
        tokens_before: before.max(0) as u64,
        tokens_after: r.get::<_, Option<i64>>(45)?.unwrap_or(0).max(0) as u64,
        cost_without: Money::from_nanos(r.get::<_, Option<i64>>(46)?.unwrap_or(0)),
    }))
}

fn route_from_sql(r: &Row<'_>) -> rusqlite::Result<Option<RouteRecord>> {
    let Some(name) = r.get::<_, Option<String>>(30)? else {
        return Ok(None);
    };
    let mode: Option<String> = r.get(34)?;
    let score: f64 = r.get::<_, Option<f64>>(33)?.unwrap_or(0.0);
    Ok(Some(RouteRecord {
        name,
        tier: u32::try_from(r.get::<_, Option<i64>>(31)?.unwrap_or(0)).unwrap_or(0),
        tier_deployment: r.get::<_, Option<String>>(32)?.unwrap_or_default(),
        score_ppm: (score.clamp(0.0, 1.0) * 1e6).round() as u32,
        mode: mode
            .as_deref()
            .and_then(RouteMode::parse)
            .unwrap_or(RouteMode::Enforce),
        heavy_cost: Money::from_nanos(r.get::<_, Option<i64>>(35)?.unwrap_or(0)),
        tier_cost: Money::from_nanos(r.get::<_, Option<i64>>(36)?.unwrap_or(0)),
        escalated: r.get(37)?,
        sample: None,
    }))
}

/// The numbers of every stream's rows in a window: written rows and recorded
/// duplicates (`?1`, `?2`: the window). Shared by both backends' gap queries.
pub(crate) const SEQ_SOURCE: &str = "WITH s AS (
    SELECT replica_id, replica_seq FROM ledger
    WHERE replica_id IS NOT NULL AND ts_ms >= ?1 AND ts_ms < ?2
    UNION ALL
    SELECT replica_id, replica_seq FROM ledger_duplicates WHERE ts_ms >= ?1 AND ts_ms < ?2)";

/// The ranges missing between consecutive numbers of each stream.
pub(crate) const SEQ_GAPS: &str = "SELECT replica_id, prev + 1, replica_seq - 1 FROM (
    SELECT replica_id, replica_seq,
           LAG(replica_seq) OVER (PARTITION BY replica_id ORDER BY replica_seq) AS prev
    FROM s) g
    WHERE replica_seq > prev + 1 ORDER BY replica_id, replica_seq";

/// A recorded routing sample joined with its ledger row and its task's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub request_id: String,
    pub route_name: String,
    pub task: Option<String>,
    pub model: String,
    pub features: String,
    /// The deployment that served the call.
    pub deployment: String,
    pub escalated: bool,
    /// The task's current outcome status (`success`, `failure`, `abandoned`), if any.
    pub outcome: Option<String>,
}

impl SqliteStore {
    /// Every recorded routing sample with what was observed of it (oldest first).
    pub fn route_samples(&self) -> Result<Vec<StoredSample>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT s.request_id, s.route_name, s.task, s.model_hash, s.features,
                    l.deployment, l.route_escalated IS NOT NULL, o.status
             FROM route_samples s
             JOIN ledger l ON l.request_id = s.request_id
             LEFT JOIN task_outcomes o ON o.task = s.task
             WHERE l.status >= 200 AND l.status < 300
             ORDER BY s.ts_ms, s.request_id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredSample {
                    request_id: r.get(0)?,
                    route_name: r.get(1)?,
                    task: r.get(2)?,
                    model: r.get(3)?,
                    features: r.get(4)?,
                    deployment: r.get(5)?,
                    escalated: r.get(6)?,
                    outcome: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One row by request id.
    pub fn ledger_row(&self, request_id: &str) -> Result<Option<LedgerRow>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let sql = format!("{SELECT} WHERE request_id = ?1");
        Ok(conn
            .query_row(&sql, [request_id], row_from_sql)
            .optional()?)
    }

    /// Rows in `[since_ms, until_ms)`, oldest first, at most `limit`.
    pub fn ledger_rows(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let sql = format!("{SELECT} WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY ts_ms, id LIMIT ?3");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map(params![since_ms, until_ms, limit as i64], row_from_sql)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One page of rows in `[since_ms, until_ms)` after `after`, oldest first (keyset
    /// paging on `(ts_ms, id)`, which the `ts_ms` index serves: no page rescans the
    /// ones before it).
    pub fn ledger_page(
        &self,
        since_ms: i64,
        until_ms: i64,
        after: Option<LedgerCursor>,
        limit: usize,
    ) -> Result<LedgerPage, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let select = SELECT.replacen("\n    FROM ledger", ", id\n    FROM ledger", 1);
        let sql = format!(
            "{select} WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (ts_ms, id) > (?3, ?4)
             ORDER BY ts_ms, id LIMIT ?5"
        );
        let a = after.unwrap_or(LedgerCursor {
            ts_ms: i64::MIN,
            id: i64::MIN,
        });
        let mut stmt = conn.prepare(&sql)?;
        let mut last = None;
        let rows = stmt
            .query_map(
                params![since_ms, until_ms, a.ts_ms, a.id, limit as i64],
                |r| {
                    let id: i64 = r.get(51)?;
                    Ok((row_from_sql(r)?, id))
                },
            )?
            .map(|x| {
                x.map(|(row, id)| {
                    last = Some(LedgerCursor {
                        ts_ms: row.ts_ms,
                        id,
                    });
                    row
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LedgerPage::new(rows, last, limit))
    }

    /// Number of ledger rows (all time).
    pub fn ledger_count(&self) -> Result<u64, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Every writer stream with rows in `[since_ms, until_ms)`, with the numbers missing
    /// between its first and last (a lost row, or one still in a replica's spool).
    pub fn ledger_sequences(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<ReplicaSequence>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(&format!(
            "{SEQ_SOURCE} SELECT replica_id, COUNT(*), MIN(replica_seq), MAX(replica_seq)
             FROM s GROUP BY replica_id ORDER BY replica_id"
        ))?;
        let summaries = stmt
            .query_map(params![since_ms, until_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(&format!("{SEQ_SOURCE} {SEQ_GAPS}"))?;
        let gaps = stmt
            .query_map(params![since_ms, until_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(sequences(summaries, gaps))
    }

    /// Remember which price table (hash → sources) priced rows, so a hash in the ledger
    /// can always be traced to its catalog.
    pub fn register_price_table(
        &self,
        hash: &str,
        sources: &[String],
        models: usize,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let conn = self.connect(Sync::Normal)?;
        conn.execute(
            "INSERT INTO price_tables (hash, sources, models, first_seen_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hash) DO NOTHING",
            params![
                hash,
                serde_json::to_string(sources).unwrap_or_default(),
                models as i64,
                now_ms
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn row(i: usize) -> LedgerRow {
        LedgerRow {
            ts_ms: 1_700_000_000_000 + i as i64,
            request_id: format!("req-{i}"),
            endpoint: Endpoint::ChatCompletions,
            attribution: Attribution {
                key_id: Some("k".into()),
                agent: Some(format!("agent-{}", i % 3)),
                team: Some("team".into()),
                task: Some(format!("task-{}", i % 5)),
                user: None,
                tags: vec!["a".into()],
            },
            route: Route {
                requested_model: "gpt-4o".into(),
                deployment: "gpt-4o".into(),
                upstream: "openai".into(),
                upstream_model: "gpt-4o-2024-08-06".into(),
            },
            usage: Usage {
                input: 100,
                cache_read: 20,
                cache_write_5m: 0,
                cache_write_1h: 0,
                output: 50,
                reasoning: 10,
            },
            usage_source: UsageSource::Reported,
            cost: Money::from_nanos(1234 + i as i64),
            cost_without_cache: Money::from_nanos(1300 + i as i64),
            priced: true,
            price_hash: "abcd".into(),
            latency_us: 1000,
            ttft_us: Some(100),
            status: 200,
            error_code: None,
            stream: i.is_multiple_of(2),
            partial: false,
            // Every seventh row went through a route (round-tripped in full below).
            routing: i.is_multiple_of(7).then(|| RouteRecord {
                name: "auto".into(),
                tier: 1,
                tier_deployment: "gpt-4o".into(),
                score_ppm: 734_125,
                mode: if i.is_multiple_of(2) {
                    RouteMode::Enforce
                } else {
                    RouteMode::Shadow
                },
                heavy_cost: Money::from_nanos(99_999),
                // Enforce: the chosen tier is what was paid; shadow: a cheaper tier.
                tier_cost: Money::from_nanos(
                    if i.is_multiple_of(2) { 1234 } else { 1000 } + i as i64,
                ),
                escalated: (i == 7).then(|| "empty".to_string()),
                sample: None,
            }),
            // Every fifth a cache decision, every third pruned (round-tripped below).
            cache: match i % 5 {
                0 => Some(CacheRecord {
                    kind: CacheKind::ResponseSemantic,
                    similarity_ppm: Some(912_000),
                    avoided_cost: Money::from_nanos(777),
                    expected_write: 0,
                    expected_read: 0,
                    miss: false,
                }),
                1 => Some(CacheRecord {
                    kind: CacheKind::PromptInjected,
                    similarity_ppm: None,
                    avoided_cost: Money::ZERO,
                    expected_write: 2048,
                    expected_read: 1024,
                    miss: i.is_multiple_of(2),
                }),
                _ => None,
            },
            prune: i.is_multiple_of(3).then(|| PruneRecord {
                tokens_before: 9_000,
                tokens_after: 3_000,
                cost_without: Money::from_nanos(5_000),
            }),
            usage_suspect: i.is_multiple_of(7),
            // Every fourth a service tier, every other a stable prefix (round-tripped).
            service_tier: i.is_multiple_of(4).then(|| "flex".to_string()),
            prefix: i.is_multiple_of(2).then(|| PrefixRecord {
                hash: format!("{:032x}", i % 9),
                tokens: 1_500 + i as u64,
            }),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn every_recorded_row_is_written_once_batched_and_strict() {
        for durability in [Durability::Batched, Durability::Strict] {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("l.db")).unwrap();
            let cfg = LedgerConfig {
                durability,
                channel_capacity: 8, // tiny: exercises backpressure
                max_batch: 16,
                replica: None,
            };
            let (ledger, writer) = store.start_ledger(&cfg).unwrap();
            rt().block_on(async {
                let mut joins = tokio::task::JoinSet::new();
                for t in 0..8 {
                    let l = ledger.clone();
                    joins.spawn(async move {
                        for i in 0..100 {
                            l.record(row(t * 100 + i)).await.unwrap();
                        }
                    });
                }
                while let Some(j) = joins.join_next().await {
                    j.unwrap();
                }
            });
            // A retried row (same request id) is not counted twice.
            rt().block_on(ledger.record(row(5))).unwrap();
            drop(ledger);
            writer.join();
            assert_eq!(store.ledger_count().unwrap(), 800, "{durability:?}");
            let back = store.ledger_row("req-7").unwrap().unwrap();
            assert_eq!(back, row(7));
            let plain = store.ledger_row("req-8").unwrap().unwrap();
            assert_eq!((plain, row(8).routing), (row(8), None));
        }
    }

    /// Figures past the storage caps (u64::MAX tokens, i64::MAX nano-USD) are stored
    /// clamped and flagged, so thousands of such rows still sum.
    #[test]
    fn rows_past_the_storage_caps_are_clamped_flagged_and_sum() {
        use tollgate_domain::ledger::{STORED_NANOS_MAX, STORED_TOKENS_MAX};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("caps.db")).unwrap();
        let wild: Vec<LedgerRow> = (0..1000)
            .map(|i| {
                let mut r = row(i);
                r.usage.output = u64::MAX;
                r.usage.input = 10u64.pow(17);
                r.cost = Money::from_nanos(i64::MAX);
                r.cost_without_cache = Money::from_nanos(i64::MAX);
                r.usage_suspect = false;
                r
            })
            .collect();
        let mut c = store.connect(Sync::Normal).unwrap();
        insert_batch(&mut c, wild.iter()).unwrap();
        insert_batch(&mut c, [row(5000)].iter()).unwrap();
        let back = store.ledger_row("req-3").unwrap().unwrap();
        assert!(back.usage_suspect, "clamped by the store, so flagged");
        assert_eq!(back.usage.output, STORED_TOKENS_MAX);
        assert_eq!(back.usage.input, STORED_TOKENS_MAX);
        assert_eq!(back.cost.nanos(), STORED_NANOS_MAX);
        assert!(!store.ledger_row("req-5000").unwrap().unwrap().usage_suspect);
        let rep = store.usage_report(None, 0, i64::MAX).unwrap();
        assert_eq!(rep.total.requests, 1001);
        assert_eq!(
            rep.total.cost.nanos(),
            1000 * STORED_NANOS_MAX + row(5000).cost.nanos()
        );
    }

    #[test]
    fn route_samples_join_their_row_and_outcome() {
        use tollgate_domain::ledger::RouteSample;
        use tollgate_domain::outcome::{OutcomeStatus, TaskOutcome, ValueBasis};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let mut with = row(14);
        if let Some(rt) = with.routing.as_mut() {
            rt.sample = Some(RouteSample {
                model: "embedded".into(),
                tokens: 5,
                features: "{\"b\": [1, 2]}".into(),
            });
        }
        let mut c = store.connect(Sync::Normal).unwrap();
        insert_batch(&mut c, [with.clone(), row(21), with].iter()).unwrap();
        assert!(store.route_samples().unwrap()[0].outcome.is_none());
        store
            .record_outcome(
                &TaskOutcome {
                    task: "task-4".into(),
                    status: OutcomeStatus::Success,
                    basis: ValueBasis::Usd {
                        value: Money::from_nanos(1),
                    },
                    labels: Default::default(),
                },
                "test",
                1,
            )
            .unwrap();
        let s = store.route_samples().unwrap();
        assert_eq!(s.len(), 1, "one sample, written once");
        assert_eq!(s[0].request_id, "req-14");
        assert_eq!(s[0].task.as_deref(), Some("task-4"));
        assert_eq!(s[0].outcome.as_deref(), Some("success"));
        assert_eq!(
            (s[0].deployment.as_str(), s[0].escalated),
            ("gpt-4o", false)
        );
        assert_eq!(s[0].features, "{\"b\": [1, 2]}");
    }

    #[test]
    fn strict_record_returns_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("l.db")).unwrap();
        let cfg = LedgerConfig {
            durability: Durability::Strict,
            ..LedgerConfig::default()
        };
        let (ledger, writer) = store.start_ledger(&cfg).unwrap();
        rt().block_on(async {
            ledger.record(row(1)).await.unwrap();
            // Visible to another connection immediately: it was committed.
            assert!(store.ledger_row("req-1").unwrap().is_some());
        });
        drop(ledger);
        writer.join();
    }

    #[test]
    fn fallback_path_sits_next_to_the_database() {
        assert_eq!(
            fallback_path(std::path::Path::new("/x/y/t.db")),
            PathBuf::from("/x/y/t.db.unwritten.jsonl")
        );
    }
}

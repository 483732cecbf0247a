//! The PostgreSQL ledger writer.
//!
//! Same contract as the SQLite writer (`crate::ledger`): [`Ledger::record`] never drops a
//! row (a full queue is backpressure), batches are group-committed (flush at
//! `max_batch` rows or after [`BATCH_LINGER`]), the writer drains the queue when every
//! handle is gone, strict callers are answered once their row is durable. It runs on
//! its own threads (`[store] writers`, default 2), each with a single-threaded runtime, its
//! own connection, stream of sequence numbers and spool file; they take batches from the
//! one queue in turn, so one collects and sends the next batch while another commits.
//!
//! A batch is loaded into a temporary staging table (binary COPY, or multi-row INSERT:
//! [`WriteMethod`]) and merged in the same transaction:
//! 1. request ids go into `ledger_ids` (`ON CONFLICT DO NOTHING`), returning the new ones;
//! 2. only those rows go into `ledger`;
//! 3. if some were not new, the skipped rows' stream numbers go to `ledger_duplicates`
//!    (unless the row there is this very row, shipped twice), so they are not gaps;
//! 4. routing samples go to `route_samples` (`ON CONFLICT DO NOTHING`).
//!
//! While PostgreSQL cannot take a batch (down, unreachable, timing out, refusing it),
//! the batch goes to the [`Spool`] and its callers are answered (strict: after the
//! fsync). While the spool holds rows, new batches are appended behind them and the
//! writer ships the spool, oldest first, whenever PostgreSQL answers again (retrying
//! with backoff up to [`MAX_BACKOFF`]). A replica whose PostgreSQL is down keeps serving.

use super::spool::{Spool, Spooled};
use super::{Month, R, connect, create_partitions, month_of, schema::LEDGER_COLUMNS};
use crate::config::WriteMethod;
use crate::ledger::{BATCH_LINGER, Durability, LedgerConfig, LedgerStats, Msg, sql_u64, stream_id};
use crate::{Ledger, LedgerWriter, StoreError};
use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

/// A batch that takes longer than this counts as failed (it goes to the spool; if it did
/// commit after all, shipping it again changes nothing).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between attempts to reach PostgreSQL again.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Batches shipped from the spool between two looks at the queue.
const SHIP_CHUNKS_PER_TURN: usize = 4;
/// At shutdown, how long the writer keeps shipping a backlog before leaving the rest in
/// the spool for the next start.
const SHUTDOWN_SHIP: Duration = Duration::from_secs(3);
/// Rows per multi-row INSERT statement (56 parameters each; PostgreSQL allows 65,535).
const INSERT_CHUNK: usize = 1_000;

/// A row and its writer stream and number (`None`: written outside the writer).
pub(crate) type Stamped<'a> = (&'a LedgerRow, Option<(&'a str, i64)>);

use tollgate_domain::ledger::{LedgerRow, stored_nanos, stored_tokens};

const STAGE_EXTRA: &[&str] = &["sample_model", "sample_tokens", "sample_features"];

fn stage_types() -> Vec<Type> {
    use Type as T;
    let mut t = vec![T::INT8];
    t.extend([T::TEXT; 12]);
    t.extend([T::INT8; 6]);
    t.extend([
        T::TEXT,   // usage_source
        T::INT8,   // cost_nanos
        T::BOOL,   // priced
        T::TEXT,   // price_hash
        T::INT8,   // latency_us
        T::INT8,   // ttft_us
        T::INT4,   // status
        T::TEXT,   // error_code
        T::BOOL,   // stream
        T::BOOL,   // partial
        T::INT8,   // cost_without_cache_nanos
        T::TEXT,   // route_name
        T::INT4,   // route_tier
        T::TEXT,   // route_deployment
        T::FLOAT8, // route_score
        T::TEXT,   // route_mode
        T::INT8,   // route_heavy_cost_nanos
        T::INT8,   // route_tier_cost_nanos
        T::TEXT,   // route_escalated
        T::TEXT,   // replica_id
        T::INT8,   // replica_seq
        T::TEXT,   // cache_kind
        T::INT8,   // cache_similarity_ppm
        T::INT8,   // cache_avoided_nanos
        T::INT8,   // cache_expected_write
        T::INT8,   // cache_expected_read
        T::BOOL,   // cache_miss
        T::INT8,   // prune_tokens_before
        T::INT8,   // prune_tokens_after
        T::INT8,   // prune_cost_without_nanos
        T::BOOL,   // usage_suspect
        T::TEXT,   // service_tier
        T::TEXT,   // prefix_hash
        T::INT8,   // prefix_tokens
        T::TEXT,   // sample_model
        T::INT8,   // sample_tokens
        T::TEXT,   // sample_features
    ]);
    t
}

fn sql_type(t: &Type) -> &'static str {
    match *t {
        Type::INT8 => "BIGINT",
        Type::INT4 => "INTEGER",
        Type::BOOL => "BOOLEAN",
        Type::FLOAT8 => "DOUBLE PRECISION",
        _ => "TEXT",
    }
}

fn stage_columns() -> Vec<&'static str> {
    LEDGER_COLUMNS.iter().chain(STAGE_EXTRA).copied().collect()
}

/// The staging table: per connection, emptied at every commit.
fn create_stage_sql() -> String {
    let cols: Vec<String> = stage_columns()
        .iter()
        .zip(stage_types().iter())
        .map(|(c, t)| format!("{c} {}", sql_type(t)))
        .collect();
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS ledger_stage ({}) ON COMMIT DELETE ROWS",
        cols.join(", ")
    )
}

fn merge_sql() -> String {
    let cols = LEDGER_COLUMNS.join(", ");
    let s_cols: Vec<String> = LEDGER_COLUMNS.iter().map(|c| format!("s.{c}")).collect();
    format!(
        "WITH ids AS (
           INSERT INTO ledger_ids (request_id, ts_ms, replica_id, replica_seq)
           SELECT request_id, ts_ms, replica_id, replica_seq FROM ledger_stage ORDER BY replica_seq
           ON CONFLICT (request_id) DO NOTHING
           RETURNING request_id, replica_seq)
         INSERT INTO ledger ({cols})
         SELECT {} FROM ledger_stage s
         JOIN ids ON ids.request_id = s.request_id AND ids.replica_seq IS NOT DISTINCT FROM s.replica_seq",
        s_cols.join(", ")
    )
}

const DUPLICATES_SQL: &str = "INSERT INTO ledger_duplicates (replica_id, replica_seq, request_id, ts_ms)
    SELECT s.replica_id, s.replica_seq, s.request_id, s.ts_ms
    FROM ledger_stage s JOIN ledger_ids i ON i.request_id = s.request_id
    WHERE s.replica_id IS NOT NULL
      AND (i.replica_id IS DISTINCT FROM s.replica_id OR i.replica_seq IS DISTINCT FROM s.replica_seq)
    ON CONFLICT DO NOTHING";

const SAMPLES_SQL: &str =
    "INSERT INTO route_samples (request_id, ts_ms, route_name, task, model_hash, tokens, features)
    SELECT request_id, ts_ms, route_name, task, sample_model, sample_tokens, sample_features
    FROM ledger_stage WHERE sample_model IS NOT NULL AND route_name IS NOT NULL
    ON CONFLICT (request_id) DO NOTHING";

/// One row's values in staging-column order.
struct Values<'a> {
    ts_ms: i64,
    request_id: &'a str,
    endpoint: &'static str,
    key_id: Option<&'a str>,
    user: Option<&'a str>,
    team: Option<&'a str>,
    agent: Option<&'a str>,
    task: Option<&'a str>,
    tags: Option<String>,
    requested_model: &'a str,
    deployment: &'a str,
    upstream: &'a str,
    upstream_model: &'a str,
    tokens: [i64; 6],
    usage_source: &'static str,
    cost: i64,
    priced: bool,
    price_hash: &'a str,
    latency_us: i64,
    ttft_us: Option<i64>,
    status: i32,
    error_code: Option<&'a str>,
    stream: bool,
    partial: bool,
    cost_without_cache: i64,
    route_name: Option<&'a str>,
    route_tier: Option<i32>,
    route_deployment: Option<&'a str>,
    route_score: Option<f64>,
    route_mode: Option<&'static str>,
    route_heavy: Option<i64>,
    route_tier_cost: Option<i64>,
    route_escalated: Option<&'a str>,
    replica_id: Option<&'a str>,
    replica_seq: Option<i64>,
    cache_kind: Option<&'static str>,
    cache_similarity_ppm: Option<i64>,
    cache_avoided: Option<i64>,
    cache_expected_write: Option<i64>,
    cache_expected_read: Option<i64>,
    cache_miss: Option<bool>,
    prune_tokens_before: Option<i64>,
    prune_tokens_after: Option<i64>,
    prune_cost_without: Option<i64>,
    usage_suspect: bool,
    service_tier: Option<&'a str>,
    prefix_hash: Option<&'a str>,
    prefix_tokens: Option<i64>,
    sample_model: Option<&'a str>,
    sample_tokens: Option<i64>,
    sample_features: Option<&'a str>,
}

impl<'a> Values<'a> {
    fn new((r, stamp): Stamped<'a>) -> Values<'a> {
        let a = &r.attribution;
        let rt = r.routing.as_ref();
        let sample = rt.and_then(|x| x.sample.as_ref());
        let c = r.cache.as_ref();
        let p = r.prune.as_ref();
        Values {
            ts_ms: r.ts_ms,
            request_id: &r.request_id,
            endpoint: r.endpoint.as_str(),
            key_id: a.key_id.as_deref(),
            user: a.user.as_deref(),
            team: a.team.as_deref(),
            agent: a.agent.as_deref(),
            task: a.task.as_deref(),
            // As SQLite stores them: JSON text, NULL when there are none.
            tags: (!a.tags.is_empty()).then(|| serde_json::to_string(&a.tags).unwrap_or_default()),
            requested_model: &r.route.requested_model,
            deployment: &r.route.deployment,
            upstream: &r.route.upstream,
            upstream_model: &r.route.upstream_model,
            tokens: [
                stored_tokens(r.usage.input),
                stored_tokens(r.usage.cache_read),
                stored_tokens(r.usage.cache_write_5m),
                stored_tokens(r.usage.cache_write_1h),
                stored_tokens(r.usage.output),
                stored_tokens(r.usage.reasoning),
            ],
            usage_source: r.usage_source.as_str(),
            cost: stored_nanos(r.cost),
            priced: r.priced,
            price_hash: &r.price_hash,
            latency_us: sql_u64(r.latency_us),
            ttft_us: r.ttft_us.map(sql_u64),
            status: i32::from(r.status),
            error_code: r.error_code.as_deref(),
            stream: r.stream,
            partial: r.partial,
            cost_without_cache: stored_nanos(r.cost_without_cache),
            route_name: rt.map(|x| x.name.as_str()),
            route_tier: rt.map(|x| i32::try_from(x.tier).unwrap_or(i32::MAX)),
            route_deployment: rt.map(|x| x.tier_deployment.as_str()),
            route_score: rt.map(|x| f64::from(x.score_ppm) / 1e6),
            route_mode: rt.map(|x| x.mode.as_str()),
            route_heavy: rt.map(|x| stored_nanos(x.heavy_cost)),
            route_tier_cost: rt.map(|x| stored_nanos(x.tier_cost)),
            route_escalated: rt.and_then(|x| x.escalated.as_deref()),
            replica_id: stamp.map(|s| s.0),
            replica_seq: stamp.map(|s| s.1),
            cache_kind: c.map(|c| c.kind.as_str()),
            cache_similarity_ppm: c.and_then(|c| c.similarity_ppm).map(i64::from),
            cache_avoided: c.map(|c| stored_nanos(c.avoided_cost)),
            cache_expected_write: c.map(|c| stored_tokens(c.expected_write)),
            cache_expected_read: c.map(|c| stored_tokens(c.expected_read)),
            cache_miss: c.map(|c| c.miss),
            prune_tokens_before: p.map(|p| stored_tokens(p.tokens_before)),
            prune_tokens_after: p.map(|p| stored_tokens(p.tokens_after)),
            prune_cost_without: p.map(|p| stored_nanos(p.cost_without)),
            usage_suspect: r.stored_suspect(),
            service_tier: r.service_tier.as_deref(),
            prefix_hash: r.prefix.as_ref().map(|p| p.hash.as_str()),
            prefix_tokens: r.prefix.as_ref().map(|p| stored_tokens(p.tokens)),
            sample_model: sample.map(|s| s.model.as_str()),
            sample_tokens: sample.map(|s| i64::from(s.tokens)),
            sample_features: sample.map(|s| s.features.as_str()),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 56] {
        [
            &self.ts_ms,
            &self.request_id,
            &self.endpoint,
            &self.key_id,
            &self.user,
            &self.team,
            &self.agent,
            &self.task,
            &self.tags,
            &self.requested_model,
            &self.deployment,
            &self.upstream,
            &self.upstream_model,
            &self.tokens[0],
            &self.tokens[1],
            &self.tokens[2],
            &self.tokens[3],
            &self.tokens[4],
            &self.tokens[5],
            &self.usage_source,
            &self.cost,
            &self.priced,
            &self.price_hash,
            &self.latency_us,
            &self.ttft_us,
            &self.status,
            &self.error_code,
            &self.stream,
            &self.partial,
            &self.cost_without_cache,
            &self.route_name,
            &self.route_tier,
            &self.route_deployment,
            &self.route_score,
            &self.route_mode,
            &self.route_heavy,
            &self.route_tier_cost,
            &self.route_escalated,
            &self.replica_id,
            &self.replica_seq,
            &self.cache_kind,
            &self.cache_similarity_ppm,
            &self.cache_avoided,
            &self.cache_expected_write,
            &self.cache_expected_read,
            &self.cache_miss,
            &self.prune_tokens_before,
            &self.prune_tokens_after,
            &self.prune_cost_without,
            &self.usage_suspect,
            &self.service_tier,
            &self.prefix_hash,
            &self.prefix_tokens,
            &self.sample_model,
            &self.sample_tokens,
            &self.sample_features,
        ]
    }
}

/// What one connection keeps between batches: months whose partitions exist, prepared
/// multi-row INSERTs by row count, whether the staging table exists.
#[derive(Default)]
pub(crate) struct BatchState {
    months: HashSet<Month>,
    inserts: HashMap<usize, Statement>,
    staged: bool,
}

/// Write `rows` in one transaction; returns how many were new.
pub(crate) async fn write_batch(
    client: &mut Client,
    rows: &[Stamped<'_>],
    method: WriteMethod,
    state: &mut BatchState,
) -> R<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    if !state.staged {
        client.batch_execute(&create_stage_sql()).await?;
        state.staged = true;
    }
    let mut missing: Vec<Month> = Vec::new();
    for (r, _) in rows {
        let m = month_of(r.ts_ms)?;
        if !state.months.contains(&m) && !missing.contains(&m) {
            missing.push(m);
        }
    }
    if !missing.is_empty() {
        // The month after too, so the turn of the month finds its partition ready.
        let mut months = missing.clone();
        months.extend(missing.iter().map(|m| m + 1));
        create_partitions(client, &months).await?;
        state.months.extend(months);
    }
    let values: Vec<Values<'_>> = rows.iter().map(|&r| Values::new(r)).collect();
    let has_samples = values.iter().any(|v| v.sample_model.is_some());
    let any_stamped = values.iter().any(|v| v.replica_id.is_some());
    let tx = client.transaction().await?;
    match method {
        WriteMethod::Copy => {
            let sink = tx
                .copy_in(&format!(
                    "COPY ledger_stage ({}) FROM STDIN (FORMAT binary)",
                    stage_columns().join(", ")
                ))
                .await?;
            let mut w = pin!(BinaryCopyInWriter::new(sink, &stage_types()));
            for v in &values {
                w.as_mut().write(&v.params()).await?;
            }
            w.finish().await?;
        }
        WriteMethod::Insert => {
            for chunk in values.chunks(INSERT_CHUNK) {
                let stmt = match state.inserts.get(&chunk.len()) {
                    Some(s) => s.clone(),
                    None => {
                        let s = tx.prepare(&insert_sql(chunk.len())).await?;
                        state.inserts.insert(chunk.len(), s.clone());
                        s
                    }
                };
                let params: Vec<&(dyn ToSql + Sync)> =
                    chunk.iter().flat_map(|v| v.params()).collect();
                tx.execute(&stmt, &params).await?;
            }
        }
    }
    let inserted = tx.execute(&merge_sql(), &[]).await?;
    if any_stamped && (inserted as usize) < rows.len() {
        tx.execute(DUPLICATES_SQL, &[]).await?;
    }
    if has_samples {
        tx.execute(SAMPLES_SQL, &[]).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

fn insert_sql(rows: usize) -> String {
    let cols = stage_columns();
    let width = cols.len();
    let mut sql = format!("INSERT INTO ledger_stage ({}) VALUES ", cols.join(", "));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * width + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// The writer's side of PostgreSQL: a connection (when it has one) and the backoff.
struct Sink {
    config: tokio_postgres::Config,
    client: Option<Client>,
    state: BatchState,
    method: WriteMethod,
    retry_at: Instant,
    backoff: Duration,
}

impl Sink {
    /// Write a batch now, or fail fast while backing off.
    async fn write(&mut self, rows: &[Stamped<'_>]) -> R<u64> {
        if Instant::now() < self.retry_at {
            return Err(StoreError::PostgresTimeout("backing off".into()));
        }
        let result = tokio::time::timeout(WRITE_TIMEOUT, async {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                self.client = None;
                self.state.staged = false;
                self.state.inserts.clear();
                self.client = Some(connect(&self.config).await?);
            }
            match self.client.as_mut() {
                Some(c) => write_batch(c, rows, self.method, &mut self.state).await,
                None => Err(StoreError::PostgresTimeout("not connected".into())),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::PostgresTimeout(
                "writing a batch timed out".into(),
            ))
        });
        match &result {
            Ok(_) => self.backoff = MIN_BACKOFF,
            Err(_) => {
                // Whatever state the connection is in, start again from a new one.
                self.client = None;
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        result
    }
}

struct Writer {
    sink: Sink,
    spool: Spool,
    stats: Arc<LedgerStats>,
    strict: bool,
    max_batch: usize,
}

impl Writer {
    /// Write a batch to PostgreSQL, or (down, or rows already waiting) to the spool.
    async fn write(&mut self, stream: &str, first_seq: i64, batch: &[Msg]) {
        let stamped = || {
            batch
                .iter()
                .enumerate()
                .map(|(i, m)| (&m.row, Some((stream, first_seq + i as i64))))
        };
        loop {
            // Straight to PostgreSQL unless rows wait in the spool (they go first) or a
            // failed attempt is still backing off.
            if !self.spool.pending() && Instant::now() >= self.sink.retry_at {
                let rows: Vec<Stamped<'_>> = stamped().collect();
                match self.sink.write(&rows).await {
                    Ok(_) => {
                        self.stats.commits.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .rows_written
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, rows = batch.len(), "ledger: postgresql did not take the batch; spooling it locally");
                    }
                }
            }
            let rows = stamped().filter_map(|(r, s)| s.map(|(id, n)| (r, id, n)));
            match self.spool.append(rows, self.strict) {
                Ok(n) => {
                    self.stats
                        .rows_spooled
                        .fetch_add(n as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    // Neither PostgreSQL nor the disk takes the batch: hold it (the queue
                    // fills and callers wait) and try both again.
                    tracing::error!(error = %e, path = %self.spool.path().display(), "ledger: the spool write failed; holding the batch");
                    tokio::time::sleep(self.sink.backoff).await;
                    self.sink.retry_at = Instant::now();
                }
            }
        }
    }

    /// Ship up to `chunks` batches from the spool. `false` if PostgreSQL (or the spool
    /// file) failed, so the caller backs off.
    async fn ship(&mut self, chunks: usize) -> bool {
        for _ in 0..chunks {
            if !self.spool.pending() {
                return true;
            }
            let (rows, next) = match self.spool.read(self.max_batch) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "ledger: reading the spool failed");
                    return false;
                }
            };
            let stamped: Vec<Stamped<'_>> = rows
                .iter()
                .map(|s: &Spooled| (&s.row, Some((s.replica_id.as_str(), s.replica_seq))))
                .collect();
            if self.sink.write(&stamped).await.is_err() {
                return false;
            }
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .rows_written
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            self.stats
                .rows_shipped
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.spool.shipped(next) {
                // Shipped rows will be shipped again, which changes nothing.
                tracing::error!(error = %e, "ledger: recording the spool's offset failed");
                return false;
            }
            if !self.spool.pending() {
                tracing::info!(
                    "ledger: the spool is shipped; writing to postgresql directly again"
                );
            }
        }
        true
    }
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

/// The queue, shared by the writers: one collects a batch (holding the lock) while the
/// others write theirs.
type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Msg>>>;

async fn run(mut w: Writer, rx: Queue, linger: Duration, stream: String) {
    let mut batch: Vec<Msg> = Vec::with_capacity(w.max_batch);
    let mut next_seq: i64 = 1;
    let idle = Duration::from_secs(3600);
    loop {
        if w.spool.pending() && Instant::now() >= w.sink.retry_at {
            w.ship(SHIP_CHUNKS_PER_TURN).await;
        }
        let wait = if w.spool.pending() {
            w.sink.retry_at.saturating_duration_since(Instant::now())
        } else {
            idle
        };
        {
            let mut rx = match tokio::time::timeout(wait, rx.lock()).await {
                Ok(rx) => rx,
                Err(_) => continue,
            };
            let first = match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => continue,
            };
            batch.push(first);
            drain(&mut rx, &mut batch, w.max_batch);
            if !linger.is_zero() && batch.len() < w.max_batch && !rx.is_closed() {
                tokio::time::sleep(linger).await;
                drain(&mut rx, &mut batch, w.max_batch);
            }
        }
        let first_seq = next_seq;
        next_seq += batch.len() as i64;
        w.write(&stream, first_seq, &batch).await;
        for m in batch.drain(..) {
            if let Some(ack) = m.ack {
                let _ = ack.send(());
            }
        }
    }
    // Every handle is gone and the queue is drained: ship what is spooled for a short
    // while; the rest waits in the spool for the next start.
    let deadline = Instant::now() + SHUTDOWN_SHIP;
    while w.spool.pending() && Instant::now() < deadline {
        w.sink.retry_at = w.sink.retry_at.min(Instant::now());
        if !w.ship(1).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if w.spool.pending() {
        tracing::warn!(
            path = %w.spool.path().display(),
            bytes = w.spool.backlog_bytes(),
            "ledger: rows left in the spool; they are shipped at the next start"
        );
    }
}

/// Start the writer threads for `store`: `writers` of them, each with its own
/// connection, stream of sequence numbers and spool file, taking batches from one queue
/// in turn (while one commits, the next collects and sends), joined by one thread.
pub(crate) fn start(store: &super::PostgresStore, cfg: &LedgerConfig) -> R<(Ledger, LedgerWriter)> {
    let inner = &store.inner;
    let n = inner.writers.max(1);
    let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
    let rx: Queue = Arc::new(tokio::sync::Mutex::new(rx));
    let stats = Arc::new(LedgerStats::default());
    let strict = cfg.durability == Durability::Strict;
    let linger = if strict { Duration::ZERO } else { BATCH_LINGER };
    let io = |path: &std::path::Path, e: std::io::Error| StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let path = spool_path(&inner.spool, i);
        let mut spool = Spool::open(&path).map_err(|e| io(&path, e))?;
        if i == 0 {
            // Spools of writers a larger `writers` setting left behind: their rows move
            // into the first writer's spool, which ships them.
            for j in n..MAX_WRITERS {
                let old = spool_path(&inner.spool, j);
                if old.exists() {
                    adopt(&mut spool, &old).map_err(|e| io(&old, e))?;
                }
            }
        }
        let writer = Writer {
            sink: Sink {
                config: inner.config.clone(),
                client: None,
                state: BatchState::default(),
                method: inner.method,
                retry_at: Instant::now(),
                backoff: MIN_BACKOFF,
            },
            spool,
            stats: stats.clone(),
            strict,
            max_batch: cfg.max_batch.max(1),
        };
        let stream = stream_id(cfg.replica.as_deref().or(inner.replica.as_deref()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io {
                path: "ledger writer runtime".into(),
                message: e.to_string(),
            })?;
        let rx = rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-ledger-pg-{i}"))
            .spawn(move || rt.block_on(run(writer, rx, linger, stream)))
            .map_err(|e| StoreError::Io {
                path: "ledger writer thread".into(),
                message: e.to_string(),
            })?;
        threads.push(thread);
    }
    let joiner = std::thread::Builder::new()
        .name("tollgate-ledger-pg".into())
        .spawn(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .map_err(|e| StoreError::Io {
            path: "ledger writer thread".into(),
            message: e.to_string(),
        })?;
    Ok((
        Ledger::new(tx, cfg.durability, stats.clone()),
        LedgerWriter::new(joiner, stats),
    ))
}

/// Most writers `[store] writers` allows (and spool files looked for at start).
const MAX_WRITERS: usize = 8;

/// Writer `i`'s spool file: the configured path for the first, `PATH.i` for the others.
fn spool_path(base: &std::path::Path, i: usize) -> std::path::PathBuf {
    if i == 0 {
        return base.to_path_buf();
    }
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{i}"));
    base.with_file_name(name)
}

/// Move the unshipped rows of the spool at `old` into `spool` (fsynced), then remove
/// `old` and its offset file.
fn adopt(spool: &mut Spool, old: &std::path::Path) -> std::io::Result<()> {
    let mut from = Spool::open(old)?;
    while from.pending() {
        let (rows, next) = from.read(4096)?;
        spool.append(
            rows.iter()
                .map(|s| (&s.row, s.replica_id.as_str(), s.replica_seq)),
            true,
        )?;
        from.shipped(next)?;
        if rows.is_empty() {
            break;
        }
    }
    drop(from);
    std::fs::remove_file(old)?;
    tracing::info!(path = %old.display(), "ledger: moved a former writer's spool into the first writer's");
    Ok(())
}

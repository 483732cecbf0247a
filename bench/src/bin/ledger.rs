//! `ledger`: the ledger's sustained write rate, and a naive baseline.
//!
//! - `ledger run`: opens a fresh SQLite store in a temporary directory, starts the real
//!   ledger writer (batched or strict durability), and pushes `--rows` realistic rows with
//!   unique request ids from `--producers` concurrent tasks through `Ledger::record`, as
//!   the gateway does. The clock stops when every handle is dropped and
//!   `LedgerWriter::join` returns (every row committed). Reports rows/s and commits.
//! - `ledger naive`: the baseline: one `INSERT` and one commit per row on one connection.
//! - `ledger count --db PATH`: the number of rows in an existing ledger (the load run
//!   checks it against the requests it made).
//! - `ledger pg-run --url URL`: the same producers into the PostgreSQL writer (binary COPY
//!   or multi-row INSERT into the staging table, then the idempotent merge), in a fresh
//!   schema dropped afterwards.
//! - `ledger pg-naive --url URL`: the PostgreSQL baseline: one row per transaction.
//! - `ledger pg-report --url URL --rows 10000000`: bulk-loads a ledger with
//!   `generate_series` (90 days, four models, 50 agents), then times the report queries
//!   the CLI and the dashboard run (by day, by agent, by model, over 30 and 90 days)
//!   through the store's own code.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::ledger::{Endpoint, LedgerRow, Route};
use tollgate_domain::money::Money;
use tollgate_domain::report::GroupBy;
use tollgate_domain::usage::{Usage, UsageSource};
use tollgate_store::config::{PostgresSettings, WriteMethod};
use tollgate_store::db::postgres::PostgresStore;
use tollgate_store::sqlite::Sync;
use tollgate_store::{Durability, LedgerConfig, LedgerStore, ReportStore, SqliteStore, Store};

#[derive(Parser, Debug)]
#[command(about = "Ledger write-rate benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Batched,
    Strict,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The ledger writer, fed by concurrent producers.
    Run {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, value_enum, default_value_t = Mode::Batched)]
        durability: Mode,
        /// Tasks active at once (their calls interleave in the ledger).
        #[arg(long, default_value_t = 64)]
        tasks: usize,
        /// Calls each task makes.
        #[arg(long, default_value_t = 20)]
        calls_per_task: usize,
        /// Directory for the temporary database (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Baseline: one INSERT + commit per row.
    Naive {
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Commit durability: batched = synchronous=NORMAL, strict = synchronous=FULL.
        #[arg(long, value_enum, default_value_t = Mode::Batched)]
        durability: Mode,
        /// Tasks active at once (their calls interleave in the ledger).
        #[arg(long, default_value_t = 64)]
        tasks: usize,
        /// Calls each task makes.
        #[arg(long, default_value_t = 20)]
        calls_per_task: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Count the rows of an existing ledger.
    Count {
        #[arg(long)]
        db: PathBuf,
    },
    /// The PostgreSQL ledger writer, fed by concurrent producers.
    PgRun {
        #[arg(long, env = "TOLLGATE_BENCH_POSTGRES_URL")]
        url: String,
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, value_enum, default_value_t = Mode::Batched)]
        durability: Mode,
        #[arg(long, value_enum, default_value_t = Method::Copy)]
        method: Method,
        #[arg(long, default_value_t = 64)]
        tasks: usize,
        #[arg(long, default_value_t = 20)]
        calls_per_task: usize,
        /// Most rows per transaction (the writer's `max_batch`).
        #[arg(long, default_value_t = 4096)]
        max_batch: usize,
        /// Writer connections (`[store] writers`).
        #[arg(long, default_value_t = 2)]
        writers: usize,
        #[arg(long)]
        json: bool,
    },
    /// Baseline: one row per transaction into PostgreSQL.
    PgNaive {
        #[arg(long, env = "TOLLGATE_BENCH_POSTGRES_URL")]
        url: String,
        #[arg(long, default_value_t = 5_000)]
        rows: usize,
        #[arg(long)]
        json: bool,
    },
    /// Bulk-load a PostgreSQL ledger, then time the report queries.
    PgReport {
        #[arg(long, env = "TOLLGATE_BENCH_POSTGRES_URL")]
        url: String,
        #[arg(long, default_value_t = 10_000_000)]
        rows: i64,
        /// Runs of each query (the figures are the fastest and the median).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    Copy,
    Insert,
}

/// What the rows' `task` labels look like: `tasks` tasks active at once, their calls
/// interleaved, each making `calls` calls before a new task takes its slot. The ledger's
/// `(task, ts_ms)` index makes this matter: a commit rewrites an index leaf page for
/// every task whose entries it cannot place next to another's.
#[derive(Clone, Copy)]
struct Tasks {
    active: usize,
    calls: usize,
}

/// A row like the gateway writes for a priced, key-attributed chat completion.
fn row(i: usize, t: Tasks) -> LedgerRow {
    let active = t.active.max(1);
    let slot = i % active;
    let task = (i / (active * t.calls.max(1))) * active + slot;
    LedgerRow {
        ts_ms: 1_760_000_000_000 + (i / 10) as i64,
        request_id: format!("req_bench0000{i:08x}"),
        endpoint: Endpoint::ChatCompletions,
        attribution: Attribution {
            key_id: Some(format!("key_{:08x}", i % 16)),
            user: i.is_multiple_of(4).then(|| format!("user-{}", i % 97)),
            team: Some(["research", "support", "platform"][i % 3].to_string()),
            agent: Some(format!("agent-{}", slot % 8)),
            task: Some(format!("task-{task}")),
            tags: if i.is_multiple_of(5) {
                vec!["eval".into(), "nightly".into()]
            } else {
                Vec::new()
            },
        },
        route: Route {
            requested_model: "gpt-4o-mini".into(),
            deployment: "gpt-4o-mini".into(),
            upstream: "openai".into(),
            upstream_model: "gpt-4o-mini".into(),
        },
        usage: Usage {
            input: 93,
            cache_read: 1024,
            cache_write_5m: 0,
            cache_write_1h: 0,
            output: 34,
            reasoning: 12,
        },
        usage_source: UsageSource::Reported,
        cost: Money::from_nanos(49_875 + i as i64 % 100),
        // The 1024 cached tokens at the uncached input rate: 76,800 nanos more.
        cost_without_cache: Money::from_nanos(49_875 + 76_800 + i as i64 % 100),
        priced: true,
        price_hash: "9f3c2a7be1d04c58".into(),
        latency_us: 180 + (i % 50) as u64,
        ttft_us: Some(170),
        status: 200,
        error_code: None,
        stream: i.is_multiple_of(3),
        partial: false,
        routing: None,
        cache: None,
        prune: None,
        usage_suspect: false,
        service_tier: None,
        prefix: None,
    }
}

fn temp_dir(dir: Option<PathBuf>) -> Result<tempfile::TempDir> {
    Ok(match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    })
}

fn durability(m: Mode) -> Durability {
    match m {
        Mode::Batched => Durability::Batched,
        Mode::Strict => Durability::Strict,
    }
}

fn report(json: bool, v: serde_json::Value) {
    if json {
        println!("{v}");
    } else {
        println!(
            "{}: {} rows in {:.3} s = {} rows/s, {} commits ({:.1} rows/commit)",
            v["bench"].as_str().unwrap_or(""),
            v["rows"],
            v["seconds"].as_f64().unwrap_or(0.0),
            v["rows_per_s"],
            v["commits"],
            v["rows_per_commit"].as_f64().unwrap_or(0.0)
        );
    }
}

fn run(
    rows: usize,
    producers: usize,
    mode: Mode,
    tasks: Tasks,
    dir: Option<PathBuf>,
) -> Result<serde_json::Value> {
    let tmp = temp_dir(dir)?;
    let store = SqliteStore::open(tmp.path().join("ledger.db"))?;
    let cfg = LedgerConfig {
        durability: durability(mode),
        ..LedgerConfig::default()
    };
    let producers = producers.max(1);
    // Rows are built before the clock starts: the bench measures the ledger, not
    // string formatting.
    let mut batches: Vec<Vec<LedgerRow>> = (0..producers).map(|_| Vec::new()).collect();
    for i in 0..rows {
        batches[i % producers].push(row(i, tasks));
    }
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let started = Instant::now();
    let (ledger, writer) = store.start_ledger(&cfg)?;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for batch in batches {
            let l = ledger.clone();
            tasks.spawn(async move {
                for r in batch {
                    l.record(r).await?;
                }
                Ok::<_, tollgate_store::ledger::LedgerClosed>(())
            });
        }
        drop(ledger);
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let stats = writer.stats().clone();
    writer.join();
    let secs = started.elapsed().as_secs_f64();
    let written = stats.rows_written.load(Ordering::Relaxed);
    let commits = stats.commits.load(Ordering::Relaxed);
    let counted = store.ledger_count()?;
    if counted != rows as u64 || written != rows as u64 {
        bail!("pushed {rows} rows, writer wrote {written}, table holds {counted}");
    }
    Ok(serde_json::json!({
        "bench": format!(
            "ledger {} ({producers} producers, {} active tasks × {} calls)",
            format!("{mode:?}").to_lowercase(),
            tasks.active,
            tasks.calls
        ),
        "tasks": tasks.active,
        "calls_per_task": tasks.calls,
        "durability": format!("{mode:?}").to_lowercase(),
        "producers": producers,
        "rows": rows,
        "seconds": secs,
        "rows_per_s": (rows as f64 / secs).round() as u64,
        "commits": commits,
        "rows_per_commit": rows as f64 / commits.max(1) as f64,
    }))
}

fn naive(rows: usize, mode: Mode, tasks: Tasks, dir: Option<PathBuf>) -> Result<serde_json::Value> {
    let tmp = temp_dir(dir)?;
    let store = SqliteStore::open(tmp.path().join("ledger.db"))?;
    let mut conn = store.connect(match mode {
        Mode::Batched => Sync::Normal,
        Mode::Strict => Sync::Full,
    })?;
    let all: Vec<LedgerRow> = (0..rows).map(|i| row(i, tasks)).collect();
    let started = Instant::now();
    for r in &all {
        tollgate_store::ledger::insert_batch(&mut conn, std::iter::once(r))?;
    }
    let secs = started.elapsed().as_secs_f64();
    if store.ledger_count()? != rows as u64 {
        bail!("naive: row count mismatch");
    }
    Ok(serde_json::json!({
        "bench": format!(
            "naive: INSERT + COMMIT per row ({}, {} active tasks × {} calls)",
            format!("{mode:?}").to_lowercase(),
            tasks.active,
            tasks.calls
        ),
        "tasks": tasks.active,
        "calls_per_task": tasks.calls,
        "durability": format!("{mode:?}").to_lowercase(),
        "producers": 1,
        "rows": rows,
        "seconds": secs,
        "rows_per_s": (rows as f64 / secs).round() as u64,
        "commits": rows,
        "rows_per_commit": 1.0,
    }))
}

/// A fresh schema on the server at `url`, dropped by [`PgBench::finish`].
struct PgBench {
    store: PostgresStore,
    _dir: tempfile::TempDir,
}

async fn pg_open(url: &str, method: WriteMethod, writers: usize) -> Result<PgBench> {
    let dir = tempfile::tempdir()?;
    let mut settings = PostgresSettings::new(url, dir.path().join("ledger.spool"));
    settings.schema = Some(format!(
        "tg_bench_{}_{:08x}",
        std::process::id(),
        rand_u32()
    ));
    settings.write_method = method;
    settings.writers = writers.max(1);
    let store = PostgresStore::open(&settings).await?;
    Ok(PgBench { store, _dir: dir })
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

impl PgBench {
    async fn finish(self) -> Result<()> {
        self.store.drop_schema().await?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn pg_run(
    url: &str,
    rows: usize,
    producers: usize,
    mode: Mode,
    method: Method,
    tasks: Tasks,
    max_batch: usize,
    writers: usize,
) -> Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let method = match method {
        Method::Copy => WriteMethod::Copy,
        Method::Insert => WriteMethod::Insert,
    };
    let bench = rt.block_on(pg_open(url, method, writers))?;
    let store = Store::Postgres(bench.store.clone());
    let producers = producers.max(1);
    let mut batches: Vec<Vec<LedgerRow>> = (0..producers).map(|_| Vec::new()).collect();
    for i in 0..rows {
        batches[i % producers].push(row(i, tasks));
    }
    let cfg = LedgerConfig {
        durability: durability(mode),
        max_batch,
        ..LedgerConfig::default()
    };
    let started = Instant::now();
    let (ledger, writer) = store.start_ledger(&cfg)?;
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for batch in batches {
            let l = ledger.clone();
            tasks.spawn(async move {
                for r in batch {
                    l.record(r).await?;
                }
                Ok::<_, tollgate_store::ledger::LedgerClosed>(())
            });
        }
        drop(ledger);
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let stats = writer.stats().clone();
    writer.join();
    let secs = started.elapsed().as_secs_f64();
    let written = stats.rows_written.load(Ordering::Relaxed);
    let spooled = stats.rows_spooled.load(Ordering::Relaxed);
    let commits = stats.commits.load(Ordering::Relaxed);
    let counted = rt.block_on(store.ledger_count())?;
    rt.block_on(bench.finish())?;
    if counted != rows as u64 || written != rows as u64 || spooled != 0 {
        bail!(
            "pushed {rows} rows, writer wrote {written} (spooled {spooled}), table holds {counted}"
        );
    }
    Ok(serde_json::json!({
        "bench": format!(
            "postgres ledger {} via {} ({producers} producers, {} active tasks × {} calls, batches ≤ {max_batch}, {writers} writer connections)",
            format!("{mode:?}").to_lowercase(),
            method.as_str(),
            tasks.active,
            tasks.calls
        ),
        "method": method.as_str(),
        "durability": format!("{mode:?}").to_lowercase(),
        "producers": producers,
        "rows": rows,
        "seconds": secs,
        "rows_per_s": (rows as f64 / secs).round() as u64,
        "commits": commits,
        "rows_per_commit": rows as f64 / commits.max(1) as f64,
    }))
}

fn pg_naive(url: &str, rows: usize) -> Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bench = pg_open(url, WriteMethod::Insert, 1).await?;
        let store = Store::Postgres(bench.store.clone());
        let tasks = Tasks {
            active: 64,
            calls: 20,
        };
        let all: Vec<LedgerRow> = (0..rows).map(|i| row(i, tasks)).collect();
        let started = Instant::now();
        for r in all {
            store.insert_rows(vec![r]).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        let counted = store.ledger_count().await?;
        bench.finish().await?;
        if counted != rows as u64 {
            bail!("pg-naive: row count mismatch");
        }
        Ok(serde_json::json!({
            "bench": "postgres naive: one row per transaction",
            "rows": rows,
            "seconds": secs,
            "rows_per_s": (rows as f64 / secs).round() as u64,
            "commits": rows,
            "rows_per_commit": 1.0,
        }))
    })
}

const DAY_MS: i64 = 86_400_000;

/// One `generate_series` chunk of synthetic rows (and their request ids): 90 days
/// ending at `end_ms`, 4 models, 50 agents, 3 teams, 16 keys, tasks of 20 calls.
fn bulk_sql(n: i64, end_ms: i64) -> (String, String) {
    let span = 90 * DAY_MS;
    let ts = format!("({end_ms} - {span} + (g * {span}) / {n})");
    let ledger = format!(
        "INSERT INTO ledger (ts_ms, request_id, endpoint, key_id, \"user\", team, agent, task, tags,
            requested_model, deployment, upstream, upstream_model,
            input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
            output_tokens, reasoning_tokens, usage_source, cost_nanos, priced, price_hash,
            latency_us, ttft_us, status, error_code, stream, partial, cost_without_cache_nanos,
            replica_id, replica_seq)
         SELECT {ts}, 'gen_' || g, 'chat_completions', 'key_' || (g % 16),
            CASE WHEN g % 4 = 0 THEN 'user-' || (g % 97) END,
            (ARRAY['research', 'support', 'platform'])[g % 3 + 1], 'agent-' || (g % 50),
            'task-' || (g / 20), CASE WHEN g % 5 = 0 THEN '[\"eval\"]' END,
            m, m, 'openai', m, 93 + g % 900, 1024, 0, 0, 34 + g % 500, 12, 'reported',
            49875 + g % 100000, true, '9f3c2a7be1d04c58', 180 + g % 50, 170,
            CASE WHEN g % 101 = 0 THEN 500 ELSE 200 END, NULL, g % 3 = 0, false,
            126675 + g % 100000, 'bulk', g
         FROM generate_series($1::BIGINT, $2::BIGINT) g,
         LATERAL (SELECT (ARRAY['gpt-4o-mini', 'gpt-4o', 'claude-sonnet-4-5', 'nova-2-lite'])[g % 4 + 1] AS m) x"
    );
    let ids = format!(
        "INSERT INTO ledger_ids (request_id, ts_ms, replica_id, replica_seq)
         SELECT 'gen_' || g, {ts}, 'bulk', g FROM generate_series($1::BIGINT, $2::BIGINT) g"
    );
    (ledger, ids)
}

fn pg_report(url: &str, rows: i64, runs: usize) -> Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bench = pg_open(url, WriteMethod::Copy, 1).await?;
        let schema = bench.store.schema().unwrap_or("public").to_string();
        let end_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        bench
            .store
            .create_months_between(end_ms - 91 * DAY_MS, end_ms)
            .await?;
        let mut config: tokio_postgres::Config = url.parse()?;
        config.options(format!("-c search_path={schema}"));
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        // The bulk loader's connection driver, awaited below.
        #[allow(clippy::disallowed_methods)]
        let driver = tokio::task::spawn(conn);
        let (ledger_sql, ids_sql) = bulk_sql(rows, end_ms);
        let load = Instant::now();
        let chunk = 1_000_000i64;
        let mut lo = 0i64;
        while lo < rows {
            let hi = (lo + chunk).min(rows) - 1;
            client.execute(&ledger_sql, &[&lo, &hi]).await?;
            client.execute(&ids_sql, &[&lo, &hi]).await?;
            eprintln!(
                "loaded {} rows, {:.0} s",
                hi + 1,
                load.elapsed().as_secs_f64()
            );
            lo = hi + 1;
        }
        client
            .batch_execute("ANALYZE ledger; ANALYZE ledger_ids")
            .await?;
        let load_s = load.elapsed().as_secs_f64();
        let size: i64 = client
            .query_one(
                "SELECT SUM(pg_total_relation_size(c.oid))::BIGINT FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ledger'::regclass",
                &[],
            )
            .await?
            .get(0);
        drop(client);
        let _ = driver.await;

        let store = Store::Postgres(bench.store.clone());
        let since30 = end_ms - 30 * DAY_MS;
        let since90 = end_ms - 91 * DAY_MS;
        let mut results = Vec::new();
        for (name, since) in [("30 days", since30), ("90 days", since90)] {
            for q in [
                "total",
                "by agent",
                "by model",
                "by day (spend series by model)",
            ] {
                let mut secs = Vec::new();
                let mut check = 0u64;
                for _ in 0..runs.max(1) {
                    let t = Instant::now();
                    check = match q {
                        "total" => {
                            store
                                .usage_report(None, since, end_ms + 1)
                                .await?
                                .total
                                .requests
                        }
                        "by agent" => {
                            let r = store
                                .usage_report(Some(GroupBy::Agent), since, end_ms + 1)
                                .await?;
                            r.groups.iter().map(|g| g.requests).sum()
                        }
                        "by model" => {
                            let r = store
                                .usage_report(Some(GroupBy::Model), since, end_ms + 1)
                                .await?;
                            r.groups.iter().map(|g| g.requests).sum()
                        }
                        _ => store
                            .spend_series(GroupBy::Model, since, end_ms + 1, DAY_MS)
                            .await?
                            .iter()
                            .map(|p| p.requests)
                            .sum(),
                    };
                    secs.push(t.elapsed().as_secs_f64());
                }
                secs.sort_by(f64::total_cmp);
                results.push(serde_json::json!({
                    "window": name,
                    "query": q,
                    "rows_in_window": check,
                    "fastest_s": secs[0],
                    "median_s": secs[secs.len() / 2],
                }));
            }
        }
        bench.finish().await?;
        Ok(serde_json::json!({
            "bench": format!("postgres report queries over a {rows}-row ledger"),
            "rows": rows,
            "load_seconds": load_s,
            "ledger_bytes": size,
            "queries": results,
        }))
    })
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            rows,
            producers,
            durability,
            tasks,
            calls_per_task,
            dir,
            json,
        } => report(
            json,
            run(
                rows,
                producers,
                durability,
                Tasks {
                    active: tasks,
                    calls: calls_per_task,
                },
                dir,
            )?,
        ),
        Cmd::Naive {
            rows,
            durability,
            tasks,
            calls_per_task,
            dir,
            json,
        } => report(
            json,
            naive(
                rows,
                durability,
                Tasks {
                    active: tasks,
                    calls: calls_per_task,
                },
                dir,
            )?,
        ),
        Cmd::Count { db } => println!("{}", SqliteStore::open(db)?.ledger_count()?),
        Cmd::PgRun {
            url,
            rows,
            producers,
            durability,
            method,
            tasks,
            calls_per_task,
            max_batch,
            writers,
            json,
        } => report(
            json,
            pg_run(
                &url,
                rows,
                producers,
                durability,
                method,
                Tasks {
                    active: tasks,
                    calls: calls_per_task,
                },
                max_batch,
                writers,
            )?,
        ),
        Cmd::PgNaive { url, rows, json } => report(json, pg_naive(&url, rows)?),
        Cmd::PgReport {
            url,
            rows,
            runs,
            json,
        } => {
            let v = pg_report(&url, rows, runs)?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "{}: loaded in {:.0} s, {:.2} GB",
                    v["bench"].as_str().unwrap_or(""),
                    v["load_seconds"].as_f64().unwrap_or(0.0),
                    v["ledger_bytes"].as_f64().unwrap_or(0.0) / 1e9
                );
                for q in v["queries"].as_array().into_iter().flatten() {
                    println!(
                        "  {:8} {:32} {:>10} rows  fastest {:.3} s  median {:.3} s",
                        q["window"].as_str().unwrap_or(""),
                        q["query"].as_str().unwrap_or(""),
                        q["rows_in_window"],
                        q["fastest_s"].as_f64().unwrap_or(0.0),
                        q["median_s"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
    }
    Ok(())
}

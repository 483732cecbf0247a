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

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tollgate_domain::attribution::Attribution;
use tollgate_domain::ledger::{Endpoint, LedgerRow, Route};
use tollgate_domain::money::Money;
use tollgate_domain::usage::{Usage, UsageSource};
use tollgate_store::sqlite::Sync;
use tollgate_store::{Durability, LedgerConfig, SqliteStore};

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
    }
    Ok(())
}

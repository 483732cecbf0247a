//! The `tollgate` binary: one executable, many subcommands.
//!
//! # Layout
//! - `cli`: argument definitions.
//! - `serve`: the gateway (also what `demo` runs).
//! - `demo`: a simulated provider, a workload, a report.
//! - `report`: spend tables from the ledger; `views`: the ROI, tasks and savings views.
//! - `export`: the FOCUS cost-and-usage export.
//! - `reconcile`: the ledger against a provider's usage/cost export.
//! - `replay`: what-if replay of the ledger under another policy (table, JSON, CSV, SVG).
//! - `tasks`: task outcomes from the command line; tasks the runaway-agent guard halted.
//! - `keys`: virtual key management.
//! - `budgets`: budgets and spend per period.
//! - `router`: train, score with and evaluate the light/heavy router.
//! - `cache`: the semantic cache's similarity scores (`cache similarity`).
//! - `prune`: the gateway's pruning over a file of conversations (`tollgate prune`).

mod budgets;
mod cache;
mod cli;
mod demo;
mod export;
mod keys;
mod prune;
mod reconcile;
mod replay;
mod report;
mod router;
mod serve;
mod tasks;
mod views;

use anyhow::Result;
use clap::Parser;
use std::collections::HashMap;
use std::path::PathBuf;
use tollgate_server::config::RawConfig;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(args: cli::Cli) -> Result<std::process::ExitCode> {
    use cli::Command;
    match args.command {
        Command::Serve(a) => serve::serve(a).await,
        Command::Demo(a) => demo::demo(a).await,
        Command::Report(a) => report::report(a).await,
        Command::Export(a) => export::export(a).await,
        Command::Reconcile(a) => reconcile::reconcile(a),
        Command::Replay(a) => replay::replay(a).await,
        Command::Tasks(a) => tasks::tasks(a).await,
        Command::Keys(a) => keys::keys(a).await,
        Command::Budgets(a) => budgets::budgets(a).await,
        Command::ValidateConfig(a) => serve::validate_config(a),
        Command::Pricing(a) => serve::pricing(a),
        Command::Sim(a) => serve::sim(a).await,
        Command::Router(a) => router::router(a),
        Command::Cache(a) => cache::cache(a),
        Command::Prune(a) => prune::prune(a),
        Command::Migrate(a) => {
            let settings = store_settings(None, a.config, false)?;
            let version = tollgate_store::Store::migrate(&settings).await?;
            println!("store migrated: schema version {version}");
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The process environment as a map (config overrides and secrets read from it).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// The config file to use: the flag, else `$TOLLGATE_CONFIG`, else `./tollgate.toml` if it
/// exists, else none (built-in defaults).
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from("tollgate.toml");
            p.exists().then_some(p)
        })
}

/// The store the commands read and write: the SQLite file `--db` names, else the
/// config's `[store]`: PostgreSQL (shared by every replica, so any replica's commands see
/// every replica's traffic) or the `[ledger] path` file. `must_exist`: a SQLite file
/// that is not there is an error (commands that only read), not a new empty ledger.
pub async fn open_store(
    db: Option<PathBuf>,
    config: Option<PathBuf>,
    must_exist: bool,
) -> Result<tollgate_store::Store> {
    let settings = store_settings(db, config, must_exist)?;
    Ok(tollgate_store::Store::open(&settings).await?)
}

/// The store settings [`open_store`] opens.
pub fn store_settings(
    db: Option<PathBuf>,
    config: Option<PathBuf>,
    must_exist: bool,
) -> Result<tollgate_store::config::StoreSettings> {
    use tollgate_store::config::StoreSettings;
    let settings = match db {
        Some(path) => StoreSettings::Sqlite { path },
        None => {
            let env = env_map();
            let raw = RawConfig::load(config_path(config).as_deref(), &env)?;
            let ledger = PathBuf::from(raw.ledger.path.as_deref().unwrap_or("tollgate.db"));
            let mut errs = Vec::new();
            let s = raw.store.validate(&ledger, &env, &mut errs);
            if !errs.is_empty() {
                anyhow::bail!("{}", errs.join("\n"));
            }
            s
        }
    };
    if let StoreSettings::Sqlite { path } = &settings
        && must_exist
        && !path.exists()
    {
        anyhow::bail!("no ledger at {} (use --db or --config)", path.display());
    }
    Ok(settings)
}

/// Where a store lives, for messages.
pub fn store_name(store: &tollgate_store::Store) -> String {
    match store.as_sqlite() {
        Some(s) => s.path().display().to_string(),
        None => "the PostgreSQL store".into(),
    }
}

/// The ledger database path: `--db`, else the config's `[ledger] path` (no secrets
/// needed: commands that only read the database do not validate upstreams).
pub fn db_path(db: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(db) = db {
        return Ok(db);
    }
    let env = env_map();
    let raw = RawConfig::load(config_path(config).as_deref(), &env)?;
    Ok(PathBuf::from(
        raw.ledger.path.as_deref().unwrap_or("tollgate.db"),
    ))
}

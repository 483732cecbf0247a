use crate::cli::{ConfigArgs, PricingArgs, ServeArgs, SimArgs};
use crate::{config_path, env_map};
use anyhow::{Context, Result};
use std::process::ExitCode;
use tollgate_server::config::{Config, RawConfig};

/// Load and validate the config: file < environment < flags.
pub fn load_config(args: &ConfigArgs, listen: Option<&str>) -> Result<Config> {
    let env = env_map();
    let path = config_path(args.config.clone());
    let mut raw = RawConfig::load(path.as_deref(), &env)?;
    if let Some(l) = listen {
        raw.server.listen = Some(l.to_string());
    }
    Ok(raw.validate(&env)?)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: draining requests and the ledger");
}

pub async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let cfg = load_config(&args.config, args.listen.as_deref())?;
    let listen = cfg.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        deployments = cfg.deployments.len(),
        ledger = %cfg.ledger.path.display(),
        durability = ?cfg.ledger.durability,
        price_table = cfg.prices.hash(),
        "tollgate listening"
    );
    if cfg.server.master_key.is_none() {
        tracing::warn!(
            "no master key in ${}: the admin API is disabled",
            cfg.server.master_key_env
        );
    }
    tollgate_server::run(listener, cfg, shutdown_signal()).await?;
    tracing::info!("stopped; the ledger is flushed");
    Ok(ExitCode::SUCCESS)
}

pub fn validate_config(args: ConfigArgs) -> Result<ExitCode> {
    let env = env_map();
    let path = config_path(args.config.clone());
    let checked = RawConfig::load(path.as_deref(), &env).and_then(|raw| raw.validate(&env));
    let shown = path
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into());
    match checked {
        Ok(cfg) => {
            println!(
                "{shown}: ok — {} upstream(s), {} deployment(s), price table {} ({} models), ledger {} ({:?})",
                cfg.upstreams.len(),
                cfg.deployments.len(),
                cfg.prices.hash(),
                cfg.prices.len(),
                cfg.ledger.path.display(),
                cfg.ledger.durability,
            );
            for d in cfg.deployments.values() {
                println!(
                    "  {} → {} / {} (priced by {})",
                    d.name,
                    d.upstream.name,
                    d.model,
                    d.price_key.as_deref().unwrap_or("nothing: unpriced")
                );
            }
            for r in cfg.routes.values() {
                let tiers: Vec<&str> = r.tiers.iter().map(|d| d.name.as_str()).collect();
                let who = if r.teams.is_empty() && r.agents.is_empty() {
                    "everyone".to_string()
                } else {
                    format!("teams {:?}, agents {:?}", r.teams, r.agents)
                };
                println!(
                    "  route {}: {} ({}, thresholds {:?}, router {}{}{}; {who})",
                    r.name,
                    tiers.join(" → "),
                    r.mode.as_str(),
                    r.policy.thresholds(),
                    r.model_id,
                    if r.escalate { ", escalates" } else { "" },
                    if r.sticky { ", sticky" } else { "" },
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{shown}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn pricing(args: PricingArgs) -> Result<ExitCode> {
    let env = env_map();
    let raw = RawConfig::load(config_path(args.config.config.clone()).as_deref(), &env)?;
    let table = raw.price_table()?;
    println!(
        "price table {} — {} models from {}",
        table.hash(),
        table.len(),
        table.sources.join(", ")
    );
    let mut code = ExitCode::SUCCESS;
    for m in &args.models {
        let Some((id, price)) = table.resolve(m) else {
            println!("{m}: not in the price table");
            code = ExitCode::FAILURE;
            continue;
        };
        let Some(r) = price.rates(0, None) else {
            println!("{id}: listed but unpriced (no per-token input/output rate)");
            continue;
        };
        println!("{id}  (USD per million tokens)");
        println!(
            "  input {}  cached read {}  cache write 5m {}  cache write 1h {}  output {}  reasoning {}",
            r.input.usd_per_mtok(),
            r.cache_read.usd_per_mtok(),
            r.cache_write_5m.usd_per_mtok(),
            r.cache_write_1h.usd_per_mtok(),
            r.output.usd_per_mtok(),
            r.reasoning.usd_per_mtok()
        );
        for t in &price.standard.tiers {
            if let Some(tr) = price.rates(t.above_tokens + 1, None) {
                println!(
                    "  above {} prompt tokens: input {}  output {}  cached read {}",
                    t.above_tokens,
                    tr.input.usd_per_mtok(),
                    tr.output.usd_per_mtok(),
                    tr.cache_read.usd_per_mtok()
                );
            }
        }
        for (tier, _) in &price.service_tiers {
            if let Some(tr) = price.rates(0, Some(&format!("{tier:?}").to_lowercase())) {
                println!(
                    "  service tier {:?}: input {}  output {}",
                    tier,
                    tr.input.usd_per_mtok(),
                    tr.output.usd_per_mtok()
                );
            }
        }
    }
    Ok(code)
}

/// `tollgate sim`: the simulated provider alone, until SIGINT/SIGTERM.
pub async fn sim(args: SimArgs) -> Result<ExitCode> {
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let sim = tollgate_testkit::sim::spawn_on(
        listener,
        tollgate_testkit::sim::SimConfig {
            first_token_latency: std::time::Duration::from_millis(args.latency_ms),
            inter_token_latency: std::time::Duration::from_millis(args.token_ms),
        },
    )?;
    println!("{}", sim.base_url());
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    Ok(ExitCode::SUCCESS)
}

//! `tollgate tasks`: record a task's outcome from the command line (written straight to
//! the ledger database, `recorded_by: "cli"`), show a task (with what the runaway-agent
//! guard did to it), list halted tasks, release one.

use crate::cli::{TasksAction, TasksArgs};
use crate::{config_path, env_map};
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;
use std::process::ExitCode;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::{self, OutcomeInput};
use tollgate_server::clock::now_ms;
use tollgate_server::config::RawConfig;
use tollgate_server::config::outcomes::validate as validate_config;
use tollgate_server::views::stored_json;
use tollgate_server::views::task_json;
use tollgate_store::{OutcomeStore, ReportStore, Store, TaskStore};

pub async fn tasks(args: TasksArgs) -> Result<ExitCode> {
    let (db, config) = (args.db.clone(), args.config.config.clone());
    match args.action {
        TasksAction::Outcome {
            task,
            status,
            value_usd,
            minutes_saved,
            hourly_rate_usd,
            labels,
            json,
        } => {
            let store = crate::open_store(db, config, false).await?;
            let usd = |flag: &str, v: Option<String>| -> Result<Option<Money>> {
                v.map(|v| Money::parse_usd(&v).map_err(|e| anyhow!("--{flag}: {e}")))
                    .transpose()
            };
            let mut label_map = BTreeMap::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--label {l:?}: expected KEY=VALUE"))?;
                label_map.insert(k.to_string(), v.to_string());
            }
            let input = OutcomeInput {
                status,
                value_usd: usd("value-usd", value_usd)?,
                minutes_saved,
                hourly_rate: usd("hourly-rate-usd", hourly_rate_usd)?,
                labels: label_map,
            };
            // The default hourly rate of the task's agent or team, from [outcomes].
            let raw = RawConfig::load(
                config_path(args.config.config.clone()).as_deref(),
                &env_map(),
            )?;
            let mut errs = Vec::new();
            let settings = validate_config(&raw.outcomes, &mut errs);
            if !errs.is_empty() {
                bail!("invalid [outcomes] config: {}", errs.join("; "));
            }
            let party = store.task_parties(&task).await?.into_iter().next();
            let rate = settings.rate_for(
                party.as_ref().and_then(|p| p.agent.as_deref()),
                party.as_ref().and_then(|p| p.team.as_deref()),
            );
            let o = outcome::validate(&task, &input, rate)
                .map_err(|e| anyhow!("{}: {e}", e.field()))?;
            let r = store.record_outcome(&o, "cli", now_ms()).await?;
            if json {
                let mut v = stored_json(&r.current);
                v["changed"] = r.changed.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if r.changed {
                println!(
                    "task {}: {} (value {} USD), revision {}{}",
                    r.current.outcome.task,
                    r.current.outcome.status.as_str(),
                    r.current.value,
                    r.current.revision,
                    r.previous
                        .map(|p| format!(
                            "; replaces {} (value {} USD)",
                            p.outcome.status.as_str(),
                            p.value
                        ))
                        .unwrap_or_default()
                );
            } else {
                println!(
                    "task {}: unchanged ({} already recorded, revision {})",
                    r.current.outcome.task,
                    r.current.outcome.status.as_str(),
                    r.current.revision
                );
            }
        }
        TasksAction::Show { task, json } => {
            let store = crate::open_store(db, config, true).await?;
            let summary = store.task_summary(&task).await?;
            let current = store.task_outcome(&task).await?;
            let history = store.outcome_history(&task).await?;
            let record = store.task_record(&task).await?;
            let incidents = store.incidents(Some(&task), 20).await?;
            let alerts = store.alerts(Some(&task), 20).await?;
            if summary.is_none() && current.is_none() && record.is_none() {
                eprintln!("no task {task:?} in {}", crate::store_name(&store));
                return Ok(ExitCode::FAILURE);
            }
            if json {
                let v = serde_json::json!({
                    "task": task,
                    "summary": summary.as_ref().map(task_json),
                    "outcome": current.as_ref().map(stored_json),
                    "history": history.iter().map(stored_json).collect::<Vec<_>>(),
                    "guard": {"record": record, "incidents": incidents, "alerts": alerts},
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("task {task}");
            if let Some(s) = &summary {
                println!(
                    "  calls {} ({} errors), agents {}, models {}",
                    s.calls,
                    s.errors,
                    s.agents.join(", "),
                    s.models.join(", ")
                );
                println!(
                    "  tokens: input {}, cached {}, cache writes {}, output {} (reasoning {})",
                    s.input_tokens,
                    s.cached_tokens,
                    s.cache_write_tokens,
                    s.output_tokens,
                    s.reasoning_tokens
                );
                println!(
                    "  cost {} USD over {} ms, from {}",
                    s.cost,
                    s.duration_ms,
                    tollgate_domain::time::iso(s.first_ms)
                );
            }
            match &current {
                Some(o) => println!(
                    "  outcome: {} (value {} USD), revision {}",
                    o.outcome.status.as_str(),
                    o.value,
                    o.revision
                ),
                None => println!("  outcome: none recorded"),
            }
            for h in &history {
                println!(
                    "    rev {} at {} by {}: {} (value {} USD)",
                    h.revision,
                    tollgate_domain::time::iso(h.recorded_ms),
                    h.recorded_by,
                    h.outcome.status.as_str(),
                    h.value
                );
            }
            print_guard(&task, record.as_ref(), &incidents, &alerts)?;
        }
        TasksAction::List { since, json } => {
            let store = crate::open_store(db, config, true).await?;
            list(&store, &since, json).await?;
        }
        TasksAction::Release { task } => {
            let store = crate::open_store(db, config, false).await?;
            let in_store = store.release_task(&task, now_ms()).await?;
            let shared = release_shared(args.config.config.clone(), &task).await?;
            if shared == Some(true) {
                println!(
                    "released {task} on every replica sharing the Redis counters (they ask Redis on each call)"
                );
            } else if in_store {
                println!("released {task}; a running gateway lets it through within a few seconds");
            } else {
                eprintln!("{task} is not halted");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With `budgets.counters = "redis"`, release the task in Redis too, which every replica
/// consults on each call. `None` without Redis; `Some(was_halted)` with it.
async fn release_shared(config: Option<std::path::PathBuf>, task: &str) -> Result<Option<bool>> {
    use tollgate_server::config::limits::{self, CountersConfig};
    let env = env_map();
    let raw = RawConfig::load(config_path(config).as_deref(), &env)?;
    let mut errs = Vec::new();
    let l = limits::validate(
        &raw.budgets,
        &raw.rate_limits,
        &raw.guard,
        &raw.alerts,
        &env,
        &mut errs,
    );
    let CountersConfig::Redis { url, prefix } = &l.counters else {
        return Ok(None);
    };
    let redis = tollgate_store::counters::RedisCounters::connect(
        secrecy::ExposeSecret::expose_secret(url),
        prefix,
    )
    .await?;
    Ok(Some(redis.task_release(task).await?))
}

/// What the runaway-agent guard did to a task.
fn print_guard(
    task: &str,
    record: Option<&tollgate_store::tasks::TaskRecord>,
    incidents: &[tollgate_store::tasks::Incident],
    alerts: &[tollgate_store::tasks::AlertRecord],
) -> Result<()> {
    use tollgate_domain::time::iso;
    match record {
        Some(r) => println!(
            "  guard: {} ({}) since {}: {}{}",
            r.status,
            r.kind,
            iso(r.halted_ms),
            r.reason,
            if r.recorded_elsewhere {
                "\n  recorded by another replica sharing Redis (its incident and alert are in that replica's database)"
            } else {
                ""
            }
        ),
        None => println!("  guard: running (never halted)"),
    }
    for i in incidents {
        println!(
            "  incident #{} at {}{}: {} — {}",
            i.id,
            iso(i.ts_ms),
            if i.dry_run { " (dry run)" } else { "" },
            i.kind,
            i.reason
        );
        println!(
            "    evidence {}",
            serde_json::to_string_pretty(&i.evidence)?.replace('\n', "\n    ")
        );
    }
    for a in alerts {
        println!(
            "  alert #{} {} at {}: {} after {} attempt(s){}",
            a.id,
            a.kind,
            iso(a.ts_ms),
            a.status,
            a.attempts,
            a.last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    }
    if record.is_some_and(|r| r.is_halted()) {
        println!("  release with: tollgate tasks release {task}");
    }
    Ok(())
}

/// Halted and flagged tasks, then recent tasks' calls and spend.
async fn list(store: &Store, since: &str, json: bool) -> Result<()> {
    use tollgate_domain::time::{iso, parse_since};
    let since = parse_since(since, now_ms()).map_err(anyhow::Error::msg)?;
    let guarded = store.guarded_tasks(200).await?;
    let recent = store.task_usage(None, since, 200).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"guarded": guarded, "recent": recent})
            )?
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<18} {:<9} {:<12} {:<24} reason",
        "task", "agent", "status", "kind", "since"
    );
    for t in &guarded {
        println!(
            "{:<28} {:<18} {:<9} {:<12} {:<24} {}{}",
            t.task,
            t.agent.as_deref().unwrap_or("-"),
            t.status,
            t.kind,
            iso(t.halted_ms),
            t.reason,
            if t.recorded_elsewhere {
                " (recorded by another replica)"
            } else {
                ""
            }
        );
    }
    if guarded.is_empty() {
        println!("(no task was halted or flagged)");
    }
    println!();
    println!(
        "{:<28} {:<18} {:>7} {:>16} {:<24}",
        "recent task", "agent", "calls", "cost_usd", "last call"
    );
    for u in &recent {
        println!(
            "{:<28} {:<18} {:>7} {:>16} {:<24}",
            u.task,
            u.agent.as_deref().unwrap_or("-"),
            u.calls,
            u.cost.to_string(),
            iso(u.last_ms)
        );
    }
    Ok(())
}

use crate::cli::{TasksAction, TasksArgs};
use crate::db_path;
use anyhow::Result;
use serde_json::json;
use std::process::ExitCode;
use tollgate_server::admin::{iso, parse_since};
use tollgate_server::state::now_ms;
use tollgate_store::SqliteStore;

pub fn tasks(args: TasksArgs) -> Result<ExitCode> {
    let db = db_path(args.db.clone(), args.config.clone())?;
    let store = SqliteStore::open(&db)?;
    match &args.action {
        TasksAction::List { since } => {
            let since = parse_since(since, now_ms()).map_err(anyhow::Error::msg)?;
            let guarded = store.guarded_tasks(200)?;
            let recent = store.task_usage(None, since, 200)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"guarded": guarded, "recent": recent}))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<28} {:<18} {:<9} {:<12} {:<24} reason",
                "task", "agent", "status", "kind", "since"
            );
            for t in &guarded {
                println!(
                    "{:<28} {:<18} {:<9} {:<12} {:<24} {}",
                    t.task,
                    t.agent.as_deref().unwrap_or("-"),
                    t.status,
                    t.kind,
                    iso(t.halted_ms),
                    t.reason
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
        }
        TasksAction::Show { task } => {
            let record = store.task_record(task)?;
            let usage = store.task_usage(Some(task), i64::MIN, 1)?;
            let incidents = store.incidents(Some(task), 20)?;
            let alerts = store.alerts(Some(task), 20)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"task": task, "record": record, "usage": usage.first(),
                        "incidents": incidents, "alerts": alerts})
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!("task {task}");
            match &record {
                Some(r) => println!(
                    "  status   {} ({}) since {}: {}",
                    r.status,
                    r.kind,
                    iso(r.halted_ms),
                    r.reason
                ),
                None => println!("  status   running (the guard never acted on it)"),
            }
            if let Some(u) = usage.first() {
                println!(
                    "  usage    {} calls, ${}, agent {}, {} → {}",
                    u.calls,
                    u.cost,
                    u.agent.as_deref().unwrap_or("-"),
                    iso(u.first_ms),
                    iso(u.last_ms)
                );
            }
            for i in &incidents {
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
            for a in &alerts {
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
            if record.as_ref().is_some_and(|r| r.is_halted()) {
                println!("  release with: tollgate tasks release {task}");
            }
        }
        TasksAction::Release { task } => {
            if store.release_task(task, now_ms())? {
                println!("released {task}; a running gateway lets it through within a few seconds");
            } else {
                eprintln!("{task} is not halted");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

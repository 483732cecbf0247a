use crate::cli::{BudgetsAction, BudgetsArgs};
use crate::{config_path, env_map};
use anyhow::{Result, bail};
use serde_json::Value;
use std::process::ExitCode;
use tollgate_domain::budget::merge_rules;
use tollgate_domain::budget::{BudgetRule, Period, ScopeSpec};
use tollgate_server::clock::now_ms;
use tollgate_server::config::{RawConfig, limits};
use tollgate_server::views::budget_status;
use tollgate_store::BudgetStore;

/// The config file's budgets and time zone (upstream secrets are not needed for this).
fn config_budgets(args: &BudgetsArgs) -> Result<(Vec<BudgetRule>, jiff::tz::TimeZone)> {
    let env = env_map();
    let raw = RawConfig::load(config_path(args.config.clone()).as_deref(), &env)?;
    let mut errs = Vec::new();
    let l = limits::validate(
        &raw.budgets,
        &raw.rate_limits,
        &raw.guard,
        &raw.alerts,
        &env,
        &mut errs,
    );
    for e in errs
        .iter()
        .filter(|e| e.starts_with("budgets.limits") || e.starts_with("budgets.time_zone"))
    {
        eprintln!("config: {e}");
    }
    Ok((l.budgets, l.time_zone))
}

pub async fn budgets(args: BudgetsArgs) -> Result<ExitCode> {
    let store = crate::open_store(args.db.clone(), args.config.clone(), false).await?;
    let db = crate::store_name(&store);
    let (config_rules, tz) = config_budgets(&args)?;
    match &args.action {
        BudgetsAction::Set {
            scope,
            period,
            limit_usd,
            soft,
            alert_at,
        } => {
            let body = tollgate_server::views::BudgetBody {
                scope: scope.clone(),
                period: period.clone(),
                limit_usd: limits::UsdText::Text(limit_usd.clone()),
                hard: Some(!soft),
                alert_at: (!alert_at.is_empty()).then(|| alert_at.clone()),
            };
            let rule = body.rule().map_err(|e| anyhow::anyhow!("{e}"))?;
            store.upsert_budget(&rule, now_ms()).await?;
            println!(
                "budget set: {} per {} ${}{} (alerts at {:?}%) in {}",
                rule.scope,
                rule.period.as_str(),
                rule.limit,
                if rule.hard { "" } else { " (soft)" },
                rule.alert_at,
                db
            );
        }
        BudgetsAction::Delete { scope, period } => {
            let (Ok(s), Some(p)) = (ScopeSpec::parse(scope), Period::parse(period)) else {
                bail!("--scope {scope:?} --period {period:?} do not name a budget");
            };
            if store.delete_budget(&s, p).await? {
                println!("deleted the run-time budget on {s} per {}", p.as_str());
            } else {
                eprintln!(
                    "no run-time budget on {s} per {} (config budgets are edited in the config file)",
                    p.as_str()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        BudgetsAction::List => {
            let db_rules = store.list_budgets().await?;
            let rules = merge_rules(&config_rules, &db_rules);
            let mut all = Vec::new();
            for r in &rules {
                let source = if db_rules.contains(r) {
                    "runtime"
                } else {
                    "config"
                };
                all.push(budget_status(&store, r, source, now_ms(), &tz, 1).await?);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print_list(&all);
            }
        }
        BudgetsAction::Show { scope, periods } => {
            let spec = ScopeSpec::parse(scope).map_err(anyhow::Error::msg)?;
            let rules = merge_rules(&config_rules, &store.list_budgets().await?);
            let mine: Vec<&BudgetRule> = rules
                .iter()
                .filter(|r| {
                    r.scope == spec
                        || (r.scope.kind == spec.kind
                            && (r.scope.name.is_none() || spec.name.is_none()))
                })
                .collect();
            if mine.is_empty() {
                eprintln!("no budget covers {spec}");
                return Ok(ExitCode::FAILURE);
            }
            let mut all = Vec::new();
            for r in mine {
                let mut s = budget_status(&store, r, "", now_ms(), &tz, periods + 1).await?;
                // For `agent:*`, narrow the current entities to the one asked for.
                if let (Some(name), Some(cur)) = (&spec.name, s["current"].as_array_mut()) {
                    cur.retain(|c| {
                        c["scope"]
                            .as_str()
                            .is_some_and(|x| x.ends_with(&format!(":{name}")))
                    });
                }
                all.push(s);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for s in &all {
                    print_list(std::slice::from_ref(s));
                    println!("  past periods (all entities of the scope):");
                    for h in s["history"].as_array().into_iter().flatten() {
                        println!(
                            "    {:<12} ${}",
                            h["period"].as_str().unwrap_or(""),
                            h["spent_usd"].as_str().unwrap_or("")
                        );
                    }
                    println!();
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(all: &[Value]) {
    println!(
        "{:<24} {:<9} {:>16} {:<6} {:<22} {:<12} {:>16} {:>16} {:>7}",
        "budget",
        "period",
        "limit_usd",
        "kind",
        "scope",
        "current",
        "spent_usd",
        "remaining_usd",
        "used"
    );
    for b in all {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let kind = if b["hard"].as_bool().unwrap_or(true) {
            "hard"
        } else {
            "soft"
        };
        let cur = b["current"].as_array().cloned().unwrap_or_default();
        if cur.is_empty() {
            println!(
                "{:<24} {:<9} {:>16} {:<6} {:<22}",
                s(&b["scope"]),
                s(&b["period"]),
                s(&b["limit_usd"]),
                kind,
                "(nothing spent yet)"
            );
        }
        for c in cur {
            println!(
                "{:<24} {:<9} {:>16} {:<6} {:<22} {:<12} {:>16} {:>16} {:>6}%",
                s(&b["scope"]),
                s(&b["period"]),
                s(&b["limit_usd"]),
                kind,
                s(&c["scope"]),
                s(&c["period"]),
                s(&c["spent_usd"]),
                s(&c["remaining_usd"]),
                c["used_pct"].as_f64().unwrap_or(0.0)
            );
        }
    }
}

//! The admin API (master key): usage reports, keys, single ledger rows, budgets, the
//! guard's tasks and alerts, and what-if replay.

use super::Admin;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::views::{BudgetBody, budget_status, report_json};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_domain::budget::{Period, ScopeSpec};
use tollgate_domain::money::Money;
use tollgate_domain::report::GroupBy;
use tollgate_domain::time::parse_since;
use tollgate_store::{BudgetStore, KeyStore, LedgerStore, NewKey, ReportStore, TaskStore};

type ApiResult = Result<Response, ApiError>;

fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParam {
        param: param.into(),
        message: message.to_string(),
    }
}

/// A `group_by` parameter.
pub(super) fn parse_group_by(g: &str) -> Result<GroupBy, ApiError> {
    GroupBy::parse(g).ok_or_else(|| {
        bad(
            "group_by",
            format!(
                "{g:?} is not one of {}",
                GroupBy::ALL.map(GroupBy::as_str).join(", ")
            ),
        )
    })
}

/// A window bound (`since`, `until`): a duration back from now, an RFC 3339 time or
/// Unix milliseconds; `default` when absent.
pub(super) fn window_bound(
    name: &str,
    v: Option<&str>,
    default: i64,
    now: i64,
) -> Result<i64, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => parse_since(s, now).map_err(|m| bad(name, m)),
    }
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /admin/usage?group_by=agent&since=24h`
pub async fn usage(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<UsageQuery>,
) -> ApiResult {
    let now = now_ms();
    let group_by = q.group_by.as_deref().map(parse_group_by).transpose()?;
    let since = window_bound("since", q.since.as_deref(), now - 86_400_000, now)?;
    let until = window_bound("until", q.until.as_deref(), now + 1, now)?;
    let r = gw.store.usage_report(group_by, since, until).await?;
    Ok(Json(report_json(&r)).into_response())
}

/// `POST /admin/keys` with `{"team","agent","user","name","models"}`: the secret is in
/// the answer, once.
pub async fn create_key(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let new: NewKey = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
    let (key, secret) = gw
        .store
        .create_key(&new, now_ms(), gw.sealer.as_deref())
        .await?;
    gw.keys.insert(key.clone());
    let mut v = serde_json::to_value(&key).unwrap_or_default();
    // For AWS SDK clients (Bedrock endpoints, SigV4): the same pair.
    v["aws_access_key_id"] = Value::String(key.id.clone());
    v["aws_secret_access_key"] = Value::String(secret.clone());
    v["key"] = Value::String(secret);
    Ok((http::StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /admin/keys`
pub async fn list_keys(_: Admin, State(gw): State<Arc<Gateway>>) -> ApiResult {
    let keys = gw.store.list_keys().await?;
    Ok(Json(json!({"data": keys})).into_response())
}

/// `DELETE /admin/keys/{id}`
pub async fn revoke_key(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> ApiResult {
    if !gw.store.revoke_key(&id, now_ms()).await? {
        return Err(ApiError::NotFound(format!("no active key {id}")));
    }
    gw.keys.remove(&id);
    Ok(Json(json!({"id": id, "revoked": true})).into_response())
}

/// `GET /admin/requests/{request_id}`: one ledger row.
pub async fn request_row(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> ApiResult {
    let row = gw
        .store
        .ledger_row(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no ledger row for {id}")))?;
    let mut v = serde_json::to_value(&row).unwrap_or_default();
    v["cost_usd"] = Value::String(row.cost.to_string());
    Ok(Json(v).into_response())
}

// ---------------------------------------------------------------------------------------
// Budgets and tasks.

/// `GET /admin/budgets`: every budget in force, spend and what is left per entity in the
/// current period (live from the counters: settled spend and reservations in flight).
pub async fn list_budgets(_: Admin, State(gw): State<Arc<Gateway>>) -> ApiResult {
    let rules = gw.limits.rules();
    let cfg = gw.config.load_full();
    let tz = &cfg.limits.time_zone;
    let db = gw.store.list_budgets().await?;
    let now = now_ms();
    let mut out = Vec::with_capacity(rules.len());
    for r in rules.iter() {
        let source = if db
            .iter()
            .any(|d| d.scope == r.scope && d.period == r.period)
        {
            "runtime"
        } else if cfg.limits.budgets.contains(r) {
            "config"
        } else {
            "runtime"
        };
        out.push(budget_status(&gw.store, r, source, now, tz, 3).await?);
    }
    // Live figures from the counters.
    let keys: Vec<String> = out
        .iter()
        .flat_map(|b| b["current"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["key"].as_str().map(str::to_string))
        .collect();
    if let Ok(acc) = gw.limits.counters.accounts(&keys).await {
        let mut it = acc.into_iter();
        for (b, rule) in out.iter_mut().zip(rules.iter()) {
            if let Some(cur) = b["current"].as_array_mut() {
                for c in cur {
                    if let Some(a) = it.next() {
                        c["live"] = json!({
                            "spent_usd": a.spent.to_string(),
                            "reserved_usd": a.reserved.to_string(),
                            "remaining_usd": a.remaining(rule.limit).to_string(),
                        });
                    }
                }
            }
        }
    }
    let s = &gw.limits.stats;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(Json(json!({
        "counters": gw.limits.counters.name(),
        "time_zone": cfg.limits.time_zone.iana_name().unwrap_or("UTC"),
        "budgets": out,
        "stats": {
            "reserved": ld(&s.reserved),
            "settled": ld(&s.settled),
            "refused_budget": ld(&s.refused_budget),
            "refused_rate": ld(&s.refused_rate),
            "refused_halted": ld(&s.refused_halted),
            "clamped": ld(&s.clamped),
            "overages": ld(&s.overages),
            "overage_usd": Money::from_nanos(s.overage_nanos.load(Ordering::Relaxed)).to_string(),
            "settle_errors": ld(&s.settle_errors),
        },
    }))
    .into_response())
}

/// `PUT /admin/budgets` `{"scope","period","limit_usd","hard","alert_at"}`: create or
/// replace a run-time budget. It counts what the scope already spent this period.
pub async fn set_budget(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    body: axum::body::Bytes,
) -> ApiResult {
    let rule = serde_json::from_slice::<BudgetBody>(&body)
        .map_err(|e| bad("body", e))?
        .rule()?;
    gw.store.upsert_budget(&rule, now_ms()).await?;
    gw.refresh_limits().await?;
    Ok(Json(
        json!({"scope": rule.scope.to_string(), "period": rule.period.as_str(),
        "limit_usd": rule.limit.to_string(), "hard": rule.hard, "alert_at": rule.alert_at}),
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct BudgetQuery {
    scope: String,
    period: String,
}

/// `DELETE /admin/budgets?scope=team:x&period=day`: remove a run-time budget.
pub async fn delete_budget(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<BudgetQuery>,
) -> ApiResult {
    let (Ok(scope), Some(period)) = (ScopeSpec::parse(&q.scope), Period::parse(&q.period)) else {
        return Err(bad("scope", "scope and period must name a budget"));
    };
    if !gw.store.delete_budget(&scope, period).await? {
        return Err(ApiError::NotFound(format!(
            "no run-time budget on {} per {}",
            q.scope, q.period
        )));
    }
    let _ = gw.refresh_limits().await;
    Ok(Json(json!({"deleted": true})).into_response())
}

/// `GET /admin/guard`: tasks the guard acted on, and recent tasks' calls and spend.
pub async fn list_tasks(_: Admin, State(gw): State<Arc<Gateway>>) -> ApiResult {
    let since = now_ms() - 86_400_000;
    let guarded = gw.store.guarded_tasks(200).await?;
    let usage = gw.store.task_usage(None, since, 200).await?;
    Ok(Json(json!({
        "guarded": guarded,
        "recent": usage,
        "watching": gw.limits.guard.len(),
        "halted": gw.limits.guard.halted_count(),
    }))
    .into_response())
}

/// `GET /admin/guard/{task}`: its status, incidents with evidence, alerts, usage.
pub async fn show_task(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Path(task): Path<String>,
) -> ApiResult {
    let record = gw.store.task_record(&task).await?;
    let incidents = gw.store.incidents(Some(&task), 50).await?;
    let alerts = gw.store.alerts(Some(&task), 50).await?;
    let usage = gw.store.task_usage(Some(&task), i64::MIN, 1).await?;
    Ok(Json(json!({
        "task": task,
        "record": record,
        "usage": usage.first(),
        "incidents": incidents,
        "alerts": alerts,
    }))
    .into_response())
}

/// `POST /admin/tasks/{task}/release`: let a halted task run again.
pub async fn release_task(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Path(task): Path<String>,
) -> ApiResult {
    let mut released = gw.store.release_task(&task, now_ms()).await?;
    if let tollgate_store::counters::Counters::Redis(r) = &gw.limits.counters {
        // Every replica: they ask Redis on each call.
        released |= r
            .task_release(&task)
            .await
            .map_err(|e| ApiError::CountersUnavailable(e.0))?;
    }
    gw.limits.guard.release(&task);
    Ok(Json(json!({"task": task, "released": released})).into_response())
}

/// `GET /admin/alerts`: recent alerts and their delivery.
pub async fn list_alerts(_: Admin, State(gw): State<Arc<Gateway>>) -> ApiResult {
    let a = gw.store.alerts(None, 200).await?;
    Ok(Json(json!({"data": a})).into_response())
}

// ---------------------------------------------------------------------------------------
// What-if replay.

#[derive(Debug, Deserialize)]
pub struct ReplayQuery {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `POST /admin/replay?group_by=agent&since=30d` with a replay policy (TOML, the format
/// of `tollgate replay --policy`) as the body: the ledger re-priced under it, as JSON
/// (the shape of `tollgate replay --format json`). Every policy problem is in the
/// error's message.
pub async fn replay(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<ReplayQuery>,
    body: String,
) -> ApiResult {
    use crate::replay::{parse_policy, prepare, run, targets_from_config};
    let now = now_ms();
    let group_by = match q.group_by.as_deref().map(parse_group_by).transpose()? {
        g @ (None | Some(GroupBy::Agent | GroupBy::Model | GroupBy::Route | GroupBy::Team)) => g,
        Some(_) => return Err(bad("group_by", "one of agent, model, route, team")),
    };
    let since = window_bound("since", q.since.as_deref(), now - 30 * 86_400_000, now)?;
    let until = window_bound("until", q.until.as_deref(), now + 1, now)?;
    let cfg = gw.config.load_full();
    let (targets, routes) = targets_from_config(&cfg);
    let prepared = parse_policy(&body)
        .and_then(|p| prepare(&p, &targets, &routes, &cfg.prices))
        .map_err(|errs| bad("policy", errs.join("; ")))?;
    let out = run(&gw.store, prepared, group_by, since, until, |_, _| {}).await?;
    Ok(Json(crate::views::replay_json(&out)).into_response())
}

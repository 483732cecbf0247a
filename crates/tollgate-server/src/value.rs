//! Value per dollar over HTTP (master key): ROI, tasks, savings, and the dashboard's
//! data. The JSON shapes here are shared with `tollgate report --format json`.

use crate::admin::{iso, parse_since};
use crate::error::ApiError;
use crate::state::{Gateway, now_ms};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_domain::money::Money;
use tollgate_domain::report::GroupBy;
use tollgate_domain::value::{Ratio, RoiReport, Savings, SavingsReport, TaskStats, TaskSummary};
use tollgate_store::StoreError;

/// Run a store call on the blocking pool.
pub(crate) async fn store_call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::Internal(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

fn money_opt(m: Option<Money>) -> Value {
    m.map_or(Value::Null, |m| Value::String(m.to_string()))
}

fn ratio_num(r: Option<Ratio>) -> Value {
    r.and_then(|r| serde_json::Number::from_f64(r.as_f64()))
        .map_or(Value::Null, Value::Number)
}

fn pct(r: Option<Ratio>) -> Value {
    r.map_or(Value::Null, |r| Value::String(r.percent(1)))
}

/// One group's (or the total's) task economics.
pub fn stats_json(group: Option<&str>, s: &TaskStats) -> Value {
    json!({
        "group": group,
        "tasks": s.tasks,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "abandoned": s.abandoned,
        "open": s.open,
        "calls": s.calls,
        "success_rate": ratio_num(s.success_rate()),
        "success_rate_pct": pct(s.success_rate()),
        "cost_usd": s.cost.to_string(),
        "cost_nanos": s.cost.nanos(),
        "value_usd": s.value.to_string(),
        "value_nanos": s.value.nanos(),
        "cost_per_task_usd": money_opt(s.cost_per_task()),
        "cost_per_successful_task_usd": money_opt(s.cost_per_successful_task()),
        "roi": ratio_num(s.roi()),
        "roi_pct": pct(s.roi()),
        "successful_tasks_per_usd": ratio_num(s.successes_per_dollar()),
        "value_per_usd": ratio_num(s.value_per_dollar()),
    })
}

pub fn roi_json(r: &RoiReport) -> Value {
    json!({
        "view": "roi",
        "group_by": r.group_by.map(GroupBy::as_str),
        "since": iso(r.since_ms),
        "until": iso(r.until_ms),
        "groups": r.groups.iter().map(|(g, s)| stats_json(g.as_deref(), s)).collect::<Vec<_>>(),
        "total": stats_json(None, &r.total),
        "untasked": {"calls": r.untasked_calls, "cost_usd": r.untasked_cost.to_string()},
    })
}

pub fn task_json(t: &TaskSummary) -> Value {
    json!({
        "task": t.task,
        "agents": t.agents,
        "teams": t.teams,
        "models": t.models,
        "calls": t.calls,
        "errors": t.errors,
        "input_tokens": t.input_tokens,
        "cached_tokens": t.cached_tokens,
        "cache_write_tokens": t.cache_write_tokens,
        "output_tokens": t.output_tokens,
        "reasoning_tokens": t.reasoning_tokens,
        "cost_usd": t.cost.to_string(),
        "cost_nanos": t.cost.nanos(),
        "started": iso(t.first_ms),
        "duration_ms": t.duration_ms,
        "status": t.status.map(|s| s.as_str()),
        "value_usd": money_opt(t.value),
    })
}

pub fn tasks_json(tasks: &[TaskSummary], since_ms: i64, until_ms: i64) -> Value {
    json!({
        "view": "tasks",
        "since": iso(since_ms),
        "until": iso(until_ms),
        "tasks": tasks.iter().map(task_json).collect::<Vec<_>>(),
    })
}

fn savings_line(s: &Savings) -> Value {
    json!({
        "mechanism": s.mechanism.as_str(),
        "description": s.mechanism.describe(),
        "requests": s.requests,
        "actual_usd": s.actual.to_string(),
        "without_usd": s.baseline.to_string(),
        "saved_usd": s.saved().to_string(),
        "saved_nanos": s.saved().nanos(),
        "saved_pct": pct(s.saved_share()),
        "realised": s.mechanism.realised(),
    })
}

pub fn savings_json(r: &SavingsReport) -> Value {
    json!({
        "view": "savings",
        "group_by": r.group_by.map(GroupBy::as_str),
        "since": iso(r.since_ms),
        "until": iso(r.until_ms),
        "requests": r.requests,
        "cost_usd": r.cost.to_string(),
        "mechanisms": r.total.iter().map(savings_line).collect::<Vec<_>>(),
        "groups": r.groups.iter().map(|(g, lines)| json!({
            "group": g,
            "mechanisms": lines.iter().map(savings_line).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Deserialize)]
pub struct ViewQuery {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
    bucket: Option<String>,
}

struct Window {
    since: i64,
    until: i64,
}

fn window(q: &ViewQuery, default_since: &str) -> Result<Window, ApiError> {
    let now = now_ms();
    let parse = |name: &str, v: &str| {
        parse_since(v, now).map_err(|m| ApiError::InvalidParam {
            param: name.to_string(),
            message: m,
        })
    };
    Ok(Window {
        since: parse("since", q.since.as_deref().unwrap_or(default_since))?,
        until: match q.until.as_deref() {
            Some(u) => parse("until", u)?,
            None => now + 1,
        },
    })
}

fn group_by(q: &ViewQuery, default: GroupBy) -> Result<GroupBy, ApiError> {
    match q.group_by.as_deref() {
        None => Ok(default),
        Some(g) => GroupBy::parse(g).ok_or_else(|| ApiError::InvalidParam {
            param: "group_by".into(),
            message: format!(
                "{g:?} is not one of {}",
                GroupBy::ALL.map(GroupBy::as_str).join(", ")
            ),
        }),
    }
}

fn respond(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/roi?group_by=agent&since=7d`
pub async fn roi(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<ViewQuery>,
) -> Response {
    respond(
        async {
            gw.master.check(&headers)?;
            let w = window(&q, "24h")?;
            let g = group_by(&q, GroupBy::Agent)?;
            let store = gw.store.clone();
            let r = store_call(move || store.roi_report(g, w.since, w.until)).await?;
            Ok::<_, ApiError>(roi_json(&r))
        }
        .await,
    )
}

/// `GET /admin/tasks?since=24h&limit=50`
pub async fn tasks(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<ViewQuery>,
) -> Response {
    respond(
        async {
            gw.master.check(&headers)?;
            let w = window(&q, "24h")?;
            let limit = q.limit.unwrap_or(100).min(10_000);
            let store = gw.store.clone();
            let t = store_call(move || store.task_summaries(w.since, w.until, limit)).await?;
            Ok::<_, ApiError>(tasks_json(&t, w.since, w.until))
        }
        .await,
    )
}

/// `GET /admin/tasks/{task}`: the task's summary (all time), outcome and its history.
pub async fn task(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> Response {
    respond(
        async {
            gw.master.check(&headers)?;
            let store = gw.store.clone();
            let t = task.clone();
            let (summary, outcome, history) = store_call(move || {
                Ok((
                    store.task_summary(&t)?,
                    store.task_outcome(&t)?,
                    store.outcome_history(&t)?,
                ))
            })
            .await?;
            if summary.is_none() && outcome.is_none() {
                return Err(ApiError::NotFound(format!("no task {task:?}")));
            }
            Ok(json!({
                "task": task,
                "summary": summary.as_ref().map(task_json),
                "outcome": outcome.as_ref().map(crate::outcomes::stored_json),
                "history": history.iter().map(crate::outcomes::stored_json).collect::<Vec<_>>(),
            }))
        }
        .await,
    )
}

/// `GET /admin/savings?group_by=model&since=7d`
pub async fn savings(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<ViewQuery>,
) -> Response {
    respond(
        async {
            gw.master.check(&headers)?;
            let w = window(&q, "24h")?;
            let g = match q.group_by {
                Some(_) => Some(group_by(&q, GroupBy::Agent)?),
                None => None,
            };
            let store = gw.store.clone();
            let r = store_call(move || store.savings_report(g, w.since, w.until)).await?;
            Ok::<_, ApiError>(savings_json(&r))
        }
        .await,
    )
}

/// The shortest time span the spend chart shows.
const MIN_CHART_SPAN_MS: i64 = 300_000;

/// Most series a spend chart stacks; the rest are summed as `other`.
const MAX_SERIES: usize = 8;

/// Bucket width for a window: about 60 points, in round units.
fn bucket_for(span_ms: i64) -> i64 {
    const STEPS: [i64; 10] = [
        10_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000, 10_800_000, 21_600_000,
        86_400_000,
    ];
    STEPS
        .into_iter()
        .find(|s| span_ms / s <= 60)
        .unwrap_or(86_400_000)
}

/// `GET /admin/dashboard?since=1h&group_by=agent`: every dashboard panel in one answer.
pub async fn dashboard(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<ViewQuery>,
) -> Response {
    respond(
        async {
            gw.master.check(&headers)?;
            let w = window(&q, "24h")?;
            let g = group_by(&q, GroupBy::Agent)?;
            let explicit_bucket = match q.bucket.as_deref() {
                Some(b) => Some(
                    crate::admin::parse_duration_ms(b)
                        .filter(|b| *b > 0)
                        .ok_or_else(|| ApiError::InvalidParam {
                            param: "bucket".into(),
                            message: format!("{b:?} is not a duration (10s, 5m, 1h)"),
                        })?,
                ),
                None => None,
            };
            let store = gw.store.clone();
            let rules = gw.limits.rules();
            let tz = gw.config.load().limits.time_zone.clone();
            let data = store_call(move || {
                // The chart starts where the data does (at least 5 minutes back), so a
                // young ledger is not a spike at the edge of an empty week.
                let chart_since = match store.ledger_span(w.since, w.until)? {
                    Some((first, _)) => {
                        let pad = ((w.until - first) / 10).max(10_000);
                        (first - pad).min(w.until - MIN_CHART_SPAN_MS).max(w.since)
                    }
                    None => w.since,
                };
                let bucket = explicit_bucket.unwrap_or_else(|| bucket_for(w.until - chart_since));
                Ok((
                    store.usage_report(None, w.since, w.until)?,
                    (chart_since, bucket, store.spend_series(g, chart_since, w.until, bucket)?),
                    store.roi_report(GroupBy::Agent, w.since, w.until)?,
                    store.savings_report(None, w.since, w.until)?,
                    store.task_summaries(w.since, w.until, 10)?,
                    Some(budget_rows(&store, &rules, &tz)?),
                    Some(
                        store
                            .guarded_tasks(50)?
                            .into_iter()
                            .map(|t| {
                                let mut m = serde_json::Map::new();
                                m.insert("task".into(), Value::from(t.task));
                                m.insert("agent".into(), Value::from(t.agent));
                                m.insert("status".into(), Value::from(t.status));
                                m.insert("kind".into(), Value::from(t.kind));
                                m.insert("reason".into(), Value::from(t.reason));
                                m.insert("at".into(), Value::from(iso(t.halted_ms)));
                                m.insert("released_at".into(), Value::from(t.released_ms.map(iso)));
                                m.insert("recorded_elsewhere".into(), Value::from(t.recorded_elsewhere));
                                m
                            })
                            .collect(),
                    ),
                    Some(
                        store
                            .alerts(None, 50)?
                            .into_iter()
                            .map(|a| {
                                let mut m = serde_json::Map::new();
                                m.insert("at".into(), Value::from(iso(a.ts_ms)));
                                m.insert("kind".into(), Value::from(a.kind));
                                m.insert("text".into(), Value::from(a.text));
                                m.insert("delivery".into(), Value::from(format!("{} ({} attempt(s))", a.status, a.attempts)));
                                m
                            })
                            .collect(),
                    ),
                ))
            })
            .await?;
            let (usage, (chart_since, bucket, series), roi, savings, top, budgets, halted, alerts) =
                data;
            Ok::<_, ApiError>(json!({
                "since": iso(w.since),
                "until": iso(w.until),
                "now": iso(now_ms()),
                "totals": {
                    "requests": usage.total.requests,
                    "errors": usage.total.errors,
                    "cost_usd": usage.total.cost.to_string(),
                    "tasks": roi.total.tasks,
                    "succeeded": roi.total.succeeded,
                    "value_usd": roi.total.value.to_string(),
                    "roi_pct": pct(roi.total.roi()),
                    "cost_per_successful_task_usd": money_opt(roi.total.cost_per_successful_task()),
                    "saved_usd": savings.total.iter().filter(|s| s.mechanism.realised()).map(|s| s.saved()).sum::<Money>().to_string(),
                },
                "spend": spend_json(g, bucket, chart_since, w.until, &series),
                "roi": roi_json(&roi),
                "savings": savings_json(&savings),
                "top_tasks": top.iter().map(task_json).collect::<Vec<_>>(),
                "budgets": optional_panel(budgets, "budgets arrive with budget enforcement (not configured in this build)"),
                "halted_tasks": optional_panel(halted, "the runaway-task guard is not part of this build"),
                "alerts": optional_panel(alerts, "alerts arrive with budgets and the task guard (not part of this build)"),
            }))
        }
        .await,
    )
}

/// The budgets panel: each budget in force, per entity, this period's spend against its
/// limit (from the ledger).
fn budget_rows(
    store: &tollgate_store::SqliteStore,
    rules: &[tollgate_domain::budget::BudgetRule],
    tz: &jiff::tz::TimeZone,
) -> Result<Vec<serde_json::Map<String, Value>>, tollgate_store::StoreError> {
    let mut out = Vec::new();
    for r in rules {
        let st = crate::admin::budget_status(store, r, "", now_ms(), tz, 1)?;
        for c in st["current"].as_array().into_iter().flatten() {
            let mut m = serde_json::Map::new();
            m.insert("scope".into(), c["scope"].clone());
            m.insert(
                "period".into(),
                Value::from(format!(
                    "{} {}",
                    r.period.as_str(),
                    c["period"].as_str().unwrap_or("")
                )),
            );
            m.insert("limit_usd".into(), Value::from(r.limit.to_string()));
            m.insert("spent_usd".into(), c["spent_usd"].clone());
            m.insert("remaining_usd".into(), c["remaining_usd"].clone());
            m.insert("hard".into(), Value::from(r.hard));
            m.insert(
                "alert_at_pct".into(),
                Value::from(r.alert_at.iter().map(|p| u64::from(*p)).collect::<Vec<_>>()),
            );
            out.push(m);
        }
    }
    Ok(out)
}

fn optional_panel(rows: Option<Vec<serde_json::Map<String, Value>>>, missing: &str) -> Value {
    match rows {
        Some(rows) => json!({"available": true, "rows": rows}),
        None => json!({"available": false, "rows": [], "note": missing}),
    }
}

/// Spend per bucket, one series per group (the top [`MAX_SERIES`] by cost, then `other`),
/// every bucket present (zeros included) so charts stack cleanly.
fn spend_json(
    g: GroupBy,
    bucket: i64,
    since: i64,
    until: i64,
    points: &[tollgate_store::value::SpendPoint],
) -> Value {
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for p in points {
        *totals
            .entry(p.group.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += p.cost.nanos();
    }
    let mut ranked: Vec<(String, i64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let keep: Vec<String> = ranked
        .iter()
        .take(MAX_SERIES)
        .map(|(n, _)| n.clone())
        .collect();
    let has_other = ranked.len() > MAX_SERIES;
    let mut names = keep.clone();
    if has_other {
        names.push("other".into());
    }
    let first = since.div_euclid(bucket) * bucket;
    let n = ((until - first) / bucket + 1).clamp(1, 2000) as usize;
    let times: Vec<i64> = (0..n).map(|i| first + i as i64 * bucket).collect();
    let mut values = vec![vec![0i64; n]; names.len()];
    for p in points {
        let name = p.group.clone().unwrap_or_else(|| "(none)".into());
        let idx = match names.iter().position(|x| *x == name) {
            Some(i) => i,
            None if has_other => names.len() - 1,
            None => continue,
        };
        let t = ((p.bucket_ms - first) / bucket) as usize;
        if t < n {
            values[idx][t] += p.cost.nanos();
        }
    }
    json!({
        "group_by": g.as_str(),
        "bucket_ms": bucket,
        "times_ms": times,
        "series": names.iter().zip(values).map(|(name, v)| json!({
            "name": name,
            "total_usd": Money::from_nanos(v.iter().sum()).to_string(),
            "usd": v.iter().map(|n| Money::from_nanos(*n).as_usd_f64()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_round_and_few() {
        assert_eq!(bucket_for(3_600_000), 60_000);
        assert_eq!(bucket_for(86_400_000), 1_800_000);
        assert_eq!(bucket_for(600_000), 10_000);
        assert!(bucket_for(i64::MAX / 2) >= 86_400_000);
    }
}

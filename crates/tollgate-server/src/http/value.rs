//! Value per dollar over HTTP (master key): ROI, tasks, savings, and the dashboard's
//! data, in the shapes of [`crate::views`] (which `tollgate report --format json`
//! shares).

use super::Admin;
use super::admin::{parse_group_by, window_bound};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::views::{self, roi_json, savings_json, stored_json, task_json, tasks_json};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tollgate_domain::report::GroupBy;
use tollgate_domain::time::{parse_duration_ms, parse_since};
use tollgate_store::{OutcomeStore, ReportStore};

type ApiResult = Result<Json<Value>, ApiError>;

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
    let default = parse_since(default_since, now).unwrap_or(now);
    Ok(Window {
        since: window_bound("since", q.since.as_deref(), default, now)?,
        until: window_bound("until", q.until.as_deref(), now + 1, now)?,
    })
}

fn group_by(q: &ViewQuery, default: GroupBy) -> Result<GroupBy, ApiError> {
    q.group_by.as_deref().map_or(Ok(default), parse_group_by)
}

/// `GET /admin/roi?group_by=agent&since=7d`
pub async fn roi(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<ViewQuery>,
) -> ApiResult {
    let w = window(&q, "24h")?;
    let g = group_by(&q, GroupBy::Agent)?;
    let r = gw.store.roi_report(g, w.since, w.until).await?;
    Ok(Json(roi_json(&r)))
}

/// `GET /admin/tasks?since=24h&limit=50`
pub async fn tasks(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<ViewQuery>,
) -> ApiResult {
    let w = window(&q, "24h")?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let t = gw.store.task_summaries(w.since, w.until, limit).await?;
    Ok(Json(tasks_json(&t, w.since, w.until)))
}

/// `GET /admin/tasks/{task}`: the task's summary (all time), outcome and its history.
pub async fn task(_: Admin, State(gw): State<Arc<Gateway>>, Path(task): Path<String>) -> ApiResult {
    let summary = gw.store.task_summary(&task).await?;
    let outcome = gw.store.task_outcome(&task).await?;
    let history = gw.store.outcome_history(&task).await?;
    if summary.is_none() && outcome.is_none() {
        return Err(ApiError::NotFound(format!("no task {task:?}")));
    }
    Ok(Json(json!({
        "task": task,
        "summary": summary.as_ref().map(task_json),
        "outcome": outcome.as_ref().map(stored_json),
        "history": history.iter().map(stored_json).collect::<Vec<_>>(),
    })))
}

/// `GET /admin/savings?group_by=model&since=7d`
pub async fn savings(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<ViewQuery>,
) -> ApiResult {
    let w = window(&q, "24h")?;
    let g = match q.group_by {
        Some(_) => Some(group_by(&q, GroupBy::Agent)?),
        None => None,
    };
    let r = gw.store.savings_report(g, w.since, w.until).await?;
    Ok(Json(savings_json(&r)))
}

/// `GET /admin/dashboard?since=1h&group_by=agent`: every dashboard panel in one answer.
pub async fn dashboard(
    _: Admin,
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<ViewQuery>,
) -> ApiResult {
    let w = window(&q, "24h")?;
    let g = group_by(&q, GroupBy::Agent)?;
    let bucket =
        match q.bucket.as_deref() {
            Some(b) => Some(parse_duration_ms(b).filter(|b| *b > 0).ok_or_else(|| {
                ApiError::InvalidParam {
                    param: "bucket".into(),
                    message: format!("{b:?} is not a duration (10s, 5m, 1h)"),
                }
            })?),
            None => None,
        };
    let rules = gw.limits.rules();
    let tz = gw.config.load().limits.time_zone.clone();
    let v = views::dashboard(
        &gw.store,
        &rules,
        &tz,
        g,
        w.since,
        w.until,
        bucket,
        now_ms(),
    )
    .await?;
    Ok(Json(v))
}

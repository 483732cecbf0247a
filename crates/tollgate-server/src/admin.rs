//! The admin API (master key): usage reports, keys, single ledger rows.

use crate::error::ApiError;
use crate::state::{Gateway, now_ms};
use crate::value::store_call;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tollgate_domain::report::{GroupBy, UsageGroup, UsageReport};
use tollgate_store::NewKey;

/// Parse a window start: a duration back from `now_ms` (`90s`, `15m`, `24h`, `7d`, `2w`),
/// an RFC 3339 timestamp, or Unix milliseconds.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Some(d) = parse_duration_ms(t) {
        return Ok(now_ms.saturating_sub(d));
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    Err(format!(
        "{text:?} is not a duration (24h, 7d, 30m), an RFC 3339 time or Unix milliseconds"
    ))
}

/// `90s`, `15m`, `24h`, `7d`, `2w` in milliseconds.
pub fn parse_duration_ms(t: &str) -> Option<i64> {
    let unit = t.chars().last()?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    if n < 0 {
        return None;
    }
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

pub fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn group_json(g: &UsageGroup) -> Value {
    json!({
        "group": g.group,
        "requests": g.requests,
        "errors": g.errors,
        "partial": g.partial,
        "unpriced": g.unpriced,
        "input_tokens": g.input_tokens,
        "cached_tokens": g.cached_tokens,
        "cache_write_tokens": g.cache_write_tokens,
        "output_tokens": g.output_tokens,
        "reasoning_tokens": g.reasoning_tokens,
        "cost_usd": g.cost.to_string(),
        "cost_nanos": g.cost.nanos(),
    })
}

/// A usage report as JSON (the shape `GET /admin/usage` and `tollgate report --format
/// json` share).
pub fn report_json(r: &UsageReport) -> Value {
    json!({
        "group_by": r.group_by.map(GroupBy::as_str),
        "since": iso(r.since_ms),
        "until": iso(r.until_ms),
        "groups": r.groups.iter().map(group_json).collect::<Vec<_>>(),
        "total": group_json(&r.total),
    })
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /admin/usage?group_by=agent&since=24h`
pub async fn usage(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let now = now_ms();
    let group_by = match q.group_by.as_deref() {
        None => None,
        Some(g) => match GroupBy::parse(g) {
            Some(g) => Some(g),
            None => {
                return ApiError::InvalidParam {
                    param: "group_by".into(),
                    message: format!(
                        "{g:?} is not one of {}",
                        GroupBy::ALL.map(GroupBy::as_str).join(", ")
                    ),
                }
                .into_response(None);
            }
        },
    };
    let window = |name: &str, v: Option<&str>, default: i64| match v {
        None => Ok(default),
        Some(s) => parse_since(s, now).map_err(|m| ApiError::InvalidParam {
            param: name.to_string(),
            message: m,
        }),
    };
    let (since, until) = match (
        window("since", q.since.as_deref(), now - 86_400_000),
        window("until", q.until.as_deref(), now + 1),
    ) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return e.into_response(None),
    };
    let store = gw.store.clone();
    match store_call(move || store.usage_report(group_by, since, until)).await {
        Ok(r) => Json(report_json(&r)).into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `POST /admin/keys` with `{"team","agent","user","name","models"}`: the secret is in
/// the answer, once.
pub async fn create_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return ApiError::InvalidParam {
                param: "body".into(),
                message: e.to_string(),
            }
            .into_response(None);
        }
    };
    let store = gw.store.clone();
    let sealer = gw.sealer.clone();
    match store_call(move || store.create_key_sealed(&new, now_ms(), sealer.as_deref())).await {
        Ok((key, secret)) => {
            gw.keys.insert(key.clone());
            let mut v = serde_json::to_value(&key).unwrap_or_default();
            // For AWS SDK clients (Bedrock endpoints, SigV4): the same pair.
            v["aws_access_key_id"] = Value::String(key.id.clone());
            v["aws_secret_access_key"] = Value::String(secret.clone());
            v["key"] = Value::String(secret);
            (http::StatusCode::CREATED, Json(v)).into_response()
        }
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/keys`
pub async fn list_keys(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    match store_call(move || store.list_keys()).await {
        Ok(keys) => Json(json!({"data": keys})).into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `DELETE /admin/keys/{id}`
pub async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let key_id = id.clone();
    match store_call(move || store.revoke_key(&key_id, now_ms())).await {
        Ok(true) => {
            gw.keys.remove(&id);
            Json(json!({"id": id, "revoked": true})).into_response()
        }
        Ok(false) => ApiError::NotFound(format!("no active key {id}")).into_response(None),
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/requests/{request_id}`: one ledger row.
pub async fn request_row(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let rid = id.clone();
    match store_call(move || store.ledger_row(&rid)).await {
        Ok(Some(row)) => {
            let mut v = serde_json::to_value(&row).unwrap_or_default();
            v["cost_usd"] = Value::String(row.cost.to_string());
            Json(v).into_response()
        }
        Ok(None) => ApiError::NotFound(format!("no ledger row for {id}")).into_response(None),
        Err(e) => e.into_response(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_since("2w", now).unwrap(), now - 14 * 86_400_000);
        assert_eq!(
            parse_since("2024-01-01T00:00:00Z", now).unwrap(),
            1_704_067_200_000
        );
        assert_eq!(parse_since("12345", now).unwrap(), 12345);
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("", now).is_err());
        assert!(parse_since("-5h", now).is_err());
        assert!(parse_since("99999999999999999999d", now).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Budgets and tasks.

/// One budget's standing: spend per entity in the current period (from the ledger, and
/// live from the counters when a gateway answers), and past periods' spend.
pub fn budget_status(
    store: &tollgate_store::SqliteStore,
    rule: &tollgate_domain::budget::BudgetRule,
    source: &str,
    now_ms: i64,
    tz: &jiff::tz::TimeZone,
    history: usize,
) -> Result<Value, tollgate_store::StoreError> {
    use tollgate_domain::budget::{Scope, ScopeKind, counter_key, recent_windows};
    let windows = recent_windows(rule.period, now_ms, tz, history.max(1));
    let mut current = Vec::new();
    let mut past = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let spend = store.spend_by_scope(&rule.scope, w.start_ms, w.end_ms)?;
        if i == 0 {
            let mut spend = spend;
            if spend.is_empty()
                && let Some(n) = &rule.scope.name
            {
                spend.push((n.clone(), tollgate_domain::money::Money::ZERO));
            }
            for (name, spent) in spend {
                let scope = match rule.scope.kind {
                    ScopeKind::Org => Scope::org(),
                    k => Scope::new(k, name),
                };
                current.push(json!({
                    "scope": scope.to_string(),
                    "key": counter_key(&scope, w),
                    "period": w.label,
                    "start": iso(w.start_ms.max(0)),
                    "end": w.end_ms.map(iso),
                    "spent_usd": spent.to_string(),
                    "remaining_usd": tollgate_domain::budget::Account { spent, reserved: tollgate_domain::money::Money::ZERO }
                        .remaining(rule.limit)
                        .to_string(),
                    "used_pct": pct(spent, rule.limit),
                }));
            }
        } else {
            let total: tollgate_domain::money::Money = spend.iter().map(|(_, m)| *m).sum();
            past.push(
                json!({"period": w.label, "spent_usd": total.to_string(), "entities": spend.len()}),
            );
        }
    }
    Ok(json!({
        "scope": rule.scope.to_string(),
        "period": rule.period.as_str(),
        "limit_usd": rule.limit.to_string(),
        "hard": rule.hard,
        "alert_at": rule.alert_at,
        "source": source,
        "current": current,
        "history": past,
    }))
}

fn pct(spent: tollgate_domain::money::Money, limit: tollgate_domain::money::Money) -> f64 {
    if limit.nanos() <= 0 {
        return 0.0;
    }
    (spent.nanos() as f64 / limit.nanos() as f64 * 1000.0).round() / 10.0
}

/// `GET /admin/budgets`: every budget in force, spend and what is left per entity in the
/// current period (live from the counters: settled spend and reservations in flight).
pub async fn list_budgets(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let rules = gw.limits.rules();
    let cfg = gw.config.load_full();
    let store = gw.store.clone();
    let tz = cfg.limits.time_zone.clone();
    let config_rules = cfg.limits.budgets.clone();
    let rules2 = rules.clone();
    let mut out = match store_call(move || {
        let db = store.list_budgets()?;
        rules2
            .iter()
            .map(|r| {
                let source = if db
                    .iter()
                    .any(|d| d.scope == r.scope && d.period == r.period)
                {
                    "runtime"
                } else if config_rules.contains(r) {
                    "config"
                } else {
                    "runtime"
                };
                budget_status(&store, r, source, now_ms(), &tz, 3)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    {
        Ok(v) => v,
        Err(e) => return e.into_response(None),
    };
    // Live figures from the counters.
    let keys: Vec<String> = out
        .iter()
        .flat_map(|b| b["current"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["key"].as_str().map(str::to_string))
        .collect();
    let accounts = gw.limits.counters.accounts(&keys).await.ok();
    if let Some(acc) = accounts {
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
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
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
            "overage_usd": tollgate_domain::money::Money::from_nanos(s.overage_nanos.load(std::sync::atomic::Ordering::Relaxed)).to_string(),
            "settle_errors": ld(&s.settle_errors),
        },
    }))
    .into_response()
}

/// A budget as the admin API and CLI write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    pub scope: String,
    pub period: String,
    pub limit_usd: crate::config::limits::UsdText,
    pub hard: Option<bool>,
    pub alert_at: Option<Vec<u8>>,
}

impl BudgetBody {
    pub fn rule(&self) -> Result<tollgate_domain::budget::BudgetRule, ApiError> {
        let bad = |param: &str, message: String| ApiError::InvalidParam {
            param: param.into(),
            message,
        };
        let alert_at = self.alert_at.clone().unwrap_or_else(|| vec![50, 80, 100]);
        if alert_at.iter().any(|p| *p == 0 || *p > 100) {
            return Err(bad("alert_at", "percentages between 1 and 100".into()));
        }
        Ok(tollgate_domain::budget::BudgetRule {
            scope: tollgate_domain::budget::ScopeSpec::parse(&self.scope)
                .map_err(|e| bad("scope", e))?,
            period: tollgate_domain::budget::Period::parse(&self.period)
                .ok_or_else(|| bad("period", "one of day, week, month, lifetime".into()))?,
            limit: self.limit_usd.parse().map_err(|e| bad("limit_usd", e))?,
            hard: self.hard.unwrap_or(true),
            alert_at,
        })
    }
}

/// `PUT /admin/budgets` `{"scope","period","limit_usd","hard","alert_at"}`: create or
/// replace a run-time budget. It counts what the scope already spent this period.
pub async fn set_budget(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let rule = match serde_json::from_slice::<BudgetBody>(&body)
        .map_err(|e| ApiError::InvalidParam {
            param: "body".into(),
            message: e.to_string(),
        })
        .and_then(|b| b.rule())
    {
        Ok(r) => r,
        Err(e) => return e.into_response(None),
    };
    let store = gw.store.clone();
    let r2 = rule.clone();
    if let Err(e) = store_call(move || store.upsert_budget(&r2, now_ms())).await {
        return e.into_response(None);
    }
    if let Err(e) = crate::admission::refresh(&gw).await {
        return e.into_response(None);
    }
    Json(
        json!({"scope": rule.scope.to_string(), "period": rule.period.as_str(),
        "limit_usd": rule.limit.to_string(), "hard": rule.hard, "alert_at": rule.alert_at}),
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct BudgetQuery {
    scope: String,
    period: String,
}

/// `DELETE /admin/budgets?scope=team:x&period=day`: remove a run-time budget.
pub async fn delete_budget(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<BudgetQuery>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let (Ok(scope), Some(period)) = (
        tollgate_domain::budget::ScopeSpec::parse(&q.scope),
        tollgate_domain::budget::Period::parse(&q.period),
    ) else {
        return ApiError::InvalidParam {
            param: "scope".into(),
            message: "scope and period must name a budget".into(),
        }
        .into_response(None);
    };
    let store = gw.store.clone();
    match store_call(move || store.delete_budget(&scope, period)).await {
        Ok(true) => {
            let _ = crate::admission::refresh(&gw).await;
            Json(json!({"deleted": true})).into_response()
        }
        Ok(false) => ApiError::NotFound(format!(
            "no run-time budget on {} per {}",
            q.scope, q.period
        ))
        .into_response(None),
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/guard`: tasks the guard acted on, and recent tasks' calls and spend.
pub async fn list_tasks(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let since = now_ms() - 86_400_000;
    match store_call(move || {
        Ok((
            store.guarded_tasks(200)?,
            store.task_usage(None, since, 200)?,
        ))
    })
    .await
    {
        Ok((guarded, usage)) => Json(json!({
            "guarded": guarded,
            "recent": usage,
            "watching": gw.limits.guard.len(),
            "halted": gw.limits.guard.halted_count(),
        }))
        .into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/guard/{task}`: its status, incidents with evidence, alerts, usage.
pub async fn show_task(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let t = task.clone();
    match store_call(move || {
        Ok((
            store.task_record(&t)?,
            store.incidents(Some(&t), 50)?,
            store.alerts(Some(&t), 50)?,
            store.task_usage(Some(&t), i64::MIN, 1)?,
        ))
    })
    .await
    {
        Ok((record, incidents, alerts, usage)) => Json(json!({
            "task": task,
            "record": record,
            "usage": usage.first(),
            "incidents": incidents,
            "alerts": alerts,
        }))
        .into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `POST /admin/tasks/{task}/release`: let a halted task run again.
pub async fn release_task(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(task): Path<String>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let t = task.clone();
    match store_call(move || store.release_task(&t, now_ms())).await {
        Ok(mut released) => {
            if let tollgate_store::counters::Counters::Redis(r) = &gw.limits.counters {
                // Every replica: they ask Redis on each call.
                match r.task_release(&task).await {
                    Ok(shared) => released |= shared,
                    Err(e) => return ApiError::CountersUnavailable(e.0).into_response(None),
                }
            }
            gw.limits.guard.release(&task);
            Json(json!({"task": task, "released": released})).into_response()
        }
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/alerts`: recent alerts and their delivery.
pub async fn list_alerts(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    match store_call(move || store.alerts(None, 200)).await {
        Ok(a) => Json(json!({"data": a})).into_response(),
        Err(e) => e.into_response(None),
    }
}

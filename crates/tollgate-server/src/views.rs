//! The JSON shapes of reports and views, shared by the admin API (`/admin/*`) and the
//! CLI (`tollgate report --format json`, `budgets`, `tasks`): one place, so the two can
//! never disagree. Pure functions of store results, except [`budget_status`] and
//! [`dashboard`], which read the store they are given (any backend) and take `now`.

use crate::config::UsdText;
use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tollgate_domain::budget::BudgetRule;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::ValueBasis;
use tollgate_domain::report::{GroupBy, UsageGroup, UsageReport};
use tollgate_domain::time::iso;
use tollgate_domain::value::{Ratio, RoiReport, Savings, SavingsReport, TaskStats, TaskSummary};
use tollgate_store::outcomes::{Recorded, StoredOutcome};
use tollgate_store::{BudgetStore, ReportStore, StoreError, TaskStore};

// ---------------------------------------------------------------------------------------
// Usage.

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

// ---------------------------------------------------------------------------------------
// Value per dollar: ROI, tasks, savings.

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
        "misses": s.misses,
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

// ---------------------------------------------------------------------------------------
// Outcomes.

/// An outcome as JSON (the API's answer, `tollgate tasks`' JSON and the dashboard).
pub fn stored_json(o: &StoredOutcome) -> Value {
    let basis = match o.outcome.basis {
        ValueBasis::None => json!({"kind": "none"}),
        ValueBasis::Usd { value } => json!({"kind": "usd", "value_usd": value.to_string()}),
        ValueBasis::MinutesSaved {
            minutes,
            hourly_rate,
        } => json!({"kind": "minutes_saved", "minutes_saved": minutes,
                    "hourly_rate_usd": hourly_rate.to_string()}),
    };
    json!({
        "task": o.outcome.task,
        "status": o.outcome.status.as_str(),
        "value_usd": o.value.to_string(),
        "value_basis": basis,
        "labels": o.outcome.labels,
        "revision": o.revision,
        "recorded_at": iso(o.recorded_ms),
        "recorded_by": o.recorded_by,
    })
}

pub fn recorded_json(r: &Recorded) -> Value {
    let mut v = stored_json(&r.current);
    v["changed"] = Value::Bool(r.changed);
    if let Some(p) = &r.previous {
        v["previous"] = stored_json(p);
    }
    v
}

// ---------------------------------------------------------------------------------------
// Budgets.

/// One budget's standing: spend per entity in the current period (from the ledger, and
/// live from the counters when a gateway answers), and past periods' spend.
pub async fn budget_status(
    store: &(impl BudgetStore + Sync),
    rule: &tollgate_domain::budget::BudgetRule,
    source: &str,
    now_ms: i64,
    tz: &jiff::tz::TimeZone,
    history: usize,
) -> Result<Value, StoreError> {
    use tollgate_domain::budget::{Scope, ScopeKind, counter_key, recent_windows};
    let windows = recent_windows(rule.period, now_ms, tz, history.max(1));
    let mut current = Vec::new();
    let mut past = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let spend = store
            .spend_by_scope(&rule.scope, w.start_ms, w.end_ms)
            .await?;
        if i == 0 {
            let mut spend = spend;
            if spend.is_empty()
                && let Some(n) = &rule.scope.name
            {
                spend.push((n.clone(), Money::ZERO));
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
                    "remaining_usd": tollgate_domain::budget::Account { spent, reserved: Money::ZERO }
                        .remaining(rule.limit)
                        .to_string(),
                    "used_pct": used_pct(spent, rule.limit),
                }));
            }
        } else {
            let total: Money = spend.iter().map(|(_, m)| *m).sum();
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

fn used_pct(spent: Money, limit: Money) -> f64 {
    if limit.nanos() <= 0 {
        return 0.0;
    }
    (spent.nanos() as f64 / limit.nanos() as f64 * 1000.0).round() / 10.0
}

/// A budget as the admin API and CLI write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    pub scope: String,
    pub period: String,
    pub limit_usd: UsdText,
    pub hard: Option<bool>,
    pub alert_at: Option<Vec<u8>>,
}

impl BudgetBody {
    pub fn rule(&self) -> Result<BudgetRule, ApiError> {
        let bad = |param: &str, message: String| ApiError::InvalidParam {
            param: param.into(),
            message,
        };
        let alert_at = self.alert_at.clone().unwrap_or_else(|| vec![50, 80, 100]);
        if alert_at.iter().any(|p| *p == 0 || *p > 100) {
            return Err(bad("alert_at", "percentages between 1 and 100".into()));
        }
        Ok(BudgetRule {
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

// ---------------------------------------------------------------------------------------
// The dashboard.

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

/// Every dashboard panel in one answer (`GET /admin/dashboard`): totals, the spend
/// chart (grouped by `g`, in buckets of `bucket` ms or a round width for the window),
/// ROI, savings, top tasks, budgets, halted tasks and alerts, read from the store.
#[allow(clippy::too_many_arguments)]
pub async fn dashboard(
    store: &(impl BudgetStore + ReportStore + TaskStore + Sync),
    rules: &[BudgetRule],
    tz: &jiff::tz::TimeZone,
    g: GroupBy,
    since: i64,
    until: i64,
    bucket: Option<i64>,
    now_ms: i64,
) -> Result<Value, StoreError> {
    // The chart starts where the data does (at least 5 minutes back), so a
    // young ledger is not a spike at the edge of an empty week.
    let chart_since = match store.ledger_span(since, until).await? {
        Some((first, _)) => {
            let pad = ((until - first) / 10).max(10_000);
            (first - pad).min(until - MIN_CHART_SPAN_MS).max(since)
        }
        None => since,
    };
    let bucket = bucket.unwrap_or_else(|| bucket_for(until - chart_since));
    let usage = store.usage_report(None, since, until).await?;
    let series = store.spend_series(g, chart_since, until, bucket).await?;
    let roi = store.roi_report(GroupBy::Agent, since, until).await?;
    let savings = store.savings_report(None, since, until).await?;
    let top = store.task_summaries(since, until, 10).await?;
    let budgets = Some(budget_rows(store, rules, tz, now_ms).await?);
    let halted = Some(
        store
            .guarded_tasks(50)
            .await?
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
                m.insert(
                    "recorded_elsewhere".into(),
                    Value::from(t.recorded_elsewhere),
                );
                m
            })
            .collect(),
    );
    let alerts = Some(
        store
            .alerts(None, 50)
            .await?
            .into_iter()
            .map(|a| {
                let mut m = serde_json::Map::new();
                m.insert("at".into(), Value::from(iso(a.ts_ms)));
                m.insert("kind".into(), Value::from(a.kind));
                m.insert("text".into(), Value::from(a.text));
                m.insert(
                    "delivery".into(),
                    Value::from(format!("{} ({} attempt(s))", a.status, a.attempts)),
                );
                m
            })
            .collect(),
    );
    Ok(json!({
        "since": iso(since),
        "until": iso(until),
        "now": iso(now_ms),
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
        "spend": spend_json(g, bucket, chart_since, until, &series),
        "roi": roi_json(&roi),
        "savings": savings_json(&savings),
        "top_tasks": top.iter().map(task_json).collect::<Vec<_>>(),
        "budgets": optional_panel(budgets, "budgets arrive with budget enforcement (not configured in this build)"),
        "halted_tasks": optional_panel(halted, "the runaway-task guard is not part of this build"),
        "alerts": optional_panel(alerts, "alerts arrive with budgets and the task guard (not part of this build)"),
    }))
}

/// The budgets panel: each budget in force, per entity, this period's spend against its
/// limit (from the ledger).
async fn budget_rows(
    store: &(impl BudgetStore + Sync),
    rules: &[BudgetRule],
    tz: &jiff::tz::TimeZone,
    now_ms: i64,
) -> Result<Vec<serde_json::Map<String, Value>>, StoreError> {
    let mut out = Vec::new();
    for r in rules {
        let st = budget_status(store, r, "", now_ms, tz, 1).await?;
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

// ---------------------------------------------------------------------------------------
// What-if replay.

fn replay_group_json(g: &tollgate_domain::replay::ReplayGroup) -> Value {
    let risk = Ratio::new(i128::from(g.tasks_at_risk), i128::from(g.tasks_succeeded));
    json!({
        "group": g.key,
        "requests": g.requests,
        "cost_now_usd": g.cost_now.to_string(),
        "cost_now_nanos": g.cost_now.nanos(),
        "cost_policy_usd": g.cost_policy.to_string(),
        "cost_policy_nanos": g.cost_policy.nanos(),
        "saved_usd": g.saved.to_string(),
        "saved_nanos": g.saved.nanos(),
        "saved_pct": pct(Ratio::new(i128::from(g.saved.nanos()), i128::from(g.cost_now.nanos()))),
        "calls_lighter": g.lighter,
        "calls_heavier": g.heavier,
        "calls_swapped": g.swapped,
        "response_hits_lost": g.hits_lost,
        "prompt_cache_reads": g.cache_reads,
        "prompt_cache_writes": g.cache_writes,
        "unpriced": g.unpriced,
        "tasks_succeeded": g.tasks_succeeded,
        "tasks_at_risk": g.tasks_at_risk,
        "quality_risk": ratio_num(risk),
        "quality_risk_pct": pct(risk),
    })
}

/// A replay's answer as JSON (`POST /admin/replay` and `tollgate replay --format json`).
pub fn replay_json(r: &crate::replay::ReplayOutput) -> Value {
    json!({
        "view": "replay",
        "group_by": r.report.group_by,
        "since": iso(r.since_ms),
        "until": iso(r.until_ms),
        "rows": r.rows,
        "groups": r.report.groups.iter().map(replay_group_json).collect::<Vec<_>>(),
        "total": replay_group_json(&r.report.total),
        "notes": r.notes,
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

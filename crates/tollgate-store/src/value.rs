//! Value-per-dollar queries: ROI by group, per-task summaries, savings by mechanism,
//! spend over time, and the dashboard's optional panels.

use crate::StoreError;
use crate::report::column;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::params;
use std::collections::BTreeMap;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::OutcomeStatus;
use tollgate_domain::report::GroupBy;
use tollgate_domain::value::{
    Mechanism, OutcomeFigure, RoiReport, Savings, SavingsReport, TaskSlice, TaskSummary, roi_groups,
};

/// How a mechanism shows in the ledger: which rows it touched, what they cost with it
/// and what they would have cost without it. A new mechanism (pruning) adds one arm here
/// and its column in a migration.
///
/// Routing: an enforce row is measured against the route's heaviest tier for the same
/// token counts, except a call whose answer failed the check and was escalated: without
/// routing it would not have been made at all, so its baseline is zero (a loss). A shadow
/// row paid what it paid; the tier the router chose is what it would have cost. Routed
/// rows that consumed no tokens (refused by a budget, an upstream error) are not counted.
/// The SQL of a savings mechanism over ledger rows, shared by every backend.
pub(crate) struct MechanismSql {
    /// Rows the mechanism changed the price of.
    pub touched: &'static str,
    /// What those rows cost, and what they would have cost without it.
    pub actual: &'static str,
    pub baseline: &'static str,
    /// Rows where it did not act as expected.
    pub missed: &'static str,
}

pub(crate) fn mechanism_sql(m: Mechanism) -> MechanismSql {
    let without_cache = "COALESCE(cost_without_cache_nanos, cost_nanos)";
    let hit = "cost_nanos + COALESCE(cache_avoided_nanos, 0)";
    let (touched, actual, baseline, missed) = match m {
        Mechanism::PromptCache => (
            "(cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens) > 0
             AND COALESCE(cache_kind, '') <> 'prompt_injected'",
            "cost_nanos",
            without_cache,
            "FALSE",
        ),
        Mechanism::PromptCacheInjected => (
            "cache_kind = 'prompt_injected'",
            "cost_nanos",
            without_cache,
            "cache_kind = 'prompt_injected' AND cache_miss",
        ),
        Mechanism::ResponseCacheExact => {
            ("cache_kind = 'response_exact'", "cost_nanos", hit, "FALSE")
        }
        Mechanism::ResponseCacheSemantic => (
            "cache_kind = 'response_semantic'",
            "cost_nanos",
            hit,
            "FALSE",
        ),
        Mechanism::Pruning => (
            "prune_tokens_before IS NOT NULL",
            "cost_nanos",
            "COALESCE(prune_cost_without_nanos, cost_nanos)",
            "FALSE",
        ),
        Mechanism::Routing => (
            "route_mode = 'enforce' AND (input_tokens + cache_read_tokens + cache_write_5m_tokens
             + cache_write_1h_tokens + output_tokens) > 0",
            "cost_nanos",
            "CASE WHEN route_escalated IS NOT NULL THEN 0
             ELSE COALESCE(route_heavy_cost_nanos, cost_nanos) END",
            "FALSE",
        ),
        Mechanism::RoutingShadow => (
            "route_mode = 'shadow' AND (input_tokens + cache_read_tokens + cache_write_5m_tokens
             + cache_write_1h_tokens + output_tokens) > 0",
            "COALESCE(route_tier_cost_nanos, cost_nanos)",
            "cost_nanos",
            "FALSE",
        ),
    };
    MechanismSql {
        touched,
        actual,
        baseline,
        missed,
    }
}

fn nanos(v: Option<i64>) -> Money {
    Money::from_nanos(v.unwrap_or(0))
}

fn count(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

/// A point of a spend-over-time series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendPoint {
    pub bucket_ms: i64,
    pub group: Option<String>,
    pub cost: Money,
    pub requests: u64,
}

/// One row of the FOCUS aggregation: an hour × key × attribution × model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourlyUsage {
    pub hour_ms: i64,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub agent: Option<String>,
    pub user: Option<String>,
    /// The request tags (JSON array text, as stored).
    pub tags: Option<String>,
    pub deployment: String,
    pub upstream: String,
    pub upstream_model: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost: Money,
    pub unpriced: u64,
}

impl SqliteStore {
    /// ROI by `group_by` (agent, team, model, route, ...) over `[since_ms, until_ms)`.
    pub fn roi_report(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<RoiReport, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let col = column(group_by);
        let mut stmt = conn.prepare(&format!(
            "SELECT task, {col}, COUNT(*), SUM(cost_nanos) FROM ledger
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND task IS NOT NULL
             GROUP BY task, {col} ORDER BY task, {col}"
        ))?;
        let slices = stmt
            .query_map(params![since_ms, until_ms], |r| {
                Ok(TaskSlice {
                    task: r.get(0)?,
                    group: r.get(1)?,
                    calls: count(r.get(2)?),
                    cost: nanos(r.get(3)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let (untasked_calls, untasked_cost) = conn.query_row(
            "SELECT COUNT(*), SUM(cost_nanos) FROM ledger
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND task IS NULL",
            params![since_ms, until_ms],
            |r| Ok((count(r.get(0)?), nanos(r.get(1)?))),
        )?;
        drop(stmt);
        drop(conn);
        let outcomes: BTreeMap<String, OutcomeFigure> = self
            .outcomes_in_window(since_ms, until_ms)?
            .into_iter()
            .map(|(task, o)| {
                (
                    task,
                    OutcomeFigure {
                        status: o.outcome.status,
                        value: o.value,
                    },
                )
            })
            .collect();
        let (groups, total) = roi_groups(&slices, &outcomes);
        Ok(RoiReport {
            group_by: Some(group_by),
            since_ms,
            until_ms,
            groups,
            total,
            untasked_calls,
            untasked_cost,
        })
    }

    /// Tasks with calls in `[since_ms, until_ms)`, most expensive first, at most `limit`.
    pub fn task_summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<TaskSummary>, StoreError> {
        self.summaries(since_ms, until_ms, limit, None)
    }

    /// One task over all time (its summary is `None` when it has no calls).
    pub fn task_summary(&self, task: &str) -> Result<Option<TaskSummary>, StoreError> {
        Ok(self.summaries(i64::MIN, i64::MAX, 1, Some(task))?.pop())
    }

    fn summaries(
        &self,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
        task: Option<&str>,
    ) -> Result<Vec<TaskSummary>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT t.*, o.status, o.value_nanos FROM (
                SELECT task,
                  COUNT(*),
                  SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END),
                  SUM(input_tokens), SUM(cache_read_tokens),
                  SUM(cache_write_5m_tokens + cache_write_1h_tokens),
                  SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_nanos) AS cost,
                  MIN(ts_ms), MAX(ts_ms + latency_us / 1000)
                FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 AND task IS NOT NULL
                  AND (?4 IS NULL OR task = ?4)
                GROUP BY task) t
             LEFT JOIN task_outcomes o ON o.task = t.task
             ORDER BY t.cost DESC, t.task LIMIT ?3",
        )?;
        let mut out = stmt
            .query_map(params![since_ms, until_ms, limit as i64, task], |r| {
                let first: i64 = r.get(9)?;
                let last: i64 = r.get(10)?;
                let status: Option<String> = r.get(11)?;
                Ok(TaskSummary {
                    task: r.get(0)?,
                    calls: count(r.get(1)?),
                    errors: count(r.get(2)?),
                    input_tokens: count(r.get(3)?),
                    cached_tokens: count(r.get(4)?),
                    cache_write_tokens: count(r.get(5)?),
                    output_tokens: count(r.get(6)?),
                    reasoning_tokens: count(r.get(7)?),
                    cost: nanos(r.get(8)?),
                    first_ms: first,
                    duration_ms: (last - first).max(0),
                    status: status.as_deref().and_then(OutcomeStatus::parse),
                    value: r.get::<_, Option<i64>>(12)?.map(Money::from_nanos),
                    ..TaskSummary::default()
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // Distinct agents, teams and models of each task.
        let mut lists = conn.prepare(
            "SELECT DISTINCT agent, team, upstream_model FROM ledger
             WHERE task = ?1 AND ts_ms >= ?2 AND ts_ms < ?3",
        )?;
        for t in &mut out {
            let rows = lists
                .query_map(params![t.task, since_ms, until_ms], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut agents = std::collections::BTreeSet::new();
            let mut teams = std::collections::BTreeSet::new();
            let mut models = std::collections::BTreeSet::new();
            for (a, tm, m) in rows {
                agents.extend(a);
                teams.extend(tm);
                if !m.is_empty() {
                    models.insert(m);
                }
            }
            t.agents = agents.into_iter().collect();
            t.teams = teams.into_iter().collect();
            t.models = models.into_iter().collect();
        }
        Ok(out)
    }

    /// Savings by mechanism over `[since_ms, until_ms)`, optionally per group.
    pub fn savings_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<SavingsReport, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let (requests, cost) = conn.query_row(
            "SELECT COUNT(*), SUM(cost_nanos) FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2",
            params![since_ms, until_ms],
            |r| Ok((count(r.get(0)?), nanos(r.get(1)?))),
        )?;
        let mut total = Vec::new();
        let mut groups: BTreeMap<Option<String>, Vec<Savings>> = BTreeMap::new();
        for m in Mechanism::ALL {
            let MechanismSql {
                touched,
                actual,
                baseline,
                missed,
            } = mechanism_sql(m);
            let sums = format!(
                "SUM(CASE WHEN {touched} THEN 1 ELSE 0 END),
                 SUM(CASE WHEN {touched} THEN {actual} ELSE 0 END),
                 SUM(CASE WHEN {touched} THEN {baseline} ELSE 0 END),
                 SUM(CASE WHEN {missed} THEN 1 ELSE 0 END)"
            );
            let line = |r: &rusqlite::Row<'_>, at: usize| -> rusqlite::Result<Savings> {
                Ok(Savings {
                    mechanism: m,
                    requests: count(r.get(at)?),
                    actual: nanos(r.get(at + 1)?),
                    baseline: nanos(r.get(at + 2)?),
                    misses: count(r.get(at + 3)?),
                })
            };
            total.push(conn.query_row(
                &format!("SELECT {sums} FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2"),
                params![since_ms, until_ms],
                |r| line(r, 0),
            )?);
            if let Some(g) = group_by {
                let col = column(g);
                let mut stmt = conn.prepare(&format!(
                    "SELECT {col}, {sums} FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2
                     GROUP BY {col}"
                ))?;
                let rows = stmt
                    .query_map(params![since_ms, until_ms], |r| {
                        Ok((r.get::<_, Option<String>>(0)?, line(r, 1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                for (g, s) in rows {
                    groups.entry(g).or_default().push(s);
                }
            }
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        let saved = |v: &Vec<Savings>| -> i64 {
            v.iter()
                .filter(|s| s.mechanism.realised())
                .map(|s| s.saved().nanos())
                .sum()
        };
        groups.sort_by(|a, b| saved(&b.1).cmp(&saved(&a.1)).then_with(|| a.0.cmp(&b.0)));
        Ok(SavingsReport {
            group_by,
            since_ms,
            until_ms,
            requests,
            cost,
            groups,
            total,
        })
    }

    /// Spend per `bucket_ms` bucket and group over `[since_ms, until_ms)`.
    pub fn spend_series(
        &self,
        group_by: GroupBy,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<SpendPoint>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let col = column(group_by);
        let bucket = bucket_ms.max(1);
        let mut stmt = conn.prepare(&format!(
            "SELECT (ts_ms / ?3) * ?3 AS b, {col}, SUM(cost_nanos), COUNT(*) FROM ledger
             WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY b, {col} ORDER BY b, {col}"
        ))?;
        let rows = stmt
            .query_map(params![since_ms, until_ms, bucket], |r| {
                Ok(SpendPoint {
                    bucket_ms: r.get(0)?,
                    group: r.get(1)?,
                    cost: nanos(r.get(2)?),
                    requests: count(r.get(3)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The first and last row times in `[since_ms, until_ms)`, if any.
    pub fn ledger_span(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let (first, last): (Option<i64>, Option<i64>) = conn.query_row(
            "SELECT MIN(ts_ms), MAX(ts_ms) FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2",
            params![since_ms, until_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(first.zip(last))
    }

    /// Ledger usage summed per hour × key × attribution × model, for exports.
    pub fn hourly_usage(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<HourlyUsage>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT (ts_ms / 3600000) * 3600000 AS h, key_id, team, agent, user, tags,
                    deployment, upstream, upstream_model, COUNT(*),
                    SUM(input_tokens), SUM(cache_read_tokens), SUM(cache_write_5m_tokens),
                    SUM(cache_write_1h_tokens), SUM(output_tokens), SUM(reasoning_tokens),
                    SUM(cost_nanos), SUM(1 - priced)
             FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2
             GROUP BY h, key_id, team, agent, user, tags, deployment, upstream, upstream_model
             ORDER BY h, key_id, team, agent, user, tags, deployment, upstream, upstream_model",
        )?;
        let rows = stmt
            .query_map(params![since_ms, until_ms], |r| {
                Ok(HourlyUsage {
                    hour_ms: r.get(0)?,
                    key_id: r.get(1)?,
                    team: r.get(2)?,
                    agent: r.get(3)?,
                    user: r.get(4)?,
                    tags: r.get(5)?,
                    deployment: r.get(6)?,
                    upstream: r.get(7)?,
                    upstream_model: r.get(8)?,
                    requests: count(r.get(9)?),
                    input_tokens: count(r.get(10)?),
                    cache_read_tokens: count(r.get(11)?),
                    cache_write_5m_tokens: count(r.get(12)?),
                    cache_write_1h_tokens: count(r.get(13)?),
                    output_tokens: count(r.get(14)?),
                    reasoning_tokens: count(r.get(15)?),
                    cost: nanos(r.get(16)?),
                    unpriced: count(r.get(17)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Rows of a table other parts of tollgate may create (budgets, alerts, halted
    /// tasks), as JSON objects, newest first when it has an `id`; `None` if the table
    /// does not exist in this database.
    pub fn optional_table(
        &self,
        table: &str,
        limit: usize,
    ) -> Result<Option<Vec<serde_json::Map<String, serde_json::Value>>>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [table],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(None);
        }
        // `table` was found in sqlite_master, so it is a real table name; quote it anyway.
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let mut stmt = conn.prepare(&format!("SELECT * FROM {quoted} LIMIT ?1"))?;
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let rows = stmt
            .query_map([limit as i64], |r| {
                let mut m = serde_json::Map::new();
                for (i, n) in names.iter().enumerate() {
                    let v = match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => serde_json::Value::Null,
                        rusqlite::types::ValueRef::Integer(x) => x.into(),
                        rusqlite::types::ValueRef::Real(x) => x.into(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned().into()
                        }
                        rusqlite::types::ValueRef::Blob(_) => serde_json::Value::Null,
                    };
                    m.insert(n.clone(), v);
                }
                Ok(m)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::insert_batch;
    use crate::ledger::tests::row;
    use tollgate_domain::outcome::{TaskOutcome, ValueBasis};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("v.db")).unwrap();
        let rows: Vec<_> = (0..30).map(row).collect();
        let mut c = s.connect(Sync::Normal).unwrap();
        insert_batch(&mut c, rows.iter()).unwrap();
        (dir, s)
    }

    #[test]
    fn roi_totals_match_the_ledger() {
        let (_d, s) = store();
        s.record_outcome(
            &TaskOutcome {
                task: "task-1".into(),
                status: OutcomeStatus::Success,
                basis: ValueBasis::Usd {
                    value: Money::from_nanos(1_000_000),
                },
                labels: BTreeMap::new(),
            },
            "test",
            1,
        )
        .unwrap();
        let total_cost: Money = (0..30).map(|i| row(i).cost).sum();
        for g in [
            GroupBy::Agent,
            GroupBy::Model,
            GroupBy::Route,
            GroupBy::Team,
        ] {
            let r = s.roi_report(g, 0, i64::MAX).unwrap();
            assert_eq!(r.total.tasks, 5);
            assert_eq!(r.total.succeeded, 1);
            assert_eq!(r.total.open, 4);
            assert_eq!(r.total.cost, total_cost);
            assert_eq!(r.total.value, Money::from_nanos(1_000_000));
            let v: Money = r.groups.iter().map(|g| g.1.value).sum();
            assert_eq!(v, r.total.value, "{g:?}");
        }
        let tasks = s.task_summaries(0, i64::MAX, 10).unwrap();
        assert_eq!(tasks.len(), 5);
        let t1 = tasks.iter().find(|t| t.task == "task-1").unwrap();
        assert_eq!(t1.status, Some(OutcomeStatus::Success));
        assert_eq!(t1.calls, 6);
        assert_eq!(t1.agents.len(), 3);
        assert_eq!(t1.models, vec!["gpt-4o-2024-08-06".to_string()]);
        assert_eq!(t1.duration_ms, 25 + 1);
    }

    #[test]
    fn savings_are_baseline_minus_actual() {
        let (_d, s) = store();
        let r = s.savings_report(Some(GroupBy::Agent), 0, i64::MAX).unwrap();
        assert_eq!(r.total.len(), Mechanism::ALL.len());
        // Rows 0, 14, 28 were routed (enforce) against a heavy tier of 99 999 nanos.
        let by = |m: Mechanism| r.total.iter().find(|s| s.mechanism == m).copied().unwrap();
        let routing = by(Mechanism::Routing);
        assert_eq!(routing.mechanism, Mechanism::Routing);
        assert_eq!(routing.requests, 3);
        assert_eq!(
            routing.saved(),
            Money::from_nanos((99_999 - 1234) * 3 - 14 - 28)
        );
        // Rows 7 and 21 were shadowed: paid 1234 + i, the chosen tier costs 1000 + i. Row 7
        // is marked escalated, which only matters in enforce mode.
        let shadow = by(Mechanism::RoutingShadow);
        assert_eq!(shadow.mechanism, Mechanism::RoutingShadow);
        assert_eq!(shadow.requests, 2);
        assert_eq!(shadow.saved(), Money::from_nanos(234 * 2));
        let pc = by(Mechanism::PromptCache);
        assert_eq!(pc.mechanism, Mechanism::PromptCache);
        // Every test row saved 1300 − 1234 = 66 nanos on provider caching; the six rows
        // (i % 5 == 1) whose breakpoints the gateway injected count apart, three of them
        // (even i) missed.
        assert_eq!(pc.requests, 24);
        assert_eq!(pc.saved(), Money::from_nanos(66 * 24));
        let injected = by(Mechanism::PromptCacheInjected);
        assert_eq!((injected.requests, injected.misses), (6, 3));
        assert_eq!(injected.saved(), Money::from_nanos(66 * 6));
        // Six semantic hits (i % 5 == 0), each avoiding 777 nanos.
        let semantic = by(Mechanism::ResponseCacheSemantic);
        assert_eq!(semantic.requests, 6);
        assert_eq!(semantic.saved(), Money::from_nanos(777 * 6));
        // Ten pruned rows (i % 3 == 0), each 5,000 − (1234 + i) nanos.
        let pruning = by(Mechanism::Pruning);
        assert_eq!(pruning.requests, 10);
        let want: i64 = (0..30)
            .filter(|i| i % 3 == 0)
            .map(|i| 5_000 - 1234 - i)
            .sum();
        assert_eq!(pruning.saved(), Money::from_nanos(want));
        let line = |g: &(Option<String>, Vec<Savings>), m: Mechanism| {
            g.1.iter()
                .find(|s| s.mechanism == m)
                .map_or(0, |s| s.saved().nanos())
        };
        let by_group: i64 = r
            .groups
            .iter()
            .map(|g| line(g, Mechanism::PromptCache))
            .sum();
        assert_eq!(by_group, 66 * 24);
        let by_group: i64 = r.groups.iter().map(|g| line(g, Mechanism::Routing)).sum();
        assert_eq!(by_group, routing.saved().nanos());
        assert!(s.optional_table("no_such_panel", 10).unwrap().is_none());
        assert!(s.optional_table("budgets", 10).unwrap().is_some());
        assert_eq!(
            s.optional_table("task_outcomes", 10)
                .unwrap()
                .unwrap()
                .len(),
            0
        );
        let series = s.spend_series(GroupBy::Agent, 0, i64::MAX, 10).unwrap();
        let c: Money = series.iter().map(|p| p.cost).sum();
        assert_eq!(c, r.cost);
        let hourly = s.hourly_usage(0, i64::MAX).unwrap();
        let c: Money = hourly.iter().map(|h| h.cost).sum();
        assert_eq!(c, r.cost);
    }
}

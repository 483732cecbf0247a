//! Budgets set at run time (admin API, `tollgate budgets set`), and spend per scope and
//! period summed from the ledger: what `budgets show` prints and what rebuilds the
//! counters after a restart.

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::params;
use tollgate_domain::budget::{BudgetRule, Period, ScopeKind, ScopeSpec};
use tollgate_domain::money::Money;

/// The ledger column holding a scope kind's name (`None`: the org, every row).
pub fn ledger_column(kind: ScopeKind) -> Option<&'static str> {
    match kind {
        ScopeKind::Org => None,
        ScopeKind::Team => Some("team"),
        ScopeKind::Agent => Some("agent"),
        ScopeKind::User => Some("user"),
        ScopeKind::Key => Some("key_id"),
        ScopeKind::Task => Some("task"),
    }
}

impl SqliteStore {
    /// Create or replace the budget on `(rule.scope, rule.period)`.
    pub fn upsert_budget(&self, rule: &BudgetRule, now_ms: i64) -> Result<(), StoreError> {
        let conn = self.connect(Sync::Normal)?;
        conn.execute(
            "INSERT INTO budgets (scope, period, limit_nanos, hard, alert_at, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (scope, period) DO UPDATE SET limit_nanos = ?3, hard = ?4,
                 alert_at = ?5, updated_ms = ?6",
            params![
                rule.scope.to_string(),
                rule.period.as_str(),
                rule.limit.nanos(),
                rule.hard,
                serde_json::to_string(&rule.alert_at).unwrap_or_else(|_| "[]".into()),
                now_ms
            ],
        )?;
        Ok(())
    }

    /// Remove a run-time budget. `false` if there was none.
    pub fn delete_budget(&self, scope: &ScopeSpec, period: Period) -> Result<bool, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let n = conn.execute(
            "DELETE FROM budgets WHERE scope = ?1 AND period = ?2",
            params![scope.to_string(), period.as_str()],
        )?;
        Ok(n > 0)
    }

    /// Every run-time budget, in scope order. Rows this version cannot read are skipped.
    pub fn list_budgets(&self) -> Result<Vec<BudgetRule>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT scope, period, limit_nanos, hard, alert_at FROM budgets ORDER BY scope, period",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(scope, period, limit, hard, alert_at)| {
                Some(BudgetRule {
                    scope: ScopeSpec::parse(&scope).ok()?,
                    period: Period::parse(&period)?,
                    limit: Money::from_nanos(limit),
                    hard,
                    alert_at: serde_json::from_str(&alert_at).unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Ledger spend in `[since_ms, until_ms)` of the entities `spec` covers: one entry for
    /// a named scope or the org, one per entity for `kind:*`. Names are the scope's name
    /// (`org` for the org).
    pub fn spend_by_scope(
        &self,
        spec: &ScopeSpec,
        since_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Vec<(String, Money)>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let until = until_ms.unwrap_or(i64::MAX);
        let Some(col) = ledger_column(spec.kind) else {
            let total: Option<i64> = conn.query_row(
                "SELECT SUM(cost_nanos) FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2",
                params![since_ms, until],
                |r| r.get(0),
            )?;
            return Ok(vec![("org".into(), Money::from_nanos(total.unwrap_or(0)))]);
        };
        let rows = match &spec.name {
            Some(name) => {
                let total: Option<i64> = conn.query_row(
                    &format!(
                        "SELECT SUM(cost_nanos) FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 AND {col} = ?3"
                    ),
                    params![since_ms, until, name],
                    |r| r.get(0),
                )?;
                vec![(name.clone(), Money::from_nanos(total.unwrap_or(0)))]
            }
            None => {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {col}, SUM(cost_nanos) FROM ledger
                     WHERE ts_ms >= ?1 AND ts_ms < ?2 AND {col} IS NOT NULL GROUP BY {col}"
                ))?;
                stmt.query_map(params![since_ms, until], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Money::from_nanos(r.get::<_, i64>(1)?),
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::insert_batch;
    use crate::ledger::tests::row;

    #[test]
    fn budgets_round_trip_and_spend_sums_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("b.db")).unwrap();
        let rule = BudgetRule {
            scope: ScopeSpec::parse("team:team").unwrap(),
            period: Period::Day,
            limit: Money::from_nanos(5_000),
            hard: true,
            alert_at: vec![50, 100],
        };
        s.upsert_budget(&rule, 1).unwrap();
        let mut softer = rule.clone();
        softer.hard = false;
        s.upsert_budget(&softer, 2).unwrap();
        assert_eq!(s.list_budgets().unwrap(), vec![softer]);

        let rows: Vec<_> = (0..9).map(row).collect();
        let mut c = s.connect(Sync::Normal).unwrap();
        insert_batch(&mut c, rows.iter()).unwrap();
        let all: Money = rows.iter().map(|r| r.cost).sum();
        let org = s
            .spend_by_scope(&ScopeSpec::parse("org").unwrap(), 0, None)
            .unwrap();
        assert_eq!(org, vec![("org".to_string(), all)]);
        let team = s.spend_by_scope(&rule.scope, 0, None).unwrap();
        assert_eq!(team, vec![("team".to_string(), all)]);
        let agents = s
            .spend_by_scope(&ScopeSpec::parse("agent:*").unwrap(), 0, None)
            .unwrap();
        assert_eq!(agents.len(), 3);
        assert_eq!(agents.iter().map(|(_, m)| *m).sum::<Money>(), all);
        // The window bounds apply.
        let none = s
            .spend_by_scope(&rule.scope, 0, Some(1_700_000_000_000))
            .unwrap();
        assert_eq!(none[0].1, Money::ZERO);
        assert!(s.delete_budget(&rule.scope, Period::Day).unwrap());
        assert!(s.list_budgets().unwrap().is_empty());
    }
}

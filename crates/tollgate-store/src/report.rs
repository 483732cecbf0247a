//! Usage reports straight from the ledger.

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::params;
use tollgate_domain::money::Money;
use tollgate_domain::report::{GroupBy, UsageGroup, UsageReport};

/// The ledger column a dimension groups on.
pub(crate) fn column(g: GroupBy) -> &'static str {
    match g {
        GroupBy::Agent => "agent",
        GroupBy::Model => "upstream_model",
        GroupBy::Team => "team",
        GroupBy::Task => "task",
        GroupBy::Key => "key_id",
        GroupBy::User => "user",
        GroupBy::Deployment => "deployment",
        GroupBy::Upstream => "upstream",
        GroupBy::Route => "(requested_model || ' → ' || deployment)",
    }
}

const SUMS: &str = "COUNT(*),
    SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END),
    SUM(partial), SUM(1 - priced),
    SUM(input_tokens), SUM(cache_read_tokens),
    SUM(cache_write_5m_tokens + cache_write_1h_tokens),
    SUM(output_tokens), SUM(reasoning_tokens), SUM(cost_nanos)";

fn group_from(r: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<UsageGroup> {
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(offset + i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(UsageGroup {
        group: None,
        requests: n(0)?,
        errors: n(1)?,
        partial: n(2)?,
        unpriced: n(3)?,
        input_tokens: n(4)?,
        cached_tokens: n(5)?,
        cache_write_tokens: n(6)?,
        output_tokens: n(7)?,
        reasoning_tokens: n(8)?,
        cost: Money::from_nanos(r.get::<_, Option<i64>>(offset + 9)?.unwrap_or(0)),
    })
}

impl SqliteStore {
    /// Sum the ledger over `[since_ms, until_ms)`, grouped by `group_by` (or one total).
    /// Groups come most expensive first; the total is computed by the database over the
    /// same rows, so it always equals the sum of the groups.
    pub fn usage_report(
        &self,
        group_by: Option<GroupBy>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<UsageReport, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let total = conn.query_row(
            &format!("SELECT {SUMS} FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2"),
            params![since_ms, until_ms],
            |r| group_from(r, 0),
        )?;
        let mut groups = Vec::new();
        if let Some(g) = group_by {
            let col = column(g);
            let mut stmt = conn.prepare(&format!(
                "SELECT {col}, {SUMS} FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2
                 GROUP BY {col} ORDER BY SUM(cost_nanos) DESC, COUNT(*) DESC, {col}"
            ))?;
            groups = stmt
                .query_map(params![since_ms, until_ms], |r| {
                    let mut g = group_from(r, 1)?;
                    g.group = r.get(0)?;
                    Ok(g)
                })?
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(UsageReport {
            group_by,
            since_ms,
            until_ms,
            groups,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::insert_batch;
    use crate::ledger::tests::row;

    #[test]
    fn groups_sum_to_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("r.db")).unwrap();
        let rows: Vec<_> = (0..30).map(row).collect();
        let mut c = s.connect(Sync::Normal).unwrap();
        insert_batch(&mut c, rows.iter()).unwrap();
        let expected: Money = rows.iter().map(|r| r.cost).sum();
        for g in GroupBy::ALL {
            let rep = s.usage_report(Some(g), 0, i64::MAX).unwrap();
            assert_eq!(rep.total.cost, expected);
            assert_eq!(rep.total.requests, 30);
            let sum: Money = rep.groups.iter().map(|g| g.cost).sum();
            assert_eq!(sum, expected, "{g:?}");
            let req: u64 = rep.groups.iter().map(|g| g.requests).sum();
            assert_eq!(req, 30);
        }
        let by_agent = s.usage_report(Some(GroupBy::Agent), 0, i64::MAX).unwrap();
        assert_eq!(by_agent.groups.len(), 3);
        assert_eq!(by_agent.total.cached_tokens, 600);
        // Window bounds.
        let none = s.usage_report(None, 0, 1).unwrap();
        assert_eq!(none.total.requests, 0);
        assert_eq!(none.total.cost, Money::ZERO);
    }
}

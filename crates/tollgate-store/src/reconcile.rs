//! The ledger side of `tollgate reconcile`: spend per UTC day × upstream × deployment ×
//! upstream model × virtual key × price-table hash, with the tokens of each class, the
//! charged cost, and how many rows were cut short or had their tokens estimated.
//!
//! One plain query over the ledger's own columns (nothing re-priced), so another
//! backend can answer it with the same `GROUP BY`.

use crate::StoreError;
use crate::sqlite::{SqliteStore, Sync};
use rusqlite::params;
use tollgate_domain::money::Money;
use tollgate_domain::reconcile::{DAY_MS, Day, GatewaySpend};
use tollgate_domain::usage::Usage;

fn count(v: Option<i64>) -> u64 {
    v.unwrap_or(0).max(0) as u64
}

impl SqliteStore {
    /// Ledger rows in `[since_ms, until_ms)` summed per day × upstream × deployment ×
    /// model × key × price hash; only `upstreams` when given. Ordered by those keys.
    pub fn reconcile_spend(
        &self,
        since_ms: i64,
        until_ms: i64,
        upstreams: Option<&[String]>,
    ) -> Result<Vec<GatewaySpend>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let filter = upstreams.map(|u| serde_json::to_string(u).unwrap_or_else(|_| "[]".into()));
        let mut stmt = conn.prepare(
            "SELECT ts_ms / ?3 AS day, upstream, deployment, upstream_model, key_id, price_hash,
                    COUNT(*), SUM(partial), SUM(usage_source = 'estimated'), SUM(1 - priced),
                    SUM(input_tokens), SUM(cache_read_tokens), SUM(cache_write_5m_tokens),
                    SUM(cache_write_1h_tokens), SUM(output_tokens), SUM(reasoning_tokens),
                    SUM(cost_nanos)
             FROM ledger
             WHERE ts_ms >= ?1 AND ts_ms < ?2
               AND (?4 IS NULL OR upstream IN (SELECT value FROM json_each(?4)))
             GROUP BY day, upstream, deployment, upstream_model, key_id, price_hash
             ORDER BY day, upstream, deployment, upstream_model, key_id, price_hash",
        )?;
        let rows = stmt
            .query_map(params![since_ms, until_ms, DAY_MS, filter], |r| {
                Ok(GatewaySpend {
                    day: Day(r.get(0)?),
                    upstream: r.get(1)?,
                    deployment: r.get(2)?,
                    model: r.get(3)?,
                    key_id: r.get(4)?,
                    price_hash: r.get(5)?,
                    requests: count(r.get(6)?),
                    partial: count(r.get(7)?),
                    estimated: count(r.get(8)?),
                    unpriced: count(r.get(9)?),
                    usage: Usage {
                        input: count(r.get(10)?),
                        cache_read: count(r.get(11)?),
                        cache_write_5m: count(r.get(12)?),
                        cache_write_1h: count(r.get(13)?),
                        output: count(r.get(14)?),
                        reasoning: count(r.get(15)?),
                    },
                    cost: Money::from_nanos(r.get::<_, Option<i64>>(16)?.unwrap_or(0)),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Upstream names in the ledger over `[since_ms, until_ms)`.
    pub fn ledger_upstreams(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.connect(Sync::Normal)?;
        let mut stmt = conn.prepare(
            "SELECT DISTINCT upstream FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY upstream",
        )?;
        let rows = stmt
            .query_map(params![since_ms, until_ms], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tests::row;
    use crate::ledger::{Durability, LedgerConfig};
    use tollgate_domain::usage::UsageSource;

    #[test]
    fn sums_per_day_model_key_and_hash_through_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("r.db")).unwrap();
        let (ledger, writer) = store
            .start_ledger(&LedgerConfig {
                durability: Durability::Strict,
                ..LedgerConfig::default()
            })
            .unwrap();
        let day0 = 1_700_006_400_000; // 2023-11-15T00:00:00Z
        let mut rows = Vec::new();
        for i in 0..6 {
            let mut r = row(i);
            r.ts_ms = day0 + (i as i64) * 3_600_000 * 5; // 0h, 5h, ... 25h: rows 5 on day 2
            r.price_hash = if i == 2 { "new".into() } else { "old".into() };
            if i == 1 {
                r.partial = true;
                r.usage_source = UsageSource::Estimated;
            }
            if i == 3 {
                r.route.upstream = "bedrock".into();
            }
            rows.push(r);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for r in &rows {
                ledger.record(r.clone()).await.unwrap();
            }
        });
        drop(ledger);
        writer.join();

        let all = store.reconcile_spend(0, i64::MAX, None).unwrap();
        let cost: Money = all.iter().map(|s| s.cost).sum();
        assert_eq!(cost, rows.iter().map(|r| r.cost).sum());
        let d0 = Day::from_ms(day0);
        let first = all
            .iter()
            .find(|s| s.day == d0 && s.price_hash == "old" && s.upstream == "openai")
            .unwrap();
        // Rows 0, 1 and 4 (row 2 has another hash, row 3 another upstream, row 5 is the
        // next day).
        assert_eq!(first.requests, 3);
        assert_eq!((first.partial, first.estimated), (1, 1));
        assert_eq!(first.usage.input, 300);
        assert_eq!(first.usage.cache_read, 60);
        assert_eq!(first.usage.reasoning, 30);
        assert_eq!(first.model, "gpt-4o-2024-08-06");
        assert_eq!(first.key_id.as_deref(), Some("k"));
        assert!(all.iter().any(|s| s.day == Day(d0.0 + 1)));

        let only = store
            .reconcile_spend(0, i64::MAX, Some(&["bedrock".to_string()]))
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].requests, 1);
        assert_eq!(
            store.ledger_upstreams(0, i64::MAX).unwrap(),
            vec!["bedrock".to_string(), "openai".to_string()]
        );
        assert!(store.reconcile_spend(0, 1, None).unwrap().is_empty());
    }
}

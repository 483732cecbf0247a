//! The SQLite file: opening connections with the right pragmas, and migrations.

use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit a released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: ledger, keys, price tables.
    r#"
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        key_id TEXT,
        user TEXT,
        team TEXT,
        agent TEXT,
        task TEXT,
        tags TEXT,
        requested_model TEXT NOT NULL,
        deployment TEXT NOT NULL,
        upstream TEXT NOT NULL,
        upstream_model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        cache_write_5m_tokens INTEGER NOT NULL,
        cache_write_1h_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        usage_source TEXT NOT NULL,
        cost_nanos INTEGER NOT NULL,
        priced INTEGER NOT NULL,
        price_hash TEXT NOT NULL,
        latency_us INTEGER NOT NULL,
        ttft_us INTEGER,
        status INTEGER NOT NULL,
        error_code TEXT,
        stream INTEGER NOT NULL,
        partial INTEGER NOT NULL
    );
    CREATE INDEX ledger_ts ON ledger (ts_ms);
    CREATE UNIQUE INDEX ledger_request_id ON ledger (request_id);
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT,
        team TEXT,
        agent TEXT,
        user TEXT,
        models TEXT,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    CREATE TABLE price_tables (
        hash TEXT PRIMARY KEY,
        sources TEXT NOT NULL,
        models INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL
    );
    "#,
    // 2: the key secret sealed (AES-256-GCM under a key derived from the master key), so
    // SigV4 signatures (Bedrock clients) can be verified; NULL for keys created without
    // a master key, which then work as bearer tokens only.
    r#"
    ALTER TABLE keys ADD COLUMN sealed_secret TEXT;
    "#,
    // 3: value per dollar (issue 6): what a request would have cost without provider
    // prompt caching (NULL for rows metered before: read as their cost), task outcomes
    // and their history, and an index for per-task queries.
    r#"
    ALTER TABLE ledger ADD COLUMN cost_without_cache_nanos INTEGER;
    CREATE INDEX ledger_task ON ledger (task, ts_ms);
    CREATE TABLE task_outcomes (
        task TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        value_nanos INTEGER NOT NULL,
        value_basis TEXT NOT NULL,
        labels TEXT NOT NULL,
        revision INTEGER NOT NULL,
        recorded_ms INTEGER NOT NULL,
        recorded_by TEXT NOT NULL
    );
    CREATE TABLE task_outcome_history (
        id INTEGER PRIMARY KEY,
        task TEXT NOT NULL,
        revision INTEGER NOT NULL,
        status TEXT NOT NULL,
        value_nanos INTEGER NOT NULL,
        value_basis TEXT NOT NULL,
        labels TEXT NOT NULL,
        recorded_ms INTEGER NOT NULL,
        recorded_by TEXT NOT NULL
    );
    CREATE INDEX task_outcome_history_task ON task_outcome_history (task, revision);
    "#,
    // 4: budgets set at run time, the runaway-agent guard's halted tasks and incidents,
    //    alert deliveries.
    r#"
    CREATE TABLE budgets (
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        limit_nanos INTEGER NOT NULL,
        hard INTEGER NOT NULL,
        alert_at TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, period)
    );
    CREATE TABLE halted_tasks (
        task TEXT PRIMARY KEY,
        agent TEXT,
        status TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        incident_id INTEGER,
        halted_ms INTEGER NOT NULL,
        released_ms INTEGER
    );
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        task TEXT NOT NULL,
        agent TEXT,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        evidence TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        request_id TEXT
    );
    CREATE INDEX incidents_task ON incidents (task);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        text TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        delivered_ms INTEGER
    );
    CREATE INDEX alerts_subject ON alerts (subject);
    "#,
    // 5: tiered routing (issue 5): per row, the routed name, the tier chosen, its
    //    deployment, the router's score, the mode, what the heaviest tier and the chosen
    //    tier would have cost for the row's token counts, and the escalation reason (NULL
    //    for rows that did not go through a route); opt-in feature samples for training
    //    on the gateway's own traffic (hashed feature vectors, never prompt text).
    r#"
    ALTER TABLE ledger ADD COLUMN route_name TEXT;
    ALTER TABLE ledger ADD COLUMN route_tier INTEGER;
    ALTER TABLE ledger ADD COLUMN route_deployment TEXT;
    ALTER TABLE ledger ADD COLUMN route_score REAL;
    ALTER TABLE ledger ADD COLUMN route_mode TEXT;
    ALTER TABLE ledger ADD COLUMN route_heavy_cost_nanos INTEGER;
    ALTER TABLE ledger ADD COLUMN route_tier_cost_nanos INTEGER;
    ALTER TABLE ledger ADD COLUMN route_escalated TEXT;
    CREATE TABLE route_samples (
        request_id TEXT PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        route_name TEXT NOT NULL,
        task TEXT,
        model_hash TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        features TEXT NOT NULL
    );
    CREATE INDEX route_samples_task ON route_samples (task);
    "#,
    // 6: every row the ledger writer writes carries its writer's stream id (one per
    //    writer start, named after the replica) and a sequence number within it, so a
    //    missing row shows as a gap; a row skipped because its request id was already
    //    written keeps its number in `ledger_duplicates`, so it is not a gap. NULL for
    //    rows inserted outside the writer (and rows written before).
    r#"
    ALTER TABLE ledger ADD COLUMN replica_id TEXT;
    ALTER TABLE ledger ADD COLUMN replica_seq INTEGER;
    CREATE TABLE ledger_duplicates (
        replica_id TEXT NOT NULL,
        replica_seq INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (replica_id, replica_seq)
    );
    "#,
    // 7: what the gateway's caching and pruning did for a row.
    r#"
    ALTER TABLE ledger ADD COLUMN cache_kind TEXT;
    ALTER TABLE ledger ADD COLUMN cache_similarity_ppm INTEGER;
    ALTER TABLE ledger ADD COLUMN cache_avoided_nanos INTEGER;
    ALTER TABLE ledger ADD COLUMN cache_expected_write INTEGER;
    ALTER TABLE ledger ADD COLUMN cache_expected_read INTEGER;
    ALTER TABLE ledger ADD COLUMN cache_miss INTEGER;
    ALTER TABLE ledger ADD COLUMN prune_tokens_before INTEGER;
    ALTER TABLE ledger ADD COLUMN prune_tokens_after INTEGER;
    ALTER TABLE ledger ADD COLUMN prune_cost_without_nanos INTEGER;
    "#,
    // 8: usage an upstream reported past what the request could use (issue 18). Rows
    // written before with figures past the storage caps (10^10 tokens, 10^14 nano-USD:
    // `tollgate_domain::ledger::STORED_*_MAX`) are flagged and clamped, so no `SUM`
    // over the ledger can overflow.
    r#"
    ALTER TABLE ledger ADD COLUMN usage_suspect INTEGER;
    UPDATE ledger SET usage_suspect = 1
    WHERE MAX(input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
              output_tokens, reasoning_tokens) > 10000000000
       OR MAX(ABS(cost_nanos), ABS(COALESCE(cost_without_cache_nanos, 0)),
              ABS(COALESCE(route_heavy_cost_nanos, 0)), ABS(COALESCE(route_tier_cost_nanos, 0)),
              ABS(COALESCE(cache_avoided_nanos, 0)), ABS(COALESCE(prune_cost_without_nanos, 0)))
          > 100000000000000;
    UPDATE ledger SET
        input_tokens = MIN(input_tokens, 10000000000),
        cache_read_tokens = MIN(cache_read_tokens, 10000000000),
        cache_write_5m_tokens = MIN(cache_write_5m_tokens, 10000000000),
        cache_write_1h_tokens = MIN(cache_write_1h_tokens, 10000000000),
        output_tokens = MIN(output_tokens, 10000000000),
        reasoning_tokens = MIN(reasoning_tokens, 10000000000),
        cost_nanos = MAX(MIN(cost_nanos, 100000000000000), -100000000000000),
        cost_without_cache_nanos = MAX(MIN(cost_without_cache_nanos, 100000000000000), -100000000000000),
        route_heavy_cost_nanos = MAX(MIN(route_heavy_cost_nanos, 100000000000000), -100000000000000),
        route_tier_cost_nanos = MAX(MIN(route_tier_cost_nanos, 100000000000000), -100000000000000),
        cache_avoided_nanos = MAX(MIN(cache_avoided_nanos, 100000000000000), -100000000000000),
        prune_cost_without_nanos = MAX(MIN(prune_cost_without_nanos, 100000000000000), -100000000000000)
    WHERE usage_suspect = 1;
    "#,
    // 9: what a what-if replay (issue 15) needs to re-price a row exactly and to
    // simulate prompt caching: the service tier the provider reported, and the prompt's
    // stable prefix (tools and system prompt) as a hash and a token count, never text.
    r#"
    ALTER TABLE ledger ADD COLUMN service_tier TEXT;
    ALTER TABLE ledger ADD COLUMN prefix_hash TEXT;
    ALTER TABLE ledger ADD COLUMN prefix_tokens INTEGER;
    "#,
];

/// The schema version this build writes (the number of migrations).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A SQLite database file holding the ledger, keys and price-table registry.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
}

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a process crash (it is in the
    /// OS page cache); a power cut can lose the last commits.
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it returns.
    Full,
}

impl SqliteStore {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let store = SqliteStore {
            path: path.as_ref().to_path_buf(),
        };
        if let Some(dir) = store.path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let mut conn = store.connect(Sync::Normal)?;
        migrate(&mut conn)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new connection with tollgate's pragmas.
    pub fn connect(&self, sync: Sync) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Sync::Normal => "NORMAL",
                Sync::Full => "FULL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_and_migrates_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/t.db");
        SqliteStore::open(&p).unwrap();
        let s = SqliteStore::open(&p).unwrap();
        let c = s.connect(Sync::Normal).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// A ledger written before migration 8 with a saturated row (what an upstream
    /// reporting 10^17 tokens left): opening it flags and clamps that row, and the sums
    /// over the whole ledger work again.
    #[test]
    fn migration_8_repairs_a_saturated_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        {
            let store = SqliteStore { path: p.clone() };
            let mut c = store.connect(Sync::Normal).unwrap();
            let tx = c.transaction().unwrap();
            for (i, sql) in MIGRATIONS.iter().enumerate().take(7) {
                tx.execute_batch(sql).unwrap();
                tx.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
            tx.commit().unwrap();
            for (id, tokens, cost) in [("bad", i64::MAX, i64::MAX), ("ok", 10, 1_000)] {
                c.execute(
                    "INSERT INTO ledger (ts_ms, request_id, endpoint, requested_model, deployment,
                     upstream, upstream_model, input_tokens, cache_read_tokens, cache_write_5m_tokens,
                     cache_write_1h_tokens, output_tokens, reasoning_tokens, usage_source, cost_nanos,
                     priced, price_hash, latency_us, status, stream, partial, cost_without_cache_nanos)
                     VALUES (1, ?1, 'chat_completions', 'm', 'm', 'up', 'm', 10, 0, 0, 0, ?2, 0,
                     'reported', ?3, 1, '', 0, 200, 0, 0, ?3)",
                    rusqlite::params![id, tokens, cost],
                )
                .unwrap();
            }
            let sum = c.query_row("SELECT SUM(cost_nanos) FROM ledger", [], |r| {
                r.get::<_, i64>(0)
            });
            assert!(sum.is_err(), "the old ledger's sum overflows: {sum:?}");
        }
        let store = SqliteStore::open(&p).unwrap();
        let bad = store.ledger_row("bad").unwrap().unwrap();
        assert!(bad.usage_suspect);
        assert_eq!(bad.usage.output, tollgate_domain::ledger::STORED_TOKENS_MAX);
        assert_eq!(bad.cost.nanos(), tollgate_domain::ledger::STORED_NANOS_MAX);
        assert!(!store.ledger_row("ok").unwrap().unwrap().usage_suspect);
        let rep = store.usage_report(None, 0, i64::MAX).unwrap();
        assert_eq!(
            rep.total.cost.nanos(),
            tollgate_domain::ledger::STORED_NANOS_MAX + 1_000
        );
    }
}

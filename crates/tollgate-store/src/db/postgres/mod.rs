//! PostgreSQL: one ledger, one set of keys, budgets and tasks for every replica.
//!
//! # Layout
//! - this file: [`PostgresStore`] (open, migrate, partitions, retention) and the small
//!   connection pool the queries use.
//! - `schema`: migrations, numbered as SQLite's.
//! - `writer`: the ledger writer (its own thread and connection): batches loaded into a
//!   staging table (binary COPY or multi-row INSERT) and merged idempotently by request
//!   id; rows go to the local `spool` while PostgreSQL cannot take them, and are shipped
//!   from there when it is back.
//! - `queries`: every other trait, the SQLite queries ported (integers stay integers:
//!   each `SUM` is cast back to `BIGINT`, which fails loudly rather than round).
//!
//! # Partitions
//! The ledger is range-partitioned on `ts_ms` by calendar month (UTC), one table per
//! month named `ledger_yYYYYmMM`. Opening the store creates the current month and
//! `partitions_ahead` more; the writer creates the month of any row it sees (and the
//! one after) before inserting it, so a row is never refused for want of a partition.
//! Retention is [`PostgresStore::drop_months_before`]: a `DROP TABLE` per month, plus
//! the same window deleted from the request-id registry, duplicates and samples.

mod queries;
mod schema;
mod spool;
mod writer;

pub use spool::Spool;

use crate::StoreError;
use crate::config::{PostgresSettings, WriteMethod, valid_schema_name};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

type R<T> = Result<T, StoreError>;

/// How long connecting may take before the attempt counts as a failure.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a query waits for a free pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// A PostgreSQL-backed store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    schema: Option<String>,
    spool: PathBuf,
    replica: Option<String>,
    method: WriteMethod,
    partitions_ahead: u32,
    /// Ledger writer connections (each its own stream and spool file).
    writers: usize,
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("spool", &self.inner.spool)
            .field("method", &self.inner.method)
            .finish_non_exhaustive()
    }
}

/// Connect with `config`, driving the connection on the current runtime.
pub(crate) async fn connect(config: &tokio_postgres::Config) -> R<Client> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::PostgresTimeout("connecting timed out".into()))??;
    // The connection's driver, not a unit of the server's work: it ends when its client
    // is dropped (or the server goes away), so there is nothing for shutdown to drain.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgresql connection ended");
        }
    });
    Ok(client)
}

/// A few idle connections kept for queries, at most `size` in use at once.
struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A pooled connection; back to the pool when dropped, unless it broke.
pub(crate) struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Only `Drop` takes the client out.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    }
}

impl Pool {
    async fn get(&self) -> R<Conn<'_>> {
        let permit = tokio::time::timeout(POOL_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::PostgresTimeout("every pooled connection is busy".into()))?
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => connect(&self.config).await?,
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }
}

/// `(year, month)` as one number, for partition arithmetic.
pub(crate) type Month = i32;

/// The UTC month `ts_ms` falls in.
pub(crate) fn month_of(ts_ms: i64) -> R<Month> {
    let t = jiff::Timestamp::from_millisecond(ts_ms)
        .map_err(|e| StoreError::Invalid(format!("ledger time {ts_ms}: {e}")))?;
    let d = t.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    Ok(i32::from(d.year()) * 12 + i32::from(d.month()) - 1)
}

/// `[start, end)` of a month in Unix milliseconds.
pub(crate) fn month_bounds(m: Month) -> R<(i64, i64)> {
    let start = |m: Month| -> R<i64> {
        let (y, mo) = (m.div_euclid(12), m.rem_euclid(12) + 1);
        let y = i16::try_from(y).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let d = jiff::civil::Date::new(y, mo as i8, 1)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(d.to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map_err(|e| StoreError::Invalid(e.to_string()))?
            .timestamp()
            .as_millisecond())
    };
    Ok((start(m)?, start(m + 1)?))
}

/// `ledger_y2026m11`.
pub(crate) fn partition_name(m: Month) -> String {
    format!(
        "ledger_y{:04}m{:02}",
        m.div_euclid(12),
        m.rem_euclid(12) + 1
    )
}

fn parse_partition_name(name: &str) -> Option<Month> {
    let rest = name.strip_prefix("ledger_y")?;
    let (y, m) = rest.split_once('m')?;
    let (y, m): (i32, i32) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then_some(y * 12 + m - 1)
}

/// Create the monthly partitions `months` (those missing), under a lock so replicas
/// creating the same month at once do not collide.
pub(crate) async fn create_partitions(client: &mut Client, months: &[Month]) -> R<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('tollgate:partitions:' || COALESCE(current_schema(), ''), 0))",
        &[],
    )
    .await?;
    for &m in months {
        let (lo, hi) = month_bounds(m)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF ledger FOR VALUES FROM ({lo}) TO ({hi})",
            partition_name(m)
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl PostgresStore {
    /// Connect, create the schema if configured, migrate, and create this month's
    /// partition and `partitions_ahead` more.
    pub async fn open(settings: &PostgresSettings) -> R<PostgresStore> {
        let mut config: tokio_postgres::Config = settings.url.expose_secret().parse()?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("tollgate");
        }
        if let Some(schema) = &settings.schema {
            if !valid_schema_name(schema) {
                return Err(StoreError::Invalid(format!(
                    "schema name {schema:?} is not lower-case letters, digits and _"
                )));
            }
            config.options(format!("-c search_path={schema}"));
        }
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool: Pool {
                    config: config.clone(),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(settings.pool_size.max(1))),
                },
                config,
                schema: settings.schema.clone(),
                spool: settings.spool.clone(),
                replica: settings.replica.clone(),
                method: settings.write_method,
                partitions_ahead: settings.partitions_ahead,
                writers: settings.writers,
            }),
        };
        store.migrate().await?;
        store.create_months_ahead(now_ms()).await?;
        Ok(store)
    }

    pub(crate) async fn conn(&self) -> R<Conn<'_>> {
        self.inner.pool.get().await
    }

    /// The schema this store's tables live in (`None`: the connection's default).
    pub fn schema(&self) -> Option<&str> {
        self.inner.schema.as_deref()
    }

    /// The local spool of this store's ledger writer.
    pub fn spool_path(&self) -> &std::path::Path {
        &self.inner.spool
    }

    /// Apply pending migrations in one transaction, under a lock (replicas starting
    /// together migrate once). Refuses a database migrated by a newer tollgate.
    pub async fn migrate(&self) -> R<i64> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let lock_name = format!(
            "tollgate:migrate:{}",
            self.inner.schema.as_deref().unwrap_or("")
        );
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock_name],
        )
        .await?;
        if let Some(schema) = &self.inner.schema {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS tollgate_schema_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_ms BIGINT NOT NULL)",
        )
        .await?;
        let found: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM tollgate_schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        let known = schema::MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO tollgate_schema_migrations (version, applied_ms) VALUES ($1, $2)",
                &[&(i as i64 + 1), &now_ms()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(known)
    }

    /// The version recorded in the database.
    pub async fn schema_version(&self) -> R<i64> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT COALESCE(MAX(version), 0) FROM tollgate_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?)
    }

    /// Create the partitions of the month of `now_ms` and the `partitions_ahead` after
    /// it (the writer also creates any month it meets). Run at open; safe to run again.
    pub async fn create_months_ahead(&self, now_ms: i64) -> R<()> {
        let m = month_of(now_ms)?;
        let months: Vec<Month> = (0..=self.inner.partitions_ahead as Month)
            .map(|k| m + k)
            .collect();
        let mut c = self.conn().await?;
        create_partitions(&mut c, &months).await
    }

    /// Create the monthly partitions covering `[since_ms, until_ms]` (a bulk load or an
    /// import of old rows; the writer does this by itself for the rows it writes).
    pub async fn create_months_between(&self, since_ms: i64, until_ms: i64) -> R<()> {
        let months: Vec<Month> = (month_of(since_ms)?..=month_of(until_ms)?).collect();
        let mut c = self.conn().await?;
        create_partitions(&mut c, &months).await
    }

    /// The ledger's monthly partitions, oldest first: name and `[start, end)` in ms.
    pub async fn partitions(&self) -> R<Vec<(String, i64, i64)>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'ledger'::regclass",
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let name: String = r.try_get(0)?;
            if let Some(m) = parse_partition_name(&name) {
                let (lo, hi) = month_bounds(m)?;
                out.push((name, lo, hi));
            }
        }
        out.sort_by_key(|p| p.1);
        Ok(out)
    }

    /// Retention: drop every monthly partition that ends at or before `cutoff_ms`, and
    /// the same months' request ids, duplicate records and routing samples. Returns the
    /// partitions dropped. A row that arrives later for a dropped month (a spool shipped
    /// very late) recreates its month.
    pub async fn drop_months_before(&self, cutoff_ms: i64) -> R<Vec<String>> {
        let parts = self.partitions().await?;
        let mut dropped = Vec::new();
        let mut c = self.conn().await?;
        for (name, lo, hi) in parts.into_iter().filter(|p| p.2 <= cutoff_ms) {
            let tx = c.transaction().await?;
            tx.batch_execute(&format!("DROP TABLE {name}")).await?;
            for table in ["ledger_ids", "ledger_duplicates", "route_samples"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE ts_ms >= $1 AND ts_ms < $2"),
                    &[&lo, &hi],
                )
                .await?;
            }
            tx.commit().await?;
            dropped.push(name);
        }
        Ok(dropped)
    }

    /// Drop this store's schema and everything in it (tests and benchmarks that made
    /// their own schema). Refuses without a configured schema.
    pub async fn drop_schema(&self) -> R<()> {
        let Some(schema) = &self.inner.schema else {
            return Err(StoreError::Invalid(
                "no schema configured: refusing to drop the default one".into(),
            ));
        };
        let c = self.conn().await?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
impl PostgresStore {
    /// This store, except that its ledger writer dials a port where nothing listens
    /// (PostgreSQL "down" without disturbing the server other tests use).
    pub(crate) fn with_unreachable_writer(&self) -> PostgresStore {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(1)
            .user("postgres")
            .dbname("unreachable")
            .connect_timeout(CONNECT_TIMEOUT);
        let i = &self.inner;
        PostgresStore {
            inner: Arc::new(Inner {
                pool: Pool {
                    config: i.pool.config.clone(),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(2)),
                },
                config,
                schema: i.schema.clone(),
                spool: i.spool.clone(),
                replica: i.replica.clone(),
                method: i.method,
                partitions_ahead: i.partitions_ahead,
                writers: i.writers,
            }),
        }
    }

    /// This store with `n` ledger writers (and, `down`, writers that cannot connect).
    pub(crate) fn with_writers(&self, n: usize, down: bool) -> PostgresStore {
        let base = if down {
            self.with_unreachable_writer()
        } else {
            self.clone()
        };
        let i = &base.inner;
        PostgresStore {
            inner: Arc::new(Inner {
                pool: Pool {
                    config: i.pool.config.clone(),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(2)),
                },
                config: i.config.clone(),
                schema: i.schema.clone(),
                spool: i.spool.clone(),
                replica: i.replica.clone(),
                method: i.method,
                partitions_ahead: i.partitions_ahead,
                writers: n,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_their_bounds() {
        // 2025-11-15 UTC.
        let m = month_of(1_763_200_000_000).unwrap();
        assert_eq!(partition_name(m), "ledger_y2025m11");
        let (lo, hi) = month_bounds(m).unwrap();
        assert_eq!((lo, hi), (1_761_955_200_000, 1_764_547_200_000));
        assert_eq!(month_of(lo).unwrap(), m);
        assert_eq!(month_of(hi - 1).unwrap(), m);
        assert_eq!(month_of(hi).unwrap(), m + 1);
        // December rolls into January.
        let dec = 2025 * 12 + 11;
        assert_eq!(partition_name(dec + 1), "ledger_y2026m01");
        assert_eq!(
            month_bounds(dec).unwrap().1,
            month_bounds(dec + 1).unwrap().0
        );
        assert_eq!(parse_partition_name("ledger_y2026m01"), Some(dec + 1));
        assert_eq!(parse_partition_name("ledger_ids"), None);
    }
}

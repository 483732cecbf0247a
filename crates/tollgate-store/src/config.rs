//! `[store]`: which backend holds the ledger, keys, budgets and tasks.
//!
//! ```toml
//! [store]
//! kind = "postgres"                 # or "sqlite" (default: the `[ledger] path` file)
//! url_env = "TOLLGATE_POSTGRES_URL" # the variable holding the URL (never the file)
//! # schema = "tollgate"             # default: the URL's search_path (public)
//! # spool = "tollgate-ledger.spool" # where rows wait while PostgreSQL is down
//! # replica = "gw-1"                # names this replica's ledger streams
//! # write_method = "copy"           # or "insert" (multi-row INSERT); see BENCHMARKS.md
//! # pool_size = 8                   # connections for queries (the writers have their own)
//! # writers = 2                     # ledger writer connections committing in turn
//! # partitions_ahead = 2            # monthly ledger partitions created in advance
//! ```
//!
//! Two types, as for every section: [`RawStore`] is what the file says (the server
//! embeds it as `RawConfig::store`), [`StoreSettings`] what was validated.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The variable holding the PostgreSQL URL unless `url_env` names another.
pub const DEFAULT_URL_ENV: &str = "TOLLGATE_POSTGRES_URL";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub url_env: Option<String>,
    pub schema: Option<String>,
    pub spool: Option<String>,
    pub replica: Option<String>,
    pub write_method: Option<String>,
    pub pool_size: Option<u32>,
    pub partitions_ahead: Option<u32>,
    pub writers: Option<u32>,
}

/// How the PostgreSQL ledger writer loads a batch into its staging table (the merge into
/// the ledger is the same SQL either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    /// `COPY ... FROM STDIN (FORMAT binary)`.
    #[default]
    Copy,
    /// Multi-row `INSERT ... VALUES (...), (...)`, up to 1,000 rows per statement.
    Insert,
}

impl WriteMethod {
    pub fn parse(s: &str) -> Option<WriteMethod> {
        match s {
            "copy" => Some(WriteMethod::Copy),
            "insert" => Some(WriteMethod::Insert),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Copy => "copy",
            WriteMethod::Insert => "insert",
        }
    }
}

/// A validated `[store]` section.
#[derive(Debug)]
pub enum StoreSettings {
    /// The embedded SQLite file.
    Sqlite {
        path: PathBuf,
    },
    Postgres(PostgresSettings),
}

#[derive(Debug)]
pub struct PostgresSettings {
    /// `postgres://user@host:port/db` (key=value connection strings work too).
    pub url: SecretString,
    /// Tables live in this schema (created if missing); `None`: the connection's default.
    pub schema: Option<String>,
    /// The local append-only file rows go to while PostgreSQL cannot take them.
    pub spool: PathBuf,
    pub replica: Option<String>,
    pub write_method: WriteMethod,
    pub pool_size: usize,
    /// Monthly ledger partitions kept created ahead of the current month.
    pub partitions_ahead: u32,
    /// Ledger writer connections: while one commits a batch, the next collects and
    /// sends the next batch (each has its own stream of sequence numbers and its own
    /// spool file: `spool`, `spool.1`, ...).
    pub writers: usize,
}

impl PostgresSettings {
    /// Settings for `url` with every default but one writer (tests, the benchmark).
    pub fn new(url: &str, spool: impl Into<PathBuf>) -> PostgresSettings {
        PostgresSettings {
            url: SecretString::from(url.to_string()),
            schema: None,
            spool: spool.into(),
            replica: None,
            write_method: WriteMethod::Copy,
            pool_size: 8,
            partitions_ahead: 2,
            // One writer stream (the config's default is 2).
            writers: 1,
        }
    }
}

/// A schema name tollgate will put in SQL: lower-case letters, digits and `_`, not
/// starting with a digit, at most 63 bytes (PostgreSQL's limit).
pub fn valid_schema_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl RawStore {
    /// Validate, pushing every problem onto `errs` (with its field path). `sqlite_path`
    /// is the `[ledger] path`: the SQLite file, and where the spool goes by default.
    pub fn validate(
        &self,
        sqlite_path: &Path,
        env: &HashMap<String, String>,
        errs: &mut Vec<String>,
    ) -> StoreSettings {
        match self.kind.as_deref() {
            None | Some("sqlite") => {
                for (field, set) in [
                    ("url_env", self.url_env.is_some()),
                    ("schema", self.schema.is_some()),
                    ("spool", self.spool.is_some()),
                    ("write_method", self.write_method.is_some()),
                    ("pool_size", self.pool_size.is_some()),
                    ("partitions_ahead", self.partitions_ahead.is_some()),
                    ("writers", self.writers.is_some()),
                ] {
                    if set {
                        errs.push(format!(
                            "store.{field}: only applies to kind = \"postgres\""
                        ));
                    }
                }
                StoreSettings::Sqlite {
                    path: sqlite_path.to_path_buf(),
                }
            }
            Some("postgres") => {
                let url_env = self.url_env.as_deref().unwrap_or(DEFAULT_URL_ENV);
                let url = match env.get(url_env).filter(|u| !u.is_empty()) {
                    Some(u) => {
                        if let Err(e) = u.parse::<tokio_postgres::Config>() {
                            errs.push(format!(
                                "store.url_env: ${url_env} is not a PostgreSQL URL: {e}"
                            ));
                        }
                        u.clone()
                    }
                    None => {
                        errs.push(format!(
                            "store.url_env: ${url_env} is not set (it must hold the PostgreSQL URL)"
                        ));
                        String::new()
                    }
                };
                if let Some(s) = &self.schema
                    && !valid_schema_name(s)
                {
                    errs.push(format!(
                        "store.schema: {s:?} must be lower-case letters, digits and _"
                    ));
                }
                let write_method = match self.write_method.as_deref() {
                    None => WriteMethod::Copy,
                    Some(m) => WriteMethod::parse(m).unwrap_or_else(|| {
                        errs.push(format!(
                            "store.write_method: {m:?} is not one of \"copy\", \"insert\""
                        ));
                        WriteMethod::Copy
                    }),
                };
                let pool_size = match self.pool_size {
                    Some(0) => {
                        errs.push("store.pool_size: must be at least 1".into());
                        1
                    }
                    Some(n) => n as usize,
                    None => 8,
                };
                let writers = match self.writers {
                    Some(n) if (1..=8).contains(&n) => n as usize,
                    Some(n) => {
                        errs.push(format!("store.writers: {n} must be between 1 and 8"));
                        n.clamp(1, 8) as usize
                    }
                    None => 2,
                };
                let spool = match &self.spool {
                    Some(s) => PathBuf::from(s),
                    None => sqlite_path.with_file_name("tollgate-ledger.spool"),
                };
                StoreSettings::Postgres(PostgresSettings {
                    url: SecretString::from(url),
                    schema: self.schema.clone(),
                    spool,
                    replica: self.replica.clone(),
                    write_method,
                    pool_size,
                    partitions_ahead: self.partitions_ahead.unwrap_or(2),
                    writers,
                })
            }
            Some(other) => {
                errs.push(format!(
                    "store.kind: {other:?} is not one of \"sqlite\", \"postgres\""
                ));
                StoreSettings::Sqlite {
                    path: sqlite_path.to_path_buf(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn raw(text: &str) -> RawStore {
        toml_like(text)
    }

    /// The few shapes the tests need, without a TOML dependency in this crate.
    fn toml_like(text: &str) -> RawStore {
        let mut r = RawStore::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "kind" => r.kind = Some(v),
                "url_env" => r.url_env = Some(v),
                "schema" => r.schema = Some(v),
                "write_method" => r.write_method = Some(v),
                "pool_size" => r.pool_size = Some(v.parse().unwrap()),
                other => panic!("{other}"),
            }
        }
        r
    }

    #[test]
    fn defaults_to_sqlite_and_reads_the_postgres_url_from_the_named_variable() {
        let db = Path::new("data/tollgate.db");
        let mut errs = Vec::new();
        let s = RawStore::default().validate(db, &HashMap::new(), &mut errs);
        assert!(errs.is_empty());
        assert!(matches!(s, StoreSettings::Sqlite { path } if path == db));

        let env = HashMap::from([("PG".to_string(), "postgres://u@h:5433/d".to_string())]);
        let s = raw("kind = \"postgres\"\nurl_env = \"PG\"\nwrite_method = \"insert\"")
            .validate(db, &env, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let StoreSettings::Postgres(p) = s else {
            panic!("not postgres")
        };
        assert_eq!(p.url.expose_secret(), "postgres://u@h:5433/d");
        assert_eq!(p.write_method, WriteMethod::Insert);
        assert_eq!(p.spool, PathBuf::from("data/tollgate-ledger.spool"));
        assert_eq!((p.pool_size, p.partitions_ahead), (8, 2));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut errs = Vec::new();
        raw("kind = \"postgres\"\nschema = \"Bad-Name\"\nwrite_method = \"bulk\"\npool_size = 0")
            .validate(Path::new("t.db"), &HashMap::new(), &mut errs);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("store.url_env: $TOLLGATE_POSTGRES_URL is not set"));
        assert!(errs[1].starts_with("store.schema"));
        assert!(errs[2].starts_with("store.write_method"));
        assert!(errs[3].starts_with("store.pool_size"));
        let mut errs = Vec::new();
        raw("kind = \"mysql\"").validate(Path::new("t.db"), &HashMap::new(), &mut errs);
        assert_eq!(errs.len(), 1);
        let mut errs = Vec::new();
        raw("schema = \"x\"").validate(Path::new("t.db"), &HashMap::new(), &mut errs);
        assert_eq!(errs, ["store.schema: only applies to kind = \"postgres\""]);
        assert!(valid_schema_name("tg_test_1") && !valid_schema_name("1x"));
    }
}

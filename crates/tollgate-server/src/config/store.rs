//! `[store]`: where the ledger and everything beside it live: the embedded SQLite file
//! (the default, `[ledger] path`) or a PostgreSQL database shared by several replicas
//! (URL from an environment variable). The section's types belong to the store crate,
//! which validates them; this file names the section beside the others.

use std::collections::HashMap;
use std::path::Path;

pub use tollgate_store::config::{RawStore, StoreSettings};

/// Validate `[store]`; `ledger_path` is `[ledger] path` (the SQLite file, and where a
/// PostgreSQL replica's spool goes by default).
pub fn validate(
    raw: &RawStore,
    ledger_path: &Path,
    env: &HashMap<String, String>,
    errs: &mut Vec<String>,
) -> StoreSettings {
    raw.validate(ledger_path, env, errs)
}

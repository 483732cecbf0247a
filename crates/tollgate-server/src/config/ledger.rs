//! `[ledger]`: the SQLite file, its durability and the writer's queue.

use serde::Deserialize;
use std::path::PathBuf;
use tollgate_store::Durability;

use super::positive;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub path: Option<String>,
    pub durability: Option<String>,
    pub channel_capacity: Option<u64>,
}

#[derive(Debug)]
pub struct LedgerSettings {
    pub path: PathBuf,
    pub durability: Durability,
    pub channel_capacity: usize,
}

/// Validate `[ledger]`.
pub fn validate(raw: &RawLedger, errs: &mut Vec<String>) -> LedgerSettings {
    let durability = match raw.durability.as_deref() {
        None => Durability::Batched,
        Some(d) => Durability::parse(d).unwrap_or_else(|| {
            errs.push(format!(
                "ledger.durability: {d:?} is not one of \"batched\", \"strict\""
            ));
            Durability::Batched
        }),
    };
    let channel_capacity = positive(
        errs,
        "ledger.channel_capacity",
        raw.channel_capacity,
        16_384,
    ) as usize;

    LedgerSettings {
        path: PathBuf::from(raw.path.as_deref().unwrap_or("tollgate.db")),
        durability,
        channel_capacity,
    }
}

//! `[routing]`: settings shared by every route (sample recording, how many
//! conversations stickiness remembers).

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Store each routed request's hashed feature vector (not its text) for training.
    pub record_samples: Option<bool>,
    /// How many conversations stickiness remembers (default 10 000).
    pub sticky_conversations: Option<u64>,
}

#[derive(Debug)]
pub struct RoutingSettings {
    pub record_samples: bool,
    pub sticky_conversations: usize,
}

/// Validate `[routing]`.
pub fn validate(raw: &RawRouting, errs: &mut Vec<String>) -> RoutingSettings {
    let sticky = match raw.sticky_conversations {
        Some(0) => {
            errs.push("routing.sticky_conversations: must be greater than zero".into());
            10_000
        }
        Some(n) if n > 10_000_000 => {
            errs.push("routing.sticky_conversations: at most 10 000 000".into());
            10_000
        }
        Some(n) => n as usize,
        None => 10_000,
    };
    RoutingSettings {
        record_samples: raw.record_samples.unwrap_or(false),
        sticky_conversations: sticky,
    }
}

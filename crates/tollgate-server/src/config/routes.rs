//! `[[routes]]` (with [`super::routing`] for `[routing]`): routed model names (`auto`, `support-auto`)
//! mapping to a ladder of deployments, light → heavy, with the policy that picks a tier.
//!
//! ```toml
//! [routing]
//! record_samples = false        # store hashed feature vectors for `router train --from-ledger`
//! sticky_conversations = 10000  # conversations remembered for stickiness (bounded)
//!
//! [[routes]]
//! name = "auto"
//! tiers = ["nova-lite", "nova-pro"]  # deployment names, light → heavy (≥ 2)
//! quality_target = 0.95              # or `threshold = 0.42`, or `thresholds = [...]` (one per tier boundary)
//! mode = "enforce"                   # or "shadow": decide and record, forward `default`
//! default = "nova-pro"               # shadow mode's deployment (default: the heaviest tier)
//! escalate = true                    # retry a failed light answer once on the next tier
//! sticky = true                      # keep a conversation on its tier (default true)
//! teams = ["support"]                # who may use it (empty lists: everyone)
//! agents = []
//! model = "router.bin"               # a router file of `tollgate router train` (default: built in)
//! ```
//!
//! A custom router file is read once, when the configuration is loaded; nothing is ever
//! downloaded.

use super::Deployment;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_domain::ledger::RouteMode;
use tollgate_domain::routing::{Router, TierPolicy};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub tiers: Vec<String>,
    pub quality_target: Option<f64>,
    /// Two tiers: heavy iff score ≥ `threshold` (shorthand for `thresholds = [t]`).
    pub threshold: Option<f64>,
    pub thresholds: Option<Vec<f64>>,
    pub mode: Option<String>,
    pub default: Option<String>,
    pub escalate: Option<bool>,
    pub sticky: Option<bool>,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub agents: Vec<String>,
    pub model: Option<String>,
}

/// A validated route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Light → heavy, at least two.
    pub tiers: Vec<Arc<Deployment>>,
    pub policy: TierPolicy,
    pub mode: RouteMode,
    /// The tier forwarded in shadow mode.
    pub default_tier: usize,
    pub escalate: bool,
    pub sticky: bool,
    pub teams: Vec<String>,
    pub agents: Vec<String>,
    pub router: Arc<Router>,
    /// Identifies the router's feature space in recorded samples (`embedded` or the
    /// file's FNV-1a hash).
    pub model_id: String,
}

impl Route {
    pub fn heaviest(&self) -> usize {
        self.tiers.len() - 1
    }

    /// Whether a caller with these labels may use the route (empty lists: everyone; else
    /// its team or its agent must be listed).
    pub fn allows(&self, team: Option<&str>, agent: Option<&str>) -> bool {
        if self.teams.is_empty() && self.agents.is_empty() {
            return true;
        }
        team.is_some_and(|t| self.teams.iter().any(|x| x == t))
            || agent.is_some_and(|a| self.agents.iter().any(|x| x == a))
    }
}

fn fnv_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Validate `[[routes]]` against the deployments. Every problem is pushed with its path.
pub fn validate(
    raw: &[RawRoute],
    deployments: &BTreeMap<String, Arc<Deployment>>,
    errs: &mut Vec<String>,
) -> BTreeMap<String, Arc<Route>> {
    let mut out = BTreeMap::new();
    for (i, r) in raw.iter().enumerate() {
        let at = format!("routes[{i}]");
        let before = errs.len();
        if r.name.is_empty() {
            errs.push(format!("{at}.name: must not be empty"));
        }
        if deployments.contains_key(&r.name) {
            errs.push(format!(
                "{at}.name: {:?} is also a deployment name; a routed name must be distinct",
                r.name
            ));
        }
        if out.contains_key(&r.name) {
            errs.push(format!("{at}.name: duplicate route {:?}", r.name));
        }
        if r.tiers.len() < 2 {
            errs.push(format!(
                "{at}.tiers: a route needs at least two tiers (light → heavy), got {}",
                r.tiers.len()
            ));
        }
        let mut tiers = Vec::new();
        for (j, t) in r.tiers.iter().enumerate() {
            match deployments.get(t) {
                Some(d) if d.price.is_none() => errs.push(format!(
                    "{at}.tiers[{j}]: deployment {t:?} has no price; routing compares tiers by price"
                )),
                Some(d) => tiers.push(d.clone()),
                None => errs.push(format!("{at}.tiers[{j}]: no deployment named {t:?}")),
            }
        }
        let mode = match r.mode.as_deref() {
            None => RouteMode::Enforce,
            Some(m) => RouteMode::parse(m).unwrap_or_else(|| {
                errs.push(format!("{at}.mode: {m:?} is not \"enforce\" or \"shadow\""));
                RouteMode::Enforce
            }),
        };
        let (router, model_id) = match &r.model {
            None => match Router::embedded() {
                Ok(rt) => (Arc::new(rt.clone()), "embedded".to_string()),
                Err(e) => {
                    errs.push(format!("{at}: the built-in router: {e}"));
                    continue;
                }
            },
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => match Router::from_bytes(&bytes) {
                    Ok(rt) => (Arc::new(rt), fnv_hex(&bytes)),
                    Err(e) => {
                        errs.push(format!("{at}.model ({path}): {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    errs.push(format!("{at}.model ({path}): {e}"));
                    continue;
                }
            },
        };
        let thresholds = match (r.threshold, &r.thresholds) {
            (Some(_), Some(_)) => {
                errs.push(format!("{at}: set `threshold` or `thresholds`, not both"));
                None
            }
            (Some(t), None) => Some(vec![t]),
            (None, t) => t.clone(),
        };
        let policy = match (r.quality_target, &thresholds) {
            (Some(_), Some(_)) => {
                errs.push(format!(
                    "{at}: set `quality_target` or `threshold(s)`, not both"
                ));
                None
            }
            (Some(q), None) => {
                if !(q > 0.0 && q <= 1.0) {
                    errs.push(format!(
                        "{at}.quality_target: {q} is not within (0, 1] (a share of the heavy tier's quality)"
                    ));
                    None
                } else if r.tiers.len() > 2 {
                    errs.push(format!(
                        "{at}.quality_target: the router's calibration resolves a light/heavy threshold; a ladder of {} tiers needs `thresholds` ({} of them)",
                        r.tiers.len(),
                        r.tiers.len() - 1
                    ));
                    None
                } else {
                    router
                        .policy_for_quality(q)
                        .map_err(|e| errs.push(format!("{at}.quality_target: {e}")))
                        .ok()
                }
            }
            (None, Some(t)) => {
                if r.tiers.len() >= 2 && t.len() != r.tiers.len() - 1 {
                    errs.push(format!(
                        "{at}.thresholds: {} tiers need {} threshold(s), got {}",
                        r.tiers.len(),
                        r.tiers.len() - 1,
                        t.len()
                    ));
                    None
                } else {
                    TierPolicy::new(t.clone())
                        .map_err(|e| errs.push(format!("{at}.thresholds: {e}")))
                        .ok()
                }
            }
            (None, None) => {
                if r.tiers.len() > 2 {
                    errs.push(format!(
                        "{at}: a ladder of {} tiers needs `thresholds`",
                        r.tiers.len()
                    ));
                    None
                } else {
                    Some(router.default_policy())
                }
            }
        };
        let default_tier = match &r.default {
            None => r.tiers.len().saturating_sub(1),
            Some(d) => match r.tiers.iter().position(|t| t == d) {
                Some(p) => p,
                None => {
                    errs.push(format!(
                        "{at}.default: {d:?} is not one of the route's tiers"
                    ));
                    0
                }
            },
        };
        if r.default.is_some() && mode == RouteMode::Enforce {
            errs.push(format!(
                "{at}.default: only used in shadow mode (mode = \"shadow\")"
            ));
        }
        for (field, names) in [("teams", &r.teams), ("agents", &r.agents)] {
            for (j, n) in names.iter().enumerate() {
                if n.trim().is_empty() {
                    errs.push(format!("{at}.{field}[{j}]: must not be empty"));
                }
            }
        }
        let Some(policy) = policy else { continue };
        if errs.len() > before {
            continue;
        }
        out.insert(
            r.name.clone(),
            Arc::new(Route {
                name: r.name.clone(),
                tiers,
                policy,
                mode,
                default_tier,
                escalate: r.escalate.unwrap_or(false),
                sticky: r.sticky.unwrap_or(true),
                teams: r.teams.clone(),
                agents: r.agents.clone(),
                router,
                model_id,
            }),
        );
    }
    out
}

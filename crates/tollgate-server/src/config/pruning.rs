//! `[pruning]`: token pruning of long conversation histories before they are sent.
//!
//! ```toml
//! [pruning]
//! enabled = true             # default false
//! trigger_tokens = 16000     # prune only prompts at least this long
//! ratio = 0.5                # prune to this share of the prompt ...
//! # target_tokens = 8000     # ... or to this many tokens (wins over ratio)
//! keep_last = 4              # the most recent messages are never touched
//! tool_keep_last = 2         # the most recent tool results are never cleared
//! tool_max_tokens = 2000     # cap per tool output (head, tail, the lines that matter)
//! strategies = ["dedupe", "clear_tool_results", "cap_tool_output", "select"]
//!
//! [[pruning.overrides]]      # per deployment, route, key or team (first match wins)
//! teams = ["research"]
//! enabled = false
//! ```
//!
//! Per request: `x-tollgate-prune: off` sends the request whole; `on` prunes it under the
//! request's policy even where pruning is not enabled.

use super::applies::Applies;
use serde::Deserialize;
use tollgate_domain::prune::{Policy, Strategies, Target};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPruning {
    pub enabled: Option<bool>,
    pub trigger_tokens: Option<u64>,
    pub target_tokens: Option<u64>,
    pub ratio: Option<f64>,
    pub keep_last: Option<usize>,
    pub tool_keep_last: Option<usize>,
    pub tool_max_tokens: Option<u64>,
    pub strategies: Option<Vec<String>>,
    #[serde(default)]
    pub overrides: Vec<RawPruningOverride>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPruningOverride {
    #[serde(default)]
    pub deployments: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    pub enabled: Option<bool>,
    pub trigger_tokens: Option<u64>,
    pub target_tokens: Option<u64>,
    pub ratio: Option<f64>,
    pub keep_last: Option<usize>,
    pub tool_keep_last: Option<usize>,
    pub tool_max_tokens: Option<u64>,
    pub strategies: Option<Vec<String>>,
}

/// What applies to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrunePolicy {
    pub enabled: bool,
    /// Prompts shorter than this (counted as admission counts them) are sent whole.
    pub trigger_tokens: u64,
    /// The domain policy; its target is a share of the prompt or a token count.
    pub policy: Policy,
}

/// An override's match and the fields it sets.
#[derive(Debug, Clone)]
pub struct PruningOverride {
    pub applies: Applies,
    pub enabled: Option<bool>,
    pub trigger_tokens: Option<u64>,
    pub target: Option<Target>,
    pub keep_last: Option<usize>,
    pub tool_keep_last: Option<usize>,
    pub tool_max_tokens: Option<u64>,
    pub strategies: Option<Strategies>,
}

/// `[pruning]` validated.
#[derive(Debug, Clone)]
pub struct PruningSettings {
    pub defaults: PrunePolicy,
    pub overrides: Vec<PruningOverride>,
}

impl Default for PruningSettings {
    fn default() -> PruningSettings {
        validate(&RawPruning::default(), &mut Vec::new())
    }
}

impl PruningSettings {
    /// The policy for a request: the first matching override, field by field over the
    /// section's values.
    pub fn policy(
        &self,
        deployment: &str,
        route: Option<&str>,
        key: &str,
        team: Option<&str>,
    ) -> PrunePolicy {
        let mut p = self.defaults;
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| o.applies.matches(deployment, route, key, team))
        {
            p.enabled = o.enabled.unwrap_or(p.enabled);
            p.trigger_tokens = o.trigger_tokens.unwrap_or(p.trigger_tokens);
            p.policy.target = o.target.unwrap_or(p.policy.target);
            p.policy.keep_last = o.keep_last.unwrap_or(p.policy.keep_last);
            p.policy.tool_keep_last = o.tool_keep_last.unwrap_or(p.policy.tool_keep_last);
            p.policy.tool_max_tokens = o.tool_max_tokens.unwrap_or(p.policy.tool_max_tokens);
            p.policy.strategies = o.strategies.unwrap_or(p.policy.strategies);
        }
        p
    }
}

fn target(
    errs: &mut Vec<String>,
    at: &str,
    tokens: Option<u64>,
    ratio: Option<f64>,
) -> Option<Target> {
    if let Some(r) = ratio
        && !(r > 0.0 && r <= 1.0)
    {
        errs.push(format!("{at}.ratio: {r} is not within (0, 1]"));
    }
    match (tokens, ratio) {
        (Some(0), _) => {
            errs.push(format!("{at}.target_tokens: must be greater than zero"));
            None
        }
        (Some(n), _) => Some(Target::Tokens(n)),
        (None, Some(r)) => Some(Target::Ratio(r.clamp(0.0, 1.0))),
        (None, None) => None,
    }
}

fn strategies(errs: &mut Vec<String>, at: &str, v: Option<&Vec<String>>) -> Option<Strategies> {
    let names = v?;
    match Strategies::parse(names.iter().map(String::as_str)) {
        Ok(s) => Some(s),
        Err(n) => {
            errs.push(format!(
                "{at}.strategies: {n:?} is not one of {}",
                Strategies::NAMES.join(", ")
            ));
            None
        }
    }
}

/// Validate `[pruning]`.
pub fn validate(raw: &RawPruning, errs: &mut Vec<String>) -> PruningSettings {
    let d = Policy::default();
    let defaults = PrunePolicy {
        enabled: raw.enabled.unwrap_or(false),
        trigger_tokens: raw.trigger_tokens.unwrap_or(16_000),
        policy: Policy {
            target: target(errs, "pruning", raw.target_tokens, raw.ratio).unwrap_or(d.target),
            keep_last: raw.keep_last.unwrap_or(d.keep_last),
            tool_keep_last: raw.tool_keep_last.unwrap_or(d.tool_keep_last),
            tool_max_tokens: raw.tool_max_tokens.unwrap_or(d.tool_max_tokens),
            strategies: strategies(errs, "pruning", raw.strategies.as_ref())
                .unwrap_or(d.strategies),
        },
    };
    let overrides = raw
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let at = format!("pruning.overrides[{i}]");
            let applies = Applies::new(&o.deployments, &o.routes, &o.keys, &o.teams);
            if applies.is_empty() {
                errs.push(format!(
                    "{at}: name at least one of deployments, routes, keys, teams"
                ));
            }
            PruningOverride {
                applies,
                enabled: o.enabled,
                trigger_tokens: o.trigger_tokens,
                target: target(errs, &at, o.target_tokens, o.ratio),
                keep_last: o.keep_last,
                tool_keep_last: o.tool_keep_last,
                tool_max_tokens: o.tool_max_tokens,
                strategies: strategies(errs, &at, o.strategies.as_ref()),
            }
        })
        .collect();
    PruningSettings {
        defaults,
        overrides,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_field_by_field_and_errors_name_their_field() {
        let raw: RawPruning = toml::from_str(
            r#"
            enabled = true
            trigger_tokens = 1000
            target_tokens = 500
            [[overrides]]
            teams = ["research"]
            ratio = 0.25
            strategies = ["dedupe"]
            "#,
        )
        .unwrap();
        let mut errs = Vec::new();
        let s = validate(&raw, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let p = s.policy("d", None, "k", None);
        assert!(p.enabled);
        assert_eq!(p.trigger_tokens, 1000);
        assert_eq!(p.policy.target, Target::Tokens(500));
        let r = s.policy("d", None, "k", Some("research"));
        assert_eq!(r.policy.target, Target::Ratio(0.25));
        assert!(r.policy.strategies.dedupe && !r.policy.strategies.select);
        assert_eq!(r.trigger_tokens, 1000);

        let bad: RawPruning = toml::from_str(
            "ratio = 1.5\nstrategies = [\"magic\"]\n[[overrides]]\nenabled = false\n",
        )
        .unwrap();
        let mut errs = Vec::new();
        validate(&bad, &mut errs);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("pruning.ratio"));
        assert!(errs[1].starts_with("pruning.strategies"));
        assert!(errs[2].starts_with("pruning.overrides[0]"));
    }

    #[test]
    fn off_by_default() {
        assert!(!PruningSettings::default().defaults.enabled);
    }
}

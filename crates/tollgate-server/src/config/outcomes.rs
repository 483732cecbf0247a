//! `[outcomes]`: default hourly rates that turn "minutes saved" into dollars, per agent
//! and per team over the default.

use serde::Deserialize;
use std::collections::BTreeMap;
use tollgate_domain::money::Money;

use super::usd::UsdText;

/// `[outcomes]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutcomes {
    /// Default USD per hour of human work, for outcomes given in minutes saved.
    pub hourly_rate_usd: Option<UsdText>,
    /// Per-agent rates (`support-bot = "35"`), over the team's and the default.
    #[serde(default)]
    pub agents: BTreeMap<String, UsdText>,
    /// Per-team rates, over the default.
    #[serde(default)]
    pub teams: BTreeMap<String, UsdText>,
}

/// `[outcomes]` validated.
#[derive(Debug, Clone, Default)]
pub struct OutcomeSettings {
    pub hourly_rate: Option<Money>,
    pub agents: BTreeMap<String, Money>,
    pub teams: BTreeMap<String, Money>,
}

impl OutcomeSettings {
    /// The hourly rate for a task of `agent` in `team`: agent's, else team's, else default.
    pub fn rate_for(&self, agent: Option<&str>, team: Option<&str>) -> Option<Money> {
        agent
            .and_then(|a| self.agents.get(a))
            .or_else(|| team.and_then(|t| self.teams.get(t)))
            .or(self.hourly_rate.as_ref())
            .copied()
    }
}

pub fn validate(raw: &RawOutcomes, errs: &mut Vec<String>) -> OutcomeSettings {
    let mut rate = |path: String, v: &UsdText| -> Option<Money> {
        match v.parse_signed() {
            Ok(m) if !m.is_negative() => Some(m),
            Ok(_) => {
                errs.push(format!("{path}: must not be negative"));
                None
            }
            Err(e) => {
                errs.push(format!("{path}: {e}"));
                None
            }
        }
    };
    let hourly_rate = raw
        .hourly_rate_usd
        .as_ref()
        .and_then(|v| rate("outcomes.hourly_rate_usd".into(), v));
    let agents = raw
        .agents
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), rate(format!("outcomes.agents.{k}"), v)?)))
        .collect();
    let teams = raw
        .teams
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), rate(format!("outcomes.teams.{k}"), v)?)))
        .collect();
    OutcomeSettings {
        hourly_rate,
        agents,
        teams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_by_agent_then_team_then_default() {
        let mut errs = Vec::new();
        let raw: RawOutcomes = toml::from_str(
            "hourly_rate_usd = 60\n[agents]\nbot = \"35\"\n[teams]\nresearch = 90.5\n",
        )
        .unwrap();
        let s = validate(&raw, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let usd = |s: &str| Money::parse_usd(s).unwrap();
        assert_eq!(s.rate_for(Some("bot"), Some("research")), Some(usd("35")));
        assert_eq!(s.rate_for(Some("x"), Some("research")), Some(usd("90.5")));
        assert_eq!(s.rate_for(None, None), Some(usd("60")));
        let bad: RawOutcomes = toml::from_str("hourly_rate_usd = \"-1\"").unwrap();
        validate(&bad, &mut errs);
        assert_eq!(errs.len(), 1);
    }
}

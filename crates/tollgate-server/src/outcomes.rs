//! Task outcomes over HTTP: `POST /v1/tasks/{task_id}/outcome`, and the `[outcomes]`
//! config (default hourly rates for minutes saved).
//!
//! Who may record: a virtual key, for tasks its owner spent on (or that have no calls
//! yet: an outcome may arrive before the last call's row is committed); a key bound to
//! an agent cannot record for another agent's task. The master key may record for any
//! task (finance corrections); its entries say `recorded_by: "master"`.

use crate::auth::{authenticate, bearer};
use crate::error::ApiError;
use crate::state::{Gateway, now_ms};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::{self, OutcomeInput, ValueBasis};
use tollgate_store::outcomes::{Recorded, StoredOutcome, TaskParty};

/// A USD amount written as a string (`"12.50"`, exact) or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UsdText {
    Text(String),
    Int(i64),
    Float(f64),
}

impl UsdText {
    pub fn parse(&self) -> Result<Money, String> {
        let text = match self {
            UsdText::Text(s) => s.clone(),
            UsdText::Int(i) => i.to_string(),
            UsdText::Float(f) => format!("{f}"),
        };
        Money::parse_usd(&text).map_err(|e| e.to_string())
    }
}

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

pub fn validate_config(raw: &RawOutcomes, errs: &mut Vec<String>) -> OutcomeSettings {
    let mut rate = |path: String, v: &UsdText| -> Option<Money> {
        match v.parse() {
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

/// The body of `POST /v1/tasks/{task_id}/outcome`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    pub status: String,
    pub value_usd: Option<UsdText>,
    pub minutes_saved: Option<u64>,
    pub hourly_rate_usd: Option<UsdText>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl OutcomeBody {
    pub fn input(&self) -> Result<OutcomeInput, ApiError> {
        let money = |field: &str, v: &Option<UsdText>| -> Result<Option<Money>, ApiError> {
            v.as_ref()
                .map(|v| {
                    v.parse().map_err(|m| ApiError::InvalidParam {
                        param: field.to_string(),
                        message: m,
                    })
                })
                .transpose()
        };
        Ok(OutcomeInput {
            status: self.status.clone(),
            value_usd: money("value_usd", &self.value_usd)?,
            minutes_saved: self.minutes_saved,
            hourly_rate: money("hourly_rate_usd", &self.hourly_rate_usd)?,
            labels: self.labels.clone(),
        })
    }
}

/// An outcome as JSON (the API's answer, `tollgate tasks`' JSON and the dashboard).
pub fn stored_json(o: &StoredOutcome) -> Value {
    let basis = match o.outcome.basis {
        ValueBasis::None => json!({"kind": "none"}),
        ValueBasis::Usd { value } => json!({"kind": "usd", "value_usd": value.to_string()}),
        ValueBasis::MinutesSaved {
            minutes,
            hourly_rate,
        } => json!({"kind": "minutes_saved", "minutes_saved": minutes,
                    "hourly_rate_usd": hourly_rate.to_string()}),
    };
    json!({
        "task": o.outcome.task,
        "status": o.outcome.status.as_str(),
        "value_usd": o.value.to_string(),
        "value_basis": basis,
        "labels": o.outcome.labels,
        "revision": o.revision,
        "recorded_at": crate::admin::iso(o.recorded_ms),
        "recorded_by": o.recorded_by,
    })
}

fn recorded_json(r: &Recorded) -> Value {
    let mut v = stored_json(&r.current);
    v["changed"] = Value::Bool(r.changed);
    if let Some(p) = &r.previous {
        v["previous"] = stored_json(p);
    }
    v
}

/// Whether a key may record an outcome for a task these parties spent on.
fn may_record(key: &tollgate_store::VirtualKey, parties: &[TaskParty]) -> bool {
    parties.iter().all(|p| match (&key.agent, &key.team) {
        (Some(a), _) => p.agent.as_deref() == Some(a.as_str()),
        (None, Some(t)) => p.team.as_deref() == Some(t.as_str()),
        (None, None) => p.key_id.as_deref() == Some(key.id.as_str()),
    })
}

/// `POST /v1/tasks/{task_id}/outcome`
pub async fn record(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(task): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // The master key first (constant-time check), then a virtual key.
    let key = if bearer(&headers).is_some() && gw.master.check(&headers).is_ok() {
        None
    } else {
        match authenticate(&gw.keys, &headers) {
            Ok(k) => Some(k),
            Err(e) => return e.into_response(None),
        }
    };
    let parsed: OutcomeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::InvalidParam {
                param: "body".into(),
                message: e.to_string(),
            }
            .into_response(None);
        }
    };
    let input = match parsed.input() {
        Ok(i) => i,
        Err(e) => return e.into_response(None),
    };
    let store = gw.store.clone();
    let t = task.clone();
    let parties = match crate::value::store_call(move || store.task_parties(&t)).await {
        Ok(p) => p,
        Err(e) => return e.into_response(None),
    };
    let (recorded_by, agent, team) = match &key {
        Some(k) => {
            if !may_record(k, &parties) {
                return ApiError::Forbidden(format!(
                    "task {task:?} has calls from another owner; this key cannot record its outcome"
                ))
                .into_response(None);
            }
            (format!("key:{}", k.id), k.agent.clone(), k.team.clone())
        }
        None => {
            let p = parties.first();
            (
                "master".to_string(),
                p.and_then(|p| p.agent.clone()),
                p.and_then(|p| p.team.clone()),
            )
        }
    };
    let default_rate = gw
        .config
        .load()
        .outcomes
        .rate_for(agent.as_deref(), team.as_deref());
    let outcome = match outcome::validate(&task, &input, default_rate) {
        Ok(o) => o,
        Err(e) => {
            return ApiError::InvalidParam {
                param: e.field().to_string(),
                message: e.to_string(),
            }
            .into_response(None);
        }
    };
    let store = gw.store.clone();
    let now = now_ms();
    match crate::value::store_call(move || store.record_outcome(&outcome, &recorded_by, now)).await
    {
        Ok(r) => {
            if r.changed {
                gw.telemetry.metrics.outcome(r.current.outcome.status);
            }
            let status = if r.changed && r.current.revision == 1 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(recorded_json(&r))).into_response()
        }
        Err(e) => e.into_response(None),
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
        let s = validate_config(&raw, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let usd = |s: &str| Money::parse_usd(s).unwrap();
        assert_eq!(s.rate_for(Some("bot"), Some("research")), Some(usd("35")));
        assert_eq!(s.rate_for(Some("x"), Some("research")), Some(usd("90.5")));
        assert_eq!(s.rate_for(None, None), Some(usd("60")));
        let bad: RawOutcomes = toml::from_str("hourly_rate_usd = \"-1\"").unwrap();
        validate_config(&bad, &mut errs);
        assert_eq!(errs.len(), 1);
    }
}

//! Task outcomes over HTTP: `POST /v1/tasks/{task_id}/outcome` (default hourly rates
//! for minutes saved come from `[outcomes]`).
//!
//! Who may record: a virtual key, for tasks its owner spent on (or that have no calls
//! yet: an outcome may arrive before the last call's row is committed); a key bound to
//! an agent cannot record for another agent's task. The master key may record for any
//! task (finance corrections); its entries say `recorded_by: "master"`.

use crate::auth::{authenticate, bearer};
use crate::clock::now_ms;
use crate::config::UsdText;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::views::recorded_json;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_domain::money::Money;
use tollgate_domain::outcome::{self, OutcomeInput};
use tollgate_store::OutcomeStore;
use tollgate_store::outcomes::TaskParty;

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
                    v.parse_signed().map_err(|m| ApiError::InvalidParam {
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
) -> Result<Response, ApiError> {
    // The master key first (constant-time check), then a virtual key.
    let key = if bearer(&headers).is_some() && gw.master.check(&headers).is_ok() {
        None
    } else {
        Some(authenticate(&gw.keys, &headers)?)
    };
    let parsed: OutcomeBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidParam {
            param: "body".into(),
            message: e.to_string(),
        })?;
    let input = parsed.input()?;
    let parties = gw.store.task_parties(&task).await?;
    let (recorded_by, agent, team) = match &key {
        Some(k) => {
            if !may_record(k, &parties) {
                return Err(ApiError::Forbidden(format!(
                    "task {task:?} has calls from another owner; this key cannot record its outcome"
                )));
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
    let outcome =
        outcome::validate(&task, &input, default_rate).map_err(|e| ApiError::InvalidParam {
            param: e.field().to_string(),
            message: e.to_string(),
        })?;
    let r = gw
        .store
        .record_outcome(&outcome, &recorded_by, now_ms())
        .await?;
    if r.changed {
        gw.telemetry.metrics.outcome(r.current.outcome.status);
    }
    let status = if r.changed && r.current.revision == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(recorded_json(&r))).into_response())
}

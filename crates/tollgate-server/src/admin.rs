//! The admin API (master key): usage reports, keys, single ledger rows.

use crate::error::ApiError;
use crate::state::{Gateway, now_ms};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tollgate_domain::report::{GroupBy, UsageGroup, UsageReport};
use tollgate_store::NewKey;

/// Parse a window start: a duration back from `now_ms` (`90s`, `15m`, `24h`, `7d`, `2w`),
/// an RFC 3339 timestamp, or Unix milliseconds.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Some(d) = parse_duration_ms(t) {
        return Ok(now_ms.saturating_sub(d));
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    Err(format!(
        "{text:?} is not a duration (24h, 7d, 30m), an RFC 3339 time or Unix milliseconds"
    ))
}

/// `90s`, `15m`, `24h`, `7d`, `2w` in milliseconds.
pub fn parse_duration_ms(t: &str) -> Option<i64> {
    let unit = t.chars().last()?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    if n < 0 {
        return None;
    }
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

pub fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn group_json(g: &UsageGroup) -> Value {
    json!({
        "group": g.group,
        "requests": g.requests,
        "errors": g.errors,
        "partial": g.partial,
        "unpriced": g.unpriced,
        "input_tokens": g.input_tokens,
        "cached_tokens": g.cached_tokens,
        "cache_write_tokens": g.cache_write_tokens,
        "output_tokens": g.output_tokens,
        "reasoning_tokens": g.reasoning_tokens,
        "cost_usd": g.cost.to_string(),
        "cost_nanos": g.cost.nanos(),
    })
}

/// A usage report as JSON (the shape `GET /admin/usage` and `tollgate report --format
/// json` share).
pub fn report_json(r: &UsageReport) -> Value {
    json!({
        "group_by": r.group_by.map(GroupBy::as_str),
        "since": iso(r.since_ms),
        "until": iso(r.until_ms),
        "groups": r.groups.iter().map(group_json).collect::<Vec<_>>(),
        "total": group_json(&r.total),
    })
}

#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

async fn blocking<T: Send + 'static>(
    gw: &Gateway,
    f: impl FnOnce() -> Result<T, tollgate_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let _ = gw;
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::Internal(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `GET /admin/usage?group_by=agent&since=24h`
pub async fn usage(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let now = now_ms();
    let group_by = match q.group_by.as_deref() {
        None => None,
        Some(g) => match GroupBy::parse(g) {
            Some(g) => Some(g),
            None => {
                return ApiError::InvalidParam {
                    param: "group_by".into(),
                    message: format!(
                        "{g:?} is not one of {}",
                        GroupBy::ALL.map(GroupBy::as_str).join(", ")
                    ),
                }
                .into_response(None);
            }
        },
    };
    let window = |name: &str, v: Option<&str>, default: i64| match v {
        None => Ok(default),
        Some(s) => parse_since(s, now).map_err(|m| ApiError::InvalidParam {
            param: name.to_string(),
            message: m,
        }),
    };
    let (since, until) = match (
        window("since", q.since.as_deref(), now - 86_400_000),
        window("until", q.until.as_deref(), now + 1),
    ) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return e.into_response(None),
    };
    let store = gw.store.clone();
    match blocking(&gw, move || store.usage_report(group_by, since, until)).await {
        Ok(r) => Json(report_json(&r)).into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `POST /admin/keys` with `{"team","agent","user","name","models"}`: the secret is in
/// the answer, once.
pub async fn create_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return ApiError::InvalidParam {
                param: "body".into(),
                message: e.to_string(),
            }
            .into_response(None);
        }
    };
    let store = gw.store.clone();
    let sealer = gw.sealer.clone();
    match blocking(&gw, move || {
        store.create_key_sealed(&new, now_ms(), sealer.as_deref())
    })
    .await
    {
        Ok((key, secret)) => {
            gw.keys.insert(key.clone());
            let mut v = serde_json::to_value(&key).unwrap_or_default();
            // For AWS SDK clients (Bedrock endpoints, SigV4): the same pair.
            v["aws_access_key_id"] = Value::String(key.id.clone());
            v["aws_secret_access_key"] = Value::String(secret.clone());
            v["key"] = Value::String(secret);
            (http::StatusCode::CREATED, Json(v)).into_response()
        }
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/keys`
pub async fn list_keys(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    match blocking(&gw, move || store.list_keys()).await {
        Ok(keys) => Json(json!({"data": keys})).into_response(),
        Err(e) => e.into_response(None),
    }
}

/// `DELETE /admin/keys/{id}`
pub async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let key_id = id.clone();
    match blocking(&gw, move || store.revoke_key(&key_id, now_ms())).await {
        Ok(true) => {
            gw.keys.remove(&id);
            Json(json!({"id": id, "revoked": true})).into_response()
        }
        Ok(false) => ApiError::NotFound(format!("no active key {id}")).into_response(None),
        Err(e) => e.into_response(None),
    }
}

/// `GET /admin/requests/{request_id}`: one ledger row.
pub async fn request_row(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = gw.master.check(&headers) {
        return e.into_response(None);
    }
    let store = gw.store.clone();
    let rid = id.clone();
    match blocking(&gw, move || store.ledger_row(&rid)).await {
        Ok(Some(row)) => {
            let mut v = serde_json::to_value(&row).unwrap_or_default();
            v["cost_usd"] = Value::String(row.cost.to_string());
            Json(v).into_response()
        }
        Ok(None) => ApiError::NotFound(format!("no ledger row for {id}")).into_response(None),
        Err(e) => e.into_response(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_since("2w", now).unwrap(), now - 14 * 86_400_000);
        assert_eq!(
            parse_since("2024-01-01T00:00:00Z", now).unwrap(),
            1_704_067_200_000
        );
        assert_eq!(parse_since("12345", now).unwrap(), 12345);
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("", now).is_err());
        assert!(parse_since("-5h", now).is_err());
        assert!(parse_since("99999999999999999999d", now).is_err());
    }
}

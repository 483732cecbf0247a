//! `[alerts]`: the Slack-compatible webhook alerts go to, and how delivery retries.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// A Slack-compatible incoming webhook. Prefer `webhook_url_env`: such URLs are
    /// secrets.
    pub webhook_url: Option<String>,
    pub webhook_url_env: Option<String>,
    /// Delivery attempts before giving up (default 5).
    pub max_attempts: Option<u32>,
    /// Per attempt (default 5000 ms).
    pub timeout_ms: Option<u64>,
    /// First retry delay, doubling each time (default 500 ms).
    pub backoff_ms: Option<u64>,
}

#[derive(Debug)]
pub struct AlertConfig {
    pub webhook_url: Option<SecretString>,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub backoff: Duration,
}

/// Validate `[alerts]`, reading the webhook URL from `env` if it names a variable.
pub fn validate(
    alerts: &RawAlerts,
    env: &HashMap<String, String>,
    errs: &mut Vec<String>,
) -> AlertConfig {
    let webhook_url = match (&alerts.webhook_url, &alerts.webhook_url_env) {
        (_, Some(var)) => match env.get(var).filter(|v| !v.is_empty()) {
            Some(v) => Some(v.clone()),
            None => {
                errs.push(format!(
                    "alerts.webhook_url_env: environment variable {var} is not set"
                ));
                None
            }
        },
        (Some(u), None) => Some(u.clone()),
        (None, None) => None,
    };
    if let Some(u) = &webhook_url {
        match reqwest::Url::parse(u) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {}
            _ => errs.push("alerts.webhook_url: not an http(s) URL".into()),
        }
    }
    AlertConfig {
        webhook_url: webhook_url.map(SecretString::from),
        max_attempts: alerts.max_attempts.unwrap_or(5).max(1),
        timeout: Duration::from_millis(alerts.timeout_ms.unwrap_or(5000).max(1)),
        backoff: Duration::from_millis(alerts.backoff_ms.unwrap_or(500)),
    }
}

//! Alerts to a human: a Slack-compatible incoming webhook (`{"text", "blocks"}`, which
//! Slack, Mattermost, Rocket.Chat and most chat bridges accept).
//!
//! Every alert is recorded first (`alerts` table), then delivered from a tracked task:
//! retried with exponential backoff on network errors, 429 and 5xx, given up on other
//! 4xx (a wrong URL does not get better), and each attempt's outcome recorded. With no
//! webhook configured the alert is still recorded (status `no_webhook`) and logged.

use crate::clock::now_ms;
use crate::config::limits::AlertConfig;
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_domain::money::Money;
use tollgate_domain::usage::{Usage, UsageBound};
use tollgate_providers::{UpstreamClient, UpstreamRequest, Url};
use tollgate_store::{Store, TaskStore};

/// One alert.
#[derive(Debug, Clone)]
pub struct Alert {
    /// `task_halted`, `task_flagged`, `budget_threshold`.
    pub kind: &'static str,
    /// The task, or `<scope> <period label>`: what `tasks show` / the admin API filter on.
    pub subject: String,
    pub title: String,
    /// The one-line summary (Slack's `text`: notifications and clients without blocks).
    pub text: String,
    pub fields: Vec<(String, String)>,
    /// A quoted excerpt (what repeated), if any.
    pub excerpt: Option<String>,
    pub footer: String,
}

impl Alert {
    /// The webhook body: `text` for notifications, `blocks` for the message.
    pub fn payload(&self) -> Value {
        let mut blocks = vec![
            json!({"type": "header", "text": {"type": "plain_text", "text": self.title, "emoji": true}}),
            json!({"type": "section", "text": {"type": "mrkdwn", "text": self.text}}),
        ];
        if !self.fields.is_empty() {
            let fields: Vec<Value> = self
                .fields
                .iter()
                .take(10)
                .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")}))
                .collect();
            blocks.push(json!({"type": "section", "fields": fields}));
        }
        if let Some(e) = &self.excerpt {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{e}```")}}));
        }
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": self.footer}]}),
        );
        json!({"text": self.text, "blocks": blocks})
    }
}

impl Alert {
    /// An upstream reported more usage than the request could have used: the row was
    /// priced at the bound and flagged `usage_suspect`.
    pub fn usage_suspect(
        deployment: &str,
        request_id: &str,
        reported: &Usage,
        bound: UsageBound,
        charged: Money,
    ) -> Alert {
        Alert {
            kind: "usage_suspect",
            subject: deployment.to_string(),
            title: format!("Impossible usage reported: {deployment}"),
            text: format!(
                "The upstream of {deployment} reported {} prompt and {} output tokens for request {request_id}, \
                 past what the request could use ({} prompt, {} output). The row is flagged usage_suspect \
                 and charged ${charged}, the bound.",
                reported.prompt_total(),
                reported.output,
                bound.prompt,
                bound.output
            ),
            fields: vec![
                ("Deployment".into(), deployment.to_string()),
                ("Request".into(), request_id.to_string()),
                (
                    "Reported".into(),
                    format!("{} in / {} out", reported.prompt_total(), reported.output),
                ),
                (
                    "Bound".into(),
                    format!("{} in / {} out", bound.prompt, bound.output),
                ),
            ],
            excerpt: None,
            footer: "Check the upstream; rows: `usage_suspect` in the ledger.".into(),
        }
    }
}

/// Alerts sent, delivered and given up on.
#[derive(Debug, Default)]
pub struct AlertStats {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

/// The alerting component: records every alert, delivers it from a tracked task.
pub struct Alerts {
    store: Store,
    client: UpstreamClient,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Validated as an http(s) URL when the config loaded. Not `Debug`: such URLs are
    /// secrets.
    webhook: Option<Url>,
    max_attempts: u32,
    timeout: Duration,
    backoff: Duration,
    pub stats: AlertStats,
}

impl Alerts {
    pub fn new(
        settings: &AlertConfig,
        store: Store,
        client: UpstreamClient,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Alerts {
        Alerts {
            store,
            client,
            tasks,
            shutdown,
            webhook: settings
                .webhook_url
                .as_ref()
                .and_then(|u| Url::parse(u.expose_secret()).ok()),
            max_attempts: settings.max_attempts,
            timeout: settings.timeout,
            backoff: settings.backoff,
            stats: AlertStats::default(),
        }
    }

    /// Record `alert` and deliver it in the background.
    pub fn send(self: &Arc<Self>, alert: Alert) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(subject = %alert.subject, "alert outside a runtime: {}", alert.text);
            return;
        };
        let me = self.clone();
        self.tasks
            .spawn_on(async move { me.deliver(alert).await }, &handle);
    }

    async fn deliver(self: Arc<Self>, alert: Alert) {
        let payload = alert.payload();
        let (url, attempts, timeout, backoff) = (
            self.webhook.clone(),
            self.max_attempts,
            self.timeout,
            self.backoff,
        );
        let stats = &self.stats;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(kind = alert.kind, subject = %alert.subject, "alert: {}", alert.text);
        let status = if url.is_some() {
            "pending"
        } else {
            "no_webhook"
        };
        let id = self
            .store
            .insert_alert(
                alert.kind,
                &alert.subject,
                &alert.text,
                &payload,
                status,
                now_ms(),
            )
            .await
            .ok();
        let Some(url) = url else { return };
        let body = Bytes::from(payload.to_string());
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let mut delay = backoff;
        let mut last_error: Option<String> = None;
        let mut delivered = false;
        let mut tried = 0u32;
        for attempt in 1..=attempts {
            tried = attempt;
            let req = UpstreamRequest {
                url: url.clone(),
                headers: headers.clone(),
                body: body.clone(),
                timeout,
            };
            let retry = match self.client.post(req).await {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.bytes().await;
                    delivered = true;
                    false
                }
                Ok(resp) => {
                    let s = resp.status();
                    last_error = Some(format!("HTTP {}", s.as_u16()));
                    s.as_u16() == 429 || s.is_server_error()
                }
                Err(e) => {
                    last_error = Some(e.to_string());
                    true
                }
            };
            if delivered || !retry || attempt == attempts {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => {
                    // Shutting down: one last try without waiting, then record the outcome.
                    delay = std::time::Duration::ZERO;
                }
            }
            delay = (delay * 2).min(std::time::Duration::from_secs(60));
        }
        if delivered {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(subject = %alert.subject, error = ?last_error, "alert delivery failed after {tried} attempt(s)");
        }
        if let Some(id) = id {
            let status = if delivered { "delivered" } else { "failed" };
            let _ = self
                .store
                .update_alert(
                    id,
                    status,
                    tried,
                    last_error.as_deref(),
                    delivered.then(now_ms),
                )
                .await;
        }
    }
}

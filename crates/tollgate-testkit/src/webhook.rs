//! A webhook receiver (what Slack's incoming webhooks are to tollgate): records every
//! JSON body it accepts, and can fail its first calls to exercise retries.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Inbox {
    received: Mutex<Vec<Value>>,
    attempts: AtomicUsize,
    fail_first: AtomicUsize,
}

pub struct WebhookReceiver {
    pub addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: CancellationToken,
}

impl WebhookReceiver {
    /// Listen on a free local port; answer 500 to the first `fail_first` calls.
    pub async fn start(fail_first: usize) -> std::io::Result<WebhookReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inbox = Arc::new(Inbox::default());
        inbox.fail_first.store(fail_first, Ordering::SeqCst);
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(inbox.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        #[allow(clippy::disallowed_methods)] // a test stub, outside the gateway's tasks
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(WebhookReceiver { addr, inbox, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/alerts", self.addr)
    }

    /// Bodies accepted so far.
    pub fn received(&self) -> Vec<Value> {
        self.inbox
            .received
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Calls, failed ones included.
    pub fn attempts(&self) -> usize {
        self.inbox.attempts.load(Ordering::SeqCst)
    }

    /// Wait until `n` bodies arrived (or `timeout`); returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        while self.received().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(inbox): State<Arc<Inbox>>, body: Bytes) -> (http::StatusCode, &'static str) {
    let n = inbox.attempts.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= inbox.fail_first.load(Ordering::SeqCst) {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "try again");
    }
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut r) = inbox.received.lock() {
        r.push(v);
    }
    (http::StatusCode::OK, "ok")
}

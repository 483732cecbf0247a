//! A stub upstream that replays recorded responses (fixtures built from the providers'
//! documented payloads) and counts the calls it gets.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tollgate_providers::eventstream::Message as EsMessage;

/// One recorded answer.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
    /// Send the body in pieces of this many bytes (streams), with `chunk_delay` between.
    pub chunk_size: Option<usize>,
    pub chunk_delay: Duration,
    /// Abort the connection after this many body bytes (an upstream cut).
    pub cut_after: Option<usize>,
    /// Wait this long before answering at all.
    pub delay: Duration,
    /// Extra response headers (`x-amzn-errortype`, `retry-after`, ...).
    pub headers: Vec<(String, String)>,
}

impl Fixture {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Fixture {
        Fixture {
            status,
            content_type: "application/json".into(),
            body: body.into(),
            chunk_size: None,
            chunk_delay: Duration::ZERO,
            cut_after: None,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// A Bedrock event stream from a `*.events.json` fixture (see fixtures/bedrock).
    pub fn eventstream(name: &str) -> Fixture {
        Fixture {
            content_type: "application/vnd.amazon.eventstream".into(),
            chunk_size: Some(64),
            ..Fixture::json(200, Fixture::eventstream_bytes(name))
        }
    }

    /// The binary frames of a `*.events.json` fixture.
    pub fn eventstream_bytes(name: &str) -> Bytes {
        let text = Fixture::file(name);
        let items: Vec<serde_json::Value> = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => panic!("fixture {name}: {e}"),
        };
        let mut out = Vec::new();
        for item in items {
            let payload = item["payload"].to_string();
            let m = match (item["event"].as_str(), item["exception"].as_str()) {
                (Some(ev), _) => EsMessage::event(ev, payload.as_bytes()),
                (None, Some(ex)) => {
                    EsMessage::exception(ex, item["payload"]["message"].as_str().unwrap_or(""))
                }
                _ => panic!("fixture {name}: an item needs `event` or `exception`"),
            };
            out.extend_from_slice(&m.encode());
        }
        Bytes::from(out)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Fixture {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn sse(body: impl Into<Bytes>) -> Fixture {
        Fixture {
            content_type: "text/event-stream; charset=utf-8".into(),
            chunk_size: Some(64),
            ..Fixture::json(200, body)
        }
    }

    /// Load `fixtures/<name>` from this crate.
    pub fn file(name: &str) -> Bytes {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        match std::fs::read(&path) {
            Ok(b) => Bytes::from(b),
            Err(e) => panic!("fixture {}: {e}", path.display()),
        }
    }
}

struct Replay {
    fixture: Mutex<Fixture>,
    calls: AtomicUsize,
    last_body: Mutex<Option<Bytes>>,
    last_headers: Mutex<Option<http::HeaderMap>>,
    last_path: Mutex<Option<String>>,
}

/// A running fixture stub; every POST answers with the current fixture.
pub struct FixtureUpstream {
    pub addr: SocketAddr,
    state: Arc<Replay>,
    stop: CancellationToken,
}

impl FixtureUpstream {
    pub async fn start(fixture: Fixture) -> std::io::Result<FixtureUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Replay {
            fixture: Mutex::new(fixture),
            calls: AtomicUsize::new(0),
            last_body: Mutex::new(None),
            last_headers: Mutex::new(None),
            last_path: Mutex::new(None),
        });
        let app = Router::new()
            .route("/{*path}", post(replay))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        #[allow(clippy::disallowed_methods)] // a test stub, outside the gateway's tasks
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(FixtureUpstream { addr, state, stop })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR` (Bedrock upstreams have no `/v1`).
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The raw body of the last request.
    pub fn last_body_bytes(&self) -> Option<Bytes> {
        self.state.last_body.lock().ok()?.clone()
    }

    /// The path of the last request.
    pub fn last_path(&self) -> Option<String> {
        self.state.last_path.lock().ok()?.clone()
    }

    pub fn set(&self, fixture: Fixture) {
        *self.state.fixture.lock().unwrap_or_else(|p| p.into_inner()) = fixture;
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The JSON body of the last request the stub received.
    pub fn last_body(&self) -> Option<serde_json::Value> {
        let b = self.state.last_body.lock().ok()?.clone()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.state.last_headers.lock().ok()?.clone()
    }
}

impl Drop for FixtureUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn replay(
    State(st): State<Arc<Replay>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    st.calls.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut p) = st.last_path.lock() {
        *p = Some(uri.path().to_string());
    }
    if let Ok(mut b) = st.last_body.lock() {
        *b = Some(body);
    }
    if let Ok(mut h) = st.last_headers.lock() {
        *h = Some(headers);
    }
    let f = st.fixture.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tokio::time::sleep(f.delay).await;
    let chunk = f.chunk_size.unwrap_or(usize::MAX).max(1);
    let body = f.body.clone();
    let cut = f.cut_after;
    let delay = f.chunk_delay;
    let stream = async_stream::stream! {
        let mut pos = 0;
        let limit = cut.unwrap_or(body.len()).min(body.len());
        while pos < limit {
            let end = (pos + chunk).min(limit);
            yield Ok::<Bytes, std::io::Error>(body.slice(pos..end));
            pos = end;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        if cut.is_some() {
            yield Err(std::io::Error::other("fixture: connection cut"));
        }
    };
    let mut b = Response::builder()
        .status(f.status)
        .header(http::header::CONTENT_TYPE, f.content_type)
        .header("x-request-id", "req_fixture_upstream");
    for (k, v) in &f.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::from_stream(stream)).unwrap_or_default()
}

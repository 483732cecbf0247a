//! The shared HTTP client for upstream calls.

use crate::error::ProviderError;
use bytes::Bytes;
use std::sync::Once;
use std::time::Duration;

static CRYPTO: Once = Once::new();

/// Install the TLS crypto provider once per process (ring: pure Rust and assembly, no
/// C toolchain beyond what `cc` brings).
pub fn install_crypto_provider() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
        }
    }
}

/// One pooled client for every upstream (connections are pooled per host).
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
}

/// A request to send upstream.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// Parsed once where it can be (a deployment caches its endpoint URLs): parsing a
    /// URL per request showed up as 3 % of the gateway's CPU.
    pub url: reqwest::Url,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Time allowed until the response headers arrive.
    pub timeout: Duration,
}

impl UpstreamClient {
    pub fn new(cfg: &ClientConfig) -> Result<UpstreamClient, ProviderError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|e| ProviderError::Unreachable(crate::error::error_chain(&e)))?;
        Ok(UpstreamClient { http })
    }

    /// POST and wait for the response head (not the body).
    pub async fn post(&self, req: UpstreamRequest) -> Result<reqwest::Response, ProviderError> {
        let ms = req.timeout.as_millis() as u64;
        let fut = self
            .http
            .post(req.url)
            .headers(req.headers)
            .body(req.body)
            .send();
        match tokio::time::timeout(req.timeout, fut).await.ok() {
            Some(r) => r.map_err(|e| ProviderError::from_reqwest(e, ms)),
            None => Err(ProviderError::Timeout(ms)),
        }
    }

    /// GET and wait for the response head.
    pub async fn get(
        &self,
        url: &str,
        headers: http::HeaderMap,
        timeout: Duration,
    ) -> Result<reqwest::Response, ProviderError> {
        let ms = timeout.as_millis() as u64;
        match tokio::time::timeout(timeout, self.http.get(url).headers(headers).send())
            .await
            .ok()
        {
            Some(r) => r.map_err(|e| ProviderError::from_reqwest(e, ms)),
            None => Err(ProviderError::Timeout(ms)),
        }
    }
}

/// Read a whole body, at most `limit` bytes, before `deadline`.
pub async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ProviderError> {
    let ms = timeout.as_millis() as u64;
    let read = async {
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ProviderError::from_reqwest(e, ms))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(ProviderError::TooLarge(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(timeout, read).await.ok() {
        Some(r) => r,
        None => Err(ProviderError::Timeout(ms)),
    }
}

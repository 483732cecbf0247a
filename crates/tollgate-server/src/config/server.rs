//! `[server]`: where the gateway listens, body and time limits, and the environment
//! variable that holds the master key.

use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::positive;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_body_bytes_in_flight: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub master_key_env: Option<String>,
    pub upstream_timeout_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Bytes of request bodies read at once, across all connections (read at startup).
    pub max_body_bytes_in_flight: usize,
    pub max_response_bytes: usize,
    pub master_key: Option<SecretString>,
    pub master_key_env: String,
    pub upstream_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
pub const DEFAULT_MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";

/// Validate `[server]`, reading the master key from `env`.
pub fn validate(
    s: &RawServer,
    env: &HashMap<String, String>,
    errs: &mut Vec<String>,
) -> ServerSettings {
    let listen = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        errs.push(format!("server.listen: {listen:?}: {e}"));
        SocketAddr::from(([127, 0, 0, 1], 4000))
    });
    let max_body = positive(errs, "server.max_body_bytes", s.max_body_bytes, 32 << 20);
    let in_flight = positive(
        errs,
        "server.max_body_bytes_in_flight",
        s.max_body_bytes_in_flight,
        (64u64 << 20).max(max_body),
    );
    if in_flight < max_body {
        errs.push(format!(
            "server.max_body_bytes_in_flight ({in_flight}) must be at least server.max_body_bytes ({max_body})"
        ));
    }
    let max_resp = positive(
        errs,
        "server.max_response_bytes",
        s.max_response_bytes,
        64 << 20,
    );
    let up_timeout = positive(
        errs,
        "server.upstream_timeout_ms",
        s.upstream_timeout_ms,
        600_000,
    );
    let idle = positive(
        errs,
        "server.stream_idle_timeout_ms",
        s.stream_idle_timeout_ms,
        300_000,
    );
    let grace = s.shutdown_grace_ms.unwrap_or(30_000);
    let master_key_env = s
        .master_key_env
        .clone()
        .unwrap_or_else(|| DEFAULT_MASTER_KEY_ENV.to_string());
    let master_key = env
        .get(&master_key_env)
        .filter(|k| !k.is_empty())
        .map(|k| SecretString::from(k.clone()));

    ServerSettings {
        listen,
        max_body_bytes: max_body as usize,
        max_body_bytes_in_flight: in_flight as usize,
        max_response_bytes: max_resp as usize,
        master_key,
        master_key_env,
        upstream_timeout: Duration::from_millis(up_timeout),
        stream_idle_timeout: Duration::from_millis(idle),
        shutdown_grace: Duration::from_millis(grace),
    }
}

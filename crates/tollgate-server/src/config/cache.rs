//! `[cache]`: the gateway's caching.
//!
//! ```toml
//! [cache]
//! prompt = "auto"            # provider prompt caching: off | auto (where it pays) | always
//! response = "deterministic" # response cache: off | deterministic (temperature 0 or a seed) | always
//! scope = "team"             # who shares response-cache entries: key | team (default) | org
//! ttl_s = 3600               # response-cache entry lifetime
//! max_entries = 50000
//! max_bytes = 268435456      # 256 MiB, index and answers
//! max_entry_bytes = 1048576  # larger answers are not cached
//! semantic = true            # also answer similar last turns (same context otherwise)
//! # semantic_threshold = 0.86  # default: the embedding model's own (≤ 1 % false hits)
//! # embedding_model_dir = "/models/all-MiniLM-L6-v2"  # default: the compiled-in model
//! store = "sqlite"           # where entries persist: sqlite (default) | memory
//! # path = "tollgate-cache.db" # default: beside the ledger file
//! prefixes_tracked = 100000  # prompt prefixes remembered (prompt = "auto")
//!
//! [[cache.overrides]]        # per deployment, route, key or team (first match wins)
//! deployments = ["claude-sonnet"]
//! prompt = "always"
//! response = "off"
//! ```
//!
//! Per request: `x-tollgate-cache: on | off | refresh` (and `Cache-Control: no-store` /
//! `no-cache` / `max-age=N`), `x-tollgate-cache-ttl: N` seconds, and
//! `x-tollgate-prompt-cache: off | auto | always`.

use super::applies::Applies;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tollgate_domain::prompt_cache::Mode;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub scope: Option<String>,
    pub ttl_s: Option<u64>,
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_entry_bytes: Option<u64>,
    pub semantic: Option<bool>,
    pub semantic_threshold: Option<f64>,
    pub embedding_model_dir: Option<String>,
    pub store: Option<String>,
    pub path: Option<String>,
    pub prefixes_tracked: Option<u64>,
    #[serde(default)]
    pub overrides: Vec<RawCacheOverride>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheOverride {
    #[serde(default)]
    pub deployments: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub ttl_s: Option<u64>,
}

/// When the response cache answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    Off,
    /// Requests whose answer does not vary: temperature 0, or a seed.
    Deterministic,
    /// Every request (opt-in: sampling answers are replayed as they were).
    Always,
}

impl ResponseMode {
    pub fn parse(s: &str) -> Option<ResponseMode> {
        match s {
            "off" => Some(ResponseMode::Off),
            "deterministic" => Some(ResponseMode::Deterministic),
            "always" | "on" => Some(ResponseMode::Always),
            _ => None,
        }
    }
}

/// Who shares response-cache entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The virtual key alone.
    Key,
    /// The key owner's team (keys without a team: the key alone).
    Team,
    /// Every caller (one tenant).
    Org,
}

/// Where response-cache entries persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStore {
    Memory,
    Sqlite(PathBuf),
}

/// An override's match and settings.
#[derive(Debug, Clone)]
pub struct CacheOverride {
    pub applies: Applies,
    pub prompt: Option<Mode>,
    pub response: Option<ResponseMode>,
    pub ttl_ms: Option<u64>,
}

/// `[cache]` validated.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub prompt: Mode,
    pub response: ResponseMode,
    pub scope: Scope,
    pub ttl_ms: u64,
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_entry_bytes: usize,
    pub semantic: bool,
    pub semantic_threshold: Option<f32>,
    pub embedding_model_dir: Option<PathBuf>,
    pub store: CacheStore,
    pub prefixes_tracked: usize,
    pub overrides: Vec<CacheOverride>,
}

/// What applies to one request, from its deployment, route, key and team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub prompt: Mode,
    pub response: ResponseMode,
    pub ttl_ms: u64,
}

impl CacheSettings {
    /// The policy for a request (the first matching override, field by field over the
    /// section's defaults).
    pub fn policy(
        &self,
        deployment: &str,
        route: Option<&str>,
        key: &str,
        team: Option<&str>,
    ) -> CachePolicy {
        let mut p = CachePolicy {
            prompt: self.prompt,
            response: self.response,
            ttl_ms: self.ttl_ms,
        };
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| o.applies.matches(deployment, route, key, team))
        {
            p.prompt = o.prompt.unwrap_or(p.prompt);
            p.response = o.response.unwrap_or(p.response);
            p.ttl_ms = o.ttl_ms.unwrap_or(p.ttl_ms);
        }
        p
    }
}

fn mode(errs: &mut Vec<String>, at: &str, v: Option<&str>) -> Option<Mode> {
    let v = v?;
    Mode::parse(v).or_else(|| {
        errs.push(format!(
            "{at}: {v:?} is not one of \"off\", \"auto\", \"always\""
        ));
        None
    })
}

fn response(errs: &mut Vec<String>, at: &str, v: Option<&str>) -> Option<ResponseMode> {
    let v = v?;
    ResponseMode::parse(v).or_else(|| {
        errs.push(format!(
            "{at}: {v:?} is not one of \"off\", \"deterministic\", \"always\""
        ));
        None
    })
}

/// Validate `[cache]`; `ledger_path` places the cache file beside the ledger by default.
pub fn validate(raw: &RawCache, ledger_path: &Path, errs: &mut Vec<String>) -> CacheSettings {
    let positive = |errs: &mut Vec<String>, name: &str, v: Option<u64>, d: u64| match v {
        Some(0) => {
            errs.push(format!("cache.{name}: must be greater than zero"));
            d
        }
        Some(n) => n,
        None => d,
    };
    let scope = match raw.scope.as_deref() {
        None | Some("team") => Scope::Team,
        Some("key") => Scope::Key,
        Some("org") => Scope::Org,
        Some(o) => {
            errs.push(format!(
                "cache.scope: {o:?} is not one of \"key\", \"team\", \"org\""
            ));
            Scope::Team
        }
    };
    let threshold = raw.semantic_threshold.and_then(|t| {
        if (0.0..=1.0).contains(&t) {
            Some(t as f32)
        } else {
            errs.push(format!(
                "cache.semantic_threshold: {t} is not within [0, 1]"
            ));
            None
        }
    });
    let store = match raw.store.as_deref() {
        None | Some("sqlite") => CacheStore::Sqlite(match &raw.path {
            Some(p) => PathBuf::from(p),
            None => {
                let mut p = ledger_path.as_os_str().to_owned();
                p.push(".cache");
                PathBuf::from(p)
            }
        }),
        Some("memory") => CacheStore::Memory,
        Some(o) => {
            errs.push(format!(
                "cache.store: {o:?} is not one of \"sqlite\", \"memory\""
            ));
            CacheStore::Memory
        }
    };
    let overrides = raw
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let at = format!("cache.overrides[{i}]");
            let applies = Applies::new(&o.deployments, &o.routes, &o.keys, &o.teams);
            if applies.is_empty() {
                errs.push(format!(
                    "{at}: name at least one of deployments, routes, keys, teams"
                ));
            }
            CacheOverride {
                applies,
                prompt: mode(errs, &format!("{at}.prompt"), o.prompt.as_deref()),
                response: response(errs, &format!("{at}.response"), o.response.as_deref()),
                ttl_ms: o.ttl_s.map(|s| s.saturating_mul(1000)),
            }
        })
        .collect();
    CacheSettings {
        prompt: mode(errs, "cache.prompt", raw.prompt.as_deref()).unwrap_or(Mode::Auto),
        response: response(errs, "cache.response", raw.response.as_deref())
            .unwrap_or(ResponseMode::Deterministic),
        scope,
        ttl_ms: positive(errs, "ttl_s", raw.ttl_s, 3600).saturating_mul(1000),
        max_entries: positive(errs, "max_entries", raw.max_entries, 50_000) as usize,
        max_bytes: positive(errs, "max_bytes", raw.max_bytes, 256 << 20) as usize,
        max_entry_bytes: positive(errs, "max_entry_bytes", raw.max_entry_bytes, 1 << 20) as usize,
        semantic: raw.semantic.unwrap_or(true),
        semantic_threshold: threshold,
        embedding_model_dir: raw.embedding_model_dir.as_ref().map(PathBuf::from),
        store,
        prefixes_tracked: positive(errs, "prefixes_tracked", raw.prefixes_tracked, 100_000)
            as usize,
        overrides,
    }
}

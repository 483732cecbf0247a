//! Configuration: one TOML file, overridden by `TOLLGATE__SECTION__KEY` environment
//! variables, validated into a [`Config`] where illegal states cannot be written.
//!
//! Precedence: built-in defaults < file < environment < command-line flags (the binary
//! applies flags to the raw config before validation). Secrets (upstream API keys, the
//! master key) are never in the file: the file names the environment variables that
//! hold them.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tollgate_domain::money::Rate;
use tollgate_domain::pricing::{
    DEFAULT_CATALOG_JSON, DEFAULT_CATALOG_SOURCE, ModelPrice, PriceTable, PriceTableBuilder,
    TokenRates,
};
use tollgate_providers::sigv4::Credentials;
use tollgate_providers::tokenizer::Encoding;
use tollgate_providers::translate::Format;
use tollgate_store::Durability;

pub mod limits;
pub mod routes;
pub use limits::LimitsConfig;
pub use routes::{Route, RoutingSettings};

// ---------------------------------------------------------------------------------------
// Raw: what the file says.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub pricing: RawPricing,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
    #[serde(default)]
    pub budgets: limits::RawBudgets,
    #[serde(default)]
    pub rate_limits: Vec<limits::RawRateLimit>,
    #[serde(default)]
    pub guard: limits::RawGuard,
    #[serde(default)]
    pub alerts: limits::RawAlerts,
    #[serde(default)]
    pub outcomes: crate::outcomes::RawOutcomes,
    #[serde(default)]
    pub telemetry: crate::telemetry::RawTelemetry,
    #[serde(default)]
    pub routing: routes::RawRouting,
    #[serde(default)]
    pub routes: Vec<routes::RawRoute>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub master_key_env: Option<String>,
    pub upstream_timeout_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub path: Option<String>,
    pub durability: Option<String>,
    pub channel_capacity: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    /// Use the catalog compiled into the binary as the base table (default true).
    pub embedded_catalog: Option<bool>,
    /// Catalog files (community format) merged over it, in order.
    #[serde(default)]
    pub catalogs: Vec<String>,
    /// `reject` (default): a deployment without a price is a config error.
    /// `flag`: forward it and mark its rows `unpriced`.
    pub unpriced: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    /// `openai` (any OpenAI-compatible server, the default), `anthropic` or `bedrock`.
    pub kind: Option<String>,
    /// Required for `openai`; defaults to `https://api.anthropic.com/v1` for `anthropic`
    /// and `https://bedrock-runtime.{region}.amazonaws.com` for `bedrock`.
    pub base_url: Option<String>,
    /// Environment variable holding the API key (`openai`, `anthropic`). Omit for
    /// servers that need none.
    pub api_key_env: Option<String>,
    /// Extra static headers sent on every call.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `anthropic`: the `anthropic-version` sent when the client sent none.
    pub anthropic_version: Option<String>,
    /// `bedrock`: the AWS region (default: `$AWS_REGION`, then `$AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// `bedrock`: environment variables holding the credentials (defaults: the AWS
    /// standard names `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub aws_access_key_id_env: Option<String>,
    pub aws_secret_access_key_env: Option<String>,
    pub aws_session_token_env: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    /// The public model name clients ask for.
    pub name: String,
    pub upstream: String,
    /// The upstream's model id (default: `name`).
    pub model: Option<String>,
    /// The catalog id to price with (default: `model`).
    pub price_model: Option<String>,
    /// Explicit prices in USD per million tokens (override the catalog).
    pub price: Option<RawPrice>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Option<PriceText>,
    pub output: Option<PriceText>,
    pub cache_read: Option<PriceText>,
    pub cache_write: Option<PriceText>,
    pub cache_write_1h: Option<PriceText>,
    pub reasoning: Option<PriceText>,
}

/// A price written as a string (`"2.5"`, exact) or a TOML number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PriceText {
    Text(String),
    Float(f64),
    Int(i64),
}

impl PriceText {
    fn parse_per_mtok(&self) -> Result<Rate, String> {
        let text = match self {
            PriceText::Text(s) => s.clone(),
            PriceText::Float(f) => format!("{f}"),
            PriceText::Int(i) => i.to_string(),
        };
        Rate::parse_usd_per_mtok(&text)
            .map(|(r, _)| r)
            .map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Validated.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpricedPolicy {
    Reject,
    Flag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    OpenAi,
    Anthropic,
    Bedrock,
}

impl UpstreamKind {
    /// The wire format the upstream speaks.
    pub fn format(self) -> Format {
        match self {
            UpstreamKind::OpenAi => Format::OpenAi,
            UpstreamKind::Anthropic => Format::Anthropic,
            UpstreamKind::Bedrock => Format::Bedrock,
        }
    }

    /// The OpenTelemetry GenAI `gen_ai.provider.name` of this kind of upstream.
    pub fn provider_name(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Anthropic => "anthropic",
            UpstreamKind::Bedrock => "aws.bedrock",
        }
    }
}

/// How calls to an upstream are authenticated beyond its static headers.
#[derive(Debug)]
pub enum UpstreamAuth {
    /// Static headers only (bearer token, `x-api-key`, or nothing).
    Headers,
    /// AWS SigV4, computed per request.
    SigV4 {
        credentials: Credentials,
        region: String,
        /// The `Host` header as the HTTP client will send it.
        host: String,
        /// The base URL's path (usually empty).
        base_path: String,
    },
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub kind: UpstreamKind,
    /// Without a trailing slash: `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<SecretString>,
    /// Headers sent on every call: content type, authorization, configured extras.
    pub request_headers: http::HeaderMap,
    pub auth: UpstreamAuth,
    /// `anthropic`: the default `anthropic-version`.
    pub anthropic_version: String,
}

#[derive(Debug)]
pub struct Deployment {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub model: String,
    /// The price-table entry that prices it; `None` if unpriced (policy `flag`).
    pub price_key: Option<String>,
    pub price: Option<Arc<ModelPrice>>,
    pub encoding: Encoding,
    /// The upstream URLs this deployment calls, parsed on first use.
    pub urls: EndpointUrls,
}

/// A deployment's upstream endpoints, each parsed once (the path depends only on the
/// upstream's format, the deployment's model and, for Bedrock, streaming).
#[derive(Debug, Default)]
pub struct EndpointUrls {
    slots: [std::sync::OnceLock<tollgate_providers::Url>; 3],
}

/// Which endpoint of a deployment a request calls.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Chat = 0,
    ChatStream = 1,
    Embeddings = 2,
}

impl EndpointUrls {
    /// The URL for `endpoint`, `base` + `path` parsed the first time and cloned after.
    pub fn get(
        &self,
        endpoint: Endpoint,
        base: &str,
        path: &str,
    ) -> Result<tollgate_providers::Url, crate::error::ApiError> {
        let slot = &self.slots[endpoint as usize];
        if let Some(u) = slot.get() {
            return Ok(u.clone());
        }
        let u = tollgate_providers::Url::parse(&format!("{base}{path}")).map_err(|e| {
            crate::error::ApiError::Internal(format!("invalid upstream URL {base}{path}: {e}"))
        })?;
        let _ = slot.set(u.clone());
        Ok(u)
    }
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub master_key: Option<SecretString>,
    pub master_key_env: String,
    pub upstream_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug)]
pub struct LedgerSettings {
    pub path: PathBuf,
    pub durability: Durability,
    pub channel_capacity: usize,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub ledger: LedgerSettings,
    pub prices: Arc<PriceTable>,
    pub unpriced: UnpricedPolicy,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub deployments: BTreeMap<String, Arc<Deployment>>,
    /// Budgets, rate limits, the runaway-agent guard, alerts.
    pub limits: LimitsConfig,
    pub outcomes: crate::outcomes::OutcomeSettings,
    pub telemetry: crate::telemetry::TelemetrySettings,
    pub routing: RoutingSettings,
    /// Routed model names (`auto`) → their ladder and policy.
    pub routes: BTreeMap<String, Arc<Route>>,
}

/// Every problem found, each with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
pub const DEFAULT_MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
const ENV_PREFIX: &str = "TOLLGATE__";

impl RawConfig {
    /// Parse TOML text, then apply `TOLLGATE__...` overrides from `env`.
    pub fn from_toml(text: &str, env: &HashMap<String, String>) -> Result<RawConfig, ConfigErrors> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("toml: {e}")]))?;
        apply_env(&mut doc, env)?;
        let de = toml::Value::Table(doc);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigErrors(vec![format!("{path}: {}", e.into_inner())])
        })
    }

    /// Read a file (or use defaults when `path` is `None`).
    pub fn load(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<RawConfig, ConfigErrors> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigErrors(vec![format!("{}: {e}", p.display())]))?,
            None => String::new(),
        };
        RawConfig::from_toml(&text, env)
    }

    /// The effective price table: the embedded catalog, then `pricing.catalogs` files,
    /// then per-deployment prices (which go in the table so its hash covers them).
    pub fn price_table(&self) -> Result<PriceTable, ConfigErrors> {
        let mut errs = Vec::new();
        let t = self.build_prices(&mut errs);
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    fn build_prices(&self, errs: &mut Vec<String>) -> PriceTable {
        let mut builder = PriceTableBuilder::default();
        if self.pricing.embedded_catalog.unwrap_or(true)
            && let Err(e) = builder.merge_catalog_json(DEFAULT_CATALOG_JSON, DEFAULT_CATALOG_SOURCE)
        {
            errs.push(format!("embedded price catalog: {e}"));
        }
        for (i, path) in self.pricing.catalogs.iter().enumerate() {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Err(e) = builder.merge_catalog_json(&text, path) {
                        errs.push(format!("pricing.catalogs[{i}] ({path}): {e}"));
                    }
                }
                Err(e) => errs.push(format!("pricing.catalogs[{i}] ({path}): {e}")),
            }
        }
        for w in builder.warnings.drain(..) {
            tracing::warn!("price catalog: {w}");
        }

        // Per-deployment prices go into the table first, so the hash covers them.
        for (i, d) in self.deployments.iter().enumerate() {
            if let Some(p) = &d.price {
                let mut rates = TokenRates::default();
                let mut set = |field: &str, v: &Option<PriceText>, slot: &mut Option<Rate>| {
                    if let Some(v) = v {
                        match v.parse_per_mtok() {
                            Ok(r) => *slot = Some(r),
                            Err(e) => errs.push(format!("deployments[{i}].price.{field}: {e}")),
                        }
                    }
                };
                set("input", &p.input, &mut rates.input);
                set("output", &p.output, &mut rates.output);
                set("cache_read", &p.cache_read, &mut rates.cache_read);
                set("cache_write", &p.cache_write, &mut rates.cache_write_5m);
                set(
                    "cache_write_1h",
                    &p.cache_write_1h,
                    &mut rates.cache_write_1h,
                );
                set("reasoning", &p.reasoning, &mut rates.reasoning);
                if rates.input.is_none() || rates.output.is_none() {
                    errs.push(format!(
                        "deployments[{i}].price: needs at least `input` and `output` (USD per million tokens)"
                    ));
                }
                builder.insert(
                    &deployment_price_key(&d.name),
                    ModelPrice::flat(rates),
                    &format!("config:deployments[{i}].price"),
                );
            }
        }
        builder.build()
    }

    /// Validate into a [`Config`], reading secrets from `env`.
    pub fn validate(&self, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let s = &self.server;
        let listen = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen.parse::<SocketAddr>().unwrap_or_else(|e| {
            errs.push(format!("server.listen: {listen:?}: {e}"));
            SocketAddr::from(([127, 0, 0, 1], 4000))
        });
        let positive = |errs: &mut Vec<String>, name: &str, v: Option<u64>, default: u64| -> u64 {
            match v {
                Some(0) => {
                    errs.push(format!("{name}: must be greater than zero"));
                    default
                }
                Some(n) => n,
                None => default,
            }
        };
        let max_body = positive(
            &mut errs,
            "server.max_body_bytes",
            s.max_body_bytes,
            32 << 20,
        );
        let max_resp = positive(
            &mut errs,
            "server.max_response_bytes",
            s.max_response_bytes,
            64 << 20,
        );
        let up_timeout = positive(
            &mut errs,
            "server.upstream_timeout_ms",
            s.upstream_timeout_ms,
            600_000,
        );
        let idle = positive(
            &mut errs,
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

        let durability = match self.ledger.durability.as_deref() {
            None => Durability::Batched,
            Some(d) => Durability::parse(d).unwrap_or_else(|| {
                errs.push(format!(
                    "ledger.durability: {d:?} is not one of \"batched\", \"strict\""
                ));
                Durability::Batched
            }),
        };
        let channel_capacity = positive(
            &mut errs,
            "ledger.channel_capacity",
            self.ledger.channel_capacity,
            16_384,
        ) as usize;

        let unpriced = match self.pricing.unpriced.as_deref() {
            None | Some("reject") => UnpricedPolicy::Reject,
            Some("flag") => UnpricedPolicy::Flag,
            Some(o) => {
                errs.push(format!(
                    "pricing.unpriced: {o:?} is not one of \"reject\", \"flag\""
                ));
                UnpricedPolicy::Reject
            }
        };

        let prices = Arc::new(self.build_prices(&mut errs));

        let mut upstreams = BTreeMap::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = format!("upstreams[{i}]");
            if u.name.is_empty() {
                errs.push(format!("{at}.name: must not be empty"));
            }
            let kind = match u.kind.as_deref() {
                None | Some("openai") => UpstreamKind::OpenAi,
                Some("anthropic") => UpstreamKind::Anthropic,
                Some("bedrock") => UpstreamKind::Bedrock,
                Some(k) => {
                    errs.push(format!(
                        "{at}.kind: {k:?} is not a known upstream kind (\"openai\", \"anthropic\", \"bedrock\")"
                    ));
                    UpstreamKind::OpenAi
                }
            };
            let region = u
                .region
                .clone()
                .or_else(|| env.get("AWS_REGION").cloned())
                .or_else(|| env.get("AWS_DEFAULT_REGION").cloned())
                .filter(|r| !r.is_empty());
            if kind != UpstreamKind::Bedrock {
                for (field, set) in [
                    ("region", u.region.is_some()),
                    ("aws_access_key_id_env", u.aws_access_key_id_env.is_some()),
                    (
                        "aws_secret_access_key_env",
                        u.aws_secret_access_key_env.is_some(),
                    ),
                    ("aws_session_token_env", u.aws_session_token_env.is_some()),
                ] {
                    if set {
                        errs.push(format!("{at}.{field}: only for kind = \"bedrock\""));
                    }
                }
            }
            if kind != UpstreamKind::Anthropic && u.anthropic_version.is_some() {
                errs.push(format!(
                    "{at}.anthropic_version: only for kind = \"anthropic\""
                ));
            }
            if kind == UpstreamKind::Bedrock && u.api_key_env.is_some() {
                errs.push(format!(
                    "{at}.api_key_env: bedrock upstreams sign with AWS credentials (aws_*_env)"
                ));
            }
            let base_url = match (&u.base_url, kind) {
                (Some(b), _) => b.trim_end_matches('/').to_string(),
                (None, UpstreamKind::Anthropic) => "https://api.anthropic.com/v1".to_string(),
                (None, UpstreamKind::Bedrock) => match &region {
                    Some(r) => format!("https://bedrock-runtime.{r}.amazonaws.com"),
                    None => String::new(),
                },
                (None, UpstreamKind::OpenAi) => {
                    errs.push(format!("{at}.base_url: required for kind = \"openai\""));
                    String::new()
                }
            };
            let mut parsed_url = None;
            if !base_url.is_empty() {
                match reqwest::Url::parse(&base_url) {
                    Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
                        parsed_url = Some(url)
                    }
                    Ok(url) => errs.push(format!(
                        "{at}.base_url: scheme {:?} is not http or https",
                        url.scheme()
                    )),
                    Err(e) => errs.push(format!("{at}.base_url: {base_url:?}: {e}")),
                }
            }
            let auth = if kind == UpstreamKind::Bedrock {
                let secret_var = |field: &str,
                                  v: &Option<String>,
                                  default: &str,
                                  required: bool,
                                  errs: &mut Vec<String>| {
                    let var = v.clone().unwrap_or_else(|| default.to_string());
                    match env.get(&var).filter(|x| !x.is_empty()) {
                        Some(x) => Some(SecretString::from(x.clone())),
                        None => {
                            if required {
                                errs.push(format!(
                                    "{at}.{field}: environment variable {var} is not set"
                                ));
                            }
                            None
                        }
                    }
                };
                let akid = secret_var(
                    "aws_access_key_id_env",
                    &u.aws_access_key_id_env,
                    "AWS_ACCESS_KEY_ID",
                    true,
                    &mut errs,
                );
                let secret = secret_var(
                    "aws_secret_access_key_env",
                    &u.aws_secret_access_key_env,
                    "AWS_SECRET_ACCESS_KEY",
                    true,
                    &mut errs,
                );
                let token = secret_var(
                    "aws_session_token_env",
                    &u.aws_session_token_env,
                    "AWS_SESSION_TOKEN",
                    u.aws_session_token_env.is_some(),
                    &mut errs,
                );
                if region.is_none() {
                    errs.push(format!(
                        "{at}.region: required for kind = \"bedrock\" (or set AWS_REGION)"
                    ));
                }
                match (akid, secret, region.clone(), &parsed_url) {
                    (Some(a), Some(s), Some(region), Some(url)) => UpstreamAuth::SigV4 {
                        credentials: Credentials {
                            access_key_id: a.expose_secret().to_string(),
                            secret_access_key: s,
                            session_token: token,
                        },
                        region,
                        host: match url.port() {
                            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
                            None => url.host_str().unwrap_or("").to_string(),
                        },
                        base_path: url.path().trim_end_matches('/').to_string(),
                    },
                    _ => UpstreamAuth::Headers,
                }
            } else {
                UpstreamAuth::Headers
            };
            let api_key = match &u.api_key_env {
                None => None,
                Some(var) => match env.get(var).filter(|v| !v.is_empty()) {
                    Some(v) => Some(SecretString::from(v.clone())),
                    None => {
                        errs.push(format!(
                            "{at}.api_key_env: environment variable {var} is not set"
                        ));
                        None
                    }
                },
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if let Some(key) = &api_key {
                let (name, value) = match kind {
                    UpstreamKind::Anthropic => (
                        http::HeaderName::from_static("x-api-key"),
                        key.expose_secret().to_string(),
                    ),
                    _ => (
                        http::header::AUTHORIZATION,
                        format!("Bearer {}", key.expose_secret()),
                    ),
                };
                match http::HeaderValue::from_str(&value) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        headers.insert(name, v);
                    }
                    Err(_) => errs.push(format!(
                        "{at}.api_key_env: the key is not a valid header value"
                    )),
                }
            }
            for (k, v) in &u.headers {
                match (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(v)) => {
                        headers.insert(k, v);
                    }
                    _ => errs.push(format!("{at}.headers.{k}: not a valid HTTP header")),
                }
            }
            if upstreams.contains_key(&u.name) {
                errs.push(format!("{at}.name: duplicate upstream {:?}", u.name));
            }
            upstreams.insert(
                u.name.clone(),
                Arc::new(Upstream {
                    name: u.name.clone(),
                    kind,
                    base_url,
                    api_key,
                    request_headers: headers,
                    auth,
                    anthropic_version: u.anthropic_version.clone().unwrap_or_else(|| {
                        tollgate_providers::anthropic::DEFAULT_VERSION.to_string()
                    }),
                }),
            );
        }

        let mut deployments = BTreeMap::new();
        for (i, d) in self.deployments.iter().enumerate() {
            let at = format!("deployments[{i}]");
            if d.name.is_empty() {
                errs.push(format!("{at}.name: must not be empty"));
            }
            let Some(upstream) = upstreams.get(&d.upstream).cloned() else {
                errs.push(format!("{at}.upstream: no upstream named {:?}", d.upstream));
                continue;
            };
            let model = d.model.clone().unwrap_or_else(|| d.name.clone());
            let (price_key, price) = if d.price.is_some() {
                let key = deployment_price_key(&d.name);
                let p = prices.get(&key).cloned();
                (Some(key), p)
            } else {
                let wanted = d.price_model.as_deref().unwrap_or(&model);
                match prices.resolve(wanted) {
                    Some((k, p)) if p.is_priced() => (Some(k.to_string()), Some(p.clone())),
                    _ => {
                        if unpriced == UnpricedPolicy::Reject {
                            errs.push(format!(
                                "{at}: no price for {wanted:?} in the price table; set `price_model`, a `price`, or pricing.unpriced = \"flag\""
                            ));
                        }
                        (None, None)
                    }
                }
            };
            if deployments.contains_key(&d.name) {
                errs.push(format!("{at}.name: duplicate deployment {:?}", d.name));
            }
            deployments.insert(
                d.name.clone(),
                Arc::new(Deployment {
                    name: d.name.clone(),
                    upstream,
                    encoding: Encoding::for_model(&model),
                    model,
                    price_key,
                    price,
                    urls: EndpointUrls::default(),
                }),
            );
        }

        let limits = limits::validate(
            &self.budgets,
            &self.rate_limits,
            &self.guard,
            &self.alerts,
            env,
            &mut errs,
        );
        let outcomes = crate::outcomes::validate_config(&self.outcomes, &mut errs);
        let telemetry = crate::telemetry::validate(&self.telemetry, &mut errs);
        let routing = routes::validate_settings(&self.routing, &mut errs);
        let routes = routes::validate(&self.routes, &deployments, &mut errs);

        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Config {
            outcomes,
            telemetry,
            routing,
            routes,
            server: ServerSettings {
                listen,
                max_body_bytes: max_body as usize,
                max_response_bytes: max_resp as usize,
                master_key,
                master_key_env,
                upstream_timeout: Duration::from_millis(up_timeout),
                stream_idle_timeout: Duration::from_millis(idle),
                shutdown_grace: Duration::from_millis(grace),
            },
            ledger: LedgerSettings {
                path: PathBuf::from(self.ledger.path.as_deref().unwrap_or("tollgate.db")),
                durability,
                channel_capacity,
            },
            prices,
            unpriced,
            upstreams,
            deployments,
            limits,
        })
    }
}

/// The price-table key of a deployment's own price.
pub fn deployment_price_key(deployment: &str) -> String {
    format!("deployment:{deployment}")
}

/// Apply `TOLLGATE__A__B=value` as `a.b = value` (numeric segments index arrays; values
/// parse as TOML scalars when they can, else are strings).
fn apply_env(doc: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    let mut vars: Vec<_> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (k, v) in vars {
        let path: Vec<String> = k[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            errs.push(format!("{k}: empty path segment"));
            continue;
        }
        let value = parse_env_value(v);
        if let Err(e) = set_path(doc, &path, value) {
            errs.push(format!("{k}: {e}"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

fn parse_env_value(v: &str) -> toml::Value {
    let doc = format!("v = {v}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(v.to_string())),
        Err(_) => toml::Value::String(v.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (head, rest) = path.split_first().ok_or("empty path")?;
    if rest.is_empty() {
        table.insert(head.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(head.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(entry, rest, value)
}

fn set_in_value(node: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    match node {
        toml::Value::Table(t) => set_path(t, path, value),
        toml::Value::Array(items) => {
            let (head, rest) = path.split_first().ok_or("empty path")?;
            let idx: usize = head
                .parse()
                .map_err(|_| format!("{head:?} is not an array index"))?;
            let slot = items
                .get_mut(idx)
                .ok_or_else(|| format!("index {idx} is past the end of the array"))?;
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                set_in_value(slot, rest, value)
            }
        }
        _ => Err("cannot set a field inside a scalar".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [ledger]
        path = "x.db"
        durability = "strict"
        [[upstreams]]
        name = "openai"
        base_url = "https://api.openai.com/v1/"
        api_key_env = "OPENAI_API_KEY"
        [[deployments]]
        name = "gpt-4o"
        upstream = "openai"
        [[deployments]]
        name = "fast"
        upstream = "openai"
        model = "gpt-4o-mini"
        [[deployments]]
        name = "local"
        upstream = "openai"
        model = "llama3"
        price = { input = "0.1", output = 0.2 }
    "#;

    #[test]
    fn valid_config() {
        let e = env(&[("OPENAI_API_KEY", "sk-x"), ("TOLLGATE_MASTER_KEY", "m")]);
        let c = RawConfig::from_toml(GOOD, &e)
            .unwrap()
            .validate(&e)
            .unwrap();
        assert_eq!(c.ledger.durability, Durability::Strict);
        assert_eq!(c.upstreams["openai"].base_url, "https://api.openai.com/v1");
        assert_eq!(c.deployments["fast"].model, "gpt-4o-mini");
        assert_eq!(
            c.deployments["fast"].price_key.as_deref(),
            Some("gpt-4o-mini")
        );
        let local = &c.deployments["local"];
        assert_eq!(local.price_key.as_deref(), Some("deployment:local"));
        let r = local.price.as_ref().unwrap().rates(0, None).unwrap();
        assert_eq!(r.input.atto(), 100_000_000_000);
        assert_eq!(r.output.atto(), 200_000_000_000);
        assert!(c.server.master_key.is_some());
    }

    #[test]
    fn env_overrides_file() {
        let e = env(&[
            ("OPENAI_API_KEY", "sk-x"),
            ("TOLLGATE__SERVER__LISTEN", "127.0.0.1:5555"),
            ("TOLLGATE__LEDGER__DURABILITY", "batched"),
            ("TOLLGATE__DEPLOYMENTS__1__MODEL", "gpt-4.1-mini"),
        ]);
        let c = RawConfig::from_toml(GOOD, &e)
            .unwrap()
            .validate(&e)
            .unwrap();
        assert_eq!(c.server.listen.port(), 5555);
        assert_eq!(c.ledger.durability, Durability::Batched);
        assert_eq!(c.deployments["fast"].model, "gpt-4.1-mini");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = r#"
            [server]
            listen = "nope"
            [ledger]
            durability = "sometimes"
            [[upstreams]]
            name = "u"
            base_url = "ftp://x"
            api_key_env = "MISSING_KEY"
            [[deployments]]
            name = "a"
            upstream = "ghost"
            [[deployments]]
            name = "b"
            upstream = "u"
            model = "no-such-model-anywhere"
        "#;
        let e = env(&[]);
        let errs = RawConfig::from_toml(text, &e)
            .unwrap()
            .validate(&e)
            .unwrap_err();
        let all = errs.0.join("\n");
        for needle in [
            "server.listen",
            "ledger.durability",
            "upstreams[0].base_url",
            "upstreams[0].api_key_env",
            "deployments[0].upstream",
            "deployments[1]: no price",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let e = env(&[]);
        let err = RawConfig::from_toml("[server]\nlisten_on = \"x\"\n", &e).unwrap_err();
        assert!(err.0[0].contains("server"), "{err}");
        assert!(err.0[0].contains("listen_on"), "{err}");
    }

    #[test]
    fn anthropic_and_bedrock_upstreams() {
        let text = r#"
            [[upstreams]]
            name = "claude"
            kind = "anthropic"
            api_key_env = "ANTHROPIC_API_KEY"
            [[upstreams]]
            name = "aws"
            kind = "bedrock"
            region = "us-east-1"
            aws_session_token_env = "AWS_SESSION_TOKEN"
            [[deployments]]
            name = "sonnet"
            upstream = "claude"
            model = "claude-sonnet-4-5"
            [[deployments]]
            name = "nova-lite"
            upstream = "aws"
            model = "us.amazon.nova-2-lite-v1:0"
            [[deployments]]
            name = "nova-pro"
            upstream = "aws"
            model = "us.amazon.nova-2-pro-preview-20251202-v1:0"
            [[deployments]]
            name = "nova-lite-global"
            upstream = "aws"
            model = "global.amazon.nova-2-lite-v1:0"
            [[deployments]]
            name = "nova-lite-base"
            upstream = "aws"
            model = "amazon.nova-2-lite-v1:0"
        "#;
        let e = env(&[
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
        ]);
        let c = RawConfig::from_toml(text, &e)
            .unwrap()
            .validate(&e)
            .unwrap();
        let claude = &c.upstreams["claude"];
        assert_eq!(claude.base_url, "https://api.anthropic.com/v1");
        assert!(claude.request_headers["x-api-key"].is_sensitive());
        let aws = &c.upstreams["aws"];
        assert_eq!(
            aws.base_url,
            "https://bedrock-runtime.us-east-1.amazonaws.com"
        );
        match &aws.auth {
            UpstreamAuth::SigV4 {
                region,
                host,
                credentials,
                ..
            } => {
                assert_eq!(region, "us-east-1");
                assert_eq!(host, "bedrock-runtime.us-east-1.amazonaws.com");
                assert!(credentials.session_token.is_some());
            }
            other => panic!("{other:?}"),
        }
        // Regional ids are separate catalog entries with their own prices.
        for (name, key) in [
            ("nova-lite", "us.amazon.nova-2-lite-v1:0"),
            ("nova-pro", "us.amazon.nova-2-pro-preview-20251202-v1:0"),
            ("nova-lite-global", "global.amazon.nova-2-lite-v1:0"),
            ("nova-lite-base", "amazon.nova-2-lite-v1:0"),
            ("sonnet", "claude-sonnet-4-5"),
        ] {
            assert_eq!(c.deployments[name].price_key.as_deref(), Some(key));
        }
        let rate = |n: &str| {
            c.deployments[n]
                .price
                .as_ref()
                .unwrap()
                .rates(0, None)
                .unwrap()
                .input
                .atto()
        };
        assert_ne!(rate("nova-lite"), rate("nova-lite-base"));
        // Missing credentials and region are reported with their fields.
        let bad = "[[upstreams]]\nname = \"aws\"\nkind = \"bedrock\"\nanthropic_version = \"x\"\n";
        let e = env(&[]);
        let errs = RawConfig::from_toml(bad, &e)
            .unwrap()
            .validate(&e)
            .unwrap_err()
            .0
            .join("\n");
        for needle in [
            "aws_access_key_id_env",
            "aws_secret_access_key_env",
            "upstreams[0].region",
            "anthropic_version",
        ] {
            assert!(errs.contains(needle), "missing {needle} in:\n{errs}");
        }
    }

    const ROUTED: &str = r#"
        [[upstreams]]
        name = "u"
        base_url = "http://127.0.0.1:1"
        [[deployments]]
        name = "light"
        upstream = "u"
        model = "gpt-4o-mini"
        [[deployments]]
        name = "mid"
        upstream = "u"
        model = "gpt-4.1-mini"
        [[deployments]]
        name = "heavy"
        upstream = "u"
        model = "gpt-4o"
        [routing]
        sticky_conversations = 500
    "#;

    #[test]
    fn routes_resolve_their_policy() {
        let e = env(&[]);
        let text = format!(
            "{ROUTED}
            [[routes]]
            name = \"auto\"
            tiers = [\"light\", \"heavy\"]
            quality_target = 0.95
            [[routes]]
            name = \"support-auto\"
            tiers = [\"light\", \"mid\", \"heavy\"]
            thresholds = [0.3, 0.7]
            mode = \"shadow\"
            default = \"mid\"
            escalate = true
            teams = [\"support\"]
            [[routes]]
            name = \"plain\"
            tiers = [\"light\", \"heavy\"]
            [[routes]]
            name = \"one\"
            tiers = [\"light\", \"heavy\"]
            threshold = 0.4
            "
        );
        let c = RawConfig::from_toml(&text, &e)
            .unwrap()
            .validate(&e)
            .unwrap();
        assert_eq!(c.routing.sticky_conversations, 500);
        let auto = &c.routes["auto"];
        assert_eq!(auto.tiers.len(), 2);
        assert_eq!(auto.mode, tollgate_domain::ledger::RouteMode::Enforce);
        assert_eq!(auto.default_tier, 1);
        assert!(!auto.escalate && auto.sticky);
        // The quality target resolves through the model's calibration.
        let want = auto.router.policy_for_quality(0.95).unwrap();
        assert_eq!(auto.policy, want);
        assert!(auto.allows(None, None));
        let s = &c.routes["support-auto"];
        assert_eq!(s.policy.thresholds(), &[0.3, 0.7]);
        assert_eq!(s.default_tier, 1);
        assert!(s.allows(Some("support"), None));
        assert!(!s.allows(Some("sales"), Some("bot")));
        // No policy: the model's own calibrated threshold.
        assert_eq!(
            c.routes["plain"].policy,
            c.routes["plain"].router.default_policy()
        );
    }

    #[test]
    fn bad_routes_are_reported_with_their_paths() {
        let e = env(&[]);
        let text = format!(
            "{ROUTED}
            [[routes]]
            name = \"one\"
            tiers = [\"light\"]
            [[routes]]
            name = \"ghost\"
            tiers = [\"light\", \"nope\"]
            [[routes]]
            name = \"th\"
            tiers = [\"light\", \"heavy\"]
            thresholds = [1.5]
            [[routes]]
            name = \"order\"
            tiers = [\"light\", \"mid\", \"heavy\"]
            thresholds = [0.8, 0.2]
            [[routes]]
            name = \"count\"
            tiers = [\"light\", \"mid\", \"heavy\"]
            thresholds = [0.5]
            [[routes]]
            name = \"heavy\"
            tiers = [\"light\", \"heavy\"]
            mode = \"sometimes\"
            [[routes]]
            name = \"q\"
            tiers = [\"light\", \"heavy\"]
            quality_target = 1.5
            [[routes]]
            name = \"both\"
            tiers = [\"light\", \"heavy\"]
            quality_target = 0.9
            thresholds = [0.5]
            [[routes]]
            name = \"file\"
            tiers = [\"light\", \"heavy\"]
            model = \"/nonexistent/router.bin\"
            [[routes]]
            name = \"dflt\"
            tiers = [\"light\", \"heavy\"]
            mode = \"shadow\"
            default = \"mid\"
            "
        );
        let errs = RawConfig::from_toml(&text, &e)
            .unwrap()
            .validate(&e)
            .unwrap_err()
            .0
            .join("\n");
        for needle in [
            "routes[0].tiers: a route needs at least two tiers",
            "routes[1].tiers[1]: no deployment named \"nope\"",
            "routes[2].thresholds: tier policy: thresholds must be within [0, 1]",
            "routes[3].thresholds: tier policy: thresholds must be non-decreasing",
            "routes[4].thresholds: 3 tiers need 2 threshold(s), got 1",
            "routes[5].name: \"heavy\" is also a deployment name",
            "routes[5].mode: \"sometimes\"",
            "routes[6].quality_target: 1.5 is not within (0, 1]",
            "routes[7]: set `quality_target` or `threshold(s)`, not both",
            "routes[8].model (/nonexistent/router.bin)",
            "routes[9].default: \"mid\" is not one of the route's tiers",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
        let unknown =
            RawConfig::from_toml("[[routes]]\nname = \"a\"\nladder = []\n", &e).unwrap_err();
        assert!(unknown.0[0].contains("routes"), "{unknown}");
    }

    #[test]
    fn unpriced_flag_policy_allows_unknown_models() {
        let text = r#"
            [pricing]
            unpriced = "flag"
            [[upstreams]]
            name = "u"
            base_url = "http://127.0.0.1:1"
            [[deployments]]
            name = "b"
            upstream = "u"
            model = "no-such-model-anywhere"
        "#;
        let e = env(&[]);
        let c = RawConfig::from_toml(text, &e)
            .unwrap()
            .validate(&e)
            .unwrap();
        assert!(c.deployments["b"].price.is_none());
    }
}

//! `[[upstreams]]`: the servers tollgate calls (OpenAI-compatible, Anthropic, Bedrock),
//! their base URLs and how calls to them are authenticated. Secrets come from the
//! environment, never from the file.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tollgate_providers::sigv4::Credentials;
use tollgate_providers::translate::Format;

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

/// Validate `[[upstreams]]`, reading keys and AWS credentials from `env`.
pub fn validate(
    raw: &[RawUpstream],
    env: &HashMap<String, String>,
    errs: &mut Vec<String>,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut upstreams = BTreeMap::new();
    for (i, u) in raw.iter().enumerate() {
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
                errs,
            );
            let secret = secret_var(
                "aws_secret_access_key_env",
                &u.aws_secret_access_key_env,
                "AWS_SECRET_ACCESS_KEY",
                true,
                errs,
            );
            let token = secret_var(
                "aws_session_token_env",
                &u.aws_session_token_env,
                "AWS_SESSION_TOKEN",
                u.aws_session_token_env.is_some(),
                errs,
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
                anthropic_version: u
                    .anthropic_version
                    .clone()
                    .unwrap_or_else(|| tollgate_providers::anthropic::DEFAULT_VERSION.to_string()),
            }),
        );
    }

    upstreams
}

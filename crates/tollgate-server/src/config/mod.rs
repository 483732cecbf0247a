//! Configuration: one TOML file, overridden by `TOLLGATE__SECTION__KEY` environment
//! variables, validated into a [`Config`] where illegal states cannot be written.
//!
//! Precedence: built-in defaults < file < environment < command-line flags (the binary
//! applies flags to the raw config before validation). Secrets (upstream API keys, the
//! master key) are never in the file: the file names the environment variables that
//! hold them.
//!
//! # Layout
//! A leaf of the server crate: it imports no other module of it, and no HTTP handler
//! type. One file per section, each with its raw (serde, `deny_unknown_fields`) type and
//! its validated type and `validate` function; this file only assembles them:
//! [`server`] `[server]`, [`ledger`] `[ledger]`, [`pricing`] `[pricing]` and deployment
//! prices, [`upstreams`] `[[upstreams]]`, [`deployments`] `[[deployments]]`,
//! [`budgets`] `[budgets]`, [`rate_limits`] `[[rate_limits]]`, [`guard`] `[guard]`,
//! [`alerts`] `[alerts]` (the four together are [`LimitsConfig`]), [`store`] `[store]`,
//! [`outcomes`]
//! `[outcomes]`, [`telemetry`] `[telemetry]`, [`routing`] `[routing]`, [`routes`]
//! `[[routes]]`, [`cache`] `[cache]`, [`pruning`] `[pruning]`; [`usd`] the one dollar-amount type, [`env`] the overrides.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use tollgate_domain::pricing::PriceTable;

pub mod alerts;
pub mod applies;
pub mod budgets;
pub mod cache;
pub mod deployments;
mod env;
pub mod guard;
pub mod ledger;
pub mod limits;
pub mod outcomes;
pub mod pricing;
pub mod pruning;
pub mod rate_limits;
pub mod routes;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstreams;
pub mod usd;

pub use deployments::{Deployment, Endpoint, EndpointUrls, RawDeployment};
pub use ledger::{LedgerSettings, RawLedger};
pub use limits::LimitsConfig;
pub use outcomes::{OutcomeSettings, RawOutcomes};
pub use pricing::{PriceText, RawPrice, RawPricing, UnpricedPolicy, deployment_price_key};
pub use routes::Route;
pub use routing::RoutingSettings;
pub use server::{DEFAULT_LISTEN, DEFAULT_MASTER_KEY_ENV, RawServer, ServerSettings};
pub use telemetry::{OtlpSettings, RawTelemetry, TelemetrySettings};
pub use upstreams::{RawUpstream, Upstream, UpstreamAuth, UpstreamKind};
pub use usd::UsdText;

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
    pub store: store::RawStore,
    #[serde(default)]
    pub pricing: RawPricing,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub deployments: Vec<RawDeployment>,
    #[serde(default)]
    pub budgets: budgets::RawBudgets,
    #[serde(default)]
    pub rate_limits: Vec<rate_limits::RawRateLimit>,
    #[serde(default)]
    pub guard: guard::RawGuard,
    #[serde(default)]
    pub alerts: alerts::RawAlerts,
    #[serde(default)]
    pub outcomes: RawOutcomes,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub routing: routing::RawRouting,
    #[serde(default)]
    pub routes: Vec<routes::RawRoute>,
    #[serde(default)]
    pub cache: cache::RawCache,
    #[serde(default)]
    pub pruning: pruning::RawPruning,
}

// ---------------------------------------------------------------------------------------
// Validated.

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub ledger: LedgerSettings,
    /// SQLite (the embedded default) or PostgreSQL shared by replicas.
    pub store: store::StoreSettings,
    pub prices: Arc<PriceTable>,
    pub unpriced: UnpricedPolicy,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub deployments: BTreeMap<String, Arc<Deployment>>,
    /// Budgets, rate limits, the runaway-agent guard, alerts.
    pub limits: LimitsConfig,
    pub outcomes: OutcomeSettings,
    pub telemetry: TelemetrySettings,
    pub routing: RoutingSettings,
    /// Routed model names (`auto`) → their ladder and policy.
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Provider prompt caching and the response cache.
    pub cache: cache::CacheSettings,
    /// Token pruning of long histories.
    pub pruning: pruning::PruningSettings,
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

/// A count that must be positive: `default` when unset; 0 is an error at `name`.
pub(crate) fn positive(errs: &mut Vec<String>, name: &str, v: Option<u64>, default: u64) -> u64 {
    match v {
        Some(0) => {
            errs.push(format!("{name}: must be greater than zero"));
            default
        }
        Some(n) => n,
        None => default,
    }
}

impl RawConfig {
    /// Parse TOML text, then apply `TOLLGATE__...` overrides from `env`.
    pub fn from_toml(text: &str, env: &HashMap<String, String>) -> Result<RawConfig, ConfigErrors> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("toml: {e}")]))?;
        env::apply_env(&mut doc, env)?;
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
        let t = pricing::build_prices(&self.pricing, &self.deployment_prices(), &mut errs);
        if errs.is_empty() {
            Ok(t)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Each deployment's own `price`, with its index and name.
    fn deployment_prices(&self) -> Vec<(usize, &str, &RawPrice)> {
        self.deployments
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.price.as_ref().map(|p| (i, d.name.as_str(), p)))
            .collect()
    }

    /// Validate into a [`Config`], reading secrets from `env`. Every section is
    /// validated, so every problem is reported at once.
    pub fn validate(&self, env: &HashMap<String, String>) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let server = server::validate(&self.server, env, &mut errs);
        let ledger = ledger::validate(&self.ledger, &mut errs);
        let store = store::validate(&self.store, &ledger.path, env, &mut errs);
        let unpriced = pricing::unpriced_policy(&self.pricing, &mut errs);
        let prices = Arc::new(pricing::build_prices(
            &self.pricing,
            &self.deployment_prices(),
            &mut errs,
        ));
        let upstreams = upstreams::validate(&self.upstreams, env, &mut errs);
        let deployments =
            deployments::validate(&self.deployments, &upstreams, &prices, unpriced, &mut errs);
        let limits = limits::validate(
            &self.budgets,
            &self.rate_limits,
            &self.guard,
            &self.alerts,
            env,
            &mut errs,
        );
        let outcomes = outcomes::validate(&self.outcomes, &mut errs);
        let telemetry = telemetry::validate(&self.telemetry, &mut errs);
        let routing = routing::validate(&self.routing, &mut errs);
        let routes = routes::validate(&self.routes, &deployments, &mut errs);
        let cache = cache::validate(&self.cache, &ledger.path, &mut errs);
        let pruning = pruning::validate(&self.pruning, &mut errs);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Config {
            server,
            ledger,
            store,
            prices,
            unpriced,
            upstreams,
            deployments,
            limits,
            outcomes,
            telemetry,
            routing,
            routes,
            cache,
            pruning,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_store::Durability;

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

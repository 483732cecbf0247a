//! What-if replay over the store: the policy file, the targets it can send traffic to,
//! and the paged run that feeds ledger rows to the pure engine
//! (`tollgate_domain::replay`). Used by `tollgate replay` and `POST /admin/replay`.
//!
//! The policy file is a small TOML of its own (not a whole gateway config), every
//! section optional, every lever "as recorded" unless set:
//!
//! ```toml
//! [[swap]]                      # model swap / price change for some or all traffic
//! from = "gpt-4o"               # a deployment, or "*"
//! to = "gpt-4o-mini"            # a deployment, or a model id of the price catalog
//! token_ratio = 1.0             # tokens on `to` per token on `from` (approximation;
//!                               # default 1, noted when the tokenizers differ)
//!
//! [prices."gpt-4o-mini"]        # another price for a target (USD per million tokens)
//! input = "0.10"
//! output = "0.40"
//!
//! [routes.auto]                 # another threshold / quality target / ladder
//! tiers = ["gpt-4o-mini", "gpt-4o"]   # default: the configured ladder
//! threshold = 0.7               # or thresholds = [...], or quality_target = 0.9
//!
//! [prompt_cache]
//! mode = "on"                   # "off", "on" or "as_recorded"
//! ttl = "5m"                    # with "on": "5m" or "1h"
//!
//! [response_cache]
//! mode = "off"                  # "off", "as_recorded", or "on" with min_similarity
//! # min_similarity = 0.97
//!
//! [pruning]
//! mode = "off"                  # "off" or "as_recorded"
//! ```

use crate::config::pricing::flat_price;
use crate::config::{Config, RawConfig, RawPrice, deployment_price_key};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tollgate_domain::outcome::OutcomeStatus;
use tollgate_domain::pricing::{ModelPrice, PriceTable};
use tollgate_domain::prompt_cache::{RuleTable, Ttl};
use tollgate_domain::replay::{
    Catalog, PPM, Policy, PromptCacheLever, PruningLever, Replay, ReplayReport, ResponseCacheLever,
    RoutePolicy, Swap, Target,
};
use tollgate_domain::report::GroupBy;
use tollgate_domain::routing::{Router, TierPolicy};
use tollgate_providers::tokenizer::Encoding;
use tollgate_store::{LedgerStore, OutcomeStore, Store, StoreError};

/// Rows read per page.
pub const PAGE_ROWS: usize = 5_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub swap: Vec<RawSwap>,
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    pub routes: BTreeMap<String, RawRoutePolicy>,
    pub prompt_cache: Option<RawLever>,
    pub response_cache: Option<RawLever>,
    pub pruning: Option<RawLever>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwap {
    pub from: String,
    pub to: String,
    pub token_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoutePolicy {
    #[serde(default)]
    pub tiers: Vec<String>,
    pub threshold: Option<f64>,
    pub thresholds: Option<Vec<f64>>,
    pub quality_target: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLever {
    pub mode: Option<String>,
    pub ttl: Option<String>,
    pub min_similarity: Option<f64>,
}

/// A deployment (or catalog model) a policy may send rows to.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub name: String,
    /// The upstream model id (its tokenizer and prompt-cache rules).
    pub model: String,
    pub price: Option<Arc<ModelPrice>>,
    pub cache_min_override: Option<u64>,
}

/// The configured routes: name → (ladder, whether it scores with the embedded router).
pub type RouteLadders = BTreeMap<String, (Vec<String>, bool)>;

/// What the running gateway knows: its deployments and routes.
pub fn targets_from_config(cfg: &Config) -> (Vec<TargetSpec>, RouteLadders) {
    let targets = cfg
        .deployments
        .values()
        .map(|d| TargetSpec {
            name: d.name.clone(),
            model: d.model.clone(),
            price: d.price.clone(),
            cache_min_override: d.prompt_cache_min_tokens,
        })
        .collect();
    let routes = cfg
        .routes
        .values()
        .map(|r| {
            (
                r.name.clone(),
                (
                    r.tiers.iter().map(|d| d.name.clone()).collect(),
                    r.model_id == "embedded",
                ),
            )
        })
        .collect();
    (targets, routes)
}

/// The same from a config file that is not validated (no upstream secrets needed):
/// each deployment priced as the gateway resolves it.
pub fn targets_from_raw(raw: &RawConfig, prices: &PriceTable) -> (Vec<TargetSpec>, RouteLadders) {
    let targets = raw
        .deployments
        .iter()
        .map(|d| {
            let model = d.model.clone().unwrap_or_else(|| d.name.clone());
            let price = if d.price.is_some() {
                prices.get(&deployment_price_key(&d.name)).cloned()
            } else {
                let wanted = d.price_model.as_deref().unwrap_or(&model);
                prices.resolve(wanted).map(|(_, p)| p.clone())
            };
            TargetSpec {
                name: d.name.clone(),
                model,
                price,
                cache_min_override: d.prompt_cache_min_tokens,
            }
        })
        .collect();
    let routes = raw
        .routes
        .iter()
        .map(|r| (r.name.clone(), (r.tiers.clone(), r.model.is_none())))
        .collect();
    (targets, routes)
}

/// A validated policy, the prices it replays at, and notes on its approximations.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub policy: Policy,
    pub catalog: Catalog,
    pub notes: Vec<String>,
}

/// Parse a policy file's text.
pub fn parse_policy(text: &str) -> Result<RawPolicy, Vec<String>> {
    toml::from_str(text).map_err(|e| vec![format!("policy: {}", e.message())])
}

fn lever_mode<'a>(l: &'a RawLever, at: &str, allowed: &[&str], errs: &mut Vec<String>) -> &'a str {
    let m = l.mode.as_deref().unwrap_or("as_recorded");
    if !allowed.contains(&m) {
        errs.push(format!("{at}.mode: {m:?} is not one of {allowed:?}"));
    }
    m
}

/// `a` is a lighter model than `b`: both its standard input and output rates are lower
/// (the price is the only size signal every catalog entry has).
fn cheaper(a: &ModelPrice, b: &ModelPrice) -> bool {
    match (a.rates(0, None), b.rates(0, None)) {
        (Some(x), Some(y)) => x.input < y.input && x.output < y.output,
        _ => false,
    }
}

/// Validate `raw` against the known targets; every problem at once, with its path.
pub fn prepare(
    raw: &RawPolicy,
    targets: &[TargetSpec],
    routes: &RouteLadders,
    prices: &PriceTable,
) -> Result<Prepared, Vec<String>> {
    let mut errs = Vec::new();
    let mut notes = Vec::new();
    let rules = RuleTable::builtin().map_err(|e| vec![format!("prompt-cache rules: {e}")])?;
    let mut specs: HashMap<String, TargetSpec> = targets
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    // A target named by the policy that is no deployment: a catalog model.
    let mut want = |name: &str, at: &str, errs: &mut Vec<String>| {
        if specs.contains_key(name) || name == "*" {
            return;
        }
        match prices.resolve(name) {
            Some((_, p)) => {
                specs.insert(
                    name.to_string(),
                    TargetSpec {
                        name: name.to_string(),
                        model: name.to_string(),
                        price: Some(p.clone()),
                        cache_min_override: None,
                    },
                );
            }
            None if raw.prices.contains_key(name) => {
                specs.insert(
                    name.to_string(),
                    TargetSpec {
                        name: name.to_string(),
                        model: name.to_string(),
                        price: None,
                        cache_min_override: None,
                    },
                );
            }
            None => errs.push(format!(
                "{at}: {name:?} is neither a deployment nor a model of the price table"
            )),
        }
    };
    for (i, s) in raw.swap.iter().enumerate() {
        if s.from != "*" && !targets.iter().any(|t| t.name == s.from) {
            errs.push(format!("swap[{i}].from: no deployment {:?}", s.from));
        }
        want(&s.to, &format!("swap[{i}].to"), &mut errs);
    }
    for (name, r) in &raw.routes {
        for (j, t) in r.tiers.iter().enumerate() {
            want(t, &format!("routes.{name}.tiers[{j}]"), &mut errs);
        }
    }
    for name in raw.prices.keys() {
        want(name, &format!("prices.{name}"), &mut errs);
    }
    let mut changed_prices = false;
    for (name, p) in &raw.prices {
        let price = flat_price(p, &format!("prices.{name}"), &mut errs);
        if let Some(s) = specs.get_mut(name) {
            s.price = Some(Arc::new(price));
            changed_prices = true;
        }
    }

    let mut swaps = Vec::new();
    for (i, s) in raw.swap.iter().enumerate() {
        let enc_from = specs.get(&s.from).map(|t| Encoding::for_model(&t.model));
        let enc_to = specs.get(&s.to).map(|t| Encoding::for_model(&t.model));
        let ratio = match s.token_ratio {
            Some(r) if r.is_finite() && r > 0.0 && r <= 100.0 => (r * PPM as f64).round() as u64,
            Some(r) => {
                errs.push(format!(
                    "swap[{i}].token_ratio: {r} is not a ratio in (0, 100]"
                ));
                PPM
            }
            None => {
                if s.from == "*" || enc_from != enc_to {
                    notes.push(format!(
                        "swap {} → {}: token counts kept as recorded (tokenizer ratio unknown; set token_ratio)",
                        s.from, s.to
                    ));
                }
                PPM
            }
        };
        let lighter = match (
            specs.get(&s.from).and_then(|t| t.price.as_deref()),
            specs.get(&s.to).and_then(|t| t.price.as_deref()),
        ) {
            (Some(a), Some(b)) => cheaper(b, a),
            _ => false,
        };
        swaps.push(Swap {
            from: s.from.clone(),
            to: s.to.clone(),
            token_ratio_ppm: ratio,
            lighter,
        });
    }
    if !swaps.is_empty() {
        notes.push(
            "model swap: token counts converted by the tokenizer ratio (an approximation of the same text in another tokenizer); a swap to a model with lower input and output rates counts as a lighter tier for quality risk".into(),
        );
    }

    let mut route_policies = BTreeMap::new();
    for (name, r) in &raw.routes {
        let at = format!("routes.{name}");
        let Some((ladder, embedded)) = routes.get(name) else {
            errs.push(format!("{at}: no configured route {name:?}"));
            continue;
        };
        let tiers = if r.tiers.is_empty() {
            ladder.clone()
        } else {
            r.tiers.clone()
        };
        if tiers.len() < 2 {
            errs.push(format!("{at}.tiers: a ladder needs at least two tiers"));
            continue;
        }
        let policy = match (r.threshold, &r.thresholds, r.quality_target) {
            (Some(t), None, None) => TierPolicy::two_tier(t).map_err(|e| e.to_string()),
            (None, Some(ts), None) => TierPolicy::new(ts.clone()).map_err(|e| e.to_string()),
            (None, None, Some(q)) if *embedded && tiers.len() == 2 => Router::embedded()
                .and_then(|router| router.policy_for_quality(q))
                .map_err(|e| e.to_string()),
            (None, None, Some(_)) => Err(
                "quality_target resolves a light/heavy threshold with the embedded router's calibration; give `threshold(s)` for this route".into(),
            ),
            (None, None, None) => Err("set `threshold`, `thresholds` or `quality_target`".into()),
            _ => Err("set only one of `threshold`, `thresholds`, `quality_target`".into()),
        };
        match policy {
            Ok(p) if p.tiers() == tiers.len() => {
                route_policies.insert(name.clone(), RoutePolicy { tiers, policy: p });
            }
            Ok(p) => errs.push(format!(
                "{at}: {} tiers need {} threshold(s), got {}",
                tiers.len(),
                tiers.len() - 1,
                p.tiers() - 1
            )),
            Err(e) => errs.push(format!("{at}: {e}")),
        }
    }
    if !route_policies.is_empty() {
        notes.push(
            "routing: each routed call's recorded router score under the new tier policy; quality risk = successful tasks with a call moved to a lighter tier".into(),
        );
    }

    let prompt_cache = match &raw.prompt_cache {
        None => PromptCacheLever::AsRecorded,
        Some(l) => match lever_mode(l, "prompt_cache", &["as_recorded", "off", "on"], &mut errs) {
            "off" => PromptCacheLever::Off,
            "on" => {
                notes.push("prompt cache: simulated on each row's recorded stable prefix (tools and system prompt) and arrival time, per key and target, with each model's minimum cacheable tokens; rows that used a prompt cache keep their recorded token classes".into());
                match l.ttl.as_deref().unwrap_or("5m") {
                    "5m" => PromptCacheLever::On(Ttl::FiveMinutes),
                    "1h" => PromptCacheLever::On(Ttl::OneHour),
                    o => {
                        errs.push(format!("prompt_cache.ttl: {o:?} is not \"5m\" or \"1h\""));
                        PromptCacheLever::AsRecorded
                    }
                }
            }
            _ => PromptCacheLever::AsRecorded,
        },
    };
    let response_cache = match &raw.response_cache {
        None => ResponseCacheLever::AsRecorded,
        Some(l) => match lever_mode(
            l,
            "response_cache",
            &["as_recorded", "off", "on"],
            &mut errs,
        ) {
            "off" => ResponseCacheLever::Off,
            "on" => match l.min_similarity {
                Some(s) if (0.0..=1.0).contains(&s) => {
                    notes.push("response cache: semantic hits below min_similarity become paid calls; a lower threshold than recorded cannot add hits (a miss's similarity is not recorded)".into());
                    ResponseCacheLever::MinSimilarity((s * PPM as f64).round() as u32)
                }
                _ => {
                    errs.push(
                        "response_cache.min_similarity: with mode = \"on\", a similarity in [0, 1]"
                            .into(),
                    );
                    ResponseCacheLever::AsRecorded
                }
            },
            _ => ResponseCacheLever::AsRecorded,
        },
    };
    let pruning = match &raw.pruning {
        None => PruningLever::AsRecorded,
        Some(l) => match lever_mode(l, "pruning", &["as_recorded", "off"], &mut errs) {
            "off" => PruningLever::Off,
            _ => PruningLever::AsRecorded,
        },
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let catalog = Catalog {
        // New prices: every row is re-priced (the recorded hash no longer matches).
        hash: if changed_prices {
            format!("{}+replay", prices.hash())
        } else {
            prices.hash().to_string()
        },
        targets: specs
            .into_values()
            .map(|t| {
                let min = t
                    .cache_min_override
                    .or_else(|| rules.lookup(&t.model).map(|r| r.min_tokens));
                (
                    t.name,
                    Target {
                        price: t.price,
                        cache_min_tokens: min,
                        encoding: Some(
                            match Encoding::for_model(&t.model) {
                                Encoding::O200kBase => "o200k_base",
                                Encoding::Cl100kBase => "cl100k_base",
                            }
                            .into(),
                        ),
                    },
                )
            })
            .collect(),
    };
    Ok(Prepared {
        policy: Policy {
            swaps,
            routes: route_policies,
            prompt_cache,
            response_cache,
            pruning,
        },
        catalog,
        notes,
    })
}

/// The replay's answer with the window and the notes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayOutput {
    pub since_ms: i64,
    pub until_ms: i64,
    pub rows: u64,
    #[serde(flatten)]
    pub report: ReplayReport,
    pub notes: Vec<String>,
}

/// Replay `[since_ms, until_ms)` page by page (oldest first); `progress` is called after
/// each page with the rows done and the last row's time.
pub async fn run(
    store: &Store,
    prepared: Prepared,
    by: Option<GroupBy>,
    since_ms: i64,
    until_ms: i64,
    mut progress: impl FnMut(u64, i64),
) -> Result<ReplayOutput, StoreError> {
    let mut engine = Replay::new(prepared.policy, prepared.catalog, by);
    let mut after = None;
    let mut rows = 0u64;
    loop {
        let page = store
            .ledger_page(since_ms, until_ms, after, PAGE_ROWS)
            .await?;
        let last_ts = page.rows.last().map_or(until_ms, |r| r.ts_ms);
        for r in &page.rows {
            engine.add(r);
        }
        rows += page.rows.len() as u64;
        progress(rows, last_ts);
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    // The outcomes of the tasks with calls in the window.
    let outcomes = store.outcomes_in_window(since_ms, until_ms).await?;
    let succeeded: BTreeSet<String> = outcomes
        .into_iter()
        .filter(|(_, o)| o.outcome.status == OutcomeStatus::Success)
        .map(|(t, _)| t)
        .collect();
    Ok(ReplayOutput {
        since_ms,
        until_ms,
        rows,
        report: engine.finish(&succeeded),
        notes: prepared.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> (Vec<TargetSpec>, RouteLadders, PriceTable) {
        let prices = PriceTable::from_catalog_json(
            r#"{"gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05},
                "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07},
                "claude-haiku-4-5": {"input_cost_per_token": 1e-06, "output_cost_per_token": 5e-06}}"#,
            "t",
        )
        .unwrap();
        let t = |n: &str| TargetSpec {
            name: n.into(),
            model: n.into(),
            price: prices.get(n).cloned(),
            cache_min_override: None,
        };
        let mut routes = RouteLadders::new();
        routes.insert(
            "auto".into(),
            (vec!["gpt-4o-mini".into(), "gpt-4o".into()], true),
        );
        (vec![t("gpt-4o"), t("gpt-4o-mini")], routes, prices)
    }

    #[test]
    fn a_full_policy_validates() {
        let (t, r, p) = specs();
        let raw = parse_policy(
            r#"
            [[swap]]
            from = "gpt-4o"
            to = "claude-haiku-4-5"
            token_ratio = 1.2
            [prices."gpt-4o-mini"]
            input = "0.10"
            output = "0.40"
            [routes.auto]
            threshold = 0.7
            [prompt_cache]
            mode = "on"
            ttl = "1h"
            [response_cache]
            mode = "on"
            min_similarity = 0.97
            [pruning]
            mode = "off"
            "#,
        )
        .unwrap();
        let prep = prepare(&raw, &t, &r, &p).unwrap();
        assert_eq!(prep.policy.swaps[0].token_ratio_ppm, 1_200_000);
        assert!(
            prep.policy.swaps[0].lighter,
            "haiku's rates are below gpt-4o's"
        );
        assert_eq!(prep.policy.prompt_cache, PromptCacheLever::On(Ttl::OneHour));
        assert_eq!(
            prep.policy.response_cache,
            ResponseCacheLever::MinSimilarity(970_000)
        );
        assert_eq!(prep.policy.pruning, PruningLever::Off);
        assert_eq!(prep.policy.routes["auto"].tiers, ["gpt-4o-mini", "gpt-4o"]);
        assert!(prep.catalog.targets.contains_key("claude-haiku-4-5"));
        assert_ne!(prep.catalog.hash, p.hash(), "new prices re-price every row");
        // OpenAI models cache from 1,024 tokens (the built-in rules).
        assert_eq!(prep.catalog.targets["gpt-4o"].cache_min_tokens, Some(1024));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let (t, r, p) = specs();
        let raw = parse_policy(
            r#"
            [[swap]]
            from = "nope"
            to = "not-a-model"
            [routes.other]
            threshold = 0.5
            [routes.auto]
            thresholds = [0.2, 0.5]
            [prompt_cache]
            mode = "sometimes"
            "#,
        )
        .unwrap();
        let errs = prepare(&raw, &t, &r, &p).unwrap_err();
        let text = errs.join("\n");
        for want in [
            "swap[0].from",
            "swap[0].to",
            "routes.other",
            "routes.auto: 2 tiers need 1",
            "prompt_cache.mode",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
        assert!(
            parse_policy("[bogus]\nx = 1").is_err(),
            "unknown sections refused"
        );
    }
}

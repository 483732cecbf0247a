//! `[[deployments]]`: the model names clients ask for, the upstream and model id that
//! serve each, and its price.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_domain::pricing::{ModelPrice, PriceTable};
use tollgate_providers::tokenizer::Encoding;

use super::pricing::{RawPrice, UnpricedPolicy, deployment_price_key};
use super::upstreams::Upstream;

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
    /// The shortest prefix the provider caches, when it differs from the documented
    /// minimum for the model family (see `cache` misses).
    pub prompt_cache_min_tokens: Option<u64>,
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
    /// The minimum cacheable prefix, when the config overrides the model family's.
    pub prompt_cache_min_tokens: Option<u64>,
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
    ) -> Result<tollgate_providers::Url, String> {
        let slot = &self.slots[endpoint as usize];
        if let Some(u) = slot.get() {
            return Ok(u.clone());
        }
        let u = tollgate_providers::Url::parse(&format!("{base}{path}"))
            .map_err(|e| format!("invalid upstream URL {base}{path}: {e}"))?;
        let _ = slot.set(u.clone());
        Ok(u)
    }
}

/// Validate `[[deployments]]` against the upstreams and the price table.
pub fn validate(
    raw: &[RawDeployment],
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    prices: &PriceTable,
    unpriced: UnpricedPolicy,
    errs: &mut Vec<String>,
) -> BTreeMap<String, Arc<Deployment>> {
    let mut deployments = BTreeMap::new();
    for (i, d) in raw.iter().enumerate() {
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
                prompt_cache_min_tokens: d.prompt_cache_min_tokens,
            }),
        );
    }

    deployments
}

//! `[pricing]` and per-deployment `price`s: the effective price table (the embedded
//! community catalog, catalog files over it, then explicit deployment prices, all in
//! the table so its hash covers them).

use serde::Deserialize;
use tollgate_domain::money::Rate;
use tollgate_domain::pricing::{
    DEFAULT_CATALOG_JSON, DEFAULT_CATALOG_SOURCE, ModelPrice, PriceTable, PriceTableBuilder,
    TokenRates,
};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpricedPolicy {
    Reject,
    Flag,
}

/// Validate `pricing.unpriced`.
pub fn unpriced_policy(raw: &RawPricing, errs: &mut Vec<String>) -> UnpricedPolicy {
    match raw.unpriced.as_deref() {
        None | Some("reject") => UnpricedPolicy::Reject,
        Some("flag") => UnpricedPolicy::Flag,
        Some(o) => {
            errs.push(format!(
                "pricing.unpriced: {o:?} is not one of \"reject\", \"flag\""
            ));
            UnpricedPolicy::Reject
        }
    }
}

/// The effective price table: the embedded catalog, then `pricing.catalogs` files,
/// then per-deployment prices (which go in the table so its hash covers them).
/// `prices`: each deployment's own `price`, with its index in `[[deployments]]` and its
/// name.
pub fn build_prices(
    pricing: &RawPricing,
    prices: &[(usize, &str, &RawPrice)],
    errs: &mut Vec<String>,
) -> PriceTable {
    let mut builder = PriceTableBuilder::default();
    if pricing.embedded_catalog.unwrap_or(true)
        && let Err(e) = builder.merge_catalog_json(DEFAULT_CATALOG_JSON, DEFAULT_CATALOG_SOURCE)
    {
        errs.push(format!("embedded price catalog: {e}"));
    }
    for (i, path) in pricing.catalogs.iter().enumerate() {
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
    for &(i, name, p) in prices {
        let price = flat_price(p, &format!("deployments[{i}].price"), errs);
        builder.insert(
            &deployment_price_key(name),
            price,
            &format!("config:deployments[{i}].price"),
        );
    }
    builder.build()
}

/// A price written in config (USD per million tokens) as a flat model price; problems
/// are pushed onto `errs` under `at` (`deployments[2].price`).
pub fn flat_price(p: &RawPrice, at: &str, errs: &mut Vec<String>) -> ModelPrice {
    let mut rates = TokenRates::default();
    let mut set = |field: &str, v: &Option<PriceText>, slot: &mut Option<Rate>| {
        if let Some(v) = v {
            match v.parse_per_mtok() {
                Ok(r) => *slot = Some(r),
                Err(e) => errs.push(format!("{at}.{field}: {e}")),
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
            "{at}: needs at least `input` and `output` (USD per million tokens)"
        ));
    }
    ModelPrice::flat(rates)
}

/// The price-table key of a deployment's own price.
pub fn deployment_price_key(deployment: &str) -> String {
    format!("deployment:{deployment}")
}

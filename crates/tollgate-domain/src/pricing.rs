//! Price tables in the community catalog format (`model_prices.json`, USD per token).
//!
//! A [`PriceTable`] maps a model id to its [`ModelPrice`]: base rates, long-context tiers
//! (`*_above_200k_tokens`, `*_above_272k_tokens`, ...: once a request's prompt crosses the
//! threshold, the whole request is priced at that tier) and service tiers (`*_priority`,
//! `*_flex`, selected by the `service_tier` a provider reports). The table carries a
//! [`PriceTable::hash`] over its canonical content; every ledger row records the hash of
//! the table that priced it, so any figure can be re-derived later.

use crate::money::{MoneyError, Rate};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Rates for one context tier. `None` means the catalog gives no separate rate; the
/// fallbacks are in [`TokenRates::effective`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenRates {
    pub input: Option<Rate>,
    pub output: Option<Rate>,
    pub cache_read: Option<Rate>,
    pub cache_write_5m: Option<Rate>,
    pub cache_write_1h: Option<Rate>,
    pub reasoning: Option<Rate>,
}

/// Fully resolved rates: what each kind of token costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveRates {
    pub input: Rate,
    pub output: Rate,
    pub cache_read: Rate,
    pub cache_write_5m: Rate,
    pub cache_write_1h: Rate,
    pub reasoning: Rate,
}

impl TokenRates {
    /// Fill this tier's gaps from `base`, then apply the billing fallbacks: a cache read
    /// with no listed rate costs a normal input token, a cache write with no listed rate
    /// costs a normal input token (OpenAI has no write premium), a 1-hour write with no
    /// listed rate costs a 5-minute write, and reasoning costs output.
    pub fn effective(&self, base: &TokenRates) -> Option<EffectiveRates> {
        let pick = |own: Option<Rate>, b: Option<Rate>| own.or(b);
        let input = pick(self.input, base.input)?;
        let output = pick(self.output, base.output)?;
        let cache_read = pick(self.cache_read, base.cache_read).unwrap_or(input);
        let cache_write_5m = pick(self.cache_write_5m, base.cache_write_5m).unwrap_or(input);
        let cache_write_1h =
            pick(self.cache_write_1h, base.cache_write_1h).unwrap_or(cache_write_5m);
        let reasoning = pick(self.reasoning, base.reasoning).unwrap_or(output);
        Some(EffectiveRates {
            input,
            output,
            cache_read,
            cache_write_5m,
            cache_write_1h,
            reasoning,
        })
    }

    fn is_empty(&self) -> bool {
        *self == TokenRates::default()
    }

    fn set(&mut self, field: RateField, rate: Rate) {
        let slot = match field {
            RateField::Input => &mut self.input,
            RateField::Output => &mut self.output,
            RateField::CacheRead => &mut self.cache_read,
            RateField::CacheWrite5m => &mut self.cache_write_5m,
            RateField::CacheWrite1h => &mut self.cache_write_1h,
            RateField::Reasoning => &mut self.reasoning,
        };
        *slot = Some(rate);
    }
}

/// One long-context tier: applies when the prompt has more than `above_tokens` tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextTier {
    pub above_tokens: u64,
    pub rates: TokenRates,
}

/// Base rates plus long-context tiers (ascending by threshold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateCard {
    pub base: TokenRates,
    pub tiers: Vec<ContextTier>,
}

impl RateCard {
    /// The rates that apply to a request whose prompt has `prompt_tokens` tokens.
    pub fn rates_for(&self, prompt_tokens: u64, fallback: &TokenRates) -> Option<EffectiveRates> {
        let base = self.base_over(fallback);
        match self
            .tiers
            .iter()
            .rev()
            .find(|t| prompt_tokens > t.above_tokens)
        {
            Some(tier) => tier.rates.effective(&base),
            None => TokenRates::default().effective(&base),
        }
    }

    fn base_over(&self, fallback: &TokenRates) -> TokenRates {
        TokenRates {
            input: self.base.input.or(fallback.input),
            output: self.base.output.or(fallback.output),
            cache_read: self.base.cache_read.or(fallback.cache_read),
            cache_write_5m: self.base.cache_write_5m.or(fallback.cache_write_5m),
            cache_write_1h: self.base.cache_write_1h.or(fallback.cache_write_1h),
            reasoning: self.base.reasoning.or(fallback.reasoning),
        }
    }

    fn tier_mut(&mut self, above: Option<u64>) -> &mut TokenRates {
        let Some(above) = above else {
            return &mut self.base;
        };
        let idx = match self.tiers.binary_search_by_key(&above, |t| t.above_tokens) {
            Ok(i) => i,
            Err(i) => {
                self.tiers.insert(
                    i,
                    ContextTier {
                        above_tokens: above,
                        rates: TokenRates::default(),
                    },
                );
                i
            }
        };
        &mut self.tiers[idx].rates
    }
}

/// A provider service tier with its own price list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceTier {
    Priority,
    Flex,
}

impl ServiceTier {
    pub fn parse(s: &str) -> Option<ServiceTier> {
        match s {
            "priority" => Some(ServiceTier::Priority),
            "flex" => Some(ServiceTier::Flex),
            _ => None,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            ServiceTier::Priority => "priority",
            ServiceTier::Flex => "flex",
        }
    }
}

/// Everything the table knows about one model's price.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelPrice {
    pub standard: RateCard,
    pub service_tiers: Vec<(ServiceTier, RateCard)>,
    pub provider: Option<String>,
    pub mode: Option<String>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

impl ModelPrice {
    /// The rates that apply for a prompt of `prompt_tokens` in `service_tier` (a provider's
    /// reported tier; unknown tiers and `default` use the standard card). `None` when the
    /// model has no input or output rate at all, i.e. it is unpriced.
    pub fn rates(&self, prompt_tokens: u64, service_tier: Option<&str>) -> Option<EffectiveRates> {
        if let Some(card) = service_tier
            .and_then(ServiceTier::parse)
            .and_then(|t| self.service_tiers.iter().find(|(s, _)| *s == t))
            .map(|(_, card)| card)
        {
            // A service tier that lists only some rates inherits the rest from standard.
            let fallback = self
                .standard
                .rates_for(prompt_tokens, &TokenRates::default())
                .map(|e| TokenRates {
                    input: Some(e.input),
                    output: Some(e.output),
                    cache_read: Some(e.cache_read),
                    cache_write_5m: Some(e.cache_write_5m),
                    cache_write_1h: Some(e.cache_write_1h),
                    reasoning: Some(e.reasoning),
                })
                .unwrap_or_default();
            return card.rates_for(prompt_tokens, &fallback);
        }
        self.standard
            .rates_for(prompt_tokens, &TokenRates::default())
    }

    pub fn is_priced(&self) -> bool {
        self.rates(0, None).is_some()
    }

    /// A flat price, for per-deployment overrides written in config.
    pub fn flat(rates: TokenRates) -> ModelPrice {
        ModelPrice {
            standard: RateCard {
                base: rates,
                tiers: Vec::new(),
            },
            ..ModelPrice::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateField {
    Input,
    Output,
    CacheRead,
    CacheWrite5m,
    CacheWrite1h,
    Reasoning,
}

/// Catalog keys we price from, longest first so `..._above_1hr` wins over its prefix.
const FIELDS: [(&str, RateField); 6] = [
    (
        "cache_creation_input_token_cost_above_1hr",
        RateField::CacheWrite1h,
    ),
    ("cache_creation_input_token_cost", RateField::CacheWrite5m),
    ("output_cost_per_reasoning_token", RateField::Reasoning),
    ("cache_read_input_token_cost", RateField::CacheRead),
    ("output_cost_per_token", RateField::Output),
    ("input_cost_per_token", RateField::Input),
];

/// Split a catalog key into (field, context threshold, service tier). `None` for keys that
/// are not per-token text prices (images, audio, batches, per-second, ...).
fn classify_key(key: &str) -> Option<(RateField, Option<u64>, Option<ServiceTier>)> {
    let (name, field) = FIELDS.iter().find(|(name, _)| key.starts_with(name))?;
    let mut rest = &key[name.len()..];
    let mut tier = None;
    for t in [ServiceTier::Priority, ServiceTier::Flex] {
        if let Some(r) = rest.strip_suffix(t.suffix())
            && let Some(r) = r.strip_suffix('_')
        {
            rest = r;
            tier = Some(t);
            break;
        }
    }
    if rest.is_empty() {
        return Some((*field, None, tier));
    }
    let n = rest.strip_prefix("_above_")?.strip_suffix("k_tokens")?;
    let k: u64 = n.parse().ok()?;
    Some((*field, Some(k.checked_mul(1000)?), tier))
}

/// A problem found while loading a catalog. Loading carries on past entries it cannot
/// use; the caller decides whether warnings matter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error("price catalog is not valid JSON: {0}")]
    Json(String),
    #[error("price catalog must be a JSON object keyed by model id")]
    NotAnObject,
    #[error("model {model:?}: {field}: {source}")]
    BadRate {
        model: String,
        field: String,
        source: MoneyError,
    },
}

/// An immutable, hashed price table.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    models: HashMap<String, Arc<ModelPrice>>,
    hash: String,
    /// Where the entries came from (for `tollgate pricing show` and the ledger's
    /// price-table registry).
    pub sources: Vec<String>,
}

impl PriceTable {
    /// Parse one catalog document (the community format). Entries that are not objects,
    /// and the `sample_spec` documentation entry, are skipped.
    pub fn from_catalog_json(text: &str, source: &str) -> Result<PriceTable, PricingError> {
        let mut builder = PriceTableBuilder::default();
        builder.merge_catalog_json(text, source)?;
        Ok(builder.build())
    }

    pub fn get(&self, model: &str) -> Option<&Arc<ModelPrice>> {
        self.models.get(model)
    }

    /// Look a model up by its exact id, then case-insensitively, then without a
    /// `provider/` prefix (`openai/gpt-4o` → `gpt-4o`).
    pub fn resolve(&self, model: &str) -> Option<(&str, &Arc<ModelPrice>)> {
        if let Some((k, v)) = self.models.get_key_value(model) {
            return Some((k.as_str(), v));
        }
        let lower = model.to_ascii_lowercase();
        if let Some((k, v)) = self.models.get_key_value(&lower) {
            return Some((k.as_str(), v));
        }
        let (_, tail) = model.split_once('/')?;
        self.models
            .get_key_value(tail)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// First 16 hex digits of the SHA-256 of the canonical table.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn model_ids(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

const NOT_AN_OBJECT: &str = "price catalog must be a JSON object";

/// Feeds a catalog's top-level entries to the builder one at a time.
struct CatalogVisitor<'b>(&'b mut PriceTableBuilder);

impl<'de> serde::de::Visitor<'de> for CatalogVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NOT_AN_OBJECT)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(model) = map.next_key::<String>()? {
            let entry: Value = map.next_value()?;
            if model == "sample_spec" {
                continue;
            }
            if let Value::Object(fields) = entry {
                self.0.merge_entry(&model, &fields);
            }
        }
        Ok(())
    }
}

/// Builds a [`PriceTable`] from a catalog, override catalogs and per-deployment prices;
/// later sources replace earlier ones field by field.
#[derive(Debug, Default)]
pub struct PriceTableBuilder {
    models: BTreeMap<String, ModelPrice>,
    sources: Vec<String>,
    /// Non-fatal problems (unparseable rates) seen while merging.
    pub warnings: Vec<PricingError>,
}

impl PriceTableBuilder {
    pub fn merge_catalog_json(&mut self, text: &str, source: &str) -> Result<(), PricingError> {
        // Entry by entry: building the whole document as one `Value` first doubled the
        // gateway's startup heap, and glibc keeps that peak as idle RSS.
        let mut de = serde_json::Deserializer::from_str(text);
        serde::de::Deserializer::deserialize_any(&mut de, CatalogVisitor(self)).map_err(|e| {
            if e.is_data() && e.to_string().contains(NOT_AN_OBJECT) {
                PricingError::NotAnObject
            } else {
                PricingError::Json(e.to_string())
            }
        })?;
        de.end().map_err(|e| PricingError::Json(e.to_string()))?;
        self.sources.push(source.to_string());
        Ok(())
    }

    fn merge_entry(&mut self, model: &str, fields: &Map<String, Value>) {
        let price = self.models.entry(model.to_string()).or_default();
        for (key, value) in fields {
            match key.as_str() {
                "litellm_provider" => {
                    price.provider = value.as_str().map(str::to_string);
                    continue;
                }
                "mode" => {
                    price.mode = value.as_str().map(str::to_string);
                    continue;
                }
                "max_input_tokens" => {
                    price.max_input_tokens = value.as_u64();
                    continue;
                }
                "max_output_tokens" => {
                    price.max_output_tokens = value.as_u64();
                    continue;
                }
                _ => {}
            }
            let Some((field, above, tier)) = classify_key(key) else {
                continue;
            };
            let parsed = match value {
                Value::Number(n) => match n.as_f64() {
                    Some(f) => Rate::from_f64_usd_per_token(f),
                    None => Err(MoneyError::Invalid(n.to_string())),
                },
                Value::String(s) => Rate::parse_usd_per_token(s),
                Value::Null => continue,
                other => Err(MoneyError::Invalid(other.to_string())),
            };
            let rate = match parsed {
                Ok((rate, _rounded)) => rate,
                Err(source) => {
                    self.warnings.push(PricingError::BadRate {
                        model: model.to_string(),
                        field: key.clone(),
                        source,
                    });
                    continue;
                }
            };
            let card = match tier {
                None => &mut price.standard,
                Some(t) => match price.service_tiers.iter().position(|(s, _)| *s == t) {
                    Some(i) => &mut price.service_tiers[i].1,
                    None => {
                        price.service_tiers.push((t, RateCard::default()));
                        price.service_tiers.sort_by_key(|(s, _)| *s);
                        let i = price
                            .service_tiers
                            .iter()
                            .position(|(s, _)| *s == t)
                            .unwrap_or(0);
                        &mut price.service_tiers[i].1
                    }
                },
            };
            card.tier_mut(above).set(field, rate);
        }
        for (_, card) in &mut price.service_tiers {
            card.tiers.retain(|t| !t.rates.is_empty());
        }
    }

    /// Add or replace one model's price outright (a per-deployment override).
    pub fn insert(&mut self, model: &str, price: ModelPrice, source: &str) {
        self.models.insert(model.to_string(), price);
        self.sources.push(source.to_string());
    }

    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    pub fn build(self) -> PriceTable {
        let hash = canonical_hash(&self.models);
        PriceTable {
            models: self
                .models
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            hash,
            sources: self.sources,
        }
    }
}

fn canonical_hash(models: &BTreeMap<String, ModelPrice>) -> String {
    fn rates(h: &mut Sha256, r: &TokenRates) {
        for v in [
            r.input,
            r.output,
            r.cache_read,
            r.cache_write_5m,
            r.cache_write_1h,
            r.reasoning,
        ] {
            match v {
                Some(rate) => h.update(format!("{};", rate.atto())),
                None => h.update("-;"),
            }
        }
    }
    fn card(h: &mut Sha256, c: &RateCard) {
        rates(h, &c.base);
        for t in &c.tiers {
            h.update(format!(">{}:", t.above_tokens));
            rates(h, &t.rates);
        }
    }
    let mut h = Sha256::new();
    for (name, price) in models {
        if !price.is_priced() && price.service_tiers.is_empty() {
            continue;
        }
        h.update(name.as_bytes());
        h.update("=");
        card(&mut h, &price.standard);
        for (tier, c) in &price.service_tiers {
            h.update(format!("|{}:", tier.suffix()));
            card(&mut h, c);
        }
        h.update("\n");
    }
    let digest = h.finalize();
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "sample_spec": {"input_cost_per_token": 0},
      "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                 "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                 "cache_read_input_token_cost": 1.25e-06,
                 "input_cost_per_token_priority": 4.25e-06,
                 "output_cost_per_token_priority": 1.7e-05},
      "claude-sonnet-4": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                 "cache_read_input_token_cost": 3e-07,
                 "cache_creation_input_token_cost": 3.75e-06,
                 "cache_creation_input_token_cost_above_1hr": 6e-06,
                 "input_cost_per_token_above_200k_tokens": 6e-06,
                 "output_cost_per_token_above_200k_tokens": 2.25e-05,
                 "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1.2e-05},
      "o3": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
             "output_cost_per_reasoning_token": 9e-06},
      "dall-e": {"output_cost_per_image": 0.04},
      "weird": {"input_cost_per_token": "abc", "output_cost_per_token": 1e-06}
    }"#;

    fn r(atto: u64) -> Rate {
        Rate::from_atto(atto)
    }

    #[test]
    fn classifies_catalog_keys() {
        assert_eq!(
            classify_key("input_cost_per_token"),
            Some((RateField::Input, None, None))
        );
        assert_eq!(
            classify_key("cache_creation_input_token_cost_above_1hr_above_200k_tokens"),
            Some((RateField::CacheWrite1h, Some(200_000), None))
        );
        assert_eq!(
            classify_key("output_cost_per_token_above_272k_tokens_priority"),
            Some((
                RateField::Output,
                Some(272_000),
                Some(ServiceTier::Priority)
            ))
        );
        assert_eq!(classify_key("input_cost_per_token_batches"), None);
        assert_eq!(
            classify_key("cache_creation_input_token_cost_above_12hr"),
            None
        );
        assert_eq!(classify_key("input_cost_per_token_cache_hit"), None);
        assert_eq!(classify_key("output_cost_per_image"), None);
    }

    #[test]
    fn loads_sample_catalog() {
        let mut b = PriceTableBuilder::default();
        b.merge_catalog_json(SAMPLE, "sample").unwrap();
        assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
        let t = b.build();
        assert!(t.get("sample_spec").is_none());
        let gpt = t.get("gpt-4o").unwrap();
        let e = gpt.rates(10, None).unwrap();
        assert_eq!(e.input, r(2_500_000_000_000));
        assert_eq!(e.cache_read, r(1_250_000_000_000));
        assert_eq!(e.cache_write_5m, e.input);
        assert_eq!(e.reasoning, e.output);
        let p = gpt.rates(10, Some("priority")).unwrap();
        assert_eq!(p.input, r(4_250_000_000_000));
        // Priority lists no cache-read rate: it falls back to the standard one.
        assert_eq!(p.cache_read, r(1_250_000_000_000));
        assert_eq!(gpt.rates(10, Some("default")).unwrap(), e);

        let claude = t.get("claude-sonnet-4").unwrap();
        let small = claude.rates(200_000, None).unwrap();
        assert_eq!(small.input, r(3_000_000_000_000));
        assert_eq!(small.cache_write_1h, r(6_000_000_000_000));
        let big = claude.rates(200_001, None).unwrap();
        assert_eq!(big.input, r(6_000_000_000_000));
        assert_eq!(big.output, r(22_500_000_000_000));
        assert_eq!(big.cache_write_1h, r(12_000_000_000_000));
        // Tier lists no cache-read rate: base applies.
        assert_eq!(big.cache_read, r(300_000_000_000));

        assert_eq!(
            t.get("o3").unwrap().rates(0, None).unwrap().reasoning,
            r(9_000_000_000_000)
        );
        assert!(!t.get("dall-e").unwrap().is_priced());
        // A bad input rate leaves the model unpriced, not priced at zero.
        assert!(!t.get("weird").unwrap().is_priced());
    }

    #[test]
    fn hash_changes_with_prices_only() {
        let a = PriceTable::from_catalog_json(SAMPLE, "a").unwrap();
        let b = PriceTable::from_catalog_json(SAMPLE, "b").unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
        let mut builder = PriceTableBuilder::default();
        builder.merge_catalog_json(SAMPLE, "a").unwrap();
        builder
            .merge_catalog_json(
                r#"{"gpt-4o": {"output_cost_per_token": 2e-05}}"#,
                "override",
            )
            .unwrap();
        let c = builder.build();
        assert_ne!(a.hash(), c.hash());
        // Field-wise merge: the override kept the input rate.
        assert_eq!(
            c.get("gpt-4o").unwrap().rates(0, None).unwrap().input,
            r(2_500_000_000_000)
        );
    }

    #[test]
    fn resolves_prefixed_and_cased_names() {
        let t = PriceTable::from_catalog_json(SAMPLE, "a").unwrap();
        assert_eq!(t.resolve("openai/gpt-4o").unwrap().0, "gpt-4o");
        assert_eq!(t.resolve("GPT-4o").unwrap().0, "gpt-4o");
        assert!(t.resolve("nope").is_none());
    }

    #[test]
    fn garbage_catalogs_are_errors_not_panics() {
        assert!(matches!(
            PriceTable::from_catalog_json("[1,2]", "x"),
            Err(PricingError::NotAnObject)
        ));
        assert!(matches!(
            PriceTable::from_catalog_json("{} {}", "x"),
            Err(PricingError::Json(_))
        ));
        assert!(PriceTable::from_catalog_json("{", "x").is_err());
        let t =
            PriceTable::from_catalog_json(r#"{"m": 3, "n": {"input_cost_per_token": -1}}"#, "x")
                .unwrap();
        assert!(!t.get("n").unwrap().is_priced());
    }
}

/// The catalog compiled into the binary (see `data/NOTICE.md` for its source and licence).
pub const DEFAULT_CATALOG_JSON: &str = include_str!("../data/model_prices.json");
/// Name recorded as the default catalog's source.
pub const DEFAULT_CATALOG_SOURCE: &str = "embedded:litellm-1.110.2";

#[cfg(test)]
mod default_catalog_tests {
    use super::*;

    #[test]
    fn embedded_catalog_loads_with_known_prices() {
        let mut b = PriceTableBuilder::default();
        b.merge_catalog_json(DEFAULT_CATALOG_JSON, DEFAULT_CATALOG_SOURCE)
            .unwrap();
        assert!(
            b.warnings.is_empty(),
            "{:?}",
            &b.warnings[..b.warnings.len().min(5)]
        );
        let t = b.build();
        assert!(t.len() > 4000);
        let atto = |m: &str, f: fn(&EffectiveRates) -> Rate| {
            f(&t.get(m)
                .unwrap_or_else(|| panic!("{m}"))
                .rates(0, None)
                .unwrap())
            .atto()
        };
        // gpt-4o: $2.50 / $10 per Mtok, cached $1.25.
        assert_eq!(atto("gpt-4o", |e| e.input), 2_500_000_000_000);
        assert_eq!(atto("gpt-4o", |e| e.output), 10_000_000_000_000);
        assert_eq!(atto("gpt-4o", |e| e.cache_read), 1_250_000_000_000);
        assert!(t.get("amazon.nova-2-lite-v1:0").unwrap().is_priced());
        assert!(t.get("claude-haiku-4-5").unwrap().is_priced());
    }
}

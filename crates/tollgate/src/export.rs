//! `tollgate export --format focus`: the ledger as a FinOps FOCUS 1.2 cost-and-usage
//! CSV.
//!
//! One row per hour × key × attribution × model × meter (input, cached input, cache
//! writes, output, reasoning). Tokens are the `ConsumedQuantity`/`PricingQuantity` in
//! `Tokens`; `ServiceCategory` is "AI and Machine Learning" / "Generative AI";
//! attribution goes in `Tags` (JSON; tollgate's own keys prefixed `tollgate/`, request
//! tags `key:value` as they were sent); tollgate's own columns are prefixed `x_`.
//!
//! Costs are exact and reconcile with the ledger: the `BilledCost` of a group's meter
//! rows adds up to the group's ledger cost to the nano-USD. The ledger stores each
//! request's total cost; the split between meters follows the price table's rates for
//! the model (the table that priced the rows when its hash matches, else the current
//! one), with the rounding remainder placed by largest remainder. Unit prices are the
//! effective price of each row (`cost / tokens`), so `unit price × quantity = cost`.

use crate::cli::ExportArgs;
use crate::{config_path, env_map};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use tollgate_domain::money::Money;
use tollgate_domain::pricing::{ModelPrice, PriceTable};
use tollgate_domain::time::parse_since;
use tollgate_domain::value::{Ratio, allocate};
use tollgate_server::clock::now_ms;
use tollgate_server::config::{RawConfig, deployment_price_key};
use tollgate_store::value::HourlyUsage;
use tollgate_store::{KeyStore, ReportStore};

pub async fn export(args: ExportArgs) -> Result<ExitCode> {
    if args.format != "focus" {
        bail!("--format {:?}: expected focus", args.format);
    }
    let now = now_ms();
    let since = parse_since(&args.since, now).map_err(anyhow::Error::msg)?;
    let until = match &args.until {
        Some(u) => parse_since(u, now).map_err(anyhow::Error::msg)?,
        None => now + 1,
    };
    let store = crate::open_store(args.db.clone(), args.config.config.clone(), true).await?;
    let env = env_map();
    let raw = RawConfig::load(config_path(args.config.config.clone()).as_deref(), &env)?;
    let prices = raw.price_table()?;
    let groups = store.hourly_usage(since, until).await?;
    let key_names: BTreeMap<String, String> = store
        .list_keys()
        .await?
        .into_iter()
        .filter_map(|k| Some((k.id, k.name?)))
        .collect();
    let csv = focus_csv(
        &groups,
        &Pricing {
            raw: &raw,
            prices: &prices,
        },
        &key_names,
    );
    match &args.out {
        Some(path) => {
            std::fs::write(path, &csv).with_context(|| format!("writing {}", path.display()))?;
            let rows = csv.lines().count().saturating_sub(1);
            let total: Money = groups.iter().map(|g| g.cost).sum();
            eprintln!(
                "wrote {} FOCUS rows ({} USD billed) to {}",
                rows,
                total,
                path.display()
            );
        }
        None => std::io::stdout().write_all(csv.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the meter split's rates come from.
pub struct Pricing<'a> {
    pub raw: &'a RawConfig,
    pub prices: &'a PriceTable,
}

impl Pricing<'_> {
    /// The price of a deployment as the gateway would resolve it; the catalog entry of
    /// the upstream model when the deployment is no longer configured.
    pub(crate) fn price(&self, deployment: &str, model: &str) -> Option<Arc<ModelPrice>> {
        if let Some(d) = self.raw.deployments.iter().find(|d| d.name == deployment) {
            if d.price.is_some() {
                return self.prices.get(&deployment_price_key(deployment)).cloned();
            }
            let wanted = d
                .price_model
                .as_deref()
                .or(d.model.as_deref())
                .unwrap_or(&d.name);
            return self.prices.resolve(wanted).map(|(_, p)| p.clone());
        }
        self.prices.resolve(model).map(|(_, p)| p.clone())
    }
}

/// FOCUS columns, in output order.
pub const COLUMNS: [&str; 42] = [
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceId",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuMeter",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
    "x_Deployment",
    "x_Upstream",
    "x_TokenKind",
    "x_RequestCount",
    "x_UnpricedRequestCount",
];

/// The meters of a group: (token kind, SKU meter name, tokens, rate weight).
fn meters(
    g: &HourlyUsage,
    price: Option<&ModelPrice>,
) -> Vec<(&'static str, &'static str, u64, u128)> {
    let rates = price.and_then(|p| p.rates(0, None));
    let rate = |f: fn(&tollgate_domain::pricing::EffectiveRates) -> tollgate_domain::Rate| {
        rates.as_ref().map(f).unwrap_or_default()
    };
    let non_reasoning = g.output_tokens.saturating_sub(g.reasoning_tokens);
    let all = [
        ("input", "Input Tokens", g.input_tokens, rate(|r| r.input)),
        (
            "cache_read",
            "Cached Input Tokens",
            g.cache_read_tokens,
            rate(|r| r.cache_read),
        ),
        (
            "cache_write_5m",
            "Cache Write Tokens (5 min)",
            g.cache_write_5m_tokens,
            rate(|r| r.cache_write_5m),
        ),
        (
            "cache_write_1h",
            "Cache Write Tokens (1 h)",
            g.cache_write_1h_tokens,
            rate(|r| r.cache_write_1h),
        ),
        ("output", "Output Tokens", non_reasoning, rate(|r| r.output)),
        (
            "reasoning",
            "Reasoning Tokens",
            g.reasoning_tokens.min(g.output_tokens),
            rate(|r| r.reasoning),
        ),
    ];
    all.into_iter()
        .filter(|m| m.2 > 0)
        .map(|(k, n, t, r)| (k, n, t, r.times(t)))
        .collect()
}

/// Weights that fit `allocate`: scaled down together, never all zero for non-zero tokens.
fn weights(ms: &[(&str, &str, u64, u128)]) -> Vec<u64> {
    let max = ms.iter().map(|m| m.3).max().unwrap_or(0);
    if max == 0 {
        // No rates (unpriced, or the model left the table): split by tokens.
        return ms.iter().map(|m| m.2).collect();
    }
    let shift = (128 - max.leading_zeros()).saturating_sub(60);
    ms.iter().map(|m| (m.3 >> shift) as u64).collect()
}

fn ts(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The calendar month (UTC) containing `ms`: [start, end).
fn month(ms: i64) -> (String, String) {
    let Ok(t) = jiff::Timestamp::from_millisecond(ms) else {
        return (String::new(), String::new());
    };
    let d = t.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let start = jiff::civil::date(d.year(), d.month(), 1);
    let end = if d.month() == 12 {
        jiff::civil::date(d.year() + 1, 1, 1)
    } else {
        jiff::civil::date(d.year(), d.month() + 1, 1)
    };
    let f = |d: jiff::civil::Date| format!("{}T00:00:00Z", d.strftime("%Y-%m-%d"));
    (f(start), f(end))
}

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Tags as a JSON object: `tollgate/agent`, `tollgate/team`, `tollgate/user`,
/// `tollgate/key`, then the request's tags (`env:prod` → `"env": "prod"`, a tag without
/// a value → `true`).
fn tags(g: &HourlyUsage) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("tollgate/agent", &g.agent),
        ("tollgate/team", &g.team),
        ("tollgate/user", &g.user),
        ("tollgate/key", &g.key_id),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.clone().into());
        }
    }
    let list: Vec<String> = g
        .tags
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    for t in list {
        match t.split_once(':') {
            Some((k, v)) if !k.is_empty() && !k.starts_with("tollgate/") => {
                m.insert(k.into(), v.into());
            }
            _ if !t.starts_with("tollgate/") => {
                m.insert(t, true.into());
            }
            _ => {}
        }
    }
    serde_json::Value::Object(m).to_string()
}

/// The whole CSV.
pub fn focus_csv(
    groups: &[HourlyUsage],
    pricing: &Pricing<'_>,
    key_names: &BTreeMap<String, String>,
) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for g in groups {
        let price = pricing.price(&g.deployment, &g.upstream_model);
        let ms = meters(g, price.as_deref());
        if ms.is_empty() {
            continue;
        }
        let costs = allocate(g.cost, &weights(&ms));
        let (period_start, period_end) = month(g.hour_ms);
        let tags = tags(g);
        let sub_name = g.key_id.as_ref().map(|k| {
            key_names
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("key {k}"))
        });
        for ((kind, meter, tokens, _), cost) in ms.iter().zip(costs) {
            // Effective unit price: exactly cost / tokens, to 18 decimal places.
            let unit = Ratio::new(
                i128::from(cost.nanos()),
                i128::from(*tokens) * 1_000_000_000,
            )
            .map(|r| r.decimal(18))
            .unwrap_or_else(|| "0".into());
            let cost_s = cost.to_string();
            // Decimal quantities (FOCUS types them Decimal): `358.0`, never `358`.
            let tokens_s = format!("{tokens}.0");
            let cells: [String; 42] = [
                cost_s.clone(),
                g.upstream.clone(),
                g.upstream.clone(),
                "Provider Account".into(),
                "USD".into(),
                period_end.clone(),
                period_start.clone(),
                "Usage".into(),
                String::new(),
                format!(
                    "{} {} via {}",
                    g.upstream_model,
                    meter.to_lowercase(),
                    g.deployment
                ),
                "Usage-Based".into(),
                ts(g.hour_ms + 3_600_000),
                ts(g.hour_ms),
                tokens_s.clone(),
                "Tokens".into(),
                cost_s.clone(),
                unit.clone(),
                cost_s.clone(),
                // Not tied to an invoice: tollgate meters, the provider invoices.
                String::new(),
                g.upstream.clone(),
                cost_s,
                unit,
                "Standard".into(),
                tokens_s,
                "Tokens".into(),
                g.upstream.clone(),
                g.upstream.clone(),
                "AI and Machine Learning".into(),
                format!("{} model inference", g.upstream),
                "Generative AI".into(),
                g.upstream_model.clone(),
                meter.to_string(),
                format!("{}/{}", g.upstream_model, kind),
                g.key_id.clone().unwrap_or_default(),
                sub_name.clone().unwrap_or_default(),
                if g.key_id.is_some() {
                    "Virtual Key".into()
                } else {
                    String::new()
                },
                tags.clone(),
                g.deployment.clone(),
                g.upstream.clone(),
                kind.to_string(),
                g.requests.to_string(),
                g.unpriced.to_string(),
            ];
            out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::{T0, UNTIL, fixture};
    use std::collections::HashMap;

    #[test]
    fn focus_file_reconciles_with_the_ledger() {
        let (_d, s) = fixture();
        let raw = RawConfig::from_toml("", &HashMap::new()).unwrap();
        let prices = raw.price_table().unwrap();
        let groups = s.hourly_usage(T0, UNTIL).unwrap();
        let names = BTreeMap::from([("tgk_support".to_string(), "support key".to_string())]);
        let csv = focus_csv(
            &groups,
            &Pricing {
                raw: &raw,
                prices: &prices,
            },
            &names,
        );
        insta::assert_snapshot!("focus_csv", csv);
        // BilledCost adds up to the ledger to the nano.
        let billed: i64 = csv
            .lines()
            .skip(1)
            .map(|l| {
                Money::parse_usd(l.split(',').next().unwrap())
                    .unwrap()
                    .nanos()
            })
            .sum();
        let ledger: Money = groups.iter().map(|g| g.cost).sum();
        assert_eq!(billed, ledger.nanos());
        for l in csv.lines().skip(1) {
            assert!(l.contains("AI and Machine Learning"));
        }
    }

    #[test]
    fn months_and_timestamps() {
        assert_eq!(ts(T0), "2024-01-02T03:00:00Z");
        assert_eq!(
            month(T0),
            ("2024-01-01T00:00:00Z".into(), "2024-02-01T00:00:00Z".into())
        );
        let dec = 1_733_011_200_000; // 2024-12-01
        assert_eq!(month(dec).1, "2025-01-01T00:00:00Z");
    }
}

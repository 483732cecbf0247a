//! AWS Data Exports CUR 2.0 (CSV) lines for Amazon Bedrock.
//!
//! Columns read: `line_item_usage_start_date` (the UTC day), `line_item_line_item_type`
//! (`Usage`, `DiscountedUsage` and `SavingsPlanCoveredUsage` are usage; tax, credits,
//! fees are unattributed), `line_item_usage_type`, `line_item_usage_amount`,
//! `line_item_unblended_cost`, `line_item_currency_code`, `line_item_usage_account_id`
//! (the account), and, when present, `line_item_resource_id`, `pricing_unit`,
//! `line_item_product_code`. Legacy CUR spellings (`lineItem/UsageType`) are accepted.
//!
//! Bedrock bills each token type under its own usage type, `REGION-MODEL-KIND`:
//! `*-input-tokens`, `*-output-tokens`, `*-cache-read-input-token-count`,
//! `*-cache-write-input-token-count` (and `-mantle-` variants). The model part is a
//! family name without separators (`Nova2Lite`), matched to the gateway's model ids by
//! [`super::model::family`]; when `line_item_resource_id` is a Bedrock model or
//! inference-profile ARN, its id is used instead, exactly. Ambiguities, said in notes:
//!
//! - cache-write usage types do not say the cache TTL: they are counted as 5-minute
//!   writes (a gateway row that wrote 1-hour caches then drifts on both classes);
//! - a suffix after the token kind (service tier, cross-region, batch) is kept in the
//!   description, not used to match;
//! - `line_item_usage_amount` is in tokens unless `pricing_unit` says thousands or
//!   millions of tokens.

use super::csv::{Header, records};
use super::invoice::{
    Invoice, InvoiceError, InvoiceFormat, InvoiceLine, ModelRef, tokens_from_decimal,
};
use super::{Day, TokenClass};
use crate::money::Money;

/// A Bedrock usage type taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageType {
    /// The model family as written (`Nova2Lite`).
    pub model: String,
    pub class: TokenClass,
    /// What follows the token kind (`-cross-region-global`, `-flex`), if anything.
    pub suffix: String,
}

const KINDS: [(&str, TokenClass); 6] = [
    ("-cache-read-input-token", TokenClass::CacheRead),
    ("-cache-write-input-token", TokenClass::CacheWrite5m),
    ("-mantle-input-token", TokenClass::Input),
    ("-mantle-output-token", TokenClass::Output),
    ("-input-token", TokenClass::Input),
    ("-output-token", TokenClass::Output),
];

/// `USE1-Nova2Lite-input-tokens` → Nova2Lite, input. `None` when the usage type names
/// no token kind (provisioned throughput, storage, ...).
pub fn parse_usage_type(usage_type: &str) -> Option<UsageType> {
    let lower = usage_type.to_ascii_lowercase();
    let (at, kind, class) = KINDS
        .iter()
        .filter_map(|(k, c)| lower.find(k).map(|i| (i, *k, *c)))
        .min_by_key(|(i, _, _)| *i)?;
    let head = &usage_type[..at];
    let rest = &usage_type[at + kind.len()..];
    let suffix = rest
        .trim_start_matches(['s', 'S'])
        .trim_start_matches("-count")
        .to_string();
    // A region code (USE1, EUC1, APN1, ...) comes first when there is one.
    let model = match head.split_once('-') {
        Some((region, m))
            if region.len() <= 5
                && region
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && region.chars().any(|c| c.is_ascii_digit()) =>
        {
            m
        }
        _ => head,
    };
    (!model.is_empty()).then(|| UsageType {
        model: model.to_string(),
        class,
        suffix,
    })
}

/// A Bedrock model id from a resource ARN (`…:foundation-model/amazon.nova-2-lite-v1:0`,
/// `…:inference-profile/us.amazon.nova-2-lite-v1:0`).
pub fn model_from_resource(resource: &str) -> Option<String> {
    ["foundation-model/", "inference-profile/"]
        .iter()
        .find_map(|p| resource.split_once(p).map(|(_, id)| id.to_string()))
        .filter(|id| !id.is_empty())
}

/// Tokens per unit of `pricing_unit`.
pub fn tokens_per_unit(unit: &str) -> Option<u64> {
    let u = unit.trim().to_ascii_lowercase();
    if u.is_empty() || u == "tokens" || u == "token" || u == "count" || u == "units" {
        Some(1)
    } else if u.contains("million") || u.starts_with("1m") || u.starts_with("m ") {
        Some(1_000_000)
    } else if u.contains("thousand") || u.starts_with("1k") || u.starts_with("k ") {
        Some(1_000)
    } else {
        None
    }
}

pub(crate) struct Columns {
    header: Header,
}

impl Columns {
    pub fn get<'r>(&self, fields: &'r [String], name: &str) -> Option<&'r str> {
        self.header
            .find(name)
            .and_then(|i| fields.get(i))
            .map(|s| s.trim())
    }
}

pub fn parse(source: &str, text: &str) -> Result<Invoice, InvoiceError> {
    let recs = records(text)
        .map_err(|e| InvoiceError::new(source, &format!("line {}", e.line), "", e.message))?;
    let mut inv = Invoice::new(InvoiceFormat::AwsCur, source);
    let Some((head, rows)) = recs.split_first() else {
        return Err(InvoiceError::new(source, "line 1", "", "empty file"));
    };
    let cols = Columns {
        header: Header::new(&head.fields),
    };
    for required in [
        "line_item_usage_start_date",
        "line_item_usage_type",
        "line_item_usage_amount",
        "line_item_unblended_cost",
    ] {
        if cols.header.find(required).is_none() {
            return Err(InvoiceError::new(
                source,
                "line 1",
                required,
                "column missing",
            ));
        }
    }
    let mut other_services = 0usize;
    for r in rows {
        let at = format!("line {}", r.line);
        let get = |name: &str| cols.get(&r.fields, name).unwrap_or("");
        let err = |field: &str, msg: String| InvoiceError::new(source, &at, field, msg);
        let day = Day::parse(get("line_item_usage_start_date")).ok_or_else(|| {
            err(
                "line_item_usage_start_date",
                format!("{:?} is not a date", get("line_item_usage_start_date")),
            )
        })?;
        let currency = get("line_item_currency_code");
        if !currency.is_empty() && !currency.eq_ignore_ascii_case("USD") {
            return Err(err(
                "line_item_currency_code",
                format!("{currency:?}: only USD amounts can be reconciled with the ledger"),
            ));
        }
        let cost_text = get("line_item_unblended_cost");
        let cost = if cost_text.is_empty() {
            Money::ZERO
        } else {
            Money::parse_usd_rounded(cost_text)
                .map_err(|e| err("line_item_unblended_cost", e.to_string()))?
        };
        let usage_type = get("line_item_usage_type");
        let product = get("line_item_product_code");
        let item_type = get("line_item_line_item_type");
        let account = Some(get("line_item_usage_account_id"))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let bedrock = product.is_empty() || product.to_ascii_lowercase().contains("bedrock");
        let parsed = parse_usage_type(usage_type);
        if !bedrock && parsed.is_none() {
            other_services += 1;
            continue;
        }
        inv.days.insert(day);
        let usage_line = matches!(
            item_type,
            "" | "Usage" | "DiscountedUsage" | "SavingsPlanCoveredUsage"
        );
        let Some(ut) = parsed.filter(|_| usage_line) else {
            if cost != Money::ZERO {
                inv.lines.push(InvoiceLine {
                    day,
                    model: None,
                    account,
                    class: None,
                    tokens: None,
                    amount: Some(cost),
                    description: format!("{item_type} {usage_type}").trim().to_string(),
                    origin: at.clone(),
                });
            }
            continue;
        };
        let per_unit = match cols.get(&r.fields, "pricing_unit") {
            Some(u) => tokens_per_unit(u).ok_or_else(|| {
                err(
                    "pricing_unit",
                    format!("{u:?} is not a unit of tokens tollgate knows"),
                )
            })?,
            None => 1,
        };
        let amount_text = get("line_item_usage_amount");
        let tokens = tokens_from_decimal(amount_text, per_unit).ok_or_else(|| {
            err(
                "line_item_usage_amount",
                format!("{amount_text:?} is not a non-negative quantity"),
            )
        })?;
        let model = match model_from_resource(get("line_item_resource_id")) {
            Some(id) => ModelRef::Id(id),
            None => ModelRef::Family(ut.model.clone()),
        };
        if ut.class == TokenClass::CacheWrite5m {
            inv.note("cache-write usage types do not say the cache TTL: counted as 5-minute cache writes");
        }
        if matches!(model, ModelRef::Family(_)) {
            inv.note("models are matched by the family a usage type names (no model ARN in line_item_resource_id)");
        }
        inv.lines.push(InvoiceLine {
            day,
            model: Some(model),
            account,
            class: Some(ut.class),
            tokens: Some(tokens),
            amount: Some(cost),
            description: usage_type.to_string(),
            origin: at,
        });
    }
    if other_services > 0 {
        inv.note(format!(
            "{other_services} line(s) of other AWS services skipped"
        ));
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_types() {
        let ut = |s| parse_usage_type(s).map(|u| (u.model, u.class, u.suffix));
        assert_eq!(
            ut("USE1-Nova2Lite-input-tokens"),
            Some(("Nova2Lite".into(), TokenClass::Input, String::new()))
        );
        assert_eq!(
            ut("USW2-Nova2Lite-output-tokens"),
            Some(("Nova2Lite".into(), TokenClass::Output, String::new()))
        );
        assert_eq!(
            ut("USE1-Claude4.5Sonnet-cache-read-input-token-count"),
            Some((
                "Claude4.5Sonnet".into(),
                TokenClass::CacheRead,
                String::new()
            ))
        );
        assert_eq!(
            ut("USE1-NovaPro-cache-write-input-token-count"),
            Some(("NovaPro".into(), TokenClass::CacheWrite5m, String::new()))
        );
        assert_eq!(
            ut("USE1-Nova2Lite-input-tokens-cross-region-global"),
            Some((
                "Nova2Lite".into(),
                TokenClass::Input,
                "-cross-region-global".into()
            ))
        );
        assert_eq!(
            ut("Nova2Lite-mantle-output-tokens-flex"),
            Some(("Nova2Lite".into(), TokenClass::Output, "-flex".into()))
        );
        assert_eq!(ut("USE1-ProvisionedThroughput-Nova"), None);
    }

    #[test]
    fn resources_and_units() {
        assert_eq!(
            model_from_resource(
                "arn:aws:bedrock:us-east-1:111122223333:inference-profile/us.amazon.nova-2-lite-v1:0"
            )
            .as_deref(),
            Some("us.amazon.nova-2-lite-v1:0")
        );
        assert_eq!(model_from_resource(""), None);
        assert_eq!(tokens_per_unit("Tokens"), Some(1));
        assert_eq!(tokens_per_unit("1K tokens"), Some(1000));
        assert_eq!(tokens_per_unit("Million Tokens"), Some(1_000_000));
        assert_eq!(tokens_per_unit("Hours"), None);
    }
}

//! FinOps FOCUS 1.x cost-and-usage CSV.
//!
//! Columns read: `ChargePeriodStart` (the UTC day), `ChargeCategory` (`Usage` lines are
//! compared; others are unattributed), `BilledCost`, `BillingCurrency`,
//! `ConsumedQuantity` / `ConsumedUnit`, `SubAccountId` (the account), and to find the
//! model and token class, the first of:
//!
//! 1. tollgate's own export: `x_TokenKind` (input, cache_read, cache_write_5m,
//!    cache_write_1h, output, reasoning → output) with the model in `SkuId`, and the
//!    upstream in `x_Upstream`;
//! 2. AWS FOCUS 1.2 with AWS columns: `x_UsageType` read as a Bedrock usage type (see
//!    [`super::cur`]), the model from a `ResourceId` ARN when there is one;
//! 3. otherwise `SkuMeter` words (`cached`/`cache read`, `cache write` + `1 h`, `input`,
//!    `output`/`reasoning`) with the model in `SkuId`, said in a note since FOCUS does
//!    not standardise either.
//!
//! Lines that fit none are unattributed.

use super::csv::{Header, records};
use super::cur::{model_from_resource, parse_usage_type, tokens_per_unit};
use super::invoice::{
    Invoice, InvoiceError, InvoiceFormat, InvoiceLine, ModelRef, tokens_from_decimal,
};
use super::{Day, TokenClass};
use crate::money::Money;

fn token_kind(kind: &str) -> Option<TokenClass> {
    match kind {
        "input" => Some(TokenClass::Input),
        "cache_read" => Some(TokenClass::CacheRead),
        "cache_write_5m" => Some(TokenClass::CacheWrite5m),
        "cache_write_1h" => Some(TokenClass::CacheWrite1h),
        "output" | "reasoning" => Some(TokenClass::Output),
        _ => None,
    }
}

/// Token class from a meter's words.
pub fn meter_class(meter: &str) -> Option<TokenClass> {
    let m = meter.to_ascii_lowercase();
    if !m.contains("token") {
        return None;
    }
    if m.contains("cache write") || m.contains("cache-write") || m.contains("cache creation") {
        Some(
            if m.contains("1 h") || m.contains("1h") || m.contains("1-hour") {
                TokenClass::CacheWrite1h
            } else {
                TokenClass::CacheWrite5m
            },
        )
    } else if m.contains("cached") || m.contains("cache read") || m.contains("cache-read") {
        Some(TokenClass::CacheRead)
    } else if m.contains("input") || m.contains("prompt") {
        Some(TokenClass::Input)
    } else if m.contains("output") || m.contains("reasoning") || m.contains("completion") {
        Some(TokenClass::Output)
    } else {
        None
    }
}

pub fn parse(source: &str, text: &str) -> Result<Invoice, InvoiceError> {
    let recs = records(text)
        .map_err(|e| InvoiceError::new(source, &format!("line {}", e.line), "", e.message))?;
    let mut inv = Invoice::new(InvoiceFormat::Focus, source);
    let Some((head, rows)) = recs.split_first() else {
        return Err(InvoiceError::new(source, "line 1", "", "empty file"));
    };
    let header = Header::new(&head.fields);
    for required in ["ChargePeriodStart", "BilledCost"] {
        if header.find(required).is_none() {
            return Err(InvoiceError::new(
                source,
                "line 1",
                required,
                "column missing",
            ));
        }
    }
    for r in rows {
        let at = format!("line {}", r.line);
        let get = |name: &str| -> &str {
            header
                .find(name)
                .and_then(|i| r.fields.get(i))
                .map(|s| s.trim())
                .unwrap_or("")
        };
        let err = |field: &str, msg: String| InvoiceError::new(source, &at, field, msg);
        let start = get("ChargePeriodStart");
        let day = Day::parse(start)
            .ok_or_else(|| err("ChargePeriodStart", format!("{start:?} is not a date-time")))?;
        inv.days.insert(day);
        let currency = get("BillingCurrency");
        if !currency.is_empty() && !currency.eq_ignore_ascii_case("USD") {
            return Err(err(
                "BillingCurrency",
                format!("{currency:?}: only USD amounts can be reconciled with the ledger"),
            ));
        }
        let billed = get("BilledCost");
        let cost =
            Money::parse_usd_rounded(billed).map_err(|e| err("BilledCost", e.to_string()))?;
        let upstream = get("x_Upstream");
        if !upstream.is_empty() {
            inv.upstreams.insert(upstream.to_string());
        }
        let account = Some(get("SubAccountId"))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let category = get("ChargeCategory");
        let sku = get("SkuId");
        let usage_type = get("x_UsageType");
        let (model, class) = if !category.is_empty() && category != "Usage" {
            (None, None)
        } else if !get("x_TokenKind").is_empty() {
            let kind = get("x_TokenKind");
            let class = token_kind(kind)
                .ok_or_else(|| err("x_TokenKind", format!("{kind:?} is not a token kind")))?;
            (
                (!sku.is_empty()).then(|| ModelRef::Id(sku.to_string())),
                Some(class),
            )
        } else if let Some(ut) = parse_usage_type(usage_type) {
            let model = match model_from_resource(get("ResourceId")) {
                Some(id) => ModelRef::Id(id),
                None => ModelRef::Family(ut.model),
            };
            (Some(model), Some(ut.class))
        } else if let Some(class) = meter_class(get("SkuMeter")).filter(|_| !sku.is_empty()) {
            inv.note("token classes read from SkuMeter and models from SkuId (FOCUS does not standardise them)");
            (Some(ModelRef::Id(sku.to_string())), Some(class))
        } else {
            (None, None)
        };
        let description = [get("ChargeDescription"), get("SkuMeter"), usage_type]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or(category)
            .to_string();
        let Some(model) = model else {
            if cost != Money::ZERO {
                inv.lines.push(InvoiceLine {
                    day,
                    model: None,
                    account,
                    class: None,
                    tokens: None,
                    amount: Some(cost),
                    description,
                    origin: at,
                });
            }
            continue;
        };
        let quantity = get("ConsumedQuantity");
        let tokens = if quantity.is_empty() {
            None
        } else {
            let unit = get("ConsumedUnit");
            let per = tokens_per_unit(unit)
                .ok_or_else(|| err("ConsumedUnit", format!("{unit:?} is not a unit of tokens")))?;
            Some(tokens_from_decimal(quantity, per).ok_or_else(|| {
                err(
                    "ConsumedQuantity",
                    format!("{quantity:?} is not a non-negative quantity"),
                )
            })?)
        };
        inv.lines.push(InvoiceLine {
            day,
            model: Some(model),
            account,
            class,
            tokens,
            amount: Some(cost),
            description,
            origin: at,
        });
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters() {
        assert_eq!(
            meter_class("Cached Input Tokens"),
            Some(TokenClass::CacheRead)
        );
        assert_eq!(
            meter_class("Cache Write Tokens (1 h)"),
            Some(TokenClass::CacheWrite1h)
        );
        assert_eq!(
            meter_class("Cache Write Tokens (5 min)"),
            Some(TokenClass::CacheWrite5m)
        );
        assert_eq!(meter_class("Input Tokens"), Some(TokenClass::Input));
        assert_eq!(meter_class("Reasoning Tokens"), Some(TokenClass::Output));
        assert_eq!(meter_class("Web search"), None);
    }
}

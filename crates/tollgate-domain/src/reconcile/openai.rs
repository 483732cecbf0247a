//! OpenAI organization Usage and Costs API pages.
//!
//! - Usage (`GET /v1/organization/usage/completions`, `bucket_width=1d`,
//!   `group_by=model` and optionally `project_id`/`api_key_id`): per bucket and model,
//!   `input_tokens` (cached included), `input_cached_tokens`, `output_tokens` (reasoning
//!   included). Uncached input is `input_tokens − input_cached_tokens`. OpenAI has no
//!   cache-write charge, so no cache-write class.
//! - Costs (`GET /v1/organization/costs`, `group_by=line_item` and optionally
//!   `project_id`): `amount.value` in `amount.currency` per line item. A line item names
//!   a model and a charge (`gpt-4o-mini-2024-07-18, input`, `…, cached input`,
//!   `…, output`); the API reference does not specify that text, so a line item that does
//!   not read as `MODEL, CLASS` is reported as unattributed, never guessed.
//!
//! The account of a line is its `api_key_id` when grouped by key, else its `project_id`.

use super::invoice::{
    Fields, Invoice, InvoiceError, InvoiceFormat, InvoiceLine, ModelRef, buckets, number_text,
};
use super::{Day, TokenClass};
use crate::money::Money;
use serde_json::Value;

fn bucket_day(
    source: &str,
    path: &str,
    b: &serde_json::Map<String, Value>,
) -> Result<Day, InvoiceError> {
    match b.get("start_time") {
        Some(Value::Number(n)) => n.as_i64().map(Day::from_unix_seconds).ok_or_else(|| {
            InvoiceError::new(source, path, "start_time", "not a Unix time in seconds")
        }),
        _ => Err(InvoiceError::new(
            source,
            path,
            "start_time",
            "missing or not a number",
        )),
    }
}

fn account(f: &Fields<'_>) -> Result<Option<String>, InvoiceError> {
    Ok(f.str_opt("api_key_id")?
        .or(f.str_opt("project_id")?)
        .map(str::to_string))
}

pub fn parse_usage(source: &str, root: &Value) -> Result<Invoice, InvoiceError> {
    let mut inv = Invoice::new(InvoiceFormat::OpenAiUsage, source);
    let mut ungrouped = 0usize;
    for (path, bucket, results) in buckets(source, root)? {
        let day = bucket_day(source, &path, bucket)?;
        inv.days.insert(day);
        for (i, r) in results.into_iter().enumerate() {
            let f = Fields::of(source, format!("{path}.results[{i}]"), r)?;
            let input = f.u64_req("input_tokens")?;
            let cached = f.u64_opt("input_cached_tokens")?.unwrap_or(0);
            let output = f.u64_req("output_tokens")?;
            if cached > input {
                return Err(f.err(
                    "input_cached_tokens",
                    format!(
                        "{cached} cached tokens exceed the {input} input tokens they are part of"
                    ),
                ));
            }
            let Some(model) = f.str_opt("model")? else {
                ungrouped += 1;
                continue;
            };
            if f.obj.get("batch").and_then(Value::as_bool) == Some(true) {
                inv.note("batch usage is included: the gateway sends no Batch API requests, so batch lines show as provider-only or quantity drift");
            }
            if let Some(tier) = f.str_opt("service_tier")?
                && tier != "default"
            {
                inv.note(format!(
                    "service tier {tier:?} usage is included with standard usage"
                ));
            }
            let acct = account(&f)?;
            for (class, tokens) in [
                (TokenClass::Input, input - cached),
                (TokenClass::CacheRead, cached),
                (TokenClass::Output, output),
            ] {
                inv.lines.push(InvoiceLine {
                    day,
                    model: Some(ModelRef::Id(model.to_string())),
                    account: acct.clone(),
                    class: Some(class),
                    tokens: Some(tokens),
                    amount: None,
                    description: format!("{model} {}", class.as_str()),
                    origin: f.path.clone(),
                });
            }
        }
    }
    if ungrouped > 0 {
        inv.note(format!(
            "{ungrouped} usage result(s) without a model were skipped: fetch with group_by=model"
        ));
    }
    Ok(inv)
}

/// `gpt-4o-mini-2024-07-18, cached input` → (model, class).
pub fn parse_line_item(item: &str) -> Option<(String, TokenClass)> {
    let (model, kind) = item.rsplit_once(',')?;
    let class = match kind.trim().to_ascii_lowercase().as_str() {
        "input" | "uncached input" => TokenClass::Input,
        "cached input" | "cached_input" | "input cached" => TokenClass::CacheRead,
        "output" => TokenClass::Output,
        _ => return None,
    };
    let model = model.trim();
    (!model.is_empty() && !model.contains(' ')).then(|| (model.to_string(), class))
}

pub fn parse_costs(source: &str, root: &Value) -> Result<Invoice, InvoiceError> {
    let mut inv = Invoice::new(InvoiceFormat::OpenAiCosts, source);
    for (path, bucket, results) in buckets(source, root)? {
        let day = bucket_day(source, &path, bucket)?;
        inv.days.insert(day);
        for (i, r) in results.into_iter().enumerate() {
            let f = Fields::of(source, format!("{path}.results[{i}]"), r)?;
            let amount = f.sub("amount")?.ok_or_else(|| f.err("amount", "missing"))?;
            let currency = amount.str_opt("currency")?.unwrap_or("usd");
            if !currency.eq_ignore_ascii_case("usd") {
                return Err(amount.err(
                    "currency",
                    format!("{currency:?}: only USD amounts can be reconciled with the ledger"),
                ));
            }
            let value = amount
                .obj
                .get("value")
                .and_then(number_text)
                .ok_or_else(|| amount.err("value", "missing or not a number"))?;
            let value =
                Money::parse_usd_rounded(&value).map_err(|e| amount.err("value", e.to_string()))?;
            let item = f.str_opt("line_item")?;
            let acct = account(&f)?;
            let (model, class) = match item.and_then(parse_line_item) {
                Some((m, c)) => (Some(ModelRef::Id(m)), Some(c)),
                None => {
                    if item.is_none() {
                        inv.note("costs not grouped by line item: fetch with group_by=line_item to compare them per model");
                    }
                    (None, None)
                }
            };
            inv.lines.push(InvoiceLine {
                day,
                model,
                account: acct,
                class,
                tokens: None,
                amount: Some(value),
                description: item.unwrap_or("all line items").to_string(),
                origin: f.path.clone(),
            });
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_items() {
        assert_eq!(
            parse_line_item("gpt-4o-mini-2024-07-18, cached input"),
            Some(("gpt-4o-mini-2024-07-18".into(), TokenClass::CacheRead))
        );
        assert_eq!(
            parse_line_item("gpt-4o, output"),
            Some(("gpt-4o".into(), TokenClass::Output))
        );
        assert_eq!(parse_line_item("Image models"), None);
        assert_eq!(parse_line_item("gpt-4o, input (batch)"), None);
        assert_eq!(parse_line_item("web search tool calls, gpt-4o"), None);
    }
}

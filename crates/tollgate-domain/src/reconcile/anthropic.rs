//! Anthropic Usage & Cost Admin API reports.
//!
//! - Usage report (`GET /v1/organizations/usage_report/messages`, `bucket_width=1d`,
//!   `group_by[]=model` and optionally `api_key_id` / `workspace_id`): per bucket,
//!   `uncached_input_tokens`, `cache_read_input_tokens`,
//!   `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`,
//!   `output_tokens`. These are the ledger's own classes one for one.
//! - Cost report (`GET /v1/organizations/cost_report`, `group_by[]=description` and
//!   optionally `workspace_id`): `amount` is a decimal string in the currency's lowest
//!   unit (cents: `"123.45"` is 1.2345 USD); with `description` grouping each result
//!   names its `model` and `token_type`. Non-token costs (`cost_type` `web_search`,
//!   `code_execution`, ...) are unattributed: the gateway does not meter them.
//!
//! The cost report cannot be grouped by API key, only by workspace; the usage report
//! can be grouped by either. A line's account is its `api_key_id` if present, else its
//! `workspace_id` (null for the default workspace).

use super::invoice::{
    Fields, Invoice, InvoiceError, InvoiceFormat, InvoiceLine, ModelRef, buckets, number_text,
    shifted,
};
use super::{Day, TokenClass};
use serde_json::Value;

fn bucket_day(
    source: &str,
    path: &str,
    b: &serde_json::Map<String, Value>,
) -> Result<Day, InvoiceError> {
    b.get("starting_at")
        .and_then(Value::as_str)
        .and_then(Day::parse)
        .ok_or_else(|| {
            InvoiceError::new(
                source,
                path,
                "starting_at",
                "missing or not an RFC 3339 time",
            )
        })
}

pub fn parse_usage(source: &str, root: &Value) -> Result<Invoice, InvoiceError> {
    let mut inv = Invoice::new(InvoiceFormat::AnthropicUsage, source);
    let mut ungrouped = 0usize;
    for (path, bucket, results) in buckets(source, root)? {
        let day = bucket_day(source, &path, bucket)?;
        inv.days.insert(day);
        for (i, r) in results.into_iter().enumerate() {
            let f = Fields::of(source, format!("{path}.results[{i}]"), r)?;
            let uncached = f.u64_req("uncached_input_tokens")?;
            let read = f.u64_opt("cache_read_input_tokens")?.unwrap_or(0);
            let (w5, w1) = match f.sub("cache_creation")? {
                Some(c) => (
                    c.u64_opt("ephemeral_5m_input_tokens")?.unwrap_or(0),
                    c.u64_opt("ephemeral_1h_input_tokens")?.unwrap_or(0),
                ),
                None => (
                    f.u64_opt("cache_creation_5m_input_tokens")?.unwrap_or(0),
                    f.u64_opt("cache_creation_1h_input_tokens")?.unwrap_or(0),
                ),
            };
            let output = f.u64_req("output_tokens")?;
            let Some(model) = f.str_opt("model")? else {
                ungrouped += 1;
                continue;
            };
            if let Some(tools) = f.sub("server_tool_use")?
                && tools.u64_opt("web_search_requests")?.unwrap_or(0) > 0
            {
                inv.note("web search requests are billed apart from tokens and are not compared");
            }
            if let Some(tier) = f.str_opt("service_tier")?
                && tier != "standard"
            {
                inv.note(format!(
                    "service tier {tier:?} usage is included with standard usage"
                ));
            }
            let acct = f
                .str_opt("api_key_id")?
                .or(f.str_opt("workspace_id")?)
                .map(str::to_string);
            for (class, tokens) in [
                (TokenClass::Input, uncached),
                (TokenClass::CacheRead, read),
                (TokenClass::CacheWrite5m, w5),
                (TokenClass::CacheWrite1h, w1),
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
            "{ungrouped} usage result(s) without a model were skipped: fetch with group_by[]=model"
        ));
    }
    Ok(inv)
}

fn token_type(t: &str) -> Option<TokenClass> {
    match t {
        "uncached_input_tokens" => Some(TokenClass::Input),
        "cache_read_input_tokens" => Some(TokenClass::CacheRead),
        "cache_creation.ephemeral_5m_input_tokens" => Some(TokenClass::CacheWrite5m),
        "cache_creation.ephemeral_1h_input_tokens" => Some(TokenClass::CacheWrite1h),
        "output_tokens" => Some(TokenClass::Output),
        _ => None,
    }
}

pub fn parse_costs(source: &str, root: &Value) -> Result<Invoice, InvoiceError> {
    let mut inv = Invoice::new(InvoiceFormat::AnthropicCosts, source);
    for (path, bucket, results) in buckets(source, root)? {
        let day = bucket_day(source, &path, bucket)?;
        inv.days.insert(day);
        for (i, r) in results.into_iter().enumerate() {
            let f = Fields::of(source, format!("{path}.results[{i}]"), r)?;
            let currency = f.str_opt("currency")?.unwrap_or("USD");
            if !currency.eq_ignore_ascii_case("usd") {
                return Err(f.err(
                    "currency",
                    format!("{currency:?}: only USD amounts can be reconciled with the ledger"),
                ));
            }
            let cents = f
                .obj
                .get("amount")
                .and_then(number_text)
                .ok_or_else(|| f.err("amount", "missing or not a decimal string"))?;
            let amount = shifted(&cents, -2).ok_or_else(|| {
                f.err(
                    "amount",
                    format!("{cents:?} is not a decimal amount in cents"),
                )
            })?;
            let cost_type = f.str_opt("cost_type")?;
            let model = f.str_opt("model")?;
            let description = f.str_opt("description")?.unwrap_or("").to_string();
            let acct = f.str_opt("workspace_id")?.map(str::to_string);
            let (model, class) = match (cost_type, model) {
                (Some("tokens"), Some(m)) => {
                    let class = match f.str_opt("token_type")? {
                        Some(t) => Some(token_type(t).ok_or_else(|| {
                            f.err(
                                "token_type",
                                format!("{t:?} is not a token type tollgate knows"),
                            )
                        })?),
                        None => None,
                    };
                    (Some(ModelRef::Id(m.to_string())), class)
                }
                (None, _) => {
                    inv.note("costs not grouped by description: fetch with group_by[]=description to compare them per model and token type");
                    (None, None)
                }
                _ => (None, None),
            };
            if let Some(cw) = f.str_opt("context_window")?
                && cw != "0-200k"
            {
                inv.note(format!("long-context ({cw}) costs are compared at their own rate, as the gateway prices them"));
            }
            inv.lines.push(InvoiceLine {
                day,
                model,
                account: acct,
                class,
                tokens: None,
                amount: Some(amount),
                description: if description.is_empty() {
                    cost_type.unwrap_or("all costs").to_string()
                } else {
                    description
                },
                origin: f.path.clone(),
            });
        }
    }
    Ok(inv)
}

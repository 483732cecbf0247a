//! The provider-neutral invoice line, format detection and input errors.

use super::{Day, TokenClass, anthropic, cur, focus, openai};
use crate::money::Money;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// How an export names the model of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A model id (`gpt-4o-mini-2024-07-18`, a Bedrock model ARN).
    Id(String),
    /// A family named by an AWS usage type (`Nova2Lite`), matched by
    /// [`super::model::family`].
    Family(String),
}

impl ModelRef {
    pub fn as_written(&self) -> &str {
        match self {
            ModelRef::Id(s) | ModelRef::Family(s) => s,
        }
    }
}

/// One line of a provider's export, reduced to what reconciliation compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub day: Day,
    /// `None`: a charge not tied to a model (tools, fees, an ungrouped total).
    pub model: Option<ModelRef>,
    /// The provider's account grouping (project, API key, workspace, AWS account).
    pub account: Option<String>,
    /// `None`: an amount not split by token class.
    pub class: Option<TokenClass>,
    pub tokens: Option<u64>,
    pub amount: Option<Money>,
    /// The provider's own words for the line (line item, usage type, description).
    pub description: String,
    /// Where in the file: `data[0].results[3]`, `line 12`.
    pub origin: String,
}

/// The export formats tollgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InvoiceFormat {
    /// `GET /v1/organization/usage/completions` pages.
    OpenAiUsage,
    /// `GET /v1/organization/costs` pages.
    OpenAiCosts,
    /// `GET /v1/organizations/usage_report/messages` pages.
    AnthropicUsage,
    /// `GET /v1/organizations/cost_report` pages.
    AnthropicCosts,
    /// AWS Data Exports CUR 2.0, CSV.
    AwsCur,
    /// Any FinOps FOCUS 1.x cost-and-usage CSV (tollgate's own export, AWS's FOCUS 1.2).
    Focus,
}

impl InvoiceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceFormat::OpenAiUsage => "openai_usage",
            InvoiceFormat::OpenAiCosts => "openai_costs",
            InvoiceFormat::AnthropicUsage => "anthropic_usage",
            InvoiceFormat::AnthropicCosts => "anthropic_costs",
            InvoiceFormat::AwsCur => "aws_cur",
            InvoiceFormat::Focus => "focus",
        }
    }

    pub fn provider(self) -> Provider {
        match self {
            InvoiceFormat::OpenAiUsage | InvoiceFormat::OpenAiCosts => Provider::OpenAi,
            InvoiceFormat::AnthropicUsage | InvoiceFormat::AnthropicCosts => Provider::Anthropic,
            InvoiceFormat::AwsCur => Provider::Aws,
            InvoiceFormat::Focus => Provider::Focus,
        }
    }
}

/// Whose bill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Provider {
    OpenAi,
    Anthropic,
    /// Amazon Bedrock, billed through AWS.
    Aws,
    /// Whoever wrote the FOCUS file.
    Focus,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "openai" => Some(Provider::OpenAi),
            "anthropic" => Some(Provider::Anthropic),
            "aws" | "bedrock" => Some(Provider::Aws),
            "focus" => Some(Provider::Focus),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Aws => "aws",
            Provider::Focus => "focus",
        }
    }

    /// The gateway upstream `kind` that calls this provider.
    pub fn upstream_kind(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => Some("openai"),
            Provider::Anthropic => Some("anthropic"),
            Provider::Aws => Some("bedrock"),
            Provider::Focus => None,
        }
    }
}

/// A parsed export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub format: InvoiceFormat,
    /// The file name, as given.
    pub source: String,
    pub lines: Vec<InvoiceLine>,
    /// Days the export covers (API buckets, empty ones included; CSV: days with lines).
    pub days: BTreeSet<Day>,
    /// Gateway upstreams the file names (tollgate's own FOCUS export: `x_Upstream`).
    pub upstreams: BTreeSet<String>,
    pub notes: Vec<String>,
}

impl Invoice {
    pub(crate) fn new(format: InvoiceFormat, source: &str) -> Invoice {
        Invoice {
            format,
            source: source.to_string(),
            lines: Vec::new(),
            days: BTreeSet::new(),
            upstreams: BTreeSet::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let n = note.into();
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }
}

/// A malformed export: which file, where (line or record), which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceError {
    pub file: String,
    pub location: String,
    pub field: String,
    pub message: String,
}

impl InvoiceError {
    pub(crate) fn new(file: &str, location: &str, field: &str, message: impl Into<String>) -> Self {
        InvoiceError {
            file: file.to_string(),
            location: location.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        "invoice_malformed"
    }
}

impl fmt::Display for InvoiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if !self.location.is_empty() {
            write!(f, ": {}", self.location)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field {:?}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for InvoiceError {}

/// Parse one export, detecting its format from its content. `provider` (from
/// `--provider`) must agree with what the content says, except that any CSV may be read
/// as FOCUS.
pub fn parse_invoice(
    source: &str,
    text: &str,
    provider: Option<Provider>,
) -> Result<Invoice, InvoiceError> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    let format = if t.starts_with('{') || t.starts_with('[') {
        let root: Value = serde_json::from_str(t).map_err(|e| {
            InvoiceError::new(
                source,
                &format!("line {}, column {}", e.line(), e.column()),
                "",
                format!("not valid JSON: {e}"),
            )
        })?;
        let format = detect_json(source, &root, provider)?;
        return match format {
            InvoiceFormat::OpenAiUsage => openai::parse_usage(source, &root),
            InvoiceFormat::OpenAiCosts => openai::parse_costs(source, &root),
            InvoiceFormat::AnthropicUsage => anthropic::parse_usage(source, &root),
            InvoiceFormat::AnthropicCosts => anthropic::parse_costs(source, &root),
            InvoiceFormat::AwsCur | InvoiceFormat::Focus => Err(InvoiceError::new(
                source,
                "",
                "",
                "a CSV format in a JSON file",
            )),
        };
    } else {
        let first = t.lines().next().unwrap_or("");
        let header = super::csv::Header::new(
            &first
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .collect::<Vec<_>>(),
        );
        if header.find("BilledCost").is_some() {
            InvoiceFormat::Focus
        } else if header.find("line_item_usage_type").is_some() {
            InvoiceFormat::AwsCur
        } else {
            return Err(InvoiceError::new(
                source,
                "line 1",
                "",
                "not a known export: expected OpenAI or Anthropic JSON, a CUR 2.0 CSV (line_item_usage_type) or a FOCUS CSV (BilledCost)",
            ));
        }
    };
    if format == InvoiceFormat::AwsCur
        && let Some(p @ (Provider::OpenAi | Provider::Anthropic)) = provider
    {
        return Err(InvoiceError::new(
            source,
            "line 1",
            "",
            format!("an AWS CUR file, but --provider is {}", p.as_str()),
        ));
    }
    // Any CSV with FOCUS columns is read as FOCUS, whoever wrote it.
    match format {
        InvoiceFormat::AwsCur => cur::parse(source, text),
        _ => focus::parse(source, text),
    }
}

/// The first result object of the first bucket that has one.
fn first_result(root: &Value) -> Option<&serde_json::Map<String, Value>> {
    pages(root).find_map(|(_, page)| {
        page.get("data")?.as_array()?.iter().find_map(|b| {
            let r = b.get("results").or_else(|| b.get("result"))?;
            r.as_array()?.first()?.as_object()
        })
    })
}

fn first_bucket(root: &Value) -> Option<&serde_json::Map<String, Value>> {
    pages(root).find_map(|(_, p)| p.get("data")?.as_array()?.first()?.as_object())
}

fn detect_json(
    source: &str,
    root: &Value,
    provider: Option<Provider>,
) -> Result<InvoiceFormat, InvoiceError> {
    let detected = if let Some(r) = first_result(root) {
        let object = r.get("object").and_then(Value::as_str).unwrap_or("");
        if object == "organization.usage.completions.result"
            || r.contains_key("input_cached_tokens")
            || r.contains_key("num_model_requests")
        {
            Some(InvoiceFormat::OpenAiUsage)
        } else if object == "organization.costs.result" {
            Some(InvoiceFormat::OpenAiCosts)
        } else if r.contains_key("uncached_input_tokens") {
            Some(InvoiceFormat::AnthropicUsage)
        } else if r.contains_key("cost_type") || r.contains_key("token_type") {
            Some(InvoiceFormat::AnthropicCosts)
        } else {
            r.get("amount").map(|a| {
                if a.is_object() {
                    InvoiceFormat::OpenAiCosts
                } else {
                    InvoiceFormat::AnthropicCosts
                }
            })
        }
    } else {
        None
    };
    let format = match (detected, provider) {
        (Some(f), Some(p)) if f.provider() != p => {
            return Err(InvoiceError::new(
                source,
                "",
                "",
                format!(
                    "this is a {} export, but --provider is {}",
                    f.as_str(),
                    p.as_str()
                ),
            ));
        }
        (Some(f), _) => f,
        // Every bucket empty: nothing tells usage from costs, and nothing needs to.
        (None, p) => {
            let bucket = first_bucket(root);
            let openai_style = bucket.is_some_and(|b| b.contains_key("start_time"));
            let anthropic_style = bucket.is_some_and(|b| b.contains_key("starting_at"));
            match p {
                Some(Provider::OpenAi) => InvoiceFormat::OpenAiUsage,
                Some(Provider::Anthropic) => InvoiceFormat::AnthropicUsage,
                _ if openai_style => InvoiceFormat::OpenAiUsage,
                _ if anthropic_style => InvoiceFormat::AnthropicUsage,
                _ => {
                    return Err(InvoiceError::new(
                        source,
                        "",
                        "data",
                        "not an OpenAI or Anthropic usage/cost page: expected {\"data\": [buckets...]}",
                    ));
                }
            }
        }
    };
    Ok(format)
}

/// The pages of a document: one page object, or an array of pages (a paginated fetch
/// saved as one file). Yields a path prefix (`""` or `"[2]."`) with each.
pub(crate) fn pages(root: &Value) -> Box<dyn Iterator<Item = (String, &Value)> + '_> {
    match root {
        Value::Array(items) => Box::new(
            items
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("[{i}]."), p)),
        ),
        other => Box::new(std::iter::once((String::new(), other))),
    }
}

/// Buckets of every page with their path (`data[1]`) and their results (`results` or
/// `result`), erroring on a page without `data`.
/// A bucket: its path, the bucket object, its results.
pub(crate) type Bucket<'a> = (String, &'a serde_json::Map<String, Value>, Vec<&'a Value>);

pub(crate) fn buckets<'a>(source: &str, root: &'a Value) -> Result<Vec<Bucket<'a>>, InvoiceError> {
    let mut out = Vec::new();
    for (prefix, page) in pages(root) {
        let data = page.get("data").and_then(Value::as_array).ok_or_else(|| {
            InvoiceError::new(
                source,
                prefix.trim_end_matches('.'),
                "data",
                "missing or not an array",
            )
        })?;
        for (i, b) in data.iter().enumerate() {
            let path = format!("{prefix}data[{i}]");
            let obj = b.as_object().ok_or_else(|| {
                InvoiceError::new(source, &path, "", "a bucket must be an object")
            })?;
            let results = match obj.get("results").or_else(|| obj.get("result")) {
                Some(Value::Array(r)) => r.iter().collect(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(InvoiceError::new(source, &path, "results", "not an array"));
                }
            };
            out.push((path, obj, results));
        }
    }
    Ok(out)
}

/// Reads fields of one JSON record, naming the record and field in errors.
pub(crate) struct Fields<'a> {
    pub source: &'a str,
    pub path: String,
    pub obj: &'a serde_json::Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn of(source: &'a str, path: String, v: &'a Value) -> Result<Fields<'a>, InvoiceError> {
        let obj = v
            .as_object()
            .ok_or_else(|| InvoiceError::new(source, &path, "", "a record must be an object"))?;
        Ok(Fields { source, path, obj })
    }

    pub fn err(&self, field: &str, message: impl Into<String>) -> InvoiceError {
        InvoiceError::new(self.source, &self.path, field, message)
    }

    /// A non-negative integer; `None` if absent or null.
    pub fn u64_opt(&self, field: &str) -> Result<Option<u64>, InvoiceError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, got {n}"))
            }),
            Some(other) => Err(self.err(field, format!("expected an integer, got {other}"))),
        }
    }

    pub fn u64_req(&self, field: &str) -> Result<u64, InvoiceError> {
        self.u64_opt(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    pub fn str_opt(&self, field: &str) -> Result<Option<&'a str>, InvoiceError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(field, format!("expected a string, got {other}"))),
        }
    }

    pub fn sub(&self, field: &str) -> Result<Option<Fields<'a>>, InvoiceError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(Fields::of(
                self.source,
                format!("{}.{field}", self.path),
                v,
            )?)),
            Some(other) => Err(self.err(field, format!("expected an object, got {other}"))),
        }
    }
}

/// A decimal in text (or a JSON number's text) times 10^`shift`, rounded half up to an
/// integer: `scaled("123.45", -2)` (cents → USD, then × 1e9 by the caller's choice of
/// shift). Used with [`Money::parse_usd_rounded`], which works in nano-units.
pub(crate) fn shifted(text: &str, shift: i32) -> Option<Money> {
    let t = text.trim();
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
        None => (t, 0),
    };
    Money::parse_usd_rounded(&format!("{mant}e{}", exp.checked_add(shift)?)).ok()
}

/// A JSON value that is a number or a numeric string, as decimal text.
pub(crate) fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.trim().to_string()),
        _ => None,
    }
}

/// Tokens from decimal text × `per_unit` (a pricing unit of 1,000 tokens is 1000),
/// rounded half up. `None` when not a non-negative decimal.
pub(crate) fn tokens_from_decimal(text: &str, per_unit: u64) -> Option<u64> {
    // value × per_unit as "nano-units" of 1e9 tokens: shift by −9 then read nanos.
    let digits = match per_unit {
        1 => 0,
        1_000 => 3,
        1_000_000 => 6,
        _ => return None,
    };
    let m = shifted(text, digits - 9)?;
    u64::try_from(m.nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_shift_and_round() {
        assert_eq!(
            shifted("123.45", -2),
            Some(Money::from_nanos(1_234_500_000))
        );
        assert_eq!(
            shifted("1.5E3", -2),
            Some(Money::from_nanos(15_000_000_000))
        );
        assert_eq!(tokens_from_decimal("1500", 1), Some(1500));
        assert_eq!(tokens_from_decimal("1.5", 1000), Some(1500));
        assert_eq!(tokens_from_decimal("2.5E6", 1), Some(2_500_000));
        assert_eq!(tokens_from_decimal("0.4", 1), Some(0));
        assert_eq!(tokens_from_decimal("-1", 1), None);
        assert_eq!(tokens_from_decimal("abc", 1), None);
    }

    #[test]
    fn unknown_content_is_an_error_naming_the_file() {
        let e = parse_invoice("x.csv", "a,b\n1,2\n", None).unwrap_err();
        assert_eq!(e.file, "x.csv");
        assert!(e.to_string().starts_with("x.csv: line 1: "), "{e}");
        let e = parse_invoice("x.json", "{\"data\": [1, 2", None).unwrap_err();
        assert!(e.location.starts_with("line 1, column"), "{e}");
        let e = parse_invoice("x.json", "{\"object\": \"page\"}", None).unwrap_err();
        assert_eq!(e.field, "data");
    }
}

//! Reconciliation: the gateway's recorded spend against the provider's own usage and
//! cost exports.
//!
//! Both sides are reduced to **cells**: UTC day × model × account (when matched by
//! account) × token class (uncached input, cache read, cache write 5 min / 1 h,
//! output). A cell compares token counts and amounts; a difference beyond the tolerance
//! is a drift, and each drift says what kind it is:
//!
//! - **quantity**: the provider counted more or fewer tokens than the ledger (traffic
//!   that bypassed the gateway, cut streams whose tokens the gateway estimated, calls
//!   billed under another key, an export that is not complete yet);
//! - **price**: the provider's implied rate (amount / tokens) differs from the gateway's
//!   for the same tokens: the price table that priced the rows (its hash is named) has
//!   another rate for that model and token class than the provider charged.
//!
//! Both can apply to one cell. A group (day × model × account) found on one side only is
//! reported as such: provider-only is traffic the gateway never saw; gateway-only is
//! usage the provider has not billed (yet), or billed under another account.
//!
//! The gateway side is the ledger's own columns ([`GatewaySpend`]: token sums and the
//! charged cost, never re-priced). The ledger keeps one cost per request, so a cell's
//! gateway amount is the group's ledger cost split over token classes in proportion to
//! tokens × the catalog rate (largest remainder, as the FOCUS export splits it): the
//! classes of a group always add up to the ledger to the nano-USD.
//!
//! Money is integer nano-USD throughout; tolerances compare cross-multiplied integers.
//!
//! # Layout
//! - this module: cells, matching, drift classification ([`reconcile`]).
//! - [`model`]: how model ids from different sources are made comparable.
//! - [`invoice`]: the provider-neutral [`InvoiceLine`], format detection, errors.
//! - [`openai`], [`anthropic`], [`cur`], [`focus`]: one parser per export format.
//! - [`csv`]: the small RFC 4180 reader the CSV formats share.

pub mod anthropic;
pub mod csv;
pub mod cur;
pub mod focus;
pub mod invoice;
pub mod model;
pub mod openai;

pub use invoice::{Invoice, InvoiceError, InvoiceFormat, InvoiceLine, ModelRef, parse_invoice};

use crate::money::{Money, Rate};
use crate::pricing::EffectiveRates;
use crate::usage::Usage;
use crate::value::{Ratio, allocate};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

impl Day {
    pub fn from_ms(ms: i64) -> Day {
        Day(ms.div_euclid(DAY_MS))
    }

    pub fn from_unix_seconds(s: i64) -> Day {
        Day(s.div_euclid(86_400))
    }

    pub fn start_ms(self) -> i64 {
        self.0.saturating_mul(DAY_MS)
    }

    /// An RFC 3339 time (`2025-11-03T00:00:00Z`, `2025-11-03T00:00:00.000+00:00`), a
    /// zone-less date-time taken as UTC (`2025-11-03 00:00:00`, as Athena prints CUR
    /// columns), or a plain date (`2025-11-03`).
    pub fn parse(text: &str) -> Option<Day> {
        let t = text.trim();
        if let Ok(ts) = t.parse::<jiff::Timestamp>() {
            return Some(Day::from_unix_seconds(ts.as_second()));
        }
        let civil = t.replacen(' ', "T", 1);
        let date = civil
            .parse::<jiff::civil::DateTime>()
            .map(|d| d.date())
            .or_else(|_| t.parse::<jiff::civil::Date>())
            .ok()?;
        let ts = date
            .to_datetime(jiff::civil::Time::midnight())
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        Some(Day::from_unix_seconds(ts.as_second()))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_second(self.0.saturating_mul(86_400)) {
            Ok(ts) => write!(f, "{}", ts.strftime("%Y-%m-%d")),
            Err(_) => write!(f, "day {}", self.0),
        }
    }
}

/// The token classes providers bill separately. Reasoning tokens are billed as output by
/// every provider reconciled here, and the ledger counts them inside output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenClass {
    /// Prompt tokens neither read from nor written to a cache.
    Input,
    CacheRead,
    CacheWrite5m,
    CacheWrite1h,
    Output,
}

impl TokenClass {
    pub const ALL: [TokenClass; 5] = [
        TokenClass::Input,
        TokenClass::CacheRead,
        TokenClass::CacheWrite5m,
        TokenClass::CacheWrite1h,
        TokenClass::Output,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenClass::Input => "input",
            TokenClass::CacheRead => "cache_read",
            TokenClass::CacheWrite5m => "cache_write_5m",
            TokenClass::CacheWrite1h => "cache_write_1h",
            TokenClass::Output => "output",
        }
    }

    /// The ledger's tokens of this class.
    pub fn tokens(self, u: &Usage) -> u64 {
        match self {
            TokenClass::Input => u.input,
            TokenClass::CacheRead => u.cache_read,
            TokenClass::CacheWrite5m => u.cache_write_5m,
            TokenClass::CacheWrite1h => u.cache_write_1h,
            TokenClass::Output => u.output,
        }
    }

    /// The catalog's rate for this class (output: the output rate; reasoning tokens,
    /// inside output, may have their own, see [`class_weights`]).
    pub fn rate(self, r: &EffectiveRates) -> Rate {
        match self {
            TokenClass::Input => r.input,
            TokenClass::CacheRead => r.cache_read,
            TokenClass::CacheWrite5m => r.cache_write_5m,
            TokenClass::CacheWrite1h => r.cache_write_1h,
            TokenClass::Output => r.output,
        }
    }
}

/// A relative tolerance, in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    ppm: u32,
}

impl Default for Tolerance {
    /// 1 %.
    fn default() -> Self {
        Tolerance { ppm: 10_000 }
    }
}

impl Tolerance {
    pub const fn from_ppm(ppm: u32) -> Tolerance {
        Tolerance { ppm }
    }

    pub fn ppm(self) -> u32 {
        self.ppm
    }

    /// `1%`, `0.5 %`, `2.5%`, or a fraction (`0.01`). At most 100 %.
    pub fn parse(text: &str) -> Option<Tolerance> {
        let t = text.trim();
        let (num, scale) = match t.strip_suffix('%') {
            Some(p) => (p.trim(), 4),
            None => (t, 6),
        };
        // Reuse the exact decimal parser: "0.5" % → 5000 ppm.
        let m = Money::parse_usd(num).ok()?;
        if m.is_negative() {
            return None;
        }
        // parse_usd scaled by 1e9; we want 10^scale.
        let div = 10i64.pow(9 - scale);
        if m.nanos() % div != 0 {
            return None;
        }
        let ppm = u32::try_from(m.nanos() / div).ok()?;
        (ppm <= 1_000_000).then_some(Tolerance { ppm })
    }

    /// `|a − b| / max(|a|, |b|)` beyond the tolerance (strictly). Zero against zero never is.
    pub fn exceeded(self, a: i128, b: i128) -> bool {
        let diff = (a - b).abs();
        let base = a.abs().max(b.abs());
        diff.saturating_mul(1_000_000) > base.saturating_mul(i128::from(self.ppm))
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = Ratio::new(i128::from(self.ppm), 10_000).map(|r| r.decimal(4));
        let mut s = r.unwrap_or_default();
        while s.contains('.') && (s.ends_with('0') || s.ends_with('.')) {
            s.pop();
        }
        write!(f, "{s}%")
    }
}

/// How provider accounts (OpenAI project / API key, Anthropic workspace / API key, AWS
/// account, FOCUS sub-account) are matched with the gateway's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Accounts {
    /// Ignore accounts: compare per day × model.
    #[default]
    Ignore,
    /// Provider account id → gateway upstream name (the upstream whose credentials the
    /// provider sees as that account). Provider accounts not listed stay apart, so their
    /// traffic shows as provider-only: it did not come through the gateway.
    Upstreams(BTreeMap<String, String>),
    /// The provider's account id is the gateway's virtual key id (a FOCUS file written by
    /// `tollgate export`, whose `SubAccountId` is the key).
    VirtualKey,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tolerance: Tolerance,
    /// Amount differences smaller than this are never a drift (providers round daily
    /// amounts; the gateway rounds each request up to the nano-USD).
    pub min_amount: Money,
    pub accounts: Accounts,
}

/// The ledger summed per UTC day × upstream × deployment × upstream model × virtual key ×
/// price-table hash: what the store hands to [`reconcile`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySpend {
    pub day: Day,
    pub upstream: String,
    pub deployment: String,
    /// The model id the deployment called upstream.
    pub model: String,
    pub key_id: Option<String>,
    pub price_hash: String,
    pub requests: u64,
    /// Rows cut short (client disconnect, upstream cut, timeout mid-stream).
    pub partial: u64,
    /// Rows whose tokens the gateway counted itself (`usage_source = estimated`).
    pub estimated: u64,
    pub unpriced: u64,
    pub usage: Usage,
    /// What the ledger charged, summed.
    pub cost: Money,
}

/// A ledger group with the catalog rates of its deployment (used only to split the
/// group's cost between token classes and to name the catalog rate in explanations).
#[derive(Debug, Clone)]
pub struct PricedSpend {
    pub spend: GatewaySpend,
    pub rates: Option<EffectiveRates>,
}

/// One side of a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    /// `None` when this side's export has no token counts (a cost-only file).
    pub tokens: Option<u64>,
    /// `None` when this side's export has no amounts (a usage-only file).
    pub amount: Option<Money>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CellStatus {
    Matched,
    Drift,
    /// The provider billed a day × model × account the ledger has no row for.
    ProviderOnly,
    /// The ledger has a day × model × account the provider did not bill.
    GatewayOnly,
}

impl CellStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Matched => "matched",
            CellStatus::Drift => "drift",
            CellStatus::ProviderOnly => "provider_only",
            CellStatus::GatewayOnly => "gateway_only",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftKind {
    /// Token counts differ beyond the tolerance.
    Quantity,
    /// Implied rates (amount / tokens) differ beyond the tolerance.
    Price,
    /// Amounts differ beyond the tolerance although neither tokens nor rates alone do.
    Amount,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Quantity => "quantity",
            DriftKind::Price => "price",
            DriftKind::Amount => "amount",
        }
    }
}

/// The rates behind a price drift, in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceDetail {
    /// Provider amount / provider tokens.
    pub provider_usd_per_mtok: String,
    /// Gateway amount / gateway tokens.
    pub gateway_usd_per_mtok: String,
    /// The catalog's rate(s) for this model and class, as the gateway's deployment
    /// resolves it today.
    pub catalog_usd_per_mtok: Vec<String>,
    /// `true` when the provider charged more per token than the gateway.
    pub gateway_undercharges: bool,
}

/// One compared cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub day: Day,
    /// The comparable model key (see [`model::canonical`]).
    pub model: String,
    /// Model ids as each side wrote them.
    pub provider_models: Vec<String>,
    pub gateway_models: Vec<String>,
    pub account: Option<String>,
    /// `None`: the provider's amount for the whole group, not split by class.
    pub class: Option<TokenClass>,
    pub provider: Side,
    pub gateway: Side,
    pub status: CellStatus,
    pub kinds: Vec<DriftKind>,
    /// Differences smaller than the tolerance are matched but said (`within tolerance`).
    pub within_tolerance: bool,
    pub price: Option<PriceDetail>,
    /// Price-table hashes of the ledger rows in this cell.
    pub price_hashes: Vec<String>,
    pub requests: u64,
    pub partial: u64,
    pub estimated: u64,
    pub explanation: String,
}

impl Cell {
    pub fn token_delta(&self) -> Option<i128> {
        Some(i128::from(self.provider.tokens?) - i128::from(self.gateway.tokens.unwrap_or(0)))
    }

    pub fn amount_delta(&self) -> Option<Money> {
        self.provider
            .amount?
            .checked_sub(self.gateway.amount.unwrap_or(Money::ZERO))
    }
}

/// Sums over every compared cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Provider amounts attributed to a model (unattributed charges are apart).
    pub provider_amount: Option<Money>,
    /// The ledger's cost over the days the export covers.
    pub gateway_amount: Money,
    pub provider_tokens: BTreeMap<TokenClass, u64>,
    pub gateway_tokens: BTreeMap<TokenClass, u64>,
    /// The totals differ beyond the tolerance (amounts, else tokens of any class).
    pub drift: bool,
}

/// A provider charge that could not be tied to a model or token class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattributed {
    pub day: Day,
    pub description: String,
    pub amount: Money,
    pub origin: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    pub cells: Vec<Cell>,
    pub totals: Totals,
    pub unattributed: Vec<Unattributed>,
    /// What the reader should know: ambiguous mappings, skipped lines, fallbacks.
    pub notes: Vec<String>,
    /// The days the provider's export covers (the ledger is compared on these only).
    pub days: Vec<Day>,
}

impl Reconciliation {
    pub fn count(&self, status: CellStatus) -> usize {
        self.cells.iter().filter(|c| c.status == status).count()
    }

    /// Anything beyond tolerance: a drifted or one-sided cell, or the totals.
    pub fn has_drift(&self) -> bool {
        self.totals.drift || self.cells.iter().any(|c| c.status != CellStatus::Matched)
    }
}

/// Group key: day × model × account.
type GroupKey = (Day, String, Option<String>);

#[derive(Debug, Default)]
struct ProviderAgg {
    tokens: BTreeMap<TokenClass, u64>,
    amounts: BTreeMap<TokenClass, Money>,
    /// Amounts of the group not split by class.
    unclassified: Option<Money>,
    models: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct GatewayAgg {
    tokens: BTreeMap<TokenClass, u64>,
    amounts: BTreeMap<TokenClass, Money>,
    rates: BTreeMap<TokenClass, BTreeSet<Rate>>,
    unrated: bool,
    /// Rows priced at other rates than the catalog's today (an older table, a
    /// long-context tier): the class split by today's rates would not be the ledger's.
    repriced: bool,
    /// Today's catalog price of each class, atto-USD.
    catalog: BTreeMap<TokenClass, u128>,
    cost: Money,
    models: BTreeSet<String>,
    hashes: BTreeSet<String>,
    requests: u64,
    partial: u64,
    estimated: u64,
}

/// How a group's ledger cost splits over classes: tokens × rate (reasoning at its own
/// rate inside output), scaled into `u64` weights; by tokens when there are no rates.
pub fn class_weights(u: &Usage, rates: Option<&EffectiveRates>) -> Vec<(TokenClass, u64, u64)> {
    let classes: Vec<(TokenClass, u64)> = TokenClass::ALL
        .iter()
        .map(|c| (*c, c.tokens(u)))
        .filter(|(_, t)| *t > 0)
        .collect();
    let raw: Vec<u128> = classes
        .iter()
        .map(|(c, t)| match rates {
            None => u128::from(*t),
            Some(r) if *c == TokenClass::Output => {
                let reasoning = u.reasoning.min(u.output);
                r.output.times(u.output - reasoning) + r.reasoning.times(reasoning)
            }
            Some(r) => c.rate(r).times(*t),
        })
        .collect();
    let max = raw.iter().copied().max().unwrap_or(0);
    let raw = if max == 0 {
        // Priced at zero: split by tokens.
        classes.iter().map(|(_, t)| u128::from(*t)).collect()
    } else {
        raw
    };
    let max = raw.iter().copied().max().unwrap_or(0);
    let shift = (128 - max.leading_zeros()).saturating_sub(60);
    classes
        .into_iter()
        .zip(raw)
        .map(|((c, t), w)| (c, t, u64::try_from(w >> shift).unwrap_or(u64::MAX)))
        .collect()
}

fn push_note(notes: &mut Vec<String>, note: String) {
    if !notes.contains(&note) {
        notes.push(note);
    }
}

/// Compare the provider's `invoices` with the gateway's `spend` (which may cover more
/// days than the invoices: only the days an invoice covers are compared).
pub fn reconcile(invoices: &[Invoice], spend: &[PricedSpend], opts: &Options) -> Reconciliation {
    let mut notes: Vec<String> = Vec::new();
    for inv in invoices {
        for n in &inv.notes {
            push_note(&mut notes, format!("{}: {n}", inv.source));
        }
    }
    let days: BTreeSet<Day> = invoices
        .iter()
        .flat_map(|i| i.days.iter().copied())
        .collect();
    let lines: Vec<&InvoiceLine> = invoices.iter().flat_map(|i| i.lines.iter()).collect();

    let mut accounts = opts.accounts.clone();
    if accounts != Accounts::Ignore && lines.iter().all(|l| l.account.is_none()) {
        push_note(
            &mut notes,
            "the export has no account ids (not grouped by project, key or workspace): compared per day × model".into(),
        );
        accounts = Accounts::Ignore;
    }

    let spend: Vec<&PricedSpend> = spend
        .iter()
        .filter(|s| days.contains(&s.spend.day))
        .collect();
    // Gateway model keys and their family signatures, for usage types that name a family.
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &spend {
        let key = model::canonical(&s.spend.model);
        families.entry(model::family(&key)).or_default().insert(key);
    }

    let provider_account = |id: &Option<String>| -> Option<String> {
        match &accounts {
            Accounts::Ignore => None,
            Accounts::VirtualKey => id.clone(),
            Accounts::Upstreams(map) => id
                .as_ref()
                .map(|i| map.get(i).cloned().unwrap_or_else(|| i.clone())),
        }
    };

    let mut provider: BTreeMap<GroupKey, ProviderAgg> = BTreeMap::new();
    let mut unattributed = Vec::new();
    for l in &lines {
        if !days.contains(&l.day) {
            // A line outside the buckets the file declares cannot happen in the API
            // formats; CSV formats declare days by their lines, so this is a no-op there.
            continue;
        }
        let key = match &l.model {
            Some(ModelRef::Id(id)) => Some(model::canonical(id)),
            Some(ModelRef::Family(name)) => {
                let sig = model::family(name);
                match families.get(&sig) {
                    Some(keys) if keys.len() == 1 => keys.iter().next().cloned(),
                    Some(keys) => {
                        push_note(
                            &mut notes,
                            format!(
                                "usage type model {name:?} fits several gateway models ({}); kept apart",
                                keys.iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        );
                        Some(format!("{} (usage type)", name.to_ascii_lowercase()))
                    }
                    None => Some(format!("{} (usage type)", name.to_ascii_lowercase())),
                }
            }
            None => None,
        };
        let Some(model_key) = key else {
            if let Some(a) = l.amount.filter(|a| *a != Money::ZERO) {
                unattributed.push(Unattributed {
                    day: l.day,
                    description: l.description.clone(),
                    amount: a,
                    origin: l.origin.clone(),
                });
            }
            continue;
        };
        let agg = provider
            .entry((l.day, model_key, provider_account(&l.account)))
            .or_default();
        if let Some(m) = &l.model {
            agg.models.insert(m.as_written().to_string());
        }
        match l.class {
            Some(c) => {
                if let Some(t) = l.tokens {
                    let e = agg.tokens.entry(c).or_insert(0);
                    *e = e.saturating_add(t);
                }
                if let Some(a) = l.amount {
                    let e = agg.amounts.entry(c).or_insert(Money::ZERO);
                    *e = e.saturating_add(a);
                }
            }
            None => {
                if let Some(a) = l.amount {
                    agg.unclassified =
                        Some(agg.unclassified.unwrap_or(Money::ZERO).saturating_add(a));
                }
            }
        }
    }

    let mut gateway: BTreeMap<GroupKey, GatewayAgg> = BTreeMap::new();
    for s in &spend {
        let g = &s.spend;
        let account = match &accounts {
            Accounts::Ignore => None,
            Accounts::VirtualKey => g.key_id.clone(),
            Accounts::Upstreams(_) => Some(g.upstream.clone()),
        };
        let agg = gateway
            .entry((g.day, model::canonical(&g.model), account))
            .or_default();
        agg.models.insert(g.model.clone());
        agg.hashes.insert(g.price_hash.clone());
        agg.requests += g.requests;
        agg.partial += g.partial;
        agg.estimated += g.estimated;
        agg.cost = agg.cost.saturating_add(g.cost);
        if s.rates.is_none() {
            agg.unrated = true;
        }
        if let Some(r) = &s.rates {
            let today = crate::cost::cost_at(&g.usage, r).charged;
            // Each row rounds up by less than a nano-USD on its own.
            let slack = i128::from(g.requests);
            if (i128::from(today.nanos()) - i128::from(g.cost.nanos())).abs() > slack {
                agg.repriced = true;
            }
            for c in TokenClass::ALL {
                let atto = match c {
                    TokenClass::Output => {
                        let reasoning = g.usage.reasoning.min(g.usage.output);
                        r.output.times(g.usage.output - reasoning) + r.reasoning.times(reasoning)
                    }
                    _ => c.rate(r).times(c.tokens(&g.usage)),
                };
                *agg.catalog.entry(c).or_insert(0) += atto;
            }
        }
        let w = class_weights(&g.usage, s.rates.as_ref());
        let parts = allocate(g.cost, &w.iter().map(|x| x.2).collect::<Vec<_>>());
        for ((class, tokens, _), part) in w.iter().zip(parts) {
            let e = agg.tokens.entry(*class).or_insert(0);
            *e = e.saturating_add(*tokens);
            let e = agg.amounts.entry(*class).or_insert(Money::ZERO);
            *e = e.saturating_add(part);
            if let Some(r) = &s.rates {
                agg.rates.entry(*class).or_default().insert(class.rate(r));
            }
        }
        if w.is_empty() && g.cost != Money::ZERO {
            // Cost with no tokens (should not happen): keep it in the group total.
            let e = agg.amounts.entry(TokenClass::Input).or_insert(Money::ZERO);
            *e = e.saturating_add(g.cost);
        }
    }

    let keys: BTreeSet<GroupKey> = provider.keys().chain(gateway.keys()).cloned().collect();
    let empty_p = ProviderAgg::default();
    let empty_g = GatewayAgg::default();
    let mut cells = Vec::new();
    for key in keys {
        let p = provider.get(&key);
        let g = gateway.get(&key);
        let pa = p.unwrap_or(&empty_p);
        let ga = g.unwrap_or(&empty_g);
        let has_tokens = !pa.tokens.is_empty();
        let has_amounts = !pa.amounts.is_empty() || pa.unclassified.is_some();
        // Amounts compared per class only when the provider split all of them by class.
        let per_class_amounts = has_amounts && pa.unclassified.is_none();
        let classes: BTreeSet<TokenClass> = pa
            .tokens
            .keys()
            .chain(pa.amounts.keys())
            .chain(ga.tokens.keys())
            .copied()
            .collect();
        let ctx = CellCtx {
            key: &key,
            p: pa,
            g: ga,
            provider_present: p.is_some(),
            gateway_present: g.is_some(),
            opts,
        };
        for class in classes {
            let provider_side = Side {
                tokens: has_tokens.then(|| pa.tokens.get(&class).copied().unwrap_or(0)),
                amount: if per_class_amounts {
                    Some(pa.amounts.get(&class).copied().unwrap_or(Money::ZERO))
                } else {
                    None
                },
            };
            // A repriced group's class amounts are today's catalog prices (the ledger's
            // total is compared in a group cell below).
            let amount = if ga.repriced {
                Money::from_atto_ceil(ga.catalog.get(&class).copied().unwrap_or(0))
            } else {
                ga.amounts.get(&class).copied().unwrap_or(Money::ZERO)
            };
            let gateway_side = Side {
                tokens: Some(ga.tokens.get(&class).copied().unwrap_or(0)),
                amount: Some(amount),
            };
            // Exports list every class of a model, used or not: nothing against nothing
            // is not a cell.
            let nothing = |s: &Side| {
                s.tokens.unwrap_or(0) == 0 && s.amount.unwrap_or(Money::ZERO) == Money::ZERO
            };
            if nothing(&provider_side) && nothing(&gateway_side) {
                continue;
            }
            cells.push(ctx.cell(Some(class), provider_side, gateway_side));
        }
        if has_amounts && (!per_class_amounts || ga.repriced) {
            let total = pa
                .amounts
                .values()
                .copied()
                .chain(pa.unclassified)
                .sum::<Money>();
            cells.push(ctx.cell(
                None,
                Side {
                    tokens: None,
                    amount: Some(total),
                },
                Side {
                    tokens: None,
                    amount: Some(ga.cost),
                },
            ));
        }
    }

    let totals = totals(&provider, &gateway, opts);
    if spend.iter().any(|s| s.rates.is_none()) {
        push_note(
            &mut notes,
            "some gateway rows' models are not in the price table: their cost is split between token classes by tokens, not by rate".into(),
        );
    }
    Reconciliation {
        cells,
        totals,
        unattributed,
        notes,
        days: days.into_iter().collect(),
    }
}

fn totals(
    provider: &BTreeMap<GroupKey, ProviderAgg>,
    gateway: &BTreeMap<GroupKey, GatewayAgg>,
    opts: &Options,
) -> Totals {
    let mut t = Totals::default();
    let mut any_amount = false;
    let mut p_amount = Money::ZERO;
    for a in provider.values() {
        for (c, n) in &a.tokens {
            *t.provider_tokens.entry(*c).or_insert(0) += n;
        }
        for m in a.amounts.values().copied().chain(a.unclassified) {
            any_amount = true;
            p_amount = p_amount.saturating_add(m);
        }
    }
    for a in gateway.values() {
        for (c, n) in &a.tokens {
            *t.gateway_tokens.entry(*c).or_insert(0) += n;
        }
        t.gateway_amount = t.gateway_amount.saturating_add(a.cost);
    }
    t.provider_amount = any_amount.then_some(p_amount);
    t.drift = match t.provider_amount {
        Some(p) => amount_drift(p, t.gateway_amount, opts),
        None => TokenClass::ALL.iter().any(|c| {
            let p = t.provider_tokens.get(c).copied().unwrap_or(0);
            let g = t.gateway_tokens.get(c).copied().unwrap_or(0);
            opts.tolerance.exceeded(i128::from(p), i128::from(g))
        }),
    };
    t
}

fn amount_drift(p: Money, g: Money, opts: &Options) -> bool {
    let (p, g) = (i128::from(p.nanos()), i128::from(g.nanos()));
    opts.tolerance.exceeded(p, g) && (p - g).abs() >= i128::from(opts.min_amount.nanos())
}

/// USD per million tokens of `amount` over `tokens`, to 4 decimal places.
pub fn usd_per_mtok(amount: Money, tokens: u64) -> Option<String> {
    Ratio::new(i128::from(amount.nanos()), i128::from(tokens) * 1000).map(|r| r.decimal(4))
}

fn pct(num: i128, den: i128) -> String {
    Ratio::new(num, den)
        .map(|r| r.percent(2))
        .unwrap_or_else(|| "n/a".into())
}

struct CellCtx<'a> {
    key: &'a GroupKey,
    p: &'a ProviderAgg,
    g: &'a GatewayAgg,
    provider_present: bool,
    gateway_present: bool,
    opts: &'a Options,
}

impl CellCtx<'_> {
    fn cell(&self, class: Option<TokenClass>, provider: Side, gateway: Side) -> Cell {
        let (day, model_key, account) = self.key;
        let tol = self.opts.tolerance;
        let mut cell = Cell {
            day: *day,
            model: model_key.clone(),
            provider_models: self.p.models.iter().cloned().collect(),
            gateway_models: self.g.models.iter().cloned().collect(),
            account: account.clone(),
            class,
            provider,
            gateway,
            status: CellStatus::Matched,
            kinds: Vec::new(),
            within_tolerance: false,
            price: None,
            price_hashes: self.g.hashes.iter().cloned().collect(),
            requests: self.g.requests,
            partial: self.g.partial,
            estimated: self.g.estimated,
            explanation: String::new(),
        };
        let what = match class {
            Some(c) => c.as_str(),
            None => "all classes",
        };
        if !self.gateway_present {
            cell.status = CellStatus::ProviderOnly;
            cell.gateway = Side::default();
            let who = match account {
                Some(a) => format!(" on account {a}"),
                None => String::new(),
            };
            cell.explanation = format!(
                "billed by the provider{who} but never seen by the gateway: traffic that bypassed the gateway{}",
                if matches!(&self.opts.accounts, Accounts::Upstreams(m) if account.as_ref().is_some_and(|a| !m.values().any(|v| v == a)))
                {
                    " (this account is not mapped to a gateway upstream)"
                } else {
                    ""
                }
            );
            return cell;
        }
        if !self.provider_present {
            cell.status = CellStatus::GatewayOnly;
            cell.provider = Side::default();
            cell.explanation = format!(
                "metered by the gateway ({} requests) but not in the provider's export: not billed yet (exports lag), billed under another account, or a model id the export writes differently",
                self.g.requests
            );
            return cell;
        }

        let (pt, gt) = (provider.tokens, gateway.tokens);
        let (pa, ga) = (provider.amount, gateway.amount);
        let qty_drift =
            matches!((pt, gt), (Some(p), Some(g)) if tol.exceeded(i128::from(p), i128::from(g)));
        let amt_drift = matches!((pa, ga), (Some(p), Some(g)) if amount_drift(p, g, self.opts));
        // Price: both rates defined and different, and the rate difference alone moves
        // the amount by at least the floor.
        let mut price_drift = false;
        if let (Some(p_t), Some(g_t), Some(p_a), Some(g_a)) = (pt, gt, pa, ga)
            && p_t > 0
            && g_t > 0
        {
            let lhs = i128::from(p_a.nanos()) * i128::from(g_t);
            let rhs = i128::from(g_a.nanos()) * i128::from(p_t);
            let effect_floor = i128::from(self.opts.min_amount.nanos()) * i128::from(g_t);
            price_drift = tol.exceeded(lhs, rhs) && (lhs - rhs).abs() >= effect_floor;
            if price_drift {
                let catalog = class
                    .and_then(|c| self.g.rates.get(&c))
                    .map(|s| s.iter().map(|r| r.usd_per_mtok()).collect())
                    .unwrap_or_default();
                cell.price = Some(PriceDetail {
                    provider_usd_per_mtok: usd_per_mtok(p_a, p_t).unwrap_or_default(),
                    gateway_usd_per_mtok: usd_per_mtok(g_a, g_t).unwrap_or_default(),
                    catalog_usd_per_mtok: catalog,
                    gateway_undercharges: lhs > rhs,
                });
            }
        }
        if qty_drift {
            cell.kinds.push(DriftKind::Quantity);
        }
        if price_drift && (amt_drift || qty_drift) {
            cell.kinds.push(DriftKind::Price);
        } else {
            cell.price = None;
        }
        if amt_drift && cell.kinds.is_empty() {
            cell.kinds.push(DriftKind::Amount);
        }
        let differs =
            pt.zip(gt).is_some_and(|(p, g)| p != g) || pa.zip(ga).is_some_and(|(p, g)| p != g);
        if cell.kinds.is_empty() {
            cell.within_tolerance = differs;
            if differs {
                let mut parts = Vec::new();
                if let (Some(p), Some(g)) = (pt, gt)
                    && p != g
                {
                    parts.push(format!(
                        "tokens {:+} ({})",
                        i128::from(p) - i128::from(g),
                        pct(i128::from(p) - i128::from(g), i128::from(g.max(1)))
                    ));
                }
                if let (Some(p), Some(g)) = (pa, ga)
                    && p != g
                {
                    parts.push(format!(
                        "amount {} USD",
                        Money::from_nanos(p.nanos() - g.nanos())
                    ));
                }
                cell.explanation = format!(
                    "within tolerance ({tol}): {}{}",
                    parts.join(", "),
                    self.cut_hint()
                );
            }
            return cell;
        }
        cell.status = CellStatus::Drift;
        let mut why = Vec::new();
        if qty_drift && let (Some(p), Some(g)) = (pt, gt) {
            let d = i128::from(p) - i128::from(g);
            let share = pct(d, i128::from(g.max(1)));
            if d > 0 {
                let cause = if self.g.partial > 0 || self.g.estimated > 0 {
                    format!(
                        "{} cut stream(s) whose tokens the gateway counted itself ({} estimated row(s)): the provider bills what it generated before the cut; or traffic that bypassed the gateway",
                        self.g.partial, self.g.estimated
                    )
                } else {
                    "traffic that bypassed the gateway (a key used directly), or calls the gateway forwarded without metering them".to_string()
                };
                why.push(format!(
                    "quantity: the provider counted {d} more {what} tokens than the gateway ({share}): {cause}"
                ));
            } else {
                why.push(format!(
                    "quantity: the provider counted {} fewer {what} tokens than the gateway ({share}): not billed yet, billed under another account{}",
                    -d,
                    if self.g.estimated > 0 {
                        ", or the gateway's estimate of cut streams was above what the provider billed"
                    } else {
                        ""
                    }
                ));
            }
        }
        if let Some(pd) = &cell.price {
            let catalog = if pd.catalog_usd_per_mtok.is_empty() {
                "no catalog rate for this model".to_string()
            } else {
                format!("catalog {} USD/Mtok", pd.catalog_usd_per_mtok.join(" / "))
            };
            why.push(format!(
                "price: {} {what} billed at {} USD/Mtok by the provider, {} USD/Mtok by the gateway ({catalog}; price table {}): the gateway {} — update the price table's {what} rate for this model",
                cell.gateway_models.first().unwrap_or(&cell.model),
                pd.provider_usd_per_mtok,
                pd.gateway_usd_per_mtok,
                cell.price_hashes.join(", "),
                if pd.gateway_undercharges {
                    "under-charges"
                } else {
                    "over-charges"
                },
            ));
        }
        if cell.kinds == [DriftKind::Amount]
            && let (Some(p), Some(g)) = (pa, ga)
        {
            let why_amount = if class.is_none() && self.g.repriced {
                format!(
                    " for the same tokens: the ledger's rows were priced (price table {}) with other rates than today's table (an older table, or a long-context tier); the class cells compare the provider with today's rates",
                    cell.price_hashes.join(", ")
                )
            } else if class.is_none() {
                " (the export does not split amounts by token class)".to_string()
            } else {
                ": small token and rate differences add up".to_string()
            };
            why.push(format!(
                "amount: {p} USD by the provider, {g} USD by the gateway{why_amount}"
            ));
        }
        cell.explanation = why.join("; ");
        cell
    }

    fn cut_hint(&self) -> String {
        if self.g.partial > 0 || self.g.estimated > 0 {
            format!(
                " ({} cut stream(s), {} row(s) with estimated tokens)",
                self.g.partial, self.g.estimated
            )
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests;

//! Budgets: who a request is charged to, over which period, and the arithmetic of
//! reserving a request's worst-case cost before it is forwarded and settling its actual
//! cost after.
//!
//! A request belongs to several [`Scope`]s at once (the org, its team, agent, user, key
//! and task). Every [`BudgetRule`] that covers one of them gets a line in the request's
//! reservation; the reservation is all-or-nothing across the lines ([`Book::reserve`]),
//! so concurrent first requests cannot slip past a limit together. Settling charges the
//! actual cost and releases the rest; a response that cost more than its reservation
//! (an under-counted prompt, a provider ignoring `max_tokens`) is charged in full and its
//! excess reported as overage, never hidden.
//!
//! Periods are calendar periods in a configured time zone ([`window`]): a day starts at
//! local midnight, a week on Monday, a month on the 1st; `lifetime` never resets. Every
//! function takes `now`; none reads a clock.

use crate::attribution::Attribution;
use crate::money::Money;
use crate::pricing::EffectiveRates;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// The kinds of subject a budget can be set on, from the widest to the narrowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    Org,
    Team,
    Agent,
    User,
    Key,
    Task,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 6] = [
        ScopeKind::Org,
        ScopeKind::Team,
        ScopeKind::Agent,
        ScopeKind::User,
        ScopeKind::Key,
        ScopeKind::Task,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Org => "org",
            ScopeKind::Team => "team",
            ScopeKind::Agent => "agent",
            ScopeKind::User => "user",
            ScopeKind::Key => "key",
            ScopeKind::Task => "task",
        }
    }

    pub fn parse(s: &str) -> Option<ScopeKind> {
        ScopeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One concrete subject a request is charged to: `team:support`, `agent:planner`, `org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub kind: ScopeKind,
    /// The entity's name; `org` for the organisation.
    pub name: String,
}

impl Scope {
    pub fn org() -> Scope {
        Scope {
            kind: ScopeKind::Org,
            name: "org".into(),
        }
    }

    pub fn new(kind: ScopeKind, name: impl Into<String>) -> Scope {
        Scope {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ScopeKind::Org => f.write_str("org"),
            k => write!(f, "{}:{}", k.as_str(), self.name),
        }
    }
}

/// Every scope a request belongs to, widest first. The org always; the others when the
/// attribution names them.
pub fn scopes_of(a: &Attribution) -> Vec<Scope> {
    let mut out = vec![Scope::org()];
    let mut push = |kind, v: &Option<String>| {
        if let Some(name) = v {
            out.push(Scope::new(kind, name.clone()));
        }
    };
    push(ScopeKind::Team, &a.team);
    push(ScopeKind::Agent, &a.agent);
    push(ScopeKind::User, &a.user);
    push(ScopeKind::Key, &a.key_id);
    push(ScopeKind::Task, &a.task);
    out
}

/// What a rule is set on: one entity (`team:support`), each entity of a kind separately
/// (`agent:*`: every agent has its own limit), or the org (`org`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeSpec {
    pub kind: ScopeKind,
    /// `None`: every entity of this kind, each on its own (and the org).
    pub name: Option<String>,
}

impl ScopeSpec {
    /// `org`, `team:support`, `agent:*`.
    pub fn parse(s: &str) -> Result<ScopeSpec, String> {
        let s = s.trim();
        let (kind, name) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n)),
            None => (s, None),
        };
        let kind = ScopeKind::parse(kind).ok_or_else(|| {
            format!(
                "{s:?}: the scope kind must be one of {}",
                ScopeKind::ALL.map(ScopeKind::as_str).join(", ")
            )
        })?;
        let name = match (kind, name) {
            (ScopeKind::Org, None) => None,
            (ScopeKind::Org, Some(_)) => {
                return Err(format!("{s:?}: write the org scope as `org`"));
            }
            (_, None) => {
                return Err(format!(
                    "{s:?}: name the {k} (`{k}:NAME`) or write `{k}:*` for each {k}",
                    k = kind.as_str()
                ));
            }
            (_, Some("*")) => None,
            (_, Some(n)) if n.trim().is_empty() => return Err(format!("{s:?}: empty name")),
            (_, Some(n)) => Some(n.trim().to_string()),
        };
        Ok(ScopeSpec { kind, name })
    }

    /// Does this rule cover `scope`?
    pub fn covers(&self, scope: &Scope) -> bool {
        self.kind == scope.kind && self.name.as_ref().is_none_or(|n| *n == scope.name)
    }
}

impl fmt::Display for ScopeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.name) {
            (ScopeKind::Org, _) => f.write_str("org"),
            (k, Some(n)) => write!(f, "{}:{n}", k.as_str()),
            (k, None) => write!(f, "{}:*", k.as_str()),
        }
    }
}

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
    Lifetime,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Lifetime];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Lifetime => "lifetime",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" | "daily" => Some(Period::Day),
            "week" | "weekly" => Some(Period::Week),
            "month" | "monthly" => Some(Period::Month),
            "lifetime" | "total" => Some(Period::Lifetime),
            _ => None,
        }
    }
}

/// One period instance: `[start_ms, end_ms)` and a label naming it (`2025-06-01`,
/// `2025-W23`, `2025-06`, `lifetime`). Spend is kept per (scope, period label).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodWindow {
    pub period: Period,
    pub label: String,
    pub start_ms: i64,
    /// `None` for `lifetime`.
    pub end_ms: Option<i64>,
}

/// The period instance containing `now_ms`, in calendar time of `tz`. Days are local
/// days (23 or 25 hours long across a DST change), weeks start on Monday (ISO 8601),
/// months on the 1st.
pub fn window(period: Period, now_ms: i64, tz: &TimeZone) -> PeriodWindow {
    let ts = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
    let now = ts.to_zoned_datetime(tz.clone());
    let bounds = |start: ZonedDateTime, end: Option<ZonedDateTime>, label: String| PeriodWindow {
        period,
        label,
        start_ms: start.timestamp().as_millisecond(),
        end_ms: end.map(|e| e.timestamp().as_millisecond()),
    };
    let day_start = |z: &ZonedDateTime| z.start_of_day().unwrap_or_else(|_| z.clone());
    match period {
        Period::Lifetime => PeriodWindow {
            period,
            label: "lifetime".into(),
            start_ms: i64::MIN,
            end_ms: None,
        },
        Period::Day => {
            let start = day_start(&now);
            let end = now
                .date()
                .tomorrow()
                .ok()
                .and_then(|d| d.to_zoned_datetime(tz.clone()).ok());
            let label = now.date().to_string();
            bounds(start, end, label)
        }
        Period::Week => {
            let back = i64::from(now.weekday().to_monday_zero_offset());
            let monday = now.date().checked_sub(back.days()).unwrap_or(now.date());
            let start = monday
                .to_zoned_datetime(tz.clone())
                .unwrap_or_else(|_| day_start(&now));
            let end = monday
                .checked_add(7.days())
                .ok()
                .and_then(|d| d.to_zoned_datetime(tz.clone()).ok());
            let iso = now.date().iso_week_date();
            let label = format!("{:04}-W{:02}", iso.year(), iso.week());
            bounds(start, end, label)
        }
        Period::Month => {
            let first = now.date().first_of_month();
            let start = first
                .to_zoned_datetime(tz.clone())
                .unwrap_or_else(|_| day_start(&now));
            let end = first
                .checked_add(1.months())
                .ok()
                .and_then(|d| d.to_zoned_datetime(tz.clone()).ok());
            let label = format!("{:04}-{:02}", now.year(), now.month());
            bounds(start, end, label)
        }
    }
}

/// The `n` most recent period instances, newest first (for `budgets show`).
pub fn recent_windows(period: Period, now_ms: i64, tz: &TimeZone, n: usize) -> Vec<PeriodWindow> {
    let mut out = Vec::with_capacity(n);
    let mut at = now_ms;
    for _ in 0..n {
        let w = window(period, at, tz);
        let start = w.start_ms;
        out.push(w);
        if period == Period::Lifetime || start == i64::MIN {
            break;
        }
        at = start - 1;
    }
    out
}

/// A budget: a limit on one scope over one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRule {
    pub scope: ScopeSpec,
    pub period: Period,
    pub limit: Money,
    /// Hard: requests that cannot be reserved are refused. Soft: only alerts.
    pub hard: bool,
    /// Percentages of `limit` whose crossing sends an alert (once per period each).
    pub alert_at: Vec<u8>,
}

impl BudgetRule {
    /// The key under which spend is counted for `scope` in the period containing
    /// `now_ms`: `b:<period>:<label>:<scope>`. Stable across replicas and restarts.
    pub fn key(&self, scope: &Scope, w: &PeriodWindow) -> String {
        counter_key(scope, w)
    }
}

/// The counter key of `scope` in period instance `w`.
pub fn counter_key(scope: &Scope, w: &PeriodWindow) -> String {
    format!("b:{}:{}:{}", w.period.as_str(), w.label, scope)
}

// ---------------------------------------------------------------------------------------
// Reservation arithmetic.

/// The most a request can cost: its prompt (counted locally) at the dearest input rate
/// (a cache write can cost more than a plain input token) plus `max_output` tokens at the
/// dearer of the output and reasoning rates. Rounded up to the nano-USD.
pub fn worst_case(rates: &EffectiveRates, prompt_tokens: u64, max_output: u64) -> Money {
    let input = rates
        .input
        .max(rates.cache_write_5m)
        .max(rates.cache_write_1h);
    let output = rates.output.max(rates.reasoning);
    Money::from_atto_ceil(input.times(prompt_tokens) + output.times(max_output))
}

/// The most output tokens `available` pays for once the prompt is paid; `None` if it
/// does not even pay the prompt. Used to clamp `max_tokens` to what a budget has left.
pub fn affordable_output(
    rates: &EffectiveRates,
    prompt_tokens: u64,
    available: Money,
) -> Option<u64> {
    let input = rates
        .input
        .max(rates.cache_write_5m)
        .max(rates.cache_write_1h);
    let output = rates.output.max(rates.reasoning);
    let avail_atto = u128::try_from(available.nanos()).ok()? * crate::money::ATTO_PER_NANO;
    let prompt_atto = input.times(prompt_tokens);
    let left = avail_atto.checked_sub(prompt_atto)?;
    if output.atto() == 0 {
        return Some(u64::MAX);
    }
    Some(u64::try_from(left / u128::from(output.atto())).unwrap_or(u64::MAX))
}

/// Spend in one scope and period: settled spend and what is held by reservations in
/// flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub spent: Money,
    pub reserved: Money,
}

impl Account {
    /// What is left under `limit` (never below zero).
    pub fn remaining(&self, limit: Money) -> Money {
        let used = i128::from(self.spent.nanos()) + i128::from(self.reserved.nanos());
        let left = i128::from(limit.nanos()) - used;
        Money::from_nanos(i64::try_from(left.max(0)).unwrap_or(i64::MAX))
    }

    /// Can `amount` be reserved under a hard `limit`? Yes when it fits in what remains,
    /// and something remains (an exhausted budget refuses even a free request).
    pub fn admits(&self, limit: Money, amount: Money) -> bool {
        let left = self.remaining(limit);
        left > Money::ZERO && amount <= left
    }
}

/// One line of a reservation: the counter it holds money in and the hard limit there
/// (`None`: counted but never refused, a soft budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub key: String,
    pub limit: Option<Money>,
    pub amount: Money,
}

/// A refused reservation: the first line that could not take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    pub line: usize,
    pub remaining: Money,
}

/// The result of settling one line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledLine {
    /// Settled spend before and after this settlement (for threshold alerts).
    pub spent_before: Money,
    pub spent_after: Money,
    /// Reservation returned to the budget (`reserved - actual`, at least 0).
    pub released: Money,
    /// What the actual cost exceeded the reservation by (`actual - reserved`, at least 0).
    pub overage: Money,
}

/// Settle one account: charge `actual`, return the `reserved` hold. Never negative.
pub fn settle_account(a: &mut Account, reserved: Money, actual: Money) -> SettledLine {
    let reserved = reserved.max(Money::ZERO);
    let actual = actual.max(Money::ZERO);
    let before = a.spent;
    a.reserved = a.reserved.saturating_sub(reserved).max(Money::ZERO);
    a.spent = a.spent.saturating_add(actual);
    SettledLine {
        spent_before: before,
        spent_after: a.spent,
        released: reserved.saturating_sub(actual).max(Money::ZERO),
        overage: actual.saturating_sub(reserved).max(Money::ZERO),
    }
}

/// Accounts by key: the in-memory counter store and the model the Redis script mirrors.
/// Reservation is all-or-nothing across lines.
#[derive(Debug, Clone, Default)]
pub struct Book {
    accounts: HashMap<String, Account>,
}

impl Book {
    pub fn account(&self, key: &str) -> Account {
        self.accounts.get(key).copied().unwrap_or_default()
    }

    /// Reserve every line, or none: the first line whose hard limit cannot take its
    /// amount refuses the whole reservation.
    pub fn reserve(&mut self, lines: &[Line]) -> Result<Vec<Money>, Shortfall> {
        for (i, l) in lines.iter().enumerate() {
            if let Some(limit) = l.limit {
                let a = self.account(&l.key);
                if !a.admits(limit, l.amount) {
                    return Err(Shortfall {
                        line: i,
                        remaining: a.remaining(limit),
                    });
                }
            }
        }
        let mut remaining = Vec::with_capacity(lines.len());
        for l in lines {
            let a = self.accounts.entry(l.key.clone()).or_default();
            a.reserved = a.reserved.saturating_add(l.amount.max(Money::ZERO));
            remaining.push(l.limit.map(|lim| a.remaining(lim)).unwrap_or(Money::ZERO));
        }
        Ok(remaining)
    }

    /// Settle a reservation made with `lines`, charging `actual` to every line.
    pub fn settle(&mut self, lines: &[Line], actual: Money) -> Vec<SettledLine> {
        lines
            .iter()
            .map(|l| {
                settle_account(
                    self.accounts.entry(l.key.clone()).or_default(),
                    l.amount,
                    actual,
                )
            })
            .collect()
    }

    /// Set a counter's settled spend if it has none yet (rebuilding from the ledger).
    pub fn seed(&mut self, key: &str, spent: Money) -> bool {
        match self.accounts.get_mut(key) {
            Some(_) => false,
            None => {
                self.accounts.insert(
                    key.to_string(),
                    Account {
                        spent,
                        reserved: Money::ZERO,
                    },
                );
                true
            }
        }
    }

    /// Forget a counter nothing is reserved in (its period is long over).
    pub fn remove_idle(&mut self, key: &str) -> bool {
        match self.accounts.get(key) {
            Some(a) if a.reserved == Money::ZERO => self.accounts.remove(key).is_some(),
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = (&String, &Account)> {
        self.accounts.iter()
    }
}

/// The alert thresholds (percent of `limit`) that settled spend crossed going from
/// `before` to `after`. Spend in a period only grows and every settlement sees its own
/// `[before, after)` interval, so each threshold is crossed by exactly one settlement:
/// once per period, even across replicas.
pub fn crossed_thresholds(limit: Money, before: Money, after: Money, alert_at: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = alert_at
        .iter()
        .copied()
        .filter(|&pct| {
            let at = threshold_amount(limit, pct);
            before.nanos() < at && after.nanos() >= at
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `limit × pct / 100`, rounded up (an alert never fires early).
pub fn threshold_amount(limit: Money, pct: u8) -> i64 {
    let v = (i128::from(limit.nanos()) * i128::from(pct)).div_euclid(100)
        + i128::from((i128::from(limit.nanos()) * i128::from(pct)).rem_euclid(100) != 0);
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Config budgets, with database budgets replacing those on the same scope and period.
pub fn merge_rules(config: &[BudgetRule], db: &[BudgetRule]) -> Vec<BudgetRule> {
    let mut out: Vec<BudgetRule> = config
        .iter()
        .filter(|c| {
            !db.iter()
                .any(|d| d.scope == c.scope && d.period == c.period)
        })
        .cloned()
        .collect();
    out.extend(db.iter().cloned());
    out
}

/// How many more prompt tokens a provider counts than the local tokenizer, learnt from
/// each reported call (reported ÷ counted), so a reservation is not an underestimate:
/// Claude, Nova or Llama prompts estimated with `o200k_base` differ by tens of percent,
/// and a budget reserved on the local count overspends by that much.
///
/// Rises at once to a higher ratio and falls back slowly (an eighth of the way per
/// call), so a burst after a dear call is still covered. The factor applied is the
/// ratio plus [`PromptCorrection::MARGIN_PPM`], never below 1.0, never above
/// [`PromptCorrection::MAX_PPM`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCorrection {
    ratio_ppm: u64,
    pub samples: u64,
}

impl PromptCorrection {
    /// Safety margin over the learnt ratio: 10 %.
    pub const MARGIN_PPM: u64 = 100_000;
    /// The largest factor applied (a ratio past it is a bad count, not a tokenizer).
    pub const MAX_PPM: u64 = 20_000_000;
    /// Prompts smaller than this say little about the tokenizer (message framing).
    pub const MIN_TOKENS: u64 = 16;

    /// Learn from one call: `local` tokens counted, `reported` by the provider.
    pub fn observe(&mut self, local: u64, reported: u64) {
        if local < Self::MIN_TOKENS {
            return;
        }
        let r = (u128::from(reported) * 1_000_000 / u128::from(local))
            .min(u128::from(Self::MAX_PPM)) as u64;
        self.ratio_ppm = if self.samples == 0 || r >= self.ratio_ppm {
            r
        } else {
            (self.ratio_ppm * 7 + r) / 8
        };
        self.samples += 1;
    }

    /// The factor a local count is multiplied by, in ppm (1,000,000 = 1.0).
    pub fn factor_ppm(&self) -> u64 {
        if self.samples == 0 {
            return 1_000_000;
        }
        (self.ratio_ppm + Self::MARGIN_PPM).clamp(1_000_000, Self::MAX_PPM)
    }

    /// `local` corrected (rounded up).
    pub fn apply(&self, local: u64) -> u64 {
        let f = u128::from(self.factor_ppm());
        (u128::from(local) * f)
            .div_ceil(1_000_000)
            .min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prompt_correction_learns_up_fast_down_slowly_never_below_one() {
        use super::PromptCorrection;
        let mut c = PromptCorrection::default();
        assert_eq!(c.apply(1000), 1000, "nothing learnt: the local count");
        c.observe(1000, 800);
        assert_eq!(
            c.factor_ppm(),
            1_000_000,
            "a provider counting fewer: floor 1.0"
        );
        c.observe(1000, 1300);
        assert_eq!(c.factor_ppm(), 1_400_000, "1.3 plus the margin, at once");
        assert_eq!(c.apply(1000), 1400);
        c.observe(1000, 1000);
        assert_eq!(c.factor_ppm(), 1_362_500, "down an eighth of the way");
        c.observe(1000, 5000);
        assert_eq!(c.factor_ppm(), 5_100_000);
        c.observe(10, 10_000);
        assert_eq!(c.factor_ppm(), 5_100_000, "tiny prompts are ignored");
        c.observe(1000, u64::MAX);
        assert_eq!(c.factor_ppm(), PromptCorrection::MAX_PPM);
    }

    use super::*;
    use crate::money::Rate;
    use proptest::prelude::*;

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn scope_specs_parse_and_cover() {
        let team = ScopeSpec::parse("team:support").unwrap();
        assert!(team.covers(&Scope::new(ScopeKind::Team, "support")));
        assert!(!team.covers(&Scope::new(ScopeKind::Team, "sales")));
        let every = ScopeSpec::parse("agent:*").unwrap();
        assert!(every.covers(&Scope::new(ScopeKind::Agent, "x")));
        assert!(!every.covers(&Scope::new(ScopeKind::Team, "x")));
        assert!(ScopeSpec::parse("org").unwrap().covers(&Scope::org()));
        assert!(ScopeSpec::parse("team").is_err());
        assert!(ScopeSpec::parse("planet:x").is_err());
        assert!(ScopeSpec::parse("org:x").is_err());
        assert_eq!(every.to_string(), "agent:*");
        assert_eq!(Scope::new(ScopeKind::Task, "t-1").to_string(), "task:t-1");
    }

    #[test]
    fn scopes_of_attribution() {
        let a = Attribution {
            key_id: Some("k".into()),
            team: Some("t".into()),
            task: Some("x".into()),
            ..Attribution::default()
        };
        let s: Vec<String> = scopes_of(&a).iter().map(Scope::to_string).collect();
        assert_eq!(s, ["org", "team:t", "key:k", "task:x"]);
    }

    #[test]
    fn calendar_periods_in_utc() {
        let now = ms("2025-06-04T13:45:00Z"); // a Wednesday
        let d = window(Period::Day, now, &utc());
        assert_eq!(d.label, "2025-06-04");
        assert_eq!(d.start_ms, ms("2025-06-04T00:00:00Z"));
        assert_eq!(d.end_ms, Some(ms("2025-06-05T00:00:00Z")));
        let w = window(Period::Week, now, &utc());
        assert_eq!(w.label, "2025-W23");
        assert_eq!(w.start_ms, ms("2025-06-02T00:00:00Z"));
        assert_eq!(w.end_ms, Some(ms("2025-06-09T00:00:00Z")));
        let m = window(Period::Month, now, &utc());
        assert_eq!(m.label, "2025-06");
        assert_eq!(m.start_ms, ms("2025-06-01T00:00:00Z"));
        assert_eq!(m.end_ms, Some(ms("2025-07-01T00:00:00Z")));
        let l = window(Period::Lifetime, now, &utc());
        assert_eq!((l.label.as_str(), l.end_ms), ("lifetime", None));
    }

    #[test]
    fn rollover_is_exact_to_the_millisecond() {
        let tz = utc();
        let last = ms("2025-06-30T23:59:59.999Z");
        let first = last + 1;
        for p in [Period::Day, Period::Month] {
            let a = window(p, last, &tz);
            let b = window(p, first, &tz);
            assert_ne!(a.label, b.label, "{p:?}");
            assert_eq!(a.end_ms, Some(b.start_ms), "{p:?}");
        }
        // Sunday 23:59:59.999 → Monday: a new ISO week.
        let sun = ms("2025-06-08T23:59:59.999Z");
        assert_eq!(window(Period::Week, sun, &tz).label, "2025-W23");
        assert_eq!(window(Period::Week, sun + 1, &tz).label, "2025-W24");
        // New year inside an ISO week that belongs to the next ISO year.
        assert_eq!(
            window(Period::Week, ms("2024-12-31T12:00:00Z"), &tz).label,
            "2025-W01"
        );
    }

    #[test]
    fn local_days_follow_the_time_zone_and_dst() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        // 23:30 UTC on 4 June is already 5 June in Paris (UTC+2).
        let d = window(Period::Day, ms("2025-06-04T23:30:00Z"), &paris);
        assert_eq!(d.label, "2025-06-05");
        assert_eq!(d.start_ms, ms("2025-06-04T22:00:00Z"));
        // The spring-forward day is 23 hours long.
        let dst = window(Period::Day, ms("2025-03-30T12:00:00Z"), &paris);
        assert_eq!(dst.end_ms.unwrap() - dst.start_ms, 23 * 3_600_000);
        let ny = TimeZone::get("America/New_York").unwrap();
        let m = window(Period::Month, ms("2025-07-01T02:00:00Z"), &ny);
        assert_eq!(m.label, "2025-06"); // still 30 June in New York
    }

    #[test]
    fn recent_windows_walk_back() {
        let ws = recent_windows(Period::Month, ms("2025-03-15T00:00:00Z"), &utc(), 3);
        let labels: Vec<_> = ws.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["2025-03", "2025-02", "2025-01"]);
        assert_eq!(
            recent_windows(Period::Lifetime, 0, &utc(), 5).len(),
            1,
            "lifetime has one window"
        );
    }

    fn rates(input: u64, output: u64) -> EffectiveRates {
        EffectiveRates {
            input: Rate::from_atto(input),
            output: Rate::from_atto(output),
            cache_read: Rate::from_atto(input / 10),
            cache_write_5m: Rate::from_atto(input),
            cache_write_1h: Rate::from_atto(input),
            reasoning: Rate::from_atto(output),
        }
    }

    #[test]
    fn worst_case_and_affordable_output() {
        // $2.5 / $10 per Mtok: 1000 prompt + 500 output = 0.0025 + 0.005.
        let r = rates(2_500_000_000_000, 10_000_000_000_000);
        assert_eq!(worst_case(&r, 1000, 500), Money::from_nanos(7_500_000));
        assert_eq!(
            affordable_output(&r, 1000, Money::from_nanos(7_500_000)),
            Some(500)
        );
        assert_eq!(
            affordable_output(&r, 1000, Money::from_nanos(7_499_999)),
            Some(499)
        );
        assert_eq!(
            affordable_output(&r, 1000, Money::from_nanos(2_499_999)),
            None
        );
        // A cache write premium raises the worst case of the prompt.
        let mut anth = r;
        anth.cache_write_5m = Rate::from_atto(3_125_000_000_000);
        assert!(worst_case(&anth, 1000, 0) > worst_case(&r, 1000, 0));
    }

    #[test]
    fn thresholds_fire_once_each() {
        let limit = Money::from_nanos(1000);
        assert_eq!(
            crossed_thresholds(limit, Money::ZERO, Money::from_nanos(850), &[50, 80, 100]),
            vec![50, 80]
        );
        assert_eq!(
            crossed_thresholds(
                limit,
                Money::from_nanos(850),
                Money::from_nanos(999),
                &[50, 80, 100]
            ),
            Vec::<u8>::new()
        );
        assert_eq!(
            crossed_thresholds(
                limit,
                Money::from_nanos(999),
                Money::from_nanos(1000),
                &[50, 80, 100]
            ),
            vec![100]
        );
        assert_eq!(threshold_amount(Money::from_nanos(3), 50), 2);
    }

    #[test]
    fn exhausted_budget_refuses_even_free_requests() {
        let mut b = Book::default();
        let line = |amount| Line {
            key: "k".into(),
            limit: Some(Money::from_nanos(100)),
            amount: Money::from_nanos(amount),
        };
        assert!(b.reserve(&[line(100)]).is_ok());
        assert_eq!(
            b.reserve(&[line(0)]),
            Err(Shortfall {
                line: 0,
                remaining: Money::ZERO
            })
        );
        b.settle(&[line(100)], Money::from_nanos(40));
        assert_eq!(
            b.account("k").remaining(Money::from_nanos(100)),
            Money::from_nanos(60)
        );
        assert!(b.reserve(&[line(60)]).is_ok());
    }

    // -----------------------------------------------------------------------------------
    // Properties: a random interleaving of reservations across overlapping scopes, each
    // settled (with an actual cost that may exceed the reservation) or released (cost 0,
    // the error and disconnect paths).

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { scopes: Vec<usize>, amount: i64 },
        Settle { pick: usize, actual_pct: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (proptest::collection::vec(0usize..4, 1..4), 0i64..400)
                .prop_map(|(scopes, amount)| Op::Reserve { scopes, amount }),
            (any::<usize>(), 0u32..130)
                .prop_map(|(pick, actual_pct)| Op::Settle { pick, actual_pct }),
        ]
    }

    proptest! {
        #[test]
        fn reservations_never_overspend_and_always_release(
            limits in proptest::collection::vec(prop::option::of(0i64..2000), 4),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut book = Book::default();
            let mut open: Vec<Vec<Line>> = Vec::new();
            let mut overage = [0i64; 4];
            let mut spent = [0i64; 4];
            let key = |i: usize| format!("s{i}");
            for o in ops {
                match o {
                    Op::Reserve { mut scopes, amount } => {
                        scopes.sort_unstable();
                        scopes.dedup();
                        let lines: Vec<Line> = scopes.iter().map(|&s| Line {
                            key: key(s),
                            limit: limits[s].map(Money::from_nanos),
                            amount: Money::from_nanos(amount),
                        }).collect();
                        let before: Vec<Account> = (0..4).map(|i| book.account(&key(i))).collect();
                        match book.reserve(&lines) {
                            Ok(_) => open.push(lines),
                            Err(_) => {
                                // All or nothing: a refusal changes no account.
                                for (i, b) in before.iter().enumerate() {
                                    prop_assert_eq!(book.account(&key(i)), *b);
                                }
                            }
                        }
                    }
                    Op::Settle { pick, actual_pct } => {
                        if open.is_empty() { continue; }
                        let lines = open.swap_remove(pick % open.len());
                        let reserved = lines[0].amount.nanos();
                        let actual = reserved * i64::from(actual_pct) / 100;
                        let out = book.settle(&lines, Money::from_nanos(actual));
                        for (l, s) in lines.iter().zip(&out) {
                            let i: usize = l.key[1..].parse().unwrap();
                            spent[i] += actual;
                            // settled ≤ reserved, unless the excess is recorded as overage.
                            prop_assert_eq!(s.overage.nanos(), (actual - reserved).max(0));
                            prop_assert_eq!(s.released.nanos(), (reserved - actual).max(0));
                            prop_assert!(actual <= reserved || s.overage.nanos() > 0);
                            overage[i] += s.overage.nanos();
                        }
                    }
                }
                for i in 0..4 {
                    let a = book.account(&key(i));
                    prop_assert!(a.spent >= Money::ZERO && a.reserved >= Money::ZERO);
                    if let Some(l) = limits[i] {
                        // Never past the hard limit except by recorded overage.
                        prop_assert!(a.spent.nanos() + a.reserved.nanos() <= l + overage[i]);
                    }
                }
            }
            // Released on every path: once everything is settled nothing stays reserved.
            for lines in open.drain(..) {
                book.settle(&lines, Money::ZERO);
            }
            for (i, s) in spent.iter().enumerate() {
                let a = book.account(&key(i));
                prop_assert_eq!(a.reserved, Money::ZERO);
                prop_assert_eq!(a.spent.nanos(), *s);
            }
        }

        #[test]
        fn worst_case_covers_any_actual_usage_within_the_caps(
            input in 0u64..50_000_000_000_000, output in 0u64..200_000_000_000_000,
            prompt in 0u64..200_000, max_out in 0u64..100_000,
            used_prompt_pct in 0u64..=100, used_out in 0u64..100_000,
        ) {
            let r = rates(input, output);
            let used_out = used_out.min(max_out);
            let usage = crate::usage::Usage {
                input: prompt * used_prompt_pct / 100,
                cache_read: prompt - prompt * used_prompt_pct / 100,
                output: used_out,
                ..Default::default()
            };
            let actual = crate::cost::cost_at(&usage, &r).charged;
            prop_assert!(actual <= worst_case(&r, prompt, max_out));
            // Clamping to what a budget affords never reserves more than it.
            let avail = Money::from_nanos(i64::try_from(prompt).unwrap() * 7);
            if let Some(n) = affordable_output(&r, prompt, avail) {
                prop_assert!(worst_case(&r, prompt, n.min(1 << 40)) <= avail);
            }
        }

        #[test]
        fn each_threshold_fires_exactly_once_per_period(
            limit in 1i64..1_000_000,
            costs in proptest::collection::vec(0i64..200_000, 1..100),
        ) {
            let limit = Money::from_nanos(limit);
            let alert_at = [50u8, 80, 100];
            let mut spent = Money::ZERO;
            let mut fired: Vec<u8> = Vec::new();
            for c in costs {
                let after = spent.saturating_add(Money::from_nanos(c));
                fired.extend(crossed_thresholds(limit, spent, after, &alert_at));
                spent = after;
            }
            let expected: Vec<u8> = alert_at.iter().copied()
                .filter(|&p| spent.nanos() >= threshold_amount(limit, p)).collect();
            prop_assert_eq!(fired, expected);
        }

        #[test]
        fn every_instant_is_in_exactly_one_window(now in 0i64..4_102_444_800_000) {
            let tz = TimeZone::get("Europe/Paris").unwrap();
            for p in [Period::Day, Period::Week, Period::Month] {
                let w = window(p, now, &tz);
                prop_assert!(w.start_ms <= now && now < w.end_ms.unwrap());
                let next = window(p, w.end_ms.unwrap(), &tz);
                prop_assert_eq!(next.start_ms, w.end_ms.unwrap());
                prop_assert_ne!(next.label, w.label);
            }
        }
    }

    #[test]
    fn database_budgets_replace_config_ones_on_the_same_scope_and_period() {
        let rule = |scope: &str, period, usd: i64| BudgetRule {
            scope: ScopeSpec::parse(scope).unwrap(),
            period,
            limit: Money::from_nanos(usd),
            hard: true,
            alert_at: vec![],
        };
        let merged = merge_rules(
            &[
                rule("org", Period::Month, 1),
                rule("team:a", Period::Day, 2),
            ],
            &[
                rule("team:a", Period::Day, 3),
                rule("team:a", Period::Week, 4),
            ],
        );
        let limits: Vec<i64> = merged.iter().map(|r| r.limit.nanos()).collect();
        assert_eq!(limits, [1, 3, 4]);
    }
}

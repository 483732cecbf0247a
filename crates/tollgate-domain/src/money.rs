//! Exact money.
//!
//! Two integer units, never floats on the money path:
//! - [`Money`]: an amount in nano-USD (1e-9 USD) in an `i64` (±9.2 billion USD). Ledger rows,
//!   budgets and reports use it; sums of rows are exact integer sums.
//! - [`Rate`]: a per-token price in atto-USD (1e-18 USD) in a `u64` (up to 18.4 USD a token).
//!   Catalog prices such as `2.5e-06` are parsed from their decimal text, so they are exact.
//!
//! A request's exact cost is `Σ tokens × rate` in atto-USD (a `u128`, no overflow for any
//! realistic count); it becomes [`Money`] by rounding *up* to the next nano-USD, so the
//! gateway never under-charges and over-charges by less than one nano-USD a row.

use serde::{Deserialize, Serialize};
use std::fmt;

/// atto-USD in one nano-USD.
pub const ATTO_PER_NANO: u128 = 1_000_000_000;
/// nano-USD in one USD.
pub const NANO_PER_USD: i64 = 1_000_000_000;

/// An amount of money in nano-USD.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Money {
        Money(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Whole and fractional USD from an atto-USD amount, rounded up to the nano.
    /// Saturates at `i64::MAX` nano-USD (9.2 billion USD), far beyond any single request.
    pub fn from_atto_ceil(atto: u128) -> Money {
        let nanos = atto.div_ceil(ATTO_PER_NANO);
        Money(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Parse a decimal USD amount such as `"12.5"`, `"0.000000001"` or `"-3"`.
    /// More than nine fractional digits is an error: money is never silently rounded here.
    pub fn parse_usd(text: &str) -> Result<Money, MoneyError> {
        let t = text.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        let (neg, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let dec = Decimal::parse(digits).ok_or_else(|| MoneyError::Invalid(text.to_string()))?;
        let nanos = dec
            .scaled_exact(9)
            .ok_or_else(|| MoneyError::TooPrecise(text.to_string()))?;
        let nanos = i64::try_from(nanos).map_err(|_| MoneyError::Overflow(text.to_string()))?;
        Ok(Money(if neg { -nanos } else { nanos }))
    }

    /// Parse a decimal USD amount someone else computed (a provider's bill: `0.0603125`,
    /// `6e-05`, `1.5E+3`), rounded half away from zero to the nano-USD. Unlike
    /// [`Money::parse_usd`] extra precision is not an error: it is far below anything a
    /// reconciliation can tell apart, and float exports often carry noise digits.
    pub fn parse_usd_rounded(text: &str) -> Result<Money, MoneyError> {
        let t = text.trim();
        let (neg, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let dec = Decimal::parse(digits).ok_or_else(|| MoneyError::Invalid(text.to_string()))?;
        let nanos = dec
            .scaled_half_up(9)
            .ok_or_else(|| MoneyError::Overflow(text.to_string()))?;
        let nanos = i64::try_from(nanos).map_err(|_| MoneyError::Overflow(text.to_string()))?;
        Ok(Money(if neg { -nanos } else { nanos }))
    }

    /// Lossy conversion for display-only uses (charts, metrics). Never sum these.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / NANO_PER_USD as f64
    }
}

impl fmt::Display for Money {
    /// Nine fractional digits: `0.000123450`, `-1.500000000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / NANO_PER_USD as u64;
        let frac = abs % NANO_PER_USD as u64;
        write!(f, "{sign}{whole}.{frac:09}")
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("not a decimal amount: {0:?}")]
    Invalid(String),
    #[error("more precision than one nano-USD: {0:?}")]
    TooPrecise(String),
    #[error("amount out of range: {0:?}")]
    Overflow(String),
}

/// A price per token in atto-USD.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Rate(u64);

impl Rate {
    pub const ZERO: Rate = Rate(0);

    pub const fn from_atto(atto: u64) -> Rate {
        Rate(atto)
    }

    pub const fn atto(self) -> u64 {
        self.0
    }

    /// Exact cost of `tokens` at this rate, in atto-USD.
    pub fn times(self, tokens: u64) -> u128 {
        u128::from(self.0) * u128::from(tokens)
    }

    /// Parse a USD-per-token decimal (`"2.5e-06"`, `"0.0000025"`). Digits beyond 1e-18 USD
    /// round the rate up (never under-charge); `rounded` says whether that happened.
    pub fn parse_usd_per_token(text: &str) -> Result<(Rate, bool), MoneyError> {
        let dec = Decimal::parse(text.trim()).ok_or_else(|| MoneyError::Invalid(text.into()))?;
        let (atto, rounded) = dec.scaled_ceil(18);
        let atto = u64::try_from(atto).map_err(|_| MoneyError::Overflow(text.into()))?;
        Ok((Rate(atto), rounded))
    }

    /// Parse a USD-per-million-tokens decimal (`"0.15"` = 1.5e-7 USD a token), the unit
    /// people write in config files.
    pub fn parse_usd_per_mtok(text: &str) -> Result<(Rate, bool), MoneyError> {
        let dec = Decimal::parse(text.trim()).ok_or_else(|| MoneyError::Invalid(text.into()))?;
        let (atto, rounded) = dec.scaled_ceil(12);
        let atto = u64::try_from(atto).map_err(|_| MoneyError::Overflow(text.into()))?;
        Ok((Rate(atto), rounded))
    }

    /// From a JSON number as serde parsed it. `f64`'s shortest round-trip text is the literal
    /// the catalog wrote (for every literal of ≤ 15 significant digits), so this is exact.
    pub fn from_f64_usd_per_token(v: f64) -> Result<(Rate, bool), MoneyError> {
        if !v.is_finite() || v < 0.0 {
            return Err(MoneyError::Invalid(v.to_string()));
        }
        Rate::parse_usd_per_token(&format!("{v:e}"))
    }

    /// USD per million tokens, for display.
    pub fn usd_per_mtok(self) -> String {
        // 1e6 tokens × atto = 1e-12 USD units.
        let micro = u128::from(self.0); // in 1e-12 USD per Mtok
        let whole = micro / 1_000_000_000_000;
        let frac = micro % 1_000_000_000_000;
        let mut s = format!("{whole}.{frac:012}");
        while s.ends_with('0') && !s.ends_with(".0") {
            s.pop();
        }
        s
    }
}

/// A non-negative decimal as digits and a power-of-ten exponent: value = mantissa × 10^exp.
/// Only used to parse prices and amounts exactly.
#[derive(Debug, Clone, Copy)]
struct Decimal {
    mantissa: u128,
    exp: i32,
}

impl Decimal {
    /// Accepts `123`, `1.25`, `.5`, `2.5e-06`, `1E+3`. No sign (callers handle it).
    fn parse(s: &str) -> Option<Decimal> {
        let (num, exp_part) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let mut exp: i32 = match exp_part {
            Some(e) => e.parse().ok()?,
            None => 0,
        };
        if !(-400..=400).contains(&exp) {
            return None;
        }
        let (int, frac) = match num.find('.') {
            Some(i) => (&num[..i], &num[i + 1..]),
            None => (num, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut mantissa: u128 = 0;
        for c in int.bytes().chain(frac.bytes()) {
            if !c.is_ascii_digit() {
                return None;
            }
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(u128::from(c - b'0'))?;
        }
        exp -= i32::try_from(frac.len()).ok()?;
        Some(Decimal { mantissa, exp })
    }

    /// value × 10^scale as an integer, `None` if not an integer or out of range.
    fn scaled_exact(self, scale: i32) -> Option<u128> {
        let e = self.exp + scale;
        if e >= 0 {
            self.mantissa
                .checked_mul(10u128.checked_pow(u32::try_from(e).ok()?)?)
        } else {
            let div = 10u128.checked_pow(u32::try_from(-e).ok()?)?;
            self.mantissa
                .is_multiple_of(div)
                .then_some(self.mantissa / div)
        }
    }

    /// value × 10^scale rounded half up, `None` if out of range.
    fn scaled_half_up(self, scale: i32) -> Option<u128> {
        let e = self.exp + scale;
        if e >= 0 {
            return self
                .mantissa
                .checked_mul(10u128.checked_pow(u32::try_from(e).ok()?)?);
        }
        match 10u128.checked_pow(u32::try_from(-e).ok()?) {
            Some(div) => {
                let q = self.mantissa / div;
                let r = self.mantissa % div;
                Some(if r >= div - r { q + 1 } else { q })
            }
            // Below 10^-38 of a unit: rounds to zero.
            None => Some(0),
        }
    }

    /// value × 10^scale rounded up, and whether rounding happened. Saturates.
    fn scaled_ceil(self, scale: i32) -> (u128, bool) {
        let e = self.exp + scale;
        if e >= 0 {
            let p = u32::try_from(e).unwrap_or(u32::MAX);
            match 10u128
                .checked_pow(p)
                .and_then(|m| self.mantissa.checked_mul(m))
            {
                Some(v) => (v, false),
                None => (u128::MAX, true),
            }
        } else {
            let p = u32::try_from(-e).unwrap_or(u32::MAX);
            match 10u128.checked_pow(p) {
                Some(div) => {
                    let q = self.mantissa.div_ceil(div);
                    (q, !self.mantissa.is_multiple_of(div))
                }
                // Smaller than 1 unit and non-zero: one unit.
                None => (u128::from(self.mantissa != 0), self.mantissa != 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_catalog_literals_exactly() {
        let cases = [
            ("2.5e-06", 2_500_000_000_000u64),
            ("1.25e-07", 125_000_000_000),
            ("0.0000025", 2_500_000_000_000),
            ("3e-07", 300_000_000_000),
            ("0", 0),
            ("1.5e-05", 15_000_000_000_000),
        ];
        for (text, atto) in cases {
            assert_eq!(
                Rate::parse_usd_per_token(text),
                Ok((Rate(atto), false)),
                "{text}"
            );
        }
    }

    #[test]
    fn f64_round_trip_is_exact_for_catalog_values() {
        for v in [
            2.5e-06, 1.25e-07, 3.75e-06, 1.1e-06, 4.4e-06, 6e-08, 1.5e-05, 3e-07,
        ] {
            let (r, rounded) = Rate::from_f64_usd_per_token(v).unwrap();
            assert!(!rounded);
            let back = r.atto() as f64 / 1e18;
            assert!((back - v).abs() <= v * 1e-15, "{v} -> {r:?}");
        }
        assert_eq!(
            Rate::from_f64_usd_per_token(2.5e-06).unwrap().0,
            Rate(2_500_000_000_000)
        );
    }

    #[test]
    fn rate_precision_beyond_atto_rounds_up() {
        let (r, rounded) = Rate::parse_usd_per_token("1.0000000000000000001").unwrap();
        assert!(rounded);
        assert_eq!(r.atto(), 1_000_000_000_000_000_001);
    }

    #[test]
    fn per_mtok_parsing() {
        assert_eq!(
            Rate::parse_usd_per_mtok("0.15").unwrap(),
            (Rate(150_000_000_000), false)
        );
        assert_eq!(Rate(150_000_000_000).usd_per_mtok(), "0.15");
        assert_eq!(Rate(2_500_000_000_000).usd_per_mtok(), "2.5");
        assert_eq!(Rate(0).usd_per_mtok(), "0.0");
    }

    #[test]
    fn money_display_and_parse() {
        assert_eq!(Money(123_450).to_string(), "0.000123450");
        assert_eq!(Money(-1_500_000_000).to_string(), "-1.500000000");
        assert_eq!(Money::parse_usd("12.5"), Ok(Money(12_500_000_000)));
        assert_eq!(Money::parse_usd("$0.000000001"), Ok(Money(1)));
        assert_eq!(Money::parse_usd("-3"), Ok(Money(-3_000_000_000)));
        assert!(matches!(
            Money::parse_usd("0.0000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(Money::parse_usd("abc").is_err());
        assert!(Money::parse_usd("").is_err());
        assert!(Money::parse_usd("1.2.3").is_err());
    }

    #[test]
    fn provider_amounts_round_to_the_nano() {
        assert_eq!(Money::parse_usd_rounded("0.06"), Ok(Money(60_000_000)));
        assert_eq!(Money::parse_usd_rounded("6e-05"), Ok(Money(60_000)));
        assert_eq!(
            Money::parse_usd_rounded("1.5E+3"),
            Ok(Money(1_500_000_000_000))
        );
        // Float noise: 0.1 + 0.2.
        assert_eq!(
            Money::parse_usd_rounded("0.30000000000000004"),
            Ok(Money(300_000_000))
        );
        assert_eq!(Money::parse_usd_rounded("0.0000000005"), Ok(Money(1)));
        assert_eq!(Money::parse_usd_rounded("0.0000000004999"), Ok(Money(0)));
        assert_eq!(Money::parse_usd_rounded("-2.5"), Ok(Money(-2_500_000_000)));
        // Anthropic's cents: "123.45" cents is 1.2345 USD.
        assert_eq!(
            Money::parse_usd_rounded("123.45e-2"),
            Ok(Money(1_234_500_000))
        );
        assert!(Money::parse_usd_rounded("").is_err());
        assert!(Money::parse_usd_rounded("1,5").is_err());
        assert!(Money::parse_usd_rounded("1e99").is_err());
    }

    #[test]
    fn atto_to_money_rounds_up() {
        assert_eq!(Money::from_atto_ceil(0), Money(0));
        assert_eq!(Money::from_atto_ceil(1), Money(1));
        assert_eq!(Money::from_atto_ceil(1_000_000_000), Money(1));
        assert_eq!(Money::from_atto_ceil(1_000_000_001), Money(2));
    }

    proptest! {
        #[test]
        fn money_ceil_never_under_charges(atto in 0u128..u128::from(u64::MAX) * 1000) {
            let m = Money::from_atto_ceil(atto);
            let back = u128::try_from(m.nanos()).unwrap() * ATTO_PER_NANO;
            prop_assert!(back >= atto);
            prop_assert!(back - atto < ATTO_PER_NANO);
        }

        #[test]
        fn money_display_parse_round_trip(n in i64::MIN + 1..i64::MAX) {
            let m = Money(n);
            prop_assert_eq!(Money::parse_usd(&m.to_string()), Ok(m));
        }

        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Money::parse_usd(&s);
            let _ = Rate::parse_usd_per_token(&s);
            let _ = Rate::parse_usd_per_mtok(&s);
        }
    }
}

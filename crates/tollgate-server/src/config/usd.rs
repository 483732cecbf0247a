//! The one type for a dollar amount in the config file and in admin API bodies: a
//! string (`"12.50"`, exact) or a TOML/JSON number.

use serde::Deserialize;
use tollgate_domain::money::Money;

/// A dollar amount written as a string (`"12.50"`, exact) or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UsdText {
    Text(String),
    Int(i64),
    Float(f64),
}

impl UsdText {
    fn text(&self) -> String {
        match self {
            UsdText::Text(s) => s.clone(),
            UsdText::Int(i) => i.to_string(),
            UsdText::Float(f) => format!("{f}"),
        }
    }

    /// The amount, whatever its sign.
    pub fn parse_signed(&self) -> Result<Money, String> {
        Money::parse_usd(&self.text()).map_err(|e| e.to_string())
    }

    /// The amount; negative amounts are refused (limits, rates, prices).
    pub fn parse(&self) -> Result<Money, String> {
        let m = self.parse_signed()?;
        if m.is_negative() {
            return Err(format!("{:?} is negative", self.text()));
        }
        Ok(m)
    }
}

/// Parse an optional amount at field path `at`, pushing a problem to `errs`.
pub(crate) fn usd(errs: &mut Vec<String>, at: &str, v: &Option<UsdText>) -> Option<Money> {
    let v = v.as_ref()?;
    match v.parse() {
        Ok(m) => Some(m),
        Err(e) => {
            errs.push(format!("{at}: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_and_refuse_negatives() {
        let t = |v: &str| serde_json::from_str::<UsdText>(v).unwrap();
        assert_eq!(
            t("\"12.50\"").parse().unwrap(),
            Money::from_nanos(12_500_000_000)
        );
        assert_eq!(t("3").parse().unwrap(), Money::from_nanos(3_000_000_000));
        assert_eq!(t("0.25").parse().unwrap(), Money::from_nanos(250_000_000));
        assert!(t("\"-1\"").parse().is_err());
        assert_eq!(
            t("-1").parse_signed().unwrap(),
            Money::from_nanos(-1_000_000_000)
        );
    }
}

//! Time as reports and the admin API write it: windows given as durations back from
//! `now` (`24h`, `7d`), RFC 3339 timestamps or Unix milliseconds, and ISO 8601 output.
//! Pure: `now` is always an argument.

/// Parse a window start: a duration back from `now_ms` (`90s`, `15m`, `24h`, `7d`, `2w`),
/// an RFC 3339 timestamp, or Unix milliseconds.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Some(d) = parse_duration_ms(t) {
        return Ok(now_ms.saturating_sub(d));
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    Err(format!(
        "{text:?} is not a duration (24h, 7d, 30m), an RFC 3339 time or Unix milliseconds"
    ))
}

/// `90s`, `15m`, `24h`, `7d`, `2w` in milliseconds.
pub fn parse_duration_ms(t: &str) -> Option<i64> {
    let unit = t.chars().last()?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    if n < 0 {
        return None;
    }
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

/// Unix milliseconds as an RFC 3339 / ISO 8601 UTC timestamp (empty if out of range).
pub fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_since("2w", now).unwrap(), now - 14 * 86_400_000);
        assert_eq!(
            parse_since("2024-01-01T00:00:00Z", now).unwrap(),
            1_704_067_200_000
        );
        assert_eq!(parse_since("12345", now).unwrap(), 12345);
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("", now).is_err());
        assert!(parse_since("-5h", now).is_err());
        assert!(parse_since("99999999999999999999d", now).is_err());
    }

    #[test]
    fn iso_output() {
        assert_eq!(iso(1_704_067_200_000), "2024-01-01T00:00:00Z");
        assert_eq!(iso(i64::MAX), "");
    }
}

//! Human durations as written in configs and on command lines: an integer
//! followed by a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `150ms`,
//! `2s`, `10m`; whitespace around and between is allowed, and a bare `0`
//! means zero. One grammar for every component, exact (no floating point).

use std::time::Duration;

/// Parses a human duration; the error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let expected = || {
        format!(
            "invalid duration {text:?}: expected a whole number and a unit (ns, us, ms, s, m, h), e.g. \"2s\""
        )
    };
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let nanos_per_unit: u64 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(expected()),
    };
    n.checked_mul(nanos_per_unit)
        .map(Duration::from_nanos)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration(" 2 s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("5µs"), Ok(Duration::from_micros(5)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "ms", "10", "1.5s", "-1s", "10 parsecs", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

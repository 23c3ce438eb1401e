//! Human durations for the CLI: an integer followed by a unit, `ns`, `us`,
//! `ms`, `s`, `m` or `h` (`150ms`, `2s`, `1m`). Whitespace between number
//! and unit is allowed; a bare number or an unknown unit is refused.

use std::time::Duration;

/// Parses `150ms`, `2s`, `1m`, ….
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("invalid duration {s:?} (expected e.g. 150ms, 2s, 1m)"))?;
    let per_unit = match unit.trim() {
        "ns" => Duration::from_nanos(1),
        "us" | "µs" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "" => return Err(format!("duration {s:?} needs a unit (ns, us, ms, s, m, h)")),
        other => return Err(format!("unknown duration unit {other:?} (expected ns, us, ms, s, m, h)")),
    };
    per_unit
        .checked_mul(u32::try_from(n).map_err(|_| format!("duration {s:?} is too large"))?)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration(" 10 us "), Ok(Duration::from_micros(10)));
        for bad in ["", "ms", "10", "10 parsecs", "-1s", "1.5s", "99999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

//! Durations written with a unit: "250ms", "5s", "2m", "1h", "1h 30m".

use std::fmt;
use std::time::Duration;

/// The longest duration accepted: 100 years, past any timeout, interval or window. Both
/// binaries add durations to the clock (`Instant + Duration`) and multiply them, which
/// panics past about 2^63 seconds, and humantime reads up to 2^64 (`"500000000000y"`).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses "250ms", "5s", "2m", "1h", "1h 30m"; the error says what was wrong and how to
/// write it. Bare numbers are refused: a unit must always be given.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |e: &dyn fmt::Display| {
        format!("invalid duration \"{s}\": {e} (write e.g. \"250ms\", \"5s\", \"2m\" or \"1h\")")
    };
    let d = humantime::parse_duration(s.trim()).map_err(|e| invalid(&e))?;
    if d > MAX_DURATION {
        return Err(invalid(&"longer than 100 years"));
    }
    Ok(d)
}

/// Formats a duration the way it is written ("1h 30m", "250ms").
pub fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn refuses_bare_numbers_unknown_units_and_centuries() {
        assert!(parse_duration("5")
            .unwrap_err()
            .contains("invalid duration \"5\""));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("500000000000y")
            .unwrap_err()
            .contains("longer than 100 years"));
        // humantime's year is 365.25 days.
        assert!(parse_duration("99y").unwrap() < MAX_DURATION);
    }

    #[test]
    fn formats_as_written() {
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }
}

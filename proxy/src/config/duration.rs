//! Durations written with a unit in the config file: "250ms", "5s", "2m", "1h", "1h 30m".

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A [`Duration`] that deserializes from a humantime string ("250ms", "5s", "2m", "1h").
/// Bare numbers are refused: a unit must always be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"250ms\", \"5s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// The longest duration accepted: 100 years, past any timeout, interval or cookie age. The
/// request paths add timeouts to the current time (`Instant + Duration`), which panics
/// past about 2^63 seconds, and humantime reads up to 2^64 (`"500000000000y"`).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses "250ms", "5s", "2m", "1h", "1h 30m"; the error says what was wrong and how to
/// write it.
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

/// Formats a duration the way the config file writes it ("1h 30m", "250ms").
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
    fn refuses_bare_numbers_and_unknown_units() {
        assert!(parse_duration("5")
            .unwrap_err()
            .contains("invalid duration \"5\""));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_like_the_file() {
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }
}

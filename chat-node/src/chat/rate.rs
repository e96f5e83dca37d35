//! The per-user message rate limit: `count` messages per `window`, as a GCRA (generic cell
//! rate algorithm, a token bucket kept as one timestamp): a user may send `count` messages
//! in a burst, then one every `window / count`. The state is one "theoretical arrival time"
//! per user, kept in the store so that the limit holds across nodes (the Redis store runs
//! the same arithmetic in a script, on Redis's clock). Some limits count by client address
//! instead ([`client_bucket`]): what a client could otherwise multiply by making users.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::client_addr::ClientKey;

/// The limiter state of `user`'s events of kind `kind` (`join`, `typing`), apart from its
/// messages (whose state is keyed by the bare user id).
pub fn bucket(user: &str, kind: &str) -> String {
    format!("{user}:{kind}")
}

/// The limiter state of the events of kind `kind` (`new-user`, `create`) of client
/// `client` (an address, counted across all its users). User ids start with `u`: no
/// user's bucket is named like this.
pub fn client_bucket(client: ClientKey, kind: &str) -> String {
    format!("client:{client}:{kind}")
}

/// A rate limit: at most `count` messages per `window` (`10/5s` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages allowed per window (and in one burst).
    pub count: u32,
    /// The window.
    pub window: Duration,
}

impl Default for RateLimit {
    /// 10 messages per 5 seconds: a fast typist never notices, a script does.
    fn default() -> Self {
        Self {
            count: 10,
            window: Duration::from_secs(5),
        }
    }
}

/// A rate limit that cannot be parsed or makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// Not `<count>/<duration>`.
    #[error("expected <count>/<duration>, such as 10/5s, got {0:?}")]
    Syntax(String),
    /// A zero count or window.
    #[error("the count and the window must be positive, got {0:?}")]
    Zero(String),
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<Self, RateLimitError> {
        let syntax = || RateLimitError::Syntax(s.to_owned());
        let (count, window) = s.split_once('/').ok_or_else(syntax)?;
        let count: u32 = count.trim().parse().map_err(|_| syntax())?;
        let window = shared::duration::parse_duration(window).map_err(|_| syntax())?;
        if count == 0 || window.is_zero() {
            return Err(RateLimitError::Zero(s.to_owned()));
        }
        Ok(Self { count, window })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.window)
        )
    }
}

impl RateLimit {
    /// The time one message costs, in microseconds (at least 1).
    pub fn interval_us(&self) -> u64 {
        let window = u64::try_from(self.window.as_micros()).unwrap_or(u64::MAX);
        (window / u64::from(self.count)).max(1)
    }

    /// How far ahead of now the arrival time may run: the burst allowance, in microseconds.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us()
            .saturating_mul(u64::from(self.count).saturating_sub(1))
    }

    /// One GCRA step: given the user's arrival time `tat` (if any) and `now` (both in
    /// microseconds on one clock), the new arrival time if the message is allowed, `None`
    /// if it is over the limit (then the state stays as it was).
    pub fn admit(&self, tat: Option<u64>, now: u64) -> Option<u64> {
        let tat = tat.unwrap_or(now).max(now);
        if tat - now > self.tolerance_us() {
            return None;
        }
        Some(tat.saturating_add(self.interval_us()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_count_per_duration() {
        let limit: RateLimit = "10/5s".parse().unwrap();
        assert_eq!(limit, RateLimit::default());
        let limit: RateLimit = " 3 / 500ms ".parse().unwrap();
        assert_eq!(limit.count, 3);
        assert_eq!(limit.window, Duration::from_millis(500));
        assert_eq!(limit.to_string(), "3/500ms");
        for bad in [
            "",
            "10",
            "10/",
            "/5s",
            "ten/5s",
            "10/soon",
            "-1/5s",
            "10 per 5s",
        ] {
            assert!(
                matches!(bad.parse::<RateLimit>(), Err(RateLimitError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "0/5s".parse::<RateLimit>(),
            Err(RateLimitError::Zero(_))
        ));
        assert!(matches!(
            "5/0s".parse::<RateLimit>(),
            Err(RateLimitError::Zero(_))
        ));
    }

    /// Runs `admit` like a store would: keeps the state, counts the admitted.
    fn run(limit: RateLimit, times_ms: &[u64]) -> Vec<bool> {
        let mut tat = None;
        times_ms
            .iter()
            .map(|&ms| match limit.admit(tat, ms * 1000) {
                Some(next) => {
                    tat = Some(next);
                    true
                }
                None => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_of_count_passes_then_one_per_interval() {
        let limit: RateLimit = "3/3s".parse().unwrap();
        // Four at once: the fourth is over.
        assert_eq!(run(limit, &[0, 0, 0, 0]), [true, true, true, false]);
        // One interval later one more passes, and only one.
        assert_eq!(
            run(limit, &[0, 0, 0, 1000, 1000, 1999, 2000]),
            [true, true, true, true, false, false, true]
        );
        // After a whole idle window, a whole burst again.
        assert_eq!(
            run(limit, &[0, 0, 0, 3000, 3000, 3000, 3000]),
            [true, true, true, true, true, true, false]
        );
    }

    #[test]
    fn a_steady_sender_below_the_rate_is_never_limited() {
        let limit: RateLimit = "5/1s".parse().unwrap();
        let times: Vec<u64> = (0..100).map(|i| i * 200).collect();
        assert!(run(limit, &times).into_iter().all(|ok| ok));
        let faster: Vec<u64> = (0..100).map(|i| i * 100).collect();
        let admitted = run(limit, &faster).into_iter().filter(|ok| *ok).count();
        // 10 s at 5/s plus the burst of 5 (minus the one already counted at 0).
        assert!((50..=55).contains(&admitted), "{admitted}");
    }
}

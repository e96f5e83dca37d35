//! The log of a loop that fails the same way again and again (Redis down, each retry failing
//! like the last): its first line at once, then at most one per period, each counting the
//! ones left out. A line per retry would bury everything else in the log for the length of
//! an outage.

use std::time::Duration;

use tokio::time::Instant;

/// How often a retrying loop of the bus may say that it failed again.
pub(crate) const RETRY_LOG_PERIOD: Duration = Duration::from_secs(10);

/// One loop's log lines about its failures.
#[derive(Debug)]
pub(crate) struct LogEvery {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogEvery {
    pub(crate) const fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether this failure is to be logged now; if so, how many were left out since the
    /// line before.
    pub(crate) fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_failure_is_logged_then_one_per_period_with_the_count_left_out() {
        let mut log = LogEvery::new(Duration::from_secs(10));
        assert_eq!(log.due(), Some(0));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(log.due(), None);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(log.due(), Some(5));
        assert_eq!(log.due(), None);
    }
}

//! Time bounds that cost little when the bounded operation does not wait, or waits often.
//!
//! Most socket writes, and most reads of a body that has already arrived, finish on their
//! first poll. `tokio::time::timeout` reads the clock and builds a timer entry for each of
//! them anyway (a few percent of the proxy's CPU per request); [`bounded`] arms the timer
//! only once the operation is pending, so the bound starts at most one poll later.
//!
//! The waits that do wait on every request (for the next request, for a backend's answer)
//! use a [`Deadline`] per connection: one timer, moved only when a wait needs it earlier or
//! when it fires before the current wait's end — not inserted into and removed from the
//! timer wheel twice per request (the way nginx and HAProxy keep their timers too).

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::error::Elapsed;
use tokio::time::{sleep_until, Instant, Sleep};

/// `fut`, failing with [`Elapsed`] if it waits for longer than `limit`.
pub(crate) async fn bounded<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = pin!(fut);
    match poll_once(fut.as_mut()).await {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => tokio::time::timeout(limit, fut).await,
    }
}

/// Polls `fut` once (registering the task's waker if it is pending).
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// The time bound of one kind of wait on one connection (waiting for a request, waiting
/// for a backend's answer): a timer kept across waits.
#[derive(Default)]
pub(crate) struct Deadline {
    /// Boxed: created on the first wait that waits, and pinned for its whole life.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// `fut`, or `None` if it waits for longer than `limit`.
    pub async fn within<F: Future>(&mut self, limit: Duration, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        match poll_once(fut.as_mut()).await {
            Poll::Ready(out) => Some(out),
            Poll::Pending => self.wait(Instant::now() + limit, fut).await,
        }
    }

    /// `fut`, or `None` if it is not done at `at`.
    pub async fn until<F: Future>(&mut self, at: Instant, fut: F) -> Option<F::Output> {
        self.wait(at, pin!(fut)).await
    }

    async fn wait<F: Future>(&mut self, at: Instant, mut fut: Pin<&mut F>) -> Option<F::Output> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                // A timer set for later would miss this wait's end. One set for earlier
                // is left alone: it fires, and is moved then (below).
                if sleep.deadline() > at {
                    sleep.as_mut().reset(at);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(sleep_until(at))),
        };
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            while sleep.as_mut().poll(cx).is_ready() {
                if sleep.deadline() >= at {
                    return Poll::Ready(None);
                }
                // Set by an earlier wait that ended sooner: on to this one's end.
                sleep.as_mut().reset(at);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_at_once_needs_no_timer_and_pending_is_bounded() {
        assert_eq!(bounded(Duration::ZERO, async { 7 }).await, Ok(7));
        let never = std::future::pending::<()>();
        assert!(bounded(Duration::from_secs(3), never).await.is_err());
        let later = tokio::time::sleep(Duration::from_secs(1));
        assert!(bounded(Duration::from_secs(3), later).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_bounds_each_wait_from_its_own_start() {
        let mut d = Deadline::default();
        let start = Instant::now();
        // The first wait sets the timer for 10 s; it ends early.
        let quick = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(d.within(Duration::from_secs(10), quick).await, Some(()));
        // The second wait starts at 1 s: it must run past the first one's end (10 s)...
        let slow = tokio::time::sleep(Duration::from_secs(15));
        assert_eq!(d.within(Duration::from_secs(20), slow).await, Some(()));
        assert_eq!(start.elapsed(), Duration::from_secs(16));
        // ... and a wait that must end sooner than the timer is set for ends at its own
        // end: 16 s + 3 s, though the timer was set for 21 s.
        let never = std::future::pending::<()>();
        assert_eq!(d.within(Duration::from_secs(3), never).await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(19));
        // After a timeout, the next wait is bounded afresh.
        let never = std::future::pending::<()>();
        assert_eq!(d.until(start + Duration::from_secs(30), never).await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // Done on the first poll: no wait at all.
        assert_eq!(d.within(Duration::ZERO, async { 1 }).await, Some(1));
    }
}

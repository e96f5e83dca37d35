//! The wait queue of an upstream whose backends are all at their `max_conns`: requests wait
//! there for a slot (up to `max_queue` of them, each up to `queue_timeout`) instead of
//! getting `503` at once, as with nginx's `queue` and HAProxy's `timeout queue`.
//!
//! A request that ends on a limited backend of a queued upstream wakes one waiter, which
//! then picks again among every backend; the queue is kept by upstream name across reloads,
//! so a request counted under the old config wakes one that waits under the new.

use std::sync::atomic::{fence, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Requests waiting now.
    waiting: AtomicUsize,
    freed: Notify,
}

impl WaitQueue {
    /// A slot was given back: wake one waiter, if any.
    pub(super) fn slot_freed(&self) {
        // Pairs with the fence in `Waiter::armed`: either the waiter is seen here, or it
        // sees the freed slot when it picks.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_one();
        }
    }

    /// Joins the queue unless `max` requests already wait in it.
    pub fn join(&self, max: u32) -> Option<Waiter<'_>> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let mut n = self.waiting.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .waiting
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return Some(Waiter { queue: self }),
                Err(seen) => n = seen,
            }
        }
    }

    /// Requests waiting now (status, metrics).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One request's place in a [`WaitQueue`], left when dropped.
#[derive(Debug)]
pub struct Waiter<'a> {
    queue: &'a WaitQueue,
}

impl Waiter<'_> {
    /// A future that completes at the next freed slot, registered before the caller looks
    /// for one (so that a slot freed in between is not missed).
    pub fn armed(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.queue.freed.notified());
        notified.as_mut().enable();
        fence(Ordering::SeqCst);
        notified
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_and_a_waiter_leaves_when_dropped() {
        let q = WaitQueue::default();
        let a = q.join(2);
        let b = q.join(2);
        assert!(a.is_some() && b.is_some());
        assert!(q.join(2).is_none());
        assert_eq!(q.waiting(), 2);
        drop(a);
        assert!(q.join(2).is_some());
        drop(b);
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_an_armed_waiter() {
        let q = WaitQueue::default();
        let w = q.join(1).unwrap_or_else(|| panic!("room in the queue"));
        let woken = w.armed();
        // Freed after arming and before awaiting: not lost.
        q.slot_freed();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), woken).await;
        assert!(r.is_ok());
    }
}

//! The wait queue of an upstream whose backends are all at their `max_conns`: requests wait
//! there for a slot (up to `max_queue` of them, each up to `queue_timeout`) instead of
//! getting `503` at once, as with nginx's `queue` and HAProxy's `timeout queue`.
//!
//! First come, first served, as in HAProxy: while requests wait, a new one joins behind
//! them rather than take a slot (see [`super::Upstream::pick`]), and each freed slot is
//! offered to the oldest waiter not already offered one. Only an offered waiter picks, so
//! a freed slot is not raced for. An offer that goes unused (its waiter timed out or went
//! away, or could not use the slot) passes to the next waiter, so no slot is left idle
//! while requests wait. The queue is kept by upstream name across reloads, so a request
//! counted under the old config wakes one that waits under the new. A reload (or DNS
//! refresh) that replaces the upstream hands the queue over ([`WaitQueue::hand_over`]):
//! every request waiting under the old config is woken to pick again under the new one,
//! keeping its place and its deadline, so that a raised `max_conns` or an added backend
//! serves them at once, in order, and no request of the new config waits behind ones that
//! could never use its backends.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct WaitQueue {
    /// Requests waiting now: read without the lock by every request to a limited upstream
    /// (to queue behind them) and by every freed slot (to skip the lock when none waits).
    waiting: AtomicUsize,
    line: Mutex<Line>,
}

#[derive(Debug, Default)]
struct Line {
    next_id: u64,
    /// Oldest first.
    places: VecDeque<Place>,
    /// How many places hold an offer not yet taken up.
    offered: usize,
    /// The upstream that replaced the one the queue was made for, set by the last
    /// [`WaitQueue::hand_over`]; a waiter of any other upstream leaves to pick under it.
    current: Weak<super::Upstream>,
}

#[derive(Debug)]
struct Place {
    id: u64,
    offered: bool,
    turn: Arc<Notify>,
}

impl Line {
    /// Offers a slot to the oldest waiter without an offer, other than `skip`; false when
    /// there is none.
    fn offer_next(&mut self, skip: Option<u64>) -> bool {
        let Some(place) = self
            .places
            .iter_mut()
            .find(|p| !p.offered && Some(p.id) != skip)
        else {
            return false;
        };
        place.offered = true;
        // A stored permit when the waiter is not polling yet: the offer is not lost.
        place.turn.notify_one();
        self.offered += 1;
        true
    }

    /// Takes back the offer made to waiter `id`, if it holds one.
    fn withdraw(&mut self, id: u64) -> bool {
        match self.places.iter_mut().find(|p| p.id == id) {
            Some(p) if p.offered => {
                p.offered = false;
                self.offered -= 1;
                true
            }
            _ => false,
        }
    }
}

impl WaitQueue {
    /// A slot was given back: offer it to the oldest waiter without an offer, if any.
    pub(super) fn slot_freed(&self) {
        // Pairs with the fence in `join`: either the waiter is seen here, or the room it
        // looks for after joining includes this slot.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.line.lock().offer_next(None);
        }
    }

    /// There are `room` free slots (`usize::MAX` for an unlimited backend): offers them to
    /// waiters, oldest first, other than `skip`, until as many hold an offer as there are
    /// slots. For room that no freed slot announced (a slot freed before a waiter joined, a
    /// backend back in service, a slot a waiter could not use).
    pub(super) fn offer(&self, room: usize, skip: Option<u64>) {
        if room == 0 {
            return;
        }
        let mut line = self.line.lock();
        while line.offered < room && line.offer_next(skip) {}
    }

    /// Joins the queue, at its end, unless `max` requests already wait in it; the request
    /// gives up at `deadline`.
    pub fn join(self: &Arc<Self>, max: u32, deadline: Instant) -> Option<Waiter> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let mut line = self.line.lock();
        if line.places.len() >= max {
            return None;
        }
        let id = line.next_id;
        line.next_id += 1;
        let turn = Arc::new(Notify::new());
        line.places.push_back(Place {
            id,
            offered: false,
            turn: turn.clone(),
        });
        self.waiting.store(line.places.len(), Ordering::Relaxed);
        drop(line);
        fence(Ordering::SeqCst);
        Some(Waiter {
            queue: self.clone(),
            id,
            turn,
            deadline,
        })
    }

    /// The upstream of this name is now `newer`: every waiter is woken, and those waiting
    /// under another upstream (an older config) find [`Self::replaced`] and leave the queue
    /// to pick under `newer`. The others take the wake-up as a look at the room.
    pub fn hand_over(&self, newer: &Arc<super::Upstream>) {
        let mut line = self.line.lock();
        line.current = Arc::downgrade(newer);
        for place in &line.places {
            place.turn.notify_one();
        }
    }

    /// The upstream that replaced `up`, when a [`Self::hand_over`] named another one. Read
    /// under the lock that the hand-over holds, so that a request joining under `up` as it
    /// is replaced either is woken by it or finds the new upstream here.
    pub fn replaced(&self, up: &super::Upstream) -> Option<Arc<super::Upstream>> {
        let line = self.line.lock();
        line.current
            .upgrade()
            .filter(|current| !std::ptr::eq(Arc::as_ptr(current), up))
    }

    /// Requests waiting now (status, metrics, and new requests, which queue behind them).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One request's place in a [`WaitQueue`], left when dropped. Owned, so that a request
/// whose upstream a reload replaced carries it to the new one ([`WaitQueue::hand_over`]).
#[derive(Debug)]
pub struct Waiter {
    queue: Arc<WaitQueue>,
    id: u64,
    turn: Arc<Notify>,
    /// When the request stops waiting: set when it joined, under the config it came with.
    pub deadline: Instant,
}

impl Waiter {
    /// Whether this place is in `queue`.
    pub fn is_in(&self, queue: &Arc<WaitQueue>) -> bool {
        Arc::ptr_eq(&self.queue, queue)
    }

    /// Waits until a slot is offered to this request, then takes the offer up: a slot
    /// freed after this returns is offered to it again, so one freed while it picks is not
    /// missed. Cancel-safe: dropped while waiting, the offer stays until the waiter leaves.
    pub async fn turn(&self) {
        self.turn.notified().await;
        self.queue.line.lock().withdraw(self.id);
    }

    /// The offered slot could not be used by this request, with `room` slots still free
    /// (a backend it already tried, say): offers them to the waiters behind it.
    pub fn pass(&self, room: usize) {
        self.queue.offer(room, Some(self.id));
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut line = self.queue.line.lock();
        // The offer of a waiter that leaves without using it (timed out, cancelled) goes
        // to the next one: its slot would otherwise stay free while requests wait.
        let offered = line.withdraw(self.id);
        line.places.retain(|p| p.id != self.id);
        self.queue
            .waiting
            .store(line.places.len(), Ordering::Relaxed);
        if offered {
            line.offer_next(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn queue() -> Arc<WaitQueue> {
        Arc::new(WaitQueue::default())
    }

    fn in_a_minute() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn join(q: &Arc<WaitQueue>) -> Waiter {
        q.join(10, in_a_minute())
            .unwrap_or_else(|| panic!("room in the queue"))
    }

    /// Whether `w` holds an offer, without waiting.
    async fn offered(w: &Waiter) -> bool {
        tokio::time::timeout(Duration::from_millis(20), w.turn())
            .await
            .is_ok()
    }

    #[test]
    fn the_queue_is_bounded_and_a_waiter_leaves_when_dropped() {
        let q = queue();
        let a = q.join(2, in_a_minute());
        let b = q.join(2, in_a_minute());
        assert!(a.is_some() && b.is_some());
        assert!(q.join(2, in_a_minute()).is_none());
        assert_eq!(q.waiting(), 2);
        drop(a);
        assert!(q.join(2, in_a_minute()).is_some());
        drop(b);
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test]
    async fn a_freed_slot_is_offered_to_the_oldest_waiter_once() {
        let q = queue();
        let (a, b, c) = (join(&q), join(&q), join(&q));
        q.slot_freed();
        assert!(!offered(&b).await && !offered(&c).await);
        assert!(offered(&a).await, "the oldest waiter gets the slot");
        // `a` took its offer up and waits on: the next slot is its again.
        q.slot_freed();
        q.slot_freed();
        assert!(offered(&a).await && offered(&b).await);
        assert!(!offered(&c).await);
    }

    #[tokio::test]
    async fn an_offer_left_unused_passes_to_the_next_waiter() {
        let q = queue();
        let (a, b, c) = (join(&q), join(&q), join(&q));
        q.slot_freed();
        // `a` times out or is cancelled before it looks: its slot goes to `b`.
        drop(a);
        assert!(offered(&b).await);
        assert!(!offered(&c).await);
        // `b` cannot use the slot (a backend it tried): `c` may.
        b.pass(1);
        assert!(offered(&c).await);
        assert!(
            !offered(&b).await,
            "not offered back to the waiter that passed"
        );
    }

    #[tokio::test]
    async fn room_is_offered_to_as_many_waiters_as_it_has_slots() {
        let q = queue();
        let (a, b, c) = (join(&q), join(&q), join(&q));
        q.slot_freed();
        // One slot, already offered to `a`: nothing more.
        q.offer(1, None);
        assert!(!offered(&b).await);
        q.offer(2, None);
        assert!(offered(&b).await && !offered(&c).await);
        q.offer(usize::MAX, None);
        assert!(offered(&c).await);
        assert!(offered(&a).await);
    }
}

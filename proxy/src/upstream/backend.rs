//! One backend of an upstream group: its identity from the config and its live state.
//!
//! The live state ([`BackendStats`]) is shared through an `Arc` and looked up by
//! (upstream, address) when a config is (re)loaded, so counters, health and drain flags
//! survive reloads: a reload never resets least_conn counts or re-admits a dead backend.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::queue::WaitQueue;

/// A backend as configured, plus a handle to its live state.
#[derive(Debug)]
pub struct Backend {
    /// Stable identifier, used in sticky cookies and the admin API.
    pub id: String,
    pub addr: SocketAddr,
    /// Configured weight, at least 1.
    pub weight: u32,
    /// Backups get traffic only while every primary of the group is unavailable.
    pub backup: bool,
    /// In-flight requests plus open tunnels at most (`active`); 0: unlimited. Kept here,
    /// not in the stats, so a reload applies a new limit at once to the carried-over count.
    pub max_conns: u64,
    /// Its upstream's wait queue, woken when this backend frees a slot; None without a
    /// limit or a queue.
    pub queue: Option<Arc<WaitQueue>>,
    pub stats: Arc<BackendStats>,
}

impl Backend {
    pub fn new(id: impl Into<String>, addr: SocketAddr, weight: u32, backup: bool) -> Self {
        Self {
            id: id.into(),
            addr,
            weight: weight.max(1),
            backup,
            max_conns: 0,
            queue: None,
            stats: Arc::new(BackendStats::new(true)),
        }
    }

    /// The same backend with at most `n` in-flight requests plus tunnels (0: unlimited).
    #[must_use]
    pub fn with_max_conns(mut self, n: u64) -> Self {
        self.max_conns = n;
        self
    }

    /// At its `max_conns`: takes no new request or tunnel until one ends. A snapshot: the
    /// count is taken for good by [`ActiveGuard::try_acquire`].
    #[inline]
    pub fn is_full(&self) -> bool {
        self.max_conns != 0 && self.active() >= self.max_conns
    }

    /// Weight as the strategies should see it now: the configured weight, ramped down
    /// during slow start after a recovery. Never 0, so a recovering backend still gets a
    /// trickle of traffic.
    pub fn effective_weight(&self) -> f64 {
        let w = f64::from(self.weight);
        match self.stats.slow_start_factor() {
            Some(f) => (w * f).max(w * 0.05).max(0.01),
            None => w,
        }
    }

    /// In-flight requests plus open tunnels.
    pub fn active(&self) -> u64 {
        self.stats.active.load(Ordering::Relaxed)
    }

    /// Can receive new requests: healthy and not draining.
    pub fn is_available(&self) -> bool {
        self.stats.is_healthy() && !self.stats.is_draining()
    }
}

/// Health as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Configured with active checks and not yet checked: no traffic until the first pass.
    Pending,
    Up,
    Down,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Health::Pending,
            1 => Health::Up,
            _ => Health::Down,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            Health::Pending => 0,
            Health::Up => 1,
            Health::Down => 2,
        }
    }
}

/// Live, shared state of one backend.
#[derive(Debug)]
pub struct BackendStats {
    /// In-flight HTTP requests plus open upgraded tunnels (least_conn, p2c, least_time).
    pub active: AtomicU64,
    /// Open upgraded tunnels only (metrics, status).
    pub tunnels: AtomicU64,
    /// Requests (and tunnels) sent to this backend since start.
    pub requests: AtomicU64,
    health: AtomicU8,
    draining: AtomicBool,
    /// Peak-EWMA of time to first byte, for least_time.
    pub ewma: PeakEwma,
    passive: Mutex<PassiveState>,
    /// False while `passive` holds nothing a success would clear (no failure, not down, no
    /// probe): the common success path then skips the lock.
    passive_dirty: AtomicBool,
    slow_start: Mutex<Option<(Instant, Duration)>>,
    /// Mirrors `slow_start.is_some()` so the pick path reads one atomic, not a lock.
    ramping: AtomicBool,
    /// Consecutive active-check passes and failures (rise/fall).
    checks: Mutex<(u32, u32)>,
    /// Lets one warning a minute through for this backend's failures
    /// ([`crate::logging::backend_failure`]); kept across reloads with the stats.
    pub failure_log: crate::logging::Throttle,
}

#[derive(Debug, Default)]
struct PassiveState {
    /// Times of recent failures inside the window.
    failures: Vec<Instant>,
    /// When the backend was marked down by passive checks (probe after the window).
    down_since: Option<Instant>,
    /// A probe request is in flight; no second one until it answers.
    probing: bool,
    /// Numbers the probes, so that the end of one releases its own slot and no later one.
    probe_seq: u64,
}

impl BackendStats {
    /// `start_up`: false when active checks are configured (a new backend waits for its
    /// first passing check), true otherwise.
    pub fn new(start_up: bool) -> Self {
        Self {
            active: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            health: AtomicU8::new(
                if start_up {
                    Health::Up
                } else {
                    Health::Pending
                }
                .as_u8(),
            ),
            draining: AtomicBool::new(false),
            ewma: PeakEwma::default(),
            passive: Mutex::new(PassiveState::default()),
            passive_dirty: AtomicBool::new(false),
            slow_start: Mutex::new(None),
            ramping: AtomicBool::new(false),
            checks: Mutex::new((0, 0)),
            failure_log: crate::logging::Throttle::new(),
        }
    }

    /// Records an active check result and applies rise/fall. Returns the new health when it
    /// changed. A pending backend (never checked) comes up on its first pass.
    pub fn record_check(
        &self,
        passed: bool,
        rise: u32,
        fall: u32,
        slow_start: Option<Duration>,
    ) -> Option<Health> {
        let mut c = self.checks.lock();
        let current = self.health();
        if passed {
            c.0 = c.0.saturating_add(1);
            c.1 = 0;
            let up = match current {
                Health::Pending => true,
                Health::Down => c.0 >= rise,
                Health::Up => false,
            };
            if up {
                drop(c);
                self.set_health(Health::Up, slow_start);
                return Some(Health::Up);
            }
        } else {
            c.1 = c.1.saturating_add(1);
            c.0 = 0;
            if current != Health::Down && c.1 >= fall {
                drop(c);
                self.set_health(Health::Down, None);
                let mut p = self.passive.lock();
                p.down_since = Some(Instant::now());
                self.passive_dirty.store(true, Ordering::Release);
                drop(p);
                return Some(Health::Down);
            }
        }
        None
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    pub fn is_healthy(&self) -> bool {
        self.health() == Health::Up
    }

    /// Sets the health; returns the previous value. Going from Down to Up starts slow start
    /// when `slow_start` is given.
    pub fn set_health(&self, h: Health, slow_start: Option<Duration>) -> Health {
        let prev = Health::from_u8(self.health.swap(h.as_u8(), Ordering::AcqRel));
        if h == Health::Up && prev == Health::Down {
            let mut p = self.passive.lock();
            p.failures.clear();
            p.down_since = None;
            p.probing = false;
            self.passive_dirty.store(false, Ordering::Release);
            drop(p);
            if let Some(d) = slow_start.filter(|d| !d.is_zero()) {
                *self.slow_start.lock() = Some((Instant::now(), d));
                self.ramping.store(true, Ordering::Release);
            }
        }
        prev
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, d: bool) {
        self.draining.store(d, Ordering::Release);
    }

    /// Fraction (0..1] of the weight during slow start, or None when not ramping.
    fn slow_start_factor(&self) -> Option<f64> {
        if !self.ramping.load(Ordering::Acquire) {
            return None;
        }
        let mut guard = self.slow_start.lock();
        let (since, dur) = (*guard)?;
        let f = since.elapsed().as_secs_f64() / dur.as_secs_f64();
        if f >= 1.0 {
            *guard = None;
            self.ramping.store(false, Ordering::Release);
            None
        } else {
            Some(f)
        }
    }

    /// Passive check: a request to this backend failed (connect error, timeout, reset).
    /// Returns true when this failure marked the backend down.
    pub fn record_failure(&self, max_fails: u32, window: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let now = Instant::now();
        let mut p = self.passive.lock();
        p.probing = false;
        // Set before any change below, while the lock is held.
        self.passive_dirty.store(true, Ordering::Release);
        if self.health() == Health::Down {
            // A failed probe: wait a whole window again before the next one.
            p.down_since = Some(now);
            return false;
        }
        p.failures.retain(|t| now.duration_since(*t) < window);
        p.failures.push(now);
        if p.failures.len() >= max_fails as usize {
            p.failures.clear();
            p.down_since = Some(now);
            drop(p);
            // Active checks that passed while requests failed must not bring it back at
            // the next pass: `rise` passes count from now.
            self.checks.lock().0 = 0;
            self.health.store(Health::Down.as_u8(), Ordering::Release);
            return true;
        }
        false
    }

    /// Passive check: a response (or a `101`) came back. With `readmit` (no active checks),
    /// re-admits a backend that was marked down. Returns true when this success re-admitted
    /// it.
    pub fn record_success(&self, slow_start: Option<Duration>, readmit: bool) -> bool {
        if !self.passive_dirty.load(Ordering::Acquire) {
            return false;
        }
        let mut p = self.passive.lock();
        let was_probe = p.probing || p.down_since.is_some();
        p.failures.clear();
        if !was_probe {
            self.passive_dirty.store(false, Ordering::Release);
        }
        drop(p);
        if readmit && was_probe && self.health() == Health::Down {
            self.set_health(Health::Up, slow_start);
            return true;
        }
        false
    }

    /// For a backend marked down by passive checks and without active checks: whether its
    /// probe is due (`window` has passed since it went down and no probe is in flight).
    pub fn probe_due(&self, window: Duration) -> bool {
        if self.health() != Health::Down || self.is_draining() {
            return false;
        }
        let p = self.passive.lock();
        !p.probing && p.down_since.is_some_and(|t| t.elapsed() >= window)
    }

    /// Claims the single probe slot of a backend whose probe is due (see
    /// [`Self::probe_due`]). The number returned releases the slot ([`Self::release_probe`])
    /// if the probe ends without an answer either way.
    pub fn try_claim_probe(&self, window: Duration) -> Option<u64> {
        let mut p = self.passive.lock();
        match p.down_since {
            Some(t) if !p.probing && t.elapsed() >= window => {
                p.probing = true;
                p.probe_seq = p.probe_seq.wrapping_add(1);
                self.passive_dirty.store(true, Ordering::Release);
                Some(p.probe_seq)
            }
            _ => None,
        }
    }

    /// Ends probe `seq` if it still holds the slot: it ended without telling anything (the
    /// client went away, the request was refused), so the next request may probe. Without
    /// this, the slot stayed taken and the backend was never probed, so never re-admitted.
    pub fn release_probe(&self, seq: u64) {
        let mut p = self.passive.lock();
        if p.probing && p.probe_seq == seq {
            p.probing = false;
        }
    }
}

/// Peak-EWMA latency estimator (Linkerd, Finagle): jumps up to a slower sample at once,
/// decays towards faster samples with time constant `TAU`.
#[derive(Debug)]
pub struct PeakEwma {
    inner: Mutex<(f64, Option<Instant>)>,
    /// The current estimate's f64 bits, readable without the lock on the pick path.
    current: AtomicU64,
    /// When `current` was last set, in µs since [`epoch`].
    updated_us: AtomicU64,
}

/// A process-wide time origin, so sample times fit in an atomic.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl PeakEwma {
    /// Decay time constant.
    pub const TAU: Duration = Duration::from_secs(10);
    /// Estimate (µs) for a backend with no sample yet: optimistic enough to get it traffic.
    pub const DEFAULT_US: f64 = 1_000.0;

    pub fn observe(&self, sample: Duration) {
        self.observe_at(sample, Instant::now());
    }

    /// [`Self::observe`] with the current time already read by the caller.
    pub fn observe_at(&self, sample: Duration, now: Instant) {
        let rtt = sample.as_secs_f64() * 1e6;
        let mut g = self.inner.lock();
        let (cost, last) = *g;
        let new = match last {
            None => rtt,
            Some(_) if rtt > cost => rtt,
            Some(t) => {
                let elapsed = now.saturating_duration_since(t).as_secs_f64();
                let w = (-elapsed / Self::TAU.as_secs_f64()).exp();
                cost * w + rtt * (1.0 - w)
            }
        };
        *g = (new, Some(now));
        self.current.store(new.to_bits(), Ordering::Release);
        let at = now.saturating_duration_since(epoch()).as_micros();
        self.updated_us
            .store(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Current estimate in microseconds.
    ///
    /// Like Linkerd's, the estimate decays towards zero while no sample arrives, so a
    /// backend that was slow once is tried again instead of being starved for good. Fresh
    /// estimates (the common case on the pick path) skip the `exp`.
    pub fn get_us(&self) -> f64 {
        let cost = f64::from_bits(self.current.load(Ordering::Acquire));
        let updated = self.updated_us.load(Ordering::Acquire);
        if updated == 0 {
            return cost;
        }
        let now = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
        let idle_us = now.saturating_sub(updated);
        if idle_us < 1_000_000 {
            return cost;
        }
        cost * (-(idle_us as f64) / 1e6 / Self::TAU.as_secs_f64()).exp()
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            inner: Mutex::new((0.0, None)),
            current: AtomicU64::new(Self::DEFAULT_US.to_bits()),
            updated_us: AtomicU64::new(0),
        }
    }
}

/// RAII count of one in-flight request or tunnel on a backend; for a probe request, also
/// its hold on the probe slot.
#[derive(Debug)]
pub struct ActiveGuard {
    stats: Arc<BackendStats>,
    tunnel: bool,
    /// The probe this request is ([`BackendStats::try_claim_probe`]).
    probe: Option<u64>,
    /// Woken when this request gives its slot back (a full upstream's queued requests).
    queue: Option<Arc<WaitQueue>>,
}

impl ActiveGuard {
    /// Counts one more request on the backend, whatever its limit.
    pub fn new(stats: Arc<BackendStats>) -> Self {
        stats.active.fetch_add(1, Ordering::AcqRel);
        Self::counted(stats)
    }

    /// Counts one more request on `backend` unless that would take it past its
    /// `max_conns`: None when it is full. Check and increment are one compare-exchange, so
    /// workers racing for a backend's last slot never take it twice. Unlimited backends
    /// take the plain increment of [`Self::new`].
    #[inline]
    pub fn try_acquire(backend: &Backend) -> Option<Self> {
        let max = backend.max_conns;
        let stats = &backend.stats;
        if max == 0 {
            return Some(Self::new(stats.clone()));
        }
        let mut current = stats.active.load(Ordering::Acquire);
        loop {
            if current >= max {
                return None;
            }
            match stats.active.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let mut guard = Self::counted(stats.clone());
                    guard.queue = backend.queue.clone();
                    return Some(guard);
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// The guard of a request already counted in `active`.
    fn counted(stats: Arc<BackendStats>) -> Self {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        Self {
            stats,
            tunnel: false,
            probe: None,
            queue: None,
        }
    }

    /// The request is probe `seq`: its slot is released with the guard, however the
    /// request ends (an answer or a failure has settled it by then).
    pub fn with_probe(mut self, seq: Option<u64>) -> Self {
        self.probe = seq;
        self
    }

    /// The request became an upgraded tunnel: count it as such until dropped.
    pub fn mark_tunnel(&mut self) {
        if !self.tunnel {
            self.tunnel = true;
            self.stats.tunnels.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(seq) = self.probe {
            self.stats.release_probe(seq);
        }
        self.stats.active.fetch_sub(1, Ordering::AcqRel);
        if self.tunnel {
            self.stats.tunnels.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(q) = &self.queue {
            q.slot_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_jumps_to_peaks_and_reads_without_the_lock() {
        let e = PeakEwma::default();
        assert_eq!(e.get_us(), PeakEwma::DEFAULT_US);
        e.observe(Duration::from_millis(5));
        assert!((e.get_us() - 5_000.0).abs() < 1.0);
        e.observe(Duration::from_millis(50));
        assert!(
            (e.get_us() - 50_000.0).abs() < 1.0,
            "a slower sample is taken at once"
        );
        e.observe(Duration::from_millis(1));
        assert!(
            e.get_us() > 40_000.0,
            "a faster sample only pulls the estimate down slowly"
        );
    }

    #[test]
    fn a_response_readmits_only_when_asked() {
        let s = BackendStats::new(false);
        assert_eq!(s.record_check(true, 2, 1, None), Some(Health::Up));
        assert_eq!(s.record_check(false, 2, 1, None), Some(Health::Down));
        // Active checks configured: only `rise` passing checks bring it back.
        assert!(!s.record_success(None, false));
        assert_eq!(s.health(), Health::Down);
        assert_eq!(s.record_check(true, 2, 1, None), None);
        assert_eq!(s.record_check(true, 2, 1, None), Some(Health::Up));
        // Passive checks alone: a response re-admits.
        assert_eq!(s.record_check(false, 2, 1, None), Some(Health::Down));
        assert!(s.record_success(None, true));
        assert_eq!(s.health(), Health::Up);
    }

    #[test]
    fn after_a_passive_mark_down_only_rise_fresh_passes_readmit() {
        let s = BackendStats::new(false);
        // Up for a while: many passing checks in a row.
        for _ in 0..10 {
            s.record_check(true, 3, 2, None);
        }
        assert_eq!(s.health(), Health::Up);
        // Requests fail: passive checks take it out.
        assert!(!s.record_failure(2, Duration::from_secs(60)));
        assert!(s.record_failure(2, Duration::from_secs(60)));
        assert_eq!(s.health(), Health::Down);
        // The passes from before the failures say nothing about it now: `rise` new ones are
        // needed, not one.
        assert_eq!(s.record_check(true, 3, 2, None), None);
        assert_eq!(s.record_check(true, 3, 2, None), None);
        assert_eq!(s.health(), Health::Down);
        assert_eq!(s.record_check(true, 3, 2, None), Some(Health::Up));
    }

    fn limited(n: u64) -> Backend {
        Backend::new("a", SocketAddr::from(([127, 0, 0, 1], 1)), 1, false).with_max_conns(n)
    }

    #[test]
    fn try_acquire_stops_at_max_conns_and_a_release_frees_a_slot() {
        let b = limited(2);
        let first = ActiveGuard::try_acquire(&b);
        let second = ActiveGuard::try_acquire(&b);
        assert!(first.is_some() && second.is_some());
        assert!(b.is_full());
        assert!(ActiveGuard::try_acquire(&b).is_none());
        assert_eq!(b.active(), 2, "a refused acquire counts nothing");
        assert_eq!(b.stats.requests.load(Ordering::Relaxed), 2);
        drop(first);
        assert!(!b.is_full());
        let third = ActiveGuard::try_acquire(&b);
        assert!(third.is_some());
        assert!(ActiveGuard::try_acquire(&b).is_none());
        // A tunnel holds its slot like a request.
        let mut tunnel = third;
        if let Some(t) = tunnel.as_mut() {
            t.mark_tunnel();
        }
        assert!(ActiveGuard::try_acquire(&b).is_none());
        drop((second, tunnel));
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn unlimited_backends_are_never_full() {
        let b = limited(0);
        let guards: Vec<_> = (0..1000)
            .filter_map(|_| ActiveGuard::try_acquire(&b))
            .collect();
        assert_eq!(guards.len(), 1000);
        assert!(!b.is_full());
    }

    #[test]
    fn racing_workers_never_take_more_than_max_conns() {
        // Many threads take and release slots at once; the count seen by any holder never
        // exceeds the limit, which a load-then-add would.
        let b = Arc::new(limited(3));
        let over = Arc::new(AtomicBool::new(false));
        let granted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, over, granted) = (b.clone(), over.clone(), granted.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(g) = ActiveGuard::try_acquire(&b) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            // Held a moment, so that other workers contend for the slots.
                            std::thread::yield_now();
                            if b.active() > 3 {
                                over.store(true, Ordering::Relaxed);
                            }
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert!(!over.load(Ordering::Relaxed), "more than max_conns at once");
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn slow_start_ramps_only_after_a_recovery() {
        let b = Backend::new(
            "a",
            "127.0.0.1:1"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1))),
            10,
            false,
        );
        assert_eq!(b.effective_weight(), 10.0);
        b.stats.set_health(Health::Down, None);
        b.stats
            .set_health(Health::Up, Some(Duration::from_secs(60)));
        let w = b.effective_weight();
        assert!(w < 1.0, "just recovered: {w}");
    }
}

//! How long a WebSocket write may wait for more packets: the configured
//! [`ws_flush_interval`](super::EngineConfig::ws_flush_interval), scaled by how busy the
//! runtime's worker threads have been lately.
//!
//! Holding writes back is worth it only when the node is short of CPU: then one send of
//! several packets instead of several sends is what lets it keep up. A node with CPU to
//! spare would only add latency, so below [`IDLE`] busy it writes at once, from [`BUSY`] up
//! it waits the whole interval, and in between a proportional part of it. The load is the
//! share of wall time the workers spent running tasks (tokio's busy duration), sampled at
//! most every [`SAMPLE`] by whichever session asks. It is taken at once when it rises and
//! let go over about a second when it falls: a burst that finds the node idle must be
//! coalesced within milliseconds (at twice the rate a node can write packet by packet,
//! 100 ms of backlog is what set the p99 in `bench chat` when the load was averaged over
//! 50 ms samples), and coalescing lowers the very load that called for it, so dropping it
//! at once would swing the node between backlog and idle.
//!
//! The load is the node's, but whether a hold pays is each client's: [`Density`] holds a
//! client's write only if, at the rate its packets have been coming, the hold would merge
//! at least [`MERGE`] of them. The busy share counts time spent waiting for a CPU, so on a
//! crowded machine a node with CPU to spare can look busy; a client receiving a packet
//! every few milliseconds then gains nothing from a hold, only its latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Below this share of busy time, writes are not held back. Measured with `bench chat`
/// (three single-threaded nodes sharing 0.4 CPU, load over 50 ms, hardly coalescing):
/// 0.13–0.16 at 45 messages/s per client, where each node still answers in about a
/// millisecond; 0.2–0.34 at 120, where the budget is used up; 0.28–0.58 at 200, which the
/// nodes sustain only by coalescing.
pub const IDLE: f64 = 0.12;
/// From this share of busy time, writes are held back the whole interval.
pub const BUSY: f64 = 0.25;
/// How often the load is sampled.
pub const SAMPLE: Duration = Duration::from_millis(10);
/// The weight of a new sample in the smoothed load when it is higher: taken at once.
const RISE: f64 = 1.0;
/// The weight of a new sample in the smoothed load when it is lower: about 1 s to settle.
const FALL: f64 = 0.01;

/// The flush interval of one Engine.IO server's WebSockets.
#[derive(Debug)]
pub struct FlushPacer {
    max: Duration,
    /// The interval now, in nanoseconds.
    current: AtomicU64,
    last: Mutex<Option<Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    busy: Duration,
    load: f64,
}

impl FlushPacer {
    /// A pacer holding writes back at most `max` (zero: never).
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            current: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// How long a write may now wait after the previous one.
    pub fn interval(&self) -> Duration {
        if self.max.is_zero() {
            return Duration::ZERO;
        }
        // One session samples; the others read the last result rather than wait.
        if let Some(mut last) = self.last.try_lock() {
            let now = Instant::now();
            if last.is_none_or(|s| now.duration_since(s.at) >= SAMPLE) {
                if let Some((busy, workers)) = busy_time() {
                    let load = match *last {
                        Some(s) => {
                            let wall = now.duration_since(s.at).as_secs_f64() * workers;
                            let sample =
                                (busy.saturating_sub(s.busy).as_secs_f64() / wall).clamp(0.0, 1.0);
                            // Quick to rise, slow to fall: coalescing lowers the very
                            // load that called for it, and dropping it at once would
                            // swing the node between backlog and idle.
                            let weight = if sample > s.load { RISE } else { FALL };
                            s.load + weight * (sample - s.load)
                        }
                        None => 0.0,
                    };
                    *last = Some(Sample {
                        at: now,
                        busy,
                        load,
                    });
                    self.set(scaled(self.max, load));
                }
            }
        }
        Duration::from_nanos(self.current.load(Ordering::Relaxed))
    }

    fn set(&self, interval: Duration) {
        let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        self.current.store(nanos, Ordering::Relaxed);
    }
}

/// The part of `max` a write waits at `load` (the busy share of the workers' time).
pub fn scaled(max: Duration, load: f64) -> Duration {
    max.mul_f64(((load - IDLE) / (BUSY - IDLE)).clamp(0.0, 1.0))
}

/// The total time the current runtime's workers have spent running tasks, and how many
/// workers it has (at least one).
fn busy_time() -> Option<(Duration, f64)> {
    let metrics = tokio::runtime::Handle::try_current().ok()?.metrics();
    let workers = metrics.num_workers();
    let busy = (0..workers)
        .map(|worker| metrics.worker_total_busy_duration(worker))
        .sum();
    Some((busy, workers.max(1) as f64))
}

/// A hold is worth it only if it merges at least this many packets, on a client's recent
/// rate. One or two a hold save next to nothing and cost up to the whole interval: in
/// `bench chat --rate 30` without a CPU limit (every client receiving a packet every
/// 3.3 ms) holding every write raised the p99 from 0.9 to 6.6 ms and saved no CPU.
pub const MERGE: f64 = 4.0;
/// The weight of the newest write in a client's averages.
const DENSITY_WEIGHT: f64 = 0.25;

/// How densely packets come to one client: averages over its recent writes of the packets
/// each carried and of the time since the one before. Their ratio is its packet rate; an
/// average of each write's own rate would be ruled by the shortest gaps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Density {
    packets: f64,
    gap: f64,
    last: Option<Instant>,
}

impl Density {
    /// Counts a write of `packets` at `now`.
    pub fn record(&mut self, packets: usize, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.duration_since(last).as_secs_f64();
            self.packets += DENSITY_WEIGHT * (packets as f64 - self.packets);
            self.gap += DENSITY_WEIGHT * (gap - self.gap);
        }
        self.last = Some(now);
    }

    /// When the last write was.
    pub fn last_write(&self) -> Option<Instant> {
        self.last
    }

    /// Whether holding the next write for `interval` would merge at least [`MERGE`]
    /// packets at this client's recent rate.
    pub fn merges(&self, interval: Duration) -> bool {
        // Before the averages have seen a write, and for a stream sent all at once (no
        // time between writes), the rate is unknown or unbounded: hold only the latter.
        self.packets * interval.as_secs_f64() >= MERGE * self.gap && self.packets > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_taken_only_where_it_merges_packets() {
        let interval = Duration::from_millis(5);
        let start = Instant::now();
        let mut density = Density::default();
        assert!(!density.merges(interval), "no write seen yet");
        // A client receiving a packet every 3.3 ms: a hold would merge one or two.
        for i in 0..=40u32 {
            density.record(1, start + Duration::from_micros(3300) * i);
        }
        assert!(!density.merges(interval));
        // A packet every 0.5 ms: ten a hold.
        let dense = start + Duration::from_secs(1);
        for i in 0..=40u32 {
            density.record(1, dense + Duration::from_micros(500) * i);
        }
        assert!(density.merges(interval));
        // Held writes carrying ten each, every 5 ms: still dense.
        let held = dense + Duration::from_secs(1);
        for i in 0..=40u32 {
            density.record(10, held + Duration::from_millis(5) * i);
        }
        assert!(density.merges(interval));
        // Quiet for a second: a few writes later, no longer.
        let quiet = held + Duration::from_secs(2);
        for i in 0..=4u32 {
            density.record(1, quiet + Duration::from_secs(1) * i);
        }
        assert!(!density.merges(interval));
    }

    #[test]
    fn the_interval_grows_with_the_load_between_idle_and_busy() {
        let max = Duration::from_millis(10);
        assert_eq!(scaled(max, 0.0), Duration::ZERO);
        assert_eq!(scaled(max, IDLE), Duration::ZERO);
        assert_eq!(scaled(max, (IDLE + BUSY) / 2.0), Duration::from_millis(5));
        assert_eq!(scaled(max, BUSY), max);
        assert_eq!(scaled(max, 1.0), max);
    }

    #[test]
    fn a_zero_interval_never_holds_back() {
        assert_eq!(FlushPacer::new(Duration::ZERO).interval(), Duration::ZERO);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_runtime_writes_at_once_and_a_busy_one_waits() {
        let pacer = FlushPacer::new(Duration::from_millis(5));
        // The first sample only sets the baseline.
        assert_eq!(pacer.interval(), Duration::ZERO);
        // Idle: parked in the timer (long against any preemption of a busy moment on a
        // loaded machine).
        tokio::time::sleep(SAMPLE * 20).await;
        assert_eq!(pacer.interval(), Duration::ZERO);
        // Busy: the one worker runs this task without parking for several samples.
        let mut waited = Duration::ZERO;
        for _ in 0..8 {
            let start = std::time::Instant::now();
            while start.elapsed() < SAMPLE + Duration::from_millis(5) {
                std::hint::spin_loop();
            }
            // Yielding lets the worker record its busy time without parking.
            tokio::task::yield_now().await;
            waited = pacer.interval();
        }
        assert!(waited > Duration::ZERO, "{waited:?}");
    }
}

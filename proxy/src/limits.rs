//! Per-client-IP limits: concurrent requests and tunnels, and request rate.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pingora_limits::rate::Rate;

const SHARDS: usize = 16;

/// Exact per-IP counters (sharded to keep lock contention low) and a per-IP rate estimator.
pub struct ClientLimits {
    shards: Arc<[Mutex<HashMap<IpAddr, u32>>; SHARDS]>,
    rate: Rate,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits").finish_non_exhaustive()
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            shards: Arc::new(std::array::from_fn(|_| Mutex::new(HashMap::new()))),
            rate: Rate::new(Duration::from_secs(1)),
            hasher: Default::default(),
        }
    }
}

/// Holds one slot of a client's concurrency budget until dropped.
#[derive(Debug)]
pub struct ClientGuard {
    shards: Arc<[Mutex<HashMap<IpAddr, u32>>; SHARDS]>,
    shard: usize,
    ip: IpAddr,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut map = self.shards[self.shard].lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ClientLimits {
    fn shard(&self, ip: &IpAddr) -> usize {
        (self.hasher.hash_one(ip) as usize) % SHARDS
    }

    /// Takes a concurrency slot for `ip`, or None when it already holds `max` (0 = no limit,
    /// the slot is still counted). The proxy does not call this while the limit is off, so
    /// after a reload turns the limit on, requests and tunnels opened before it are not
    /// counted against it.
    pub fn acquire(&self, ip: IpAddr, max: u32) -> Option<ClientGuard> {
        let shard = self.shard(&ip);
        let mut map = self.shards[shard].lock();
        let n = map.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientGuard {
            shards: self.shards.clone(),
            shard,
            ip,
        })
    }

    /// Counts one request for `ip`; false when it exceeds `per_second` in the current
    /// one-second window (0 = no limit).
    pub fn allow_request(&self, ip: IpAddr, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let seen = self.rate.observe(&ip, 1);
        seen <= i64::from(per_second) as isize
    }

    /// Current concurrent count for `ip` (tests, status).
    pub fn current(&self, ip: IpAddr) -> u32 {
        let shard = self.shard(&ip);
        self.shards[shard].lock().get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_slots_are_returned_on_drop() {
        let l = ClientLimits::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let a = l.acquire(ip, 2).unwrap();
        let _b = l.acquire(ip, 2).unwrap();
        assert!(l.acquire(ip, 2).is_none());
        drop(a);
        assert!(l.acquire(ip, 2).is_some());
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(l.acquire(other, 2).is_some());
    }

    #[test]
    fn rate_limit_counts_within_the_window() {
        let l = ClientLimits::default();
        let ip: IpAddr = "127.0.0.11".parse().unwrap();
        let allowed = (0..10).filter(|_| l.allow_request(ip, 5)).count();
        assert_eq!(allowed, 5);
    }
}

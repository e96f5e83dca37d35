//! Per-client-IP limits: concurrent requests and tunnels, and request rate.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// A shard's rate table is swept of idle addresses when it grows past this, or past twice
/// its size after the last sweep.
const MIN_SWEEP: usize = 1024;

/// Exact per-IP counters and request rates, sharded to keep lock contention low.
pub struct ClientLimits {
    shards: Arc<[Mutex<HashMap<IpAddr, u32>>; SHARDS]>,
    rates: [Mutex<RateShard>; SHARDS],
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
}

/// Each address's theoretical arrival time (GCRA, the virtual-scheduling form of a token
/// bucket), in nanoseconds since [`ClientLimits::epoch`]: an address whose time has passed
/// has its whole burst again, so it needs no entry.
#[derive(Default)]
struct RateShard {
    due: HashMap<IpAddr, u64>,
    sweep_at: usize,
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
            rates: std::array::from_fn(|_| Mutex::new(RateShard::default())),
            epoch: Instant::now(),
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

    /// Counts one request for `ip`; false when it goes over `per_second` (0 = no limit):
    /// an address may send `per_second` requests at once, then one every `1/per_second`
    /// seconds, as nginx's `limit_req` with `burst` and `nodelay`. A refused request does
    /// not count. Exact per address: no address's traffic counts against another's.
    pub fn allow_request(&self, ip: IpAddr, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let interval = 1_000_000_000 / u64::from(per_second);
        let burst = interval * (u64::from(per_second) - 1);
        let mut shard = self.rates[self.shard(&ip)].lock();
        let due = shard.due.get(&ip).map_or(now, |&due| due.max(now));
        if due - now > burst {
            return false;
        }
        shard.due.insert(ip, due.saturating_add(interval));
        if shard.due.len() > shard.sweep_at.max(MIN_SWEEP) {
            // Addresses whose time has passed are as good as new: dropping them bounds the
            // table by the addresses active within the last second, whatever a flood from
            // many addresses sends.
            shard.due.retain(|_, due| *due > now);
            shard.sweep_at = shard.due.len() * 2;
        }
        true
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
    fn rate_limit_allows_a_burst_then_the_rate() {
        let l = ClientLimits::default();
        let ip: IpAddr = "127.0.0.11".parse().unwrap();
        let allowed = (0..10).filter(|_| l.allow_request(ip, 5)).count();
        assert_eq!(allowed, 5);
        // Refused requests did not count: one is allowed again after 1/5 s.
        std::thread::sleep(std::time::Duration::from_millis(210));
        assert!(l.allow_request(ip, 5));
        assert!(!l.allow_request(ip, 5));
    }

    #[test]
    fn every_address_has_its_own_rate() {
        // pingora's `Rate` estimator shares counters between addresses: with thousands
        // active, addresses that sent one request each were refused.
        let l = ClientLimits::default();
        for i in 0..20_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.allow_request(ip, 1), "{ip}");
            assert!(!l.allow_request(ip, 1), "{ip}");
        }
    }

    #[test]
    fn idle_addresses_are_swept() {
        let l = ClientLimits::default();
        for i in 0..50_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.allow_request(ip, 1000));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for i in 0..50_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(l.allow_request(ip, 1000));
        }
        // Each address's 1 ms has passed for the first 50,000: sweeps dropped them.
        let held: usize = l.rates.iter().map(|s| s.lock().due.len()).sum();
        assert!(held < 80_000, "{held}");
    }
}

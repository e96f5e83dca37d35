//! Balancing strategies: one module each, behind [`Strategy`], chosen once per upstream by [`build`].
//!
//! A strategy is built for one upstream's backend list at start-up and at each reload, from
//! the config's [`StrategyKind`]; the request path only calls [`Strategy::pick`]. Live
//! counters (active requests, latency) are read from each backend's shared
//! [`BackendStats`](crate::upstream::BackendStats), never kept here, so rebuilding a
//! strategy on reload resets nothing that matters.
//!
//! - [`round_robin`]: nginx's smooth weighted round robin.
//! - [`least_conn`]: fewest active requests per unit of weight.
//! - [`ip_hash`]: Ketama consistent hashing of the whole client address.
//! - [`sticky_cookie`]: the backend named by a signed cookie, else a fallback strategy.
//! - [`p2c`]: power of two random choices (Envoy's least_request).
//! - [`least_time`]: lowest peak-EWMA latency × load per unit of weight.

use std::cmp::Ordering as CmpOrdering;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::upstream::Backend;

pub mod ip_hash;
pub mod least_conn;
pub mod least_time;
pub mod p2c;
pub mod round_robin;
pub mod sticky_cookie;

pub use ip_hash::IpHash;
pub use least_conn::LeastConn;
pub use least_time::LeastTime;
pub use p2c::P2c;
pub use round_robin::RoundRobin;
pub use sticky_cookie::{CookieSigner, StickyCookie};

/// What a strategy may know about the request it is placing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickContext<'a> {
    /// Client address as the balancer should see it (already resolved from X-Forwarded-For
    /// by the caller when the peer is trusted).
    pub client_ip: Option<IpAddr>,
    /// Backend id from a sticky cookie whose HMAC was verified (None if absent/invalid).
    pub sticky_id: Option<&'a str>,
}

/// A balancing strategy for one upstream's backend list.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> StrategyKind;

    /// Pick one of `backends[i]` for which `eligible(i)` is true. None when none is eligible.
    /// `backends` is the same slice (same order) that the strategy was built with.
    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext,
    ) -> Option<usize>;

    /// Where its rotation stands, for a successor over the same backends ([`Position`]).
    fn position(&self) -> Position {
        Position::None
    }

    /// Goes on from `position`, taken from a strategy of the same kind over the same
    /// backends in the same order.
    fn resume(&self, _position: &Position) {}
}

/// The part of a strategy's state that decides the next pick among equals, carried from a
/// running upstream to its successor when a reload rebuilds it with the same backends and
/// strategy (a changed health check, timeout or DNS refresh period). Without it round robin
/// would start again at the first backend, which would get one request more than its share
/// on every such reload, and least_conn's tie rotation likewise.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// Nothing to carry: stateless (ip_hash) or random (p2c).
    None,
    /// Smooth weighted round robin's current weights, one per backend.
    Weights(Vec<f64>),
    /// Where the next scan for the least loaded backend starts.
    Next(usize),
}

/// The strategies, as named in the config file and on the command line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum StrategyKind {
    RoundRobin,
    LeastConn,
    IpHash,
    StickyCookie,
    P2c,
    LeastTime,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 6] = [
        StrategyKind::RoundRobin,
        StrategyKind::LeastConn,
        StrategyKind::IpHash,
        StrategyKind::StickyCookie,
        StrategyKind::P2c,
        StrategyKind::LeastTime,
    ];

    /// The name used in config files, flags, logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::LeastConn => "least_conn",
            StrategyKind::IpHash => "ip_hash",
            StrategyKind::StickyCookie => "sticky_cookie",
            StrategyKind::P2c => "p2c",
            StrategyKind::LeastTime => "least_time",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Built once per upstream (at start-up and at each reload) for the given backend list.
///
/// `sticky_fallback` is only used by [`StrategyKind::StickyCookie`]: it places requests
/// without a valid cookie (or whose cookie names a backend that cannot take them). A sticky
/// fallback of `sticky_cookie` itself would recurse, so it is taken as `least_conn`.
pub fn build(
    kind: StrategyKind,
    backends: &[Arc<Backend>],
    sticky_fallback: StrategyKind,
) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::RoundRobin => Box::new(RoundRobin::new(backends)),
        StrategyKind::LeastConn => Box::new(LeastConn::new(backends)),
        StrategyKind::IpHash => Box::new(IpHash::new(backends)),
        StrategyKind::StickyCookie => Box::new(StickyCookie::new(backends, sticky_fallback)),
        StrategyKind::P2c => Box::new(P2c::new(backends)),
        StrategyKind::LeastTime => Box::new(LeastTime::new(backends)),
    }
}

/// Compares two loads given as `cost / weight` without dividing, so equal ratios compare
/// equal exactly (2/2 vs 1/1) instead of up to rounding.
#[inline]
fn cmp_load(a_cost: f64, a_weight: f64, b_cost: f64, b_weight: f64) -> CmpOrdering {
    (a_cost * b_weight).total_cmp(&(b_cost * a_weight))
}

/// The scan behind [`least_conn`] and [`least_time`]: the eligible backend with the lowest
/// score, a score being a `(cost, weight)` pair compared as `cost / weight` (see [`cmp_load`]).
///
/// Each scan starts one place after the previous one and keeps the first minimum it meets, so
/// backends that tie take turns instead of the first one in the list getting every tied request.
#[derive(Debug, Default)]
struct RotatingMin {
    /// Where the next scan starts, so tied backends alternate.
    next: AtomicUsize,
}

impl RotatingMin {
    fn position(&self) -> Position {
        Position::Next(self.next.load(Ordering::Relaxed))
    }

    fn resume(&self, position: &Position) {
        if let Position::Next(n) = position {
            self.next.store(*n, Ordering::Relaxed);
        }
    }

    /// Index of the eligible backend with the lowest `load(backend)`.
    ///
    /// `floor(backend)` is a cheap lower bound of `load(backend)`: a backend whose floor already
    /// cannot beat the best so far is skipped without computing its load, which takes the
    /// backend's locks. It must never exceed `load(backend)`.
    #[inline]
    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        floor: impl Fn(&Backend) -> (f64, f64),
        load: impl Fn(&Backend) -> (f64, f64),
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, f64, f64)> = None;
        for k in 0..n {
            let i = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            if !eligible(i) {
                continue;
            }
            let backend: &Backend = &backends[i];
            if let Some((_, bc, bw)) = best {
                let (fc, fw) = floor(backend);
                if cmp_load(fc, fw, bc, bw).is_ge() {
                    continue;
                }
            }
            let (cost, weight) = load(backend);
            match best {
                Some((_, bc, bw)) if cmp_load(cost, weight, bc, bw).is_ge() => {}
                _ => best = Some((i, cost, weight)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// Helpers shared by the strategies' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::{PickContext, Strategy};
    use crate::upstream::Backend;

    /// Backends `b0`, `b1`, … on 127.0.0.1:8000+i with the given weights.
    pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let port = 8000 + u16::try_from(i).unwrap_or(0);
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                Arc::new(Backend::new(format!("b{i}"), addr, w, false))
            })
            .collect()
    }

    pub fn set_active(backends: &[Arc<Backend>], active: &[u64]) {
        for (b, &a) in backends.iter().zip(active) {
            b.stats.active.store(a, Ordering::Relaxed);
        }
    }

    pub fn all(_: usize) -> bool {
        true
    }

    /// `n` picks in a row among the backends `eligible` allows, without a request context.
    ///
    /// # Panics
    /// When a pick finds no backend.
    pub fn picks_from(
        s: &dyn Strategy,
        bs: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        n: usize,
    ) -> Vec<usize> {
        (0..n)
            .map(|_| {
                s.pick(bs, eligible, &PickContext::default())
                    .expect("an eligible backend")
            })
            .collect()
    }

    /// `n` picks in a row among all of `bs`; see [`picks_from`].
    pub fn picks(s: &dyn Strategy, bs: &[Arc<Backend>], n: usize) -> Vec<usize> {
        picks_from(s, bs, &all, n)
    }

    /// One pick among all of `bs`; see [`picks_from`].
    pub fn pick(s: &dyn Strategy, bs: &[Arc<Backend>]) -> usize {
        picks(s, bs, 1)[0]
    }

    /// How many of `n` picks among the backends `eligible` allows went to each backend.
    pub fn counts(
        s: &dyn Strategy,
        bs: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        n: usize,
    ) -> Vec<usize> {
        let mut c = vec![0; bs.len()];
        for i in picks_from(s, bs, eligible, n) {
            c[i] += 1;
        }
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_agree_across_serde_clap_and_as_str() {
        for kind in StrategyKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: StrategyKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, kind);
            assert_eq!(StrategyKind::from_str(kind.as_str(), false).unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(StrategyKind::value_variants(), &StrategyKind::ALL);
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(serde_json::from_str::<StrategyKind>("\"roundrobin\"").is_err());
        assert!(StrategyKind::from_str("least-conn", false).is_err());
    }

    #[test]
    fn build_returns_the_requested_kind() {
        let bs = testutil::backends(&[1, 1, 1]);
        for kind in StrategyKind::ALL {
            let s = build(kind, &bs, StrategyKind::LeastConn);
            assert_eq!(s.kind(), kind);
            let i = s.pick(&bs, &testutil::all, &PickContext::default());
            assert!(i.is_some_and(|i| i < bs.len()), "{kind}: {i:?}");
            assert_eq!(s.pick(&bs, &|_| false, &PickContext::default()), None);
        }
    }

    #[test]
    fn empty_backend_list_picks_nothing() {
        for kind in StrategyKind::ALL {
            let s = build(kind, &[], StrategyKind::RoundRobin);
            assert_eq!(s.pick(&[], &testutil::all, &PickContext::default()), None);
        }
    }

    #[test]
    fn cmp_load_is_exact_for_equal_ratios() {
        assert_eq!(cmp_load(2.0, 2.0, 1.0, 1.0), CmpOrdering::Equal);
        assert_eq!(cmp_load(0.0, 5.0, 0.0, 1.0), CmpOrdering::Equal);
        assert_eq!(cmp_load(1.0, 3.0, 1.0, 2.0), CmpOrdering::Less);
    }
}

//! Client-address affinity: Ketama consistent hashing of the whole client address.

use std::net::IpAddr;
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{PickContext, Strategy, StrategyKind};
use crate::upstream::Backend;

/// Ring points per unit of configured weight (Ketama's usual 160).
pub const POINTS_PER_WEIGHT: u64 = 160;
/// Upper bound on the ring's size (16 bytes a point: 4 MiB). Reached only with large
/// weights (a total above about 1600); then every backend's share of points is divided by
/// the same power of two.
pub const MAX_POINTS: u64 = 1 << 18;

/// Consistent hashing of the client address onto a Ketama ring.
///
/// Unlike nginx's `ip_hash`, which hashes only the first three octets of an IPv4 address
/// (so every 127.0.0.x or every client behind one /24 lands on one backend), this hashes
/// all 4 (IPv4) or 16 (IPv6) bytes. Ring points are derived from each backend's `id`, not
/// its position, so a ring rebuilt from a reordered or shortened list places every
/// remaining client exactly where it was. An ineligible backend's clients walk clockwise
/// to the next eligible point; nobody else moves.
#[derive(Debug)]
pub struct IpHash {
    /// Sorted ring positions.
    points: Vec<u64>,
    /// `owners[k]` is the index (into the build-time slice) of the backend at `points[k]`.
    owners: Vec<u32>,
}

impl IpHash {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let total: u64 = backends
            .iter()
            .map(|b| u64::from(b.weight) * POINTS_PER_WEIGHT)
            .sum();
        // A power of two, so that a backend added or removed leaves the others' points as
        // they were unless the total crosses one: scaled by MAX_POINTS / total, every change
        // of the list changed every backend's count, and clients moved between backends
        // that all stayed.
        let shift = (0..u64::BITS)
            .find(|&s| total >> s <= MAX_POINTS)
            .unwrap_or(u64::BITS - 1);
        let mut ring: Vec<(u64, &str, u32)> =
            Vec::with_capacity((total >> shift) as usize + backends.len());
        for (i, b) in backends.iter().enumerate() {
            let n = ((u64::from(b.weight) * POINTS_PER_WEIGHT) >> shift).max(1);
            let Ok(owner) = u32::try_from(i) else { break };
            for seed in 0..n {
                ring.push((
                    xxh3_64_with_seed(b.id.as_bytes(), seed),
                    b.id.as_str(),
                    owner,
                ));
            }
        }
        // Order equal points by id too, so the ring never depends on the list's order.
        ring.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        Self {
            points: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.2).collect(),
        }
    }

    /// The ring position of a client.
    fn key(ip: Option<IpAddr>) -> u64 {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => xxh3_64(&v4.octets()),
            Some(IpAddr::V6(v6)) => xxh3_64(&v6.octets()),
            // No address: one fixed key, so such requests at least agree with each other.
            None => 0,
        }
    }
}

impl Strategy for IpHash {
    fn kind(&self) -> StrategyKind {
        StrategyKind::IpHash
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        ctx: &PickContext,
    ) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let h = Self::key(ctx.client_ip);
        let start = self.points.partition_point(|&p| p < h);
        let mut misses = 0;
        for k in 0..len {
            let slot = (start + k) % len;
            let i = self.owners[slot] as usize;
            if i < backends.len() && eligible(i) {
                return Some(i);
            }
            misses += 1;
            // With nothing eligible the walk would visit every point (160 per backend):
            // after as many misses as there are backends, check once whether it can end.
            if misses == backends.len() && !(0..backends.len()).any(eligible) {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::testutil::{all, backends};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// 1000 distinct addresses 127.0.x.y.
    fn clients() -> Vec<IpAddr> {
        (0..1000u16)
            .map(|i| {
                let x = u8::try_from(i / 250).unwrap();
                let y = u8::try_from(i % 250).unwrap() + 1;
                IpAddr::V4(Ipv4Addr::new(127, 0, x, y))
            })
            .collect()
    }

    fn map(s: &IpHash, bs: &[Arc<Backend>], eligible: &dyn Fn(usize) -> bool) -> Vec<String> {
        clients()
            .into_iter()
            .map(|ip| {
                let ctx = PickContext {
                    client_ip: Some(ip),
                    sticky_id: None,
                };
                bs[s.pick(bs, eligible, &ctx).unwrap()].id.clone()
            })
            .collect()
    }

    #[test]
    fn spreads_full_addresses_over_backends() {
        let bs = backends(&[1, 1, 1]);
        let s = IpHash::new(&bs);
        let m = map(&s, &bs, &all);
        for b in &bs {
            let share = m.iter().filter(|id| **id == b.id).count();
            assert!((200..=470).contains(&share), "{}: {share}/1000", b.id);
        }
    }

    #[test]
    fn same_client_same_backend() {
        let bs = backends(&[1, 1, 1]);
        let s = IpHash::new(&bs);
        assert_eq!(map(&s, &bs, &all), map(&s, &bs, &all));
    }

    #[test]
    fn ineligible_backend_remaps_only_its_own_clients() {
        let bs = backends(&[1, 1, 1]);
        let s = IpHash::new(&bs);
        let before = map(&s, &bs, &all);
        let after = map(&s, &bs, &|i| i != 1);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(a, "b1");
            if b == "b1" {
                moved += 1;
            } else {
                assert_eq!(a, b, "a client of another backend moved");
            }
        }
        assert!((200..=470).contains(&moved), "remapped {moved}/1000");
        // The orphans spread over both survivors, not all onto one.
        let to_b0 = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| *b == "b1" && *a == "b0")
            .count();
        assert!(to_b0 > 0 && to_b0 < moved, "{to_b0} of {moved} went to b0");
    }

    #[test]
    fn rebuild_without_backend_equals_marking_it_ineligible() {
        let bs = backends(&[1, 1, 1]);
        let s = IpHash::new(&bs);
        let ineligible = map(&s, &bs, &|i| i != 1);
        // A different list, in a different order, without b1.
        let rest = vec![bs[2].clone(), bs[0].clone()];
        let rebuilt = IpHash::new(&rest);
        assert_eq!(map(&rebuilt, &rest, &all), ineligible);
    }

    #[test]
    fn order_of_the_list_does_not_matter() {
        let bs = backends(&[1, 2, 1]);
        let reversed: Vec<_> = bs.iter().rev().cloned().collect();
        let a = IpHash::new(&bs);
        let b = IpHash::new(&reversed);
        assert_eq!(map(&a, &bs, &all), map(&b, &reversed, &all));
    }

    #[test]
    fn weight_scales_the_share() {
        let bs = backends(&[3, 1]);
        let s = IpHash::new(&bs);
        let m = map(&s, &bs, &all);
        let heavy = m.iter().filter(|id| *id == "b0").count();
        assert!((650..=850).contains(&heavy), "{heavy}/1000");
    }

    #[test]
    fn ipv4_uses_all_octets_and_ipv6_all_bytes() {
        // Addresses differing only in the last octet (or last IPv6 byte) must not all share
        // a key, as they would with nginx's three-octet hash.
        let v4: std::collections::HashSet<u64> = (1..=50u8)
            .map(|d| IpHash::key(Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, d)))))
            .collect();
        assert_eq!(v4.len(), 50);
        let v6: std::collections::HashSet<u64> = (1..=50u16)
            .map(|d| IpHash::key(Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, d)))))
            .collect();
        assert_eq!(v6.len(), 50);
        // An IPv4-mapped IPv6 address is the same client as its IPv4 form.
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            IpHash::key(Some(IpAddr::V6(v4.to_ipv6_mapped()))),
            IpHash::key(Some(IpAddr::V4(v4)))
        );
    }

    #[test]
    fn missing_address_is_stable_and_walks_to_an_eligible_backend() {
        let bs = backends(&[1, 1, 1]);
        let s = IpHash::new(&bs);
        let ctx = PickContext::default();
        let first = s.pick(&bs, &all, &ctx).unwrap();
        for _ in 0..5 {
            assert_eq!(s.pick(&bs, &all, &ctx), Some(first));
        }
        let other = s.pick(&bs, &|i| i != first, &ctx).unwrap();
        assert_ne!(other, first);
    }

    #[test]
    fn none_eligible_is_none() {
        let bs = backends(&[1, 1, 1]);
        let s = IpHash::new(&bs);
        let ctx = PickContext {
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
            sticky_id: None,
        };
        assert_eq!(s.pick(&bs, &|_| false, &ctx), None);
        assert_eq!(s.pick(&bs, &|i| i == 2, &ctx), Some(2));
    }

    #[test]
    fn on_a_scaled_ring_removing_a_backend_moves_only_its_clients() {
        // Weights whose points exceed MAX_POINTS: the ring is scaled down. Removing one
        // backend must not rescale the others' points, or clients move between survivors.
        let bs = backends(&[100; 20]);
        const _: () = assert!(20 * 100 * POINTS_PER_WEIGHT > MAX_POINTS);
        let s = IpHash::new(&bs);
        let ineligible = map(&s, &bs, &|i| i != 7);
        let rest: Vec<_> = bs
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != 7)
            .map(|(_, b)| b.clone())
            .collect();
        let rebuilt = IpHash::new(&rest);
        let moved = map(&rebuilt, &rest, &all)
            .iter()
            .zip(&ineligible)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(moved, 0, "clients moved between backends that stayed");
    }

    #[test]
    fn ring_size_is_bounded() {
        let bs = backends(&[u32::MAX, 1]);
        let s = IpHash::new(&bs);
        assert!(s.points.len() as u64 <= MAX_POINTS + 2);
        // The light backend keeps at least one point.
        assert!(s.owners.contains(&1));
    }
}

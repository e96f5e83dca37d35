//! Power of two random choices (Envoy's least_request): the less loaded of two random backends.

use std::sync::Arc;

use rand::Rng;

use super::{cmp_load, PickContext, Strategy, StrategyKind};
use crate::upstream::Backend;

/// Random draws tried per choice before falling back to a scan. Enough that a few ineligible
/// backends rarely force the scan, few enough that a mostly-ineligible list stays cheap.
const DRAWS: usize = 4;

/// Draws two distinct eligible backends at random and takes the one with the lower
/// `active / effective_weight`.
///
/// Needs no shared state between picks (no lock, no shared counter), and because each pick
/// only compares two backends, a backend whose count is briefly stale (or many proxies
/// acting on the same counts) does not attract a herd the way a strict least_conn can.
#[derive(Debug, Default)]
pub struct P2c;

impl P2c {
    pub fn new(_backends: &[Arc<Backend>]) -> Self {
        Self
    }
}

/// A random eligible index other than `exclude`: a few random draws, then a scan from a
/// random start so that the few eligible ones are still found.
fn choose(
    n: usize,
    exclude: Option<usize>,
    eligible: &dyn Fn(usize) -> bool,
    rng: &mut impl Rng,
) -> Option<usize> {
    // Number of candidates once `exclude` is left out.
    let m = n - usize::from(exclude.is_some());
    if m == 0 {
        return None;
    }
    // Maps 0..m onto 0..n skipping `exclude`, so draws are uniform over the others.
    let skip = |j: usize| match exclude {
        Some(x) if j >= x => j + 1,
        _ => j,
    };
    for _ in 0..DRAWS {
        let i = skip(rng.random_range(0..m));
        if eligible(i) {
            return Some(i);
        }
    }
    let start = rng.random_range(0..m);
    (0..m).map(|k| skip((start + k) % m)).find(|&i| eligible(i))
}

impl Strategy for P2c {
    fn kind(&self) -> StrategyKind {
        StrategyKind::P2c
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext,
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let mut rng = rand::rng();
        let a = choose(n, None, eligible, &mut rng)?;
        let Some(b) = choose(n, Some(a), eligible, &mut rng) else {
            // The only eligible backend.
            return Some(a);
        };
        let (ba, bb) = (&backends[a], &backends[b]);
        // Counts stay far below 2^53, so the conversion is exact. Ties go to `a`, itself
        // a random choice.
        let load = cmp_load(
            bb.active() as f64,
            bb.effective_weight(),
            ba.active() as f64,
            ba.effective_weight(),
        );
        Some(if load.is_lt() { b } else { a })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::testutil::{all, backends, counts, set_active};

    #[test]
    fn loaded_backend_is_avoided() {
        let bs = backends(&[1, 1, 1]);
        let s = P2c::new(&bs);
        set_active(&bs, &[0, 100, 0]);
        let c = counts(&s, &bs, &all, 1000);
        // The loaded one only wins when drawn against itself, which distinct draws forbid.
        assert!(c[1] < 50, "{c:?}");
        assert_eq!(c[1], 0, "{c:?}");
        // The two idle ones share the rest.
        assert!(c[0] > 300 && c[2] > 300, "{c:?}");
    }

    #[test]
    fn idle_backends_spread_evenly() {
        let bs = backends(&[1, 1, 1, 1]);
        let s = P2c::new(&bs);
        let c = counts(&s, &bs, &all, 4000);
        for &x in &c {
            assert!((800..=1200).contains(&x), "{c:?}");
        }
    }

    #[test]
    fn load_is_divided_by_weight() {
        let bs = backends(&[4, 1]);
        let s = P2c::new(&bs);
        // 3/4 < 1/1: the heavy backend wins every time both are drawn (always, with two).
        set_active(&bs, &[3, 1]);
        assert_eq!(counts(&s, &bs, &all, 200), [200, 0]);
        set_active(&bs, &[5, 1]);
        assert_eq!(counts(&s, &bs, &all, 200), [0, 200]);
    }

    #[test]
    fn single_eligible_backend_is_chosen() {
        let bs = backends(&[1, 1, 1, 1, 1, 1, 1, 1]);
        let s = P2c::new(&bs);
        set_active(&bs, &[0, 0, 0, 0, 0, 50, 0, 0]);
        // Even the most loaded one, when it is the only one eligible.
        assert_eq!(counts(&s, &bs, &|i| i == 5, 200)[5], 200);
        let one = backends(&[1]);
        assert_eq!(counts(&s, &one, &all, 10), [10]);
    }

    #[test]
    fn few_eligible_among_many_are_found() {
        let bs = backends(&[1; 100]);
        let s = P2c::new(&bs);
        set_active(&bs, &[0; 100]);
        bs[97]
            .stats
            .active
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let eligible = |i: usize| i == 3 || i == 97;
        let c = counts(&s, &bs, &eligible, 300);
        // Both are always compared, so the idle one always wins.
        assert_eq!(c[3], 300, "{c:?}");
    }

    #[test]
    fn none_eligible_is_none() {
        let bs = backends(&[1, 1, 1]);
        let s = P2c::new(&bs);
        assert_eq!(s.pick(&bs, &|_| false, &PickContext::default()), None);
        assert_eq!(s.pick(&[], &all, &PickContext::default()), None);
    }
}

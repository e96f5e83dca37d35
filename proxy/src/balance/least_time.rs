//! Least time: lowest peak-EWMA latency × (active + 1) per unit of weight; ties take turns.

use std::sync::Arc;

use super::{PickContext, Position, RotatingMin, Strategy, StrategyKind};
use crate::upstream::Backend;

/// Picks the eligible backend with the lowest `ewma_us × (active + 1) / effective_weight`:
/// the expected wait if the request joined that backend's queue (Finagle's and Linkerd's
/// peak-EWMA balancer, scanned over all backends instead of two).
///
/// The `+ 1` counts the request being placed, so an idle slow backend still compares by
/// its latency instead of scoring 0. A backend with no sample yet scores with
/// [`PeakEwma::DEFAULT_US`](crate::upstream::backend::PeakEwma::DEFAULT_US), so it gets
/// traffic and with it a real estimate.
#[derive(Debug, Default)]
pub struct LeastTime {
    scan: RotatingMin,
}

impl LeastTime {
    pub fn new(_backends: &[Arc<Backend>]) -> Self {
        Self::default()
    }
}

impl Strategy for LeastTime {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastTime
    }

    fn position(&self) -> Position {
        self.scan.position()
    }

    fn resume(&self, position: &Position) {
        self.scan.resume(position);
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext,
    ) -> Option<usize> {
        // No useful lock-free lower bound here (the latency could be anything), so the
        // floor is 0 and every eligible backend is scored.
        self.scan.pick(
            backends,
            eligible,
            |_| (0.0, 1.0),
            |b| {
                let cost = b.stats.ewma.get_us() * (b.active() as f64 + 1.0);
                (cost, b.effective_weight())
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::testutil::{all, backends, pick, picks, set_active};
    use crate::upstream::backend::PeakEwma;
    use std::time::Duration;

    #[test]
    fn faster_backend_wins_despite_more_active() {
        let bs = backends(&[1, 1]);
        let s = LeastTime::new(&bs);
        bs[0].stats.ewma.observe(Duration::from_millis(10));
        bs[1].stats.ewma.observe(Duration::from_millis(1));
        // 10_000 × 1 = 10_000 vs 1_000 × (3 + 1) = 4_000.
        set_active(&bs, &[0, 3]);
        assert_eq!(picks(&s, &bs, 4), [1; 4]);
        // 10_000 × 1 vs 1_000 × 9 = 9_000: still the fast one.
        set_active(&bs, &[0, 8]);
        assert_eq!(pick(&s, &bs), 1);
        // 10_000 × 1 vs 1_000 × 11 = 11_000: now the slow idle one.
        set_active(&bs, &[0, 10]);
        assert_eq!(picks(&s, &bs, 4), [0; 4]);
    }

    #[test]
    fn no_sample_scores_with_the_default() {
        assert_eq!(PeakEwma::DEFAULT_US, 1_000.0);
        let bs = backends(&[1, 1, 1]);
        let s = LeastTime::new(&bs);
        // b0: no sample (1_000 µs); b1: 2 ms; b2: 0.5 ms.
        bs[1].stats.ewma.observe(Duration::from_millis(2));
        bs[2].stats.ewma.observe(Duration::from_micros(500));
        assert_eq!(picks(&s, &bs, 3), [2; 3]);
        assert_eq!(s.pick(&bs, &|i| i != 2, &PickContext::default()), Some(0));
        // 1_000 × 3 = 3_000 vs 2_000 × 1: the sampled 2 ms one.
        set_active(&bs, &[2, 0, 0]);
        assert_eq!(s.pick(&bs, &|i| i != 2, &PickContext::default()), Some(1));
    }

    #[test]
    fn cost_is_divided_by_weight() {
        let bs = backends(&[3, 1]);
        let s = LeastTime::new(&bs);
        // Both without samples: 1_000 × 2 / 3 ≈ 667 vs 1_000 × 1 / 1.
        set_active(&bs, &[1, 0]);
        assert_eq!(picks(&s, &bs, 4), [0; 4]);
        // 1_000 × 4 / 3 ≈ 1_333 vs 1_000.
        set_active(&bs, &[3, 0]);
        assert_eq!(pick(&s, &bs), 1);
    }

    #[test]
    fn ties_alternate() {
        let bs = backends(&[1, 1, 1]);
        let s = LeastTime::new(&bs);
        assert_eq!(picks(&s, &bs, 6), [0, 1, 2, 0, 1, 2]);
        // 1_000 × (2 + 1) / 3 equals 1_000 × 1 / 1 exactly: a tie.
        let weighted = backends(&[3, 1]);
        let s = LeastTime::new(&weighted);
        set_active(&weighted, &[2, 0]);
        let got = picks(&s, &weighted, 4);
        assert_eq!(got.iter().filter(|&&i| i == 0).count(), 2, "{got:?}");
    }

    #[test]
    fn ineligible_are_skipped_and_none_when_all_are() {
        let bs = backends(&[1, 1]);
        let s = LeastTime::new(&bs);
        bs[1].stats.ewma.observe(Duration::from_micros(100));
        let ctx = PickContext::default();
        assert_eq!(s.pick(&bs, &all, &ctx), Some(1));
        assert_eq!(s.pick(&bs, &|i| i == 0, &ctx), Some(0));
        assert_eq!(s.pick(&bs, &|_| false, &ctx), None);
    }
}

//! Least connections: fewest active requests and tunnels per unit of weight; ties take turns.

use std::sync::Arc;

use super::{PickContext, Position, RotatingMin, Strategy, StrategyKind};
use crate::upstream::Backend;

/// Picks the eligible backend with the lowest `active / effective_weight`.
///
/// The counts live in each backend's shared stats (an open WebSocket counts for its whole
/// life), not here, so a rebuilt strategy sees the same counts as the old one.
#[derive(Debug, Default)]
pub struct LeastConn {
    scan: RotatingMin,
}

impl LeastConn {
    pub fn new(_backends: &[Arc<Backend>]) -> Self {
        Self::default()
    }
}

impl Strategy for LeastConn {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastConn
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
        // Counts stay far below 2^53, so the conversions are exact. The effective weight
        // never exceeds the configured one, so `active / weight` is a lower bound that
        // needs no lock: most backends that cannot win are ruled out on it alone.
        self.scan.pick(
            backends,
            eligible,
            |b| (b.active() as f64, f64::from(b.weight)),
            |b| (b.active() as f64, b.effective_weight()),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::testutil::{all, backends, counts, pick, picks, set_active};

    #[test]
    fn picks_the_least_loaded() {
        let bs = backends(&[1, 1, 1]);
        let lc = LeastConn::new(&bs);
        set_active(&bs, &[2, 2, 0]);
        assert_eq!(picks(&lc, &bs, 5), [2; 5]);
        set_active(&bs, &[3, 1, 2]);
        assert_eq!(pick(&lc, &bs), 1);
    }

    #[test]
    fn load_is_divided_by_weight() {
        let bs = backends(&[1, 3]);
        let lc = LeastConn::new(&bs);
        // 1/1 > 2/3
        set_active(&bs, &[1, 2]);
        assert_eq!(picks(&lc, &bs, 4), [1; 4]);
        // 1/1 < 4/3
        set_active(&bs, &[1, 4]);
        assert_eq!(picks(&lc, &bs, 4), [0; 4]);
        // 1/1 == 3/3 exactly: a tie, so they alternate.
        set_active(&bs, &[1, 3]);
        let got = picks(&lc, &bs, 4);
        assert_eq!(got.iter().filter(|&&i| i == 0).count(), 2, "{got:?}");
        assert_ne!(got[0], got[1]);
    }

    #[test]
    fn ties_alternate() {
        let bs = backends(&[1, 1, 1]);
        let lc = LeastConn::new(&bs);
        assert_eq!(picks(&lc, &bs, 6), [0, 1, 2, 0, 1, 2]);

        // Two tied at 0, one busy: the two idle ones share the traffic.
        set_active(&bs, &[0, 5, 0]);
        let c = counts(&lc, &bs, &all, 300);
        assert_eq!(c[1], 0);
        assert!(c[0] >= 100 && c[2] >= 100, "{c:?}");
    }

    #[test]
    fn ineligible_are_skipped_and_none_when_all_are() {
        let bs = backends(&[1, 1, 1]);
        let lc = LeastConn::new(&bs);
        set_active(&bs, &[2, 2, 0]);
        let ctx = PickContext::default();
        for _ in 0..4 {
            assert_ne!(lc.pick(&bs, &|i| i != 2, &ctx), Some(2));
            assert!(lc.pick(&bs, &|i| i != 2, &ctx).is_some());
        }
        assert_eq!(lc.pick(&bs, &|i| i == 0, &ctx), Some(0));
        assert_eq!(lc.pick(&bs, &|_| false, &ctx), None);
    }

    #[test]
    fn slow_start_weight_counts() {
        use crate::upstream::backend::Health;
        use std::time::Duration;
        let bs = backends(&[1, 1]);
        let lc = LeastConn::new(&bs);
        // b0 just recovered: its weight ramps from 5% over an hour.
        bs[0].stats.set_health(Health::Down, None);
        bs[0]
            .stats
            .set_health(Health::Up, Some(Duration::from_secs(3600)));
        assert!(bs[0].effective_weight() < 0.06);
        // 1 / 0.05 = 20 > 5 / 1, though 1 / 1 (its configured weight) would win.
        set_active(&bs, &[1, 5]);
        assert_eq!(picks(&lc, &bs, 4), [1; 4]);
        // Idle, it is as good as any: 0 / 0.05 = 0 / 1.
        set_active(&bs, &[0, 0]);
        let got = picks(&lc, &bs, 4);
        assert_eq!(got.iter().filter(|&&i| i == 0).count(), 2, "{got:?}");
    }

    #[test]
    fn counts_survive_a_rebuild() {
        let bs = backends(&[1, 1, 1]);
        set_active(&bs, &[4, 0, 4]);
        let old = LeastConn::new(&bs);
        assert_eq!(pick(&old, &bs), 1);
        let rebuilt = LeastConn::new(&bs);
        assert_eq!(pick(&rebuilt, &bs), 1);
    }
}

//! Smooth weighted round robin, nginx's algorithm: weights 5,1,1 give a a b a c a a.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{PickContext, Position, Strategy, StrategyKind};
use crate::upstream::Backend;

/// nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`).
///
/// Each pick adds every eligible backend's effective weight to its current weight, takes
/// the backend with the largest current weight and subtracts the total from it. Heavier
/// backends are picked more often but interleaved with the others rather than in bursts.
/// Weights are `f64` because slow start ramps them through fractions.
#[derive(Debug)]
pub struct RoundRobin {
    current: Mutex<Vec<f64>>,
}

impl RoundRobin {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        Self {
            current: Mutex::new(vec![0.0; backends.len()]),
        }
    }
}

impl Strategy for RoundRobin {
    fn kind(&self) -> StrategyKind {
        StrategyKind::RoundRobin
    }

    fn position(&self) -> Position {
        Position::Weights(self.current.lock().clone())
    }

    fn resume(&self, position: &Position) {
        let mut current = self.current.lock();
        if let Position::Weights(w) = position {
            if w.len() == current.len() {
                current.copy_from_slice(w);
            }
        }
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        _ctx: &PickContext,
    ) -> Option<usize> {
        let mut current = self.current.lock();
        // Only differs if a caller broke the "same slice" contract; stay safe rather than
        // index out of bounds.
        if current.len() != backends.len() {
            current.resize(backends.len(), 0.0);
        }
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for (i, backend) in backends.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let w = backend.effective_weight();
            current[i] += w;
            total += w;
            // Strictly greater: the first of equal peers wins, as in nginx.
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::balance::testutil::{all, backends, counts, picks_from};

    /// `n` picks as letters: `a` for the first backend, `b` for the second…
    fn sequence(
        rr: &RoundRobin,
        bs: &[Arc<Backend>],
        eligible: &dyn Fn(usize) -> bool,
        n: usize,
    ) -> String {
        picks_from(rr, bs, eligible, n)
            .into_iter()
            .map(|i| char::from(b'a' + u8::try_from(i).unwrap()))
            .collect()
    }

    #[test]
    fn weights_5_1_1_give_nginx_sequence() {
        let bs = backends(&[5, 1, 1]);
        let rr = RoundRobin::new(&bs);
        assert_eq!(sequence(&rr, &bs, &all, 7), "aabacaa");
        // The current weights are back to zero after a full cycle, so it repeats exactly.
        assert_eq!(sequence(&rr, &bs, &all, 14), "aabacaaaabacaa");
    }

    #[test]
    fn equal_weights_alternate() {
        let bs = backends(&[1, 1, 1]);
        let rr = RoundRobin::new(&bs);
        assert_eq!(sequence(&rr, &bs, &all, 6), "abcabc");
    }

    #[test]
    fn weights_2_1_interleave() {
        let bs = backends(&[2, 1]);
        let rr = RoundRobin::new(&bs);
        assert_eq!(sequence(&rr, &bs, &all, 6), "abaaba");
    }

    #[test]
    fn ineligible_backend_is_skipped() {
        let bs = backends(&[5, 1, 1]);
        let rr = RoundRobin::new(&bs);
        // Without `a`, b and c (1:1) alternate.
        assert_eq!(sequence(&rr, &bs, &|i| i != 0, 4), "bcbc");
        let only_c = sequence(&rr, &bs, &|i| i == 2, 3);
        assert_eq!(only_c, "ccc");
    }

    #[test]
    fn all_ineligible_is_none() {
        let bs = backends(&[5, 1, 1]);
        let rr = RoundRobin::new(&bs);
        assert_eq!(rr.pick(&bs, &|_| false, &PickContext::default()), None);
        // A failed pick leaves the state untouched.
        assert_eq!(sequence(&rr, &bs, &all, 7), "aabacaa");
    }

    #[test]
    fn distribution_follows_weights() {
        let bs = backends(&[3, 2, 1]);
        let rr = RoundRobin::new(&bs);
        assert_eq!(counts(&rr, &bs, &all, 600), [300, 200, 100]);
    }
}

//! The process-wide table of backend stats, keyed by (upstream, address), so that a reload
//! that keeps a backend keeps its counters, health and drain flag.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::queue::WaitQueue;
use super::BackendStats;

#[derive(Debug, Default)]
pub struct StatsRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Arc<BackendStats>>>,
    /// Wait queues by upstream name: requests queued under one config are woken by slots
    /// freed under the next.
    queues: Mutex<HashMap<String, Arc<WaitQueue>>>,
}

impl StatsRegistry {
    pub fn get_or_insert(
        &self,
        upstream: &str,
        addr: SocketAddr,
        start_up: bool,
    ) -> Arc<BackendStats> {
        self.map
            .lock()
            .entry((upstream.to_string(), addr))
            .or_insert_with(|| Arc::new(BackendStats::new(start_up)))
            .clone()
    }

    pub fn queue(&self, upstream: &str) -> Arc<WaitQueue> {
        self.queues
            .lock()
            .entry(upstream.to_string())
            .or_default()
            .clone()
    }

    /// Drops the entries that no config names and nothing uses any more. An entry still
    /// held elsewhere (an open tunnel's or an in-flight request's count, a request running
    /// under an older config) stays: a reload that adds its backend back finds the counts
    /// of what is still open on it, where a fresh entry would start from zero and least_conn
    /// would pile new requests onto it.
    pub fn retain(&self, keep: impl Fn(&str, &SocketAddr) -> bool) {
        self.map
            .lock()
            .retain(|(u, a), stats| keep(u, a) || Arc::strong_count(stats) > 1);
        // A queue goes with its upstream, once no request or backend holds it.
        self.queues.lock().retain(|_, q| Arc::strong_count(q) > 1);
    }
}

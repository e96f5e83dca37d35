//! The process-wide table of backend stats, keyed by (upstream, address), so that a reload
//! that keeps a backend keeps its counters, health and drain flag.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::BackendStats;

#[derive(Debug, Default)]
pub struct StatsRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Arc<BackendStats>>>,
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

    /// Drops entries no longer referenced by any config (open tunnels keep their own Arc).
    pub fn retain(&self, keep: impl Fn(&str, &SocketAddr) -> bool) {
        self.map.lock().retain(|(u, a), _| keep(u, a));
    }
}

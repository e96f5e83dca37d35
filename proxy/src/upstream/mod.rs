//! Upstream groups: their backends, their strategy, and the choice of a backend for one
//! request (health, draining, backup tiers, retries and passive-check probes).

pub mod backend;
pub mod registry;
pub mod stream;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use backend::{ActiveGuard, Backend, BackendStats, Health};
pub use registry::StatsRegistry;

use crate::admin::metrics::{BackendMetrics, Metrics};
use crate::balance::{self, CookieSigner, PickContext, Strategy, StrategyKind};
use crate::config::UpstreamConfig;

/// One upstream group as built from the current config.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    /// Primaries first, then backups (the order of the config within each tier).
    pub backends: Vec<Arc<Backend>>,
    pub strategy: Box<dyn Strategy>,
    pub config: UpstreamConfig,
    /// Set when the strategy is sticky_cookie.
    pub signer: Option<CookieSigner>,
    /// Metric handles, indexed like `backends`.
    pub metrics: Vec<BackendMetrics>,
    /// Set when the backends speak TLS.
    pub tls: Option<Arc<tls::TlsClient>>,
}

/// The outcome of a pick.
#[derive(Debug)]
pub struct Pick {
    pub index: usize,
    pub backend: Arc<Backend>,
    /// This request is the single probe sent to a passively-failed backend: the number of
    /// its claim on the probe slot.
    pub probe: Option<u64>,
}

impl Upstream {
    /// Builds the group, reusing live stats from `registry` so counters and health survive
    /// reloads.
    pub fn build(config: &UpstreamConfig, registry: &StatsRegistry, metrics: &Metrics) -> Self {
        let active_checks = config.health.active.is_some();
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        for b in &config.backends {
            let stats = registry.get_or_insert(&config.name, b.addr, !active_checks);
            // A backend kept from a config with active checks may still wait for its first
            // pass; without checks nothing would ever give it one.
            if !active_checks && stats.health() == Health::Pending {
                stats.set_health(Health::Up, None);
            }
            let backend = Arc::new(Backend {
                id: b.id.clone(),
                addr: b.addr,
                weight: b.weight.max(1),
                backup: b.backup,
                stats,
            });
            if b.backup {
                backups.push(backend);
            } else {
                primaries.push(backend);
            }
        }
        primaries.extend(backups);
        let backends = primaries;
        let strategy = balance::build(config.strategy, &backends, config.sticky.fallback);
        let signer = (config.strategy == StrategyKind::StickyCookie)
            .then(|| CookieSigner::new(&config.sticky.key, &config.name));
        let metrics = backends
            .iter()
            .map(|b| {
                metrics.for_backend(&config.name, &b.addr.to_string(), config.strategy.as_str())
            })
            .collect();
        Self {
            name: config.name.clone(),
            backends,
            strategy,
            config: config.clone(),
            signer,
            metrics,
            tls: config
                .tls
                .as_ref()
                .map(|t| Arc::new(tls::TlsClient::new(t, &config.backends))),
        }
    }

    fn slow_start(&self) -> Option<Duration> {
        self.config.slow_start
    }

    /// Chooses a backend for a request. `tried` holds the indices that already failed for
    /// this request. Backups are eligible only while no primary is.
    ///
    /// Without active checks, a backend that passive checks took out gets one probe request
    /// per fail window, even while others are healthy (otherwise it would never come back).
    /// It is offered to the strategy like a usable backend, so the probe is a request the
    /// strategy would send it anyway: one whose sticky cookie or client address maps to it,
    /// or its turn. Handing it the first request that came, whatever its cookie or address,
    /// moved a pinned client to it (and, once it answered, re-pinned the client there). A
    /// down primary is offered even while backups serve, a down backup only while they do.
    /// A failed probe was never sent, so the request is retried elsewhere.
    pub fn pick(&self, ctx: &PickContext, tried: &[usize]) -> Option<Pick> {
        let probes = self.config.health.active.is_none();
        let window = self.config.health.fail_window;
        // Backends whose due probe another request claimed first, between scan and claim.
        let mut taken: Vec<usize> = Vec::new();
        loop {
            let skip = |i: usize| tried.contains(&i) || taken.contains(&i);
            let usable = |i: usize| !skip(i) && self.backends[i].is_available();
            let primary_up = self
                .backends
                .iter()
                .enumerate()
                .any(|(i, b)| !b.backup && usable(i));
            let eligible = |i: usize| -> bool {
                let b = &self.backends[i];
                if b.is_available() {
                    !skip(i) && b.backup != primary_up
                } else {
                    probes && !(b.backup && primary_up) && !skip(i) && b.stats.probe_due(window)
                }
            };
            let index = self.strategy.pick(&self.backends, &eligible, ctx)?;
            let backend = self.backends[index].clone();
            if backend.is_available() {
                return Some(Pick {
                    index,
                    backend,
                    probe: None,
                });
            }
            match backend.stats.try_claim_probe(window) {
                Some(seq) => {
                    return Some(Pick {
                        index,
                        backend,
                        probe: Some(seq),
                    })
                }
                None => taken.push(index),
            }
        }
    }

    /// Passive check: a connection to this backend failed. The only backend of an upstream
    /// is never marked down by it (as in nginx): there is nowhere else to send requests,
    /// and a few failing requests, which any client can cause, would otherwise take the
    /// whole site down for the fail window. Nor is the only one the operator left in
    /// service, the others drained (during a deploy, say), for the same reason. Active
    /// checks still can.
    pub fn report_failure(&self, backend: &Backend) {
        let others_in_service = self
            .backends
            .iter()
            .any(|b| b.addr != backend.addr && !b.stats.is_draining());
        if !others_in_service {
            return;
        }
        if backend
            .stats
            .record_failure(self.config.health.max_fails, self.config.health.fail_window)
        {
            tracing::warn!(upstream = %self.name, backend = %backend.addr, "backend marked down by passive checks");
        }
    }

    /// Passive check: a response or a 101 came back from this backend. With active
    /// checks, only they bring a backend back, after `rise` passes (as in HAProxy): the
    /// answer to a request sent before the backend went down says nothing about it now.
    pub fn report_success(&self, backend: &Backend) {
        let readmit = self.config.health.active.is_none();
        if backend.stats.record_success(self.slow_start(), readmit) {
            tracing::info!(upstream = %self.name, backend = %backend.addr, "backend re-admitted after a successful probe");
        }
    }

    /// Active check result.
    pub fn report_check(&self, backend: &Backend, passed: bool) {
        if let Some(active) = &self.config.health.active {
            if let Some(h) =
                backend
                    .stats
                    .record_check(passed, active.rise, active.fall, self.slow_start())
            {
                tracing::info!(upstream = %self.name, backend = %backend.addr, health = ?h, "health changed");
            }
        }
    }

    pub fn find_backend(&self, key: &str) -> Option<&Arc<Backend>> {
        self.backends
            .iter()
            .find(|b| b.id == key || b.addr.to_string() == key)
    }
}

//! Upstream groups: their backends, their strategy, and the choice of a backend for one
//! request (health, draining, backup tiers, `max_conns`, retries and passive-check probes).

pub mod backend;
pub mod queue;
pub mod registry;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use backend::{ActiveGuard, Backend, BackendStats, Health};
pub use registry::StatsRegistry;

use crate::admin::metrics::{BackendMetrics, Metrics};
use crate::balance::{self, CookieSigner, PickContext, Strategy, StrategyKind};
use crate::config::UpstreamConfig;
use queue::Waiter;

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
    /// Some backend has a `max_conns`: without one, picks skip every fullness check.
    pub limited: bool,
    /// Where requests wait while every backend is full (`max_queue`); None: `503` at once.
    pub queue: Option<Arc<queue::WaitQueue>>,
    /// Set when the backends speak TLS.
    pub tls: Option<Arc<tls::TlsClient>>,
    /// Set when a change of health left no backend in service, so that the first one back
    /// is told, and a backend's first pass at start-up is not.
    none_in_service: AtomicBool,
}

/// The outcome of a pick.
#[derive(Debug)]
pub struct Pick {
    pub index: usize,
    pub backend: Arc<Backend>,
    /// Counts the request against the backend (least_conn, `max_conns`) until dropped;
    /// for a probe, also holds the backend's probe slot.
    pub guard: ActiveGuard,
}

/// Why a request that waited in the queue left it without a backend.
#[derive(Debug)]
pub enum NotPicked {
    NoBackend(NoBackend),
    /// A reload or DNS refresh replaced the upstream while the request waited: it picks
    /// again under this one, the upstream of that name now, with nothing tried yet, from
    /// its place in the queue (given back to [`Upstream::pick_queued`]).
    Replaced(Arc<Upstream>, Waiter),
}

impl From<NoBackend> for NotPicked {
    fn from(none: NoBackend) -> Self {
        NotPicked::NoBackend(none)
    }
}

impl PartialEq for NotPicked {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NotPicked::NoBackend(a), NotPicked::NoBackend(b)) => a == b,
            (NotPicked::Replaced(a, _), NotPicked::Replaced(b, _)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Why no backend could take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoBackend {
    /// Every backend it may use is down, drained or already tried.
    #[error("no healthy backend")]
    Unavailable,
    /// Every backend of the upstream is drained by the admin: said as such, or an operator
    /// who drained the last one reads "no healthy backend" and looks at health checks.
    #[error("every backend is drained")]
    Drained,
    /// At least one backend could have taken it but for its `max_conns`, and every other
    /// one is unavailable or full too.
    #[error("every backend is at max_conns")]
    Full,
    /// [`NoBackend::Full`], and `max_queue` requests already wait.
    #[error("every backend is at max_conns and the queue is full")]
    QueueFull,
    /// [`NoBackend::Full`] for the whole `queue_timeout`.
    #[error("every backend stayed at max_conns for the queue timeout")]
    QueueTimeout(std::time::Duration),
}

impl NoBackend {
    /// The `rejected_total` label.
    pub fn reason(self) -> &'static str {
        match self {
            NoBackend::Unavailable | NoBackend::Drained => "no_backend",
            NoBackend::Full => "max_conns",
            NoBackend::QueueFull => "max_conns_queue_full",
            NoBackend::QueueTimeout(_) => "max_conns_queue_timeout",
        }
    }

    /// The one-line reason the client gets with its `503`.
    pub fn detail(self, upstream: &str) -> String {
        match self {
            NoBackend::Unavailable => format!("no healthy backend in upstream {upstream}"),
            NoBackend::Drained => format!("every backend of upstream {upstream} is drained"),
            NoBackend::Full => format!("all backends of upstream {upstream} are at max_conns"),
            NoBackend::QueueFull => format!(
                "all backends of upstream {upstream} are at max_conns and its queue is full"
            ),
            NoBackend::QueueTimeout(d) => format!(
                "all backends of upstream {upstream} stayed at max_conns for {} (queue_timeout)",
                crate::config::fmt_duration(d)
            ),
        }
    }
}

impl Upstream {
    /// Builds the group, reusing live stats from `registry` so counters and health survive
    /// reloads.
    pub fn build(config: &UpstreamConfig, registry: &StatsRegistry, metrics: &Metrics) -> Self {
        Self::build_after(config, None, registry, metrics)
    }

    /// [`Upstream::build`] for a config that replaces `previous` (the running group of that
    /// name, whose config differs): its TLS client is kept when the new config would build
    /// the same one ([`tls::TlsClient::keep_or_new`]), and with it the backend connections
    /// it pools. The strategy goes on from the running one's rotation when the backends and
    /// strategy stay the same (`same_rotation`), and starts over otherwise: its positions
    /// are relative to the old backend list.
    pub fn build_after(
        config: &UpstreamConfig,
        previous: Option<&Upstream>,
        registry: &StatsRegistry,
        metrics: &Metrics,
    ) -> Self {
        let active_checks = config.health.active.is_some();
        let queue = config.queue.map(|_| registry.queue(&config.name));
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
                max_conns: u64::from(b.max_conns),
                queue: queue.as_ref().filter(|_| b.max_conns != 0).cloned(),
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
        let limited = backends.iter().any(|b| b.max_conns != 0);
        let strategy = balance::build(config.strategy, &backends, config.sticky.fallback);
        if let Some(p) = previous.filter(|p| same_rotation(&p.config, config)) {
            strategy.resume(&p.strategy.position());
        }
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
            limited,
            queue,
            tls: config.tls.as_ref().map(|t| {
                let previous = previous.and_then(|p| p.tls.as_ref());
                tls::TlsClient::keep_or_new(previous, t, &config.backends)
            }),
            none_in_service: AtomicBool::new(
                previous.is_some_and(|p| p.none_in_service.load(Ordering::Relaxed)),
            ),
        }
    }

    fn slow_start(&self) -> Option<Duration> {
        self.config.slow_start
    }

    /// Chooses a backend for a request and counts the request on it. `tried` holds the
    /// indices that already failed for this request. Backups are eligible only while no
    /// primary is.
    ///
    /// Without active checks, a backend that passive checks took out gets one probe request
    /// per fail window, even while others are healthy (otherwise it would never come back).
    /// It is offered to the strategy like a usable backend, so the probe is a request the
    /// strategy would send it anyway: one whose sticky cookie or client address maps to it,
    /// or its turn. Handing it the first request that came, whatever its cookie or address,
    /// moved a pinned client to it (and, once it answered, re-pinned the client there). A
    /// down primary is offered even while backups serve, a down backup only while they do.
    /// A failed probe was never sent, so the request is retried elsewhere.
    ///
    /// A backend at its `max_conns` is unavailable for this request, as in nginx: a client
    /// pinned to it by a cookie or its address goes elsewhere (a sticky client is re-pinned
    /// there, as when its backend is down: a session started on the new backend should not
    /// bounce back), and once every primary is full the backups take the overflow. A
    /// backend that fills between the strategy's choice and the count (another worker took
    /// its last slot) is left out and the strategy picks again.
    ///
    /// While requests wait in the upstream's queue, a request finds it [`NoBackend::Full`]
    /// whatever the room, so that it queues behind them ([`Self::pick_queued`]).
    pub fn pick(&self, ctx: &PickContext, tried: &[usize]) -> Result<Pick, NoBackend> {
        self.pick_counting(ctx, tried, true)
    }

    /// After a pick found every backend full ([`NoBackend::Full`]): waits in the upstream's
    /// queue for a slot, up to `queue_timeout`. Without a queue, the `Full` stands.
    ///
    /// First come, first served (see [`queue`]): the request picks only when a slot is
    /// offered to it, which happens once every request queued before it holds an offer.
    ///
    /// `carried`: the place of a request that waited under the upstream this one replaced
    /// ([`NotPicked::Replaced`]): it waits on from there, before those that came after it,
    /// until its first deadline.
    pub async fn pick_queued(
        &self,
        ctx: &PickContext<'_>,
        tried: &[usize],
        carried: Option<Waiter>,
    ) -> Result<Pick, NotPicked> {
        let (Some(queue), Some(config)) = (&self.queue, self.config.queue) else {
            // Came over from a config with a queue to one without: it picks as a new request
            // would, and gets the `Full` at once.
            return match carried {
                Some(_) => self.pick(ctx, tried).map_err(NotPicked::from),
                None => Err(NoBackend::Full.into()),
            };
        };
        let waiter = match carried {
            Some(w) if w.is_in(queue) => w,
            _ => {
                let deadline = tokio::time::Instant::now() + config.timeout;
                queue
                    .join(config.max, deadline)
                    .ok_or(NoBackend::QueueFull)?
            }
        };
        // Room no freed slot announced to the queue: one freed between this request's
        // first pick and its joining, a backend that came back into service, or what a
        // reload added.
        queue.offer(self.room(), None);
        // This request may have chosen its upstream just before a reload replaced it, and
        // joined just after the hand-over, which therefore did not wake it. A hand-over
        // from here on wakes it, and the look after each wait sees it.
        if let Some(newer) = queue.replaced(self) {
            return Err(NotPicked::Replaced(newer, waiter));
        }
        loop {
            if tokio::time::timeout_at(waiter.deadline, waiter.turn())
                .await
                .is_err()
            {
                return Err(NoBackend::QueueTimeout(config.timeout).into());
            }
            if let Some(newer) = queue.replaced(self) {
                return Err(NotPicked::Replaced(newer, waiter));
            }
            // A waiting request is not counted again on the full backends.
            match self.pick_counting(ctx, tried, false) {
                // Its slot was taken by a request that came just before the queue had
                // anyone in it, or is on a backend it may not use again: what room there
                // is goes to the waiters behind it.
                Err(NoBackend::Full) => waiter.pass(self.room()),
                other => return other.map_err(NotPicked::from),
            }
        }
    }

    /// Free slots on the backends in service, or on every one not drained while failing
    /// open (`usize::MAX` when one has no limit).
    #[cold]
    fn room(&self) -> usize {
        let open = self.failing_open();
        self.backends
            .iter()
            .filter(|b| b.is_available() || (open && !b.stats.is_draining()))
            .map(|b| match b.max_conns {
                0 => usize::MAX,
                max => usize::try_from(max.saturating_sub(b.active())).unwrap_or(usize::MAX),
            })
            .fold(0, usize::saturating_add)
    }

    fn pick_counting(
        &self,
        ctx: &PickContext,
        tried: &[usize],
        count: bool,
    ) -> Result<Pick, NoBackend> {
        let probes = self.config.health.active.is_none();
        let window = self.config.health.fail_window;
        // Backends whose due probe another request claimed first, between scan and claim.
        let mut taken: Vec<usize> = Vec::new();
        // Usable backends at their limit: a snapshot taken once, grown by lost races. A
        // drained or down backend is left out, so that its open tunnels do not make the
        // refusal read "at max_conns". Unlimited upstreams (the common case) never look.
        let mut full: Vec<usize> = Vec::new();
        if self.limited {
            full.extend((0..self.backends.len()).filter(|&i| {
                let b = &self.backends[i];
                !tried.contains(&i) && b.is_full() && b.is_available()
            }));
            // First come, first served: while requests wait for a slot, a new one queues
            // behind them rather than take one freed for them. Not when no backend is in
            // service: that is a `503` at once, not a wait.
            if count
                && self.queue.as_ref().is_some_and(|q| q.waiting() > 0)
                && self
                    .backends
                    .iter()
                    .enumerate()
                    .any(|(i, b)| !tried.contains(&i) && b.is_available())
            {
                self.count_full(&full, None);
                return Err(NoBackend::Full);
            }
        }
        let result = loop {
            let skip = |i: usize| tried.contains(&i) || taken.contains(&i) || full.contains(&i);
            let usable = |i: usize| !skip(i) && self.backends[i].is_available();
            // Without backups (the common case) the scan cannot change what is eligible:
            // an available backend that is not skipped is itself a usable primary.
            let has_backups = self.backends.last().is_some_and(|b| b.backup);
            let primary_up = !has_backups
                || self
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
            let (index, open) = match self.strategy.pick(&self.backends, &eligible, ctx) {
                Some(index) => (index, false),
                None => match self.pick_open(ctx, &skip) {
                    Some(index) => (index, true),
                    None => {
                        break Err(if !full.is_empty() {
                            NoBackend::Full
                        } else if self.backends.iter().all(|b| b.stats.is_draining()) {
                            NoBackend::Drained
                        } else {
                            NoBackend::Unavailable
                        })
                    }
                },
            };
            let backend = &self.backends[index];
            // Sent while failing open, a request is no probe: every backend gets them, and
            // none waits for a probe slot. An answer still re-admits a backend that passive
            // checks took out ([`BackendStats::record_success`]).
            let probe = if backend.is_available() || open {
                None
            } else {
                match backend.stats.try_claim_probe(window) {
                    Some(seq) => Some(seq),
                    None => {
                        taken.push(index);
                        continue;
                    }
                }
            };
            let Some(guard) = ActiveGuard::try_acquire(backend) else {
                if let Some(seq) = probe {
                    backend.stats.release_probe(seq);
                }
                full.push(index);
                continue;
            };
            break Ok(Pick {
                index,
                backend: backend.clone(),
                guard: guard.with_probe(probe),
            });
        };
        if count && !full.is_empty() {
            self.count_full(&full, result.as_ref().ok());
        }
        result
    }

    /// `fail_open`: with no backend in service by health, the strategy's pick among those
    /// not drained (nor `skip`ped), as if every one were up: primaries, and backups once no
    /// primary is left to try. None otherwise, and when it is off.
    #[cold]
    fn pick_open(&self, ctx: &PickContext, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        if !self.config.health.fail_open || self.in_service() {
            return None;
        }
        let open = |i: usize| !skip(i) && !self.backends[i].stats.is_draining();
        let primary_open = (0..self.backends.len()).any(|i| !self.backends[i].backup && open(i));
        self.strategy.pick(
            &self.backends,
            &|i| open(i) && self.backends[i].backup != primary_open,
            ctx,
        )
    }

    /// Some backend is in service: healthy and not drained.
    pub fn in_service(&self) -> bool {
        self.backends.iter().any(|b| b.is_available())
    }

    /// Failing open now: `fail_open` is on, no backend is in service by health, and some
    /// backend is not drained.
    pub fn failing_open(&self) -> bool {
        self.config.health.fail_open
            && !self.in_service()
            && self.backends.iter().any(|b| !b.stats.is_draining())
    }

    /// Counts, on each full backend, a request that went elsewhere or was refused because
    /// of it. A full backup is not counted while a primary took the request: that request
    /// would not have gone to it anyway.
    #[cold]
    fn count_full(&self, full: &[usize], pick: Option<&Pick>) {
        let by_primary = pick.is_some_and(|p| !p.backend.backup);
        for &i in full {
            if by_primary && self.backends[i].backup {
                continue;
            }
            if let Some(m) = self.metrics.get(i) {
                m.full.inc();
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
        if let Some(m) = self
            .backends
            .iter()
            .position(|b| b.addr == backend.addr)
            .and_then(|i| self.metrics.get(i))
        {
            m.failures.inc();
        }
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
            self.after_health_change(Health::Down);
        }
    }

    /// Passive check: a response or a 101 came back from this backend. With active
    /// checks, only they bring a backend back, after `rise` passes (as in HAProxy): the
    /// answer to a request sent before the backend went down says nothing about it now.
    pub fn report_success(&self, backend: &Backend) {
        let readmit = self.config.health.active.is_none();
        if backend.stats.record_success(self.slow_start(), readmit) {
            tracing::info!(upstream = %self.name, backend = %backend.addr, "backend re-admitted after a successful probe");
            self.after_health_change(Health::Up);
        }
    }

    /// Active check result: passed, or why not. A backend the checks take out of service
    /// is a warning with the last failure's reason, as HAProxy logs `Server ... is DOWN,
    /// reason: ...`: as an info line without one it was missed by whoever watches
    /// warnings, and said nothing of what to look at.
    pub fn report_check(&self, backend: &Backend, result: Result<(), String>) {
        if let Some(active) = &self.config.health.active {
            let passed = result.is_ok();
            if let Some(h) =
                backend
                    .stats
                    .record_check(passed, active.rise, active.fall, self.slow_start())
            {
                match (h, &result) {
                    (Health::Down, Err(reason)) => tracing::warn!(
                        upstream = %self.name,
                        backend = %backend.addr,
                        "backend marked down by active checks: {reason}"
                    ),
                    _ => {
                        tracing::info!(upstream = %self.name, backend = %backend.addr, health = ?h, "health changed")
                    }
                }
                self.after_health_change(h);
            }
        }
    }

    /// Says when a change of health left the upstream with no backend in service, and
    /// when one came back: what its clients get meanwhile depends on `fail_open`.
    #[cold]
    fn after_health_change(&self, now: Health) {
        let in_service = self.backends.iter().filter(|b| b.is_available()).count();
        match now {
            Health::Up if in_service > 0 && self.none_in_service.swap(false, Ordering::Relaxed) => {
                tracing::info!(upstream = %self.name, "a backend is in service again");
            }
            Health::Down if in_service == 0 => {
                self.none_in_service.store(true, Ordering::Relaxed);
                if self.failing_open() {
                    tracing::warn!(upstream = %self.name, "no backend in service: failing open, requests go to every backend not drained");
                } else {
                    tracing::warn!(upstream = %self.name, "no backend in service: requests get 503 until one comes back");
                }
            }
            _ => {}
        }
    }

    /// The addresses of the backends `tried` (indices, in order) before the last one, for
    /// the access log; None unless the request was retried.
    #[cold]
    pub fn tried_before_last(&self, tried: &[usize]) -> Option<String> {
        let (_, before) = tried.split_last()?;
        let addrs: Vec<SocketAddr> = before
            .iter()
            .filter_map(|&i| self.backends.get(i).map(|b| b.addr))
            .collect();
        addr_list(&addrs)
    }

    pub fn find_backend(&self, key: &str) -> Option<&Arc<Backend>> {
        self.backends
            .iter()
            .find(|b| b.id == key || b.addr.to_string() == key)
    }
}

/// `a, b` (nginx's `$upstream_addr`), None for none.
pub fn addr_list(addrs: &[SocketAddr]) -> Option<String> {
    if addrs.is_empty() {
        return None;
    }
    Some(
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Whether `next` picks among the same backends, in the same order, the same way as
/// `running`: then its strategy goes on where the running one stands.
fn same_rotation(running: &UpstreamConfig, next: &UpstreamConfig) -> bool {
    running.strategy == next.strategy
        && running.sticky.fallback == next.sticky.fallback
        && running.backends == next.backends
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use super::*;
    use crate::config::Config;

    /// An upstream `app` built from `[upstreams.app]` lines, with the stats of `registry`.
    fn upstream(table: &str, registry: &StatsRegistry) -> Upstream {
        let text = format!("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.app]\n{table}");
        let config = Config::from_toml_str(&text, None).unwrap();
        Upstream::build(
            config.upstream("app").unwrap(),
            registry,
            &Metrics::default(),
        )
    }

    const TWO: &str = "backends = [{ addr = \"127.0.0.1:9001\", id = \"a\" }, { addr = \"127.0.0.1:9002\", id = \"b\" }]\n";

    #[test]
    fn every_strategy_passes_over_a_full_backend_and_refuses_when_all_are() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for kind in StrategyKind::ALL {
            let sticky = "[upstreams.app.sticky]\nkey = \"0123456789abcdef0123\"\n";
            let table = format!(
                "strategy = \"{kind}\"\nmax_conns = 1\n{TWO}{}",
                if kind == StrategyKind::StickyCookie {
                    sticky
                } else {
                    ""
                }
            );
            let up = upstream(&table, &StatsRegistry::default());
            for pinned in ["a", "b"] {
                // The same client each time: ip_hash and the cookie would send it to one
                // backend, which is full after the first request.
                let ctx = PickContext {
                    client_ip: Some(ip),
                    sticky_id: Some(pinned),
                };
                let first = up.pick(&ctx, &[]).unwrap();
                let second = up.pick(&ctx, &[]).unwrap();
                assert_ne!(first.index, second.index, "{kind}: the full backend again");
                assert_eq!(
                    up.pick(&ctx, &[]).err(),
                    Some(NoBackend::Full),
                    "{kind}: both full"
                );
                let freed = first.index;
                drop(first);
                let third = up.pick(&ctx, &[]).unwrap();
                assert_eq!(third.index, freed, "{kind}: the freed slot");
                drop((second, third));
                assert!(up.backends.iter().all(|b| b.active() == 0));
            }
            // Each refusal and redirection is counted on the full backends.
            let full: u64 = up.metrics.iter().map(|m| m.full.get()).sum();
            assert_eq!(full, 2 * (1 + 2 + 1), "{kind}");
        }
    }

    #[test]
    fn backups_take_the_overflow_once_every_primary_is_full() {
        let up = upstream(
            "backends = [{ addr = \"127.0.0.1:9001\", max_conns = 1 }, { addr = \"127.0.0.1:9009\", backup = true, max_conns = 1 }]\n",
            &StatsRegistry::default(),
        );
        let ctx = PickContext::default();
        let primary = up.pick(&ctx, &[]).unwrap();
        assert!(!primary.backend.backup);
        let backup = up.pick(&ctx, &[]).unwrap();
        assert!(backup.backend.backup);
        assert_eq!(up.pick(&ctx, &[]).err(), Some(NoBackend::Full));
        drop(primary);
        // The primary has room again: it comes before the backup.
        assert!(!up.pick(&ctx, &[]).unwrap().backend.backup);
    }

    /// Three primaries (`a`, `b`, `c`) and a backup `z`, with active checks, and
    /// `fail_open` as given; every backend up.
    fn three_and_a_backup(fail_open: bool) -> Upstream {
        let up = upstream(
            &format!(
                "backends = [{{ addr = \"127.0.0.1:9001\", id = \"a\" }}, \
                 {{ addr = \"127.0.0.1:9002\", id = \"b\" }}, \
                 {{ addr = \"127.0.0.1:9003\", id = \"c\" }}, \
                 {{ addr = \"127.0.0.1:9009\", id = \"z\", backup = true }}]\n\
                 [upstreams.app.health]\nkind = \"tcp\"\nfail_open = {fail_open}\n"
            ),
            &StatsRegistry::default(),
        );
        for b in &up.backends {
            b.stats.set_health(Health::Up, None);
        }
        up
    }

    /// Which backends `n` picks (each dropped at once) went to, by id.
    fn picked_ids(up: &Upstream, tried: &[usize], n: usize) -> BTreeSet<String> {
        (0..n)
            .map(|_| {
                up.pick(&PickContext::default(), tried)
                    .unwrap()
                    .backend
                    .id
                    .clone()
            })
            .collect()
    }

    #[test]
    fn fail_open_spreads_requests_over_every_backend_not_drained_while_none_is_in_service() {
        let ids = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let up = three_and_a_backup(true);
        assert!(!up.failing_open());
        for b in &up.backends {
            b.stats.set_health(Health::Down, None);
        }
        assert!(up.failing_open());
        // The primaries, as if up; the drained one left out, and the backup kept for when
        // no primary is left to try.
        up.backends[2].stats.set_draining(true);
        assert_eq!(picked_ids(&up, &[], 12), ids(&["a", "b"]));
        assert_eq!(picked_ids(&up, &[0], 4), ids(&["b"]));
        assert_eq!(picked_ids(&up, &[0, 1], 4), ids(&["z"]));
        assert_eq!(
            up.pick(&PickContext::default(), &[0, 1, 3]).err(),
            Some(NoBackend::Unavailable)
        );
        // A request sent while failing open is no probe: none holds a probe slot, so
        // every backend goes on getting them.
        let held: Vec<_> = (0..4)
            .map(|_| up.pick(&PickContext::default(), &[]).unwrap())
            .collect();
        assert_eq!(picked_ids(&up, &[], 12), ids(&["a", "b"]));
        drop(held);
        // Not yet checked counts as not in service too.
        up.backends[0].stats.set_health(Health::Pending, None);
        assert_eq!(picked_ids(&up, &[], 12), ids(&["a", "b"]));
        // One back in service: it alone takes the requests.
        up.backends[1].stats.set_health(Health::Up, None);
        assert!(!up.failing_open());
        assert_eq!(picked_ids(&up, &[], 12), ids(&["b"]));
        // Every one drained: nothing to fail open to.
        for b in &up.backends {
            b.stats.set_health(Health::Down, None);
            b.stats.set_draining(true);
        }
        assert!(!up.failing_open());
        assert_eq!(
            up.pick(&PickContext::default(), &[]).err(),
            Some(NoBackend::Drained)
        );
    }

    #[test]
    fn without_fail_open_no_backend_in_service_is_a_refusal() {
        let up = three_and_a_backup(false);
        for b in &up.backends {
            b.stats.set_health(Health::Down, None);
        }
        assert!(!up.failing_open());
        assert_eq!(
            up.pick(&PickContext::default(), &[]).err(),
            Some(NoBackend::Unavailable)
        );
    }

    #[test]
    fn a_full_backend_is_told_apart_from_unavailable_ones() {
        let up = upstream(
            "backends = [{ addr = \"127.0.0.1:9001\", max_conns = 1 }, { addr = \"127.0.0.1:9002\" }]\n",
            &StatsRegistry::default(),
        );
        let ctx = PickContext::default();
        up.backends[1].stats.set_draining(true);
        let held = up.pick(&ctx, &[]).unwrap();
        assert_eq!(held.index, 0);
        assert_eq!(up.pick(&ctx, &[]).err(), Some(NoBackend::Full));
        drop(held);
        // Tried already: that request has nowhere to go, whatever the limits.
        assert_eq!(up.pick(&ctx, &[0]).err(), Some(NoBackend::Unavailable));
        up.backends[0].stats.set_draining(true);
        assert_eq!(up.pick(&ctx, &[]).err(), Some(NoBackend::Drained));
        // Drained while full (its tunnels still open): drained, not full.
        let tunnel = ActiveGuard::new(up.backends[0].stats.clone());
        assert!(up.backends[0].is_full());
        assert_eq!(up.pick(&ctx, &[]).err(), Some(NoBackend::Drained));
        drop(tunnel);
    }

    /// With every backend drained the 503 says so: "no healthy backend" sent an operator
    /// who had drained the last one to look at the health checks.
    #[test]
    fn every_backend_drained_is_told_apart_from_none_healthy() {
        let up = upstream(
            "backends = [{ addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9002\" }]\n",
            &StatsRegistry::default(),
        );
        let ctx = PickContext::default();
        up.backends[0].stats.set_draining(true);
        up.backends[1].stats.set_health(Health::Down, None);
        assert_eq!(up.pick(&ctx, &[]).err(), Some(NoBackend::Unavailable));
        up.backends[1].stats.set_draining(true);
        let e = up.pick(&ctx, &[]).err();
        assert_eq!(e, Some(NoBackend::Drained));
        assert_eq!(
            e.map(|e| (e.reason(), e.detail("app"))),
            Some((
                "no_backend",
                "every backend of upstream app is drained".to_owned()
            ))
        );
    }

    #[test]
    fn a_reload_applies_a_new_limit_to_the_count_carried_over() {
        let registry = StatsRegistry::default();
        let limit =
            |n: u32| format!("max_conns = {n}\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n");
        let before = upstream(&limit(3), &registry);
        let ctx = PickContext::default();
        let held: Vec<_> = (0..3).map(|_| before.pick(&ctx, &[]).unwrap()).collect();
        assert_eq!(before.pick(&ctx, &[]).err(), Some(NoBackend::Full));

        let lowered = upstream(&limit(2), &registry);
        assert_eq!(
            lowered.backends[0].active(),
            3,
            "the count survives the reload"
        );
        assert_eq!(lowered.pick(&ctx, &[]).err(), Some(NoBackend::Full));
        let raised = upstream(&limit(5), &registry);
        let more: Vec<_> = (0..2).map(|_| raised.pick(&ctx, &[]).unwrap()).collect();
        assert_eq!(raised.pick(&ctx, &[]).err(), Some(NoBackend::Full));
        let unlimited = upstream(&limit(0), &registry);
        assert!(!unlimited.limited);
        assert!(unlimited.pick(&ctx, &[]).is_ok());
        drop((held, more));
        assert_eq!(raised.backends[0].active(), 0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod queue_tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    fn queued_upstream(max_queue: u32, timeout: &str) -> Upstream {
        queued_upstream_in(&StatsRegistry::default(), max_queue, timeout)
    }

    /// [`queued_upstream`] with its stats and queue in `registry`, as a reload builds it.
    fn queued_upstream_in(registry: &StatsRegistry, max_queue: u32, timeout: &str) -> Upstream {
        let text = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.app]\nmax_conns = 1\n\
             max_queue = {max_queue}\nqueue_timeout = \"{timeout}\"\n\
             backends = [{{ addr = \"127.0.0.1:9001\" }}]\n"
        );
        let config = Config::from_toml_str(&text, None).unwrap();
        Upstream::build(
            config.upstream("app").unwrap(),
            registry,
            &Metrics::default(),
        )
    }

    /// A request waiting under an upstream that a reload replaced leaves the queue to pick
    /// under the new one, and keeps its place there: the next freed slot is its, not that
    /// of one that joined under the new config after it. One waiting under the new one
    /// stays; one that joins under the old one after the hand-over leaves at once.
    #[tokio::test]
    async fn a_queued_request_moves_to_the_upstream_that_replaced_its_own_in_its_place() {
        let registry = StatsRegistry::default();
        let old = Arc::new(queued_upstream_in(&registry, 4, "10s"));
        let ctx = PickContext::default();
        let held = old.pick(&ctx, &[]).unwrap();
        // Who got a slot, in order: each records itself while it holds its slot.
        let served = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let spawn = |up: &Arc<Upstream>, place: Option<Waiter>, name: &'static str| {
            let (up, served) = (up.clone(), served.clone());
            tokio::spawn(async move {
                let pick = up.pick_queued(&PickContext::default(), &[], place).await;
                if pick.is_ok() {
                    served.lock().push(name);
                }
                pick.map(|p| p.index)
            })
        };
        let waiting_old = spawn(&old, None, "old");
        queued(&old, 1).await;
        let new = Arc::new(queued_upstream_in(&registry, 4, "10s"));
        assert!(Arc::ptr_eq(
            old.queue.as_ref().unwrap(),
            new.queue.as_ref().unwrap()
        ));
        let waiting_new = spawn(&new, None, "new");
        queued(&old, 2).await;

        new.queue.as_ref().unwrap().hand_over(&new);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting_old)
            .await
            .unwrap()
            .unwrap();
        let place = match got {
            Err(NotPicked::Replaced(up, place)) if Arc::ptr_eq(&up, &new) => place,
            other => panic!("{other:?}"),
        };
        // Its place is still in the line, ahead of the new config's waiter.
        assert_eq!(new.queue.as_ref().unwrap().waiting(), 2);
        let moved = spawn(&new, Some(place), "moved");
        drop(held);
        for waiting in [moved, waiting_new] {
            assert_served(waiting).await;
        }
        assert_eq!(*served.lock(), ["moved", "new"]);
        assert!(matches!(
            old.pick_queued(&ctx, &[], None).await.err(),
            Some(NotPicked::Replaced(up, _)) if Arc::ptr_eq(&up, &new)
        ));
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_next_freed_slot() {
        let up = Arc::new(queued_upstream(1, "10s"));
        let ctx = PickContext::default();
        let held = up.pick(&ctx, &[]).unwrap();
        assert_eq!(up.pick(&ctx, &[]).err(), Some(NoBackend::Full));
        let waiting = spawn_queued(&up);
        queued(&up, 1).await;
        // One waits already: the next is refused at once.
        assert_eq!(
            up.pick_queued(&ctx, &[], None).await.err(),
            Some(NoBackend::QueueFull.into())
        );
        drop(held);
        assert_served(waiting).await;
        assert_eq!(up.queue.as_ref().unwrap().waiting(), 0);
    }

    /// Waits until `n` requests wait in `up`'s queue.
    async fn queued(up: &Upstream, n: usize) {
        let queue = up.queue.clone().unwrap();
        let joined = async {
            while queue.waiting() < n {
                tokio::task::yield_now().await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), joined)
                .await
                .is_ok(),
            "{n} requests never joined the queue"
        );
    }

    fn spawn_queued(up: &Arc<Upstream>) -> tokio::task::JoinHandle<Result<usize, NotPicked>> {
        let up = up.clone();
        tokio::spawn(async move {
            up.pick_queued(&PickContext::default(), &[], None)
                .await
                .map(|p| p.index)
        })
    }

    /// Asserts that the queued pick `waiting` got the backend, in time.
    async fn assert_served(waiting: tokio::task::JoinHandle<Result<usize, NotPicked>>) {
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(got, Ok(Ok(Ok(0)))), "{got:?}");
    }

    /// An upstream whose only slot the returned pick holds, with room for 5 in its queue.
    fn held_upstream() -> (Arc<Upstream>, Pick) {
        let up = Arc::new(queued_upstream(5, "10s"));
        let held = up.pick(&PickContext::default(), &[]).unwrap();
        (up, held)
    }

    #[tokio::test]
    async fn a_new_request_queues_behind_waiting_ones_for_a_freed_slot() {
        let (up, held) = held_upstream();
        let waiting = spawn_queued(&up);
        queued(&up, 1).await;
        // The slot is free, but offered to the waiting request, which has not run yet.
        drop(held);
        assert_eq!(
            up.pick(&PickContext::default(), &[]).err(),
            Some(NoBackend::Full)
        );
        assert_served(waiting).await;
    }

    #[tokio::test]
    async fn the_slot_of_a_cancelled_waiter_goes_to_the_next() {
        let (up, held) = held_upstream();
        let first = spawn_queued(&up);
        queued(&up, 1).await;
        let second = spawn_queued(&up);
        queued(&up, 2).await;
        drop(held);
        // Offered the slot, the first goes before it could take it.
        first.abort();
        assert_served(second).await;
        assert_eq!(up.queue.as_ref().unwrap().waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_after_queue_timeout() {
        let up = queued_upstream(5, "2s");
        let ctx = PickContext::default();
        let _held = up.pick(&ctx, &[]).unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(
            up.pick_queued(&ctx, &[], None).await.err(),
            Some(NoBackend::QueueTimeout(Duration::from_secs(2)).into())
        );
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert_eq!(up.queue.as_ref().unwrap().waiting(), 0);
    }

    #[tokio::test]
    async fn without_a_queue_a_full_upstream_refuses_at_once() {
        let up = queued_upstream(0, "2s");
        assert!(up.queue.is_none());
        let ctx = PickContext::default();
        let _held = up.pick(&ctx, &[]).unwrap();
        assert_eq!(
            up.pick_queued(&ctx, &[], None).await.err(),
            Some(NoBackend::Full.into())
        );
    }
}

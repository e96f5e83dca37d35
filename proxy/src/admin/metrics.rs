//! Prometheus metrics. Counters and histograms are updated on the request path; gauges of
//! backend state (active, tunnels, health) are read from the live stats at scrape time.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::state::Runtime;
use crate::upstream::Health;

/// Pre-resolved metric handles of one backend.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    pub requests: prometheus::IntCounter,
    pub latency: prometheus::Histogram,
    /// By status class, 1xx..5xx.
    pub responses: [prometheus::IntCounter; 5],
    /// Picks of the backend's upstream and strategy.
    pub picks: prometheus::IntCounter,
    /// Requests that found the backend at its `max_conns` (sent elsewhere or refused).
    pub full: prometheus::IntCounter,
    /// Attempts the backend failed (refused, reset, timed out, a malformed answer).
    pub failures: prometheus::IntCounter,
}

impl BackendMetrics {
    pub fn response(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.responses[class].inc();
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub responses: IntCounterVec,
    pub latency: HistogramVec,
    pub picks: IntCounterVec,
    pub rejected: IntCounterVec,
    full: IntCounterVec,
    failures: IntCounterVec,
    active: IntGaugeVec,
    max_conns: IntGaugeVec,
    queued: IntGaugeVec,
    failing_open: IntGaugeVec,
    tunnels: IntGaugeVec,
    healthy: IntGaugeVec,
    draining: IntGaugeVec,
    weight: GaugeVec,
    connections: IntGauge,
    /// 1 when the last reload was applied (or none was asked for), 0 when it was refused.
    reload_ok: IntGauge,
    /// When the running config was loaded (start or last applied reload), Unix seconds.
    reload_time: IntGauge,
}

/// Every metric here is created from constant names and labels; a failure is a programming
/// error caught by the unit test below, never input-dependent.
fn must<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("switchyard".into()), None).unwrap_or_default();
        let bl = &["upstream", "backend"];
        let requests = must(IntCounterVec::new(
            Opts::new("requests_total", "Requests and tunnels sent to a backend"),
            bl,
        ));
        let responses = must(IntCounterVec::new(
            Opts::new(
                "responses_total",
                "Responses by backend and status class (1xx..5xx)",
            ),
            &["upstream", "backend", "class"],
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_seconds",
                "Time from choosing a backend to its response head",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            bl,
        ));
        let picks = must(IntCounterVec::new(
            Opts::new("picks_total", "Backend picks by upstream and strategy"),
            &["upstream", "strategy"],
        ));
        let rejected = must(IntCounterVec::new(
            Opts::new(
                "rejected_total",
                "Requests answered by the proxy itself, by reason",
            ),
            &["reason"],
        ));
        let full = must(IntCounterVec::new(
            Opts::new(
                "backend_full_total",
                "Requests that found the backend at max_conns and went to another backend or got 503",
            ),
            bl,
        ));
        // The proxy's own 502s and 504s have no status from a backend, so responses_total
        // never shows them: without this, a backend failing every request showed nothing
        // in the metrics (HAProxy's `connection_errors_total` / `response_errors_total`).
        let failures = must(IntCounterVec::new(
            Opts::new(
                "backend_failures_total",
                "Attempts on the backend that failed: connection refused or failed, reset, \
                 timed out, a malformed answer (the request went to another backend or got 502/504)",
            ),
            bl,
        ));
        let max_conns = must(IntGaugeVec::new(
            Opts::new(
                "backend_max_conns",
                "In-flight requests plus tunnels allowed on the backend (0: unlimited)",
            ),
            bl,
        ));
        let queued = must(IntGaugeVec::new(
            Opts::new(
                "upstream_queued",
                "Requests waiting for a slot while every backend is at max_conns",
            ),
            &["upstream"],
        ));
        let failing_open = must(IntGaugeVec::new(
            Opts::new(
                "upstream_failing_open",
                "1 while no backend is in service and fail_open sends requests to all of them",
            ),
            &["upstream"],
        ));
        let active = must(IntGaugeVec::new(
            Opts::new("backend_active", "In-flight requests plus open tunnels"),
            bl,
        ));
        let tunnels = must(IntGaugeVec::new(
            Opts::new("backend_tunnels", "Open upgraded (WebSocket) tunnels"),
            bl,
        ));
        let healthy = must(IntGaugeVec::new(
            Opts::new("backend_up", "1 when the backend is healthy"),
            bl,
        ));
        let draining = must(IntGaugeVec::new(
            Opts::new(
                "backend_draining",
                "1 when the backend is drained by the admin",
            ),
            bl,
        ));
        let connections = must(IntGauge::new(
            "client_connections",
            "Open client connections, and tunnels that outlived theirs (what max_connections \
             and a graceful stop count)",
        ));
        // Prometheus's own names for it (`prometheus_config_last_reload_successful`): a
        // refused reload leaves a file on disk that is not what runs, which only the log
        // said; this one can be alerted on.
        let reload_ok = must(IntGauge::new(
            "config_last_reload_successful",
            "1 when the last reload was applied (or none was asked for), 0 when it was refused \
             and the previous config still runs",
        ));
        let reload_time = must(IntGauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the running config was loaded: the start, or the last reload applied",
        ));
        reload_ok.set(1);
        reload_time.set(unix_now());
        let weight = must(GaugeVec::new(
            Opts::new(
                "backend_weight",
                "Effective weight (lower during slow start)",
            ),
            bl,
        ));
        for c in [&requests, &picks, &rejected, &responses, &full, &failures] {
            must(registry.register(Box::new(c.clone())));
        }
        must(registry.register(Box::new(latency.clone())));
        for g in [
            &active,
            &tunnels,
            &healthy,
            &draining,
            &max_conns,
            &queued,
            &failing_open,
        ] {
            must(registry.register(Box::new(g.clone())));
        }
        must(registry.register(Box::new(weight.clone())));
        must(registry.register(Box::new(connections.clone())));
        must(registry.register(Box::new(reload_ok.clone())));
        must(registry.register(Box::new(reload_time.clone())));
        Self {
            registry,
            requests,
            responses,
            latency,
            picks,
            rejected,
            full,
            failures,
            active,
            max_conns,
            queued,
            failing_open,
            tunnels,
            healthy,
            draining,
            weight,
            connections,
            reload_ok,
            reload_time,
        }
    }

    /// Records a reload's outcome.
    pub fn reloaded(&self, applied: bool) {
        self.reload_ok.set(i64::from(applied));
        if applied {
            self.reload_time.set(unix_now());
        }
    }

    /// Metric handles for one backend, resolved once per config (a label lookup per request
    /// would hash and lock on the hot path).
    pub fn for_backend(&self, upstream: &str, backend: &str, strategy: &str) -> BackendMetrics {
        let l = [upstream, backend];
        BackendMetrics {
            requests: self.requests.with_label_values(&l),
            latency: self.latency.with_label_values(&l),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.responses.with_label_values(&[upstream, backend, c])),
            picks: self.picks.with_label_values(&[upstream, strategy]),
            full: self.full.with_label_values(&l),
            failures: self.failures.with_label_values(&l),
        }
    }

    pub fn reject(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Renders the text exposition, refreshing the backend gauges from `runtime` and the
    /// connection gauge from `open` first.
    pub fn render(&self, runtime: &Runtime, open: usize) -> String {
        self.connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        for g in [
            &self.active,
            &self.tunnels,
            &self.healthy,
            &self.draining,
            &self.max_conns,
            &self.queued,
            &self.failing_open,
        ] {
            g.reset();
        }
        self.weight.reset();
        for up in runtime.upstreams.values() {
            if up.config.health.fail_open {
                self.failing_open
                    .with_label_values(&[up.name.as_str()])
                    .set(i64::from(up.failing_open()));
            }
            if let Some(q) = &up.queue {
                self.queued
                    .with_label_values(&[up.name.as_str()])
                    .set(i64::try_from(q.waiting()).unwrap_or(i64::MAX));
            }
            for b in &up.backends {
                let addr = b.addr.to_string();
                let l = [up.name.as_str(), addr.as_str()];
                let s = &b.stats;
                let load = |a: &std::sync::atomic::AtomicU64| {
                    i64::try_from(a.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX)
                };
                self.active.with_label_values(&l).set(load(&s.active));
                self.tunnels.with_label_values(&l).set(load(&s.tunnels));
                self.max_conns
                    .with_label_values(&l)
                    .set(i64::try_from(b.max_conns).unwrap_or(i64::MAX));
                self.healthy
                    .with_label_values(&l)
                    .set(i64::from(s.health() == Health::Up));
                self.draining
                    .with_label_values(&l)
                    .set(i64::from(s.is_draining()));
                self.weight.with_label_values(&l).set(b.effective_weight());
            }
        }
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_register_without_conflicts() {
        let m = super::Metrics::new();
        m.reject("test");
        m.requests.with_label_values(&["u", "b"]).inc();
        let names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(
            names.contains(&"switchyard_rejected_total".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"switchyard_requests_total".to_string()),
            "{names:?}"
        );
    }
}

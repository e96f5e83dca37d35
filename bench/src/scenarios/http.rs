//! `http`: keep-alive `GET /id`, closed loop for the maximum rate, then open loop at fixed
//! rates; rps, latency percentiles, errors, per-backend counts and requests per proxy
//! CPU-second.

use std::time::Duration;

use super::{compare, find, run_ratios, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::http::{run as run_load, HttpLoad, HttpOutcome};
use crate::report::{col, timeline_of, Check, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

pub fn plan(common: &Common, rates: &[u64], backends: usize) -> Plan {
    let mut columns = vec![
        col("rps", "rps", 0),
        col("p50_ms", "p50 ms", 2),
        col("p99_ms", "p99 ms", 2),
        col("p999_ms", "p99.9 ms", 2),
        col("errors", "errors", 0),
        col("req_per_cpu_s", "req/proxy-CPU-s", 0),
        col("proxy_cpu_pct", "proxy CPU %", 0),
    ];
    for r in rates {
        columns.push(col(
            &format!("open{r}_p99_ms"),
            &format!("p99 ms @{r}/s"),
            2,
        ));
        columns.push(col(
            &format!("open{r}_req_per_cpu_s"),
            &format!("req/proxy-CPU-s @{r}/s"),
            0,
        ));
    }
    Plan {
        name: "http",
        description: format!(
            "Keep-alive GET /id over {} connections: closed loop for {:?} (max rps), then \
             open loop at {} req/s (latency from the scheduled send time). {backends} \
             backends; `direct` talks to the first backend only.",
            common.connections,
            common.duration,
            crate::report::list(rates)
        ),
        default_targets:
            "direct,switchyard:round_robin,switchyard:least_conn,switchyard:p2c,\
                          nginx:round_robin,nginx:least_conn,haproxy:round_robin,haproxy:least_conn",
        default_strategy: Strategy::RoundRobin,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: false,
        allow_direct: true,
        columns,
        notes: vec![
            "Requests per proxy CPU-second = successful requests / (user+system CPU seconds \
             of the proxy process and its children, from /proc/<pid>/stat) over the closed loop; \
             `@<rate>/s`: the same over the open loop at that rate, where no process is \
             saturated (the CPU a proxy costs at a given load)."
                .into(),
            crate::procstat::coarse_cpu_note(),
        ],
        chat: None,
    }
}

pub fn load(
    common: &Common,
    running: &Running,
    backends: &Backends,
    rate: Option<u64>,
    duration: Duration,
) -> HttpLoad {
    HttpLoad {
        addr: running.addr,
        connections: common.connections.max(1),
        duration,
        rate,
        backend_ids: backends.ids(),
        timeout: Duration::from_secs(5),
        bucket: Duration::from_secs(1),
        max_requests: None,
        cookies: Vec::new(),
    }
}

/// Common HTTP figures of one load into `r`.
pub fn record(r: &mut RunResult, o: &HttpOutcome, prefix: &str) {
    let secs = o.elapsed.as_secs_f64().max(1e-3);
    let p = Percentiles::of(&o.latency);
    r.set(&format!("{prefix}rps"), o.ok as f64 / secs);
    r.set(&format!("{prefix}p50_ms"), p.p50);
    r.set(&format!("{prefix}p99_ms"), p.p99);
    r.set(&format!("{prefix}p999_ms"), p.p999);
    r.set(&format!("{prefix}errors"), o.errors as f64);
}

pub async fn measure(
    common: &Common,
    rates: &[u64],
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    // Warm-up: connections open and caches settle; not recorded.
    let warm = Duration::from_millis(500).min(common.duration);
    let _ = run_load(load(common, running, backends, None, warm)).await;
    let cpu0 = running.cpu_seconds();
    let o = run_load(load(common, running, backends, None, common.duration)).await;
    let cpu = running.cpu_seconds() - cpu0;
    let mut r = RunResult::default();
    record(&mut r, &o, "");
    if let Some(per) = per_cpu(running, o.ok, cpu) {
        r.set("req_per_cpu_s", per);
    }
    if running.pid.is_some() && cpu > 0.0 {
        r.set(
            "proxy_cpu_pct",
            100.0 * cpu / o.elapsed.as_secs_f64().max(1e-3),
        );
    }
    r.latency = Some(Percentiles::of(&o.latency));
    r.per_backend = o.per_backend.iter().map(|c| *c as f64).collect();
    r.timeline = timeline_of(&o.timeline, 1.0);
    for rate in rates {
        let cpu0 = running.cpu_seconds();
        let o = run_load(load(
            common,
            running,
            backends,
            Some(*rate),
            common.duration,
        ))
        .await;
        let cpu = running.cpu_seconds() - cpu0;
        if let Some(per) = per_cpu(running, o.ok, cpu) {
            r.set(&format!("open{rate}_req_per_cpu_s"), per);
        }
        let p = Percentiles::of(&o.latency);
        r.set(&format!("open{rate}_p99_ms"), p.p99);
        r.set(&format!("open{rate}_p50_ms"), p.p50);
        r.set(
            &format!("open{rate}_rps"),
            o.ok as f64 / o.elapsed.as_secs_f64().max(1e-3),
        );
        r.set(&format!("open{rate}_errors"), o.errors as f64);
    }
    Ok(r)
}

/// `count` per proxy CPU-second, when there is a proxy and enough CPU time to divide by.
pub fn per_cpu(running: &Running, count: u64, cpu: f64) -> Option<f64> {
    running.pid?;
    crate::procstat::per_cpu_second(count as f64, cpu)
}

/// The proxy-overhead goals, Switchyard and the others with the same strategy.
pub fn checks(reports: &[TargetReport]) -> Vec<Check> {
    let Some(sy) = find(reports, "switchyard", None) else {
        return Vec::new();
    };
    let strategy = sy.target.split_once(':').map(|(_, s)| s);
    let other = |p| find(reports, p, strategy);
    let pair = |o: Option<&TargetReport>, key: &str| Some((sy.metric(key)?, o?.metric(key)?));
    let (nginx, haproxy) = (other("nginx"), other("haproxy"));
    let runs_nginx = run_ratios(Some(sy), nginx, "req_per_cpu_s", |r| r >= 1.3);
    let runs_haproxy = run_ratios(Some(sy), haproxy, "req_per_cpu_s", |r| r >= 1.0);
    let runs_p99 = run_ratios(Some(sy), nginx, "p99_ms", |r| r <= 1.0);
    vec![
        compare(
            "http: requests per proxy CPU-second ≥ 1.3× nginx's",
            pair(nginx, "req_per_cpu_s"),
            |a, b| {
                (
                    format!(
                        "{} {a:.0} vs nginx {b:.0} = {:.2}×{runs_nginx}",
                        sy.target,
                        a / b
                    ),
                    a >= 1.3 * b,
                )
            },
        ),
        compare(
            "http: requests per proxy CPU-second ≥ HAProxy's",
            pair(haproxy, "req_per_cpu_s"),
            |a, b| {
                (
                    format!(
                        "{} {a:.0} vs haproxy {b:.0} = {:.2}×{runs_haproxy}",
                        sy.target,
                        a / b
                    ),
                    a >= b,
                )
            },
        ),
        compare(
            "http: p99 no worse than nginx's (closed loop)",
            pair(nginx, "p99_ms"),
            |a, b| {
                (
                    format!("{} {a:.2} ms vs nginx {b:.2} ms{runs_p99}", sy.target),
                    a <= b,
                )
            },
        ),
    ]
}

//! `http`: keep-alive `GET /id`, closed loop for the maximum rate, then open loop at fixed
//! rates; rps, latency percentiles, errors, per-backend counts and requests per proxy
//! CPU-second.

use std::time::Duration;

use super::{compare, find, run_ratios, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::http::{run as run_load, HttpLoad, HttpOutcome};
use crate::procstat::set_per_cpu;
use crate::report::{col, timeline_of, Check, Mark, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

pub fn plan(common: &Common, rates: &[u64], backends: usize) -> Plan {
    let per_cpu = |key: &str, header: &str| {
        col(key, header, 0).marked(crate::procstat::low_precision_mark(key))
    };
    let mut columns = vec![
        col("rps", "rps", 0),
        col("p50_ms", "p50 ms", 2),
        col("p99_ms", "p99 ms", 2),
        col("p999_ms", "p99.9 ms", 2),
        col("errors", "errors", 0),
        per_cpu("req_per_cpu_s", "req/proxy-CPU-s"),
        col("proxy_cpu_pct", "proxy CPU %", 0),
    ];
    for r in rates {
        let saturated = saturated_mark(&format!("open{r}_"));
        columns.extend([
            col(&format!("open{r}_rps"), &format!("rps @{r}/s"), 0).marked(saturated.clone()),
            col(&format!("open{r}_p50_ms"), &format!("p50 ms @{r}/s"), 2),
            col(&format!("open{r}_p99_ms"), &format!("p99 ms @{r}/s"), 2),
            col(&format!("open{r}_errors"), &format!("errors @{r}/s"), 0),
            per_cpu(
                &format!("open{r}_req_per_cpu_s"),
                &format!("req/proxy-CPU-s @{r}/s"),
            )
            .marked(saturated),
        ]);
    }
    Plan {
        name: "http",
        description: format!(
            "Keep-alive GET /id over {} connections: closed loop for {:?} (max rps), then \
             open loop at {} req/s for {:?} each. {backends} backends; `direct` talks to the \
             first backend only.",
            common.connections,
            common.duration,
            crate::report::list(rates),
            common.duration
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
            open_loop_note("Open loop (`@<rate>/s`)", "open<rate>_unsent"),
            LATENCY_NOTE.into(),
            "Requests per proxy CPU-second = successful requests / (user+system CPU seconds \
             of the proxy process and its children, from /proc/<pid>/stat) over the closed loop; \
             `@<rate>/s`: the same over the open loop at that rate, the CPU a proxy costs at \
             that load, except at a rate marked (saturated), where it is throughput at \
             saturation like the closed loop's."
                .into(),
            crate::procstat::coarse_cpu_note(),
        ],
        chat: None,
    }
}

/// How the open loop sends and times: `what` names its columns, `unsent` the results.json
/// key of the requests it did not send.
pub fn open_loop_note(what: &str, unsent: &str) -> String {
    format!(
        "{what}: the connections together send the rate's requests per second on a fixed \
         schedule, one request at a time each. A request sent late because its connection was \
         still waiting for an earlier answer is timed from when it was due (the target's \
         backlog counts: coordinated omission); the load generator's own lateness (its timer \
         wakes up to 1 ms late) does not. Sending stops at the end of the step: requests due \
         but not sent by then are counted in results.json as `{unsent}`. `rps` is the \
         successful answers over the step's real length, up to its last answer."
    )
}

/// What the latency figures cover.
pub const LATENCY_NOTE: &str =
    "Latency covers every request sent, failed ones too: an error answer or a broken \
     connection when it came, a timeout as its whole wait (5 s; failover 2 s). `errors` \
     counts those requests beside it.";

/// Below this share of the offered rate a target is reported as saturated.
pub const SATURATED_BELOW: f64 = 0.95;

/// The mark of an open-loop step under `prefix` that fell short of its rate.
pub fn saturated_mark(prefix: &str) -> Mark {
    Mark {
        key: format!("{prefix}saturated"),
        text: "(saturated)".into(),
        legend: format!(
            "answered below {:.0}% of the offered rate: the target could not sustain it (or, on \
             a shared machine, the load generator could not send it); its latency includes \
             the queue, and a per-CPU-second figure there is throughput at saturation, not \
             the cost at that load.",
            SATURATED_BELOW * 100.0
        ),
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

/// The figures of an open-loop step at `rate` into `r`: `record`'s, the requests not sent,
/// and whether the target kept up with the rate.
pub fn record_open(r: &mut RunResult, o: &HttpOutcome, prefix: &str, rate: u64) {
    record(r, o, prefix);
    r.set(&format!("{prefix}unsent"), o.unsent as f64);
    // Failed answers count as answered: errors have their own column, and a target that
    // answers every request at once with 502 is fast, not saturated.
    let answered = (o.ok + o.errors) as f64 / o.elapsed.as_secs_f64().max(1e-3);
    let short = answered < SATURATED_BELOW * rate as f64;
    r.set(&format!("{prefix}saturated"), f64::from(u8::from(short)));
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
    if running.pid.is_some() {
        set_per_cpu(&mut r, "req_per_cpu_s", o.ok as f64, cpu);
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
        if running.pid.is_some() {
            set_per_cpu(
                &mut r,
                &format!("open{rate}_req_per_cpu_s"),
                o.ok as f64,
                cpu,
            );
        }
        record_open(&mut r, &o, &format!("open{rate}_"), *rate);
    }
    Ok(r)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram;

    fn outcome(ok: u64, errors: u64, unsent: u64, secs: f64) -> HttpOutcome {
        HttpOutcome {
            latency: histogram(),
            ok,
            errors,
            per_backend: Vec::new(),
            timeline: Vec::new(),
            elapsed: Duration::from_secs_f64(secs),
            unsent,
            sequences: Vec::new(),
            cookies: Vec::new(),
        }
    }

    #[test]
    fn a_rate_the_target_could_not_sustain_is_saturated() {
        // The audit's run: 150000/s offered, 51000/s answered over the 2 s step.
        let mut r = RunResult::default();
        record_open(
            &mut r,
            &outcome(102_000, 0, 198_000, 2.0),
            "open150000_",
            150_000,
        );
        assert_eq!(r.metric("open150000_rps"), Some(51_000.0));
        assert_eq!(r.metric("open150000_unsent"), Some(198_000.0));
        assert_eq!(r.metric("open150000_saturated"), Some(1.0));
        // Kept up: the last answers a moment after the end.
        record_open(&mut r, &outcome(600, 0, 0, 2.001), "open300_", 300);
        assert_eq!(r.metric("open300_saturated"), Some(0.0));
        // Answered, if with errors: not saturated (the errors have their column).
        record_open(&mut r, &outcome(300, 300, 0, 2.0), "open300_", 300);
        assert_eq!(r.metric("open300_saturated"), Some(0.0));
        assert_eq!(r.metric("open300_errors"), Some(300.0));
    }

    #[test]
    fn the_table_shows_the_open_loops_rate_and_errors_and_marks_saturation() {
        let common = <crate::cli::Cli as clap::Parser>::try_parse_from(["bench", "http"])
            .ok()
            .and_then(|c| super::super::common_of(&c.command).cloned())
            .expect("common options");
        let p = plan(&common, &[300, 150_000], 3);
        let headers: Vec<&str> = p.columns.iter().map(|c| c.header.as_str()).collect();
        for h in [
            "rps @300/s",
            "errors @300/s",
            "p99 ms @150000/s",
            "rps @150000/s",
        ] {
            assert!(headers.contains(&h), "{headers:?}");
        }
        let mut t = TargetReport::unavailable("switchyard:round_robin".into(), "ok".into());
        let mut run = RunResult::default();
        record_open(&mut run, &outcome(600, 0, 0, 2.0), "open300_", 300);
        record_open(
            &mut run,
            &outcome(102_000, 0, 198_000, 2.0),
            "open150000_",
            150_000,
        );
        run.set("open150000_req_per_cpu_s", 70_000.0);
        run.set("open150000_req_per_cpu_s_low_precision", 0.0);
        t.metrics = run.metrics;
        let mut report = crate::report::Report::of(vec![t]);
        report.columns = p.columns;
        let text = report.terminal_table();
        assert!(text.contains("51000 (saturated)"), "{text}");
        assert!(text.contains("70000 (saturated)"), "{text}");
        assert!(!text.contains("300 (saturated)"), "{text}");
        assert!(!text.contains("(low precision)"), "{text}");
        assert!(
            text.contains("(saturated): answered below 95% of the offered rate"),
            "{text}"
        );
    }
}

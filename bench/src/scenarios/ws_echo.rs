//! `ws-echo`: WebSocket round trips over many sockets: the maximum message rate in closed
//! loop, then round-trip latency percentiles at fixed message rates (open loop), where every
//! target carries the same offered load.

use std::sync::Arc;
use std::time::Duration;

use super::http::{saturated_mark, SATURATED_BELOW};
use super::{compare, find, PerRun, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::ws::{echo, EchoLoad};
use crate::report::{col, Check, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

pub fn plan(common: &Common, size: usize, rates: &[u64], backends: usize) -> Plan {
    let mut columns = vec![
        col("msgs_per_s", "msgs/s", 0),
        col("p99_ms", "p99 ms", 3),
        col("errors", "errors", 0),
        col("msgs_per_cpu_s", "msgs/proxy-CPU-s", 0)
            .marked(crate::procstat::low_precision_mark("msgs_per_cpu_s")),
    ];
    for r in rates {
        columns.extend([
            col(&format!("open{r}_msgs_per_s"), &format!("msgs/s @{r}/s"), 0)
                .marked(saturated_mark(&format!("open{r}_"))),
            col(&format!("open{r}_p50_ms"), &format!("p50 ms @{r}/s"), 3),
            col(&format!("open{r}_p99_ms"), &format!("p99 ms @{r}/s"), 3),
            col(&format!("open{r}_p999_ms"), &format!("p99.9 ms @{r}/s"), 3),
            col(
                &format!("open{r}_p99_added_ms"),
                &format!("p99 added ms @{r}/s"),
                3,
            ),
            col(
                &format!("open{r}_proxy_cpu_pct"),
                &format!("proxy CPU % @{r}/s"),
                0,
            ),
            col(&format!("open{r}_errors"), &format!("errors @{r}/s"), 0),
        ]);
    }
    let mut notes = vec![
        "Closed loop (`msgs/s`, `p99 ms`, `errors`, `msgs/proxy-CPU-s`): each socket has one \
         message in flight, so its latency includes queueing at the saturated proxy and a proxy \
         that moves more messages also queues more; it measures throughput."
            .to_owned(),
        "Open loop (`@N/s`): the sockets together send N messages/s on a fixed schedule, \
         whether or not earlier echoes came back, so every target carries the same load. A \
         round trip is timed from the send, or from when the message was due if the previous \
         send was still blocked then (coordinated omission). `p99 added` is the target's p99 \
         minus direct's p99 of the same rate; `errors @N/s` counts broken sockets and \
         messages never echoed."
            .to_owned(),
    ];
    if let Some(r) = rates.first() {
        notes.push(format!(
            "The latency chart shows the open loop at {r} messages/s."
        ));
    }
    notes.push(crate::procstat::coarse_cpu_note());
    Plan {
        name: "ws-echo",
        description: format!(
            "{} WebSockets send {size}-byte text messages and wait for their echoes: closed \
             loop for {:?} (max messages/s), then open loop at {} messages/s for {:?} each \
             (round-trip latency at equal load). {backends} backends; `direct` talks to the \
             first backend.",
            common.connections,
            common.duration,
            crate::report::list(rates),
            common.duration
        ),
        default_targets: "direct,switchyard:least_conn,nginx:least_conn,haproxy:least_conn",
        default_strategy: Strategy::LeastConn,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: false,
        allow_direct: true,
        columns,
        notes,
        chat: None,
    }
}

pub async fn measure(
    common: &Common,
    size: usize,
    rates: &[u64],
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let ids = Arc::new(backends.ids());
    let load = |rate| EchoLoad {
        addr: running.addr,
        connections: common.connections.max(1),
        duration: common.duration,
        size,
        rate,
    };
    let cpu0 = running.cpu_seconds();
    let o = echo(load(None), ids.clone()).await;
    let cpu = running.cpu_seconds() - cpu0;
    if o.messages == 0 {
        anyhow::bail!("no echo came back ({} sockets failed)", o.errors);
    }
    let p = Percentiles::of(&o.latency);
    let mut r = RunResult::default();
    r.set(
        "msgs_per_s",
        o.messages as f64 / o.elapsed.as_secs_f64().max(1e-3),
    );
    r.set("p50_ms", p.p50);
    r.set("p99_ms", p.p99);
    r.set("p999_ms", p.p999);
    r.set("errors", o.errors as f64);
    if running.pid.is_some() {
        crate::procstat::set_per_cpu(&mut r, "msgs_per_cpu_s", o.messages as f64, cpu);
    }
    r.latency = Some(p);
    r.per_backend = o.per_backend.iter().map(|c| *c as f64).collect();
    for (k, rate) in rates.iter().enumerate() {
        let cpu0 = running.cpu_seconds();
        let o = echo(load(Some(*rate)), ids.clone()).await;
        let cpu = running.cpu_seconds() - cpu0;
        let secs = o.elapsed.as_secs_f64().max(1e-3);
        let p = Percentiles::of(&o.latency);
        let key = |m: &str| format!("open{rate}_{m}");
        r.set(&key("msgs_per_s"), o.messages as f64 / secs);
        let short = (o.messages as f64 / secs) < SATURATED_BELOW * *rate as f64;
        r.set(&key("saturated"), f64::from(u8::from(short)));
        r.set(&key("p50_ms"), p.p50);
        r.set(&key("p99_ms"), p.p99);
        r.set(&key("p999_ms"), p.p999);
        r.set(&key("errors"), (o.errors + o.lost) as f64);
        if running.pid.is_some() {
            r.set(&key("proxy_cpu_pct"), 100.0 * cpu / secs);
        }
        if k == 0 && o.messages > 0 {
            r.latency = Some(p);
        }
    }
    Ok(r)
}

/// Checks Switchyard's p99 added over direct against nginx's at each fixed rate (equal
/// load); without rates, in closed loop.
pub fn checks(reports: &[TargetReport], rates: &[u64]) -> Vec<Check> {
    let metric = |proxy: &str, key: &str| find(reports, proxy, None)?.metric(key);
    let added = |p: &str, key: &str| Some(metric(p, key)? - metric("direct", key)?);
    if rates.is_empty() {
        return vec![compare(
            "ws-echo: p99 added over direct ≤ nginx's (closed loop)",
            added("switchyard", "p99_ms").zip(added("nginx", "p99_ms")),
            |a, b| (format!("switchyard +{a:.3} ms vs nginx +{b:.3} ms"), a <= b),
        )];
    }
    let closed = match (
        metric("switchyard", "msgs_per_s"),
        metric("nginx", "msgs_per_s"),
    ) {
        (Some(s), Some(n)) => format!(
            "; closed loop, for information: switchyard {s:.0} msgs/s vs nginx {n:.0} ({:.2}×)",
            s / n.max(1e-9)
        ),
        _ => String::new(),
    };
    rates
        .iter()
        .map(|rate| {
            let key = format!("open{rate}_p99_ms");
            // A target that fell short of the offered rate was saturated: say so.
            let short: Vec<String> = ["direct", "switchyard", "nginx"]
                .iter()
                .filter_map(|p| {
                    let got = metric(p, &format!("open{rate}_msgs_per_s"))?;
                    (got < SATURATED_BELOW * *rate as f64).then(|| format!("{p} {got:.0}/s"))
                })
                .collect();
            let warning = if short.is_empty() {
                String::new()
            } else {
                format!("; below the offered rate (saturated): {}", short.join(", "))
            };
            let runs =
                PerRun::ms_differences(added_per_run(reports, &key), "switchyard's minus nginx's");
            compare(
                &format!("ws-echo: p99 added over direct ≤ nginx's at {rate} msgs/s"),
                added("switchyard", &key).zip(added("nginx", &key)),
                |a, b| {
                    (
                        format!("switchyard {a:+.3} ms vs nginx {b:+.3} ms{runs}{warning}{closed}"),
                        a <= b,
                    )
                },
            )
        })
        .collect()
}

/// Run by run, how much more switchyard's p99 (`key`) adds over direct's than nginx's does.
fn added_per_run(reports: &[TargetReport], key: &str) -> Option<PerRun> {
    let targets = [
        find(reports, "switchyard", None)?,
        find(reports, "nginx", None)?,
        find(reports, "direct", None)?,
    ];
    PerRun::of(&targets, |runs| {
        // Direct's p99 cancels out of the difference of the two added p99s, but a run
        // without it is no run of the goal.
        runs[2].metric(key)?;
        let more = runs[0].metric(key)? - runs[1].metric(key)?;
        Some((more, more <= 0.0))
    })
}

/// Fills the `…p99_added_ms` columns (closed loop and each rate) from direct's p99s.
pub fn add_overhead(reports: &mut [TargetReport]) {
    let Some(direct) = reports.iter().find(|r| r.target == "direct" && r.ok()) else {
        return;
    };
    let base: Vec<(String, f64)> = direct
        .metrics
        .iter()
        .filter_map(|(k, v)| Some((k.strip_suffix("p99_ms")?.to_owned(), *v)))
        .collect();
    for r in reports
        .iter_mut()
        .filter(|r| r.ok() && r.target != "direct")
    {
        for (prefix, d) in &base {
            if let Some(p) = r.metric(&format!("{prefix}p99_ms")) {
                r.metrics.insert(format!("{prefix}p99_added_ms"), p - d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RunResult;

    fn report(target: &str, metrics: &[(&str, f64)]) -> TargetReport {
        let mut r = TargetReport::unavailable(target.to_owned(), "ok".to_owned());
        for (k, v) in metrics {
            r.metrics.insert((*k).to_owned(), *v);
        }
        r
    }

    fn reports(nginx_rate: f64) -> Vec<TargetReport> {
        let mut all = vec![
            report("direct", &[("p99_ms", 1.0), ("open100_p99_ms", 0.2)]),
            report("switchyard:least_conn", &[("p99_ms", 3.0)]),
            report("nginx:least_conn", &[("p99_ms", 2.0)]),
        ];
        for (r, (p99, rate)) in all[1..].iter_mut().zip([(0.5, 100.0), (0.6, nginx_rate)]) {
            r.metrics.insert("open100_p99_ms".into(), p99);
            r.metrics.insert("open100_msgs_per_s".into(), rate);
            r.metrics.insert("msgs_per_s".into(), 1000.0);
        }
        all
    }

    #[test]
    fn overhead_is_over_direct_at_the_same_rate() {
        let mut all = reports(100.0);
        add_overhead(&mut all);
        let sy = &all[1];
        assert!((sy.metric("p99_added_ms").unwrap_or(f64::NAN) - 2.0).abs() < 1e-9);
        assert!((sy.metric("open100_p99_added_ms").unwrap_or(f64::NAN) - 0.3).abs() < 1e-9);
        assert!(all[0].metric("p99_added_ms").is_none());
    }

    #[test]
    fn the_goal_is_judged_at_the_fixed_rate() {
        // Closed loop Switchyard adds more (+2 vs +1), at 100 msgs/s less (+0.3 vs +0.4).
        let found = checks(&reports(100.0), &[100]);
        assert_eq!(found.len(), 1);
        assert!(found[0].goal.contains("at 100 msgs/s"), "{}", found[0].goal);
        assert_eq!(found[0].met, Some(true), "{}", found[0].measured);
        assert!(!found[0].measured.contains("saturated"));
        let closed = checks(&reports(100.0), &[]);
        assert_eq!(closed[0].met, Some(false), "{}", closed[0].measured);
    }

    #[test]
    fn the_check_says_in_how_many_runs_the_goal_held() {
        let mut all = reports(100.0);
        // Three runs: switchyard adds 0.3, 0.5, 0.1 ms over direct's 0.2; nginx adds 0.4.
        let per_target = [vec![0.2; 3], vec![0.5, 0.7, 0.3], vec![0.6; 3]];
        for (t, p99s) in all.iter_mut().zip(per_target) {
            t.runs = p99s
                .into_iter()
                .map(|p| {
                    let mut r = RunResult::default();
                    r.set("open100_p99_ms", p);
                    r
                })
                .collect();
        }
        let found = checks(&all, &[100]);
        assert!(
            found[0].measured.contains(
                "switchyard's minus nginx's per run -0.300 to +0.100 ms, met in 2 of 3 runs"
            ),
            "{}",
            found[0].measured
        );
        // A lost run unpairs the runs: no per-run claim.
        all[1].metrics.insert("failed_runs".into(), 1.0);
        let found = checks(&all, &[100]);
        assert!(
            !found[0].measured.contains("per run"),
            "{}",
            found[0].measured
        );
    }

    #[test]
    fn a_target_short_of_the_rate_is_called_saturated() {
        let found = checks(&reports(80.0), &[100]);
        assert!(
            found[0].measured.contains("saturated): nginx 80/s"),
            "{}",
            found[0].measured
        );
    }
}

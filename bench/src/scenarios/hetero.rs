//! `hetero`: the last backend answers much more slowly than the others. Open-loop load at a
//! fixed rate shows how each strategy's tail latency and distribution react.

use std::time::Duration;

use super::http::{load, open_loop_note, record_open, saturated_mark, LATENCY_NOTE};
use super::{compare, find, run_ratios, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::http::run as run_load;
use crate::report::{col, timeline_of, Check, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

pub fn plan(common: &Common, rate: u64, slow: Duration, backends: usize) -> Plan {
    let mut delays = vec![Duration::ZERO; backends];
    if let Some(last) = delays.last_mut() {
        *last = slow;
    }
    Plan {
        name: "hetero",
        description: format!(
            "{backends} backends, the last one answers after {slow:?}; open loop at {rate} req/s \
             over {} connections for {:?}.",
            common.connections, common.duration
        ),
        default_targets: "switchyard:round_robin,switchyard:least_conn,switchyard:p2c,\
                          switchyard:least_time,nginx:round_robin,nginx:least_conn,nginx:p2c,\
                          haproxy:round_robin,haproxy:least_conn,haproxy:p2c",
        default_strategy: Strategy::RoundRobin,
        delays,
        fresh_backends: false,
        allow_direct: false,
        columns: vec![
            col("rps", "rps", 0).marked(saturated_mark("")),
            col("p50_ms", "p50 ms", 2),
            col("p99_ms", "p99 ms", 2),
            col("p999_ms", "p99.9 ms", 2),
            col("slow_share_pct", "% to slow", 2),
            col("errors", "errors", 0),
        ],
        notes: vec![
            open_loop_note("The open loop", "unsent"),
            LATENCY_NOTE.into(),
        ],
        chat: None,
    }
}

pub async fn measure(
    common: &Common,
    rate: u64,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let o = run_load(load(common, running, backends, Some(rate), common.duration)).await;
    let mut r = RunResult::default();
    record_open(&mut r, &o, "", rate);
    let total: u64 = o.per_backend.iter().sum();
    let slow = o.per_backend.last().copied().unwrap_or(0);
    r.set("slow_share_pct", 100.0 * slow as f64 / total.max(1) as f64);
    r.latency = Some(Percentiles::of(&o.latency));
    r.per_backend = o.per_backend.iter().map(|c| *c as f64).collect();
    r.timeline = timeline_of(&o.timeline, 1.0);
    Ok(r)
}

pub fn checks(reports: &[TargetReport]) -> Vec<Check> {
    let rr_target = find(reports, "switchyard", Some("round_robin"));
    let rr = rr_target.and_then(|r| r.metric("p99_ms"));
    ["least_conn", "p2c", "least_time"]
        .into_iter()
        .map(|s| {
            let target = find(reports, "switchyard", Some(s));
            let p = target.and_then(|r| r.metric("p99_ms"));
            let runs = run_ratios(rr_target, target, "p99_ms", |r| r >= 2.0);
            compare(
                &format!("hetero: switchyard {s} p99 at least 2× better than round_robin"),
                rr.zip(p),
                |rr, p| {
                    (
                        format!(
                            "{s} {p:.2} ms vs round_robin {rr:.2} ms = {:.1}×{runs}",
                            rr / p.max(1e-6)
                        ),
                        rr >= 2.0 * p,
                    )
                },
            )
        })
        .collect()
}

//! `ws-echo`: WebSocket round trips (send, wait for the echo) over many sockets: message
//! throughput and round-trip latency percentiles.

use std::sync::Arc;
use std::time::Duration;

use super::{compare, find, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::ws::echo;
use crate::report::{col, Check, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

pub fn plan(common: &Common, size: usize, backends: usize) -> Plan {
    Plan {
        name: "ws-echo",
        description: format!(
            "{} WebSockets each send a {size}-byte text message and wait for its echo, for \
             {:?}: messages/s and round-trip latency. {backends} backends; `direct` talks to the \
             first backend.",
            common.connections, common.duration
        ),
        default_targets: "direct,switchyard:least_conn,nginx:least_conn,haproxy:least_conn",
        default_strategy: Strategy::LeastConn,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: false,
        allow_direct: true,
        columns: vec![
            col("msgs_per_s", "msgs/s", 0),
            col("p50_ms", "p50 ms", 3),
            col("p99_ms", "p99 ms", 3),
            col("p999_ms", "p99.9 ms", 3),
            col("p99_added_ms", "p99 added ms", 3),
            col("errors", "errors", 0),
            col("msgs_per_cpu_s", "msgs/proxy-CPU-s", 0),
        ],
        notes: vec![
            "Closed loop: each socket has one message in flight, so latency includes queueing \
             at the saturated proxy. `p99 added` is the target's p99 minus direct's p99 of the \
             same run."
                .into(),
        ],
        chat: None,
    }
}

pub async fn measure(
    common: &Common,
    size: usize,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let ids = Arc::new(backends.ids());
    let cpu0 = running.cpu_seconds();
    let o = echo(
        running.addr,
        common.connections.max(1),
        common.duration,
        size,
        ids,
    )
    .await;
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
    if running.pid.is_some() && cpu > 0.0 {
        r.set("msgs_per_cpu_s", o.messages as f64 / cpu);
    }
    r.latency = Some(p);
    r.per_backend = o.per_backend.iter().map(|c| *c as f64).collect();
    Ok(r)
}

/// Adds `p99_added_ms` (over direct) and checks Switchyard's against nginx's.
pub fn checks(reports: &[TargetReport]) -> Vec<Check> {
    let direct = find(reports, "direct", None).and_then(|d| d.metric("p99_ms"));
    let added = |p: &str| Some(find(reports, p, None)?.metric("p99_ms")? - direct?);
    vec![compare(
        "ws-echo: p99 added over direct ≤ nginx's",
        added("switchyard").zip(added("nginx")),
        |a, b| (format!("switchyard +{a:.3} ms vs nginx +{b:.3} ms"), a <= b),
    )]
}

/// Fills the `p99_added_ms` column from direct's p99.
pub fn add_overhead(reports: &mut [TargetReport]) {
    let Some(direct) = reports
        .iter()
        .find(|r| r.target == "direct" && r.ok())
        .and_then(|d| d.metric("p99_ms"))
    else {
        return;
    };
    for r in reports
        .iter_mut()
        .filter(|r| r.ok() && r.target != "direct")
    {
        if let Some(p) = r.metric("p99_ms") {
            r.metrics.insert("p99_added_ms".into(), p - direct);
        }
    }
}

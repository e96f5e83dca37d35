//! `ws-hold`: idle WebSockets opened through the proxy in steps; the proxy's RSS after each
//! step, memory per connection as the least-squares slope, and the spread over backends.

use std::sync::Arc;
use std::time::Duration;

use super::{compare, find, Plan};
use crate::backends::Backends;
use crate::load::ws::{hold_many, Held};
use crate::report::{col, Check, RunResult, TargetReport};
use crate::stats::slope;
use crate::targets::{Running, Strategy};

/// Time for the proxy's allocator to settle after a burst of handshakes.
const SETTLE: Duration = Duration::from_millis(1500);

pub fn plan(steps: &[usize], backends: usize) -> Plan {
    Plan {
        name: "ws-hold",
        description: format!(
            "Idle WebSockets opened in steps {steps:?} through each proxy (one worker); the \
             proxy's RSS (/proc/<pid>/status, with children) after each step. Memory per \
             connection is the least-squares slope of RSS over the steps. {backends} backends."
        ),
        default_targets: "switchyard:least_conn,nginx:least_conn,haproxy:least_conn",
        default_strategy: Strategy::LeastConn,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: true,
        allow_direct: false,
        columns: vec![
            col("kib_per_conn", "KiB/conn (slope)", 2),
            col("rss_start_mib", "RSS idle MiB", 1),
            col("rss_end_mib", "RSS at max MiB", 1),
            col("open", "open", 0),
            col("failed", "failed", 0),
        ],
        notes: vec![
            "The limit is the file descriptors: ulimit -n 20000 and two per proxied socket.".into(),
        ],
        chat: None,
    }
}

pub async fn measure(
    steps: &[usize],
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let ids = Arc::new(backends.ids());
    let mut held: Vec<Held> = Vec::new();
    let mut failed = 0usize;
    let base = running.rss_kib();
    let mut points = Vec::new();
    let mut r = RunResult::default();
    r.curve.push((0.0, base as f64 / 1024.0));
    for &step in steps {
        if step > held.len() {
            let first = held.len() + failed;
            let (mut new, bad) =
                hold_many(first, step - held.len(), running.addr, ids.clone(), 200).await;
            held.append(&mut new);
            failed += bad;
        }
        tokio::time::sleep(SETTLE).await;
        let rss = running.rss_kib();
        points.push((held.len() as f64, rss as f64));
        r.curve.push((held.len() as f64, rss as f64 / 1024.0));
    }
    r.set("kib_per_conn", slope(&points));
    r.set("rss_start_mib", base as f64 / 1024.0);
    r.set("rss_end_mib", points.last().map_or(0.0, |p| p.1) / 1024.0);
    r.set("open", held.len() as f64);
    r.set("failed", failed as f64);
    let mut per = vec![0.0; ids.len()];
    for h in &held {
        if let Some(k) = h.backend {
            per[k] += 1.0;
        }
    }
    r.per_backend = per;
    r.details = serde_json::json!({ "rss_kib_by_connections": points });
    Ok(r)
}

pub fn checks(reports: &[TargetReport]) -> Vec<Check> {
    let sy = find(reports, "switchyard", None);
    let open = sy.and_then(|s| s.metric("open")).unwrap_or(0.0);
    vec![compare(
        "ws-hold: ≤ 4 KiB of proxy memory per idle WebSocket at 8k connections",
        sy.and_then(|s| s.metric("kib_per_conn")).map(|k| (k, open)),
        |k, n| {
            (
                format!("switchyard {k:.2} KiB per connection (slope up to {n:.0} open)"),
                k <= 4.0 && n >= 7900.0,
            )
        },
    )]
}

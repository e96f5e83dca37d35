//! `recover`: the last backend is down while a first batch of WebSockets is opened; it
//! comes back, and after a wait a second batch is opened. The final spread of open sockets
//! shows whether the proxy re-admits the recovered backend (nginx's passive check waits for
//! a probe request to finish, which a WebSocket never does).

use std::sync::Arc;
use std::time::Duration;

use super::Plan;
use crate::backends::Backends;
use crate::load::ws::hold_many;
use crate::report::{col, RunResult};
use crate::targets::{Running, Strategy};

pub fn plan(batch: usize, wait: Duration, backends: usize) -> Plan {
    Plan {
        name: "recover",
        description: format!(
            "{backends} backends; the last is killed, {batch} WebSockets are opened, it is \
             restarted, {wait:?} later {batch} more are opened. Counts are the sockets open \
             per backend at the end."
        ),
        default_targets:
            "switchyard:least_conn,switchyard:round_robin,switchyard:p2c,\
                          nginx:least_conn,nginx:round_robin,haproxy:least_conn,haproxy:round_robin",
        default_strategy: Strategy::LeastConn,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: true,
        allow_direct: false,
        columns: vec![
            col("recovered_share_pct", "% on recovered", 1),
            col("ideal_share_pct", "ideal %", 1),
            col("open", "open", 0),
            col("failed", "failed handshakes", 0),
        ],
        notes: vec![
            "Measured earlier on this machine: nginx least_conn ended at [60,59,1], HAProxy \
             leastconn at [40,40,40] (see shared notes on balancing)."
                .into(),
        ],
        chat: None,
    }
}

pub async fn measure(
    batch: usize,
    wait: Duration,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let ids = Arc::new(backends.ids());
    let n = ids.len();
    let victim = n - 1;
    backends.kill(victim);
    // Opened a few at a time so that connection counts differ between picks.
    let (mut held, mut failed) = hold_many(0, batch, running.addr, ids.clone(), 4).await;
    backends.restart(victim)?;
    tokio::time::sleep(wait).await;
    let (mut second, bad) = hold_many(batch + failed, batch, running.addr, ids.clone(), 4).await;
    held.append(&mut second);
    failed += bad;
    let mut per = vec![0.0; n];
    for h in held.iter().filter(|h| !h.is_closed()) {
        if let Some(k) = h.backend {
            per[k] += 1.0;
        }
    }
    let open: f64 = per.iter().sum();
    let mut r = RunResult::default();
    r.set("recovered_share_pct", 100.0 * per[victim] / open.max(1.0));
    r.set("ideal_share_pct", 100.0 / n as f64);
    r.set("open", open);
    r.set("failed", failed as f64);
    r.per_backend = per;
    Ok(r)
}

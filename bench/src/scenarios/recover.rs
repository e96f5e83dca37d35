//! `recover`: the last backend is down while a first batch of WebSockets is opened; it
//! comes back, and after a wait a second batch is opened. The final spread of open sockets
//! shows whether the proxy re-admits the recovered backend (nginx's passive check waits for
//! a probe request to finish, which a WebSocket never does).

use std::sync::Arc;
use std::time::Duration;

use super::Plan;
use crate::backends::Backends;
use crate::load::ws::hold_many;
use crate::report::{col, Mark, RunResult};
use crate::targets::{Running, Strategy};

/// About how long after its restart a proxy takes to send to the backend again: Switchyard
/// and HAProxy check every 1 s and need 2 good checks, nginx tries again after its 2 s
/// fail_timeout.
const READMIT_NEEDS: Duration = Duration::from_secs(3);

pub fn plan(batch: usize, wait: Duration, backends: usize) -> Plan {
    Plan {
        name: "recover",
        description: format!(
            "{backends} backends; the last is killed, {batch} WebSockets are opened, it is \
             restarted, {wait:?} later {batch} more are opened. Counts are the sockets open \
             per backend at the end; `expected %` is the share the recovered backend ends with \
             if the proxy does what its strategy promises (notes)."
        ),
        default_targets:
            "switchyard:least_conn,switchyard:round_robin,switchyard:p2c,\
                          nginx:least_conn,nginx:round_robin,haproxy:least_conn,haproxy:round_robin",
        default_strategy: Strategy::LeastConn,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: true,
        allow_direct: false,
        columns: vec![
            col("recovered_share_pct", "% on recovered", 1).marked(Mark {
                key: "wait_too_short".into(),
                text: "(--wait too short)".into(),
                legend: format!(
                    "the recovered backend got none of the second batch, opened {wait:?} after \
                     its restart: less than the ~{READMIT_NEEDS:?} a proxy may need to re-admit \
                     it (health checks every 1 s, 2 to rise; nginx: fail_timeout 2 s), so 0 \
                     may only mean it was not re-admitted yet. Run with --wait 4s (the \
                     default) or more."
                ),
            }),
            col("expected_share_pct", "expected %", 1),
            col("open", "open", 0),
            col("failed", "failed handshakes", 0),
        ],
        notes: vec![
            "Expected %: a strategy that weighs load (least_conn, p2c, least_time) sends the \
             second batch to the recovered backend until it has as many sockets as the others, \
             as far as the batch goes (an even share, 1/n, when the batch is big enough); one \
             that does not (round_robin, ip_hash, sticky_cookie) gives it only its turn of the \
             second batch, 1/n of half the sockets (e.g. 4 of 24 = 16.7% with 3 backends). \
             From the sockets each batch opened."
                .into(),
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
    let first = held.len();
    backends.restart(victim)?;
    tokio::time::sleep(wait).await;
    let (mut second, bad) = hold_many(batch + failed, batch, running.addr, ids.clone(), 4).await;
    let opened = (first, second.len());
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
    // `--wait 1s` showed Switchyard and nginx at 0% without a word, as if they never
    // re-admitted the backend.
    r.set("wait_too_short", wait_too_short(wait, per[victim]));
    let strategy = running.target.strategy.unwrap_or(Strategy::RoundRobin);
    r.set(
        "expected_share_pct",
        expected_share(strategy, n, opened.0, opened.1),
    );
    r.set("open", open);
    r.set("failed", failed as f64);
    r.per_backend = per;
    Ok(r)
}

/// 1 when the recovered backend ended with no socket after a wait shorter than a proxy's
/// re-admission, else 0.
fn wait_too_short(wait: Duration, on_recovered: f64) -> f64 {
    f64::from(u8::from(wait < READMIT_NEEDS && on_recovered == 0.0))
}

/// The share (%) of the `first + second` sockets that the recovered one of `n` backends ends
/// with when the proxy keeps its strategy's promise. It was reported as 1/n for every
/// strategy, which round_robin can never reach: the backend was down for the first batch.
fn expected_share(strategy: Strategy, n: usize, first: usize, second: usize) -> f64 {
    let (n, first, second) = (n.max(1) as f64, first as f64, second as f64);
    let total = first + second;
    let on_it = match strategy {
        Strategy::LeastConn | Strategy::P2c | Strategy::LeastTime => second.min(total / n),
        Strategy::RoundRobin | Strategy::IpHash | Strategy::StickyCookie => second / n,
    };
    100.0 * on_it / total.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_share_depends_on_the_strategy() {
        let pct = |s, n, a, b| (expected_share(s, n, a, b) * 10.0).round() / 10.0;
        // The audit's round_robin run: 4 of 24.
        assert_eq!(pct(Strategy::RoundRobin, 3, 12, 12), 16.7);
        assert_eq!(pct(Strategy::IpHash, 3, 60, 60), 16.7);
        // Balancing can catch up fully: 40 of 120.
        assert_eq!(pct(Strategy::LeastConn, 3, 60, 60), 33.3);
        // Not when the second batch is too small: all 10 of 100.
        assert_eq!(pct(Strategy::P2c, 3, 90, 10), 10.0);
        assert_eq!(expected_share(Strategy::LeastTime, 3, 0, 0), 0.0);
    }

    #[test]
    fn a_zero_share_after_a_short_wait_is_marked() {
        assert_eq!(wait_too_short(Duration::from_secs(1), 0.0), 1.0);
        assert_eq!(wait_too_short(Duration::from_secs(1), 4.0), 0.0);
        assert_eq!(wait_too_short(Duration::from_secs(4), 0.0), 0.0);
        let p = plan(12, Duration::from_secs(1), 3);
        let mut t =
            crate::report::TargetReport::unavailable("nginx:least_conn".into(), "ok".into());
        t.metrics.insert("recovered_share_pct".into(), 0.0);
        t.metrics.insert("wait_too_short".into(), 1.0);
        let mut report = crate::report::Report::of(vec![t]);
        report.columns = p.columns;
        let text = report.terminal_table();
        assert!(text.contains("0.0 (--wait too short)"), "{text}");
        assert!(text.contains("opened 1s after its restart"), "{text}");
    }
}

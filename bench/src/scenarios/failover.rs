//! `failover`: open-loop HTTP load and idle WebSockets while the first backend is killed
//! (then restarted on its port), and in a second phase frozen with SIGSTOP (then continued).
//! Failed requests, the error window, detection time (until requests stop failing) and
//! re-admission time (until the backend answers again), from a 50 ms timeline of requests
//! by the time they were due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::signal::Signal;

use super::Plan;
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::http::{run as run_load, Bucket, HttpLoad};
use crate::load::ws::hold_many;
use crate::report::{col, timeline_of, Mark, RunResult};
use crate::stats::{histogram, Percentiles};
use crate::targets::{Running, Strategy};

const BUCKET: Duration = Duration::from_millis(50);

/// The proxies' upstream read timeout in this scenario (set in each generated config).
const UPSTREAM_READ: Duration = Duration::from_secs(3);

/// About how long after its restore a proxy takes to send to b1 again: Switchyard and
/// HAProxy check every 1 s and need 2 good checks, nginx tries again after its 2 s
/// fail_timeout.
const READMIT_NEEDS: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Stop,
}

/// When in a phase b1 is killed (or frozen), as a share of `--duration`.
const FAULT_AT: f64 = 0.2;
/// When it is restarted (or thawed).
const RESTORE_AT: f64 = 0.6;

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
        }
    }
}

pub fn plan(common: &Common, rate: u64, websockets: usize, backends: usize) -> Plan {
    let d = common.duration;
    let mut columns = Vec::new();
    for m in ["kill", "stop"] {
        columns.push(
            col(&format!("{m}_failed"), &format!("{m}: failed"), 0).marked(Mark {
                key: format!("{m}_b1_idle"),
                text: "(b1 out of service)".into(),
                legend: format!(
                    "b1 answered no request between the start of the phase and the fault: \
                     the proxy had not re-admitted it after the previous phase yet (that \
                     takes ~{READMIT_NEEDS:?}), so the fault hit a backend out of rotation \
                     and this phase does not show how the proxy handles it. Run with \
                     --duration 8s or more."
                ),
            }),
        );
        columns.push(col(
            &format!("{m}_window_ms"),
            &format!("{m}: error window ms"),
            0,
        ));
        columns.push(col(
            &format!("{m}_detect_ms"),
            &format!("{m}: detection ms"),
            0,
        ));
        columns.push(
            col(
                &format!("{m}_readmit_ms"),
                &format!("{m}: re-admission ms"),
                0,
            )
            .marked(Mark {
                key: format!("{m}_readmit_unseen"),
                text: "(phase too short)".into(),
                legend: format!(
                    "b1 got no request between its restore and the end of the phase, which \
                     left less than the ~{READMIT_NEEDS:?} the proxies need to re-admit it \
                     (health checks every 1 s, 2 to rise; nginx: fail_timeout 2 s): the phase \
                     was too short to measure re-admission. Run with --duration 8s or more."
                ),
            }),
        );
        columns.push(col(&format!("{m}_p99_ms"), &format!("{m}: p99 ms"), 1));
        columns.push(col(
            &format!("{m}_ws_lost_other"),
            &format!("{m}: WS lost elsewhere"),
            0,
        ));
    }
    Plan {
        name: "failover",
        description: format!(
            "{backends} backends, {rate} req/s open loop over {} connections plus {websockets} \
             idle WebSockets. Phase kill: b1 is SIGKILLed at {:?} and restarted at {:?}; phase \
             stop: b1 is SIGSTOPped and SIGCONTinued at the same offsets. Each phase lasts {d:?}; \
             client timeout 2 s, proxies' upstream read timeout 3 s, health checks every 1 s \
             (nginx: passive only).",
            common.connections,
            d.mul_f64(0.2),
            d.mul_f64(0.6)
        ),
        default_targets: "switchyard:round_robin,switchyard:least_conn,nginx:round_robin,\
                          haproxy:round_robin",
        default_strategy: Strategy::RoundRobin,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: true,
        allow_direct: false,
        columns,
        notes: vec![
            "Detection = from the fault to the end of the last 50 ms bucket whose requests \
             failed before the restore; re-admission = from the restore to the first bucket \
             with an answer from b1, ∞ (null in results.json) when b1 answered nothing \
             between the restore and the end of the phase. WebSockets on b1 die with it (kill) — expected; \
             `WS lost elsewhere` counts sockets on the other backends that closed (should be 0). \
             0 failed requests with a 0 ms detection means the proxy retried every failed \
             connect on another backend, so the client never saw the fault."
                .into(),
            "`p99 ms` of each phase covers every request sent, failed ones too (a timeout as \
             its whole 2 s wait). The latency chart shows both phases' requests together."
                .into(),
        ],
        chat: None,
    }
    .with_short_freeze_note(d)
}

impl Plan {
    /// A frozen backend still accepts connections (the kernel does) and answers what it
    /// was sent once continued: a freeze shorter than the timeouts shows up as late
    /// answers, not failures, which the report must not leave the reader to guess.
    fn with_short_freeze_note(mut self, d: Duration) -> Self {
        let frozen = d.mul_f64(0.4);
        if frozen < UPSTREAM_READ {
            self.notes.push(format!(
                "The stop phase froze b1 for {frozen:?}, less than the proxies' {UPSTREAM_READ:?} \
                 upstream read timeout: requests sent to it were answered late after SIGCONT \
                 rather than failing, so this phase shows latency (`stop: p99 ms`), not failures \
                 or detection. Run with --duration 8s or more to see a freeze detected."
            ));
        }
        self
    }
}

pub async fn measure(
    common: &Common,
    rate: u64,
    websockets: usize,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let mut r = RunResult::default();
    let mut offset = 0.0;
    let mut lat = histogram();
    for (k, fault) in [Fault::Kill, Fault::Stop].into_iter().enumerate() {
        let d = common.duration;
        let (what, undo) = match fault {
            Fault::Kill => ("kill b1", "restart b1"),
            Fault::Stop => ("SIGSTOP b1", "SIGCONT b1"),
        };
        r.events.extend([
            (offset + d.mul_f64(FAULT_AT).as_secs_f64(), what.to_owned()),
            (
                offset + d.mul_f64(RESTORE_AT).as_secs_f64(),
                undo.to_owned(),
            ),
        ]);
        let (timeline, h) = phase(
            fault, k, common, rate, websockets, running, backends, &mut r,
        )
        .await?;
        r.timeline
            .extend(timeline.into_iter().map(|(t, a, b)| (t + offset, a, b)));
        offset += common.duration.as_secs_f64();
        // The two phases' requests together: a field-by-field median of two percentile
        // sets is their mean, the latency of no request set.
        let _ = lat.add(&h);
    }
    r.latency = Some(Percentiles::of(&lat));
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    fault: Fault,
    k: usize,
    common: &Common,
    rate: u64,
    websockets: usize,
    running: &Running,
    backends: &mut Backends,
    r: &mut RunResult,
) -> anyhow::Result<(Vec<(f64, f64, f64)>, Histogram<u64>)> {
    let ids = Arc::new(backends.ids());
    // WebSocket clients use source addresses after the HTTP clients'.
    let first = 5000 + k * websockets;
    let (held, _) = hold_many(first, websockets, running.addr, ids.clone(), 8).await;
    let d = common.duration;
    let (fault_at, restore_at) = (d.mul_f64(FAULT_AT), d.mul_f64(RESTORE_AT));
    let load = HttpLoad {
        addr: running.addr,
        connections: common.connections.max(1),
        duration: d,
        rate: Some(rate),
        backend_ids: backends.ids(),
        timeout: Duration::from_secs(2),
        bucket: BUCKET,
        max_requests: None,
        cookies: Vec::new(),
    };
    let start = Instant::now();
    let task = tokio::spawn(run_load(load));
    tokio::time::sleep_until((start + fault_at).into()).await;
    match fault {
        Fault::Kill => backends.kill(0),
        Fault::Stop => backends.signal(0, Signal::SIGSTOP),
    }
    tokio::time::sleep_until((start + restore_at).into()).await;
    match fault {
        Fault::Kill => backends.restart(0)?,
        Fault::Stop => backends.signal(0, Signal::SIGCONT),
    }
    let o = task.await?;
    let m = fault.name();
    let b = BUCKET.as_secs_f64();
    let f_slot = (fault_at.as_secs_f64() / b) as usize;
    let r_slot = (restore_at.as_secs_f64() / b) as usize;
    let err_slots: Vec<usize> = o
        .timeline
        .iter()
        .enumerate()
        .filter(|(_, x)| x.errors > 0)
        .map(|(i, _)| i)
        .collect();
    let window = match (err_slots.first(), err_slots.last()) {
        (Some(a), Some(z)) => (z + 1 - a) as f64 * b * 1000.0,
        _ => 0.0,
    };
    let detect = err_slots
        .iter()
        .rev()
        .find(|&&i| i >= f_slot && i < r_slot)
        .map_or(0.0, |&i| {
            ((i + 1) as f64 * b - fault_at.as_secs_f64()) * 1000.0
        });
    let readmit = o
        .timeline
        .iter()
        .enumerate()
        .skip(r_slot)
        .find(|(_, x): &(usize, &Bucket)| x.per_backend.first().is_some_and(|c| *c > 0))
        .map_or(f64::INFINITY, |(i, _)| {
            ((i as f64 * b) - restore_at.as_secs_f64()).max(0.0) * 1000.0
        });
    // The stop phase follows the kill phase at once: with a short --duration b1 is not
    // back in rotation yet, and a freeze of a backend nobody sends to looked like a
    // flawless failover (0 failed, a low p99).
    let b1_before: u64 = o
        .timeline
        .iter()
        .take(f_slot)
        .map(|x| x.per_backend.first().copied().unwrap_or(0))
        .sum();
    let lost_other = held
        .iter()
        .filter(|h| h.backend != Some(0) && h.is_closed())
        .count();
    let lost_victim = held
        .iter()
        .filter(|h| h.backend == Some(0) && h.is_closed())
        .count();
    r.set(&format!("{m}_failed"), o.errors as f64);
    r.set(&format!("{m}_b1_before"), b1_before as f64);
    r.set(&format!("{m}_b1_idle"), f64::from(u8::from(b1_before == 0)));
    r.set(&format!("{m}_ok"), o.ok as f64);
    r.set(&format!("{m}_window_ms"), window);
    r.set(&format!("{m}_detect_ms"), detect);
    r.set(&format!("{m}_readmit_ms"), readmit);
    let unseen = readmit.is_infinite() && d.saturating_sub(restore_at) < READMIT_NEEDS;
    r.set(&format!("{m}_readmit_unseen"), f64::from(u8::from(unseen)));
    r.set(&format!("{m}_ws_lost_other"), lost_other as f64);
    r.set(&format!("{m}_ws_lost_victim"), lost_victim as f64);
    let p = Percentiles::of(&o.latency);
    r.set(&format!("{m}_p99_ms"), p.p99);
    for (i, c) in o.per_backend.iter().enumerate() {
        if r.per_backend.len() <= i {
            r.per_backend.resize(i + 1, 0.0);
        }
        r.per_backend[i] += *c as f64;
    }
    Ok((timeline_of(&o.timeline, b), o.latency))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Report, TargetReport};

    #[test]
    fn each_phases_p99_is_in_the_table_and_an_unseen_readmission_says_why() {
        let common = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "bench",
            "failover",
            "--duration",
            "2s",
        ])
        .ok()
        .and_then(|c| super::super::common_of(&c.command).cloned())
        .expect("common options");
        let p = plan(&common, 100, 3, 3);
        let keys: Vec<&str> = p.columns.iter().map(|c| c.key.as_str()).collect();
        assert!(keys.contains(&"kill_p99_ms") && keys.contains(&"stop_p99_ms"));
        let mut t = TargetReport::unavailable("switchyard:round_robin".into(), "ok".into());
        for (k, v) in [
            ("kill_readmit_ms", f64::INFINITY),
            ("kill_readmit_unseen", 1.0),
            ("stop_readmit_ms", 120.0),
            ("stop_readmit_unseen", 0.0),
            ("stop_p99_ms", 2000.0),
            ("stop_failed", 0.0),
            ("stop_b1_idle", 1.0),
            ("kill_failed", 3.0),
            ("kill_b1_idle", 0.0),
        ] {
            t.metrics.insert(k.into(), v);
        }
        let mut report = Report::of(vec![t]);
        report.columns = p.columns;
        let text = report.terminal_table();
        assert!(text.contains("∞ (phase too short)"), "{text}");
        assert!(
            text.contains(" 120 ") && !text.contains("120 (phase"),
            "{text}"
        );
        assert!(text.contains("2000.0"), "{text}");
        assert!(
            text.contains("(phase too short): b1 got no request"),
            "{text}"
        );
        assert!(text.contains("0 (b1 out of service)"), "{text}");
        assert!(!text.contains("3 (b1 out of service)"), "{text}");
        assert!(
            text.contains("(b1 out of service): b1 answered no request"),
            "{text}"
        );
    }
}

//! `sticky`: each client (its own 127.0.x.y address, its own cookie jar) sends a series of
//! requests; stickiness is the share that landed on its first backend. Then the last backend
//! is killed and every client sends again: the share of clients remapped, against the ideal
//! (only those that were on the removed backend).

use std::collections::HashMap;
use std::time::Duration;

use super::Plan;
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::http::{run as run_load, HttpLoad, HttpOutcome};
use crate::report::{col, RunResult};
use crate::targets::{Running, Strategy};

/// Time for every proxy to notice the removed backend (checks every 1 s, fall 2).
const DETECT: Duration = Duration::from_secs(3);

pub fn plan(common: &Common, requests: usize, backends: usize) -> Plan {
    Plan {
        name: "sticky",
        description: format!(
            "{} clients, each from its own 127.0.x.y address with its own cookie jar and \
             keep-alive connection, send {requests} requests; then the last of {backends} \
             backends is killed and, {DETECT:?} later, each sends {requests} more.",
            common.connections
        ),
        default_targets: "switchyard:ip_hash,switchyard:sticky_cookie,nginx:ip_hash,\
                          nginx:sticky_cookie,haproxy:ip_hash,haproxy:sticky_cookie",
        default_strategy: Strategy::IpHash,
        delays: vec![Duration::ZERO; backends],
        fresh_backends: true,
        allow_direct: false,
        columns: vec![
            col("stickiness_pct", "sticky % before", 2),
            col("stickiness_after_pct", "sticky % after", 2),
            col("remapped_pct", "remapped %", 1),
            col("ideal_remap_pct", "ideal %", 1),
            col("unneeded_remap_pct", "needless remaps %", 1),
            col("errors", "errors", 0),
        ],
        notes: vec![
            "nginx ip_hash uses `hash $remote_addr consistent` because its `ip_hash` hashes \
             only three octets (every 127.0.0.x client would land on one backend)."
                .into(),
        ],
        chat: None,
    }
}

fn load(
    common: &Common,
    running: &Running,
    ids: Vec<String>,
    requests: usize,
    cookies: Vec<Option<String>>,
) -> HttpLoad {
    HttpLoad {
        addr: running.addr,
        connections: common.connections.max(1),
        duration: Duration::from_secs(120),
        rate: None,
        backend_ids: ids,
        timeout: Duration::from_secs(3),
        bucket: Duration::from_secs(1),
        max_requests: Some(requests.max(1)),
        cookies,
    }
}

/// Each client's most frequent backend, and the share of its answers that went there.
fn home(o: &HttpOutcome) -> Vec<(Option<usize>, f64, Option<usize>)> {
    o.sequences
        .iter()
        .map(|seq| {
            let first = seq.iter().flatten().next().copied();
            let answered = seq.iter().flatten().count();
            let on_first = seq
                .iter()
                .filter(|b| **b == first && first.is_some())
                .count();
            let mut counts: HashMap<usize, usize> = HashMap::new();
            for b in seq.iter().flatten() {
                *counts.entry(*b).or_default() += 1;
            }
            let mode = counts.into_iter().max_by_key(|(_, c)| *c).map(|(b, _)| b);
            (first, on_first as f64 / answered.max(1) as f64, mode)
        })
        .collect()
}

pub async fn measure(
    common: &Common,
    requests: usize,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let ids = backends.ids();
    let n = common.connections.max(1);
    let before = run_load(load(common, running, ids.clone(), requests, vec![None; n])).await;
    let victim = ids.len() - 1;
    backends.kill(victim);
    tokio::time::sleep(DETECT).await;
    let after = run_load(load(
        common,
        running,
        ids.clone(),
        requests,
        before.cookies.clone(),
    ))
    .await;
    let h1 = home(&before);
    let h2 = home(&after);
    let clients = h1.len().min(h2.len()).max(1) as f64;
    let stick1 = h1.iter().map(|h| h.1).sum::<f64>() / h1.len().max(1) as f64;
    let stick2 = h2.iter().map(|h| h.1).sum::<f64>() / h2.len().max(1) as f64;
    let mut remapped = 0usize;
    let mut needless = 0usize;
    let mut on_victim = 0usize;
    for (a, b) in h1.iter().zip(&h2) {
        if a.0 == Some(victim) {
            on_victim += 1;
        }
        if a.0 != b.2 {
            remapped += 1;
            if a.0 != Some(victim) {
                needless += 1;
            }
        }
    }
    let mut r = RunResult::default();
    r.set("stickiness_pct", 100.0 * stick1);
    r.set("stickiness_after_pct", 100.0 * stick2);
    r.set("remapped_pct", 100.0 * remapped as f64 / clients);
    r.set("ideal_remap_pct", 100.0 * on_victim as f64 / clients);
    r.set("unneeded_remap_pct", 100.0 * needless as f64 / clients);
    r.set("errors", (before.errors + after.errors) as f64);
    // Clients per backend before the removal.
    let mut per = vec![0.0; ids.len()];
    for h in &h1 {
        if let Some(k) = h.0 {
            per[k] += 1.0;
        }
    }
    r.per_backend = per;
    Ok(r)
}

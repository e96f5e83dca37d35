//! `polling`: Socket.IO clients on Engine.IO long-polling through each strategy to three
//! chat nodes, once with node-local sessions (which need stickiness) and once with
//! Redis-shared sessions: handshake success rate and `Session ID unknown` answers.

use std::sync::Arc;

use super::{ChatPlan, ChatVariant, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::engineio;
use crate::report::{col, RunResult};
use crate::targets::{Running, Strategy};

pub fn plan(common: &Common, sessions: usize, cycles: usize, nodes: usize) -> Plan {
    // Short heartbeats so each poll returns quickly with a ping to answer.
    // Each client opens all its sessions (each a new user) from its one address, and
    // behind a proxy that sends no X-Forwarded-For every client is the proxy's.
    let base = [
        "--ping-interval",
        "300ms",
        "--ping-timeout",
        "2s",
        "--new-user-rate-limit",
        "1000000/1s",
        "--max-sessions-per-client",
        "0",
    ]
    .map(str::to_owned);
    let local: Vec<String> = ["--sessions", "local"]
        .map(str::to_owned)
        .into_iter()
        .chain(base.clone())
        .collect();
    let shared: Vec<String> = ["--sessions", "shared", "--redis", "{redis}"]
        .map(str::to_owned)
        .into_iter()
        .chain(base)
        .collect();
    Plan {
        name: "polling",
        description: format!(
            "{} Socket.IO clients (each its own 127.0.x.y address and cookie jar) open {sessions} \
             long-polling sessions each (handshake GET, connect POST, then {cycles} poll GETs \
             answered with pong POSTs) through each target to {nodes} chat nodes with \
             `--sessions local`, then `--sessions shared` + Redis.",
            common.connections
        ),
        default_targets: "switchyard:round_robin,switchyard:least_conn,switchyard:ip_hash,\
                          switchyard:sticky_cookie,switchyard:p2c,nginx:round_robin,nginx:ip_hash,\
                          haproxy:round_robin,haproxy:ip_hash,haproxy:sticky_cookie",
        default_strategy: Strategy::RoundRobin,
        delays: Vec::new(),
        fresh_backends: true,
        allow_direct: false,
        columns: vec![
            col("handshake_ok_pct", "handshake ok %", 1),
            col("sessions_ok_pct", "sessions ok %", 1),
            col("unknown_sid", "Session ID unknown", 0),
            col("other_errors", "other errors", 0),
            col("requests", "requests", 0),
        ],
        notes: vec![
            "With local sessions only sticky strategies (ip_hash, sticky_cookie) can work; \
             shared sessions make every strategy work by forwarding to the session's owner."
                .into(),
        ],
        chat: Some(ChatPlan {
            nodes,
            variants: vec![
                ChatVariant {
                    label: "[local]".into(),
                    args: local,
                    node_reference: false,
                },
                ChatVariant {
                    label: "[shared]".into(),
                    args: shared,
                    node_reference: false,
                },
            ],
            cpu_limit: None,
            limit_redis: false,
        }),
    }
}

pub async fn measure(
    common: &Common,
    sessions: usize,
    cycles: usize,
    running: &Running,
    backends: &Backends,
) -> anyhow::Result<RunResult> {
    let nodes = Arc::new(backends.ids());
    let s = engineio::run(
        running.addr,
        nodes,
        common.connections.max(1),
        sessions.max(1),
        cycles,
    )
    .await;
    let mut r = RunResult::default();
    let n = s.sessions.max(1) as f64;
    r.set("handshake_ok_pct", 100.0 * s.handshakes_ok as f64 / n);
    r.set("sessions_ok_pct", 100.0 * s.sessions_ok as f64 / n);
    r.set("unknown_sid", s.unknown_sid as f64);
    r.set("other_errors", s.other_errors as f64);
    r.set("requests", s.requests as f64);
    r.per_backend = s.per_node.iter().map(|c| *c as f64).collect();
    Ok(r)
}

//! `chat`: Socket.IO clients in rooms through the proxy to three chat nodes sharing a
//! Redis, each client sending at a fixed rate; delivered messages/s, end-to-end delivery
//! latency and the nodes' CPU. Then the same against the reference Node.js cluster
//! (socket.io + @socket.io/redis-adapter, bench/node/), for the ratio.

use super::{compare, ChatPlan, ChatVariant, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::socketio::{run as run_chat, ChatLoad};
use crate::report::{col, Check, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

const SWITCHYARD: &str = "[chat-node]";
const NODE: &str = "[node.js]";

pub fn plan(common: &Common, rooms: usize, rate: f64, nodes: usize) -> Plan {
    // One runtime thread per node, as each Node.js process has one event loop: three
    // multi-threaded runtimes on two cores spend their time parking and waking workers.
    // The figure compared is per CPU-second either way.
    let ours = [
        "--redis",
        "{redis}",
        "--sessions",
        "shared",
        "--rate-limit",
        "1000000/1s",
        "--threads",
        "1",
    ]
    .map(str::to_owned)
    .to_vec();
    let reference = ["--redis", "{redis}"].map(str::to_owned).to_vec();
    Plan {
        name: "chat",
        description: format!(
            "{} Socket.IO clients (WebSocket transport) in {rooms} rooms through the proxy to \
             {nodes} nodes sharing one redis-server; each client sends {rate} messages/s for \
             {:?}; every member of the room (the sender too) receives each message. Rows \
             `{SWITCHYARD}` are Switchyard's chat nodes, rows `{NODE}` the reference Node.js \
             cluster (socket.io + @socket.io/redis-adapter, one process per node).",
            common.connections, common.duration
        ),
        default_targets: "switchyard:least_conn",
        default_strategy: Strategy::LeastConn,
        delays: Vec::new(),
        fresh_backends: true,
        allow_direct: false,
        columns: vec![
            col("delivered_per_s", "delivered/s", 0),
            col("delivery_pct", "delivered %", 1),
            col("p50_ms", "p50 ms", 2),
            col("p99_ms", "p99 ms", 2),
            col("p999_ms", "p99.9 ms", 2),
            col("node_cpu_pct", "nodes CPU %", 0),
            col("delivered_per_cpu_s", "delivered/node-CPU-s", 0),
            col("connected", "connected", 0),
            col("rejected", "rejected sends", 0),
        ],
        notes: vec![
            "`delivered/node-CPU-s` divides deliveries by the CPU seconds of all nodes (user + \
             system, /proc), which is how the two clusters compare at equal CPU on a shared \
             machine; redis-server and the proxy are not counted."
                .into(),
        ],
        chat: Some(ChatPlan {
            nodes,
            variants: vec![
                ChatVariant {
                    label: SWITCHYARD.into(),
                    args: ours,
                    node_reference: false,
                },
                ChatVariant {
                    label: NODE.into(),
                    args: reference,
                    node_reference: true,
                },
            ],
        }),
    }
}

pub async fn measure(
    common: &Common,
    rooms: usize,
    rate: f64,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let load = ChatLoad {
        addr: running.addr,
        clients: common.connections.max(1),
        rooms,
        rate,
        duration: common.duration,
        nodes: backends.ids(),
    };
    let cpu0 = backends.cpu_seconds();
    let o = run_chat(load).await;
    let cpu = backends.cpu_seconds() - cpu0;
    if o.connected == 0 {
        anyhow::bail!("no client connected");
    }
    let secs = common.duration.as_secs_f64().max(1e-3);
    let p = Percentiles::of(&o.latency);
    let mut r = RunResult::default();
    r.set("delivered_per_s", o.delivered as f64 / secs);
    r.set("expected_per_s", o.expected as f64 / secs);
    r.set(
        "delivery_pct",
        100.0 * o.delivered as f64 / o.expected.max(1) as f64,
    );
    r.set("p50_ms", p.p50);
    r.set("p99_ms", p.p99);
    r.set("p999_ms", p.p999);
    r.set("node_cpu_pct", 100.0 * cpu / secs);
    if cpu > 0.0 {
        r.set("delivered_per_cpu_s", o.delivered as f64 / cpu);
    }
    r.set("connected", o.connected as f64);
    r.set("sent", o.sent as f64);
    r.set("acked", o.acked as f64);
    r.set("rejected", o.rejected as f64);
    r.latency = Some(p);
    r.per_backend = o.per_node.iter().map(|c| *c as f64).collect();
    Ok(r)
}

pub fn checks(reports: &[TargetReport]) -> Vec<Check> {
    let row = |label: &str| {
        reports
            .iter()
            .find(|r| r.ok() && r.target.starts_with("switchyard") && r.target.ends_with(label))
    };
    let (ours, theirs) = (row(SWITCHYARD), row(NODE));
    let pair = |key: &str| Some((ours?.metric(key)?, theirs?.metric(key)?));
    vec![
        compare(
            "chat: ≥ 3× the delivered messages/s of the Node.js cluster at equal CPU",
            pair("delivered_per_cpu_s"),
            |a, b| {
                (
                    format!(
                        "{a:.0} vs {b:.0} deliveries per node-CPU-second = {:.2}×",
                        a / b.max(1e-9)
                    ),
                    a >= 3.0 * b,
                )
            },
        ),
        compare(
            "chat: lower p99 delivery latency than the Node.js cluster",
            pair("p99_ms"),
            |a, b| (format!("{a:.2} ms vs {b:.2} ms"), a < b),
        ),
    ]
}

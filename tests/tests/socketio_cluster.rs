//! Sessions across chat nodes with the official `socket.io-client`
//! (`tests/node/cluster.test.mjs`): three `chat-node` processes on one real `redis-server`,
//! behind the proxy with round_robin and no stickiness. Polling-only, default and
//! WebSocket-only clients exchange events with zero `Session ID unknown`; a room broadcast
//! crosses nodes; a client recovers every missed message after its connection is cut and
//! after its node is killed (SIGKILL).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use tests::chatnode::ChatNode;
use tests::redis::RedisServer;
use tests::socketio;
use tests::{free_port, Proxy};

/// Bound for the Node suite (about 15 s alone; the machine is shared).
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn official_client_across_three_nodes_behind_round_robin() {
    socketio::require_node();
    let redis = RedisServer::start();
    let url = redis.url();
    // A generous rate limit: the suite sends bursts; a short heartbeat: dead peers are
    // noticed quickly.
    let extra = [
        "--rate-limit",
        "10000/1s",
        "--ping-interval",
        "2s",
        "--ping-timeout",
        "2s",
    ];
    let nodes: Vec<ChatNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| ChatNode::start(id, Some(&url), &extra))
        .collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--listen".to_owned(),
        listen,
        "--strategy".to_owned(),
        "round_robin".to_owned(),
    ];
    for node in &nodes {
        args.push("--backend".to_owned());
        args.push(node.addr().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start_quick(&args);
    let pids: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}={}", n.id(), n.pid().unwrap_or(0)))
        .collect();
    let pids = pids.join(",");
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}=http://{}", n.id(), n.addr()))
        .collect();
    let urls = urls.join(",");
    let base = proxy.url("");
    let base = base.trim_end_matches('/');
    let run = socketio::run_node_suite_with(
        "cluster.test.mjs",
        &[
            ("SIO_URL", base),
            ("NODE_PIDS", &pids),
            ("NODE_URLS", &urls),
        ],
        SUITE_TIMEOUT,
    );
    if !run.success() {
        for node in &nodes {
            eprintln!("--- {} ---\n{}", node.id(), node.logs());
        }
        eprintln!("--- proxy ---\n{}", proxy.logs());
    }
    run.assert_passed(&format!("three nodes behind round_robin at {base}"));
}

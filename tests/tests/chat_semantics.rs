//! The chat API (`docs/chat-api.md`) end to end, through the official `socket.io-client`
//! (`tests/node/chat.test.mjs`): three `chat-node` processes on a real `redis-server` (auth
//! errors, welcome and tokens, rooms and counts across nodes, messages, typing, presence,
//! notices, history and paging, rate limit, text limits, memberships across reconnects to
//! another node, private-room isolation against eavesdroppers on every node, and a killed
//! node's presence expiring), and the same suite against one node on the embedded store.
//!
//! Needs `node` and `redis-server` (`scripts/install-deps.sh` installs both); without them
//! the tests fail. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_semantics`.

use std::time::Duration;

use tests::chatnode::ChatNode;
use tests::redis::RedisServer;
use tests::socketio;

/// Bound for one run of the Node suite (about 15 s alone; the machine is shared).
const SUITE_TIMEOUT: Duration = Duration::from_secs(120);
const SUITE: &str = "chat.test.mjs";

/// The settings `chat.test.mjs` expects: small so that history, rate limits and presence
/// expiry show within seconds.
const CHAT_FLAGS: &[&str] = &[
    "--history-on-join",
    "5",
    "--rate-limit",
    "20/60s",
    "--presence-ttl",
    "3s",
    "--ping-interval",
    "1s",
    "--ping-timeout",
    "1s",
];

fn run_suite(nodes: &[ChatNode], kill: Option<&ChatNode>, what: &str) {
    let urls: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    let ids: Vec<&str> = nodes.iter().map(ChatNode::id).collect();
    let (urls, ids) = (urls.join(","), ids.join(","));
    let pid = kill.and_then(ChatNode::pid).map(|p| p.to_string());
    let mut env = vec![
        ("CHAT_URLS", urls.as_str()),
        ("CHAT_NODE_IDS", ids.as_str()),
    ];
    if let Some(pid) = &pid {
        env.push(("CHAT_KILL_PID", pid.as_str()));
    }
    let run = socketio::run_node_suite_with(SUITE, &env, SUITE_TIMEOUT);
    if !run.success() {
        for node in nodes {
            eprintln!("--- {} ---\n{}", node.id(), node.logs());
        }
    }
    run.assert_passed(what);
    // Every test ran, the node-killing one included when asked for.
    assert_eq!(
        run.node_count("skipped"),
        Some(u64::from(kill.is_none())),
        "{}",
        run.output()
    );
}

#[test]
fn the_chat_api_across_three_nodes_on_redis() {
    socketio::require_node();
    let redis = RedisServer::start();
    let url = redis.url();
    let nodes: Vec<ChatNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| ChatNode::start(id, Some(&url), CHAT_FLAGS))
        .collect();
    run_suite(&nodes, nodes.last(), "3 nodes on redis");
}

#[test]
fn the_chat_api_on_one_node_with_the_embedded_store() {
    socketio::require_node();
    let node = ChatNode::start("solo", None, CHAT_FLAGS);
    run_suite(std::slice::from_ref(&node), None, "1 node, embedded store");
}

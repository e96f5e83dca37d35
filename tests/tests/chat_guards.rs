//! What the chat refuses, end to end through the official `socket.io-client`
//! (`tests/node/chat_guards.test.mjs`), on one node with the embedded store and on two
//! nodes on a real `redis-server`: connection-state recovery by another user (no token,
//! another token, a stolen pid) or into a room the user left from another tab meanwhile;
//! `history` before `0-0` and the other boundary cursors; floods of `join`/`leave` and of
//! `typing`. And presence across a restart (`tests/node/presence_restart.test.mjs`): a node
//! killed and started again under the same `--node-id` does not keep its previous
//! process's sockets online, and an entry of a socket the node no longer has (a
//! disconnection that raced a heartbeat) is gone at the next heartbeat.
//!
//! Needs `node` and `redis-server` (`scripts/install-deps.sh` installs both). Build the
//! node first: `cargo build -p chat-node --bin chat-node && cargo test -p tests --test
//! chat_guards`.

use std::time::Duration;

use tests::chatnode::{raw_chat_socket, ChatNode};
use tests::redis::RedisServer;
use tests::socketio;
use tests::wait_until;

/// Bound for one run of a Node suite (a few seconds alone; the machine is shared).
const SUITE_TIMEOUT: Duration = Duration::from_secs(120);

/// The settings `chat_guards.test.mjs` expects (its header): small join and typing limits,
/// and a message limit no test reaches.
const GUARD_FLAGS: &[&str] = &[
    "--join-rate-limit",
    "6/60s",
    "--typing-rate-limit",
    "4/60s",
    "--rate-limit",
    "100/1s",
];

fn run(file: &str, nodes: &[&ChatNode], env: &[(&str, &str)], what: &str) {
    let urls: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    let urls = urls.join(",");
    let mut all = vec![("CHAT_URLS", urls.as_str())];
    all.extend_from_slice(env);
    let run = socketio::run_node_suite_with(file, &all, SUITE_TIMEOUT);
    if !run.success() {
        for node in nodes {
            eprintln!("--- {} ---\n{}", node.id(), node.logs());
        }
    }
    run.assert_passed(what);
}

#[test]
fn guards_on_one_node_with_the_embedded_store() {
    socketio::require_node();
    let node = ChatNode::start("solo", None, GUARD_FLAGS);
    run(
        "chat_guards.test.mjs",
        &[&node],
        &[],
        "1 node, embedded store",
    );
}

#[test]
fn guards_across_two_nodes_on_redis() {
    socketio::require_node();
    let redis = RedisServer::start();
    let url = redis.url();
    let n1 = ChatNode::start("n1", Some(&url), GUARD_FLAGS);
    let n2 = ChatNode::start("n2", Some(&url), GUARD_FLAGS);
    run("chat_guards.test.mjs", &[&n1, &n2], &[], "2 nodes on redis");
}

#[test]
fn a_node_restarted_under_its_id_does_not_keep_its_old_sockets_online() {
    socketio::require_node();
    let redis = RedisServer::start();
    let url = redis.url();
    // A TTL far longer than the restart takes: what the old process left has not expired
    // when the new one counts.
    let flags = ["--presence-ttl", "30s"];
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    let n2 = ChatNode::start("n2", Some(&url), &flags);
    let ghost = format!("ghost-{}", std::process::id());
    let pid = n1.pid().map(|p| p.to_string()).unwrap_or_default();
    run(
        "presence_restart.test.mjs",
        &[&n1, &n2],
        &[
            ("CHAT_PHASE", "before"),
            ("GHOST_NAME", &ghost),
            ("CHAT_KILL_PID", &pid),
        ],
        "before the restart",
    );
    drop(n1);
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    run(
        "presence_restart.test.mjs",
        &[&n1, &n2],
        &[("CHAT_PHASE", "after"), ("GHOST_NAME", &ghost)],
        "after the restart",
    );
}

#[tokio::test]
async fn a_heartbeat_replaces_its_nodes_presence_entries() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Heartbeats every 2 s. The TTL is far longer than a stall of this shared machine: a
    // hash that expired between two beats would lose the ghost for another reason, and
    // the anchor with it until the next beat.
    let node = ChatNode::start("n1", Some(&url), &["--presence-ttl", "6s"]);
    let _anchor = raw_chat_socket(&node, "anchor").await;
    let hash = "syd:chat:presence:lobby:n1";
    assert_eq!(redis.command(&["HLEN", hash]), ":1", "the anchor is online");
    // An entry of a socket the node does not have: what a heartbeat that took its snapshot
    // before a disconnection, and wrote after the disconnection's removal, would leave.
    let ghost = r#"{"user":"ughost","name":"ghost"}"#;
    assert_eq!(redis.command(&["HSET", hash, "ghost-sid", ghost]), ":1");
    // The next heartbeat replaces the hash with the node's sockets: the ghost goes, the
    // anchor stays. (Refreshing by adding kept it, and its expiry, forever.)
    let redis = &redis;
    wait_until(
        Duration::from_secs(15),
        "the ghost entry removed",
        || async move { redis.command(&["HEXISTS", hash, "ghost-sid"]) == ":0" },
    )
    .await;
    assert_eq!(
        redis.command(&["HLEN", hash]),
        ":1",
        "the anchor is still online"
    );
}

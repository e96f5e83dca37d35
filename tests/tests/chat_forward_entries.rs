//! Forwarded requests do not pile up in Redis: a node's RPC topic (`syd:node:<id>`, a
//! stream) holds a forwarded request only until its owner took it, and the answer only
//! until the forwarding node took it. Before, each stayed until 10,000 newer entries
//! pushed it out, so a client posting large bodies through a node that does not own its
//! session filled Redis with them (100 posts of 1 MB: 150 MB, in 3 s).
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_forward_entries`.

use std::time::Duration;

use tests::chatnode::{engine_url, polling_open, ChatNode};
use tests::redis::RedisServer;
use tests::{client, send, wait_until};

#[tokio::test]
async fn forwarded_bodies_leave_the_nodes_topics_once_taken() {
    let redis = RedisServer::start();
    let url = redis.url();
    let owner = ChatNode::start("a", Some(&url), &[]);
    let other = ChatNode::start("b", Some(&url), &[]);
    let http = client();
    let sid = polling_open(&owner, "poster").await;
    let sid = sid.as_str();

    // 200 KB of noop packets a POST, each forwarded by b to the session's owner, a.
    let body = "6\u{1e}".repeat(100_000) + "6";
    for n in 0..20 {
        let post = send(
            http.post(engine_url(&other, "polling", Some(sid)))
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            (post.status.as_u16(), post.body.as_str()),
            (200, "ok"),
            "POST {n}"
        );
    }
    let entries = |node: &str| redis.command(&["XLEN", &format!("syd:node:{node}")]);
    wait_until(
        Duration::from_secs(10),
        "both nodes' topics emptied of what they took",
        || std::future::ready(entries("a") == ":0" && entries("b") == ":0"),
    )
    .await;
}

//! Sessions without stickiness across a Redis restart (a real `redis-server` killed and
//! started again, empty, on its port): the nodes' connections to the session directory
//! are dead until their next command fails and they reconnect. The first polling
//! session opened afterwards, and the first request another node forwards for it, must
//! not be lost to that: no `400 Session ID unknown` for a session that exists.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_sessions_redis_restart`.

use tests::chatnode::{engine_url, ChatNode};
use tests::redis::RedisServer;
use tests::{client, send};

/// Opens a polling session on `owner` and has `other` forward a POST (a noop packet) for
/// it: answered `ok`.
async fn forwarded_post(owner: &ChatNode, other: &ChatNode, what: &str) {
    let http = client();
    let open = send(http.get(engine_url(owner, "polling", None))).await;
    assert_eq!(open.status, 200, "{what}: handshake: {}", open.body);
    let handshake: serde_json::Value = open
        .body
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("{what}: an open packet: {}", open.body));
    let sid = handshake["sid"].as_str().expect("a sid");
    let post = send(http.post(engine_url(other, "polling", Some(sid))).body("6")).await;
    assert_eq!(
        (post.status.as_u16(), post.body.as_str()),
        (200, "ok"),
        "{what}: a POST forwarded by {} to {}",
        other.id(),
        owner.id()
    );
}

#[tokio::test]
async fn the_first_forwarded_request_after_a_redis_restart_finds_its_session() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let a = ChatNode::start("a", Some(&url), &[]);
    let b = ChatNode::start("b", Some(&url), &[]);
    forwarded_post(&a, &b, "before the restart").await;

    redis.restart();
    // The first directory commands of both nodes since the restart: a's record of the
    // new session, b's lookup of it.
    forwarded_post(&a, &b, "first after the restart").await;
    forwarded_post(&b, &a, "second after the restart").await;
}

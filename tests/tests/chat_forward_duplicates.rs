//! Frames another node carries for a session (a WebSocket bridged to the session's owner
//! through the owner's RPC stream) while Redis stalls: the bridging node's publisher gets
//! no reply in time and appends the entry again on a new connection, while Redis, once it
//! runs again, still runs the first append. The owner read both entries and served the
//! frame twice: a `send` in it posted the message twice (two ids, two `message` events
//! for every member, twice in `history`). Each entry now carries its origin and a
//! sequence number, and the owner serves it once.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_forward_duplicates`.

use std::time::Instant;

use futures::SinkExt as _;
use serde_json::json;
use tests::chatnode::{
    engine_url, message_texts_until, polling_open, raw_chat_call, raw_chat_socket,
    upgrade_to_websocket, ChatNode,
};
use tests::redis::RedisServer;
use tests::ws::Ws;
use tests::{client, send, wait_until, STEP_TIMEOUT};
use tokio_tungstenite::tungstenite::Message;

/// A chat socket of `name` opened by polling on `owner` and upgraded through `bridge`,
/// which bridges the WebSocket to `owner`; its queued packets (the welcome…) are read.
async fn bridged_socket(owner: &ChatNode, bridge: &ChatNode, name: &str) -> Ws {
    let sid = polling_open(owner, name).await;
    let url = engine_url(owner, "polling", Some(&sid));
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut welcome = false;
    while !welcome {
        let poll = tokio::time::timeout_at(deadline.into(), send(client().get(&url)))
            .await
            .expect("the welcome in time");
        assert_eq!(poll.status, 200, "poll: {}", poll.body);
        welcome = poll.body.contains(r#"42["welcome""#);
    }
    upgrade_to_websocket(bridge, &sid).await
}

fn send_text(text: &str) -> String {
    json!({"room": "lobby", "text": text}).to_string()
}

#[tokio::test]
async fn a_frame_bridged_while_redis_stalls_is_served_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let limit = ["--rate-limit", "1000/1s"];
    let owner = ChatNode::start("owner", Some(&url), &limit);
    let bridge = ChatNode::start("bridge", Some(&url), &limit);
    let mut watcher = raw_chat_socket(&owner, "watcher").await;
    // Another sender for the last message, and the reader of the history: the watcher
    // reads every packet itself.
    let mut other = raw_chat_socket(&bridge, "other").await;
    let mut bridged = bridged_socket(&owner, &bridge, "bridged").await;

    // A round trip through the bridge: the upgrade is complete, the scripts loaded.
    let warm = raw_chat_call(&mut bridged, 1, "send", &send_text("warm-up")).await;
    assert_eq!(warm["ok"], true, "{warm}");
    assert_eq!(
        message_texts_until(&mut watcher, "warm-up").await,
        ["warm-up"]
    );

    let frozen = redis.freeze();
    bridged
        .send(Message::text(format!(
            r#"422["send",{}]"#,
            send_text("stalled")
        )))
        .await
        .expect("sending through the bridge");
    // The bridging node gave up waiting for the append's reply and tries again.
    let bridge_ref = &bridge;
    wait_until(
        STEP_TIMEOUT,
        "the bridging node's append retried",
        || async move { bridge_ref.logs().contains("append failed; retrying") },
    )
    .await;
    frozen.thaw();

    let stalled = message_texts_until(&mut watcher, "stalled").await;
    assert_eq!(stalled, ["stalled"]);
    let after = raw_chat_call(&mut other, 1, "send", &send_text("after")).await;
    assert_eq!(after["ok"], true, "{after}");
    assert_eq!(
        message_texts_until(&mut watcher, "after").await,
        ["after"],
        "the stalled message once, not again"
    );
    let history = raw_chat_call(&mut other, 2, "history", r#"{"room":"lobby"}"#).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .map(|messages| messages.iter().filter_map(|m| m["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(texts, ["warm-up", "stalled", "after"], "{history}");
}

//! A room that has had no member for `--empty-room-ttl` is deleted by real nodes, on a
//! real `redis-server` (two nodes) and on the embedded store (one node): it leaves the
//! room list, its name, its look and its place under `--max-rooms` are free again, and a
//! room created again under its name has none of its history, nor its openness (a join
//! without the new room's invite is refused). A room that keeps a member stays, and no
//! room is deleted before it has been empty for the TTL.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_empty_rooms`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::chatnode::{events_until, raw_chat_call, raw_chat_connect, ChatNode};
use tests::redis::RedisServer;
use tests::Ws;

const TTL: Duration = Duration::from_secs(1);

/// The flags of every node: rooms empty for a second are deleted (the node looks every
/// third of a second, its heartbeat), at most two rooms, and a room list that may be asked
/// for often (the test polls it).
const FLAGS: &[&str] = &[
    "--empty-room-ttl",
    "1s",
    "--presence-ttl",
    "1s",
    "--max-rooms",
    "2",
    "--rooms-rate-limit",
    "1000/1s",
];

/// A new user on `node`, once welcomed.
async fn connect(node: &ChatNode, name: &str) -> Ws {
    let mut ws = raw_chat_connect(node, &json!({ "name": name }).to_string()).await;
    events_until(&mut ws, "welcome", |_| true).await;
    ws
}

/// Calls `event` and checks that it succeeded; its answer.
async fn ok(ws: &mut Ws, id: u64, event: &str, payload: Value) -> Value {
    let answer = raw_chat_call(ws, id, event, &payload.to_string()).await;
    assert_eq!(answer["ok"], true, "{event} {payload}: {answer}");
    answer
}

/// The names in the room list `ws`'s user gets.
async fn listed(ws: &mut Ws, id: u64) -> Vec<String> {
    let answer = ok(ws, id, "rooms", json!({})).await;
    answer["rooms"]
        .as_array()
        .expect("a room list")
        .iter()
        .filter_map(|r| r["room"].as_str().map(str::to_owned))
        .collect()
}

/// Alice (on `a`) makes `gone` and `hall`, writes in `gone`, and leaves both; Bob (on
/// `b`) is in `hall`. `gone` is deleted a TTL later, `hall` stays; Carol (on `b`) then
/// creates `gone` again, private.
async fn empty_room_is_deleted(a: &ChatNode, b: &ChatNode) {
    let mut alice = connect(a, "alice").await;
    let mut bob = connect(b, "bob").await;
    let mut carol = connect(b, "carol").await;
    ok(&mut alice, 1, "create", json!({"room": "gone"})).await;
    ok(&mut alice, 2, "create", json!({"room": "hall"})).await;
    let full = raw_chat_call(&mut carol, 1, "create", r#"{"room":"third"}"#).await;
    assert_eq!(full, json!({"ok": false, "error": "too many rooms"}));
    ok(
        &mut alice,
        3,
        "send",
        json!({"room": "gone", "text": "old news"}),
    )
    .await;
    ok(&mut bob, 1, "join", json!({"room": "hall"})).await;
    // Before the leave: the room is empty from some moment during it.
    let left = Instant::now();
    ok(&mut alice, 4, "leave", json!({"room": "gone"})).await;
    ok(&mut alice, 5, "leave", json!({"room": "hall"})).await;

    // The node's round comes every third of a second: a few rounds, bounded.
    let mut id = 10;
    let deadline = left + TTL + Duration::from_secs(10);
    loop {
        id += 1;
        let rooms = listed(&mut bob, id).await;
        assert!(rooms.contains(&"hall".to_owned()), "{rooms:?}");
        if !rooms.contains(&"gone".to_owned()) {
            break;
        }
        assert!(Instant::now() < deadline, "`gone` still listed: {rooms:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.elapsed() >= TTL,
        "deleted before it was empty for the TTL"
    );
    let gone = raw_chat_call(&mut bob, 100, "join", r#"{"room":"gone"}"#).await;
    assert_eq!(gone, json!({"ok": false, "error": "no such room"}));

    // Its name, look and place under `--max-rooms` are free; the new room has no history
    // of the old one, and is private.
    ok(
        &mut carol,
        2,
        "create",
        json!({"room": "gone", "private": true}),
    )
    .await;
    let history = ok(&mut carol, 3, "history", json!({"room": "gone"})).await;
    assert_eq!(history["messages"], json!([]), "{history}");
    let refused = raw_chat_call(&mut bob, 101, "join", r#"{"room":"gone"}"#).await;
    assert_eq!(refused, json!({"ok": false, "error": "invalid invite"}));
    let full = raw_chat_call(&mut carol, 4, "create", r#"{"room":"third"}"#).await;
    assert_eq!(full, json!({"ok": false, "error": "too many rooms"}));
}

#[tokio::test]
async fn an_empty_room_is_deleted_across_nodes_on_redis() {
    let redis = RedisServer::start();
    let a = ChatNode::start("a", Some(&redis.url()), FLAGS);
    let b = ChatNode::start("b", Some(&redis.url()), FLAGS);
    empty_room_is_deleted(&a, &b).await;
    // The old room's history went with it; the new room is not marked empty.
    assert_eq!(redis.command(&["EXISTS", "syd:chat:history:gone"]), ":0");
    assert_eq!(
        redis.command(&["ZCARD", "syd:chat:rooms:empty"]),
        ":0",
        "hall and the new gone have members"
    );
}

#[tokio::test]
async fn an_empty_room_is_deleted_on_the_embedded_store() {
    let node = ChatNode::start("solo", None, FLAGS);
    empty_room_is_deleted(&node, &node).await;
}

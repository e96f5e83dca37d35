//! The chat on in-process nodes sharing one embedded store ([`MemoryStore`]), one bus and
//! one session directory: they behave like a cluster on Redis — private rooms, messages
//! across nodes, memberships that follow the user's token to another node. (The whole API
//! through the official client, on Redis, is `tests/tests/chat_semantics.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::sync::Arc;
use std::time::Duration;

use chat_node::bus::MemoryBus;
use chat_node::chat::MemoryStore;
use chat_node::forward::MemoryDirectory;
use chat_node::node::{Node, NodeConfig};
use serde_json::json;
use utils::chat::Client;
use utils::TestServer;

/// Two nodes, "a" and "b", on shared in-process parts.
async fn pair() -> (TestServer, TestServer) {
    let bus = Arc::new(MemoryBus::new());
    let directory = Arc::new(MemoryDirectory::new());
    let store = Arc::new(MemoryStore::new());
    let node = |id: &str| {
        let config = NodeConfig {
            node_id: id.to_owned(),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(20),
            ..NodeConfig::default()
        };
        Node::with_store(config, bus.clone(), directory.clone(), store.clone()).unwrap()
    };
    (
        TestServer::start_node(node("a")).await,
        TestServer::start_node(node("b")).await,
    )
}

#[tokio::test]
async fn in_process_nodes_sharing_a_memory_store_behave_like_a_cluster() {
    let (a, b) = pair().await;
    let mut alice = Client::connect(&a, json!({"name": "alice"})).await;
    let mut bob = Client::connect(&b, json!({"name": "bob"})).await;
    let mut eve = Client::connect(&b, json!({"name": "bob"})).await;
    assert_eq!(alice.welcome["node"], "a");
    assert_eq!(bob.welcome["node"], "b");
    assert_ne!(bob.welcome["user"], eve.welcome["user"]);

    let made = alice
        .call("create", json!({"room": "p", "private": true}))
        .await;
    assert_eq!(made["ok"], true);
    let invite = made["invite"].as_str().unwrap().to_owned();
    let joined = bob
        .call("join", json!({"room": "p", "invite": invite}))
        .await;
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    let refused = eve.call("join", json!({"room": "p"})).await;
    assert_eq!(refused, json!({"ok": false, "error": "invalid invite"}));
    let refused = eve.call("send", json!({"room": "p", "text": "x"})).await;
    assert_eq!(refused, json!({"ok": false, "error": "not a member"}));
    let rooms = eve.call("rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "lobby", "private": false, "members": 3}])
    );

    let sent = alice
        .call("send", json!({"room": "p", "text": "secret"}))
        .await;
    let id = sent["id"].clone();
    let got = bob.event("message", |m| m["id"] == id).await;
    assert_eq!(
        (got["from"].clone(), got["text"].clone()),
        (json!("alice"), json!("secret"))
    );
    // A lobby message after it: eve, on bob's node, gets that and nothing of room p.
    let barrier = alice
        .call("send", json!({"room": "lobby", "text": "barrier"}))
        .await;
    let barrier = barrier["id"].clone();
    eve.event("message", |m| m["id"] == barrier).await;
    assert!(
        eve.events.iter().all(|(_, v)| v["room"] != "p"),
        "{:?}",
        eve.events
    );

    // Bob comes back on node a with his token: still a member, without joining again.
    let token = bob.welcome["token"].clone();
    drop(bob);
    let mut bob = Client::connect(&a, json!({"name": "bob", "token": token})).await;
    assert_eq!(bob.welcome["node"], "a");
    let sent = bob.call("send", json!({"room": "p", "text": "back"})).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let id = sent["id"].clone();
    alice.event("message", |m| m["id"] == id).await;
    let history = alice.call("history", json!({"room": "p"})).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["secret", "back"]);
}

//! A chat message costs Redis one script: the membership check, the rate limit, the
//! history's append and the broadcast's append to the namespace's log run together. The
//! message reaches the members on every node with the id its sender was answered, and the
//! history has it under that id. When the log refuses writes (a Redis ACL) the message is
//! posted all the same, its sender's node delivers it and keeps its broadcast until the
//! log takes it, as when the post and the broadcast were two scripts.
//!
//! Needs `redis-server` (`scripts/install-deps.sh` installs it). Build the node first:
//! `cargo build -p chat-node --bin chat-node && cargo test -p tests --test chat_post`.

use serde_json::{json, Value};
use tests::chatnode::{events_until, raw_chat_call, raw_chat_tab, raw_chat_user, ChatNode};
use tests::redis::RedisServer;
use tests::Ws;

/// Two chat nodes on `redis`, limits no test reaches.
fn two_nodes(redis: &RedisServer) -> [ChatNode; 2] {
    let flags = ["--rate-limit", "1000/1s"];
    ["n1", "n2"].map(|id| ChatNode::start(id, Some(&redis.url()), &flags))
}

fn text_is(text: String) -> impl Fn(&Value) -> bool {
    move |m| m["text"] == text.as_str()
}

/// Sends `text` to `lobby` from `ws` (ack id `id`); the message id it was answered.
async fn send(ws: &mut Ws, id: u64, text: &str) -> String {
    let request = json!({"room": "lobby", "text": text}).to_string();
    let sent = raw_chat_call(ws, id, "send", &request).await;
    assert_eq!(sent["ok"], true, "{sent}");
    sent["id"].as_str().expect("a message id").to_owned()
}

/// The ids of `lobby`'s history by text, as `ws` reads it.
async fn history(ws: &mut Ws, id: u64) -> Vec<(String, String)> {
    let page = raw_chat_call(ws, id, "history", r#"{"room":"lobby","limit":100}"#).await;
    let messages = page["messages"].as_array().expect("a history page");
    messages
        .iter()
        .map(|m| {
            let field = |name: &str| m[name].as_str().unwrap_or_default().to_owned();
            (field("id"), field("text"))
        })
        .collect()
}

#[tokio::test]
async fn a_message_is_one_script_and_has_one_id_on_every_node_and_in_the_history() {
    let redis = RedisServer::start();
    let [n1, n2] = &two_nodes(&redis);
    let (mut alice, _) = raw_chat_user(n1, "alice").await;
    let (mut bob, _) = raw_chat_user(n2, "bob").await;
    // The scripts are loaded and the other node reads the log.
    send(&mut alice, 1, "warm-up").await;
    events_until(&mut bob, "message", text_is("warm-up".to_owned())).await;

    let before = redis.calls("evalsha");
    let mut sent = Vec::new();
    for i in 0..10 {
        let text = format!("m{i}");
        sent.push((send(&mut alice, 10 + i, &text).await, text));
    }
    let scripts = redis.calls("evalsha") - before;
    // One per message; a few to spare for the nodes' heartbeats (presence, sessions).
    assert!(
        scripts <= 10 + 4,
        "{scripts} scripts for 10 messages (two per message before they were joined)"
    );

    let got = events_until(&mut bob, "message", text_is("m9".to_owned())).await;
    let delivered: Vec<(String, String)> = got
        .iter()
        .filter(|e| e[0] == "message")
        .map(|e| {
            let field = |name: &str| e[1][name].as_str().unwrap_or_default().to_owned();
            (field("id"), field("text"))
        })
        .collect();
    assert_eq!(delivered, sent, "the other node's member, in order");
    let stored = history(&mut bob, 30).await;
    assert_eq!(stored[1..], sent[..], "the history after the warm-up");
}

#[tokio::test]
async fn a_message_the_log_refuses_is_posted_delivered_here_and_sent_on_once_it_takes_it() {
    let redis = RedisServer::start();
    let [n1, n2] = &two_nodes(&redis);
    let (mut alice, alice_token) = raw_chat_user(n1, "alice").await;
    // Alice's other tab, on her node: it reads what the node delivers.
    let mut tab = raw_chat_tab(n1, "alice", &alice_token).await;
    let (mut bob, _) = raw_chat_user(n2, "bob").await;
    send(&mut alice, 1, "warm-up").await;
    events_until(&mut bob, "message", text_is("warm-up".to_owned())).await;

    // Every key but the namespaces' logs (`syd:{<namespace>}:stream`).
    redis.writable_keys_only("syd:[^{]*");
    let id = send(&mut alice, 2, "refused by the log").await;
    let here = events_until(
        &mut tab,
        "message",
        text_is("refused by the log".to_owned()),
    )
    .await;
    assert_eq!(here.last().map(|m| m[1]["id"].clone()), Some(json!(id)));
    let stored = history(&mut bob, 3).await;
    assert_eq!(
        stored.last(),
        Some(&(id.clone(), "refused by the log".to_owned()))
    );

    redis.all_keys_writable();
    let there = events_until(
        &mut bob,
        "message",
        text_is("refused by the log".to_owned()),
    )
    .await;
    assert_eq!(there.last().map(|m| m[1]["id"].clone()), Some(json!(id)));
    // Posted once.
    let stored = history(&mut bob, 4).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
}

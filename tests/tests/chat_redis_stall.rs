//! A `send` while Redis stalls (SIGSTOP on a real `redis-server`), on two chat nodes: the
//! node gives up waiting for Redis's reply, but Redis still runs the command once it
//! runs again. The sender must not hear a definite `unavailable` for a message that may
//! have been sent (it answers `timeout`), and the message, which was stored, reaches every
//! member exactly once: the sender's own node's clients too, not only the other node's.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_redis_stall`.

use serde_json::json;
use tests::chatnode::{message_texts_until, raw_chat_call, raw_chat_socket, ChatNode};
use tests::redis::RedisServer;

fn send(text: &str) -> String {
    json!({"room": "lobby", "text": text}).to_string()
}

#[tokio::test]
async fn a_send_redis_runs_after_the_reply_timed_out_reaches_every_member_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let limit = ["--rate-limit", "1000/1s"];
    let a = ChatNode::start("a", Some(&url), &limit);
    let b = ChatNode::start("b", Some(&url), &limit);
    let mut a1 = raw_chat_socket(&a, "a1").await;
    let mut a2 = raw_chat_socket(&a, "a2").await;
    let mut b1 = raw_chat_socket(&b, "b1").await;
    // Another sender for the last message: the sender of the stalled one reads every
    // packet itself.
    let mut b2 = raw_chat_socket(&b, "b2").await;

    // The post's script is loaded on node a, and every client gets the messages of both
    // nodes (the ack of a1's own may come after the message, which the call skips).
    let warm = raw_chat_call(&mut a1, 1, "send", &send("warm-up")).await;
    assert_eq!(warm["ok"], true, "{warm}");
    let warm = raw_chat_call(&mut b2, 1, "send", &send("warm-up 2")).await;
    assert_eq!(warm["ok"], true, "{warm}");
    for ws in [&mut a1, &mut a2, &mut b1] {
        message_texts_until(ws, "warm-up 2").await;
    }

    let frozen = redis.freeze();
    let stalled = raw_chat_call(&mut a1, 2, "send", &send("stalled")).await;
    assert_eq!(
        stalled,
        json!({"ok": false, "error": "timeout"}),
        "a send Redis did not answer may have been sent: not `unavailable`"
    );
    // Redis runs the buffered script now: the message is stored and broadcast.
    frozen.thaw();

    for (name, ws) in [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)] {
        let got = message_texts_until(ws, "stalled").await;
        assert_eq!(got, ["stalled"], "{name}");
    }
    let after = raw_chat_call(&mut b2, 2, "send", &send("after")).await;
    assert_eq!(after["ok"], true, "{after}");
    for (name, ws) in [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)] {
        let got = message_texts_until(ws, "after").await;
        assert_eq!(
            got,
            ["after"],
            "{name}: the stalled message once, not again"
        );
    }

    let history = raw_chat_call(&mut b2, 3, "history", r#"{"room":"lobby"}"#).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .map(|messages| messages.iter().filter_map(|m| m["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        texts,
        ["warm-up", "warm-up 2", "stalled", "after"],
        "{history}"
    );
}

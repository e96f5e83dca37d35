//! A chat node through a Redis outage, with a real `redis-server` killed and started again
//! on its port: the node keeps its clients connected and answers their requests
//! `unavailable` while Redis is gone (a `send` on its way when the connection broke:
//! `timeout`), `/healthz` says 503 with the reason, the node
//! reconnects by itself, and its log says the store failed once, not once per request
//! (it wrote a line per failed request: thousands a second on a busy node), and each of
//! the bus's retrying loops once per 10 s, not once per retry.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_redis_outage`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::chatnode::{raw_chat_call, raw_chat_socket, ChatNode};
use tests::get;
use tests::redis::RedisServer;
use tests::wait::POLL;

/// How many requests fail during the outage.
const FAILED: u64 = 20;

#[tokio::test]
async fn an_outage_is_answered_reported_logged_once_and_recovered_from() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = ChatNode::start("n1", Some(&url), &["--rate-limit", "1000/1s"]);
    let mut ws = raw_chat_socket(&node, "outage").await;
    let send = |i: u64| format!(r#"{{"room":"lobby","text":"m{i}"}}"#);
    let answer = raw_chat_call(&mut ws, 0, "send", &send(0)).await;
    assert_eq!(answer["ok"], true, "{answer}");

    redis.stop();
    let outage = Instant::now();
    for i in 1..=FAILED {
        let answer = raw_chat_call(&mut ws, i, "send", &send(i)).await;
        // The first may have been on its way when the connection broke: it may have
        // been sent, and is not said `unavailable`. The others find the connection
        // refused: nothing was sent.
        if i == 1 && answer == json!({"ok": false, "error": "timeout"}) {
            continue;
        }
        assert_eq!(
            answer,
            json!({"ok": false, "error": "unavailable"}),
            "request {i}"
        );
    }
    let health = get(&node.url("/healthz")).await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(health.body.starts_with("redis: "), "{}", health.body);
    // Each failed request takes a while (the connection's retries): one line per 10 s.
    let allowed = 1 + outage.elapsed().as_secs() / 10;
    let logs = node.logs();
    let store_lines = logs.lines().filter(|l| l.contains("chat store")).count() as u64;
    assert!(
        (1..=allowed).contains(&store_lines),
        "{store_lines} lines about the store for {FAILED} failed requests (at most {allowed}):\n{logs}"
    );

    // The bus's retrying loops too: one line per loop (and topic) per 10 s, not one per
    // retry (its reconnections back off from 50 ms: half a dozen lines in 3 s each).
    while outage.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(POLL).await;
    }
    let allowed = 1 + outage.elapsed().as_secs() / 10;
    let logs = node.logs();
    let mut per_loop: HashMap<String, u64> = HashMap::new();
    for line in logs.lines().filter(|l| l.contains("; retrying")) {
        let what = line.split("; retrying").next().unwrap_or_default();
        let what = what.rsplit(": ").next().unwrap_or(what);
        let topic = line
            .split_whitespace()
            .find(|f| f.starts_with("topic="))
            .unwrap_or_default();
        *per_loop.entry(format!("{what} {topic}")).or_default() += 1;
    }
    assert!(!per_loop.is_empty(), "no retry of the bus logged:\n{logs}");
    assert!(
        per_loop.values().all(|&n| n <= allowed),
        "{per_loop:?}: at most {allowed} line(s) each:\n{logs}"
    );

    // Back, empty: the node reconnects by itself, the same client chats again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = FAILED;
    let answer = loop {
        id += 1;
        let answer = raw_chat_call(&mut ws, id, "send", &send(id)).await;
        if answer["ok"] == true {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no send accepted 15 s after Redis came back: {answer}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(answer["id"].is_string(), "{answer}");
    let health = get(&node.url("/healthz")).await;
    assert_eq!((health.status.as_u16(), health.body.as_str()), (200, "ok"));
}

/// A Redis that answers but refuses writes can post nothing: `/healthz` says so, whether
/// it is over `maxmemory` (with `noeviction`) or an ACL forbids the chat's keys, and says
/// `ok` again once it accepts them. A PING alone passed through both.
#[tokio::test]
async fn a_redis_that_refuses_writes_makes_the_node_unhealthy() {
    let redis = RedisServer::start();
    let node = ChatNode::start("n1", Some(&redis.url()), &[]);
    let health = || async { get(&node.url("/healthz")).await };
    let h = health().await;
    assert_eq!((h.status.as_u16(), h.body.as_str()), (200, "ok"));

    assert_eq!(
        redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "+OK"
    );
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "1"]), "+OK");
    let h = health().await;
    assert_eq!(h.status, 503, "{}", h.body);
    assert!(
        h.body.starts_with("redis: ") && h.body.contains("OOM"),
        "{}",
        h.body
    );
    assert_eq!(redis.command(&["CONFIG", "SET", "maxmemory", "0"]), "+OK");
    let h = health().await;
    assert_eq!((h.status.as_u16(), h.body.as_str()), (200, "ok"));

    redis.writable_keys_only("nothing-of-the-chat:*");
    let h = health().await;
    assert_eq!(h.status, 503, "{}", h.body);
    assert!(
        h.body.starts_with("redis: ") && h.body.to_lowercase().contains("noperm"),
        "{}",
        h.body
    );
    redis.all_keys_writable();
    let h = health().await;
    assert_eq!((h.status.as_u16(), h.body.as_str()), (200, "ok"));
}

//! Chat nodes as a cluster: broadcasts between nodes through a real `redis-server` (rooms,
//! sender exclusion, binary, order, a Redis outage), two nodes on one in-process bus, one
//! node alone, `/healthz`, `x-served-by`; on the test application of `utils::placeholder`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_node::bus::MemoryBus;
use chat_node::node::{Node, NodeConfig};
use serde_json::Value;
use utils::redis::RedisServer;
use utils::{http, placeholder, request, TestServer, Ws, STEP};

fn config(node_id: &str, redis: Option<&RedisServer>) -> NodeConfig {
    NodeConfig {
        node_id: node_id.to_owned(),
        redis_url: redis.map(RedisServer::url),
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        ..NodeConfig::default()
    }
}

async fn node(node_id: &str, redis: Option<&RedisServer>) -> TestServer {
    let node = Node::new(config(node_id, redis)).await.unwrap();
    TestServer::start_node(placeholder::install(node)).await
}

/// A client connected to `/`, past its CONNECT reply and welcome: the client and its
/// socket id.
async fn client(server: &TestServer, node_id: &str) -> (Ws, String) {
    let (mut ws, _) = Ws::open(server).await;
    ws.send_text("40").await;
    let reply = next_event(&mut ws).await;
    let connect: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let sid = connect["sid"].as_str().unwrap().to_owned();
    let welcome = next_event(&mut ws).await;
    let welcome: Value = serde_json::from_str(welcome.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(welcome[0], "welcome");
    assert_eq!(welcome[1]["node"], node_id);
    assert_eq!(welcome[1]["sid"], sid.as_str());
    (ws, sid)
}

/// The next text frame, without the recovery offset a broadcast event carries last
/// (`…,"1764291234567-0"]` → `…]`): these tests are about who gets what.
async fn next_event(ws: &mut Ws) -> String {
    let text = ws.recv_text().await;
    if let Some(head) = text.strip_suffix("\"]") {
        if let Some((rest, offset)) = head.rsplit_once(",\"") {
            let is_offset = offset.split_once('-').is_some_and(|(ms, seq)| {
                !ms.is_empty()
                    && !seq.is_empty()
                    && ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit())
            });
            if is_offset {
                return format!("{rest}]");
            }
        }
    }
    text
}

/// Sends `event` with `arg` and ack id `id`; expects the ack `{ok:true}`.
async fn call(ws: &mut Ws, id: u32, event: &str, arg: &str) {
    ws.send_text(&format!("42{id}[\"{event}\",{arg}]")).await;
    assert_eq!(ws.recv_text().await, format!("43{id}[{{\"ok\":true}}]"));
}

async fn join(ws: &mut Ws, room: &str) {
    call(ws, 1, "join", &format!("{{\"room\":\"{room}\"}}")).await;
}

fn message(room: &str, from: &str, payload: &str) -> String {
    format!("42[\"message\",{{\"room\":\"{room}\",\"from\":\"{from}\",\"payload\":{payload}}}]")
}

/// Polls `/healthz` until it answers `status` (or fails after a few seconds).
async fn wait_health(server: &TestServer, status: u16) -> utils::Reply {
    let url = format!("http://{}/healthz", server.addr);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let reply = request(http().get(&url)).await;
        if reply.status == status || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_room_broadcast_reaches_members_on_both_nodes_except_the_sender() {
    let redis = RedisServer::start();
    let (a, b) = (node("a", Some(&redis)).await, node("b", Some(&redis)).await);
    let (mut sender, sender_sid) = client(&a, "a").await;
    let (mut on_a, _) = client(&a, "a").await;
    let (mut on_b, on_b_sid) = client(&b, "b").await;
    let (mut outsider, _) = client(&b, "b").await;
    for ws in [&mut sender, &mut on_a, &mut on_b] {
        join(ws, "lobby").await;
    }
    join(&mut outsider, "elsewhere").await;

    call(
        &mut sender,
        2,
        "broadcast",
        r#"{"room":"lobby","payload":{"text":"hi","n":1.5}}"#,
    )
    .await;
    let expected = message("lobby", &sender_sid, r#"{"text":"hi","n":1.5}"#);
    assert_eq!(next_event(&mut on_b).await, expected);
    assert_eq!(next_event(&mut on_a).await, expected);
    // Neither the sender nor a socket outside the room got it: their next frame is the
    // answer to their next request.
    call(&mut sender, 3, "leave", r#"{"room":"lobby"}"#).await;
    call(&mut outsider, 3, "leave", r#"{"room":"elsewhere"}"#).await;

    // After leaving, the sender is not a member any more; the others still are.
    call(&mut on_b, 4, "broadcast", r#"{"room":"lobby","payload":2}"#).await;
    assert_eq!(
        next_event(&mut on_a).await,
        message("lobby", &on_b_sid, "2")
    );
    call(&mut sender, 5, "join", r#"{"room":"x"}"#).await;
}

#[tokio::test]
async fn broadcasts_between_nodes_keep_their_order_and_their_binary_attachments() {
    let redis = RedisServer::start();
    let (a, b) = (node("a", Some(&redis)).await, node("b", Some(&redis)).await);
    let (mut sender, sender_sid) = client(&a, "a").await;
    let (mut receiver, _) = client(&b, "b").await;
    join(&mut sender, "r").await;
    join(&mut receiver, "r").await;

    for i in 0..20 {
        sender
            .send_text(&format!(r#"42["broadcast",{{"room":"r","payload":{i}}}]"#))
            .await;
    }
    for i in 0..20 {
        assert_eq!(
            next_event(&mut receiver).await,
            message("r", &sender_sid, &i.to_string())
        );
    }

    sender
        .send_text(r#"451-7["broadcast",{"room":"r","payload":{"_placeholder":true,"num":0}}]"#)
        .await;
    sender.send_binary(&[0, 1, 2, 255]).await;
    assert_eq!(next_event(&mut sender).await, r#"437[{"ok":true}]"#);
    assert_eq!(
        next_event(&mut receiver).await,
        format!(
            r#"451-["message",{{"room":"r","from":"{sender_sid}","payload":{{"_placeholder":true,"num":0}}}}]"#
        )
    );
    assert_eq!(receiver.recv_binary().await, vec![0, 1, 2, 255]);
}

#[tokio::test]
async fn a_short_redis_outage_loses_no_broadcast() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (a, b) = (node("a", Some(&redis)).await, node("b", Some(&redis)).await);
    let (mut sender, sender_sid) = client(&a, "a").await;
    let (mut receiver, _) = client(&b, "b").await;
    join(&mut sender, "r").await;
    join(&mut receiver, "r").await;

    redis.kill();
    // Accepted while Redis is down: buffered by node a.
    call(
        &mut sender,
        2,
        "broadcast",
        r#"{"room":"r","payload":"during"}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _redis = RedisServer::start_on(port).unwrap();
    call(
        &mut sender,
        3,
        "broadcast",
        r#"{"room":"r","payload":"after"}"#,
    )
    .await;
    assert_eq!(
        next_event(&mut receiver).await,
        message("r", &sender_sid, "\"during\"")
    );
    assert_eq!(
        next_event(&mut receiver).await,
        message("r", &sender_sid, "\"after\"")
    );
}

#[tokio::test]
async fn two_nodes_on_one_in_process_bus() {
    let bus = Arc::new(MemoryBus::new());
    let a = placeholder::install(Node::with_bus(config("a", None), bus.clone()).unwrap());
    let b = placeholder::install(Node::with_bus(config("b", None), bus).unwrap());
    let (a, b) = (
        TestServer::start_node(a).await,
        TestServer::start_node(b).await,
    );
    let (mut sender, sender_sid) = client(&a, "a").await;
    let (mut receiver, _) = client(&b, "b").await;
    join(&mut sender, "r").await;
    join(&mut receiver, "r").await;
    call(
        &mut sender,
        2,
        "broadcast",
        r#"{"room":"r","payload":null}"#,
    )
    .await;
    assert_eq!(
        next_event(&mut receiver).await,
        message("r", &sender_sid, "null")
    );
}

#[tokio::test]
async fn a_node_without_redis_works_alone() {
    let server = node("solo", None).await;
    let health = wait_health(&server, 200).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(health.header("x-served-by"), Some("solo"));

    let (mut one, one_sid) = client(&server, "solo").await;
    let (mut two, _) = client(&server, "solo").await;
    join(&mut one, "r").await;
    join(&mut two, "r").await;
    call(&mut one, 2, "broadcast", r#"{"room":"r","payload":[1]}"#).await;
    assert_eq!(next_event(&mut two).await, message("r", &one_sid, "[1]"));

    // A malformed request is refused in the ack.
    one.send_text(r#"429["join",{"rom":"r"}]"#).await;
    let refusal = next_event(&mut one).await;
    let refusal: Value = serde_json::from_str(refusal.strip_prefix("439").unwrap()).unwrap();
    assert_eq!(
        refusal,
        serde_json::json!([{"ok": false, "error": "expected {room: string}"}])
    );
}

#[tokio::test]
async fn healthz_follows_redis_and_every_response_names_the_node() {
    let mut redis = RedisServer::start();
    let server = node("n1", Some(&redis)).await;
    let up = wait_health(&server, 200).await;
    assert_eq!((up.status, up.body.as_str()), (200, "ok"));
    assert_eq!(up.header("x-served-by"), Some("n1"));

    for url in [
        server.url("transport=polling"),
        server.url("transport=nope"),
        format!("http://{}/nowhere", server.addr),
    ] {
        let reply = request(http().get(&url)).await;
        assert_eq!(reply.header("x-served-by"), Some("n1"), "{url}");
    }

    redis.kill();
    let down = wait_health(&server, 503).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.body.starts_with("redis"), "{}", down.body);
    assert_eq!(down.header("x-served-by"), Some("n1"));
}

#[tokio::test]
async fn a_node_refuses_to_start_when_its_redis_does_not_answer() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let config = NodeConfig {
        redis_url: Some(url),
        ..config("n1", None)
    };
    let started = tokio::time::timeout(STEP, Node::new(config)).await.unwrap();
    assert!(started.is_err());
}

//! What one client can make a chat node hold, end to end on a real node: a polling client
//! that never polls and a WebSocket client that never reads are closed as slow clients
//! once more than `--max-queued-bytes` wait for them (counted in
//! `switchyard_chat_sessions_closed_total{reason="slow_client"}`), while the other clients
//! carry on, also when the WebSocket is bridged to the session's node by another (needs
//! `redis-server`); `history` and `rooms` are rate limited per user; a binary packet whose
//! attachments together pass `--max-payload` closes its connection with `1002 parse error`
//! rather than being buffered.
//!
//! Build the node first: `cargo build -p chat-node --bin chat-node && cargo test -p tests
//! --test chat_client_memory`.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tests::chatnode::{engine_url, polling_open, raw_chat_call, raw_chat_socket, ChatNode};
use tests::redis::RedisServer;
use tests::{client, free_port, metric, send, wait_until, ws_recv, Ws, STEP_TIMEOUT};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The longest a node takes to notice a client over its limits (a few seconds alone;
/// the machine is shared).
const NOTICE: Duration = Duration::from_secs(30);

/// `history` answers of about 110 kB (50 messages of 2000 characters) against a queue of
/// 200 kB: two unread answers are too many. The limits on messages and `history` are
/// out of the way.
const QUEUE_FLAGS: [&str; 8] = [
    "--max-payload",
    "100000",
    "--max-queued-bytes",
    "200000",
    "--rate-limit",
    "1000/1s",
    "--history-rate-limit",
    "100000/1s",
];

/// A node with `flags` and its metrics served: the node and its metrics URL.
fn node_with_metrics(flags: &[&str]) -> (ChatNode, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-listen", metrics.as_str()];
    args.extend_from_slice(flags);
    (
        ChatNode::start("n1", None, &args),
        format!("http://{metrics}/metrics"),
    )
}

const SLOW_CLIENTS: &str = r#"switchyard_chat_sessions_closed_total{reason="slow_client"}"#;

/// Waits until `count` sessions have been closed as slow clients.
async fn slow_clients(metrics: &str, count: f64) {
    wait_until(NOTICE, "a session closed as a slow client", || async move {
        metric(metrics, SLOW_CLIENTS).await == Some(count)
    })
    .await;
}

/// Fills `lobby` with 50 messages of 2000 characters, from a socket that stays open and
/// reads: the client the slow one must not disturb.
async fn filled_lobby(node: &ChatNode) -> Ws {
    let mut ws = raw_chat_socket(node, "filler").await;
    let text = "x".repeat(2000);
    for id in 0..50 {
        let request = json!({"room": "lobby", "text": text}).to_string();
        let sent = raw_chat_call(&mut ws, id, "send", &request).await;
        assert_eq!(sent["ok"], true, "{sent}");
    }
    ws
}

/// The other client still gets its answers: a whole history page.
async fn still_served(ws: &mut Ws, id: u64) {
    let page = raw_chat_call(ws, id, "history", r#"{"room":"lobby","limit":100}"#).await;
    assert_eq!(
        page["messages"].as_array().map(Vec::len),
        Some(50),
        "{page}"
    );
}

/// A WebSocket to `url` on `node` (not yet read) whose client will not read: a small
/// receive buffer, so that the node's writes block soon after the client stops reading,
/// rather than after the megabytes the kernel would take on its behalf.
async fn unread_websocket(node: &ChatNode, url: &str) -> WebSocketStream<TcpStream> {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let stream = socket.connect(node.addr()).await.expect("connecting");
    let (ws, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("the WebSocket handshake in time")
        .expect("a WebSocket");
    ws
}

/// Reads what the node wrote before it closed the connection, then the end: a close frame
/// saying `1008 slow client` if it fit behind what the client did not read.
async fn read_to_the_end(ws: &mut WebSocketStream<TcpStream>) {
    let ended = tokio::time::timeout(NOTICE, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| (f.code, f.reason.to_string()));
            }
        }
        None
    })
    .await;
    match ended {
        Ok(Some((code, reason))) => {
            assert_eq!((code, reason.as_str()), (CloseCode::Policy, "slow client"));
        }
        Ok(None) => {}
        Err(_) => panic!("the slow client's connection is still open"),
    }
}

const BRIDGES_OPEN: &str = "switchyard_chat_bridges_open";

/// `count` `history` requests (ack ids from 1), as one payload or one frame each.
fn history_requests(count: u64) -> Vec<String> {
    (1..=count)
        .map(|id| format!(r#"42{id}["history",{{"room":"lobby","limit":100}}]"#))
        .collect()
}

#[tokio::test]
async fn a_polling_client_that_never_polls_is_closed_as_a_slow_client() {
    let (node, metrics) = node_with_metrics(&QUEUE_FLAGS);
    let mut filler = filled_lobby(&node).await;
    let sid = polling_open(&node, "idle").await;
    let url = engine_url(&node, "polling", Some(&sid));
    // Ten answers of 110 kB, 1.1 MB, for a POST of 500 bytes; the client never polls.
    let body = history_requests(10).join("\u{1e}");
    let posted = send(client().post(&url).body(body)).await;
    assert_eq!((posted.status.as_u16(), posted.body.as_str()), (200, "ok"));
    slow_clients(&metrics, 1.0).await;
    let poll = send(client().get(&url)).await;
    assert_eq!(
        (poll.status.as_u16(), poll.body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#),
        "the session is gone, its answers with it"
    );
    still_served(&mut filler, 100).await;
}

#[tokio::test]
async fn a_websocket_client_that_never_reads_is_closed_as_a_slow_client() {
    let (node, metrics) = node_with_metrics(&QUEUE_FLAGS);
    let mut filler = filled_lobby(&node).await;
    let url = engine_url(&node, "websocket", None).replacen("http", "ws", 1);
    let mut ws = unread_websocket(&node, &url).await;
    ws.send(Message::text(r#"40{"name":"noread"}"#))
        .await
        .expect("sending CONNECT");
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"42["welcome""#) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no welcome: {other:?}"),
        }
    }
    // 300 answers of 110 kB, 33 MB: far more than the kernel's buffers take.
    for request in history_requests(300) {
        ws.feed(Message::text(request)).await.expect("sending");
    }
    ws.flush().await.expect("sending");
    slow_clients(&metrics, 1.0).await;
    read_to_the_end(&mut ws).await;
    still_served(&mut filler, 100).await;
}

#[tokio::test]
async fn history_and_rooms_are_rate_limited_per_user() {
    let node = ChatNode::start(
        "n1",
        None,
        &[
            "--history-rate-limit",
            "3/60s",
            "--rooms-rate-limit",
            "2/60s",
        ],
    );
    let mut ann = raw_chat_socket(&node, "ann").await;
    let mut bob = raw_chat_socket(&node, "bob").await;
    let history = r#"{"room":"lobby"}"#;
    for id in 1..=3 {
        let page = raw_chat_call(&mut ann, id, "history", history).await;
        assert_eq!(page["ok"], true, "{page}");
    }
    let limited = json!({"ok": false, "error": "rate limited"});
    assert_eq!(
        raw_chat_call(&mut ann, 4, "history", history).await,
        limited
    );
    // Its own limit: `rooms` still answers, twice.
    for id in 5..=6 {
        let rooms = raw_chat_call(&mut ann, id, "rooms", "{}").await;
        assert_eq!(rooms["ok"], true, "{rooms}");
    }
    assert_eq!(raw_chat_call(&mut ann, 7, "rooms", "{}").await, limited);
    // Per user: another one is not limited.
    let page = raw_chat_call(&mut bob, 1, "history", history).await;
    assert_eq!(page["ok"], true, "{page}");
    let rooms = raw_chat_call(&mut bob, 2, "rooms", "{}").await;
    assert_eq!(rooms["ok"], true, "{rooms}");
}

#[tokio::test]
async fn attachments_larger_together_than_the_payload_limit_close_the_connection() {
    let node = ChatNode::start("n1", None, &["--max-payload", "100000"]);
    let mut other = raw_chat_socket(&node, "other").await;
    let mut ws = raw_chat_socket(&node, "sender").await;
    // Three attachments announced; two of 60 kB are more than one payload together.
    let placeholders: Vec<_> = (0..3)
        .map(|num| json!({"_placeholder": true, "num": num}))
        .collect();
    let header = json!(["send", {"room": "lobby", "text": "x", "files": placeholders}]);
    ws.send(Message::text(format!("453-1{header}")))
        .await
        .expect("sending the header");
    for _ in 0..2 {
        ws.send(Message::binary(vec![7u8; 60_000]))
            .await
            .expect("sending an attachment");
    }
    let closed = tokio::time::timeout(NOTICE, async {
        loop {
            match ws_recv(&mut ws, NOTICE).await {
                Some(Message::Close(frame)) => {
                    return frame.map(|f| (f.code, f.reason.to_string()))
                }
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("the connection is still open, its attachments buffered");
    assert_eq!(
        closed,
        Some((CloseCode::Protocol, "parse error".to_owned())),
        "closed for its attachments"
    );
    let page = raw_chat_call(&mut other, 1, "history", r#"{"room":"lobby"}"#).await;
    assert_eq!(page["ok"], true, "the other client is served: {page}");
}

#[tokio::test]
async fn a_bridged_websocket_client_that_never_reads_is_closed_as_a_slow_client() {
    let redis = RedisServer::start();
    let url = redis.url();
    // The session lives on n2; its upgrade to WebSocket lands on n1, which bridges it.
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut flags = vec!["--metrics-listen", metrics.as_str()];
    flags.extend_from_slice(&QUEUE_FLAGS);
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    let metrics = format!("http://{metrics}/metrics");
    // The owner takes the answers as fast as the bus carries them (its own queue does not
    // fill): they pile up on n1, behind the client that does not read.
    let owner_flags = QUEUE_FLAGS.map(|flag| match flag {
        "200000" => "100000000",
        other => other,
    });
    let n2 = ChatNode::start("n2", Some(&url), &owner_flags);
    let mut filler = filled_lobby(&n2).await;
    let sid = polling_open(&n2, "noread").await;
    let poll_url = engine_url(&n2, "polling", Some(&sid));
    wait_until(STEP_TIMEOUT, "the welcome over polling", || async {
        let poll = send(client().get(&poll_url)).await;
        assert_eq!(poll.status, 200, "poll: {}", poll.body);
        poll.body.contains(r#"42["welcome""#)
    })
    .await;
    let url = engine_url(&n1, "websocket", Some(&sid)).replacen("http", "ws", 1);
    let mut ws = unread_websocket(&n1, &url).await;
    ws.send(Message::text("2probe")).await.expect("probing");
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "3probe" => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no 3probe: {other:?}"),
        }
    }
    ws.send(Message::text("5")).await.expect("upgrading");
    assert_eq!(metric(&metrics, BRIDGES_OPEN).await, Some(1.0));
    // 150 answers of 110 kB, 16 MB, far more than the kernel's buffers take; fewer than
    // the owner lets wait from a bridged client (else it ends the session for that first).
    for request in history_requests(150) {
        ws.feed(Message::text(request)).await.expect("sending");
    }
    ws.flush().await.expect("sending");
    wait_until(NOTICE, "the bridge closed", || async {
        metric(&metrics, BRIDGES_OPEN).await == Some(0.0)
    })
    .await;
    read_to_the_end(&mut ws).await;
    still_served(&mut filler, 100).await;
}

//! A chat node's graceful stop (SIGTERM) in a cluster with shared sessions, seen from the
//! other node and from raw Engine.IO clients: two `chat-node` processes on one real
//! `redis-server`, requests sent to chosen nodes so that they are forwarded or bridged.
//!
//! - A long poll that another node forwards to the stopping node (the session's owner) gets
//!   the session's close packet at once, and the session is unknown everywhere right after:
//!   before, the stopping node exited before its answer and its owner records reached
//!   Redis, and the client waited for the forwarding timeout (`ping_interval +
//!   ping_timeout`, 45 s by default) with no message delivered.
//! - A WebSocket that the stopping node bridges to another node's session gets a Close
//!   frame 1001, and the owner learns at once that its client is gone: before, the
//!   connection was cut, and the owner kept the socket connected until its ping timeout
//!   (so a client reconnecting elsewhere could not recover it).
//! - A long poll that a stopping node forwards to another node (the session's owner) is
//!   answered at once with a noop, and the session goes on there: before, the poll was held
//!   until the next ping and cut at the end of the grace period, and the client started a
//!   new session.
//! - An idle node exits at once, and its log, written to a file, is plain text (it had
//!   terminal colour codes).
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_shutdown`.

use std::time::{Duration, Instant};

use futures::SinkExt as _;
use tests::chatnode::{engine_url, polling_open, upgrade_to_websocket, ChatNode};
use tests::redis::RedisServer;
use tests::{client, send, wait_until, ws_recv, STEP_TIMEOUT};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// How soon the other node must know: far below the 45 s it took, well above a stop.
const PROMPT: Duration = Duration::from_secs(4);

/// A chat socket on long-polling whose session `owner` holds: the handshake and CONNECT
/// sent to `owner`, polled there until the `welcome` and the lobby's `presence` event.
/// Returns the Engine.IO session id.
async fn polling_chat_session(owner: &ChatNode, name: &str) -> String {
    let http = client();
    let sid = polling_open(owner, name).await;
    let url = engine_url(owner, "polling", Some(&sid));
    // The welcome, and the lobby's presence event that follows it through the bus: once
    // both are in, nothing is queued and a poll waits.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let (mut welcome, mut presence) = (false, false);
    while !(welcome && presence) {
        let poll = tokio::time::timeout_at(deadline.into(), send(http.get(&url)))
            .await
            .expect("the welcome and the presence event in time");
        assert_eq!(poll.status, 200, "poll: {}", poll.body);
        welcome |= poll.body.contains(r#"42["welcome""#);
        presence |= poll.body.contains(r#"42["presence""#);
    }
    sid
}

#[tokio::test]
async fn a_poll_forwarded_to_a_stopping_node_is_answered_at_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut n1 = ChatNode::start("n1", Some(&url), &[]);
    let n2 = ChatNode::start("n2", Some(&url), &[]);
    let sid = polling_chat_session(&n1, "stopper").await;

    // A long poll on n2 for n1's session: n2 forwards it to n1 (through n1's RPC stream),
    // where it waits, the queue being empty, for the next ping (25 s away).
    let pending = tokio::spawn({
        let url = engine_url(&n2, "polling", Some(&sid));
        async move {
            let reply = send(client().get(url)).await;
            (reply.status.as_u16(), reply.body, Instant::now())
        }
    });
    let redis_ref = &redis;
    wait_until(STEP_TIMEOUT, "the poll forwarded to n1", || async move {
        // The topic exists once something was appended to it (n1 deletes what it took).
        redis_ref.command(&["EXISTS", "syd:node:n1"]) == ":1"
    })
    .await;

    n1.terminate();
    let stopped = Instant::now();
    let (status, body, answered) = tokio::time::timeout(PROMPT, pending)
        .await
        .expect("the forwarded poll answered promptly once its owner stops")
        .expect("the poll task");
    // The close packet; or, had the request reached n1 after its sessions closed, the
    // error that makes a client reconnect.
    assert!(
        (status, body.as_str()) == (200, "1") || status == 400,
        "{status} {body:?}"
    );
    assert!(answered.duration_since(stopped) < PROMPT);

    // The session is gone for every node: its owner record was deleted.
    let again = tokio::time::timeout(
        PROMPT,
        send(client().get(engine_url(&n2, "polling", Some(&sid)))),
    )
    .await
    .expect("a poll for the closed session answered at once");
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("Session ID unknown"), "{}", again.body);

    let (status, took) = n1
        .wait_exit(Duration::from_secs(7))
        .expect("n1 exits within its grace period");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test]
async fn a_poll_a_stopping_node_forwarded_is_released_and_the_session_lives_on() {
    let redis = RedisServer::start();
    let url = redis.url();
    let n1 = ChatNode::start("n1", Some(&url), &[]);
    let mut n2 = ChatNode::start("n2", Some(&url), &[]);
    let sid = polling_chat_session(&n1, "traveller").await;

    // n2 forwards a long poll for n1's session; it waits on n1 for the next ping.
    let pending = tokio::spawn({
        let url = engine_url(&n2, "polling", Some(&sid));
        async move {
            let reply = send(client().get(url)).await;
            (reply.status.as_u16(), reply.body)
        }
    });
    let redis_ref = &redis;
    wait_until(STEP_TIMEOUT, "the poll forwarded to n1", || async move {
        // The topic exists once something was appended to it (n1 deletes what it took).
        redis_ref.command(&["EXISTS", "syd:node:n1"]) == ":1"
    })
    .await;

    // The forwarding node stops: the owner answers the poll now, with a noop, rather than
    // at the next ping; held, the poll would be cut at the end of n2's grace period.
    n2.terminate();
    let (status, body) = tokio::time::timeout(PROMPT, pending)
        .await
        .expect("the forwarded poll released promptly once the forwarding node stops")
        .expect("the poll task");
    assert_eq!((status, body.as_str()), (200, "6"));

    // The session goes on where it lives: an event and its ack, through n1.
    let url = engine_url(&n1, "polling", Some(&sid));
    let posted = send(client().post(&url).body(r#"421["rooms",{}]"#)).await;
    assert_eq!((posted.status.as_u16(), posted.body.as_str()), (200, "ok"));
    let ack = tokio::time::timeout(PROMPT, send(client().get(&url)))
        .await
        .expect("the ack polled in time");
    assert_eq!(ack.status, 200, "{}", ack.body);
    assert!(ack.body.starts_with("431"), "{}", ack.body);

    let (status, _) = n2
        .wait_exit(Duration::from_secs(7))
        .expect("n2 exits within its grace period");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_websocket_bridged_by_a_stopping_node_is_closed_and_its_owner_told() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut n1 = ChatNode::start("n1", Some(&url), &[]);
    let n2 = ChatNode::start("n2", Some(&url), &[]);
    // The session lives on n2; its upgrade to WebSocket lands on n1, which bridges it.
    let sid = polling_chat_session(&n2, "bridged").await;
    let presence = "syd:chat:presence:lobby:n2";
    assert_eq!(redis.command(&["HLEN", presence]), ":1", "online on n2");
    let mut ws = upgrade_to_websocket(&n1, &sid).await;
    // A round trip through the bridge: the upgrade is complete.
    ws.send(Message::text(r#"421["rooms",{}]"#))
        .await
        .expect("an event");
    loop {
        match ws_recv(&mut ws, STEP_TIMEOUT).await {
            Some(Message::Text(t)) if t.starts_with("431") => break,
            Some(_) => {}
            None => panic!("no answer through the bridge"),
        }
    }

    n1.terminate();
    let close = loop {
        match ws_recv(&mut ws, PROMPT).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("the bridged WebSocket ended without a Close frame"),
        }
    };
    assert_eq!(
        close.as_ref().map(|f| f.code),
        Some(CloseCode::Away),
        "{close:?}"
    );
    // The owner closed the session: its socket left, so the client may recover it
    // elsewhere.
    let redis_ref = &redis;
    wait_until(PROMPT, "the socket gone from n2", || async move {
        redis_ref.command(&["HLEN", presence]) == ":0"
    })
    .await;
    let (status, _) = n1
        .wait_exit(Duration::from_secs(7))
        .expect("n1 exits within its grace period");
    assert!(status.success(), "{status}");
}

#[test]
fn an_idle_node_stops_at_once_and_logs_plain_text() {
    let mut node = ChatNode::start("idle", None, &[]);
    node.terminate();
    let (status, took) = node
        .wait_exit(Duration::from_secs(7))
        .expect("the node exits");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "an idle node took {took:?}");
    // Its stderr is a file here, as under a supervisor: no terminal colour codes.
    let logs = node.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains('\x1b'), "escape codes in the log: {logs:?}");
}

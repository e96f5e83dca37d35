//! What one client can take from a chat node, connection by connection, end to end with
//! `chat-node` processes and raw sockets:
//!
//! - A connection that sends no request, or sends its head a line at a time, is closed
//!   after `--header-timeout` (it was held forever: slowloris), and one left idle after its
//!   requests (h2c) after `--idle-timeout`; a POST whose body stops coming is answered
//!   400 after `--ping-timeout` (as long as a pong may take), and its connection closed; a
//!   WebSocket, and a long poll, live on beyond all of them.
//! - At most `--max-tcp-connections` are open at once, WebSockets counted: one beyond
//!   gets 503 at once while those open are served, and a place freed serves again (idle
//!   sockets filled the node's open files: `/healthz` timed out).
//! - One client (an address, named by `X-Forwarded-For` from a trusted proxy) may have
//!   `--max-sessions-per-client` sessions open; others are not affected (handshakes
//!   that never came back filled `--max-connections` for everyone for 45 s). From a peer
//!   that is not a trusted proxy, `X-Forwarded-For` is ignored.
//! - A polling session whose client does not come back after its handshake closes after
//!   `--first-poll-timeout` (it held its place until its first ping timed out).
//! - New users (CONNECTs without a token) and `create`s are limited per client address,
//!   across the nodes of a cluster (each new user came with fresh per-user limits: room
//!   creation was unlimited).
//!
//! Build the node first: `cargo build -p chat-node --bin chat-node && cargo test -p tests
//! --test chat_conn_limits`. The cluster test needs `redis-server`.

use std::time::Duration;

use futures::SinkExt as _;
use serde_json::Value;
use tests::chatnode::{engine_url, events_until, raw_chat_call, raw_chat_open, ChatNode};
use tests::redis::RedisServer;
use tests::ws::Ws;
use tests::{client, send, wait_until, ws_open, ws_recv, WsOptions, STEP_TIMEOUT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Reads `stream` until the node closes it; `false` if it is still open after
/// [`STEP_TIMEOUT`] (far beyond the header timeouts the tests set).
async fn closed_by_node(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, read_to_end)
        .await
        .is_ok()
}

/// One HTTP/1.1 request on a fresh connection, answered with `Connection: close`: the
/// raw answer (status line, headers, body).
async fn raw_request(node: &ChatNode, head: &str) -> String {
    match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(node.addr())).await {
        Ok(Ok(stream)) => request_on(stream, head).await,
        _ => String::new(),
    }
}

/// One HTTP/1.1 request on `stream`, answered with `Connection: close`: the raw answer,
/// empty when none came within [`STEP_TIMEOUT`].
async fn request_on(mut stream: TcpStream, head: &str) -> String {
    let exchange = async {
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        // A reset after the answer (the node closed with our request unread) still leaves
        // what was read.
        let _ = stream.read_to_end(&mut answer).await;
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_are_closed_after_the_header_timeout() {
    let node = ChatNode::start("n1", None, &["--header-timeout", "1s"]);
    let mut silent = TcpStream::connect(node.addr()).await.expect("connecting");
    let mut slow = TcpStream::connect(node.addr()).await.expect("connecting");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: node\r\n")
        .await
        .expect("writing the head's first lines");
    let (mut reader, mut writer) = slow.into_split();
    // One more header line every 200 ms, never the end of the head, until the node closes.
    let trickle = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            every.tick().await;
            if writer.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return;
            }
        }
    });
    assert!(
        closed_by_node(&mut silent).await,
        "a connection that never sent a byte is still open"
    );
    let mut buf = [0u8; 1024];
    let slow_closed = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    trickle.abort();
    assert!(
        slow_closed,
        "a head sent a line every 200 ms is still being read"
    );
    let answer = raw_request(&node, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// An HTTP/1 keep-alive connection between requests waits for the idle timeout, not the
/// header timeout: the proxy keeps idle connections to a node for 30 s, and a node that
/// closed them at 10 s could close the one the proxy had just chosen for a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_between_requests_waits_for_the_idle_timeout() {
    let node = ChatNode::start(
        "n1",
        None,
        &["--header-timeout", "1s", "--idle-timeout", "4s"],
    );
    let mut conn = TcpStream::connect(node.addr()).await.expect("connecting");
    let ask = "GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n";
    let mut buf = [0u8; 1024];
    for n in 0..2 {
        conn.write_all(ask.as_bytes()).await.expect("a request");
        let read = tokio::time::timeout(STEP_TIMEOUT, conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let answer = String::from_utf8_lossy(&buf[..read]);
        assert!(answer.starts_with("HTTP/1.1 200"), "request {n}: {answer}");
        if n == 0 {
            // Past the header timeout, well within the idle timeout: the time passing is
            // what is tested.
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
    }
    assert!(
        closed_by_node(&mut conn).await,
        "an idle keep-alive connection is still open past the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_idle_after_its_requests_is_closed_after_the_idle_timeout() {
    // h2c: hyper's h2 has no idle timeout of its own.
    let node = ChatNode::start(
        "n1",
        None,
        &["--idle-timeout", "1s", "--header-timeout", "60s"],
    );
    let tcp = TcpStream::connect(node.addr()).await.expect("connecting");
    let (h2, connection) = tokio::time::timeout(STEP_TIMEOUT, h2::client::handshake(tcp))
        .await
        .expect("an h2c handshake in time")
        .expect("an h2c handshake");
    let mut connection = tokio::spawn(connection);
    let url = node.url("/healthz");
    let (status, body) = tests::h2client::get(&h2, &url)
        .await
        .expect("GET /healthz over h2c");
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
    let ended = tokio::time::timeout(STEP_TIMEOUT, &mut connection).await;
    assert!(ended.is_ok(), "the idle h2c connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_long_polls_outlive_the_header_and_idle_timeouts() {
    let node = ChatNode::start(
        "n1",
        None,
        &[
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "1s",
            "--ping-interval",
            "2500ms",
        ],
    );
    let mut ws = raw_chat_open(&node).await;
    // The first ping comes 2.5 s after the handshake: the WebSocket lived through both
    // timeouts.
    let ping = ws_recv(&mut ws, STEP_TIMEOUT).await;
    assert!(
        matches!(&ping, Some(Message::Text(t)) if t.as_str() == "2"),
        "{ping:?}"
    );
    ws.send(Message::text("3")).await.expect("a pong");

    let http = client();
    let open = send(http.get(engine_url(&node, "polling", None))).await;
    assert_eq!(open.status, 200, "{}", open.body);
    let sid = open.body.split('"').nth(3).expect("a sid").to_owned();
    // Pending until the first ping, 2.5 s after the handshake.
    let poll = send(http.get(engine_url(&node, "polling", Some(&sid)))).await;
    assert_eq!((poll.status.as_u16(), poll.body.as_str()), (200, "2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_sent_too_slowly_is_refused_and_its_connection_closed() {
    // The body has as long as a pong (`--ping-timeout`); the first ping is 25 s away.
    let node = ChatNode::start("n1", None, &["--ping-timeout", "1s"]);
    let (status, body) = handshake_as(&node, None).await;
    assert_eq!(status, 200, "{body}");
    let sid = body.split('"').nth(3).expect("a sid");
    let mut post = TcpStream::connect(node.addr()).await.expect("connecting");
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: node\r\n\
         Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n40"
    );
    post.write_all(head.as_bytes())
        .await
        .expect("a head and 2 bytes");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(STEP_TIMEOUT, post.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        closed.is_ok(),
        "no answer to a POST whose body stopped: {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_at_once_and_the_others_are_served() {
    let node = ChatNode::start(
        "n1",
        None,
        &["--max-tcp-connections", "4", "--header-timeout", "60s"],
    );
    // One upgraded WebSocket and three idle sockets: four places taken.
    let mut ws = raw_chat_open(&node).await;
    ws.send(Message::text(r#"40{"name":"ann"}"#))
        .await
        .expect("CONNECT");
    events_until(&mut ws, "welcome", |_| true).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(node.addr()).await.expect("connecting"));
    }
    // Accepted in order: the idle ones hold their places before this one comes.
    let answer = raw_request(&node, HEALTHZ).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.ends_with("too many connections\n"),
        "a fifth connection: {answer:?}"
    );
    // The WebSocket is served as before.
    let rooms = raw_chat_call(&mut ws, 1, "rooms", "{}").await;
    assert_eq!(rooms["ok"], true, "{rooms}");
    // A place freed serves again.
    drop(idle.pop());
    wait_until(STEP_TIMEOUT, "a freed place serves /healthz", || async {
        raw_request(&node, HEALTHZ)
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

/// A TCP connection to `node` from the loopback address `from`.
async fn connect_from(node: &ChatNode, from: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    let from: std::net::IpAddr = from.parse().expect("an address");
    socket.bind((from, 0).into()).expect("binding");
    socket.connect(node.addr()).await.expect("connecting")
}

/// `/healthz` on `stream`, with `Connection: close`: the raw answer.
async fn healthz_on(stream: TcpStream) -> String {
    request_on(stream, HEALTHZ).await
}

/// One address may have `--max-pending-per-address` connections that sent nothing yet;
/// one more gets 503 at once, while other addresses are served, and a connection that
/// sends its request gives its place back. Without it, one address holding silent
/// connections took the node's whole cap for `--header-timeout` at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_the_node_with_connections_that_send_nothing() {
    // Loopback is a trusted proxy by default, whose connections are not counted.
    let node = ChatNode::start(
        "n1",
        None,
        &[
            "--trusted-proxies",
            "none",
            "--max-pending-per-address",
            "3",
            "--header-timeout",
            "60s",
        ],
    );
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from(&node, "127.0.0.1").await);
    }
    let answer = healthz_on(connect_from(&node, "127.0.0.1").await).await;
    assert!(
        answer.starts_with("HTTP/1.1 503")
            && answer.ends_with("too many new connections from this address\n"),
        "a fourth connection from the same address: {answer:?}"
    );
    let answer = healthz_on(connect_from(&node, "127.0.0.2").await).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another address: {answer:?}"
    );
    // One of the silent ones sends its request, and stays open (kept alive): its place
    // was given back when the request came.
    let kept = &mut silent[0];
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .await
        .expect("a request");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(STEP_TIMEOUT, kept.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("reading");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = healthz_on(connect_from(&node, "127.0.0.1").await).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after one sent its request: {answer:?}"
    );
}

/// A polling handshake on `node` from the client `xff` names (the test's peer, loopback, is
/// a trusted proxy by default): the status and body.
async fn handshake_as(node: &ChatNode, xff: Option<&str>) -> (u16, String) {
    let mut request = client().get(engine_url(node, "polling", None));
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let reply = send(request).await;
    (reply.status.as_u16(), reply.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_session() {
    let node = ChatNode::start(
        "n1",
        None,
        &["--max-connections", "10", "--max-sessions-per-client", "3"],
    );
    // The proxy appended the client's address after whatever the client claimed.
    let attacker = "10.9.9.9, 203.0.113.7";
    for _ in 0..3 {
        let (status, body) = handshake_as(&node, Some(attacker)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = handshake_as(&node, Some("1.2.3.4, 203.0.113.7")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            429,
            r#"{"code":4,"message":"Too many sessions from this client"}"#
        )
    );
    // Other clients behind the proxy, and the proxy's own address, are not affected.
    assert_eq!(handshake_as(&node, Some("198.51.100.2")).await.0, 200);
    assert_eq!(handshake_as(&node, None).await.0, 200);
    // A WebSocket handshake counts as well.
    let url = engine_url(&node, "websocket", None).replace("http://", "ws://");
    let opts = WsOptions {
        headers: vec![("x-forwarded-for".into(), "203.0.113.7".into())],
        ..WsOptions::default()
    };
    let refused = match ws_open(&url, &opts).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("a WebSocket handshake failed: {error}"),
        Ok(_) => panic!("a fourth session opened over WebSocket"),
    };
    assert_eq!(refused, 429);

    // From a peer that is no trusted proxy, X-Forwarded-For names no one.
    let direct = ChatNode::start(
        "n2",
        None,
        &[
            "--max-sessions-per-client",
            "2",
            "--trusted-proxies",
            "none",
        ],
    );
    assert_eq!(handshake_as(&direct, Some("198.51.100.3")).await.0, 200);
    assert_eq!(handshake_as(&direct, Some("198.51.100.4")).await.0, 200);
    assert_eq!(handshake_as(&direct, Some("198.51.100.5")).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_whose_client_never_comes_back_closes_soon() {
    // The first ping would come 25 s after the handshake, its timeout 20 s later.
    let node = ChatNode::start(
        "n1",
        None,
        &[
            "--max-sessions-per-client",
            "1",
            "--first-poll-timeout",
            "1s",
        ],
    );
    let gone = "203.0.113.8";
    assert_eq!(handshake_as(&node, Some(gone)).await.0, 200);
    assert_eq!(handshake_as(&node, Some(gone)).await.0, 429);

    // A client that comes back keeps its session.
    let http = client();
    let (status, body) = handshake_as(&node, Some("203.0.113.9")).await;
    assert_eq!(status, 200, "{body}");
    let sid = body.split('"').nth(3).expect("a sid").to_owned();
    let url = engine_url(&node, "polling", Some(&sid));
    let post = |payload: &'static str| {
        send(
            http.post(&url)
                .header("x-forwarded-for", "203.0.113.9")
                .body(payload),
        )
    };
    assert_eq!(post(r#"40{"name":"bo"}"#).await.status, 200);
    let poll = send(http.get(&url)).await;
    assert!(poll.body.contains("welcome"), "{}", poll.body);

    wait_until(
        STEP_TIMEOUT,
        "the session of a client that never came back is gone",
        || async { handshake_as(&node, Some(gone)).await.0 == 200 },
    )
    .await;
    // At least the timeout has passed, and the client that came back is still there.
    let alive = post(r#"42["typing",{"room":"lobby"}]"#).await;
    assert_eq!((alive.status.as_u16(), alive.body.as_str()), (200, "ok"));
}

/// A raw chat WebSocket on `node` from the client `xff` names, its Engine.IO open packet
/// read.
async fn chat_ws_as(node: &ChatNode, xff: &str) -> Ws {
    let url = engine_url(node, "websocket", None).replace("http://", "ws://");
    let opts = WsOptions {
        headers: vec![("x-forwarded-for".into(), xff.into())],
        ..WsOptions::default()
    };
    let (mut ws, _) = ws_open(&url, &opts).await.expect("a WebSocket");
    let open = ws_recv(&mut ws, STEP_TIMEOUT).await;
    assert!(
        matches!(&open, Some(Message::Text(t)) if t.starts_with('0')),
        "{open:?}"
    );
    ws
}

/// Connects to the chat on `node` from `xff` with `auth`: the `welcome`'s payload, or the
/// connect error's message.
async fn connect_as(node: &ChatNode, xff: &str, auth: &Value) -> (Ws, Result<Value, String>) {
    let mut ws = chat_ws_as(node, xff).await;
    ws.send(Message::text(format!("40{auth}")))
        .await
        .expect("CONNECT");
    loop {
        match ws_recv(&mut ws, STEP_TIMEOUT).await {
            Some(Message::Text(t)) if t.starts_with("44") => {
                let error: Value = serde_json::from_str(&t[2..]).unwrap_or_default();
                let message = error["message"].as_str().unwrap_or_default().to_owned();
                return (ws, Err(message));
            }
            Some(Message::Text(t)) if t.starts_with(r#"42["welcome""#) => {
                let event: Value = serde_json::from_str(&t[2..]).unwrap_or_default();
                return (ws, Ok(event[1].clone()));
            }
            Some(_) => {}
            None => panic!("no answer to CONNECT from {}", node.id()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_users_and_room_creations_are_limited_per_client() {
    let node = ChatNode::start(
        "n1",
        None,
        &[
            "--new-user-rate-limit",
            "2/1h",
            "--create-rate-limit",
            "3/1h",
            "--rate-limit",
            "1000/1s",
        ],
    );
    let a = "203.0.113.10";
    let (mut first, welcome) = connect_as(&node, a, &serde_json::json!({"name": "a1"})).await;
    let token = welcome.expect("a first user")["token"].clone();
    let (mut second, welcome) = connect_as(&node, a, &serde_json::json!({"name": "a2"})).await;
    welcome.expect("a second user");
    let (_, third) = connect_as(&node, a, &serde_json::json!({"name": "a3"})).await;
    assert_eq!(third, Err("rate limited".to_owned()));
    // A known user comes back from the same client; a new one from another client.
    let (_, again) = connect_as(&node, a, &serde_json::json!({"name": "a1", "token": token})).await;
    assert!(again.is_ok(), "{again:?}");
    let (mut other, welcome) =
        connect_as(&node, "198.51.100.10", &serde_json::json!({"name": "b"})).await;
    welcome.expect("a user of another client");

    // Three rooms for the client, whichever of its users makes them.
    for (id, room) in [(1, "one"), (2, "two")] {
        let made =
            raw_chat_call(&mut first, id, "create", &format!(r#"{{"room":"{room}"}}"#)).await;
        assert_eq!(made["ok"], true, "{made}");
    }
    let made = raw_chat_call(&mut second, 1, "create", r#"{"room":"three"}"#).await;
    assert_eq!(made["ok"], true, "{made}");
    let refused = raw_chat_call(&mut second, 2, "create", r#"{"room":"four"}"#).await;
    assert_eq!(refused["error"], "rate limited", "{refused}");
    let made = raw_chat_call(&mut other, 1, "create", r#"{"room":"four"}"#).await;
    assert_eq!(made["ok"], true, "{made}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_new_users_are_counted_across_the_cluster() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = ["--new-user-rate-limit", "2/1h"];
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    let n2 = ChatNode::start("n2", Some(&url), &flags);
    let a = "203.0.113.11";
    let auth = serde_json::json!({"name": "a"});
    assert!(connect_as(&n1, a, &auth).await.1.is_ok());
    assert!(connect_as(&n2, a, &auth).await.1.is_ok());
    assert_eq!(
        connect_as(&n1, a, &auth).await.1,
        Err("rate limited".to_owned())
    );
    assert_eq!(
        connect_as(&n2, a, &auth).await.1,
        Err("rate limited".to_owned())
    );
    assert!(connect_as(&n2, "198.51.100.11", &auth).await.1.is_ok());
}

//! The Engine.IO server end to end, on the echo handler: handshakes, polling, WebSocket,
//! upgrade, heartbeat, the reference server's HTTP errors, limits, CORS, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::time::{Duration, Instant};

use chat_node::engineio::echo::Echo;
use chat_node::engineio::{Cors, EngineConfig, EngineIo};
use utils::{fast_config, http, quiet_config, request, Polling, TestServer, Ws, STEP};

async fn echo_server(config: EngineConfig) -> TestServer {
    TestServer::start(EngineIo::new(config, Echo).unwrap()).await
}

fn open_keys(open: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = open.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn polling_handshake_returns_the_open_packet() {
    let server = echo_server(fast_config("/engine.io/")).await;
    let reply = request(http().get(server.url("transport=polling"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-served-by"), Some("test-node"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    let open: serde_json::Value =
        serde_json::from_str(reply.body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(
        open_keys(&open),
        [
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades"
        ]
    );
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
    assert_eq!(open["sid"].as_str().unwrap().len(), 20);
}

#[tokio::test]
async fn websocket_handshake_offers_no_upgrade() {
    let server = echo_server(fast_config("/engine.io/")).await;
    let (_ws, open) = Ws::open(&server).await;
    assert_eq!(
        open_keys(&open),
        [
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades"
        ]
    );
    assert_eq!(open["upgrades"], serde_json::json!([]));
}

#[tokio::test]
async fn bad_requests_get_the_reference_errors() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let client = http();
    let base = format!("http://{}/engine.io/", server.addr);
    let unknown_transport = r#"{"code":0,"message":"Transport unknown"}"#;
    let unknown_sid = r#"{"code":1,"message":"Session ID unknown"}"#;
    let bad_method = r#"{"code":2,"message":"Bad handshake method"}"#;
    let bad_request = r#"{"code":3,"message":"Bad request"}"#;
    let bad_version = r#"{"code":5,"message":"Unsupported protocol version"}"#;
    let cases = [
        ("GET", "?EIO=4", unknown_transport),
        ("GET", "?EIO=4&transport=abc", unknown_transport),
        ("GET", "?transport=polling", bad_version),
        ("GET", "?EIO=abc&transport=polling", bad_version),
        ("GET", "?EIO=3&transport=polling", bad_version),
        ("GET", "?EIO=4&transport=polling&sid=abc", unknown_sid),
        (
            "GET",
            "?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
            unknown_sid,
        ),
        ("POST", "?EIO=4&transport=polling", bad_method),
        ("PUT", "?EIO=4&transport=polling", bad_method),
        ("GET", "?EIO=4&transport=websocket", bad_request),
    ];
    for (method, query, expected) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let reply = request(client.request(method.clone(), format!("{base}{query}"))).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (400, expected),
            "{method} {query}"
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("x-served-by"), Some("test-node"));
    }
    // Off the engine path: 404, still with the node's name.
    let reply = request(client.get(format!("http://{}/elsewhere", server.addr))).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-served-by"), Some("test-node"));
}

#[tokio::test]
async fn polling_echoes_batches_of_text_and_binary() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    session.send("4hello").await;
    assert_eq!(session.poll().await, "4hello");
    session.send("4test1\x1e4test2\x1ebAQIDBA==").await;
    assert_eq!(session.poll().await, "4test1\x1e4test2\x1ebAQIDBA==");
}

#[tokio::test]
async fn a_pending_poll_returns_as_soon_as_there_is_data() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    let reply = session.poll_while_sending("4late").await;
    assert_eq!(reply, "4late");
}

#[tokio::test]
async fn max_payload_limits_posts_and_poll_responses() {
    let config = EngineConfig {
        max_payload: 100,
        ..quiet_config("/engine.io/")
    };
    let server = echo_server(config).await;
    let session = Polling::open(&server).await;
    assert_eq!(
        session.post(format!("4{}", "x".repeat(100))).await.status,
        413
    );
    // Three 41-byte messages never travel in one 100-byte response.
    let message = format!("4{}", "y".repeat(40));
    for _ in 0..3 {
        session.send(message.as_str()).await;
    }
    let mut received = Vec::new();
    while received.len() < 3 {
        let body = session.poll().await;
        assert!(body.len() <= 100, "{} bytes", body.len());
        received.extend(body.split('\x1e').map(str::to_owned));
    }
    assert_eq!(received, vec![message; 3]);
}

#[tokio::test]
async fn an_invalid_packet_closes_the_session() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    let reply = session.post("abc").await;
    assert_eq!(reply.status, 400);
    let reply = session.get().await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, r#"{"code":1,"message":"Session ID unknown"}"#);

    // On a WebSocket the close frame says why.
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text("abc").await;
    assert_eq!(ws.expect_close_frame().await, (1002, "parse error".into()));
}

#[tokio::test]
async fn overlapping_polls_close_the_session() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    let (first, second) = tokio::join!(session.get(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        session.get().await
    });
    assert_eq!((first.status, first.body.as_str()), (200, "1"));
    assert_eq!(second.status, 400);
    assert_eq!(session.get().await.status, 400);
}

#[tokio::test]
async fn a_close_packet_ends_the_pending_poll_with_a_noop() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    let poll = session.poll_while_sending("1").await;
    assert_eq!(poll, "6");
    assert_eq!(session.get().await.status, 400);

    // The close packet served before the GET that was in flight with it: the GET still
    // gets its noop, once.
    let session = Polling::open(&server).await;
    session.send("1").await;
    assert_eq!(session.poll().await, "6");
    assert_eq!(session.get().await.status, 400);
    assert_eq!(session.post("4late").await.status, 400);

    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text("1").await;
    ws.expect_close().await;
}

#[tokio::test]
async fn websocket_echoes_text_and_binary_frames() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text("4hello €").await;
    assert_eq!(ws.recv_text().await, "4hello €");
    ws.send_binary(&[1, 2, 3, 4]).await;
    assert_eq!(ws.recv_binary().await, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_client_close_frame_is_answered_with_one() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_close(1000).await;
    // RFC 6455 §5.5.1: the server echoes the status code; without the answer a browser
    // reports every close as unclean (1006).
    assert_eq!(ws.expect_close_frame().await, (1000, "bye".into()));
}

#[tokio::test]
async fn a_websocket_message_over_max_payload_closes_the_session() {
    let config = EngineConfig {
        max_payload: 100,
        ..quiet_config("/engine.io/")
    };
    let server = echo_server(config).await;
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text(&format!("4{}", "z".repeat(200))).await;
    assert_eq!(
        ws.expect_close_frame().await,
        (1009, "message larger than maxPayload".into())
    );
}

#[tokio::test]
async fn upgrade_from_polling_to_websocket() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    // A poll pending when the probe arrives returns a noop.
    let pending = {
        let client = session.client.clone();
        let url = session.url();
        tokio::spawn(async move { request(client.get(url)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut ws = Ws::connect(&server.ws_url(Some(&session.sid))).await;
    ws.send_text("2probe").await;
    assert_eq!(ws.recv_text().await, "3probe");
    let pending = tokio::time::timeout(STEP, pending).await.unwrap().unwrap();
    assert_eq!((pending.status, pending.body.as_str()), (200, "6"));

    // Sent while upgrading: delivered on the WebSocket once the upgrade completes.
    session.send("4queued").await;
    ws.send_text("5").await;
    assert_eq!(ws.recv_text().await, "4queued");
    ws.send_text("4hello").await;
    assert_eq!(ws.recv_text().await, "4hello");

    // Polling on the session is over; a second WebSocket is closed at once.
    let reply = session.get().await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, r#"{"code":3,"message":"Bad request"}"#)
    );
    let mut second = Ws::connect(&server.ws_url(Some(&session.sid))).await;
    second.expect_close().await;
    ws.send_text("4still here").await;
    assert_eq!(ws.recv_text().await, "4still here");
}

#[tokio::test]
async fn a_failed_upgrade_leaves_polling_working() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    let mut ws = Ws::connect(&server.ws_url(Some(&session.sid))).await;
    ws.send_text("4not a probe").await;
    ws.expect_close().await;
    session.send("4hello").await;
    assert_eq!(session.poll().await, "4hello");
    // A WebSocket for an unknown session is refused before the upgrade.
    let refused =
        tokio_tungstenite::connect_async(server.ws_url(Some("AAAAAAAAAAAAAAAAAAAA"))).await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn polling_heartbeat_waits_a_ping_interval_then_times_out() {
    let server = echo_server(fast_config("/engine.io/")).await;
    let started = Instant::now();
    let session = Polling::open(&server).await;
    for _ in 0..2 {
        let round = Instant::now();
        assert_eq!(session.poll().await, "2");
        assert!(
            round.elapsed() >= Duration::from_millis(250),
            "ping too early: {:?}",
            round.elapsed()
        );
        session.send("3").await;
    }
    assert!(started.elapsed() >= Duration::from_millis(600));

    // No pong: the next poll returns the ping, the one after it the close.
    assert_eq!(session.poll().await, "2");
    let waited = Instant::now();
    assert_eq!(session.poll().await, "1");
    assert!(waited.elapsed() <= Duration::from_secs(2));
    assert_eq!(session.get().await.status, 400);
}

#[tokio::test]
async fn websocket_heartbeat_waits_a_ping_interval_then_times_out() {
    let server = echo_server(fast_config("/engine.io/")).await;
    let (mut ws, _) = Ws::open(&server).await;
    for _ in 0..2 {
        let round = Instant::now();
        assert_eq!(ws.recv_text().await, "2");
        assert!(
            round.elapsed() >= Duration::from_millis(250),
            "ping too early: {:?}",
            round.elapsed()
        );
        ws.send_text("3").await;
    }
    assert_eq!(ws.recv_text().await, "2");
    let waited = Instant::now();
    ws.expect_close().await;
    let elapsed = waited.elapsed();
    assert!(
        elapsed >= Duration::from_millis(150) && elapsed <= Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn cors_any_origin_and_preflight() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let client = http();
    let reply = request(
        client
            .get(server.url("transport=polling"))
            .header("origin", "https://chat.example"),
    )
    .await;
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    let reply = request(
        client
            .request(reqwest::Method::OPTIONS, server.url("transport=polling"))
            .header("origin", "https://chat.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(reply.header("x-served-by"), Some("test-node"));
}

#[tokio::test]
async fn cors_mirror_origin_allows_credentials() {
    let config = EngineConfig {
        cors: Cors::MirrorOrigin,
        ..quiet_config("/engine.io/")
    };
    let server = echo_server(config).await;
    let reply = request(
        http()
            .get(server.url("transport=polling"))
            .header("origin", "https://chat.example"),
    )
    .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://chat.example")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
}

#[tokio::test]
async fn shutdown_ends_pending_polls_and_websockets() {
    let server = echo_server(quiet_config("/engine.io/")).await;
    let session = Polling::open(&server).await;
    let (mut ws, _) = Ws::open(&server).await;
    let pending = {
        let client = session.client.clone();
        let url = session.url();
        tokio::spawn(async move { request(client.get(url)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await;
    let pending = tokio::time::timeout(STEP, pending).await.unwrap().unwrap();
    assert_eq!((pending.status, pending.body.as_str()), (200, "1"));
    ws.expect_close().await;
}

#[tokio::test]
async fn handshakes_beyond_max_sessions_get_503_until_one_closes() {
    let config = EngineConfig {
        max_sessions: 2,
        ..quiet_config("/engine.io/")
    };
    let server = echo_server(config).await;
    let first = Polling::open(&server).await;
    let (_ws, _) = Ws::open(&server).await;
    let reply = request(http().get(server.url("transport=polling"))).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, r#"{"code":4,"message":"Server at capacity"}"#)
    );
    // A session that closes makes room.
    first.send("1").await;
    let deadline = Instant::now() + STEP;
    loop {
        let reply = request(http().get(server.url("transport=polling"))).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(Instant::now() < deadline, "no room after a session closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

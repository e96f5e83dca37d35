//! A chat node's Prometheus metrics (`--metrics-listen`), read the way Prometheus reads
//! them while real clients use the node: raw Engine.IO over WebSocket and long-polling, an
//! upgrade, accepted and refused messages, disconnections; on two nodes on a real
//! `redis-server`, the bus and the forwarding between nodes, and Redis errors once it is
//! gone. Each number is awaited (scraped until it shows the value, with a deadline), never
//! read after a sleep.
//!
//! The metrics listener is apart from the chat port: neither serves the other's paths.
//! A bad `--metrics-listen` stops the node at once with an error naming the flag.
//!
//! Needs `redis-server` for the cluster test. Build the node first: `cargo build -p
//! chat-node --bin chat-node && cargo test -p tests --test chat_metrics`.

use futures::SinkExt as _;
use tests::chatnode::{
    engine_url, polling_open, raw_chat_call, raw_chat_socket, refused_start as refused, ChatNode,
};
use tests::redis::RedisServer;
use tests::{client, free_port, send, wait_for, ws_open, ws_recv, Ws, WsOptions, STEP_TIMEOUT};
use tokio_tungstenite::tungstenite::Message;

/// A chat node with its metrics on a port of their own; returns it and the metrics URL.
fn node_with_metrics(id: &str, redis: Option<&str>, extra: &[&str]) -> (ChatNode, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--metrics-listen", metrics.as_str()];
    args.extend_from_slice(extra);
    let node = ChatNode::start(id, redis, &args);
    (node, format!("http://{metrics}/metrics"))
}

/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    /// The value of `series` (`name` or `name{label="value"}`, as exported).
    fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// The lines of the family `series` belongs to, for failure messages.
    fn family(&self, series: &str) -> String {
        let name = series.split('{').next().unwrap_or(series);
        self.0
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn scrape(url: &str) -> Scrape {
    let reply = send(client().get(url)).await;
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape(reply.body)
}

/// Scrapes `url` until `series` is `want`; panics after [`STEP_TIMEOUT`] with what it was.
async fn await_metric(url: &str, series: &str, want: f64) {
    let mut last = String::new();
    let found = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            let scrape = scrape(url).await;
            if scrape.value(series) == Some(want) {
                return;
            }
            last = scrape.family(series);
            tokio::time::sleep(tests::wait::POLL).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{series} never became {want} on {url}; last seen:\n{last}"
    );
}

/// Scrapes `url` until `series` is at least `min`; returns it.
async fn await_at_least(url: &str, series: &str, min: f64) -> f64 {
    let what = format!("{series} >= {min} on {url}");
    wait_for(STEP_TIMEOUT, &what, || async {
        scrape(url).await.value(series).filter(|v| *v >= min)
    })
    .await
}

async fn value(url: &str, series: &str) -> f64 {
    let scrape = scrape(url).await;
    scrape
        .value(series)
        .unwrap_or_else(|| panic!("no {series} in:\n{}", scrape.0))
}

/// A chat socket on long-polling: the handshake and CONNECT sent to `node`, polled until
/// the `welcome` at `poll_at` (the same node, or another that forwards the polls).
/// Returns the Engine.IO session id.
async fn polling_chat_session(node: &ChatNode, poll_at: &ChatNode, name: &str) -> String {
    let http = client();
    let sid = polling_open(node, name).await;
    let url = engine_url(poll_at, "polling", Some(&sid));
    wait_for(STEP_TIMEOUT, "the welcome over polling", || async {
        let poll = send(http.get(&url)).await;
        assert_eq!(poll.status, 200, "poll: {}", poll.body);
        poll.body.contains(r#"42["welcome""#).then_some(())
    })
    .await;
    sid
}

/// Upgrades polling session `sid` to a WebSocket opened at `node`: the probe, then `5`.
async fn upgrade(node: &ChatNode, sid: &str) -> Ws {
    let (mut ws, _) = ws_open(
        &engine_url(node, "websocket", Some(sid)).replace("http://", "ws://"),
        &WsOptions::default(),
    )
    .await
    .expect("opening the upgrade's WebSocket");
    ws.send(Message::text("2probe")).await.expect("probing");
    loop {
        match ws_recv(&mut ws, STEP_TIMEOUT).await {
            Some(Message::Text(t)) if t.as_str() == "3probe" => break,
            Some(_) => {}
            None => panic!("no 3probe for the upgrade"),
        }
    }
    ws.send(Message::text("5")).await.expect("upgrading");
    ws
}

const SESSIONS_WS: &str = r#"switchyard_chat_sessions_open{transport="websocket"}"#;
const SESSIONS_POLLING: &str = r#"switchyard_chat_sessions_open{transport="polling"}"#;

#[tokio::test]
async fn metrics_follow_sessions_packets_and_messages_on_one_node() {
    // Two messages per minute, ten characters: a third message and a long one are refused.
    let (node, metrics) =
        node_with_metrics("m1", None, &["--rate-limit", "2/60s", "--max-text", "10"]);
    // A fresh node: nothing yet, and every series exported from the start.
    let before = scrape(&metrics).await;
    for (series, want) in [
        (SESSIONS_WS, 0.0),
        (SESSIONS_POLLING, 0.0),
        (
            r#"switchyard_chat_handshakes_total{transport="websocket"}"#,
            0.0,
        ),
        ("switchyard_chat_messages_accepted_total", 0.0),
        (
            r#"switchyard_chat_messages_rejected_total{reason="rate_limited"}"#,
            0.0,
        ),
        (
            r#"switchyard_chat_sessions_closed_total{reason="ping_timeout"}"#,
            0.0,
        ),
        (
            r#"switchyard_chat_bus_published_total{topic="broadcast"}"#,
            0.0,
        ),
        (
            r#"switchyard_chat_redis_errors_total{component="bus"}"#,
            0.0,
        ),
    ] {
        assert_eq!(
            before.value(series),
            Some(want),
            "{series} in:\n{}",
            before.0
        );
    }
    assert!(
        before
            .0
            .contains(r#"switchyard_chat_node_info{node="m1",version=""#),
        "{}",
        before.0
    );

    // A WebSocket client: one open session on WebSocket.
    let mut alice = raw_chat_socket(&node, "alice").await;
    await_metric(&metrics, SESSIONS_WS, 1.0).await;
    await_metric(
        &metrics,
        r#"switchyard_chat_handshakes_total{transport="websocket"}"#,
        1.0,
    )
    .await;
    await_metric(
        &metrics,
        r#"switchyard_chat_socketio_packets_received_total{type="connect"}"#,
        1.0,
    )
    .await;
    let sent_before = value(&metrics, "switchyard_chat_socketio_packets_sent_total").await;
    assert!(
        sent_before >= 2.0,
        "the CONNECT reply and the welcome: {sent_before}"
    );

    // Two messages accepted; one too long and one over the limit refused.
    for (id, text, ok) in [
        (1, "hi", true),
        (2, "hello", true),
        (3, "far too long for the limit", false),
        (4, "again", false),
    ] {
        let answer = raw_chat_call(
            &mut alice,
            id,
            "send",
            &format!(r#"{{"room":"lobby","text":"{text}"}}"#),
        )
        .await;
        assert_eq!(answer["ok"], ok, "send {text:?}: {answer}");
    }
    await_metric(&metrics, "switchyard_chat_messages_accepted_total", 2.0).await;
    await_metric(
        &metrics,
        r#"switchyard_chat_messages_rejected_total{reason="text_too_long"}"#,
        1.0,
    )
    .await;
    await_metric(
        &metrics,
        r#"switchyard_chat_messages_rejected_total{reason="rate_limited"}"#,
        1.0,
    )
    .await;
    let join = raw_chat_call(&mut alice, 5, "join", r#"{"room":"lobby"}"#).await;
    assert_eq!(join["ok"], true, "{join}");
    await_metric(&metrics, "switchyard_chat_room_joins_total", 1.0).await;
    await_metric(
        &metrics,
        r#"switchyard_chat_socketio_packets_received_total{type="event"}"#,
        5.0,
    )
    .await;
    // Five acks and two broadcast messages at least.
    await_at_least(
        &metrics,
        "switchyard_chat_socketio_packets_sent_total",
        sent_before + 7.0,
    )
    .await;
    // Alice's WebSocket carried them (and her handshake): counted by frame and by write.
    await_at_least(&metrics, "switchyard_chat_websocket_frames_total", 8.0).await;
    await_at_least(&metrics, "switchyard_chat_websocket_writes_total", 1.0).await;

    // A long-polling client, then its upgrade to WebSocket.
    let sid = polling_chat_session(&node, &node, "bob").await;
    await_metric(&metrics, SESSIONS_POLLING, 1.0).await;
    await_metric(
        &metrics,
        r#"switchyard_chat_handshakes_total{transport="polling"}"#,
        1.0,
    )
    .await;
    let mut bob = upgrade(&node, &sid).await;
    await_metric(&metrics, "switchyard_chat_upgrades_total", 1.0).await;
    await_metric(&metrics, SESSIONS_POLLING, 0.0).await;
    await_metric(&metrics, SESSIONS_WS, 2.0).await;

    // Bob closes his session (an Engine.IO close packet); Alice's connection goes away.
    bob.send(Message::text("1")).await.expect("closing");
    await_metric(
        &metrics,
        r#"switchyard_chat_sessions_closed_total{reason="client_close"}"#,
        1.0,
    )
    .await;
    await_metric(&metrics, SESSIONS_WS, 1.0).await;
    drop(alice);
    await_metric(
        &metrics,
        r#"switchyard_chat_sessions_closed_total{reason="transport_close"}"#,
        1.0,
    )
    .await;
    await_metric(&metrics, SESSIONS_WS, 0.0).await;
    await_metric(&metrics, SESSIONS_POLLING, 0.0).await;
    // Alone on the in-process bus: nothing crossed to another node.
    await_metric(
        &metrics,
        r#"switchyard_chat_bus_received_total{topic="broadcast"}"#,
        0.0,
    )
    .await;
}

#[tokio::test]
async fn the_metrics_listener_and_the_chat_port_serve_only_their_own() {
    let (node, metrics) = node_with_metrics("m1", None, &[]);
    let base = metrics.trim_end_matches("/metrics").to_owned();
    let http = client();
    // The chat port: no metrics.
    let reply = send(http.get(node.url("/metrics"))).await;
    assert_eq!(
        reply.status, 404,
        "/metrics on the chat port: {}",
        reply.body
    );
    assert_eq!(send(http.get(node.url("/healthz"))).await.status, 200);
    // The metrics port: only /metrics (GET).
    assert_eq!(send(http.get(&metrics)).await.status, 200);
    for path in [
        "/socket.io/?EIO=4&transport=polling",
        "/healthz",
        "/",
        "/metrics/x",
    ] {
        let reply = send(http.get(format!("{base}{path}"))).await;
        assert_eq!(
            reply.status, 404,
            "{path} on the metrics port: {}",
            reply.body
        );
    }
    let post = send(http.post(&metrics)).await;
    assert_eq!(post.status, 405, "POST /metrics");
}

#[test]
fn a_bad_metrics_listen_is_refused_naming_the_flag() {
    // Not an address: clap names the flag, the value and why.
    for (args, env) in [
        (&["--metrics-listen", "nowhere"][..], &[][..]),
        (&[][..], &[("CHAT_METRICS_LISTEN", "nowhere")][..]),
    ] {
        let stderr = refused(args, env);
        assert!(
            stderr.contains("invalid value 'nowhere' for '--metrics-listen <"),
            "{args:?} {env:?}: {stderr}"
        );
    }
    // The chat listener's own address.
    let port = free_port();
    let same = format!("127.0.0.1:{port}");
    let stderr = refused(&["--listen", &same, "--metrics-listen", &same], &[]);
    assert!(
        stderr.contains("--metrics-listen (or CHAT_METRICS_LISTEN): ")
            && stderr.contains("the metrics need their own"),
        "{stderr}"
    );
    // An address already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let stderr = refused(&["--metrics-listen", &addr], &[]);
    assert!(
        stderr.contains(&format!(
            "binding the metrics listener {addr} (--metrics-listen)"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn two_nodes_count_the_bus_the_forwarding_and_redis_errors() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (n1, m1) = node_with_metrics("n1", Some(&url), &[]);
    let (n2, m2) = node_with_metrics("n2", Some(&url), &[]);
    const PUBLISHED: &str = r#"switchyard_chat_bus_published_total{topic="broadcast"}"#;
    const RECEIVED: &str = r#"switchyard_chat_bus_received_total{topic="broadcast"}"#;

    let mut alice = raw_chat_socket(&n1, "alice").await;
    let mut bob = raw_chat_socket(&n2, "bob").await;
    // Settled: the joins' presence broadcasts have crossed.
    let published = await_at_least(&m1, PUBLISHED, 1.0).await;
    let received = await_at_least(&m2, RECEIVED, 1.0).await;

    // A message from n1 reaches Bob on n2 through the bus, and both nodes count it.
    let answer = raw_chat_call(&mut alice, 1, "send", r#"{"room":"lobby","text":"hi bob"}"#).await;
    assert_eq!(answer["ok"], true, "{answer}");
    loop {
        match ws_recv(&mut bob, STEP_TIMEOUT).await {
            Some(Message::Text(t)) if t.contains("hi bob") => break,
            Some(_) => {}
            None => panic!("Bob never got the message"),
        }
    }
    await_at_least(&m1, PUBLISHED, published + 1.0).await;
    await_at_least(&m2, RECEIVED, received + 1.0).await;
    await_metric(&m1, "switchyard_chat_messages_accepted_total", 1.0).await;
    await_metric(&m2, "switchyard_chat_messages_accepted_total", 0.0).await;

    // A polling session of n1's, polled at n2: n2 forwards, n1 serves.
    let sid = polling_chat_session(&n1, &n2, "carol").await;
    await_at_least(
        &m2,
        r#"switchyard_chat_forwarded_requests_total{op="poll"}"#,
        1.0,
    )
    .await;
    await_at_least(&m1, "switchyard_chat_forward_served_total", 1.0).await;
    await_at_least(
        &m2,
        r#"switchyard_chat_bus_published_total{topic="forward"}"#,
        1.0,
    )
    .await;
    await_at_least(
        &m1,
        r#"switchyard_chat_bus_received_total{topic="forward"}"#,
        1.0,
    )
    .await;
    await_metric(&m2, SESSIONS_POLLING, 0.0).await;
    await_metric(&m1, SESSIONS_POLLING, 1.0).await;
    // Its upgrade at n2: bridged to n1, where the session moves to WebSocket.
    let mut carol = upgrade(&n2, &sid).await;
    await_metric(&m2, "switchyard_chat_bridges_open", 1.0).await;
    await_metric(&m2, "switchyard_chat_bridges_total", 1.0).await;
    await_metric(&m1, "switchyard_chat_upgrades_total", 1.0).await;
    await_metric(&m1, SESSIONS_WS, 2.0).await;
    carol.send(Message::text("1")).await.expect("closing");
    await_metric(&m2, "switchyard_chat_bridges_open", 0.0).await;
    await_metric(&m1, SESSIONS_WS, 1.0).await;

    // Redis goes away: the nodes count its errors.
    for m in [&m1, &m2] {
        assert_eq!(
            value(m, r#"switchyard_chat_redis_errors_total{component="bus"}"#).await,
            0.0,
            "{m}"
        );
    }
    redis.stop();
    // The first send may have been on its way when the connection broke (`timeout`: it
    // may have been sent); the next ones find it refused.
    let first = raw_chat_call(
        &mut alice,
        2,
        "send",
        r#"{"room":"lobby","text":"anyone?"}"#,
    )
    .await;
    if first["error"] == "timeout" {
        let second = raw_chat_call(
            &mut alice,
            3,
            "send",
            r#"{"room":"lobby","text":"anyone?"}"#,
        )
        .await;
        assert_eq!(second["error"], "unavailable", "{second}");
    } else {
        assert_eq!(first["error"], "unavailable", "{first}");
    }
    await_at_least(
        &m1,
        r#"switchyard_chat_redis_errors_total{component="bus"}"#,
        1.0,
    )
    .await;
    await_at_least(
        &m1,
        r#"switchyard_chat_redis_errors_total{component="store"}"#,
        1.0,
    )
    .await;
    await_at_least(
        &m2,
        r#"switchyard_chat_redis_errors_total{component="bus"}"#,
        1.0,
    )
    .await;
    await_metric(
        &m1,
        r#"switchyard_chat_messages_rejected_total{reason="unavailable"}"#,
        1.0,
    )
    .await;
}

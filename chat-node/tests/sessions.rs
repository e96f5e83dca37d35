//! Sessions without stickiness: polling requests for a session owned by another node are
//! forwarded to the owner (through a real `redis-server`, and on the in-process bus);
//! `--sessions local` keeps classic behaviour; a dead owner is a bounded
//! `Session ID unknown`; a failing session directory a retryable 503.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_node::bus::{BusError, MemoryBus};
use chat_node::forward::{MemoryDirectory, SessionDirectory};
use chat_node::node::{Node, NodeConfig, SessionMode};
use serde_json::Value;
use utils::process::NodeProcess;
use utils::redis::RedisServer;
use utils::{http, placeholder, request, Reply, TestServer, Ws, STEP};

fn config(node_id: &str, redis: Option<&RedisServer>, sessions: SessionMode) -> NodeConfig {
    NodeConfig {
        node_id: node_id.to_owned(),
        redis_url: redis.map(RedisServer::url),
        sessions,
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        ..NodeConfig::default()
    }
}

async fn redis_node(node_id: &str, redis: &RedisServer, sessions: SessionMode) -> TestServer {
    let node = Node::new(config(node_id, Some(redis), sessions))
        .await
        .unwrap();
    TestServer::start_node(placeholder::install(node)).await
}

/// A raw polling client of one session whose requests go to whichever node it is told.
struct Client {
    http: reqwest::Client,
    sid: String,
    /// Packets received and not yet taken.
    inbox: VecDeque<String>,
    /// Which nodes answered (`x-served-by`).
    served_by: BTreeSet<String>,
}

fn url(server: &TestServer, query: &str) -> String {
    server.url(&format!("transport=polling&{query}"))
}

fn served_by(reply: &Reply) -> String {
    reply.header("x-served-by").unwrap_or_default().to_owned()
}

impl Client {
    /// The handshake on `server`.
    async fn open(server: &TestServer) -> Self {
        let http = http();
        let reply = request(http.get(url(server, ""))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let open: Value = serde_json::from_str(reply.body.strip_prefix('0').unwrap()).unwrap();
        Self {
            http,
            sid: open["sid"].as_str().unwrap().to_owned(),
            inbox: VecDeque::new(),
            served_by: BTreeSet::from([served_by(&reply)]),
        }
    }

    fn url(&self, server: &TestServer) -> String {
        url(server, &format!("sid={}", self.sid))
    }

    async fn get(&self, server: &TestServer) -> Reply {
        request(self.http.get(self.url(server))).await
    }

    async fn post(&self, server: &TestServer, body: &str) -> Reply {
        request(self.http.post(self.url(server)).body(body.to_owned())).await
    }

    /// A POST on `server` that must succeed.
    async fn send(&mut self, server: &TestServer, body: &str) {
        let reply = self.post(server, body).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "POST");
        self.served_by.insert(served_by(&reply));
    }

    /// The next packet, polling `server` when none is waiting.
    async fn recv(&mut self, server: &TestServer) -> String {
        let deadline = Instant::now() + STEP;
        while self.inbox.is_empty() {
            assert!(Instant::now() < deadline, "nothing received in time");
            let reply = self.get(server).await;
            assert_eq!(reply.status, 200, "GET: {}", reply.body);
            self.served_by.insert(served_by(&reply));
            self.inbox
                .extend(reply.body.split('\x1e').map(str::to_owned));
        }
        self.inbox.pop_front().unwrap()
    }
}

/// Asserts a 400 `{"code":1,"message":"Session ID unknown"}`.
fn assert_unknown_sid(reply: &Reply) {
    assert_eq!(reply.status, 400, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"code": 1, "message": "Session ID unknown"})
    );
}

/// Socket.IO over a session opened on `a`, with every request alternating between `a` and
/// `b`: connect, the welcome event, events with acks in both directions, a long poll
/// forwarded while the answer comes through the other node.
async fn alternate(a: &TestServer, b: &TestServer) {
    let mut client = Client::open(a).await;
    client.send(b, "40").await;
    let connect = client.recv(a).await;
    let connect: Value = serde_json::from_str(connect.strip_prefix("40").unwrap()).unwrap();
    let socket_id = connect["sid"].as_str().unwrap().to_owned();
    let welcome = client.recv(b).await;
    let welcome: Value = serde_json::from_str(welcome.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(welcome[0], "welcome");
    assert_eq!(welcome[1]["node"], "a", "the session lives on a");
    assert_eq!(welcome[1]["sid"], socket_id.as_str());

    for i in 1..=6u32 {
        let (to, from) = if i % 2 == 0 { (a, b) } else { (b, a) };
        client
            .send(to, &format!(r#"42{i}["join",{{"room":"r{i}"}}]"#))
            .await;
        assert_eq!(client.recv(from).await, format!(r#"43{i}[{{"ok":true}}]"#));
    }

    // A forwarded long poll that is pending while the POST goes through the other node.
    let waiting = {
        let http = client.http.clone();
        let url = client.url(b);
        tokio::spawn(async move { request(http.get(url)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(a, r#"427["leave",{"room":"r1"}]"#).await;
    let reply = tokio::time::timeout(STEP, waiting).await.unwrap().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, r#"437[{"ok":true}]"#)
    );
    assert_eq!(served_by(&reply), "b");

    // Engine.IO close through b: the session ends on a (a GET that races the close still
    // gets its noop, as on one node), and then is unknown everywhere.
    client.send(b, "1").await;
    let deadline = Instant::now() + STEP;
    loop {
        let reply = client.get(b).await;
        if reply.status == 400 {
            assert_unknown_sid(&reply);
            break;
        }
        assert_eq!((reply.status, reply.body.as_str()), (200, "6"));
        assert!(Instant::now() < deadline, "the session did not close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_unknown_sid(&client.get(a).await);
    assert_eq!(
        client.served_by,
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
}

/// Nodes "a" and "b" in this process, sharing an in-process bus and session directory.
async fn memory_pair() -> (TestServer, TestServer) {
    let bus = Arc::new(MemoryBus::new());
    let directory = Arc::new(MemoryDirectory::new());
    let node = |id: &str| {
        Node::with_parts(
            config(id, None, SessionMode::Shared),
            bus.clone(),
            directory.clone(),
        )
        .unwrap()
    };
    let (a, b) = (
        TestServer::start_node(placeholder::install(node("a"))).await,
        TestServer::start_node(placeholder::install(node("b"))).await,
    );
    (a, b)
}

#[tokio::test]
async fn polling_requests_alternate_between_two_nodes_through_redis() {
    let redis = RedisServer::start();
    let a = redis_node("a", &redis, SessionMode::Shared).await;
    let b = redis_node("b", &redis, SessionMode::Shared).await;
    alternate(&a, &b).await;
}

#[tokio::test]
async fn polling_requests_alternate_between_two_nodes_on_the_in_process_bus() {
    let (a, b) = memory_pair().await;
    alternate(&a, &b).await;
}

#[tokio::test]
async fn the_owner_is_recorded_in_redis_while_the_session_lives() {
    let redis = RedisServer::start();
    let a = redis_node("a", &redis, SessionMode::Shared).await;
    let mut client = Client::open(&a).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("syd:eio:{}", client.sid);
    let owner: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("a"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the record has a TTL: {ttl}");

    client.send(&a, "1").await;
    let deadline = Instant::now() + STEP;
    loop {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if exists == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the record outlived the session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unknown_sid_is_unknown_on_every_node() {
    let redis = RedisServer::start();
    let _a = redis_node("a", &redis, SessionMode::Shared).await;
    let b = redis_node("b", &redis, SessionMode::Shared).await;
    let http = http();
    for sid in ["AAAAAAAAAAAAAAAAAAAA", "not-a-sid"] {
        let get = request(http.get(url(&b, &format!("sid={sid}")))).await;
        assert_unknown_sid(&get);
        let post = request(http.post(url(&b, &format!("sid={sid}"))).body("40")).await;
        assert_unknown_sid(&post);
    }
}

#[tokio::test]
async fn sessions_local_keeps_classic_behaviour() {
    let redis = RedisServer::start();
    let a = redis_node("a", &redis, SessionMode::Local).await;
    let b = redis_node("b", &redis, SessionMode::Local).await;
    let mut client = Client::open(&a).await;
    assert_unknown_sid(&client.get(&b).await);
    assert_unknown_sid(&client.post(&b, "40").await);
    // The owner still serves it.
    client.send(&a, "40").await;
    assert!(client.recv(&a).await.starts_with("40"));
}

/// A session opened (and connected) on `a` by polling upgrades to a WebSocket opened on
/// `b`, which bridges it to `a`: the probe, the pending poll's noop, `5`, then events, acks
/// and binary attachments both ways; closing the WebSocket closes the session on `a`.
async fn upgrade_through(a: &TestServer, b: &TestServer) {
    let mut client = Client::open(a).await;
    client.send(b, "40").await;
    assert!(client.recv(a).await.starts_with("40"));
    assert!(client.recv(b).await.starts_with(r#"42["welcome""#));

    // Another client, on a, in room r.
    let (mut other, _) = Ws::open(a).await;
    other.send_text("40").await;
    assert!(other.recv_text().await.starts_with("40"));
    assert!(other.recv_text().await.starts_with(r#"42["welcome""#));
    other.send_text(r#"421["join",{"room":"r"}]"#).await;
    assert_eq!(other.recv_text().await, r#"431[{"ok":true}]"#);

    let pending = {
        let http = client.http.clone();
        let url = client.url(a);
        tokio::spawn(async move { request(http.get(url)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = Ws::connect(&format!("{}&sid={}", b.ws_url(None), client.sid)).await;
    ws.send_text("2probe").await;
    assert_eq!(ws.recv_text().await, "3probe");
    let noop = tokio::time::timeout(STEP, pending).await.unwrap().unwrap();
    assert_eq!((noop.status, noop.body.as_str()), (200, "6"));
    ws.send_text("5").await;

    ws.send_text(r#"422["join",{"room":"r"}]"#).await;
    assert_eq!(ws.recv_text().await, r#"432[{"ok":true}]"#);
    // Binary from a client on a to the bridged client.
    other
        .send_text(r#"451-3["broadcast",{"room":"r","payload":{"_placeholder":true,"num":0}}]"#)
        .await;
    other.send_binary(&[0, 1, 2, 255]).await;
    assert_eq!(other.recv_text().await, r#"433[{"ok":true}]"#);
    let text = ws.recv_text().await;
    assert!(text.starts_with(r#"451-["message""#), "{text}");
    assert_eq!(ws.recv_binary().await, vec![0, 1, 2, 255]);
    // And from the bridged client to the client on a.
    ws.send_text(r#"451-4["broadcast",{"room":"r","payload":{"_placeholder":true,"num":0}}]"#)
        .await;
    ws.send_binary(&[9, 8]).await;
    assert_eq!(ws.recv_text().await, r#"434[{"ok":true}]"#);
    let text = other.recv_text().await;
    assert!(text.starts_with(r#"451-["message""#), "{text}");
    assert_eq!(other.recv_binary().await, vec![9, 8]);

    // Polling is over for this session.
    assert_eq!(client.get(b).await.status, 400);
    // The client closes its WebSocket: the session ends on a.
    drop(ws);
    let deadline = Instant::now() + STEP;
    loop {
        let reply = client.get(a).await;
        if reply.status == 400 && reply.body.contains("Session ID unknown") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session did not close: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_websocket_upgrade_on_another_node_is_bridged_to_the_owner_through_redis() {
    let redis = RedisServer::start();
    let a = redis_node("a", &redis, SessionMode::Shared).await;
    let b = redis_node("b", &redis, SessionMode::Shared).await;
    upgrade_through(&a, &b).await;
}

#[tokio::test]
async fn a_websocket_upgrade_on_another_node_is_bridged_on_the_in_process_bus() {
    let (a, b) = memory_pair().await;
    upgrade_through(&a, &b).await;
}

#[tokio::test]
async fn a_websocket_for_an_unknown_sid_is_refused() {
    let redis = RedisServer::start();
    let b = redis_node("b", &redis, SessionMode::Shared).await;
    let ws = format!("{}&sid=AAAAAAAAAAAAAAAAAAAA", b.ws_url(None));
    let refused = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(ws))
        .await
        .unwrap();
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected a 400, got {:?}", other.map(|(_, r)| r.status())),
    }
}

#[tokio::test]
async fn a_dead_owner_is_a_bounded_session_id_unknown() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut owner = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "a",
            "--redis",
            &redis_url,
            // Long, so that the session outlives however long a loaded machine takes
            // between the handshake and the forwarded requests (its client sends no
            // pongs); the bound under test is b's own (1 s + 1 s).
            "--ping-interval",
            "20s",
            "--ping-timeout",
            "20s",
        ],
        &[],
    );
    let b = Node::new(NodeConfig {
        ping_interval: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(1),
        ..config("b", Some(&redis), SessionMode::Shared)
    })
    .await
    .unwrap();
    let b = TestServer::start_node(placeholder::install(b)).await;

    let http = http();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", owner.addr);
    let open = request(http.get(&base)).await;
    assert_eq!(open.status, 200, "{}", open.body);
    let open: Value = serde_json::from_str(open.body.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap();
    let on_b = url(&b, &format!("sid={sid}"));
    // Forwarded to the live owner process (which serves the chat: it wants a name).
    let post = request(http.post(&on_b).body(r#"40{"name":"t"}"#)).await;
    assert_eq!((post.status, post.body.as_str()), (200, "ok"));
    let get = request(http.get(&on_b)).await;
    assert_eq!(get.status, 200, "{}", get.body);
    assert!(get.body.starts_with("40"), "{}", get.body);

    // SIGKILL: its owner record stays in Redis until its TTL, but nobody answers.
    owner.terminate_now();
    // A WebSocket upgrade on b is accepted (the record is still there: its TTL is 3 s),
    // then closed when the owner stays silent for the bound.
    let start = Instant::now();
    let mut ws = Ws::connect(&format!("{}&sid={sid}", b.ws_url(None))).await;
    ws.send_text("2probe").await;
    ws.expect_close().await;
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(3500), "{elapsed:?}");
    // A forwarded GET: 400 after the bound (ping_interval + ping_timeout = 2 s) at most.
    let start = Instant::now();
    let get = request(http.get(&on_b)).await;
    assert_unknown_sid(&get);
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(3500), "{elapsed:?}");
    let post = request(http.post(&on_b).body("42[\"x\"]")).await;
    assert_unknown_sid(&post);
}

/// A session directory whose lookups fail while `down` is set (Redis unreachable for
/// them); records and removals always work.
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryDirectory,
    down: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl SessionDirectory for Flaky {
    async fn owner(&self, sid: &str) -> Result<Option<String>, BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("connection refused".to_owned()));
        }
        self.inner.owner(sid).await
    }

    async fn register(&self, sid: &str, node: &str, ttl: Duration) -> Result<(), BusError> {
        self.inner.register(sid, node, ttl).await
    }

    async fn unregister(&self, sid: &str) -> Result<(), BusError> {
        self.inner.unregister(sid).await
    }
}

/// A request for another node's session while the directory fails is a retryable 503,
/// not a `Session ID unknown` that would end a session that exists: once the directory
/// answers again, the same session goes on through the same node.
#[tokio::test]
async fn a_failing_directory_is_a_retryable_503_not_an_unknown_sid() {
    let bus = Arc::new(MemoryBus::new());
    let directory = Flaky::default();
    let node = |id: &str| {
        Node::with_parts(
            config(id, None, SessionMode::Shared),
            bus.clone(),
            Arc::new(directory.clone()),
        )
        .unwrap()
    };
    let a = TestServer::start_node(placeholder::install(node("a"))).await;
    let b = TestServer::start_node(placeholder::install(node("b"))).await;
    let mut client = Client::open(&a).await;

    directory.down.store(true, Ordering::SeqCst);
    for reply in [client.post(&b, "6").await, client.get(&b).await] {
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.header("retry-after"), Some("1"));
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"message": "Session directory unavailable"})
        );
    }
    let ws = format!("{}&sid={}", b.ws_url(None), client.sid);
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(ws))
        .await
        .unwrap()
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
        }
        other => panic!("expected a 503, got {:?}", other.map(|(_, r)| r.status())),
    }

    directory.down.store(false, Ordering::SeqCst);
    client.send(&b, r#"40{"name":"t"}"#).await;
    assert!(client.recv(&b).await.starts_with("40"));
}

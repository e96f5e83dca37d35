//! Presence when things go wrong, on chat nodes sharing a real `redis-server`: a client that
//! goes away while its connect hook is still putting it in its rooms is not left online,
//! the users of a node that dies stop being listed in the `presence` the other nodes'
//! clients were last sent, a tab that enters a room late (its user joined it from
//! another tab) is announced there, and a client that goes away while the connect hook of
//! its recovery runs can still recover.
//!
//! Needs `redis-server` (`scripts/install-deps.sh` installs it). Build the node first:
//! `cargo build -p chat-node --bin chat-node && cargo test -p tests --test chat_presence`.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::chatnode::{events_until, raw_chat_call, raw_chat_connect, ChatNode};
use tests::redis::RedisServer;
use tests::{free_port, metric, wait_until, Ws, STEP_TIMEOUT};

/// The first event `event` that arrives on `ws` and satisfies `pred`, its payload.
async fn await_event(ws: &mut Ws, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let seen = events_until(ws, event, pred).await;
    seen.last().map(|e| e[1].clone()).unwrap_or_default()
}

/// Reads `presence` events on `ws` until each of `rooms` has had one listing `members`
/// (and counting as many).
async fn await_presence(ws: &mut Ws, rooms: &[&str], members: &[&str]) {
    let mut waiting: Vec<&str> = rooms.to_vec();
    while !waiting.is_empty() {
        let event = await_event(ws, "presence", |p| {
            p["members"] == serde_json::json!(members) && p["count"] == members.len()
        })
        .await;
        waiting.retain(|room| event["room"] != *room);
    }
}

/// How many rooms the user of [`a_client_gone_while_it_connects_is_not_left_online`] is
/// in: its connect hook takes long enough to be caught in the middle.
const ROOMS: u64 = 300;

/// The presence hash of `lobby` on node n1.
const LOBBY_N1: &str = "syd:chat:presence:lobby:n1";

/// Node n1 on `redis` with `extra` flags, a rate limit the rooms' creation stays within,
/// and its metrics served: the node and its metrics URL.
fn node_n1(redis: &RedisServer, extra: &[&str]) -> (ChatNode, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    // 300 rooms from one address: beyond the default per-client creation limit.
    let mut args = vec![
        "--rate-limit",
        "1000/1s",
        "--create-rate-limit",
        "1000/1s",
        "--metrics-listen",
        &metrics,
    ];
    args.extend_from_slice(extra);
    let node = ChatNode::start("n1", Some(&redis.url()), &args);
    (node, format!("http://{metrics}/metrics"))
}

/// Connects user `ghost` to `node`, makes it a member of [`ROOMS`] rooms (its next connect
/// hook enters them one by one, `lobby` first) and goes away; its CONNECT reply and token.
async fn ghost_in_many_rooms(node: &ChatNode) -> (Value, String) {
    let mut ws = raw_chat_connect(node, r#"{"name":"ghost"}"#).await;
    let reply = connect_reply(&mut ws).await;
    let welcome = await_event(&mut ws, "welcome", |_| true).await;
    let token = welcome["token"].as_str().expect("a token").to_owned();
    for i in 0..ROOMS {
        let created =
            raw_chat_call(&mut ws, i, "create", &format!(r#"{{"room":"r{i:03}"}}"#)).await;
        assert_eq!(created["ok"], true, "{created}");
    }
    (reply, token)
}

/// Connects to `node` with `auth`; once the connect hook has put the socket online in
/// `lobby`, Redis holds every write (the hook's next one among them) while the client goes
/// away. Returns when the node has seen it go (its metrics at `metrics_url`), writes
/// allowed again. Watched without a pause between looks: the hook takes a Redis round trip
/// or two per room.
async fn go_away_mid_hook(node: &ChatNode, redis: &RedisServer, auth: &str, metrics_url: &str) {
    let ws = raw_chat_connect(node, auth).await;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while redis.command(&["HLEN", LOBBY_N1]) != ":1" {
        assert!(Instant::now() < deadline, "the hook never entered lobby");
    }
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "20000", "WRITE"]), "+OK");
    drop(ws);
    let sessions = r#"switchyard_chat_sessions_open{transport="websocket"}"#;
    wait_until(STEP_TIMEOUT, "the node saw the client go", || async move {
        metric(metrics_url, sessions).await == Some(0.0)
    })
    .await;
    assert_eq!(redis.command(&["CLIENT", "UNPAUSE"]), "+OK");
}

/// A client that goes away while its connect hook is still putting it in its rooms (the
/// hook is abandoned) must not stay online: its socket's presence was written for the
/// rooms entered so far, and the heartbeat kept rewriting it from the node's sessions,
/// forever (a ghost in every `presence` list of those rooms, and a session never freed).
#[tokio::test]
async fn a_client_gone_while_it_connects_is_not_left_online() {
    let redis = RedisServer::start();
    let (node, metrics_url) = node_n1(&redis, &["--presence-ttl", "1500ms"]);
    let (_, token) = ghost_in_many_rooms(&node).await;
    let redis = &redis;
    wait_until(STEP_TIMEOUT, "the first connection gone", || async move {
        redis.command(&["HLEN", LOBBY_N1]) == ":0"
    })
    .await;

    // Back with the token, gone again while the hook runs.
    let auth = format!(r#"{{"name":"ghost","token":"{token}"}}"#);
    go_away_mid_hook(&node, redis, &auth, &metrics_url).await;

    // Nothing of it stays online, in `lobby` or the rooms the hook had entered.
    wait_until(
        Duration::from_secs(8),
        "the abandoned socket offline",
        || async move {
            redis.command(&["HLEN", LOBBY_N1]) == ":0"
                && redis.command(&["EXISTS", "syd:chat:presence:r000:n1"]) == ":0"
        },
    )
    .await;
    let mut watcher = raw_chat_connect(&node, r#"{"name":"watcher"}"#).await;
    await_event(&mut watcher, "welcome", |_| true).await;
    let rooms = raw_chat_call(&mut watcher, 1, "rooms", "{}").await;
    assert_eq!(rooms["rooms"][0]["room"], "lobby", "{rooms}");
    assert_eq!(rooms["rooms"][0]["members"], 1, "only the watcher: {rooms}");
}

/// A node killed without saying goodbye: its users' presence entries expire, and every
/// client of the other nodes is sent the new `presence` of its rooms. (The entries
/// expired, the `rooms` counts followed, but nothing told the rooms: every client kept
/// listing the dead node's users as online until someone else came or went.)
#[tokio::test]
async fn the_users_of_a_killed_node_leave_the_presence_lists() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Heartbeats every 500 ms.
    let flags = ["--presence-ttl", "1500ms"];
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    let mut n2 = ChatNode::start("n2", Some(&url), &flags);
    let mut alice = raw_chat_connect(&n1, r#"{"name":"alice"}"#).await;
    await_event(&mut alice, "welcome", |_| true).await;
    let created = raw_chat_call(&mut alice, 1, "create", r#"{"room":"team"}"#).await;
    assert_eq!(created["ok"], true, "{created}");
    let mut bob = raw_chat_connect(&n2, r#"{"name":"bob"}"#).await;
    await_event(&mut bob, "welcome", |_| true).await;
    let joined = raw_chat_call(&mut bob, 1, "join", r#"{"room":"team"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");
    await_presence(&mut alice, &["lobby", "team"], &["alice", "bob"]).await;

    n2.kill();
    drop(bob);
    // Within the TTL and a beat or two, every room of alice's is told.
    await_presence(&mut alice, &["lobby", "team"], &["alice"]).await;
}

/// A tab whose user joins a room from another tab after this one connected enters the
/// room too, and is online there: once the joining tab is gone, the room still lists the
/// user, and the tab speaks there. (Before every tab entered the room at the join, this
/// one entered when it first spoke there, and that entry was not announced: every list
/// showed the user offline while it was posting.)
#[tokio::test]
async fn a_tab_that_enters_a_room_late_is_announced() {
    let redis = RedisServer::start();
    let node = ChatNode::start("n1", Some(&redis.url()), &[]);
    let mut watcher = raw_chat_connect(&node, r#"{"name":"watcher"}"#).await;
    await_event(&mut watcher, "welcome", |_| true).await;
    let created = raw_chat_call(&mut watcher, 1, "create", r#"{"room":"team"}"#).await;
    assert_eq!(created["ok"], true, "{created}");
    let mut tab_b = raw_chat_connect(&node, r#"{"name":"carol"}"#).await;
    let welcome = await_event(&mut tab_b, "welcome", |_| true).await;
    let token = welcome["token"].as_str().expect("a token");
    let mut tab_a =
        raw_chat_connect(&node, &format!(r#"{{"name":"carol","token":"{token}"}}"#)).await;
    await_event(&mut tab_a, "welcome", |_| true).await;
    let joined = raw_chat_call(&mut tab_a, 1, "join", r#"{"room":"team"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");
    await_presence(&mut watcher, &["team"], &["carol", "watcher"]).await;
    drop(tab_a);
    // The room hears of tab a going (its presence changed), with carol still there.
    let gone = await_event(&mut watcher, "presence", |p| p["room"] == "team").await;
    assert_eq!(
        gone["members"],
        serde_json::json!(["carol", "watcher"]),
        "{gone}"
    );

    // In the room without having spoken there.
    let sent = raw_chat_call(&mut watcher, 2, "send", r#"{"room":"team","text":"hi"}"#).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let heard = await_event(&mut tab_b, "message", |m| m["text"] == "hi").await;
    assert_eq!(heard["room"], "team", "{heard}");
    let sent = raw_chat_call(&mut tab_b, 1, "send", r#"{"room":"team","text":"back"}"#).await;
    assert_eq!(sent["ok"], true, "{sent}");
}

/// The reply to a CONNECT sent with [`raw_chat_connect`]: `{"sid", "pid"}`.
async fn connect_reply(ws: &mut Ws) -> Value {
    loop {
        match tests::ws_recv(ws, STEP_TIMEOUT).await {
            Some(tokio_tungstenite::tungstenite::Message::Text(t)) if t.starts_with("40") => {
                return serde_json::from_str(&t[2..]).expect("a CONNECT reply's JSON");
            }
            Some(_) => {}
            None => panic!("no CONNECT reply"),
        }
    }
}

/// A client that goes away while the connect hook of its *recovery* runs never got the
/// CONNECT reply, so as far as it knows nothing was recovered: it asks again with the same
/// pid, and must get its socket back. (The state had been taken for the attempt and was
/// gone: the next attempt got a new socket, and lost what it had missed.)
#[tokio::test]
async fn a_recovery_abandoned_while_its_hook_runs_can_be_asked_again() {
    let redis = RedisServer::start();
    let (node, metrics_url) = node_n1(&redis, &["--recovery-window", "60s"]);
    let (reply, token) = ghost_in_many_rooms(&node).await;
    let sid = reply["sid"].clone();
    let pid = reply["pid"]
        .as_str()
        .expect("a pid: recovery is on")
        .to_owned();
    // The record of a disconnected socket lives for the recovery window (a connected
    // one's, longer).
    let redis = &redis;
    let record = format!("syd:pid:{pid}");
    let record = record.as_str();
    wait_until(
        STEP_TIMEOUT,
        "the socket recorded as disconnected",
        || async move {
            redis
                .command(&["PTTL", record])
                .trim_start_matches(':')
                .parse::<i64>()
                .is_ok_and(|ms| (0..=60_000).contains(&ms))
        },
    )
    .await;

    // The recovery, gone while its hook runs.
    let auth = format!(r#"{{"name":"ghost","token":"{token}","pid":"{pid}"}}"#);
    go_away_mid_hook(&node, redis, &auth, &metrics_url).await;
    wait_until(STEP_TIMEOUT, "the recovery state put back", || async move {
        redis.command(&["EXISTS", record]) == ":1"
    })
    .await;

    // Asked again, the recovery gives the same socket.
    let mut ws = raw_chat_connect(&node, &auth).await;
    let reply = connect_reply(&mut ws).await;
    assert_eq!(reply["sid"], sid, "{reply}");
}

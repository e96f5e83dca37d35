//! Redis losing its data (FLUSHALL on a real `redis-server`) under two chat nodes: the
//! sockets that were in a room stay connected, but the store no longer knows the room
//! nor their memberships. Someone who then creates a private room of the same name must
//! be the only one to get its messages: the old members' sockets, on either node, are
//! not in it. And when the room comes back without a member's membership (Redis
//! restarted from an older snapshot), that member's sockets leave it.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_data_loss`.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::chatnode::{events_until, raw_chat_call, raw_chat_connect, raw_chat_socket, ChatNode};
use tests::redis::RedisServer;
use tests::ws::Ws;

/// The `message` events (`[room, text]`) read on `ws` up to and including the one whose
/// text is `last`.
async fn messages_until(ws: &mut Ws, last: &str) -> Vec<(String, String)> {
    events_until(ws, "message", |m| m["text"] == last)
        .await
        .into_iter()
        .filter(|event| event[0] == "message")
        .map(|event| {
            let field = |name: &str| event[1][name].as_str().unwrap_or_default().to_owned();
            (field("room"), field("text"))
        })
        .collect()
}

#[tokio::test]
async fn a_private_room_created_after_redis_lost_its_data_reaches_only_its_members() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = ChatNode::start("a", Some(&url), &[]);
    let b = ChatNode::start("b", Some(&url), &[]);
    let mut alice = raw_chat_socket(&a, "alice").await;
    let mut bob = raw_chat_socket(&b, "bob").await;
    both_in_r(&mut alice, &mut bob).await;

    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");

    // Right away: nothing waits for a heartbeat to notice the loss.
    let mut eve = raw_chat_socket(&b, "eve").await;
    let private = raw_chat_call(&mut eve, 1, "create", r#"{"room":"R","private":true}"#).await;
    assert_eq!(private["ok"], true, "{private}");
    send(&mut eve, 2, "R", "secret").await;
    // After it in every node's order: whoever got the secret got it before this.
    send(&mut eve, 3, "lobby", "marker").await;

    for (name, ws) in [("alice", &mut alice), ("bob", &mut bob)] {
        let got = messages_until(ws, "marker").await;
        assert_eq!(
            got,
            [("lobby".to_owned(), "marker".to_owned())],
            "{name} is no member of the new private R"
        );
    }
    let history = raw_chat_call(&mut alice, 2, "history", r#"{"room":"R"}"#).await;
    assert_eq!(history, json!({"ok": false, "error": "not a member"}));
}

/// A socket of a new user named `name` on `node`, past its welcome, and the user id.
async fn chat_user(node: &ChatNode, name: &str) -> (Ws, String) {
    let mut ws = raw_chat_connect(node, &json!({ "name": name }).to_string()).await;
    let welcome = events_until(&mut ws, "welcome", |_| true).await;
    let user = welcome
        .last()
        .and_then(|w| w[1]["user"].as_str().map(str::to_owned));
    (ws, user.expect("a user id in the welcome"))
}

/// `creator` creates the public room R and `joiner` joins it (calls number 1).
async fn both_in_r(creator: &mut Ws, joiner: &mut Ws) {
    let made = raw_chat_call(creator, 1, "create", r#"{"room":"R"}"#).await;
    assert_eq!(made["ok"], true, "{made}");
    let joined = raw_chat_call(joiner, 1, "join", r#"{"room":"R"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");
}

/// Sends `text` to `room` on `ws` as call `id`, and checks it was accepted.
async fn send(ws: &mut Ws, id: u64, room: &str, text: &str) {
    let message = json!({"room": room, "text": text}).to_string();
    let sent = raw_chat_call(ws, id, "send", &message).await;
    assert_eq!(sent["ok"], true, "{room}: {text}: {sent}");
}

#[tokio::test]
async fn a_membership_redis_lost_ends_for_its_sockets() {
    a_membership_redis_lost_ends(false).await;
}

/// The same on a busy node, where sockets keep arriving: each writes the node's presence,
/// which made the heartbeat take Redis for intact (it judged by the node's presence keys),
/// so bob's socket kept getting the room's messages for good.
#[tokio::test]
async fn a_membership_redis_lost_ends_for_its_sockets_on_a_busy_node() {
    a_membership_redis_lost_ends(true).await;
}

/// Redis comes back as an older snapshot had it (the room and alice's membership, not
/// bob's); with `busy`, a socket connects to bob's node right after, and before each probe.
async fn a_membership_redis_lost_ends(busy: bool) {
    let redis = RedisServer::start();
    let url = redis.url();
    // A beat a second: the nodes notice the loss soon. A visitor (a new user, kept
    // connected) per probe, all from this one address: no per-client limit in the way.
    let args = [
        "--presence-ttl",
        "3s",
        "--rate-limit",
        "1000/1s",
        "--new-user-rate-limit",
        "100000/1s",
        "--max-sessions-per-client",
        "0",
    ];
    let a = ChatNode::start("a", Some(&url), &args);
    let b = ChatNode::start("b", Some(&url), &args);
    let (mut alice, alice_id) = chat_user(&a, "alice").await;
    let mut bob = raw_chat_socket(&b, "bob").await;
    both_in_r(&mut alice, &mut bob).await;

    // Back as an older snapshot had it: the room and alice's membership, not bob's.
    assert_eq!(redis.command(&["FLUSHALL"]), "+OK");
    let meta = json!({"private": false, "created_by": alice_id, "created_at": 0}).to_string();
    assert_eq!(redis.command(&["SET", "syd:chat:room:R", &meta]), "+OK");
    assert_eq!(
        redis.command(&["SADD", "syd:chat:members:R", &alice_id]),
        ":1"
    );
    let rooms = format!("syd:chat:user:{alice_id}:rooms");
    assert_eq!(redis.command(&["SADD", &rooms, "R"]), ":1");
    let mut visitors = Vec::new();
    if busy {
        visitors.push(raw_chat_socket(&b, "visitor").await);
    }

    // Until bob's node has noticed (a beat), alice's messages may still reach him; then
    // never again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 1;
    loop {
        if busy {
            visitors.push(raw_chat_socket(&b, "visitor").await);
        }
        id += 1;
        let probe = format!("probe {id}");
        send(&mut alice, id, "R", &probe).await;
        let mark = format!("mark {id}");
        id += 1;
        send(&mut alice, id, "lobby", &mark).await;
        let got = messages_until(&mut bob, &mark).await;
        if !got.contains(&("R".to_owned(), probe)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob, no longer a member of R, still gets its messages 15 s after Redis lost his membership"
        );
    }
    id += 1;
    send(&mut alice, id, "R", "secret").await;
    id += 1;
    send(&mut alice, id, "lobby", "last").await;
    let got = messages_until(&mut bob, "last").await;
    assert_eq!(got, [("lobby".to_owned(), "last".to_owned())]);
}

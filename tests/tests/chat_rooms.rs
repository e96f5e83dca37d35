//! How many rooms may exist (`--max-rooms`, one count for the whole cluster on a real
//! `redis-server`, and on one node with the embedded store), how many one user may be a
//! member of (`--max-memberships`, counted across the cluster too), and the room list in
//! pages.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_rooms`.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use tests::chatnode::{raw_chat_call, raw_chat_socket, raw_chat_tab, raw_chat_user, ChatNode};
use tests::redis::RedisServer;
use tests::ws::Ws;

/// A message limit no test reaches: rooms are created back to back.
const FLAGS: [&str; 2] = ["--rate-limit", "1000/1s"];

/// Creates `room` (public unless `private`) on `ws`; the ack.
async fn create(ws: &mut Ws, id: u64, room: &str, private: bool) -> Value {
    let payload = json!({"room": room, "private": private}).to_string();
    raw_chat_call(ws, id, "create", &payload).await
}

/// The names of a `rooms` answer.
fn names(answer: &Value) -> Vec<&str> {
    answer["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("no rooms in {answer}"))
        .iter()
        .map(|r| r["room"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn the_room_limit_holds_for_the_whole_cluster_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [FLAGS[0], FLAGS[1], "--max-rooms", "3"];
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    let n2 = ChatNode::start("n2", Some(&url), &flags);
    let mut a = raw_chat_socket(&n1, "ann").await;
    let mut b = raw_chat_socket(&n2, "bob").await;

    assert_eq!(create(&mut a, 1, "one", false).await["ok"], true);
    assert_eq!(create(&mut b, 2, "two", true).await["ok"], true);
    assert_eq!(create(&mut a, 3, "three", false).await["ok"], true);
    // Private rooms count too, and the count is the cluster's, not a node's.
    assert_eq!(
        create(&mut b, 4, "four", false).await,
        json!({"ok": false, "error": "too many rooms"})
    );
    assert_eq!(
        create(&mut a, 5, "five", true).await,
        json!({"ok": false, "error": "too many rooms"})
    );
    // A taken name is still told as such.
    assert_eq!(
        create(&mut a, 6, "one", false).await,
        json!({"ok": false, "error": "room exists"})
    );
    // Nothing of the refused rooms exists.
    let listed = raw_chat_call(&mut b, 7, "rooms", "{}").await;
    assert_eq!(names(&listed), ["lobby", "one", "three", "two"], "{listed}");
    assert_eq!(
        raw_chat_call(&mut b, 8, "join", r#"{"room":"four"}"#).await,
        json!({"ok": false, "error": "no such room"})
    );
}

#[tokio::test]
async fn the_room_limit_holds_on_one_node() {
    let flags = [FLAGS[0], FLAGS[1], "--max-rooms", "1"];
    let node = ChatNode::start("n1", None, &flags);
    let mut a = raw_chat_socket(&node, "ann").await;
    assert_eq!(create(&mut a, 1, "one", true).await["ok"], true);
    assert_eq!(
        create(&mut a, 2, "two", false).await,
        json!({"ok": false, "error": "too many rooms"})
    );
}

/// A user at `--max-memberships` on one node is refused a new room on another node,
/// by `join` and by `create`; re-joining a room it is in (and `lobby`, which does not
/// count) still works, and a `leave` makes room.
#[tokio::test]
async fn the_membership_limit_holds_for_the_user_across_the_cluster_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let flags = [FLAGS[0], FLAGS[1], "--max-memberships", "2"];
    let n1 = ChatNode::start("n1", Some(&url), &flags);
    let n2 = ChatNode::start("n2", Some(&url), &flags);
    let (mut ann, token) = raw_chat_user(&n1, "ann").await;
    let mut bob = raw_chat_socket(&n2, "bob").await;
    assert_eq!(create(&mut ann, 1, "one", false).await["ok"], true);
    assert_eq!(create(&mut bob, 2, "open", false).await["ok"], true);
    let joined = raw_chat_call(&mut ann, 3, "join", r#"{"room":"open"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");

    // Ann's tab on the other node: the limit is the user's, wherever it asks.
    let mut tab = raw_chat_tab(&n2, "ann", &token).await;
    assert_eq!(create(&mut bob, 4, "third", false).await["ok"], true);
    let too_many = json!({"ok": false, "error": "too many memberships"});
    assert_eq!(
        raw_chat_call(&mut tab, 5, "join", r#"{"room":"third"}"#).await,
        too_many
    );
    assert_eq!(create(&mut tab, 6, "fourth", true).await, too_many);
    // Nothing of the refused room exists, and the refused join left no membership.
    assert_eq!(
        raw_chat_call(&mut bob, 7, "join", r#"{"room":"fourth"}"#).await,
        json!({"ok": false, "error": "no such room"})
    );
    assert_eq!(
        raw_chat_call(&mut tab, 8, "send", r#"{"room":"third","text":"hi"}"#).await,
        json!({"ok": false, "error": "not a member"})
    );
    // At the limit, the rooms it is in still open, `lobby` included.
    for (id, room) in [(9, "one"), (10, "open"), (11, "lobby")] {
        let again = raw_chat_call(&mut tab, id, "join", &json!({ "room": room }).to_string()).await;
        assert_eq!(again["ok"], true, "{room}: {again}");
    }
    // A room left makes room for another.
    let left = raw_chat_call(&mut ann, 12, "leave", r#"{"room":"open"}"#).await;
    assert_eq!(left["ok"], true, "{left}");
    let joined = raw_chat_call(&mut tab, 13, "join", r#"{"room":"third"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let listed = raw_chat_call(&mut ann, 14, "rooms", "{}").await;
    assert_eq!(
        names(&listed),
        ["lobby", "one", "open", "third"],
        "{listed}"
    );
}

#[tokio::test]
async fn the_membership_limit_holds_on_one_node() {
    let flags = [FLAGS[0], FLAGS[1], "--max-memberships", "1"];
    let node = ChatNode::start("n1", None, &flags);
    let mut a = raw_chat_socket(&node, "ann").await;
    assert_eq!(create(&mut a, 1, "one", false).await["ok"], true);
    assert_eq!(
        create(&mut a, 2, "two", false).await,
        json!({"ok": false, "error": "too many memberships"})
    );
    let again = raw_chat_call(&mut a, 3, "join", r#"{"room":"one"}"#).await;
    assert_eq!(again["ok"], true, "{again}");
}

#[tokio::test]
async fn the_room_list_comes_in_pages() {
    let node = ChatNode::start("n1", None, &FLAGS);
    let mut a = raw_chat_socket(&node, "ann").await;
    let mut b = raw_chat_socket(&node, "bob").await;
    for (i, room) in ["e", "b", "d", "a"].into_iter().enumerate() {
        assert_eq!(create(&mut a, i as u64, room, false).await["ok"], true);
    }
    // Someone else's private room is in nobody else's pages; one's own is.
    assert_eq!(create(&mut b, 10, "c", true).await["ok"], true);
    assert_eq!(create(&mut a, 11, "cc", true).await["ok"], true);

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    for id in 20.. {
        let request = match &after {
            None => json!({"limit": 2}),
            Some(after) => json!({"limit": 2, "after": after}),
        };
        let page = raw_chat_call(&mut a, id, "rooms", &request.to_string()).await;
        assert_eq!(page["ok"], true, "{page}");
        pages.push(names(&page).join(","));
        match page.get("next") {
            Some(next) => after = Some(next.as_str().unwrap().to_owned()),
            None => break,
        }
        assert!(pages.len() < 10, "pages do not end: {pages:?}");
    }
    assert_eq!(pages, ["lobby,a", "b,cc", "d,e"]);

    // Without a limit, one page; a limit out of range is brought into it.
    let all = raw_chat_call(&mut b, 30, "rooms", "{}").await;
    assert_eq!(names(&all), ["lobby", "a", "b", "c", "d", "e"], "{all}");
    assert!(all.get("next").is_none(), "{all}");
    let one = raw_chat_call(&mut b, 31, "rooms", r#"{"limit":0}"#).await;
    assert_eq!(names(&one), ["lobby"], "{one}");
    assert_eq!(one["next"], "lobby", "{one}");
}

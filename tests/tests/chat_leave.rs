//! `leave` takes every connection of the user out of the room at once, on every node: a
//! private room's later messages reach none of the user's sockets (another tab, on
//! another node behind the load balancer), and `presence` stops listing the user there.
//! Checked on two chat nodes sharing a real `redis-server`, and on one node with its
//! in-process bus.
//!
//! Needs `redis-server` (`scripts/install-deps.sh` installs it). Build the node first:
//! `cargo build -p chat-node --bin chat-node && cargo test -p tests --test chat_leave`.

use serde_json::{json, Value};
use tests::chatnode::{events_until, raw_chat_call, raw_chat_tab, raw_chat_user, ChatNode};
use tests::redis::RedisServer;

fn is_message(text: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["text"] == text
}

/// Alice has two tabs: `tab1` on `alice_node`, `tab2` on `tab2_node`; Bob is on
/// `bob_node`. Alice creates a private room, Bob joins it, both tabs get its messages;
/// then `tab1` leaves. After the ack, Bob's next message in the room reaches neither tab
/// (shown by a marker in `lobby`, sent after it, arriving at each tab without it), and a
/// listening tab of Bob's gets a `presence` of the room without Alice.
async fn leave_takes_every_tab_out(
    alice_node: &ChatNode,
    tab2_node: &ChatNode,
    bob_node: &ChatNode,
) {
    let (mut tab1, token) = raw_chat_user(alice_node, "alice").await;
    let created = raw_chat_call(
        &mut tab1,
        1,
        "create",
        r#"{"room":"secret","private":true}"#,
    )
    .await;
    assert_eq!(created["ok"], true, "{created}");
    let invite = created["invite"].as_str().expect("an invite").to_owned();
    // Connected after the room was made: its connect hook puts it in the room.
    let mut tab2 = raw_chat_tab(tab2_node, "alice", &token).await;

    let (mut bob, bob_token) = raw_chat_user(bob_node, "bob").await;
    let join = json!({"room": "secret", "invite": invite}).to_string();
    let joined = raw_chat_call(&mut bob, 1, "join", &join).await;
    assert_eq!(joined["ok"], true, "{joined}");
    // Another tab of Bob's that only listens: it sees every `presence` of the room.
    let mut watcher = raw_chat_tab(bob_node, "bob", &bob_token).await;
    let sent = raw_chat_call(&mut bob, 2, "send", r#"{"room":"secret","text":"before"}"#).await;
    assert_eq!(sent["ok"], true, "{sent}");
    // Both tabs are in the room.
    events_until(&mut tab1, "message", is_message("before")).await;
    events_until(&mut tab2, "message", is_message("before")).await;

    let left = raw_chat_call(&mut tab1, 2, "leave", r#"{"room":"secret"}"#).await;
    assert_eq!(left["ok"], true, "{left}");

    let sent = raw_chat_call(&mut bob, 3, "send", r#"{"room":"secret","text":"after"}"#).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let marker = raw_chat_call(&mut bob, 4, "send", r#"{"room":"lobby","text":"marker"}"#).await;
    assert_eq!(marker["ok"], true, "{marker}");
    for (tab, ws) in [("tab1", &mut tab1), ("tab2", &mut tab2)] {
        let got = events_until(ws, "message", |m| {
            m["room"] == "lobby" && m["text"] == "marker"
        })
        .await;
        let leaked: Vec<&Value> = got
            .iter()
            .filter(|e| e[0] == "message" && e[1]["room"] == "secret")
            .collect();
        assert!(
            leaked.is_empty(),
            "{tab} got the left room's messages: {leaked:?}"
        );
    }

    // Presence drops Alice: her other tab is not counted in the room any more.
    events_until(&mut watcher, "presence", |p| {
        p["room"] == "secret" && p["members"] == json!(["bob"]) && p["count"] == 1
    })
    .await;

    // The other tab is out of the membership too, as before.
    let refused = raw_chat_call(&mut tab2, 1, "send", r#"{"room":"secret","text":"x"}"#).await;
    assert_eq!(refused["ok"], false, "{refused}");
}

/// Chat nodes `ids` on the Redis at `url`.
fn nodes_on(url: &str, ids: &[&str]) -> Vec<ChatNode> {
    ids.iter()
        .map(|id| ChatNode::start(id, Some(url), &["--rate-limit", "1000/1s"]))
        .collect()
}

#[tokio::test]
async fn leave_takes_the_users_tabs_on_other_nodes_out_of_a_private_room() {
    let redis = RedisServer::start();
    let [n1, n2] = &nodes_on(&redis.url(), &["n1", "n2"])[..] else {
        unreachable!("two nodes")
    };
    // Alice's second tab and Bob on the other node: Bob's message there is delivered to
    // the node's own sockets without crossing the bus.
    leave_takes_every_tab_out(n1, n2, n2).await;
}

#[tokio::test]
async fn leave_takes_the_users_tabs_on_other_nodes_out_when_the_message_comes_from_a_third_node() {
    let redis = RedisServer::start();
    let [n1, n2, n3] = &nodes_on(&redis.url(), &["n1", "n2", "n3"])[..] else {
        unreachable!("three nodes")
    };
    leave_takes_every_tab_out(n1, n2, n3).await;
}

#[tokio::test]
async fn leave_takes_the_users_other_tabs_out_of_a_private_room_on_one_node() {
    let node = ChatNode::start("solo", None, &["--rate-limit", "1000/1s"]);
    leave_takes_every_tab_out(&node, &node, &node).await;
}

//! `leave` takes every connection of the user out of the room at once, on every node: a
//! private room's later messages reach none of the user's sockets (another tab, on
//! another node behind the load balancer), each of them is told (`left`), and `presence`
//! stops listing the user there.
//! Checked on two chat nodes sharing a real `redis-server`, and on one node with its
//! in-process bus. And when the other nodes cannot be reached: while the bus refuses the
//! leave the ack says `leave incomplete` and the node finishes it on its own; a node that
//! is frozen (SIGSTOP) when the user leaves holds nothing up, and once it runs again no
//! later message of the room reaches the user's tabs there, nor a tab that connected to
//! it during the leave.
//!
//! Needs `redis-server` (`scripts/install-deps.sh` installs it). Build the node first:
//! `cargo build -p chat-node --bin chat-node && cargo test -p tests --test chat_leave`.

use std::time::Instant;

use serde_json::{json, Value};
use tests::chatnode::{
    events_until, raw_chat_call, raw_chat_open, raw_chat_send_connect, raw_chat_tab, raw_chat_user,
    ChatNode,
};
use tests::redis::RedisServer;
use tests::wait::POLL;
use tests::{Ws, STEP_TIMEOUT};

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
    let mut room = secret_room(alice_node, tab2_node, bob_node, bob_node).await;
    let left = raw_chat_call(&mut room.tab1, 2, "leave", r#"{"room":"secret"}"#).await;
    assert_eq!(left["ok"], true, "{left}");
    // The other tab is told (so that its page stops showing the room); so was this one,
    // before the ack, which `raw_chat_call` read past.
    events_until(&mut room.tab2, "left", |e| *e == json!({"room": "secret"})).await;
    nothing_of_the_room_reaches(
        &mut room.bob,
        3,
        "after",
        &mut [("tab1", &mut room.tab1), ("tab2", &mut room.tab2)],
    )
    .await;

    // Presence drops Alice: her other tab is not counted in the room any more.
    events_until(&mut room.watcher, "presence", |p| {
        p["room"] == "secret" && p["members"] == json!(["bob"]) && p["count"] == 1
    })
    .await;

    // The other tab is out of the membership too, as before.
    not_a_member_any_more(&mut room.tab2, 5).await;
}

/// Chat nodes `ids` on the Redis at `url`.
fn nodes_on(url: &str, ids: &[&str]) -> Vec<ChatNode> {
    // Limits no test reaches: a `leave` is retried until it is complete.
    let flags = ["--rate-limit", "1000/1s", "--join-rate-limit", "1000/1s"];
    ids.iter()
        .map(|id| ChatNode::start(id, Some(url), &flags))
        .collect()
}

/// Alice's tabs and Bob, in Alice's private room `secret`.
struct Secret {
    /// Alice's tab on her node, which leaves.
    tab1: Ws,
    /// Alice's second tab.
    tab2: Ws,
    alice_token: String,
    /// Bob, a member.
    bob: Ws,
    /// Bob's second tab, which only listens: it gets what its node delivers to the room.
    watcher: Ws,
}

/// Alice creates `secret` on `alice_node` and has a second tab on `tab2_node`; Bob joins
/// from `bob_node` and has a listening tab on `watcher_node`; a message of Bob's reached
/// every one of them.
async fn secret_room(
    alice_node: &ChatNode,
    tab2_node: &ChatNode,
    bob_node: &ChatNode,
    watcher_node: &ChatNode,
) -> Secret {
    let (mut tab1, alice_token) = raw_chat_user(alice_node, "alice").await;
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
    let mut tab2 = raw_chat_tab(tab2_node, "alice", &alice_token).await;
    let (mut bob, bob_token) = raw_chat_user(bob_node, "bob").await;
    let join = json!({"room": "secret", "invite": invite}).to_string();
    let joined = raw_chat_call(&mut bob, 1, "join", &join).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let mut watcher = raw_chat_tab(watcher_node, "bob", &bob_token).await;
    let sent = raw_chat_call(&mut bob, 2, "send", r#"{"room":"secret","text":"before"}"#).await;
    assert_eq!(sent["ok"], true, "{sent}");
    for ws in [&mut tab1, &mut tab2, &mut watcher] {
        events_until(ws, "message", is_message("before")).await;
    }
    Secret {
        tab1,
        tab2,
        alice_token,
        bob,
        watcher,
    }
}

/// Alice's membership of `secret` has ended, as `ws` (a tab of hers) sees it: the room
/// is not in her room list, and she cannot send to it.
async fn not_a_member_any_more(ws: &mut Ws, id: u64) {
    let listed = raw_chat_call(ws, id, "rooms", "{}").await;
    let rooms = listed["rooms"].as_array().expect("a room list");
    assert!(
        rooms.iter().all(|r| r["room"] != "secret"),
        "the room is still listed: {listed}"
    );
    let refused = raw_chat_call(ws, id + 1, "send", r#"{"room":"secret","text":"x"}"#).await;
    assert_eq!(
        refused,
        json!({"ok": false, "error": "not a member"}),
        "a send after the leave"
    );
}

/// Bob sends `text` to `secret`, then a marker to `lobby` (in that order); each of `tabs` reads up to the marker and must have got nothing of the
/// room meanwhile: no message, no `system` notice (presence aside, which the left tab
/// was told before the leave reached it).
async fn nothing_of_the_room_reaches(
    bob: &mut Ws,
    id: u64,
    text: &str,
    tabs: &mut [(&str, &mut Ws)],
) {
    let after = json!({"room": "secret", "text": text}).to_string();
    let sent = raw_chat_call(bob, id, "send", &after).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let marker = json!({"room": "lobby", "text": format!("marker after {text}")}).to_string();
    let sent = raw_chat_call(bob, id + 1, "send", &marker).await;
    assert_eq!(sent["ok"], true, "{sent}");
    for (tab, ws) in tabs.iter_mut() {
        let got = events_until(ws, "message", |m| {
            m["room"] == "lobby" && m["text"] == format!("marker after {text}")
        })
        .await;
        let leaked: Vec<&Value> = got
            .iter()
            .filter(|e| (e[0] == "message" || e[0] == "system") && e[1]["room"] == "secret")
            .collect();
        assert!(
            leaked.is_empty(),
            "{tab} got the left room's events: {leaked:?}"
        );
    }
}

/// Sends `leave` of `secret` on `ws` until it answers `ok` (within [`STEP_TIMEOUT`]):
/// one that finds the bus still marked unreachable answers `leave incomplete` at once.
async fn leave_until_complete(ws: &mut Ws, first_id: u64) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    for id in first_id.. {
        let left = raw_chat_call(ws, id, "leave", r#"{"room":"secret"}"#).await;
        if left["ok"] == true {
            return;
        }
        assert_eq!(left["error"], "leave incomplete", "{left}");
        assert!(
            Instant::now() < deadline,
            "leave still incomplete after {STEP_TIMEOUT:?}: {left}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The leave cannot reach the other nodes: the namespace's log (the bus) refuses writes,
/// the store takes them. The ack says `leave incomplete` in bounded time (the bus's wait
/// for its append), the membership has ended all the same; once the bus takes writes
/// again the node appends the waiting leave on its own, before anything it sent later
/// (Bob's tab on the other node gets the `left` notice, Alice's tab there does not, nor
/// Bob's next message), and a retried `leave` answers `ok`.
#[tokio::test]
async fn leave_is_incomplete_while_the_bus_refuses_it_and_the_node_finishes_it() {
    let redis = RedisServer::start();
    let [n1, n2] = &nodes_on(&redis.url(), &["n1", "n2"])[..] else {
        unreachable!("two nodes")
    };
    // Bob on the first node (his messages go through its bus queue, behind its leave),
    // his listening tab on the second.
    let mut room = secret_room(n1, n2, n1, n2).await;

    // Every key but the namespaces' logs (`syd:{<namespace>}:stream`).
    redis.writable_keys_only("syd:[^{]*");
    let left = raw_chat_call(&mut room.tab1, 10, "leave", r#"{"room":"secret"}"#).await;
    assert_eq!(left, json!({"ok": false, "error": "leave incomplete"}));
    not_a_member_any_more(&mut room.tab1, 11).await;
    not_a_member_any_more(&mut room.tab2, 11).await;

    redis.all_keys_writable();
    // The leave was appended before the notice that followed it, so the other node
    // applied it before delivering the notice.
    events_until(&mut room.watcher, "system", |s| {
        s["room"] == "secret" && s["text"] == "alice left"
    })
    .await;
    // Alice's other tab is told too, by the same waiting append: the retry below finds
    // her no member any more, and tells nobody.
    events_until(&mut room.tab2, "left", |l| l["room"] == "secret").await;
    nothing_of_the_room_reaches(&mut room.bob, 20, "after", &mut [("tab2", &mut room.tab2)]).await;
    leave_until_complete(&mut room.tab1, 30).await;
    nothing_of_the_room_reaches(
        &mut room.bob,
        40,
        "after retry",
        &mut [("tab2", &mut room.tab2)],
    )
    .await;
}

/// The other node is frozen (SIGSTOP) when Alice leaves: her `leave` does not wait for
/// it (the leave is in the log; no node is asked), and the membership ends at once. Bob
/// sends while it is frozen; once it runs again it applies the leave before Bob's later
/// message, so Alice's tab there gets none of the room.
#[tokio::test]
async fn leave_does_not_wait_for_a_frozen_node_and_its_tabs_get_nothing_sent_after() {
    let redis = RedisServer::start();
    let [n1, n2] = &nodes_on(&redis.url(), &["n1", "n2"])[..] else {
        unreachable!("two nodes")
    };
    // Bob on the first node (his messages go through its bus queue, behind its leave),
    // his listening tab on the second.
    let mut room = secret_room(n1, n2, n1, n2).await;

    let frozen = n2.freeze();
    let left = raw_chat_call(&mut room.tab1, 10, "leave", r#"{"room":"secret"}"#).await;
    assert_eq!(left, json!({"ok": true}));
    not_a_member_any_more(&mut room.tab1, 11).await;
    let sent = raw_chat_call(
        &mut room.bob,
        20,
        "send",
        r#"{"room":"secret","text":"after"}"#,
    )
    .await;
    assert_eq!(sent["ok"], true, "{sent}");
    frozen.thaw();

    nothing_of_the_room_reaches(
        &mut room.bob,
        30,
        "after thaw",
        &mut [("tab2", &mut room.tab2)],
    )
    .await;
    not_a_member_any_more(&mut room.tab2, 40).await;
    let again = raw_chat_call(&mut room.tab1, 50, "leave", r#"{"room":"secret"}"#).await;
    assert_eq!(again, json!({"ok": true}));
}

/// A tab of Alice's asks a frozen node to connect (its CONNECT waits in the node's
/// socket) before she leaves from another node; once the node runs again, the tab gets
/// its `welcome` but none of the room. (The connect hook then reads her memberships after
/// the leave: the interleaving where it reads them before the leave and enters the room
/// after its node applied the leave cannot be brought about from outside the process.)
#[tokio::test]
async fn a_tab_connecting_to_a_frozen_node_during_a_leave_gets_nothing_of_the_room() {
    let redis = RedisServer::start();
    let [n1, n2] = &nodes_on(&redis.url(), &["n1", "n2"])[..] else {
        unreachable!("two nodes")
    };
    // Bob on the first node (his messages go through its bus queue, behind its leave),
    // his listening tab on the second.
    let mut room = secret_room(n1, n2, n1, n2).await;
    let mut tab3 = raw_chat_open(n2).await;

    let frozen = n2.freeze();
    let auth = json!({"name": "alice", "token": room.alice_token}).to_string();
    raw_chat_send_connect(&mut tab3, &auth).await;
    let left = raw_chat_call(&mut room.tab1, 10, "leave", r#"{"room":"secret"}"#).await;
    assert_eq!(left, json!({"ok": true}));
    frozen.thaw();

    let welcome = events_until(&mut tab3, "welcome", |_| true).await;
    assert_eq!(
        welcome.last().map(|w| w[1]["name"].clone()),
        Some(json!("alice"))
    );
    nothing_of_the_room_reaches(
        &mut room.bob,
        20,
        "after",
        &mut [("tab2", &mut room.tab2), ("tab3", &mut tab3)],
    )
    .await;
    not_a_member_any_more(&mut tab3, 30).await;
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

//! Every connection of a user enters every room the user is a member of: a room joined
//! or created from one tab reaches the user's other tabs at once, on the same node and on
//! another (two chat nodes on a real `redis-server`), without those tabs re-joining,
//! sending, or reconnecting.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_tabs`.

use serde_json::json;
use tests::chatnode::{
    events_until, raw_chat_call, raw_chat_socket, raw_chat_tab, raw_chat_user, ChatNode,
};
use tests::redis::RedisServer;

#[tokio::test]
async fn a_room_joined_or_created_in_one_tab_reaches_the_users_other_tabs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = ChatNode::start("a", Some(&url), &[]);
    let b = ChatNode::start("b", Some(&url), &[]);
    let (mut tab1, token) = raw_chat_user(&a, "alice").await;
    let mut tab2 = raw_chat_tab(&a, "alice", &token).await;
    let mut tab3 = raw_chat_tab(&b, "alice", &token).await;
    let mut olga = raw_chat_socket(&b, "olga").await;

    // Created in tab 1, private: olga joins with the invite and speaks.
    let made = raw_chat_call(&mut tab1, 1, "create", r#"{"room":"team","private":true}"#).await;
    assert_eq!(made["ok"], true, "{made}");
    let join = json!({"room": "team", "invite": made["invite"]}).to_string();
    let joined = raw_chat_call(&mut olga, 1, "join", &join).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let hello = json!({"room": "team", "text": "hello"}).to_string();
    let sent = raw_chat_call(&mut olga, 2, "send", &hello).await;
    assert_eq!(sent["ok"], true, "{sent}");
    for (name, tab) in [("tab 2", &mut tab2), ("tab 3", &mut tab3)] {
        let seen = events_until(tab, "message", |m| m["text"] == "hello").await;
        assert_eq!(
            seen.last().map(|e| e[1]["room"].clone()),
            Some(json!("team")),
            "{name}"
        );
    }

    // Joined in tab 3 (node b): olga's public room reaches tabs 1 and 2 on node a.
    let made = raw_chat_call(&mut olga, 3, "create", r#"{"room":"open"}"#).await;
    assert_eq!(made["ok"], true, "{made}");
    let joined = raw_chat_call(&mut tab3, 1, "join", r#"{"room":"open"}"#).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let hi = json!({"room": "open", "text": "hi all"}).to_string();
    let sent = raw_chat_call(&mut olga, 4, "send", &hi).await;
    assert_eq!(sent["ok"], true, "{sent}");
    for (name, tab) in [("tab 1", &mut tab1), ("tab 2", &mut tab2)] {
        let seen = events_until(tab, "message", |m| m["text"] == "hi all").await;
        assert_eq!(
            seen.last().map(|e| e[1]["room"].clone()),
            Some(json!("open")),
            "{name}"
        );
    }
}

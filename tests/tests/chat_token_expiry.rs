//! Users whose token expires are forgotten by a real node on a real `redis-server`: their
//! memberships end, and the token names nobody. A user connected all along keeps its
//! token and memberships however long ago it connected, and a user an older node created
//! (written straight into Redis, as that node would have: a token and memberships, no
//! record of the token's use) is forgotten too once its token expires.
//!
//! Needs `redis-server`. Build the node first: `cargo build -p chat-node --bin chat-node &&
//! cargo test -p tests --test chat_token_expiry`.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::chatnode::{events_until, raw_chat_call, raw_chat_connect, ChatNode};
use tests::redis::RedisServer;
use tests::{wait_until, Ws};

/// A new or returning user (`token`) on `node`: its socket, user id and token.
async fn connect(node: &ChatNode, name: &str, token: Option<&str>) -> (Ws, String, String) {
    let auth = match token {
        Some(token) => json!({ "name": name, "token": token }),
        None => json!({ "name": name }),
    };
    let mut ws = raw_chat_connect(node, &auth.to_string()).await;
    let welcome = events_until(&mut ws, "welcome", |_| true).await;
    let welcome = &welcome.last().expect("a welcome")[1];
    let field = |key: &str| welcome[key].as_str().expect("a string").to_owned();
    (ws, field("user"), field("token"))
}

#[tokio::test]
async fn expired_users_are_forgotten_and_connected_ones_kept() {
    let redis = RedisServer::start();
    // An older node's user, whose token expires 1.5 s from now.
    assert_eq!(
        redis.command(&["SET", "syd:chat:token:t-old", "u-old", "PX", "1500"]),
        "+OK"
    );
    assert_eq!(
        redis.command(&["SADD", "syd:chat:user:u-old:rooms", "old-den"]),
        ":1"
    );
    assert_eq!(
        redis.command(&["SADD", "syd:chat:members:old-den", "u-old"]),
        ":1"
    );
    let ttl = Duration::from_secs(2);
    let node = ChatNode::start(
        "a",
        Some(&redis.url()),
        &["--token-ttl", "2s", "--presence-ttl", "1s"],
    );

    // `stays` connects first and stays connected; `goes` connects after it, then leaves.
    let (mut stays, stays_user, stays_token) = connect(&node, "stays", None).await;
    let made = raw_chat_call(&mut stays, 1, "create", r#"{"room":"hall","private":true}"#).await;
    assert_eq!(made["ok"], true, "{made}");
    let (mut goes, goes_user, goes_token) = connect(&node, "goes", None).await;
    let made = raw_chat_call(&mut goes, 1, "create", r#"{"room":"den","private":true}"#).await;
    assert_eq!(made["ok"], true, "{made}");
    let left = Instant::now();
    drop(goes);
    let member = |room: &str, user: &str| {
        redis.command(&["SISMEMBER", &format!("syd:chat:members:{room}"), user]) == ":1"
    };
    assert!(member("den", &goes_user));

    // `goes`'s token expires 2 s after its connect; the node's next round forgets it.
    wait_until(
        ttl + Duration::from_secs(10),
        "the expired users forgotten",
        || std::future::ready(!member("den", &goes_user) && !member("old-den", "u-old")),
    )
    .await;
    assert!(left.elapsed() >= ttl, "forgotten before its token expired");
    assert_eq!(
        redis.command(&["EXISTS", &format!("syd:chat:user:{goes_user}:rooms")]),
        ":0"
    );
    // Connected before `goes`: without its use kept, it would have been forgotten first.
    assert!(member("hall", &stays_user));
    let (_tab, user, _) = connect(&node, "stays", Some(&stays_token)).await;
    assert_eq!(user, stays_user, "a connected user's token stays valid");
    // `goes`'s token names nobody: whoever brings it is a new user, in no private room.
    let (mut back, user, _) = connect(&node, "goes", Some(&goes_token)).await;
    assert_ne!(user, goes_user);
    let send = raw_chat_call(&mut back, 1, "send", r#"{"room":"den","text":"hi"}"#).await;
    assert_eq!(send, json!({"ok": false, "error": "not a member"}));
    drop(stays);
}

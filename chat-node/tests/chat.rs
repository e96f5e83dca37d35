//! The chat on in-process nodes sharing one embedded store ([`MemoryStore`]), one bus and
//! one session directory: they behave like a cluster on Redis — private rooms, messages
//! across nodes, memberships that follow the user's token to another node. (The whole API
//! through the official client, on Redis, is `tests/tests/chat_semantics.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chat_node::bus::MemoryBus;
use chat_node::chat::store::{
    Created, Joined, JointEntry, Message, NewMessage, Online, Post, Posted, PresenceEntry,
    RoomLimits, RoomMeta,
};
use chat_node::chat::{ChatStore, MemoryStore, RateLimit, StoreError};
use chat_node::forward::MemoryDirectory;
use chat_node::node::{Node, NodeConfig};
use serde_json::json;
use tokio::sync::oneshot;
use utils::chat::Client;
use utils::{TestServer, STEP};

/// Two nodes, "a" and "b", on shared in-process parts.
async fn pair() -> (TestServer, TestServer) {
    pair_on(Arc::new(MemoryStore::new())).await
}

/// [`pair`] on a given store.
async fn pair_on(store: Arc<dyn ChatStore>) -> (TestServer, TestServer) {
    let bus = Arc::new(MemoryBus::new());
    let directory = Arc::new(MemoryDirectory::new());
    let node = |id: &str| {
        let config = NodeConfig {
            node_id: id.to_owned(),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(20),
            ..NodeConfig::default()
        };
        Node::with_store(config, bus.clone(), directory.clone(), store.clone()).unwrap()
    };
    (
        TestServer::start_node(node("a")).await,
        TestServer::start_node(node("b")).await,
    )
}

/// `from` sends a lobby message and `to` waits for it: each node applies the log in
/// order, so every broadcast sent before it has then reached `to` (or never will).
async fn lobby_barrier(from: &mut Client, to: &mut Client) {
    let sent = from
        .call("send", json!({"room": "lobby", "text": "barrier"}))
        .await;
    let id = sent["id"].clone();
    to.event("message", |m| m["id"] == id).await;
}

#[tokio::test]
async fn in_process_nodes_sharing_a_memory_store_behave_like_a_cluster() {
    let (a, b) = pair().await;
    let mut alice = Client::connect(&a, json!({"name": "alice"})).await;
    let mut bob = Client::connect(&b, json!({"name": "bob"})).await;
    let mut eve = Client::connect(&b, json!({"name": "bob"})).await;
    assert_eq!(alice.welcome["node"], "a");
    assert_eq!(bob.welcome["node"], "b");
    assert_ne!(bob.welcome["user"], eve.welcome["user"]);

    let made = alice
        .call("create", json!({"room": "p", "private": true}))
        .await;
    assert_eq!(made["ok"], true);
    let invite = made["invite"].as_str().unwrap().to_owned();
    let joined = bob
        .call("join", json!({"room": "p", "invite": invite}))
        .await;
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    let refused = eve.call("join", json!({"room": "p"})).await;
    assert_eq!(refused, json!({"ok": false, "error": "invalid invite"}));
    let refused = eve.call("send", json!({"room": "p", "text": "x"})).await;
    assert_eq!(refused, json!({"ok": false, "error": "not a member"}));
    let rooms = eve.call("rooms", json!({})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "lobby", "private": false, "members": 3}])
    );

    let sent = alice
        .call("send", json!({"room": "p", "text": "secret"}))
        .await;
    let id = sent["id"].clone();
    let got = bob.event("message", |m| m["id"] == id).await;
    assert_eq!(
        (got["from"].clone(), got["text"].clone()),
        (json!("alice"), json!("secret"))
    );
    // A lobby message after it: eve, on bob's node, gets that and nothing of room p.
    lobby_barrier(&mut alice, &mut eve).await;
    assert!(
        eve.events.iter().all(|(_, v)| v["room"] != "p"),
        "{:?}",
        eve.events
    );

    // Bob comes back on node a with his token: still a member, without joining again.
    let token = bob.welcome["token"].clone();
    drop(bob);
    let mut bob = Client::connect(&a, json!({"name": "bob", "token": token})).await;
    assert_eq!(bob.welcome["node"], "a");
    let sent = bob.call("send", json!({"room": "p", "text": "back"})).await;
    assert_eq!(sent["ok"], true, "{sent}");
    let id = sent["id"].clone();
    alice.event("message", |m| m["id"] == id).await;
    let history = alice.call("history", json!({"room": "p"})).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["secret", "back"]);
}

/// A connection that read its user's memberships before a `leave` from another tab, and
/// enters the rooms after its node applied that leave, must not stay in the room left: the
/// leave could not find the socket (it was in no room yet), so the connection itself has
/// to notice, by reading the memberships again once it is in.
#[tokio::test]
async fn a_connection_that_read_its_rooms_before_a_leave_does_not_stay_in_the_room() {
    let store = Arc::new(GatedStore::default());
    let (a, b) = pair_on(store.clone()).await;
    let mut tab1 = Client::connect(&a, json!({"name": "alice"})).await;
    let mut bob = Client::connect(&a, json!({"name": "bob"})).await;
    let mut carol = Client::connect(&b, json!({"name": "carol"})).await;
    let made = tab1.call("create", json!({"room": "r"})).await;
    assert_eq!(made["ok"], true, "{made}");
    let joined = bob.call("join", json!({"room": "r"})).await;
    assert_eq!(joined["ok"], true, "{joined}");

    // Alice's second tab, on node b, is held just after it read her rooms.
    let (read, release) = store.hold_next_rooms_of();
    let token = tab1.welcome["token"].clone();
    let b = Arc::new(b);
    let node_b = b.clone();
    let tab2 = tokio::spawn(async move {
        Client::connect(&node_b, json!({"name": "alice", "token": token})).await
    });
    let rooms = tokio::time::timeout(STEP, read)
        .await
        .expect("the second tab's connection read its rooms")
        .unwrap();
    assert!(rooms.iter().any(|r| r == "r"), "{rooms:?}");

    let left = tab1.call("leave", json!({"room": "r"})).await;
    assert_eq!(left["ok"], true, "{left}");
    // Node b has applied the leave once it delivers a broadcast sent after it.
    lobby_barrier(&mut bob, &mut carol).await;

    release.send(()).unwrap();
    let mut tab2 = tokio::time::timeout(STEP, tab2)
        .await
        .expect("the second tab connected")
        .unwrap();
    let sent = bob
        .call("send", json!({"room": "r", "text": "after"}))
        .await;
    assert_eq!(sent["ok"], true, "{sent}");
    lobby_barrier(&mut bob, &mut tab2).await;
    assert!(
        tab2.events.iter().all(|(_, v)| v["room"] != "r"),
        "the second tab got the room's events after the leave: {:?}",
        tab2.events
    );
    let refused = tab2.call("send", json!({"room": "r", "text": "x"})).await;
    assert_eq!(refused, json!({"ok": false, "error": "not a member"}));
}

/// The embedded store, with a hold on one `rooms_of` that a test arms: the call reads
/// the rooms, reports them, and answers only when the test releases it.
#[derive(Default)]
struct GatedStore {
    inner: MemoryStore,
    hold: Mutex<Option<Hold>>,
}

/// Where a held `rooms_of` reports what it read, and what releases it.
type Hold = (oneshot::Sender<Vec<String>>, oneshot::Receiver<()>);

impl GatedStore {
    /// Arms the hold: the rooms the next `rooms_of` read, and the release.
    fn hold_next_rooms_of(&self) -> (oneshot::Receiver<Vec<String>>, oneshot::Sender<()>) {
        let (read_tx, read_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.hold.lock().unwrap() = Some((read_tx, release_rx));
        (read_rx, release_tx)
    }
}

#[async_trait]
impl ChatStore for GatedStore {
    fn kind(&self) -> &'static str {
        "gated memory"
    }
    async fn rooms_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rooms = self.inner.rooms_of(user).await?;
        let hold = self.hold.lock().unwrap().take();
        if let Some((read, release)) = hold {
            read.send(rooms.clone()).unwrap();
            tokio::time::timeout(STEP, release).await.unwrap().unwrap();
        }
        Ok(rooms)
    }
    async fn user_for_token(
        &self,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.inner.user_for_token(token, ttl).await
    }
    async fn create_user(&self, user: &str, token: &str, ttl: Duration) -> Result<(), StoreError> {
        self.inner.create_user(user, token, ttl).await
    }
    async fn touch_users(
        &self,
        users: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.touch_users(users, ttl).await
    }
    async fn forget_expired_users(&self, ttl: Duration) -> Result<u64, StoreError> {
        self.inner.forget_expired_users(ttl).await
    }
    async fn forget_empty_rooms(&self, ttl: Duration) -> Result<u64, StoreError> {
        self.inner.forget_empty_rooms(ttl).await
    }
    async fn create_room(
        &self,
        room: &str,
        meta: &RoomMeta,
        limits: RoomLimits,
    ) -> Result<Created, StoreError> {
        self.inner.create_room(room, meta, limits).await
    }
    async fn room(&self, room: &str) -> Result<Option<RoomMeta>, StoreError> {
        self.inner.room(room).await
    }
    async fn rooms(&self, rooms: &[String]) -> Result<BTreeMap<String, RoomMeta>, StoreError> {
        self.inner.rooms(rooms).await
    }
    async fn public_rooms(&self, after: &str, count: usize) -> Result<Vec<String>, StoreError> {
        self.inner.public_rooms(after, count).await
    }
    async fn add_member(
        &self,
        room: &str,
        user: &str,
        creation: &str,
        max_memberships: usize,
    ) -> Result<Joined, StoreError> {
        self.inner
            .add_member(room, user, creation, max_memberships)
            .await
    }
    async fn remove_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.inner.remove_member(room, user).await
    }
    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.inner.is_member(room, user).await
    }
    async fn append(
        &self,
        room: &str,
        message: &NewMessage,
        cap: usize,
    ) -> Result<String, StoreError> {
        self.inner.append(room, message, cap).await
    }
    async fn history(
        &self,
        room: &str,
        before: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.inner.history(room, before, limit).await
    }
    async fn admit(&self, bucket: &str, limit: &RateLimit) -> Result<bool, StoreError> {
        self.inner.admit(bucket, limit).await
    }
    async fn post(&self, post: Post<'_>) -> Result<Posted, StoreError> {
        self.inner.post(post).await
    }
    async fn post_and_append(
        &self,
        post: Post<'_>,
        entry: Option<JointEntry<'_>>,
    ) -> Result<(Posted, Option<String>), StoreError> {
        self.inner.post_and_append(post, entry).await
    }
    async fn presence_add(
        &self,
        node: &str,
        room: &str,
        sid: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.presence_add(node, room, sid, entry, ttl).await
    }
    async fn presence_remove(&self, node: &str, room: &str, sid: &str) -> Result<(), StoreError> {
        self.inner.presence_remove(node, room, sid).await
    }
    async fn presence_refresh(
        &self,
        node: &str,
        entries: &BTreeMap<String, Vec<(String, PresenceEntry)>>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.presence_refresh(node, entries, ttl).await
    }
    async fn presence_forget(&self, node: &str) -> Result<(), StoreError> {
        self.inner.presence_forget(node).await
    }
    async fn swap_beat_mark(
        &self,
        node: &str,
        mark: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.inner.swap_beat_mark(node, mark, ttl).await
    }
    async fn presence(&self, rooms: &[String]) -> Result<BTreeMap<String, Online>, StoreError> {
        self.inner.presence(rooms).await
    }
    async fn presence_nodes(&self) -> Result<BTreeSet<String>, StoreError> {
        self.inner.presence_nodes().await
    }
}

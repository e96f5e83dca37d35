//! A room's creation and the leave of the sockets left over from an older room of its name
//! in one Redis script (`ChatStore::create_room_and_append`), against a real
//! `redis-server`: the leave's entry is in the bus's stream and on its channel, as the bus
//! appends it, exactly when the room is created; a `create` refused (the name taken, a
//! look-alike) appends nothing; and when the entry cannot go with the room (no target, a
//! stream on another server, a stream that refuses it) no room is created either. The
//! in-process store creates the room and leaves the entry to its caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use chat_node::bus::{Bus, RedisBus, RedisBusConfig, StreamTarget};
use chat_node::chat::store::{Created, JointEntry, RoomLimits, RoomMeta};
use chat_node::chat::{ChatStore, MemoryStore, RedisStore, StoreError};
use utils::bus::{entries, settle};
use utils::redis::RedisServer;
use utils::STEP;

/// The chat namespace's stream, as the cluster adapter names it.
const TOPIC: &str = "syd:{/chat}:stream";
const ENTRY: &[u8] = b"SYB\x01 a leave";

const LIMITS: RoomLimits = RoomLimits {
    max_rooms: 100,
    max_memberships: 100,
};

fn meta(creation: &str) -> RoomMeta {
    RoomMeta {
        private: false,
        invite: None,
        created_by: "creator".to_owned(),
        created_at: 1,
        creation: creation.to_owned(),
    }
}

fn leave(target: &StreamTarget) -> Option<JointEntry<'_>> {
    Some(JointEntry {
        target,
        head: ENTRY,
        tail: &[],
    })
}

async fn command(redis: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_room_and_its_leave_are_one_step() {
    let redis = RedisServer::start();
    let bus = RedisBus::connect(RedisBusConfig::new(redis.url()))
        .await
        .unwrap();
    let mut rx = bus.subscribe(TOPIC);
    settle(&bus, TOPIC, &mut [&mut rx]).await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let target = bus.log_target(TOPIC).expect("Redis answers: a target");

    let (created, id) = store
        .create_room_and_append("team", &meta("c1"), LIMITS, leave(&target))
        .await
        .unwrap();
    assert_eq!(created, Created::Created);
    let id = id.expect("the leave is appended with the room");
    assert_eq!(entries(&bus, TOPIC).await, [(id.clone(), ENTRY.to_vec())]);
    let live = tokio::time::timeout(STEP, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((live.id, live.data.to_vec()), (id, ENTRY.to_vec()));
    assert_eq!(store.room("team").await.unwrap(), Some(meta("c1")));
    assert!(store.is_member("team", "creator").await.unwrap());

    // Refused: no room, no leave (a loser of the race for a name takes nobody out).
    for (room, refusal) in [
        ("team", Created::Exists),
        ("t\u{435}am", Created::LooksLike),
    ] {
        let answer = store
            .create_room_and_append(room, &meta("c2"), LIMITS, leave(&target))
            .await
            .unwrap();
        assert_eq!(answer, (refusal, None), "{room}");
    }
    assert_eq!(entries(&bus, TOPIC).await.len(), 1);
    assert_eq!(store.room("team").await.unwrap(), Some(meta("c1")));
}

/// Without its leave in the same step, the Redis store creates no room: nothing could
/// keep a message of the new room from reaching the log before the leave.
#[tokio::test]
async fn no_room_is_created_without_its_leave() {
    let (redis, elsewhere) = (RedisServer::start(), RedisServer::start());
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let no_log = |answer: Result<(Created, Option<String>), StoreError>| {
        assert!(matches!(answer, Err(StoreError::NoLog(_))), "{answer:?}");
    };
    no_log(
        store
            .create_room_and_append("team", &meta("c1"), LIMITS, None)
            .await,
    );
    let other = RedisBus::connect(RedisBusConfig::new(elsewhere.url()))
        .await
        .unwrap();
    let target = other.log_target(TOPIC).unwrap();
    no_log(
        store
            .create_room_and_append("team", &meta("c1"), LIMITS, leave(&target))
            .await,
    );
    assert!(entries(&other, TOPIC).await.is_empty());
    assert_eq!(store.room("team").await.unwrap(), None);

    // The stream refuses the entry inside the script (it is not a stream): an error, and
    // still no room; once it takes entries again, the room is created.
    let bus = RedisBus::connect(RedisBusConfig::new(redis.url()))
        .await
        .unwrap();
    let target = bus.log_target(TOPIC).unwrap();
    command(&redis, &["SET", TOPIC, "not a stream"]).await;
    let refused = store
        .create_room_and_append("team", &meta("c1"), LIMITS, leave(&target))
        .await;
    assert!(matches!(refused, Err(StoreError::Redis(_))), "{refused:?}");
    assert_eq!(store.room("team").await.unwrap(), None);
    assert!(!store.is_member("team", "creator").await.unwrap());
    command(&redis, &["DEL", TOPIC]).await;
    let (created, id) = store
        .create_room_and_append("team", &meta("c1"), LIMITS, leave(&target))
        .await
        .unwrap();
    assert_eq!(created, Created::Created);
    assert!(id.is_some());
}

/// The in-process store keeps its rooms as long as its nodes run: it creates the room and
/// leaves the leave to its caller.
#[tokio::test]
async fn the_memory_store_leaves_the_leave_to_its_caller() {
    let store = MemoryStore::new();
    let answer = store
        .create_room_and_append("team", &meta("c1"), LIMITS, None)
        .await
        .unwrap();
    assert_eq!(answer, (Created::Created, None));
    assert_eq!(store.room("team").await.unwrap(), Some(meta("c1")));
}

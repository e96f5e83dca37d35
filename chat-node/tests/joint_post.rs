//! A `send`'s post and its broadcast in one Redis script (`ChatStore::post_and_append`),
//! against a real `redis-server`: the message is in the history and its broadcast, with
//! the message id spliced in, in the bus's stream and on its channel, exactly as the bus
//! appends it; a refused post appends nothing; and whenever the script cannot append the
//! broadcast (the ACL refuses the stream, the stream is not a stream, a store on another
//! server) the message is posted once and the caller is left to append it, as it did
//! before the two steps were joined. Redis losing its scripts changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_node::bus::{Bus, BusEntry, RedisBus, RedisBusConfig, StreamTarget};
use chat_node::chat::store::{Joined, JointEntry, Membership, NewMessage, Post, Posted};
use chat_node::chat::{ChatStore, RateLimit, RedisStore};
use tokio::sync::mpsc;
use utils::redis::RedisServer;
use utils::STEP;

/// The chat namespace's stream, as the cluster adapter names it.
const TOPIC: &str = "syd:{/chat}:stream";
const HEAD: &[u8] = b"SYB\x01 head ";
const TAIL: &[u8] = b" tail";

async fn admin(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn command(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(conn)
        .await
        .unwrap()
}

/// The ACL rule under which this server's clients may write the chat store's keys but
/// not the bus's stream (they may read every key): Redis refuses a script that declares
/// the stream before it runs, and the bus's own appends.
async fn refuse_stream_writes(conn: &mut redis::aio::MultiplexedConnection) {
    let rule = [
        "ACL",
        "SETUSER",
        "default",
        "resetkeys",
        "%R~*",
        "~syd:chat:*",
    ];
    command(conn, &rule).await;
}

/// Undoes [`refuse_stream_writes`].
async fn allow_all_writes(conn: &mut redis::aio::MultiplexedConnection) {
    command(conn, &["ACL", "SETUSER", "default", "resetkeys", "~*"]).await;
}

/// A bus on `redis` whose subscription of [`TOPIC`] is in place: probes are appended
/// until one arrives.
async fn subscribed(redis: &RedisServer) -> (RedisBus, mpsc::Receiver<BusEntry>) {
    let bus = RedisBus::connect(RedisBusConfig::new(redis.url()))
        .await
        .unwrap();
    let mut rx = bus.subscribe(TOPIC);
    let deadline = Instant::now() + STEP;
    'probe: while Instant::now() < deadline {
        let probe = bus
            .append(TOPIC, Bytes::from_static(b"probe"))
            .await
            .unwrap()
            .expect("Redis answers");
        loop {
            match tokio::time::timeout(Duration::from_millis(250), rx.recv()).await {
                Ok(Some(entry)) if entry.id == probe => return (bus, rx),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended"),
                Err(_) => continue 'probe,
            }
        }
    }
    panic!("the subscription did not start");
}

fn by(user: &str, text: &str) -> NewMessage {
    NewMessage {
        from: "someone".to_owned(),
        user: user.to_owned(),
        text: text.to_owned(),
        ts: 1,
    }
}

fn post<'a>(room: &'a str, message: &'a NewMessage, limit: &'a RateLimit) -> Post<'a> {
    Post {
        room,
        membership: if room == "lobby" {
            Membership::Open
        } else {
            Membership::Required
        },
        message,
        limit,
        cap: 100,
    }
}

fn joint(target: &StreamTarget) -> Option<JointEntry<'_>> {
    Some(JointEntry {
        target,
        head: HEAD,
        tail: TAIL,
    })
}

fn spliced(id: &str) -> Vec<u8> {
    [HEAD, id.as_bytes(), TAIL].concat()
}

/// The entries of the bus's stream: id and data.
async fn stream(bus: &RedisBus) -> Vec<(String, Vec<u8>)> {
    bus.read_after(TOPIC, "0-0", 1000)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .filter(|e| e.data.as_ref() != b"probe")
        .map(|e| (e.id, e.data.to_vec()))
        .collect()
}

async fn history_ids(store: &RedisStore, room: &str) -> Vec<(String, String)> {
    store
        .history(room, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect()
}

#[tokio::test]
async fn the_post_and_its_broadcast_are_one_step() {
    let redis = RedisServer::start();
    let (bus, mut rx) = subscribed(&redis).await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let target = bus
        .joint_target(TOPIC)
        .expect("nothing queued: the store may append");
    let limit: RateLimit = "2/1h".parse().unwrap();

    // Not a member: nothing written, nothing broadcast.
    let outsider = by("p2", "no");
    let refused = store
        .post_and_append(post("club", &outsider, &limit), joint(&target))
        .await
        .unwrap();
    assert_eq!(refused, (Posted::NotMember, None));

    // A member: the message in the history, its broadcast in the stream and on the
    // channel, the id spliced in.
    assert_eq!(
        store.add_member("club", "p1", 1000).await.unwrap(),
        Joined::Added
    );
    let hi = by("p1", "hi");
    let (posted, entry_id) = store
        .post_and_append(post("club", &hi, &limit), joint(&target))
        .await
        .unwrap();
    let Posted::Appended(id) = posted else {
        panic!("a member's post is appended: {posted:?}");
    };
    let entry_id = entry_id.expect("the broadcast is appended with the post");
    assert_eq!(
        history_ids(&store, "club").await,
        [(id.clone(), "hi".to_owned())]
    );
    assert_eq!(stream(&bus).await, [(entry_id.clone(), spliced(&id))]);
    let live = tokio::time::timeout(STEP, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (live.id, live.data.to_vec()),
        (entry_id.clone(), spliced(&id))
    );

    // Over the limit: the history and the stream as they were.
    let two = by("p1", "two");
    let (posted, second) = store
        .post_and_append(post("club", &two, &limit), joint(&target))
        .await
        .unwrap();
    assert!(matches!(posted, Posted::Appended(_)) && second.is_some());
    let three = by("p1", "three");
    let limited = store
        .post_and_append(post("club", &three, &limit), joint(&target))
        .await
        .unwrap();
    assert_eq!(limited, (Posted::RateLimited, None));
    assert_eq!(history_ids(&store, "club").await.len(), 2);
    assert_eq!(stream(&bus).await.len(), 2);

    // Redis lost its scripts (a restart): the store loads it again.
    let mut conn = admin(&redis).await;
    command(&mut conn, &["SCRIPT", "FLUSH"]).await;
    let after = by("p3", "after flush");
    let (posted, appended) = store
        .post_and_append(post("lobby", &after, &limit), joint(&target))
        .await
        .unwrap();
    assert!(matches!(posted, Posted::Appended(_)), "{posted:?}");
    assert!(appended.is_some());
}

/// A target on another server is not the store's to append to: the post alone.
#[tokio::test]
async fn a_stream_on_another_server_is_left_to_the_caller() {
    let (redis, elsewhere) = (RedisServer::start(), RedisServer::start());
    let (bus, _rx) = subscribed(&elsewhere).await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let target = bus.joint_target(TOPIC).unwrap();
    let limit: RateLimit = "2/1h".parse().unwrap();
    let message = by("p1", "hi");
    let (posted, appended) = store
        .post_and_append(post("lobby", &message, &limit), joint(&target))
        .await
        .unwrap();
    assert!(matches!(posted, Posted::Appended(_)), "{posted:?}");
    assert_eq!(appended, None);
    assert!(stream(&bus).await.is_empty());
}

/// The ACL lets the store write its keys but not the bus's stream: Redis refuses the
/// script before it runs, and the store posts alone, once (the rate limit counts it
/// once); the caller appends the broadcast, as after a post of its own.
#[tokio::test]
async fn a_stream_the_acl_refuses_leaves_the_message_posted_once_for_the_caller_to_append() {
    let redis = RedisServer::start();
    let (bus, _rx) = subscribed(&redis).await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let target = bus.joint_target(TOPIC).unwrap();
    let mut conn = admin(&redis).await;
    refuse_stream_writes(&mut conn).await;

    let limit: RateLimit = "2/1h".parse().unwrap();
    let first = by("p1", "first");
    let (posted, appended) = store
        .post_and_append(post("lobby", &first, &limit), joint(&target))
        .await
        .unwrap();
    let Posted::Appended(id) = posted else {
        panic!("posted: {posted:?}");
    };
    assert_eq!(appended, None, "the stream refuses writes");
    assert_eq!(
        history_ids(&store, "lobby").await,
        [(id, "first".to_owned())]
    );
    allow_all_writes(&mut conn).await;
    assert!(stream(&bus).await.is_empty());
    // One of the two messages the limit allows is spent, not two.
    let second = by("p1", "second");
    let (posted, _) = store
        .post_and_append(post("lobby", &second, &limit), joint(&target))
        .await
        .unwrap();
    assert!(matches!(posted, Posted::Appended(_)), "{posted:?}");
}

/// The stream refuses the entry inside the script (it is not a stream): the history's
/// append stays, the store says the broadcast is the caller's to append, and the post is
/// not repeated. The history refusing the message appends no broadcast.
#[tokio::test]
async fn a_write_refused_inside_the_script_is_reported_and_not_repeated() {
    let redis = RedisServer::start();
    let bus = RedisBus::connect(RedisBusConfig::new(redis.url()))
        .await
        .unwrap();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let target = bus.joint_target(TOPIC).unwrap();
    let mut conn = admin(&redis).await;
    command(&mut conn, &["SET", TOPIC, "not a stream"]).await;

    let limit: RateLimit = "2/1h".parse().unwrap();
    let first = by("p1", "first");
    let (posted, appended) = store
        .post_and_append(post("lobby", &first, &limit), joint(&target))
        .await
        .unwrap();
    let Posted::Appended(id) = posted else {
        panic!("posted: {posted:?}");
    };
    assert_eq!(appended, None);
    assert_eq!(
        history_ids(&store, "lobby").await,
        [(id, "first".to_owned())]
    );
    command(&mut conn, &["DEL", TOPIC]).await;
    let second = by("p1", "second");
    let (posted, appended) = store
        .post_and_append(post("lobby", &second, &limit), joint(&target))
        .await
        .unwrap();
    assert!(
        matches!(posted, Posted::Appended(_)),
        "counted once: {posted:?}"
    );
    assert!(appended.is_some());

    // The history is not a stream: an error, and no broadcast.
    command(&mut conn, &["SET", "syd:chat:history:broken", "x"]).await;
    let lost = by("p4", "lost");
    let open = Post {
        membership: Membership::Open,
        ..post("broken", &lost, &limit)
    };
    let failed = store.post_and_append(open, joint(&target)).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(stream(&bus).await.len(), 1);
    // Not repeated either: it spent one of the two messages the limit allows.
    let again = by("p4", "again");
    let (posted, _) = store
        .post_and_append(post("lobby", &again, &limit), joint(&target))
        .await
        .unwrap();
    assert!(matches!(posted, Posted::Appended(_)), "{posted:?}");
}

/// While an entry waits in the bus's queue (the stream refuses it), the bus offers no
/// target: a post appending beside the queue would overtake it (a `leave` waiting there
/// must stay ahead of the messages sent after it). Once the queue has drained, it does.
#[tokio::test]
async fn nothing_is_appended_beside_entries_waiting_in_the_bus_queue() {
    let redis = RedisServer::start();
    let mut config = RedisBusConfig::new(redis.url());
    config.response_timeout = Duration::from_millis(300);
    let bus = RedisBus::connect(config).await.unwrap();
    assert!(bus.joint_target(TOPIC).is_some(), "nothing waits yet");
    let mut conn = admin(&redis).await;
    refuse_stream_writes(&mut conn).await;

    let waiting = bus
        .append(TOPIC, Bytes::from_static(b"waiting"))
        .await
        .unwrap();
    assert_eq!(
        waiting, None,
        "the stream refuses it: it waits in the queue"
    );
    assert_eq!(bus.joint_target(TOPIC), None);

    allow_all_writes(&mut conn).await;
    let deadline = Instant::now() + STEP;
    while bus.joint_target(TOPIC).is_none() {
        assert!(Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entries = stream(&bus).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1, b"waiting");
}

//! The Redis bus against a real `redis-server`: live entries carry the log's ids to every
//! subscriber; what is published while a node's pub/sub connection is down (cut, or
//! closed by Redis over a burst) arrives once it is back, once each, in order; a
//! subscriber that does not read holds up no other topic and later gets everything; a
//! restarted Redis loses nothing queued meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_node::bus::{Bus, BusEntry, RedisBus, RedisBusConfig, SUBSCRIBER_CAPACITY};
use tokio::sync::mpsc;
use utils::bus::settle;
use utils::redis::RedisServer;
use utils::STEP;

async fn bus(redis: &RedisServer) -> RedisBus {
    let mut config = RedisBusConfig::new(redis.url());
    config.keepalive = Duration::from_millis(200);
    RedisBus::connect(config).await.unwrap()
}

/// A plain connection for the test's own commands.
async fn admin(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The ids of the pub/sub clients connected now.
async fn pubsub_clients(admin: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg(&["LIST", "TYPE", "pubsub"])
        .query_async(admin)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| line.split(' ').next())
        .map(str::to_owned)
        .collect()
}

async fn next(rx: &mut mpsc::Receiver<BusEntry>) -> BusEntry {
    tokio::time::timeout(STEP, rx.recv())
        .await
        .expect("no entry in time")
        .expect("the subscription ended")
}

/// A bus on `redis` with a subscription of `topic`, in place.
async fn subscribed(redis: &RedisServer, topic: &str) -> (RedisBus, mpsc::Receiver<BusEntry>) {
    let bus = bus(redis).await;
    let mut rx = bus.subscribe(topic);
    settle(&bus, topic, &mut [&mut rx]).await;
    (bus, rx)
}

async fn append(bus: &RedisBus, topic: &str, data: String) -> String {
    bus.append(topic, Bytes::from(data))
        .await
        .unwrap()
        .expect("Redis answers")
}

/// Appends an entry to `topic` and checks that it is the next `rx` receives: nothing is
/// left to come twice, and the subscription takes new entries.
async fn assert_next_is_new(bus: &RedisBus, topic: &str, rx: &mut mpsc::Receiver<BusEntry>) {
    let id = append(bus, topic, "new".to_owned()).await;
    let entry = next(rx).await;
    assert_eq!((entry.id, entry.data.as_ref()), (id, &b"new"[..]));
}

#[tokio::test]
async fn live_entries_reach_every_subscriber_in_order_with_the_logs_ids() {
    let redis = RedisServer::start();
    let (publisher, reader) = (bus(&redis).await, bus(&redis).await);
    let mut first = reader.subscribe("t");
    let mut second = reader.subscribe("t");
    let mut other_node = publisher.subscribe("t");
    settle(
        &publisher,
        "t",
        &mut [&mut first, &mut second, &mut other_node],
    )
    .await;
    let after = publisher.last_id("t").await.unwrap();

    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(append(&publisher, "t", format!("m{i}")).await);
    }
    for rx in [&mut first, &mut second, &mut other_node] {
        for (i, id) in ids.iter().enumerate() {
            let entry = next(rx).await;
            assert_eq!(
                (&entry.id, entry.data.as_ref()),
                (id, format!("m{i}").as_bytes())
            );
        }
    }
    // The ids are the log's.
    let logged = reader.read_after("t", &after, 1000).await.unwrap().unwrap();
    assert_eq!(
        logged.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn entries_published_while_the_pubsub_connection_is_down_arrive_after_it_is_back() {
    let redis = RedisServer::start();
    let mut admin = admin(&redis).await;
    let (bus, mut rx) = subscribed(&redis, "t").await;

    // Cut the bus's pub/sub connection, and keep it from subscribing again for now: what
    // follows can only reach it through the stream.
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-subscribe"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "one pub/sub connection for the bus");
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(append(&bus, "t", format!("m{i}")).await);
    }
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+subscribe"])
        .query_async(&mut admin)
        .await
        .unwrap();

    for (i, id) in ids.iter().enumerate() {
        let entry = next(&mut rx).await;
        assert_eq!(
            (&entry.id, entry.data.as_ref()),
            (id, format!("m{i}").as_bytes())
        );
    }
    assert_next_is_new(&bus, "t", &mut rx).await;
}

#[tokio::test]
async fn a_burst_that_makes_redis_close_the_subscriber_loses_nothing() {
    let redis = RedisServer::start();
    let mut admin = admin(&redis).await;
    let (bus, mut rx) = subscribed(&redis, "t").await;

    let before = pubsub_clients(&mut admin).await;
    assert_eq!(before.len(), 1);
    // Redis closes a pub/sub client whose pending output exceeds 4 kB: one burst of
    // 1 kB entries (one pipeline) does.
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "client-output-buffer-limit", "pubsub 4kb 4kb 0"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let count = 200;
    for i in 0..count {
        bus.publish("t", Bytes::from(format!("{i:04}{}", "x".repeat(1000))))
            .await
            .unwrap();
    }
    for i in 0..count {
        let entry = next(&mut rx).await;
        assert_eq!(&entry.data[..4], format!("{i:04}").as_bytes());
    }
    assert_ne!(
        pubsub_clients(&mut admin).await,
        before,
        "the burst did not close the subscriber's connection"
    );
    assert_next_is_new(&bus, "t", &mut rx).await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_holds_up_no_other_topic_and_misses_nothing() {
    let redis = RedisServer::start();
    let bus = bus(&redis).await;
    let mut slow = bus.subscribe("slow");
    let mut fast = bus.subscribe("fast");
    settle(&bus, "slow", &mut [&mut slow]).await;
    settle(&bus, "fast", &mut [&mut fast]).await;
    let after = bus.last_id("slow").await.unwrap();

    // Three times what the slow subscriber's channel holds, then one entry for the other
    // topic: its message comes after all of these on the pub/sub connection.
    let count = 3 * SUBSCRIBER_CAPACITY;
    for i in 0..count {
        bus.publish("slow", Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    let id = append(&bus, "fast", "ping".to_owned()).await;
    let entry = next(&mut fast).await;
    assert_eq!((entry.id, entry.data.as_ref()), (id, &b"ping"[..]));

    let logged = bus
        .read_after("slow", &after, 2 * count)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(logged.len(), count);
    for (i, logged) in logged.iter().enumerate() {
        let entry = next(&mut slow).await;
        assert_eq!(entry, *logged);
        assert_eq!(entry.data, format!("m{i}").as_bytes());
    }
    assert_next_is_new(&bus, "slow", &mut slow).await;
}

#[tokio::test]
async fn entries_queued_while_redis_restarts_arrive_in_order() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (bus, mut rx) = subscribed(&redis, "t").await;

    redis.kill();
    // Accepted while Redis is down, and appended (by a script the new Redis has not
    // seen) once it is back.
    for i in 0..3 {
        bus.publish("t", Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    let _redis = RedisServer::start_on(port).unwrap();
    for i in 0..3 {
        assert_eq!(next(&mut rx).await.data, format!("m{i}").as_bytes());
    }
    assert_next_is_new(&bus, "t", &mut rx).await;
}

#[tokio::test]
async fn a_dropped_subscription_unsubscribes_its_channel() {
    let redis = RedisServer::start();
    let mut admin = admin(&redis).await;
    let (_bus, rx) = subscribed(&redis, "t").await;
    // `_bus` lives to the end: dropping the bus would unsubscribe everything anyway.
    let subscribers = |admin: &mut redis::aio::MultiplexedConnection| {
        let mut admin = admin.clone();
        async move {
            let (_, n): (String, u64) = redis::cmd("PUBSUB")
                .arg(&["NUMSUB", "t"])
                .query_async(&mut admin)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(subscribers(&mut admin).await, 1);
    let connection = pubsub_clients(&mut admin).await;
    assert_eq!(connection.len(), 1, "{connection:?}");
    drop(rx);
    // The bus notices at its next keepalive tick (200 ms here).
    let deadline = Instant::now() + STEP;
    while subscribers(&mut admin).await != 0 {
        assert!(Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Subscribed again on the same connection: the answers to the UNSUBSCRIBE and to the
    // keepalive PINGs were taken for what they answer, not as a connection out of step.
    let mut rx = _bus.subscribe("t");
    settle(&_bus, "t", &mut [&mut rx]).await;
    assert_next_is_new(&_bus, "t", &mut rx).await;
    assert_eq!(pubsub_clients(&mut admin).await, connection);
}

#[tokio::test]
async fn the_pubsub_connection_authenticates_as_the_url_says() {
    let redis = RedisServer::start();
    let mut admin = admin(&redis).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "chat", "on", ">user-secret", "~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "default-secret"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let port = redis.port;
    for url in [
        format!("redis://:default-secret@127.0.0.1:{port}"),
        format!("redis://chat:user-secret@127.0.0.1:{port}"),
    ] {
        let mut config = RedisBusConfig::new(url.clone());
        config.keepalive = Duration::from_millis(200);
        let bus = RedisBus::connect(config).await.unwrap();
        let mut rx = bus.subscribe("t");
        // Live entries flow only once Redis has confirmed the channel to the hub.
        settle(&bus, "t", &mut [&mut rx]).await;
        assert_next_is_new(&bus, "t", &mut rx).await;
    }
}

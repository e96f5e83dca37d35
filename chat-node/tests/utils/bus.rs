//! Redis bus subscriptions known to be in place: a subscription starts reading in the
//! background, and Redis drops what is published before its `SUBSCRIBE` takes effect, so
//! a test that appended right after subscribing could miss its own entry.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_node::bus::{Bus, BusEntry, RedisBus};
use tokio::sync::mpsc;

use super::STEP;

/// Waits until the subscriptions `rxs` of `topic` are in place (a subscription starts
/// reading in the background): appends probes until every one has received the last
/// probe appended, so that nothing the test publishes next is older than their start, and
/// no probe is left to come.
pub async fn settle(bus: &RedisBus, topic: &str, rxs: &mut [&mut mpsc::Receiver<BusEntry>]) {
    let deadline = Instant::now() + STEP;
    'probe: while Instant::now() < deadline {
        let probe = bus
            .append(topic, Bytes::from_static(b"probe"))
            .await
            .unwrap()
            .expect("Redis answers");
        for rx in rxs.iter_mut() {
            loop {
                match tokio::time::timeout(Duration::from_millis(250), rx.recv()).await {
                    Ok(Some(entry)) if entry.id == probe => break,
                    Ok(Some(entry)) => assert_eq!(entry.data.as_ref(), b"probe"),
                    Ok(None) => panic!("the subscription ended"),
                    Err(_) => continue 'probe,
                }
            }
        }
        return;
    }
    panic!("the subscriptions of {topic} did not start");
}

/// The entries of `topic`'s stream but [`settle`]'s probes: id and data.
pub async fn entries(bus: &RedisBus, topic: &str) -> Vec<(String, Vec<u8>)> {
    bus.read_after(topic, "0-0", 1000)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .filter(|e| e.data.as_ref() != b"probe")
        .map(|e| (e.id, e.data.to_vec()))
        .collect()
}

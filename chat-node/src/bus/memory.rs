//! The in-process bus: one node alone (the default without `--redis`), or several nodes in
//! one process sharing one [`MemoryBus`] (tests). Nothing outlives the process.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Bus, BusError, SUBSCRIBER_CAPACITY};

/// An in-process bus; clones share the topics.
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    topics: Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError> {
        let subscribers = {
            let mut topics = self.topics.lock();
            let Some(subscribers) = topics.get_mut(topic) else {
                return Ok(());
            };
            subscribers.retain(|tx| !tx.is_closed());
            subscribers.clone()
        };
        for tx in subscribers {
            // A subscriber that went away meanwhile misses it, as it would anyway.
            let _ = tx.send(entry.clone()).await;
        }
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        self.topics
            .lock()
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_of_a_topic_gets_every_entry_in_order() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe("t");
        let mut b = bus.subscribe("t");
        let mut other = bus.subscribe("u");
        for i in 0..3u8 {
            bus.publish("t", Bytes::from(vec![i])).await.unwrap();
        }
        for rx in [&mut a, &mut b] {
            for i in 0..3u8 {
                assert_eq!(rx.recv().await.unwrap(), Bytes::from(vec![i]));
            }
        }
        assert!(other.try_recv().is_err());
        drop(a);
        // A gone subscriber does not block the others.
        bus.publish("t", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), Bytes::from_static(b"x"));
    }
}

//! The in-process bus: one node alone (the default without `--redis`), or several nodes in
//! one process sharing one [`MemoryBus`] (tests). Nothing outlives the process.
//!
//! A topic asked to keep its log ([`Bus::retain`]) keeps it for the retention time (and at
//! most `max_len` entries) so that [`Bus::read_after`] works as on Redis; other topics keep
//! nothing. Ids are `<ms>-<seq>` like Redis Stream ids.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::recovery::{MemoryStore, SessionStore};

use super::{parse_id, Bus, BusEntry, BusError, LOG_START, SUBSCRIBER_CAPACITY};

/// The most entries a retained log keeps by default, whatever their age.
pub const DEFAULT_MAX_LEN: usize = 100_000;

/// An in-process bus; clones share the topics.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    topics: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Topic>>>>>,
    max_len: usize,
    sessions: MemoryStore,
}

#[derive(Debug, Default)]
struct Topic {
    subscribers: Vec<mpsc::Sender<BusEntry>>,
    /// How long the log keeps entries; `None`: it keeps none.
    retention: Option<Duration>,
    log: VecDeque<((u64, u64), BusEntry)>,
    last: (u64, u64),
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::with_max_len(DEFAULT_MAX_LEN)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bus whose retained logs keep at most `max_len` entries.
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            topics: Arc::default(),
            max_len: max_len.max(1),
            sessions: MemoryStore::new(),
        }
    }

    fn topic(&self, name: &str) -> Arc<tokio::sync::Mutex<Topic>> {
        Arc::clone(self.topics.lock().entry(name.to_owned()).or_default())
    }

    fn existing(&self, name: &str) -> Option<Arc<tokio::sync::Mutex<Topic>>> {
        self.topics.lock().get(name).cloned()
    }
}

/// Applies `change` to `topic` now when no publisher holds it, else as soon as the
/// publisher lets go (from a task: the callers are synchronous).
fn update(topic: Arc<tokio::sync::Mutex<Topic>>, change: impl FnOnce(&mut Topic) + Send + 'static) {
    let pending = match topic.try_lock() {
        Ok(mut locked) => {
            change(&mut locked);
            None
        }
        Err(_) => Some(change),
    };
    if let Some(change) = pending {
        tokio::spawn(async move { change(&mut *topic.lock().await) });
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError> {
        self.append(topic, entry).await.map(|_| ())
    }

    async fn append(&self, topic: &str, entry: Bytes) -> Result<Option<String>, BusError> {
        let topic = self.topic(topic);
        // One lock across the sends keeps every subscriber's order the log's order.
        let mut topic = topic.lock().await;
        let now = now_ms();
        let key = if now > topic.last.0 {
            (now, 0)
        } else {
            (topic.last.0, topic.last.1 + 1)
        };
        topic.last = key;
        let entry = BusEntry {
            id: format!("{}-{}", key.0, key.1),
            data: entry,
        };
        if let Some(retention) = topic.retention {
            let horizon = now.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(0));
            while topic
                .log
                .front()
                .is_some_and(|(k, _)| k.0 < horizon || topic.log.len() >= self.max_len)
            {
                topic.log.pop_front();
            }
            topic.log.push_back((key, entry.clone()));
        }
        topic.subscribers.retain(|tx| !tx.is_closed());
        for tx in &topic.subscribers {
            // A subscriber that went away meanwhile misses it, as it would anyway.
            let _ = tx.send(entry.clone()).await;
        }
        Ok(Some(entry.id))
    }

    fn subscribe(&self, topic: &str) -> mpsc::Receiver<BusEntry> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        // Subscribing is synchronous: a publisher may hold the topic (never for long).
        update(self.topic(topic), move |topic| topic.subscribers.push(tx));
        rx
    }

    async fn read_after(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> Result<Option<Vec<BusEntry>>, BusError> {
        let Some(after_key) = parse_id(after) else {
            return Ok(None);
        };
        let Some(topic) = self.existing(topic) else {
            return Ok((after == LOG_START).then(Vec::new));
        };
        let topic = topic.lock().await;
        if after != LOG_START && !topic.log.iter().any(|(k, _)| *k == after_key) {
            return Ok(None);
        }
        Ok(Some(
            topic
                .log
                .iter()
                .filter(|(k, _)| *k > after_key)
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect(),
        ))
    }

    async fn last_id(&self, topic: &str) -> Result<String, BusError> {
        let Some(topic) = self.existing(topic) else {
            return Ok(LOG_START.to_owned());
        };
        let topic = topic.lock().await;
        Ok(topic
            .log
            .back()
            .map_or_else(|| LOG_START.to_owned(), |(_, e)| e.id.clone()))
    }

    fn retain(&self, topic: &str, window: Duration) {
        update(self.topic(topic), move |topic| {
            topic.retention = Some(window)
        });
    }

    fn session_store(&self) -> Arc<dyn SessionStore> {
        Arc::new(self.sessions.clone())
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
                assert_eq!(rx.recv().await.unwrap().data, Bytes::from(vec![i]));
            }
        }
        assert!(other.try_recv().is_err());
        drop(a);
        // A gone subscriber does not block the others.
        bus.publish("t", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(b.recv().await.unwrap().data, Bytes::from_static(b"x"));
    }

    #[tokio::test]
    async fn ids_increase_and_reading_after_an_id_returns_what_followed_it() {
        let bus = MemoryBus::new();
        bus.retain("t", Duration::from_secs(60));
        assert_eq!(bus.last_id("t").await.unwrap(), LOG_START);
        let mut ids = Vec::new();
        for i in 0..5u8 {
            ids.push(
                bus.append("t", Bytes::from(vec![i]))
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let keys: Vec<_> = ids.iter().map(|id| parse_id(id).unwrap()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(bus.last_id("t").await.unwrap(), ids[4]);

        let after = bus.read_after("t", &ids[1], 10).await.unwrap().unwrap();
        let data: Vec<u8> = after.iter().map(|e| e.data[0]).collect();
        assert_eq!(data, [2, 3, 4]);
        assert_eq!(
            bus.read_after("t", &ids[1], 2)
                .await
                .unwrap()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            bus.read_after("t", LOG_START, 10)
                .await
                .unwrap()
                .unwrap()
                .len(),
            5
        );
        // An id never in the log, or garbage: what followed it is unknown.
        assert_eq!(bus.read_after("t", "1-0", 10).await.unwrap(), None);
        assert_eq!(bus.read_after("t", "nonsense", 10).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_log_keeps_at_most_max_len_entries() {
        let bus = MemoryBus::with_max_len(3);
        bus.retain("t", Duration::from_secs(60));
        let mut ids = Vec::new();
        for i in 0..5u8 {
            ids.push(
                bus.append("t", Bytes::from(vec![i]))
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        // The oldest entries are gone: reading after them cannot be answered.
        assert_eq!(bus.read_after("t", &ids[0], 10).await.unwrap(), None);
        assert_eq!(
            bus.read_after("t", &ids[2], 10)
                .await
                .unwrap()
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_topic_not_retained_keeps_no_log() {
        let bus = MemoryBus::new();
        let id = bus
            .append("rpc", Bytes::from_static(b"x"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bus.read_after("rpc", &id, 10).await.unwrap(), None);
    }
}

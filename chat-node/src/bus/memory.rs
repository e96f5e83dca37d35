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
    topics: Arc<Mutex<HashMap<String, Arc<Topic>>>>,
    max_len: usize,
    sessions: MemoryStore,
}

/// One topic. Its state sits behind a synchronous lock held only to number an entry, to
/// add a subscriber or to read the log, never across an `await`: a subscription is in
/// place when `subscribe` returns, even while a publisher is waiting on a slow subscriber.
/// Entries reach the subscribers in their numbering order through one publisher at a time
/// (the holder of `delivery`), each subscriber from the first entry numbered after it
/// subscribed.
#[derive(Debug, Default)]
struct Topic {
    state: Mutex<TopicState>,
    /// Held by the publisher that hands the pending entries to the subscribers.
    delivery: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct TopicState {
    /// The sequence number of the next entry.
    next: u64,
    /// Numbered, not yet handed to the subscribers, in order.
    pending: VecDeque<(u64, BusEntry)>,
    /// Each subscriber with the sequence number of the first entry it gets.
    subscribers: Vec<(u64, mpsc::Sender<BusEntry>)>,
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

    fn topic(&self, name: &str) -> Arc<Topic> {
        Arc::clone(self.topics.lock().entry(name.to_owned()).or_default())
    }

    fn existing(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.lock().get(name).cloned()
    }
}

impl Topic {
    /// Hands every pending entry to the subscribers, in order. A publisher that waited
    /// for its turn finds its entry delivered already, or delivers it (with whatever was
    /// published meanwhile); either way it is delivered when this returns.
    async fn deliver(&self) {
        let _turn = self.delivery.lock().await;
        loop {
            let (batch, subscribers) = {
                let mut state = self.state.lock();
                if state.pending.is_empty() {
                    return;
                }
                state.subscribers.retain(|(_, tx)| !tx.is_closed());
                (
                    std::mem::take(&mut state.pending),
                    state.subscribers.clone(),
                )
            };
            // Anyone subscribing from now on starts after this batch.
            for (seq, entry) in batch {
                for (from, tx) in &subscribers {
                    if seq >= *from {
                        // A subscriber that went away meanwhile misses it, as it would
                        // anyway.
                        let _ = tx.send(entry.clone()).await;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError> {
        self.append(topic, entry).await.map(|_| ())
    }

    async fn append(&self, topic: &str, entry: Bytes) -> Result<Option<String>, BusError> {
        let topic = self.topic(topic);
        let id = {
            let mut state = topic.state.lock();
            let now = now_ms();
            let key = if now > state.last.0 {
                (now, 0)
            } else {
                (state.last.0, state.last.1 + 1)
            };
            state.last = key;
            let entry = BusEntry {
                id: format!("{}-{}", key.0, key.1),
                data: entry,
            };
            if let Some(retention) = state.retention {
                let horizon = now.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(0));
                while state
                    .log
                    .front()
                    .is_some_and(|(k, _)| k.0 < horizon || state.log.len() >= self.max_len)
                {
                    state.log.pop_front();
                }
                state.log.push_back((key, entry.clone()));
            }
            let seq = state.next;
            state.next += 1;
            let id = entry.id.clone();
            state.pending.push_back((seq, entry));
            id
        };
        topic.deliver().await;
        Ok(Some(id))
    }

    fn subscribe(&self, topic: &str) -> mpsc::Receiver<BusEntry> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let topic = self.topic(topic);
        let mut state = topic.state.lock();
        let from = state.next;
        state.subscribers.push((from, tx));
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
        let state = topic.state.lock();
        if after != LOG_START && !state.log.iter().any(|(k, _)| *k == after_key) {
            return Ok(None);
        }
        Ok(Some(
            state
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
        let state = topic.state.lock();
        Ok(state
            .log
            .back()
            .map_or_else(|| LOG_START.to_owned(), |(_, e)| e.id.clone()))
    }

    fn retain(&self, topic: &str, window: Duration) {
        self.topic(topic).state.lock().retention = Some(window);
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

    async fn next(rx: &mut mpsc::Receiver<BusEntry>) -> Bytes {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .data
    }

    /// A subscription made while a publisher waits on a full subscriber gets everything
    /// published after it was made, in order (the old bus added it only once that
    /// publisher let go of the topic, after the next publisher had gone by).
    #[tokio::test]
    async fn a_subscription_made_during_a_publish_misses_nothing_after_it() {
        let bus = MemoryBus::new();
        let mut slow = bus.subscribe("t");
        for i in 0..SUBSCRIBER_CAPACITY {
            bus.publish("t", Bytes::from(i.to_string())).await.unwrap();
        }
        let busy = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish("t", Bytes::from_static(b"during")).await }
        });
        // `busy` runs until `slow`'s full channel stops it.
        tokio::task::yield_now().await;
        let mut late = bus.subscribe("t");
        // Room for `busy`, without yielding: nothing else runs before the next publish.
        for _ in 0..SUBSCRIBER_CAPACITY {
            slow.try_recv().unwrap();
        }
        bus.publish("t", Bytes::from_static(b"after"))
            .await
            .unwrap();
        bus.publish("t", Bytes::from_static(b"last")).await.unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(next(&mut late).await, "after");
        assert_eq!(next(&mut late).await, "last");
        for expected in ["during", "after", "last"] {
            assert_eq!(next(&mut slow).await, expected);
        }
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

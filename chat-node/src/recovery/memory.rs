//! Recovery records in process: the embedded default, and several in-process nodes
//! sharing one store (tests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Record, SessionStore, StoreError};

/// Records in memory; clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<HashMap<String, Stored>>>,
}

#[derive(Debug)]
struct Stored {
    owner: String,
    record: Record,
    expires: Instant,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records are alive (tests).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.records
            .lock()
            .values()
            .filter(|s| s.expires > now)
            .count()
    }

    /// Whether no record is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn put(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut records = self.records.lock();
        // Expired records go when new ones come: the map stays as large as the live ones.
        records.retain(|_, s| s.expires > now);
        records.insert(
            pid.to_owned(),
            Stored {
                owner: owner.to_owned(),
                record: record.clone(),
                expires: now + ttl,
            },
        );
        Ok(())
    }

    async fn update(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut records = self.records.lock();
        match records.get_mut(pid) {
            Some(stored) if stored.owner == owner && stored.expires > now => {
                stored.record = record.clone();
                stored.expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn take(&self, pid: &str) -> Result<Option<Record>, StoreError> {
        let stored = self.records.lock().remove(pid);
        Ok(stored
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.record))
    }

    async fn touch(&self, pids: &[String], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut records = self.records.lock();
        for pid in pids {
            if let Some(stored) = records.get_mut(pid) {
                if stored.expires > now {
                    stored.expires = now + ttl;
                }
            }
        }
        Ok(())
    }

    async fn remove(&self, pid: &str, owner: &str) -> Result<(), StoreError> {
        let mut records = self.records.lock();
        if records.get(pid).is_some_and(|s| s.owner == owner) {
            records.remove(pid);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(rooms: &[&str]) -> Record {
        Record {
            sid: "s".into(),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            offset: "0-0".into(),
            identity: None,
        }
    }

    #[tokio::test]
    async fn a_record_is_taken_once_and_only_its_owner_updates_it() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        store.put("p", "a", &record(&["x"]), ttl).await.unwrap();
        assert!(!store.update("p", "b", &record(&["y"]), ttl).await.unwrap());
        assert!(store.update("p", "a", &record(&["z"]), ttl).await.unwrap());
        assert_eq!(store.take("p").await.unwrap(), Some(record(&["z"])));
        assert_eq!(store.take("p").await.unwrap(), None);
        // Taken: the old owner cannot bring it back.
        assert!(!store.update("p", "a", &record(&["z"]), ttl).await.unwrap());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn records_expire() {
        let store = MemoryStore::new();
        store
            .put("p", "a", &record(&[]), Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.take("p").await.unwrap(), None);
        store
            .put("q", "a", &record(&[]), Duration::from_secs(60))
            .await
            .unwrap();
        store.remove("q", "other").await.unwrap();
        assert_eq!(store.len(), 1);
        store.remove("q", "a").await.unwrap();
        assert!(store.is_empty());
    }
}

//! The cross-node adapter: rooms and broadcasts for a cluster of chat nodes sharing a
//! [`Bus`].
//!
//! Membership stays local: each node indexes its own sockets in a [`LocalAdapter`]. A
//! broadcast is delivered to the matching local sockets at once, then published, encoded
//! once, on the namespace's topic `syd:{<nsp>}:stream` ([`stream_key`]); every node reads
//! that topic and delivers each entry from another node to its own matching sockets
//! (rooms and `except` are applied by the receiving node, on its own index).
//!
//! Why every node reads the whole namespace stream, rather than per-room channels that
//! would cost only the nodes with members: one reader per namespace is simple (no
//! subscribe/unsubscribe as rooms fill and empty, no race between a join and the first
//! message), keeps one order for all of a namespace's broadcasts, and is the log that
//! connection-state recovery will replay from (an offset is a stream id). The trade-off:
//! a node receives, decodes and drops the broadcasts of rooms it has no member in. With
//! few nodes that is cheap; per-room channels (sharded pub/sub) are the way out if it is
//! not (see `docs/sessions.md`).
//!
//! An entry is JSON ([`Entry`]): the encoded packet (text plus base64 attachments), the
//! rooms and `except`, and its origin: the node id, a random instance id of this process,
//! and a sequence number. A node skips its own entries by instance id, and drops an entry
//! whose sequence number it has already seen from that instance (a publisher retry after
//! a lost reply may append an entry twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::engineio::Sid;
use crate::socketio::{
    Adapter, AdapterError, AdapterFactory, BroadcastOptions, Encoded, LocalAdapter, LocalSockets,
    Namespace, Room,
};

/// The bus topic (the Redis Stream key) of namespace `nsp`: `syd:{/chat}:stream`. The
/// braces are a Redis Cluster hash tag: every key of one namespace lands in one slot.
pub fn stream_key(nsp: &Namespace) -> String {
    format!("syd:{{{}}}:stream", nsp.as_str())
}

/// One broadcast on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The publishing node's id (for logs and, later, recovery).
    pub node: String,
    /// The publishing process: random at start-up, so a restarted node is a new instance.
    pub instance: u64,
    /// Increasing per instance and namespace, from 1.
    pub seq: u64,
    /// The encoded Socket.IO packet.
    pub text: String,
    /// Its binary attachments, base64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
    /// Which sockets it goes to.
    pub opts: BroadcastOptions,
}

impl Entry {
    /// The packet, with its attachments decoded; `None` when an attachment is not base64.
    pub fn packet(&self) -> Option<Encoded> {
        let attachments = self
            .attachments
            .iter()
            .map(|a| BASE64.decode(a).ok().map(Bytes::from))
            .collect::<Option<Vec<_>>>()?;
        Some(Encoded {
            text: self.text.clone(),
            attachments,
        })
    }
}

/// Makes a [`ClusterAdapter`] for each namespace, all on one bus.
pub struct ClusterAdapterFactory {
    bus: Arc<dyn Bus>,
    node: String,
    instance: u64,
}

impl std::fmt::Debug for ClusterAdapterFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdapterFactory")
            .field("bus", &self.bus.kind())
            .field("node", &self.node)
            .field("instance", &self.instance)
            .finish()
    }
}

impl ClusterAdapterFactory {
    /// Adapters for node `node` on `bus`.
    pub fn new(bus: Arc<dyn Bus>, node: impl Into<String>) -> Self {
        Self {
            bus,
            node: node.into(),
            instance: rand::random(),
        }
    }
}

impl AdapterFactory for ClusterAdapterFactory {
    /// Also starts the namespace's bus reader (inside a Tokio runtime; outside one the
    /// adapter is local only, and says so in the log).
    fn create(&self, nsp: &Namespace, local: Weak<dyn LocalSockets>) -> Arc<dyn Adapter> {
        let (dropped, stop) = oneshot::channel();
        let adapter = Arc::new(ClusterAdapter {
            local: Arc::new(LocalAdapter::new(local)),
            bus: Arc::clone(&self.bus),
            topic: stream_key(nsp),
            node: self.node.clone(),
            instance: self.instance,
            seq: AtomicU64::new(0),
            _dropped: dropped,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let entries = self.bus.subscribe(&adapter.topic);
            let local = Arc::downgrade(&adapter.local);
            let instance = self.instance;
            tokio::spawn(async move {
                tokio::select! {
                    () = receive(local, entries, instance) => {}
                    // The adapter is gone: stop reading (which ends the subscription).
                    _ = stop => {}
                }
            });
        } else {
            tracing::error!(nsp = %nsp, "no Tokio runtime: the namespace will not receive other nodes' broadcasts");
        }
        adapter
    }
}

/// Rooms of this node's sockets, broadcasts to every node.
pub struct ClusterAdapter {
    local: Arc<LocalAdapter>,
    bus: Arc<dyn Bus>,
    topic: String,
    node: String,
    instance: u64,
    seq: AtomicU64,
    /// Dropped with the adapter, which stops its bus reader.
    _dropped: oneshot::Sender<()>,
}

impl std::fmt::Debug for ClusterAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdapter")
            .field("topic", &self.topic)
            .field("node", &self.node)
            .field("local", &self.local)
            .finish()
    }
}

#[async_trait]
impl Adapter for ClusterAdapter {
    async fn add_all(&self, sid: Sid, rooms: Vec<Room>) -> Result<(), AdapterError> {
        self.local.join(sid, rooms);
        Ok(())
    }

    async fn del(&self, sid: Sid, room: Room) -> Result<(), AdapterError> {
        self.local.leave(sid, &room);
        Ok(())
    }

    async fn del_all(&self, sid: Sid) -> Result<(), AdapterError> {
        self.local.leave_all(sid);
        Ok(())
    }

    async fn rooms_of(&self, sid: Sid) -> Result<Vec<Room>, AdapterError> {
        Ok(self.local.rooms(sid))
    }

    /// Delivers locally, then publishes for the other nodes. An error means the other
    /// nodes will not get it (the local sockets already have).
    async fn broadcast(&self, packet: Encoded, opts: BroadcastOptions) -> Result<(), AdapterError> {
        self.local.deliver(&packet, &opts);
        let entry = Entry {
            node: self.node.clone(),
            instance: self.instance,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            attachments: packet
                .attachments
                .iter()
                .map(|a| BASE64.encode(a))
                .collect(),
            text: packet.text,
            opts,
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|error| AdapterError::Unavailable(error.to_string()))?;
        self.bus
            .publish(&self.topic, Bytes::from(bytes))
            .await
            .map_err(|error| AdapterError::Unavailable(error.to_string()))
    }

    /// This node's sockets only.
    async fn sockets(&self, opts: BroadcastOptions) -> Result<Vec<Sid>, AdapterError> {
        Ok(self.local.targets(&opts))
    }
}

/// Delivers the other instances' entries to the local sockets; ends when the namespace is
/// gone or the bus closes the subscription.
async fn receive(local: Weak<LocalAdapter>, mut entries: mpsc::Receiver<Bytes>, me: u64) {
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    while let Some(bytes) = entries.recv().await {
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(%error, "invalid bus entry; skipped");
                continue;
            }
        };
        if entry.instance == me {
            continue;
        }
        let last = last_seq.entry(entry.instance).or_insert(0);
        if entry.seq <= *last {
            tracing::debug!(node = %entry.node, seq = entry.seq, "duplicate bus entry; skipped");
            continue;
        }
        *last = entry.seq;
        let Some(packet) = entry.packet() else {
            tracing::warn!(node = %entry.node, "bus entry with an invalid attachment; skipped");
            continue;
        };
        let Some(local) = local.upgrade() else {
            return;
        };
        local.deliver(&packet, &entry.opts);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::bus::MemoryBus;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Sid, Encoded)>>);

    impl LocalSockets for Recorder {
        fn deliver(&self, sid: Sid, packet: &Encoded) {
            self.0.lock().push((sid, packet.clone()));
        }
    }

    fn node(bus: &MemoryBus, name: &str) -> (Arc<dyn Adapter>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let local = Arc::downgrade(&recorder) as Weak<dyn LocalSockets>;
        let factory = ClusterAdapterFactory::new(Arc::new(bus.clone()), name);
        (factory.create(&Namespace::root(), local), recorder)
    }

    async fn eventually(recorder: &Recorder, n: usize) -> Vec<(Sid, Encoded)> {
        for _ in 0..100 {
            if recorder.0.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recorder.0.lock().clone()
    }

    #[test]
    fn the_stream_key_tags_the_namespace() {
        assert_eq!(stream_key(&Namespace::root()), "syd:{/}:stream");
        assert_eq!(
            stream_key(&Namespace::new("/chat").unwrap()),
            "syd:{/chat}:stream"
        );
    }

    #[tokio::test]
    async fn a_broadcast_reaches_room_members_on_every_node_except_the_excluded() {
        let bus = MemoryBus::new();
        let (a, on_a) = node(&bus, "a");
        let (b, on_b) = node(&bus, "b");
        let [a1, b1, b2] = [Sid::random(), Sid::random(), Sid::random()];
        a.add_all(a1, vec![a1.into(), "red".into()]).await.unwrap();
        b.add_all(b1, vec![b1.into(), "red".into()]).await.unwrap();
        b.add_all(b2, vec![b2.into(), "red".into()]).await.unwrap();
        let packet = Encoded {
            text: "2[\"m\",{\"_placeholder\":true,\"num\":0}]".into(),
            attachments: vec![Bytes::from_static(b"\x00\xff")],
        };
        let opts = BroadcastOptions {
            rooms: vec!["red".into()],
            except: vec![a1.into(), b2.into()],
        };
        a.broadcast(packet.clone(), opts).await.unwrap();
        assert_eq!(eventually(&on_b, 1).await, vec![(b1, packet)]);
        // The sender's node delivered locally (to no one here) and skipped its own entry.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(on_a.0.lock().is_empty());
        assert_eq!(on_b.0.lock().len(), 1);
    }

    #[tokio::test]
    async fn duplicates_and_garbage_on_the_bus_are_skipped() {
        let bus = MemoryBus::new();
        let (b, on_b) = node(&bus, "b");
        let b1 = Sid::random();
        b.add_all(b1, vec![b1.into()]).await.unwrap();
        let entry = |seq: u64, text: &str| Entry {
            node: "a".into(),
            instance: 7,
            seq,
            text: text.into(),
            attachments: vec![],
            opts: BroadcastOptions::default(),
        };
        let topic = stream_key(&Namespace::root());
        for bytes in [
            serde_json::to_vec(&entry(1, "2[\"one\"]")).unwrap(),
            serde_json::to_vec(&entry(1, "2[\"one again\"]")).unwrap(),
            b"not json".to_vec(),
            serde_json::to_vec(&entry(2, "2[\"two\"]")).unwrap(),
        ] {
            bus.publish(&topic, Bytes::from(bytes)).await.unwrap();
        }
        let got: Vec<String> = eventually(&on_b, 2)
            .await
            .into_iter()
            .map(|(_, p)| p.text)
            .collect();
        assert_eq!(got, ["2[\"one\"]", "2[\"two\"]"]);
    }
}

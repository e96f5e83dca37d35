//! The message bus between chat nodes: a narrow async trait ([`Bus`]) that the cluster
//! adapter ([`crate::cluster`]) publishes broadcasts to and reads them from.
//!
//! - [`memory`]: in-process ([`MemoryBus`]), the embedded default without `--redis`; several
//!   nodes in one process (tests) may share one.
//! - [`redis`]: Redis Streams ([`RedisBus`]), one stream per topic, delivered live by
//!   pub/sub.
//!
//! A topic is an append-only log: every subscriber of a topic sees every entry published to
//! it after it subscribed, in one order (the publisher's order for one publisher), including
//! its own node's entries (the adapter skips those by their origin). Every entry has an id,
//! increasing along the log (a Redis Stream id, `<ms>-<seq>`); a log keeps its entries for a
//! retention time when asked to ([`Bus::retain`]), so that a reader can ask for what followed an id it saw
//! ([`Bus::read_after`]): that is how connection-state recovery replays missed broadcasts.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use memory::MemoryBus;
pub use redis::{RedisBus, RedisBusConfig};

/// Why the bus refused or failed an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The broker does not answer (the reason is the client's error).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker has been unreachable for so long that the local buffer of unpublished
    /// entries is full; the entry was dropped.
    #[error("publish buffer full ({0} entries waiting for the broker)")]
    BufferFull(usize),
}

/// One entry of a topic, as a subscriber or [`Bus::read_after`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEntry {
    /// Its id in the topic's log: `<ms>-<seq>`, increasing along the log.
    pub id: String,
    /// What was published.
    pub data: Bytes,
}

/// An entry id `<ms>-<seq>` as numbers, in log order; `None` when malformed.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Where a store on the same broker may append an entry to a topic inside a step of its
/// own, exactly as the bus's own append would ([`Bus::joint_target`]): one round trip to
/// the broker for the store's write and the broadcast it announces, instead of two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    /// The broker's address, as the bus was given it: a store connected elsewhere must
    /// not use the target.
    pub server: String,
    /// The topic's stream, also the name of the channel that carries its entries live.
    pub key: String,
    /// How the stream is trimmed on this append: the strategy (`MAXLEN` or `MINID`) and
    /// its threshold, as the bus's own appends trim it now.
    pub trim: (&'static str, String),
}

/// The id before every entry: reading after it reads a whole log.
pub const LOG_START: &str = "0-0";

/// A publish/subscribe log shared by the nodes of a cluster.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `entry` to `topic`. Returns once the entry is accepted: a bus backed by a
    /// broker may buffer it locally and deliver it when the broker is reachable again.
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError>;

    /// Appends `entry` to `topic` like [`publish`](Bus::publish), and waits for its id.
    /// `Ok(None)`: accepted, but the broker is unreachable now, so the entry waits in the
    /// local buffer and has no id yet (it is delivered later).
    async fn append(&self, topic: &str, entry: Bytes) -> Result<Option<String>, BusError>;

    /// The entries published to `topic` from now on, in order. The receiver ends when the
    /// bus is dropped. Must be called inside a Tokio runtime (a broker-backed bus starts a
    /// reader task).
    fn subscribe(&self, topic: &str) -> mpsc::Receiver<BusEntry>;

    /// Up to `limit` entries of `topic` that follow the entry `after`, in order; `Ok(None)`
    /// when `after` is not in the log (never was, or is older than the retention), so that
    /// what followed it cannot be known. [`LOG_START`] is always in the log.
    async fn read_after(
        &self,
        topic: &str,
        after: &str,
        limit: usize,
    ) -> Result<Option<Vec<BusEntry>>, BusError>;

    /// Where a store on the same broker may append an entry to `topic` itself, in one
    /// step with its own write ([`StreamTarget`]); `None` (the default) when it may not:
    /// in process, and whenever entries wait in this bus's local queue or Redis did not
    /// take the last one (an append beside the queue would overtake them, and a node's
    /// entries must reach the log in the order it published them: a `leave` waiting
    /// there must stay ahead of the messages sent after it).
    fn joint_target(&self, _topic: &str) -> Option<StreamTarget> {
        None
    }

    /// [`joint_target`](Bus::joint_target) for an entry that may overtake the entries
    /// waiting in this bus's local queue: one about something that did not exist when
    /// they were published (the leave entry of a room being created, which concerns only
    /// sockets left over from an older room of that name). `None` when the broker is not
    /// known to be reachable; the default is the joint target, which asks more.
    fn log_target(&self, topic: &str) -> Option<StreamTarget> {
        self.joint_target(topic)
    }

    /// The id of the last entry of `topic` ([`LOG_START`] when it has none).
    async fn last_id(&self, topic: &str) -> Result<String, BusError>;

    /// Keeps `topic`'s entries for at least `window` (for [`read_after`](Bus::read_after)).
    /// Other topics keep only what their readers need: a bounded length (Redis), or
    /// nothing (in process).
    fn retain(&self, topic: &str, window: std::time::Duration);

    /// Keeps the entries of the topics whose names start with `prefix` for at most about
    /// `window` (Redis: trimmed by age on each append this bus makes, not by length), for
    /// topics whose entries are worthless once their reader took them or gave up waiting,
    /// and may be large (forwarded request bodies): a stream then holds what arrived within
    /// the window, not the length bound's worth of the largest entries. In process nothing
    /// is kept anyway (the default).
    fn expire(&self, prefix: &str, window: std::time::Duration) {
        let _ = (prefix, window);
    }

    /// Removes entries of `topic` that its only reader has taken (Redis: `XDEL`), so that
    /// the stream holds only what is still on its way. In process nothing is kept (the
    /// default).
    async fn discard(&self, topic: &str, ids: &[String]) -> Result<(), BusError> {
        let _ = (topic, ids);
        Ok(())
    }

    /// The store of connection-state recovery records that lives with this bus (the same
    /// Redis, or the same process): the records and the log they point into stay
    /// together.
    fn session_store(&self) -> std::sync::Arc<dyn crate::recovery::SessionStore>;

    /// Whether the broker answers now (always `Ok` in process).
    async fn ping(&self) -> Result<(), BusError>;

    /// Returns once every entry published before the call has reached the broker (at once
    /// in process): a stopping node's last words (replies to other nodes) must not die in
    /// its local buffer. Waits as long as the broker is unreachable; bound it.
    async fn flush(&self) {}

    /// A name for logs and health reports: `memory`, `redis`.
    fn kind(&self) -> &'static str;
}

/// The capacity of a subscriber's channel. A reader that falls this far behind is caught
/// up later rather than waited for (the Redis bus reads the stream for it from its last
/// entry id, without holding up the other topics' delivery); the in-process bus waits.
pub const SUBSCRIBER_CAPACITY: usize = 1024;

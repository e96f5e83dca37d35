//! The message bus between chat nodes: a narrow async trait ([`Bus`]) that the cluster
//! adapter ([`crate::cluster`]) publishes broadcasts to and reads them from.
//!
//! - [`memory`]: in-process ([`MemoryBus`]), the embedded default without `--redis`; several
//!   nodes in one process (tests) may share one.
//! - [`redis`]: Redis Streams ([`RedisBus`]), one stream per topic.
//!
//! A topic is an append-only log: every subscriber of a topic sees every entry published to
//! it after it subscribed, in one order (the publisher's order for one publisher), including
//! its own node's entries (the adapter skips those by their origin).

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

/// A publish/subscribe log shared by the nodes of a cluster.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `entry` to `topic`. Returns once the entry is accepted: a bus backed by a
    /// broker may buffer it locally and deliver it when the broker is reachable again.
    async fn publish(&self, topic: &str, entry: Bytes) -> Result<(), BusError>;

    /// The entries published to `topic` from now on, in order. The receiver ends when the
    /// bus is dropped. Must be called inside a Tokio runtime (a broker-backed bus starts a
    /// reader task).
    fn subscribe(&self, topic: &str) -> mpsc::Receiver<Bytes>;

    /// Whether the broker answers now (always `Ok` in process).
    async fn ping(&self) -> Result<(), BusError>;

    /// A name for logs and health reports: `memory`, `redis`.
    fn kind(&self) -> &'static str;
}

/// The capacity of a subscriber's channel: a reader that falls this far behind waits (the
/// Redis reader then stops reading, and resumes from its last entry id).
pub const SUBSCRIBER_CAPACITY: usize = 1024;

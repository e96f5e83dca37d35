//! Connection-state recovery, wire-compatible with `socket.io-client`: a socket gets a
//! private id (`pid`) in its CONNECT reply, every broadcast event carries its offset (the
//! id of its bus entry) as a last argument, and a client that reconnects with
//! `{pid, offset}` in its CONNECT auth gets back its socket id, its rooms, and every
//! broadcast it missed, replayed before the CONNECT reply — on any node.
//!
//! Two pieces, both shared by the nodes of a cluster:
//! - the namespace's bus log (see [`crate::cluster`]), kept for the recovery window
//!   ([`Bus::retain`](crate::bus::Bus::retain)): the offsets are its entry ids;
//! - a [`SessionStore`] holding one [`Record`] per socket: written when the socket
//!   connects and when its rooms change, kept alive while it is connected, and given the
//!   recovery window when it disconnects for a reason a client may recover from. It is
//!   written while the socket is connected, not only when it leaves, so that the sockets of
//!   a node that is killed can be recovered too.
//!
//! A record is owned by the socket that wrote it (node instance and socket id): once a
//! recovery takes it, the old socket — possibly still alive on a node that has not noticed
//! its client is gone — can no longer overwrite it.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// Settings of connection-state recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How long after a disconnection a client may still recover (the reference server's
    /// `maxDisconnectionDuration`, 2 minutes by default).
    pub window: Duration,
    /// How often a node renews the records of its connected sockets.
    pub refresh: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            refresh: Duration::from_secs(30),
        }
    }
}

impl RecoveryConfig {
    /// How long a connected socket's record lives without renewal: long enough to survive
    /// one missed renewal, and the whole window after its node died.
    pub fn connected_ttl(&self) -> Duration {
        self.window + self.refresh * 2
    }
}

/// What a recovered socket gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The socket id.
    pub sid: String,
    /// Its rooms (its own room included).
    pub rooms: Vec<String>,
    /// The namespace log's last entry when the socket connected: a client that never saw
    /// an offset missed everything after it.
    pub offset: String,
    /// Whom the application said the socket belongs to (a user id): a recovery is offered
    /// to the application's check with it, so that a pid alone is not a credential.
    /// Absent in records of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The broker does not answer.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// Where recovery records live: in process ([`MemoryStore`]) or in Redis ([`RedisStore`]).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Creates or replaces the record of `pid`, owned by `owner`, for `ttl`.
    async fn put(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Replaces the record of `pid` for `ttl` if `owner` still owns it; `false` otherwise.
    async fn update(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Removes and returns the record of `pid`: of concurrent takers, one gets it.
    async fn take(&self, pid: &str) -> Result<Option<Record>, StoreError>;
    /// Extends the life of existing records to `ttl`.
    async fn touch(&self, pids: &[String], ttl: Duration) -> Result<(), StoreError>;
    /// Removes the record of `pid` if `owner` owns it.
    async fn remove(&self, pid: &str, owner: &str) -> Result<(), StoreError>;
}

/// The store key of `pid`.
pub fn record_key(pid: &str) -> String {
    format!("syd:pid:{pid}")
}

/// A fresh private session id: 128 random bits, URL-safe.
pub fn new_pid() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `pid` looks like one of ours (anything else is not looked up).
pub fn is_pid(pid: &str) -> bool {
    pid.len() == 32 && pid.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_128_bit_hex_and_distinct() {
        let a = new_pid();
        assert!(is_pid(&a), "{a}");
        assert_ne!(a, new_pid());
        assert!(!is_pid("x"));
        assert!(!is_pid(&"g".repeat(32)));
    }
}

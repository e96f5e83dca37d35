//! The Engine.IO server's settings: heartbeat, limits, path, CORS and the node's identity.

use std::time::Duration;

use http::HeaderValue;

use crate::client_addr::TrustedProxies;

/// Which cross-origin requests the server allows (browsers only; other clients ignore it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers; preflight requests are refused like any other bad request.
    #[default]
    Disabled,
    /// `Access-Control-Allow-Origin: *`, without credentials (the official suites' setting,
    /// `cors: { origin: "*" }`).
    AnyOrigin,
    /// The request's `Origin` is echoed back with `Access-Control-Allow-Credentials: true`,
    /// so that browsers may send cookies (`cors: { origin: true, credentials: true }`).
    MirrorOrigin,
    /// Like [`Cors::MirrorOrigin`], for the listed origins only (`https://chat.example`).
    Origins(Vec<String>),
}

/// Settings of an Engine.IO server; the defaults are the reference server's.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The path the server answers on, with a trailing slash: `/engine.io/`, `/socket.io/`.
    pub path: String,
    /// How long after the handshake (then after each pong) the server sends a ping.
    pub ping_interval: Duration,
    /// How long the server waits for the pong before it closes the session.
    pub ping_timeout: Duration,
    /// The largest POST body and WebSocket message accepted, in bytes; also the largest
    /// polling response the server builds when it has several packets to send.
    pub max_payload: usize,
    /// How long a WebSocket may take to complete an upgrade from polling (`2probe` … `5`).
    pub upgrade_timeout: Duration,
    /// How long a closing session waits for a poll to deliver its last packets.
    pub close_timeout: Duration,
    /// The most packets queued for a client that does not read them; beyond it the session
    /// is closed as a slow client (a slow or gone client must not hold memory forever).
    pub max_queued_packets: usize,
    /// The most bytes of packets waiting for a client (queued, or taken by a WebSocket
    /// write that has not completed); a packet that would take it beyond closes the session
    /// as a slow client. The packet count alone bounds nothing: one request may be
    /// answered with a megabyte (a `history` page), and a client may ask for thousands of
    /// them without reading one. A packet for a client with nothing waiting is always
    /// taken, so that no packet is too large to be sent at all. At least `max_payload`.
    pub max_queued_bytes: usize,
    /// The most sessions open at once; a handshake beyond it is refused with 503 (a node
    /// out of file descriptors or memory would fail everyone). Zero: no limit, as the
    /// reference server.
    pub max_sessions: usize,
    /// The most sessions open at once for one client ([`crate::client_addr::ClientKey`]);
    /// a handshake beyond it is refused with 429. Without it, one client that handshakes
    /// and never comes back fills `max_sessions` for everyone, holding no connection.
    /// Zero: no limit, as the reference server.
    pub max_sessions_per_client: usize,
    /// How long a polling session waits, after its handshake, for its client's next
    /// request (a poll, a POST or an upgrade) before it closes: a client polls at once,
    /// and one that never comes back would otherwise hold its place until its first ping
    /// times out (`ping_interval + ping_timeout`). `None`: the heartbeat alone, as the
    /// reference server.
    pub first_poll_timeout: Option<Duration>,
    /// The proxies whose `X-Forwarded-For` names the client (see [`crate::client_addr`]).
    pub trusted_proxies: TrustedProxies,
    /// The longest a packet for a WebSocket client waits for others to share its write,
    /// while the node is busy. A packet queued less than this after the client's last
    /// write then waits for the interval's end and goes out with everything queued until
    /// then: a client receiving a stream of broadcasts costs one send per interval instead
    /// of one per packet (each a system call, and on loopback the reader's TCP work too).
    /// The wait scales with the load of the node's worker threads (see
    /// [`super::pacing`]): none while they are mostly idle, so that a node with CPU to
    /// spare adds no latency, the whole interval when they are busy. A client that was
    /// idle for the interval never waits, nor does one whose packets come too far apart
    /// for a hold to merge several ([`super::pacing::Density`]). Zero: every packet is
    /// written as soon as it is queued, as the reference server does.
    pub ws_flush_interval: Duration,
    /// Cross-origin policy.
    pub cors: Cors,
    /// This node's name, sent in the `x-served-by` header of every response.
    pub node_id: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            path: "/engine.io/".to_owned(),
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            upgrade_timeout: Duration::from_millis(10_000),
            close_timeout: Duration::from_millis(30_000),
            max_queued_packets: 10_000,
            max_queued_bytes: DEFAULT_QUEUED_PAYLOADS * 1_000_000,
            max_sessions: 0,
            max_sessions_per_client: 0,
            first_poll_timeout: None,
            trusted_proxies: TrustedProxies::loopback(),
            ws_flush_interval: Duration::ZERO,
            cors: Cors::Disabled,
            node_id: "chat-node".to_owned(),
        }
    }
}

/// [`EngineConfig::max_queued_bytes`] by default, in multiples of `max_payload`: room for
/// a few of the largest answers a client may be waiting for at once (several polls' worth
/// for a polling client), yet a bound per client that a node holds thousands of. (The
/// reference server and `ws` queue without bound.)
pub const DEFAULT_QUEUED_PAYLOADS: usize = 4;

/// The longest [`EngineConfig::ws_flush_interval`]: well within any heartbeat, and
/// already far beyond what a chat user would accept as delay.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// An invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The path must start and end with `/`.
    #[error("path {0:?} must start and end with '/'")]
    Path(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A WebSocket flush interval so long that it would hold heartbeats back.
    #[error("ws_flush_interval {0:?} is longer than the most allowed, {MAX_FLUSH_INTERVAL:?}")]
    FlushInterval(Duration),
    /// An outbound queue that could not hold one payload.
    #[error("max_queued_bytes ({queued}) must be at least max_payload ({payload})")]
    QueuedBytes {
        /// `max_queued_bytes`.
        queued: usize,
        /// `max_payload`.
        payload: usize,
    },
    /// The node id cannot be sent in an HTTP header.
    #[error("node id {0:?} is not a valid header value")]
    NodeId(String),
}

impl EngineConfig {
    /// Checks the settings.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if !self.path.starts_with('/') || !self.path.ends_with('/') {
            return Err(ConfigError::Path(self.path));
        }
        for (name, value) in [
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
            ("upgrade_timeout", self.upgrade_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.max_payload == 0 {
            return Err(ConfigError::Zero("max_payload"));
        }
        if self.first_poll_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::Zero("first_poll_timeout"));
        }
        if self.max_queued_packets == 0 {
            return Err(ConfigError::Zero("max_queued_packets"));
        }
        if self.max_queued_bytes < self.max_payload {
            return Err(ConfigError::QueuedBytes {
                queued: self.max_queued_bytes,
                payload: self.max_payload,
            });
        }
        if self.ws_flush_interval > MAX_FLUSH_INTERVAL {
            return Err(ConfigError::FlushInterval(self.ws_flush_interval));
        }
        if HeaderValue::from_str(&self.node_id).is_err() {
            return Err(ConfigError::NodeId(self.node_id));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(EngineConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_settings_are_errors() {
        let path = EngineConfig {
            path: "/socket.io".into(),
            ..Default::default()
        };
        assert_eq!(
            path.validate().err(),
            Some(ConfigError::Path("/socket.io".into()))
        );
        let zero = EngineConfig {
            ping_interval: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(
            zero.validate().err(),
            Some(ConfigError::Zero("ping_interval"))
        );
        let node = EngineConfig {
            node_id: "a\nb".into(),
            ..Default::default()
        };
        assert!(matches!(node.validate(), Err(ConfigError::NodeId(_))));
        let flush = EngineConfig {
            ws_flush_interval: Duration::from_millis(1001),
            ..Default::default()
        };
        assert_eq!(
            flush.validate().err(),
            Some(ConfigError::FlushInterval(Duration::from_millis(1001)))
        );
        let queue = EngineConfig {
            max_payload: 1000,
            max_queued_bytes: 999,
            ..Default::default()
        };
        assert_eq!(
            queue.validate().err(),
            Some(ConfigError::QueuedBytes {
                queued: 999,
                payload: 1000
            })
        );
        let flush = EngineConfig {
            ws_flush_interval: MAX_FLUSH_INTERVAL,
            ..Default::default()
        };
        assert!(flush.validate().is_ok());
    }
}

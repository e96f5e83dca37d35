//! The `chat-node` binary's command line: every flag has an environment fallback for
//! containers (`CHAT_LISTEN`, `CHAT_NODE_ID`, `CHAT_REDIS_URL`, …), mapped once to a
//! [`NodeConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::chat::{ChatConfig, ChatConfigError, RateLimit};
use crate::client_addr::{TrustedProxies, DEFAULT_TRUSTED_PROXIES};
use crate::conn::{
    auto_max_connections, ConnLimits, ConnLimitsError, DEFAULT_MAX_PENDING_PER_ADDRESS,
};
use crate::engineio::{ConfigError, Cors};
use crate::node::{NodeConfig, SessionMode, DEFAULT_MAX_SESSIONS_PER_CLIENT};

/// A Switchyard chat node: a Socket.IO v4 server on `/socket.io/`.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-node", version, about)]
pub struct Args {
    /// The address to listen on (port 0: any free port; the bound one is printed as
    /// `LISTENING <addr>`).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// This node's name, sent in `x-served-by` on every response.
    #[arg(long, env = "CHAT_NODE_ID", default_value = "chat-node")]
    pub node_id: String,
    /// The cluster's Redis (`redis://127.0.0.1:6379`); without it the node runs alone on
    /// an in-process bus.
    // The value stays out of `--help`: a Redis URL may hold a password.
    #[arg(long = "redis", env = "CHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Where Engine.IO sessions live: `shared` (any node serves any request: it forwards
    /// polling requests for other nodes' sessions to them and bridges WebSocket upgrades)
    /// or `local` (classic, needs sticky sessions).
    #[arg(long, env = "CHAT_SESSIONS", value_enum, default_value_t = SessionMode::Shared)]
    pub sessions: SessionMode,
    /// Engine.IO heartbeat interval (`25s`, `300ms`).
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "25s", value_parser = shared::duration::parse_duration)]
    pub ping_interval: Duration,
    /// How long to wait for a pong before closing the session; also how long a
    /// long-polling POST's body may take to arrive.
    #[arg(long, env = "CHAT_PING_TIMEOUT", default_value = "20s", value_parser = shared::duration::parse_duration)]
    pub ping_timeout: Duration,
    /// The largest message or POST body accepted, in bytes; also the most bytes of one
    /// packet's binary attachments together.
    #[arg(long, env = "CHAT_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,
    /// The most bytes waiting for one client (a polling client that does not poll, a
    /// WebSocket that does not read); beyond it the client is closed as a slow client.
    /// At least `--max-payload`. Default: 4 × `--max-payload`.
    #[arg(long, env = "CHAT_MAX_QUEUED_BYTES")]
    pub max_queued_bytes: Option<usize>,
    /// The most clients connected to this node at once; a handshake beyond it gets 503
    /// `Server at capacity` (0: no limit). Keep it below the open-file limit.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// The most sessions one client (an IPv4 address, an IPv6 /64) may have open on this
    /// node; a handshake beyond it gets 429 (0: no limit).
    #[arg(long, env = "CHAT_MAX_SESSIONS_PER_CLIENT", default_value_t = DEFAULT_MAX_SESSIONS_PER_CLIENT)]
    pub max_sessions_per_client: usize,
    /// How long a polling session waits for its client's first request after the
    /// handshake; then it closes (a client polls at once: one that does not is gone).
    #[arg(long, env = "CHAT_FIRST_POLL_TIMEOUT", default_value = "10s", value_parser = shared::duration::parse_duration)]
    pub first_poll_timeout: Duration,
    /// The proxies whose `X-Forwarded-For` names the client, for the per-client limits:
    /// CIDR blocks or addresses, comma-separated, or `none`. From another peer the header
    /// is ignored; from these the client is the right-most address that is not one of them.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", default_value = DEFAULT_TRUSTED_PROXIES)]
    pub trusted_proxies: TrustedProxies,
    /// The most TCP connections open at once, WebSockets included; one beyond it gets 503
    /// and is closed at once. Default: the open-file limit less an eighth of it (at least
    /// 64 kept for everything else).
    #[arg(long, env = "CHAT_MAX_TCP_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tcp_connections: Option<u32>,
    /// The most connections from one address that have not sent their first request yet
    /// (a trusted proxy's are not counted); one beyond it gets 503 and is closed at once.
    /// Without it, one address opening connections that send nothing holds the whole
    /// `--max-tcp-connections` for `--header-timeout` at a time.
    #[arg(long, env = "CHAT_MAX_PENDING_PER_ADDRESS", default_value_t = DEFAULT_MAX_PENDING_PER_ADDRESS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_address: u32,
    /// How long a client may take to send a connection's first request head, from its
    /// opening (slowloris, and connections that send nothing).
    #[arg(long, env = "CHAT_HEADER_TIMEOUT", default_value = "10s", value_parser = shared::duration::parse_duration)]
    pub header_timeout: Duration,
    /// How long a connection may stay with no request in progress (a keep-alive or h2c
    /// connection between requests, a response its client does not read) before it is
    /// closed; on HTTP/1 also how long a later request's head may take. Keep it above the
    /// proxy's 30 s idle pool.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value = "60s", value_parser = shared::duration::parse_duration)]
    pub idle_timeout: Duration,
    /// The longest a message for a WebSocket client waits, while the node is busy, for
    /// others to share its write (`5ms`; at most `1s`): one send instead of many for a
    /// client receiving a stream. No wait while the node's threads are mostly idle, nor for
    /// a client idle for the interval, nor for one whose messages come too far apart for
    /// several to share a write. `0s` writes every message as soon as it is queued.
    #[arg(long, env = "CHAT_WS_FLUSH_INTERVAL", default_value = "5ms", value_parser = shared::duration::parse_duration)]
    pub ws_flush_interval: Duration,
    /// Allowed browser origins: `*` (any, without credentials), `mirror` (any, with
    /// credentials), or origins such as `https://chat.example` (repeat the flag, or
    /// separate with commas). None: CORS off.
    #[arg(long = "cors-origin", env = "CHAT_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// How long a stopping node waits for requests in flight before exiting anyway.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "5s", value_parser = shared::duration::parse_duration)]
    pub shutdown_grace: Duration,
    /// How long after a disconnection a client may recover its socket (rooms, id) and the
    /// broadcasts it missed, on any node; `0s` turns connection-state recovery off.
    #[arg(long, env = "CHAT_RECOVERY_WINDOW", default_value = "2m", value_parser = shared::duration::parse_duration)]
    pub recovery_window: Duration,
    /// Chat: about how many messages each room's history keeps (Redis trims
    /// approximately).
    #[arg(long, env = "CHAT_HISTORY_CAP", default_value_t = 1000)]
    pub history_cap: usize,
    /// Chat: how many of the newest messages `join` answers with (at most the cap and 100).
    #[arg(long, env = "CHAT_HISTORY_ON_JOIN", default_value_t = 50)]
    pub history_on_join: usize,
    /// Chat: messages per user and window, across all nodes, as `<count>/<duration>`
    /// (`10/5s`: bursts of 10, then one every 500 ms).
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value = "10/5s")]
    pub rate_limit: RateLimit,
    /// Chat: `join`s and `leave`s per user and window, across all nodes (beyond it they
    /// answer `rate limited`).
    #[arg(long, env = "CHAT_JOIN_RATE_LIMIT", default_value = "20/10s")]
    pub join_rate_limit: RateLimit,
    /// Chat: `typing` events per user and window, across all nodes (beyond it they are
    /// dropped).
    #[arg(long, env = "CHAT_TYPING_RATE_LIMIT", default_value = "10/5s")]
    pub typing_rate_limit: RateLimit,
    /// Chat: `history` requests per user and window, across all nodes (beyond it they
    /// answer `rate limited`).
    #[arg(long, env = "CHAT_HISTORY_RATE_LIMIT", default_value = "20/10s")]
    pub history_rate_limit: RateLimit,
    /// Chat: `rooms` requests per user and window, across all nodes (beyond it they
    /// answer `rate limited`).
    #[arg(long, env = "CHAT_ROOMS_RATE_LIMIT", default_value = "100/10s")]
    pub rooms_rate_limit: RateLimit,
    /// Chat: new users (connections without a valid token) per client address and window,
    /// across all nodes; beyond it the connection is refused with `rate limited`. Each
    /// new user has its own per-user limits: without this, fresh identities would undo them.
    #[arg(long, env = "CHAT_NEW_USER_RATE_LIMIT", default_value = "60/10m")]
    pub new_user_rate_limit: RateLimit,
    /// Chat: `create`s per client address and window, across all nodes (beyond it they
    /// answer `rate limited`): a room lives until empty for `--empty-room-ttl`, and
    /// `--max-rooms` is for everyone.
    #[arg(long, env = "CHAT_CREATE_RATE_LIMIT", default_value = "100/1h")]
    pub create_rate_limit: RateLimit,
    /// Chat: the longest message, in characters.
    #[arg(long, env = "CHAT_MAX_TEXT", default_value_t = 2000)]
    pub max_text: usize,
    /// Chat: how long a node's presence entries outlive its last heartbeat (the node
    /// beats every third of it): how long users of a crashed node still count as online.
    #[arg(long, env = "CHAT_PRESENCE_TTL", default_value = "30s", value_parser = shared::duration::parse_duration)]
    pub presence_ttl: Duration,
    /// Chat: how many rooms may exist, across all nodes (a room is deleted once empty for
    /// `--empty-room-ttl`); beyond it `create` answers `too many rooms`.
    #[arg(long, env = "CHAT_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,
    /// Chat: how many rooms one user may be a member of (`lobby` not counted); beyond it
    /// `join` and `create` answer `too many memberships`.
    #[arg(long, env = "CHAT_MAX_MEMBERSHIPS", default_value_t = 1000)]
    pub max_memberships: usize,
    /// Chat: how long a user's token stays valid unused (a connected user keeps it in
    /// use); then the user is forgotten: its memberships end and the token names nobody.
    /// At least 1s and at least `--presence-ttl`.
    #[arg(long, env = "CHAT_TOKEN_TTL", default_value = "90days", value_parser = shared::duration::parse_duration)]
    pub token_ttl: Duration,
    /// Chat: how long a room stays without members (its last member left, or was
    /// forgotten with its token) before it is deleted with its history and invite, and
    /// its name is free again. A `join` in the meantime keeps it. At least 1s.
    #[arg(long, env = "CHAT_EMPTY_ROOM_TTL", default_value = "30days", value_parser = shared::duration::parse_duration)]
    pub empty_room_ttl: Duration,
    /// Worker threads (default: one per CPU). One is the cheapest per message when several
    /// nodes share a machine's cores (no hand-offs between threads); more let one node use
    /// more cores.
    #[arg(long, env = "CHAT_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, apart from the chat port
    /// so that they are never public with it (port 0: any free port; printed as
    /// `METRICS <addr>`). None: no metrics listener.
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// A value the node refuses, named as the operator gave it: the flag and its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} (or {env}): {reason}")]
pub struct InvalidFlag {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// What is wrong with the value.
    pub reason: String,
}

impl Args {
    /// The node's settings, checked as [`crate::node::Node::new`] checks them, an invalid
    /// value naming its flag (the checks themselves name the settings' fields, which
    /// an operator never wrote).
    pub fn checked_config(&self) -> Result<NodeConfig, InvalidFlag> {
        let config = self.node_config();
        let named = |(flag, env): (&'static str, &'static str), reason: String| InvalidFlag {
            flag,
            env,
            reason,
        };
        if let Err(error) = config.engine_config().validate() {
            let which = match &error {
                ConfigError::Zero("ping_interval") => Some(("ping-interval", "CHAT_PING_INTERVAL")),
                ConfigError::Zero("ping_timeout") => Some(("ping-timeout", "CHAT_PING_TIMEOUT")),
                ConfigError::Zero("max_payload") => Some(("max-payload", "CHAT_MAX_PAYLOAD")),
                ConfigError::NodeId(_) => Some(("node-id", "CHAT_NODE_ID")),
                ConfigError::QueuedBytes { .. } => {
                    Some(("max-queued-bytes", "CHAT_MAX_QUEUED_BYTES"))
                }
                ConfigError::FlushInterval(_) => {
                    Some(("ws-flush-interval", "CHAT_WS_FLUSH_INTERVAL"))
                }
                ConfigError::Zero("first_poll_timeout") => {
                    Some(("first-poll-timeout", "CHAT_FIRST_POLL_TIMEOUT"))
                }
                // Settings without a flag: `Node::new` reports them.
                _ => None,
            };
            if let Some(which) = which {
                return Err(named(which, error.to_string()));
            }
        }
        if let Err(error) = config.conn.validate() {
            let which = match error {
                ConnLimitsError::Zero("header_timeout") => {
                    ("header-timeout", "CHAT_HEADER_TIMEOUT")
                }
                ConnLimitsError::Zero("idle_timeout") => ("idle-timeout", "CHAT_IDLE_TIMEOUT"),
                ConnLimitsError::Zero("max_pending_per_address") => {
                    ("max-pending-per-address", "CHAT_MAX_PENDING_PER_ADDRESS")
                }
                ConnLimitsError::Zero(_) => ("max-tcp-connections", "CHAT_MAX_TCP_CONNECTIONS"),
            };
            return Err(named(which, error.to_string()));
        }
        if let Some(metrics) = self.metrics_listen {
            // Port 0 twice is two free ports; the same fixed address twice cannot be bound
            // twice, and is refused here with the flag's name rather than as "address in
            // use".
            if metrics == self.listen && metrics.port() != 0 {
                return Err(named(
                    ("metrics-listen", "CHAT_METRICS_LISTEN"),
                    format!("{metrics} is the chat listener's address (--listen); the metrics need their own"),
                ));
            }
        }
        if let Err(error) = config.chat.clone().validate() {
            let which = match error {
                ChatConfigError::HistoryCap => ("history-cap", "CHAT_HISTORY_CAP"),
                ChatConfigError::HistoryOnJoin(_) => ("history-on-join", "CHAT_HISTORY_ON_JOIN"),
                ChatConfigError::MaxText(_) => ("max-text", "CHAT_MAX_TEXT"),
                ChatConfigError::PresenceTtl(_) => ("presence-ttl", "CHAT_PRESENCE_TTL"),
                ChatConfigError::MaxRooms => ("max-rooms", "CHAT_MAX_ROOMS"),
                ChatConfigError::MaxMemberships => ("max-memberships", "CHAT_MAX_MEMBERSHIPS"),
                ChatConfigError::TokenTtl(_) => ("token-ttl", "CHAT_TOKEN_TTL"),
                ChatConfigError::EmptyRoomTtl(_) => ("empty-room-ttl", "CHAT_EMPTY_ROOM_TTL"),
            };
            return Err(named(which, error.to_string()));
        }
        Ok(config)
    }

    /// The CORS policy the `--cors-origin` values describe.
    pub fn cors(&self) -> Cors {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            Cors::Disabled
        } else if origins.iter().any(|o| o == "*") {
            Cors::AnyOrigin
        } else if origins.iter().any(|o| o == "mirror") {
            Cors::MirrorOrigin
        } else {
            Cors::Origins(origins)
        }
    }

    /// The node's settings.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            node_id: self.node_id.clone(),
            redis_url: self.redis_url.clone(),
            sessions: self.sessions,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_payload: self.max_payload,
            max_queued_bytes: self.max_queued_bytes.unwrap_or_else(|| {
                self.max_payload
                    .saturating_mul(crate::engineio::config::DEFAULT_QUEUED_PAYLOADS)
            }),
            max_connections: self.max_connections,
            max_sessions_per_client: self.max_sessions_per_client,
            first_poll_timeout: self.first_poll_timeout,
            trusted_proxies: self.trusted_proxies.clone(),
            conn: ConnLimits {
                max_connections: self
                    .max_tcp_connections
                    .map_or_else(auto_max_connections, |max| max as usize),
                max_pending_per_address: self.max_pending_per_address as usize,
                header_timeout: self.header_timeout,
                idle_timeout: self.idle_timeout,
            },
            ws_flush_interval: self.ws_flush_interval,
            cors: self.cors(),
            shutdown_grace: self.shutdown_grace,
            recovery_window: self.recovery_window,
            chat: ChatConfig {
                history_cap: self.history_cap,
                history_on_join: self.history_on_join,
                rate_limit: self.rate_limit,
                join_rate_limit: self.join_rate_limit,
                typing_rate_limit: self.typing_rate_limit,
                history_rate_limit: self.history_rate_limit,
                rooms_rate_limit: self.rooms_rate_limit,
                new_user_rate_limit: self.new_user_rate_limit,
                create_rate_limit: self.create_rate_limit,
                max_text: self.max_text,
                presence_ttl: self.presence_ttl,
                max_rooms: self.max_rooms,
                max_memberships: self.max_memberships,
                token_ttl: self.token_ttl,
                empty_room_ttl: self.empty_room_ttl,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_settings() {
        let args = Args::try_parse_from([
            "chat-node",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "n1",
            "--redis",
            "redis://127.0.0.1:6379",
            "--sessions",
            "local",
            "--ping-interval",
            "300ms",
            "--ping-timeout",
            "200ms",
            "--max-payload",
            "1000",
            "--cors-origin",
            "https://a.example,https://b.example",
            "--ws-flush-interval",
            "0s",
        ])
        .unwrap();
        let config = args.node_config();
        assert_eq!(config.ws_flush_interval, Duration::ZERO);
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(config.sessions, SessionMode::Local);
        assert_eq!(config.ping_interval, Duration::from_millis(300));
        assert_eq!(config.ping_timeout, Duration::from_millis(200));
        assert_eq!(config.max_payload, 1000);
        assert_eq!(
            config.cors,
            Cors::Origins(vec!["https://a.example".into(), "https://b.example".into()])
        );
    }

    #[test]
    fn defaults_and_cors_shortcuts() {
        let args = Args::try_parse_from(["chat-node"]).unwrap();
        let config = args.node_config();
        assert_eq!(config.redis_url, None);
        assert_eq!(config.sessions, SessionMode::Shared);
        assert_eq!(config.cors, Cors::Disabled);
        assert_eq!(config.ping_interval, Duration::from_secs(25));
        assert_eq!(
            config.ws_flush_interval,
            crate::node::DEFAULT_WS_FLUSH_INTERVAL
        );
        let any = Args::try_parse_from(["chat-node", "--cors-origin", "*"]).unwrap();
        assert_eq!(any.cors(), Cors::AnyOrigin);
        assert!(Args::try_parse_from(["chat-node", "--sessions", "sticky"]).is_err());
        assert!(Args::try_parse_from(["chat-node", "--ping-interval", "soon"]).is_err());
        assert_eq!(args.threads, None, "one worker per CPU");
        let one = Args::try_parse_from(["chat-node", "--threads", "1"]).unwrap();
        assert_eq!(one.threads, Some(1));
        assert!(Args::try_parse_from(["chat-node", "--threads", "0"]).is_err());
    }

    #[test]
    fn a_flush_interval_beyond_a_second_is_refused_by_its_flag() {
        let args = Args::try_parse_from(["chat-node", "--ws-flush-interval", "1s"]).unwrap();
        assert!(args.checked_config().is_ok());
        let args = Args::try_parse_from(["chat-node", "--ws-flush-interval", "2s"]).unwrap();
        let error = args.checked_config().unwrap_err();
        assert_eq!(error.flag, "ws-flush-interval");
        assert!(
            error
                .to_string()
                .starts_with("--ws-flush-interval (or CHAT_WS_FLUSH_INTERVAL): "),
            "{error}"
        );
    }

    #[test]
    fn the_outbound_queue_follows_the_payload_unless_set_and_holds_one() {
        let config = |args: &[&str]| {
            let all = std::iter::once("chat-node").chain(args.iter().copied());
            Args::try_parse_from(all).unwrap().checked_config()
        };
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.max_queued_bytes, 4_000_000);
        assert_eq!(
            defaults.engine_config().max_queued_bytes,
            crate::engineio::EngineConfig::default().max_queued_bytes
        );
        let larger = config(&["--max-payload", "5000000"]).unwrap();
        assert_eq!(larger.max_queued_bytes, 20_000_000);
        let set = config(&["--max-queued-bytes", "123456", "--max-payload", "1000"]).unwrap();
        assert_eq!(set.engine_config().max_queued_bytes, 123_456);
        let error = config(&["--max-queued-bytes", "999999"]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--max-queued-bytes (or CHAT_MAX_QUEUED_BYTES): "),
            "{error}"
        );
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_needs_its_own_address() {
        let args = Args::try_parse_from(["chat-node"]).unwrap();
        assert_eq!(args.metrics_listen, None);
        let args =
            Args::try_parse_from(["chat-node", "--metrics-listen", "127.0.0.1:9464"]).unwrap();
        assert_eq!(args.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(args.checked_config().is_ok());
        let error = Args::try_parse_from(["chat-node", "--metrics-listen", "nowhere"]).unwrap_err();
        assert!(error.to_string().contains("--metrics-listen"), "{error}");
        let same = Args::try_parse_from([
            "chat-node",
            "--listen",
            "127.0.0.1:9001",
            "--metrics-listen",
            "127.0.0.1:9001",
        ])
        .unwrap();
        let error = same.checked_config().unwrap_err();
        assert_eq!(error.flag, "metrics-listen");
        assert!(
            error
                .to_string()
                .starts_with("--metrics-listen (or CHAT_METRICS_LISTEN): "),
            "{error}"
        );
        let zeros = Args::try_parse_from([
            "chat-node",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert!(zeros.checked_config().is_ok());
    }

    #[test]
    fn connection_and_client_flags_map_to_settings() {
        let args = Args::try_parse_from([
            "chat-node",
            "--max-sessions-per-client",
            "7",
            "--first-poll-timeout",
            "3s",
            "--trusted-proxies",
            "10.0.0.0/8,::1",
            "--max-tcp-connections",
            "50",
            "--max-pending-per-address",
            "9",
            "--header-timeout",
            "4s",
            "--idle-timeout",
            "5s",
            "--new-user-rate-limit",
            "2/1m",
            "--create-rate-limit",
            "3/1h",
        ])
        .unwrap();
        let config = args.checked_config().unwrap();
        assert_eq!(config.max_sessions_per_client, 7);
        assert_eq!(config.first_poll_timeout, Duration::from_secs(3));
        assert_eq!(config.trusted_proxies.to_string(), "10.0.0.0/8,::1/128");
        assert_eq!(config.conn.max_connections, 50);
        assert_eq!(config.conn.max_pending_per_address, 9);
        assert_eq!(config.conn.header_timeout, Duration::from_secs(4));
        assert_eq!(config.conn.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.chat.new_user_rate_limit.to_string(), "2/1m");
        assert_eq!(config.chat.create_rate_limit.to_string(), "3/1h");

        let defaults = Args::try_parse_from(["chat-node"]).unwrap().node_config();
        assert_eq!(defaults.trusted_proxies, TrustedProxies::loopback());
        assert_eq!(defaults.conn.max_connections, auto_max_connections());
        assert_eq!(
            defaults.conn.max_pending_per_address,
            DEFAULT_MAX_PENDING_PER_ADDRESS
        );
        assert!(Args::try_parse_from(["chat-node", "--max-pending-per-address", "0"]).is_err());
        assert_eq!(
            defaults.max_sessions_per_client,
            DEFAULT_MAX_SESSIONS_PER_CLIENT
        );

        for (flag, env) in [
            ("header-timeout", "CHAT_HEADER_TIMEOUT"),
            ("idle-timeout", "CHAT_IDLE_TIMEOUT"),
            ("first-poll-timeout", "CHAT_FIRST_POLL_TIMEOUT"),
        ] {
            let args = Args::try_parse_from(["chat-node", &format!("--{flag}"), "0s"]).unwrap();
            let error = args.checked_config().unwrap_err();
            assert_eq!((error.flag, error.env), (flag, env), "{error}");
        }
        assert!(Args::try_parse_from(["chat-node", "--max-tcp-connections", "0"]).is_err());
        let error =
            Args::try_parse_from(["chat-node", "--trusted-proxies", "proxy.local"]).unwrap_err();
        assert!(error.to_string().contains("CIDR"), "{error}");
    }

    #[test]
    fn chat_flags_map_to_chat_settings() {
        let args = Args::try_parse_from([
            "chat-node",
            "--history-cap",
            "20",
            "--history-on-join",
            "5",
            "--rate-limit",
            "3/2s",
            "--join-rate-limit",
            "4/3s",
            "--typing-rate-limit",
            "5/4s",
            "--history-rate-limit",
            "6/5s",
            "--rooms-rate-limit",
            "7/6s",
            "--max-text",
            "100",
            "--presence-ttl",
            "2s",
            "--max-memberships",
            "7",
            "--token-ttl",
            "1h",
            "--empty-room-ttl",
            "2h",
        ])
        .unwrap();
        let chat = args.node_config().chat;
        assert_eq!(chat.history_cap, 20);
        assert_eq!(chat.history_on_join, 5);
        assert_eq!(chat.rate_limit.to_string(), "3/2s");
        assert_eq!(chat.join_rate_limit.to_string(), "4/3s");
        assert_eq!(chat.typing_rate_limit.to_string(), "5/4s");
        assert_eq!(chat.history_rate_limit.to_string(), "6/5s");
        assert_eq!(chat.rooms_rate_limit.to_string(), "7/6s");
        assert_eq!(chat.max_text, 100);
        assert_eq!(chat.presence_ttl, Duration::from_secs(2));
        assert_eq!(chat.max_memberships, 7);
        assert_eq!(chat.token_ttl, Duration::from_secs(3600));
        assert_eq!(chat.empty_room_ttl, Duration::from_secs(7200));
        assert!(chat.validate().is_ok());
        let defaults = Args::try_parse_from(["chat-node"])
            .unwrap()
            .node_config()
            .chat;
        assert_eq!(defaults, ChatConfig::default());
        let error = Args::try_parse_from(["chat-node", "--rate-limit", "fast"]).unwrap_err();
        assert!(
            error.to_string().contains("expected <count>/<duration>"),
            "{error}"
        );
    }
}

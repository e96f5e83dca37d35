//! The `chat-node` binary's command line: every flag has an environment fallback for
//! containers (`CHAT_LISTEN`, `CHAT_NODE_ID`, `CHAT_REDIS_URL`, …), mapped once to a
//! [`NodeConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::engineio::Cors;
use crate::node::{NodeConfig, SessionMode};

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
    #[arg(long = "redis", env = "CHAT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where Engine.IO sessions live: `shared` (any node serves any request: it forwards
    /// polling requests for other nodes' sessions to them and bridges WebSocket upgrades)
    /// or `local` (classic, needs sticky sessions).
    #[arg(long, env = "CHAT_SESSIONS", value_enum, default_value_t = SessionMode::Shared)]
    pub sessions: SessionMode,
    /// Engine.IO heartbeat interval (`25s`, `300ms`).
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// How long to wait for a pong before closing the session.
    #[arg(long, env = "CHAT_PING_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,
    /// The largest message or POST body accepted, in bytes.
    #[arg(long, env = "CHAT_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,
    /// Allowed browser origins: `*` (any, without credentials), `mirror` (any, with
    /// credentials), or origins such as `https://chat.example` (repeat the flag, or
    /// separate with commas). None: CORS off.
    #[arg(long = "cors-origin", env = "CHAT_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// How long a stopping node waits for requests in flight before exiting anyway.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Args {
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
            cors: self.cors(),
            shutdown_grace: self.shutdown_grace,
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
        ])
        .unwrap();
        let config = args.node_config();
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
        let any = Args::try_parse_from(["chat-node", "--cors-origin", "*"]).unwrap();
        assert_eq!(any.cors(), Cors::AnyOrigin);
        assert!(Args::try_parse_from(["chat-node", "--sessions", "sticky"]).is_err());
        assert!(Args::try_parse_from(["chat-node", "--ping-interval", "soon"]).is_err());
    }
}

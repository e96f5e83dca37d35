//! The `switchyard` command line: `up` (what users run) and the hidden roles that `up`
//! starts as its child processes.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use proxy::balance::StrategyKind;

/// Switchyard: the chat stack (Redis, chat nodes, TLS proxy) with one command.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the stack: dev certificate, Redis, chat nodes and the proxy; Ctrl-C stops it.
    Up(UpArgs),
    /// Internal (started by `up`): run the proxy from a config file.
    #[command(hide = true)]
    Proxy {
        #[arg(long)]
        config: PathBuf,
    },
    /// Internal (started by `up`): run one chat node; takes `chat-node`'s flags.
    // Boxed: the node's flags are many times the size of the other variants.
    #[command(hide = true)]
    Node(Box<chat_node::cli::Args>),
}

/// `switchyard up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Balancing strategy of the proxy.
    #[arg(long, value_enum, default_value_t = StrategyKind::LeastConn)]
    pub strategy: StrategyKind,
    /// How many chat nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Use this Redis (`redis://host:port`). Without it, a private `redis-server` is started
    /// when one is installed; else the nodes run in-process on the embedded default.
    // The value stays out of `--help`: a Redis URL may hold a password.
    #[arg(
        long,
        env = "SWITCHYARD_REDIS_URL",
        hide_env_values = true,
        conflicts_with = "no_redis"
    )]
    pub redis: Option<String>,
    /// Do not use Redis even if `redis-server` is installed: run the nodes in-process.
    #[arg(long)]
    pub no_redis: bool,
    /// The proxy's HTTPS listener.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub https: SocketAddr,
    /// The proxy's plain HTTP listener (redirects to HTTPS).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// The proxy's admin listener (`/status`, `/metrics`, token-protected mutations).
    #[arg(long, default_value = "127.0.0.1:9900")]
    pub admin: SocketAddr,
    /// Chat node i (from 1) listens on 127.0.0.1:<base + i - 1>.
    #[arg(long, default_value_t = 9101)]
    pub node_base_port: u16,
    /// Where the dev CA and localhost certificate live (created when missing).
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    /// How long each component gets to stop after SIGTERM before it is killed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_grace: std::time::Duration,
    /// How long to wait for everything to be ready before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub ready_timeout: std::time::Duration,
}

impl UpArgs {
    /// The listen address of node `i` (from 1).
    pub fn node_addr(&self, i: u16) -> Option<SocketAddr> {
        let port = self.node_base_port.checked_add(i.checked_sub(1)?)?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The id of node `i` (from 1): `n1`, `n2`, …
    pub fn node_id(i: u16) -> String {
        format!("n{i}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_readme() {
        let cli = Cli::try_parse_from(["switchyard", "up"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.strategy, StrategyKind::LeastConn);
        assert_eq!(up.nodes, 3);
        assert_eq!(up.https.to_string(), "127.0.0.1:8443");
        assert_eq!(up.http.to_string(), "127.0.0.1:8080");
        assert_eq!(up.admin.to_string(), "127.0.0.1:9900");
        assert_eq!(up.node_addr(3).unwrap().to_string(), "127.0.0.1:9103");
        assert_eq!(UpArgs::node_id(2), "n2");
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            vec!["switchyard", "up", "--nodes", "0"],
            vec!["switchyard", "up", "--strategy", "fastest"],
            vec!["switchyard", "up", "--no-redis", "--redis", "redis://x"],
            vec!["switchyard", "up", "--stop-grace", "5"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_node_role_takes_chat_node_flags() {
        let cli = Cli::try_parse_from([
            "switchyard",
            "node",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "n7",
        ])
        .unwrap();
        let Command::Node(args) = cli.command else {
            panic!("not node")
        };
        assert_eq!(args.node_id, "n7");
    }
}

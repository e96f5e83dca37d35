//! Chat nodes: the `node` role (one node in its own process, as the `chat-node` binary runs
//! it) and the embedded default (several nodes inside `switchyard`, sharing one in-memory bus,
//! session directory and chat store, for machines without Redis).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use chat_node::bus::{Bus, MemoryBus};
use chat_node::chat::{ChatStore, MemoryStore};
use chat_node::forward::{MemoryDirectory, SessionDirectory};
use chat_node::metrics::MetricsServer;
use chat_node::node::{Node, NodeConfig};
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::children::Exit;
use crate::console;
use crate::signals::StopSignals;

/// The `node` role: one chat node until SIGTERM or SIGINT. Prints `LISTENING <addr>` once
/// bound, like `chat-node`, and serves `--metrics-listen` as it does.
pub async fn run_role(args: chat_node::cli::Args) -> Result<()> {
    let mut signals = StopSignals::install()?;
    let node = Node::new(args.node_config())
        .await
        .context("starting the node")?;
    let listener = bind(args.listen, &args.node_id).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // `--metrics-listen` (or CHAT_METRICS_LISTEN), as `chat-node` serves it.
    let metrics = match args.metrics_listen {
        Some(at) => Some(
            MetricsServer::start(at, args.node_id.clone())
                .await
                .with_context(|| {
                    format!(
                        "node {}: binding the metrics listener {at} (--metrics-listen)",
                        args.node_id
                    )
                })?,
        ),
        None => None,
    };
    {
        let mut stdout = std::io::stdout().lock();
        if let Some(metrics) = &metrics {
            writeln!(stdout, "METRICS {}", metrics.addr()).context("writing to stdout")?;
        }
        writeln!(stdout, "LISTENING {addr}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    tracing::info!(%addr, node = %args.node_id, redis = args.redis_url.is_some(), "serving");
    node.serve(listener, async move {
        signals.recv().await;
    })
    .await
    .context("serving")?;
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn bind(addr: SocketAddr, id: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (already in use: pick other node ports with --node-base-port)"
        } else {
            ""
        };
        anyhow::anyhow!("node {id}: cannot listen on {addr}: {e}{hint}")
    })
}

/// Chat nodes served by this process.
#[derive(Debug)]
pub struct Embedded {
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

/// A node's `chat-node` flags: the child processes get them as arguments, the embedded nodes
/// parse them too (with the same `CHAT_*` environment fallbacks), so both run alike. The
/// Redis URL is not among them: it may carry a password, and arguments are public to every
/// user of the machine (`ps`); child nodes get it in their environment ([`REDIS_URL_ENV`]).
pub fn node_flags(id: &str, addr: SocketAddr, grace: Duration) -> Vec<String> {
    vec![
        "--listen".to_owned(),
        addr.to_string(),
        "--node-id".to_owned(),
        id.to_owned(),
        "--shutdown-grace".to_owned(),
        format!("{}ms", grace.as_millis()),
    ]
}

/// The environment variable a child node reads its Redis URL from (`chat-node --redis`'s).
pub const REDIS_URL_ENV: &str = "CHAT_REDIS_URL";

/// The environment variable of `chat-node --metrics-listen`, which `up` keeps from its
/// child nodes.
pub const METRICS_LISTEN_ENV: &str = "CHAT_METRICS_LISTEN";

/// The settings an embedded node gets from [`node_flags`] (and the environment).
fn embedded_config(id: &str, addr: SocketAddr, grace: Duration) -> Result<NodeConfig> {
    let flags = node_flags(id, addr, grace);
    let args =
        chat_node::cli::Args::try_parse_from(std::iter::once("chat-node".to_owned()).chain(flags))
            .with_context(|| {
                format!("settings of node {id} (check the CHAT_* environment variables)")
            })?;
    let mut config = args.node_config();
    // `switchyard up` has no Redis here, whatever CHAT_REDIS_URL says.
    config.redis_url = None;
    Ok(config)
}

impl Embedded {
    /// Starts one node per `(id, addr)` on one shared in-memory bus, session directory and
    /// chat store (rooms, invites, history): a broadcast, a session or a room reaches every
    /// node of this process, as through Redis. A node that stops on its own is reported on
    /// `exits`.
    pub async fn start(
        nodes: &[(String, SocketAddr)],
        grace: Duration,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> Result<Self> {
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        let directory: Arc<dyn SessionDirectory> = Arc::new(MemoryDirectory::new());
        let store: Arc<dyn ChatStore> = Arc::new(MemoryStore::new());
        let (stop, _) = watch::channel(false);
        let mut listeners = Vec::new();
        for (id, addr) in nodes {
            let node = Node::with_store(
                embedded_config(id, *addr, grace)?,
                Arc::clone(&bus),
                Arc::clone(&directory),
                Arc::clone(&store),
            )
            .with_context(|| format!("starting node {id}"))?;
            listeners.push((id.clone(), node, bind(*addr, id).await?));
        }
        let mut tasks = Vec::new();
        for (id, node, listener) in listeners {
            let addr = listener.local_addr().context("reading the bound address")?;
            let mut stopping = stop.subscribe();
            let exits = exits.clone();
            let name = id.clone();
            let span = tracing::info_span!("node", id = %id);
            let task = tokio::spawn(
                async move {
                    let served = node
                        .serve(listener, async move {
                            let _ = stopping.wait_for(|s| *s).await;
                        })
                        .await;
                    if let Err(error) = &served {
                        tracing::error!(%error, "stopped serving");
                    }
                    let _ = exits.send(Exit { name, status: None });
                }
                .instrument(span),
            );
            console::say(&format!("{id} serving on {addr} (in-process)"));
            tasks.push((id, task));
        }
        Ok(Self { stop, tasks })
    }

    /// Stops every node (each closes its sessions, then waits at most its grace) and waits
    /// for them, at most `grace` each beyond their own.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        for (id, task) in self.tasks {
            match tokio::time::timeout(grace, task).await {
                Ok(_) => console::say(&format!("{id} stopped")),
                Err(_) => console::say(&format!("{id} did not stop within {grace:?}; leaving it")),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_nodes_get_the_flags_child_nodes_get() {
        let addr: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let config = embedded_config("n1", addr, Duration::from_secs(2)).unwrap();
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.redis_url, None);
        assert_eq!(config.shutdown_grace, Duration::from_secs(2));
        let flags = node_flags("n2", addr, Duration::from_millis(1500));
        let args = chat_node::cli::Args::try_parse_from(
            std::iter::once("chat-node".to_owned()).chain(flags),
        )
        .unwrap();
        assert_eq!(args.listen, addr);
        assert_eq!(args.shutdown_grace, Duration::from_millis(1500));
    }
}

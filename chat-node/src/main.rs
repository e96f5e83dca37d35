//! The `chat-node` binary: one Switchyard chat node. See `chat-node --help`.
//!
//! Prints `LISTENING <addr>` on stdout once bound (after `METRICS <addr>` with
//! `--metrics-listen`); stops on SIGTERM or SIGINT within the
//! shutdown grace period (default 5 s), closing every client's connection so that it
//! reconnects elsewhere.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use chat_node::cli::Args;
use chat_node::metrics::MetricsServer;
use chat_node::node::Node;
use clap::Parser as _;
use tokio::net::TcpListener;

/// glibc malloc took a fifth of a node's user-space instructions per delivered message
/// (callgrind under `bench chat`: many small, short-lived buffers per message); mimalloc
/// serves those from per-thread free lists, as in the proxy.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file, journald or `docker logs`
        // would get the escape codes as text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(usize::from(threads));
    }
    runtime
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

/// Serves until SIGTERM or SIGINT.
async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let config = args.checked_config()?;
    let node = Node::new(config).await.context("starting the node")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let metrics = match args.metrics_listen {
        Some(at) => {
            let server = MetricsServer::start(at, args.node_id.clone())
                .await
                .with_context(|| format!("binding the metrics listener {at} (--metrics-listen)"))?;
            tracing::info!(addr = %server.addr(), "serving metrics on /metrics");
            Some(server)
        }
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
    node.serve(listener, shutdown).await?;
    // Stopped after the node: a scrape during the shutdown still sees its numbers.
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A future that completes on SIGTERM or SIGINT (Ctrl-C). The handlers are installed here,
/// when it is made, not when it is first polled: a signal that comes as soon as the node
/// answers (a supervisor stopping it at once) must stop it cleanly, not kill it by the
/// signal's default action before the server's shutdown task first ran.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

//! `conformance`: serves exactly the test servers that the official `engine.io-protocol`
//! and `socket.io-protocol` test suites describe, on 127.0.0.1:3000 by default.
//!
//! ```text
//! conformance --suite engine.io   # echo server on /engine.io/
//! conformance --suite socket.io   # Socket.IO server on /socket.io/
//! ```

use std::net::SocketAddr;

use anyhow::Context as _;
use chat_node::conformance::{self, Suite};
use clap::Parser;
use tokio::net::TcpListener;

/// Serves the official protocol test suites' server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Which suite's server to run.
    #[arg(long, value_enum)]
    suite: Suite,
    /// The address to listen on (the suites hard-code `http://localhost:3000`).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(suite = ?args.suite, address = %args.listen, "serving");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    conformance::serve(args.suite, listener, shutdown).await?;
    Ok(())
}

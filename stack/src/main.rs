//! The `switchyard` binary: `switchyard up` runs the whole chat stack; the hidden `proxy`
//! and `node` roles are what `up` starts as its child processes (see the `stack` crate docs).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use stack::cli::{Cli, Command};

/// The proxy's allocator (see the `proxy` binary): the proxy role runs in this binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // To stderr: stdout carries `LISTENING` and the banner. `up` prefixes its children's
    // lines. The proxy role gets the proxy's own setup (pingora's records bridged).
    proxy::logging::init(proxy::logging::Output::Stderr);
    let result = match cli.command {
        // pingora builds its own runtimes: the proxy role must not run inside Tokio.
        Command::Proxy { config } => run_proxy(&config),
        Command::Node(args) => runtime().and_then(|rt| rt.block_on(stack::nodes::run_role(*args))),
        Command::Up(args) => runtime().and_then(|rt| rt.block_on(stack::up::up(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")
}

fn run_proxy(config: &std::path::Path) -> anyhow::Result<()> {
    // As the `proxy` binary does: the default connection cap comes from the result.
    proxy::capacity::raise_open_files();
    let config =
        proxy::config::Config::load(config).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    proxy::server::run(config, false)
}

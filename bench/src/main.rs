//! `bench`: compares balancing strategies and proxies (Switchyard, nginx, HAProxy, or no
//! proxy) side by side on loopback, with a progress bar, a summary table and a report folder
//! (results.json, report.md, SVG charts). `bench backend` is the backend it runs.
//!
//! ```text
//! cargo run --release -p bench -- http --targets direct,switchyard:round_robin,nginx,haproxy
//! ```

mod affinity;
mod backend;
mod backends;
mod child;
mod cli;
mod cpulimit;
mod load;
mod procstat;
mod progress;
mod redis;
mod report;
mod scenarios;
mod signals;
mod stats;
mod targets;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some((name, sub)) = matches.subcommand() {
        for warning in cli::unused_flags(name, |flag| {
            sub.value_source(flag) == Some(clap::parser::ValueSource::CommandLine)
        }) {
            eprintln!("bench: {warning}");
        }
    }
    let result = match cli.command {
        Command::Backend(args) => backend::run(args),
        Command::Redraw { folder } => scenarios::redraw(&folder),
        Command::Compare {
            first,
            second,
            markdown,
        } => report::compare::run(&first, &second, markdown),
        cmd => run_scenario(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_scenario(cmd: Command) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Thousands of sockets in ws-hold: take the whole descriptor allowance.
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Ctrl-C, SIGTERM and SIGHUP are handled by the driver (crate::signals): it stops the
    // measurement in progress, writes what was measured and stops every process it started
    // (proxies, backends, redis) through their Drop impls.
    rt.block_on(scenarios::run(cmd))
}

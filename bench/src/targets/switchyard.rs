//! Switchyard's generated TOML: one upstream with the strategy, active HTTP checks every
//! second, short upstream timeouts (so a frozen backend shows up) and long tunnel idle.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{write_config, LaunchOpts, Strategy, Target};

pub(super) fn prepare(
    target: Target,
    listen: SocketAddr,
    backends: &[(String, SocketAddr)],
    opts: &LaunchOpts,
    name: &str,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let strategy = target.strategy.unwrap_or(Strategy::RoundRobin);
    let mut toml = String::new();
    let _ = writeln!(
        toml,
        "[server]\nthreads = {}\ngrace_period = \"0s\"\n",
        opts.workers
    );
    let _ = writeln!(
        toml,
        "[timeouts]\nconnect = \"1s\"\nupstream_read = \"3s\"\ntunnel_idle = \"1h\"\n"
    );
    let _ = writeln!(toml, "[[listeners]]\nlisten = \"{listen}\"\n");
    let _ = writeln!(toml, "[upstreams.b]\nstrategy = \"{}\"", strategy.name());
    let list: Vec<String> = backends
        .iter()
        .map(|(id, addr)| format!("{{ addr = \"{addr}\", id = \"{id}\" }}"))
        .collect();
    let _ = writeln!(toml, "backends = [{}]\n", list.join(", "));
    let _ = writeln!(
        toml,
        "[upstreams.b.health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"1s\"\n\
         timeout = \"500ms\"\nrise = 2\nfall = 2\nmax_fails = 3\nfail_window = \"2s\"\n"
    );
    if strategy == Strategy::StickyCookie {
        let _ = writeln!(
            toml,
            "[upstreams.b.sticky]\ncookie = \"syd_route\"\nkey = \"bench-sticky-key-0123456789\"\n"
        );
    }
    let _ = writeln!(toml, "[[routes]]\npath_prefix = \"/\"\nupstream = \"b\"");
    let path = write_config(&opts.config_dir, &format!("{name}.toml"), &toml)?;
    let program = opts.tools.proxy.clone().context("no proxy binary")?;
    Ok((program, vec!["--config".into(), path.display().to_string()]))
}

//! HAProxy's generated config: `nbthread` workers, HTTP checks every second, a long tunnel
//! timeout, and the closest `balance` algorithm for each strategy.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{write_config, LaunchOpts, Strategy, Target, Unavailable};

/// The `balance` lines for `strategy`, or why there is none.
pub(super) fn balance(strategy: Option<Strategy>) -> Result<&'static str, Unavailable> {
    match strategy.unwrap_or(Strategy::RoundRobin) {
        Strategy::RoundRobin => Ok("balance roundrobin"),
        Strategy::LeastConn => Ok("balance leastconn"),
        Strategy::IpHash => Ok("balance source\n  hash-type consistent"),
        Strategy::StickyCookie => Ok("balance roundrobin\n  cookie SRV insert indirect nocache"),
        Strategy::P2c => Ok("balance random(2)"),
        Strategy::LeastTime => Err(Unavailable::NotApplicable(
            "HAProxy has no response-time balancing",
        )),
    }
}

pub(super) fn prepare(
    target: Target,
    listen: SocketAddr,
    backends: &[(String, SocketAddr)],
    opts: &LaunchOpts,
    name: &str,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let balance = balance(target.strategy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cookies = target.strategy == Some(Strategy::StickyCookie);
    let mut servers = String::new();
    for (id, addr) in backends {
        let cookie = if cookies {
            format!(" cookie {id}")
        } else {
            String::new()
        };
        let _ = writeln!(
            servers,
            "  server {id} {addr}{cookie} check inter 1s fall 2 rise 2"
        );
    }
    // Two descriptors per proxied connection; the hard limit here is 20000.
    let conf = format!(
        "global
  nbthread {workers}
  maxconn 9800
defaults
  mode http
  maxconn 9800
  timeout connect 1s
  timeout client 60s
  timeout server 3s
  timeout tunnel 1h
  option redispatch
  retries 1
frontend f
  bind {listen}
  default_backend b
backend b
  {balance}
  option httpchk GET /healthz
{servers}",
        workers = opts.workers,
    );
    let path = write_config(&opts.config_dir, &format!("{name}.cfg"), &conf)?;
    let program = opts
        .tools
        .haproxy
        .clone()
        .context("haproxy not installed")?;
    Ok((
        program,
        vec!["-db".into(), "-f".into(), path.display().to_string()],
    ))
}

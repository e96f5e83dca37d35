//! nginx's generated config: one worker, upstream keepalive, WebSocket upgrade headers, and
//! the closest OSS equivalent of each strategy. nginx has passive health checks only
//! (`max_fails`/`fail_timeout`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{write_config, LaunchOpts, Strategy, Target, Unavailable};

/// The upstream directive for `strategy`, or why there is none.
pub(super) fn directive(strategy: Option<Strategy>) -> Result<&'static str, Unavailable> {
    match strategy.unwrap_or(Strategy::RoundRobin) {
        Strategy::RoundRobin => Ok(""),
        Strategy::LeastConn => Ok("least_conn;"),
        // `ip_hash` hashes only the first three octets, which puts every 127.0.0.x client on
        // one backend; the full address with a consistent hash is the fair equivalent.
        Strategy::IpHash => Ok("hash $remote_addr consistent;"),
        Strategy::StickyCookie => Err(Unavailable::NotApplicable(
            "sticky cookie is in nginx OSS only from 1.29.6",
        )),
        Strategy::P2c => Ok("random two least_conn;"),
        Strategy::LeastTime => Err(Unavailable::NotApplicable("least_time is nginx Plus only")),
    }
}

pub(super) fn prepare(
    target: Target,
    listen: SocketAddr,
    backends: &[(String, SocketAddr)],
    opts: &LaunchOpts,
    name: &str,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let balance = directive(target.strategy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = opts.config_dir.join(name);
    std::fs::create_dir_all(&dir).context("creating nginx's folder")?;
    let d = dir.display();
    let mut servers = String::new();
    for (_, addr) in backends {
        let _ = writeln!(servers, "    server {addr} max_fails=1 fail_timeout=2s;");
    }
    // Socket.IO (chat, polling) upgrades on /socket.io/: under `location /` nginx dropped
    // the Upgrade header, so `chat --targets nginx` failed with "no client connected";
    // its long-polls are held by the node, so they get the long read timeout too.
    // Keep-alive as Switchyard and HAProxy keep it: with `keepalive 64` nginx held more
    // upstream connections than its idle cache at 50 clients over 3 backends and closed
    // and reopened about 500 a second; its default `keepalive_requests 1000` closed the
    // load generator's connections too. Neither proxy under comparison does either.
    let conf = format!(
        "worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 1h;
  client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream b {{
    {balance}
{servers}    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 1h;
  }}
  server {{
    listen {listen} backlog=4096;
    proxy_http_version 1.1;
    proxy_connect_timeout 1s;
    location / {{
      proxy_pass http://b;
      proxy_set_header Connection \"\";
      proxy_read_timeout 3s;
    }}
    location /ws {{
      proxy_pass http://b;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
    }}
    location /socket.io/ {{
      proxy_pass http://b;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
    }}
  }}
}}
",
        workers = opts.workers,
    );
    let path = write_config(&dir, "nginx.conf", &conf)?;
    let program = opts.tools.nginx.clone().context("nginx not installed")?;
    Ok((
        program,
        vec![
            "-p".into(),
            d.to_string(),
            "-c".into(),
            path.display().to_string(),
            "-e".into(),
            format!("{d}/error.log"),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{Proxy, Tools};

    #[test]
    fn socket_io_is_upgraded() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let opts = LaunchOpts {
            workers: 1,
            pin: Vec::new(),
            tools: Tools {
                proxy: None,
                nginx: Some(PathBuf::from("/usr/sbin/nginx")),
                haproxy: None,
                taskset: false,
            },
            config_dir: tmp.path().to_path_buf(),
        };
        let target = Target {
            proxy: Proxy::Nginx,
            strategy: Some(Strategy::LeastConn),
        };
        let backend: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let listen: SocketAddr = "127.0.0.1:8".parse().expect("addr");
        prepare(target, listen, &[("n1".into(), backend)], &opts, "nginx-lc").expect("prepare");
        let conf = std::fs::read_to_string(tmp.path().join("nginx-lc/nginx.conf")).expect("conf");
        let block = conf
            .split("location /socket.io/ {")
            .nth(1)
            .and_then(|b| b.split('}').next())
            .unwrap_or_default();
        assert!(
            block.contains("proxy_set_header Upgrade $http_upgrade;"),
            "{conf}"
        );
        assert!(block.contains("Connection $connection_upgrade;"), "{conf}");
    }
}

//! Targets: `direct` (no proxy), or a proxy (Switchyard, nginx, HAProxy) with a strategy,
//! started by bench with a generated config, `--workers` workers, pinned to as many CPUs
//! when possible.

mod haproxy;
mod nginx;
mod switchyard;
mod tools;

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

pub use tools::{chat_versions, sibling_bin, tool_versions, Tools};

/// A balancing strategy, named as in Switchyard's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastConn,
    IpHash,
    StickyCookie,
    P2c,
    LeastTime,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::LeastConn,
        Strategy::IpHash,
        Strategy::StickyCookie,
        Strategy::P2c,
        Strategy::LeastTime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConn => "least_conn",
            Strategy::IpHash => "ip_hash",
            Strategy::StickyCookie => "sticky_cookie",
            Strategy::P2c => "p2c",
            Strategy::LeastTime => "least_time",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Strategy> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|k| k.name()).collect();
                format!("unknown strategy {s:?} ({}, or all)", names.join(", "))
            })
    }
}

/// Which process answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proxy {
    Direct,
    Switchyard,
    Nginx,
    Haproxy,
}

/// One entry of `--targets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Target {
    pub proxy: Proxy,
    pub strategy: Option<Strategy>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proxy {
            Proxy::Direct => "direct",
            Proxy::Switchyard => "switchyard",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        };
        match self.strategy {
            Some(s) if self.proxy != Proxy::Direct => write!(f, "{p}:{}", s.name()),
            _ => f.write_str(p),
        }
    }
}

/// Parses `--targets` (or the scenario's default list); `<proxy>:all` expands.
pub fn parse_targets(list: &[String], default_strategy: Strategy) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for item in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (name, strategy) = match item.split_once(':') {
            Some((n, s)) => (n, Some(s)),
            None => (item, None),
        };
        let proxy = match name {
            "direct" => Proxy::Direct,
            "switchyard" => Proxy::Switchyard,
            "nginx" => Proxy::Nginx,
            "haproxy" => Proxy::Haproxy,
            other => bail!("unknown target {other:?} (direct, switchyard, nginx, haproxy)"),
        };
        let mut found = Vec::new();
        if proxy == Proxy::Direct {
            // `direct:least_conn` used to run as plain `direct`, a strategy silently dropped.
            if let Some(s) = strategy {
                bail!("direct takes no strategy (got direct:{s}): it talks to the first backend");
            }
            found.push(Target {
                proxy,
                strategy: None,
            });
        } else {
            match strategy {
                Some("all") => found.extend(Strategy::ALL.into_iter().map(|s| Target {
                    proxy,
                    strategy: Some(s),
                })),
                Some(s) => found.push(Target {
                    proxy,
                    strategy: Some(Strategy::parse(s)?),
                }),
                None => found.push(Target {
                    proxy,
                    strategy: Some(default_strategy),
                }),
            }
        }
        // A target named twice (`switchyard,switchyard:least_conn`, or `nginx:all` next to
        // `nginx:ip_hash`) was measured twice under one name: two identical rows in the
        // table and its runs mixed in results.json. The first mention keeps its place.
        for t in found {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        bail!("no targets");
    }
    Ok(out)
}

/// Settings shared by every launch in a run.
#[derive(Debug, Clone)]
pub struct LaunchOpts {
    pub workers: usize,
    /// CPUs to pin the proxy to (taskset -c); empty: not pinned.
    pub pin: Vec<usize>,
    pub tools: Tools,
    /// Where the generated configs go (kept for the report).
    pub config_dir: PathBuf,
}

/// A started target. The proxy is stopped on drop.
pub struct Running {
    pub target: Target,
    pub addr: SocketAddr,
    /// The proxy's process (nginx: the master; its workers are counted as children).
    pub pid: Option<u32>,
    /// The command line that started it, for the report.
    pub command: String,
    child: Option<Child>,
}

impl Running {
    pub fn cpu_seconds(&self) -> f64 {
        self.pid.map(crate::procstat::cpu_seconds).unwrap_or(0.0)
    }

    pub fn rss_kib(&self) -> u64 {
        self.pid.map(crate::procstat::rss_kib).unwrap_or(0)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

/// SIGTERM, then SIGKILL after a moment: nginx's master must stop its workers itself
/// (killed outright, it leaves them running).
fn stop(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a target could not run: not applicable (no equivalent strategy) or not installed.
#[derive(Debug, Clone)]
pub enum Unavailable {
    NotApplicable(&'static str),
    Missing(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotApplicable(why) => write!(f, "n/a ({why})"),
            Unavailable::Missing(why) => write!(f, "skipped ({why})"),
        }
    }
}

/// Whether `target` can run here, without starting it.
pub fn availability(target: Target, tools: &Tools) -> Result<(), Unavailable> {
    match target.proxy {
        Proxy::Direct => Ok(()),
        Proxy::Switchyard => match &tools.proxy {
            Some(_) => Ok(()),
            None => Err(Unavailable::Missing(
                "proxy binary not found: cargo build --release -p proxy, or --proxy-bin".into(),
            )),
        },
        Proxy::Nginx => {
            tools.nginx.as_ref().ok_or_else(|| {
                Unavailable::Missing(
                    "nginx not installed: apt-get install nginx, or run bench with --install"
                        .into(),
                )
            })?;
            nginx::directive(target.strategy).map(|_| ())
        }
        Proxy::Haproxy => {
            tools.haproxy.as_ref().ok_or_else(|| {
                Unavailable::Missing(
                    "haproxy not installed: apt-get install haproxy, or run bench with --install"
                        .into(),
                )
            })?;
            haproxy::balance(target.strategy).map(|_| ())
        }
    }
}

/// Starts `target` in front of `backends` (ids and addresses) and waits until it answers.
pub fn launch(
    target: Target,
    backends: &[(String, SocketAddr)],
    opts: &LaunchOpts,
) -> anyhow::Result<Running> {
    if target.proxy == Proxy::Direct {
        let Some((_, addr)) = backends.first() else {
            bail!("no backends");
        };
        return Ok(Running {
            target,
            addr: *addr,
            pid: None,
            command: String::new(),
            child: None,
        });
    }
    let port = free_port()?;
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    std::fs::create_dir_all(&opts.config_dir).context("creating the config folder")?;
    let name = target.to_string().replace(':', "-");
    let (program, args) = match target.proxy {
        Proxy::Switchyard => switchyard::prepare(target, listen, backends, opts, &name)?,
        Proxy::Nginx => nginx::prepare(target, listen, backends, opts, &name)?,
        Proxy::Haproxy => haproxy::prepare(target, listen, backends, opts, &name)?,
        Proxy::Direct => unreachable!("handled above"),
    };
    let mut cmd = if !opts.pin.is_empty() && opts.tools.taskset {
        let list: Vec<String> = opts.pin.iter().map(ToString::to_string).collect();
        let mut c = crate::child::command("taskset");
        c.arg("-c").arg(list.join(",")).arg(&program);
        c
    } else {
        crate::child::command(&program)
    };
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let command = describe(&cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id();
    let mut running = Running {
        target,
        addr: listen,
        pid: Some(pid),
        command,
        child: Some(child),
    };
    // A proxy that exits at once (a config it refuses, a wrong --proxy-bin) was waited for
    // the whole 10 s and reported as "not ready", which sent users looking at the network.
    let exited = || {
        let status = running.child.as_mut()?.try_wait().ok()??;
        Some(format!(
            "it exited ({status}) before answering; run `{}` to see why",
            running.command
        ))
    };
    wait_ready(listen, Duration::from_secs(10), exited)
        .with_context(|| format!("{target} did not answer on {listen}"))?;
    Ok(running)
}

fn describe(cmd: &Command) -> String {
    let words: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    crate::child::shell_line(words.iter().map(String::as_str))
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Polls `GET /healthz` until it answers 200 or `timeout` passes, or `gone` says why it
/// never will.
pub fn wait_ready(
    addr: SocketAddr,
    timeout: Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(why) = gone() {
            bail!("{why}");
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let req = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
            let mut buf = [0u8; 64];
            if s.write_all(req).is_ok() {
                if let Ok(n) = s.read(&mut buf) {
                    if buf[..n].starts_with(b"HTTP/1.1 200") {
                        return Ok(());
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("not ready after {timeout:?}")
}

/// Writes a generated config file.
fn write_config(dir: &Path, file: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_names_the_valid_choices() {
        let list = |s: &str| vec![s.to_owned()];
        let e = parse_targets(&list("switchyard:roundrobin"), Strategy::RoundRobin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("\"roundrobin\"") && e.contains("round_robin"),
            "{e}"
        );
        assert!(e.contains("least_time") && e.contains("all"), "{e}");
        let e = parse_targets(&list("ngnix"), Strategy::RoundRobin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("direct, switchyard, nginx, haproxy"), "{e}");
        assert!(parse_targets(&list("nginx:all"), Strategy::RoundRobin)
            .is_ok_and(|t| t.len() == Strategy::ALL.len()));
    }

    #[test]
    fn a_target_named_twice_is_measured_once() {
        let list: Vec<String> = ["switchyard", "direct", "switchyard:least_conn", "nginx:all"]
            .into_iter()
            .chain(["nginx:ip_hash", "direct"])
            .map(str::to_owned)
            .collect();
        let names: Vec<String> = parse_targets(&list, Strategy::LeastConn)
            .map(|t| t.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        assert_eq!(names.len(), 2 + Strategy::ALL.len(), "{names:?}");
        assert_eq!(
            names[..3],
            ["switchyard:least_conn", "direct", "nginx:round_robin"]
        );
    }

    #[test]
    fn a_proxy_that_exited_is_not_waited_for() {
        let port = free_port().expect("a free port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let start = Instant::now();
        let e = wait_ready(addr, Duration::from_secs(10), || {
            Some("it exited (3)".into())
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(e, "it exited (3)");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn direct_with_a_strategy_is_refused() {
        let e = parse_targets(&["direct:least_conn".to_owned()], Strategy::RoundRobin)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("direct takes no strategy"), "{e}");
    }
}

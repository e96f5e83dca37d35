//! The set of backends behind every target: `bench backend` processes (or chat nodes for the
//! Socket.IO scenarios), separate so a scenario can kill, freeze (SIGSTOP) and restart one
//! on its old port.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::cpulimit::CpuLimit;
use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One backend process.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    program: PathBuf,
    /// Arguments after `--listen <addr>`.
    args: Vec<String>,
    child: Option<Child>,
}

/// The backends of one measurement; killed on drop.
pub struct Backends {
    pub list: Vec<Backend>,
    /// Dropped after the processes (field order): the kernel removes only an empty group.
    cpu_limit: Option<CpuLimit>,
    /// The redis-server the chat nodes share (counted apart).
    redis_pid: Option<u32>,
    redis_in_budget: bool,
}

impl Backends {
    /// Starts `delays.len()` backends `b1..bN` on free ports.
    pub fn start(delays: &[Duration]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let specs = delays.iter().enumerate().map(|(i, delay)| {
            let id = format!("b{}", i + 1);
            let args = vec![
                "--id".to_owned(),
                id.clone(),
                "--delay".to_owned(),
                format!("{}ms", delay.as_millis()),
            ];
            (id, args)
        });
        Self::start_with(&exe, &["backend"], specs)
    }

    /// Starts chat nodes `n1..nN` (`chat-node --node-id nK <args>`).
    pub fn start_chat(bin: &Path, n: usize, args: &[String]) -> anyhow::Result<Self> {
        let specs = (1..=n).map(|k| {
            let id = format!("n{k}");
            let mut a = vec!["--node-id".to_owned(), id.clone()];
            a.extend(args.iter().cloned());
            (id, a)
        });
        Self::start_with(bin, &[], specs)
    }

    /// The folder of the reference Node.js cluster: `explicit` (--node-dir), else bench/node
    /// of the source tree this bench was built from. An error when it cannot run from there.
    pub fn node_reference_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
        let dir = explicit.map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("node"),
            Path::to_path_buf,
        );
        if !dir.join("server.mjs").is_file() {
            bail!(
                "no Node.js reference in {} (no server.mjs): --node-dir names the folder \
                 holding it (bench/node of the source tree)",
                dir.display()
            );
        }
        if !dir.join("node_modules").is_dir() {
            bail!(
                "the Node.js reference is not installed: npm ci --prefix {}",
                dir.display()
            );
        }
        Ok(dir)
    }

    /// Starts the reference Node.js socket.io nodes (`dir`/server.mjs) with `args`.
    pub fn start_node_reference(dir: &Path, n: usize, args: &[String]) -> anyhow::Result<Self> {
        let script = dir.join("server.mjs").display().to_string();
        let specs = (1..=n).map(|k| {
            let id = format!("n{k}");
            let mut a = vec!["--node-id".to_owned(), id.clone()];
            a.extend(args.iter().cloned());
            (id, a)
        });
        Self::start_with(Path::new("node"), &[script.as_str()], specs)
    }

    /// CPU seconds used so far by all backend processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.list
            .iter()
            .filter_map(|b| b.child.as_ref())
            .map(|c| crate::procstat::cpu_seconds(c.id()))
            .sum()
    }

    fn start_with(
        program: &Path,
        sub: &[&str],
        specs: impl Iterator<Item = (String, Vec<String>)>,
    ) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        for (id, rest) in specs {
            let mut args: Vec<String> = sub.iter().map(|s| (*s).to_owned()).collect();
            args.push("--listen".to_owned());
            args.push("{listen}".to_owned());
            args.extend(rest);
            let (child, addr) = spawn(&id, program, &args, "127.0.0.1:0".parse()?)?;
            list.push(Backend {
                id,
                addr,
                program: program.to_path_buf(),
                args,
                child: Some(child),
            });
        }
        Ok(Backends {
            list,
            cpu_limit: None,
            redis_pid: None,
            redis_in_budget: false,
        })
    }

    /// Puts every backend process into one cgroup limited to `cpus` CPUs in total, on CPU
    /// `pin` if given.
    pub fn limit_cpu(&mut self, cpus: f64, pin: Option<usize>) -> anyhow::Result<()> {
        let limit = CpuLimit::create(cpus, pin)?;
        for c in self.list.iter().filter_map(|b| b.child.as_ref()) {
            limit.add(c.id())?;
        }
        self.cpu_limit = Some(limit);
        Ok(())
    }

    /// Counts the CPU of the redis-server the backends use; with `in_budget`, it joins
    /// their CPU limit (until the limit is dropped).
    pub fn count_redis(&mut self, pid: u32, in_budget: bool) -> anyhow::Result<()> {
        self.redis_pid = Some(pid);
        if let (true, Some(limit)) = (in_budget, &self.cpu_limit) {
            limit.add(pid)?;
            self.redis_in_budget = true;
        }
        Ok(())
    }

    /// Whether the redis-server shares the backends' CPU limit.
    pub fn redis_in_budget(&self) -> bool {
        self.redis_in_budget
    }

    /// CPU seconds used so far by the backends' redis-server, if counted.
    pub fn redis_cpu_seconds(&self) -> Option<f64> {
        self.redis_pid.map(crate::procstat::cpu_seconds)
    }

    /// The CPU budget the backends share, if any.
    pub fn cpu_limit(&self) -> Option<&CpuLimit> {
        self.cpu_limit.as_ref()
    }

    pub fn ids(&self) -> Vec<String> {
        self.list.iter().map(|b| b.id.clone()).collect()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list.iter().map(|b| b.addr).collect()
    }

    /// SIGKILL, reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.list.get_mut(i).and_then(|b| b.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, i: usize, sig: Signal) {
        if let Some(c) = self.list.get(i).and_then(|b| b.child.as_ref()) {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
    }

    /// Starts a killed backend again on its old port.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(b) = self.list.get_mut(i) else {
            bail!("no backend {i}");
        };
        if b.child.is_some() {
            return Ok(());
        }
        // The old socket may linger briefly in the kernel; retry the bind for a moment.
        let mut last = None;
        for _ in 0..50 {
            match spawn(&b.id, &b.program, &b.args, b.addr) {
                Ok((mut child, _)) => {
                    if let Some(limit) = &self.cpu_limit {
                        if let Err(e) = limit.add(child.id()) {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(e);
                        }
                    }
                    b.child = Some(child);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("restart failed")))
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for i in 0..self.list.len() {
            // A frozen process ignores nothing but SIGKILL; continue it anyway so it exits.
            self.signal(i, Signal::SIGCONT);
            self.kill(i);
        }
    }
}

/// Starts `program args` with `{listen}` replaced by `listen` and reads the
/// `LISTENING <addr>` line it prints once bound.
fn spawn(
    id: &str,
    program: &Path,
    args: &[String],
    listen: SocketAddr,
) -> anyhow::Result<(Child, SocketAddr)> {
    let listen_s = listen.to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if a == "{listen}" {
                listen_s.as_str()
            } else {
                a.as_str()
            }
        })
        .collect();
    let mut child = crate::child::command(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    let Some(out) = child.stdout.take() else {
        bail!("backend without stdout");
    };
    let mut line = String::new();
    let read = BufReader::new(out).read_line(&mut line);
    match (read, line.trim().strip_prefix("LISTENING ")) {
        (Ok(_), Some(addr)) => {
            let addr = addr.parse().context("parsing the backend address")?;
            Ok((child, addr))
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("backend {id} did not start on {listen}")
        }
    }
}

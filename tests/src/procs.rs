//! Child processes: locating binaries, free ports, the echo [`Backend`] and the [`Proxy`].
//!
//! Everything here is synchronous (std processes, blocking waits with deadlines), so it works
//! from `#[test]` and `#[tokio::test]` alike; the waits are short (a process starting up).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::wait::{wait_until_blocking, POLL};

/// How long a child gets to report `LISTENING` or to accept TCP on its listeners.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dropped proxy gets to exit after SIGINT before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Once per test process: raise the soft `RLIMIT_NOFILE` to the hard limit (children inherit
/// it), since some tests hold thousands of sockets. Every harness entry point calls this.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
            eprintln!("harness: could not raise RLIMIT_NOFILE: {e}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Binaries

/// The directory holding the workspace's built binaries: `$SWITCHYARD_BIN_DIR` if set, else
/// derived from the running test executable (`…/target/debug/deps/x` → `…/target/debug`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path is readable");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    // Test and bench executables live in deps/, examples in examples/; binaries one level up.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// The path of the workspace binary `name` (`echo-backend`, `proxy`, …).
///
/// # Panics
/// If it has not been built, with the command that builds it.
pub fn bin_path(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --workspace --bins` before \
             `cargo test` (or set SWITCHYARD_BIN_DIR)",
            path.display()
        );
    }
    path
}

// ---------------------------------------------------------------------------------------------
// Ports

/// Ports handed out by this process, never handed out twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// `n` distinct free TCP ports on 127.0.0.1, for processes that bind fixed addresses from their
/// configuration (the proxy). They are free when returned, not reserved: they are chosen below
/// the kernel's ephemeral range (`ip_local_port_range`), at random, so neither the many
/// outgoing connections of a test nor another test process is likely to take them before the
/// child binds. A port is never returned twice within one test process.
pub fn ports(n: usize) -> Vec<u16> {
    init();
    let (lo, hi) = candidate_range();
    let span = u32::from(hi - lo);
    let mut rng = seed();
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    let mut out = Vec::with_capacity(n);
    let mut attempts = 0u32;
    while out.len() < n {
        attempts += 1;
        assert!(attempts < 100_000, "no free ports found in {lo}..{hi}");
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // `span` fits in u16, so the sum stays within the range.
        let port = lo + u16::try_from(rng % u64::from(span)).unwrap_or(0);
        if used.contains(&port) || out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            out.push(port);
        }
    }
    out
}

/// One free port; see [`ports`].
pub fn free_port() -> u16 {
    ports(1)[0]
}

/// `N` free ports as an array, to name them: `let [plain, tls] = port_array();`. See [`ports`].
pub fn port_array<const N: usize>() -> [u16; N] {
    let mut out = [0; N];
    out.copy_from_slice(&ports(N));
    out
}

/// Ports below the ephemeral range, at least 10000.
fn candidate_range() -> (u16, u16) {
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    if ephemeral_lo > 12_000 {
        (10_000, ephemeral_lo)
    } else {
        // Unusual kernel setting: fall back to a high range and rely on the bind check.
        (50_000, 65_000)
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() | 1
}

// ---------------------------------------------------------------------------------------------
// Process plumbing

pub(crate) fn send_signal(child: &Child, sig: Signal) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // ESRCH (already gone) is fine.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// SIGSTOPs `child` (a hung process: its sockets stay open, the kernel still accepts and
/// buffers, it runs nothing) until the returned guard is dropped (SIGCONT), a panicking
/// test's included.
pub(crate) fn stop_until_dropped(child: Option<&Child>) -> Stopped<'_> {
    if let Some(child) = child {
        send_signal(child, Signal::SIGSTOP);
    }
    Stopped { child }
}

/// A process stopped by a `freeze` ([`crate::chatnode::ChatNode::freeze`],
/// [`crate::redis::RedisServer::freeze`]): it runs again (SIGCONT) when this is dropped.
#[must_use = "the process runs again as soon as this is dropped"]
pub struct Stopped<'a> {
    child: Option<&'a Child>,
}

impl Stopped<'_> {
    /// Lets the process run again.
    pub fn thaw(self) {}
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(child) = self.child {
            send_signal(child, Signal::SIGCONT);
        }
    }
}

pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to `timeout` for `child` to exit.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// A child process, or none once it has been killed or reaped; the process handling shared by
/// [`Backend`] and [`Proxy`].
#[derive(Default)]
struct ChildSlot(Option<Child>);

impl ChildSlot {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    fn is_running(&mut self) -> bool {
        matches!(self.0.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The exit status if the process has exited (it is then reaped and the slot empty).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.0.as_mut()?.try_wait().ok()??;
        self.0 = None;
        Some(status)
    }

    fn signal(&self, sig: Signal) {
        if let Some(child) = &self.0 {
            send_signal(child, sig);
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Waits up to `timeout` for the exit; `None` if it is still running.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_exit(self.0.as_mut()?, timeout);
        if status.is_some() {
            self.0 = None;
        }
        status
    }

    /// Sends `sig` and waits up to `timeout` for the exit; `None` if it is still running.
    fn signal_and_wait(&mut self, sig: Signal, timeout: Duration) -> Option<ExitStatus> {
        let child = self.0.as_mut()?;
        send_signal(child, sig);
        let status = wait_exit(child, timeout);
        if status.is_some() {
            self.0 = None;
        }
        status
    }
}

pub(crate) fn read_file_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads `child`'s stdout until a `LISTENING <addr>` line, then keeps draining it in the
/// background so the child never blocks on a full pipe.
pub(crate) fn read_listening(stdout: ChildStdout, timeout: Duration) -> Result<SocketAddr, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("LISTENING ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(
                        rest.trim()
                            .parse::<SocketAddr>()
                            .map_err(|e| format!("bad LISTENING line {line:?}: {e}")),
                    );
                }
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err("stdout closed before a LISTENING line".into()));
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(format!("no LISTENING line within {timeout:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Backend

/// A running `echo-backend` process (see its module docs for the routes). Killed on drop.
pub struct Backend {
    id: String,
    addr: SocketAddr,
    extra: Vec<String>,
    child: ChildSlot,
    dir: TempDir,
}

impl Backend {
    /// Starts `echo-backend --id <id>` on 127.0.0.1 port 0.
    pub fn start(id: &str) -> Backend {
        Self::start_with(id, &[])
    }

    /// Starts a backend with extra arguments, e.g. `&["--delay-ms", "50"]` or
    /// `&["--tls-cert", cert, "--tls-key", key]`.
    pub fn start_with(id: &str, extra: &[&str]) -> Backend {
        Self::start_on(id, "127.0.0.1:0".parse().expect("literal address"), extra)
    }

    /// Starts a backend on a given address (e.g. `127.0.0.2:0`).
    pub fn start_on(id: &str, listen: SocketAddr, extra: &[&str]) -> Backend {
        init();
        let dir = tempfile::Builder::new()
            .prefix(&format!("echo-backend-{id}-"))
            .tempdir()
            .expect("creating a temp dir for backend logs");
        let mut b = Backend {
            id: id.to_owned(),
            addr: listen,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: ChildSlot::default(),
            dir,
        };
        let (child, addr) = b.spawn(listen).unwrap_or_else(|e| panic!("{e}"));
        b.child = ChildSlot(Some(child));
        b.addr = addr;
        b
    }

    /// Starts one backend per id.
    pub fn start_many(ids: &[&str]) -> Vec<Backend> {
        ids.iter().map(|id| Backend::start(id)).collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn spawn(&self, listen: SocketAddr) -> Result<(Child, SocketAddr), String> {
        let bin = bin_path("echo-backend");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening backend log: {e}"))?;
        // Where this start's messages begin in the log, which earlier starts share.
        let logged_before = read_file_lossy(&self.log_path()).len();
        let mut child = Command::new(&bin)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--id")
            .arg(&self.id)
            .arg("--exit-on-stdin-close")
            .args(&self.extra)
            // A backtrace would push the error itself out of the log's tail below.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        match read_listening(stdout, START_TIMEOUT) {
            Ok(addr) => Ok((child, addr)),
            Err(e) => {
                kill_and_reap(&mut child);
                let log = read_file_lossy(&self.log_path());
                // `restart` retries while the port is still held; say so up front, whatever
                // the tail shows.
                let cause = if log
                    .get(logged_before..)
                    .is_some_and(|l| l.contains("in use"))
                {
                    " (address in use)"
                } else {
                    ""
                };
                Err(format!(
                    "echo-backend {} on {listen} failed to start{cause}: {e}\n--- stderr ---\n{}",
                    self.id,
                    tail(&log, 50)
                ))
            }
        }
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bound address (stable across [`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://<addr><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether the process is alive (a stopped process counts as alive).
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL and reap: connections are reset, the port is free.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGSTOP: the listening socket stays (the kernel still completes handshakes into the
    /// backlog) but nothing is answered — a hung backend.
    pub fn stop(&self) {
        self.child.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&self) {
        self.child.signal(Signal::SIGCONT);
    }

    /// Kills the process (if running) and starts it again on the same address, retrying the
    /// bind for up to 10 s. State (health switch, counters) starts fresh.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn(self.addr) {
                Ok((child, _)) => {
                    self.child = ChildSlot(Some(child));
                    return;
                }
                Err(e) if Instant::now() < deadline && e.contains("in use") => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("restart: {e}"),
            }
        }
    }

    /// The backend's stderr so far (warnings; `RUST_LOG` raises the level).
    pub fn logs(&self) -> String {
        read_file_lossy(&self.log_path())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            if !logs.trim().is_empty() {
                eprintln!(
                    "--- echo-backend {} stderr (tail) ---\n{}",
                    self.id,
                    tail(&logs, 40)
                );
            }
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Proxy

/// How a proxy process is launched; [`Proxy::start_quick`] and [`Proxy::start_config`] cover
/// the common cases.
#[derive(Clone, Debug, Default)]
pub struct ProxyCmd {
    /// Arguments before `--config <file>` (a subcommand such as `check`).
    pre: Vec<String>,
    /// Arguments after it (all of quick mode).
    args: Vec<String>,
    config: Option<String>,
    env: Vec<(String, String)>,
    wait_for: Vec<SocketAddr>,
    no_auto_admin: bool,
    /// A program (and its arguments) that runs the proxy: `<via…> <proxy> <args…>`.
    via: Vec<String>,
}

/// A finished process: exit status and its output.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together, for messages.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Asserts the process refused to run as a program should: a failing exit code (not a
    /// signal) and no panic. Returns [`output`](Self::output), to check the message; `what`
    /// starts the assertion messages.
    pub fn expect_refusal(&self, what: &str) -> String {
        let all = self.output();
        assert!(!self.status.success(), "{what}: exited successfully: {all}");
        assert!(
            self.code().is_some(),
            "{what}: killed by a signal, not an error: {all}"
        );
        assert!(!all.contains("panicked"), "{what}: panicked: {all}");
        all
    }
}

/// One listener found in the proxy's arguments or config.
#[derive(Clone, Copy, Debug)]
struct Listen {
    addr: SocketAddr,
    tls: bool,
}

impl ProxyCmd {
    /// Quick mode: `proxy <args…>`. When `args` has `--listen` but no `--admin`, the harness
    /// adds `--admin 127.0.0.1:<free port>` so parallel tests never meet on the default port.
    pub fn quick(args: &[&str]) -> Self {
        ProxyCmd {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Config mode: `proxy --config <dir>/proxy.toml`. When the TOML has no `[admin]` table,
    /// the harness appends one on a free port (same reason as in quick mode).
    pub fn config(toml: &str) -> Self {
        ProxyCmd {
            config: Some(toml.to_owned()),
            ..Default::default()
        }
    }

    /// `proxy check --config <file>`.
    pub fn check(toml: &str) -> Self {
        let mut cmd = Self::config(toml);
        cmd.pre.push("check".into());
        cmd.no_auto_admin = true;
        cmd
    }

    /// Adds an argument (after `--config <file>` in config mode).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the child (e.g. an HMAC key or admin token).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Also waits for `addr` to accept TCP before [`start`](Self::start) returns.
    pub fn wait_for(mut self, addr: SocketAddr) -> Self {
        self.wait_for.push(addr);
        self
    }

    /// Runs the proxy through `program` (which must end by exec'ing its remaining arguments,
    /// so that the proxy keeps the pid the harness signals): `unshare … sh -c '…; exec "$@"'`.
    pub fn via(mut self, program: &[&str]) -> Self {
        self.via = program.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Leaves the admin listener as given (no automatic `--admin` / `[admin]`).
    pub fn no_auto_admin(mut self) -> Self {
        self.no_auto_admin = true;
        self
    }

    /// Adds the automatic admin listener where needed; returns the listeners to wait for and
    /// the admin address.
    fn prepare(&mut self) -> (Vec<Listen>, Option<SocketAddr>) {
        let mut listens = Vec::new();
        let mut admin = None;
        if let Some(toml) = &mut self.config {
            let Ok(table) = toml.parse::<toml::Table>() else {
                // Not valid TOML: the proxy will say so; nothing to wait for.
                return (listens, None);
            };
            if !table.contains_key("admin") && !self.no_auto_admin {
                let port = free_port();
                toml.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
                admin = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            }
            collect_listens(&toml::Value::Table(table), "", &mut listens, &mut admin);
        } else {
            let mut it = self.args.iter();
            let mut saw_listen = false;
            while let Some(a) = it.next() {
                let (flag, inline) = match a.split_once('=') {
                    Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                    _ => (a.as_str(), None),
                };
                if !matches!(flag, "--listen" | "--tls-listen" | "--admin") {
                    continue;
                }
                let Some(value) = inline.or_else(|| it.next().cloned()) else {
                    continue;
                };
                let Ok(addr) = value.parse::<SocketAddr>() else {
                    continue;
                };
                match flag {
                    "--admin" => admin = Some(addr),
                    "--tls-listen" => listens.push(Listen { addr, tls: true }),
                    _ => {
                        saw_listen = true;
                        listens.push(Listen { addr, tls: false });
                    }
                }
            }
            if saw_listen && admin.is_none() && !self.no_auto_admin {
                let port = free_port();
                self.args.push("--admin".into());
                self.args.push(format!("127.0.0.1:{port}"));
                admin = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
        (listens, admin)
    }

    fn spawn(&mut self, dir: &Path) -> (Child, Option<PathBuf>) {
        init();
        let bin = bin_path("proxy");
        let mut cmd = match self.via.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.args(&self.pre);
        let mut config_path = None;
        if let Some(toml) = &self.config {
            let path = dir.join("proxy.toml");
            std::fs::write(&path, toml).expect("writing the proxy config");
            cmd.arg("--config").arg(&path);
            config_path = Some(path);
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let stdout = File::create(dir.join("stdout.log")).expect("creating stdout.log");
        let stderr = File::create(dir.join("stderr.log")).expect("creating stderr.log");
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        (child, config_path)
    }

    /// Starts the proxy and waits (up to 10 s) until every listener it was given (and the admin
    /// listener) accepts TCP.
    ///
    /// # Panics
    /// If the proxy exits or does not listen in time, with its output.
    pub fn start(mut self) -> Proxy {
        let (listens, admin) = self.prepare();
        let dir = proxy_dir();
        let (child, config_path) = self.spawn(dir.path());
        let mut proxy = Proxy {
            child: ChildSlot(Some(child)),
            dir,
            config_path,
            listens,
            admin,
        };
        let mut targets: Vec<SocketAddr> = proxy.listens.iter().map(|l| l.addr).collect();
        targets.extend(proxy.admin);
        targets.extend(self.wait_for.iter().copied());
        let deadline = Instant::now() + START_TIMEOUT;
        for addr in targets {
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(status) = proxy.child.exited() {
                    panic!(
                        "proxy exited ({status}) before listening on {addr}\n{}",
                        proxy.logs()
                    );
                }
                if Instant::now() >= deadline {
                    panic!(
                        "proxy did not accept TCP on {addr} within {START_TIMEOUT:?}\n{}",
                        proxy.logs()
                    );
                }
                std::thread::sleep(POLL);
            }
        }
        proxy
    }

    /// Runs the proxy to completion (a `check`, `gen-cert`, or a start that must fail) and
    /// returns its status and output; panics if it runs longer than `timeout`.
    pub fn run_to_exit(mut self, timeout: Duration) -> Exited {
        let dir = proxy_dir();
        let (mut child, _) = self.spawn(dir.path());
        let status = wait_exit(&mut child, timeout);
        let stdout = read_file_lossy(&dir.path().join("stdout.log"));
        let stderr = read_file_lossy(&dir.path().join("stderr.log"));
        match status {
            Some(status) => Exited {
                status,
                stdout,
                stderr,
            },
            None => {
                kill_and_reap(&mut child);
                panic!(
                    "proxy still running after {timeout:?}\n--- stdout ---\n{stdout}\n--- stderr \
                     ---\n{stderr}"
                );
            }
        }
    }
}

/// A fresh working directory for a proxy process (its config and logs).
fn proxy_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("switchyard-proxy-")
        .tempdir()
        .expect("creating a temp dir for the proxy")
}

/// Finds `listen = "<addr>"` keys anywhere in the config; `admin.listen` is the admin listener,
/// a table that also has a `tls` key is a TLS listener.
fn collect_listens(
    value: &toml::Value,
    path: &str,
    out: &mut Vec<Listen>,
    admin: &mut Option<SocketAddr>,
) {
    match value {
        toml::Value::Table(t) => {
            if let Some(addr) = t
                .get("listen")
                .and_then(toml::Value::as_str)
                .and_then(|s| s.parse::<SocketAddr>().ok())
            {
                if path == "admin" {
                    *admin = Some(addr);
                } else {
                    out.push(Listen {
                        addr,
                        tls: t.contains_key("tls"),
                    });
                }
            }
            for (k, v) in t {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                collect_listens(v, &sub, out, admin);
            }
        }
        toml::Value::Array(items) => {
            for v in items {
                collect_listens(v, path, out, admin);
            }
        }
        _ => {}
    }
}

/// A running `proxy` process. Stopped on drop (SIGINT, then SIGKILL after 2 s); when the test
/// is panicking, its log tail is printed first.
pub struct Proxy {
    child: ChildSlot,
    dir: TempDir,
    config_path: Option<PathBuf>,
    listens: Vec<Listen>,
    admin: Option<SocketAddr>,
}

impl Proxy {
    /// `proxy <args…>` in quick mode; see [`ProxyCmd::quick`]. Get ports from [`ports`].
    pub fn start_quick(args: &[&str]) -> Proxy {
        ProxyCmd::quick(args).start()
    }

    /// `proxy --config <file>` with `toml` written to a temp dir; see [`ProxyCmd::config`].
    /// Put ports from [`ports`] into the TOML (`format!`).
    pub fn start_config(toml: &str) -> Proxy {
        ProxyCmd::config(toml).start()
    }

    /// `proxy check --config <file>`: exit status and output.
    pub fn check(toml: &str) -> Exited {
        ProxyCmd::check(toml).run_to_exit(START_TIMEOUT)
    }

    /// `proxy gen-cert --out <dir>`: writes `ca.pem`, `ca-key.pem`, `localhost.pem`,
    /// `localhost-key.pem`.
    pub fn gen_cert(out: &Path) -> Exited {
        ProxyCmd::quick(&["gen-cert", "--out"])
            .arg(out.to_string_lossy())
            .no_auto_admin()
            .run_to_exit(Duration::from_secs(30))
    }

    /// The first plain listener (else the first listener).
    pub fn addr(&self) -> SocketAddr {
        self.listens
            .iter()
            .find(|l| !l.tls)
            .or(self.listens.first())
            .map(|l| l.addr)
            .expect("the proxy was started with a listener")
    }

    /// The first TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        self.listens
            .iter()
            .find(|l| l.tls)
            .map(|l| l.addr)
            .expect("the proxy was started with a TLS listener")
    }

    /// Every listener found in the arguments or config (admin excluded), in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.listens.iter().map(|l| l.addr).collect()
    }

    /// `http://<addr><path>` on the first plain listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `ws://<addr><path>` on the first plain listener.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// `https://localhost:<port><path>` on the first TLS listener (the dev certificate is for
    /// `localhost`; the TLS clients resolve it to 127.0.0.1).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.tls_addr().port())
    }

    /// `wss://localhost:<port><path>` on the first TLS listener.
    pub fn wss_url(&self, path: &str) -> String {
        format!("wss://localhost:{}{path}", self.tls_addr().port())
    }

    /// The admin listener (given, or added by the harness).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("the proxy has an admin listener")
        )
    }

    /// The proxy's working directory (a temp dir holding the config and the logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file, in config mode.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Replaces the config file's contents (without signalling).
    pub fn write_config(&self, toml: &str) {
        let path = self
            .config_path
            .as_ref()
            .expect("the proxy runs from a config file");
        // Write-then-rename so the proxy never reads half a file.
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, toml).expect("writing the new config");
        std::fs::rename(&tmp, path).expect("renaming the new config into place");
    }

    /// Writes a new config and sends SIGHUP. Wait for its effect with [`crate::wait_until`].
    pub fn reload(&self, toml: &str) {
        self.write_config(toml);
        self.signal(Signal::SIGHUP);
    }

    /// Sends a signal to the proxy process.
    pub fn signal(&self, sig: Signal) {
        self.child.signal(sig);
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Sends `sig` and waits up to `timeout` for the exit; `None` if it is still running.
    pub fn signal_and_wait(&mut self, sig: Signal, timeout: Duration) -> Option<ExitStatus> {
        self.child.signal_and_wait(sig, timeout)
    }

    /// Waits up to `timeout` for the proxy to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait(timeout)
    }

    /// Blocks until the proxy's stdout or stderr contains `needle` (bounded by `timeout`).
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_until_blocking(
            timeout,
            &format!("proxy log line containing {needle:?}"),
            || self.logs().contains(needle),
        );
    }

    /// stdout and stderr so far, labelled.
    pub fn logs(&self) -> String {
        format!(
            "--- proxy stdout ---\n{}\n--- proxy stderr ---\n{}",
            read_file_lossy(&self.dir.path().join("stdout.log")),
            read_file_lossy(&self.dir.path().join("stderr.log"))
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.logs(), 80));
        }
        if self.signal_and_wait(Signal::SIGINT, EXIT_GRACE).is_none() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_args_give_listeners_and_an_automatic_admin() {
        let mut cmd = ProxyCmd::quick(&[
            "--listen",
            "127.0.0.1:1001",
            "--backend",
            "127.0.0.1:9",
            "--tls-listen=127.0.0.1:1002",
        ]);
        let (listens, admin) = cmd.prepare();
        let got: Vec<_> = listens.iter().map(|l| (l.addr.port(), l.tls)).collect();
        assert_eq!(got, vec![(1001, false), (1002, true)]);
        let admin = admin.expect("an admin listener was added");
        assert_eq!(cmd.args[cmd.args.len() - 2], "--admin");
        assert_eq!(cmd.args[cmd.args.len() - 1], admin.to_string());
    }

    #[test]
    fn given_admin_is_kept() {
        let mut cmd = ProxyCmd::quick(&["--listen", "127.0.0.1:1001", "--admin", "127.0.0.1:7"]);
        let (_, admin) = cmd.prepare();
        assert_eq!(admin, Some("127.0.0.1:7".parse().expect("literal")));
        assert_eq!(cmd.args.len(), 4);
    }

    #[test]
    fn config_listeners_are_found_and_admin_appended() {
        let mut cmd = ProxyCmd::config(
            r#"
[[listeners]]
listen = "127.0.0.1:2001"

[[listeners]]
listen = "127.0.0.1:2002"
tls = { cert = "c.pem", key = "k.pem" }

[upstreams.a]
backends = [{ addr = "127.0.0.1:9" }]
"#,
        );
        let (listens, admin) = cmd.prepare();
        let got: Vec<_> = listens.iter().map(|l| (l.addr.port(), l.tls)).collect();
        assert_eq!(got, vec![(2001, false), (2002, true)]);
        let admin = admin.expect("an admin listener was added");
        let toml = cmd.config.expect("config mode");
        let table: toml::Table = toml.parse().expect("still valid TOML");
        assert_eq!(
            table["admin"]["listen"].as_str(),
            Some(admin.to_string().as_str())
        );
    }

    #[test]
    fn config_admin_is_kept_and_bad_toml_left_alone() {
        let mut cmd = ProxyCmd::config("[admin]\nlisten = \"127.0.0.1:7\"\n");
        assert_eq!(
            cmd.prepare().1,
            Some("127.0.0.1:7".parse().expect("literal"))
        );
        let mut bad = ProxyCmd::config("listen = [");
        let (listens, admin) = bad.prepare();
        assert!(listens.is_empty() && admin.is_none());
        assert_eq!(bad.config.as_deref(), Some("listen = ["));
    }

    #[test]
    fn target_dir_is_the_profile_dir() {
        let dir = target_dir();
        assert!(!dir.ends_with("deps"), "{}", dir.display());
        // This unit-test executable lives in <target>/debug/deps.
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }
}

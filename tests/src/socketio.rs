//! Socket.IO interop: the `conformance` server process (from the chat-node package) and the
//! official `socket.io-client` test suite under `tests/node/` (Node's built-in test runner,
//! dependencies pinned by `tests/node/package-lock.json`).
//!
//! ```no_run
//! use std::time::Duration;
//! if tests::socketio::node_version().is_some() {
//!     tests::socketio::ensure_node_modules();
//!     let server = tests::socketio::Conformance::start("socket.io");
//!     tests::socketio::run_node_suite("interop.test.mjs", &server.url(), Duration::from_secs(120))
//!         .assert_passed("direct");
//! }
//! ```

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::procs::{bin_path, free_port, init, START_TIMEOUT};
use crate::wait::POLL;

/// How long `npm ci` may take (it downloads the pinned packages when the cache is cold).
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

/// `tests/node/`: the Node package holding the client suites.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// `node --version`, or `None` when Node is not installed (the tests that need it fail).
pub fn node_version() -> Option<String> {
    let out = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The version `package.json` pins for `dep`, and the version installed in `node_modules`.
fn pinned_and_installed(dep: &str) -> (Option<String>, Option<String>) {
    let version_in = |path: PathBuf, pointer: &str| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json.pointer(pointer)?.as_str().map(str::to_owned)
    };
    let dir = node_dir();
    let pinned = version_in(
        dir.join("package.json"),
        &format!("/dependencies/{}", dep.replace('/', "~1")),
    );
    let installed = version_in(
        dir.join("node_modules").join(dep).join("package.json"),
        "/version",
    );
    (pinned, installed)
}

/// Node and the pinned client, for a test that runs a Node suite: prints Node's version and
/// installs `node_modules` when needed ([`ensure_node_modules`]).
///
/// # Panics
/// When Node is missing, saying how to get it.
pub fn require_node() {
    let version = node_version()
        .unwrap_or_else(|| panic!("node not found: run scripts/install-deps.sh to install it"));
    println!("node {version}");
    ensure_node_modules();
}

/// Runs `npm ci` in `tests/node/` unless `node_modules` already holds the pinned
/// `socket.io-client` (`scripts/install-deps.sh` normally did it). Serialised within the test
/// process.
///
/// # Panics
/// If `npm ci` fails or takes longer than 5 minutes, with its output.
pub fn ensure_node_modules() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (pinned, installed) = pinned_and_installed("socket.io-client");
    if pinned.is_some() && pinned == installed {
        return;
    }
    eprintln!(
        "tests/node: socket.io-client {installed:?} installed, {pinned:?} pinned: running npm ci"
    );
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(node_dir());
    let run = run_with_timeout(cmd, NPM_CI_TIMEOUT);
    assert!(
        run.success(),
        "npm ci in {} failed ({}):\n{}",
        node_dir().display(),
        run.describe_status(),
        run.output()
    );
}

/// A finished (or timed-out and killed) child process and its output.
#[derive(Debug)]
pub struct Run {
    /// `None` when it ran past its timeout and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timeout: Duration,
}

impl Run {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// stdout and stderr together.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// `exit status: 1`, or that it timed out.
    pub fn describe_status(&self) -> String {
        match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after the {:?} timeout", self.timeout),
        }
    }

    /// The count Node's test runner reports for `what` (`tests`, `pass`, `fail`, …) in its
    /// summary (`ℹ pass 27` with the spec reporter, `# pass 27` with TAP).
    pub fn node_count(&self, what: &str) -> Option<u64> {
        self.stdout.lines().rev().find_map(|line| {
            let rest = line
                .trim_start()
                .strip_prefix("ℹ ")
                .or_else(|| line.trim_start().strip_prefix("# "))?;
            rest.strip_prefix(what)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Asserts a Node test run exited 0 with at least one passing test and none failing;
    /// prints the counts. On failure, panics with Node's whole output. `what` names the run.
    pub fn assert_passed(&self, what: &str) {
        let counts = ["tests", "pass", "fail", "cancelled", "skipped", "todo"]
            .iter()
            .map(|k| {
                format!(
                    "{k} {}",
                    self.node_count(k).map_or("?".into(), |n| n.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            self.success()
                && self.node_count("fail") == Some(0)
                && self.node_count("pass").unwrap_or(0) > 0,
            "node suite ({what}) failed ({}; {counts}):\n{}",
            self.describe_status(),
            self.output()
        );
        println!("node suite ({what}): {counts}");
    }
}

/// Runs `cmd` (stdin closed, output to temp files) for at most `timeout`; kills it after that.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Run {
    init();
    let dir = tempfile::Builder::new()
        .prefix("switchyard-run-")
        .tempdir()
        .expect("creating a temp dir for a child's output");
    let out_path = dir.path().join("stdout.log");
    let err_path = dir.path().join("stderr.log");
    let stdout = File::create(&out_path).expect("creating stdout.log");
    let stderr = File::create(&err_path).expect("creating stderr.log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Run {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
        timeout,
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Runs `node --test tests/node/<file>` with `SIO_URL=<url>`, bounded by `timeout`. Call
/// [`ensure_node_modules`] first.
pub fn run_node_suite(file: &str, url: &str, timeout: Duration) -> Run {
    run_node_suite_with(file, &[("SIO_URL", url)], timeout)
}

/// Runs `node --test tests/node/<file>` with the environment variables `env`, bounded by
/// `timeout`. Call [`ensure_node_modules`] first.
pub fn run_node_suite_with(file: &str, env: &[(&str, &str)], timeout: Duration) -> Run {
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=spec", file])
        .current_dir(node_dir())
        .envs(env.iter().copied())
        .env("NO_COLOR", "1");
    run_with_timeout(cmd, timeout)
}

/// A running `conformance --suite <suite>` (chat-node package) on a free 127.0.0.1 port,
/// killed on drop; its log tail is printed when the test is panicking.
pub struct Conformance {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
}

impl Conformance {
    /// Starts `conformance --suite <suite> --listen 127.0.0.1:<free port>` and waits until the
    /// port accepts TCP.
    ///
    /// # Panics
    /// If the binary is missing, exits, or does not listen within 10 s.
    pub fn start(suite: &str) -> Conformance {
        init();
        let bin = bin_path("conformance");
        let dir = tempfile::Builder::new()
            .prefix("switchyard-conformance-")
            .tempdir()
            .expect("creating a temp dir for the conformance server's log");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = File::create(dir.path().join("output.log")).expect("creating output.log");
        let log2 = log.try_clone().expect("cloning the log handle");
        let child = Command::new(&bin)
            .args(["--suite", suite, "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut server = Conformance {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                panic!(
                    "conformance exited ({status}) before listening on {addr}\n{}",
                    server.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "conformance did not accept TCP on {addr} within {START_TIMEOUT:?}\n{}",
                    server.logs()
                );
            }
            std::thread::sleep(POLL);
        }
        server
    }

    /// Its listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL a client gets (the path `/socket.io/` is the client's
    /// default).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its stdout and stderr so far.
    pub fn logs(&self) -> String {
        format!(
            "--- conformance output ---\n{}",
            read_lossy(&self.dir.path().join("output.log"))
        )
    }
}

impl Drop for Conformance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

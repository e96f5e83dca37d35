//! Finding the programs bench drives: the Switchyard `proxy` binary, nginx, HAProxy and
//! taskset; installing nginx/HAProxy from Debian packages when missing and allowed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

/// The programs found on this machine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tools {
    pub proxy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
    pub taskset: bool,
}

impl Tools {
    /// Looks for everything; with `install`, runs `apt-get install` for a missing nginx or
    /// HAProxy first (root only). An explicit `--proxy-bin` that is not a file is an error.
    pub fn discover(proxy_bin: Option<PathBuf>, install: bool) -> anyhow::Result<Tools> {
        let proxy = sibling_bin(proxy_bin, "proxy", "--proxy-bin")?;
        let mut nginx = which("nginx");
        let mut haproxy = which("haproxy");
        let mut missing = Vec::new();
        if nginx.is_none() {
            missing.push("nginx");
        }
        if haproxy.is_none() {
            missing.push("haproxy");
        }
        if install && !missing.is_empty() {
            apt_install(&missing);
            nginx = which("nginx");
            haproxy = which("haproxy");
        }
        Ok(Tools {
            proxy,
            nginx,
            haproxy,
            taskset: which("taskset").is_some(),
        })
    }
}

/// `explicit` (given as `flag`) if given, else the workspace binary `name` next to this
/// executable (`target/<profile>/`), else in the other profile's folder. An explicit path
/// that is not a file is an error: a mistyped --proxy-bin dropped Switchyard from the run
/// and exited 0. Not found by default is None: the caller says what is skipped.
pub fn sibling_bin(
    explicit: Option<PathBuf>,
    name: &str,
    flag: &str,
) -> anyhow::Result<Option<PathBuf>> {
    match explicit {
        Some(p) if p.is_file() => Ok(Some(p)),
        Some(p) => anyhow::bail!("{flag} {}: no such file", p.display()),
        None => Ok(default_bin(name)),
    }
}

fn default_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // target/<profile>/bench, or target/<profile>/deps/<test> for integration tests.
    let up = dir.parent()?;
    let top = up.parent().unwrap_or(up);
    [
        dir.join(name),
        up.join(name),
        up.join("release").join(name),
        up.join("debug").join(name),
        top.join("release").join(name),
        top.join("debug").join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn apt_install(pkgs: &[&str]) {
    if !nix_is_root() {
        eprintln!(
            "bench: {} missing and not root: skipping them (apt-get install {})",
            pkgs.join(", "),
            pkgs.join(" ")
        );
        return;
    }
    eprintln!("bench: installing {} with apt-get", pkgs.join(", "));
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let _ = quiet(Command::new("apt-get").args(["update", "-qq"]));
    if !quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(pkgs),
    ) {
        eprintln!("bench: apt-get install failed; those targets are skipped");
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// How long `<program> --version` may take. A binary that never answered it (a wrong
/// --proxy-bin, a wrapper script) hung bench for good, deaf to Ctrl-C and SIGTERM: the call
/// blocks the thread that would notice them.
const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// First line of `<program> <flag>` (stdout or stderr), e.g. "nginx version: nginx/1.22.1";
/// None when it cannot run or does not answer within VERSION_TIMEOUT.
fn version_of(program: &Path, flag: &str) -> Option<String> {
    let child = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // The output is read on a thread of its own: a child of the program can keep the pipes
    // open after the program is gone, and that thread then outlives the wait.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(VERSION_TIMEOUT) {
        Ok(out) => out.ok()?,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tracing::warn!(
                "{} {flag} did not answer within {VERSION_TIMEOUT:?}",
                program.display()
            );
            return None;
        }
    };
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

/// Versions of the proxies, for the report.
pub fn tool_versions(tools: &Tools) -> serde_json::Value {
    let v = |p: &Option<PathBuf>, flag: &str| p.as_deref().and_then(|p| version_of(p, flag));
    serde_json::json!({
        "switchyard": v(&tools.proxy, "--version"),
        "nginx": v(&tools.nginx, "-v"),
        "haproxy": v(&tools.haproxy, "-v"),
    })
}

/// Versions of what serves the chat scenarios behind the proxy (polling: chat-node and
/// redis-server; chat: the Node.js reference too), for the report: only the proxies' were
/// recorded, and a run with --chat-node-bin or another Node.js said nothing of them.
pub fn chat_versions(chat_node: &Path, node_dir: Option<&Path>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "chat_node": version_of(chat_node, "--version"),
        "redis_server": version_of(Path::new("redis-server"), "--version"),
    });
    if let Some(dir) = node_dir {
        // The Node.js found on PATH is the one the reference cluster is started with.
        v["node"] = version_of(Path::new("node"), "--version").into();
        v["socket_io"] = package_version(&dir.join("node_modules/socket.io/package.json")).into();
    }
    v
}

/// `version` of an npm package.json, if it can be read.
fn package_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_never_answers_its_version_is_given_up() {
        // Scripts run by sh, not executed: a script written by a test and executed while
        // another test's thread forks can fail with ETXTBSY.
        let dir = tempfile::tempdir().expect("temp dir");
        let hangs = dir.path().join("hangs");
        std::fs::write(&hangs, "exec sleep 60\n").expect("write");
        let start = std::time::Instant::now();
        let sh = Path::new("/bin/sh");
        assert_eq!(version_of(sh, &hangs.to_string_lossy()), None);
        assert!(
            start.elapsed() < VERSION_TIMEOUT * 2,
            "{:?}",
            start.elapsed()
        );
        let answers = dir.path().join("answers");
        std::fs::write(&answers, "echo 'proxy 9.9'\n").expect("write");
        assert_eq!(
            version_of(sh, &answers.to_string_lossy()).as_deref(),
            Some("proxy 9.9")
        );
    }

    #[test]
    fn a_package_version_is_read_and_a_broken_one_is_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"name":"socket.io","version":"4.8.4"}"#).expect("write");
        assert_eq!(package_version(&good).as_deref(), Some("4.8.4"));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").expect("write");
        assert_eq!(package_version(&bad), None);
        assert_eq!(package_version(&dir.path().join("missing.json")), None);
        let v = chat_versions(&dir.path().join("no-chat-node"), Some(dir.path()));
        assert!(v["chat_node"].is_null() && v["socket_io"].is_null(), "{v}");
    }
}

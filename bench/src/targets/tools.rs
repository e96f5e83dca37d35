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

/// First line of `<program> <flag>` (stdout or stderr), e.g. "nginx version: nginx/1.22.1".
fn version_of(program: &Path, flag: &str) -> Option<String> {
    let out = Command::new(program).arg(flag).output().ok()?;
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

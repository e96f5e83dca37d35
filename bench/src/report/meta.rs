//! Run metadata: versions, git commit, machine, the exact command line.

use std::process::Command;

use crate::targets::{tool_versions, Tools};

/// When `path` was last written, RFC 3339; None when it cannot be read.
fn modified(path: &std::path::Path) -> Option<String> {
    let at = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(chrono::DateTime::<chrono::Local>::from(at).to_rfc3339())
}

pub fn collect(tools: &Tools, pin: &[usize], workers: usize) -> serde_json::Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.trim().to_owned());
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = crate::child::shell_line(args.iter().map(String::as_str));
    serde_json::json!({
        "date": chrono::Local::now().to_rfc3339(),
        "command": command,
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_commit_date": git(&["log", "-1", "--format=%cI"]),
        "git_dirty": dirty,
        // The commit is the tree's when the report is written: a proxy binary built before
        // it (or given with --proxy-bin) may not be that commit's, which its build time
        // next to the commit's date tells.
        "proxy_bin": tools.proxy.as_ref().map(|p| serde_json::json!({
            "path": p.display().to_string(),
            "built": modified(p),
        })),
        "versions": tool_versions(tools),
        "bench": env!("CARGO_PKG_VERSION"),
        "cores": crate::affinity::online(),
        "bench_cpus": crate::affinity::allowed(),
        "cpu": cpu_model,
        "memory_mib": crate::procstat::mem_total_mib(),
        "kernel": kernel,
        "loadavg_at_report": load,
        "proxy_workers": workers,
        "proxy_pinned_cpus": pin,
        "fd_limit": rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|l| l.0),
        "note": "loopback only; load generator, backends and proxy share this machine's cores",
    })
}

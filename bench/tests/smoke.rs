//! CI smoke test: every scenario runs for a few seconds at tiny sizes into a temporary
//! folder, and the report must be complete (results.json fields, report.md sections, chart
//! files). No performance assertions. nginx/HAProxy are included when installed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_bench")
}

/// `bench redraw <folder>`, which must succeed.
fn redraw(folder: &Path) {
    let redraw = Command::new(bench())
        .arg("redraw")
        .arg(folder)
        .output()
        .expect("running bench redraw");
    assert!(
        redraw.status.success(),
        "bench redraw failed: {}",
        String::from_utf8_lossy(&redraw.stderr)
    );
}

/// A workspace binary next to bench; built when missing (scripts/test.sh builds them first).
fn sibling(package: &str) -> PathBuf {
    let dir = Path::new(bench()).parent().unwrap_or(Path::new("."));
    let bin = dir.join(package);
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", package, "--bin", package])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {package} failed");
    }
    assert!(bin.is_file(), "no {package} binary at {}", bin.display());
    bin
}

fn installed(name: &str) -> bool {
    let found = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(name).is_file());
    if !found {
        eprintln!("smoke: {name} is not installed; its targets are left out of this test");
    }
    found
}

/// `switchyard:<s>` plus nginx/HAProxy with `others` when installed.
fn targets(switchyard: &[&str], others: &str, direct: bool) -> String {
    let mut t: Vec<String> = Vec::new();
    if direct {
        t.push("direct".into());
    }
    t.extend(switchyard.iter().map(|s| format!("switchyard:{s}")));
    for p in ["nginx", "haproxy"] {
        if installed(p) {
            t.push(format!("{p}:{others}"));
        }
    }
    t.join(",")
}

/// Runs one scenario and checks its report; returns results.json.
fn run(scenario: &str, targets: &str, extra: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().expect("temp dir");
    let proxy = sibling("proxy");
    // polling and chat report each target once per kind of chat cluster.
    let variants = if matches!(scenario, "polling" | "chat") {
        2
    } else {
        1
    };
    let output = Command::new(bench())
        .arg(scenario)
        .args(["--runs", "1", "--quiet", "--targets", targets])
        .arg("--out")
        .arg(out.path())
        .arg("--proxy-bin")
        .arg(&proxy)
        .args(if variants > 1 {
            vec![
                "--chat-node-bin".to_owned(),
                sibling("chat-node").display().to_string(),
            ]
        } else {
            Vec::new()
        })
        .args(extra)
        .output()
        .expect("running bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench {scenario} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("report:"), "no summary printed:\n{stdout}");

    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    assert_eq!(v["scenario"], scenario);
    // The reports written after each measurement were partial; the last one is not.
    assert!(v.get("partial").is_none(), "complete run marked partial");
    for key in [
        "git_commit",
        "git_commit_date",
        "versions",
        "cores",
        "memory_mib",
        "command",
        "date",
    ] {
        assert!(v["meta"].get(key).is_some(), "meta.{key} missing");
    }
    // When the binary measured was built, to tell it from the tree's commit.
    assert!(
        v["meta"]["proxy_bin"]["built"].is_string(),
        "{}",
        v["meta"]["proxy_bin"]
    );
    let columns = v["columns"].as_array().expect("columns");
    assert!(!columns.is_empty());
    let reports = v["targets"].as_array().expect("targets");
    assert_eq!(
        reports.len(),
        targets.split(',').count() * variants,
        "one report per target (and session mode)"
    );
    for t in reports {
        let name = t["target"].as_str().unwrap_or_default();
        assert_eq!(
            t["status"], "ok",
            "{name} did not run: {}\n{stderr}",
            t["status"]
        );
        // Every target reports the scenario's first column (the headline number).
        let first = columns[0]["key"].as_str().unwrap_or_default();
        let direct_without = name == "direct" && t["metrics"].get(first).is_none();
        assert!(
            t["metrics"].get(first).is_some() || direct_without,
            "{name}: metric {first} missing"
        );
        assert!(!t["runs"].as_array().expect("runs").is_empty());
        if name != "direct" {
            assert!(
                !t["command"].as_str().unwrap_or_default().is_empty(),
                "{name}: no command"
            );
        }
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    for section in [
        "## Summary",
        "## Goals",
        "## Charts",
        "## Per-backend distribution",
        "## Machine and versions",
        "## Commands",
    ] {
        assert!(md.contains(section), "report.md lacks {section}");
    }
    assert!(
        !md.contains("Partial report"),
        "complete run marked partial"
    );
    let charts = v["charts"].as_array().expect("charts");
    assert!(!charts.is_empty(), "no charts");
    for c in charts {
        let file = out.path().join(c.as_str().unwrap_or_default());
        let svg = std::fs::read_to_string(&file).expect("chart file");
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{} is not an SVG",
            file.display()
        );
        assert!(
            md.contains(c.as_str().unwrap_or_default()),
            "report.md does not show {c}"
        );
    }
    assert!(
        out.path().join("configs").is_dir(),
        "generated configs not kept"
    );
    // The report can be drawn again from its results.json alone.
    for c in charts {
        std::fs::remove_file(out.path().join(c.as_str().unwrap_or_default())).expect("chart");
    }
    redraw(out.path());
    for c in charts {
        let file = out.path().join(c.as_str().unwrap_or_default());
        assert!(file.is_file(), "redraw did not draw {}", file.display());
    }
    v
}

fn has_chart(v: &serde_json::Value, name: &str) -> bool {
    v["charts"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == name))
}

#[test]
fn http() {
    let v = run(
        "http",
        &targets(&["round_robin"], "round_robin", true),
        &["--duration", "1s", "--connections", "8", "--rates", "200"],
    );
    assert!(has_chart(&v, "latency.svg") && has_chart(&v, "distribution.svg"));
    assert!(has_chart(&v, "timeline.svg"));
    let sy = &v["targets"][1];
    assert!(
        sy["metrics"]["req_per_cpu_s"].as_f64().is_some(),
        "no CPU accounting"
    );
    assert!(
        sy["metrics"]["open200_p99_ms"].as_f64().is_some(),
        "no open loop"
    );
    compare_with_itself(&v);
}

/// `bench compare` on two copies of one report: every metric of every target that ran is
/// listed and none changed; then as Markdown.
fn compare_with_itself(v: &serde_json::Value) {
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("temp dir"));
    for d in &dirs {
        std::fs::write(d.path().join("results.json"), v.to_string()).expect("results.json");
    }
    for markdown in [false, true] {
        let out = Command::new(bench())
            .arg("compare")
            .arg(dirs[0].path())
            .arg(dirs[1].path())
            .args(markdown.then_some("--markdown"))
            .output()
            .expect("running bench compare");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bench compare failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ran = v["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["status"] == "ok");
        for t in ran {
            let name = t["target"].as_str().unwrap_or_default();
            let rows = stdout.lines().filter(|l| l.contains(name)).count();
            assert!(rows >= 5, "{name}: {rows} rows:\n{stdout}");
        }
        assert!(
            !stdout.contains("higher") && !stdout.contains("lower"),
            "{stdout}"
        );
        assert_eq!(
            stdout.contains("| --- |") || stdout.contains("|---|"),
            markdown
        );
    }
}

#[test]
fn ws_echo() {
    // With two CPUs or more (and taskset), bench keeps itself off the proxy's CPU.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let isolate = cores >= 2 && installed("taskset");
    let mut extra = vec!["--duration", "1s", "--connections", "4", "--rates", "200"];
    if isolate {
        extra.push("--isolate");
    }
    let v = run(
        "ws-echo",
        &targets(&["least_conn"], "least_conn", true),
        &extra,
    );
    assert!(has_chart(&v, "latency.svg"));
    if isolate {
        let rest: Vec<usize> = (0..cores - 1).collect();
        assert_eq!(
            v["meta"]["proxy_pinned_cpus"],
            serde_json::json!([cores - 1])
        );
        assert_eq!(
            v["meta"]["bench_cpus"],
            serde_json::json!(rest),
            "bench on the proxy's CPU"
        );
    }
    assert!(
        v["targets"][1]["metrics"]["open200_p99_added_ms"]
            .as_f64()
            .is_some(),
        "no open loop"
    );
}

#[test]
fn ws_hold() {
    let v = run(
        "ws-hold",
        &targets(&["least_conn"], "least_conn", false),
        &["--steps", "20,50"],
    );
    assert!(has_chart(&v, "curve.svg"));
    assert_eq!(v["targets"][0]["metrics"]["open"], 50.0);
    // A slope over 50 connections is the allocator's noise, and marked so.
    assert_eq!(v["targets"][0]["metrics"]["few_connections"], 1.0);
}

#[test]
fn hetero() {
    run(
        "hetero",
        &targets(&["round_robin", "least_time"], "least_conn", false),
        &[
            "--duration",
            "1s",
            "--connections",
            "4",
            "--rate",
            "100",
            "--slow",
            "20ms",
        ],
    );
}

#[test]
fn recover() {
    let v = run(
        "recover",
        &targets(&["least_conn"], "least_conn", false),
        &["--batch", "6", "--wait", "2s"],
    );
    assert_eq!(v["targets"][0]["metrics"]["open"], 12.0);
}

#[test]
fn failover() {
    let v = run(
        "failover",
        &targets(&["round_robin"], "round_robin", false),
        &[
            "--duration",
            "2s",
            "--connections",
            "4",
            "--rate",
            "100",
            "--websockets",
            "3",
        ],
    );
    assert!(has_chart(&v, "timeline.svg"));
    // A number, or null (∞: b1 got no request again before the 2 s phase ended, which
    // the table then says was too short to see it).
    let m = &v["targets"][0]["metrics"];
    assert!(m
        .get("kill_readmit_ms")
        .is_some_and(|m| m.is_number() || m.is_null()));
    if m["kill_readmit_ms"].is_null() {
        assert_eq!(m["kill_readmit_unseen"], 1.0);
    }
    assert!(m["stop_p99_ms"].is_number() && m["kill_p99_ms"].is_number());
    // A 0.8 s freeze is shorter than the timeouts: the report says what that hides.
    let notes = v["notes"].as_array().expect("notes");
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("--duration 8s or more"))),
        "{notes:?}"
    );
}

#[test]
fn sticky() {
    let v = run(
        "sticky",
        &targets(&["ip_hash", "sticky_cookie"], "ip_hash", false),
        &["--connections", "8", "--requests", "4"],
    );
    assert!(v["targets"][0]["metrics"]["remapped_pct"].is_number());
}

#[test]
fn polling() {
    let v = run(
        "polling",
        &targets(&["round_robin", "sticky_cookie"], "ip_hash", false),
        &["--connections", "3", "--sessions", "1", "--cycles", "2"],
    );
    assert!(has_chart(&v, "distribution.svg"));
    let local = v["targets"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .find(|r| r["target"] == "switchyard:sticky_cookie [local]")
        })
        .expect("sticky_cookie with local sessions reported");
    assert!(local["metrics"]["handshake_ok_pct"].is_number());
}

/// bench/node/node_modules, installed from the lock file when missing.
fn node_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    if !dir.join("node_modules").is_dir() {
        let status = Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .status()
            .expect("running npm ci (install nodejs and npm: scripts/install-deps.sh)");
        assert!(status.success(), "npm ci for bench/node failed");
    }
}

#[test]
fn chat() {
    node_reference();
    // nginx too when installed: it once passed no WebSocket upgrade on /socket.io/.
    let v = run(
        "chat",
        &targets(&["least_conn"], "least_conn", false).replace(",haproxy:least_conn", ""),
        &["--connections", "6", "--rooms", "2", "--duration", "1s"],
    );
    let rows = v["targets"].as_array().expect("targets");
    assert!(rows
        .iter()
        .any(|r| r["target"] == "switchyard:least_conn [chat-node]"));
    assert!(rows
        .iter()
        .any(|r| r["target"] == "switchyard:least_conn [node.js]"));
    assert!(rows[0]["metrics"]["delivered_per_s"].is_number());
}

/// Whether this machine lets bench create a cgroup with a CPU quota (root, cpu controller).
fn cgroup_cpu_writable() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    let root = if v1.join("cpu.cfs_quota_us").exists() {
        v1
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let probe = root.join(format!("switchyard-smoke-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

#[test]
fn chat_at_equal_cpu() {
    node_reference();
    let base = [
        "--connections",
        "6",
        "--rooms",
        "2",
        "--duration",
        "1s",
        "--rate",
        "4",
        "--cpu-limit",
        "1",
    ];
    if !cgroup_cpu_writable() {
        // Then bench must refuse up front with a reason, not measure unlimited nodes.
        let output = Command::new(bench())
            .arg("chat")
            .args(base)
            .args(["--quiet", "--targets", "switchyard:least_conn"])
            .arg("--chat-node-bin")
            .arg(sibling("chat-node"))
            .output()
            .expect("running bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "bench ran without its cgroup");
        assert!(stderr.contains("--cpu-limit"), "no reason given: {stderr}");
        return;
    }
    // A bound every step meets: the ladder climbs all its steps (redis-server in the
    // budget too, moved in and out of each cluster's group).
    let all = [
        base.as_slice(),
        &["--steps", "2", "--max-p99", "10s", "--limit-redis"],
    ]
    .concat();
    let v = run("chat", "switchyard:least_conn", &all);
    for row in v["targets"].as_array().expect("targets") {
        let m = &row["metrics"];
        assert_eq!(m["cpu_limit"], 1.0, "{row}");
        assert_eq!(m["budget_includes_redis"], 1.0, "{row}");
        assert!(m["redis_cpu_pct"].is_number(), "{row}");
        assert_eq!(m["ladder_step"], 1.0, "{row}");
        let rate = m["sustained_rate"].as_f64().expect("sustained_rate");
        assert!((rate - 4.0 * 2f64.sqrt()).abs() < 1e-9, "{row}");
        assert!(m["sustained_per_s"].as_f64().is_some_and(|d| d > 0.0));
        assert!(m.get("next_rate").is_none(), "no step failed: {row}");
    }
    // A bound no step meets: nothing is sustained and the first step says why.
    let none = [base.as_slice(), &["--max-p99", "1us"]].concat();
    let v = run("chat", "switchyard:least_conn", &none);
    for row in v["targets"].as_array().expect("targets") {
        let m = &row["metrics"];
        assert_eq!(m["sustained_per_s"], 0.0, "{row}");
        assert_eq!(m["next_rate"], 4.0, "{row}");
        assert!(m["next_p99_ms"].as_f64().is_some_and(|p| p > 0.001));
    }
    assert!(v["checks"][0]["measured"]
        .as_str()
        .is_some_and(|m| m.contains("sustained no step")));
    // Every group a bench that has ended made is gone again. A bench still running (another
    // on this machine) holds its own, named after its pid.
    let root = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup"]
        .map(Path::new)
        .into_iter()
        .find(|d| d.join("cgroup.procs").exists());
    if let Some(root) = root {
        let left: Vec<_> = std::fs::read_dir(root)
            .expect("cgroup root")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| {
                name.strip_prefix("switchyard-bench-")
                    .and_then(|rest| rest.split('-').next())
                    .is_some_and(|pid| !Path::new("/proc").join(pid).exists())
            })
            .collect();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
    }
}

/// Child processes of `pid` (all its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `bench http` at a tiny size (4 connections at 100 req/s) into `out`: `runs` runs of
/// `duration` over `targets`, with this workspace's proxy.
fn small_http_run(runs: &str, duration: &str, targets: &str, out: &Path) -> Command {
    let mut cmd = Command::new(bench());
    cmd.args(["http", "--runs", runs, "--quiet", "--duration", duration])
        .args(["--connections", "4", "--rates", "100"])
        .args(["--targets", targets])
        .arg("--out")
        .arg(out)
        .arg("--proxy-bin")
        .arg(sibling("proxy"));
    cmd
}

/// Starts `cmd` (its output piped) and returns once it has written the config of the
/// `switchyard:round_robin` target into `out`, that is once that proxy is starting.
fn spawn_until_switchyard_starts(mut cmd: Command, out: &Path) -> std::process::Child {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running bench");
    let config = out.join("configs/switchyard-round_robin.toml");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !config.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(config.exists(), "switchyard was never started");
    child
}

/// Ctrl-C to `child`.
fn sigint(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn interrupted_run_writes_a_partial_report_and_stops_everything() {
    // A space in the path: the report's command line must still read back as bench's words.
    let out = tempfile::Builder::new()
        .prefix("bench out ")
        .tempdir()
        .expect("temp dir");
    // The proxy's config is written when direct's first measurement is done.
    let child = spawn_until_switchyard_starts(
        small_http_run("2", "1s", "direct,switchyard:round_robin", out.path()),
        out.path(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = children(child.id());
    assert!(started.len() >= 4, "backends and proxy: {started:?}");
    sigint(&child);
    let output = child.wait_with_output().expect("waiting for bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an interrupted run exits non-zero"
    );
    assert!(
        stderr.contains("interrupted by SIGINT after 1 of 4 measurements"),
        "{stderr}"
    );
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.contains("**Partial report**"), "{md}");
    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    assert_eq!(v["targets"][0]["status"], "ok");
    assert_eq!(v["targets"][1]["status"], "interrupted (not measured)");
    let command = v["meta"]["command"].as_str().expect("meta.command");
    let words = shlex::split(command).expect("meta.command is shell syntax");
    assert_eq!(
        words.get(words.len().saturating_sub(3)).map(String::as_str),
        out.path().to_str(),
        "{command}"
    );
    // Backends and proxy are gone (bench waits for each before it exits).
    let left: Vec<u32> = started
        .into_iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Whether `pid` has exited (gone, or a zombie its new parent has not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[test]
fn killed_bench_takes_its_children_with_it() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = small_http_run("1", "60s", "switchyard:round_robin", out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running bench");
    // Three backends and the proxy: the measurement has started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut started = children(child.id());
    while started.len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        started = children(child.id());
    }
    assert!(started.len() >= 4, "backends and proxy: {started:?}");
    // SIGKILL: no handler and no destructor of bench's runs.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping bench");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut left: Vec<u32> = started.clone();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left.retain(|p| !exited(*p));
    }
    for p in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(
        left.is_empty(),
        "left running after bench was killed: {left:?}"
    );
}

/// Polls until `ready` holds, for at most `secs` seconds; whether it did.
fn wait_for(secs: u64, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if ready() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn killed_bench_leaves_the_report_of_what_it_measured() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = small_http_run("2", "1s", "direct,switchyard:round_robin", out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running bench");
    let results = out.path().join("results.json");
    // report.md is the last file of each write (results.json, its data, comes first): a
    // kill right after results.json first appeared could leave no report.md yet.
    let appeared = wait_for(60, || out.path().join("report.md").exists());
    let exited_early = child.try_wait().ok().flatten();
    let started = children(child.id());
    // SIGKILL: no handler runs, so only what was written before is left.
    child.kill().expect("SIGKILL");
    let output = child.wait_with_output().expect("reaping bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Its backends and proxy get SIGTERM from the kernel; wait for them all the same, so
    // that they are not counted as another test's.
    wait_for(30, || started.iter().all(|p| exited(*p)));
    assert!(appeared, "no results.json while bench ran:\n{stderr}");
    assert!(
        exited_early.is_none(),
        "bench ended ({exited_early:?}) before it was killed:\n{stderr}"
    );

    let json = std::fs::read_to_string(&results).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("results.json parses");
    let done = v["partial"]["done"].as_u64().unwrap_or(0);
    assert!(
        done >= 1,
        "not marked partial, or nothing done: {}",
        v["partial"]
    );
    assert_eq!(v["partial"]["total"], 4, "{}", v["partial"]);
    assert!(
        v["partial"].get("interrupted_by").is_none(),
        "{}",
        v["partial"]
    );
    // direct's first run is the first measurement.
    assert_eq!(v["targets"][0]["target"], "direct");
    assert_eq!(v["targets"][0]["status"], "ok", "{}", v["targets"][0]);
    assert!(v["targets"][0]["metrics"]["rps"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    let measured: usize = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            let failed = t["errors"].as_array().map_or(0, Vec::len);
            t["runs"].as_array().map_or(0, Vec::len) + failed
        })
        .sum();
    assert_eq!(
        measured as u64, done,
        "every finished measurement is in results.json"
    );
    // The report may be one write behind its data (a kill between the two files), never
    // ahead of it.
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    let shown = (1..=done)
        .find(|n| md.contains(&format!("**Partial report**: {n} of 4 measurements done")));
    assert!(
        shown.is_some(),
        "report.md behind results.json ({done} done):\n{md}"
    );

    // What reads results.json takes the partial report as it is.
    redraw(out.path());
    let again: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&results).expect("results.json after redraw"),
    )
    .expect("results.json parses after redraw");
    assert_eq!(again["partial"], v["partial"]);
    // A report left by a killed run is not written over by the next.
    let output = small_http_run("1", "1s", "direct", out.path())
        .output()
        .expect("running bench");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("already holds a report"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn full_disk_is_refused_before_measuring() {
    // A file system of 64 KiB, filled, in a mount namespace of its own (needs root).
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let script = r#"mount -t tmpfs -o size=64k tmpfs "$1" || exit 77
head -c 1048576 /dev/zero > "$1/fill" 2>/dev/null
shift
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script, "sh"]).arg(dir.path());
    let run = small_http_run("1", "1s", "direct", &out);
    cmd.arg(run.get_program()).args(run.get_args());
    let output = cmd.output().expect("running unshare");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(77) || stderr.contains("unshare failed") {
        eprintln!("smoke: no tmpfs in a mount namespace here ({stderr}); test skipped");
        return;
    }
    assert!(
        !output.status.success(),
        "bench ran on a full disk: {stderr}"
    );
    assert!(
        stderr.contains("cannot write into the report folder")
            && stderr.contains("No space left on device"),
        "{stderr}"
    );
    // Refused before anything was measured, not at the report.
    assert!(!stderr.contains("measurements to"), "{stderr}");
}

/// Runs bench with `args` and `--out <tmp>/<name>`, which must fail before it writes
/// anything: its stderr, once the exit status and the absent folder are checked.
fn refused(tmp: &std::path::Path, name: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = tmp.join(name);
    let output = Command::new(bench())
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running bench");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    // It used to leave the empty report folder behind.
    assert!(!out.exists(), "{} left behind", out.display());
    stderr
}

#[test]
fn a_wrong_explicit_binary_is_an_error_and_leaves_no_report_folder() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (proxy, chat_node) = (sibling("proxy"), sibling("chat-node"));
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    // It used to run nginx alone and exit 0.
    let stderr = refused(
        tmp.path(),
        "proxy-bin",
        &[
            os("http"),
            os("--targets"),
            os("switchyard,nginx"),
            os("--runs"),
            os("1"),
            os("--quiet"),
            os("--proxy-bin"),
            os("/nonexistent/proxy"),
        ],
    );
    assert!(
        stderr.contains("--proxy-bin /nonexistent/proxy: no such file"),
        "{stderr}"
    );
    let chat = [
        os("chat"),
        os("--targets"),
        os("switchyard"),
        os("--runs"),
        os("1"),
        os("--quiet"),
        os("--proxy-bin"),
        proxy.as_os_str(),
    ];
    let mut args = chat.to_vec();
    args.extend([os("--chat-node-bin"), os("/nonexistent/chat-node")]);
    let stderr = refused(tmp.path(), "chat-node-bin", &args);
    assert!(stderr.contains("/nonexistent/chat-node"), "{stderr}");
    // The Node.js reference's folder can be given, and is checked before the run too.
    let mut args = chat.to_vec();
    args.extend([
        os("--chat-node-bin"),
        chat_node.as_os_str(),
        os("--node-dir"),
        os("/nonexistent/node"),
    ]);
    let stderr = refused(tmp.path(), "node-dir", &args);
    assert!(
        stderr.contains("no Node.js reference in /nonexistent/node"),
        "{stderr}"
    );
}

/// A run stopped before its first measurement leaves its `--out` as it found it: its
/// generated configs made the same command refused when run again.
#[test]
fn a_run_interrupted_before_any_measurement_leaves_its_folder_empty() {
    let out = tempfile::tempdir().expect("temp dir");
    let child = spawn_until_switchyard_starts(
        small_http_run("1", "30s", "switchyard:round_robin", out.path()),
        out.path(),
    );
    sigint(&child);
    let output = child.wait_with_output().expect("waiting for bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("before any measurement finished"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(out.path())
        .expect("the folder")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "left in --out: {left:?}");
}

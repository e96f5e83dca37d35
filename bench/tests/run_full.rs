//! bench/run-full.sh with a stand-in for bench: which scenarios it runs, what it reports
//! and how it exits when one fails or the run is stopped. The script is copied into a
//! temporary tree (it works from the folder above its own), so that its results and the
//! copy to bench/report/ stay there.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on the script's whole run (the stand-in measures nothing).
const T: Duration = Duration::from_secs(30);

/// A stand-in for bench: appends `<folder>` (the base name of `--out`) to `runs.log` in the
/// tree, then does what a file `behave/<folder>` in the tree says: `fail` (a report, then exit
/// 1), `cgroup` (no report; the refusal of `--cpu-limit` without a cgroup, exit 1), `wait`
/// (until SIGINT, then a partial report and exit 1, as bench does); otherwise a report and
/// exit 0.
const STAND_IN: &str = r#"#!/usr/bin/env bash
root=$(cd "$(dirname "$0")" && pwd)
out=
while [ $# -gt 0 ]; do
  if [ "$1" = --out ]; then out=$2; shift; fi
  shift
done
d=$(basename "$out")
echo "$d" >> "$root/runs.log"
report() { mkdir -p "$out"; echo "$1" > "$out/report.md"; echo '{}' > "$out/results.json"; }
case $(cat "$root/behave/$d" 2>/dev/null) in
  fail) report partial; echo "bench: error: a chat node exited" >&2; exit 1 ;;
  cgroup) echo "bench: error: --cpu-limit needs the cgroup cpu controller" >&2; exit 1 ;;
  wait)
    trap 'report partial; exit 1' INT
    touch "$root/waiting"
    while :; do sleep 0.05; done ;;
  *) report complete ;;
esac
"#;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Tree {
    fn new(behave: &[(&str, &str)]) -> Tree {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("run-full.sh");
        std::fs::create_dir_all(root.join("bench")).expect("bench folder");
        std::fs::copy(&script, root.join("bench/run-full.sh")).expect("copy the script");
        std::fs::create_dir_all(root.join("behave")).expect("behave folder");
        for (folder, what) in behave {
            std::fs::write(root.join("behave").join(folder), what).expect("behave file");
        }
        let stand_in = root.join("stand-in");
        std::fs::write(&stand_in, STAND_IN).expect("stand-in");
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&stand_in)
            .status()
            .expect("chmod");
        assert!(status.success());
        Tree { _dir: dir, root }
    }

    /// The script in a process group of its own, as a terminal's foreground job, so that a
    /// Ctrl-C can reach all of it and a script that hangs can be killed whole.
    fn script(&self) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new("bash");
        cmd.arg(self.root.join("bench/run-full.sh"))
            .arg(self.root.join("stand-in"))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // A shell that starts with SIGINT ignored can never trap it (POSIX), and tests run
        // under a runner started in the background inherit exactly that: the script would
        // then sit out every Ctrl-C. A terminal's foreground job starts with the default.
        // SAFETY: the closure runs in the forked child before exec and makes one
        // async-signal-safe system call (sigaction); it allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGINT,
                    nix::sys::signal::SigHandler::SigDfl,
                )
                .map(drop)
                .map_err(std::io::Error::from)
            });
        }
        cmd
    }

    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Waits for `child` within [`T`]: its exit code (None when killed by a signal) and stderr.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if started.elapsed() > T {
            // The whole group: the stand-in would otherwise wait forever in its loop.
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            panic!("run-full.sh did not end within {T:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_chat_cpu_failure_that_is_not_the_cgroup_fails_the_run() {
    let tree = Tree::new(&[("chat-cpu", "fail")]);
    let (code, err) = finish(tree.script().spawn().expect("run-full.sh"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("failed: chat-cpu"), "{err}");
    assert!(!err.contains("skipped"), "{err}");
    // Its partial report is copied as the others' are.
    assert!(tree.root.join("bench/report/chat-cpu/report.md").is_file());
}

#[test]
fn chat_cpu_without_a_cgroup_is_skipped() {
    let tree = Tree::new(&[("chat-cpu", "cgroup")]);
    let (code, err) = finish(tree.script().spawn().expect("run-full.sh"));
    assert_eq!(code, Some(0), "{err}");
    let runs = tree.runs();
    assert!(!runs.contains(&"chat-cpu-redis".to_owned()), "{runs:?}");
    assert!(runs.contains(&"http-repeat".to_owned()), "{runs:?}");
}

#[test]
fn ctrl_c_stops_the_whole_run_and_copies_what_was_measured() {
    let tree = Tree::new(&[("ws-echo", "wait")]);
    let child = tree.script().spawn().expect("run-full.sh");
    let pgid = child.id();
    let started = Instant::now();
    while !tree.root.join("waiting").exists() {
        assert!(started.elapsed() < T, "ws-echo never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .expect("kill");
    assert!(status.success());
    let (code, err) = finish(child);
    assert_eq!(tree.runs(), ["http", "ws-echo"], "{err}");
    assert_ne!(code, Some(0), "{err}");
    let partial = tree.root.join("bench/report/ws-echo/report.md");
    assert_eq!(
        std::fs::read_to_string(&partial).unwrap_or_default().trim(),
        "partial",
        "{err}"
    );
}

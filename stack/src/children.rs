//! Child processes of `switchyard up`: each is tied to `switchyard`'s life (it gets SIGTERM
//! when `switchyard` dies, even by SIGKILL), runs in its own process group (so a terminal's
//! Ctrl-C reaches only `switchyard`, which then stops the children in order), has its output
//! streamed line by line as `[name] …`, and is stopped with SIGTERM, then SIGKILL after a
//! bounded grace.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::console;

/// How long the log pumps get to flush a stopped child's last lines.
const FLUSH: Duration = Duration::from_secs(2);

/// A child that exited on its own (not because it was told to stop).
#[derive(Debug)]
pub struct Exit {
    pub name: String,
    pub status: Option<ExitStatus>,
}

/// A running child. Dropping it without [`Supervised::stop`] kills the child.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: u32,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

/// A child just started, and its `LISTENING <addr>` line when it prints one.
#[derive(Debug)]
pub struct Spawned {
    pub child: Supervised,
    pub listening: oneshot::Receiver<SocketAddr>,
}

/// Starts `cmd` as the child `name`. An exit that nobody asked for is reported on `exits`.
/// Call from a thread that lives as long as `switchyard` (PR_SET_PDEATHSIG fires when the
/// forking thread exits).
pub fn spawn(name: &str, mut cmd: Command, exits: mpsc::UnboundedSender<Exit>) -> Result<Spawned> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    die_with_parent(&mut cmd);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({program})"))?;
    let pid = child
        .id()
        .with_context(|| format!("{name} exited as soon as it started"))?;
    let (listening_tx, listening) = oneshot::channel();
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(name.to_owned(), out, Some(listening_tx))));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(name.to_owned(), err, None)));
    }
    console::say(&format!("started {name} (pid {pid})"));
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(supervise(name.to_owned(), child, stop_rx, exits, pumps));
    Ok(Spawned {
        child: Supervised {
            name: name.to_owned(),
            pid,
            stop: Some(stop_tx),
            task,
        },
        listening,
    })
}

impl Supervised {
    /// The child's name (`n1`, `proxy`, `redis`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`; returns once it is reaped
    /// and its last output printed.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        let _ = (&mut self.task).await;
    }
}

/// Waits for the child to exit or to be told to stop, whichever comes first.
async fn supervise(
    name: String,
    mut child: Child,
    stop: oneshot::Receiver<Duration>,
    exits: mpsc::UnboundedSender<Exit>,
    pumps: Vec<JoinHandle<()>>,
) {
    let status = tokio::select! {
        status = child.wait() => {
            let status = status.ok();
            flush(pumps).await;
            console::say(&format!("{name} exited on its own ({})", describe(status)));
            let _ = exits.send(Exit { name, status });
            return;
        }
        grace = stop => terminate(&name, &mut child, grace.unwrap_or(Duration::ZERO)).await,
    };
    flush(pumps).await;
    console::say(&format!("{name} stopped ({})", describe(status)));
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn terminate(name: &str, child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // ESRCH: it exited meanwhile; the wait below reaps it.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            console::say(&format!(
                "{name} still running {grace:?} after SIGTERM: killing it"
            ));
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

async fn flush(pumps: Vec<JoinHandle<()>>) {
    for pump in pumps {
        let _ = tokio::time::timeout(FLUSH, pump).await;
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
}

/// Copies a child's output to ours, line by line with its prefix; bytes that are not UTF-8
/// are shown replaced rather than stopping the copy (a stopped copy would block the child on
/// a full pipe). Reports the first `LISTENING <addr>` line.
async fn pump(
    name: String,
    stream: impl AsyncRead + Unpin,
    mut listening: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = line.strip_prefix("LISTENING ") {
            if let Ok(addr) = rest.trim().parse::<SocketAddr>() {
                if let Some(tx) = listening.take() {
                    let _ = tx.send(addr);
                }
            }
        }
        console::line(&name, line);
    }
}

/// Makes the child get SIGTERM when `switchyard` dies, however it dies (PR_SET_PDEATHSIG), so
/// no child outlives it. The signal fires when the *thread* that forked the child exits, so
/// spawn from a thread that lives as long as the process: `up` runs on the main thread (the
/// future `block_on` drives), and Tokio's worker threads live as long as the runtime (its
/// `spawn_blocking` threads do not). If `switchyard` died between the fork and this call, the
/// child does not start at all.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: `pre_exec` runs the closure in the forked child before `exec`, where only
    // async-signal-safe operations are allowed. It makes two system calls (prctl, getppid)
    // and allocates nothing: both errors are built from raw OS error numbers.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    /// Stops `child` with `grace` and asserts it is gone (reaped) within 10 s.
    async fn stop_and_check(child: Supervised, grace: Duration) {
        let pid = Pid::from_raw(i32::try_from(child.pid()).unwrap());
        tokio::time::timeout(Duration::from_secs(10), child.stop(grace))
            .await
            .unwrap();
        assert!(kill(pid, None).is_err(), "still running");
    }

    #[tokio::test]
    async fn listening_is_reported_and_stop_terminates() {
        let (exits, mut exited) = mpsc::unbounded_channel();
        let spawned = spawn(
            "t",
            sh("echo LISTENING 127.0.0.1:4321; exec sleep 30"),
            exits,
        )
        .unwrap();
        let addr = tokio::time::timeout(Duration::from_secs(10), spawned.listening)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(addr.port(), 4321);
        stop_and_check(spawned.child, Duration::from_secs(5)).await;
        assert!(
            exited.try_recv().is_err(),
            "a requested stop is not an exit"
        );
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
        let (exits, _exited) = mpsc::unbounded_channel();
        let script = "trap '' TERM; echo LISTENING 127.0.0.1:1; while :; do sleep 1; done";
        let spawned = spawn("stubborn", sh(script), exits).unwrap();
        // Its trap is set once it printed.
        let _ = tokio::time::timeout(Duration::from_secs(10), spawned.listening).await;
        stop_and_check(spawned.child, Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn an_unrequested_exit_is_reported() {
        let (exits, mut exited) = mpsc::unbounded_channel();
        let _spawned = spawn("short", sh("exit 3"), exits).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), exited.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.name, "short");
        assert_eq!(exit.status.and_then(|s| s.code()), Some(3));
    }
}

//! A running `chat-node` process (from the chat-node package): started on 127.0.0.1 port 0,
//! its address read from its `LISTENING <addr>` line, its stderr kept in a temp file, killed
//! on drop.
//!
//! Build it first: `cargo build -p chat-node --bin chat-node`.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use futures::SinkExt as _;
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::Message;

use crate::procs::{
    bin_path, init, kill_and_reap, read_file_lossy, read_listening, send_signal,
    stop_until_dropped, tail, wait_exit, Stopped, START_TIMEOUT,
};
use crate::ws::{ws_open, ws_recv, Ws, WsOptions};
use crate::STEP_TIMEOUT;

/// A `chat-node` child process.
pub struct ChatNode {
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl ChatNode {
    /// Starts `chat-node --node-id <id> --listen 127.0.0.1:0`, on the cluster bus of `redis`
    /// (a `redis://` URL) when given, with `extra` arguments (e.g. short heartbeats).
    ///
    /// # Panics
    /// If the binary is missing or the node does not report `LISTENING` in time, with its
    /// log.
    pub fn start(id: &str, redis: Option<&str>, extra: &[&str]) -> ChatNode {
        init();
        let dir = tempfile::Builder::new()
            .prefix(&format!("chat-node-{id}-"))
            .tempdir()
            .expect("creating a temp dir for the node's log");
        let log = dir.path().join("stderr.log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating the node's log");
        let bin = bin_path("chat-node");
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--node-id", id]);
        if let Some(url) = redis {
            cmd.args(["--redis", url]);
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        match read_listening(stdout, START_TIMEOUT) {
            Ok(addr) => ChatNode {
                id: id.to_owned(),
                addr,
                child: Some(child),
                dir,
            },
            Err(e) => {
                kill_and_reap(&mut child);
                panic!(
                    "chat-node {id} failed to start: {e}\n--- stderr ---\n{}",
                    tail(&read_file_lossy(&log), 50)
                );
            }
        }
    }

    /// The node id it was started with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// The node's log so far.
    pub fn logs(&self) -> String {
        read_file_lossy(&self.log_path())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub fn terminate(&mut self) {
        if let Some(child) = &self.child {
            send_signal(child, Signal::SIGTERM);
        }
    }

    /// Waits up to `timeout` for the process to exit; its status and how long the wait
    /// took, or `None` if it is still running (or was already reaped).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        let status = wait_exit(self.child.as_mut()?, timeout)?;
        self.child = None;
        Some((status, start.elapsed()))
    }

    /// SIGSTOP: a hung node. Its listener and connections stay open (the kernel still
    /// accepts connections and buffers what clients and Redis send it) but it runs
    /// nothing until the returned guard is dropped (SIGCONT), a panicking test's
    /// included.
    pub fn freeze(&self) -> Stopped<'_> {
        stop_until_dropped(self.child.as_ref())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

impl Drop for ChatNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- chat-node {} stderr (tail) ---\n{}",
                self.id,
                tail(&self.logs(), 40)
            );
        }
        self.kill();
    }
}

/// A socket connected to the chat on `node` (raw Engine.IO over WebSocket), kept open by
/// the caller; it is in `lobby` once this returns.
///
/// # Panics
/// If the node does not open the session or send the `welcome` in time.
pub async fn raw_chat_socket(node: &ChatNode, name: &str) -> Ws {
    let mut ws = raw_chat_connect(node, &format!(r#"{{"name":"{name}"}}"#)).await;
    // The welcome comes after the hook put the socket in its rooms.
    loop {
        match ws_recv(&mut ws, STEP_TIMEOUT).await {
            Some(Message::Text(t)) if t.starts_with(r#"42["welcome""#) => return ws,
            Some(_) => {}
            None => panic!("no welcome from {}", node.id()),
        }
    }
}

/// A [`raw_chat_socket`] of a new user named `name` on `node`, its `welcome` read: the
/// socket and the user's token (for [`raw_chat_tab`]).
///
/// # Panics
/// If the node does not open the session or send a `welcome` with a token in time.
pub async fn raw_chat_user(node: &ChatNode, name: &str) -> (Ws, String) {
    let mut ws = raw_chat_connect(node, &serde_json::json!({ "name": name }).to_string()).await;
    let welcome = events_until(&mut ws, "welcome", |_| true).await;
    let token = welcome.last().map(|w| w[1]["token"].clone());
    let token = token.and_then(|t| t.as_str().map(str::to_owned));
    (ws, token.expect("a token in the welcome"))
}

/// Another socket of the user of `token` on `node` (another tab), its `welcome` read.
///
/// # Panics
/// If the node does not open the session or send the `welcome` in time.
pub async fn raw_chat_tab(node: &ChatNode, name: &str, token: &str) -> Ws {
    let auth = serde_json::json!({ "name": name, "token": token }).to_string();
    let mut ws = raw_chat_connect(node, &auth).await;
    events_until(&mut ws, "welcome", |_| true).await;
    ws
}

/// Opens a raw Engine.IO WebSocket to the chat on `node` and sends the Socket.IO CONNECT
/// with `auth` (JSON, e.g. `{"name":"a","token":"…"}`); the `welcome` is still to be read.
///
/// # Panics
/// If the node does not open the session in time.
pub async fn raw_chat_connect(node: &ChatNode, auth: &str) -> Ws {
    let mut ws = raw_chat_open(node).await;
    raw_chat_send_connect(&mut ws, auth).await;
    ws
}

/// Opens a raw Engine.IO WebSocket to `node` and reads its open packet: an Engine.IO
/// session without a Socket.IO socket yet ([`raw_chat_send_connect`] asks for one).
///
/// # Panics
/// If the node does not open the session in time.
pub async fn raw_chat_open(node: &ChatNode) -> Ws {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr());
    let (mut ws, _) = ws_open(&url, &WsOptions::default())
        .await
        .expect("opening a WebSocket to the chat node");
    let open = ws_recv(&mut ws, STEP_TIMEOUT).await;
    assert!(
        matches!(&open, Some(Message::Text(t)) if t.starts_with('0')),
        "an Engine.IO open packet: {open:?}"
    );
    ws
}

/// Sends the Socket.IO CONNECT with `auth` (JSON) on a [`raw_chat_open`] session; the
/// `welcome` is still to be read. It only writes: a frozen node gets it when it runs
/// again.
///
/// # Panics
/// If the WebSocket is closed.
pub async fn raw_chat_send_connect(ws: &mut Ws, auth: &str) {
    ws.send(Message::text(format!("40{auth}")))
        .await
        .expect("sending CONNECT");
}

/// The events (`[name, payload, …]`) read on `ws` up to and including the first `event`
/// whose payload satisfies `pred`, in their order of arrival.
///
/// # Panics
/// If no such event comes within [`STEP_TIMEOUT`] of the previous packet.
pub async fn events_until(
    ws: &mut Ws,
    event: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let Some(Message::Text(text)) = ws_recv(ws, STEP_TIMEOUT).await else {
            panic!("no {event} event in time; got {seen:?}");
        };
        let Some(json) = text.strip_prefix("42") else {
            continue;
        };
        let args: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let done = args[0] == event && pred(&args[1]);
        seen.push(args);
        if done {
            return seen;
        }
    }
}

/// The texts of the `message` events read on `ws` up to and including the one whose text
/// is `last` (bounded: each packet must come within the step timeout).
pub async fn message_texts_until(ws: &mut Ws, last: &str) -> Vec<String> {
    events_until(ws, "message", |m| m["text"] == last)
        .await
        .into_iter()
        .filter(|event| event[0] == "message")
        .filter_map(|event| event[1]["text"].as_str().map(str::to_owned))
        .collect()
}

/// Emits chat event `event` with `payload` (JSON) and ack id `id` on a
/// [`raw_chat_socket`], and returns the ack's answer (`{"ok":…}`); other packets are
/// skipped.
///
/// # Panics
/// If no ack comes within [`STEP_TIMEOUT`].
pub async fn raw_chat_call(ws: &mut Ws, id: u64, event: &str, payload: &str) -> serde_json::Value {
    ws.send(Message::text(format!(r#"42{id}["{event}",{payload}]"#)))
        .await
        .expect("sending an event");
    let prefix = format!("43{id}[");
    loop {
        match ws_recv(ws, STEP_TIMEOUT).await {
            Some(Message::Text(t)) if t.starts_with(&prefix) => {
                let args: serde_json::Value = serde_json::from_str(&t[prefix.len() - 1..])
                    .unwrap_or_else(|e| panic!("an ack's arguments: {t}: {e}"));
                return args[0].clone();
            }
            Some(_) => {}
            None => panic!("no ack {id} for {event}"),
        }
    }
}

/// The Engine.IO path of `node` for `transport`, with session `sid` when given.
pub fn engine_url(node: &ChatNode, transport: &str, sid: Option<&str>) -> String {
    let mut url = node.url(&format!("/socket.io/?EIO=4&transport={transport}"));
    if let Some(sid) = sid {
        url.push_str("&sid=");
        url.push_str(sid);
    }
    url
}

/// Upgrades polling session `sid` to a WebSocket opened at `node` (the owner or another
/// node, which then bridges it): `2probe`, whose answer must be the next frame (`3probe`),
/// then `5`.
///
/// # Panics
/// If the WebSocket does not open, or the probe is not answered first.
pub async fn upgrade_to_websocket(node: &ChatNode, sid: &str) -> Ws {
    let ws_url = engine_url(node, "websocket", Some(sid)).replacen("http://", "ws://", 1);
    let (mut ws, _) = ws_open(&ws_url, &WsOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the WebSocket upgrade on {}: {e}", node.id()));
    ws.send(Message::text("2probe")).await.expect("probe");
    let probe = ws_recv(&mut ws, STEP_TIMEOUT).await;
    assert!(
        matches!(&probe, Some(Message::Text(t)) if t.as_str() == "3probe"),
        "{probe:?}"
    );
    ws.send(Message::text("5")).await.expect("upgrade");
    ws
}

/// A chat socket opened over long-polling on `node`: the Engine.IO handshake, then the
/// Socket.IO CONNECT as `name`. Returns the Engine.IO session id; the `welcome` is still
/// to be polled.
pub async fn polling_open(node: &ChatNode, name: &str) -> String {
    let http = crate::client();
    let open = crate::send(http.get(engine_url(node, "polling", None))).await;
    assert_eq!(open.status, 200, "handshake: {}", open.body);
    let handshake: serde_json::Value = open
        .body
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("an open packet: {}", open.body));
    let sid = handshake["sid"].as_str().expect("a sid").to_owned();
    let url = engine_url(node, "polling", Some(&sid));
    let connect = crate::send(http.post(&url).body(format!(r#"40{{"name":"{name}"}}"#))).await;
    assert_eq!(
        (connect.status.as_u16(), connect.body.as_str()),
        (200, "ok")
    );
    sid
}

/// Runs `chat-node` with `args` (and `--listen 127.0.0.1:0` unless they name one) and
/// environment `env`; it must exit with a failure within a few seconds, without serving.
/// Returns its stderr.
pub fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin_path("chat-node"));
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null());
    let run = crate::socketio::run_with_timeout(cmd, Duration::from_secs(10));
    assert!(
        run.status.is_some_and(|s| !s.success()),
        "chat-node {args:?} {env:?} should be refused ({}):\n{}",
        run.describe_status(),
        run.output()
    );
    assert!(
        !run.stdout.contains("LISTENING"),
        "it must not serve: {}",
        run.output()
    );
    run.stderr
}

/// Whether a `message` of `room` with text `text` comes on `ws` within `within`; the
/// packets before it are read and dropped.
pub async fn message_within(ws: &mut Ws, room: &str, text: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(Message::Text(packet)) = ws_recv(ws, left).await else {
            return false;
        };
        let Some(json) = packet.strip_prefix("42") else {
            continue;
        };
        let args: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        if args[0] == "message" && args[1]["room"] == room && args[1]["text"] == text {
            return true;
        }
    }
}

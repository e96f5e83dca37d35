//! `switchyard up` end to end: the real binary on free ports with a fresh certificate
//! directory, with a private Redis it starts itself, with a Redis given by `--redis`, and on
//! the embedded default (`--no-redis`). Each run is reached through the TLS proxy (trusting
//! the CA it generated): `/healthz`, `/`, the HTTP redirect, a Socket.IO connection over
//! Engine.IO long-polling. Then a stop signal must end it with code 0 within a bound, with
//! every process it started gone and its ports free again. Killed with SIGKILL, its children
//! must still go (no orphans).
//!
//! Build first: `cargo build -p stack --bin switchyard` (scripts/test.sh builds every binary).

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tests::http::{tls_client, Alpn};
use tests::redis::RedisServer;
use tests::ws::{ws_close, ws_open, ws_recv, Ws, WsOptions};
use tests::{bin_path, free_port, get_with, send, wait_for, STEP_TIMEOUT};
use tokio_tungstenite::tungstenite::Message;

/// Start-up on a loaded 2-core machine: Redis, three nodes, the proxy, health checks.
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// A stop: proxy grace (1 s) + node grace (2 s) + Redis, with room to spare; well under the
/// 10 s per component after which `switchyard` would SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `switchyard up`, its output collected line by line. SIGKILLed on drop (its
/// children then get SIGTERM from the kernel), with its output printed if the test failed.
struct Switchyard {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    dir: TempDir,
    https: u16,
    http: u16,
    admin: u16,
    node_ports: Vec<u16>,
}

/// Three consecutive free ports for `--node-base-port`.
fn node_base() -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if (1..3).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        }) {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

fn collect(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            buf.clear();
        }
    });
}

impl Switchyard {
    /// `switchyard up` with free ports, a temp `--certs`, and `extra` flags.
    fn start(extra: &[&str]) -> Switchyard {
        let [https, http, admin] = tests::port_array();
        let base = node_base();
        let dir = tempfile::Builder::new()
            .prefix("switchyard-up-")
            .tempdir()
            .expect("temp dir");
        let mut child = Command::new(bin_path("switchyard"))
            .arg("up")
            .args(["--https", &format!("127.0.0.1:{https}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--node-base-port", &base.to_string()])
            .args(["--certs", "certs", "--ready-timeout", "50s"])
            .args(extra)
            .env_remove("SWITCHYARD_ADMIN_TOKEN")
            .env_remove("SWITCHYARD_REDIS_URL")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning switchyard");
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("piped"), Arc::clone(&lines));
        collect(child.stderr.take().expect("piped"), Arc::clone(&lines));
        Switchyard {
            child,
            lines,
            dir,
            https,
            http,
            admin,
            node_ports: (0..3).map(|i| base + i).collect(),
        }
    }

    fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits for a line containing `needle` (failing early if `switchyard` exits).
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "switchyard exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the stack is ready; returns the URL it printed.
    fn wait_ready(&mut self) -> String {
        let line = self.wait_line("[switchyard] ready: ", UP_TIMEOUT);
        let url = line
            .split("ready: ")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert_eq!(url, format!("https://localhost:{}/", self.https));
        url
    }

    /// `(name, pid)` of every child it reported (`started <name> (pid <n>)`).
    fn children(&self) -> Vec<(String, i32)> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("[switchyard] started ")?;
                let (name, pid) = rest.split_once(" (pid ")?;
                Some((name.to_owned(), pid.strip_suffix(')')?.parse().ok()?))
            })
            .collect()
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("certs/ca.pem")).expect("switchyard wrote certs/ca.pem")
    }

    fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        kill(Pid::from_raw(pid), sig).expect("signalling switchyard");
    }

    /// Sends `sig` and waits for the exit.
    fn stop_with(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard still running {STOP_TIMEOUT:?} after {sig}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every address it listened on (proxy and nodes) can be bound again.
    fn assert_ports_free(&self) {
        for port in [self.https, self.http, self.admin]
            .into_iter()
            .chain(self.node_ports.iter().copied())
        {
            assert!(
                TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "port {port} still taken after switchyard exited:\n{}",
                self.output()
            );
        }
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- switchyard output ---\n{}", self.output());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is a live process (a zombie waiting for its reaper counts as gone).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits until none of `pids` is alive.
async fn wait_all_gone(pids: &[(String, i32)], what: &str) {
    wait_for(Duration::from_secs(15), what, || async {
        let left: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).collect();
        left.is_empty().then_some(())
    })
    .await;
}

/// What every mode must serve through the proxy: `/healthz` from a chat node over TLS, `/`
/// from a chat node, the HTTP listener's redirect, and a Socket.IO connection (long-polling
/// handshake, CONNECT, then the `welcome` event naming the node). Returns the node ids seen.
async fn assert_serves(sy: &Switchyard) -> BTreeSet<String> {
    let https = tls_client(&sy.ca_pem(), Alpn::Http1);
    let base = format!("https://localhost:{}", sy.https);
    let mut served = BTreeSet::new();
    for _ in 0..9 {
        let r = get_with(&https, &format!("{base}/healthz")).await;
        assert_eq!(r.status, 200, "{r:?}");
        served.insert(r.header("x-served-by").expect("x-served-by").to_owned());
    }
    assert!(
        served
            .iter()
            .all(|n| ["n1", "n2", "n3"].contains(&n.as_str())),
        "{served:?}"
    );

    // The browser page, from a chat node. (Before chat-node/web/ existed, `/` was a node's 404.)
    let page = get_with(&https, &format!("{base}/")).await;
    assert!(page.header("x-served-by").is_some(), "{page:?}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../chat-node/web/index.html");
    if root.exists() {
        assert_eq!(page.status, 200, "GET / through the proxy: {page:?}");
        let ct = page.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/html"), "content-type {ct:?}");
    } else {
        assert_eq!(page.status, 404, "GET / through the proxy: {page:?}");
    }

    let plain = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(STEP_TIMEOUT)
        .build()
        .expect("client");
    let redirect = send(plain.get(format!("http://127.0.0.1:{}/x", sy.http))).await;
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://127.0.0.1:{}/x", sy.https).as_str())
    );

    // Plain HTTP on the TLS port is told so, and is not an ERROR in the proxy's log.
    let mut c = tests::raw::RawConn::connect(([127, 0, 0, 1], sy.https).into()).await;
    let r = c
        .exchange("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    // Closed now, so that the proxy is done with it (and has logged whatever it logs)
    // well before the log is read below.
    drop(c);

    let node = socketio_welcome(&https, &base).await;
    assert!(["n1", "n2", "n3"].contains(&node.as_str()), "{node}");
    served.insert(node);
    let ws = SioWs::connect(&sy.ca_pem(), sy.https, "stack-ws").await;
    assert!(
        ["n1", "n2", "n3"].contains(&ws.node.as_str()),
        "{}",
        ws.node
    );
    served.insert(ws.node.clone());
    ws.close().await;
    let out = sy.output();
    assert!(
        !out.lines()
            .any(|l| l.contains("ERROR") && l.contains("handshake")),
        "{out}"
    );
    // Piped, not a terminal: no colour codes.
    assert!(!out.contains('\u{1b}'), "{out}");
    served
}

/// The `node` of a Socket.IO `welcome` event in `packets` (Engine.IO message packets,
/// without their leading `4`), if there is one.
fn welcome_node<'a>(packets: impl IntoIterator<Item = &'a str>) -> Option<String> {
    packets.into_iter().find_map(|packet| {
        let event = packet.strip_prefix('2')?;
        let serde_json::Value::Array(args) = serde_json::from_str(event).ok()? else {
            return None;
        };
        (args.first()?.as_str()? == "welcome")
            .then(|| args.get(1)?["node"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// Connects to namespace `/` over Engine.IO v4 long-polling through the proxy and returns the
/// `node` of the `welcome` event.
async fn socketio_welcome(https: &reqwest::Client, base: &str) -> String {
    let url = format!("{base}/socket.io/?EIO=4&transport=polling");
    let open = get_with(https, &url).await;
    assert_eq!(open.status, 200, "{open:?}");
    let handshake = open
        .body
        .strip_prefix('0')
        .unwrap_or_else(|| panic!("not an Engine.IO OPEN packet: {:?}", open.body));
    let handshake: serde_json::Value = serde_json::from_str(handshake).expect("OPEN is JSON");
    let sid = handshake["sid"].as_str().expect("sid").to_owned();
    let session = format!("{url}&sid={sid}");
    let connect = send(
        https
            .post(&session)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(r#"40{"name":"stack-test"}"#),
    )
    .await;
    assert_eq!(connect.status, 200, "{connect:?}");
    let mut received = String::new();
    for _ in 0..5 {
        let poll = get_with(https, &session).await;
        assert_eq!(poll.status, 200, "{poll:?}");
        received.push('\u{1e}');
        received.push_str(&poll.body);
        assert!(
            !received.contains("\u{1e}44"),
            "CONNECT refused: {received:?}"
        );
        if let Some(node) =
            welcome_node(received.split('\u{1e}').filter_map(|p| p.strip_prefix('4')))
        {
            return node;
        }
    }
    panic!("no welcome event after CONNECT: {received:?}");
}

/// A Socket.IO client on an Engine.IO WebSocket through the TLS proxy (no polling first):
/// just what these tests need.
struct SioWs {
    ws: Ws,
    /// The node of the `welcome` event.
    node: String,
}

impl SioWs {
    /// Connects to namespace `/` as `name` and waits for `welcome`.
    async fn connect(ca_pem: &[u8], https: u16, name: &str) -> SioWs {
        let url = format!("wss://localhost:{https}/socket.io/?EIO=4&transport=websocket");
        let opts = WsOptions {
            ca_pem: Some(ca_pem.to_vec()),
            ..WsOptions::default()
        };
        let (mut ws, _) = ws_open(&url, &opts)
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {url}: {e}"));
        let open = ws_recv(&mut ws, STEP_TIMEOUT).await;
        assert!(
            matches!(&open, Some(Message::Text(t)) if t.as_str().starts_with("0{")),
            "expected the Engine.IO OPEN packet, got {open:?}"
        );
        let auth = serde_json::json!({ "name": name });
        ws.send(Message::text(format!("40{auth}")))
            .await
            .expect("sending CONNECT");
        let mut sio = SioWs {
            ws,
            node: String::new(),
        };
        let welcome = sio
            .next_packet("the welcome event", |p| welcome_node([p]).is_some())
            .await;
        sio.node = welcome_node([welcome.as_str()]).unwrap_or_default();
        sio
    }

    /// The next Socket.IO packet (an Engine.IO message without its `4`) for which `want` is
    /// true; pings are answered, other packets skipped. Panics on a CONNECT_ERROR or after
    /// [`STEP_TIMEOUT`].
    async fn next_packet(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let mut skipped = Vec::new();
        while let Some(msg) = ws_recv(&mut self.ws, STEP_TIMEOUT).await {
            let Message::Text(text) = msg else { continue };
            let text = text.as_str();
            if text == "2" {
                let _ = self.ws.send(Message::text("3")).await;
                continue;
            }
            let Some(packet) = text.strip_prefix('4') else {
                continue;
            };
            assert!(!packet.starts_with('4'), "CONNECT refused: {packet}");
            if want(packet) {
                return packet.to_owned();
            }
            skipped.push(packet.to_owned());
        }
        panic!("no {what} within {STEP_TIMEOUT:?}; got {skipped:?}");
    }

    /// Emits `event` with `data` and ack id `id`; returns the ack's argument.
    async fn emit_with_ack(
        &mut self,
        id: u32,
        event: &str,
        data: serde_json::Value,
    ) -> serde_json::Value {
        let packet = serde_json::json!([event, data]);
        self.ws
            .send(Message::text(format!("42{id}{packet}")))
            .await
            .expect("sending an event");
        let prefix = format!("3{id}");
        let ack = self
            .next_packet(&format!("the ack of {event}"), |p| p.starts_with(&prefix))
            .await;
        let args: serde_json::Value =
            serde_json::from_str(&ack[prefix.len()..]).expect("the ack is JSON");
        args[0].clone()
    }

    async fn close(self) {
        ws_close(self.ws).await;
    }
}

/// Two users whose WebSockets reach different nodes chat in `lobby`: a message sent on one
/// node arrives on the other (through Redis, or the shared in-process bus when embedded).
async fn assert_chat_across_nodes(sy: &Switchyard) {
    let ca = sy.ca_pem();
    let mut alice = SioWs::connect(&ca, sy.https, "alice").await;
    // The balancer spreads open WebSockets: one of the next connections lands elsewhere.
    let mut others = Vec::new();
    let mut bob = loop {
        let bob = SioWs::connect(&ca, sy.https, "bob").await;
        if bob.node != alice.node {
            break bob;
        }
        others.push(bob);
        assert!(others.len() < 3, "every WebSocket went to {}", alice.node);
    };
    let text = "hello from the other node";
    let ack = alice
        .emit_with_ack(
            1,
            "send",
            serde_json::json!({"room": "lobby", "text": text}),
        )
        .await;
    assert_eq!(ack["ok"], true, "send: {ack}");
    let message = bob
        .next_packet("alice's message", |p| {
            p.starts_with(r#"2["message""#) && p.contains(text)
        })
        .await;
    assert!(message.contains(r#""from":"alice""#), "{message}");
    for sio in others.into_iter().chain([alice, bob]) {
        sio.close().await;
    }
}

/// Redis `DBSIZE` over a raw connection.
fn dbsize(port: u16) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to redis");
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .expect("timeout");
    stream.write_all(b"DBSIZE\r\n").expect("writing to redis");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("reading from redis");
    line.trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("DBSIZE answered {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_private_redis_it_serves_then_stops_everything_on_sigint() {
    let mut sy = Switchyard::start(&[]);
    sy.wait_ready();
    let output = sy.output();
    assert!(
        output.contains("private redis-server"),
        "redis-server is installed by scripts/install-deps.sh, so up must start one:\n{output}"
    );
    assert!(output.contains("Trust the development CA"), "{output}");
    assert!(output.contains("token: "), "{output}");
    let children = sy.children();
    let names: BTreeSet<&str> = children.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["redis", "n1", "n2", "n3", "proxy"]),
        "{children:?}"
    );

    let served = assert_serves(&sy).await;
    assert_chat_across_nodes(&sy).await;
    // least_conn rotates ties: sequential requests meet more than one node process.
    assert!(served.len() >= 2, "only {served:?} answered");

    let status = sy.stop_with(Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "{}", sy.output());
    wait_all_gone(&children, "every child of switchyard to be gone").await;
    assert!(sy.output().contains("[switchyard] all stopped"));
    sy.assert_ports_free();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_given_redis_it_uses_it_and_leaves_it_running_after_sigterm() {
    let redis = RedisServer::start();
    assert_eq!(dbsize(redis.port()), 0);
    let mut sy = Switchyard::start(&["--redis", &redis.url(), "--strategy", "round_robin"]);
    sy.wait_ready();
    let children = sy.children();
    let names: BTreeSet<&str> = children.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["n1", "n2", "n3", "proxy"]));
    // The URL (which may carry a password) reaches the nodes in their environment, not on
    // their command line, which every user of the machine can read with `ps`.
    for (name, pid) in children.iter().filter(|(n, _)| n.starts_with('n')) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the node's cmdline");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the node's environ");
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&redis.url()),
            "{name}'s command line shows the Redis URL: {cmdline}"
        );
        let wanted = format!("CHAT_REDIS_URL={}", redis.url());
        assert!(
            String::from_utf8_lossy(&environ)
                .split('\0')
                .any(|v| v == wanted),
            "{name} did not get {wanted} in its environment"
        );
    }

    let served = assert_serves(&sy).await;
    assert_chat_across_nodes(&sy).await;
    assert_eq!(served.len(), 3, "round_robin over 9 requests: {served:?}");
    // The nodes keep their cluster state (session owners, the bus) in the given Redis.
    assert!(
        dbsize(redis.port()) > 0,
        "nothing was written to {}",
        redis.url()
    );

    let status = sy.stop_with(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", sy.output());
    wait_all_gone(&children, "every child of switchyard to be gone").await;
    sy.assert_ports_free();
    // Not ours to stop.
    dbsize(redis.port());
}

/// `/status` on the stack's admin listener, with the token its banner printed.
async fn admin_status(sy: &mut Switchyard) -> serde_json::Value {
    let line = sy.wait_line("token: ", STEP_TIMEOUT);
    let token = line.rsplit("token: ").next().unwrap_or_default().trim();
    let url = format!("http://127.0.0.1:{}/status", sy.admin);
    let r = send(reqwest::Client::new().get(url).bearer_auth(token)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The chat upstream's backends whose health is `health`.
fn nodes_with_health(status: &serde_json::Value, health: &str) -> usize {
    status["upstreams"][0]["backends"]
        .as_array()
        .map_or(0, |bs| bs.iter().filter(|b| b["health"] == health).count())
}

/// Every node says 503 on `/healthz` while it cannot reach Redis, so the proxy's checks take
/// them all out. The stack's proxy fails open: the site stays up (its page, each node's own
/// answer), not a `503` from the proxy for everything, and chat works again across nodes
/// once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_leaves_the_nodes_reachable_through_the_proxy() {
    let mut redis = RedisServer::start();
    let mut sy = Switchyard::start(&["--redis", &redis.url(), "--strategy", "round_robin"]);
    sy.wait_ready();
    let https = tls_client(&sy.ca_pem(), Alpn::Http1);
    let base = format!("https://localhost:{}", sy.https);

    redis.stop();
    let deadline = Instant::now() + UP_TIMEOUT;
    let status = loop {
        let status = admin_status(&mut sy).await;
        if nodes_with_health(&status, "down") == 3 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes not all down: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["upstreams"][0]["failing_open"], true, "{status}");
    let mut served = BTreeSet::new();
    for _ in 0..6 {
        let health = get_with(&https, &format!("{base}/healthz")).await;
        assert_eq!(health.status, 503, "{health:?}");
        assert!(
            health.body.starts_with("redis: "),
            "the node's own answer: {health:?}"
        );
        served.insert(
            health
                .header("x-served-by")
                .expect("x-served-by")
                .to_owned(),
        );
        let page = get_with(&https, &format!("{base}/")).await;
        assert!(page.header("x-served-by").is_some(), "{page:?}");
    }
    assert_eq!(served.len(), 3, "round_robin over all three: {served:?}");

    redis.restart();
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        let status = admin_status(&mut sy).await;
        if nodes_with_health(&status, "up") == 3 {
            assert_eq!(status["upstreams"][0]["failing_open"], false, "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the nodes not all up: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_chat_across_nodes(&sy).await;
    sy.wait_line("no backend in service: failing open", STEP_TIMEOUT);
    sy.wait_line("a backend is in service again", STEP_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_nodes_run_in_process_and_sigint_stops_it() {
    let mut sy = Switchyard::start(&["--no-redis"]);
    sy.wait_ready();
    let output = sy.output();
    assert!(output.contains("embedded default"), "{output}");
    let children = sy.children();
    let names: Vec<&str> = children.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["proxy"], "only the proxy is a child process");

    assert_serves(&sy).await;
    // The in-process nodes share one bus and chat store, as nodes on Redis do.
    assert_chat_across_nodes(&sy).await;

    let status = sy.stop_with(Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "{}", sy.output());
    wait_all_gone(&children, "the proxy to be gone").await;
    sy.assert_ports_free();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_it_leaves_no_orphans() {
    let mut sy = Switchyard::start(&[]);
    sy.wait_ready();
    let children = sy.children();
    assert!(children.len() >= 2, "{children:?}");
    assert!(children.iter().all(|(_, p)| alive(*p)));
    sy.signal(Signal::SIGKILL);
    wait_all_gone(&children, "the children of a SIGKILLed switchyard to exit").await;
    // Let the next assertion see the kernel's view, not a half-closed socket.
    let _ = sy.child.wait();
    sy.assert_ports_free();
}

/// `switchyard up` with `https` as its HTTPS address and `node_base` as its first node's
/// port; it must refuse at once: its exit code 1 and its output.
fn up_refused(https: SocketAddr, node_base: u16) -> String {
    let [http, admin] = tests::port_array();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(bin_path("switchyard"))
        .arg("up")
        .args(["--https", &https.to_string()])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--node-base-port", &node_base.to_string()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("running switchyard");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("started "), "nothing may start: {all}");
    assert!(!all.contains("panicked"), "{all}");
    all
}

#[test]
fn a_taken_port_is_refused_naming_the_flag() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken: SocketAddr = held.local_addr().expect("addr");
    let all = up_refused(taken, node_base());
    assert!(
        all.contains("already in use") && all.contains("--https"),
        "{all}"
    );
}

/// Two of its own addresses on one port: refused before anything starts, naming both
/// flags (the second listener failed once everything before it had started).
#[test]
fn two_of_its_own_addresses_on_one_port_are_refused_naming_both_flags() {
    let base = node_base();
    let https = SocketAddr::from(([127, 0, 0, 1], base));
    let all = up_refused(https, base);
    assert!(
        all.contains("--https") && all.contains("--node-base-port") && all.contains("both"),
        "{all}"
    );
}

#[test]
fn help_does_not_print_a_redis_password_from_the_environment() {
    // A Redis URL often carries its password; `--help` output ends up in terminals, issues
    // and CI logs.
    let url = "redis://:s3cret-pw@127.0.0.1:6379";
    for (bin, args, var) in [
        ("switchyard", &["up", "--help"][..], "SWITCHYARD_REDIS_URL"),
        ("chat-node", &["--help"][..], "CHAT_REDIS_URL"),
    ] {
        let out = Command::new(bin_path(bin))
            .args(args)
            .env(var, url)
            .output()
            .unwrap_or_else(|e| panic!("running {bin}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} {args:?}: {text}");
        assert!(
            text.contains(var),
            "{bin}: the variable is still named: {text}"
        );
        assert!(
            !text.contains("s3cret-pw"),
            "{bin} printed the password: {text}"
        );
    }
}

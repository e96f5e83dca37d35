//! A chat node's memory per idle connected client: the slope of the node's resident memory
//! over 1k, 2k, 4k, 6k and 8k connected Socket.IO clients (WebSocket, namespace `/` of the
//! chat, each in `lobby`), read from `/proc/<pid>/status` once the node has settled.
//! The node is the real `chat-node` binary, measured twice: on the embedded bus and store
//! (the users, memberships and presence then live in the node too), and on a private
//! `redis-server` when one is installed (the cluster set-up: they live in Redis). The
//! clients live in this process and answer pings, so they stay connected and "idle" (they
//! send nothing else).
//!
//! `cargo bench -p chat-node --bench idle_memory` (Linux; about two minutes)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const STEPS: [usize; 5] = [1000, 2000, 4000, 6000, 8000];

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Waits until the node's RSS stops moving (two reads 500 ms apart within 1%), at most 10 s.
async fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss_kib(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    num / den
}

async fn open_client(url: String, id: usize, ready: mpsc::UnboundedSender<()>) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        eprintln!("client {id}: connect failed");
        return;
    };
    let _ = ws.next().await; // open
    let auth = format!("40{{\"name\":\"u{id}\"}}");
    if ws.send(Message::Text(auth.into())).await.is_err() {
        return;
    }
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else { continue };
        if text.starts_with("40{") {
            let _ = ready.send(());
        } else if text.as_str() == "2" {
            let _ = ws.send(Message::Text("3".into())).await;
        }
    }
}

/// A private `redis-server` on a free port, without persistence; `None` when not installed.
fn redis_server() -> Option<(std::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, format!("redis://127.0.0.1:{port}")))
}

fn main() {
    measure("embedded bus and store", None);
    match redis_server() {
        Some((mut redis, url)) => {
            measure("on redis-server", Some(&url));
            let _ = redis.kill();
            let _ = redis.wait();
        }
        None => println!("redis-server not installed: the Redis-backed measurement is skipped"),
    }
}

fn measure(what: &str, redis: Option<&str>) {
    println!("== chat-node, {what}");
    let bin = env!("CARGO_BIN_EXE_chat-node");
    let mut command = Command::new(bin);
    command.args(["--listen", "127.0.0.1:0", "--node-id", "mem"]);
    if let Some(url) = redis {
        command.args(["--redis", url]);
    }
    let mut node = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning chat-node");
    let pid = node.id();
    let mut stdout = BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "chat-node exited");
        if let Some(addr) = line.trim().strip_prefix("LISTENING ") {
            break addr.to_owned();
        }
    };
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let points = rt.block_on(async {
        let base = settled_rss(pid).await;
        println!("chat-node idle: {base} KiB");
        let (ready_tx, mut ready) = mpsc::unbounded_channel();
        let mut opened = 0;
        let mut points = Vec::new();
        for target in STEPS {
            while opened < target {
                tokio::spawn(open_client(url.clone(), opened, ready_tx.clone()));
                opened += 1;
                // Keep the handshakes in flight bounded, as a real crowd arrives.
                if opened % 200 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut connected = points.last().map_or(0, |&(x, _): &(f64, f64)| x as usize);
            while connected < target && Instant::now() < deadline {
                if tokio::time::timeout(Duration::from_secs(5), ready.recv())
                    .await
                    .is_ok()
                {
                    connected += 1;
                }
            }
            let rss = settled_rss(pid).await;
            println!("{connected:>5} clients: {rss} KiB");
            points.push((connected as f64, rss as f64));
        }
        points
    });
    let per_client = slope(&points);
    println!("memory per idle client, {what} (slope over {STEPS:?}): {per_client:.2} KiB");
    let _ = node.kill();
    let _ = node.wait();
}

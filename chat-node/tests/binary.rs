//! The `chat-node` binary as a process: `LISTENING <addr>`, flags and their environment
//! fallbacks, `/healthz`, and a bounded, clean exit on SIGTERM that closes the clients'
//! connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::time::Duration;

use utils::process::NodeProcess;
use utils::redis::RedisServer;
use utils::{http, request};

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "p1",
            "--redis",
            &url,
        ],
        &[],
    );
    let health = request(http().get(format!("http://{}/healthz", node.addr))).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(health.header("x-served-by"), Some("p1"));

    // A connected WebSocket client is disconnected by the shutdown.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr);
    let mut ws = utils::Ws::connect(&url).await;
    assert!(ws.recv_text().await.starts_with("0{"));
    ws.send_text(r#"40{"name":"t"}"#).await;
    assert!(ws.recv_text().await.starts_with("40{"));
    assert!(ws.recv_text().await.starts_with("42[\"welcome\""));

    node.terminate();
    // The connection closes (after a close packet at most), within the bound of `recv`.
    let mut frames = Vec::new();
    while let Some(frame) = ws.recv().await {
        frames.push(frame);
    }
    assert!(frames.len() <= 1, "{frames:?}");
    let (status, took) = node
        .wait_exit(Duration::from_secs(7))
        .expect("chat-node did not exit within the bound");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test]
async fn flags_fall_back_to_the_environment() {
    let mut node = NodeProcess::start(
        &[],
        &[("CHAT_LISTEN", "127.0.0.1:0"), ("CHAT_NODE_ID", "from-env")],
    );
    let health = request(http().get(format!("http://{}/healthz", node.addr))).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("x-served-by"), Some("from-env"));
    node.terminate();
    let (status, _) = node.wait_exit(Duration::from_secs(7)).expect("no exit");
    assert!(status.success());
}

#[test]
fn bad_flags_are_refused() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-node"))
        .args(["--sessions", "sticky"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

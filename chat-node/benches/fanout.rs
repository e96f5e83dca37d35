//! One node's broadcast fan-out: a room broadcast reaching 1000 connected WebSocket
//! clients, from the emit to the last client's read of it (in process, loopback, the
//! embedded bus with recovery on, as a single node runs by default).
//!
//! `cargo bench -p chat-node --bench fanout`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chat_node::node::{Node, NodeConfig};
use chat_node::socketio::{Data, SocketRef};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 1000;

/// Starts a node with namespace `/bench` (every socket joins room `all`), and `CLIENTS`
/// clients that report each `tick` on the returned channel.
async fn setup() -> (Node, mpsc::UnboundedReceiver<()>) {
    let node = Node::new(NodeConfig {
        node_id: "bench".into(),
        // Broadcasts one after the other, each timed: with the default interval, the
        // clients written last would hold the next broadcast for it. What is measured is
        // the cost of one fan-out, not the coalescing of a stream.
        ws_flush_interval: Duration::ZERO,
        ..NodeConfig::default()
    })
    .await
    .unwrap();
    node.io()
        .ns(
            "/bench",
            |socket: SocketRef, _auth: Option<Map<String, Value>>| async move {
                socket.join("all").await.unwrap();
                Ok(())
            },
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = node.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    let (tx, rx) = mpsc::unbounded_channel();
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    for _ in 0..CLIENTS {
        let (url, tx, ready_tx) = (url.clone(), tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            // Small client buffers: tungstenite's 128 KiB default would have the clients,
            // which share the machine with the node, spend their time zeroing buffers.
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(&url, Some(config), false)
                    .await
                    .unwrap();
            ws.next().await.unwrap().unwrap(); // open
            ws.send(Message::Text("40/bench,".into())).await.unwrap();
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(text) = frame else { continue };
                if text.starts_with("40/bench,") {
                    let _ = ready_tx.send(());
                } else if text.starts_with("42/bench,[\"tick\"") {
                    let _ = tx.send(());
                } else if text.as_str() == "2" {
                    let _ = ws.send(Message::Text("3".into())).await;
                }
            }
        });
    }
    for _ in 0..CLIENTS {
        ready.recv().await.unwrap();
    }
    (node, rx)
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (node, mut ticks) = rt.block_on(setup());
    let nsp = node.io().of("/bench").unwrap();
    let payload =
        json!({"room": "all", "from": "bench", "text": "a message of a typical length for a chat"});
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(CLIENTS as u64));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("room_broadcast_to_1000_clients", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    nsp.to("all")
                        .emit("tick", vec![Data::from(payload.clone())])
                        .await
                        .unwrap();
                    for _ in 0..CLIENTS {
                        ticks.recv().await.unwrap();
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);

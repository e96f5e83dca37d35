//! Socket.IO chat clients over the WebSocket transport: connect with auth `{name}`, `create`
//! and `join` a room, then `send` on a fixed schedule while recording the end-to-end delay of every
//! `message` received (the text carries the send time in µs since the epoch).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{backend_index, connect_from};
use crate::stats::histogram;

const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time after the last send for messages still in flight.
const DRAIN: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<TcpStream>;
/// A joined client and the node that greeted it.
type Joined = (Ws, Option<usize>);

/// The workload.
#[derive(Debug, Clone)]
pub struct ChatLoad {
    pub addr: SocketAddr,
    pub clients: usize,
    pub rooms: usize,
    /// Messages per second per client.
    pub rate: f64,
    pub duration: Duration,
    pub nodes: Vec<String>,
}

/// What came back.
pub struct ChatOutcome {
    pub latency: Histogram<u64>,
    pub connected: u64,
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub delivered: u64,
    /// Deliveries the room sizes promise for the messages sent.
    pub expected: u64,
    pub per_node: Vec<u64>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn recv_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => {
                let t = t.to_string();
                if t == "2" {
                    ws.send(Message::text("3")).await.ok()?;
                    continue;
                }
                return Some(t);
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Connects client `i`, reads its `welcome` node and joins its room.
async fn setup(i: usize, load: &ChatLoad) -> Option<Joined> {
    let stream = connect_from(i, load.addr).await.ok()?;
    // A small read buffer: tungstenite's 128 KiB default makes the load generator spend
    // its CPU zeroing buffers (measured: a third of a fan-out run) instead of reading.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4 * 1024;
    let url = "ws://bench/socket.io/?EIO=4&transport=websocket";
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .ok()?;
    let open = recv_text(&mut ws).await?;
    if !open.starts_with('0') {
        return None;
    }
    let auth = format!("40{{\"name\":\"bench{i}\"}}");
    ws.send(Message::text(auth)).await.ok()?;
    let mut node = None;
    let mut connected = false;
    let room = format!("bench-{}", i % load.rooms.max(1));
    // Rooms must exist before a join; "room exists" is as good as created.
    let create = format!("421[\"create\",{{\"room\":\"{room}\",\"private\":false}}]");
    let join = format!("420[\"join\",{{\"room\":\"{room}\"}}]");
    loop {
        let t = recv_text(&mut ws).await?;
        if t.starts_with("44") {
            return None;
        }
        if t.starts_with("40") && !connected {
            connected = true;
            ws.send(Message::text(create.clone())).await.ok()?;
        } else if t.starts_with("431") {
            ws.send(Message::text(join.clone())).await.ok()?;
        } else if let Some(rest) = t.strip_prefix("42") {
            let v: serde_json::Value = serde_json::from_str(rest).ok()?;
            if v.get(0).and_then(|e| e.as_str()) == Some("welcome") {
                node = v
                    .get(1)
                    .and_then(|w| w.get("node"))
                    .and_then(|n| n.as_str())
                    .and_then(|n| backend_index(&load.nodes, n.as_bytes()));
            }
        } else if t.starts_with("430") {
            if !t.contains("\"ok\":true") {
                return None;
            }
            return Some((ws, node));
        }
    }
}

struct ClientResult {
    latency: Histogram<u64>,
    sent: u64,
    acked: u64,
    rejected: u64,
    delivered: u64,
}

async fn client(mut ws: Ws, i: usize, load: ChatLoad, start: Instant) -> ClientResult {
    let mut r = ClientResult {
        latency: histogram(),
        sent: 0,
        acked: 0,
        rejected: 0,
        delivered: 0,
    };
    let room = format!("bench-{}", i % load.rooms.max(1));
    let interval = Duration::from_secs_f64(1.0 / load.rate.max(0.001));
    // Spread the clients' first sends over one interval.
    let mut next = start + interval.mul_f64(i as f64 / load.clients.max(1) as f64);
    let deadline = start + load.duration;
    let end = deadline + DRAIN;
    let mut ack = 1u64;
    loop {
        let wake = if next < deadline { next } else { end };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {
                if wake >= end {
                    break;
                }
                let msg = format!("42{ack}[\"send\",{{\"room\":\"{room}\",\"text\":\"{}\"}}]", now_us());
                ack += 1;
                if ws.send(Message::text(msg)).await.is_err() {
                    break;
                }
                r.sent += 1;
                next += interval;
            }
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(t) = msg else { continue };
                let t = t.as_str();
                if t == "2" {
                    if ws.send(Message::text("3")).await.is_err() {
                        break;
                    }
                } else if t.starts_with("43") {
                    if t.contains("\"ok\":true") {
                        r.acked += 1;
                    } else {
                        r.rejected += 1;
                    }
                } else if let Some(rest) = t.strip_prefix("42[\"message\"") {
                    let sent_us = rest
                        .split("\"text\":\"")
                        .nth(1)
                        .and_then(|s| s.split('"').next())
                        .and_then(|s| s.parse::<u64>().ok());
                    if let Some(us) = sent_us {
                        r.delivered += 1;
                        let _ = r.latency.record(now_us().saturating_sub(us).max(1));
                    }
                }
            }
        }
    }
    let _ = ws.close(None).await;
    r
}

/// Connects every client, then runs the send/receive phase.
pub async fn run(load: ChatLoad) -> ChatOutcome {
    let setups: Vec<(usize, Option<Joined>)> = futures::stream::iter(0..load.clients)
        .map(|i| {
            let load = load.clone();
            async move {
                let r = tokio::time::timeout(SETUP_TIMEOUT, setup(i, &load)).await;
                (i, r.ok().flatten())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut out = ChatOutcome {
        latency: histogram(),
        connected: 0,
        sent: 0,
        acked: 0,
        rejected: 0,
        delivered: 0,
        expected: 0,
        per_node: vec![0; load.nodes.len()],
    };
    let rooms = load.rooms.max(1);
    let mut members = vec![0u64; rooms];
    let mut room_of = Vec::new();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for (i, s) in setups {
        let Some((ws, node)) = s else { continue };
        out.connected += 1;
        if let Some(k) = node {
            out.per_node[k] += 1;
        }
        members[i % rooms] += 1;
        room_of.push(i % rooms);
        tasks.push(tokio::spawn(client(ws, i, load.clone(), start)));
    }
    for (t, room) in tasks.into_iter().zip(room_of) {
        let Ok(r) = t.await else { continue };
        let _ = out.latency.add(&r.latency);
        out.sent += r.sent;
        out.acked += r.acked;
        out.rejected += r.rejected;
        out.delivered += r.delivered;
        out.expected += r.sent * members[room];
    }
    out
}

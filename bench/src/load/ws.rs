//! WebSocket clients: echo round trips through tokio-tungstenite, and idle "held" sockets
//! with a minimal hand-written handshake so that ten thousand of them cost the client little.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{backend_index, connect_from};
use crate::stats::histogram;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An open WebSocket that nobody reads, and the backend that greeted it.
pub struct Held {
    pub stream: TcpStream,
    pub backend: Option<usize>,
}

impl Held {
    /// True when the peer has closed it (EOF, a reset or a close frame).
    pub fn is_closed(&self) -> bool {
        let mut buf = [0u8; 64];
        match self.stream.try_read(&mut buf) {
            Ok(0) => true,
            Ok(n) => buf[..n].first().is_some_and(|b| b & 0x0f == 0x8),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// Opens one idle WebSocket from client `i` and reads the backend's `hello <id>`.
pub async fn hold(i: usize, addr: SocketAddr, ids: &[String]) -> Option<Held> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, hold_inner(i, addr, ids))
        .await
        .ok()
        .flatten()
}

async fn hold_inner(i: usize, addr: SocketAddr, ids: &[String]) -> Option<Held> {
    let mut stream = connect_from(i, addr).await.ok()?;
    const REQ: &[u8] = b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(REQ).await.ok()?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > 8192 {
                return None;
            }
            continue;
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            return None;
        }
        // The greeting: an unmasked text frame, short length form.
        let frame = &buf[end + 4..];
        if frame.len() >= 2 {
            let len = usize::from(frame[1] & 0x7f);
            if frame.len() >= 2 + len {
                let text = &frame[2..2 + len];
                let id = text.strip_prefix(b"hello ").unwrap_or(text);
                return Some(Held {
                    backend: backend_index(ids, id),
                    stream,
                });
            }
        }
    }
}

/// Opens `n` held sockets for clients `first..first+n`, `concurrency` handshakes at a time.
pub async fn hold_many(
    first: usize,
    n: usize,
    addr: SocketAddr,
    ids: Arc<Vec<String>>,
    concurrency: usize,
) -> (Vec<Held>, usize) {
    let results: Vec<Option<Held>> = futures::stream::iter(first..first + n)
        .map(|i| {
            let ids = ids.clone();
            async move { hold(i, addr, &ids).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_none()).count();
    (results.into_iter().flatten().collect(), failed)
}

/// Result of an echo run.
pub struct EchoOutcome {
    pub latency: Histogram<u64>,
    pub messages: u64,
    pub errors: u64,
    pub per_backend: Vec<u64>,
    pub elapsed: Duration,
}

/// `connections` sockets each send a message and wait for its echo, for `duration`.
pub async fn echo(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    size: usize,
    ids: Arc<Vec<String>>,
) -> EchoOutcome {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let ids = ids.clone();
            tokio::spawn(async move { echo_client(i, addr, deadline, size, &ids).await })
        })
        .collect();
    let mut out = EchoOutcome {
        latency: histogram(),
        messages: 0,
        errors: 0,
        per_backend: vec![0; ids.len()],
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        match t.await {
            Ok(Some((h, n, backend))) => {
                let _ = out.latency.add(&h);
                out.messages += n;
                if let Some(k) = backend {
                    out.per_backend[k] += 1;
                }
            }
            _ => out.errors += 1,
        }
    }
    out.elapsed = start.elapsed();
    out
}

async fn echo_client(
    i: usize,
    addr: SocketAddr,
    deadline: Instant,
    size: usize,
    ids: &[String],
) -> Option<(Histogram<u64>, u64, Option<usize>)> {
    let stream = connect_from(i, addr).await.ok()?;
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 16 * 1024;
    let (mut ws, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::client_async_with_config("ws://bench/ws", stream, Some(config)),
    )
    .await
    .ok()?
    .ok()?;
    let backend = greeting(&mut ws, ids).await;
    let payload = "x".repeat(size);
    let mut h = histogram();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        ws.send(Message::text(payload.clone())).await.ok()?;
        loop {
            let msg = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next())
                .await
                .ok()??
                .ok()?;
            if msg.is_text() || msg.is_binary() {
                break;
            }
        }
        let _ = h.record((t.elapsed().as_micros() as u64).max(1));
        n += 1;
    }
    let _ = ws.close(None).await;
    Some((h, n, backend))
}

async fn greeting(ws: &mut WebSocketStream<TcpStream>, ids: &[String]) -> Option<usize> {
    let msg = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next())
        .await
        .ok()??
        .ok()?;
    let text = msg.into_text().ok()?;
    let id = text.strip_prefix("hello ")?;
    backend_index(ids, id.as_bytes())
}

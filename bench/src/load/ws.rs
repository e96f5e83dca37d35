//! WebSocket clients: echo round trips through tokio-tungstenite (closed loop, or open loop
//! at a fixed message rate), and idle "held" sockets with a minimal hand-written handshake
//! so that ten thousand of them cost the client little.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, Stream, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::{backend_index, connect_from};
use crate::stats::histogram;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an open-loop socket waits for an echo before counting the rest as lost.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What an echo run sends.
#[derive(Debug, Clone)]
pub struct EchoLoad {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    /// Bytes per message.
    pub size: usize,
    /// Messages/s over all sockets; None: closed loop (one message in flight per socket).
    pub rate: Option<u64>,
}

/// Result of an echo run.
pub struct EchoOutcome {
    pub latency: Histogram<u64>,
    /// Echoes received.
    pub messages: u64,
    /// Sockets that did not open or broke.
    pub errors: u64,
    /// Messages sent whose echo never came (open loop).
    pub lost: u64,
    pub per_backend: Vec<u64>,
    pub elapsed: Duration,
}

/// What one socket did.
struct SocketEcho {
    latency: Histogram<u64>,
    echoed: u64,
    lost: u64,
    backend: Option<usize>,
    broken: bool,
}

/// Runs the echo load: in closed loop each socket sends, waits for the echo and sends again
/// until the duration is over; in open loop each socket sends on a fixed schedule.
pub async fn echo(load: EchoLoad, ids: Arc<Vec<String>>) -> EchoOutcome {
    let n = load.connections.max(1);
    let interval = load
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(n as f64 / r as f64));
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let ids = ids.clone();
            let load = load.clone();
            tokio::spawn(async move {
                match interval {
                    // Staggered so the sockets do not fire in lockstep.
                    Some(iv) => {
                        let offset = iv.mul_f64(i as f64 / n as f64);
                        paced_client(i, &load, offset, iv, &ids).await
                    }
                    None => echo_client(i, &load, start + load.duration, &ids).await,
                }
            })
        })
        .collect();
    let mut out = EchoOutcome {
        latency: histogram(),
        messages: 0,
        errors: 0,
        lost: 0,
        per_backend: vec![0; ids.len()],
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        match t.await {
            Ok(Some(s)) => {
                let _ = out.latency.add(&s.latency);
                out.messages += s.echoed;
                out.lost += s.lost;
                out.errors += u64::from(s.broken);
                if let Some(k) = s.backend {
                    out.per_backend[k] += 1;
                }
            }
            _ => out.errors += 1,
        }
    }
    // Open loop: every socket sends for exactly `duration` once it is open.
    out.elapsed = match interval {
        Some(_) => load.duration,
        None => start.elapsed(),
    };
    out
}

/// Opens client `i`'s echo socket and reads the greeting: the socket and its backend.
async fn open(
    i: usize,
    addr: SocketAddr,
    ids: &[String],
) -> Option<(WebSocketStream<TcpStream>, Option<usize>)> {
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
    Some((ws, backend))
}

/// Waits for the next data frame, skipping control frames; None on a timeout, close or error.
async fn next_echo<S>(stream: &mut S, wait: Duration) -> Option<()>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(wait, stream.next())
            .await
            .ok()??
            .ok()?;
        if msg.is_text() || msg.is_binary() {
            return Some(());
        }
    }
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    let _ = h.record((since.elapsed().as_micros() as u64).max(1));
}

async fn echo_client(
    i: usize,
    load: &EchoLoad,
    deadline: Instant,
    ids: &[String],
) -> Option<SocketEcho> {
    let (mut ws, backend) = open(i, load.addr, ids).await?;
    let payload = "x".repeat(load.size);
    let mut latency = histogram();
    let mut echoed = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        ws.send(Message::text(payload.clone())).await.ok()?;
        next_echo(&mut ws, HANDSHAKE_TIMEOUT).await?;
        record(&mut latency, t);
        echoed += 1;
    }
    let _ = ws.close(None).await;
    Some(SocketEcho {
        latency,
        echoed,
        lost: 0,
        backend,
        broken: false,
    })
}

/// Open loop: a message leaves every `interval` whether or not the earlier echoes came back
/// (several may be in flight), and echoes are matched to sends in order, as the backend
/// answers them in order.
async fn paced_client(
    i: usize,
    load: &EchoLoad,
    offset: Duration,
    interval: Duration,
    ids: &[String],
) -> Option<SocketEcho> {
    let (ws, backend) = open(i, load.addr, ids).await?;
    let payload = "x".repeat(load.size);
    let (mut sink, mut stream) = ws.split();
    let (origins_tx, mut origins) = mpsc::unbounded_channel::<Instant>();
    let first = Instant::now() + offset;
    let deadline = first + load.duration;
    let send = async move {
        let mut due = first;
        let mut free_at = first;
        let mut sent = 0u64;
        let mut ok = true;
        while due < deadline {
            tokio::time::sleep_until(due.into()).await;
            // The clock starts when the message was due if the previous send was still
            // blocked then (the target not reading: its delay, coordinated omission); else
            // now, since the timer's own lateness (up to a millisecond) is the client's.
            let origin = if free_at > due { due } else { Instant::now() };
            if origins_tx.send(origin).is_err() {
                break; // the reader gave up
            }
            if sink.send(Message::text(payload.clone())).await.is_err() {
                ok = false;
                break;
            }
            sent += 1;
            free_at = Instant::now();
            due += interval;
        }
        drop(origins_tx);
        let _ = sink.close().await;
        (sent, ok)
    };
    let receive = async move {
        let mut latency = histogram();
        let mut echoed = 0u64;
        while let Some(origin) = origins.recv().await {
            if next_echo(&mut stream, ECHO_TIMEOUT).await.is_none() {
                return (latency, echoed, false);
            }
            record(&mut latency, origin);
            echoed += 1;
        }
        (latency, echoed, true)
    };
    let ((sent, sent_ok), (latency, echoed, received_ok)) = tokio::join!(send, receive);
    Some(SocketEcho {
        latency,
        echoed,
        lost: sent.saturating_sub(echoed),
        backend,
        broken: !(sent_ok && received_ok),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A WebSocket server on a free port that greets with `hello b1` and echoes the first
    /// `limit` messages of each socket, then closes it.
    async fn echo_server(limit: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let _ = ws.send(Message::text("hello b1")).await;
                    let mut echoed = 0;
                    while echoed < limit {
                        match ws.next().await {
                            Some(Ok(m)) if m.is_text() => {
                                let _ = ws.send(m).await;
                                echoed += 1;
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                    let _ = ws.close(None).await;
                });
            }
        });
        addr
    }

    fn load(addr: SocketAddr, rate: Option<u64>) -> EchoLoad {
        EchoLoad {
            addr,
            connections: 2,
            duration: Duration::from_millis(500),
            size: 8,
            rate,
        }
    }

    #[tokio::test]
    async fn open_loop_sends_on_schedule_and_matches_every_echo() {
        let addr = echo_server(usize::MAX).await;
        let ids = Arc::new(vec!["b1".to_owned()]);
        // 200 msgs/s over 2 sockets: one every 10 ms each, 50 each in 500 ms.
        let o = echo(load(addr, Some(200)), ids).await;
        assert_eq!((o.messages, o.lost, o.errors), (100, 0, 0));
        assert_eq!(o.latency.len(), 100);
        assert_eq!(o.per_backend, vec![2]);
    }

    #[tokio::test]
    async fn open_loop_counts_a_socket_closed_mid_run() {
        let addr = echo_server(10).await;
        let ids = Arc::new(vec!["b1".to_owned()]);
        let o = echo(load(addr, Some(200)), ids).await;
        assert_eq!((o.messages, o.errors), (20, 2));
    }

    #[tokio::test]
    async fn closed_loop_keeps_one_message_in_flight() {
        let addr = echo_server(usize::MAX).await;
        let ids = Arc::new(vec!["b1".to_owned()]);
        let o = echo(load(addr, None), ids).await;
        assert!(o.messages > 0);
        assert_eq!((o.lost, o.errors), (0, 0));
        assert_eq!(o.latency.len(), o.messages);
    }
}

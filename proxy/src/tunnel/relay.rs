//! A bidirectional byte relay that holds no buffer while the tunnel is idle.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per tunnel for its whole life,
//! and pingora's own upgraded-body path keeps a 64 KiB body buffer per side. An edge holding
//! thousands of idle WebSockets pays that in RSS for nothing. Here reads go into one scratch
//! buffer per worker thread, borrowed only inside `poll`; bytes that the other side cannot
//! take at once are copied into a heap buffer owned by the tunnel until they are written.
//! An idle tunnel therefore costs its two sockets, a timer and this small struct.
//!
//! A WebSocket tunnel also follows the frames of both directions ([`frames::Cursor`]) so
//! that when the proxy itself ends it — the end of a graceful stop's grace period
//! ([`going_away`]), or the idle timeout — each side gets a Close frame (1001, going away)
//! between two frames, as a server closing a WebSocket sends one, instead of a bare TCP
//! close that clients report as an abnormal closure (1006).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::frames::{self, Cursor};

/// Size of the per-thread scratch buffer: one read never moves more than this.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// How long the two sides of a WebSocket get to answer the proxy's Close frames (and to
/// finish a frame in flight before them) before the connections are closed anyway.
const CLOSING_WAIT: Duration = Duration::from_secs(1);

/// Set once the proxy is about to end every tunnel ([`going_away`]).
static GOING_AWAY: AtomicBool = AtomicBool::new(false);
static GOING_AWAY_NOTIFY: Notify = Notify::const_new();

/// Ends every WebSocket tunnel of the process with a Close frame (1001) to each side: for
/// the end of a graceful stop's grace period, just before the runtimes and their tunnels
/// are dropped.
pub fn going_away() {
    GOING_AWAY.store(true, Ordering::Release);
    GOING_AWAY_NOTIFY.notify_waiters();
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their write half.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// A read or write failed (reset, broken pipe).
    Error,
    /// The proxy ended a WebSocket with Close frames (stopping, or the idle timeout).
    GoingAway,
}

/// Totals of a finished relay.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub end: End,
}

#[derive(Debug, Default)]
struct Direction {
    /// Bytes read but not yet accepted by the writer; allocated only when a write is short.
    pending: Option<(Box<[u8]>, usize)>,
    read_eof: bool,
    shut: bool,
    needs_flush: bool,
    /// The proxy wrote a Close frame this way (or saw one pass): nothing more is relayed,
    /// what still comes is read and dropped.
    closed_by_proxy: bool,
    bytes: u64,
}

/// Relays between `a` and `b` until both sides are closed, an error occurs, or nothing
/// moves for `idle`. After one side has closed, the other gets `linger` to finish.
pub struct Relay<A, B> {
    a: A,
    b: B,
    ab: Direction,
    ba: Direction,
    idle: Duration,
    linger: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    /// Set for a WebSocket tunnel (boxed: most of a tunnel's life it is not looked at).
    ws: Option<Box<WebSocket>>,
}

/// What a WebSocket tunnel keeps to close itself cleanly.
struct WebSocket {
    /// Client to backend, backend to client.
    ab: Cursor,
    ba: Cursor,
    stopping: Pin<Box<Notified<'static>>>,
    /// The Close frames are due (with their reason), since when.
    closing: Option<(&'static str, Instant)>,
}

/// A mask key for the Close frame to the backend (a client's frames are masked with a key
/// the server cannot predict, RFC 6455 §5.3).
fn mask_key() -> [u8; 4] {
    rand::random()
}

impl<A, B> Relay<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(a: A, b: B, idle: Duration, linger: Duration) -> Self {
        let now = Instant::now();
        Self {
            a,
            b,
            ab: Direction::default(),
            ba: Direction::default(),
            idle,
            linger,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            ws: None,
        }
    }

    /// `a` is a WebSocket client and `b` its server: the proxy ends the tunnel with Close
    /// frames when it stops or when the tunnel has been idle for the idle timeout.
    pub fn websocket(self) -> Self {
        self.websocket_from(Cursor::default(), Cursor::default())
    }

    /// [`Self::websocket`] for a tunnel whose streams did not start with the relay: `ab`
    /// and `ba` have followed what already went each way (the frames a client sent behind
    /// its upgrade request, those a backend sent behind its `101`).
    pub fn websocket_from(mut self, ab: Cursor, ba: Cursor) -> Self {
        let stopping = Box::pin(GOING_AWAY_NOTIFY.notified());
        let closing = GOING_AWAY
            .load(Ordering::Acquire)
            .then(|| (STOPPING, Instant::now()));
        if let Some((_, since)) = closing {
            self.timer.as_mut().reset(since + CLOSING_WAIT);
        }
        self.ws = Some(Box::new(WebSocket {
            ab,
            ba,
            stopping,
            closing,
        }));
        self
    }

    fn totals(&self, end: End) -> Totals {
        Totals {
            a_to_b: self.ab.bytes,
            b_to_a: self.ba.bytes,
            end,
        }
    }
}

/// The proxy's Close frame due on one direction of a WebSocket.
#[derive(Debug, Clone, Copy)]
struct CloseDue {
    reason: &'static str,
    /// Toward the backend: masked.
    to_server: bool,
}

/// Moves what it can in one direction. Returns Ready(Ok(true)) when progress was made,
/// Ready(Ok(false)) when this direction is finished, Pending when it is waiting.
/// `close`: the proxy's Close frame is due on this direction (`frames` is then followed).
fn poll_direction<R, W>(
    cx: &mut Context<'_>,
    dir: &mut Direction,
    mut frames: Option<&mut Cursor>,
    close: Option<CloseDue>,
    reader: &mut R,
    writer: &mut W,
) -> Poll<io::Result<bool>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut progressed = false;
    loop {
        // 1. Finish writing what is pending.
        if let Some((buf, start)) = dir.pending.as_mut() {
            match Pin::new(&mut *writer).poll_write(cx, &buf[*start..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *start += n;
                    dir.needs_flush = true;
                    progressed = true;
                    if *start == buf.len() {
                        dir.pending = None;
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if dir.needs_flush {
            match Pin::new(&mut *writer).poll_flush(cx) {
                Poll::Ready(Ok(())) => dir.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        // The proxy's Close goes in here, before anything more is read, as soon as the
        // stream is between two frames: checked on every turn of this loop, not once per
        // poll, or a stream that keeps coming would be read past each boundary.
        if let (Some(due), Some(f)) = (close, frames.as_deref()) {
            queue_close(dir, f, due.reason, due.to_server);
            if dir.pending.is_some() {
                continue;
            }
        }
        // 2. Propagate a close once everything read has been written.
        if dir.read_eof || dir.closed_by_proxy {
            if !dir.shut {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx)).ok();
                dir.shut = true;
            }
            if dir.read_eof {
                return Poll::Ready(Ok(progressed));
            }
            // After a Close frame only the peer's close is awaited: what comes is dropped.
            match drain(cx, reader) {
                Poll::Ready(Ok(0)) => dir.read_eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
            progressed = true;
            continue;
        }
        // 3. Read into the thread's scratch buffer and write straight through.
        let read = SCRATCH_BUF.with(|cell| -> Poll<io::Result<()>> {
            let mut scratch = cell.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        dir.read_eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    // Once the proxy's Close is due, only the rest of the current frame is
                    // relayed: the Close goes in right behind it, and what the read brought
                    // after it is dropped, as all that comes after the Close will be. Read
                    // whole, a stream that never pauses might never end a read at a frame's
                    // end, and would be cut at the closing wait without its Close.
                    let n = match (frames.as_deref_mut(), close) {
                        (Some(f), Some(_)) => f.advance_to_frame_end(&scratch[..n]),
                        (Some(f), None) => {
                            f.advance(&scratch[..n]);
                            n
                        }
                        (None, _) => n,
                    };
                    dir.bytes += n as u64;
                    let written = match Pin::new(&mut *writer).poll_write(cx, &scratch[..n]) {
                        Poll::Ready(Ok(w)) => w,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => 0,
                    };
                    if written > 0 {
                        dir.needs_flush = true;
                    }
                    if written < n {
                        dir.pending = Some((scratch[written..n].to_vec().into_boxed_slice(), 0));
                    }
                    Poll::Ready(Ok(()))
                }
            }
        });
        match read {
            Poll::Ready(Ok(())) => progressed = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if progressed {
        Poll::Ready(Ok(true))
    } else {
        Poll::Pending
    }
}

/// Reads from `reader` into the scratch buffer and drops it; the count read.
fn drain<R: AsyncRead + Unpin>(cx: &mut Context<'_>, reader: &mut R) -> Poll<io::Result<usize>> {
    SCRATCH_BUF.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let mut rb = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    })
}

/// The reason sent when the proxy stops.
const STOPPING: &str = "proxy stopping";
/// The reason sent after the idle timeout.
const IDLE: &str = "idle timeout";

/// Queues the proxy's Close frame on `dir` once it is between two frames with nothing
/// pending, masked on the direction toward the backend (`to_server`). A side whose own
/// Close already went through gets none (nothing may follow one): its direction is only
/// finished, once that Close has passed whole.
fn queue_close(dir: &mut Direction, frames: &Cursor, reason: &str, to_server: bool) {
    let busy = dir.pending.is_some() || !frames.at_boundary();
    if dir.closed_by_proxy || dir.read_eof || dir.shut || busy {
        return;
    }
    dir.closed_by_proxy = true;
    if !frames.closed() {
        let mask = to_server.then(mask_key);
        let frame = frames::close_frame(frames::GOING_AWAY, reason, mask);
        dir.pending = Some((frame.into_boxed_slice(), 0));
    }
}

impl<A, B> Future for Relay<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Totals;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Totals> {
        let this = self.get_mut();
        if let Some(ws) = this.ws.as_mut() {
            if ws.closing.is_none() && ws.stopping.as_mut().poll(cx).is_ready() {
                ws.closing = Some((STOPPING, Instant::now()));
                this.timer.as_mut().reset(Instant::now() + CLOSING_WAIT);
            }
        }
        let mut progressed = false;
        loop {
            let due = |to_server| {
                let (reason, _) = this.ws.as_deref()?.closing?;
                Some(CloseDue { reason, to_server })
            };
            let (ab_close, ba_close) = (due(true), due(false));
            let (ab_frames, ba_frames) = match this.ws.as_deref_mut() {
                Some(ws) => (Some(&mut ws.ab), Some(&mut ws.ba)),
                None => (None, None),
            };
            let mut moved = false;
            let ab_done = this.ab.read_eof && this.ab.shut && this.ab.pending.is_none();
            if !ab_done {
                match poll_direction(
                    cx,
                    &mut this.ab,
                    ab_frames,
                    ab_close,
                    &mut this.a,
                    &mut this.b,
                ) {
                    Poll::Ready(Ok(p)) => moved |= p,
                    Poll::Ready(Err(_)) => return Poll::Ready(this.totals(End::Error)),
                    Poll::Pending => {}
                }
            }
            let ba_done = this.ba.read_eof && this.ba.shut && this.ba.pending.is_none();
            if !ba_done {
                match poll_direction(
                    cx,
                    &mut this.ba,
                    ba_frames,
                    ba_close,
                    &mut this.b,
                    &mut this.a,
                ) {
                    Poll::Ready(Ok(p)) => moved |= p,
                    Poll::Ready(Err(_)) => return Poll::Ready(this.totals(End::Error)),
                    Poll::Pending => {}
                }
            }
            let ab_done = this.ab.read_eof && this.ab.shut && this.ab.pending.is_none();
            let ba_done = this.ba.read_eof && this.ba.shut && this.ba.pending.is_none();
            if ab_done && ba_done {
                let closing = this.ws.as_ref().is_some_and(|ws| ws.closing.is_some());
                return Poll::Ready(this.totals(if closing {
                    End::GoingAway
                } else {
                    End::Closed
                }));
            }
            if !moved {
                break;
            }
            progressed = true;
        }
        if progressed {
            this.last_activity = Instant::now();
        }
        // The timer is re-armed lazily: it fires at the old deadline, and only then is the
        // real deadline (last activity + idle, or + linger once a side has closed) checked.
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if let Some(ws) = this.ws.as_mut() {
                match ws.closing {
                    Some((_, since)) if now >= since + CLOSING_WAIT => {
                        return Poll::Ready(this.totals(End::GoingAway));
                    }
                    Some((_, since)) => {
                        this.timer.as_mut().reset(since + CLOSING_WAIT);
                        continue;
                    }
                    None => {}
                }
            }
            let half_closed = this.ab.shut || this.ba.shut;
            let limit = if half_closed {
                this.linger.min(this.idle)
            } else {
                this.idle
            };
            let deadline = this.last_activity + limit;
            if now >= deadline {
                if let Some(ws) = this.ws.as_mut() {
                    // Each side still open is told, then given a moment. After a half-close
                    // that is the side still reading: a client that sent its FIN still
                    // reads, and a bare close would look like an abnormal closure (1006).
                    ws.closing = Some((IDLE, now));
                    this.timer.as_mut().reset(now + CLOSING_WAIT);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(this.totals(End::IdleTimeout));
            }
            this.timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_closes() {
        let (mut client, a) = duplex(64);
        let (b, mut server) = duplex(64);
        let relay = tokio::spawn(Relay::new(
            a,
            b,
            Duration::from_secs(5),
            Duration::from_secs(5),
        ));
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        // More than the duplex capacity forces short writes and the pending path.
        let big = vec![7u8; 100_000];
        let writer = tokio::spawn(async move {
            server.write_all(&big).await.unwrap();
            server.shutdown().await.unwrap();
            server
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < 100_000 {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got.iter().all(|&x| x == 7));
        let _server = writer.await.unwrap();
        client.shutdown().await.unwrap();
        let totals = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(totals.end, End::Closed);
        assert_eq!(totals.a_to_b, 5);
        assert_eq!(totals.b_to_a, 100_000);
    }

    /// The proxy's Close frame never lands inside a frame: a frame half relayed when the
    /// idle timeout fires is finished first, then the client gets the Close (unmasked) and
    /// the backend its own (masked), and what either sends after it is not relayed.
    #[tokio::test(start_paused = true)]
    async fn a_websocket_is_closed_between_frames() {
        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let relay = tokio::spawn(
            Relay::new(a, b, Duration::from_secs(10), Duration::from_secs(10)).websocket(),
        );
        // A 6-byte text frame from the backend, of which 4 bytes come before the timeout.
        let frame = [0x81, 4, b'a', b'b', b'c', b'd'];
        server.write_all(&frame[..4]).await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        server.write_all(&frame[4..]).await.unwrap();
        let mut rest = [0u8; 2];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"cd");
        let close = frames::close_frame(frames::GOING_AWAY, IDLE, None);
        let mut got = vec![0u8; close.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, close);
        // The backend's Close is masked: 2 header bytes, the key, then the masked payload.
        let mut head = [0u8; 6];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(head[..2], [0x88, 0x80 | (close.len() as u8 - 2)]);
        let mut payload = vec![0u8; close.len() - 2];
        server.read_exact(&mut payload).await.unwrap();
        let unmasked: Vec<u8> = payload
            .iter()
            .zip(head[2..].iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(unmasked, close[2..]);
        // After the Close, a late frame from the client goes nowhere; both sides close.
        client.write_all(&[0x81, 0x80, 0, 0, 0, 0]).await.unwrap();
        client.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
        let mut tail = Vec::new();
        server.read_to_end(&mut tail).await.unwrap();
        assert!(tail.is_empty(), "{tail:?}");
        let totals = relay.await.unwrap();
        assert_eq!(totals.end, End::GoingAway);
    }

    /// A side whose own Close is under way when the proxy closes gets no second one: its
    /// Close is relayed whole, then that direction is shut.
    #[tokio::test(start_paused = true)]
    async fn a_close_under_way_is_finished_not_doubled() {
        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let relay = tokio::spawn(
            Relay::new(a, b, Duration::from_secs(10), Duration::from_secs(10)).websocket(),
        );
        let clients_close = frames::close_frame(1000, "bye", Some([1, 2, 3, 4]));
        client.write_all(&clients_close[..3]).await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        client.write_all(&clients_close[3..]).await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, clients_close[3..]);
        let close = frames::close_frame(frames::GOING_AWAY, IDLE, None);
        let mut got = vec![0u8; close.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, close);
        drop((client, server));
        assert_eq!(relay.await.unwrap().end, End::GoingAway);
    }

    /// A client that has sent its FIN still reads: when the backend then goes quiet for the
    /// linger time, the client gets the proxy's Close after the backend's last frame, not a
    /// bare close.
    #[tokio::test(start_paused = true)]
    async fn a_half_closed_websocket_that_goes_quiet_gets_a_close() {
        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let relay = tokio::spawn(
            Relay::new(a, b, Duration::from_secs(60), Duration::from_secs(10)).websocket(),
        );
        client.shutdown().await.unwrap();
        let mut eof = [0u8; 1];
        assert_eq!(server.read(&mut eof).await.unwrap(), 0, "FIN relayed");
        let frame = [0x81, 2, b'h', b'i'];
        server.write_all(&frame).await.unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame);
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, frames::close_frame(frames::GOING_AWAY, IDLE, None));
        drop(server);
        assert_eq!(relay.await.unwrap().end, End::GoingAway);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_after_inactivity() {
        let (mut client, a) = duplex(64);
        let (b, mut server) = duplex(64);
        let relay = tokio::spawn(Relay::new(
            a,
            b,
            Duration::from_secs(10),
            Duration::from_secs(1),
        ));
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
        // 8 s + 8 s: would have expired without the activity at 8 s.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let totals = relay.await.unwrap();
        assert_eq!(totals.end, End::IdleTimeout);
    }
}

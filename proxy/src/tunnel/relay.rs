//! A bidirectional byte relay that holds no buffer while the tunnel is idle.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per tunnel for its whole life,
//! and pingora's own upgraded-body path keeps a 64 KiB body buffer per side. An edge holding
//! thousands of idle WebSockets pays that in RSS for nothing. Here reads go into one scratch
//! buffer per worker thread, borrowed only inside `poll`; bytes that the other side cannot
//! take at once are copied into a heap buffer owned by the tunnel until they are written.
//! An idle tunnel therefore costs its two sockets, a timer and this small struct.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Size of the per-thread scratch buffer: one read never moves more than this.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
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
        }
    }

    fn totals(&self, end: End) -> Totals {
        Totals {
            a_to_b: self.ab.bytes,
            b_to_a: self.ba.bytes,
            end,
        }
    }
}

/// Moves what it can in one direction. Returns Ready(Ok(true)) when progress was made,
/// Ready(Ok(false)) when this direction is finished, Pending when it is waiting.
fn poll_direction<R, W>(
    cx: &mut Context<'_>,
    dir: &mut Direction,
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
        // 2. Propagate a close once everything read has been written.
        if dir.read_eof {
            if !dir.shut {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx)).ok();
                dir.shut = true;
            }
            return Poll::Ready(Ok(progressed));
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

impl<A, B> Future for Relay<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Totals;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Totals> {
        let this = self.get_mut();
        let mut progressed = false;
        loop {
            let mut moved = false;
            let ab_done = this.ab.read_eof && this.ab.shut && this.ab.pending.is_none();
            if !ab_done {
                match poll_direction(cx, &mut this.ab, &mut this.a, &mut this.b) {
                    Poll::Ready(Ok(p)) => moved |= p,
                    Poll::Ready(Err(_)) => return Poll::Ready(this.totals(End::Error)),
                    Poll::Pending => {}
                }
            }
            let ba_done = this.ba.read_eof && this.ba.shut && this.ba.pending.is_none();
            if !ba_done {
                match poll_direction(cx, &mut this.ba, &mut this.b, &mut this.a) {
                    Poll::Ready(Ok(p)) => moved |= p,
                    Poll::Ready(Err(_)) => return Poll::Ready(this.totals(End::Error)),
                    Poll::Pending => {}
                }
            }
            let ab_done = this.ab.read_eof && this.ab.shut && this.ab.pending.is_none();
            let ba_done = this.ba.read_eof && this.ba.shut && this.ba.pending.is_none();
            if ab_done && ba_done {
                return Poll::Ready(this.totals(End::Closed));
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
            let half_closed = this.ab.shut || this.ba.shut;
            let limit = if half_closed {
                this.linger.min(this.idle)
            } else {
                this.idle
            };
            let deadline = this.last_activity + limit;
            if Instant::now() >= deadline {
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

//! The node's TCP connections: accepted under a cap, served as HTTP/1 (or h2c) with
//! WebSocket upgrades, and closed when their client is too slow to send a request or
//! leaves them idle.
//!
//! `axum::serve` has no timeouts and no cap: a client that opens connections and sends
//! nothing, or sends a request's head a line every few seconds (slowloris), holds each of
//! them, and its file descriptor, for as long as it likes, until the node cannot accept
//! anyone (`accept: Too many open files`). Here:
//! - a connection's first request head must arrive within [`ConnLimits::header_timeout`]
//!   of its opening;
//! - a connection with no request in progress for [`ConnLimits::idle_timeout`] is closed
//!   (an HTTP/1 keep-alive or h2c connection between requests, a response its client
//!   stopped reading), and a later HTTP/1 head must arrive within it of the previous
//!   response (hyper's `header_read_timeout`). Not the header timeout: the proxy keeps idle
//!   connections to a node for 30 s, and one the node closed at 10 s could be the one the
//!   proxy had just chosen for a request;
//! - at most [`ConnLimits::max_connections`] are open at once, upgraded WebSockets
//!   included (the count travels with the socket into the upgrade); a connection beyond
//!   it gets `503` and is closed at once, so that the ones already open are never starved
//!   of descriptors and the client learns at once rather than waiting in the backlog.
//!
//! Each request carries its peer's address as axum's `ConnectInfo<SocketAddr>`.
//! Shutdown is `axum::serve`'s: the listener closes, every connection is asked to finish
//! gracefully (requests in flight are answered; idle ones close), and [`serve`] returns
//! when all have.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client_addr::TrustedProxies;
use parking_lot::Mutex;

/// The default [`ConnLimits::header_timeout`]: a client on a slow link sends a request's
/// head (a few hundred bytes) in well under a second.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The default [`ConnLimits::idle_timeout`]: longer than the proxy keeps an idle pooled
/// connection to a node (30 s), so that a node never closes one the proxy is about to use.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many file descriptors the automatic connection cap leaves for everything else:
/// the listener, Redis connections, the metrics listener, a connection accepted only to be
/// refused, the runtime's own. At least this many, or an eighth of the limit.
const FD_HEADROOM: u64 = 64;

/// The automatic cap where the open-file limit is unlimited or cannot be read.
const UNLIMITED_CONNECTIONS: usize = 1 << 20;

/// How long the accept loop pauses after an error that is not the client's (out of file
/// descriptors, of memory): retrying at once would spin on the same error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How often at most an accept error is logged while it persists.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The answer to a connection beyond the cap, written without waiting (if the socket
/// cannot take it now, the connection is closed without it).
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\n\
content-length: 21\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
too many connections\n";

/// The default [`ConnLimits::max_pending_per_address`]: far above what one household or a
/// large NAT has waiting at once (each of its connections sends its request within a
/// round trip of opening), far below the node's cap.
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 256;

/// The answer to a connection beyond [`ConnLimits::max_pending_per_address`].
const TOO_MANY_PENDING: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\n\
content-length: 43\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
too many new connections from this address\n";

/// Limits on the node's TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// The most connections open at once, WebSockets included.
    pub max_connections: usize,
    /// The most connections from one address (not a trusted proxy's) that have not sent
    /// their first request yet: without it, one address opening connections and sending
    /// nothing held the whole cap for `header_timeout` at a time.
    pub max_pending_per_address: usize,
    /// How long a client may take to send a connection's first request head.
    pub header_timeout: Duration,
    /// How long a connection may stay without a request in progress, and, on HTTP/1, how
    /// long a later head may take from the end of the previous response.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: auto_max_connections(),
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// An invalid connection limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnLimitsError {
    /// A limit that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl ConnLimits {
    /// Checks the limits.
    pub fn validate(self) -> Result<Self, ConnLimitsError> {
        if self.max_connections == 0 {
            return Err(ConnLimitsError::Zero("max_connections"));
        }
        if self.max_pending_per_address == 0 {
            return Err(ConnLimitsError::Zero("max_pending_per_address"));
        }
        if self.header_timeout.is_zero() {
            return Err(ConnLimitsError::Zero("header_timeout"));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConnLimitsError::Zero("idle_timeout"));
        }
        Ok(self)
    }
}

/// The connection cap that keeps the node below its open-file limit: the soft limit less
/// an eighth of it, or less [`FD_HEADROOM`] when that is more (and at least 1).
pub fn auto_max_connections() -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => {
            let kept = (soft / 8).max(FD_HEADROOM);
            usize::try_from(soft.saturating_sub(kept).max(1)).unwrap_or(UNLIMITED_CONNECTIONS)
        }
        _ => UNLIMITED_CONNECTIONS,
    }
}

/// Serves `router` on `listener` under `limits` until `signal` completes, then shuts down
/// gracefully (see the module's documentation). `tap` runs on every accepted connection.
/// Connections from `proxies` are not counted per address: all of a proxy's clients come
/// from its address.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    proxies: TrustedProxies,
    tap: fn(&mut TcpStream),
    signal: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let stopping = CancellationToken::new();
    // Cancels when dropped, so also when `signal` panics (logging the shutdown to a closed
    // stderr does, when `switchyard` is killed and its nodes get SIGTERM): a stop that
    // never came would leave the node running with nobody to stop it.
    let stop = stopping.clone().drop_guard();
    tokio::spawn(async move {
        let _stop = stop;
        signal.await;
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Counted from the end of the previous response, so also an idle keep-alive's
        // wait (see the module's documentation); the first head has its own deadline.
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout));
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let pending = Pending::default();
    let tracker = TaskTracker::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_errors.pause(error).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let waiting = if proxies.contains(peer.ip()) {
            None
        } else {
            match pending.enter(peer.ip(), limits.max_pending_per_address) {
                Some(guard) => Some(guard),
                None => {
                    refuse_pending(&stream, peer, limits.max_pending_per_address);
                    continue;
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(&stream, peer, limits.max_connections);
            continue;
        };
        tap(&mut stream);
        let connection = Connection {
            io: TokioIo::new(Counted {
                stream,
                _permit: permit,
            }),
            peer,
            router: router.clone(),
            builder: Arc::clone(&builder),
            limits,
            stopping: stopping.clone(),
            waiting,
        };
        tracker.spawn(connection.run());
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers a connection beyond the cap and closes it.
fn refuse(stream: &TcpStream, peer: SocketAddr, max: usize) {
    crate::metrics::metrics().tcp_connections_refused.inc();
    tracing::debug!(%peer, max, "refusing a connection: at the TCP connection limit");
    // Best effort: a full send buffer (never, on a fresh socket) only loses the 503.
    let _ = stream.try_write(AT_CAPACITY);
}

/// Answers a connection beyond its address's pending limit and closes it.
fn refuse_pending(stream: &TcpStream, peer: SocketAddr, max: usize) {
    crate::metrics::metrics().tcp_connections_refused.inc();
    tracing::debug!(%peer, max, "refusing a connection: its address has too many that sent nothing yet");
    let _ = stream.try_write(TOO_MANY_PENDING);
}

/// Per address, the connections that have not sent their first request yet.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Pending {
    /// Counts a new connection from `ip`; None when `ip` already has `max` waiting.
    fn enter(&self, ip: IpAddr, max: usize) -> Option<Waiting> {
        let mut map = self.0.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Waiting {
            pending: self.clone(),
            ip,
        })
    }
}

/// One connection counted in [`Pending`] until its first request comes, or it ends.
struct Waiting {
    pending: Pending,
    ip: IpAddr,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.pending.0.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The accept loop's errors other than a client's: logged, at most every
/// [`ACCEPT_ERROR_LOG_EVERY`] while they last, and paused after.
#[derive(Default)]
struct AcceptErrors {
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    async fn pause(&mut self, error: io::Error) {
        // The client gave up between its SYN and our accept: nothing to wait for.
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return;
        }
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_EVERY)
        {
            tracing::error!(
                %error,
                since_last_logged = self.unlogged,
                "accept error; pausing (lower --max-tcp-connections below the open-file limit)"
            );
            self.logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

/// An accepted socket with its place under the cap: the place is given back when the
/// socket closes, which for an upgraded connection is when its WebSocket ends.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// One accepted connection, before it is served.
struct Connection {
    io: TokioIo<Counted>,
    peer: SocketAddr,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: ConnLimits,
    stopping: CancellationToken,
    waiting: Option<Waiting>,
}

impl Connection {
    async fn run(self) {
        let activity = Arc::new(Activity::new(self.waiting));
        let service = Service {
            router: self.router,
            peer: self.peer,
            activity: Arc::clone(&activity),
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(self.io, service);
        tokio::pin!(conn);
        let mut shutting_down = false;
        // Set once the connection was found idle: it was asked to close, and is dropped if
        // it has not by then (a response its client does not read).
        let mut drop_at: Option<Instant> = None;
        loop {
            let check_at = drop_at.unwrap_or_else(|| activity.idle_deadline(&self.limits));
            tokio::select! {
                // A request done moves the deadline (sooner, for the first one's).
                () = activity.finished.notified() => {}
                served = conn.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(peer = %self.peer, %error, "connection ended");
                    }
                    return;
                }
                () = self.stopping.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = sleep_until(check_at) => {
                    if drop_at.is_some() {
                        tracing::debug!(peer = %self.peer, "idle connection did not close; dropped");
                        return;
                    }
                    if activity.idle_deadline(&self.limits) <= Instant::now() {
                        tracing::debug!(peer = %self.peer, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        drop_at = Some(Instant::now() + self.limits.header_timeout);
                    }
                }
            }
        }
    }
}

/// What a connection is doing, for its idle deadline.
struct Activity {
    opened: Instant,
    /// Requests whose handler runs.
    in_flight: AtomicUsize,
    /// Requests dispatched so far.
    requests: AtomicU64,
    /// When the last handler finished, in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
    /// Woken when a handler finishes.
    finished: Notify,
    /// Its place among its address's connections that sent nothing yet, given back at the
    /// first request.
    waiting: Mutex<Option<Waiting>>,
}

impl Activity {
    fn new(waiting: Option<Waiting>) -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            finished: Notify::new(),
            waiting: Mutex::new(waiting),
        }
    }

    /// When the connection is (or would be, if nothing changes) too long idle: for a
    /// connection that never made a request, `header_timeout` after it opened; with a
    /// request in flight, not before another `idle_timeout` (checked again then).
    fn idle_deadline(&self, limits: &ConnLimits) -> Instant {
        if self.requests.load(Ordering::Acquire) == 0 {
            return self.opened + limits.header_timeout;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + limits.idle_timeout;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.opened + since + limits.idle_timeout
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.requests.fetch_add(1, Ordering::AcqRel) == 0 {
            drop(self.waiting.lock().take());
        }
        InFlight(Arc::clone(self))
    }
}

/// A request whose handler runs; done when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let elapsed = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.store(elapsed, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.finished.notify_one();
    }
}

/// The router, as hyper calls it for one connection: each request gets the peer's address
/// and counts as activity while its handler runs.
#[derive(Clone)]
struct Service {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = self.activity.start();
        let mut router = self.router.clone();
        let response = tower_service::Service::call(&mut router, request.map(Body::new));
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_must_be_positive() {
        assert!(ConnLimits::default().validate().is_ok());
        let zero = ConnLimits {
            max_connections: 0,
            ..ConnLimits::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConnLimitsError::Zero("max_connections"))
        );
        let zero = ConnLimits {
            max_pending_per_address: 0,
            ..ConnLimits::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConnLimitsError::Zero("max_pending_per_address"))
        );
        let zero = ConnLimits {
            header_timeout: Duration::ZERO,
            ..ConnLimits::default()
        };
        assert_eq!(
            zero.validate(),
            Err(ConnLimitsError::Zero("header_timeout"))
        );
    }

    #[test]
    fn the_automatic_cap_stays_below_the_open_file_limit() {
        let cap = auto_max_connections();
        assert!(cap >= 1);
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            if soft != rlimit::INFINITY {
                assert!((cap as u64) < soft, "{cap} of {soft}");
            }
        }
    }
}

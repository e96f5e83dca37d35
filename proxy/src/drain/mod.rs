//! Ends a graceful stop as soon as the last client connection has closed.
//!
//! pingora's `run_forever` sleeps the whole grace period after SIGTERM (or after handing its
//! sockets over on SIGQUIT), whether or not anything is left to finish, so a stop with
//! `grace_period = "30s"` took 30 s even on an idle proxy. nginx and HAProxy exit once their
//! last connection is done, and supervisors and rolling restarts are sized for that. Here
//! the proxy service counts its connections ([`Counted`]), and once the grace period has
//! begun, a watcher ([`exit_when_drained`]) ends the process when none is left, counted or
//! still held in the kernel's file table ([`accepted`]).

mod accepted;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use tokio::sync::broadcast;

use crate::capacity;
use crate::proxy_protocol::Expecting;
use crate::state::Shared;

pub use accepted::Accepted;

/// The future of a `ServerApp` wrapper written out without `#[async_trait]`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long the count must stay at zero before the process exits. A connection accepted
/// just before the listeners closed is counted only once its task starts (on TLS, once
/// its handshake starts), so a zero is trusted only after it has lasted a moment.
const SETTLE: Duration = Duration::from_millis(300);

/// How often the watcher looks at the count during the grace period.
const POLL: Duration = Duration::from_millis(20);

/// How often, once the count is zero, the kernel's file table is read again while it
/// still holds connections the count has not seen ([`Accepted`]). Slower than [`POLL`]:
/// `/proc/net/tcp` lists every socket of the host's network namespace.
const RECHECK: Duration = Duration::from_millis(100);

/// A listening service's app whose open connections are counted (`shared.open`), and
/// refused over `limits.max_connections` ([`crate::capacity`]). `expecting`: the listeners
/// with the PROXY protocol, whose header a refused connection is read for.
pub struct Counted<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    expecting: Arc<[Expecting]>,
}

impl<A> Counted<A> {
    pub fn new(inner: A, shared: Arc<Shared>, expecting: Vec<Expecting>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            expecting: expecting.into(),
        }
    }
}

/// One open connection (or tunnel, which outlives its connection's task), released
/// however its task ends.
pub struct Open(Arc<AtomicUsize>);

impl Open {
    pub fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The inner app's future for one connection, holding its count.
struct Guarded<'a> {
    inner: BoxFuture<'a, Option<Stream>>,
    _open: Open,
}

impl Future for Guarded<'_> {
    type Output = Option<Stream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

// Written out rather than with `#[async_trait]`: an `async` wrapper costs a second state
// machine on every poll of every request (about 100 instructions a request in callgrind),
// where this costs one indirect call.
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    fn process_new<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: Stream,
        shutdown: &'life1 ShutdownWatch,
    ) -> BoxFuture<'async_trait, Option<Stream>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let ssl = session.get_ssl_digest();
        if ssl.is_some() {
            // Counted from here on: the handshake's own count ends.
            self.shared.handshakes.finish(session.id());
        }
        if crate::client_cert::refused(ssl.as_deref()) {
            // A resumed TLS session whose client certificate the listener no longer accepts
            // (a reload changed its CAs or CRLs): closed before any request.
            self.shared.metrics.reject("client_certificate");
            tracing::debug!("client certificate refused on a resumed TLS session: closed");
            return Box::pin(std::future::ready(None));
        }
        // Counted before the future is first polled. A kept-alive connection that pingora
        // hands back for its next request is uncounted only between this future's end and
        // the next call, with no await between them, which the watcher's settle time covers.
        let open = Open::new(&self.shared.open);
        let inner = match capacity::over_cap(&self.shared) {
            None => self.inner.process_new(session, shutdown),
            Some(max) => Box::pin(capacity::refuse(
                self.shared.clone(),
                session,
                max,
                self.expecting.clone(),
            )),
        };
        Box::pin(Guarded { inner, _open: open })
    }

    fn cleanup<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.cleanup()
    }
}

/// Watches pingora's execution phases from a thread of its own and exits the process once
/// a graceful stop's grace period has begun, `open` has stayed at zero for [`SETTLE`], and
/// the process holds no connection accepted on a listener (`accepted`). If connections
/// outlast the grace period (`grace`), pingora's own shutdown ends them as before;
/// WebSockets are first sent a Close frame ([`going_away_at`]).
pub fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    open: Arc<AtomicUsize>,
    accepted: Accepted,
    grace: Duration,
) {
    let spawned = std::thread::Builder::new()
        .name("drain watch".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    break wait_and_exit(&open, &accepted, going_away_at(grace))
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no drain watcher ({e}): a graceful stop will wait its whole grace period");
    }
}

/// When, into a grace period of `grace`, the WebSockets still open are told that the
/// proxy is going away: near its end, so that they stay usable through it, as before, but
/// early enough for the Close frames to be written and answered before pingora drops
/// every connection. `None` when there is no grace period to speak of.
fn going_away_at(grace: Duration) -> Option<Duration> {
    let margin = (grace / 4).min(Duration::from_secs(2));
    (!grace.is_zero()).then(|| grace - margin)
}

fn wait_and_exit(open: &AtomicUsize, accepted: &Accepted, mut going_away: Option<Duration>) {
    let started = Instant::now();
    let waiting_for = open.load(Ordering::Acquire);
    if waiting_for > 0 {
        tracing::info!(
            open = waiting_for,
            "graceful stop: waiting for the open connections and tunnels to finish"
        );
    }
    let mut zero_since: Option<Instant> = None;
    let mut uncounted_told = false;
    loop {
        if going_away.is_some_and(|at| started.elapsed() >= at) {
            going_away = None;
            tracing::info!("the grace period is ending: closing the open WebSockets (1001)");
            crate::tunnel::relay::going_away();
        }
        if open.load(Ordering::Acquire) == 0 {
            let since = *zero_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                match accepted.open() {
                    Some(held) if held > 0 => {
                        if !uncounted_told {
                            uncounted_told = true;
                            tracing::info!(
                                held,
                                "waiting for connections accepted but not yet served \
                                 (a TLS handshake, a task not yet run)"
                            );
                        }
                        std::thread::sleep(RECHECK);
                        continue;
                    }
                    _ => {
                        tracing::info!(
                            "every connection has closed: exiting before the grace period ends"
                        );
                        std::process::exit(0);
                    }
                }
            }
        } else {
            zero_since = None;
        }
        std::thread::sleep(POLL);
    }
}

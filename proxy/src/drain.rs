//! Ends a graceful stop as soon as the last client connection has closed.
//!
//! pingora's `run_forever` sleeps the whole grace period after SIGTERM (or after handing its
//! sockets over on SIGQUIT), whether or not anything is left to finish, so a stop with
//! `grace_period = "30s"` took 30 s even on an idle proxy. nginx and HAProxy exit once their
//! last connection is done, and supervisors and rolling restarts are sized for that. Here
//! the proxy service counts its connections ([`Counted`]), and once the grace period has
//! begun, a watcher ([`exit_when_drained`]) ends the process when none is left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use tokio::sync::broadcast;

/// How long the count must stay at zero before the process exits. A connection accepted
/// just before the listeners closed is counted only once its task starts (and, on TLS,
/// once its handshake is done), so a zero is trusted only after it has lasted a moment.
const SETTLE: Duration = Duration::from_millis(300);

/// How often the watcher looks at the count during the grace period.
const POLL: Duration = Duration::from_millis(20);

/// A listening service's app whose open connections are counted.
pub struct Counted<A> {
    inner: Arc<A>,
    open: Arc<AtomicUsize>,
}

impl<A> Counted<A> {
    pub fn new(inner: A, open: Arc<AtomicUsize>) -> Self {
        Self {
            inner: Arc::new(inner),
            open,
        }
    }
}

/// One open connection, released however its task ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.open.fetch_add(1, Ordering::AcqRel);
        let _open = Open(self.open.clone());
        // The reuse loop is kept here rather than in pingora's service, so that a kept-alive
        // connection is never uncounted between two of its requests.
        let mut next = self.inner.process_new(session, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Watches pingora's execution phases from a thread of its own and exits the process once
/// a graceful stop's grace period has begun and `open` has stayed at zero for [`SETTLE`].
/// If connections outlast the grace period, pingora's own shutdown ends them as before.
pub fn exit_when_drained(mut phases: broadcast::Receiver<ExecutionPhase>, open: Arc<AtomicUsize>) {
    let spawned = std::thread::Builder::new()
        .name("drain watch".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break wait_and_exit(&open),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no drain watcher ({e}): a graceful stop will wait its whole grace period");
    }
}

fn wait_and_exit(open: &AtomicUsize) {
    let mut zero_since: Option<Instant> = None;
    loop {
        if open.load(Ordering::Acquire) == 0 {
            let since = *zero_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                tracing::info!("every connection has closed: exiting before the grace period ends");
                std::process::exit(0);
            }
        } else {
            zero_since = None;
        }
        std::thread::sleep(POLL);
    }
}

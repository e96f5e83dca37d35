//! HTTP/2 client connections: the bounds HTTP/1 connections get from our own path.
//!
//! pingora serves an h2 connection itself (the h2 handshake, then a task per stream) and
//! waits for the client's preface and first request with no time limit: a client that
//! completed the TLS handshake and then said nothing kept its connection, a task and a
//! descriptor, for good, where an HTTP/1 connection is closed after `header_read_timeout`.
//! [`FirstRequest`] wraps the proxy service's app and closes an h2 connection on which no
//! request has started within that time. Once one has, pingora's own h2 idle timeout
//! ([`server_options`]: `downstream_keepalive`) closes the connection when it idles.
//! [`options`] sets the h2 header-list bound from `max_request_header_bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::tls::ALPN;
use pingora::protocols::{Digest, SocketDigest, Stream};
use pingora::server::ShutdownWatch;

use crate::config::Config;
use crate::state::Shared;

use crate::drain::BoxFuture;

/// pingora's bound on the decoded header list of an h2 request (64 KiB).
const DEFAULT_MAX_HEADER_LIST: usize = 64 * 1024;

/// The h2 settings for a new client connection. The h2 library refuses a header list over
/// its bound with a bare `431` before any of our code runs; our own check of
/// `max_request_header_bytes` answers `431` with the reason. h2 counts 32 bytes more per
/// field than the request's size as sent, so its bound is twice the limit (and never below
/// pingora's 64 KiB): heads over the limit get our answer, and a limit above 64 KiB lets
/// through on h2 what it lets through on HTTP/1.
pub fn options(config: &Config) -> H2Options {
    let mut o = default_h2_options();
    let max = config
        .limits
        .max_request_header_bytes
        .map_or(DEFAULT_MAX_HEADER_LIST, |m| {
            m.saturating_mul(2).max(DEFAULT_MAX_HEADER_LIST)
        });
    o.max_header_list_size(u32::try_from(max).unwrap_or(u32::MAX));
    o
}

/// pingora's options for the proxy service: h2 connections with no stream open close after
/// `downstream_keepalive` (at least a second, as HTTP/1's keep-alive), as nginx closes
/// them after `keepalive_timeout`. Read at start: pingora takes them by reference.
pub fn server_options(config: &Config) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    o.h2_idle_timeout = Some(
        config
            .timeouts
            .downstream_keepalive
            .max(Duration::from_secs(1)),
    );
    o
}

/// h2 connections waiting for their first request, by the address of their socket digest
/// (an `Arc` the connection and each of its streams share; the waiting connection holds a
/// clone, so no other connection can have that address meanwhile).
#[derive(Default)]
pub struct Waiting {
    /// How many are waiting: requests skip the lock when none is.
    count: AtomicUsize,
    started: Mutex<HashMap<usize, Arc<AtomicBool>>>,
}

fn key(d: &Arc<SocketDigest>) -> usize {
    Arc::as_ptr(d) as usize
}

impl Waiting {
    /// Called for every h2 request: its connection has started one.
    pub fn started(&self, digest: Option<&Digest>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(k) = digest.and_then(|d| d.socket_digest.as_ref()).map(key) else {
            return;
        };
        let mut map = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flag) = map.remove(&k) {
            flag.store(true, Ordering::Release);
        }
        self.count.store(map.len(), Ordering::Release);
    }

    fn register(self: &Arc<Self>, digest: Arc<SocketDigest>) -> Registered {
        let flag = Arc::new(AtomicBool::new(false));
        let mut map = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(key(&digest), flag.clone());
        self.count.store(map.len(), Ordering::Release);
        Registered {
            waiting: self.clone(),
            digest,
            flag,
        }
    }
}

/// A connection's entry in [`Waiting`], removed when it is dropped.
struct Registered {
    waiting: Arc<Waiting>,
    digest: Arc<SocketDigest>,
    flag: Arc<AtomicBool>,
}

impl Registered {
    fn started(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.started() {
            return;
        }
        let mut map = self
            .waiting
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(&key(&self.digest));
        self.waiting.count.store(map.len(), Ordering::Release);
    }
}

/// The proxy service's app, with h2 connections closed when no request has started on them
/// within the header read timeout (see the module documentation).
pub struct FirstRequest<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    waiting: Arc<Waiting>,
}

impl<A> FirstRequest<A> {
    /// `waiting` is the one the app reports its h2 requests to.
    pub fn new(inner: A, shared: Arc<Shared>, waiting: Arc<Waiting>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            waiting,
        }
    }
}

// Written out rather than with `#[async_trait]`, as `Counted` is: HTTP/1 connections go
// straight to the inner app's future.
impl<A: ServerApp + Send + Sync + 'static> ServerApp for FirstRequest<A> {
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
        if session.selected_alpn_proto() != Some(ALPN::H2) {
            return self.inner.process_new(session, shutdown);
        }
        let Some(digest) = session.get_socket_digest() else {
            return self.inner.process_new(session, shutdown);
        };
        let rt = self.shared.current();
        // The first wait of a new HTTP/1 connection: the header timeout, else the keep-alive
        // (which may be zero: no h2 connection would live to send its first request).
        let deadline = rt
            .config
            .limits
            .header_read_timeout
            .unwrap_or(rt.config.timeouts.downstream_keepalive)
            .max(Duration::from_secs(1));
        let registered = self.waiting.register(digest);
        let connection = self.inner.process_new(session, shutdown);
        Box::pin(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                biased;
                out = &mut connection => return out,
                () = tokio::time::sleep(deadline) => {}
            }
            if registered.started() {
                drop(registered);
                return connection.await;
            }
            // Dropping the connection's future closes it.
            self.shared.metrics.reject("header_timeout");
            None
        })
    }

    fn cleanup<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.cleanup()
    }
}

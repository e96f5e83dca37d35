//! TLS handshakes in progress: counted among the open connections, and bounded in time.
//!
//! pingora runs a TLS listener's handshake between accept and the app's `process_new`,
//! under a fixed 60 s limit, and nothing counted the connection until the app saw it. A
//! client that sent its ClientHello and then stalled (slowloris over TLS) held a descriptor
//! for 60 s whatever `header_read_timeout` said, and any number of them could be open at
//! once beyond `limits.max_connections`. HAProxy bounds a handshake by `timeout client` and
//! counts it in `maxconn`; nginx by `ssl_handshake_timeout` and its `worker_connections`.
//!
//! The pre-TLS step ([`crate::h1::plain_on_tls`]) starts a [`Handshakes::start`] for each
//! connection: it is counted in `shared.open` from then on and has until the header timeout
//! to finish. pingora 0.9 has no hook at either end of its handshake; what it does have is
//! the stream's tracer, which it tells when the stream drops (a failed handshake), and the
//! app's first sight of the connection ([`crate::drain::Counted`]) ends the handshake,
//! found by its descriptor. A handshake still going at its deadline has its socket shut
//! down, which ends the handshake's wait for the client with an end of stream.

use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::upstreams::peer::{Tracer, Tracing};
use tokio::sync::Notify;

use crate::drain::Open;
use crate::state::Shared;

/// How long a handshake that starts over `limits.max_connections` may take: it is counted
/// and will get its `503` once done, but a flood over the cap must not hold a descriptor
/// per connection for the whole header timeout.
const OVER_CAP: Duration = Duration::from_secs(2);

/// The handshakes in progress, by descriptor (unique among open ones: an entry leaves
/// before its stream closes the descriptor, see [`Watch`]).
#[derive(Default)]
pub struct Handshakes {
    by_fd: Mutex<HashMap<RawFd, Arc<Handshake>>>,
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("in_progress", &self.by_fd.lock().len())
            .finish()
    }
}

struct Handshake {
    fd: RawFd,
    /// The connection's count while its handshake runs; `None` once it has ended.
    going: Mutex<Option<Open>>,
    ended: Notify,
}

impl Handshake {
    fn end(&self) {
        if self.going.lock().take().is_some() {
            self.ended.notify_one();
        }
    }

    /// The deadline passed: a handshake still going is cut.
    fn expire(&self, shared: &Shared) {
        // Held across the shutdown: the stream closes the descriptor only after its
        // tracer's `on_disconnected`, which takes this lock, so the descriptor cannot be
        // closed (and reused by another connection) before the shutdown below.
        let going = self.going.lock();
        if going.is_some() {
            if let Err(e) = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both) {
                tracing::debug!("shutting down a stalled TLS handshake: {e}");
            }
            shared.metrics.reject("header_timeout");
            tracing::debug!("a TLS handshake not finished within the header timeout: closed");
        }
    }
}

impl Handshakes {
    /// Counts `stream`'s handshake, about to begin, and cuts it if it is not done within
    /// `limit` (or within [`OVER_CAP`], if the proxy is over its connection cap).
    pub fn start(self: &Arc<Self>, shared: &Arc<Shared>, stream: &mut L4Stream, limit: Duration) {
        let open = Open::new(&shared.open);
        let limit = match crate::capacity::over_cap(shared) {
            Some(_) => limit.min(OVER_CAP),
            None => limit,
        };
        let fd = stream.as_raw_fd();
        let handshake = Arc::new(Handshake {
            fd,
            going: Mutex::new(Some(open)),
            ended: Notify::new(),
        });
        self.by_fd.lock().insert(fd, handshake.clone());
        stream.tracer = Some(Tracer(Box::new(Watch {
            handshake: handshake.clone(),
            all: self.clone(),
        })));
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(limit) => handshake.expire(&shared),
                () = handshake.ended.notified() => {}
            }
        });
    }

    /// The handshake on descriptor `fd` is done: the app has the connection (and counts
    /// it from now on). Nothing, for a connection without one.
    pub fn finish(&self, fd: RawFd) {
        let found = self.by_fd.lock().remove(&fd);
        if let Some(handshake) = found {
            handshake.end();
        }
    }

    fn forget(&self, handshake: &Arc<Handshake>) {
        let mut by_fd = self.by_fd.lock();
        if by_fd
            .get(&handshake.fd)
            .is_some_and(|h| Arc::ptr_eq(h, handshake))
        {
            by_fd.remove(&handshake.fd);
        }
    }
}

/// The stream's tracer: pingora calls `on_disconnected` as the stream drops, before its
/// descriptor closes.
struct Watch {
    handshake: Arc<Handshake>,
    all: Arc<Handshakes>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("fd", &self.handshake.fd)
            .finish()
    }
}

impl Tracing for Watch {
    fn on_connected(&self) {}

    fn on_disconnected(&self) {
        self.handshake.end();
        self.all.forget(&self.handshake);
    }

    fn boxed_clone(&self) -> Box<dyn Tracing> {
        // Only one stream owns the descriptor; a copy has nothing to report.
        Box::new(Inert)
    }
}

#[derive(Debug)]
struct Inert;

impl Tracing for Inert {
    fn on_connected(&self) {}
    fn on_disconnected(&self) {}
    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Inert)
    }
}

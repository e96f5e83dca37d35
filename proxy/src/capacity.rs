//! The process-wide connection cap, and the open-file limit it comes from.
//!
//! Each proxied connection holds two descriptors (the client's and a backend's). When the
//! process runs out, `accept` fails (pingora then pauses its accept loop for a second) and so
//! does every connect to a backend: health checks then fail too and mark healthy backends
//! down, which turns an overload into an outage. HAProxy's `maxconn` and nginx's
//! `worker_connections` exist for this. Here `limits.max_connections` caps the open client
//! connections and tunnels; by default it is derived from the open-file limit, which the
//! proxy first raises to its hard limit (as HAProxy and Go do). Connections over the cap
//! get `503` with the reason (HTTP/1) or are closed (h2), and are counted in the metrics;
//! the check runs where connections are counted ([`crate::drain::Counted`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use pingora::protocols::tls::ALPN;
use pingora::protocols::Stream;

use crate::logging::Throttle;
use crate::proxy::policy::Rejection;
use crate::proxy_protocol::{self, Expecting};
use crate::state::Shared;

/// How long a refused connection is kept to read what the client already sent (so that
/// closing it does not reset the answer away): short, since a flood over the cap must not
/// hold a descriptor per refused connection for long, which would spend the reserve.
const CAP_LINGER: Duration = Duration::from_millis(250);

/// Descriptors kept aside from the cap: listeners, the log, the admin API, health checks,
/// idle pooled backend connections beyond the one each client connection uses.
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one ([`open_files`] then reads it).
pub fn raise_open_files() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            // A refusal leaves the soft limit, from which the default cap is then derived.
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The default cap for an open-file limit of `open_files`: two descriptors per connection,
/// less a reserve.
pub fn default_max_connections(open_files: u64) -> u32 {
    let per_connection = open_files.saturating_sub(RESERVED_FDS) / 2;
    u32::try_from(per_connection).unwrap_or(u32::MAX).max(1)
}

/// The current open-file limit (soft), if it can be read.
pub fn open_files() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Whether a new connection, already counted in `shared.open`, is over the cap; the cap.
pub fn over_cap(shared: &Shared) -> Option<u32> {
    let open = shared.open.load(Ordering::Acquire);
    // A borrow of the runtime, not a clone of its `Arc`: this runs for every connection.
    shared
        .runtime
        .load()
        .config
        .limits
        .max_connections
        .filter(|&max| open > max as usize)
}

/// The cap is reported in the log once a minute at most.
static AT_CAP: Throttle = Throttle::new();

fn warn_at_cap(max: u32) {
    if AT_CAP.allow() {
        tracing::warn!(
            max_connections = max,
            "connection limit reached: new connections are refused (limits.max_connections)"
        );
    }
}

/// Refuses a connection over the cap `max`: `503` with the reason on HTTP/1, a close on h2
/// (which has no answer without its handshake). On a plain listener with the PROXY
/// protocol (`expecting`), the header is read first, within [`CAP_LINGER`] (a load
/// balancer sends it as it connects): the refusal's access-log line then names the
/// client; TLS listeners read it before the handshake anyway.
pub async fn refuse(
    shared: Arc<Shared>,
    session: Stream,
    max: u32,
    expecting: Arc<[Expecting]>,
) -> Option<Stream> {
    warn_at_cap(max);
    let mut session =
        proxy_protocol::before_refusal(&shared, &expecting, session, CAP_LINGER).await?;
    if session.selected_alpn_proto() == Some(ALPN::H2) {
        shared.metrics.reject("max_connections");
        return None;
    }
    // The request is read (its first line, briefly) before it is answered: a client
    // such as hyper takes an answer that comes before its request for a broken connection
    // ("unexpected message"), not for a 503, and a TLS client sends its request only after
    // the handshake. The line names the refusal in the access log too.
    let head = crate::h1::first_line(&mut session, CAP_LINGER).await;
    let (peer_ip, local) = crate::h1::addresses(session.get_socket_digest().as_deref());
    let r = Rejection {
        status: 503,
        reason: "max_connections",
        detail: "the proxy is at its connection limit, try again shortly",
    };
    let rt = shared.current();
    let added = rt.response_headers(local);
    let id = rt.config.server.request_id;
    crate::h1::refuse(
        &shared,
        &mut session,
        r,
        peer_ip,
        &head,
        added,
        id,
        CAP_LINGER,
    )
    .await;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_two_descriptors_per_connection_and_a_reserve() {
        assert_eq!(default_max_connections(20_000), 9_872);
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(100), 1);
        assert_eq!(default_max_connections(u64::MAX), u32::MAX);
    }
}

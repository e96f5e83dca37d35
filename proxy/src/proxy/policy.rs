//! What the edge decides about a request from its head alone: redirects, limits, the route,
//! the balancing key, and which backend takes it. Both HTTP/1 request paths (pingora's and
//! our own in `crate::h1`) ask the same questions here, so a request gets the same answer
//! whichever path reads it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::balance::{PickContext, StrategyKind};
use crate::limits::ClientGuard;
use crate::state::{Routed, Runtime, Shared};
use crate::upstream::{ActiveGuard, Backend, NoBackend, NotPicked, Pick, Upstream};

use super::client_ip;
use super::normalize::{rewrite_target, route_path, valid_host};
use super::request_headers::RequestHeaders;

/// The parts of a request head the policy reads.
pub(crate) trait RequestView {
    /// The request target as sent in origin form, `/path?query`.
    fn path_and_query(&self) -> &str;
    fn host(&self) -> Option<&str>;
    /// Size of the request line plus headers as sent, for the 431 limit.
    fn head_size(&self) -> usize;
    /// How many header fields the request has where its parser did not bound them (an h2
    /// client's): 0 where it did (HTTP/1 heads are refused at parse past 256).
    fn unbounded_fields(&self) -> usize {
        0
    }
    /// The declared Content-Length, when there is a valid one.
    fn content_length(&self) -> Option<u64>;
    /// Every value of the header `name` (lowercase), in order.
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s str> + 's;

    fn path(&self) -> &str {
        let pq = self.path_and_query();
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }
    /// Whether the request must carry a Host field: every HTTP/1.1 request does
    /// (RFC 9112 §3.2), an HTTP/1.0 one need not.
    fn host_required(&self) -> bool {
        true
    }
    /// How many Host fields the request has, and the first one.
    fn host_fields(&self) -> (usize, Option<&str>) {
        let mut hosts = self.values("host");
        let first = hosts.next();
        (usize::from(first.is_some()) + hosts.count(), first)
    }
}

/// A request the proxy answers by itself, with the reason counted in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: u16,
    /// Metrics label.
    pub reason: &'static str,
    /// The text after the status in the response body.
    pub detail: &'static str,
}

impl Rejection {
    /// Whether the connection may carry the client's next request after this answer: a
    /// well-formed request refused by policy (no route, an address a route does not
    /// allow, a rate or connection limit), as nginx keeps it for its own 403, 404 and 429.
    /// Closing made every refused client reconnect, a TLS handshake each time for a
    /// rate-limited one. A request that could not be read, or whose body is left unread
    /// (413), closes it.
    pub(crate) fn keeps_alive(&self) -> bool {
        matches!(self.status, 403 | 404 | 429)
    }

    /// `400` for a request that cannot be read as one, saying why.
    pub(crate) fn bad_request(detail: &'static str) -> Self {
        Self {
            status: 400,
            reason: "bad_request",
            detail,
        }
    }
}

/// A request allowed through, with what the balancer needs to place it.
pub(crate) struct Admitted {
    pub upstream: Arc<Upstream>,
    /// What its route's `prefix_rewrite` made of it.
    pub rewritten: Option<Box<Rewritten>>,
    /// Its route's `request_headers`.
    pub request_headers: Option<Arc<RequestHeaders>>,
    /// Client address for balancing and X-Real-IP (trusted X-Forwarded-For applied).
    pub client_ip: Option<IpAddr>,
    /// Backend id from a validly signed sticky cookie.
    pub sticky_id: Option<String>,
    /// The client's concurrency slot, held until the request (or tunnel) ends.
    pub client_guard: Option<ClientGuard>,
}

/// A request under a route's `prefix_rewrite`.
#[derive(Debug)]
pub(crate) struct Rewritten {
    /// The target sent instead of the request's.
    pub target: String,
    /// The prefix the route stripped, for `X-Forwarded-Prefix`.
    pub stripped: Option<String>,
}

impl Rewritten {
    /// The target and stripped prefix of `rewritten`, as the writers of a request take them.
    pub(crate) fn parts(rewritten: Option<&Rewritten>) -> (Option<&str>, Option<&str>) {
        rewritten.map_or((None, None), |r| {
            (Some(r.target.as_str()), r.stripped.as_deref())
        })
    }
}

pub(crate) enum Admission {
    /// Permanent redirect to this location (HTTP -> HTTPS listeners).
    Redirect(String),
    Reject(Rejection),
    Forward(Admitted),
}

/// Lets one warning about a bad sticky cookie through a minute.
static BAD_STICKY: crate::logging::Throttle = crate::logging::Throttle::new();

/// The client of a request: the connection's address (`peer_ip`, a PROXY header's), or,
/// behind an HTTP balancer listed in `real_ip_from`, the address its X-Forwarded-For names:
/// the one every per-client decision is about, and the one logged. Only the part the
/// balancers appended is believed: a client can write anything left of it, nothing right.
#[inline]
pub(crate) fn real_client<V: RequestView>(
    cfg: &crate::config::Config,
    req: &V,
    peer_ip: Option<IpAddr>,
) -> Option<IpAddr> {
    if cfg.server.real_ip_from.is_empty() {
        peer_ip
    } else {
        client_ip(
            peer_ip,
            req.values("x-forwarded-for"),
            &cfg.server.real_ip_from,
        )
    }
}

/// Decides what happens to a request. `local` gives the listener address the request came
/// in on; it is only asked for when some listener redirects.
pub(crate) fn admit<V: RequestView>(
    shared: &Shared,
    rt: &Runtime,
    req: &V,
    peer_ip: Option<IpAddr>,
    local: impl FnOnce() -> Option<SocketAddr>,
) -> Admission {
    let cfg = &rt.config;
    if let Some(r) = check_host(req) {
        return Admission::Reject(r);
    }
    if cfg
        .listeners
        .iter()
        .any(|x| x.redirect_https_port.is_some())
    {
        let port = local().and_then(|l| {
            cfg.listeners
                .iter()
                .find(|x| crate::config::accepted_on(x.listen, l))
                .and_then(|x| x.redirect_https_port)
        });
        if let Some(port) = port {
            // An IPv6 literal keeps its brackets (`[::1]` has colons but no port).
            let host = req.host().map_or("localhost", crate::state::strip_port);
            let pq = req.path_and_query();
            return Admission::Redirect(if port == 443 {
                format!("https://{host}{pq}")
            } else {
                format!("https://{host}:{port}{pq}")
            });
        }
    }

    let limits = &cfg.limits;
    if limits
        .max_request_header_bytes
        .is_some_and(|max| req.head_size() > max)
    {
        return Admission::Reject(Rejection {
            status: 431,
            reason: "header_too_large",
            detail: "request header fields too large",
        });
    }
    // The HTTP/1 paths' bound, for h2 too: a backend (nginx: 100 by default) may refuse
    // what the proxy let through, or an h2 client could send what no HTTP/1.1 one can.
    if req.unbounded_fields() > crate::h1::head::MAX_FIELDS {
        return Admission::Reject(Rejection {
            status: 431,
            reason: "too_many_fields",
            detail: "too many header fields (more than 256)",
        });
    }
    let client = real_client(cfg, req, peer_ip);
    let mut client_guard = None;
    if let Some(ip) = client {
        if !shared
            .limits
            .allow_request(ip, limits.requests_per_second_per_ip.unwrap_or(0))
        {
            return Admission::Reject(Rejection {
                status: 429,
                reason: "rate_limited",
                detail: "too many requests from this address",
            });
        }
        // With the limit off nothing is counted (a mutex and a map update per request
        // otherwise). A reload that turns it on therefore does not see the requests and
        // tunnels opened before it: they are not counted against the new limit.
        if let Some(max) = limits.max_connections_per_ip.filter(|&m| m > 0) {
            match shared.limits.acquire(ip, max) {
                Some(g) => client_guard = Some(g),
                None => {
                    return Admission::Reject(Rejection {
                        status: 429,
                        reason: "too_many_connections",
                        detail: "too many concurrent connections from this address",
                    })
                }
            }
        }
    }
    if let Some(max) = limits.max_request_body_bytes {
        if req.content_length().is_some_and(|n| n > max) {
            return Admission::Reject(Rejection {
                status: 413,
                reason: "body_too_large",
                detail: "request body too large",
            });
        }
    }

    let path = match route_path(req.path()) {
        Ok(p) => p,
        Err(e) => {
            return Admission::Reject(Rejection {
                status: 400,
                reason: "bad_path",
                detail: e.reason(),
            })
        }
    };
    let (route, add_slash) = match rt.route(req.host(), &path) {
        Some(Routed::Forward(route)) => (route, false),
        Some(Routed::AddSlash(route)) => (route, true),
        None => {
            return Admission::Reject(Rejection {
                status: 404,
                reason: "no_route",
                detail: "no route for this host and path",
            })
        }
    };
    // The connection's address (a PROXY header's, behind a load balancer), or the one a
    // `real_ip_from` balancer appended to X-Forwarded-For, never one a client could write
    // there. Checked before the slash redirect, which would tell a client the route exists.
    if !route.allows(client) {
        return Admission::Reject(Rejection {
            status: 403,
            reason: "not_allowed",
            detail: "this address may not use this route",
        });
    }
    if add_slash {
        let location = route.slash_location().unwrap_or("/");
        let pq = req.path_and_query();
        let query = pq.find('?').map_or("", |i| &pq[i..]);
        return Admission::Redirect(format!("{location}{query}"));
    }
    let rewritten = match &route.rewrite {
        None => None,
        Some(rewrite) => match rewrite_target(req.path_and_query(), &route.prefix, &rewrite.to) {
            Some(target) => Some(Box::new(Rewritten {
                target,
                stripped: rewrite.stripped.clone(),
            })),
            // Routed on its path made text (a decoded byte that is not UTF-8 read as
            // U+FFFD), which the bytes then do not match: not sent unrewritten.
            None => {
                return Admission::Reject(Rejection {
                    status: 400,
                    reason: "bad_path",
                    detail: "the path cannot be rewritten for its route",
                })
            }
        },
    };
    let upstream = route.upstream.clone();
    // ip_hash's own `trusted_proxies`, when set, walks the chain from the connection's
    // address as it always did.
    let trusted = &upstream.config.ip_hash.trusted_proxies;
    let client_ip = if trusted.is_empty() {
        client
    } else {
        client_ip(peer_ip, req.values("x-forwarded-for"), trusted)
    };
    let mut sticky_id = None;
    if let Some(signer) = &upstream.signer {
        if let Some(value) = cookie_value(req, &upstream.config.sticky.cookie) {
            match signer.verify(value) {
                Some(id) => sticky_id = Some(id.to_string()),
                // Any client can send one per request: seen, not a flood.
                None if BAD_STICKY.allow() => tracing::warn!(
                    client = ?peer_ip,
                    "ignoring a sticky cookie with a bad signature (more within a minute at debug)"
                ),
                None => {
                    tracing::debug!(client = ?peer_ip, "ignoring a sticky cookie with a bad signature")
                }
            }
        }
    }
    Admission::Forward(Admitted {
        upstream,
        rewritten,
        request_headers: route.request_headers.clone(),
        client_ip,
        sticky_id,
        client_guard,
    })
}

/// RFC 9112 §3.2: one Host field, a valid authority, present on every HTTP/1.1 request.
/// Checked before anything reads the Host (routing, redirects, X-Forwarded-Host).
fn check_host<V: RequestView>(req: &V) -> Option<Rejection> {
    let bad = |detail| {
        Some(Rejection {
            status: 400,
            reason: "bad_host",
            detail,
        })
    };
    let (count, field) = req.host_fields();
    match (count, field) {
        (0, _) if req.host_required() => return bad("missing Host header"),
        (2.., _) => return bad("more than one Host header"),
        (_, Some(h)) if !valid_host(h) => return bad("invalid Host header"),
        // A field that is not text.
        (1, None) => return bad("invalid Host header"),
        _ => {}
    }
    // An absolute-form target's authority stands in for the Host field (§3.2.2).
    match req.host() {
        Some(h) if !field.is_some_and(|f| std::ptr::eq(f, h)) && !valid_host(h) => {
            bad("invalid authority in the request target")
        }
        _ => None,
    }
}

/// RFC 9112 §6.1 and §6.3: what a request's `Transfer-Encoding` values (every field, in
/// order) allow. `Ok(false)` without the field, `Ok(true)` for `chunked` alone, the only
/// coding either path can pass on: a chunked body is taken apart to find its end and framed
/// again upstream, so a coding applied before it would be lost or mislabelled.
///
/// - On an HTTP/1.0 request the field means faulty framing (§6.1): 400.
/// - Without `chunked` as the final coding the body's length cannot be known (§6.3): 400.
/// - `chunked` after other codings (`gzip, chunked`): a coding the proxy does not implement
///   (§6.1; nginx answers the same): 501.
///
/// Either way the connection closes after the answer: the body's end is unknown.
pub(crate) fn check_transfer_encoding<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    http10: bool,
) -> Result<bool, Rejection> {
    let mut present = false;
    let mut codings = 0usize;
    let mut last: &[u8] = b"";
    // What follows the last comma of the last field: pingora frames by it alone.
    let mut last_element: &[u8] = b"";
    for v in values {
        present = true;
        last_element = v
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        // Empty list elements are allowed and mean nothing (RFC 9110 §5.6.1).
        for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if !t.is_empty() {
                codings += 1;
                last = t;
            }
        }
    }
    if !present {
        return Ok(false);
    }
    let refuse = |status, reason, detail| Rejection {
        status,
        reason,
        detail,
    };
    if http10 {
        return Err(refuse(
            400,
            "bad_transfer_encoding",
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let name = last.split(|&b| b == b';').next().unwrap_or_default();
    // An empty last element means nothing (RFC 9110 §5.6.1), but pingora, which reads
    // the body, takes it for the final coding and refuses the request with an empty 400.
    if !name.trim_ascii().eq_ignore_ascii_case(b"chunked") || last_element.is_empty() {
        return Err(refuse(
            400,
            "bad_transfer_encoding",
            "chunked is not the final transfer coding",
        ));
    }
    if codings > 1 || !last.eq_ignore_ascii_case(b"chunked") {
        return Err(refuse(
            501,
            "unsupported_transfer_encoding",
            "only the chunked transfer coding is supported",
        ));
    }
    Ok(true)
}

fn cookie_value<'a, V: RequestView>(req: &'a V, name: &str) -> Option<&'a str> {
    req.values("cookie")
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// One backend chosen for one attempt of a request.
pub(crate) struct Choice {
    pub index: usize,
    pub backend: Arc<Backend>,
    /// Counts the request against the backend (least_conn) until dropped.
    pub guard: ActiveGuard,
    /// A Set-Cookie value to pin the client to this backend (sticky_cookie).
    pub set_cookie: Option<String>,
}

/// Picks a backend for an attempt, skipping those already `tried`, and records the pick.
/// When every backend is at its `max_conns` ([`NoBackend::Full`]) and the upstream has a
/// queue, waits in it for a slot (see [`choose_queued`]); otherwise the future is ready at
/// its first poll.
/// The caller must have dropped the guard of its previous attempt: that count would make
/// the backend look fuller than it is (at `max_conns = 1`, full).
pub(crate) async fn choose(
    up: &mut Arc<Upstream>,
    client_ip: Option<IpAddr>,
    sticky_id: Option<&str>,
    tried: &mut Vec<usize>,
    tls: bool,
) -> Result<Choice, NoBackend> {
    match choose_now(up, client_ip, sticky_id, tried, tls) {
        Some(chosen) => chosen,
        None => choose_queued(up, client_ip, sticky_id, tried, tls).await,
    }
}

/// [`choose`] up to the queue: `None` when every backend is at its `max_conns` and the
/// upstream has a queue, where [`choose_queued`] waits. A caller on the hot path calls the
/// two itself, so that a request that needs no queue creates and polls no future.
pub(crate) fn choose_now(
    up: &Upstream,
    client_ip: Option<IpAddr>,
    sticky_id: Option<&str>,
    tried: &mut Vec<usize>,
    tls: bool,
) -> Option<Result<Choice, NoBackend>> {
    let pctx = PickContext {
        client_ip,
        sticky_id,
    };
    match up.pick(&pctx, tried) {
        Err(NoBackend::Full) if up.queue.is_some() => None,
        other => Some(other.map(|pick| chosen(up, pick, sticky_id, tried, tls))),
    }
}

/// The rest of [`choose`] after [`choose_now`] found every backend full: waits in the
/// upstream's queue for a slot. When a reload replaces the upstream meanwhile
/// ([`NotPicked::Replaced`]), `up` becomes the new one and the request waits on under it
/// from its place in the queue, with `tried` cleared (its indices were the old backend
/// list's); the caller sees the change in `up`.
pub(crate) async fn choose_queued(
    up: &mut Arc<Upstream>,
    client_ip: Option<IpAddr>,
    sticky_id: Option<&str>,
    tried: &mut Vec<usize>,
    tls: bool,
) -> Result<Choice, NoBackend> {
    let pctx = PickContext {
        client_ip,
        sticky_id,
    };
    let mut carried = None;
    loop {
        match up.pick_queued(&pctx, tried, carried.take()).await {
            Ok(pick) => return Ok(chosen(up, pick, sticky_id, tried, tls)),
            Err(NotPicked::NoBackend(none)) => return Err(none),
            Err(NotPicked::Replaced(newer, place)) => {
                *up = newer;
                tried.clear();
                carried = Some(place);
            }
        }
    }
}

/// Records `pick` and makes it the attempt's [`Choice`].
fn chosen(
    up: &Upstream,
    pick: Pick,
    sticky_id: Option<&str>,
    tried: &mut Vec<usize>,
    tls: bool,
) -> Choice {
    if let Some(m) = up.metrics.get(pick.index) {
        m.picks.inc();
        m.requests.inc();
    }
    tried.push(pick.index);
    let set_cookie = if up.config.strategy == StrategyKind::StickyCookie
        && sticky_id != Some(pick.backend.id.as_str())
    {
        sticky_cookie_header(up, &pick.backend.id, tls)
    } else {
        None
    };
    Choice {
        index: pick.index,
        guard: pick.guard,
        backend: pick.backend,
        set_cookie,
    }
}

fn sticky_cookie_header(up: &Upstream, id: &str, tls: bool) -> Option<String> {
    let signer = up.signer.as_ref()?;
    let sticky = &up.config.sticky;
    let mut c = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax",
        sticky.cookie,
        signer.sign(id)
    );
    if let Some(age) = sticky.max_age {
        c.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if tls {
        c.push_str("; Secure");
    }
    Some(c)
}

/// Records a response head from a chosen backend: time to first byte from `timing` (when
/// the attempt started, when the head came; least_time and the latency histogram), the
/// status class, and a passive-health success.
pub(crate) fn observe_response(
    up: &Upstream,
    index: usize,
    backend: &Backend,
    timing: Option<(Instant, Instant)>,
    status: u16,
) {
    let metrics = up.metrics.get(index);
    if let Some((t, now)) = timing {
        let el = now.saturating_duration_since(t);
        backend.stats.ewma.observe_at(el, now);
        if let Some(m) = metrics {
            m.latency.observe(el.as_secs_f64());
        }
    }
    if let Some(m) = metrics {
        m.response(status);
    }
    up.report_success(backend);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::{check_transfer_encoding, choose};
    use crate::admin::metrics::Metrics;
    use crate::config::Config;
    use crate::upstream::{StatsRegistry, Upstream};

    /// An upstream of one backend with `max_conns = 1` and a queue.
    fn queued_upstream() -> Arc<Upstream> {
        let text = "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.app]\nmax_conns = 1\n\
                    max_queue = 4\nqueue_timeout = \"10s\"\n\
                    backends = [{ addr = \"127.0.0.1:9001\" }]\n";
        let config = Config::from_toml_str(text, None).unwrap();
        Arc::new(Upstream::build(
            config.upstream("app").unwrap(),
            &StatsRegistry::default(),
            &Metrics::default(),
        ))
    }

    #[tokio::test]
    async fn choose_is_ready_at_once_with_room_and_waits_in_the_queue_without() {
        let up = queued_upstream();
        let mut tried = Vec::new();
        // With room, the pick needs no second poll (nor a waker).
        let held = {
            let mut first_up = up.clone();
            let first = std::pin::pin!(choose(&mut first_up, None, None, &mut tried, false));
            match first.poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(c) => c.unwrap(),
                Poll::Pending => panic!("a pick with room waited"),
            }
        };
        assert_eq!(tried, [0]);
        let queued = {
            let up = up.clone();
            tokio::spawn(async move {
                let mut tried = Vec::new();
                let c = choose(&mut up.clone(), None, None, &mut tried, false).await;
                (c.map(|c| c.index), tried)
            })
        };
        let queue = up.queue.clone().unwrap();
        let joined = async {
            while queue.waiting() == 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .expect("the second request never joined the queue");
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), queued).await;
        // The slot, recorded as the attempt's pick.
        assert!(
            matches!(&got, Ok(Ok((Ok(0), tried))) if tried == &[0]),
            "{got:?}"
        );
        assert_eq!(up.metrics[0].picks.get(), 2);
    }

    #[test]
    fn transfer_codings() {
        let check = |values: &[&str], http10| {
            check_transfer_encoding(values.iter().map(|v| v.as_bytes()), http10)
                .map_err(|r| (r.status, r.detail))
        };
        assert_eq!(check(&[], false), Ok(false));
        assert_eq!(check(&[], true), Ok(false));
        assert_eq!(check(&["chunked"], false), Ok(true));
        assert_eq!(check(&[" Chunked "], false), Ok(true));
        assert_eq!(check(&[", chunked"], false), Ok(true));
        // An empty last element means nothing (RFC 9110 §5.6.1), but pingora, which reads
        // chunked bodies, frames by the last element and would refuse it with an empty 400.
        for trailing in [&[" Chunked ,"][..], &["chunked", ""]] {
            assert_eq!(
                check(trailing, false),
                Err((400, "chunked is not the final transfer coding")),
                "{trailing:?}"
            );
        }
        for gzip_first in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["chunked, chunked"],
        ] {
            assert_eq!(check(gzip_first, false).map_err(|e| e.0), Err(501));
        }
        assert_eq!(check(&["chunked;x=1"], false).map_err(|e| e.0), Err(501));
        for unframed in [
            &["chunked, gzip"][..],
            &["gzip"],
            &[""],
            &["chunked", "gzip"],
        ] {
            assert_eq!(
                check(unframed, false),
                Err((400, "chunked is not the final transfer coding")),
                "{unframed:?}"
            );
        }
        assert_eq!(
            check(&["chunked"], true),
            Err((400, "Transfer-Encoding in an HTTP/1.0 request"))
        );
    }
}

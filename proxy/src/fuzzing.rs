//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly): the parsers of bytes
//! from clients and backends, driven as the request paths drive them, without a server.
//! Not an API: hidden from the docs, and changed with the code it calls. The parsers
//! themselves stay crate-private; these wrappers only pass their answers out.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;

pub use crate::h1::body::{BadChunk, Chunked, Framing};
use crate::h1::head::{self, Parse};
pub use crate::h1::head::{parse_response, BadResponse, ResponseHead};
use crate::proxy::policy::RequestView as _;
use crate::proxy::request_id::RequestId;

/// What the HTTP/1 path made of a client's request head.
#[derive(Debug)]
pub enum RequestHead {
    /// A complete head it takes itself: its length, its body's length, and the head sent to
    /// the backend.
    Ready {
        len: usize,
        content_length: u64,
        upstream: Vec<u8>,
    },
    /// More bytes are needed.
    Partial,
    /// Left to pingora.
    Handoff,
    /// Answered 400 with this reason.
    Invalid(&'static str),
}

/// Parses `buf` as the HTTP/1 path does (`h1::head::parse_request`), and reads a head it
/// takes as routing and the backend's head do: every field lookup, the upstream head with
/// and without a peer, a client address and a request id.
pub fn request_head(buf: &[u8]) -> RequestHead {
    let mut fields = head::fields();
    match head::parse_request(buf, &mut fields) {
        Parse::Ready(req) => {
            let _ = (
                req.host_fields(),
                req.path(),
                req.idempotent(),
                req.is_head(),
            );
            let _ = req.values("cookie").count();
            let mut upstream = Vec::new();
            req.write_upstream(
                &mut upstream,
                (None, None),
                None,
                None,
                "",
                None,
                false,
                None,
                None,
            );
            upstream.clear();
            let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let id = RequestId::new();
            req.write_upstream(
                &mut upstream,
                (None, None),
                None,
                Some(peer),
                "127.0.0.1",
                Some(peer),
                true,
                Some("Hash=00;Subject=\"CN=fuzz\""),
                Some(&id),
            );
            RequestHead::Ready {
                len: req.len,
                content_length: req.content_length,
                upstream,
            }
        }
        Parse::Partial => RequestHead::Partial,
        Parse::Handoff => RequestHead::Handoff,
        Parse::Invalid(reason) => RequestHead::Invalid(reason),
    }
}

/// Where a head handed to pingora ends (`h1::head::handoff_framing`): its length and the
/// body's framing, or the status it is refused with.
pub fn handoff_framing(buf: &[u8]) -> Result<(usize, Framing), u16> {
    head::handoff_framing(buf).map_err(|r| r.status)
}

/// The status for a head longer than `limit` (`h1::head::oversized`).
pub fn oversized(buf: &[u8], limit: usize) -> u16 {
    head::oversized(buf, limit).status
}

/// A handed-off head with an absolute-form target, its Host fields replaced by the
/// target's authority (`proxy::request::host_from_target`).
pub fn host_from_target(buf: &[u8]) -> Option<BytesMut> {
    crate::proxy::request::host_from_target(buf)
}

/// The path routes match (`proxy::normalize::route_path`), or the 400's reason.
pub fn route_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    crate::proxy::route_path(path).map_err(|e| e.reason())
}

/// Whether `host` is a valid Host field value (`proxy::normalize::valid_host`).
pub fn valid_host(host: &str) -> bool {
    crate::proxy::valid_host(host)
}

/// The target a backend gets under a route's `prefix_rewrite`
/// (`proxy::normalize::rewrite_target`).
pub fn rewrite_target(path_and_query: &str, prefix: &str, rewrite: &str) -> Option<String> {
    crate::proxy::normalize::rewrite_target(path_and_query, prefix, rewrite)
}

/// What the admission (`proxy::policy::admit`, then `choose` for a forwarded request) made
/// of a request, on either path.
#[derive(Debug)]
pub enum Admission {
    /// A `308` to this location.
    Redirect(String),
    /// Answered by the proxy with this status.
    Reject(u16),
    /// Sent on: the target its route rewrote it to (if any), the backend picked (if one
    /// could be) and the sticky cookie set.
    Forward {
        target: Option<String>,
        backend: Option<String>,
        set_cookie: Option<String>,
    },
}

/// A config with a route and upstream of each kind admission treats differently: host
/// routes, rewrites, the slash redirect, sticky cookies, trusted proxies for ip_hash, an
/// HTTPS redirect on one listener, size limits.
const ADMIT_CONFIG: &str = r#"
[[listeners]]
listen = "127.0.0.1:18080"
[[listeners]]
listen = "127.0.0.1:18081"
redirect_https_port = 18443
[limits]
max_request_header_bytes = 2048
max_request_body_bytes = 1000
[upstreams.api]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:19001" }, { addr = "127.0.0.1:19002", weight = 3 }]
[upstreams.sticky]
strategy = "sticky_cookie"
backends = [{ addr = "127.0.0.1:19003", id = "s1" }, { addr = "127.0.0.1:19004", id = "s2" }]
[upstreams.sticky.sticky]
key = "a fuzzing key, not a secret: 0123456789abcdef"
[upstreams.hash]
strategy = "ip_hash"
backends = [{ addr = "127.0.0.1:19005" }, { addr = "127.0.0.1:19006" }, { addr = "127.0.0.1:19007", backup = true }]
[upstreams.hash.ip_hash]
trusted_proxies = ["127.0.0.0/8", "::1"]
[[routes]]
host = "sticky.test"
path_prefix = "/"
upstream = "sticky"
[[routes]]
path_prefix = "/api/"
prefix_rewrite = "/"
upstream = "api"
[[routes]]
path_prefix = "/v1/"
prefix_rewrite = "/v2/x/"
upstream = "hash"
[[routes]]
path_prefix = "/raw/"
slash_redirect = false
allow = ["127.0.0.0/8", "::1"]
upstream = "api"
[[routes]]
path_prefix = "/my docs/"
upstream = "sticky"
[[routes]]
path_prefix = "/"
upstream = "hash"
"#;

/// The proxy state admission reads, built once from [`ADMIT_CONFIG`].
fn admit_state() -> &'static crate::state::Shared {
    static SHARED: std::sync::OnceLock<crate::state::Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let config = crate::config::Config::from_toml_str(ADMIT_CONFIG, None)
            .unwrap_or_else(|e| panic!("the fuzzing config: {e}"));
        crate::state::Shared::new(config, Vec::new())
            .unwrap_or_else(|e| panic!("the fuzzing state: {e}"))
    })
}

/// The listener a request came in on (`listener` picks one of the two, the second
/// redirecting to HTTPS) and the peer it came from (`peer` picks a trusted proxy or not,
/// IPv4 or IPv6, or none).
fn admit_addrs(listener: u8, peer: u8) -> (std::net::SocketAddr, Option<IpAddr>) {
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 18080 + u16::from(listener & 1)));
    let peer = match peer % 4 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        2 => Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, peer))),
        _ => Some(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
    };
    (local, peer)
}

fn admit_view<V: crate::proxy::policy::RequestView>(
    req: &V,
    listener: u8,
    peer: u8,
    tls: bool,
) -> Admission {
    use crate::proxy::policy::{self, Admission as A};
    let shared = admit_state();
    let rt = shared.runtime.load();
    let (local, peer_ip) = admit_addrs(listener, peer);
    match policy::admit(shared, &rt, req, peer_ip, || Some(local)) {
        A::Redirect(location) => Admission::Redirect(location),
        A::Reject(r) => Admission::Reject(r.status),
        A::Forward(a) => {
            let mut tried = Vec::new();
            // One poll, without a runtime: nothing holds a slot between two inputs, so no
            // backend is ever full and the pick never waits in a queue.
            let mut up = a.upstream.clone();
            let choose = std::pin::pin!(policy::choose(
                &mut up,
                a.client_ip,
                a.sticky_id.as_deref(),
                &mut tried,
                tls,
            ));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let choice = match std::future::Future::poll(choose, &mut cx) {
                std::task::Poll::Ready(c) => c.ok(),
                std::task::Poll::Pending => None,
            };
            Admission::Forward {
                target: a.rewritten.map(|r| r.target),
                backend: choice.as_ref().map(|c| c.backend.id.clone()),
                set_cookie: choice.and_then(|c| c.set_cookie),
            }
        }
    }
}

/// Admits a head Switchyard's HTTP/1 path takes (`h1::head::parse_request`); None for one
/// it does not take (partial, handed to pingora, or refused before admission).
pub fn admit_native(buf: &[u8], listener: u8, peer: u8) -> Option<Admission> {
    let mut fields = head::fields();
    match head::parse_request(buf, &mut fields) {
        Parse::Ready(req) => Some(admit_view(&req, listener, peer, false)),
        _ => None,
    }
}

/// What pingora's path made of a request head: whether its target is routable, the
/// origin form sent for an absolute-form target, whether it stays an upgrade, and its
/// admission.
#[derive(Debug)]
pub struct PingoraRequest {
    pub routable: bool,
    pub origin_form: Option<Vec<u8>>,
    pub authority: Option<String>,
    pub upgrade: bool,
    pub admission: Admission,
}

/// Reads `buf` as pingora's HTTP/1 server builds its request head (httparse, then a
/// `RequestHeader` from the method, raw target and fields), then applies the request rules
/// of pingora's path (`proxy::request`) and the admission. None for a head that does not
/// parse.
pub fn admit_pingora(buf: &[u8], listener: u8, peer: u8) -> Option<PingoraRequest> {
    use crate::proxy::request;
    let mut headers = [httparse::EMPTY_HEADER; head::MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(buf) else {
        return None;
    };
    let mut req = pingora::http::RequestHeader::build(
        parsed.method.unwrap_or(""),
        parsed.path.unwrap_or("").as_bytes(),
        Some(parsed.headers.len()),
    )
    .ok()?;
    req.set_version(match parsed.version {
        Some(1) => http::Version::HTTP_11,
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_09,
    });
    for h in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        req.append_header(name, value).ok()?;
    }
    let routable = request::routable_target(&req);
    let origin_form = request::origin_form(&req);
    let authority = request::target_authority(&req).map(str::to_owned);
    let _ = request::expectation(&req);
    let has_body = req.headers.contains_key(http::header::CONTENT_LENGTH)
        || req.headers.contains_key(http::header::TRANSFER_ENCODING);
    let upgrade = request::settle_upgrade(&mut req, has_body);
    let admission = admit_view(
        &crate::proxy::PingoraHead(&req),
        listener,
        peer,
        listener & 2 != 0,
    );
    Some(PingoraRequest {
        routable,
        origin_form,
        authority,
        upgrade,
        admission,
    })
}

/// [`crate::config::Config::from_toml_str`] with every backend host name answered
/// `192.0.2.1` (TEST-NET-1, RFC 5737) without asking the system resolver: the names a
/// fuzzer writes must not become DNS queries, nor wait for their answers.
pub fn config_from_toml(
    text: &str,
    source: Option<&std::path::Path>,
) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    #[derive(Debug)]
    struct Fixed;
    impl crate::config::Resolver for Fixed {
        fn lookup(
            &self,
            _host: &str,
            port: u16,
            _timeout: std::time::Duration,
        ) -> Result<Vec<std::net::SocketAddr>, crate::config::ResolveError> {
            Ok(vec![std::net::SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                port,
            )])
        }
    }
    crate::config::parse_with(text, source, &|_| None, &Fixed)
}

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
            req.write_upstream(&mut upstream, (None, None), None, "", None, false, None);
            upstream.clear();
            let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let id = RequestId::new();
            req.write_upstream(
                &mut upstream,
                (None, None),
                Some(peer),
                "127.0.0.1",
                Some(peer),
                true,
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
        ) -> Result<Vec<std::net::SocketAddr>, crate::config::ResolveError> {
            Ok(vec![std::net::SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                port,
            )])
        }
    }
    crate::config::parse_with(text, source, &|_| None, &Fixed)
}

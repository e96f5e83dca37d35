//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on listeners behind a TCP
//! load balancer (AWS NLB, HAProxy's `send-proxy`, an nginx `stream` block): the client's
//! address comes in a header before the first byte of TLS or HTTP, and everything that uses
//! the client's address (X-Forwarded-For, per-IP limits and rates, ip_hash, the access log)
//! takes it from there.
//!
//! A listener with `proxy_protocol = true` requires the header on every connection, as
//! HAProxy's `accept-proxy` and nginx's `listen ... proxy_protocol` do: were it optional,
//! any client reaching the listener directly could claim any address. `proxy_protocol_from`
//! narrows who may connect at all to the load balancers' addresses.
//!
//! The header is read once per connection, before the TLS handshake on TLS listeners
//! ([`crate::h1::plain_on_tls`]) and before the first request on plain ones
//! ([`ProxyHeader`]: pingora calls the app once per connection and serves its kept-alive
//! requests inside that call). The addresses it gives replace the connection's socket
//! digest, which both request paths, h2 and the upgrade path read; its `original_dst`
//! records the header's destination.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::SocketDigest;
use pingora::protocols::{GetSocketDigest as _, Stream};
use pingora::server::ShutdownWatch;
use ppp::{v1, v2, HeaderResult};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::config::ListenerConfig;
use crate::drain::BoxFuture;
use crate::h1::bound::bounded;
use crate::h1::{addresses, first_head_timeout, refuse, stopped, LINGER};
use crate::logging::Throttle;
use crate::proxy::is_token_char;
use crate::proxy::policy::Rejection;
use crate::state::Shared;

/// The longest header accepted. A v1 header is at most 107 bytes; a v2 header is 16 bytes,
/// the addresses (216 at most) and TLVs, which load balancers keep to a few dozen bytes
/// (an AWS VPC endpoint id, a TLS version). HAProxy bounds it by its buffer size.
const MAX_HEADER: usize = 4096;

/// The first bytes of a v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The first bytes of a v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// A v1 header's limit (the spec's 107 bytes, CRLF included).
const V1_MAX: usize = 107;

/// What the client is told when a plain HTTP request comes without the header.
const MISSING_DETAIL: &str =
    "this listener expects a PROXY protocol header (from a load balancer) before the request";

/// One line a minute at most for refused connections: a load balancer that does not send
/// the header fails every connection, which must be seen, but not once per connection.
static REFUSED: Throttle = Throttle::new();

/// The connection's real addresses, as the load balancer saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client's address; None for a health check of the load balancer's own (v2
    /// `LOCAL`, v1 `UNKNOWN`) or an address family other than IP: the connection's own
    /// peer then stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
}

/// Why a connection's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("closed after {0} bytes of a PROXY protocol header")]
    Closed(usize),
    #[error("read failed before a PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY protocol header: the connection began with {0}")]
    Missing(Began),
    #[error("the peer is not in the listener's proxy_protocol_from")]
    NotAllowed,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("the proxy is stopping and no PROXY protocol header has begun")]
    Stopping,
}

/// What a connection without a header began with, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Began {
    Tls,
    Http,
    Other,
}

impl fmt::Display for Began {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Began::Tls => "a TLS handshake",
            Began::Http => "an HTTP request",
            Began::Other => "other bytes",
        })
    }
}

/// Parses a header at the start of `buf`: its addresses and length, None while more bytes
/// are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Addresses, usize)>, HeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let prefix_of = |sig: &[u8]| buf[..buf.len().min(sig.len())] == sig[..buf.len().min(sig.len())];
    let v2 = prefix_of(V2_SIGNATURE);
    if !v2 && !prefix_of(V1_PREFIX) {
        return Err(HeaderError::Missing(if buf[0] == 0x16 {
            Began::Tls
        } else if is_token_char(buf[0]) {
            Began::Http
        } else {
            Began::Other
        }));
    }
    // Parsed only once complete: ppp's partial results are not all marked incomplete
    // (a v1 line cut after a space reads as an empty field).
    let complete = if v2 {
        if buf.len() < 16 {
            return Ok(None);
        }
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > MAX_HEADER {
            return Err(HeaderError::TooLong);
        }
        total
    } else {
        match memchr::memmem::find(buf, b"\r\n") {
            Some(cr) if cr + 2 <= V1_MAX => cr + 2,
            Some(_) => return Err(too_long_v1()),
            None if buf.len() >= V1_MAX => return Err(too_long_v1()),
            None => return Ok(None),
        }
    };
    if buf.len() < complete {
        return Ok(None);
    }
    let buf = &buf[..complete];
    // The v1 line ends at its first CRLF, and nothing before it may end a line. ppp ends it
    // at the first CR instead, and takes a lone `\n` word for the end of an UNKNOWN line:
    // `PROXY UNKNOWN x \n y\rPROXY TCP4 …\r\n` would read as a header shorter than the line,
    // its rest left to the request parser.
    if !v2
        && buf[..complete - 2]
            .iter()
            .any(|&b| b == b'\r' || b == b'\n')
    {
        return Err(HeaderError::Malformed(
            "a CR or LF inside the v1 header line".to_string(),
        ));
    }
    let parsed = if v2 {
        HeaderResult::V2(v2::Header::try_from(buf))
    } else {
        HeaderResult::V1(v1::Header::try_from(buf))
    };
    match parsed {
        HeaderResult::V1(Ok(h)) => Ok(Some((v1_addresses(&h.addresses), h.header.len()))),
        HeaderResult::V2(Ok(h)) => {
            let addresses = match h.command {
                // The load balancer's own connection (a health check): no client behind it.
                v2::Command::Local => Addresses::NONE,
                v2::Command::Proxy => v2_addresses(&h.addresses),
            };
            Ok(Some((addresses, h.len())))
        }
        HeaderResult::V1(Err(e)) => Err(HeaderError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Malformed(e.to_string())),
    }
}

fn too_long_v1() -> HeaderError {
    HeaderError::Malformed(format!("no CRLF within {V1_MAX} bytes"))
}

impl Addresses {
    /// No client behind the connection, or none the header could say.
    const NONE: Addresses = Addresses {
        source: None,
        destination: None,
    };

    fn ip(source: impl Into<IpAddr>, sport: u16, dest: impl Into<IpAddr>, dport: u16) -> Self {
        Addresses {
            source: Some(SocketAddr::new(source.into(), sport)),
            destination: Some(SocketAddr::new(dest.into(), dport)),
        }
    }
}

fn v1_addresses(a: &v1::Addresses) -> Addresses {
    match *a {
        v1::Addresses::Tcp4(a) => Addresses::ip(
            a.source_address,
            a.source_port,
            a.destination_address,
            a.destination_port,
        ),
        v1::Addresses::Tcp6(a) => Addresses::ip(
            a.source_address,
            a.source_port,
            a.destination_address,
            a.destination_port,
        ),
        v1::Addresses::Unknown => Addresses::NONE,
    }
}

fn v2_addresses(a: &v2::Addresses) -> Addresses {
    match *a {
        v2::Addresses::IPv4(a) => Addresses::ip(
            a.source_address,
            a.source_port,
            a.destination_address,
            a.destination_port,
        ),
        v2::Addresses::IPv6(a) => Addresses::ip(
            a.source_address,
            a.source_port,
            a.destination_address,
            a.destination_port,
        ),
        // A Unix socket or an unspecified family says nothing about an IP client.
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Addresses::NONE,
    }
}

/// Reads a header from the start of `stream` into `buf` within `wait`: its addresses and
/// length. The bytes after it in `buf` (the start of the TLS handshake or of the request)
/// are to be put back. While no byte has come, the wait also ends when `stopping` does.
pub async fn read<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    wait: Duration,
    stopping: impl Future<Output = ()>,
) -> Result<(Addresses, usize), HeaderError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let read = async {
        let mut stopping = std::pin::pin!(stopping);
        loop {
            if let Some(parsed) = parse(buf)? {
                return Ok(parsed);
            }
            let n = if buf.is_empty() {
                // Idle, as a connection between requests is: a graceful stop ends it rather
                // than wait for the header timeout (a header under way is let finish).
                tokio::select! {
                    biased;
                    n = stream.read_buf(buf) => n?,
                    () = stopping.as_mut() => return Err(HeaderError::Stopping),
                }
            } else {
                stream.read_buf(buf).await?
            };
            if n == 0 {
                return Err(HeaderError::Closed(buf.len()));
            }
        }
    };
    bounded(wait, read)
        .await
        .unwrap_or(Err(HeaderError::Timeout(wait)))
}

/// The connection's socket digest, with the client's address from the header. The local
/// address stays the socket's own: it names the listener.
fn digest(stream: &L4Stream, addresses: Addresses) -> SocketDigest {
    let d = SocketDigest::from_raw_fd(stream.as_raw_fd());
    if let Some(source) = addresses.source {
        let _ = d.peer_addr.set(Some(PingoraAddr::Inet(source)));
    }
    let _ = d
        .original_dst
        .set(addresses.destination.map(PingoraAddr::Inet));
    d
}

/// A listener's PROXY protocol settings, fixed at start like its address.
#[derive(Debug, Clone)]
pub struct Expecting {
    listen: SocketAddr,
    /// Peers allowed to connect; empty: any.
    from: Vec<ipnet::IpNet>,
}

impl Expecting {
    /// The listeners of `listeners` that expect the header.
    pub fn of(listeners: &[ListenerConfig]) -> Vec<Expecting> {
        listeners
            .iter()
            .filter_map(|l| {
                l.proxy_protocol.as_ref().map(|p| Expecting {
                    listen: l.listen,
                    from: p.from.clone(),
                })
            })
            .collect()
    }
}

/// What a connection accepted on `local` from `peer` must go through: None if its listener
/// does not expect a header; Err if its peer may not connect.
fn expected(
    expecting: &[Expecting],
    local: SocketAddr,
    peer: Option<IpAddr>,
) -> Option<Result<(), HeaderError>> {
    let e = expecting
        .iter()
        .find(|e| crate::config::accepted_on(e.listen, local))?;
    if e.from.is_empty() {
        return Some(Ok(()));
    }
    // An IPv4 balancer on a dual-stack listener is `::ffff:a.b.c.d`, as the refusal's log
    // line names it: either spelling in the list lets it in, as in `trusted_proxies`.
    let allowed = peer.is_some_and(|ip| {
        let canonical = ip.to_canonical();
        e.from
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canonical))
    });
    Some(if allowed {
        Ok(())
    } else {
        Err(HeaderError::NotAllowed)
    })
}

/// Reads the header of a new connection on a listener that expects one, within `wait`, and
/// sets the connection's addresses from it. Err: the connection is to be closed (it has
/// been answered already if it was a plain HTTP request). With `shutdown`, a connection that
/// has sent nothing yet is closed when the proxy stops (the connection is counted then,
/// and would hold a graceful stop for the header timeout).
pub async fn accept(
    shared: &Shared,
    expecting: &[Expecting],
    stream: &mut L4Stream,
    shutdown: Option<&ShutdownWatch>,
    wait: Duration,
) -> Result<(), HeaderError> {
    let (peer, local) = addresses(stream.get_socket_digest().as_deref());
    let Some(local) = local else {
        return Ok(());
    };
    let Some(expected) = expected(expecting, local, peer) else {
        return Ok(());
    };
    let refused = |e: HeaderError| {
        let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
        if REFUSED.allow() {
            tracing::warn!(
                %peer,
                listen = %local,
                "connection refused: {e} (further refusals within a minute are logged at debug)"
            );
        } else {
            tracing::debug!(%peer, listen = %local, "connection refused: {e}");
        }
        e
    };
    if let Err(e) = expected {
        shared.metrics.reject("proxy_protocol");
        return Err(refused(e));
    }
    let mut buf = BytesMut::with_capacity(512);
    let stopping = async {
        match shutdown {
            Some(watch) => stopped(watch.clone()).await,
            None => std::future::pending().await,
        }
    };
    match read(stream, &mut buf, wait, stopping).await {
        Ok((addresses, len)) => {
            stream.rewind(&buf[len..]);
            let d = digest(stream, addresses);
            stream.set_socket_digest(d);
            Ok(())
        }
        Err(HeaderError::Missing(Began::Http)) => {
            // Someone tried the listener directly (curl, a browser): tell them why, as the
            // plain-HTTP-on-TLS answer does, rather than an empty reply.
            let r = Rejection {
                status: 400,
                reason: "proxy_protocol",
                detail: MISSING_DETAIL,
            };
            let rt = shared.current();
            refuse(
                shared,
                stream,
                r,
                peer,
                &buf,
                rt.response_headers(Some(local)),
                rt.config.server.request_id,
                LINGER,
            )
            .await;
            Err(refused(HeaderError::Missing(Began::Http)))
        }
        // Connected and closed without a byte: a TCP health check, not a misconfiguration;
        // or idle when the proxy stopped.
        Err(e @ (HeaderError::Closed(0) | HeaderError::Stopping)) => {
            tracing::debug!(peer = ?peer, listen = %local, "{e}");
            Err(e)
        }
        Err(e) => {
            shared.metrics.reject("proxy_protocol");
            Err(refused(e))
        }
    }
}

/// What a connection needs before its first request, as far as the header goes.
enum Plain {
    /// Nothing: its listener expects no header, or it is TLS (read before the handshake).
    Pass(Stream),
    /// The header, from this TCP stream.
    Read(Box<L4Stream>),
    /// To be closed: its listener expects a header that cannot be read from this stream.
    Close,
}

fn plain(expecting: &[Expecting], session: Stream) -> Plain {
    if expecting.is_empty() || session.get_ssl_digest().is_some() {
        return Plain::Pass(session);
    }
    // Deref explicitly: the box itself is also an `IO`, and its `as_any` is the box.
    if !(*session).as_any().is::<L4Stream>() {
        // Not a stream pingora's TCP listeners make: if its listener expects a header,
        // which cannot be read here, it is closed rather than let through unchecked.
        let (peer, local) = addresses(session.get_socket_digest().as_deref());
        if local.is_some_and(|l| expected(expecting, l, peer).is_some()) {
            tracing::error!("PROXY protocol: cannot read a header from {session:?}");
            return Plain::Close;
        }
        return Plain::Pass(session);
    }
    match session.into_any().downcast::<L4Stream>() {
        Ok(l4) => Plain::Read(l4),
        Err(_) => unreachable!("type checked above"),
    }
}

/// Reads the header of a connection about to be refused (over `limits.max_connections`)
/// within `wait`, so that the refusal's log line names the client rather than the load
/// balancer. None: the header was not there, and the connection has been dealt with as
/// any without one ([`accept`]).
pub async fn before_refusal(
    shared: &Shared,
    expecting: &[Expecting],
    session: Stream,
    wait: Duration,
) -> Option<Stream> {
    match plain(expecting, session) {
        Plain::Pass(session) => Some(session),
        Plain::Close => None,
        Plain::Read(mut l4) => {
            accept(shared, expecting, &mut l4, None, wait).await.ok()?;
            Some(l4)
        }
    }
}

/// The proxy service's app on plain listeners that expect the header: reads it before the
/// connection's first request. TLS listeners read it before the handshake instead.
pub struct ProxyHeader<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    expecting: Arc<[Expecting]>,
}

impl<A> ProxyHeader<A> {
    pub fn new(inner: A, shared: Arc<Shared>, expecting: Vec<Expecting>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            expecting: expecting.into(),
        }
    }
}

// Written out rather than with `#[async_trait]`, like `Counted`: without such listeners
// this costs a branch per connection, not a second state machine per request.
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ProxyHeader<A> {
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
        match plain(&self.expecting, session) {
            Plain::Pass(session) => self.inner.process_new(session, shutdown),
            Plain::Close => Box::pin(async { None }),
            Plain::Read(mut l4) => Box::pin(async move {
                let wait = first_head_timeout(&self.shared.current());
                accept(&self.shared, &self.expecting, &mut l4, Some(shutdown), wait)
                    .await
                    .ok()?;
                self.inner.process_new(l4, shutdown).await
            }),
        }
    }

    fn cleanup<'life0, 'async_trait>(&'life0 self) -> BoxFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.inner.cleanup()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parsed(buf: &[u8]) -> (Addresses, usize) {
        match parse(buf) {
            Ok(Some(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_the_bytes_after_it() {
        let buf = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (a, len) = parsed(buf);
        assert_eq!(a.source, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(a.destination, Some("10.0.0.1:443".parse().unwrap()));
        assert_eq!(&buf[len..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (a, _) = parsed(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n");
        assert_eq!(a.source, Some("[2001:db8::1]:4000".parse().unwrap()));
        let (a, len) = parsed(b"PROXY UNKNOWN\r\n");
        assert_eq!((a.source, len), (None, 15));
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let h = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:5000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .write_tlv(v2::Type::NoOp, b"abc")
        .unwrap()
        .build()
        .unwrap();
        let mut buf = h.clone();
        buf.extend_from_slice(b"\x16\x03\x01");
        let (a, len) = parsed(&buf);
        assert_eq!(a.source, Some("[2001:db8::7]:5000".parse().unwrap()));
        assert_eq!(len, h.len());

        let local = v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(parsed(&local).0.source, None);
    }

    #[test]
    fn partial_headers_wait_for_more() {
        let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
        for n in 1..full.len() {
            assert!(matches!(parse(&full[..n]), Ok(None)), "{n} bytes");
        }
        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "203.0.113.7:1".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:2".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        for n in 1..v2.len() {
            assert!(matches!(parse(&v2[..n]), Ok(None)), "{n} bytes");
        }
    }

    #[test]
    fn refused_headers_say_why() {
        for (buf, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Began::Http),
            (b"\x16\x03\x01\x02", Began::Tls),
            (b"\x00\x01", Began::Other),
        ] {
            assert!(
                matches!(parse(buf), Err(HeaderError::Missing(w)) if w == want),
                "{buf:?}"
            );
        }
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense here\r\n"),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat()),
            Err(HeaderError::Malformed(_))
        ));
        // A lone CR, or a lone LF as a word of an UNKNOWN line, is no end of the line: ppp
        // took the header to end at the CR, and the rest of the line went to the request
        // parser (found by the `proxy_protocol` fuzz target).
        for line in [
            &b"PROXY UNKNOWN x \n y\rPROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET"[..],
            b"PROXY UNKNOWN \n \r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r \r\n",
        ] {
            assert!(
                matches!(parse(line), Err(HeaderError::Malformed(_))),
                "{}: {:?}",
                line.escape_ascii(),
                parse(line)
            );
        }
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Err(HeaderError::TooLong)));
    }

    #[test]
    fn only_listed_peers_may_connect() {
        let e = [Expecting {
            listen: "0.0.0.0:8080".parse().unwrap(),
            from: vec!["10.0.0.0/8".parse().unwrap()],
        }];
        let local = "127.0.0.1:8080".parse().unwrap();
        assert!(matches!(
            expected(&e, local, Some("10.1.2.3".parse().unwrap())),
            Some(Ok(_))
        ));
        // An IPv4 balancer seen on a dual-stack socket.
        assert!(matches!(
            expected(&e, local, Some("::ffff:10.1.2.3".parse().unwrap())),
            Some(Ok(_))
        ));
        assert!(matches!(
            expected(&e, local, Some("192.0.2.1".parse().unwrap())),
            Some(Err(_))
        ));
        assert!(expected(&e, "127.0.0.1:8081".parse().unwrap(), None).is_none());
    }

    #[test]
    fn a_balancer_listed_as_a_dual_stack_listener_shows_it_may_connect() {
        // On a `[::]` listener an IPv4 balancer is `::ffff:10.1.2.3`, as a refusal's log
        // line names it: listed that way, as `trusted_proxies` may list it, it is let in.
        let e = [Expecting {
            listen: "[::]:8080".parse().unwrap(),
            from: vec!["::ffff:10.0.0.0/104".parse().unwrap()],
        }];
        let local = "[::ffff:127.0.0.1]:8080".parse().unwrap();
        assert!(matches!(
            expected(&e, local, Some("::ffff:10.1.2.3".parse().unwrap())),
            Some(Ok(_))
        ));
        assert!(matches!(
            expected(&e, local, Some("::ffff:192.0.2.1".parse().unwrap())),
            Some(Err(_))
        ));
    }
}

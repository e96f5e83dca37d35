//! WebSocket (HTTP/1.1 Upgrade) requests, handled outside pingora's proxy loop.
//!
//! We connect to the backend ourselves, forward the request head and read the answer. On a
//! `101` we take the raw client stream out of the pingora session and hand both sockets to
//! [`Relay`], which holds no buffer while idle. This keeps an idle tunnel at a few KiB
//! (pingora's own upgraded path keeps 64 KiB body buffers per tunnel) and avoids pingora
//! issue #946 (a tunnel torn down when the 101 is read before the request body state
//! settles), since pingora never sees the 101.
//!
//! Any other answer refuses the upgrade: it is relayed as it comes, and when it ends where
//! its framing says (and the client did not ask to close), the connection goes back to our
//! HTTP/1 path for the next request, as nginx keeps it ([`super::resume`]).

use std::io::Cursor;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use tokio::io::AsyncWriteExt;

use super::policy::Rewritten;
use super::request;
use super::request_headers::RequestHeaders;
use super::request_id::{self, RequestId};
use super::{forwarded_headers, host_of, is_forwarded_field, respond, Ctx, EdgeProxy, MAX_TRIES};
use crate::access_log::{AccessLog, Entry};
use crate::h1::body::Framing;
use crate::h1::head;
use crate::h1::lent::{self, Returned};
use crate::tunnel::frames;
use crate::tunnel::handshake::{self, HandshakeError, UpstreamResponse};
use crate::tunnel::relay::{End, Relay};
use crate::upstream::stream::UpstreamStream;

/// After one side of a tunnel closes, how long the other gets to finish.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Hop-by-hop headers that never describe the upstream hop of an upgrade.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

fn request_head(session: &Session, ctx: &Ctx) -> Vec<u8> {
    let req = session.req_header();
    let mut head = Vec::with_capacity(512);
    let (target, stripped) = Rewritten::parts(ctx.rewritten.as_deref());
    let pq = match target {
        Some(target) => target,
        None => req.uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    head.extend_from_slice(format!("{} {} HTTP/1.1\r\n", req.method, pq).as_bytes());
    let set = ctx.request_headers.as_deref();
    // The Host sent is the request's host: an absolute-form target's authority replaces
    // the field (RFC 9112 §3.2.2); a route's own Host replaces both.
    if let Some(host) = set.and_then(RequestHeaders::host).or(host_of(req)) {
        head.extend_from_slice(format!("host: {host}\r\n").as_bytes());
    }
    // The client's `Connection` describes its hop: what it lists (other than `Upgrade`,
    // which goes on) is not sent, and ours says only `upgrade`. Sent as it came, it could
    // name the fields we add (X-Forwarded-For, X-Request-Id) for a next hop to delete.
    let listed: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "upgrade")
        .collect();
    head.extend_from_slice(b"connection: upgrade\r\n");
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if is_forwarded_field(n)
            || HOP_BY_HOP.contains(&n)
            || n == "host"
            || n == "connection"
            || listed.iter().any(|l| l == n)
            || (n.contains('_') && request::is_framing_mimic(n))
            || (ctx.request_id.is_some() && request_id::is_id_field(n))
            || set.is_some_and(|set| set.replaces(n))
        {
            continue;
        }
        head.extend_from_slice(n.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in forwarded_headers(
        &req.headers,
        ctx.peer_ip,
        ctx.client_ip,
        ctx.tls,
        host_of(req),
        stripped,
        ctx.client_cert.as_ref().map(|c| c.xfcc.as_str()),
    ) {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some(id) = &ctx.request_id {
        head.extend_from_slice(format!("{}: {}\r\n", request_id::HEADER, id.as_str()).as_bytes());
    }
    for (name, value) in set.into_iter().flat_map(RequestHeaders::sent) {
        if !name.eq_ignore_ascii_case("host") {
            head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Takes the raw client stream out of the pingora session, leaving a parsed dummy session
/// behind so that pingora's own bookkeeping after `request_filter` has something to finish.
async fn take_client_stream(session: &mut Session) -> Result<Stream> {
    let mut dummy = ServerSession::new_http1(Box::new(Cursor::new(
        b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n".to_vec(),
    )));
    dummy.read_request().await?;
    // Nothing to reuse: pingora drops it once done.
    dummy.set_keepalive(None);
    let real = std::mem::replace(&mut session.downstream_session, Box::new(dummy));
    match *real {
        ServerSession::H1(h1) => Ok(h1.into_inner()),
        other => {
            *session.downstream_session = other;
            Err(Error::explain(
                ErrorType::InternalError,
                "upgrade on a non-HTTP/1.1 session",
            ))
        }
    }
}

/// Rebuilds a refused upgrade's response head for the client: without the backend's
/// `Connection` and `Keep-Alive` (they describe its connection to us), with
/// `Transfer-Encoding: chunked` instead of any `Content-Length` when `chunk` (see
/// [`relay_refusal`]; a chunked answer from the backend keeps its own field and loses its
/// `Content-Length` too, as on the HTTP/1 path), and with `Connection: close` when `close`.
fn refusal_head(head: &[u8], chunk: bool, chunked: bool, close: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(head.len() + 48);
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:")
            || lower.starts_with("keep-alive:")
            || ((chunk || chunked) && lower.starts_with("content-length:"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if chunk {
        out.push_str("transfer-encoding: chunked\r\n");
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Writes `data` to the client and flushes it, within `limit`; false when that failed.
async fn send(client: &mut Stream, data: &[u8], limit: Duration) -> bool {
    let write = async { client.write_all(data).await.and(client.flush().await) };
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

/// Relays a non-101 answer (its head and body) to the client; whether it was relayed to its
/// end. Each read from the backend (and each write to the client) may take `idle`; a long
/// body that keeps coming is relayed whole. The head says `Connection: close` when `close`;
/// `head_request`: the answer to a HEAD has no body.
///
/// A relay cut short (timeout, backend failure) must not look complete to the client. A
/// body framed by length or chunks is then simply incomplete when the connection closes;
/// a body delimited by the close is sent chunked (the request was HTTP/1.1: an upgrade),
/// so that only the backend's own end writes the last chunk. That also frames it for a
/// connection that goes on.
async fn relay_refusal(
    client: &mut Stream,
    mut resp: UpstreamResponse,
    fields: &[(String, String)],
    idle: Duration,
    close: bool,
    head_request: bool,
) -> bool {
    use tokio::io::AsyncReadExt;
    // The same framing rules as the HTTP/1 path, so the body ends where it really ends
    // (a chunked body is followed chunk by chunk, not guessed from its last bytes).
    let mut framing = match (resp.status, resp.chunked, resp.content_length) {
        _ if head_request => Framing::Empty,
        (100..=199 | 204 | 304, _, _) | (_, false, Some(0)) => Framing::Empty,
        (_, true, _) => Framing::Chunked(Default::default()),
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    let rechunk = framing.until_close();
    let head = head::with_fields_set(
        &refusal_head(&resp.head, rechunk, resp.chunked, close),
        fields,
    );
    // pingora's stream buffers small writes: every part is flushed as it comes, or a slow
    // backend's answer would wait in the buffer until its body is complete.
    if !send(client, &head, idle).await {
        return false;
    }
    let mut chunk = std::mem::take(&mut resp.rest).to_vec();
    let mut complete = false;
    // A malformed chunked body ends the relay.
    while let Ok((take, done)) = framing.feed(&chunk) {
        let sent = match take {
            0 => true,
            n if rechunk => send(client, &chunked(&chunk[..n]), idle).await,
            n => send(client, &chunk[..n], idle).await,
        };
        if !sent {
            return false;
        }
        if done {
            complete = true;
            break;
        }
        chunk.clear();
        chunk.resize(8192, 0);
        match tokio::time::timeout(idle, resp.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => chunk.truncate(n),
            // The backend's close ends a close-delimited body: that end is complete.
            Ok(Ok(_)) if rechunk => {
                complete = send(client, b"0\r\n\r\n", idle).await;
                break;
            }
            Ok(_) => break,
            Err(_) => {
                tracing::debug!("a refused upgrade's answer stalled for {idle:?}; cut");
                break;
            }
        }
    }
    if !complete {
        tracing::debug!("a refused upgrade's answer was cut before its end");
    }
    complete
}

/// Writes the bytes a client sent behind its upgrade request to the backend, within `limit`.
async fn send_early(upstream: &mut UpstreamStream, early: &[u8], limit: Duration) -> bool {
    let write = async {
        upstream.write_all(early).await?;
        upstream.flush().await
    };
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

/// `data` as one chunk of a chunked body.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub(super) async fn handle(p: &EdgeProxy, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let (Some(mut up), Some(rt)) = (ctx.upstream.clone(), ctx.runtime.clone()) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no upstream chosen",
        ));
    };
    let head = request_head(session, ctx);
    // Whether the client's connection may outlive a refusal: pingora turned keep-alive off
    // for a client that asked to close and for a proxy that is stopping.
    let keep_alive =
        session.get_keepalive().is_some() && !rt.config.timeouts.downstream_keepalive.is_zero();
    let head_request = session.req_header().method == http::Method::HEAD;
    let max_tries = MAX_TRIES.min(up.backends.len()).max(1);
    let resp = loop {
        let backend = match p.choose(&mut up, ctx).await {
            Ok(backend) => backend,
            Err(none) => {
                p.shared.metrics.reject(none.reason());
                ctx.local_status = Some(503);
                respond::text(
                    session,
                    503,
                    &none.detail(&up.name),
                    &super::added_fields(&rt, session, ctx),
                )
                .await?;
                return Ok(true);
            }
        };
        let t = up.config.timeouts;
        let attempt = match handshake::connect(backend.addr, up.tls.as_deref(), t.connect).await {
            Ok(stream) => handshake::exchange(stream, backend.addr, &head, t.upstream_read).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(resp) => break resp,
            Err(e) => {
                up.report_failure(&backend);
                crate::logging::backend_failure(
                    &up.name,
                    &backend,
                    &format_args!("websocket upgrade: {e}"),
                );
                if e.retryable() && ctx.tried.len() < max_tries {
                    continue;
                }
                let (code, detail) = match e {
                    HandshakeError::ReadTimeout(_) => {
                        (504, "the backend did not answer the upgrade in time")
                    }
                    HandshakeError::Tls { .. } => (502, "TLS handshake with the backend failed"),
                    // Worded as on the other paths, which a client may meet on the same URL.
                    HandshakeError::ConnectTimeout(_) => {
                        (502, "timed out connecting to the backend")
                    }
                    HandshakeError::Connect { .. } => (502, "could not connect to any backend"),
                    HandshakeError::Upstream { .. } => {
                        (502, "could not open the upgrade with a backend")
                    }
                };
                ctx.local_status = Some(code);
                respond::text(
                    session,
                    code,
                    detail,
                    &super::added_fields(&rt, session, ctx),
                )
                .await?;
                return Ok(true);
            }
        }
    };
    p.observe_response(ctx, resp.status);
    let t = up.config.timeouts;
    // Only what the access log needs, and only when it is on: this lives as long as the
    // tunnel. Taken before the client stream, which replaces the request in the session.
    let mut summary = p
        .shared
        .access_log
        .load()
        .enabled()
        .then(|| tunnel_summary(session, ctx, &up.name));
    // Read before the stream leaves the session, with its addresses.
    let fields = super::added_fields(&rt, session, ctx);
    // Only a WebSocket's frames are known: other protocols are relayed as bytes to the end.
    let websocket = session
        .req_header()
        .headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let client = take_client_stream(session).await?;
    ctx.tunneled = true;
    // Our HTTP/1 path lent pingora the stream for the request alone; what the client sent
    // behind it (a WebSocket client's first frames, say) is held with it.
    let (mut client, early, lent) = match lent::take_back(client) {
        Returned::Back(stream, rest) => (stream, rest, true),
        Returned::Other(stream) => (stream, BytesMut::new(), false),
        // A tunnelled request has no body: it was read whole.
        Returned::Unfinished => return Ok(true),
    };
    if resp.status != 101 {
        // An interim answer is not the end of the exchange, and only a lent stream comes
        // with what was read past the request.
        let keep = keep_alive && lent && resp.status >= 200;
        let idle = t.upstream_read;
        if relay_refusal(&mut client, resp, &fields, idle, !keep, head_request).await && keep {
            match super::resume(client, early) {
                Ok(()) => return Ok(true),
                Err(back) => client = back,
            }
        }
        let _ = tokio::time::timeout(idle, client.shutdown()).await;
        return Ok(true);
    }

    let extra = ctx
        .set_cookie
        .take()
        .map(|c| format!("set-cookie: {c}\r\n"))
        .unwrap_or_default();
    let out_head =
        handshake::with_extra_headers(&head::with_fields_set(&resp.head, &fields), &extra);
    let UpstreamResponse {
        stream: mut upstream,
        rest,
        ..
    } = resp;
    if client.write_all(&out_head).await.is_err()
        || (!rest.is_empty() && client.write_all(&rest).await.is_err())
        || client.flush().await.is_err()
    {
        return Ok(true);
    }
    if !early.is_empty() && !send_early(&mut upstream, &early, t.upstream_read).await {
        return Ok(true);
    }
    // The frame cursors start with what already went each way: a backend's first frames
    // often come in the read of its 101, a client's right behind its request. Started
    // after them, a cursor would take a payload for headers, and the proxy's Close could
    // then land inside a frame, or never find a frame's end.
    let frames = websocket.then(|| {
        let mut ab = frames::Cursor::default();
        ab.advance(&early);
        let mut ba = frames::Cursor::default();
        ba.advance(&rest);
        (ab, ba)
    });

    if let Some(s) = summary.as_mut() {
        // Relayed already, outside the relay's totals.
        s.sent_before = rest.len() as u64;
        s.received_before = early.len() as u64;
    }
    let mut guard = ctx.guard.take();
    if let Some(g) = guard.as_mut() {
        g.mark_tunnel();
    }
    let tunnel = Tunnel {
        // The connection's own task ends once the tunnel is spawned: the tunnel is counted
        // for itself, or a graceful stop would not wait for it.
        _open: crate::drain::Open::new(&p.shared.open),
        upstream,
        idle: t.tunnel_idle,
        frames,
        guards: (guard, ctx.client_guard.take()),
        shared: p.shared.clone(),
        summary,
        started: ctx.started.unwrap_or_else(Instant::now),
    };
    match into_bare_tcp(client) {
        Ok(tcp) => tokio::spawn(tunnel.run(tcp)),
        Err(stream) => tokio::spawn(tunnel.run(stream)),
    };
    Ok(true)
}

/// Swaps pingora's buffered TCP stream for a bare tokio `TcpStream` on a duplicate of the
/// same socket. pingora's stream keeps a write buffer and connection digests for its whole
/// life (about 2 KiB); an idle tunnel needs none of it. TLS streams are returned unchanged.
#[allow(unsafe_code)]
fn into_bare_tcp(stream: Stream) -> std::result::Result<tokio::net::TcpStream, Stream> {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use std::os::fd::{AsRawFd, BorrowedFd};
    // Deref explicitly: the box itself is also an `IO`, and its `as_any` is the box.
    if !(*stream).as_any().is::<L4Stream>() {
        return Err(stream);
    }
    let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
        unreachable!("type checked above");
    };
    // SAFETY: `l4` owns this open descriptor and outlives the borrow, which ends with the
    // duplication on the same line.
    let dup = unsafe { BorrowedFd::borrow_raw(l4.as_raw_fd()) }.try_clone_to_owned();
    let tcp = dup.and_then(|fd| {
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(std)
    });
    match tcp {
        // Dropping pingora's stream closes only its own descriptor; it does not shut the
        // socket down, so the duplicate carries on.
        Ok(tcp) => Ok(tcp),
        Err(e) => {
            tracing::debug!("keeping pingora's stream for a tunnel: {e}");
            Err(Box::new(*l4))
        }
    }
}

/// An accepted tunnel: everything the relay task owns besides the client side.
struct Tunnel {
    _open: crate::drain::Open,
    upstream: UpstreamStream,
    idle: Duration,
    /// A WebSocket's frame cursors (client to backend, backend to client): it is ended
    /// with Close frames when the proxy ends it.
    frames: Option<(frames::Cursor, frames::Cursor)>,
    /// Released when the tunnel closes: least_conn counts and the client's slot.
    guards: (
        Option<crate::upstream::ActiveGuard>,
        Option<crate::limits::ClientGuard>,
    ),
    shared: std::sync::Arc<crate::state::Shared>,
    summary: Option<Box<TunnelSummary>>,
    started: Instant,
}

impl Tunnel {
    async fn run<A>(self, client: A)
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let relay = Relay::new(client, self.upstream, self.idle, CLOSE_LINGER);
        let totals = match self.frames {
            Some((ab, ba)) => relay.websocket_from(ab, ba).await,
            None => relay.await,
        };
        drop(self.guards);
        if totals.end == End::IdleTimeout {
            tracing::debug!("tunnel closed after the idle timeout");
        }
        if let Some(req) = self.summary {
            self.shared.access_log.load().write(&Entry {
                ts: AccessLog::now(),
                client: req.client,
                method: "GET",
                path: &req.path,
                version: "HTTP/1.1",
                host: req.host.as_deref(),
                status: 101,
                bytes_sent: req.sent_before + totals.b_to_a,
                bytes_received: req.received_before + totals.a_to_b,
                duration_ms: self.started.elapsed().as_secs_f64() * 1e3,
                upstream: Some(&req.upstream),
                backend: req.backend.clone(),
                tried: req.tried.clone(),
                tunnel: true,
                referer: req.referer.as_deref(),
                user_agent: req.user_agent.as_deref(),
                request_id: req.request_id.as_ref().map(RequestId::as_str),
                client_cert: req.client_cert.as_ref().map(|c| c.subject.as_str()),
            });
        }
    }
}

/// What the tunnel task needs to write its access-log line.
struct TunnelSummary {
    client: Option<std::net::IpAddr>,
    request_id: Option<RequestId>,
    client_cert: Option<std::sync::Arc<crate::client_cert::PeerCert>>,
    path: String,
    host: Option<String>,
    upstream: String,
    backend: Option<String>,
    tried: Option<String>,
    referer: Option<String>,
    user_agent: Option<String>,
    /// What went each way before the relay started: the backend's bytes read with its
    /// `101`, the client's sent right behind its request.
    sent_before: u64,
    received_before: u64,
}

fn tunnel_summary(session: &Session, ctx: &Ctx, upstream: &str) -> Box<TunnelSummary> {
    let req = session.req_header();
    Box::new(TunnelSummary {
        client: ctx.client_ip.or(ctx.peer_ip),
        request_id: ctx.request_id,
        client_cert: ctx.client_cert.clone(),
        path: req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        host: host_of(req).map(str::to_string),
        upstream: upstream.to_string(),
        backend: ctx.backend.as_ref().map(|b| b.addr.to_string()),
        tried: ctx
            .upstream
            .as_ref()
            .and_then(|u| u.tried_before_last(&ctx.tried)),
        referer: header_text(req, http::header::REFERER),
        user_agent: header_text(req, http::header::USER_AGENT),
        sent_before: 0,
        received_before: 0,
    })
}

fn header_text(
    req: &pingora::http::RequestHeader,
    name: http::header::HeaderName,
) -> Option<String> {
    req.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::refusal_head;

    #[test]
    fn refused_upgrade_heads() {
        let head =
            b"HTTP/1.1 400 Bad Request\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                     Content-Length: 3\r\n\r\n";
        let text = |out: Vec<u8>| String::from_utf8(out).unwrap_or_default();
        assert_eq!(
            text(refusal_head(head, false, false, true)),
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            text(refusal_head(head, false, false, false)),
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\n"
        );
        assert_eq!(
            text(refusal_head(b"HTTP/1.1 403 No\r\n\r\n", true, false, false)),
            "HTTP/1.1 403 No\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let both = b"HTTP/1.1 404 No\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            text(refusal_head(both, false, true, false)),
            "HTTP/1.1 404 No\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}

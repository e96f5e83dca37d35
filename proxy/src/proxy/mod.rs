//! The pingora `ProxyHttp` implementation: limits, routing, backend choice, forwarded
//! headers, passive health, sticky cookies, metrics and the access log.

mod forwarded;
pub(crate) mod normalize;
pub(crate) mod policy;
pub(crate) mod request;
pub(crate) mod request_headers;
pub(crate) mod request_id;
pub(crate) mod respond;
mod upgrade;

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer as _};
use pingora::{Error, ErrorSource, ErrorType, RetryType};

use self::request_headers::RequestHeaders;
use self::request_id::RequestId;
use crate::access_log::{AccessLog, Entry};
use crate::client_cert::PeerCert;
use crate::config::UpstreamProtocol;
use crate::limits::ClientGuard;
use crate::state::{Runtime, Shared};
use crate::upstream::{ActiveGuard, Backend, NoBackend, Upstream};

pub use forwarded::{
    client_ip, forwarded, forwarded_header_values, forwarded_headers, is_forwarded_field,
    xff_values, FieldValue, FORWARDED_FIELDS,
};
pub(crate) use normalize::{encode_path, is_token_char, route_path, valid_host};
use policy::{Admission, RequestView, Rewritten};

thread_local! {
    /// Set by `early_request_filter` once a request head has been read. The listener
    /// wrapper clears it before each poll of a request whose head it is still waiting for
    /// and reads it right after: the filter runs inside that poll, on the same thread.
    static HEAD_READ: Cell<bool> = const { Cell::new(false) };
}

/// Runs `poll` (one poll of a request future) and tells whether the request head was read
/// during it, for the header-read deadline of the listener wrapper.
pub(crate) fn watch_head_read<T>(poll: impl FnOnce() -> T) -> (T, bool) {
    HEAD_READ.with(|f| f.set(false));
    let r = poll();
    (r, HEAD_READ.with(|f| f.replace(false)))
}

/// A client connection with the bytes read of it so far.
pub(crate) type Resumed = (Stream, BytesMut);

tokio::task_local! {
    /// Where request handling that took the client stream out of pingora's session (a
    /// refused upgrade) leaves it when the connection goes on. pingora would only hand back
    /// the session's own stream, a placeholder by then.
    static RESUME: Cell<Option<Resumed>>;
}

/// Runs `request` (one request through pingora's proxy) and returns, with its outcome, the
/// client connection it left to [`resume`] with, if any: that one carries the next request.
pub(crate) async fn resumable<F: Future>(request: F) -> (F::Output, Option<Resumed>) {
    RESUME
        .scope(Cell::new(None), async move {
            let out = request.await;
            (out, RESUME.try_with(Cell::take).ok().flatten())
        })
        .await
}

/// Leaves the client connection for [`resumable`]'s caller to read the next request on;
/// gives it back when there is none (outside [`resumable`]).
fn resume(stream: Stream, rest: BytesMut) -> Result<(), Stream> {
    let mut back = Some((stream, rest));
    let _ = RESUME.try_with(|r| r.set(back.take()));
    match back {
        None => Ok(()),
        Some((stream, _)) => Err(stream),
    }
}

/// Connection-context marker: this connection has served a request before.
pub(crate) struct KeptAlive;

/// How many backends one request may try when connections fail.
pub(crate) const MAX_TRIES: usize = 3;

/// Concurrent streams pingora opens on one h2 connection to a backend.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The proxy service logic. Holds nothing per request; see [`Ctx`].
pub struct EdgeProxy {
    shared: Arc<Shared>,
}

impl EdgeProxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    runtime: Option<Arc<Runtime>>,
    upstream: Option<Arc<Upstream>>,
    backend: Option<Arc<Backend>>,
    tried: Vec<usize>,
    guard: Option<ActiveGuard>,
    client_guard: Option<ClientGuard>,
    peer_ip: Option<IpAddr>,
    /// Client address for balancing and X-Real-IP (trusted X-Forwarded-For applied).
    client_ip: Option<IpAddr>,
    tls: bool,
    /// The client's verified certificate (mutual TLS), read once at the handshake.
    client_cert: Option<Arc<PeerCert>>,
    sticky_id: Option<String>,
    /// What the route's `prefix_rewrite` made of the request.
    rewritten: Option<Box<Rewritten>>,
    /// The route's `request_headers`.
    request_headers: Option<Arc<RequestHeaders>>,
    set_cookie: Option<String>,
    started: Option<Instant>,
    upstream_started: Option<Instant>,
    body_bytes: u64,
    /// The request was handed to our tunnel path, which logs it when the tunnel closes.
    tunneled: bool,
    /// The proxy answered by itself (limit, route, redirect) with this status.
    local_status: Option<u16>,
    /// The client speaks HTTP/1.0: no chunked response, no 1xx (RFC 9112 §6.1, RFC 9110
    /// §15.2).
    http10: bool,
    /// With `[server] request_id`.
    request_id: Option<RequestId>,
}

/// The request's host: an absolute-form target's authority (RFC 9112 §3.2.2: it replaces
/// the Host field), else the Host field.
fn host_of(req: &RequestHeader) -> Option<&str> {
    request::target_authority(req).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// Size of the request line plus headers as sent, for the 431 limit.
fn head_size(req: &RequestHeader) -> usize {
    // An absolute-form target keeps its authority in the raw bytes, HTTP/2's in the URI.
    let target = req.raw_path().len() + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// The final (non-1xx) response head written to the client, if any.
fn final_response(session: &Session) -> Option<&ResponseHeader> {
    session
        .response_written()
        .filter(|r| !r.status.is_informational() || r.status == 101)
}

/// The client closed or reset its connection: nobody is left to answer.
fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        )
}

/// Whether the client's request body has all been read (or there is none).
fn body_read(session: &mut Session) -> bool {
    session.is_body_empty() || session.is_body_done()
}

/// A TLS handshake with the backend failed on pingora's connector (an untrusted or
/// misnamed certificate, a backend that does not speak TLS).
fn tls_handshake_failed(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::TLSHandshakeTimedout | ErrorType::InvalidCert
    )
}

/// The alert a backend ended its TLS session with after the handshake seemed done, as
/// TLS 1.3 reports a refused client certificate: on the first read of the answer.
fn tls_alert(e: &Error) -> Option<String> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    crate::tunnel::handshake::tls_alert(e.root_cause().downcast_ref::<std::io::Error>()?)
}

/// The reason of an `HTTPStatus` error as our own code raised it: the context of the
/// innermost `HTTPStatus` error in the chain. Contexts added on the way out (by pingora or
/// by a hook) may name internal things, such as the backend's address, and are not shown
/// to clients.
fn status_reason(e: &Error) -> String {
    let mut cur = e;
    while let Some(inner) = cur
        .cause
        .as_deref()
        .and_then(|c| (c as &dyn std::error::Error).downcast_ref::<Error>())
        .filter(|c| matches!(c.etype(), ErrorType::HTTPStatus(_)))
    {
        cur = inner;
    }
    cur.context
        .as_ref()
        .map_or_else(String::new, |c| c.as_str().to_string())
}

/// What makes an answer head unfit to relay, as Switchyard's own path judges it: a status
/// outside 100–599, a head over its size or field limits, or a `101` (upgrades do not come
/// this way: [`upgrade::handle`] takes them, so this request asked for none).
fn bad_answer_head(resp: &ResponseHeader) -> Option<crate::h1::head::BadResponse> {
    use crate::h1::head::{BadResponse, MAX_FIELDS};
    let status = resp.status.as_u16();
    if status == 101 {
        return Some(BadResponse::Upgrade);
    }
    if !(100..=599).contains(&status) {
        return Some(BadResponse::Invalid);
    }
    // The status line, each field as `name: value` and its CRLF, the final CRLF.
    let size = resp.headers.iter().fold(17, |size, (name, value)| {
        size + name.as_str().len() + value.len() + 4
    });
    if resp.headers.len() > MAX_FIELDS || size > crate::h1::MAX_RESPONSE_HEAD {
        return Some(BadResponse::TooLarge);
    }
    None
}

/// The reason a client's request pingora refused is told: pingora's own explanation of a
/// bad head (`protected header cannot be nominated by the Connection header`, `non-chunked
/// final Transfer-Encoding`), which are fixed texts; not one that quotes the client's bytes
/// back (`buf: …`).
fn bad_request_reason(e: &Error) -> String {
    match (e.etype(), e.context.as_ref().map(|c| c.as_str())) {
        (ErrorType::InvalidHTTPHeader, Some(why)) if !why.starts_with("buf:") => {
            format!("bad request: {why}")
        }
        _ => "bad request".into(),
    }
}

/// pingora's parsed request head, as the policy sees it.
pub(crate) struct PingoraHead<'a>(pub(crate) &'a RequestHeader);

impl RequestView for PingoraHead<'_> {
    fn unbounded_fields(&self) -> usize {
        self.0.headers.len()
    }
    fn path_and_query(&self) -> &str {
        self.0.uri.path_and_query().map_or("/", |p| p.as_str())
    }
    fn path(&self) -> &str {
        self.0.uri.path()
    }
    fn host(&self) -> Option<&str> {
        host_of(self.0)
    }
    fn head_size(&self) -> usize {
        head_size(self.0)
    }
    fn content_length(&self) -> Option<u64> {
        self.0
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    }
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s str> + 's {
        self.0
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
    }
    fn host_required(&self) -> bool {
        // HTTP/2 carries the authority in the request target, not in a Host field.
        self.0.version == http::Version::HTTP_11
    }
}

impl EdgeProxy {
    /// Picks a backend for this request and records it in `ctx`, waiting in the upstream's
    /// queue for a slot when every backend is at its `max_conns`; an error when no backend
    /// can take it. A reload that replaces the upstream while the request waits makes `up`
    /// (and `ctx.upstream`) the new one, under which it picks again.
    async fn choose(
        &self,
        up: &mut Arc<Upstream>,
        ctx: &mut Ctx,
    ) -> Result<Arc<Backend>, NoBackend> {
        // The failed attempt's count is released before the pick: held, it would fill a
        // backend at its `max_conns` against the retry (the same backend, after a stale
        // pooled connection).
        ctx.guard = None;
        ctx.set_cookie = None;
        let c = policy::choose(
            up,
            ctx.client_ip,
            ctx.sticky_id.as_deref(),
            &mut ctx.tried,
            ctx.tls,
        )
        .await;
        if !ctx.upstream.as_ref().is_some_and(|u| Arc::ptr_eq(u, up)) {
            ctx.upstream = Some(up.clone());
        }
        Ok(Self::adopt(ctx, c?))
    }

    /// Makes `c` the request's current attempt.
    fn adopt(ctx: &mut Ctx, c: policy::Choice) -> Arc<Backend> {
        // The cookie of this attempt, or none: one set for a backend that failed an
        // earlier attempt would pin the client to it.
        ctx.set_cookie = c.set_cookie;
        ctx.guard = Some(c.guard);
        ctx.backend = Some(c.backend.clone());
        ctx.upstream_started = Some(Instant::now());
        c.backend
    }

    /// Records a response head from the chosen backend (TTFB, metrics, passive success).
    fn observe_response(&self, ctx: &Ctx, status: u16) {
        let (Some(up), Some(b), Some(&index)) = (&ctx.upstream, &ctx.backend, ctx.tried.last())
        else {
            return;
        };
        // The last index tried is the backend that answered.
        policy::observe_response(
            up,
            index,
            b,
            ctx.upstream_started.map(|t| (t, Instant::now())),
            status,
        );
    }

    /// Answers locally with a plain-text reason and stops the request.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        reason: &str,
        detail: &str,
    ) -> Result<bool> {
        self.shared.metrics.reject(reason);
        ctx.local_status = Some(status);
        let rt = self.runtime_of(ctx);
        respond::text(session, status, detail, &added_fields(&rt, session, ctx)).await?;
        Ok(true)
    }

    /// The configuration the request is served under (the current one, if it failed before
    /// it was read).
    fn runtime_of(&self, ctx: &Ctx) -> Arc<Runtime> {
        ctx.runtime.clone().unwrap_or_else(|| self.shared.current())
    }
}

/// The fields of every answer to the request: the `response_headers` of the listener
/// `session` came in on, and the request's id.
pub(crate) fn added_fields<'a>(
    rt: &'a Runtime,
    session: &Session,
    ctx: &Ctx,
) -> Cow<'a, [(String, String)]> {
    request_id::answer_fields(
        rt.response_headers(session.server_addr().and_then(|a| a.as_inet()).copied()),
        ctx.request_id.as_ref(),
    )
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            // Only the access log reads the request's start time.
            started: self.shared.access_log.load().enabled().then(Instant::now),
            ..Default::default()
        }
    }

    async fn early_request_filter(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        HEAD_READ.with(|f| f.set(true));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let rt = self.shared.current();
        ctx.runtime = Some(rt.clone());
        let cfg = &rt.config;
        ctx.request_id = cfg.server.request_id.then(RequestId::new);
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_deref());
        ctx.tls = ssl.is_some();
        ctx.client_cert = PeerCert::of(ssl);
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // The head has been read: from now on the downstream read timeout guards bodies,
        // not the (short) header timeout our listener wrapper set; writes of the answer get
        // the same bound, as on Switchyard's path.
        session.set_read_timeout(Some(cfg.timeouts.client));
        session.set_write_timeout(Some(cfg.timeouts.client));
        // pingora keeps HTTP/1.1 connections alive with no idle limit by default; bound the
        // wait for the next request (unless the client asked to close).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(cfg.timeouts.downstream_keepalive.as_secs().max(1)));
        }

        let version = session.req_header().version;
        // Our HTTP/1 path checks this before handing a request over; HTTP/2 has no such field.
        // Checked here too so that no request pingora reads is forwarded with a coding it
        // would drop.
        let codings = session
            .req_header()
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .map(|v| v.as_bytes());
        let http10 = matches!(version, http::Version::HTTP_10 | http::Version::HTTP_09);
        if let Err(r) = policy::check_transfer_encoding(codings, http10) {
            return self
                .reject(session, ctx, r.status, r.reason, r.detail)
                .await;
        }
        if !request::routable_target(session.req_header()) {
            return self
                .reject(
                    session,
                    ctx,
                    400,
                    "bad_target",
                    "the request target is not a path, an http(s) URL, or * for OPTIONS",
                )
                .await;
        }
        let mut expect_continue = false;
        match request::expectation(session.req_header()) {
            request::Expectation::None => {}
            request::Expectation::Unsupported => {
                return self
                    .reject(
                        session,
                        ctx,
                        417,
                        "expectation_failed",
                        "unsupported expectation",
                    )
                    .await;
            }
            request::Expectation::Continue => {
                // We answer 100 ourselves (below, once the request is admitted), as nginx
                // does: many backends never send one, and the client would wait for it
                // before sending the body. An HTTP/1.0 server must ignore the expectation.
                expect_continue = version == http::Version::HTTP_11;
                session
                    .req_header_mut()
                    .remove_header(&http::header::EXPECT);
            }
        }
        if matches!(version, http::Version::HTTP_10 | http::Version::HTTP_09) {
            // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client (chunked bodies are undone in
            // response_filter).
            ctx.http10 = true;
            session.set_ignore_info_resp(true);
        }

        let admission = policy::admit(
            &self.shared,
            &rt,
            &PingoraHead(session.req_header()),
            ctx.peer_ip,
            || session.server_addr().and_then(|a| a.as_inet()).copied(),
        );
        match admission {
            Admission::Redirect(location) => {
                ctx.local_status = Some(308);
                respond::redirect(session, &location, &added_fields(&rt, session, ctx)).await?;
                return Ok(true);
            }
            Admission::Reject(r) => {
                ctx.client_ip = policy::real_client(
                    &rt.config,
                    &PingoraHead(session.req_header()),
                    ctx.peer_ip,
                );
                return self
                    .reject(session, ctx, r.status, r.reason, r.detail)
                    .await;
            }
            Admission::Forward(a) => {
                ctx.client_ip = a.client_ip;
                ctx.sticky_id = a.sticky_id;
                ctx.rewritten = a.rewritten;
                ctx.request_headers = a.request_headers;
                ctx.client_guard = a.client_guard;
                ctx.upstream = Some(a.upstream);
            }
        }

        if session.is_upgrade_req() {
            let has_body = !session.is_body_empty();
            if request::settle_upgrade(session.req_header_mut(), has_body) {
                return upgrade::handle(self, session, ctx).await;
            }
        }
        if expect_continue && !session.is_body_empty() {
            // Writing a response head before the body is read makes pingora close the
            // connection afterwards (meant for final answers): a 100 keeps it.
            let keepalive = session.get_keepalive();
            session.write_continue_response().await?;
            session.set_keepalive(keepalive);
            // Expect is not forwarded, but some backends send 100 regardless: the client
            // must not get a second one.
            session.set_ignore_info_resp(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(mut up) = ctx.upstream.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream chosen",
            ));
        };
        // pingora watches the client only once it proxies: a request waiting in a
        // `max_conns` queue would keep its place after its client left, and be sent when
        // its turn came. An HTTP/1 request whose body is all read is watched here (a FIN
        // or a reset ends it; bytes sent after it end the watch); one still sending its
        // body cannot be read without taking the body. h2 ends a cancelled stream's task,
        // and with it the wait.
        let watch = !session.is_http2() && body_read(session);
        let chosen = if watch {
            let mut choose = std::pin::pin!(self.choose(&mut up, ctx));
            tokio::select! {
                biased;
                chosen = &mut choose => chosen,
                idle = session.read_body_or_idle(true) => match idle.map_err(|e| e.into_down()) {
                    Err(e) if client_went_away(&e) => return Err(e),
                    // Bytes pingora does not keep (pipelining is off): pingora's own
                    // read, once it proxies, decides what they mean.
                    _ => choose.await,
                },
            }
        } else {
            self.choose(&mut up, ctx).await
        };
        let backend = match chosen {
            Ok(backend) => backend,
            Err(none) => {
                self.shared.metrics.reject(none.reason());
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    none.detail(&up.name),
                ));
            }
        };
        let t = &up.config.timeouts;
        let mut peer = match &up.tls {
            Some(tls) => tls.peer(backend.addr),
            None => HttpPeer::new(backend.addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(t.connect);
        peer.options.total_connection_timeout = Some(t.connect + Duration::from_secs(1));
        peer.options.read_timeout = Some(t.upstream_read);
        peer.options.write_timeout = Some(t.upstream_read);
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        if up.config.protocol == UpstreamProtocol::H2 {
            // ALPN h2 alone over TLS; prior knowledge (h2c) over plain TCP.
            peer.options.set_http_version(2, 2);
            // pingora's default is one stream per connection, which would open a
            // connection per concurrent request; 100 is the minimum RFC 9113 §6.5.2
            // recommends a server allow.
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let req = session.req_header();
        // RFC 9112 §3.2.2: an origin is sent origin-form, with the target's authority as Host.
        if let Some(target) = request::origin_form(req) {
            upstream_request.set_raw_path(&target)?;
            if let Some(host) = request::target_authority(req) {
                upstream_request.insert_header(http::header::HOST, host)?;
            }
        }
        let (target, stripped) = Rewritten::parts(ctx.rewritten.as_deref());
        if let Some(target) = target {
            upstream_request.set_raw_path(target.as_bytes())?;
        }
        // Ours replace the client's below; its underscore spellings go too, and those of
        // the framing fields (see `request::is_framing_mimic`) and of the request id.
        let id_on = ctx.request_id.is_some();
        let set = ctx.request_headers.as_deref();
        let mimics: Vec<_> = upstream_request
            .headers
            .keys()
            .filter(|n| {
                let n = n.as_str();
                // Forwarded fields in any spelling: ours replace some below, and the others
                // (a Host-less request's X-Forwarded-Host, an X-Forwarded-Prefix where no
                // route stripped one) are not the client's to set either.
                is_forwarded_field(n)
                    || (n.contains('_')
                        && (request::is_framing_mimic(n) || (id_on && request_id::is_id_field(n))))
                    || set.is_some_and(|set| set.replaces(n))
            })
            .cloned()
            .collect();
        for name in mimics {
            upstream_request.remove_header(&name);
        }
        for (name, value) in forwarded_header_values(
            &req.headers,
            ctx.peer_ip,
            ctx.client_ip,
            ctx.tls,
            host_of(req),
            stripped,
            ctx.client_cert.as_ref().map(|c| c.xfcc.as_str()),
        ) {
            upstream_request.insert_header(name, value)?;
        }
        if let Some(id) = &ctx.request_id {
            // Replaces the client's.
            upstream_request.insert_header(request_id::HEADER, id.as_str())?;
        }
        // A Host of the route's replaces the client's after routing and X-Forwarded-Host
        // read it; pingora carries it into an h2 backend's `:authority`.
        for (name, value) in set.into_iter().flat_map(RequestHeaders::sent) {
            upstream_request.insert_header(name.to_owned(), value)?;
        }
        if !upstream_request.headers.contains_key(http::header::HOST) {
            // An HTTP/1.0 request may come without Host; it goes on as HTTP/1.1, which
            // requires one (RFC 9112 §3.2): the backend's address, as a client connected
            // to it directly would send.
            if let Some(b) = &ctx.backend {
                upstream_request.insert_header(http::header::HOST, b.addr.to_string())?;
            }
        }
        if let Some(joined) = request::split_cookies(&upstream_request.headers) {
            // An h2 client may send its cookies as one field each (RFC 9113 §8.2.3); an
            // HTTP/1.1 backend may read only one `Cookie` line, so they go as one, as the
            // RFC asks of a gateway to HTTP/1.1 (and an h2 backend takes either).
            upstream_request.insert_header(http::header::COOKIE, joined)?;
        }
        if let Some(length) = request::repeated_length(&upstream_request.headers) {
            // `Content-Length: 5, 5` (or two fields of 5) passed the head's checks as the
            // one length it repeats (RFC 9110 §8.6), and goes on as that: a backend that
            // cannot parse the list refuses the request, or frames the body otherwise.
            upstream_request.insert_header(http::header::CONTENT_LENGTH, length.to_string())?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An h2 client may end its body with an empty DATA frame. pingora writes an empty
        // piece to a chunked HTTP/1 upstream as a chunk of size 0, which is the last chunk,
        // and then the last chunk again: the backend reads the second as the start of the
        // next request on that connection. With no piece, only the end is sent.
        if end_of_stream && body.as_ref().is_some_and(Bytes::is_empty) {
            *body = None;
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            let max = ctx
                .runtime
                .as_ref()
                .and_then(|r| r.config.limits.max_request_body_bytes);
            if max.is_some_and(|max| ctx.body_bytes > max) {
                self.shared.metrics.reject("body_too_large");
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // What Switchyard's own path refuses or repairs in an answer head (`h1::head`),
        // refused or repaired here too, before any of it reaches the client.
        if let Some(bad) = bad_answer_head(resp) {
            return Err(Error::explain(ErrorType::HTTPStatus(502), bad.reason()));
        }
        if resp.status == 204 || resp.status.is_informational() {
            // Neither field belongs on a 1xx or 204 (RFC 9110 §8.6, RFC 9112 §6.1).
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.remove_header(&http::header::TRANSFER_ENCODING);
        }
        // Interim answers (100, 103) come here too: the metrics, the passive health and the
        // sticky cookie belong to the final one.
        if resp.status.is_informational() {
            return Ok(());
        }
        self.observe_response(ctx, resp.status.as_u16());
        if let Some(rt) = &ctx.runtime {
            for (name, value) in added_fields(rt, session, ctx).iter() {
                resp.insert_header(name.clone(), value.as_str())?;
            }
        }
        if let Some(c) = ctx.set_cookie.take() {
            resp.append_header("set-cookie", c)?;
        }
        // pingora passes chunked bodies through and chunks close-delimited ones; an HTTP/1.0
        // client gets the body raw, ended by the close (RFC 9112 §6.1). A Content-Length
        // from the backend stays.
        if ctx.http10
            && resp
                .remove_header(&http::header::TRANSFER_ENCODING)
                .is_some()
        {
            resp.remove_header(&http::header::TRAILER);
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if tls_handshake_failed(&e) {
            crate::tunnel::handshake::warn_tls(&format_args!(
                "TLS handshake with {} failed: {e}",
                peer.address()
            ));
        }
        if let (Some(up), Some(b)) = (&ctx.upstream, &ctx.backend) {
            up.report_failure(b);
            crate::logging::backend_failure(&up.name, b, &e);
            // Nothing was sent, so any method may go to another backend.
            if ctx.tried.len() < MAX_TRIES.min(up.backends.len()) {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e;
        if e.esource() == &ErrorSource::Upstream
            && matches!(e.etype(), ErrorType::ReadTimedout)
            && !body_read(session)
        {
            // The backend waits for the rest of a body the client has stopped sending:
            // the client's stall, answered 408, not the backend's failure (a client that
            // pauses its upload must not get healthy backends marked down).
            tracing::debug!(%peer, "the request body stalled while the backend waited for it");
            let mut stalled = Error::explain(
                ErrorType::ReadTimedout,
                "the request body stalled while the backend waited for it",
            );
            stalled.esource = ErrorSource::Downstream;
            stalled.set_retry(false);
            return stalled;
        }
        // pingora marks the failures a pooled connection the backend closed while idle
        // would give (`ReusedOnly`). On a reused connection such a failure says nothing
        // about the backend: its keep-alive timeout struck as the request went out.
        let stale = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        match (e.esource(), &ctx.upstream, &ctx.backend) {
            (ErrorSource::Upstream, Some(up), Some(b)) if !stale => {
                up.report_failure(b);
                crate::logging::backend_failure(&up.name, b, &e);
            }
            // The peer goes to the log, not into the error: fail_to_proxy may show its
            // context to the client.
            _ => tracing::debug!(%peer, "proxying failed: {e}"),
        }
        if let Some(alert) = tls_alert(&e) {
            crate::tunnel::handshake::warn_tls(&format_args!(
                "the backend {} refused the TLS session: alert {alert}",
                peer.address()
            ));
        }
        let req = session.req_header();
        // As on Switchyard's path (`RequestHead::idempotent`): a client's Idempotency-Key
        // says the backend de-duplicates the request.
        let idempotent = req.method.is_idempotent() || req.headers.contains_key("idempotency-key");
        if !idempotent || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else if stale {
            // Sent again on a fresh connection, to any backend the strategy picks, this
            // one included (with a single backend, excluding it answered 503).
            e.set_retry(true);
            ctx.tried.pop();
        } else {
            e.retry.decide_reuse(client_reused);
            let max = ctx
                .upstream
                .as_ref()
                .map_or(1, |up| MAX_TRIES.min(up.backends.len()));
            // Every backend it may go to has failed it: their failure, not a `503 no
            // healthy backend`, is the answer.
            if ctx.tried.len() >= max {
                e.set_retry(false);
            }
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (code, detail) = match e.etype() {
            ErrorType::HTTPStatus(c) => (*c, status_reason(e)),
            _ if tls_handshake_failed(e) || tls_alert(e).is_some() => {
                (502, "TLS handshake with the backend failed".into())
            }
            ErrorType::ConnectTimedout => (502, "timed out connecting to the backend".into()),
            ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
                (502, "could not connect to any backend".into())
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                (504, "the backend did not answer in time".into())
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "the backend failed".into()),
                ErrorSource::Downstream => match e.etype() {
                    _ if client_went_away(e) => (0, String::new()),
                    ErrorType::ReadTimedout => {
                        self.shared.metrics.reject("body_timeout");
                        (408, "request timed out".into())
                    }
                    _ => {
                        self.shared.metrics.reject("bad_request");
                        (400, bad_request_reason(e))
                    }
                },
                ErrorSource::Internal | ErrorSource::Unset => (500, "internal error".into()),
            },
        };
        // A 100 Continue may have gone out; a final answer has not.
        if code > 0 && final_response(session).is_none() {
            let detail = if detail.is_empty() {
                e.etype().as_str().to_string()
            } else {
                detail
            };
            let rt = self.runtime_of(ctx);
            if let Err(err) =
                respond::text(session, code, &detail, &added_fields(&rt, session, ctx)).await
            {
                tracing::debug!("could not send the error response: {err}");
            }
        }
        ctx.local_status = Some(code);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// pingora logs every failed request at ERROR. A backend's failures are logged by
    /// `error_while_proxy` and `fail_to_connect` (throttled, as on Switchyard's own path),
    /// and a client that went away is no error of the proxy's (nginx logs it at `info`).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // A client's malformed request (a bad chunked body, one over the size limit) is
        // answered and in the access log: an ERROR line for each would let any client
        // write the error log without bound.
        let quiet = client_went_away(e)
            || matches!(e.esource(), ErrorSource::Upstream | ErrorSource::Downstream)
            || matches!(e.etype(), ErrorType::HTTPStatus(_));
        if quiet {
            tracing::debug!("request failed: {e}");
        }
        quiet
    }

    /// pingora warns of each failed attempt it retries; those are a backend's failures,
    /// logged as above.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        client_went_away(e) || e.esource() == &ErrorSource::Upstream
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        // Marks the connection as kept alive, for the header-read deadline.
        Some(Box::new(KeptAlive))
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.tunneled {
            return;
        }
        // Release the counts before the (possibly slow) log write.
        ctx.guard = None;
        ctx.client_guard = None;
        let log = self.shared.access_log.load();
        if !log.enabled() {
            return;
        }
        let status = final_response(session)
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let req = session.req_header();
        // Whatever their bytes, as on Switchyard's path (`to_str` refuses any byte past ASCII).
        let header = |n: http::header::HeaderName| {
            req.headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
        };
        let (referer, user_agent) = (
            header(http::header::REFERER),
            header(http::header::USER_AGENT),
        );
        let version = format!("{:?}", req.version);
        // The target as the client sent it: a refused one (`bad_target`) has no parsed path.
        let path = String::from_utf8_lossy(req.raw_path());
        log.write(&Entry {
            ts: AccessLog::now(),
            client: ctx.client_ip.or(ctx.peer_ip),
            method: req.method.as_str(),
            path: &path,
            version: &version,
            host: host_of(req),
            status,
            bytes_sent: session.body_bytes_sent() as u64,
            bytes_received: ctx.body_bytes,
            duration_ms: ctx.started.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
            upstream: ctx.upstream.as_ref().map(|u| u.name.as_str()),
            backend: ctx.backend.as_ref().map(|b| b.addr.to_string()),
            tried: ctx
                .upstream
                .as_ref()
                .and_then(|u| u.tried_before_last(&ctx.tried)),
            tunnel: false,
            referer: referer.as_deref(),
            user_agent: user_agent.as_deref(),
            request_id: ctx.request_id.as_ref().map(RequestId::as_str),
            client_cert: ctx.client_cert.as_ref().map(|c| c.subject.as_str()),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn a_retry_on_the_cookies_own_backend_sets_no_cookie_for_the_failed_one() {
        let config = Config::from_toml_str(
            "[[listeners]]\nlisten = \"127.0.0.1:18091\"\n\
             [upstreams.app]\nstrategy = \"sticky_cookie\"\n\
             backends = [{ addr = \"127.0.0.1:9001\", id = \"a\" }, \
                         { addr = \"127.0.0.1:9002\", id = \"b\" }]\n\
             [upstreams.app.sticky]\nkey = \"0123456789abcdef0123\"\n",
            None,
        )
        .unwrap();
        let shared = Arc::new(Shared::new(config, Vec::new()).unwrap());
        let up = shared.current().upstreams["app"].clone();
        let proxy = EdgeProxy::new(shared);
        let mut ctx = Ctx {
            sticky_id: Some("b".to_owned()),
            ..Default::default()
        };
        // The cookie's backend cannot take the first attempt: another is chosen, and pinned.
        up.backends[1].stats.set_draining(true);
        let first = proxy.choose(&mut up.clone(), &mut ctx).await.unwrap();
        assert_eq!(first.id, "a");
        assert!(ctx.set_cookie.as_deref().is_some_and(|c| c.contains("=a.")));
        // That attempt failed; meanwhile the cookie's backend came back and takes the retry.
        up.backends[1].stats.set_draining(false);
        let second = proxy.choose(&mut up.clone(), &mut ctx).await.unwrap();
        assert_eq!(second.id, "b");
        // The client is already pinned to b: pinning it to the failed a would move it.
        assert_eq!(ctx.set_cookie, None);
    }
}

//! Our own HTTP/1.1 request path, beside pingora's.
//!
//! Profiled with perf on our 2-core machine, pingora's proxy loop spent about 28 µs of
//! user-space CPU per request (header maps, per-phase futures, timers, its connection
//! pool; our own logic was 3% of it), which held the proxy to half of nginx's requests per
//! CPU-second. This path spends about 5 µs, leaving the kernel's TCP work as the bulk of
//! the cost, as it is for nginx. Most requests are plain: HTTP/1.1,
//! a Content-Length body or none. This path serves those on the raw client stream with one
//! read of the request, one write upstream, one read of the answer and one write back;
//! request bodies (up to 64 KiB) are read whole first, as nginx does, so that a request can
//! always be sent again, and response bodies are relayed as they come. The same policy code as pingora's path decides limits,
//! routes, backends and headers (`crate::proxy::policy`), so answers do not depend on the
//! path. Anything else (HTTP/1.0, upgrades, chunked, `Expect` or larger request bodies,
//! odd framing, request lines httparse refuses) is handed to pingora with the bytes already
//! read, one request at a time ([`lent`]): once pingora has answered it, the connection
//! comes back here for the next request (an upgraded one becomes a tunnel). With
//! `server.http1 = "pingora"` every request is handed over, after the same checks of its
//! head. HTTP/2 never comes here.

pub(crate) mod body;
pub(crate) mod bound;
pub(crate) mod head;
pub mod lent;
pub mod plain_on_tls;
pub mod pool;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora::protocols::{SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::access_log::{AccessLog, Entry};
use crate::client_cert::PeerCert;
use crate::proxy::policy::{self, Admission, Rejection, RequestView, Rewritten};
use crate::proxy::request_id::{self, RequestId};
use crate::proxy::{is_token_char, respond, MAX_TRIES};
use crate::state::{Runtime, Shared};
use crate::tunnel::handshake::{self, HandshakeError};
use crate::upstream::stream::UpstreamStream;
use crate::upstream::tls::TlsClient;
use crate::upstream::Upstream;

use body::{BadChunk, Framing};
use bound::{bounded, Deadline};
use head::{BadResponse, Parse, RequestHead, ResponseHead};
use lent::Lent;
use pool::Pool;

/// The largest request head pingora reads (its parser's own bound), and so the bound on
/// either path when `limits.max_request_header_bytes` is off.
const MAX_HEAD: usize = 1024 * 1024 - 1;
/// After an error answer to a request not read whole, how long the connection keeps
/// reading (and dropping) what the client still sends, and how much of it.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// How much of a refused request's first line the access log keeps.
const LOGGED_LINE: usize = 1024;
/// Request bodies up to this size are read whole before the request goes upstream (as
/// nginx buffers them), so a request can always be sent again; larger ones go to pingora.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// Largest response head accepted from a backend.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for response bodies.
const BODY_CHUNK: usize = 16 * 1024;
/// Idle connections kept per backend.
const POOL_PER_BACKEND: usize = 128;
/// How long an idle backend connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// How often idle backend connections are checked for a close from the backend.
const POOL_SWEEP: Duration = Duration::from_secs(5);
/// Bound on reading the rest of a head once its first bytes came, when no header timeout
/// is configured.
/// How long a new connection may take to send its first request head, or what comes before
/// it (a PROXY protocol header, a TLS handshake).
pub(crate) fn first_head_timeout(rt: &Runtime) -> Duration {
    rt.config
        .limits
        .header_read_timeout
        .unwrap_or(DEFAULT_HEAD_TIMEOUT)
}

pub(crate) const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How a connection left this path.
pub enum Outcome {
    /// Closed (or to be closed): nothing more to do.
    Closed,
    /// The next request is pingora's to serve, on a [`Lent`] stream.
    Handoff {
        stream: Stream,
        /// The connection served a request before this one.
        reused: bool,
    },
}

/// The HTTP/1 path of one proxy service.
pub struct H1 {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    /// `server.http1 = "native"`: plain requests are served here, not handed over.
    native: bool,
    /// Whether the pool's sweeper task runs (started by the first connection, on the
    /// service's own runtime).
    sweeping: std::sync::atomic::AtomicBool,
}

/// The connection-level facts every request of a connection shares.
struct Conn {
    peer_ip: Option<IpAddr>,
    /// `peer_ip` as text, for the forwarded headers of every request.
    peer_text: String,
    local: Option<SocketAddr>,
    tls: bool,
    /// The client's verified certificate, read once at the handshake.
    client_cert: Option<Arc<PeerCert>>,
    /// Set when the proxy starts to stop: the connection is not kept alive after that.
    shutdown: ShutdownWatch,
}

/// Why waiting for a request head ended without one.
enum NoHead {
    /// Nothing came within the wait for a first byte (keep-alive time, or the header
    /// timeout on a new connection).
    Idle,
    /// The client closed, or the proxy is stopping.
    Gone,
    /// Bytes came but not a whole head within the header timeout (slowloris).
    TimedOut,
    /// The head is larger than the limit.
    TooLarge,
    /// What came cannot start a request (the reason): answered at once rather than after
    /// the header timeout, as nginx and HAProxy answer it.
    NotHttp(&'static str),
}

impl H1 {
    pub fn new(shared: Arc<Shared>, native: bool) -> Self {
        Self {
            shared,
            pool: Arc::new(Pool::new(POOL_PER_BACKEND, POOL_IDLE)),
            native,
            sweeping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sweeps the pool every few seconds while the service runs.
    fn start_sweeper(&self) {
        if self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let pool = Arc::downgrade(&self.pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POOL_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Serves requests on `stream`, of which `buf` has been read, until it closes or a
    /// request needs pingora.
    pub async fn serve(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        reused: bool,
        shutdown: &ShutdownWatch,
    ) -> Outcome {
        self.start_sweeper();
        let (peer_ip, local) = addresses(stream.get_socket_digest().as_deref());
        let ssl = stream.get_ssl_digest();
        let conn = Conn {
            peer_ip,
            peer_text: peer_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            local,
            tls: ssl.is_some(),
            client_cert: PeerCert::of(ssl.as_deref()),
            shutdown: shutdown.clone(),
        };
        // Registered once for the connection's life, not once per wait for a request.
        let mut stopping = pin!(stopped(shutdown.clone()));
        buf.reserve(4096);
        let mut served = reused;
        let mut timers = Timers::default();
        loop {
            // The waits are bounded by the config of when they start; the request that
            // comes is served under the config of when it came (a reload may happen while
            // a kept-alive connection waits).
            let (first_wait, head_timeout, head_limit, header_read_timeout) = {
                let rt = self.shared.runtime.load();
                let (t, limits) = (&rt.config.timeouts, &rt.config.limits);
                let (first_wait, head_timeout) = match limits.header_read_timeout {
                    Some(h) if !served => (h, h),
                    Some(h) => (t.downstream_keepalive, h),
                    None => (t.downstream_keepalive, DEFAULT_HEAD_TIMEOUT),
                };
                let head_limit = limits
                    .max_request_header_bytes
                    .map_or(MAX_HEAD, |max| max.min(MAX_HEAD));
                (
                    first_wait,
                    head_timeout,
                    head_limit,
                    limits.header_read_timeout,
                )
            };
            let waited = wait_head(
                &mut stream,
                &mut buf,
                head_limit,
                first_wait,
                head_timeout,
                shutdown,
                served,
                stopping.as_mut(),
                &mut timers.client,
            )
            .await;
            let rt = self.shared.current();
            let t = &rt.config.timeouts;
            match waited {
                Ok(()) => {}
                Err(NoHead::Idle) if !served && header_read_timeout.is_some() => {
                    // A new connection that sent nothing within the header timeout, counted
                    // as pingora's path counts it.
                    self.shared.metrics.reject("header_timeout");
                    return Outcome::Closed;
                }
                Err(NoHead::Idle | NoHead::Gone) => return Outcome::Closed,
                Err(NoHead::TimedOut) => {
                    self.shared.metrics.reject("header_timeout");
                    // Closed without an answer, as nginx closes it, and logged as a 408, as
                    // nginx logs it: the access log has every request that began.
                    if !buf.is_empty() {
                        log_refusal(&self.shared, conn.peer_ip, &buf, 408, 0, None);
                    }
                    return Outcome::Closed;
                }
                Err(NoHead::TooLarge) => {
                    let r = head::oversized(&buf, head_limit);
                    self.refuse(&mut stream, r, &conn, &rt, &buf).await;
                    return Outcome::Closed;
                }
                Err(NoHead::NotHttp(detail)) => {
                    let r = Rejection::bad_request(detail);
                    self.refuse(&mut stream, r, &conn, &rt, &buf).await;
                    return Outcome::Closed;
                }
            }
            // The whole request (head and body) is read before anything goes upstream.
            let (consumed, next) = loop {
                let mut fields = head::fields();
                let need = match head::parse_request(&buf, &mut fields) {
                    Parse::Ready(req)
                        if self.native
                            && req.content_length <= MAX_BUFFERED_BODY
                            && !rt.routes_to_h2(&req) =>
                    {
                        let need = req.len + req.content_length as usize;
                        // A body over the limit is refused from the head alone.
                        let refused = rt
                            .config
                            .limits
                            .max_request_body_bytes
                            .is_some_and(|max| req.content_length > max);
                        if buf.len() >= need || refused {
                            let body = &buf[req.len..need.min(buf.len())];
                            let next = self
                                .exchange(&mut stream, &req, body, &conn, &rt, &mut timers.upstream)
                                .await;
                            break (need, next);
                        }
                        need
                    }
                    Parse::Invalid(detail) => {
                        let r = Rejection::bad_request(detail);
                        self.refuse(&mut stream, r, &conn, &rt, &buf).await;
                        return Outcome::Closed;
                    }
                    // Larger bodies are streamed by pingora, which reads the answer while
                    // it still sends (a backend may answer before the body is over).
                    Parse::Ready(req) => {
                        let (len, length) = (req.len, req.content_length);
                        let body = match length {
                            0 => Framing::Empty,
                            n => Framing::Length(n),
                        };
                        return self.lend(stream, buf, len, body, served);
                    }
                    Parse::Partial | Parse::Handoff => {
                        // RFC 9112 §3.2.2: the target's authority replaces the Host field.
                        // pingora refuses a Host that differs from it while reading the head,
                        // before any of our hooks runs, so the head it reads has the target's.
                        if let Some(rewritten) = crate::proxy::request::host_from_target(&buf) {
                            buf = rewritten;
                        }
                        match head::handoff_framing(&buf) {
                            Ok((len, body)) => return self.lend(stream, buf, len, body, served),
                            Err(r) => {
                                self.refuse(&mut stream, r, &conn, &rt, &buf).await;
                                return Outcome::Closed;
                            }
                        }
                    }
                };
                match read_body(&mut stream, &mut buf, need, t.client).await {
                    BodyRead::Whole => {}
                    BodyRead::Gone => return Outcome::Closed,
                    BodyRead::Stalled => {
                        let r = Rejection {
                            status: 408,
                            reason: "body_timeout",
                            detail: "the request body stalled (timeouts.client)",
                        };
                        self.refuse(&mut stream, r, &conn, &rt, &buf).await;
                        return Outcome::Closed;
                    }
                }
            };
            if !next {
                return Outcome::Closed;
            }
            buf.advance(consumed);
            // Read after what `buf` held: the client's next requests, sent while this one
            // waited for its backend.
            let pipelined = &mut timers.upstream.pipelined;
            if !pipelined.is_empty() {
                buf.extend_from_slice(pipelined);
                pipelined.clear();
            }
            served = true;
        }
    }

    /// Hands the request at the start of `buf` (a head of `head_len` bytes, then a body
    /// framed by `body`) to pingora, which gets nothing of the stream past its end.
    fn lend(
        &self,
        stream: Stream,
        buf: BytesMut,
        head_len: usize,
        body: Framing,
        reused: bool,
    ) -> Outcome {
        Outcome::Handoff {
            stream: Box::new(Lent::new(stream, buf, head_len, body)),
            reused,
        }
    }

    /// [`refuse`] on a connection of this path.
    async fn refuse(
        &self,
        stream: &mut Stream,
        r: Rejection,
        conn: &Conn,
        rt: &Runtime,
        head: &[u8],
    ) {
        let added = rt.response_headers(conn.local);
        let id = rt.config.server.request_id;
        refuse(
            &self.shared,
            stream,
            r,
            conn.peer_ip,
            head,
            added,
            id,
            LINGER,
        )
        .await;
    }

    /// Serves one request; whether the client connection stays open.
    async fn exchange(
        &self,
        client: &mut Stream,
        req: &RequestHead<'_>,
        body: &[u8],
        conn: &Conn,
        rt: &Runtime,
        wait: &mut UpstreamWait,
    ) -> bool {
        let id = rt.config.server.request_id.then(RequestId::new);
        let mut log = Log {
            shared: &self.shared,
            req,
            request_id: id.as_ref(),
            client: conn.peer_ip,
            client_cert: conn.client_cert.as_deref(),
            // Only the access log reads the clock for the whole request.
            started: self.shared.access_log.load().enabled().then(Instant::now),
            status: 0,
            bytes_sent: 0,
            bytes_received: body.len() as u64,
            upstream: None,
            backend: None,
            tried: Vec::new(),
        };
        let fields = request_id::answer_fields(rt.response_headers(conn.local), id.as_ref());
        let added: &[(String, String)] = &fields;
        let admitted = match policy::admit(&self.shared, rt, req, conn.peer_ip, || conn.local) {
            Admission::Forward(a) => a,
            Admission::Redirect(location) => {
                // A body we did not read would be taken for the next request.
                let close = req.close || (body.len() as u64) < req.content_length;
                log.status = 308;
                let answer = respond::redirect_bytes(&location, close, added);
                return answer_own(client, &mut log, &answer).await && !close;
            }
            Admission::Reject(r) => {
                self.shared.metrics.reject(r.reason);
                log.status = r.status;
                log.client = policy::real_client(&rt.config, req, conn.peer_ip);
                // A body we did not read would be taken for the next request.
                let close =
                    !r.keeps_alive() || req.close || (body.len() as u64) < req.content_length;
                let answer = respond::text_bytes_on(r.status, r.detail, close, added);
                return answer_own(client, &mut log, &answer).await && !close;
            }
        };
        log.client = admitted.client_ip.or(conn.peer_ip);
        // Moved out, not borrowed: a request that waited in the queue while a reload
        // replaced the upstream goes on under the new one.
        let mut up = admitted.upstream;
        log.upstream = Some(up.clone());

        let mut out = Vec::with_capacity(req.len + 160 + body.len());
        req.write_upstream(
            &mut out,
            Rewritten::parts(admitted.rewritten.as_deref()),
            admitted.request_headers.as_deref(),
            conn.peer_ip,
            &conn.peer_text,
            admitted.client_ip,
            conn.tls,
            conn.client_cert.as_ref().map(|c| c.xfcc.as_str()),
            id.as_ref(),
        );
        out.extend_from_slice(body);

        let max_tries = MAX_TRIES.min(up.backends.len()).max(1);
        let mut tried = Vec::with_capacity(2);
        let (choice, mut upstream, resp, mut upbuf, attempt_started) = loop {
            let (ip, sticky) = (admitted.client_ip, admitted.sticky_id.as_deref());
            let chosen = match policy::choose_now(&up, ip, sticky, &mut tried, conn.tls) {
                Some(chosen) => chosen,
                None => {
                    let queued = policy::choose_queued(&mut up, ip, sticky, &mut tried, conn.tls);
                    // A client that leaves gives up its place (and its counts) at once,
                    // not when a slot would have come to it.
                    let chosen = tokio::select! {
                        biased;
                        chosen = queued => chosen,
                        () = client_gone(client, &mut wait.pipelined) => return false,
                    };
                    // A reload may have moved the waiting request to a new upstream.
                    log.upstream = Some(up.clone());
                    chosen
                }
            };
            let choice = match chosen {
                Ok(choice) => choice,
                Err(none) => {
                    self.shared.metrics.reject(none.reason());
                    log.status = 503;
                    let detail = none.detail(&up.name);
                    answer_own(client, &mut log, &respond::text_bytes(503, &detail, added)).await;
                    return false;
                }
            };
            if let Some(before) = log.backend.replace(choice.backend.addr) {
                log.tried.push(before);
            }
            match self
                .attempt(
                    choice.backend.addr,
                    up.tls.as_deref(),
                    client,
                    &out,
                    req,
                    &up.config.timeouts,
                    wait,
                )
                .await
            {
                Ok((upstream, resp, upbuf, attempt_started)) => {
                    break (choice, upstream, resp, upbuf, attempt_started)
                }
                Err(Failure::Client) => return false,
                Err(e) => {
                    up.report_failure(&choice.backend);
                    crate::logging::backend_failure(&up.name, &choice.backend, &e);
                    let again = match e {
                        Failure::Connect(_) | Failure::Unsent(_) => true,
                        _ => req.idempotent(),
                    };
                    if again && tried.len() < max_tries {
                        continue;
                    }
                    let (status, detail) = e.answer();
                    log.status = status;
                    let answer = respond::text_bytes(status, detail, added);
                    answer_own(client, &mut log, &answer).await;
                    return false;
                }
            }
        };
        let answered = Instant::now();
        policy::observe_response(
            &up,
            choice.index,
            &choice.backend,
            Some((attempt_started, answered)),
            resp.status,
        );
        log.status = resp.status;

        let keep_alive = !req.close
            && (!resp.framing.until_close() || resp.rechunk)
            && !*conn.shutdown.borrow()
            && !rt.config.timeouts.downstream_keepalive.is_zero();
        let mut head = resp.out;
        if !added.is_empty() {
            head::set_fields(&mut head, added);
        }
        if let Some(cookie) = &choice.set_cookie {
            head.extend_from_slice(b"set-cookie: ");
            head.extend_from_slice(cookie.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");

        let mut framing = resp.framing;
        let relay = relay_body(
            client,
            &mut upstream,
            &mut upbuf,
            resp.len,
            head,
            &mut framing,
            resp.rechunk,
            up.config.timeouts.upstream_read,
            rt.config.timeouts.client,
        )
        .await;
        let ok = match relay {
            Ok(r) => {
                log.bytes_sent = r.body_bytes;
                if resp.reusable && r.clean {
                    let addr = choice.backend.addr;
                    let key = (addr, up.tls.as_ref().map_or((0, 0), |t| t.pool_key(addr)));
                    self.pool.put(key, upstream, answered);
                }
                true
            }
            Err(RelayError::Unsent(e)) => {
                up.report_failure(&choice.backend);
                crate::logging::backend_failure(
                    &up.name,
                    &choice.backend,
                    &format_args!("response body: {e}"),
                );
                log.status = 502;
                let answer =
                    respond::text_bytes(502, "the backend sent a malformed chunked body", added);
                answer_own(client, &mut log, &answer).await;
                false
            }
            Err(RelayError::Client(sent)) => {
                log.bytes_sent = sent;
                false
            }
            Err(RelayError::Upstream(sent, e)) => {
                log.bytes_sent = sent;
                up.report_failure(&choice.backend);
                crate::logging::backend_failure(
                    &up.name,
                    &choice.backend,
                    &format_args!("response body: {e}"),
                );
                false
            }
        };
        drop(choice);
        drop(admitted.client_guard);
        ok && keep_alive
    }

    /// One attempt on one backend: a pooled connection, then (if that one turns out to be
    /// stale and the request can be sent again) a fresh one. Returns the connection, the
    /// final response head, the bytes read so far (head included), and when the attempt
    /// started (for the time to first byte).
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        client: &mut Stream,
        request: &[u8],
        req: &RequestHead<'_>,
        t: &crate::config::BackendTimeouts,
        wait: &mut UpstreamWait,
    ) -> Result<(UpstreamStream, ResponseHead, BytesMut, Instant), Failure> {
        let started = Instant::now();
        let key = (addr, tls.map_or((0, 0), |t| t.pool_key(addr)));
        let mut pooled = self.pool.take(key, started);
        loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(s) => s,
                None => tokio::select! {
                    biased;
                    connected = handshake::connect(addr, tls, t.connect) => {
                        connected.map_err(Failure::Connect)?
                    }
                    () = client_gone(client, &mut wait.pipelined) => return Err(Failure::Client),
                },
            };
            let result = async {
                write_upstream(&mut upstream, request, t.upstream_read).await?;
                read_response_head(&mut upstream, client, req.is_head(), t.upstream_read, wait)
                    .await
            }
            .await;
            match result {
                Ok((resp, buf)) => return Ok((upstream, resp, buf, started)),
                // A kept-alive connection the backend closed just before our request goes
                // again (whole: the body was read before sending) on a new connection. Only
                // an idempotent request, unless not a byte of it went out: the backend may
                // have read it and died before answering, and a POST must not run twice.
                Err(Failure::Closed | Failure::Write(_)) if reused && req.idempotent() => {}
                Err(Failure::Unsent(_)) if reused => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes to a backend. One that stops reading (frozen, overloaded) must not hold the
/// request forever: each write gets the same bound as each read.
async fn write_upstream(
    upstream: &mut UpstreamStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), Failure> {
    let mut written = 0;
    let sent = bounded(limit, async {
        while written < bytes.len() {
            match upstream.write(&bytes[written..]).await {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) => return Err(e),
            }
        }
        // Over TLS the last record may still be held; plain TCP holds nothing back.
        if upstream.buffers_writes() {
            upstream.flush().await?;
        }
        Ok(())
    })
    .await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if written == 0 => Err(Failure::Unsent(e)),
        Ok(Err(e)) => Err(Failure::Write(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

/// Reads the backend's answer up to its final head. Interim (1xx) answers are passed on to
/// the client as they come.
async fn read_response_head(
    upstream: &mut UpstreamStream,
    client: &mut Stream,
    request_was_head: bool,
    limit: Duration,
    wait: &mut UpstreamWait,
) -> Result<(ResponseHead, BytesMut), Failure> {
    let mut buf = BytesMut::with_capacity(BODY_CHUNK);
    let until = tokio::time::Instant::now() + limit;
    let mut received = false;
    loop {
        match head::parse_response(&buf, request_was_head, MAX_RESPONSE_HEAD) {
            Ok(Some(resp)) if (100..200).contains(&resp.status) => {
                let mut interim = resp.out;
                interim.extend_from_slice(b"\r\n");
                if !write_flush(client, &interim).await {
                    return Err(Failure::Client);
                }
                buf.advance(resp.len);
                continue;
            }
            Ok(Some(resp)) => return Ok((resp, buf)),
            Ok(None) => {}
            Err(e) => return Err(Failure::Bad(e)),
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(BODY_CHUNK);
        }
        let UpstreamWait {
            deadline,
            pipelined,
        } = &mut *wait;
        let read = tokio::select! {
            biased;
            read = deadline.until(until, upstream.read_buf(&mut buf)) => read,
            () = client_gone(client, pipelined) => return Err(Failure::Client),
        };
        match read {
            None => return Err(Failure::Timeout),
            Some(Ok(0)) if !received => return Err(Failure::Closed),
            Some(Ok(0)) => return Err(Failure::Bad(BadResponse::Invalid)),
            Some(Ok(_)) => received = true,
            Some(Err(e)) if !received => {
                if let Some(alert) = handshake::tls_alert(&e) {
                    let failure = Failure::TlsAlert(alert);
                    handshake::warn_tls(&failure);
                    return Err(failure);
                }
                // Reset before any byte of the answer: like a close, the request may
                // never have been read.
                tracing::trace!("backend connection failed before answering: {e}");
                return Err(Failure::Closed);
            }
            Some(Err(e)) => return Err(Failure::Read(e)),
        }
    }
}

/// How a relayed response ended.
struct Relayed {
    body_bytes: u64,
    /// The body ended exactly where the framing said, with nothing after it: the backend
    /// connection can carry another request.
    clean: bool,
}

enum RelayError {
    /// The body's framing was broken in the bytes that came with the head: nothing has been
    /// sent to the client yet, which can still be answered.
    Unsent(BadChunk),
    /// The client went away; body bytes sent until then.
    Client(u64),
    /// The backend failed mid-body (the client connection must close: it cannot be told).
    Upstream(u64, String),
}

/// Writes the response head and relays the body. The head goes out together with the body
/// bytes that came with it, in one write. With `rechunk`, a body that runs until the
/// backend closes goes out as chunks, and its end (the backend's FIN) as the last chunk.
#[allow(clippy::too_many_arguments)]
async fn relay_body(
    client: &mut Stream,
    upstream: &mut UpstreamStream,
    upbuf: &mut BytesMut,
    head_len: usize,
    mut head: Vec<u8>,
    framing: &mut Framing,
    rechunk: bool,
    limit: Duration,
    client_limit: Duration,
) -> Result<Relayed, RelayError> {
    let first = &upbuf[head_len..];
    let (n, mut done) = framing.feed(first).map_err(RelayError::Unsent)?;
    let mut clean = n == first.len();
    if rechunk {
        push_chunk(&mut head, &first[..n]);
    } else {
        head.extend_from_slice(&first[..n]);
    }
    let mut sent = n as u64;
    let mut chunk = Vec::new();
    if !write_all(client, &head, client_limit).await {
        return Err(RelayError::Client(0));
    }
    while !done {
        // The client stream buffers small writes (pingora's 1460-byte write buffer): what
        // has been relayed goes out before waiting for more of the body, or a streamed
        // answer (server-sent events, a slow backend) would reach the client only once that
        // buffer fills or the body ends. Cheap when the buffer is empty (large writes
        // bypass it).
        if !flush(client, client_limit).await {
            return Err(RelayError::Client(sent));
        }
        upbuf.clear();
        if upbuf.capacity() < BODY_CHUNK {
            upbuf.reserve(BODY_CHUNK);
        }
        let got = match bounded(limit, upstream.read_buf(upbuf)).await {
            Err(_) => return Err(RelayError::Upstream(sent, "timed out".into())),
            Ok(Err(e)) => return Err(RelayError::Upstream(sent, e.to_string())),
            Ok(Ok(0)) if framing.until_close() => {
                clean = false;
                if rechunk && !write_all(client, b"0\r\n\r\n", client_limit).await {
                    return Err(RelayError::Client(sent));
                }
                break;
            }
            Ok(Ok(0)) => return Err(RelayError::Upstream(sent, "closed mid-body".into())),
            Ok(Ok(k)) => k,
        };
        let (n, d) = framing
            .feed(&upbuf[..got])
            .map_err(|e| RelayError::Upstream(sent, e.to_string()))?;
        done = d;
        clean &= n == got;
        let out = if rechunk {
            chunk.clear();
            push_chunk(&mut chunk, &upbuf[..n]);
            &chunk[..]
        } else {
            &upbuf[..n]
        };
        if !write_all(client, out, client_limit).await {
            return Err(RelayError::Client(sent));
        }
        sent += n as u64;
    }
    if !flush(client, client_limit).await {
        return Err(RelayError::Client(sent));
    }
    Ok(Relayed {
        body_bytes: sent,
        clean,
    })
}

/// Appends `data` to `out` as one chunk (nothing for no data: an empty chunk is the last).
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        use std::io::Write as _;
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// How reading the rest of a request body ended.
enum BodyRead {
    Whole,
    /// The client closed or reset the connection.
    Gone,
    /// Nothing came for the client timeout.
    Stalled,
}

/// Reads until `buf` holds `need` bytes (the rest of a request body), each read bounded by
/// `limit`.
async fn read_body(
    stream: &mut Stream,
    buf: &mut BytesMut,
    need: usize,
    limit: Duration,
) -> BodyRead {
    buf.reserve(need.saturating_sub(buf.len()));
    while buf.len() < need {
        match bounded(limit, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return BodyRead::Gone,
            Err(_) => return BodyRead::Stalled,
        }
    }
    BodyRead::Whole
}

/// How long into a stop a new connection may still send its first request: a request in
/// flight when the stop came arrives within a round trip.
const FIRST_REQUEST_AFTER_STOP: Duration = Duration::from_secs(2);

/// Waits until `buf` holds a whole request head of at most `limit` bytes. Once the proxy
/// stops, a connection that has `served` a request is closed while it idles; a new one
/// may still send its first request for [`FIRST_REQUEST_AFTER_STOP`].
#[allow(clippy::too_many_arguments)]
async fn wait_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: usize,
    first_wait: Duration,
    head_timeout: Duration,
    shutdown: &ShutdownWatch,
    served: bool,
    mut stopping: Pin<&mut impl Future<Output = ()>>,
    timer: &mut Deadline,
) -> Result<(), NoHead> {
    let mut deadline = None;
    // Where the search for the blank line resumes: a head trickled in byte by byte is
    // still searched once, not once per byte.
    let mut searched: usize = 0;
    loop {
        // RFC 9112 §2.2: empty lines before a request line are ignored (some clients send
        // one after a body).
        let blank = leading_empty_lines(buf);
        if blank > 0 {
            buf.advance(blank);
            searched = searched.saturating_sub(blank);
            // The head has begun, as far as its clock goes: otherwise a client sending
            // an empty line now and then would hold the connection for good.
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout);
        }
        let from = searched.saturating_sub(3);
        if let Some(end) = head_end(&buf[from..]) {
            return if from + end > limit {
                Err(NoHead::TooLarge)
            } else {
                Ok(())
            };
        }
        searched = buf.len();
        if buf.len() > limit {
            return Err(NoHead::TooLarge);
        }
        if let Some(why) = buf.first().and_then(|&b| not_a_request(b)) {
            return Err(NoHead::NotHttp(why));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let read = if buf.is_empty() && deadline.is_none() && !served {
            // A client that connected while the listener was open gets an answer to the
            // request it sent, even when the stop came before the request was read: a new
            // connection closed without an answer is an error to it, not retried. One that
            // sends nothing (a browser's preconnect) is closed a moment into the stop.
            let stopped = *shutdown.borrow();
            let wait = if stopped {
                first_wait.min(FIRST_REQUEST_AFTER_STOP)
            } else {
                first_wait
            };
            tokio::select! {
                biased;
                r = timer.within(wait, stream.read_buf(buf)) => match r {
                    Some(read) => read,
                    None if stopped => return Err(NoHead::Gone),
                    None => return Err(NoHead::Idle),
                },
                // Polled only until it ends: the next turn waits with the stop's bound.
                () = stopping.as_mut(), if !stopped => continue,
            }
        } else if buf.is_empty() && deadline.is_none() {
            // Idle between requests: also end when the proxy stops. The client retries a
            // request on a kept-alive connection that closed, as RFC 9112 §9.3.1 allows.
            if *shutdown.borrow() {
                return Err(NoHead::Gone);
            }
            tokio::select! {
                biased;
                r = timer.within(first_wait, stream.read_buf(buf)) => r.ok_or(NoHead::Idle)?,
                () = stopping.as_mut() => return Err(NoHead::Gone),
            }
        } else {
            let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout);
            timer
                .until(until, stream.read_buf(buf))
                .await
                .ok_or(NoHead::TimedOut)?
        };
        match read {
            Ok(0) | Err(_) => return Err(NoHead::Gone),
            Ok(_) => {}
        }
    }
}

/// Ends when the proxy starts to stop (never, if the signal's sender is gone).
pub(crate) async fn stopped(mut watch: ShutdownWatch) {
    while !*watch.borrow_and_update() {
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Why a head starting with `first` (after any empty lines) cannot be a request: a method
/// is a token (RFC 9110 §9.1). A TLS handshake record starts with 0x16: a client speaking
/// HTTPS to a plain listener would otherwise wait out the header timeout.
fn not_a_request(first: u8) -> Option<&'static str> {
    if first == 0x16 {
        Some("TLS handshake on a plain-HTTP listener (use https:// on the TLS port)")
    } else if is_token_char(first) || first == b'\r' {
        // A CR may be the first half of an empty line whose LF is still to come.
        None
    } else {
        Some("not an HTTP request")
    }
}

/// How many bytes at the start of `buf` are empty lines (CRLF or a bare LF).
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match &buf[n..] {
            [b'\r', b'\n', ..] => n += 2,
            [b'\n', ..] => n += 1,
            _ => return n,
        }
    }
}

/// Where the blank line that ends a head ends in `buf` (CRLF or bare LF line endings), if
/// it holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1) {
        Some(b'\n') => Some(i + 2),
        Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// The client's address and the one it connected to, as IP socket addresses.
pub(crate) fn addresses(digest: Option<&SocketDigest>) -> (Option<IpAddr>, Option<SocketAddr>) {
    let Some(d) = digest else {
        return (None, None);
    };
    (
        d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        d.local_addr().and_then(|a| a.as_inet()).copied(),
    )
}

/// Answers a request refused from its head, then closes the connection. Its rest may be
/// unread, and a socket closed with unread bytes sends a reset, which can make the client
/// lose the answer before reading it: so the write side is shut first, and what still
/// comes is read and dropped until the client closes, within [`LINGER`] (as nginx's
/// lingering close does); `linger` bounds that ([`LINGER`] but where holding the
/// connection costs too much). `added` are the listener's `response_headers`; with
/// `request_id` (`[server] request_id`) the refusal gets an id, on the answer and in its
/// log line, as a forwarded request's answer does: a refused request is the one a user
/// reports.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn refuse<S>(
    shared: &Shared,
    stream: &mut S,
    r: Rejection,
    peer_ip: Option<IpAddr>,
    head: &[u8],
    added: &[(String, String)],
    request_id: bool,
    linger: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    shared.metrics.reject(r.reason);
    let id = request_id.then(RequestId::new);
    let answer = respond::text_bytes(
        r.status,
        r.detail,
        &request_id::answer_fields(added, id.as_ref()),
    );
    let sent = write_flush(stream, &answer).await;
    log_refusal(
        shared,
        peer_ip,
        head,
        r.status,
        if sent { body_len(&answer) } else { 0 },
        id.as_ref(),
    );
    if !sent {
        return;
    }
    let _ = bounded(linger, async {
        if AsyncWriteExt::shutdown(stream).await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// What the client has sent, up to the end of its first line (at most [`LOGGED_LINE`]
/// bytes), read within `wait`: the request line a refusal's access-log line names.
pub(crate) async fn first_line<S>(stream: &mut S, wait: Duration) -> BytesMut
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut head = BytesMut::with_capacity(LOGGED_LINE);
    let _ = bounded(wait, async {
        while !head.contains(&b'\n') && head.len() < LOGGED_LINE {
            match stream.read_buf(&mut head).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    head
}

/// An access log line for a request refused before it could be parsed, with its first
/// line as it came (as nginx logs `$request` of a bad request), since an operator looks
/// for these in the access log like for any other answer.
pub(crate) fn log_refusal(
    shared: &Shared,
    peer_ip: Option<IpAddr>,
    head: &[u8],
    status: u16,
    bytes_sent: usize,
    request_id: Option<&RequestId>,
) {
    let log = shared.access_log.load();
    if !log.enabled() {
        return;
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = String::from_utf8_lossy(&line[..line.len().min(LOGGED_LINE)]);
    let parts: Vec<&str> = line.split(' ').collect();
    let (method, path, version) = match parts[..] {
        [method, path, version] => (method, path, version),
        _ => ("-", &*line, "-"),
    };
    log.write(&Entry {
        ts: AccessLog::now(),
        client: peer_ip,
        method,
        path,
        version,
        host: None,
        status,
        bytes_sent: bytes_sent as u64,
        // A body, as for requests that are served: none was read.
        bytes_received: 0,
        duration_ms: 0.0,
        upstream: None,
        backend: None,
        tunnel: false,
        referer: None,
        user_agent: None,
        request_id: request_id.map(RequestId::as_str),
        client_cert: None,
        tried: None,
    });
}

async fn write_all(client: &mut Stream, bytes: &[u8], limit: Duration) -> bool {
    matches!(bounded(limit, client.write_all(bytes)).await, Ok(Ok(())))
}

/// Flushes the client stream, bounded like a write (a client that stops reading must not
/// hold the request forever).
async fn flush(client: &mut Stream, limit: Duration) -> bool {
    matches!(bounded(limit, client.flush()).await, Ok(Ok(())))
}

/// Writes an answer of the proxy's own and counts it in the request's access log line;
/// whether it was written.
async fn answer_own(client: &mut Stream, log: &mut Log<'_>, answer: &[u8]) -> bool {
    let written = write_flush(client, answer).await;
    if written {
        log.bytes_sent = body_len(answer) as u64;
    }
    written
}

/// The length of the body of `answer`, a whole response: what the access log counts as
/// sent (nginx's `$body_bytes_sent`), as for a backend's answers and on pingora's path.
fn body_len(answer: &[u8]) -> usize {
    head_end(answer).map_or(0, |end| answer.len() - end)
}

async fn write_flush<S>(client: &mut S, bytes: &[u8]) -> bool
where
    S: AsyncWrite + Unpin + ?Sized,
{
    client.write_all(bytes).await.is_ok() && client.flush().await.is_ok()
}

/// A connection's timers: one per kind of wait that happens on every request.
#[derive(Default)]
struct Timers {
    /// Waiting for the client's next request (keep-alive, header timeout).
    client: Deadline,
    /// Waiting for a backend's answer.
    upstream: UpstreamWait,
}

/// What a request keeps while it waits for a backend (a slot, a connection, the answer's
/// head), reused across the connection's requests.
#[derive(Default)]
struct UpstreamWait {
    /// The bound on the backend's answer.
    deadline: Deadline,
    /// What the client sent meanwhile (its next requests, pipelined), kept for the next
    /// request: it is read to notice a client that goes away ([`client_gone`]).
    pipelined: BytesMut,
}

/// How much of a client's pipelined requests is read while one waits for its backend;
/// beyond it the client is not read until the answer (and a client that leaves then is
/// noticed when the answer is written).
const MAX_PIPELINED: usize = 64 * 1024;

/// Resolves once the client has gone (closed its side of the connection, or reset it)
/// while its request waits for a backend. nginx (`proxy_ignore_client_abort off`) and
/// pingora's path do the same: a request nobody waits for gives up its place in a
/// `max_conns` queue, its backend slot and its connection counts at once, and a queued
/// one is never sent. What the client sends meanwhile is kept in `pipelined`.
async fn client_gone(client: &mut Stream, pipelined: &mut BytesMut) {
    // Read through a small array, not into `pipelined`: nearly every wait reads nothing,
    // and a kept-alive connection should not hold a buffer for what is seldom sent.
    let mut chunk = [0u8; 512];
    loop {
        if pipelined.len() >= MAX_PIPELINED {
            return std::future::pending().await;
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pipelined.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Why an attempt on a backend failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Connect(HandshakeError),
    #[error("sending the request failed: {0}")]
    Write(io::Error),
    /// The connection failed before any byte of the request was written.
    #[error("sending the request failed before any byte went out: {0}")]
    Unsent(io::Error),
    #[error("the backend closed the connection without answering")]
    Closed,
    #[error("reading the answer failed: {0}")]
    Read(io::Error),
    #[error("the backend did not answer in time")]
    Timeout,
    /// The backend ended the TLS session with this alert (a refused client certificate).
    #[error("the backend refused the TLS session: alert {0}")]
    TlsAlert(String),
    #[error("{0}")]
    Bad(BadResponse),
    /// The client side failed while its body was relayed: nobody to answer.
    #[error("the client went away")]
    Client,
}

impl Failure {
    /// The status and reason the client gets when no backend could answer.
    fn answer(&self) -> (u16, &'static str) {
        match self {
            Failure::Connect(HandshakeError::ConnectTimeout(_)) => {
                (502, "timed out connecting to the backend")
            }
            Failure::Connect(HandshakeError::Tls { .. }) | Failure::TlsAlert(_) => {
                (502, "TLS handshake with the backend failed")
            }
            Failure::Connect(_) => (502, "could not connect to any backend"),
            Failure::Timeout => (504, "the backend did not answer in time"),
            Failure::Bad(bad) => (502, bad.reason()),
            _ => (502, "the backend failed"),
        }
    }
}

/// What the access log needs of a request, gathered as it runs; written when dropped, so
/// every way out of a request is logged.
struct Log<'a> {
    shared: &'a Shared,
    req: &'a RequestHead<'a>,
    request_id: Option<&'a RequestId>,
    client: Option<IpAddr>,
    client_cert: Option<&'a PeerCert>,
    /// Set when the access log is on.
    started: Option<Instant>,
    status: u16,
    bytes_sent: u64,
    bytes_received: u64,
    upstream: Option<Arc<Upstream>>,
    backend: Option<SocketAddr>,
    /// The backends tried before `backend` (empty, with no allocation, unless retried).
    tried: Vec<SocketAddr>,
}

impl Drop for Log<'_> {
    fn drop(&mut self) {
        let log = self.shared.access_log.load();
        if !log.enabled() {
            return;
        }
        // Logged whatever their bytes (a byte that is not UTF-8 as U+FFFD): a client must
        // not hide its User-Agent from the log by sending one.
        let text = |name| self.req.header_bytes(name).map(String::from_utf8_lossy);
        let (referer, user_agent) = (text("referer"), text("user-agent"));
        log.write(&Entry {
            ts: AccessLog::now(),
            client: self.client,
            method: self.req.method,
            path: self.req.target,
            version: "HTTP/1.1",
            host: self.req.host(),
            status: self.status,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            duration_ms: self
                .started
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
            upstream: self.upstream.as_ref().map(|u| u.name.as_str()),
            backend: self.backend.map(|b| b.to_string()),
            tried: crate::upstream::addr_list(&self.tried),
            tunnel: false,
            referer: referer.as_deref(),
            user_agent: user_agent.as_deref(),
            request_id: self.request_id.map(RequestId::as_str),
            client_cert: self.client_cert.map(|c| c.subject.as_str()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::not_a_request;

    #[test]
    fn only_a_token_character_or_a_cr_can_start_a_request() {
        for first in [b'G', b'p', b'0', b'!', b'~', b'\r'] {
            assert_eq!(not_a_request(first), None, "{first}");
        }
        assert!(not_a_request(0x16).is_some_and(|why| why.starts_with("TLS handshake")));
        for first in [0u8, b' ', b'\n', b'"', b'(', 0x7f, 0x80, 0xff] {
            assert_eq!(not_a_request(first), Some("not an HTTP request"), "{first}");
        }
    }

    use super::{head_end, leading_empty_lines};

    #[test]
    fn skips_empty_lines_before_a_request() {
        assert_eq!(leading_empty_lines(b"\r\n\nGET"), 3);
        assert_eq!(leading_empty_lines(b"\r\n\r"), 2);
        assert_eq!(leading_empty_lines(b"GET / HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(leading_empty_lines(b""), 0);
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b"\r"), None);
        assert_eq!(head_end(b"\n\n"), Some(2));
        assert_eq!(head_end(b"a\n\r\n"), Some(4));
        assert_eq!(head_end(b"a\n\rb\n"), None);
    }
}

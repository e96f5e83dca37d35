//! Assembles the pingora server: the proxy service with its listeners, the admin listener,
//! the health checker, the SIGHUP reload handler and the watcher that ends a drained stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, SystemResolver};
use crate::dns_refresh::DnsRefresher;
use crate::drain::{exit_when_drained, Accepted, Counted};
use crate::h1::lent::{self, Returned};
use crate::h1::plain_on_tls::PlainHttpOnTls;
use crate::h1::{Outcome, H1};
use crate::h2::{self, FirstRequest};
use crate::health::HealthChecker;
use crate::proxy::request_id::{self, RequestId};
use crate::proxy::{respond, EdgeProxy, KeptAlive};
use crate::proxy_protocol::{self, ProxyHeader};
use crate::state::Shared;
use crate::tls;

/// The proxy service: HTTP/1.1 requests go to our own path ([`H1`]), which hands the ones
/// it does not take, and HTTP/2, to pingora's proxy. pingora's path gets our header read
/// timeout before the request head is read (its default is a fixed 60 s), the slowloris
/// guard.
struct Edge {
    inner: Arc<HttpProxy<EdgeProxy>>,
    h1: H1,
    shared: Arc<Shared>,
    /// h2 connections waiting for their first request ([`FirstRequest`]).
    waiting: Arc<h2::Waiting>,
    server_options: HttpServerOptions,
}

#[async_trait]
impl HttpServerApp for Edge {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let ServerSession::H1(mut h1) = session else {
            self.waiting.started(session.digest());
            if session.req_header().method == http::Method::CONNECT {
                refuse_h2_connect(&self.shared, session).await;
                return None;
            }
            return self.pingora_request(session, shutdown).await;
        };
        // A connection pingora served with pipelining on may hold bytes of this request
        // inside the session, out of our reach: it stays with pingora.
        if h1.pipelining_enabled() {
            return self.pingora_request(ServerSession::H1(h1), shutdown).await;
        }
        let mut reused = h1.take_connection_user_context().is_some();
        let mut stream = h1.into_inner();
        let mut buf = BytesMut::new();
        loop {
            let session = match self.h1.serve(stream, buf, reused, shutdown).await {
                Outcome::Closed => return None,
                Outcome::Handoff { stream, reused } => self.handoff(stream, reused),
            };
            let (done, resumed) =
                crate::proxy::resumable(self.pingora_request(session, shutdown)).await;
            // pingora is done with the request it was lent: the next one is ours to read.
            (stream, buf) = match resumed {
                Some(back) => back,
                None => {
                    let (next, settings) = done?.consume();
                    match lent::take_back(next) {
                        Returned::Back(stream, rest) => (stream, rest),
                        Returned::Unfinished => return None,
                        Returned::Other(stream) => {
                            return Some(ReusedHttpStream::new(stream, settings))
                        }
                    }
                }
            };
            reused = true;
        }
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        Some(h2::options(&self.shared.runtime.load().config))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

impl Edge {
    /// A pingora session for a request our path did not take, on the stream lent for it.
    fn handoff(&self, stream: Stream, reused: bool) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        if reused {
            let keepalive = self
                .shared
                .runtime
                .load()
                .config
                .timeouts
                .downstream_keepalive;
            session.set_keepalive(Some(keepalive.as_secs().max(1)));
            session.set_connection_user_context(Some(Box::new(KeptAlive)));
        } else {
            // pingora's own default for a new connection.
            session.set_keepalive(Some(60));
        }
        session
    }

    /// Runs one request through pingora's proxy, under the header read deadline.
    async fn pingora_request(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Copy the two settings out of the current config without taking a reference count.
        let (head_timeout, keepalive) = {
            let rt = self.shared.runtime.load();
            let c = &rt.config;
            (
                c.limits.header_read_timeout,
                c.timeouts.downstream_keepalive,
            )
        };
        let Some(head_timeout) = head_timeout else {
            return self.inner.process_new_http(session, shutdown).await;
        };
        // A fresh connection must send its head within the timeout; a kept-alive one may
        // first idle for the keep-alive time. pingora only bounds each read, so a client
        // trickling one byte at a time would never hit it: the deadline below bounds the
        // whole head, and dropping the request future closes the connection.
        // pingora enables keep-alive on every new HTTP/1 session; a reused connection is
        // recognised by the marker our proxy leaves in the connection context.
        let reused = match session.take_connection_user_context() {
            Some(c) => {
                session.set_connection_user_context(Some(c));
                true
            }
            None => false,
        };
        let (deadline, first_wait_bounded) = if reused {
            let deadline = head_timeout + keepalive;
            // pingora bounds the wait for the first bytes of the next request by the
            // connection's keep-alive timeout (and ends the request quietly when it expires).
            // When that is within the deadline, our timer is only needed once bytes came in
            // and the head is still incomplete: most kept-alive requests then never arm it.
            let bounded = session
                .get_keepalive()
                .is_some_and(|k| k > 0 && Duration::from_secs(k) <= deadline);
            (deadline, bounded)
        } else {
            // With keep-alive off, pingora bounds each read of the head by the read timeout;
            // it turns keep-alive back on once the head is parsed.
            session.set_keepalive(None);
            session.set_read_timeout(Some(head_timeout));
            (head_timeout, false)
        };
        let request = self.inner.process_new_http(session, shutdown);
        match head_deadline(request, deadline, first_wait_bounded).await {
            Some(r) => r,
            None => {
                self.shared.metrics.reject("header_timeout");
                None
            }
        }
    }
}

/// Answers an h2 CONNECT as HTTP/1's is answered (501 with the reason, counted, in the
/// access log): pingora would answer it with an empty 405 before any hook of ours.
async fn refuse_h2_connect(shared: &Shared, mut session: ServerSession) {
    let r = crate::h1::head::CONNECT_REFUSED;
    let socket = session.digest().and_then(|d| d.socket_digest.clone());
    let (peer, local) = crate::h1::addresses(socket.as_deref());
    let authority = session
        .req_header()
        .uri
        .authority()
        .map_or("-", |a| a.as_str());
    let line = format!("CONNECT {authority} HTTP/2.0");
    let rt = shared.current();
    let id = rt.config.server.request_id.then(RequestId::new);
    let fields = request_id::answer_fields(rt.response_headers(local), id.as_ref());
    let mut sent = 0;
    if let Ok((head, body)) = respond::text_answer(r.status, r.detail, &fields) {
        let len = body.len();
        let written = async {
            session.write_response_header(Box::new(head)).await?;
            session.write_response_body(body, true).await?;
            session.finish().await
        };
        if written.await.is_ok() {
            sent = len;
        }
    }
    shared.metrics.reject(r.reason);
    crate::h1::log_refusal(shared, peer, line.as_bytes(), r.status, sent, id.as_ref());
}

/// Runs `request` (one request of a connection) and gives up on it, returning None, when
/// its head has not been read within `deadline` from now. The timer is armed only while the
/// head is incomplete after a poll, and dropped as soon as the head has been read, so the
/// rest of the request runs without it. With `first_wait_bounded` (the caller knows the
/// request itself ends its first wait within the deadline), the first wait is left to the
/// request and the timer is armed, for the same deadline, only if a second one follows.
async fn head_deadline<F: std::future::Future>(
    request: F,
    deadline: Duration,
    first_wait_bounded: bool,
) -> Option<F::Output> {
    let mut request = std::pin::pin!(request);
    let mut head_read = false;
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // The clock is read here only when arming may be deferred; otherwise `sleep` reads it.
    let start = first_wait_bounded.then(Instant::now);
    let mut first_wait = true;
    std::future::poll_fn(|cx| {
        if head_read {
            return request.as_mut().poll(cx).map(Some);
        }
        let (r, read) = crate::proxy::watch_head_read(|| request.as_mut().poll(cx));
        if let Poll::Ready(out) = r {
            return Poll::Ready(Some(out));
        }
        if read {
            head_read = true;
            timer = None;
            return Poll::Pending;
        }
        if timer.is_none() {
            let first = std::mem::replace(&mut first_wait, false);
            let sleep = match start {
                // The request itself ends its first wait within the deadline.
                Some(_) if first => return Poll::Pending,
                Some(s) => tokio::time::sleep_until((s + deadline).into()),
                None => tokio::time::sleep(deadline),
            };
            timer = Some(Box::pin(sleep));
        }
        match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}

/// `d` in whole seconds, rounded up. pingora counts the grace period in whole seconds;
/// rounding down would make `grace_period = "500ms"` no grace at all, and a SIGTERM would
/// cut every in-flight request at once.
fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Reloads the config on SIGHUP.
struct ReloadOnHup {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ReloadOnHup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    // reload_blocking logs a rejection itself.
                    let _ = self.shared.reload_blocking().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Builds every service and runs until SIGINT/SIGTERM. Everything that can fail on bad
/// input (certificates, files) is checked before pingora starts, which would panic.
pub fn run(config: Config, upgrade: bool) -> Result<()> {
    let mut tls_settings = Vec::new();
    let mut resolvers = Vec::new();
    for l in &config.listeners {
        tls_settings.push(match &l.tls {
            Some(t) => {
                let (settings, running) =
                    tls::listener_settings(t).with_context(|| format!("listener {}", l.listen))?;
                resolvers.push((l.listen, running));
                Some(settings)
            }
            None => None,
        });
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }

    // pingora's default pid and upgrade-socket paths are shared names in /tmp: two proxies
    // on one machine would clash. The socket is named for the first listener, which the old
    // and the new process of an upgrade share and two running proxies cannot.
    let pid = std::process::id();
    let tmp = |name: String| std::env::temp_dir().join(name).display().to_string();
    let upgrade_sock = match config.listeners.first() {
        Some(l) => format!("switchyard-proxy-{}.sock", l.listen).replace([':', '[', ']'], "_"),
        None => format!("switchyard-proxy-{pid}.sock"),
    };
    let threads = config.server.threads.max(1);
    let grace = Duration::from_secs(whole_seconds_up(config.server.grace_period));
    let native_h1 = config.server.http1 == crate::config::Http1Path::Native;
    let admin = config.admin.clone();
    let listeners = config.listeners.clone();
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(2),
        pid_file: tmp(format!("switchyard-proxy-{pid}.pid")),
        upgrade_sock: tmp(upgrade_sock),
        // One worker has no one to steal from: pingora then runs a current-thread runtime,
        // whose park and wake skip the multi-thread scheduler's bookkeeping (callgrind:
        // 2.5-6.5% fewer instructions per proxied request).
        work_stealing: threads > 1,
        ..Default::default()
    };

    // Before bootstrap: in an upgrade, bootstrap takes the running proxy's sockets, and a
    // failure after that (an access log that cannot be opened) would leave no one serving.
    let shared = Arc::new(Shared::new(config, resolvers)?);
    if !upgrade {
        // pingora binds in its service threads, retrying for half a minute, then panics
        // there: the process would stay up with its admin port answering and no proxy
        // port. Binding each address once first (and letting go) turns an address in use
        // into an error at start, as from nginx. (In an upgrade the running proxy holds
        // them, and hands them over.)
        let addrs = listeners.iter().map(|l| ("listener", l.listen));
        for (what, addr) in addrs.chain(admin.as_ref().map(|a| ("admin listener", a.listen))) {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("{what} {addr}: cannot listen"))?;
        }
    }

    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    if upgrade {
        tracing::info!(
            sock = %conf.upgrade_sock,
            "waiting for the running proxy's sockets: send it SIGQUIT"
        );
    }
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    if upgrade {
        // The sockets are ours now; nothing is accepted on them until the services run,
        // and the old process accepts for a few seconds more. Backends with active checks
        // get traffic only after their first pass: without this round first, the requests
        // of the first interval would get 503 "no healthy backend" from a proxy whose
        // predecessor knew them up.
        let checks = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the first health checks")?;
        let (passed, all) = checks.block_on(crate::health::first_round(&shared));
        if all > 0 {
            tracing::info!(passed, of = all, "backends checked before serving");
        }
    }

    let mut proxy = HttpProxy::new(EdgeProxy::new(shared.clone()), server.configuration.clone());
    proxy.handle_init_modules();
    let waiting = Arc::new(h2::Waiting::default());
    let edge = Edge {
        inner: Arc::new(proxy),
        h1: H1::new(shared.clone(), native_h1),
        shared: shared.clone(),
        waiting: waiting.clone(),
        server_options: h2::server_options(&shared.current().config),
    };
    let open = shared.open.clone();
    let accepted = Accepted::new(listeners.iter().map(|l| l.listen.port()));
    let expecting = proxy_protocol::Expecting::of(&listeners);
    let mut service = Service::new(
        "switchyard proxy".to_string(),
        Counted::new(
            ProxyHeader::new(
                FirstRequest::new(edge, shared.clone(), waiting),
                shared.clone(),
                expecting.clone(),
            ),
            shared.clone(),
            expecting.clone(),
        ),
    );
    service.threads = Some(threads);
    // Runs on TLS listeners only, before the handshake.
    service
        .endpoints()
        .set_pre_tls_callback(Arc::new(PlainHttpOnTls::new(shared.clone(), expecting)));
    for (l, tls) in listeners.iter().zip(tls_settings) {
        // No L4 read buffer: request heads are parsed from pingora's own header buffer and
        // tunnels read through our relay, so a 64 KiB buffer per connection buys nothing
        // and costs RSS per idle WebSocket.
        let mut lc =
            ListenerConfig::tcp(l.listen.to_string()).l4_buffer(L4BufferSettings::new(0, 1460));
        if let Some(t) = tls {
            lc = lc.tls(t);
        }
        service.add_listener(lc);
        tracing::info!(
            listen = %l.listen,
            tls = l.tls.is_some(),
            proxy_protocol = l.proxy_protocol.is_some(),
            "listening"
        );
    }
    server.add_service(service);

    if let Some(admin) = admin {
        if admin.token.is_none() {
            tracing::warn!(
                "admin API on {} has no token: drain/undrain/reload are refused",
                admin.listen
            );
        }
        let mut svc = Service::new(
            "switchyard admin".to_string(),
            AdminApp::new(shared.clone()),
        );
        svc.add_tcp(&admin.listen.to_string());
        svc.threads = Some(1);
        server.add_service(svc);
        tracing::info!(listen = %admin.listen, "admin listening");
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(shared.clone()),
    ));
    server.add_service(background_service(
        "dns refresh",
        DnsRefresher::new(shared.clone(), Arc::new(SystemResolver)),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        ReloadOnHup { shared },
    ));
    exit_when_drained(server.watch_execution_phase(), open, accepted, grace);
    server.run_forever();
}

#[cfg(test)]
mod tests {
    use super::whole_seconds_up;
    use std::time::Duration;

    #[test]
    fn grace_periods_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds_up(Duration::ZERO), 0);
        assert_eq!(whole_seconds_up(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds_up(Duration::from_secs(5)), 5);
        assert_eq!(whole_seconds_up(Duration::from_millis(5001)), 6);
    }
}

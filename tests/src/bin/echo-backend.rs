//! `echo-backend`: a small, fast HTTP/1.1 (h2 too on TLS) and WebSocket echo server that reports
//! its own id — the backend the end-to-end tests and the benchmarks run as real processes.
//!
//! ```text
//! echo-backend --listen 127.0.0.1:0 --id b1 [--delay-ms N] [--port-file PATH]
//!              [--tls-cert cert.pem --tls-key key.pem [--tls-client-ca ca.pem]]
//!              [--h2c | --h2-only] [--exit-on-stdin-close]
//! ```
//! Once bound it prints exactly one line, `LISTENING <addr>`, so a parent that asked for port 0
//! learns the real port.
//!
//! | request | answer |
//! | --- | --- |
//! | any WebSocket upgrade | `101` with `x-request-target: <target>` (and the request's `x-forwarded-prefix` as `x-request-forwarded-prefix`, its headers as `/headers` gives them, in `x-request-headers`, when they are ASCII), sends `hello <id>`, then echoes text/binary, pongs pings |
//! | `GET /id`, `GET /`, anything else | `200`, body `<id>` |
//! | `GET /healthz` | `200 ok`, or `503 down` after `POST /health/off` (until `POST /health/on`) |
//! | `GET /headers` | JSON object of the request headers (lower-case names; repeats joined by `, `) |
//! | `POST /echo` | the request body, streamed back |
//! | `GET /delay/<ms>` | waits, then `200` with the id |
//! | `GET /status/<code>` | that status, body `<id>` |
//! | `GET /stats` | JSON `{id, connections, requests, healthz, ws_open, ws_total}` |
//! | `GET /version` | the request's HTTP version (`HTTP/1.1`, `HTTP/2.0`) |
//! | `GET /trailers` | body `<id>`, then the trailers `grpc-status: 0` and `x-trailer-id: <id>` |
//! | `GET /target/...` | the request target as received (path and query), as the body |
//!
//! Plain connections speak HTTP/1.1; with `--h2c` also h2 with prior knowledge (told apart
//! by the preface), with `--h2-only` nothing but h2 (TLS then offers only h2 by ALPN): a
//! backend like a gRPC server, which refuses HTTP/1.1.
//!
//! Every HTTP answer carries `x-backend-id: <id>`; `--delay-ms` delays every answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "echo-backend",
    version,
    about = "HTTP + WebSocket echo backend for tests"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port, printed as `LISTENING <addr>`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Identity reported in `x-backend-id`, in bodies and in the WebSocket greeting.
    #[arg(long)]
    id: String,
    /// Extra delay before every answer (HTTP responses and the WebSocket handshake), in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Also write the bound address to this file (written whole, then renamed into place).
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (ALPN h2 and http/1.1).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by a CA of this PEM file (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Exit when standard input closes, so a parent that dies (even by SIGKILL) leaves no orphan.
    #[arg(long)]
    exit_on_stdin_close: bool,
    /// Plain connections may also speak h2 with prior knowledge.
    #[arg(long, conflicts_with = "h2_only")]
    h2c: bool,
    /// Speak h2 alone (prior knowledge on plain connections, ALPN h2 alone on TLS).
    #[arg(long)]
    h2_only: bool,
}

/// What a plain connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plain {
    Http1,
    Http1OrH2c,
    H2Only,
}

/// Shared state of one backend process.
struct State {
    id: String,
    id_header: HeaderValue,
    delay: Duration,
    healthy: AtomicBool,
    connections: AtomicU64,
    requests: AtomicU64,
    healthz: AtomicU64,
    ws_open: AtomicI64,
    ws_total: AtomicU64,
}

/// Response body: a fixed buffer, the request body streamed back (`POST /echo`), or a
/// buffer followed by trailers (`GET /trailers`).
type Body = Either<Either<Full<Bytes>, Incoming>, Trailered>;

/// A body of fixed frames: data, then trailers.
type Trailered = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>>,
>;

/// `id` as the body, then trailers as a gRPC server ends a call.
fn with_trailers(id: &str) -> Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    if let Ok(v) = HeaderValue::from_str(id) {
        trailers.insert("x-trailer-id", v);
    }
    let frames = vec![
        Ok(hyper::body::Frame::data(Bytes::from(id.to_owned()))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut resp = Response::new(Either::Right(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(async_main(args))
}

async fn async_main(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(
            cert,
            key,
            args.tls_client_ca.as_deref(),
            args.h2_only,
        )?),
        _ => None,
    };
    let id_header = HeaderValue::from_str(&args.id)
        .with_context(|| format!("--id {:?} is not a valid header value", args.id))?;
    let state = Arc::new(State {
        id: args.id.clone(),
        id_header,
        delay: Duration::from_millis(args.delay_ms),
        healthy: AtomicBool::new(true),
        connections: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        healthz: AtomicU64::new(0),
        ws_open: AtomicI64::new(0),
        ws_total: AtomicU64::new(0),
    });

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if let Some(path) = &args.port_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {addr}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    let exit_on_stdin_close = args.exit_on_stdin_close;
    let shutdown = async move {
        if exit_on_stdin_close {
            tokio::select! {
                _ = stdin_closed() => {}
                _ = termination() => {}
            }
        } else {
            termination().await;
        }
    };
    let plain = match (args.h2c, args.h2_only) {
        (_, true) => Plain::H2Only,
        (true, false) => Plain::Http1OrH2c,
        (false, false) => Plain::Http1,
    };
    run(listener, state, tls, plain, shutdown).await;
    Ok(())
}

/// Resolves when standard input reaches end of file (the parent closed it or died).
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves.
async fn run(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    plain: Plain,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, state, tls, plain).await {
                debug!("connection from {peer}: {e}");
            }
        });
    }
}

/// Serves one accepted connection: HTTP/1.1 with upgrades, or h2 when TLS negotiated it
/// (or, on a plain connection, as `plain` allows).
async fn serve_connection(
    stream: TcpStream,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    plain: Plain,
) -> anyhow::Result<()> {
    match tls {
        None if plain == Plain::Http1OrH2c => {
            let service = service_fn(move |req| handle(state.clone(), req));
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
        None => serve_http(stream, state, plain == Plain::H2Only).await,
        Some(acceptor) => {
            let stream = acceptor.accept(stream).await.context("TLS handshake")?;
            let h2 = plain == Plain::H2Only || stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(stream, state, h2).await
        }
    }
}

async fn serve_http<S>(stream: S, state: Arc<State>, h2: bool) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = service_fn(move |req| handle(state.clone(), req));
    if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await?;
    } else {
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades()
            .await?;
    }
    Ok(())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let path = req.uri().path();
    if path == "/healthz" {
        state.healthz.fetch_add(1, Ordering::Relaxed);
    } else {
        state.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut resp = route(&state, req).await;
    resp.headers_mut()
        .insert("x-backend-id", state.id_header.clone());
    Ok(resp)
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if is_websocket_upgrade(&req) {
        return websocket(state.clone(), req);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => {
            if state.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "down")
            }
        }
        (&Method::POST, "/health/off") => {
            state.healthy.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "health off")
        }
        (&Method::POST, "/health/on") => {
            state.healthy.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "health on")
        }
        (&Method::GET, "/headers") => headers_json(&req),
        (&Method::GET, "/stats") => stats_json(state),
        (&Method::GET, "/version") => text(StatusCode::OK, format!("{:?}", req.version())),
        (&Method::GET, "/trailers") => with_trailers(&state.id),
        (&Method::GET, p) if p.starts_with("/target/") => text(StatusCode::OK, target_of(&req)),
        (&Method::POST, "/echo") => Response::new(Either::Left(Either::Right(req.into_body()))),
        (&Method::GET, p) if p.starts_with("/delay/") => match p["/delay/".len()..].parse() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, state.id.clone())
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "bad delay"),
        },
        (_, p) if p.starts_with("/status/") => {
            match p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(code) => text(code, state.id.clone()),
                None => text(StatusCode::BAD_REQUEST, "bad status"),
            }
        }
        _ => text(StatusCode::OK, state.id.clone()),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Either::Left(Full::new(body.into()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(value: serde_json::Value) -> Response<Body> {
    let mut resp = text(StatusCode::OK, value.to_string());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn headers_json(req: &Request<Incoming>) -> Response<Body> {
    json(serde_json::Value::Object(headers_map(req)))
}

/// The request headers as [`headers_json`] answers them.
fn headers_map<B>(req: &Request<B>) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_owned(), serde_json::Value::String(value));
            }
        }
    }
    // h2 carries the authority in the URI, not in a Host header.
    if !map.contains_key("host") {
        if let Some(auth) = req.uri().authority() {
            map.insert("host".into(), auth.as_str().into());
        }
    }
    map
}

fn stats_json(state: &State) -> Response<Body> {
    json(serde_json::json!({
        "id": state.id,
        "connections": state.connections.load(Ordering::Relaxed),
        "requests": state.requests.load(Ordering::Relaxed),
        "healthz": state.healthz.load(Ordering::Relaxed),
        "ws_open": state.ws_open.load(Ordering::Relaxed),
        "ws_total": state.ws_total.load(Ordering::Relaxed),
    }))
}

fn header_has_token(req: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && header_has_token(req, UPGRADE, "websocket")
        && header_has_token(req, CONNECTION, "upgrade")
}

/// Answers the handshake with 101 and runs the echo loop on the upgraded connection.
fn websocket(state: Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "bad accept key");
    };
    let target = HeaderValue::from_str(&target_of(&req)).ok();
    let prefix = req.headers().get("x-forwarded-prefix").cloned();
    let seen =
        HeaderValue::from_str(&serde_json::Value::Object(headers_map(&req)).to_string()).ok();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                state.ws_open.fetch_add(1, Ordering::Relaxed);
                state.ws_total.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = echo_loop(&state, ws).await {
                    debug!("websocket ended: {e}");
                }
                state.ws_open.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => debug!("upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Either::Left(Either::Left(Full::new(Bytes::new()))));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(target) = target {
        h.insert("x-request-target", target);
    }
    if let Some(prefix) = prefix {
        h.insert("x-request-forwarded-prefix", prefix);
    }
    if let Some(seen) = seen {
        h.insert("x-request-headers", seen);
    }
    resp
}

/// The request's target as it came: path and query.
fn target_of<B>(req: &Request<B>) -> String {
    req.uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
}

async fn echo_loop<S>(
    state: &State,
    mut ws: WebSocketStream<S>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(format!("hello {}", state.id)))
        .await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            msg @ (Message::Text(_) | Message::Binary(_)) => ws.send(msg).await?,
            // tungstenite queues the pong itself; flush so it leaves now.
            Message::Ping(_) => ws.flush().await?,
            // tungstenite answers the close; the stream then ends.
            Message::Close(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    h2_only: bool,
) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots
                    .add(c.with_context(|| format!("parsing {}", ca.display()))?)
                    .context("client CA")?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = if h2_only {
        vec![b"h2".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

//! The Engine.IO server: the session table, the handshake, and the HTTP handler for the
//! engine path (GET/POST long-polling, WebSocket handshakes and upgrades, CORS preflight).
//!
//! Requests are checked in the reference server's order: transport, then session id (or,
//! for a handshake, method and protocol version), and refused with its status and body
//! (see [`EngineError`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts as _, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::config::{ConfigError, Cors, EngineConfig};
use super::error::EngineError;
use super::pacing::FlushPacer;
use super::packet::Transport;
use super::session::{CloseReason, Message, Session};
use super::sid::Sid;
use super::{polling, websocket};
use crate::client_addr::ClientKey;
use crate::conn::ConnLimits;

/// The header naming the node that answered, on every response.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// What the layer above Engine.IO (Socket.IO, or the conformance echo server) does with
/// sessions.
pub trait Handler: Send + Sync + 'static {
    /// A session opened. `inbound` yields the client's messages in order and ends when the
    /// session closes ([`Session::close_reason`] then says why). Called on the request's
    /// task: spawn to do anything long.
    fn on_open(&self, session: Arc<Session>, inbound: mpsc::Receiver<Message>);
}

/// Sessions held by other nodes (see `crate::forward`): the seam through which a request
/// for a session this node does not hold is served by its owner.
#[async_trait]
pub trait Remote: Send + Sync + 'static {
    /// A polling session opened here; called before its handshake is answered, so that
    /// the owner is known before the client can send its next request anywhere.
    async fn opened(&self, session: &Arc<Session>);
    /// A long-polling GET for session `sid`, which is not open here.
    async fn poll(&self, sid: &str) -> Result<String, EngineError>;
    /// A POST for session `sid`, which is not open here (`max_payload` already checked).
    async fn post(&self, sid: &str, binary: bool, body: Bytes) -> Result<(), EngineError>;
    /// The node that owns session `sid` (not open here), if another node does; an error
    /// when that cannot be told now.
    async fn owner(&self, sid: &str) -> Result<Option<String>, EngineError>;
    /// Carries a client's WebSocket for session `sid` to its owner `owner` (an upgrade
    /// from polling that landed here), until either side ends.
    async fn bridge(&self, sid: String, owner: String, socket: WebSocket);
}

/// The open sessions of this node.
#[derive(Debug)]
pub struct Sessions {
    table: RwLock<Table>,
    pacer: FlushPacer,
}

/// The sessions, and how many each client has open.
#[derive(Debug, Default)]
struct Table {
    map: HashMap<Sid, Arc<Session>>,
    per_client: HashMap<ClientKey, usize>,
}

impl Sessions {
    /// An empty table whose WebSockets hold writes back at most `flush_interval`.
    pub fn new(flush_interval: Duration) -> Self {
        Self {
            table: RwLock::default(),
            pacer: FlushPacer::new(flush_interval),
        }
    }

    /// How long a WebSocket write may now wait for more packets.
    pub(crate) fn flush_interval(&self) -> Duration {
        self.pacer.interval()
    }

    /// The session with this id, if it is open here.
    pub fn get(&self, sid: Sid) -> Option<Arc<Session>> {
        self.table.read().map.get(&sid).cloned()
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.table.read().map.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.table.read().map.is_empty()
    }

    /// How many sessions `client` has open.
    pub fn of_client(&self, client: ClientKey) -> usize {
        self.table
            .read()
            .per_client
            .get(&client)
            .copied()
            .unwrap_or(0)
    }

    /// Adds a session, unless its client already has `per_client` open (zero: no limit):
    /// checked and counted under one lock, so that concurrent handshakes cannot overshoot.
    fn insert(&self, session: Arc<Session>, per_client: usize) -> Result<(), EngineError> {
        let mut table = self.table.write();
        if let Some(client) = session.client() {
            let open = table.per_client.entry(client).or_insert(0);
            if per_client > 0 && *open >= per_client {
                return Err(EngineError::TooManyFromClient);
            }
            *open += 1;
        }
        table.map.insert(session.id(), session);
        Ok(())
    }

    pub(crate) fn remove(&self, sid: Sid) {
        let mut table = self.table.write();
        let Some(client) = table.map.remove(&sid).and_then(|s| s.client()) else {
            return;
        };
        if let Some(open) = table.per_client.get_mut(&client) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                table.per_client.remove(&client);
            }
        }
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.table.read().map.values().cloned().collect()
    }
}

/// An Engine.IO server: cheap to clone, all clones share the sessions.
#[derive(Clone)]
pub struct EngineIo {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<EngineConfig>,
    sessions: Arc<Sessions>,
    handler: Arc<dyn Handler>,
    served_by: HeaderValue,
    remote: OnceLock<Arc<dyn Remote>>,
}

/// The query parameters of an Engine.IO request.
#[derive(Debug, Default, Deserialize)]
struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl EngineIo {
    /// A server with these settings, handing its sessions to `handler`.
    pub fn new(config: EngineConfig, handler: impl Handler) -> Result<Self, ConfigError> {
        let config = config.validate()?;
        let flush_interval = config.ws_flush_interval;
        let served_by = HeaderValue::from_str(&config.node_id)
            .map_err(|_| ConfigError::NodeId(config.node_id.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                sessions: Arc::new(Sessions::new(flush_interval)),
                handler: Arc::new(handler),
                served_by,
                remote: OnceLock::new(),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The open sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The open sessions, shared (for a forwarder that serves them for other nodes).
    pub fn sessions_arc(&self) -> Arc<Sessions> {
        Arc::clone(&self.inner.sessions)
    }

    /// Serves requests for sessions this node does not hold through `remote` (once; a
    /// second call is ignored and returns `false`). Without it, such requests get
    /// `400 Session ID unknown` (classic socket.io).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> bool {
        self.inner.remote.set(remote).is_ok()
    }

    /// The engine path's routes (with and without the trailing slash), without the
    /// `x-served-by` header: merge them with other routes, then call [`served_by`].
    pub fn routes(&self) -> Router {
        let path = self.inner.config.path.clone();
        let mut router = Router::new().route(&path, any(handle));
        let bare = path.trim_end_matches('/');
        if !bare.is_empty() {
            router = router.route(bare, any(handle));
        }
        router.with_state(self.clone())
    }

    /// The whole application: [`EngineIo::routes`], 404 elsewhere, and `x-served-by` on
    /// every response.
    pub fn router(&self) -> Router {
        served_by(self.routes(), self.inner.served_by.clone())
    }

    /// Serves on `listener` under the default [`ConnLimits`] until `shutdown` completes,
    /// then closes every session (pending polls return, WebSockets close) and waits for
    /// the requests in flight.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let router = self.router();
        let engine = self.clone();
        crate::conn::serve(
            listener,
            router,
            ConnLimits::default(),
            crate::client_addr::TrustedProxies::loopback(),
            no_delay,
            async move {
                shutdown.await;
                engine.close_all(CloseReason::ServerShutdown);
            },
        )
        .await
    }

    /// Closes every session.
    pub fn close_all(&self, reason: CloseReason) {
        for session in self.inner.sessions.all() {
            session.close(reason);
        }
    }

    /// Opens a session for `client` and hands it to the handler; refused when the client
    /// has as many open as it may.
    fn open(
        &self,
        transport: Transport,
        client: Option<ClientKey>,
    ) -> Result<Arc<Session>, EngineError> {
        let (session, inbound) = Session::new(
            Sid::random(),
            Arc::clone(&self.inner.config),
            transport,
            Arc::downgrade(&self.inner.sessions),
            client,
        );
        let per_client = self.inner.config.max_sessions_per_client;
        if let Err(error) = self.inner.sessions.insert(Arc::clone(&session), per_client) {
            refused_for_client(client);
            return Err(error);
        }
        session.spawn_heartbeat();
        tracing::debug!(sid = %session.id(), %transport, "session opened");
        self.inner.handler.on_open(Arc::clone(&session), inbound);
        Ok(session)
    }

    /// The client of a request (see [`crate::client_addr`]); unknown when the request did
    /// not come through [`crate::conn::serve`] (which records the peer's address).
    fn client(&self, parts: &axum::http::request::Parts) -> Option<ClientKey> {
        let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
        let client = self
            .inner
            .config
            .trusted_proxies
            .client(peer.ip(), &parts.headers);
        Some(ClientKey::from(client))
    }

    /// Serves one request on the engine path (CORS aside).
    async fn dispatch(&self, request: Request) -> Result<Response, EngineError> {
        let query = Query::<EngineQuery>::try_from_uri(request.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        let transport: Transport = query
            .transport
            .as_deref()
            .and_then(|t| t.parse().ok())
            .ok_or(EngineError::UnknownTransport)?;
        let (mut parts, body) = request.into_parts();
        let Some(sid) = query.sid else {
            // A handshake.
            if parts.method != Method::GET {
                return Err(EngineError::BadHandshakeMethod);
            }
            let upgrade = match transport {
                Transport::Websocket => Some(
                    WebSocketUpgrade::from_request_parts(&mut parts, &())
                        .await
                        .map_err(|_| EngineError::BadRequest)?,
                ),
                Transport::Polling => None,
            };
            if query.eio.as_deref() != Some("4") {
                return Err(EngineError::UnsupportedProtocolVersion);
            }
            let max = self.inner.config.max_sessions;
            if max > 0 && self.inner.sessions.len() >= max {
                tracing::warn!(max, "refusing a handshake: at the session limit");
                crate::metrics::metrics().handshakes_refused.inc();
                return Err(EngineError::AtCapacity);
            }
            let client = self.client(&parts);
            let per_client = self.inner.config.max_sessions_per_client;
            // Checked again, under the table's lock, when the session opens: this answers
            // a WebSocket client with the status rather than with a closed socket.
            if let Some(client) = client.filter(|_| per_client > 0) {
                if self.inner.sessions.of_client(client) >= per_client {
                    refused_for_client(Some(client));
                    return Err(EngineError::TooManyFromClient);
                }
            }
            return Ok(match upgrade {
                Some(upgrade) => {
                    let engine = self.clone();
                    self.configure(upgrade)
                        .on_upgrade(move |mut socket| async move {
                            match engine.open(Transport::Websocket, client) {
                                Ok(session) => websocket::run(socket, session).await,
                                Err(_) => websocket::close(&mut socket).await,
                            }
                        })
                }
                None => {
                    let session = self.open(Transport::Polling, client)?;
                    if let Some(remote) = self.inner.remote.get() {
                        remote.opened(&session).await;
                    }
                    polling_response(polling::poll(&session).await?)
                }
            });
        };

        let local = sid
            .parse::<Sid>()
            .ok()
            .and_then(|sid| self.inner.sessions.get(sid));
        let session = match (local, self.inner.remote.get()) {
            (Some(session), _) => session,
            (None, Some(remote)) if transport == Transport::Polling => {
                return match parts.method {
                    Method::GET => Ok(polling_response(remote.poll(&sid).await?)),
                    Method::POST => {
                        let binary = is_binary(&parts.headers);
                        let body = read_body(&parts.headers, body, &self.inner.config).await?;
                        remote.post(&sid, binary, body).await?;
                        Ok(post_response())
                    }
                    _ => Err(EngineError::BadRequest),
                };
            }
            (None, Some(remote)) => {
                // A WebSocket for a session of another node: bridged to the owner.
                let owner = remote.owner(&sid).await?.ok_or(EngineError::UnknownSid)?;
                let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
                    .await
                    .map_err(|_| EngineError::BadRequest)?;
                let remote = Arc::clone(remote);
                return Ok(self
                    .configure(upgrade)
                    .on_upgrade(move |socket| async move {
                        remote.bridge(sid, owner, socket).await;
                    }));
            }
            (None, None) => return Err(EngineError::UnknownSid),
        };
        if session.expire_if_overdue() {
            return Err(EngineError::UnknownSid);
        }
        match transport {
            Transport::Polling => {
                if session.transport() != Transport::Polling {
                    return Err(EngineError::BadRequest);
                }
                match parts.method {
                    Method::GET => Ok(polling_response(polling::poll(&session).await?)),
                    Method::POST => {
                        let binary = is_binary(&parts.headers);
                        let body = read_body(&parts.headers, body, &self.inner.config).await?;
                        polling::post(&session, binary, body).await?;
                        Ok(post_response())
                    }
                    _ => Err(EngineError::BadRequest),
                }
            }
            Transport::Websocket => {
                let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
                    .await
                    .map_err(|_| EngineError::BadRequest)?;
                Ok(self
                    .configure(upgrade)
                    .on_upgrade(move |mut socket| async move {
                        // As the reference server: the WebSocket opens, and closes at once when
                        // the session is already on WebSocket or another one is upgrading.
                        if session.try_attach_upgrade() {
                            websocket::upgrade(socket, session).await;
                        } else {
                            websocket::close(&mut socket).await;
                        }
                    }))
            }
        }
    }

    /// A small read buffer: tungstenite's default (128 KiB) would cost every idle client
    /// more than everything else it holds; chat frames are small, and the buffer grows
    /// for a large frame while it is read. The write buffer is allocated only when written
    /// to, so its threshold costs an idle client nothing.
    fn configure(&self, upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
        let max = self.inner.config.max_payload;
        upgrade
            .max_message_size(max)
            .max_frame_size(max)
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(WS_WRITE_BATCH)
    }
}

/// Counts and logs a handshake refused at the per-client limit.
fn refused_for_client(client: Option<ClientKey>) {
    crate::metrics::metrics().client_handshakes_refused.inc();
    if let Some(client) = client {
        tracing::debug!(%client, "refusing a handshake: at the per-client session limit");
    }
}

/// Turns Nagle's algorithm off on an accepted connection: small frames written one after
/// the other (events, acks, polling replies) must not wait for the client's delayed ACK.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY not set");
    }
}

/// The frames queued for one client are written with one syscall, up to this many bytes.
/// With 0 (a write per frame), a node limited to 0.4 CPU under `bench chat` made one
/// `sendto` per delivered message; batching halved those and raised the load it sustains
/// within the same CPU from 19-27k to 38k deliveries/s. Frames queued together therefore
/// reach the client in one read, as TCP always allowed; a client that re-arms a one-shot
/// listener between messages (the official socket.io-protocol suite's harness) misses the
/// second of them.
const WS_WRITE_BATCH: usize = 16 * 1024;

/// The initial read buffer of a WebSocket connection.
const WS_READ_BUFFER: usize = 1024;

/// Adds `x-served-by: <node_id>` to every response of `router`.
pub fn served_by(router: Router, node_id: HeaderValue) -> Router {
    router.layer(axum::middleware::map_response(
        move |mut response: Response| {
            let node_id = node_id.clone();
            async move {
                response.headers_mut().insert(SERVED_BY, node_id);
                response
            }
        },
    ))
}

async fn handle(State(engine): State<EngineIo>, request: Request) -> Response {
    let cors = &engine.inner.config.cors;
    let headers = cors_headers(cors, request.headers());
    let mut response = if request.method() == Method::OPTIONS && *cors != Cors::Disabled {
        preflight(request.headers())
    } else {
        match engine.dispatch(request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    };
    response.headers_mut().extend(headers);
    // A poll carries other users' text: never to be sniffed into HTML by an old browser.
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether a POST says `Content-Type: application/octet-stream`.
fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}

/// A POST's answer.
fn post_response() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        "ok",
    )
        .into_response()
}

/// A poll's answer.
fn polling_response(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=UTF-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// Reads a POST body of at most `max_payload` bytes, within `ping_timeout` (as long as a
/// client has to answer a ping): a body sent a byte at a time would otherwise hold its
/// connection for as long as the client likes, out of reach of the connection's idle
/// timeout (a request is in progress) and of its header timeout (the head is complete).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    config: &EngineConfig,
) -> Result<Bytes, EngineError> {
    let max = config.max_payload;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(EngineError::PayloadTooLarge);
    }
    let read = tokio::time::timeout(config.ping_timeout, axum::body::to_bytes(body, max));
    let Ok(read) = read.await else {
        tracing::debug!("a POST body did not arrive in time");
        return Err(EngineError::BadRequest);
    };
    read.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            EngineError::PayloadTooLarge
        } else {
            EngineError::BadRequest
        }
    })
}

/// The CORS headers of a response to a request with these headers.
fn cors_headers(cors: &Cors, request: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let origin = request.get(header::ORIGIN);
    let echo = |origin: &HeaderValue| {
        vec![
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
            (
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ),
            (header::VARY, HeaderValue::from_static("Origin")),
        ]
    };
    match (cors, origin) {
        (Cors::Disabled, _) => Vec::new(),
        (Cors::AnyOrigin, _) => vec![(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        )],
        (Cors::MirrorOrigin, Some(origin)) => echo(origin),
        (Cors::Origins(allowed), Some(origin))
            if allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) =>
        {
            echo(origin)
        }
        (Cors::MirrorOrigin | Cors::Origins(_), _) => {
            vec![(header::VARY, HeaderValue::from_static("Origin"))]
        }
    }
}

/// The answer to a CORS preflight (`OPTIONS`); the origin headers are added by the caller.
fn preflight(request: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET,POST,OPTIONS"),
    );
    if let Some(requested) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

//! One chat node: its settings ([`NodeConfig`]), built into a [`Node`] (the Engine.IO and
//! Socket.IO servers on a bus, the chat application on its store), and served over an injected
//! listener until a shutdown future completes, with a bounded graceful shutdown.
//!
//! HTTP routes: the engine path (`/socket.io/`), `GET /healthz` and the browser page
//! ([`crate::web`]: `/`, `/assets/…`); every response carries `x-served-by: <node-id>`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::bus::{Bus, BusError, MemoryBus, RedisBus, RedisBusConfig};
use crate::chat::{
    self, Chat, ChatConfig, ChatConfigError, ChatStore, MemoryStore, RedisStore, StoreError,
};
use crate::client_addr::TrustedProxies;
use crate::cluster::ClusterAdapterFactory;
use crate::conn::{ConnLimits, ConnLimitsError};
use crate::engineio::server::served_by;
use crate::engineio::{CloseReason, ConfigError, Cors, EngineConfig, EngineIo};
use crate::forward::{ForwardConfig, Forwarder, MemoryDirectory, RedisDirectory, SessionDirectory};
use crate::recovery::RecoveryConfig;
use crate::socketio::packet::InvalidNamespace;
use crate::socketio::{SocketIo, SocketIoConfig};

/// Where Engine.IO sessions live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SessionMode {
    /// Any node serves any request of a session: a polling request for a session owned by
    /// another node is forwarded to it through the bus, and a WebSocket upgrade is bridged
    /// to it (see [`crate::forward`] and `docs/sessions.md`).
    #[default]
    Shared,
    /// Classic socket.io: a session is served only by the node that opened it (needs
    /// sticky sessions when polling is on).
    Local,
}

/// A chat node's default [`NodeConfig::ws_flush_interval`]: long enough for a client
/// receiving a busy room's stream to get several messages per write, short against any
/// delay a person notices; applied only while the node is busy.
pub const DEFAULT_WS_FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// A chat node's default [`NodeConfig::max_sessions_per_client`]: a household or an
/// office behind one address has far fewer tabs open; one client cannot take more than a
/// hundredth of the default `--max-connections`.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: usize = 100;

/// A chat node's default [`NodeConfig::first_poll_timeout`]: a client polls as soon as
/// the handshake's answer arrives, within a round trip.
pub const DEFAULT_FIRST_POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a chat node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name: `x-served-by`, the welcome event, bus entries.
    pub node_id: String,
    /// The Redis URL of the cluster's bus; `None` runs alone on the in-process bus.
    pub redis_url: Option<String>,
    /// Where sessions live.
    pub sessions: SessionMode,
    /// Engine.IO heartbeat: interval between pings.
    pub ping_interval: Duration,
    /// Engine.IO heartbeat: how long to wait for a pong.
    pub ping_timeout: Duration,
    /// The largest message or POST body accepted, in bytes; also the most bytes of one
    /// Socket.IO packet's binary attachments together.
    pub max_payload: usize,
    /// The most bytes waiting for one client before it is closed as a slow client (see
    /// [`EngineConfig::max_queued_bytes`]).
    pub max_queued_bytes: usize,
    /// The most clients connected to this node at once (zero: no limit).
    pub max_connections: usize,
    /// The most sessions one client may have open on this node (zero: no limit).
    pub max_sessions_per_client: usize,
    /// How long a polling session waits for its client's first request after the
    /// handshake (see [`EngineConfig::first_poll_timeout`]).
    pub first_poll_timeout: Duration,
    /// The proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// The TCP connections' cap and timeouts.
    pub conn: ConnLimits,
    /// The longest a WebSocket write waits for more packets while the node is busy (see
    /// [`EngineConfig::ws_flush_interval`]); zero writes every packet at once.
    pub ws_flush_interval: Duration,
    /// Cross-origin policy.
    pub cors: Cors,
    /// How long a stopping node waits for its requests in flight before it exits anyway.
    pub shutdown_grace: Duration,
    /// Connection-state recovery: how long after a disconnection a client may recover its
    /// socket and what it missed (see [`crate::recovery`]); zero turns recovery off.
    pub recovery_window: Duration,
    /// The chat application's settings (history, rate limit, text length, presence).
    pub chat: ChatConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let engine = EngineConfig::default();
        Self {
            node_id: "chat-node".to_owned(),
            redis_url: None,
            sessions: SessionMode::default(),
            ping_interval: engine.ping_interval,
            ping_timeout: engine.ping_timeout,
            max_payload: engine.max_payload,
            max_queued_bytes: engine.max_queued_bytes,
            max_connections: engine.max_sessions,
            max_sessions_per_client: DEFAULT_MAX_SESSIONS_PER_CLIENT,
            first_poll_timeout: DEFAULT_FIRST_POLL_TIMEOUT,
            trusted_proxies: TrustedProxies::loopback(),
            conn: ConnLimits::default(),
            ws_flush_interval: DEFAULT_WS_FLUSH_INTERVAL,
            cors: Cors::Disabled,
            shutdown_grace: Duration::from_secs(5),
            recovery_window: RecoveryConfig::default().window,
            chat: ChatConfig::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An invalid setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configured Redis does not answer.
    #[error("redis: {0}")]
    Bus(#[from] BusError),
    /// An invalid connection limit.
    #[error(transparent)]
    Conn(#[from] ConnLimitsError),
    /// An invalid chat setting (the source says which).
    #[error("invalid chat setting")]
    Chat(#[from] ChatConfigError),
    /// The chat's store (Redis) does not answer (the source says why).
    #[error("chat store")]
    Store(#[from] StoreError),
    /// The chat's namespace could not be registered.
    #[error(transparent)]
    Namespace(#[from] InvalidNamespace),
}

impl NodeConfig {
    /// The recovery settings, when recovery is on: records renewed four times per window
    /// (at most every 30 s).
    pub fn recovery(&self) -> Option<RecoveryConfig> {
        (!self.recovery_window.is_zero()).then(|| RecoveryConfig {
            window: self.recovery_window,
            refresh: (self.recovery_window / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(30)),
        })
    }

    /// The Engine.IO settings on `/socket.io/`.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            path: "/socket.io/".to_owned(),
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_payload: self.max_payload,
            max_queued_bytes: self.max_queued_bytes,
            max_sessions: self.max_connections,
            max_sessions_per_client: self.max_sessions_per_client,
            first_poll_timeout: Some(self.first_poll_timeout),
            trusted_proxies: self.trusted_proxies.clone(),
            ws_flush_interval: self.ws_flush_interval,
            cors: self.cors.clone(),
            node_id: self.node_id.clone(),
            ..EngineConfig::default()
        }
    }
}

/// A chat node ready to serve: cheap to clone.
#[derive(Clone)]
pub struct Node {
    engine: EngineIo,
    io: SocketIo,
    bus: Arc<dyn Bus>,
    chat: Chat,
    config: Arc<NodeConfig>,
    stopping: Arc<AtomicBool>,
    /// With `--sessions shared`: what serves other nodes' requests for this node's sessions.
    forwarder: Option<Forwarder>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .field("bus", &self.bus.kind())
            .finish()
    }
}

impl Node {
    /// Builds a node: connects to Redis when configured (it must answer now), else uses a
    /// fresh in-process bus and chat store. Call inside a Tokio runtime.
    pub async fn new(config: NodeConfig) -> Result<Self, StartError> {
        let (bus, directory, store): (Arc<dyn Bus>, Arc<dyn SessionDirectory>, Arc<dyn ChatStore>) =
            match &config.redis_url {
                Some(url) => (
                    Arc::new(RedisBus::connect(RedisBusConfig::new(url.clone())).await?),
                    Arc::new(RedisDirectory::connect(url).await?),
                    Arc::new(RedisStore::connect(url).await?),
                ),
                None => (
                    Arc::new(MemoryBus::new()),
                    Arc::new(MemoryDirectory::new()),
                    Arc::new(MemoryStore::new()),
                ),
            };
        Self::with_store(config, bus, directory, store)
    }

    /// Builds a node on a given bus, with its own in-process session directory. Call
    /// inside a Tokio runtime.
    pub fn with_bus(config: NodeConfig, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        Self::with_parts(config, bus, Arc::new(MemoryDirectory::new()))
    }

    /// Builds a node on a given bus and session directory, with its own in-process chat
    /// store (tests share one [`MemoryBus`] and one [`MemoryDirectory`] between the nodes
    /// of one process). Call inside a Tokio runtime.
    pub fn with_parts(
        config: NodeConfig,
        bus: Arc<dyn Bus>,
        directory: Arc<dyn SessionDirectory>,
    ) -> Result<Self, StartError> {
        Self::with_store(config, bus, directory, Arc::new(MemoryStore::new()))
    }

    /// Builds a node on a given bus, session directory and chat store: in-process nodes
    /// sharing one [`MemoryBus`], [`MemoryDirectory`] and [`MemoryStore`] behave like a
    /// cluster on Redis. Call inside a Tokio runtime.
    pub fn with_store(
        config: NodeConfig,
        bus: Arc<dyn Bus>,
        directory: Arc<dyn SessionDirectory>,
        store: Arc<dyn ChatStore>,
    ) -> Result<Self, StartError> {
        let engine_config = config.engine_config().validate()?;
        config.conn.validate()?;
        let chat_config = config.chat.clone().validate()?;
        let mut adapters = ClusterAdapterFactory::new(Arc::clone(&bus), config.node_id.clone());
        if let Some(recovery) = config.recovery() {
            adapters = adapters.with_recovery(bus.session_store(), recovery);
        }
        let sio_config = SocketIoConfig {
            max_attachment_bytes: config.max_payload,
            ..SocketIoConfig::default()
        };
        let io = SocketIo::with_adapter(sio_config, adapters);
        let chat = chat::register(&io, &config.node_id, chat_config, store)?;
        let engine = EngineIo::new(engine_config, io.clone())?;
        let mut forwarder = None;
        if config.sessions == SessionMode::Shared {
            let started = Forwarder::start(
                ForwardConfig {
                    node_id: config.node_id.clone(),
                    poll_timeout: config.ping_interval + config.ping_timeout,
                    post_timeout: config.ping_timeout,
                    owner_ttl: config.ping_interval * 2 + config.ping_timeout,
                    max_queued_bytes: config.max_queued_bytes,
                    refresh: config.ping_interval,
                },
                Arc::clone(&bus),
                directory,
                engine.sessions_arc(),
            );
            engine.set_remote(Arc::new(started.clone()));
            forwarder = Some(started);
        }
        Ok(Self {
            engine,
            io,
            bus,
            chat,
            config: Arc::new(config),
            stopping: Arc::new(AtomicBool::new(false)),
            forwarder,
        })
    }

    /// The Engine.IO server.
    pub fn engine(&self) -> &EngineIo {
        &self.engine
    }

    /// The Socket.IO server (register more namespaces on it).
    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    /// The chat application.
    pub fn chat(&self) -> &Chat {
        &self.chat
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The HTTP application: the engine path, `GET /healthz`, and `x-served-by` on every
    /// response (404s included).
    pub fn router(&self) -> Router {
        let health = Router::new()
            .route("/healthz", get(healthz))
            .with_state(self.clone());
        let router = self
            .engine
            .routes()
            .merge(health)
            .merge(crate::web::routes());
        // The node id was validated as a header value by `EngineConfig::validate`.
        let served = HeaderValue::from_str(&self.config.node_id)
            .unwrap_or_else(|_| HeaderValue::from_static("chat-node"));
        served_by(router, served)
    }

    /// Whether the node can serve: not stopping, and its bus answers.
    pub async fn health(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        let checks = async {
            self.bus
                .ping()
                .await
                .map_err(|error| format!("{}: {error}", self.bus.kind()))?;
            self.chat
                .store()
                .check()
                .await
                .map_err(|error| format!("{error} (the chat store's write)"))
        };
        match tokio::time::timeout(Duration::from_secs(2), checks).await {
            Ok(checked) => checked,
            Err(_) => Err(format!("{}: no answer in time", self.bus.kind())),
        }
    }

    /// Serves on `listener` until `shutdown` completes. Then the node stops accepting,
    /// `/healthz` turns 503, every Engine.IO session is closed (pending polls return,
    /// WebSockets close: clients reconnect, elsewhere behind a balancer), and so is every
    /// WebSocket it bridges to another node's session. It returns when the requests in
    /// flight are done and the closes have reached the other nodes (answers to their
    /// forwarded polls, owner records deleted: see [`Forwarder::stopped`]), or after
    /// `shutdown_grace`, whichever is first.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (fired_tx, fired_rx) = oneshot::channel::<Instant>();
        let node = self.clone();
        let server = crate::conn::serve(
            listener,
            self.router(),
            self.config.conn,
            self.config.trusted_proxies.clone(),
            crate::engineio::server::no_delay,
            async move {
                shutdown.await;
                let since = Instant::now();
                tracing::info!(
                    node = %node.config.node_id,
                    sessions = node.engine.sessions().len(),
                    "shutting down"
                );
                node.stopping.store(true, Ordering::Relaxed);
                node.engine.close_all(CloseReason::ServerShutdown);
                if let Some(forwarder) = &node.forwarder {
                    forwarder.stop();
                }
                let _ = fired_tx.send(since);
            },
        );
        tokio::pin!(server);
        tokio::pin!(fired_rx);
        let grace = self.config.shutdown_grace;
        let (result, since) = tokio::select! {
            // Stopped on its own, or a shutdown with nothing in flight.
            result = &mut server => (result, fired_rx.try_recv().ok()),
            since = &mut fired_rx => match since {
                Ok(since) => {
                    let result = tokio::time::timeout_at(since + grace, &mut server).await;
                    (result.unwrap_or(Ok(())), Some(since))
                }
                // The server stopped on its own (then the branch above wins): wait for it.
                Err(_) => ((&mut server).await, None),
            },
        };
        let Some(since) = since else {
            return result;
        };
        // The sessions' closes, for the other nodes: without them a client whose request
        // another node forwards here waits for that node's timeout (`ping_interval +
        // ping_timeout`) to learn its session is gone.
        let drained = tokio::time::timeout_at(since + grace, async {
            if let Some(forwarder) = &self.forwarder {
                forwarder.stopped().await;
            }
            self.bus.flush().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "requests or replies to other nodes still in flight after the grace period; exiting anyway"
            );
        }
        result
    }
}

/// `GET /healthz`: 200 `ok`, or 503 with the reason.
async fn healthz(State(node): State<Node>) -> Response {
    match node.health().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_is_healthy_until_it_stops_and_stops_at_once_when_idle() {
        let node = Node::new(NodeConfig {
            node_id: "t".to_owned(),
            ..NodeConfig::default()
        })
        .await
        .unwrap();
        assert_eq!(node.health().await, Ok(()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            node.clone().serve(listener, std::future::ready(())),
        )
        .await;
        assert!(matches!(served, Ok(Ok(()))));
        assert_eq!(node.health().await, Err("shutting down".to_owned()));
    }

    #[tokio::test]
    async fn an_invalid_node_id_is_refused() {
        let started = Node::new(NodeConfig {
            node_id: "a\nb".to_owned(),
            ..NodeConfig::default()
        })
        .await;
        assert!(matches!(started, Err(StartError::Config(_))));
    }
}

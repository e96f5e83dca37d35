//! Sessions without stickiness (`--sessions shared`): a polling request for a session that
//! another node owns is forwarded to that node, which serves it on its own session and
//! answers back.
//!
//! - [`SessionDirectory`]: who owns a session. In Redis ([`RedisDirectory`]):
//!   `SET syd:eio:<sid> <node-id> PX <ttl>`, refreshed every `ping_interval` while the
//!   session lives, `DEL` when it closes. In process ([`MemoryDirectory`]): the same with a
//!   map, shared by the nodes of one process (tests).
//! - [`Forwarder`]: the engine's [`Remote`]. Each node reads its own RPC topic on the bus,
//!   `syd:node:<node-id>` (a Redis Stream with the Redis bus). A request is a JSON entry
//!   `{"t":"req","id","from","op":"poll"|"post","sid","binary","body"(base64)}` appended to
//!   the owner's topic; the owner runs [`polling::poll`] / [`polling::post`] on its session
//!   and appends `{"t":"res","id","body"?,"error"?}` to the requester's topic
//!   (`syd:node:<from>`); `error` is the Engine.IO error's HTTP code (400 codes map back to
//!   the same [`EngineError`]). The requester waits a bounded time (a GET:
//!   `ping_interval + ping_timeout`, since the owner answers a long poll by the next ping
//!   at the latest; a POST: `ping_timeout`); no answer in time (a dead owner) is
//!   `400 Session ID unknown`, so the client reconnects. A directory or bus that fails
//!   is a retryable `503` ([`EngineError::Unavailable`]): the session may be alive. A requester that stops sends
//!   `{"t":"release","id","from"}` for each poll it still waits on: the owner answers it at
//!   once (a noop if nothing is queued), and the client polls again through another node.
//! - WebSocket bridge: a WebSocket upgrade for another node's session is accepted and
//!   bridged over the same topics: `{"t":"wsopen","id","from","sid"}`, then
//!   `{"t":"wsin","id","from","frame"}` to the owner and `{"t":"wsout","id","frame"}` back,
//!   a frame being `{"k":"text","d"}`, `{"k":"bin","d"(base64)}` or `{"k":"close"}`. The
//!   owner runs its usual upgrade (probe, `5`, then the session) on a transport made of
//!   those frames. The bridging node closes the client's WebSocket when the owner is
//!   silent for `ping_interval + ping_timeout` (it pings every `ping_interval`).
//! - Every entry also carries its sender's origin, `"o"` (a random id of the sending
//!   process) and `"s"` (its sequence number): the bus's publisher appends an entry again
//!   when Redis's reply is lost (a stall, a broken connection), and the reader serves an
//!   origin's sequence number once ([`Deduper`]). Without it a request or bridged frame
//!   read twice was served twice: a `send` in it posted its message twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, BusError};
use crate::cluster::Seen;
use crate::engineio::{
    polling, websocket, CloseReason, EngineError, Remote, Session, Sessions, Sid,
};
use crate::metrics::{metrics, Component, Topic};

/// How many bridged WebSocket frames may wait, in each direction, for a slow consumer
/// before the bridge is closed (and, towards the client, no more than
/// [`ForwardConfig::max_queued_bytes`] of them).
const BRIDGE_CAPACITY: usize = 256;

/// The longest a bridge's close frame to its client may take to be written.
const BRIDGE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How often, and how many times at most, a closed session is checked for having left the
/// session table before its owner record is deleted.
const LINGER_CHECK: Duration = Duration::from_millis(100);
const LINGER_CHECKS: u32 = 30;

/// The start of every node's RPC topic ([`node_topic`]).
const NODE_TOPIC_PREFIX: &str = "syd:node:";

/// How much longer than the longest wait for an answer an RPC entry is kept.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// The most taken RPC entries removed from the topic in one step.
const DISCARD_BATCH: usize = 256;

/// The Redis key naming the owner of session `sid`: `syd:eio:<sid>`.
pub fn owner_key(sid: &str) -> String {
    format!("syd:eio:{sid}")
}

/// The bus topic of node `node`'s RPC requests and replies: `syd:node:<node>`.
pub fn node_topic(node: &str) -> String {
    format!("{NODE_TOPIC_PREFIX}{node}")
}

/// Who owns which Engine.IO session.
#[async_trait]
pub trait SessionDirectory: Send + Sync + 'static {
    /// The node that owns `sid`, if any.
    async fn owner(&self, sid: &str) -> Result<Option<String>, BusError>;
    /// Records (or refreshes) `node` as the owner of `sid` for `ttl`.
    async fn register(&self, sid: &str, node: &str, ttl: Duration) -> Result<(), BusError>;
    /// Forgets `sid`.
    async fn unregister(&self, sid: &str) -> Result<(), BusError>;
}

/// The in-process directory; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct MemoryDirectory {
    owners: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SessionDirectory for MemoryDirectory {
    async fn owner(&self, sid: &str) -> Result<Option<String>, BusError> {
        let mut owners = self.owners.lock();
        let now = Instant::now();
        owners.retain(|_, (_, expires)| *expires > now);
        Ok(owners.get(sid).map(|(node, _)| node.clone()))
    }

    async fn register(&self, sid: &str, node: &str, ttl: Duration) -> Result<(), BusError> {
        self.owners
            .lock()
            .insert(sid.to_owned(), (node.to_owned(), Instant::now() + ttl));
        Ok(())
    }

    async fn unregister(&self, sid: &str) -> Result<(), BusError> {
        self.owners.lock().remove(sid);
        Ok(())
    }
}

/// The directory in Redis: `syd:eio:<sid>` → node id, with a TTL.
#[derive(Clone)]
pub struct RedisDirectory {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory").finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    // Every Redis failure of the directory comes through here.
    metrics().redis_error(Component::Directory);
    BusError::Unavailable(error.to_string())
}

/// How many times a directory command is sent when its connection turns out dropped,
/// and the pause before the second (longer before each next).
const DIRECTORY_ATTEMPTS: u32 = 3;
const DIRECTORY_RETRY: Duration = Duration::from_millis(50);

impl RedisDirectory {
    /// Connects to Redis at `url` (it must answer now).
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let conn = crate::bus::redis::open(url).await.map_err(unavailable)?;
        Ok(Self { conn })
    }

    /// Runs `cmd` (each is idempotent), again when the connection had dropped: the
    /// connection manager finds a dead connection (Redis restarted) only by a command
    /// failing on it, and reconnects behind it, so the first command after a restart
    /// fails though Redis answers. A timeout is not retried: Redis is there but slow.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BusError> {
        let mut attempt = 1;
        loop {
            let mut conn = self.conn.clone();
            match cmd.query_async::<T>(&mut conn).await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_connection_dropped() && attempt < DIRECTORY_ATTEMPTS => {
                    metrics().redis_error(Component::Directory);
                    tracing::debug!(%error, attempt, "session directory connection dropped; trying again");
                    tokio::time::sleep(DIRECTORY_RETRY * attempt).await;
                    attempt += 1;
                }
                Err(error) => return Err(unavailable(error)),
            }
        }
    }
}

#[async_trait]
impl SessionDirectory for RedisDirectory {
    async fn owner(&self, sid: &str) -> Result<Option<String>, BusError> {
        self.query(redis::cmd("GET").arg(owner_key(sid))).await
    }

    async fn register(&self, sid: &str, node: &str, ttl: Duration) -> Result<(), BusError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.query(
            redis::cmd("SET")
                .arg(owner_key(sid))
                .arg(node)
                .arg("PX")
                .arg(ttl_ms),
        )
        .await
    }

    async fn unregister(&self, sid: &str) -> Result<(), BusError> {
        self.query(redis::cmd("DEL").arg(owner_key(sid))).await
    }
}

/// An operation forwarded to a session's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Poll,
    Post,
}

/// One RPC entry on a node's topic.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Rpc {
    Req {
        id: u64,
        from: String,
        op: Op,
        sid: String,
        #[serde(default)]
        binary: bool,
        /// Base64 of the POST body (empty for a poll).
        #[serde(default)]
        body: String,
    },
    /// Bridging node → owner: a client's WebSocket for session `sid` opened on `from`.
    WsOpen { id: u64, from: String, sid: String },
    /// Bridging node → owner: a frame from the client of bridge (`from`, `id`).
    WsIn {
        id: u64,
        from: String,
        frame: WsFrame,
    },
    /// Owner → bridging node: a frame for the client of bridge `id`.
    WsOut { id: u64, frame: WsFrame },
    /// Requesting node → owner: answer poll `id` from `from` now (a noop if nothing is
    /// queued). The requester is stopping: held until the next ping, the poll would be cut
    /// at the end of its grace period, and the client would reconnect rather than poll
    /// again, through another node, on the same session.
    Release { id: u64, from: String },
    Res {
        id: u64,
        /// The poll's payload (a POST answers with none).
        #[serde(default)]
        body: Option<String>,
        /// The error's code ([`error_code`]).
        #[serde(default)]
        error: Option<u16>,
    },
}

/// An [`Rpc`] as a node appends it: with its origin and sequence number.
#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(flatten)]
    rpc: &'a Rpc,
    /// The sending process ([`Inner::instance`]).
    o: u64,
    /// Its sequence number there ([`Inner::seq`]).
    s: u64,
}

/// An [`Rpc`] as read: its origin and sequence number are absent from a node of an
/// older version (such an entry is served as it comes).
#[derive(Deserialize)]
struct Received {
    #[serde(flatten)]
    rpc: Rpc,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default)]
    s: Option<u64>,
}

/// How long an origin that sent nothing is remembered by [`Deduper`]: a duplicate comes
/// right behind its original (the publisher's retry, within seconds of Redis answering).
const ORIGIN_IDLE: Duration = Duration::from_secs(600);

/// The sequence numbers recently read from each origin, so that an entry appended twice
/// is served once. Origins idle for [`ORIGIN_IDLE`] are forgotten (a node restarted has a
/// new one).
#[derive(Default)]
struct Deduper {
    origins: HashMap<u64, (Seen, Instant), foldhash::fast::RandomState>,
    last_sweep: Option<Instant>,
}

impl Deduper {
    /// Whether the entry is new (to be served); `false` for a duplicate.
    fn first(&mut self, origin: Option<u64>, seq: Option<u64>) -> bool {
        let (Some(origin), Some(seq)) = (origin, seq) else {
            return true;
        };
        let now = Instant::now();
        if self
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= ORIGIN_IDLE)
        {
            self.last_sweep = Some(now);
            self.origins
                .retain(|_, (_, last)| now.duration_since(*last) < ORIGIN_IDLE);
        }
        let (seen, last) = self
            .origins
            .entry(origin)
            .or_insert_with(|| (Seen::default(), now));
        *last = now;
        seen.insert(seq)
    }
}

/// A WebSocket frame carried over the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum WsFrame {
    Text {
        d: String,
    },
    /// Base64.
    Bin {
        d: String,
    },
    Close,
}

impl WsFrame {
    /// The frame, or `None` for a control frame that is not carried (ping/pong).
    fn from_message(message: WsMessage) -> Option<Self> {
        match message {
            WsMessage::Text(text) => Some(Self::Text {
                d: text.as_str().to_owned(),
            }),
            WsMessage::Binary(data) => Some(Self::Bin {
                d: base64::engine::general_purpose::STANDARD.encode(&data),
            }),
            WsMessage::Close(_) => Some(Self::Close),
            WsMessage::Ping(_) | WsMessage::Pong(_) => None,
        }
    }

    /// The bytes it holds while it waits for its client.
    fn len(&self) -> usize {
        match self {
            Self::Text { d } | Self::Bin { d } => d.len(),
            Self::Close => 1,
        }
    }

    /// The frame as a message; an undecodable binary frame is a close.
    fn into_message(self) -> WsMessage {
        match self {
            Self::Text { d } => WsMessage::Text(d.into()),
            Self::Bin { d } => match base64::engine::general_purpose::STANDARD.decode(d) {
                Ok(data) => WsMessage::Binary(Bytes::from(data)),
                Err(_) => WsMessage::Close(None),
            },
            Self::Close => WsMessage::Close(None),
        }
    }
}

/// The frames from a bridged client, as the owner's WebSocket transport reads them.
type HostedFrames = futures::channel::mpsc::Sender<Result<WsMessage, axum::Error>>;

/// Bridging side: the frames from the owner on their way to one bridged client.
struct BridgeOut {
    frames: mpsc::Sender<WsFrame>,
    /// The bytes of the frames in `frames` or being written to the client.
    bytes: Arc<AtomicUsize>,
    /// Cancelled when the client falls too far behind: the bridge ends, also in the
    /// middle of a write the client never takes (which would otherwise hold the bridge,
    /// and what waits in `frames`, for good).
    behind: CancellationToken,
}

impl BridgeOut {
    /// Queues `frame`; `false` when the client is too far behind for it: more than
    /// `max_bytes` would wait (a frame for a client with nothing waiting always goes, as
    /// on the owner's own transports), or [`BRIDGE_CAPACITY`] frames.
    fn offer(&self, frame: WsFrame, max_bytes: usize) -> bool {
        let len = frame.len();
        // Added before the frame can be taken (and its bytes taken off): one reader of the
        // node's topic offers, so the check and the add do not race another offer.
        let held = self.bytes.fetch_add(len, Ordering::Relaxed);
        if (held > 0 && held.saturating_add(len) > max_bytes)
            || self.frames.try_send(frame).is_err()
        {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// An Engine.IO error as a number: its protocol code, or 413 for a payload too large.
fn error_code(error: EngineError) -> u16 {
    match error {
        EngineError::Unavailable => 503,
        _ => error.code().map_or(413, u16::from),
    }
}

fn error_from_code(code: u16) -> EngineError {
    match code {
        0 => EngineError::UnknownTransport,
        1 => EngineError::UnknownSid,
        2 => EngineError::BadHandshakeMethod,
        4 => EngineError::Forbidden,
        5 => EngineError::UnsupportedProtocolVersion,
        413 => EngineError::PayloadTooLarge,
        503 => EngineError::Unavailable,
        _ => EngineError::BadRequest,
    }
}

/// The owner's answer: a poll's payload (none for a POST), or the error.
type Answer = Result<Option<String>, EngineError>;

/// Settings of a [`Forwarder`].
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// This node's id.
    pub node_id: String,
    /// How long a forwarded GET waits for the owner's answer.
    pub poll_timeout: Duration,
    /// How long a forwarded POST waits for the owner's answer.
    pub post_timeout: Duration,
    /// The TTL of an owner record; it is refreshed every `refresh`.
    pub owner_ttl: Duration,
    /// How often a live session's owner record is refreshed.
    pub refresh: Duration,
    /// The most bytes of frames from the owner waiting for a bridged client (its
    /// sessions' [`crate::engineio::EngineConfig::max_queued_bytes`]): a client that does
    /// not read is closed as a slow client here too.
    pub max_queued_bytes: usize,
}

/// Forwards requests for other nodes' sessions, and serves this node's sessions for them.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    config: ForwardConfig,
    bus: Arc<dyn Bus>,
    directory: Arc<dyn SessionDirectory>,
    sessions: Arc<Sessions>,
    next_id: AtomicU64,
    /// This process's origin on the RPC topics ([`Stamped`]), and its next sequence
    /// number there.
    instance: u64,
    seq: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Bridging side: the frames for each bridged client, by bridge id.
    bridges: Mutex<HashMap<u64, BridgeOut>>,
    /// Owner side: the frames from each bridged client, by (bridging node, bridge id).
    hosted: Mutex<HashMap<(String, u64), HostedFrames>>,
    /// Owner side: the sessions of the forwarded polls being served, by (requesting node,
    /// request id), for a [`Rpc::Release`].
    serving: Mutex<HashMap<(String, u64), Arc<Session>>>,
    /// The work this node's sessions and bridges leave to finish when they end: replies to
    /// other nodes, owner records to delete ([`Forwarder::stopped`] waits for it).
    tasks: TaskTracker,
    /// Cancelled when the node stops: the bridges it holds end ([`Forwarder::stop`]).
    stopping: CancellationToken,
}

impl Inner {
    /// `rpc` as appended to a node's topic: stamped with this process's origin and the
    /// next sequence number, so that its reader serves it once.
    fn encode(&self, rpc: &Rpc) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&Stamped {
            rpc,
            o: self.instance,
            s: self.seq.fetch_add(1, Ordering::Relaxed),
        })
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder for the node whose sessions are `sessions`; starts reading the node's
    /// RPC topic. Call inside a Tokio runtime.
    pub fn start(
        config: ForwardConfig,
        bus: Arc<dyn Bus>,
        directory: Arc<dyn SessionDirectory>,
        sessions: Arc<Sessions>,
    ) -> Self {
        let topic = node_topic(&config.node_id);
        let mut entries = bus.subscribe(&topic);
        // An RPC entry is worthless once its requester stopped waiting, and may hold a
        // whole forwarded body: every node topic keeps entries for that long at most
        // (this bus trims the topics it appends to), not the length bound's worth.
        bus.expire(
            NODE_TOPIC_PREFIX,
            config.poll_timeout.max(config.post_timeout) + EXPIRY_MARGIN,
        );
        let forwarder = Self {
            inner: Arc::new(Inner {
                config,
                bus,
                directory,
                sessions,
                // Random start: a restarted node with the same id does not take a stale
                // reply for one of its new requests.
                next_id: AtomicU64::new(rand::random::<u64>() >> 1),
                instance: rand::random(),
                seq: AtomicU64::new(0),
                pending: Mutex::new(HashMap::new()),
                bridges: Mutex::new(HashMap::new()),
                hosted: Mutex::new(HashMap::new()),
                serving: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
            }),
        };
        let weak = Arc::downgrade(&forwarder.inner);
        tokio::spawn(async move {
            // Entries taken and not yet removed from the topic, and the removal under way:
            // this node is the topic's only reader, so what it took can go at once (one
            // removal at a time, of all taken meanwhile).
            let mut taken: Vec<String> = Vec::new();
            let mut discarding: Option<tokio::task::JoinHandle<()>> = None;
            let mut deduper = Deduper::default();
            while let Some(entry) = entries.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                metrics().bus_received(Topic::Forward);
                match serde_json::from_slice::<Received>(&entry.data) {
                    Ok(received) if deduper.first(received.o, received.s) => Self {
                        inner: Arc::clone(&inner),
                    }
                    .on_rpc(received.rpc),
                    Ok(_) => tracing::debug!(id = %entry.id, "duplicate RPC entry; skipped"),
                    Err(error) => tracing::warn!(%error, "invalid RPC entry; skipped"),
                }
                taken.push(entry.id);
                let drained = entries.is_empty();
                if !drained && taken.len() < DISCARD_BATCH {
                    continue;
                }
                if let Some(previous) = discarding.take() {
                    if drained {
                        // Nothing else to do meanwhile: the last entries go too.
                        let _ = previous.await;
                    } else if !previous.is_finished() {
                        discarding = Some(previous);
                        continue;
                    }
                }
                let ids = std::mem::take(&mut taken);
                let bus = Arc::clone(&inner.bus);
                let topic = topic.clone();
                discarding = Some(tokio::spawn(async move {
                    if let Err(error) = bus.discard(&topic, &ids).await {
                        // They go with the topic's trim by age instead.
                        tracing::debug!(%error, "removing taken RPC entries");
                    }
                }));
            }
        });
        forwarder
    }

    /// The node stops (its sessions are closing): every WebSocket it bridges to another
    /// node's session is closed, the owner told (so that the client, reconnecting
    /// elsewhere, recovers its socket rather than finding it still connected).
    pub fn stop(&self) {
        self.inner.stopping.cancel();
    }

    /// Returns once the work left by closed sessions and bridges is done: answers to other
    /// nodes' forwarded requests (a closed session's pending poll gets its close packet),
    /// owner records deleted, bridges' closes sent. Call after [`stop`](Self::stop) and
    /// after closing the sessions, then flush the bus; bound the wait.
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Appends `rpc` to node `node`'s topic; `false` if the bus refused it.
    async fn send_to(&self, node: &str, rpc: &Rpc) -> bool {
        let bytes = match self.inner.encode(rpc) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "RPC entry not encoded");
                return false;
            }
        };
        let published = self
            .inner
            .bus
            .publish(&node_topic(node), Bytes::from(bytes))
            .await;
        metrics().bus_publish(Topic::Forward, published.is_ok());
        match published {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, %node, "RPC entry not sent");
                false
            }
        }
    }

    /// Handles one entry of this node's topic, in order (frames of a bridge must keep
    /// their order: they are queued here, not spawned).
    fn on_rpc(self, rpc: Rpc) {
        match rpc {
            Rpc::WsOpen { id, from, sid } => self.host(id, from, &sid),
            Rpc::WsIn { id, from, frame } => {
                let key = (from, id);
                let mut hosted = self.inner.hosted.lock();
                let close = frame == WsFrame::Close;
                let delivered = hosted
                    .get_mut(&key)
                    .is_some_and(|tx| tx.try_send(Ok(frame.into_message())).is_ok());
                if close || !delivered {
                    // Dropping the sender ends the owner's transport.
                    hosted.remove(&key);
                }
            }
            Rpc::WsOut { id, frame } => {
                let mut bridges = self.inner.bridges.lock();
                let close = frame == WsFrame::Close;
                let max = self.inner.config.max_queued_bytes;
                let delivered = bridges
                    .get(&id)
                    .is_some_and(|bridge| bridge.offer(frame, max));
                if close || !delivered {
                    if let Some(bridge) = bridges.remove(&id) {
                        if !delivered {
                            bridge.behind.cancel();
                        }
                    }
                }
            }
            Rpc::Res { id, body, error } => {
                let waiter = self.inner.pending.lock().remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(match error {
                        Some(code) => Err(error_from_code(code)),
                        None => Ok(body),
                    });
                }
            }
            Rpc::Release { id, from } => {
                let session = self.inner.serving.lock().get(&(from, id)).cloned();
                if let Some(session) = session {
                    session.release_poll();
                }
            }
            Rpc::Req {
                id,
                from,
                op,
                sid,
                binary,
                body,
            } => {
                metrics().forward_served.inc();
                // Registered before the poll is spawned: a release right behind the
                // request on the topic finds it.
                let serving = (op == Op::Poll)
                    .then(|| {
                        let session = sid.parse::<Sid>().ok()?;
                        let session = self.inner.sessions.get(session)?;
                        let key = (from.clone(), id);
                        self.inner.serving.lock().insert(key.clone(), session);
                        Some(Serving(Arc::clone(&self.inner), key))
                    })
                    .flatten();
                self.inner.tasks.clone().spawn(async move {
                    let result = self.serve(op, &sid, binary, &body).await;
                    drop(serving);
                    let (body, error) = match result {
                        Ok(body) => (body, None),
                        Err(error) => (None, Some(error_code(error))),
                    };
                    let reply = Rpc::Res { id, body, error };
                    match self.inner.encode(&reply) {
                        Ok(bytes) => {
                            let published = self
                                .inner
                                .bus
                                .publish(&node_topic(&from), Bytes::from(bytes))
                                .await;
                            metrics().bus_publish(Topic::Forward, published.is_ok());
                            if let Err(error) = published {
                                tracing::warn!(%error, %from, "RPC reply not sent");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "RPC reply not encoded"),
                    }
                });
            }
        }
    }

    /// Owner side: attaches a bridged client's WebSocket to session `sid` as an upgrade,
    /// exactly as a local WebSocket (the probe, `5`, then the session on it).
    fn host(self, id: u64, from: String, sid: &str) {
        let session = sid
            .parse::<Sid>()
            .ok()
            .and_then(|sid| self.inner.sessions.get(sid))
            .filter(|session| session.try_attach_upgrade());
        let Some(session) = session else {
            // As the reference server: the WebSocket opens and closes at once.
            self.inner.tasks.clone().spawn(async move {
                let close = Rpc::WsOut {
                    id,
                    frame: WsFrame::Close,
                };
                self.send_to(&from, &close).await;
            });
            return;
        };
        let (in_tx, in_rx) = futures::channel::mpsc::channel(BRIDGE_CAPACITY);
        let (out_tx, mut out_rx) = futures::channel::mpsc::channel::<WsMessage>(BRIDGE_CAPACITY);
        let key = (from.clone(), id);
        self.inner.hosted.lock().insert(key.clone(), in_tx);
        let pump = self.clone();
        self.inner.tasks.spawn(async move {
            while let Some(message) = out_rx.next().await {
                let Some(frame) = WsFrame::from_message(message) else {
                    continue;
                };
                let close = frame == WsFrame::Close;
                if !pump.send_to(&from, &Rpc::WsOut { id, frame }).await || close {
                    break;
                }
            }
            let close = Rpc::WsOut {
                id,
                frame: WsFrame::Close,
            };
            pump.send_to(&from, &close).await;
        });
        self.inner.tasks.clone().spawn(async move {
            websocket::upgrade_on(in_rx, out_tx, session).await;
            self.inner.hosted.lock().remove(&key);
        });
    }

    /// Serves a forwarded request on a session of this node.
    async fn serve(
        &self,
        op: Op,
        sid: &str,
        binary: bool,
        body: &str,
    ) -> Result<Option<String>, EngineError> {
        let session = sid
            .parse::<Sid>()
            .ok()
            .and_then(|sid| self.inner.sessions.get(sid))
            .ok_or(EngineError::UnknownSid)?;
        if session.expire_if_overdue() {
            return Err(EngineError::UnknownSid);
        }
        match op {
            Op::Poll => polling::poll(&session).await.map(Some),
            Op::Post => {
                let body = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .map_err(|_| EngineError::BadRequest)?;
                polling::post(&session, binary, Bytes::from(body))
                    .await
                    .map(|()| None)
            }
        }
    }

    /// The owner of `sid` in the directory. A directory that fails (after its own
    /// retries) is [`EngineError::Unavailable`]: the session may exist, and a `Session
    /// ID unknown` would end it for the client.
    async fn lookup(&self, sid: &str) -> Result<Option<String>, EngineError> {
        self.inner.directory.owner(sid).await.map_err(|error| {
            tracing::warn!(%error, "session directory unavailable");
            EngineError::Unavailable
        })
    }

    /// Sends a request to `sid`'s owner and waits (bounded) for its answer.
    async fn call(
        &self,
        op: Op,
        sid: &str,
        binary: bool,
        body: &[u8],
    ) -> Result<Option<String>, EngineError> {
        let Some(owner) = self.lookup(sid).await? else {
            return Err(EngineError::UnknownSid);
        };
        if owner == self.inner.config.node_id {
            // Ours in the directory but not in the table: it just closed.
            return Err(EngineError::UnknownSid);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Rpc::Req {
            id,
            from: self.inner.config.node_id.clone(),
            op,
            sid: sid.to_owned(),
            binary,
            body: base64::engine::general_purpose::STANDARD.encode(body),
        };
        let bytes = self
            .inner
            .encode(&request)
            .map_err(|_| EngineError::BadRequest)?;
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(id, tx);
        let _cleanup = RemovePending(&self.inner, id);
        let published = self
            .inner
            .bus
            .publish(&node_topic(&owner), Bytes::from(bytes))
            .await;
        metrics().bus_publish(Topic::Forward, published.is_ok());
        if published.is_ok() {
            metrics().forwarded(op == Op::Post);
        }
        if let Err(error) = published {
            // The session is there, the bus is not: the client may try again.
            tracing::warn!(%error, %owner, "forwarding failed");
            return Err(EngineError::Unavailable);
        }
        let limit = match op {
            Op::Poll => self.inner.config.poll_timeout,
            Op::Post => self.inner.config.post_timeout,
        };
        let answer = async {
            let mut rx = rx;
            if op == Op::Poll {
                tokio::select! {
                    answer = &mut rx => return answer,
                    () = self.inner.stopping.cancelled() => {
                        let release = Rpc::Release {
                            id,
                            from: self.inner.config.node_id.clone(),
                        };
                        self.send_to(&owner, &release).await;
                    }
                }
            }
            rx.await
        };
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            _ => {
                metrics().forward_timeouts.inc();
                tracing::debug!(%owner, %sid, "no answer from the owner in time");
                Err(EngineError::UnknownSid)
            }
        }
    }
}

/// Forgets a forwarded poll once it is served.
struct Serving(Arc<Inner>, (String, u64));

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.lock().remove(&self.1);
    }
}

/// Forgets a pending request when its caller stops waiting.
struct RemovePending<'a>(&'a Inner, u64);

impl Drop for RemovePending<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().remove(&self.1);
    }
}

#[async_trait]
impl Remote for Forwarder {
    async fn opened(&self, session: &Arc<Session>) {
        let sid = session.id().to_string();
        let config = &self.inner.config;
        if let Err(error) = self
            .inner
            .directory
            .register(&sid, &config.node_id, config.owner_ttl)
            .await
        {
            tracing::warn!(%error, %sid, "owner not recorded; other nodes will not find it");
        }
        let directory = Arc::clone(&self.inner.directory);
        let sessions = Arc::clone(&self.inner.sessions);
        let session = Arc::clone(session);
        let (node, ttl, refresh) = (config.node_id.clone(), config.owner_ttl, config.refresh);
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = session.closed() => break,
                    () = tokio::time::sleep(refresh) => {
                        if let Err(error) = directory.register(&sid, &node, ttl).await {
                            tracing::warn!(%error, %sid, "owner record not refreshed");
                        }
                    }
                }
            }
            // A session closed by its client lingers in the table for a moment, to answer
            // the client's GET that races the close with a noop: on any node.
            for _ in 0..LINGER_CHECKS {
                if sessions.get(session.id()).is_none() {
                    break;
                }
                tokio::time::sleep(LINGER_CHECK).await;
            }
            if let Err(error) = directory.unregister(&sid).await {
                tracing::debug!(%error, %sid, "owner record not deleted; it expires");
            }
        });
    }

    async fn poll(&self, sid: &str) -> Result<String, EngineError> {
        self.call(Op::Poll, sid, false, &[])
            .await
            .map(Option::unwrap_or_default)
    }

    async fn post(&self, sid: &str, binary: bool, body: Bytes) -> Result<(), EngineError> {
        self.call(Op::Post, sid, binary, &body).await.map(|_| ())
    }

    async fn owner(&self, sid: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .lookup(sid)
            .await?
            .filter(|owner| *owner != self.inner.config.node_id))
    }

    async fn bridge(&self, sid: String, owner: String, socket: WebSocket) {
        let tasks = self.inner.tasks.clone();
        tasks
            .track_future(self.run_bridge(sid, owner, socket))
            .await;
    }
}

impl Forwarder {
    /// [`Remote::bridge`], until either side ends or the node stops.
    async fn run_bridge(&self, sid: String, owner: String, socket: WebSocket) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let from = self.inner.config.node_id.clone();
        let (out_tx, mut out_rx) = mpsc::channel(BRIDGE_CAPACITY);
        let bytes = Arc::new(AtomicUsize::new(0));
        let behind = CancellationToken::new();
        let bridge = BridgeOut {
            frames: out_tx,
            bytes: Arc::clone(&bytes),
            behind: behind.clone(),
        };
        self.inner.bridges.lock().insert(id, bridge);
        let _cleanup = RemoveBridge(&self.inner, id);
        metrics().bridges.inc();
        metrics().bridges_open.inc();
        let (mut ws_tx, mut ws_rx) = socket.split();
        let open = Rpc::WsOpen {
            id,
            from: from.clone(),
            sid,
        };
        if !self.send_to(&owner, &open).await {
            let _ = ws_tx.send(WsMessage::Close(None)).await;
            return;
        }
        // The owner pings the client every ping_interval: silence for longer than a
        // forwarded poll may last means the owner is gone.
        let silence = self.inner.config.poll_timeout;
        let owner_gone = tokio::time::sleep(silence);
        tokio::pin!(owner_gone);
        loop {
            tokio::select! {
                () = self.inner.stopping.cancelled() => {
                    let gone = Rpc::WsIn { id, from: from.clone(), frame: WsFrame::Close };
                    self.send_to(&owner, &gone).await;
                    close_bridged(&mut ws_tx, 1001, CloseReason::ServerShutdown).await;
                    break;
                }
                () = &mut owner_gone => {
                    tracing::debug!(%owner, "bridged WebSocket: no frame from the owner in time");
                    let close = ws_tx.send(WsMessage::Close(None));
                    let _ = tokio::time::timeout(BRIDGE_CLOSE_WAIT, close).await;
                    break;
                }
                frame = ws_rx.next() => {
                    let frame = match frame {
                        Some(Ok(message)) => match WsFrame::from_message(message) {
                            Some(frame) => frame,
                            None => continue,
                        },
                        // The client went away (or sent more than `max_payload`).
                        Some(Err(_)) | None => WsFrame::Close,
                    };
                    let close = frame == WsFrame::Close;
                    let sent = self.send_to(&owner, &Rpc::WsIn { id, from: from.clone(), frame }).await;
                    if close || !sent {
                        break;
                    }
                }
                frame = out_rx.recv() => {
                    owner_gone.as_mut().reset(Instant::now() + silence);
                    let frame = frame.unwrap_or(WsFrame::Close);
                    let len = frame.len();
                    let message = frame.into_message();
                    let close = matches!(message, WsMessage::Close(_));
                    let sent = tokio::select! {
                        sent = ws_tx.send(message) => sent.is_ok(),
                        // The client does not read: what the owner sends piles up here, or,
                        // once the owner has nothing more to send (it closed the session
                        // for the pongs the client did not send), nothing would end the
                        // write.
                        () = behind.cancelled() => {
                            tracing::debug!(%owner, "bridged WebSocket: slow client, closed");
                            close_bridged(&mut ws_tx, 1008, CloseReason::SlowClient).await;
                            false
                        }
                        () = tokio::time::sleep(silence) => {
                            tracing::debug!(%owner, "bridged WebSocket: a write not taken in time");
                            close_bridged(&mut ws_tx, 1008, CloseReason::SlowClient).await;
                            false
                        }
                        () = self.inner.stopping.cancelled() => {
                            close_bridged(&mut ws_tx, 1001, CloseReason::ServerShutdown).await;
                            false
                        }
                    };
                    bytes.fetch_sub(len, Ordering::Relaxed);
                    if !sent {
                        let gone = Rpc::WsIn { id, from: from.clone(), frame: WsFrame::Close };
                        self.send_to(&owner, &gone).await;
                        break;
                    }
                    if close {
                        break;
                    }
                }
            }
        }
    }
}

/// Sends a bridged client the close frame for `reason`, if it takes it in time: behind it
/// may wait what a client that stopped reading never takes.
async fn close_bridged<W>(ws_tx: &mut W, code: u16, reason: CloseReason)
where
    W: futures::Sink<WsMessage> + Unpin,
{
    let frame = WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.as_str().into(),
    }));
    let _ = tokio::time::timeout(BRIDGE_CLOSE_WAIT, ws_tx.send(frame)).await;
}

/// Forgets a bridge when it ends.
struct RemoveBridge<'a>(&'a Inner, u64);

impl Drop for RemoveBridge<'_> {
    fn drop(&mut self) {
        metrics().bridges_open.dec();
        self.0.bridges.lock().remove(&self.1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(len: usize) -> WsFrame {
        WsFrame::Text { d: "x".repeat(len) }
    }

    #[test]
    fn a_bridged_client_is_offered_no_more_than_the_queue_holds() {
        let (frames, mut taken) = mpsc::channel(BRIDGE_CAPACITY);
        let bridge = BridgeOut {
            frames,
            bytes: Arc::new(AtomicUsize::new(0)),
            behind: CancellationToken::new(),
        };
        // A frame for a client with nothing waiting goes whatever its size.
        assert!(bridge.offer(text(500), 100));
        assert!(!bridge.offer(text(1), 100));
        // Written: the client is no longer behind.
        let frame = taken.try_recv().unwrap();
        bridge.bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        assert!(bridge.offer(text(60), 100));
        assert!(bridge.offer(text(40), 100));
        assert!(!bridge.offer(text(1), 100));
        assert_eq!(bridge.bytes.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn rpc_entries_round_trip_and_errors_keep_their_codes() {
        let req = Rpc::Req {
            id: 7,
            from: "b".into(),
            op: Op::Post,
            sid: "s".into(),
            binary: false,
            body: "NA==".into(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.starts_with(r#"{"t":"req","id":7"#), "{text}");
        assert!(matches!(
            serde_json::from_str::<Rpc>(&text).unwrap(),
            Rpc::Req {
                id: 7,
                op: Op::Post,
                ..
            }
        ));
        let release = Rpc::Release {
            id: 7,
            from: "b".into(),
        };
        let text = serde_json::to_string(&release).unwrap();
        assert_eq!(text, r#"{"t":"release","id":7,"from":"b"}"#);
        assert!(matches!(
            serde_json::from_str::<Rpc>(&text).unwrap(),
            Rpc::Release { id: 7, .. }
        ));
        for error in [
            EngineError::UnknownSid,
            EngineError::BadRequest,
            EngineError::PayloadTooLarge,
            EngineError::Forbidden,
        ] {
            assert_eq!(error_from_code(error_code(error)), error);
        }
        assert!(serde_json::from_slice::<Rpc>(b"\xff{").is_err());
    }

    #[test]
    fn stamped_entries_are_served_once_per_origin_and_unstamped_ones_always() {
        let frame = Rpc::WsIn {
            id: 3,
            from: "b".into(),
            frame: WsFrame::Text { d: "42".into() },
        };
        let text = serde_json::to_string(&Stamped {
            rpc: &frame,
            o: 9,
            s: 4,
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"t":"wsin","id":3,"from":"b","frame":{"k":"text","d":"42"},"o":9,"s":4}"#
        );
        let read: Received = serde_json::from_str(&text).unwrap();
        assert_eq!((read.o, read.s), (Some(9), Some(4)));
        assert!(matches!(read.rpc, Rpc::WsIn { id: 3, .. }));
        // From a node of an older version: no stamp.
        let old: Received = serde_json::from_str(r#"{"t":"release","id":7,"from":"b"}"#).unwrap();
        assert_eq!((old.o, old.s), (None, None));

        let mut deduper = Deduper::default();
        assert!(deduper.first(Some(9), Some(4)));
        assert!(
            !deduper.first(Some(9), Some(4)),
            "appended twice: served once"
        );
        assert!(deduper.first(Some(9), Some(5)));
        assert!(deduper.first(Some(8), Some(4)), "another origin");
        assert!(deduper.first(None, None));
        assert!(deduper.first(None, None), "unstamped: always served");
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_directory_forgets_expired_owners() {
        let directory = MemoryDirectory::new();
        directory
            .register("s", "a", Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(directory.owner("s").await.unwrap().as_deref(), Some("a"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(directory.owner("s").await.unwrap(), None);
        directory
            .register("s", "a", Duration::from_secs(1))
            .await
            .unwrap();
        directory.unregister("s").await.unwrap();
        assert_eq!(directory.owner("s").await.unwrap(), None);
    }
}

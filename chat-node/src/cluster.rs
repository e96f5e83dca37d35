//! The cross-node adapter: rooms and broadcasts for a cluster of chat nodes sharing a
//! [`Bus`].
//!
//! Membership stays local: each node indexes its own sockets in a [`LocalAdapter`]. A
//! broadcast is delivered to the matching local sockets at once, then published, encoded
//! once, on the namespace's topic `syd:{<nsp>}:stream` ([`stream_key`]); every node reads
//! that topic and delivers each entry from another node to its own matching sockets
//! (rooms and `except` are applied by the receiving node, on its own index).
//!
//! Why every node reads the whole namespace stream, rather than per-room channels that
//! would cost only the nodes with members: one reader per namespace is simple (no
//! subscribe/unsubscribe as rooms fill and empty, no race between a join and the first
//! message), keeps one order for all of a namespace's broadcasts, and is the log that
//! connection-state recovery will replay from (an offset is a stream id). The trade-off:
//! a node receives, decodes and drops the broadcasts of rooms it has no member in. With
//! few nodes that is cheap; per-room channels (sharded pub/sub) are the way out if it is
//! not (see `docs/sessions.md`).
//!
//! With connection-state recovery on ([`ClusterAdapterFactory::with_recovery`]), a
//! broadcast is appended first and delivered locally once its id is known, and every
//! event reaches its sockets with that id appended as its offset (see
//! [`crate::recovery`]); the stream is kept for the recovery window, and the adapter keeps
//! its sockets' recovery records up to date in the [`SessionStore`].
//!
//! A broadcast that announces a write of the application's (a chat message, which the
//! store appends to the room's history) may be appended by that write itself
//! ([`Adapter::broadcast_joint`], with [`Bus::joint_target`]): one round trip to Redis
//! for both. The entry is the same, and so is everything after the append.
//!
//! # One order for every node
//!
//! A node delivers its own broadcast to its own sockets only once its bus reader has
//! reached the broadcast's entry in the log ([`ReadProgress`]), as every other node does.
//! So on every node the local sockets see the namespace's broadcasts and room changes in
//! the log's order, wherever they were made: the reader, at an entry of this node whose
//! broadcast is waiting, waits in turn until that broadcast is delivered before it
//! delivers the next entry (the broadcast is in flight from before its append,
//! [`ReadProgress::in_flight`], so this holds too when the entry comes back before the
//! append's reply). That is what makes
//! [`sockets_leave`](crate::socketio::BroadcastOperator::sockets_leave) hold cluster-wide:
//! a leave is an entry of the same log ([`Leave`]), applied by each node's reader between
//! two broadcasts, and once its append has returned every later broadcast is after it in
//! the log; without the wait, a node could hand its own later broadcast to a local socket
//! before its reader had applied the leave. The cost: a node's own sockets get its
//! broadcasts one bus round trip later (the append's reply, then the entry coming back),
//! as the other nodes' sockets already did. A reader that does not get there within
//! [`ORDER_WAIT`] (stalled, the broker's live feed down) is not waited for longer:
//! delivery goes on, out of that order, and says so in the log; nor is a broadcast whose
//! append's reply takes that long by the reader.
//!
//! A join ([`Join`], from
//! [`sockets_join`](crate::socketio::BroadcastOperator::sockets_join)) is the same the
//! other way: an entry of the log that every node's reader applies in order, so that a
//! broadcast appended after it reaches the sockets it put in rooms, on every node.
//!
//! A leave may also be appended by a write of the application's, in the write's own
//! atomic step on the broker ([`del_sockets_joint`](Adapter::del_sockets_joint), with
//! [`Bus::log_target`]): the chat's creation of a room, with the leave of the sockets left
//! over from a room of that name that Redis lost, so that nothing that follows the
//! creation comes before the leave in the log. The creating node applies that leave to
//! its own sockets once its reader has reached it, as it delivers its own broadcasts.
//!
//! An entry ([`Entry`], a small binary format: `cluster/entry.rs`) holds the encoded
//! packet (text and attachments, as raw bytes), the rooms and `except`, and its origin: the
//! node id, a random instance id of this process, and a sequence number. A node skips its
//! own entries by instance id (reading only their origin), and drops an entry whose
//! sequence number it has recently seen from that instance (a publisher retry after a lost
//! reply may append an entry twice). Recently, not "at most the highest seen":
//! concurrent broadcasts of one node take their numbers and reach the bus in different
//! orders.
//!
//! One exception to the skip: a joint broadcast whose step got no answer from the broker
//! ([`JointOutcome::Unknown`]: Redis stalled past the response timeout, and may run the
//! script when it resumes) was delivered nowhere, so its sequence number is remembered
//! ([`Unanswered`]) and the reader delivers that entry of this node like another node's,
//! once, if it ever comes: every member gets the message exactly once, this node's too.
//! A joint leave without an answer is applied here the same way.

// Public for the fuzz targets in `fuzz/` alone: the bus's bytes come from Redis.
#[doc(hidden)]
pub mod entry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut as _, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub use entry::{Entry, EntryError, Join, Leave};

use crate::bus::{parse_id, Bus, BusEntry, LOG_START};
use crate::engineio::Sid;
use crate::metrics::{metrics, Topic};
use crate::recovery::{is_pid, Record, RecoveryConfig, SessionStore};
use crate::socketio::{
    Adapter, AdapterError, AdapterFactory, BroadcastOptions, Encoded, JointOutcome, JointStep,
    LocalAdapter, LocalSockets, Namespace, Replay, Room, TakenSession,
};

/// How many log entries one read of a replay fetches.
const REPLAY_PAGE: usize = 1000;
/// The most log entries a replay scans: a client that missed more than this much traffic
/// gets a new session rather than a node busy for seconds.
const MAX_REPLAY_SCAN: usize = 100_000;

/// The longest a broadcast waits for this node's reader to reach its entry before it is
/// delivered to the local sockets all the same (see the module's documentation).
pub const ORDER_WAIT: Duration = Duration::from_secs(1);

/// The bus topic (the Redis Stream key) of namespace `nsp`: `syd:{/chat}:stream`. The
/// braces are a Redis Cluster hash tag: every key of one namespace lands in one slot.
pub fn stream_key(nsp: &Namespace) -> String {
    format!("syd:{{{}}}:stream", nsp.as_str())
}

/// Makes a [`ClusterAdapter`] for each namespace, all on one bus.
pub struct ClusterAdapterFactory {
    bus: Arc<dyn Bus>,
    node: String,
    instance: u64,
    recovery: Option<(Arc<dyn SessionStore>, RecoveryConfig)>,
}

impl std::fmt::Debug for ClusterAdapterFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdapterFactory")
            .field("bus", &self.bus.kind())
            .field("node", &self.node)
            .field("instance", &self.instance)
            .finish()
    }
}

impl ClusterAdapterFactory {
    /// Adapters for node `node` on `bus`.
    pub fn new(bus: Arc<dyn Bus>, node: impl Into<String>) -> Self {
        Self {
            bus,
            node: node.into(),
            instance: rand::random(),
            recovery: None,
        }
    }

    /// Turns connection-state recovery on, with records in `store`.
    #[must_use]
    pub fn with_recovery(mut self, store: Arc<dyn SessionStore>, config: RecoveryConfig) -> Self {
        self.recovery = Some((store, config));
        self
    }
}

impl AdapterFactory for ClusterAdapterFactory {
    /// Also starts the namespace's bus reader (inside a Tokio runtime; outside one the
    /// adapter is local only, and says so in the log).
    fn create(&self, nsp: &Namespace, local: Weak<dyn LocalSockets>) -> Arc<dyn Adapter> {
        let (dropped, stop) = oneshot::channel();
        let topic = stream_key(nsp);
        let recovery = self.recovery.as_ref().map(|(store, config)| {
            // A margin over the window: a client recovering at the window's end still
            // finds its offset.
            self.bus.retain(&topic, config.window + config.refresh);
            Recovery {
                store: Arc::clone(store),
                config: *config,
                sessions: Mutex::new(HashMap::new()),
                pids: Mutex::new(HashMap::new()),
            }
        });
        let adapter = Arc::new(ClusterAdapter {
            local: Arc::new(LocalAdapter::new(local)),
            bus: Arc::clone(&self.bus),
            topic,
            node: self.node.clone(),
            instance: self.instance,
            seq: AtomicU64::new(0),
            last_offset: Arc::new(Mutex::new(LastOffset::default())),
            progress: Arc::new(ReadProgress::default()),
            unanswered: Arc::new(Unanswered::default()),
            recovery,
            _dropped: dropped,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let entries = self.bus.subscribe(&adapter.topic);
            let receiver = Receiver {
                local: Arc::downgrade(&adapter.local),
                me: self.instance,
                last_offset: Arc::clone(&adapter.last_offset),
                progress: Arc::clone(&adapter.progress),
                unanswered: Arc::clone(&adapter.unanswered),
                offsets: adapter.recovery.is_some(),
            };
            let weak = Arc::downgrade(&adapter);
            tokio::spawn(async move {
                tokio::select! {
                    () = receiver.run(entries) => {}
                    () = maintain(weak) => {}
                    // The adapter is gone: stop reading (which ends the subscription).
                    _ = stop => {}
                }
            });
        } else {
            adapter.progress.close();
            tracing::error!(nsp = %nsp, "no Tokio runtime: the namespace will not receive other nodes' broadcasts");
        }
        adapter
    }
}

/// The recovery side of an adapter.
struct Recovery {
    store: Arc<dyn SessionStore>,
    config: RecoveryConfig,
    /// This node's recoverable sockets.
    sessions: Mutex<HashMap<Sid, Open>>,
    /// The same, by pid.
    pids: Mutex<HashMap<String, Sid>>,
}

/// One of this node's recoverable sockets.
#[derive(Clone)]
struct Open {
    pid: String,
    /// The log offset when it connected.
    connected_at: String,
    /// Whom it belongs to, as the application said.
    identity: Option<String>,
}

/// Learns the log's current offset, then renews this node's recovery records until the
/// adapter is gone.
async fn maintain(adapter: Weak<ClusterAdapter>) {
    let Some(strong) = adapter.upgrade() else {
        return;
    };
    match strong.bus.last_id(&strong.topic).await {
        Ok(id) => advance(&strong.last_offset, &id, parse_id(&id)),
        Err(error) => tracing::warn!(topic = %strong.topic, %error, "log offset unknown"),
    }
    let Some(refresh) = strong.recovery.as_ref().map(|r| r.config.refresh) else {
        return std::future::pending().await;
    };
    drop(strong);
    let mut ticks = tokio::time::interval(refresh);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(adapter) = adapter.upgrade() else {
            return;
        };
        let Some(recovery) = &adapter.recovery else {
            return;
        };
        let pids: Vec<String> = recovery
            .sessions
            .lock()
            .values()
            .map(|open| open.pid.clone())
            .collect();
        let ttl = recovery.config.connected_ttl();
        if let Err(error) = recovery.store.touch(&pids, ttl).await {
            tracing::warn!(%error, sockets = pids.len(), "recovery records not renewed");
        }
    }
}

/// Rooms of this node's sockets, broadcasts to every node.
pub struct ClusterAdapter {
    local: Arc<LocalAdapter>,
    bus: Arc<dyn Bus>,
    topic: String,
    node: String,
    instance: u64,
    seq: AtomicU64,
    /// The last log entry this node has seen: where a new socket's replay would start.
    last_offset: Arc<Mutex<LastOffset>>,
    /// How far this node's reader has gone.
    progress: Arc<ReadProgress>,
    /// This node's joint entries with an unknown outcome, for the reader to apply.
    unanswered: Arc<Unanswered>,
    recovery: Option<Recovery>,
    /// Dropped with the adapter, which stops its bus reader.
    _dropped: oneshot::Sender<()>,
}

/// How far a node's bus reader has handled the log, and the broadcasts of this node
/// waiting for it to reach their entries.
#[derive(Default)]
struct ReadProgress {
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    /// The last entry handled.
    through: Option<(u64, u64)>,
    /// The reader has stopped: nobody waits for it any more.
    closed: bool,
    waiting: BTreeMap<(u64, u64), Vec<oneshot::Sender<()>>>,
    /// This node's broadcasts from before their append until their local delivery, by
    /// sequence number, with the reader waiting for each ([`ReadProgress::in_flight`]).
    in_flight: HashMap<u64, Vec<oneshot::Sender<()>>>,
    /// Broadcasts delivered without waiting for the reader (counted for the log).
    late: u64,
}

/// A broadcast of this node in flight ([`ReadProgress::in_flight`]): dropped once it is
/// delivered to the local sockets, or will not be.
struct InFlight {
    progress: Arc<ReadProgress>,
    seq: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Dropping the reader's sender wakes it.
        self.progress.state.lock().in_flight.remove(&self.seq);
    }
}

impl ReadProgress {
    /// The reader has handled every entry up to `key` (a malformed id changes nothing:
    /// the next entry's will).
    fn reached(&self, key: Option<(u64, u64)>) {
        let Some(key) = key else { return };
        let ready: Vec<oneshot::Sender<()>> = {
            let mut state = self.state.lock();
            if state.through >= Some(key) {
                return;
            }
            state.through = Some(key);
            let keys: Vec<(u64, u64)> = state.waiting.range(..=key).map(|(k, _)| *k).collect();
            keys.iter()
                .filter_map(|k| state.waiting.remove(k))
                .flatten()
                .collect()
        };
        for waiter in ready {
            // One that gave up waiting is gone; nothing to tell it.
            let _ = waiter.send(());
        }
    }

    /// The reader has stopped: release every waiter, now and later.
    fn close(&self) {
        let waiting = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        for waiter in waiting.into_values().flatten() {
            let _ = waiter.send(());
        }
    }

    /// This node's broadcast `seq` is about to be appended. When the reader reaches its
    /// entry, it wakes the broadcast waiting there ([`wait`](Self::wait)), then waits
    /// until the returned guard is dropped ([`delivered`](Self::delivered)) before it
    /// delivers the entries after it: else the woken task may deliver its broadcast after
    /// the reader has delivered a later entry of another node, and the local sockets see
    /// another order than the log's. The same holds when the reader gets the entry
    /// before the append's reply.
    fn in_flight(self: &Arc<Self>, seq: u64) -> InFlight {
        self.state.lock().in_flight.insert(seq, Vec::new());
        InFlight {
            progress: Arc::clone(self),
            seq,
        }
    }

    /// For the reader at this node's entry `seq`: resolves once its broadcast is
    /// delivered here; `None` when it is not in flight (delivered already, or never
    /// waiting for the reader: a leave, a broadcast appended late).
    fn delivered(&self, seq: u64) -> Option<oneshot::Receiver<()>> {
        let mut state = self.state.lock();
        let waiting = state.in_flight.get_mut(&seq)?;
        let (tx, rx) = oneshot::channel();
        waiting.push(tx);
        Some(rx)
    }

    /// Returns once the reader has handled the entry `key`, or after [`ORDER_WAIT`].
    async fn wait(&self, key: (u64, u64)) {
        let reached = {
            let mut state = self.state.lock();
            if state.closed || state.through >= Some(key) {
                return;
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.entry(key).or_default().push(tx);
            rx
        };
        if tokio::time::timeout(ORDER_WAIT, reached).await.is_ok() {
            return;
        }
        let late = {
            let mut state = self.state.lock();
            if let Some(waiters) = state.waiting.get_mut(&key) {
                waiters.retain(|tx| !tx.is_closed());
                if waiters.is_empty() {
                    state.waiting.remove(&key);
                }
            }
            state.late += 1;
            state.late
        };
        if late.is_power_of_two() {
            tracing::warn!(
                late,
                "the bus reader is behind: broadcasts delivered to this node's sockets before it read them, out of the log's order"
            );
        }
    }
}

/// Whether an encoded packet is an EVENT or BINARY_EVENT (which carry offsets).
fn is_event(packet: &Encoded) -> bool {
    packet.text.starts_with('2') || packet.text.starts_with('5')
}

/// The last log entry a node has seen, with its id as numbers: every entry read compares
/// with it, and parsing both ids each time was 1.4% of a node's instructions at chat load.
struct LastOffset {
    id: String,
    key: Option<(u64, u64)>,
}

impl Default for LastOffset {
    fn default() -> Self {
        Self {
            id: LOG_START.to_owned(),
            key: parse_id(LOG_START),
        }
    }
}

/// Moves `last` forward to `id`, whose [`parse_id`] is `key` (never back: the reader and
/// the publisher race).
fn advance(last: &Mutex<LastOffset>, id: &str, key: Option<(u64, u64)>) {
    let mut last = last.lock();
    if key > last.key {
        last.key = key;
        id.clone_into(&mut last.id);
    }
}

/// Whether a broadcast with `opts` reaches a socket in `rooms`.
fn reaches(opts: &BroadcastOptions, rooms: &HashSet<&str>) -> bool {
    (opts.rooms.is_empty() || opts.rooms.iter().any(|r| rooms.contains(r.as_str())))
        && !opts.except.iter().any(|r| rooms.contains(r.as_str()))
}

impl ClusterAdapter {
    /// The next number of this instance's entries (broadcasts and leaves share it: the
    /// readers' duplicate check goes by it).
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn owner(&self, sid: Sid) -> String {
        format!("{:x}:{sid}", self.instance)
    }

    /// The record of local socket `sid` as it is now.
    fn record(&self, sid: Sid, open: Open) -> Record {
        Record {
            sid: sid.to_string(),
            rooms: self
                .local
                .rooms(sid)
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            offset: open.connected_at,
            identity: open.identity,
        }
    }

    /// Writes the record of `sid` after its rooms changed, if it is recoverable.
    async fn rooms_changed(&self, sid: Sid) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        let Some(open) = recovery.sessions.lock().get(&sid).cloned() else {
            return;
        };
        let pid = open.pid.clone();
        let record = self.record(sid, open);
        let ttl = recovery.config.connected_ttl();
        if let Err(error) = recovery
            .store
            .update(&pid, &self.owner(sid), &record, ttl)
            .await
        {
            tracing::warn!(%sid, %error, "recovery record not updated");
        }
    }

    /// The entry of a broadcast of this node.
    fn entry(&self, packet: Encoded, opts: BroadcastOptions) -> Entry {
        Entry {
            node: self.node.clone(),
            instance: self.instance,
            seq: self.next_seq(),
            packet,
            opts,
        }
    }

    /// Appends a broadcast's encoded entry, then delivers it as
    /// [`broadcast`](Adapter::broadcast) says.
    async fn append_and_deliver(
        &self,
        bytes: Bytes,
        packet: &Encoded,
        opts: &BroadcastOptions,
    ) -> Result<(), AdapterError> {
        let appended = self.bus.append(&self.topic, bytes).await;
        metrics().bus_publish(Topic::Broadcast, appended.is_ok());
        match appended {
            Ok(Some(id)) => {
                self.deliver_appended(&id, packet, opts).await;
                Ok(())
            }
            Ok(None) => {
                self.local.deliver(packet, opts, None);
                Ok(())
            }
            Err(error) => {
                self.local.deliver(packet, opts, None);
                Err(AdapterError::Unavailable(error.to_string()))
            }
        }
    }

    /// Delivers a broadcast appended with id `id` to the local sockets, once this node's
    /// reader has reached it, with the id as the offset when recovery is on.
    async fn deliver_appended(&self, id: &str, packet: &Encoded, opts: &BroadcastOptions) {
        let key = parse_id(id);
        advance(&self.last_offset, id, key);
        if let Some(key) = key {
            self.progress.wait(key).await;
        }
        if self.recovery.is_none() {
            self.local.deliver(packet, opts, None);
        } else if is_event(packet) {
            self.local.deliver(&packet.with_offset(id), opts, key);
        } else {
            self.local.deliver(packet, opts, key);
        }
    }

    /// Takes this node's sockets that `opts` selects out of `rooms`, and updates their
    /// recovery records.
    async fn leave_here(&self, opts: &BroadcastOptions, rooms: &[Room]) {
        for sid in self.local.leave_selected(opts, rooms) {
            self.rooms_changed(sid).await;
        }
    }

    /// Appends a leave or join entry (`what`); `Ok` once it has its id.
    async fn append_room_change(&self, bytes: Bytes, what: &str) -> Result<(), AdapterError> {
        let appended = self.bus.append(&self.topic, bytes).await;
        metrics().bus_publish(Topic::Broadcast, appended.is_ok());
        match appended {
            Ok(Some(id)) => {
                advance(&self.last_offset, &id, parse_id(&id));
                Ok(())
            }
            Ok(None) => Err(AdapterError::Unavailable(format!(
                "bus unreachable: the other nodes get the {what} once it is back"
            ))),
            Err(error) => Err(AdapterError::Unavailable(error.to_string())),
        }
    }

    /// A joint broadcast whose entry cannot be split at its placeholder: the step alone,
    /// then the filled-in packet broadcast (which fails as it would have).
    async fn local_first(
        &self,
        packet: &Encoded,
        hole: std::ops::Range<usize>,
        opts: &BroadcastOptions,
        step: &dyn JointStep,
    ) -> Result<(), AdapterError> {
        match step.run(None, &[], &[]).await {
            // Without a target the step appended nothing: no entry can show up.
            JointOutcome::Declined | JointOutcome::Unknown => Ok(()),
            JointOutcome::Written(value) | JointOutcome::Appended { value, .. } => {
                self.broadcast(packet.splice(hole, &value), opts.clone())
                    .await
            }
        }
    }

    /// A leave of this node's for the log: the entry and its encoding.
    fn leave_entry(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(Leave, Bytes), AdapterError> {
        let leave = Leave {
            node: self.node.clone(),
            instance: self.instance,
            seq: self.next_seq(),
            opts,
            rooms,
        };
        let bytes = leave
            .encode()
            .map_err(|error| AdapterError::Unavailable(error.to_string()))?;
        Ok((leave, bytes))
    }
}

impl std::fmt::Debug for ClusterAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdapter")
            .field("topic", &self.topic)
            .field("node", &self.node)
            .field("local", &self.local)
            .finish()
    }
}

#[async_trait]
impl Adapter for ClusterAdapter {
    async fn add_all(&self, sid: Sid, rooms: Vec<Room>) -> Result<(), AdapterError> {
        self.local.join(sid, rooms);
        self.rooms_changed(sid).await;
        Ok(())
    }

    async fn del(&self, sid: Sid, room: Room) -> Result<(), AdapterError> {
        self.local.leave(sid, &room);
        self.rooms_changed(sid).await;
        Ok(())
    }

    async fn del_all(&self, sid: Sid) -> Result<(), AdapterError> {
        self.local.leave_all(sid);
        Ok(())
    }

    async fn rooms_of(&self, sid: Sid) -> Result<Vec<Room>, AdapterError> {
        Ok(self.local.rooms(sid))
    }

    /// Appends, then delivers locally once this node's reader has reached the entry (in
    /// the log's order, see the module's documentation), with the entry's id as the
    /// offset when recovery is on. When the bus is unreachable (the entry waits in its
    /// buffer, or was refused) the local sockets get it at once: there is no order to
    /// keep then. An error means the other nodes will not get it (the local sockets
    /// already have).
    async fn broadcast(&self, packet: Encoded, opts: BroadcastOptions) -> Result<(), AdapterError> {
        let entry = self.entry(packet, opts);
        let _in_flight = self.progress.in_flight(entry.seq);
        let Entry { packet, opts, .. } = &entry;
        match entry.encode() {
            Ok(bytes) => self.append_and_deliver(bytes, packet, opts).await,
            Err(error) => {
                self.local.deliver(packet, opts, None);
                Err(AdapterError::Unavailable(error.to_string()))
            }
        }
    }

    /// The entry is encoded with the placeholder, and the step gets the bytes on either
    /// side of it: with a [`joint_target`](Bus::joint_target) it appends the entry itself
    /// (one round trip to the broker for its write and the broadcast), and the broadcast
    /// is delivered as [`broadcast`](Adapter::broadcast) delivers an appended one. The
    /// entry is the one `broadcast` would have appended for the filled-in packet, byte for
    /// byte, so that nodes that append in two steps read it alike.
    async fn broadcast_joint(
        &self,
        packet: Encoded,
        hole: std::ops::Range<usize>,
        opts: BroadcastOptions,
        step: &dyn JointStep,
    ) -> Result<(), AdapterError> {
        let entry = self.entry(packet, opts);
        let _in_flight = self.progress.in_flight(entry.seq);
        let Entry { packet, opts, .. } = &entry;
        let bytes = match entry.encode() {
            Ok(bytes) => bytes,
            // Not encodable: what `broadcast` does for such a packet, after the write.
            Err(_) => return self.local_first(packet, hole, opts, step).await,
        };
        // The text is the entry's end: the placeholder's place in the entry follows.
        let at = bytes.len() - packet.text.len();
        let (Some(head), Some(tail)) = (bytes.get(..at + hole.start), bytes.get(at + hole.end..))
        else {
            return self.local_first(packet, hole, opts, step).await;
        };
        let target = self.bus.joint_target(&self.topic);
        match step.run(target.as_ref(), head, tail).await {
            JointOutcome::Declined => Ok(()),
            JointOutcome::Unknown => {
                // Remembered before the reader can meet the entry: it comes at the
                // earliest when the broker runs again, well after the step gave up.
                self.unanswered.remember(entry.seq);
                Ok(())
            }
            JointOutcome::Written(value) => {
                let mut filled = BytesMut::with_capacity(bytes.len() + value.len());
                filled.put_slice(head);
                filled.put_slice(value.as_bytes());
                filled.put_slice(tail);
                let packet = packet.splice(hole, &value);
                self.append_and_deliver(filled.freeze(), &packet, opts)
                    .await
            }
            JointOutcome::Appended { value, id } => {
                metrics().bus_publish(Topic::Broadcast, true);
                let packet = packet.splice(hole, &value);
                self.deliver_appended(&id, &packet, opts).await;
                Ok(())
            }
        }
    }

    /// This node's sockets leave at once (a broadcast of this node that starts afterwards
    /// finds them out); then the leave is appended to the log, where every other node's
    /// reader applies it in order: between the broadcasts appended before it, which may
    /// still reach the sockets, and those appended after it, which do not (their own
    /// node waits for its reader before delivering them). `Ok` only once the append
    /// has its id: with the bus unreachable the leave waits in the bus's buffer (the
    /// other nodes apply it when the bus is back), and the caller hears so.
    async fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), AdapterError> {
        self.leave_here(&opts, &rooms).await;
        let (_, bytes) = self.leave_entry(opts, rooms)?;
        self.append_room_change(bytes, "leave").await
    }

    /// The leave's entry goes to the step with the bus's [`log_target`](Bus::log_target)
    /// (it may overtake this node's queued entries: they come from before the step's
    /// write, which the leave is about). Appended by the step, the leave is applied here
    /// once this node's reader has reached it, as a broadcast of this node is delivered
    /// (and the reader waits for that before the next entry): in the log's order. Written
    /// without the entry, it is [`del_sockets`](Adapter::del_sockets). With no answer
    /// from the broker, this node's reader applies the entry if it shows up.
    async fn del_sockets_joint(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
        step: &dyn JointStep,
    ) -> Result<(), AdapterError> {
        let (leave, bytes) = self.leave_entry(opts, rooms)?;
        // Before the step: the entry may come back to the reader before the step returns.
        let in_flight = self.progress.in_flight(leave.seq);
        let target = self.bus.log_target(&self.topic);
        match step.run(target.as_ref(), &bytes, &[]).await {
            JointOutcome::Declined => Ok(()),
            JointOutcome::Unknown => {
                self.unanswered.remember(leave.seq);
                Ok(())
            }
            JointOutcome::Written(_) => {
                // Not in the log yet: nothing for the reader to wait for.
                drop(in_flight);
                self.leave_here(&leave.opts, &leave.rooms).await;
                self.append_room_change(bytes, "leave").await
            }
            JointOutcome::Appended { id, .. } => {
                metrics().bus_publish(Topic::Broadcast, true);
                let key = parse_id(&id);
                advance(&self.last_offset, &id, key);
                if let Some(key) = key {
                    self.progress.wait(key).await;
                }
                self.leave_here(&leave.opts, &leave.rooms).await;
                Ok(())
            }
        }
    }

    /// As [`del_sockets`](Adapter::del_sockets), the other way: this node's sockets join
    /// at once, every other node's reader puts its own in at the join's place in the log
    /// (before any broadcast appended after it).
    async fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: Vec<Room>,
    ) -> Result<(), AdapterError> {
        for sid in self.local.join_selected(&opts, &rooms) {
            self.rooms_changed(sid).await;
        }
        let join = Join {
            node: self.node.clone(),
            instance: self.instance,
            seq: self.next_seq(),
            opts,
            rooms,
        };
        let bytes = join
            .encode()
            .map_err(|error| AdapterError::Unavailable(error.to_string()))?;
        self.append_room_change(bytes, "join").await
    }

    /// This node's sockets only.
    async fn sockets(&self, opts: BroadcastOptions) -> Result<Vec<Sid>, AdapterError> {
        Ok(self.local.targets(&opts))
    }

    fn recovers(&self) -> bool {
        self.recovery.is_some()
    }

    async fn session_opened(
        &self,
        sid: Sid,
        pid: &str,
        identity: Option<&str>,
    ) -> Result<(), AdapterError> {
        let Some(recovery) = &self.recovery else {
            return Ok(());
        };
        let open = Open {
            pid: pid.to_owned(),
            connected_at: self.last_offset.lock().id.clone(),
            identity: identity.map(str::to_owned),
        };
        recovery.sessions.lock().insert(sid, open.clone());
        recovery.pids.lock().insert(pid.to_owned(), sid);
        let record = self.record(sid, open);
        recovery
            .store
            .put(
                pid,
                &self.owner(sid),
                &record,
                recovery.config.connected_ttl(),
            )
            .await
            .map_err(|error| AdapterError::Unavailable(error.to_string()))
    }

    async fn session_closed(&self, sid: Sid, recoverable: bool) -> Result<(), AdapterError> {
        let Some(recovery) = &self.recovery else {
            return Ok(());
        };
        let Some(open) = recovery.sessions.lock().remove(&sid) else {
            return Ok(());
        };
        let pid = open.pid.clone();
        recovery.pids.lock().remove(&pid);
        let owner = self.owner(sid);
        let result = if recoverable {
            let record = self.record(sid, open);
            recovery
                .store
                .update(&pid, &owner, &record, recovery.config.window)
                .await
                .map(|_| ())
        } else {
            recovery.store.remove(&pid, &owner).await
        };
        result.map_err(|error| AdapterError::Unavailable(error.to_string()))
    }

    async fn restore_session(&self, pid: &str, taken: TakenSession) -> Result<(), AdapterError> {
        let Some(recovery) = &self.recovery else {
            return Ok(());
        };
        let record = Record {
            sid: taken.sid.to_string(),
            rooms: taken.rooms.iter().map(|r| r.as_str().to_owned()).collect(),
            offset: taken.connected_at,
            identity: taken.identity,
        };
        recovery
            .store
            .put(pid, &self.owner(taken.sid), &record, recovery.config.window)
            .await
            .map_err(|error| AdapterError::Unavailable(error.to_string()))
    }

    async fn take_session(&self, pid: &str) -> Result<Option<TakenSession>, AdapterError> {
        let Some(recovery) = &self.recovery else {
            return Ok(None);
        };
        // Its socket is still connected here (the client came back before this node
        // noticed it was gone): a new session is safer than two sockets with one id.
        if !is_pid(pid) || recovery.pids.lock().contains_key(pid) {
            return Ok(None);
        }
        let record = recovery
            .store
            .take(pid)
            .await
            .map_err(|error| AdapterError::Unavailable(error.to_string()))?;
        Ok(record.and_then(|record| {
            Some(TakenSession {
                sid: record.sid.parse().ok()?,
                rooms: record.rooms.into_iter().map(Room::from).collect(),
                connected_at: record.offset,
                identity: record.identity,
            })
        }))
    }

    async fn missed(&self, after: &str, rooms: &[Room]) -> Result<Option<Replay>, AdapterError> {
        if self.recovery.is_none() {
            return Ok(None);
        }
        let rooms: HashSet<&str> = rooms.iter().map(Room::as_str).collect();
        let mut replay = Replay {
            packets: Vec::new(),
            through: parse_id(after),
        };
        let mut from = after.to_owned();
        let mut scanned = 0;
        loop {
            let page = self
                .bus
                .read_after(&self.topic, &from, REPLAY_PAGE)
                .await
                .map_err(|error| AdapterError::Unavailable(error.to_string()))?;
            let Some(page) = page else {
                return Ok(None);
            };
            let full = page.len() == REPLAY_PAGE;
            for BusEntry { id, data } in page {
                scanned += 1;
                replay.through = parse_id(&id);
                from.clone_from(&id);
                let Ok(entry) = Entry::decode(&data) else {
                    continue;
                };
                if reaches(&entry.opts, &rooms) && is_event(&entry.packet) {
                    replay.packets.push(entry.packet.with_offset(&id));
                }
            }
            if !full {
                return Ok(Some(replay));
            }
            if scanned >= MAX_REPLAY_SCAN {
                tracing::info!(
                    scanned,
                    "too much missed to replay; the client gets a new session"
                );
                return Ok(None);
            }
        }
    }
}

/// How long a joint broadcast without an answer is waited for ([`Unanswered`]): a broker
/// stalled for longer than this has its late entries skipped by this node, as before.
const UNANSWERED_FOR: Duration = Duration::from_secs(600);
/// The most joint broadcasts without an answer remembered at once (a broker stalled under
/// a busy node), the oldest forgotten first.
const MAX_UNANSWERED: usize = 10_000;

/// This node's joint broadcasts whose step got no answer from the broker
/// ([`JointOutcome::Unknown`]), by sequence number: the broker may still append their
/// entries, and then this node's reader delivers them to the local sockets, once. Bounded
/// in number and age: an entry that never comes (the step never ran) is forgotten.
#[derive(Default)]
struct Unanswered {
    /// Sequence numbers and when they were remembered, oldest first.
    seqs: Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
}

impl Unanswered {
    fn remember(&self, seq: u64) {
        let now = std::time::Instant::now();
        let mut seqs = self.seqs.lock();
        while seqs
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > UNANSWERED_FOR)
            || seqs.len() >= MAX_UNANSWERED
        {
            seqs.pop_front();
        }
        seqs.push_back((seq, now));
    }

    /// Whether the reader is to deliver this node's entry `seq` (forgotten from now on: a
    /// duplicate of the entry is not delivered again). Nearly always empty: one check.
    fn take(&self, seq: u64) -> bool {
        let mut seqs = self.seqs.lock();
        if seqs.is_empty() {
            return false;
        }
        let Some(at) = seqs.iter().position(|(s, _)| *s == seq) else {
            return false;
        };
        seqs.remove(at);
        true
    }
}

/// How many sequence numbers per publishing instance a reader remembers: a duplicate
/// (a retried batch) arrives within a few hundred entries of the original.
const DEDUP_WINDOW: usize = 4096;

/// The sequence numbers recently seen from one instance. A fast hash: the numbers are the
/// cluster's own (its nodes' instance ids and counters), nothing a client chooses.
#[derive(Default)]
pub(crate) struct Seen {
    set: HashSet<u64, foldhash::fast::RandomState>,
    order: std::collections::VecDeque<u64>,
}

impl Seen {
    /// Records `seq`; `false` when it was already there.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        if !self.set.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// Counts the entries a receiver could not read.
#[derive(Default)]
struct Skipped(u64);

impl Skipped {
    /// Warns at the 1st, 2nd, 4th, 8th… entry: a node of another version in the cluster
    /// (whose broadcasts this one cannot deliver) shows at the default log level, without
    /// a line per entry.
    fn note(&mut self, error: &EntryError, id: &str) {
        metrics().bus_skipped.inc();
        self.0 += 1;
        if self.0.is_power_of_two() {
            tracing::warn!(
                %error,
                %id,
                skipped = self.0,
                "bus entries skipped: from a node of another version, or malformed"
            );
        }
    }
}

/// Delivers the other instances' entries to the local sockets.
struct Receiver {
    local: Weak<LocalAdapter>,
    me: u64,
    last_offset: Arc<Mutex<LastOffset>>,
    progress: Arc<ReadProgress>,
    /// This node's entries to deliver all the same.
    unanswered: Arc<Unanswered>,
    /// Append each event's offset (recovery is on).
    offsets: bool,
}

/// What a receiver keeps between entries.
#[derive(Default)]
struct ReceiverState {
    seen: HashMap<u64, Seen, foldhash::fast::RandomState>,
    skipped: Skipped,
}

impl Receiver {
    /// Ends when the namespace is gone or the bus closes the subscription.
    async fn run(self, mut entries: mpsc::Receiver<BusEntry>) {
        let mut state = ReceiverState::default();
        while let Some(BusEntry { id, data }) = entries.recv().await {
            let key = parse_id(&id);
            advance(&self.last_offset, &id, key);
            let namespace_alive = self.handle(&id, key, &data, &mut state);
            // After the entry is applied: a broadcast of this node waiting for its own
            // entry finds every earlier one (a leave among them) done.
            self.progress.reached(key);
            // And before the next: that broadcast reaches the local sockets first.
            let delivered = match entry::origin(&data) {
                Ok((instance, seq)) if instance == self.me => self.progress.delivered(seq),
                _ => None,
            };
            if let Some(delivered) = delivered {
                // An error: the broadcast gave up (its guard is gone); nothing to wait for.
                let _ = tokio::time::timeout(ORDER_WAIT, delivered).await;
            }
            if !namespace_alive {
                break;
            }
        }
        self.progress.close();
    }

    /// Applies one entry; `false` when the namespace is gone.
    fn handle(
        &self,
        id: &str,
        key: Option<(u64, u64)>,
        data: &Bytes,
        state: &mut ReceiverState,
    ) -> bool {
        let (instance, seq) = match entry::origin(data) {
            Ok(origin) => origin,
            Err(error) => {
                state.skipped.note(&error, id);
                return true;
            }
        };
        // This node applied its own entries when it made them, except the broadcasts
        // whose append it never heard of.
        if instance == self.me && !self.unanswered.take(seq) {
            return true;
        }
        if !state.seen.entry(instance).or_default().insert(seq) {
            tracing::debug!(instance = %format_args!("{instance:x}"), seq, "duplicate bus entry; skipped");
            return true;
        }
        let Some(local) = self.local.upgrade() else {
            return false;
        };
        if entry::is_leave(data) {
            match Leave::decode(data) {
                // The recovery records of the sockets that left keep the room until they
                // are next written: an application re-checks what a recovery brings back
                // (the chat does, against the memberships).
                Ok(leave) => {
                    local.leave_selected(&leave.opts, &leave.rooms);
                }
                Err(error) => state.skipped.note(&error, id),
            }
            return true;
        }
        if entry::is_join(data) {
            match Join::decode(data) {
                // As for a leave, the recovery records follow when they are next written.
                Ok(join) => {
                    local.join_selected(&join.opts, &join.rooms);
                }
                Err(error) => state.skipped.note(&error, id),
            }
            return true;
        }
        let Entry { packet, opts, .. } = match Entry::decode(data) {
            Ok(entry) => entry,
            Err(error) => {
                state.skipped.note(&error, id);
                return true;
            }
        };
        // Another node's broadcast, read once (this node's own entries and duplicates
        // were skipped above), or one of this node's left to the reader.
        if instance != self.me {
            metrics().bus_received(Topic::Broadcast);
        }
        if self.offsets && is_event(&packet) {
            local.deliver(&packet.with_offset(id), &opts, key);
        } else {
            local.deliver(&packet, &opts, None);
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::bus::{MemoryBus, StreamTarget};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Sid, Encoded)>>, Mutex<Vec<(Sid, Room)>>);

    impl LocalSockets for Recorder {
        fn deliver(&self, sids: &[Sid], packet: &Encoded, _offset: Option<(u64, u64)>) {
            let mut got = self.0.lock();
            got.extend(sids.iter().map(|sid| (*sid, packet.clone())));
        }

        fn left(&self, sids: &[Sid], rooms: &[Room]) {
            let mut left = self.1.lock();
            for sid in sids {
                left.extend(rooms.iter().map(|room| (*sid, room.clone())));
            }
        }
    }

    fn node(bus: &MemoryBus, name: &str) -> (Arc<dyn Adapter>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let local = Arc::downgrade(&recorder) as Weak<dyn LocalSockets>;
        let factory = ClusterAdapterFactory::new(Arc::new(bus.clone()), name);
        (factory.create(&Namespace::root(), local), recorder)
    }

    /// Nodes a and b on one bus, with socket a1 on a, b1 and b2 on b; each socket is in
    /// its own room and in the rooms given for it.
    async fn two_nodes(rooms: [&[&str]; 3]) -> ([(Arc<dyn Adapter>, Arc<Recorder>); 2], [Sid; 3]) {
        let bus = MemoryBus::new();
        let nodes = [node(&bus, "a"), node(&bus, "b")];
        let sids = [Sid::random(), Sid::random(), Sid::random()];
        for ((sid, rooms), on) in sids.iter().zip(rooms).zip([0, 1, 1]) {
            let mut all = vec![Room::from(*sid)];
            all.extend(rooms.iter().map(|r| Room::from(*r)));
            nodes[on].0.add_all(*sid, all).await.unwrap();
        }
        (nodes, sids)
    }

    /// The sockets in `room`.
    fn to(room: &str) -> BroadcastOptions {
        BroadcastOptions {
            rooms: vec![room.into()],
            except: vec![],
        }
    }

    /// An EVENT packet.
    fn event() -> Encoded {
        Encoded {
            text: "2[\"m\"]".into(),
            attachments: vec![],
        }
    }

    async fn eventually(recorder: &Recorder, n: usize) -> Vec<(Sid, Encoded)> {
        for _ in 0..100 {
            if recorder.0.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recorder.0.lock().clone()
    }

    /// The sockets that left rooms, once there are `n` (or after a second).
    async fn eventually_left(recorder: &Recorder, n: usize) -> Vec<(Sid, Room)> {
        for _ in 0..100 {
            if recorder.1.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recorder.1.lock().clone()
    }

    #[test]
    fn the_stream_key_tags_the_namespace() {
        assert_eq!(stream_key(&Namespace::root()), "syd:{/}:stream");
        assert_eq!(
            stream_key(&Namespace::new("/chat").unwrap()),
            "syd:{/chat}:stream"
        );
    }

    #[tokio::test]
    async fn a_broadcast_reaches_room_members_on_every_node_except_the_excluded() {
        let ([(a, on_a), (_b, on_b)], [a1, b1, b2]) =
            two_nodes([&["red"], &["red"], &["red"]]).await;
        let packet = Encoded {
            text: "2[\"m\",{\"_placeholder\":true,\"num\":0}]".into(),
            attachments: vec![Bytes::from_static(b"\x00\xff")],
        };
        let opts = BroadcastOptions {
            rooms: vec!["red".into()],
            except: vec![a1.into(), b2.into()],
        };
        a.broadcast(packet.clone(), opts).await.unwrap();
        assert_eq!(eventually(&on_b, 1).await, vec![(b1, packet)]);
        // The sender's node delivered locally (to no one here) and skipped its own entry.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(on_a.0.lock().is_empty());
        assert_eq!(on_b.0.lock().len(), 1);
    }

    /// Once `del_sockets` has returned on one node, a broadcast that another node starts
    /// reaches none of the selected sockets, its own included (it waits for its reader
    /// to apply the leave), while the others still get it.
    #[tokio::test]
    async fn a_leave_is_applied_on_every_node_before_any_later_broadcast() {
        let ([(a, on_a), (b, on_b)], [a1, b1, b2]) =
            two_nodes([&["@u", "red"], &["@u", "red"], &["red"]]).await;
        a.del_sockets(to("@u"), vec!["red".into()]).await.unwrap();
        let packet = event();
        b.broadcast(packet.clone(), to("red")).await.unwrap();
        assert_eq!(on_b.0.lock().clone(), vec![(b2, packet)]);
        assert_eq!(on_a.1.lock().clone(), vec![(a1, Room::from("red"))]);
        assert_eq!(on_b.1.lock().clone(), vec![(b1, Room::from("red"))]);
        assert_eq!(b.rooms_of(b1).await.unwrap().len(), 2);
        assert!(on_a.0.lock().is_empty());
    }

    /// Once `add_sockets` has returned on one node, a broadcast that another node starts
    /// reaches the selected sockets on both nodes (that node's reader put its own in
    /// first), and only them.
    #[tokio::test]
    async fn a_join_is_applied_on_every_node_before_any_later_broadcast() {
        let ([(a, on_a), (b, on_b)], [a1, b1, _b2]) = two_nodes([&["@u"], &["@u"], &[]]).await;
        a.add_sockets(to("@u"), vec!["red".into()]).await.unwrap();
        assert!(a.rooms_of(a1).await.unwrap().contains(&Room::from("red")));
        let packet = event();
        b.broadcast(packet.clone(), to("red")).await.unwrap();
        assert_eq!(on_b.0.lock().clone(), vec![(b1, packet.clone())]);
        assert_eq!(eventually(&on_a, 1).await, vec![(a1, packet)]);
    }

    /// A joint step that stands for a write appending the entry itself: it appends it to
    /// the bus (or not: `Declined`), as a store's script would.
    struct AppendsItself {
        bus: MemoryBus,
        write: bool,
    }

    #[async_trait]
    impl JointStep for AppendsItself {
        async fn run(&self, _: Option<&StreamTarget>, head: &[u8], tail: &[u8]) -> JointOutcome {
            if !self.write {
                return JointOutcome::Declined;
            }
            let topic = stream_key(&Namespace::root());
            let entry = Bytes::from([head, tail].concat());
            match self.bus.append(&topic, entry).await {
                Ok(Some(id)) => JointOutcome::Appended {
                    value: String::new(),
                    id,
                },
                _ => JointOutcome::Declined,
            }
        }
    }

    /// The sockets in `room` but not in `except`.
    fn to_except(room: &str, except: &str) -> BroadcastOptions {
        BroadcastOptions {
            rooms: vec![room.into()],
            except: vec![except.into()],
        }
    }

    /// A leave whose entry the step appends with its write takes the selected sockets out
    /// on every node (this one once its reader has reached the entry), sparing those in
    /// `except`, before any later broadcast; a step that declines appends and takes out
    /// nothing.
    #[tokio::test]
    async fn a_joint_leave_is_applied_on_every_node_unless_its_step_declines() {
        let bus = MemoryBus::new();
        let (a, on_a) = node(&bus, "a");
        let (b, on_b) = node(&bus, "b");
        let [a1, a2, b1, b2] = [Sid::random(), Sid::random(), Sid::random(), Sid::random()];
        for (adapter, sid, marked) in [
            (&a, a1, false),
            (&a, a2, true),
            (&b, b1, false),
            (&b, b2, true),
        ] {
            let mut rooms = vec![Room::from(sid), "red".into()];
            if marked {
                rooms.push("%c/red".into());
            }
            adapter.add_all(sid, rooms).await.unwrap();
        }
        let declines = AppendsItself {
            bus: bus.clone(),
            write: false,
        };
        a.del_sockets_joint(to_except("red", "%c/red"), vec!["red".into()], &declines)
            .await
            .unwrap();
        assert!(a.rooms_of(a1).await.unwrap().contains(&Room::from("red")));

        let writes = AppendsItself {
            bus: bus.clone(),
            write: true,
        };
        a.del_sockets_joint(to_except("red", "%c/red"), vec!["red".into()], &writes)
            .await
            .unwrap();
        assert_eq!(on_a.1.lock().clone(), vec![(a1, Room::from("red"))]);
        let packet = event();
        b.broadcast(packet.clone(), to("red")).await.unwrap();
        assert_eq!(on_b.0.lock().clone(), vec![(b2, packet.clone())]);
        assert_eq!(on_b.1.lock().clone(), vec![(b1, Room::from("red"))]);
        assert_eq!(eventually(&on_a, 1).await, vec![(a2, packet)]);
    }

    /// A joint leave without an answer from the broker takes nothing out here at first;
    /// when its entry shows up in the log after all, this node's reader applies it.
    #[tokio::test]
    async fn an_unanswered_joint_leave_is_applied_here_when_its_entry_comes() {
        let bus = MemoryBus::new();
        let (a, on_a) = node(&bus, "a");
        let a1 = Sid::random();
        a.add_all(a1, vec![a1.into(), "red".into()]).await.unwrap();
        let step = NoAnswer::default();
        a.del_sockets_joint(to("red"), vec!["red".into()], &step)
            .await
            .unwrap();
        assert!(a.rooms_of(a1).await.unwrap().contains(&Room::from("red")));

        let topic = stream_key(&Namespace::root());
        bus.publish(&topic, late_entry(&step, "")).await.unwrap();
        assert_eq!(
            eventually_left(&on_a, 1).await,
            vec![(a1, Room::from("red"))]
        );
        assert!(!a.rooms_of(a1).await.unwrap().contains(&Room::from("red")));
    }

    /// A bus whose broker is down: entries are accepted into the buffer, without an id
    /// (as the Redis bus answers then).
    struct Down(MemoryBus);

    #[async_trait]
    impl Bus for Down {
        async fn publish(&self, _topic: &str, _entry: Bytes) -> Result<(), crate::bus::BusError> {
            Ok(())
        }

        async fn append(
            &self,
            _topic: &str,
            _entry: Bytes,
        ) -> Result<Option<String>, crate::bus::BusError> {
            Ok(None)
        }

        fn subscribe(&self, topic: &str) -> mpsc::Receiver<BusEntry> {
            self.0.subscribe(topic)
        }

        async fn read_after(
            &self,
            topic: &str,
            after: &str,
            limit: usize,
        ) -> Result<Option<Vec<BusEntry>>, crate::bus::BusError> {
            self.0.read_after(topic, after, limit).await
        }

        async fn last_id(&self, topic: &str) -> Result<String, crate::bus::BusError> {
            self.0.last_id(topic).await
        }

        fn retain(&self, topic: &str, window: Duration) {
            self.0.retain(topic, window);
        }

        fn session_store(&self) -> Arc<dyn SessionStore> {
            self.0.session_store()
        }

        async fn ping(&self) -> Result<(), crate::bus::BusError> {
            Err(crate::bus::BusError::Unavailable("down".into()))
        }

        fn kind(&self) -> &'static str {
            "down"
        }
    }

    /// With the broker down, the local sockets leave and get broadcasts at once, but the
    /// leave says that the other nodes were not told.
    #[tokio::test]
    async fn a_leave_the_bus_cannot_take_is_done_here_and_reported() {
        let recorder = Arc::new(Recorder::default());
        let local = Arc::downgrade(&recorder) as Weak<dyn LocalSockets>;
        let factory = ClusterAdapterFactory::new(Arc::new(Down(MemoryBus::new())), "a");
        let a = factory.create(&Namespace::root(), local);
        let [a1, a2] = [Sid::random(), Sid::random()];
        a.add_all(a1, vec![a1.into(), "@u".into(), "red".into()])
            .await
            .unwrap();
        a.add_all(a2, vec![a2.into(), "red".into()]).await.unwrap();
        let left = a.del_sockets(to("@u"), vec!["red".into()]).await;
        assert!(
            matches!(left, Err(AdapterError::Unavailable(_))),
            "{left:?}"
        );
        assert_eq!(recorder.1.lock().clone(), vec![(a1, Room::from("red"))]);
        let packet = event();
        a.broadcast(packet.clone(), to("red")).await.unwrap();
        assert_eq!(recorder.0.lock().clone(), vec![(a2, packet)]);
    }

    /// A joint step that got no answer from the broker: it keeps the entry's bytes, for
    /// the test to append as a broker that runs the step late would.
    #[derive(Default)]
    struct NoAnswer(Mutex<Option<(Vec<u8>, Vec<u8>)>>);

    #[async_trait]
    impl JointStep for NoAnswer {
        async fn run(&self, _: Option<&StreamTarget>, head: &[u8], tail: &[u8]) -> JointOutcome {
            *self.0.lock() = Some((head.to_vec(), tail.to_vec()));
            JointOutcome::Unknown
        }
    }

    /// Its entry with `value` in the hole.
    fn late_entry(step: &NoAnswer, value: &str) -> Bytes {
        let (head, tail) = step.0.lock().clone().unwrap();
        [head.as_slice(), value.as_bytes(), tail.as_slice()]
            .concat()
            .into()
    }

    /// A joint broadcast without an answer is delivered nowhere at first; when its entry
    /// shows up in the log after all, this node's reader delivers it to the local sockets
    /// like another node's, once (a duplicate of it is not), while its other own entries
    /// are still skipped.
    #[tokio::test]
    async fn an_unanswered_joint_broadcast_is_delivered_here_when_its_entry_comes() {
        let bus = MemoryBus::new();
        let (a, on_a) = node(&bus, "a");
        let a1 = Sid::random();
        a.add_all(a1, vec![a1.into(), "red".into()]).await.unwrap();
        let packet = Encoded {
            text: "2[\"m\",\"HOLE\"]".into(),
            attachments: vec![],
        };
        let step = NoAnswer::default();
        a.broadcast_joint(packet.clone(), 7..11, to("red"), &step)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(on_a.0.lock().is_empty());

        let topic = stream_key(&Namespace::root());
        let late = late_entry(&step, "1-0");
        bus.publish(&topic, late.clone()).await.unwrap();
        bus.publish(&topic, late).await.unwrap();
        // One of its own broadcasts that was delivered already: skipped as ever.
        a.broadcast(event(), to("red")).await.unwrap();
        let got: Vec<String> = eventually(&on_a, 2)
            .await
            .into_iter()
            .map(|(_, p)| p.text)
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(got, ["2[\"m\",\"1-0\"]", "2[\"m\"]"]);
        assert_eq!(on_a.0.lock().len(), 2);
    }

    #[tokio::test]
    async fn duplicates_and_garbage_on_the_bus_are_skipped() {
        let bus = MemoryBus::new();
        let (b, on_b) = node(&bus, "b");
        let b1 = Sid::random();
        b.add_all(b1, vec![b1.into()]).await.unwrap();
        let entry = |seq: u64, text: &str| {
            Entry {
                node: "a".into(),
                instance: 7,
                seq,
                packet: Encoded {
                    text: text.into(),
                    attachments: vec![],
                },
                opts: BroadcastOptions::default(),
            }
            .encode()
            .unwrap()
        };
        let topic = stream_key(&Namespace::root());
        let seven = entry(7, "2[\"truncated\"]");
        for bytes in [
            entry(1, "2[\"one\"]"),
            entry(1, "2[\"one again\"]"),
            Bytes::from_static(b"not an entry"),
            // An entry of the earlier JSON format.
            Bytes::from_static(br#"{"node":"a","instance":7,"seq":9,"text":"2[]","opts":{"rooms":[],"except":[]}}"#),
            seven.slice(..30),
            // Concurrent broadcasts of one node reach the bus out of their order.
            entry(3, "2[\"three\"]"),
            entry(2, "2[\"two\"]"),
        ] {
            bus.publish(&topic, bytes).await.unwrap();
        }
        let got: Vec<String> = eventually(&on_b, 3)
            .await
            .into_iter()
            .map(|(_, p)| p.text)
            .collect();
        assert_eq!(got, ["2[\"one\"]", "2[\"three\"]", "2[\"two\"]"]);
    }
}

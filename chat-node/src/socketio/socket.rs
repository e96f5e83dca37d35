//! One Socket.IO socket: a client's membership of one namespace. It emits events (with or
//! without an ack), dispatches the client's events to the handlers the application
//! registered, joins and leaves rooms, and disconnects.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};

use super::ack::{self, AckError, AckSender, Acks};
use super::adapter::{AdapterError, Room};
use super::broadcast::BroadcastOperator;
use super::data::Data;
use super::namespace::NamespaceInner;
use super::packet::{ConnectReply, Encoded, Namespace, Packet, RESERVED_EVENTS};
use crate::engineio::{CloseReason, Message, SendError, Session, Sid, Transport};

/// Why a socket disconnected (the reference server's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client's connection closed (or it sent an Engine.IO close packet).
    TransportClose,
    /// The client's connection misbehaved.
    TransportError,
    /// The client stopped answering pings.
    PingTimeout,
    /// The client sent something that is not a packet.
    ParseError,
    /// The server closed the client's connection.
    ForcedClose,
    /// The server is shutting down.
    ServerShuttingDown,
    /// The server closed the connection for a protocol error or a missing CONNECT.
    ForcedServerClose,
    /// The client left the namespace.
    ClientNamespaceDisconnect,
    /// The server made the socket leave the namespace.
    ServerNamespaceDisconnect,
}

impl DisconnectReason {
    /// The reason as the reference server names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::ForcedClose => "forced close",
            Self::ServerShuttingDown => "server shutting down",
            Self::ForcedServerClose => "forced server close",
            Self::ClientNamespaceDisconnect => "client namespace disconnect",
            Self::ServerNamespaceDisconnect => "server namespace disconnect",
        }
    }
}

impl DisconnectReason {
    /// Whether a client may recover its state after it (the reference server's
    /// `RECOVERABLE_DISCONNECT_REASONS`): not when either side left on purpose.
    pub fn is_recoverable(self) -> bool {
        !matches!(
            self,
            Self::ClientNamespaceDisconnect | Self::ServerNamespaceDisconnect
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<CloseReason> for DisconnectReason {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::ClientClose | CloseReason::TransportClose => Self::TransportClose,
            // The reference server has no outbound limit: the nearest of its reasons.
            CloseReason::TransportError | CloseReason::SlowClient => Self::TransportError,
            CloseReason::PingTimeout => Self::PingTimeout,
            CloseReason::ParseError => Self::ParseError,
            CloseReason::ForcedClose => Self::ForcedClose,
            CloseReason::ServerShutdown => Self::ServerShuttingDown,
        }
    }
}

/// Why an emit failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The event name is reserved (`connect`, `disconnect`, …).
    #[error("reserved event name {0:?}")]
    ReservedEvent(String),
    /// The socket is disconnected.
    #[error("the socket is disconnected")]
    Disconnected,
    /// The client reads too slowly; its connection has been closed.
    #[error("the client's queue is full")]
    QueueFull,
    /// A placeholder to fill in ([`BroadcastOperator::emit_joint`]) is not in the
    /// encoded packet exactly once.
    ///
    /// [`BroadcastOperator::emit_joint`]: super::BroadcastOperator::emit_joint
    #[error("the placeholder is not in the packet exactly once")]
    Placeholder,
    /// The adapter failed to broadcast.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

impl From<SendError> for EmitError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Closed => Self::Disconnected,
            SendError::QueueFull => Self::QueueFull,
        }
    }
}

/// Checks that an application may emit `event`.
pub(crate) fn check_event(event: &str) -> Result<(), EmitError> {
    if RESERVED_EVENTS.contains(&event) {
        Err(EmitError::ReservedEvent(event.to_owned()))
    } else {
        Ok(())
    }
}

/// What runs when the client emits an event: an async function of the socket, the
/// arguments, and the ack when the client asked for one.
///
/// Handlers of one connection start in the order the events arrive and run concurrently
/// on the connection's task (like JavaScript handlers on the event loop): awaiting inside
/// a handler, even an ack from the same client, never blocks the connection.
pub trait EventHandler: Send + Sync + 'static {
    /// Starts the handler.
    fn call(
        &self,
        socket: SocketRef,
        args: Vec<Data>,
        ack: Option<AckSender>,
    ) -> BoxFuture<'static, ()>;
}

impl<F, Fut> EventHandler for F
where
    F: Fn(SocketRef, Vec<Data>, Option<AckSender>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    fn call(
        &self,
        socket: SocketRef,
        args: Vec<Data>,
        ack: Option<AckSender>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self(socket, args, ack))
    }
}

type DisconnectHandler = Box<dyn FnOnce(SocketRef, DisconnectReason) + Send>;

/// Where a socket is in its life.
enum Phase {
    /// The connect hook runs; what the socket emits waits for the CONNECT reply (with the
    /// offset of the broadcast it belongs to, if any).
    Connecting(Vec<(Option<(u64, u64)>, Message)>),
    Connected,
    Disconnected(DisconnectReason),
}

/// Connection-state recovery of one socket.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// The private session id, when the namespace recovers states.
    pub(crate) pid: Option<String>,
    /// Whether this socket took over a previous one's state.
    pub(crate) recovered: bool,
    /// The missed broadcasts, sent before the CONNECT reply.
    pub(crate) replay: Vec<Encoded>,
    /// Broadcasts at or before this offset were in the replay.
    pub(crate) replayed_through: Option<(u64, u64)>,
}

/// A socket; used through [`SocketRef`].
pub struct Socket {
    id: Sid,
    pid: Option<String>,
    recovered: bool,
    /// The replay not sent yet, then nothing.
    replay: Mutex<Vec<Encoded>>,
    replayed_through: Mutex<Option<(u64, u64)>>,
    /// Whom the application says the socket belongs to; recorded for recovery.
    identity: Mutex<Option<String>>,
    ns: Arc<NamespaceInner>,
    session: Arc<Session>,
    auth: Option<Map<String, Value>>,
    phase: Mutex<Phase>,
    handlers: RwLock<HashMap<String, Arc<dyn EventHandler>>>,
    /// Takes events no handler is registered for (see [`SocketRef::on_other`]).
    other: RwLock<Option<Arc<dyn EventHandler>>>,
    on_disconnect: Mutex<Vec<DisconnectHandler>>,
    acks: Acks,
}

/// A shared handle to a socket; cheap to clone.
#[derive(Clone)]
pub struct SocketRef(Arc<Socket>);

impl Deref for SocketRef {
    type Target = Socket;

    fn deref(&self) -> &Socket {
        &self.0
    }
}

impl fmt::Debug for SocketRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id)
            .field("nsp", self.ns.name())
            .field("session", &self.session.id())
            .finish()
    }
}

impl SocketRef {
    pub(crate) fn with_id(
        ns: Arc<NamespaceInner>,
        session: Arc<Session>,
        auth: Option<Map<String, Value>>,
        id: Sid,
        recovery: Recovery,
    ) -> Self {
        Self(Arc::new(Socket {
            id,
            pid: recovery.pid,
            recovered: recovery.recovered,
            replay: Mutex::new(recovery.replay),
            replayed_through: Mutex::new(recovery.replayed_through),
            identity: Mutex::new(None),
            ns,
            session,
            auth,
            phase: Mutex::new(Phase::Connecting(Vec::new())),
            handlers: RwLock::new(HashMap::new()),
            other: RwLock::new(None),
            on_disconnect: Mutex::new(Vec::new()),
            acks: Acks::default(),
        }))
    }

    /// Registers the handler of `event` (replacing any previous one).
    pub fn on(&self, event: impl Into<String>, handler: impl EventHandler) {
        self.handlers
            .write()
            .insert(event.into(), Arc::new(handler));
    }

    /// Registers the handler of every event that has none of its own: without one, such an
    /// event is dropped (as the reference server does), and a client waiting for its ack
    /// waits until its own timeout.
    pub fn on_other(&self, handler: impl EventHandler) {
        *self.other.write() = Some(Arc::new(handler));
    }

    /// Registers a function to call when the socket disconnects, or when the client goes
    /// away while the connect hook that registered it still runs (the hook is dropped at
    /// its next await: what it set up before is for this function to undo).
    pub fn on_disconnect(
        &self,
        handler: impl FnOnce(SocketRef, DisconnectReason) + Send + 'static,
    ) {
        self.on_disconnect.lock().push(Box::new(handler));
    }

    /// Emits an event to the client (a BINARY_EVENT when `args` hold binary). During the
    /// connect hook, it is sent right after the CONNECT reply.
    pub fn emit(&self, event: &str, args: Vec<Data>) -> Result<(), EmitError> {
        check_event(event)?;
        self.send_packet(&Packet::event(self.ns.name().clone(), event, args, None))
    }

    /// Emits an event and waits up to `timeout` for the client's ack.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        args: Vec<Data>,
        timeout: Duration,
    ) -> Result<Vec<Data>, AckError> {
        check_event(event)?;
        let (id, rx) = self.acks.register().ok_or(EmitError::Disconnected)?;
        let packet = Packet::event(self.ns.name().clone(), event, args, Some(id));
        if let Err(error) = self.send_packet(&packet) {
            self.acks.forget(id);
            return Err(error.into());
        }
        ack::wait(&self.acks, id, rx, timeout).await
    }

    /// Adds the socket to a room.
    pub async fn join(&self, room: impl Into<Room>) -> Result<(), AdapterError> {
        self.ns.adapter().add_all(self.id, vec![room.into()]).await
    }

    /// Adds the socket to several rooms at once: no leave of the adapter's comes between
    /// them.
    pub async fn join_all(&self, rooms: Vec<Room>) -> Result<(), AdapterError> {
        self.ns.adapter().add_all(self.id, rooms).await
    }

    /// Removes the socket from a room.
    pub async fn leave(&self, room: impl Into<Room>) -> Result<(), AdapterError> {
        self.ns.adapter().del(self.id, room.into()).await
    }

    /// The rooms the socket is in (its own room included).
    pub async fn rooms(&self) -> Result<Vec<Room>, AdapterError> {
        self.ns.adapter().rooms_of(self.id).await
    }

    /// A broadcast to the sockets in `room`, except this one.
    pub fn to(&self, room: impl Into<Room>) -> BroadcastOperator {
        self.broadcast().to(room)
    }

    /// A broadcast to every socket of the namespace, except this one.
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator::new(Arc::clone(&self.ns)).except(self.id)
    }

    /// Makes the socket leave its namespace (the client gets a DISCONNECT; its connection
    /// stays open).
    pub fn disconnect(&self) {
        if !self.is_connected() {
            return;
        }
        let _ = self.send_packet(&Packet::disconnect(self.ns.name().clone()));
        self.closed(DisconnectReason::ServerNamespaceDisconnect);
    }

    /// Closes the client's whole connection, after what is queued for it.
    pub fn close_connection(&self) {
        self.session.disconnect();
    }

    /// Sends a packet to the client (buffered during the connect hook).
    pub(crate) fn send_packet(&self, packet: &Packet) -> Result<(), EmitError> {
        self.send_encoded(packet.encode())
    }

    /// Sends an encoded packet to the client (buffered during the connect hook).
    pub(crate) fn send_encoded(&self, encoded: Encoded) -> Result<(), EmitError> {
        self.send_at(encoded.messages(), None)?;
        crate::metrics::metrics().packets_sent.inc();
        Ok(())
    }

    /// Sends a broadcast (its messages, shared with the other sockets it goes to) at
    /// `offset` in the namespace log, unless the socket's replay already had it.
    ///
    /// Not counted in `socketio_packets_sent_total` here: the caller counts a broadcast's
    /// deliveries once for all its sockets.
    pub(crate) fn send_broadcast(
        &self,
        messages: &[Message],
        offset: Option<(u64, u64)>,
    ) -> Result<(), EmitError> {
        if self.replayed(offset) {
            return Ok(());
        }
        self.send_at(messages.iter().cloned(), offset)
    }

    fn send_at(
        &self,
        messages: impl Iterator<Item = Message>,
        offset: Option<(u64, u64)>,
    ) -> Result<(), EmitError> {
        let mut phase = self.phase.lock();
        match &mut *phase {
            Phase::Connecting(buffer) => {
                buffer.extend(messages.map(|m| (offset, m)));
                Ok(())
            }
            Phase::Connected => Ok(self.session.send_all(messages)?),
            Phase::Disconnected(_) => Err(EmitError::Disconnected),
        }
    }

    /// Whether a broadcast at `offset` was already in this socket's replay.
    fn replayed(&self, offset: Option<(u64, u64)>) -> bool {
        matches!((offset, *self.replayed_through.lock()), (Some(at), Some(through)) if at <= through)
    }

    /// Sets the replay of a recovering socket, which may have buffered some of the same
    /// broadcasts meanwhile: those are dropped.
    pub(crate) fn set_replay(&self, packets: Vec<Encoded>, through: Option<(u64, u64)>) {
        if let Phase::Connecting(buffer) = &mut *self.phase.lock() {
            buffer.retain(
                |(offset, _)| !matches!((offset, through), (Some(at), Some(t)) if *at <= t),
            );
        }
        *self.replay.lock() = packets;
        *self.replayed_through.lock() = through;
    }

    /// The connect hook accepted the socket: the missed broadcasts of a recovered socket
    /// (the client buffers them until the reply), the CONNECT reply, then what the hook
    /// emitted and what was broadcast meanwhile.
    pub(crate) fn accept(&self) -> Result<(), EmitError> {
        let reply = Packet::connect_reply(
            self.ns.name().clone(),
            &ConnectReply {
                sid: self.id.to_string(),
                pid: self.pid.clone(),
            },
        )
        .encode();
        let replay = std::mem::take(&mut *self.replay.lock());
        let mut phase = self.phase.lock();
        let Phase::Connecting(buffer) = std::mem::replace(&mut *phase, Phase::Connected) else {
            return Err(EmitError::Disconnected);
        };
        // On failure the socket stays "connected" for the caller to close it properly.
        let messages = replay
            .iter()
            .flat_map(Encoded::messages)
            .chain(reply.messages())
            .chain(buffer.into_iter().map(|(_, m)| m));
        self.session.send_all(messages)?;
        // The reply and the replay; what was buffered was counted when it was sent.
        crate::metrics::metrics()
            .packets_sent
            .add(1 + replay.len() as u64);
        Ok(())
    }

    /// The connect hook refused the socket: nothing it emitted is sent.
    pub(crate) fn reject(&self) {
        *self.phase.lock() = Phase::Disconnected(DisconnectReason::ServerNamespaceDisconnect);
        self.acks.close();
        self.ns.remove(self.id);
        self.forget_membership(false);
    }

    /// The socket is disconnected: it leaves its namespace and rooms, its pending acks
    /// fail, and the disconnect handlers run.
    pub(crate) fn closed(&self, reason: DisconnectReason) {
        self.end(reason, reason.is_recoverable());
    }

    /// The client went away while the connect hook ran (the hook is dropped): as for a
    /// refusal nothing is sent and no recovery state is kept (the client never got this
    /// socket's CONNECT reply, so never its pid), but the disconnect handlers the hook
    /// registered before it was dropped run, so that what the hook set up for the socket
    /// (presence, sessions) is undone.
    pub(crate) fn abandoned(&self, reason: DisconnectReason) {
        self.end(reason, false);
    }

    fn end(&self, reason: DisconnectReason, recoverable: bool) {
        {
            let mut phase = self.phase.lock();
            if matches!(*phase, Phase::Disconnected(_)) {
                return;
            }
            *phase = Phase::Disconnected(reason);
        }
        tracing::debug!(sid = %self.id, nsp = %self.ns.name(), %reason, "socket disconnected");
        self.acks.close();
        self.ns.remove(self.id);
        self.forget_membership(recoverable);
        let handlers = std::mem::take(&mut *self.on_disconnect.lock());
        for handler in handlers {
            handler(self.clone(), reason);
        }
    }

    /// Leaves every room; first records the socket's state for recovery when
    /// `recoverable` (or forgets it).
    fn forget_membership(&self, recoverable: bool) {
        let adapter = Arc::clone(self.ns.adapter());
        let id = self.id;
        tokio::spawn(async move {
            if let Err(error) = adapter.session_closed(id, recoverable).await {
                tracing::warn!(sid = %id, %error, "could not record a socket's state for recovery");
            }
            if let Err(error) = adapter.del_all(id).await {
                tracing::warn!(sid = %id, %error, "could not remove a socket from its rooms");
            }
        });
    }

    /// The client emitted an event: the handler's future, if there is a handler.
    pub(crate) fn dispatch(
        &self,
        event: &str,
        args: Vec<Data>,
        ack_id: Option<u64>,
    ) -> Option<BoxFuture<'static, ()>> {
        let handler = self.handlers.read().get(event).cloned();
        let ack = ack_id.map(|id| AckSender::new(self.clone(), id));
        let Some(handler) = handler else {
            tracing::trace!(sid = %self.id, event, "no handler");
            let other = self.other.read().clone()?;
            return Some(other.call(self.clone(), args, ack));
        };
        Some(handler.call(self.clone(), args, ack))
    }

    /// The client acknowledged event `id`.
    pub(crate) fn on_ack(&self, id: u64, args: Vec<Data>) {
        self.acks.resolve(id, args);
    }
}

impl Socket {
    /// The socket id (not the Engine.IO session id).
    pub fn id(&self) -> Sid {
        self.id
    }

    /// The private session id a client may recover this socket's state with, when the
    /// namespace recovers states.
    pub fn pid(&self) -> Option<&str> {
        self.pid.as_deref()
    }

    /// Whether this socket took over the state (id, rooms, missed broadcasts) of a
    /// previous connection of its client.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Says whom the socket belongs to (a user id), for connection-state recovery: set it
    /// in the connect hook, and it is recorded with the socket's state, so that the
    /// namespace's [`RecoveryCheck`](super::namespace::RecoveryCheck) can refuse a
    /// recovery by someone else.
    pub fn set_identity(&self, identity: impl Into<String>) {
        *self.identity.lock() = Some(identity.into());
    }

    /// Whom the application said the socket belongs to.
    pub fn identity(&self) -> Option<String> {
        self.identity.lock().clone()
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        self.ns.name()
    }

    /// The auth payload of the client's CONNECT, if it sent one.
    pub fn auth(&self) -> Option<&Map<String, Value>> {
        self.auth.as_ref()
    }

    /// The Engine.IO session that carries the socket.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The transport the client is on now.
    pub fn transport(&self) -> Transport {
        self.session.transport()
    }

    /// Whether the socket is connected (the connect hook accepted it and it has not left).
    pub fn is_connected(&self) -> bool {
        matches!(*self.phase.lock(), Phase::Connected)
    }

    /// Why the socket disconnected, once it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match *self.phase.lock() {
            Phase::Disconnected(reason) => Some(reason),
            _ => None,
        }
    }
}

//! Namespaces: registered by the application with a connect hook, they hold their local
//! sockets and their adapter.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde_json::{Map, Value};

use super::adapter::{Adapter, AdapterFactory, LocalSockets, Room};
use super::broadcast::BroadcastOperator;
use super::data::Data;
use super::packet::{Encoded, Namespace, Packet, PacketData};
use super::socket::{EmitError, SocketRef};
use crate::engineio::{Message, Sid, SidMap};

/// A refusal from a connect hook, sent to the client as CONNECT_ERROR
/// `{"message": ..., "data": ...}` (`socket.connect_error` in the client).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// The message (`err.message` in the client).
    pub message: String,
    /// Details for the client (`err.data`).
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            data: None,
        }
    }

    /// Adds details for the client.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The CONNECT_ERROR packet for namespace `nsp`.
    pub(crate) fn to_packet(&self, nsp: Namespace) -> Packet {
        let mut map = Map::new();
        map.insert("message".to_owned(), Value::String(self.message.clone()));
        if let Some(data) = &self.data {
            map.insert("data".to_owned(), data.clone());
        }
        Packet {
            nsp,
            data: PacketData::ConnectError(Value::Object(map)),
        }
    }
}

/// What runs when a client joins a namespace: an async function of the new socket and the
/// CONNECT auth payload. `Ok` accepts the socket (the CONNECT reply is sent, then whatever
/// the hook emitted); `Err` refuses it with a CONNECT_ERROR. The hook registers the
/// socket's event handlers.
pub trait ConnectHook: Send + Sync + 'static {
    /// Runs the hook.
    fn call(
        &self,
        socket: SocketRef,
        auth: Option<Map<String, Value>>,
    ) -> BoxFuture<'static, Result<(), ConnectError>>;
}

impl<F, Fut> ConnectHook for F
where
    F: Fn(SocketRef, Option<Map<String, Value>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
{
    fn call(
        &self,
        socket: SocketRef,
        auth: Option<Map<String, Value>>,
    ) -> BoxFuture<'static, Result<(), ConnectError>> {
        Box::pin(self(socket, auth))
    }
}

/// Decides whether a client may recover a socket's state (connection-state recovery),
/// before its connect hook runs: the recorded state came from a private id (`pid`) the
/// client presented, which alone proves nothing about who the client is.
///
/// Given the CONNECT auth, the identity recorded with the state
/// ([`Socket::set_identity`](super::socket::Socket::set_identity)) and the socket's rooms
/// (its own room excepted), it answers the rooms the socket keeps, or `None` to refuse:
/// the client then gets a new socket, as when its state is too old. Only broadcasts to
/// the rooms it keeps are replayed.
pub trait RecoveryCheck: Send + Sync + 'static {
    /// Runs the check.
    fn check(
        &self,
        auth: Option<Map<String, Value>>,
        identity: Option<String>,
        rooms: Vec<Room>,
    ) -> BoxFuture<'static, Option<Vec<Room>>>;
}

impl<F, Fut> RecoveryCheck for F
where
    F: Fn(Option<Map<String, Value>>, Option<String>, Vec<Room>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Vec<Room>>> + Send + 'static,
{
    fn check(
        &self,
        auth: Option<Map<String, Value>>,
        identity: Option<String>,
        rooms: Vec<Room>,
    ) -> BoxFuture<'static, Option<Vec<Room>>> {
        Box::pin(self(auth, identity, rooms))
    }
}

/// What the application is told when sockets of this node were taken out of rooms by
/// [`BroadcastOperator::sockets_leave`] (here or on another node): the sockets, the rooms.
/// Called between two bus entries: it must not block.
pub type LeftHook = dyn Fn(&[Sid], &[Room]) + Send + Sync;

/// What the application is told when sockets of this node were put in rooms by
/// [`BroadcastOperator::sockets_join`] (here or on another node). Called between two bus
/// entries: it must not block.
pub type JoinedHook = dyn Fn(&[Sid], &[Room]) + Send + Sync;

/// A namespace's state, shared by its sockets.
pub(crate) struct NamespaceInner {
    name: Namespace,
    hook: Box<dyn ConnectHook>,
    adapter: Arc<dyn Adapter>,
    recovery_check: RwLock<Option<Arc<dyn RecoveryCheck>>>,
    left_hook: RwLock<Option<Arc<LeftHook>>>,
    /// The same for sockets put in rooms ([`Nsp::on_sockets_joined`]).
    joined_hook: RwLock<Option<Arc<JoinedHook>>>,
    sockets: RwLock<SidMap<SocketRef>>,
}

impl NamespaceInner {
    pub(crate) fn new(
        name: Namespace,
        hook: Box<dyn ConnectHook>,
        adapters: &dyn AdapterFactory,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this: &Weak<Self>| {
            let local: Weak<dyn LocalSockets> = this.clone();
            Self {
                adapter: adapters.create(&name, local),
                name,
                hook,
                recovery_check: RwLock::new(None),
                left_hook: RwLock::new(None),
                joined_hook: RwLock::new(None),
                sockets: RwLock::new(SidMap::default()),
            }
        })
    }

    pub(crate) fn name(&self) -> &Namespace {
        &self.name
    }

    pub(crate) fn adapter(&self) -> &Arc<dyn Adapter> {
        &self.adapter
    }

    pub(crate) fn hook(&self) -> &dyn ConnectHook {
        &*self.hook
    }

    /// The application's check of recoveries, if it set one.
    pub(crate) fn recovery_check(&self) -> Option<Arc<dyn RecoveryCheck>> {
        self.recovery_check.read().clone()
    }

    pub(crate) fn insert(&self, socket: SocketRef) {
        self.sockets.write().insert(socket.id(), socket);
    }

    pub(crate) fn remove(&self, sid: Sid) {
        self.sockets.write().remove(&sid);
    }

    pub(crate) fn socket(&self, sid: Sid) -> Option<SocketRef> {
        self.sockets.read().get(&sid).cloned()
    }
}

impl LocalSockets for NamespaceInner {
    fn deliver(&self, sids: &[Sid], packet: &Encoded, offset: Option<(u64, u64)>) {
        // Encoded once for all of them.
        let messages: Vec<Message> = packet.messages().collect();
        // Sent after the lock is released: a full queue closes its session, which may
        // remove the socket from this table.
        let sockets: Vec<SocketRef> = {
            let sockets = self.sockets.read();
            sids.iter()
                .filter_map(|sid| sockets.get(sid).cloned())
                .collect()
        };
        let mut sent = 0;
        for socket in sockets {
            // A socket that went away meanwhile misses it, as it would anyway.
            sent += u64::from(socket.send_broadcast(&messages, offset).is_ok());
        }
        // One atomic add per broadcast, not one per recipient.
        crate::metrics::metrics().packets_sent.add(sent);
    }

    fn left(&self, sids: &[Sid], rooms: &[Room]) {
        let hook = self.left_hook.read().clone();
        if let Some(hook) = hook {
            hook(sids, rooms);
        }
    }

    fn joined(&self, sids: &[Sid], rooms: &[Room]) {
        let hook = self.joined_hook.read().clone();
        if let Some(hook) = hook {
            hook(sids, rooms);
        }
    }
}

/// A handle to a namespace: broadcasts and the list of its local sockets.
#[derive(Clone)]
pub struct Nsp(pub(crate) Arc<NamespaceInner>);

impl fmt::Debug for Nsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Nsp").field(&self.0.name).finish()
    }
}

impl Nsp {
    /// The namespace's name.
    pub fn name(&self) -> &Namespace {
        &self.0.name
    }

    /// A broadcast to the sockets in `room`.
    pub fn to(&self, room: impl Into<Room>) -> BroadcastOperator {
        BroadcastOperator::new(Arc::clone(&self.0)).to(room)
    }

    /// A broadcast to every socket except those in `room`.
    pub fn except(&self, room: impl Into<Room>) -> BroadcastOperator {
        BroadcastOperator::new(Arc::clone(&self.0)).except(room)
    }

    /// Emits an event to every socket of the namespace.
    pub async fn emit(&self, event: &str, args: Vec<Data>) -> Result<(), EmitError> {
        BroadcastOperator::new(Arc::clone(&self.0))
            .emit(event, args)
            .await
    }

    /// The sockets connected to this namespace on this node.
    pub fn sockets(&self) -> Vec<SocketRef> {
        self.0.sockets.read().values().cloned().collect()
    }

    /// The local socket with this id.
    pub fn socket(&self, sid: Sid) -> Option<SocketRef> {
        self.0.socket(sid)
    }

    /// The namespace's adapter.
    pub fn adapter(&self) -> &Arc<dyn Adapter> {
        &self.0.adapter
    }

    /// Sets the check every recovery of a socket of this namespace must pass (replacing
    /// any previous one). Without one, any client presenting a socket's pid recovers it,
    /// as with the reference server.
    pub fn on_recovery(&self, check: impl RecoveryCheck) {
        *self.0.recovery_check.write() = Some(Arc::new(check));
    }

    /// Sets what to call when sockets of this node are taken out of rooms by a
    /// [`BroadcastOperator::sockets_leave`] of any node (replacing any previous hook).
    pub fn on_sockets_left(&self, hook: impl Fn(&[Sid], &[Room]) + Send + Sync + 'static) {
        *self.0.left_hook.write() = Some(Arc::new(hook));
    }

    /// Sets what to call when sockets of this node are put in rooms by a
    /// [`BroadcastOperator::sockets_join`] of any node (replacing any previous hook).
    pub fn on_sockets_joined(&self, hook: impl Fn(&[Sid], &[Room]) + Send + Sync + 'static) {
        *self.0.joined_hook.write() = Some(Arc::new(hook));
    }
}

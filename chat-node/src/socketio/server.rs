//! The Socket.IO server: its settings, the namespaces the application registers, and the
//! Engine.IO [`Handler`] that starts one client task per connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::mpsc;

use super::adapter::{AdapterFactory, LocalAdapterFactory};
use super::client;
use super::namespace::{ConnectHook, NamespaceInner, Nsp};
use super::packet::{InvalidNamespace, Namespace};

/// The default of [`SocketIoConfig::max_attachments`]: the reference parser's
/// `maxAttachments`, enough for any real client.
pub const DEFAULT_MAX_ATTACHMENTS_PER_PACKET: usize = 10;

/// The default of [`SocketIoConfig::max_attachment_bytes`]: the Engine.IO default
/// `max_payload`, so that a packet in pieces holds no more than one message could.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: usize = 1_000_000;
use crate::engineio::{Handler, Message, Session};

/// Settings of a Socket.IO server; the defaults are the reference server's.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// How long a new connection may take to join a namespace before it is closed.
    pub connect_timeout: Duration,
    /// The most binary attachments one packet may announce.
    pub max_attachments: usize,
    /// The most bytes of one packet's attachments together. They are buffered until the
    /// last one arrives, for as long as the client keeps the packet unfinished: without
    /// it, `max_attachments` messages of `max_payload` each per connection.
    pub max_attachment_bytes: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(45_000),
            max_attachments: DEFAULT_MAX_ATTACHMENTS_PER_PACKET,
            max_attachment_bytes: DEFAULT_MAX_ATTACHMENT_BYTES,
        }
    }
}

/// A Socket.IO server: register namespaces, then hand it to an
/// [`EngineIo`](crate::engineio::EngineIo) as its handler. Cheap to clone.
#[derive(Clone)]
pub struct SocketIo {
    inner: Arc<ServerInner>,
}

pub(crate) struct ServerInner {
    pub(crate) config: SocketIoConfig,
    namespaces: RwLock<HashMap<Namespace, Arc<NamespaceInner>>>,
    adapters: Box<dyn AdapterFactory>,
}

impl ServerInner {
    pub(crate) fn namespace(&self, name: &Namespace) -> Option<Arc<NamespaceInner>> {
        self.namespaces.read().get(name).cloned()
    }
}

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let namespaces: Vec<Namespace> = self.inner.namespaces.read().keys().cloned().collect();
        f.debug_struct("SocketIo")
            .field("config", &self.inner.config)
            .field("namespaces", &namespaces)
            .finish()
    }
}

impl SocketIo {
    /// A server with in-process rooms and broadcasts.
    pub fn new(config: SocketIoConfig) -> Self {
        Self::with_adapter(config, LocalAdapterFactory)
    }

    /// A server whose namespaces use adapters from `adapters`.
    pub fn with_adapter(config: SocketIoConfig, adapters: impl AdapterFactory) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                config,
                namespaces: RwLock::new(HashMap::new()),
                adapters: Box::new(adapters),
            }),
        }
    }

    /// Registers namespace `name` (replacing one of the same name) with the hook that
    /// accepts or refuses each socket joining it.
    pub fn ns(&self, name: &str, hook: impl ConnectHook) -> Result<Nsp, InvalidNamespace> {
        let name = Namespace::new(name)?;
        let ns = NamespaceInner::new(name.clone(), Box::new(hook), &*self.inner.adapters);
        self.inner.namespaces.write().insert(name, Arc::clone(&ns));
        Ok(Nsp(ns))
    }

    /// The namespace named `name`, if registered.
    pub fn of(&self, name: &str) -> Option<Nsp> {
        let name = Namespace::new(name).ok()?;
        self.inner.namespace(&name).map(Nsp)
    }

    /// The settings.
    pub fn config(&self) -> &SocketIoConfig {
        &self.inner.config
    }
}

impl Handler for SocketIo {
    fn on_open(&self, session: Arc<Session>, inbound: mpsc::Receiver<Message>) {
        tokio::spawn(client::run(Arc::clone(&self.inner), session, inbound));
    }
}

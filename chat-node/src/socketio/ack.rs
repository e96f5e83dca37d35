//! Acknowledgements in both directions: the acks a socket awaits from its client
//! (`Acks`), and the ack a handler owes the client ([`AckSender`]).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::data::Data;
use super::packet::Packet;
use super::socket::{EmitError, SocketRef};

/// Why an awaited ack did not come.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Not within the timeout.
    #[error("ack timed out after {0:?}")]
    Timeout(Duration),
    /// The socket disconnected first.
    #[error("the socket disconnected before the ack")]
    Disconnected,
    /// The event could not be sent.
    #[error(transparent)]
    Emit(#[from] EmitError),
}

/// The acks a socket awaits, by id.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    inner: Mutex<AcksInner>,
}

#[derive(Debug, Default)]
struct AcksInner {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Vec<Data>>>,
    closed: bool,
}

impl Acks {
    /// Reserves an id and the receiver of its answer; `None` once the socket is gone.
    pub(crate) fn register(&self) -> Option<(u64, oneshot::Receiver<Vec<Data>>)> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return None;
        }
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        inner.pending.insert(id, tx);
        Some((id, rx))
    }

    /// Forgets an id (timed out, or the event was never sent).
    pub(crate) fn forget(&self, id: u64) {
        self.inner.lock().pending.remove(&id);
    }

    /// Resolves ack `id`; an unknown id is ignored, as by the reference server.
    pub(crate) fn resolve(&self, id: u64, args: Vec<Data>) {
        let sender = self.inner.lock().pending.remove(&id);
        match sender {
            Some(sender) => {
                let _ = sender.send(args);
            }
            None => tracing::debug!(id, "ack for no pending emit"),
        }
    }

    /// Fails every pending ack with [`AckError::Disconnected`] and refuses new ones.
    pub(crate) fn close(&self) {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.pending.clear();
    }
}

/// Waits for an ack.
pub(crate) async fn wait(
    acks: &Acks,
    id: u64,
    rx: oneshot::Receiver<Vec<Data>>,
    timeout: Duration,
) -> Result<Vec<Data>, AckError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(args)) => Ok(args),
        Ok(Err(_)) => Err(AckError::Disconnected),
        Err(_) => {
            acks.forget(id);
            Err(AckError::Timeout(timeout))
        }
    }
}

/// The ack a client asked for with its event: send it once, with any arguments. Dropping
/// it sends nothing (the client's own timeout, if any, fires).
#[derive(Debug)]
#[must_use = "the client waits for this ack"]
pub struct AckSender {
    socket: SocketRef,
    id: u64,
}

impl AckSender {
    pub(crate) fn new(socket: SocketRef, id: u64) -> Self {
        Self { socket, id }
    }

    /// The ack id the client chose.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends the ack (a BINARY_ACK when `args` hold binary).
    pub fn send(self, args: Vec<Data>) -> Result<(), EmitError> {
        let packet = Packet::ack(self.socket.namespace().clone(), self.id, args);
        self.socket.send_packet(&packet)
    }
}

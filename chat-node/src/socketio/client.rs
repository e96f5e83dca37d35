//! One client connection (one Engine.IO session): decodes its messages into packets,
//! routes them to its sockets (one per namespace joined), runs the connect hooks, and
//! closes the connection on a protocol error or when no namespace is joined within
//! `connect_timeout`.
//!
//! Everything a connection does runs on this one task, in order; the event handlers'
//! futures run concurrently on it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt as _};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::adapter::{Room, TakenSession};
use super::namespace::{ConnectError, NamespaceInner};
use super::packet::{Decoder, Namespace, Packet, PacketData, RecoveryRequest};
use super::server::ServerInner;
use super::socket::{self, DisconnectReason, SocketRef};
use crate::engineio::{Message, Session, Sid};
use crate::metrics::{metrics, PacketType};
use crate::recovery::new_pid;

/// How many of a connection's event handlers may run at once; beyond it the connection's
/// messages wait (back-pressure on a client that sends faster than it is served).
const MAX_RUNNING_HANDLERS: usize = 64;

/// The connection broke the protocol; it is closed.
#[derive(Debug)]
struct ProtocolError;

struct Client {
    server: Arc<ServerInner>,
    session: Arc<Session>,
    decoder: Decoder,
    sockets: HashMap<Namespace, SocketRef>,
    /// Some namespace was joined: the connect timeout no longer applies.
    joined: bool,
}

pub(crate) async fn run(
    server: Arc<ServerInner>,
    session: Arc<Session>,
    mut inbound: mpsc::Receiver<Message>,
) {
    let connect_timeout = tokio::time::sleep(server.config.connect_timeout);
    tokio::pin!(connect_timeout);
    let mut client = Client {
        decoder: Decoder::with_max_attachments(server.config.max_attachments)
            .max_attachment_bytes(server.config.max_attachment_bytes),
        server,
        session,
        sockets: HashMap::new(),
        joined: false,
    };
    let mut handlers: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    let mut closing = None;

    loop {
        tokio::select! {
            message = inbound.recv(), if handlers.len() < MAX_RUNNING_HANDLERS => {
                let Some(message) = message else { break };
                if closing.is_some() {
                    continue;
                }
                if client.on_message(message, &mut handlers).await.is_err() {
                    closing = Some(DisconnectReason::ForcedServerClose);
                    client.session.disconnect_for(crate::engineio::CloseReason::ParseError);
                }
            }
            Some(()) = handlers.next(), if !handlers.is_empty() => {}
            () = &mut connect_timeout, if !client.joined && closing.is_none() => {
                tracing::debug!(sid = %client.session.id(), "no namespace joined in time");
                closing = Some(DisconnectReason::ForcedServerClose);
                client.session.disconnect();
            }
        }
    }

    // The session is closed: every socket disconnects; started handlers finish.
    let reason = closing
        .or_else(|| client.session.close_reason().map(DisconnectReason::from))
        .unwrap_or(DisconnectReason::TransportClose);
    for socket in client.sockets.into_values() {
        socket.closed(reason);
    }
    while handlers.next().await.is_some() {}
}

impl Client {
    async fn on_message(
        &mut self,
        message: Message,
        handlers: &mut FuturesUnordered<BoxFuture<'static, ()>>,
    ) -> Result<(), ProtocolError> {
        let decoded = match message {
            Message::Text(text) => self.decoder.push_text(&text),
            Message::Binary(data) => self.decoder.push_binary(data),
        };
        let packet = match decoded {
            Ok(Some(packet)) => {
                metrics().packet_received(match &packet.data {
                    PacketData::Connect(_) => PacketType::Connect,
                    PacketData::Disconnect => PacketType::Disconnect,
                    PacketData::Event { .. } => PacketType::Event,
                    PacketData::Ack { .. } => PacketType::Ack,
                    PacketData::ConnectError(_) => PacketType::ConnectError,
                });
                packet
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::debug!(sid = %self.session.id(), %error, "invalid packet");
                return Err(ProtocolError);
            }
        };

        // A socket the server disconnected is as good as gone.
        let socket = match self.sockets.get(&packet.nsp) {
            Some(socket) if socket.is_connected() => Some(socket.clone()),
            Some(_) => {
                self.sockets.remove(&packet.nsp);
                None
            }
            None => None,
        };
        match (socket, packet.data) {
            (None, PacketData::Connect(auth)) => {
                self.connect(packet.nsp, auth).await;
                Ok(())
            }
            (Some(socket), PacketData::Event { name, args, id }) => {
                if let Some(handler) = socket.dispatch(&name, args, id) {
                    handlers.push(handler);
                }
                Ok(())
            }
            (Some(socket), PacketData::Ack { id, args }) => {
                socket.on_ack(id, args);
                Ok(())
            }
            (Some(socket), PacketData::Disconnect) => {
                self.sockets.remove(&packet.nsp);
                socket.closed(DisconnectReason::ClientNamespaceDisconnect);
                Ok(())
            }
            // A second CONNECT, a CONNECT_ERROR from the client, or a packet for a
            // namespace it has not joined.
            _ => {
                tracing::debug!(sid = %self.session.id(), nsp = %packet.nsp, "packet out of place");
                Err(ProtocolError)
            }
        }
    }

    /// Joins a namespace: recovers the client's previous socket when it asks to and can,
    /// runs the hook, then sends the CONNECT reply (after the replay of what a recovered
    /// socket missed) or a CONNECT_ERROR.
    async fn connect(&mut self, nsp: Namespace, auth: Option<Map<String, Value>>) {
        let Some(ns) = self.server.namespace(&nsp) else {
            self.send(&ConnectError::new("Invalid namespace").to_packet(nsp));
            return;
        };
        // The state a recovered socket was made from, kept to be put back should the client
        // go away before it gets the CONNECT reply.
        let mut taken_back = None;
        let socket = match self.recover(&ns, auth.as_ref()).await {
            Some((socket, taken)) => {
                taken_back = socket.pid().map(|pid| (pid.to_string(), taken));
                socket
            }
            None => {
                let recovery = socket::Recovery {
                    pid: ns.adapter().recovers().then(new_pid),
                    ..socket::Recovery::default()
                };
                SocketRef::with_id(
                    Arc::clone(&ns),
                    Arc::clone(&self.session),
                    auth.clone(),
                    Sid::random(),
                    recovery,
                )
            }
        };
        let hook = ns.hook().call(socket.clone(), auth);
        let verdict = tokio::select! {
            verdict = hook => verdict,
            // The client left while the hook ran.
            () = self.session.closed() => {
                let reason = self
                    .session
                    .close_reason()
                    .map_or(DisconnectReason::TransportClose, DisconnectReason::from);
                socket.abandoned(reason);
                // A recovery the client never heard of did not happen: it will ask again
                // with the same pid and offset, and the state must still be there (taken,
                // it was gone, and the client lost what it had missed).
                if let Some((pid, taken)) = taken_back {
                    if let Err(error) = ns.adapter().restore_session(&pid, taken).await {
                        tracing::warn!(%error, "could not put a recovery state back");
                    }
                }
                return;
            }
        };
        match verdict {
            Ok(()) => {
                let id = socket.id();
                if let Err(error) = ns.adapter().add_all(id, vec![id.into()]).await {
                    tracing::warn!(sid = %id, %error, "could not add a socket to its room");
                }
                if let Some(pid) = socket.pid() {
                    let identity = socket.identity();
                    let opened = ns
                        .adapter()
                        .session_opened(id, pid, identity.as_deref())
                        .await;
                    if let Err(error) = opened {
                        tracing::warn!(sid = %id, %error, "could not record a socket for recovery");
                    }
                }
                ns.insert(socket.clone());
                if socket.accept().is_ok() {
                    self.joined = true;
                    self.sockets.insert(nsp, socket);
                } else {
                    socket.closed(DisconnectReason::TransportClose);
                }
            }
            Err(error) => {
                tracing::debug!(nsp = %nsp, %error, "connection refused");
                socket.reject();
                self.send(&error.to_packet(nsp));
            }
        }
    }

    /// The client's previous socket, when its CONNECT asks to recover one and the adapter
    /// still has its state: same id, its rooms joined, what it missed ready to replay.
    /// The socket is registered in the namespace before the replay is read, so that a
    /// broadcast is either in the replay or delivered (and buffered until the CONNECT
    /// reply), never lost; a broadcast in both is dropped by its offset.
    async fn recover(
        &self,
        ns: &Arc<NamespaceInner>,
        auth: Option<&Map<String, Value>>,
    ) -> Option<(SocketRef, TakenSession)> {
        let adapter = ns.adapter();
        if !adapter.recovers() {
            return None;
        }
        let request = RecoveryRequest::from_auth(auth?)?;
        let taken = match adapter.take_session(&request.pid).await {
            Ok(taken) => taken?,
            Err(error) => {
                tracing::warn!(%error, "recovery unavailable");
                return None;
            }
        };
        let after = request
            .offset
            .clone()
            .unwrap_or_else(|| taken.connected_at.clone());
        let sid = taken.sid;
        let original = taken.clone();
        // The application decides whether this client may have the state, and which rooms
        // it keeps (a pid alone is no credential; memberships may have ended meanwhile).
        let rooms = match ns.recovery_check() {
            None => taken.rooms,
            Some(check) => {
                let own = Room::from(sid);
                let others = taken.rooms.iter().filter(|r| **r != own).cloned().collect();
                let Some(mut kept) = check
                    .check(auth.cloned(), taken.identity.clone(), others)
                    .await
                else {
                    tracing::debug!(%sid, "recovery refused by the application; a new socket");
                    // Whoever presented the pid must not cost its owner the recovery.
                    if let Err(error) = adapter.restore_session(&request.pid, taken).await {
                        tracing::warn!(%sid, %error, "could not put a recovery state back");
                    }
                    return None;
                };
                kept.push(own);
                kept
            }
        };
        let socket = SocketRef::with_id(
            Arc::clone(ns),
            Arc::clone(&self.session),
            auth.cloned(),
            sid,
            socket::Recovery {
                pid: Some(request.pid),
                recovered: true,
                ..socket::Recovery::default()
            },
        );
        // Its rooms first: from now on its broadcasts reach it (buffered until the reply).
        ns.insert(socket.clone());
        if let Err(error) = adapter.add_all(sid, rooms.clone()).await {
            tracing::warn!(%sid, %error, "could not restore a socket's rooms");
        }
        match adapter.missed(&after, &rooms).await {
            Ok(Some(replay)) => {
                tracing::debug!(%sid, missed = replay.packets.len(), "socket recovered");
                socket.set_replay(replay.packets, replay.through);
                Some((socket, original))
            }
            outcome => {
                if let Err(error) = outcome {
                    tracing::warn!(%error, "missed broadcasts unavailable");
                }
                tracing::debug!(%sid, "state too old to recover; a new socket");
                socket.reject();
                None
            }
        }
    }

    /// Sends a packet outside any socket (CONNECT_ERROR).
    fn send(&self, packet: &Packet) {
        if self.session.send_all(packet.encode().messages()).is_ok() {
            metrics().packets_sent.inc();
        }
    }
}

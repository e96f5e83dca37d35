//! One Engine.IO session: its outbound queue, its transport (polling or WebSocket) and the
//! upgrade between them, its heartbeat, and how it closes.
//!
//! The session is shared by whatever serves it at the moment: the GET that long-polls, the
//! POST that delivers packets, the WebSocket task, the heartbeat task. Its state sits behind
//! one short-held lock; the writers (a pending GET or the WebSocket task) wait on
//! `Session::changed`, which every change of the queue or of the state wakes.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{sleep, sleep_until, Instant};

use super::config::EngineConfig;
use super::packet::{OpenPacket, Packet, Transport};
use super::payload::{self, SEPARATOR};
use super::server::Sessions;
use super::sid::Sid;
use super::text::MessageText;
use crate::client_addr::ClientKey;
use crate::metrics::metrics;

/// How long a session closed by its client's close packet (POST) waits for the client's
/// GET that may still be on its way, to answer it with a noop.
const CLOSE_NOOP_GRACE: Duration = Duration::from_secs(1);

/// How many client messages may wait for the application before the transport stops
/// reading (back-pressure on a client that sends faster than it is served).
const INBOUND_CAPACITY: usize = 32;

/// A message from or to the client: what Engine.IO carries for the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (a Socket.IO packet, for Socket.IO).
    Text(MessageText),
    /// A binary message (a Socket.IO attachment, for Socket.IO).
    Binary(Bytes),
}

impl From<Message> for Packet {
    fn from(message: Message) -> Self {
        match message {
            Message::Text(text) => Packet::Message(text),
            Message::Binary(data) => Packet::Binary(data),
        }
    }
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent a close packet (`1`).
    ClientClose,
    /// The client's WebSocket closed, or its connection went away.
    TransportClose,
    /// The transport misbehaved: overlapping polls, a poll abandoned by the client, a
    /// write error, a ping from the client.
    TransportError,
    /// The client does not read what is sent to it: more packets or bytes than allowed
    /// wait for it (`max_queued_packets`, `max_queued_bytes`).
    SlowClient,
    /// The client did not answer a ping within `ping_timeout`.
    PingTimeout,
    /// The client sent something that is not an Engine.IO packet.
    ParseError,
    /// The server closed the session (after delivering what was queued).
    ForcedClose,
    /// The server is shutting down.
    ServerShutdown,
}

impl CloseReason {
    /// The reason as the reference server names it (which has no outbound limit, hence
    /// no name for [`CloseReason::SlowClient`]: ours).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose | Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::SlowClient => "slow client",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::ForcedClose => "forced close",
            Self::ServerShutdown => "server shutting down",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session is closing or closed.
    #[error("the session is closed")]
    Closed,
    /// The client does not read what is sent to it; the session has been closed.
    #[error("too much queued for the client")]
    QueueFull,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// The server asked to close: the queue is delivered, then the session closes.
    Closing,
    Closed,
}

/// Where an upgrade from polling to WebSocket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// No WebSocket is trying to take over.
    None,
    /// A WebSocket with this session's id is open and has not probed yet.
    Attached,
    /// The WebSocket probed (`2probe` / `3probe`): polls are released with a noop.
    Probed,
}

/// The mutable part of a session.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) transport: Transport,
    pub(crate) upgrade: Upgrade,
    pub(crate) queue: VecDeque<Packet>,
    /// The bytes ([`Packet::held_len`]) of `queue` and of the packets a WebSocket write
    /// has taken and not finished writing: what the client keeps the server holding.
    queued_bytes: usize,
    /// A GET is pending (only one at a time).
    pub(crate) polling: bool,
    /// A POST is being read (only one at a time).
    pub(crate) posting: bool,
    /// The server is closing once what is queued has been delivered, for this reason.
    pub(crate) closing: Option<CloseReason>,
    pub(crate) closed: Option<CloseReason>,
    /// Closed by the client's close packet with no GET pending: the GET it had in flight
    /// (if it arrives soon) gets the noop it would have got had it arrived first.
    pub(crate) noop_owed: bool,
    /// The pending GET is to be answered now, with a noop if nothing is queued
    /// ([`Session::release_poll`]).
    pub(crate) release: bool,
    /// The poll that answers the handshake has been served: polls from now on are the
    /// client's own.
    pub(crate) handshake_polled: bool,
    /// The client came back after its handshake (a poll, a POST, an upgrade).
    pub(crate) returned: bool,
    /// A ping was sent and its pong is due by this instant.
    pong_due: Option<Instant>,
    /// Where client messages go; dropped when the session closes.
    inbound: Option<mpsc::Sender<Message>>,
}

/// One Engine.IO session.
pub struct Session {
    id: Sid,
    config: Arc<EngineConfig>,
    state: Mutex<State>,
    /// Wakes the writers (pending GET, WebSocket task) on any change.
    pub(crate) changed: Notify,
    /// Wakes the heartbeat when the awaited pong arrives.
    pong: Notify,
    phase: watch::Sender<Phase>,
    sessions: Weak<Sessions>,
    /// The client that opened it, when known (see [`crate::client_addr`]).
    client: Option<ClientKey>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// A new session whose handshake (the open packet) is queued; returns the receiver of
    /// the client's messages. The caller registers it and starts its heartbeat.
    pub(crate) fn new(
        id: Sid,
        config: Arc<EngineConfig>,
        transport: Transport,
        sessions: Weak<Sessions>,
        client: Option<ClientKey>,
    ) -> (Arc<Self>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let upgrades = match transport {
            Transport::Polling => vec![Transport::Websocket],
            Transport::Websocket => Vec::new(),
        };
        let open = Packet::Open(OpenPacket {
            sid: id.to_string(),
            upgrades,
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            max_payload: config.max_payload,
        });
        // Counted here and uncounted in `close` (or `drop`, for a session never closed):
        // every session ever made is in the gauge exactly while it lives.
        metrics().session_opened(transport);
        let session = Arc::new(Self {
            id,
            config,
            state: Mutex::new(State {
                transport,
                upgrade: Upgrade::None,
                queued_bytes: open.held_len(),
                queue: VecDeque::from([open]),
                polling: false,
                posting: false,
                closing: None,
                closed: None,
                noop_owed: false,
                release: false,
                handshake_polled: false,
                // A WebSocket handshake is the client's connection itself.
                returned: transport == Transport::Websocket,
                pong_due: None,
                inbound: Some(tx),
            }),
            changed: Notify::new(),
            pong: Notify::new(),
            phase: watch::Sender::new(Phase::Open),
            sessions,
            client,
        });
        (session, rx)
    }

    /// The session id.
    pub fn id(&self) -> Sid {
        self.id
    }

    /// The client that opened it, when known.
    pub fn client(&self) -> Option<ClientKey> {
        self.client
    }

    /// The settings it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The transport that currently carries it.
    pub fn transport(&self) -> Transport {
        self.state.lock().transport
    }

    /// Why it closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    /// How long a WebSocket write may now wait for more packets: the server's current
    /// interval (see [`super::pacing`]); a session without a server, the configured one.
    pub(crate) fn flush_interval(&self) -> Duration {
        match self.sessions.upgrade() {
            Some(sessions) => sessions.flush_interval(),
            None => self.config.ws_flush_interval,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Queues a message for the client.
    pub fn send(&self, message: Message) -> Result<(), SendError> {
        self.send_packets([Packet::from(message)])
    }

    /// Queues messages for the client, one after the other with nothing in between (a
    /// Socket.IO packet and its attachments).
    pub fn send_all<I>(&self, messages: I) -> Result<(), SendError>
    where
        I: IntoIterator<Item = Message>,
    {
        self.send_packets(messages.into_iter().map(Packet::from))
    }

    /// Queues packets, in order and contiguously.
    pub(crate) fn send_packets<I>(&self, packets: I) -> Result<(), SendError>
    where
        I: IntoIterator<Item = Packet>,
    {
        {
            let mut state = self.state.lock();
            if state.closing.is_some() || state.closed.is_some() {
                return Err(SendError::Closed);
            }
            let before = state.queue.len();
            let mut added = 0usize;
            state.queue.extend(packets.into_iter().inspect(|packet| {
                added = added.saturating_add(packet.held_len());
            }));
            let bytes = state.queued_bytes.saturating_add(added);
            // Nothing waiting: the packet goes whatever its size (see `max_queued_bytes`).
            let too_large = state.queued_bytes > 0 && bytes > self.config.max_queued_bytes;
            if too_large || state.queue.len() > self.config.max_queued_packets {
                state.queue.truncate(before);
                drop(state);
                tracing::debug!(sid = %self.id, bytes, "outbound queue full, closing");
                self.close(CloseReason::SlowClient);
                return Err(SendError::QueueFull);
            }
            state.queued_bytes = bytes;
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Closes the session now: it leaves the session table, a pending poll returns, the
    /// WebSocket closes, the application sees the end of the client's messages.
    pub fn close(&self, reason: CloseReason) {
        let (inbound, linger) = {
            let mut state = self.state.lock();
            if state.closed.is_some() {
                return;
            }
            tracing::debug!(sid = %self.id, %reason, "session closed");
            state.closed = Some(reason);
            // Under the lock, with the transport that carried it: an upgrade cannot slip
            // between the two.
            metrics().session_closed(state.transport, reason);
            state.queue = VecDeque::new();
            state.queued_bytes = 0;
            // The client closes with a POST while its GET is pending; when the POST is
            // served first (the two race on separate connections), the GET still gets "6".
            state.noop_owed = reason == CloseReason::ClientClose
                && state.transport == Transport::Polling
                && !state.polling;
            (state.inbound.take(), state.noop_owed)
        };
        drop(inbound);
        self.phase.send_replace(Phase::Closed);
        self.changed.notify_waiters();
        if linger {
            let sessions = self.sessions.clone();
            let id = self.id;
            tokio::spawn(async move {
                sleep(CLOSE_NOOP_GRACE).await;
                if let Some(sessions) = sessions.upgrade() {
                    sessions.remove(id);
                }
            });
        } else {
            self.forget();
        }
    }

    /// Leaves the session table.
    pub(crate) fn forget(&self) {
        if let Some(sessions) = self.sessions.upgrade() {
            sessions.remove(self.id);
        }
    }

    /// Closes the session once what is queued has been delivered (the reference server's
    /// `socket.close()`): polling clients get the rest and a close packet with their next
    /// poll, WebSocket clients get the rest and a close frame. A client that does not poll
    /// within `close_timeout` is closed anyway.
    pub fn disconnect(&self) {
        self.disconnect_for(CloseReason::ForcedClose);
    }

    /// [`disconnect`](Self::disconnect), saying why (a WebSocket's close frame carries it).
    pub fn disconnect_for(&self, reason: CloseReason) {
        {
            let mut state = self.state.lock();
            if state.closing.is_some() || state.closed.is_some() {
                return;
            }
            state.closing = Some(reason);
        }
        self.phase.send_replace(Phase::Closing);
        self.changed.notify_waiters();
    }

    /// Waits until the session is closed.
    pub async fn closed(&self) {
        let mut phase = self.phase.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = phase.wait_for(|p| *p == Phase::Closed).await;
    }

    /// Handles a packet from the client on its current transport; `Err` when the session
    /// is closed (by this packet or before it).
    pub(crate) async fn receive(&self, packet: Packet) -> Result<(), CloseReason> {
        match packet {
            Packet::Message(text) => self.deliver(Message::Text(text)).await,
            Packet::Binary(data) => self.deliver(Message::Binary(data)).await,
            Packet::Pong(_) => {
                let awaited = self.state.lock().pong_due.take();
                if awaited.is_some() {
                    self.pong.notify_one();
                }
                self.check_open()
            }
            Packet::Close => {
                self.close(CloseReason::ClientClose);
                Err(CloseReason::ClientClose)
            }
            Packet::Ping(_) => {
                // In Engine.IO v4 the server pings; a ping from the client (or a probe on an
                // established transport) is an error, as in the reference server.
                self.close(CloseReason::TransportError);
                Err(CloseReason::TransportError)
            }
            // Meaningless here; the reference server ignores them too.
            Packet::Open(_) | Packet::Upgrade | Packet::Noop => self.check_open(),
        }
    }

    fn check_open(&self) -> Result<(), CloseReason> {
        match self.state.lock().closed {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Hands a client message to the application, waiting while it is behind.
    async fn deliver(&self, message: Message) -> Result<(), CloseReason> {
        let inbound = {
            let state = self.state.lock();
            match (&state.inbound, state.closed) {
                (_, Some(reason)) => return Err(reason),
                (Some(inbound), None) => inbound.clone(),
                // `inbound` is only taken when the session closes.
                (None, None) => return Err(CloseReason::ForcedClose),
            }
        };
        // The application dropping its receiver only means it ignores what follows.
        let _ = inbound.send(message).await;
        Ok(())
    }

    /// Starts the heartbeat: a ping `ping_interval` after the handshake and after each
    /// pong (never at once), and a close when the pong does not come within
    /// `ping_timeout`. It also bounds how long a closing session waits for its client.
    pub(crate) fn spawn_heartbeat(self: &Arc<Self>) {
        // The first ping is due `ping_interval` from now, however late the task starts.
        let now = Instant::now();
        let first_ping = now + self.config.ping_interval;
        let return_by = self.config.first_poll_timeout.map(|timeout| now + timeout);
        tokio::spawn(heartbeat(Arc::clone(self), first_ping, return_by));
    }

    /// Closes the session if its pong is overdue; `true` if it is (now) closed. Requests
    /// call it so that the outcome of a request made just after the deadline does not
    /// depend on whether the heartbeat task has woken up yet.
    pub(crate) fn expire_if_overdue(&self) -> bool {
        let overdue = {
            let state = self.state.lock();
            if state.closed.is_some() {
                return !state.noop_owed;
            }
            state.pong_due.is_some_and(|due| Instant::now() >= due)
        };
        if overdue {
            self.close(CloseReason::PingTimeout);
        }
        overdue
    }

    /// Takes what a poll returns now, if anything: the queued packets, a noop that ends
    /// the poll during an upgrade, or a close packet. `Ok(None)` means "wait".
    pub(crate) fn take_poll(
        &self,
        state: &mut State,
        noop_allowed: bool,
    ) -> Result<Option<PollBody>, PollEnd> {
        if let Some(reason) = state.closed {
            // A client's close packet ends the pending poll with a noop, any other close
            // with a close packet (as the reference server does).
            let body = if reason == CloseReason::ClientClose {
                "6"
            } else {
                "1"
            };
            return Ok(Some(PollBody {
                body: body.to_owned(),
                finish: false,
            }));
        }
        if state.transport != Transport::Polling {
            return Err(PollEnd::Upgraded);
        }
        if state.upgrade == Upgrade::Probed && noop_allowed {
            return Ok(Some(PollBody {
                body: Packet::Noop.to_text(),
                finish: false,
            }));
        }
        if state.upgrade == Upgrade::Probed {
            return Ok(None);
        }
        if !state.queue.is_empty() {
            // This answer releases the GET as well as a noop would.
            state.release = false;
            let batch = payload::encode(state.queue.iter(), self.config.max_payload);
            let sent: usize = state.queue.drain(..batch.taken).map(|p| p.held_len()).sum();
            state.queued_bytes = state.queued_bytes.saturating_sub(sent);
            let mut body = batch.body;
            let finish = state.closing.is_some() && state.queue.is_empty();
            if finish {
                body.push(SEPARATOR);
                Packet::Close.write_text(&mut body);
            }
            return Ok(Some(PollBody { body, finish }));
        }
        if state.closing.is_some() {
            return Ok(Some(PollBody {
                body: Packet::Close.to_text(),
                finish: true,
            }));
        }
        if std::mem::take(&mut state.release) {
            return Ok(Some(PollBody {
                body: Packet::Noop.to_text(),
                finish: false,
            }));
        }
        Ok(None)
    }

    /// Takes everything queued for the WebSocket, with the reason the session is closing
    /// for when it is (then this is the last of it). Their bytes still count against
    /// `max_queued_bytes` until [`written`](Self::written) says they are out: a client
    /// that stops reading leaves them in a write that does not end.
    pub(crate) fn take_all(&self) -> Result<(Vec<Packet>, Option<CloseReason>), CloseReason> {
        let mut state = self.state.lock();
        if let Some(reason) = state.closed {
            return Err(reason);
        }
        let packets: Vec<Packet> = state.queue.drain(..).collect();
        Ok((packets, state.closing))
    }

    /// `bytes` of packets taken by [`take_all`](Self::take_all) have been written.
    pub(crate) fn written(&self, bytes: usize) {
        let mut state = self.state.lock();
        state.queued_bytes = state.queued_bytes.saturating_sub(bytes);
    }

    /// A WebSocket with this session's id wants to take over; `false` when it may not (the
    /// session is closing, already on WebSocket, or another WebSocket is trying).
    pub(crate) fn try_attach_upgrade(&self) -> bool {
        let mut state = self.state.lock();
        if state.closed.is_some()
            || state.closing.is_some()
            || state.transport != Transport::Polling
            || state.upgrade != Upgrade::None
        {
            return false;
        }
        state.upgrade = Upgrade::Attached;
        state.returned = true;
        true
    }

    /// Answers the pending GET now: with what is queued, else a noop (the node that
    /// forwarded it is stopping). The client polls again at once, through another node.
    pub(crate) fn release_poll(&self) {
        // Set even when the GET has not started to wait yet (it is served by a task that
        // may run after the release arrives): it then returns at once. At worst, a GET
        // answered just before gets the next one answered with a noop: one more round.
        self.state.lock().release = true;
        self.changed.notify_waiters();
    }

    /// The WebSocket answered the probe: polls now end with a noop.
    pub(crate) fn upgrade_probed(&self) {
        {
            let mut state = self.state.lock();
            if state.upgrade != Upgrade::Attached {
                return;
            }
            state.upgrade = Upgrade::Probed;
        }
        self.changed.notify_waiters();
    }

    /// The client sent `5` on the WebSocket: it carries the session from now on.
    pub(crate) fn complete_upgrade(&self) -> bool {
        {
            let mut state = self.state.lock();
            if state.closed.is_some() || state.upgrade == Upgrade::None {
                return false;
            }
            state.upgrade = Upgrade::None;
            state.transport = Transport::Websocket;
            metrics().session_upgraded();
        }
        self.changed.notify_waiters();
        true
    }

    /// The upgrade failed (timeout, bad packet, the WebSocket closed): polling goes on.
    pub(crate) fn abort_upgrade(&self) {
        {
            let mut state = self.state.lock();
            if state.upgrade == Upgrade::None {
                return;
            }
            state.upgrade = Upgrade::None;
        }
        self.changed.notify_waiters();
    }

    /// Queues a ping and notes that its pong is due by `due`.
    fn ping(&self, due: Instant) -> Result<(), SendError> {
        {
            let mut state = self.state.lock();
            if state.closing.is_some() || state.closed.is_some() {
                return Err(SendError::Closed);
            }
            state.pong_due = Some(due);
            let ping = Packet::ping();
            state.queued_bytes = state.queued_bytes.saturating_add(ping.held_len());
            state.queue.push_back(ping);
        }
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Drop for Session {
    /// A session dropped without being closed (a unit test's, or one abandoned before it
    /// was registered) leaves the open-sessions gauge as it came in.
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if state.closed.is_none() {
            metrics().session_dropped(state.transport);
        }
    }
}

/// What a poll returns.
#[derive(Debug)]
pub(crate) struct PollBody {
    pub(crate) body: String,
    /// The session was closing and this body ends it.
    pub(crate) finish: bool,
}

/// A pending poll that can no longer be answered with packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollEnd {
    /// The session moved to WebSocket while the poll was pending.
    Upgraded,
}

/// Deadlines are absolute (from the handshake, then from each pong), so that timer
/// latency does not accumulate.
/// A polling client that has not come back by `return_by` (when that is before the first
/// ping) is taken as gone, as one that does not answer a ping.
async fn heartbeat(session: Arc<Session>, first_ping: Instant, return_by: Option<Instant>) {
    let mut phase = session.phase.subscribe();
    let interval = session.config.ping_interval;
    let timeout = session.config.ping_timeout;
    let mut next_ping = first_ping;
    if let Some(return_by) = return_by.filter(|at| *at < first_ping) {
        tokio::select! {
            () = sleep_until(return_by) => {
                if !session.state.lock().returned {
                    tracing::debug!(sid = %session.id, "the client never came back after its handshake");
                    session.close(CloseReason::PingTimeout);
                    return;
                }
            }
            _ = phase.wait_for(|p| *p != Phase::Open) => {}
        }
    }
    loop {
        tokio::select! {
            () = sleep_until(next_ping) => {}
            _ = phase.wait_for(|p| *p != Phase::Open) => break,
        }
        let pong_due = next_ping + timeout;
        if session.ping(pong_due).is_err() {
            break;
        }
        tokio::select! {
            () = session.pong.notified() => next_ping = Instant::now() + interval,
            () = sleep_until(pong_due) => {
                session.close(CloseReason::PingTimeout);
                return;
            }
            _ = phase.wait_for(|p| *p != Phase::Open) => break,
        }
    }
    // Closing: the client has `close_timeout` to fetch what is left.
    tokio::select! {
        _ = phase.wait_for(|p| *p == Phase::Closed) => {}
        () = sleep(session.config.close_timeout) => session.close(CloseReason::ForcedClose),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use tokio::time::advance;

    use super::*;

    fn session(transport: Transport) -> (Arc<Session>, mpsc::Receiver<Message>) {
        let config = EngineConfig {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            max_queued_packets: 4,
            max_queued_bytes: 100,
            ..EngineConfig::default()
        };
        let (session, inbound) = Session::new(
            Sid::random(),
            Arc::new(config),
            transport,
            Weak::new(),
            None,
        );
        {
            let mut state = session.lock();
            state.queue.clear();
            state.queued_bytes = 0;
        }
        (session, inbound)
    }

    /// Lets the spawned tasks run after the clock moved.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    fn queued(session: &Session) -> Vec<Packet> {
        session.lock().queue.drain(..).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn first_ping_comes_after_the_interval_and_a_missing_pong_closes() {
        let (session, _inbound) = session(Transport::Websocket);
        session.spawn_heartbeat();
        advance(Duration::from_millis(299)).await;
        settle().await;
        assert!(queued(&session).is_empty(), "no ping before ping_interval");
        advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(queued(&session), vec![Packet::ping()]);

        // The pong restarts the interval from its arrival.
        advance(Duration::from_millis(100)).await;
        session.receive(Packet::pong()).await.unwrap();
        settle().await;
        advance(Duration::from_millis(299)).await;
        settle().await;
        assert!(queued(&session).is_empty());
        advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(queued(&session), vec![Packet::ping()]);

        // No pong this time.
        advance(Duration::from_millis(199)).await;
        settle().await;
        assert!(!session.is_closed());
        advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(session.close_reason(), Some(CloseReason::PingTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_pong_is_noticed_before_the_timer_fires() {
        let (session, _inbound) = session(Transport::Polling);
        session.ping(Instant::now()).unwrap();
        assert!(session.expire_if_overdue());
        assert_eq!(session.close_reason(), Some(CloseReason::PingTimeout));
    }

    #[tokio::test]
    async fn a_graceful_close_delivers_the_queue_then_a_close_packet() {
        let (session, _inbound) = session(Transport::Polling);
        session.send(Message::Text("2[\"bye\"]".into())).unwrap();
        session.disconnect();
        assert_eq!(
            session.send(Message::Text("late".into())),
            Err(SendError::Closed)
        );
        let poll = {
            let mut state = session.lock();
            session.take_poll(&mut state, false).unwrap().unwrap()
        };
        assert_eq!(poll.body, "42[\"bye\"]\x1e1");
        assert!(poll.finish);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_closed() {
        let (session, _inbound) = session(Transport::Websocket);
        for _ in 0..4 {
            session.send(Message::Text("x".into())).unwrap();
        }
        assert_eq!(
            session.send(Message::Text("x".into())),
            Err(SendError::QueueFull)
        );
        assert_eq!(session.close_reason(), Some(CloseReason::SlowClient));
    }

    fn text(len: usize) -> Message {
        // `held_len` counts the packet: the type digit and the text.
        Message::Text("x".repeat(len - 1).as_str().into())
    }

    #[tokio::test]
    async fn a_client_with_too_many_bytes_waiting_is_closed() {
        let (session, _inbound) = session(Transport::Polling);
        session.send(text(60)).unwrap();
        session.send(text(40)).unwrap();
        assert_eq!(session.send(text(1)), Err(SendError::QueueFull));
        assert_eq!(session.close_reason(), Some(CloseReason::SlowClient));

        // What a poll takes no longer counts.
        let (session, _inbound) = self::session(Transport::Polling);
        session.send(text(60)).unwrap();
        let poll = {
            let mut state = session.lock();
            session.take_poll(&mut state, false).unwrap().unwrap()
        };
        assert_eq!(poll.body.len(), 60);
        session.send(text(60)).unwrap();
        session.send(text(40)).unwrap();
        assert!(!session.is_closed());
    }

    #[tokio::test]
    async fn a_packet_larger_than_the_cap_goes_to_a_client_with_nothing_waiting() {
        let (session, _inbound) = session(Transport::Polling);
        session.send(text(500)).unwrap();
        assert_eq!(session.send(text(1)), Err(SendError::QueueFull));
        assert_eq!(session.close_reason(), Some(CloseReason::SlowClient));
    }

    #[tokio::test]
    async fn what_a_websocket_write_took_counts_until_it_is_written() {
        let (session, _inbound) = session(Transport::Websocket);
        session.send(text(60)).unwrap();
        let (taken, _) = session.take_all().unwrap();
        assert_eq!(taken.len(), 1);
        // The client has not read it yet: 60 + 41 is too much.
        let (later, _inbound) = self::session(Transport::Websocket);
        later.send(text(60)).unwrap();
        later.take_all().unwrap();
        assert_eq!(later.send(text(41)), Err(SendError::QueueFull));
        // Once written, it no longer counts.
        session.written(60);
        session.send(text(100)).unwrap();
        assert!(!session.is_closed());
    }

    #[tokio::test]
    async fn client_messages_reach_the_application_until_the_close() {
        let (session, mut inbound) = session(Transport::Websocket);
        session
            .receive(Packet::Message("hello".into()))
            .await
            .unwrap();
        session
            .receive(Packet::Binary(Bytes::from_static(&[1])))
            .await
            .unwrap();
        assert_eq!(
            session.receive(Packet::Close).await,
            Err(CloseReason::ClientClose)
        );
        assert_eq!(inbound.recv().await, Some(Message::Text("hello".into())));
        assert_eq!(
            inbound.recv().await,
            Some(Message::Binary(Bytes::from_static(&[1])))
        );
        assert_eq!(inbound.recv().await, None);
        // A ping from the client is a protocol error.
        let (session, _inbound) = self::session(Transport::Websocket);
        assert_eq!(
            session.receive(Packet::ping()).await,
            Err(CloseReason::TransportError)
        );
    }
}

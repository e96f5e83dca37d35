//! Prometheus metrics of a chat node: counters and gauges bumped where things happen, and
//! their text exposition (format 0.0.4) on a listener of their own
//! ([`MetricsServer`], `--metrics-listen`), never on the public chat port.
//!
//! Every metric is a plain atomic in one process-wide [`Metrics`] ([`metrics()`]): a bump
//! is one relaxed `fetch_add`, with no lock, lookup or allocation on the paths that carry
//! messages. Labelled families are fixed arrays indexed by an enum, so their label sets
//! are known up front and every series is exported from the start (at 0), as Prometheus
//! prefers. The registry is process-wide rather than per [`crate::node::Node`]: a
//! deployed node is one process, and threading a handle through the engine, the bus, the
//! store and the forwarder would cost every one of them a field for no gain there. Nodes
//! that share a process (tests, `switchyard up` without Redis) add into the same numbers.
//!
//! Names follow the proxy's (`switchyard_*`, see `proxy/src/admin/metrics.rs`), under
//! `switchyard_chat_`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::chat::ChatError;
use crate::engineio::{CloseReason, Transport};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        // Relaxed: a scrape needs each number, not an order between them.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A number that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The Engine.IO transports, as label values.
const TRANSPORTS: [&str; 2] = ["polling", "websocket"];

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Polling => 0,
        Transport::Websocket => 1,
    }
}

/// Why sessions close, as label values (in [`close_index`]'s order).
const CLOSE_REASONS: [&str; 8] = [
    "client_close",
    "transport_close",
    "transport_error",
    "ping_timeout",
    "parse_error",
    "forced_close",
    "server_shutdown",
    "slow_client",
];

fn close_index(reason: CloseReason) -> usize {
    match reason {
        CloseReason::ClientClose => 0,
        CloseReason::TransportClose => 1,
        CloseReason::TransportError => 2,
        CloseReason::PingTimeout => 3,
        CloseReason::ParseError => 4,
        CloseReason::ForcedClose => 5,
        CloseReason::ServerShutdown => 6,
        CloseReason::SlowClient => 7,
    }
}

/// Socket.IO packet types a client may send, as label values.
const PACKET_TYPES: [&str; 5] = ["connect", "disconnect", "event", "ack", "connect_error"];

/// The Socket.IO packet types a client sends (binary events and acks count as events and
/// acks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `CONNECT`.
    Connect,
    /// `DISCONNECT`.
    Disconnect,
    /// `EVENT` or `BINARY_EVENT`.
    Event,
    /// `ACK` or `BINARY_ACK`.
    Ack,
    /// `CONNECT_ERROR` (a protocol error from a client: the connection closes).
    ConnectError,
}

/// Why a chat message (`send`) was refused, as label values (in [`reject_index`]'s order).
const REJECT_REASONS: [&str; 10] = [
    "invalid_request",
    "invalid_room_name",
    "no_such_room",
    "not_member",
    "empty_text",
    "text_too_long",
    "rate_limited",
    "unavailable",
    "other",
    "timeout",
];

fn reject_index(error: &ChatError) -> usize {
    match error {
        ChatError::InvalidRequest => 0,
        ChatError::InvalidRoomName => 1,
        ChatError::NoSuchRoom => 2,
        ChatError::NotMember => 3,
        ChatError::EmptyText => 4,
        ChatError::TextTooLong => 5,
        ChatError::RateLimited => 6,
        ChatError::Unavailable => 7,
        ChatError::Timeout => 9,
        // Errors `send` does not answer with; a bucket all the same, should it start to.
        _ => 8,
    }
}

/// What a bus entry is for, as label values.
const TOPICS: [&str; 2] = ["broadcast", "forward"];

/// What a bus entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// A Socket.IO broadcast for the other nodes' sockets (the cluster adapter).
    Broadcast,
    /// A forwarded request, its answer, or a bridged WebSocket's frame (`--sessions
    /// shared`).
    Forward,
}

/// The parts of the node that talk to Redis, as label values.
const COMPONENTS: [&str; 3] = ["bus", "store", "directory"];

/// A part of the node that talks to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The message bus (streams, pub/sub).
    Bus,
    /// The chat store (rooms, history, presence, rate limits).
    Store,
    /// The session directory (which node owns which session).
    Directory,
}

/// Forwarded operations, as label values.
const OPS: [&str; 2] = ["poll", "post"];

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    sessions_open: [Gauge; 2],
    handshakes: [Counter; 2],
    /// Handshakes refused at the connection limit.
    pub handshakes_refused: Counter,
    /// Handshakes refused at the per-client session limit.
    pub client_handshakes_refused: Counter,
    /// TCP connections refused at the connection cap.
    pub tcp_connections_refused: Counter,
    /// Sessions moved from polling to WebSocket.
    pub upgrades: Counter,
    sessions_closed: [Counter; 8],
    packets_received: [Counter; 5],
    /// Socket.IO packets queued for clients.
    pub packets_sent: Counter,
    /// Engine.IO packets written to WebSocket clients, one frame each.
    pub websocket_frames: Counter,
    /// Writes to WebSocket clients (each a send of one or more frames).
    pub websocket_writes: Counter,
    /// Chat messages stored and broadcast.
    pub messages_accepted: Counter,
    messages_rejected: [Counter; 10],
    /// Successful `join`s.
    pub room_joins: Counter,
    bus_published: [Counter; 2],
    bus_publish_failures: [Counter; 2],
    bus_received: [Counter; 2],
    /// Bus entries that could not be read (a node of another version, or garbage).
    pub bus_skipped: Counter,
    redis_errors: [Counter; 3],
    forwarded: [Counter; 2],
    /// Forwarded requests whose owner did not answer in time.
    pub forward_timeouts: Counter,
    /// Requests served here for another node's client.
    pub forward_served: Counter,
    /// WebSockets bridged to another node's session, in total.
    pub bridges: Counter,
    /// WebSockets bridged to another node's session now.
    pub bridges_open: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `[Counter::new(); N]` for a non-`Copy` type, in a `const` context.
macro_rules! counters {
    ($n:literal) => {{
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: Counter = Counter::new();
        [ZERO; $n]
    }};
}

impl Metrics {
    /// Every metric at zero.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const GAUGE: Gauge = Gauge::new();
        Self {
            sessions_open: [GAUGE; 2],
            handshakes: counters!(2),
            handshakes_refused: Counter::new(),
            client_handshakes_refused: Counter::new(),
            tcp_connections_refused: Counter::new(),
            upgrades: Counter::new(),
            sessions_closed: counters!(8),
            packets_received: counters!(5),
            packets_sent: Counter::new(),
            websocket_frames: Counter::new(),
            websocket_writes: Counter::new(),
            messages_accepted: Counter::new(),
            messages_rejected: counters!(10),
            room_joins: Counter::new(),
            bus_published: counters!(2),
            bus_publish_failures: counters!(2),
            bus_received: counters!(2),
            bus_skipped: Counter::new(),
            redis_errors: counters!(3),
            forwarded: counters!(2),
            forward_timeouts: Counter::new(),
            forward_served: Counter::new(),
            bridges: Counter::new(),
            bridges_open: Gauge::new(),
        }
    }

    /// A session opened on `transport` (its handshake).
    pub fn session_opened(&self, transport: Transport) {
        self.handshakes[transport_index(transport)].inc();
        self.sessions_open[transport_index(transport)].inc();
    }

    /// `frames` written to a WebSocket client in one write.
    pub fn websocket_written(&self, frames: usize) {
        self.websocket_writes.inc();
        self.websocket_frames.add(frames as u64);
    }

    /// A session moved from polling to WebSocket.
    pub fn session_upgraded(&self) {
        self.upgrades.inc();
        self.sessions_open[transport_index(Transport::Polling)].dec();
        self.sessions_open[transport_index(Transport::Websocket)].inc();
    }

    /// A session on `transport` closed for `reason`.
    pub fn session_closed(&self, transport: Transport, reason: CloseReason) {
        self.sessions_open[transport_index(transport)].dec();
        self.sessions_closed[close_index(reason)].inc();
    }

    /// A session that never closed went away (it counted as open until now).
    pub fn session_dropped(&self, transport: Transport) {
        self.sessions_open[transport_index(transport)].dec();
    }

    /// Open sessions on `transport`.
    pub fn sessions_open(&self, transport: Transport) -> i64 {
        self.sessions_open[transport_index(transport)].get()
    }

    /// A Socket.IO packet from a client.
    pub fn packet_received(&self, kind: PacketType) {
        let i = match kind {
            PacketType::Connect => 0,
            PacketType::Disconnect => 1,
            PacketType::Event => 2,
            PacketType::Ack => 3,
            PacketType::ConnectError => 4,
        };
        self.packets_received[i].inc();
    }

    /// A chat message refused with `error`.
    pub fn message_rejected(&self, error: &ChatError) {
        self.messages_rejected[reject_index(error)].inc();
    }

    /// The bus took an entry for `topic` (`ok`), or refused it.
    pub fn bus_publish(&self, topic: Topic, ok: bool) {
        let i = topic as usize;
        if ok {
            self.bus_published[i].inc();
        } else {
            self.bus_publish_failures[i].inc();
        }
    }

    /// An entry for `topic` came from the bus.
    pub fn bus_received(&self, topic: Topic) {
        self.bus_received[topic as usize].inc();
    }

    /// A Redis command or connection of `component` failed.
    pub fn redis_error(&self, component: Component) {
        self.redis_errors[component as usize].inc();
    }

    /// A request of a client of another node's session was forwarded to its owner.
    pub fn forwarded(&self, post: bool) {
        self.forwarded[usize::from(post)].inc();
    }

    /// The text exposition of every metric; `node` labels `switchyard_chat_node_info`.
    pub fn render(&self, node: &str) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut w = Writer(&mut out);
        w.family(
            "node_info",
            "gauge",
            "Always 1; labels name the node and its version",
        );
        w.sample(
            "node_info",
            &[("node", node), ("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        w.family(
            "sessions_open",
            "gauge",
            "Open Engine.IO sessions, by the transport that carries them",
        );
        for (i, t) in TRANSPORTS.iter().enumerate() {
            w.sample(
                "sessions_open",
                &[("transport", t)],
                self.sessions_open[i].get(),
            );
        }
        w.labelled(
            "handshakes_total",
            "counter",
            "Engine.IO sessions opened, by the transport of the handshake",
            "transport",
            &TRANSPORTS,
            &self.handshakes,
        );
        w.single(
            "handshakes_refused_total",
            "counter",
            "Handshakes refused at the connection limit (--max-connections)",
            self.handshakes_refused.get(),
        );
        w.single(
            "client_handshakes_refused_total",
            "counter",
            "Handshakes refused at the per-client session limit (--max-sessions-per-client)",
            self.client_handshakes_refused.get(),
        );
        w.single(
            "tcp_connections_refused_total",
            "counter",
            "TCP connections refused at the connection cap (--max-tcp-connections)",
            self.tcp_connections_refused.get(),
        );
        w.single(
            "upgrades_total",
            "counter",
            "Sessions upgraded from polling to WebSocket",
            self.upgrades.get(),
        );
        w.labelled(
            "sessions_closed_total",
            "counter",
            "Engine.IO sessions closed, by reason",
            "reason",
            &CLOSE_REASONS,
            &self.sessions_closed,
        );
        w.labelled(
            "socketio_packets_received_total",
            "counter",
            "Socket.IO packets from clients, by type",
            "type",
            &PACKET_TYPES,
            &self.packets_received,
        );
        w.single(
            "socketio_packets_sent_total",
            "counter",
            "Socket.IO packets queued for clients (a broadcast counts once per socket)",
            self.packets_sent.get(),
        );
        w.single(
            "websocket_frames_total",
            "counter",
            "Engine.IO packets written to WebSocket clients, one frame each",
            self.websocket_frames.get(),
        );
        w.single(
            "websocket_writes_total",
            "counter",
            "Writes to WebSocket clients; frames per write shows how much --ws-flush-interval coalesces",
            self.websocket_writes.get(),
        );
        w.single(
            "messages_accepted_total",
            "counter",
            "Chat messages (send) stored and broadcast",
            self.messages_accepted.get(),
        );
        w.labelled(
            "messages_rejected_total",
            "counter",
            "Chat messages (send) refused, by reason",
            "reason",
            &REJECT_REASONS,
            &self.messages_rejected,
        );
        w.single(
            "room_joins_total",
            "counter",
            "Successful joins of a room",
            self.room_joins.get(),
        );
        w.labelled(
            "bus_published_total",
            "counter",
            "Entries handed to the bus for the other nodes, by purpose",
            "topic",
            &TOPICS,
            &self.bus_published,
        );
        w.labelled(
            "bus_publish_failures_total",
            "counter",
            "Entries the bus refused (Redis unreachable and its buffer full), by purpose",
            "topic",
            &TOPICS,
            &self.bus_publish_failures,
        );
        w.labelled(
            "bus_received_total",
            "counter",
            "Entries from other nodes read from the bus, by purpose",
            "topic",
            &TOPICS,
            &self.bus_received,
        );
        w.single(
            "bus_skipped_total",
            "counter",
            "Bus entries skipped as unreadable (a node of another version, or malformed)",
            self.bus_skipped.get(),
        );
        w.labelled(
            "redis_errors_total",
            "counter",
            "Failed Redis commands or connections, by the part of the node that made them",
            "component",
            &COMPONENTS,
            &self.redis_errors,
        );
        w.labelled(
            "forwarded_requests_total",
            "counter",
            "Polling requests forwarded to the node that owns their session, by operation",
            "op",
            &OPS,
            &self.forwarded,
        );
        w.single(
            "forward_timeouts_total",
            "counter",
            "Forwarded requests whose owner did not answer in time",
            self.forward_timeouts.get(),
        );
        w.single(
            "forward_served_total",
            "counter",
            "Requests served here for a client of another node",
            self.forward_served.get(),
        );
        w.single(
            "bridges_total",
            "counter",
            "WebSockets bridged to the node that owns their session",
            self.bridges.get(),
        );
        w.family(
            "bridges_open",
            "gauge",
            "WebSockets bridged to another node's session now",
        );
        w.sample("bridges_open", &[], self.bridges_open.get());
        out
    }
}

/// Writes the exposition format. Writing to a `String` cannot fail, so `write!`'s result
/// is dropped.
struct Writer<'a>(&'a mut String);

impl Writer<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(
            self.0,
            "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}\n"
        );
    }

    /// One sample; label values here are constants or a node id (escaped anyway).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "{PREFIX}{name}");
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                escape_label(self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: &[&str],
        counters: &[Counter],
    ) {
        self.family(name, kind, help);
        for (value, counter) in values.iter().zip(counters) {
            self.sample(name, &[(label, value)], counter.get());
        }
    }
}

/// The prefix of every metric name.
const PREFIX: &str = "switchyard_chat_";

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

static METRICS: Metrics = Metrics::new();

/// The process's metrics.
#[inline]
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The metrics listener's routes: `GET /metrics`, 404 elsewhere. No `/healthz`: the chat
/// port has it, and it is the one a balancer must probe.
pub fn router(node: String) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = metrics().render(&node);
            async move { exposition(body) }
        }),
    )
}

fn exposition(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

/// How long a stopping metrics listener waits for a scrape in flight.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The metrics listener ([`router`]), running on its own task.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves the metrics of node `node` there until [`stop`](Self::stop).
    /// Call inside a Tokio runtime.
    pub async fn start(addr: SocketAddr, node: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = axum::serve(listener, router(node)).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { server.await });
        Ok(Self { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving. Called once the node has stopped, so that a scrape during the
    /// shutdown still sees its numbers; bounded: a scraper's idle connection is no reason
    /// to outlive the node's grace period.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(STOP_GRACE, self.task).await {
            Ok(Ok(Ok(()))) | Err(_) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the metrics listener failed"),
            Ok(Err(error)) => tracing::warn!(%error, "the metrics listener's task failed"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_series_once_with_help_and_type() {
        let m = Metrics::new();
        m.session_opened(Transport::Polling);
        m.session_upgraded();
        m.session_closed(Transport::Websocket, CloseReason::PingTimeout);
        m.message_rejected(&ChatError::RateLimited);
        m.bus_publish(Topic::Forward, false);
        m.redis_error(Component::Store);
        m.websocket_written(3);
        m.websocket_written(1);
        let text = m.render("n\"1");
        assert!(text.contains("switchyard_chat_websocket_frames_total 4\n"));
        assert!(text.contains("switchyard_chat_websocket_writes_total 2\n"));
        assert!(text.contains("switchyard_chat_node_info{node=\"n\\\"1\",version=\""));
        assert!(text.contains("switchyard_chat_handshakes_total{transport=\"polling\"} 1\n"));
        assert!(text.contains("switchyard_chat_upgrades_total 1\n"));
        assert!(text.contains("switchyard_chat_sessions_open{transport=\"polling\"} 0\n"));
        assert!(text.contains("switchyard_chat_sessions_open{transport=\"websocket\"} 0\n"));
        assert!(text.contains("switchyard_chat_sessions_closed_total{reason=\"ping_timeout\"} 1\n"));
        assert!(
            text.contains("switchyard_chat_messages_rejected_total{reason=\"rate_limited\"} 1\n")
        );
        assert!(text.contains("switchyard_chat_bus_publish_failures_total{topic=\"forward\"} 1\n"));
        assert!(text.contains("switchyard_chat_redis_errors_total{component=\"store\"} 1\n"));
        // Every family has HELP and TYPE, once, before its samples.
        let mut families = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(families.insert(name.to_owned()), "{name} twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(families.contains(name), "{name} without TYPE");
            }
        }
    }
}

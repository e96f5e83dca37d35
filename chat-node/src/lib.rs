//! chat-node: Switchyard's Socket.IO v4 server, whose sessions live in Redis so that any node
//! can serve any request.
//!
//! # Layout
//! - [`engineio`]: Engine.IO v4, the transport layer: packets ([`engineio::packet`]) and
//!   HTTP long-polling payloads ([`engineio::payload`]); the server ([`engineio::EngineIo`]:
//!   session table, handshake, HTTP handler), one session ([`engineio::session`]: queue,
//!   upgrade state, heartbeat), long-polling ([`engineio::polling`]) and WebSocket.
//! - [`socketio`]: Socket.IO v5 on top of it: packets, their encoder and the decoder that
//!   reassembles binary packets ([`socketio::packet`]), event arguments with binary leaves
//!   ([`socketio::data`]); the server ([`socketio::SocketIo`]) with its namespaces, sockets,
//!   acks, and rooms behind the [`socketio::Adapter`] trait.
//! - [`bus`]: the message bus between nodes ([`bus::Bus`]): in process
//!   ([`bus::MemoryBus`]) or on Redis Streams ([`bus::RedisBus`]).
//! - [`cluster`]: the cross-node adapter ([`cluster::ClusterAdapter`]): local rooms, and
//!   every broadcast also published on the bus for the other nodes.
//! - [`recovery`]: connection-state recovery: private session ids, the records of
//!   recoverable sockets ([`recovery::SessionStore`], in process or in Redis), replayed
//!   from the namespace's bus log.
//! - [`forward`]: sessions without stickiness: the owner directory
//!   ([`forward::SessionDirectory`]), the forwarding of polling requests to a session's
//!   owner and the bridging of WebSocket upgrades to it, over the bus
//!   ([`forward::Forwarder`]).
//! - [`metrics`]: Prometheus metrics (plain atomics), served on their own listener
//!   (`--metrics-listen`).
//! - [`conn`]: the node's TCP connections: a cap, header-read and idle timeouts, HTTP/1
//!   and h2c with upgrades.
//! - [`client_addr`]: which client a request comes from (`X-Forwarded-For` from trusted
//!   proxies), for the limits counted per client.
//! - [`node`]: one chat node: settings ([`node::NodeConfig`]), the HTTP application
//!   (engine path, `/healthz`, `x-served-by`), serving with a bounded graceful shutdown.
//! - [`web`]: the browser chat page (`web/`: HTML, CSS, the JavaScript Socket.IO client),
//!   embedded in the binary and served at `/` and `/assets/…` with a strict CSP.
//! - [`cli`]: the `chat-node` binary's command line (flags with environment fallbacks).
//! - [`chat`]: the chat application on namespace `/` (rooms, private rooms, history,
//!   presence; contract in `docs/chat-api.md`), on Redis or an embedded store.
//! - [`conformance`]: the servers the official protocol test suites run against (the
//!   `conformance` binary).
//!
//! The codecs are pure: no I/O, no clocks; decoding never panics on any input. Servers are
//! functions of an injected listener and a shutdown future ([`engineio::EngineIo::serve`],
//! [`node::Node::serve`]).

#![forbid(unsafe_code)]
// The crate's readers are its developers: its docs are built with --document-private-items,
// where links to private items resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod bus;
pub mod chat;
pub mod cli;
pub mod client_addr;
pub mod cluster;
pub mod conformance;
pub mod conn;
pub mod engineio;
pub mod forward;
mod log_every;
pub mod metrics;
pub mod node;
pub mod recovery;
pub mod socketio;
pub mod web;

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
//! - [`conformance`]: the servers the official protocol test suites run against (the
//!   `conformance` binary).
//!
//! The codecs are pure: no I/O, no clocks; decoding never panics on any input. Servers are
//! functions of an injected listener and a shutdown future ([`engineio::EngineIo::serve`]).

#![forbid(unsafe_code)]

pub mod conformance;
pub mod engineio;
pub mod socketio;

//! chat-node: Switchyard's Socket.IO v4 server, whose sessions live in Redis so that any node
//! can serve any request.
//!
//! # Layout
//! - [`engineio`]: Engine.IO v4, the transport layer: packets ([`engineio::packet`]) and
//!   HTTP long-polling payloads ([`engineio::payload`]).
//! - [`socketio`]: Socket.IO v5 on top of it: packets, their encoder and the decoder that
//!   reassembles binary packets ([`socketio::packet`]), and event arguments with binary
//!   leaves ([`socketio::data`]).
//!
//! Both layers are pure codecs: no I/O, no clocks; decoding never panics on any input.

#![forbid(unsafe_code)]

pub mod engineio;
pub mod socketio;

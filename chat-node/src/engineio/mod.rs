//! Engine.IO v4: the transport layer under Socket.IO (handshake, heartbeat, messages over
//! HTTP long-polling and WebSocket, and the upgrade between them).
//!
//! - [`packet`]: one packet, its text form and its WebSocket frame.
//! - [`text`]: a message's text, encoded once and shared ([`MessageText`]).
//! - [`payload`]: polling payloads, several packets joined by `\x1e`.
//! - [`config`]: the server's settings ([`EngineConfig`], [`Cors`]).
//! - [`sid`]: session ids.
//! - [`error`]: the HTTP errors of the reference server.
//! - [`session`]: one session: outbound queue, transport and upgrade state, heartbeat,
//!   close.
//! - [`polling`]: long-polling GET and POST on a session.
//! - [`pacing`]: how long a WebSocket write waits for more packets, by the node's load.
//! - `websocket` (private): the WebSocket transport and the upgrade from polling.
//! - [`server`]: the session table, the handshake, the HTTP handler ([`EngineIo`]).
//! - [`echo`]: a handler that echoes every message (the official test suite's server).

pub mod config;
pub mod echo;
pub mod error;
pub mod pacing;
pub mod packet;
pub mod payload;
pub mod polling;
pub mod server;
pub mod session;
pub mod sid;
pub mod text;
pub(crate) mod websocket;

pub use config::{ConfigError, Cors, EngineConfig, MAX_FLUSH_INTERVAL};
pub use error::EngineError;
pub use packet::{DecodeError, Frame, OpenPacket, Packet, PacketType, Transport};
pub use payload::{Batch, PayloadError};
pub use server::{EngineIo, Handler, Remote, Sessions};
pub use session::{CloseReason, Message, SendError, Session};
pub use sid::{Sid, SidMap, SidSet};
pub use text::MessageText;

/// The Engine.IO protocol version this crate speaks (`EIO=4`).
pub const PROTOCOL_VERSION: u8 = 4;

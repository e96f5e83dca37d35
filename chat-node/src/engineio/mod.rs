//! Engine.IO v4: the transport layer under Socket.IO (handshake, heartbeat, messages over
//! HTTP long-polling and WebSocket).
//!
//! - [`packet`]: one packet, its text form and its WebSocket frame.
//! - [`payload`]: polling payloads, several packets joined by `\x1e`.

pub mod packet;
pub mod payload;

pub use packet::{DecodeError, Frame, OpenPacket, Packet, PacketType, Transport};
pub use payload::{Batch, PayloadError};

/// The Engine.IO protocol version this crate speaks (`EIO=4`).
pub const PROTOCOL_VERSION: u8 = 4;

//! Socket.IO v5: namespaces, events, acks and binary attachments, carried in Engine.IO
//! messages.
//!
//! - [`packet`]: packets, their encoder, and the [`Decoder`] that reassembles binary packets.
//! - [`data`]: the arguments of events and acks, JSON with binary leaves.

pub mod data;
pub mod packet;

pub use data::{Data, Object};
pub use packet::{
    ConnectReply, DecodeError, Decoder, Encoded, Namespace, Packet, PacketData, PacketType,
    RecoveryRequest,
};

/// The Socket.IO protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 5;

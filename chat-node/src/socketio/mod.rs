//! Socket.IO v5: namespaces, events, acks and binary attachments, carried in Engine.IO
//! messages.
//!
//! - [`packet`]: packets, their encoder, and the [`Decoder`] that reassembles binary packets.
//! - [`data`]: the arguments of events and acks, JSON with binary leaves.
//! - [`server`]: the server ([`SocketIo`]): settings, registered namespaces, the Engine.IO
//!   handler.
//! - `client` (private): one task per connection: decoding, routing to sockets, connect
//!   hooks, `connect_timeout`.
//! - [`namespace`]: a namespace ([`Nsp`]), its connect hook ([`ConnectHook`],
//!   [`ConnectError`]), its sockets.
//! - [`socket`]: one socket ([`SocketRef`]): emit, event handlers, rooms, disconnect.
//! - [`ack`]: acks in both directions ([`AckSender`], [`AckError`]).
//! - [`adapter`]: rooms and broadcasts behind the [`Adapter`] trait, with the in-process
//!   [`LocalAdapter`].
//! - [`broadcast`]: `to(room)` / `except(room)` / `emit` ([`BroadcastOperator`]).

pub mod ack;
pub mod adapter;
pub mod broadcast;
mod client;
pub mod data;
pub mod namespace;
pub mod packet;
pub mod server;
pub mod socket;

pub use ack::{AckError, AckSender};
pub use adapter::{
    Adapter, AdapterError, AdapterFactory, BroadcastOptions, JointOutcome, JointStep, LocalAdapter,
    LocalAdapterFactory, LocalSockets, Replay, Room, TakenSession,
};
pub use broadcast::BroadcastOperator;
pub use data::{Data, Object};
pub use namespace::{ConnectError, ConnectHook, Nsp, RecoveryCheck};
pub use packet::{
    ConnectReply, DecodeError, Decoder, Encoded, Namespace, Packet, PacketData, PacketType,
    RecoveryRequest,
};
pub use server::{SocketIo, SocketIoConfig};
pub use socket::{DisconnectReason, EmitError, EventHandler, SocketRef};

/// The Socket.IO protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 5;

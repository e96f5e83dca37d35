//! WebSocket tunnels: the upstream handshake and the low-memory byte relay.

pub mod frames;
pub mod handshake;
pub mod relay;

//! WebSocket tunnels: the upstream handshake and the low-memory byte relay.

pub mod handshake;
pub mod relay;

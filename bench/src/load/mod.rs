//! Load generation in Rust: keep-alive HTTP clients (closed and open loop) and WebSocket
//! clients, each bound to its own 127.0.x.y source address.

pub mod engineio;
pub mod http;
pub mod socketio;
pub mod ws;

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// The source address of client `i`: 127.0.a.b with b in 2..=251, so that clients are
/// distinct to ip_hash and ephemeral ports do not run out.
pub fn source_ip(i: usize) -> Ipv4Addr {
    let a = 1 + (i / 250) % 250;
    let b = 2 + i % 250;
    Ipv4Addr::new(127, 0, a as u8, b as u8)
}

/// Connects to `addr` from client `i`'s source address.
pub async fn connect_from(i: usize, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source_ip(i).into(), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Index of `id` among the backend ids.
pub fn backend_index(ids: &[String], id: &[u8]) -> Option<usize> {
    ids.iter().position(|b| b.as_bytes() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_are_distinct_and_loopback() {
        let all: std::collections::HashSet<_> = (0..10_000).map(source_ip).collect();
        assert_eq!(all.len(), 10_000);
        assert!(all.iter().all(|ip| ip.is_loopback()));
    }
}

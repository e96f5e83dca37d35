//! Idle keep-alive connections to backends, reused by the HTTP/1 path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::upstream::stream::UpstreamStream;

/// A backend's address and the TLS settings and name its connections were opened with
/// ([`crate::upstream::tls::TlsClient::pool_key`], zeros for plain TCP): a connection is
/// only reused under the settings and name that opened it.
pub type Key = (SocketAddr, (u64, u64));

struct Idle {
    stream: UpstreamStream,
    since: Instant,
}

/// Idle connections per backend address, most recently used last (reused first: it is
/// the one most likely still open, and the oldest age out at the front).
pub struct Pool {
    /// Keyed by backend addresses from our own configuration: no hash flooding to fear,
    /// so a fast hash instead of SipHash (two lookups per request).
    idle: Mutex<HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>>,
    max_per_backend: usize,
    max_idle: Duration,
}

impl Pool {
    pub fn new(max_per_backend: usize, max_idle: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::default()),
            max_per_backend,
            max_idle,
        }
    }

    /// An idle connection for `key` that is still open and has nothing unread, if there is
    /// one. `now` is the caller's clock reading (it has one for the request already).
    ///
    /// Every connection is checked, even one used a moment ago: bytes a backend sent after
    /// the end of its last response (a body on a 204 or a HEAD answer written late, a
    /// second answer) would otherwise be read as the answer to the next request, which may
    /// be another client's, and every answer on that connection after it would be one
    /// late. A close that has already arrived is seen here too, before a request is lost
    /// in it. The check costs no system call unless the socket has been reported readable
    /// since its last read (tokio clears readiness on a read that does not fill the
    /// buffer, as the last read of an answer almost always is).
    pub fn take(&self, key: Key, now: Instant) -> Option<UpstreamStream> {
        loop {
            let mut idle = self.idle.lock().get_mut(&key)?.pop()?;
            let age = now.saturating_duration_since(idle.since);
            if age > self.max_idle {
                // Everything below it is older still.
                if let Some(list) = self.idle.lock().get_mut(&key) {
                    list.clear();
                }
                return None;
            }
            if !idle.stream.still_open() {
                continue;
            }
            return Some(idle.stream);
        }
    }

    /// Keeps a connection whose last response was read completely, for reuse; `now` is the
    /// caller's clock reading.
    pub fn put(&self, key: Key, stream: UpstreamStream, now: Instant) {
        let mut map = self.idle.lock();
        let list = map.entry(key).or_default();
        let expired = list
            .iter()
            .take_while(|i| now.saturating_duration_since(i.since) > self.max_idle)
            .count();
        // Guarded: a drain of nothing still costs its drop glue on every request.
        if expired > 0 {
            list.drain(..expired);
        }
        if list.len() >= self.max_per_backend {
            list.remove(0);
        }
        list.push(Idle { stream, since: now });
    }

    /// Drops the idle connections that expired or that their backend closed. Run now and
    /// then, so that a pool nobody takes from does not keep closed sockets (CLOSE_WAIT)
    /// until the next request to that backend.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut map = self.idle.lock();
        for list in map.values_mut() {
            list.retain_mut(|i| {
                now.saturating_duration_since(i.since) <= self.max_idle && i.stream.still_open()
            });
        }
        map.retain(|_, list| !list.is_empty());
    }

    /// Number of idle connections for `key` (for tests and metrics).
    pub fn idle_count(&self, key: Key) -> usize {
        self.idle.lock().get(&key).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    fn plain(s: TcpStream) -> UpstreamStream {
        UpstreamStream::Plain(s)
    }

    #[tokio::test]
    async fn reuses_open_connections_and_drops_closed_ones() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = (listener.local_addr()?, (0, 0));
        let pool = Pool::new(2, Duration::from_secs(30));
        let a = TcpStream::connect(addr.0).await?;
        let (server_a, _) = listener.accept().await?;
        pool.put(addr, plain(a), Instant::now());
        assert_eq!(pool.idle_count(addr), 1);
        assert!(pool.take(addr, Instant::now()).is_some());
        assert!(pool.take(addr, Instant::now()).is_none());

        // A connection the backend closed is not handed out, even one used a moment ago.
        let b = TcpStream::connect(addr.0).await?;
        drop(server_a);
        let (server_b, _) = listener.accept().await?;
        drop(server_b);
        b.readable().await?;
        pool.put(addr, plain(b), Instant::now());
        assert!(pool.take(addr, Instant::now()).is_none());

        // Nor one the backend sent bytes on after its last answer.
        let e = TcpStream::connect(addr.0).await?;
        let (mut server_e, _) = listener.accept().await?;
        tokio::io::AsyncWriteExt::write_all(&mut server_e, b"HTTP/1.1 200 OK\r\n").await?;
        e.readable().await?;
        pool.put(addr, plain(e), Instant::now());
        assert!(pool.take(addr, Instant::now()).is_none());

        // A sweep drops closed connections nobody asked for.
        let d = TcpStream::connect(addr.0).await?;
        let (server_d, _) = listener.accept().await?;
        drop(server_d);
        d.readable().await?;
        pool.put(addr, plain(d), Instant::now());
        pool.sweep();
        assert_eq!(pool.idle_count(addr), 0);

        // The oldest goes when the pool is full.
        for _ in 0..3 {
            let c = TcpStream::connect(addr.0).await?;
            let _ = listener.accept().await?;
            pool.put(addr, plain(c), Instant::now());
        }
        assert_eq!(pool.idle_count(addr), 2);
        Ok(())
    }
}

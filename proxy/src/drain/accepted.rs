//! The connections this process has accepted on its listeners and still holds, as the
//! kernel lists them (Linux `/proc`).
//!
//! The drain's count ([`super::Counted`], and [`crate::handshakes`] on a TLS listener)
//! sees a connection only once pingora runs its task. A connection accepted just before
//! the listeners stopped, whose task has not run yet on a loaded machine, is in neither
//! the count nor the listen queue that the next process takes over: exiting then cuts it. The kernel's view has no
//! such gap: an accepted socket is in this process's file table from `accept` until it is
//! closed.

use std::collections::HashSet;
use std::fs;

/// The TCP state `/proc/net/tcp` gives a listening socket.
const LISTEN: &str = "0A";

/// The ports of the proxy's listeners, whose accepted sockets are looked for.
pub struct Accepted {
    ports: HashSet<u16>,
}

impl Accepted {
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        Self {
            ports: ports.into_iter().collect(),
        }
    }

    /// How many sockets accepted on a listener this process holds open, or `None` where
    /// `/proc` cannot tell (another OS, `/proc` not mounted).
    pub fn open(&self) -> Option<usize> {
        let inodes = own_socket_inodes()?;
        let mut n = 0;
        let mut read_any = false;
        for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
            // tcp6 is absent where IPv6 is disabled.
            if let Ok(text) = fs::read_to_string(table) {
                read_any = true;
                n += count(&text, &self.ports, &inodes);
            }
        }
        read_any.then_some(n)
    }
}

/// The inodes of the sockets in this process's file table (`socket:[inode]` links).
fn own_socket_inodes() -> Option<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            // Closed since the directory was read.
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        inodes.extend(inode);
    }
    Some(inodes)
}

/// The rows of a `/proc/net/tcp` table (`sl local_address rem_address st ... inode`)
/// that are one of `inodes`, not listening, with a local port in `ports`. A connection
/// this process opened (to a backend, a health check) cannot have a listener's port as
/// its local port: the kernel never picks a port bound by a listening socket for it.
fn count(table: &str, ports: &HashSet<u16>, inodes: &HashSet<u64>) -> usize {
    let accepted = |row: &str| {
        let mut fields = row.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        let inode: u64 = fields.nth(5)?.parse().ok()?;
        let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        Some(state != LISTEN && ports.contains(&port) && inodes.contains(&inode))
    };
    table
        .lines()
        .skip(1)
        .filter(|row| accepted(row) == Some(true))
        .count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // Rows as Linux 6.x writes them: a listener on 8443, a connection accepted on it, one
    // accepted by another process (inode not ours), and one this process opened to a
    // backend on port 8443 (remote port, not local).
    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:20FB 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:20FB 0100007F:A1B3 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C350 0200007F:20FB 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn only_this_processs_accepted_sockets_on_a_listener_port_count() {
        let ports = HashSet::from([8443]);
        let ours = HashSet::from([1001, 1002, 1003]);
        assert_eq!(count(TABLE, &ports, &ours), 1);
        let both = HashSet::from([1001, 1002, 1003, 2002]);
        assert_eq!(count(TABLE, &ports, &both), 2);
        assert_eq!(count(TABLE, &HashSet::from([80]), &both), 0);
    }

    #[test]
    fn a_short_or_garbled_row_is_skipped() {
        let ports = HashSet::from([8443]);
        let ours = HashSet::from([1002]);
        let table = "header\n   1: 0100007F:20FB\n   2: 0100007F:ZZZZ 0 01 a b c d e 1002\n";
        assert_eq!(count(table, &ports, &ours), 0);
    }

    #[test]
    fn this_process_is_seen_holding_a_socket_it_accepted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Accepted::new([port]);
        if accepted.open().is_none() {
            return; // no /proc here
        }
        assert_eq!(accepted.open(), Some(0));
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Queued, not accepted: the next process would take it.
        assert_eq!(accepted.open(), Some(0));
        let (conn, _) = listener.accept().unwrap();
        assert_eq!(accepted.open(), Some(1));
        drop(conn);
        assert_eq!(accepted.open(), Some(0));
    }
}

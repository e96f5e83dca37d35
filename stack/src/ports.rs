//! Addresses: refuse early, with the flag to change, when one the stack needs is taken
//! (the proxy would only fail later, deep inside its server); free ports for a private Redis.

use std::net::{SocketAddr, TcpListener};

use anyhow::{bail, Context as _, Result};

/// Fails with a friendly message when `addr` cannot be bound now.
pub fn ensure_free(addr: SocketAddr, what: &str, flag: &str) -> Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} ({what}) is already in use — is another `switchyard up` or proxy running? \
             Stop it, or pick another address with {flag}"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr} ({what}); see {flag}")),
    }
}

/// Whether listeners on `a` and `b` (the same port) would clash: the same address, or a
/// wildcard beside any address.
pub fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A port on 127.0.0.1 that is free now (the kernel's choice).
pub fn free_local_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener
        .local_addr()
        .context("reading a bound port")?
        .port())
}

/// The address to connect to for a listener bound to `addr`: the wildcard means loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_on_one_port_overlap_when_one_is_a_wildcard_or_both_are_one() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlap(at("127.0.0.1:80"), at("127.0.0.1:80")));
        assert!(overlap(at("0.0.0.0:80"), at("127.0.0.1:80")));
        assert!(!overlap(at("127.0.0.1:80"), at("127.0.0.2:80")));
        assert!(!overlap(at("127.0.0.1:80"), at("127.0.0.1:81")));
    }

    #[test]
    fn a_taken_address_is_refused_naming_the_flag() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = ensure_free(addr, "HTTPS", "--https")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already in use") && err.contains("--https"),
            "{err}"
        );
        drop(held);
        ensure_free(addr, "HTTPS", "--https").unwrap();
    }

    #[test]
    fn the_wildcard_connects_to_loopback() {
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert_eq!(connectable(any), "127.0.0.1:8443".parse().unwrap());
        let one: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(connectable(one), one);
    }
}

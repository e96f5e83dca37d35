//! Which client a request comes from, for the limits counted per client (sessions per
//! client, new users and room creations per client): the TCP peer, or, when the peer is a
//! trusted proxy (`--trusted-proxies`), the right-most address of `X-Forwarded-For` that
//! is not itself trusted — the proxy's own walk (`proxy::proxy::forwarded::client_ip`):
//! the left part of the header is whatever the client wrote, and only the hops our
//! proxies appended can be believed.
//!
//! A client is counted by [`ClientKey`]: its IPv4 address, or its IPv6 address's /64 (one
//! subscriber's network: a host that owns a /64 could otherwise take a fresh address for
//! every request).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use http::HeaderMap;
use ipnet::IpNet;

/// The networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// The default of `--trusted-proxies`: loopback, where `switchyard up` runs the proxy
/// beside its nodes.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";

/// A `--trusted-proxies` entry that is neither a CIDR block nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected CIDR blocks or addresses (`10.0.0.0/8,::1`) or `none`, got {0:?}")]
pub struct InvalidTrustedProxies(String);

impl FromStr for TrustedProxies {
    type Err = InvalidTrustedProxies;

    /// Comma-separated CIDR blocks or bare addresses; `none` (or nothing) trusts no one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("none") {
                continue;
            }
            let net = part
                .parse::<IpNet>()
                .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| InvalidTrustedProxies(part.to_owned()))?;
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl TrustedProxies {
    /// The default, loopback.
    pub fn loopback() -> Self {
        DEFAULT_TRUSTED_PROXIES.parse().unwrap_or_default()
    }

    /// Whether `ip` is one of them (an IPv4 client of a `[::]` listener, `::ffff:a.b.c.d`,
    /// as `a.b.c.d`).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.0
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// The client of a request from `peer` with these headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut candidate = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    candidate = ip.to_canonical();
                    if !self.contains(candidate) {
                        return candidate;
                    }
                }
                // Garbage in the chain: stop at the last address that could be believed.
                Err(_) => return candidate,
            }
        }
        candidate
    }
}

/// What the per-client limits count by: an IPv4 address, or an IPv6 address's /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Self(v4),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_addresses_and_none() {
        let trusted: TrustedProxies = "10.0.0.0/8, ::1 ,192.168.1.7".parse().unwrap();
        assert_eq!(trusted.to_string(), "10.0.0.0/8,::1/128,192.168.1.7/32");
        assert_eq!(
            "none".parse::<TrustedProxies>().unwrap().to_string(),
            "none"
        );
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.local".parse::<TrustedProxies>().is_err());
        assert_eq!(
            TrustedProxies::loopback().to_string(),
            "127.0.0.0/8,::1/128"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = TrustedProxies::loopback();
        let headers = xff(&["198.51.100.9"]);
        assert_eq!(
            trusted.client(ip("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("127.0.0.1"), &headers), ip("127.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_hop() {
        let trusted: TrustedProxies = "127.0.0.0/8,10.0.0.0/8".parse().unwrap();
        // The client wrote the first hop; our proxies appended the others.
        let headers = xff(&["1.1.1.1, 203.0.113.5", "10.0.0.2"]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &headers), ip("203.0.113.5"));
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Every hop trusted: the left-most.
        let headers = xff(&["10.0.0.3, 127.0.0.2"]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &headers), ip("10.0.0.3"));
        // Garbage: the last hop believed.
        let headers = xff(&["203.0.113.5, garbage, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("127.0.0.1"), &headers), ip("10.0.0.2"));
        // A `[::]` listener's view of an IPv4 proxy.
        let headers = xff(&["203.0.113.5"]);
        assert_eq!(
            trusted.client(ip("::ffff:127.0.0.1"), &headers),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = ClientKey::from(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientKey::from(ip("2001:db8:1:2:bbbb::2"));
        let c = ClientKey::from(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::from(ip("::ffff:192.0.2.1")).to_string(),
            "192.0.2.1"
        );
    }
}

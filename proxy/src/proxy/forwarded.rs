//! The client's address as the balancer sees it, and the X-Forwarded-* headers added to
//! every request sent upstream.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

/// The client address for balancing: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most address of X-Forwarded-For that is not itself trusted (the standard walk: the
/// left part of the header is client-controlled and cannot be believed).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let mut candidate = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                candidate = ip;
                if !trusted.iter().any(|n| n.contains(&ip)) {
                    return Some(ip);
                }
            }
            // Garbage in the chain: stop at the last address we could trust.
            Err(_) => return Some(candidate),
        }
    }
    Some(candidate)
}

/// The headers to set on the upstream request (names lowercase), as header values: the
/// request path builds each value once, with no intermediate strings.
pub fn forwarded_header_values(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    real_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
) -> [Option<(&'static str, HeaderValue)>; 4] {
    let mut xff = None;
    let mut peer_value = None;
    if let Some(peer) = peer {
        let mut prior = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .peekable();
        let value = if prior.peek().is_none() {
            let v = ip_value(peer);
            peer_value = Some(v.clone());
            v
        } else {
            let mut s = String::with_capacity(64);
            for p in prior {
                s.push_str(p);
                s.push_str(", ");
            }
            let _ = write!(s, "{peer}");
            // Built from visible ASCII only, so always valid.
            HeaderValue::try_from(s).unwrap_or_else(|_| ip_value(peer))
        };
        xff = Some(("x-forwarded-for", value));
    }
    let proto = Some((
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    ));
    // The host comes from a header that was valid visible ASCII, or from the URI.
    let host = host.and_then(|h| Some(("x-forwarded-host", HeaderValue::from_str(h).ok()?)));
    let real = real_ip.or(peer).map(|ip| {
        let v = match peer_value {
            Some(v) if Some(ip) == peer => v,
            _ => ip_value(ip),
        };
        ("x-real-ip", v)
    });
    [xff, proto, host, real]
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut s = String::with_capacity(39);
    let _ = write!(s, "{ip}");
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The headers to set on the upstream request (names lowercase), as strings.
pub fn forwarded_headers(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    real_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
) -> Vec<(&'static str, String)> {
    forwarded_header_values(headers, peer, real_ip, tls, host)
        .into_iter()
        .flatten()
        .map(|(n, v)| (n, v.to_str().map(str::to_string).unwrap_or_default()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hm(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(client_ip(Some(peer), &hm("1.2.3.4"), &[]), Some(peer));
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(Some(peer), &hm("1.2.3.4"), &trusted), Some(peer));
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let got = client_ip(Some(peer), &hm("6.6.6.6, 198.51.100.1, 10.0.0.9"), &trusted);
        assert_eq!(got, Some("198.51.100.1".parse().unwrap()));
        let got = client_ip(Some(peer), &hm("not-an-ip, 10.0.0.9"), &trusted);
        assert_eq!(got, Some("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn xff_is_appended() {
        let peer: IpAddr = "127.0.0.5".parse().unwrap();
        let h = forwarded_headers(&hm("1.1.1.1"), Some(peer), None, true, Some("a.example"));
        assert!(h.contains(&("x-forwarded-for", "1.1.1.1, 127.0.0.5".to_string())));
        assert!(h.contains(&("x-forwarded-proto", "https".to_string())));
        assert!(h.contains(&("x-forwarded-host", "a.example".to_string())));
        assert!(h.contains(&("x-real-ip", "127.0.0.5".to_string())));
    }
}

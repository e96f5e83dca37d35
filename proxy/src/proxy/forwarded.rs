//! The client's address as the balancer sees it, and the X-Forwarded-* headers added to
//! every request sent upstream.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use super::request_headers::same_field;

/// The values of every X-Forwarded-For field of a request, in order.
pub fn xff_values(headers: &HeaderMap) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// The client address for balancing: the TCP peer, or, when the peer is a trusted proxy, the
/// right-most address of X-Forwarded-For that is not itself trusted (the standard walk: the
/// left part of the header is client-controlled and cannot be believed). `xff` yields the
/// request's X-Forwarded-For field values; it is only consumed when the peer is trusted.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    xff: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    // A listener on `[::]` sees IPv4 clients as `::ffff:a.b.c.d`, the same host that the
    // list names as `a.b.c.d`: both forms are compared.
    let is_trusted = |ip: &IpAddr| {
        let canonical = ip.to_canonical();
        trusted
            .iter()
            .any(|n| n.contains(ip) || n.contains(&canonical))
    };
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let mut candidate = peer;
    let hops = xff
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                candidate = ip;
                if !is_trusted(&ip) {
                    return Some(ip);
                }
            }
            // Garbage in the chain: stop at the last address we could trust.
            Err(_) => return Some(candidate),
        }
    }
    Some(candidate)
}

/// The fields [`forwarded`] sets on upstream requests, and the ones that would say what
/// they say otherwise: whatever the client sent under these names is dropped, never passed
/// on beside ours (or instead of ours where we set none: a client's `X-Forwarded-Prefix`
/// would make a backend build its links and redirects under a path of the client's
/// choosing; a client's `X-Forwarded-Client-Cert` would claim a certificate it never
/// presented, on every listener, TLS or not; a client's RFC 7239 `Forwarded`, which Spring's
/// forwarded-header filter and Rack 3 read before the `X-Forwarded-*` fields, would name
/// the client address, scheme and host of its choosing, and its `X-Forwarded-Port` the
/// port of the links built with our `X-Forwarded-Host`).
pub const FORWARDED_FIELDS: [&str; 8] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
    crate::client_cert::XFCC,
];

/// Whether a client's field `name` is one of [`FORWARDED_FIELDS`], with `_` for `-` too:
/// CGI-style servers (PHP, WSGI, Rack) read `X_Forwarded_For` and `X-Forwarded-For` as the
/// same variable, so the underscore spelling would smuggle a client's value in beside ours.
pub fn is_forwarded_field(name: &str) -> bool {
    // Called for every field of every request: the length picks the one or two names to
    // compare (a test keeps this in step with the list).
    match name.len() {
        9 => same_field("x-real-ip", name) || same_field("forwarded", name),
        15 => same_field("x-forwarded-for", name),
        16 => same_field("x-forwarded-host", name) || same_field("x-forwarded-port", name),
        17 => same_field("x-forwarded-proto", name),
        18 => same_field("x-forwarded-prefix", name),
        23 => same_field(crate::client_cert::XFCC, name),
        _ => false,
    }
}

/// The value of one forwarded header, kept structured so that a writer can reuse text it
/// already has (the HTTP/1 path keeps each connection's peer address as text).
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'a> {
    Text(&'a str),
    Ip(IpAddr),
    /// An X-Forwarded-For chain received (`"a, b, "`) with our peer appended.
    Chain(&'a str, IpAddr),
}

impl std::fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Text(t) => f.write_str(t),
            FieldValue::Ip(ip) => write!(f, "{ip}"),
            FieldValue::Chain(prior, ip) => write!(f, "{prior}{ip}"),
        }
    }
}

/// Produces the headers to set on the upstream request (names lowercase), calling `emit`
/// once per header, so that each request path can write them in its own form (header
/// values for pingora, raw bytes for the HTTP/1 path) with no intermediate copies.
/// `prior_xff` yields the request's X-Forwarded-For field values; `prefix` is the path
/// prefix a route stripped (`X-Forwarded-Prefix`, as Traefik sets it); `client_cert` the
/// `X-Forwarded-Client-Cert` of a connection whose client presented a verified certificate.
#[allow(clippy::too_many_arguments)]
pub fn forwarded<'a>(
    prior_xff: impl IntoIterator<Item = &'a str>,
    peer: Option<IpAddr>,
    real_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
    prefix: Option<&str>,
    client_cert: Option<&str>,
    mut emit: impl FnMut(&'static str, FieldValue<'_>),
) {
    if let Some(peer) = peer {
        let mut prior = prior_xff.into_iter().peekable();
        if prior.peek().is_none() {
            emit("x-forwarded-for", FieldValue::Ip(peer));
        } else {
            let mut chain = String::with_capacity(64);
            for p in prior {
                chain.push_str(p);
                chain.push_str(", ");
            }
            emit("x-forwarded-for", FieldValue::Chain(&chain, peer));
        }
    }
    emit(
        "x-forwarded-proto",
        FieldValue::Text(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        emit("x-forwarded-host", FieldValue::Text(host));
    }
    if let Some(ip) = real_ip.or(peer) {
        emit("x-real-ip", FieldValue::Ip(ip));
    }
    if let Some(prefix) = prefix {
        emit("x-forwarded-prefix", FieldValue::Text(prefix));
    }
    if let Some(cert) = client_cert {
        emit(crate::client_cert::XFCC, FieldValue::Text(cert));
    }
}

/// The headers to set on the upstream request (names lowercase), as header values.
#[allow(clippy::too_many_arguments)]
pub fn forwarded_header_values(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    real_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
    prefix: Option<&str>,
    client_cert: Option<&str>,
) -> Vec<(&'static str, HeaderValue)> {
    // Built from addresses and from header values that were valid already; a host taken
    // from the URI that is not a valid value is left out rather than sent.
    forwarded_headers(headers, peer, real_ip, tls, host, prefix, client_cert)
        .into_iter()
        .filter_map(|(name, s)| Some((name, HeaderValue::try_from(s).ok()?)))
        .collect()
}

/// The headers to set on the upstream request (names lowercase), as strings.
#[allow(clippy::too_many_arguments)]
pub fn forwarded_headers(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    real_ip: Option<IpAddr>,
    tls: bool,
    host: Option<&str>,
    prefix: Option<&str>,
    client_cert: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(4);
    forwarded(
        xff_values(headers),
        peer,
        real_ip,
        tls,
        host,
        prefix,
        client_cert,
        |name, value| {
            out.push((name, value.to_string()));
        },
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn forwarded_fields_match_in_either_spelling() {
        for name in [
            "X-Forwarded-For",
            "x_forwarded_for",
            "X_Real_IP",
            "x-forwarded-host",
            "X-Forwarded-Client-Cert",
            "x_forwarded_client_cert",
            "Forwarded",
            "X_Forwarded_Port",
        ] {
            assert!(is_forwarded_field(name), "{name}");
        }
        for name in [
            "x-forwarded-portx",
            "forwardedx",
            "x-real-ipx",
            "x.forwarded.for",
            "x-forwarded-client-crt",
        ] {
            assert!(!is_forwarded_field(name), "{name}");
        }
        // The match on length names every field of the list.
        for name in super::FORWARDED_FIELDS {
            assert!(is_forwarded_field(name), "{name}");
        }
    }

    use super::*;

    fn hm(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(
            client_ip(Some(peer), xff_values(&hm("1.2.3.4")), &[]),
            Some(peer)
        );
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(Some(peer), xff_values(&hm("1.2.3.4")), &trusted),
            Some(peer)
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let got = client_ip(
            Some(peer),
            xff_values(&hm("6.6.6.6, 198.51.100.1, 10.0.0.9")),
            &trusted,
        );
        assert_eq!(got, Some("198.51.100.1".parse().unwrap()));
        let got = client_ip(Some(peer), xff_values(&hm("not-an-ip, 10.0.0.9")), &trusted);
        assert_eq!(got, Some("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn a_trusted_proxy_is_recognised_by_its_ipv4_mapped_address_too() {
        // A listener on [::] takes IPv4 connections as ::ffff:a.b.c.d: the proxy at
        // 10.0.0.2 is the same host, and trusted_proxies lists it as 10.0.0.0/8.
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let got = client_ip(Some(mapped), xff_values(&hm("198.51.100.1")), &trusted);
        assert_eq!(got, Some("198.51.100.1".parse().unwrap()));
        // A mapped hop of the chain is skipped as trusted like its IPv4 form.
        let got = client_ip(
            Some(mapped),
            xff_values(&hm("198.51.100.1, ::ffff:10.0.0.9")),
            &trusted,
        );
        assert_eq!(got, Some("198.51.100.1".parse().unwrap()));
        // An untrusted mapped peer is still the client.
        let other: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(
            client_ip(Some(other), xff_values(&hm("1.2.3.4")), &trusted),
            Some(other)
        );
    }

    #[test]
    fn xff_is_appended() {
        let peer: IpAddr = "127.0.0.5".parse().unwrap();
        let h = forwarded_headers(
            &hm("1.1.1.1"),
            Some(peer),
            None,
            true,
            Some("a.example"),
            None,
            None,
        );
        assert!(h.contains(&("x-forwarded-for", "1.1.1.1, 127.0.0.5".to_string())));
        assert!(h.contains(&("x-forwarded-proto", "https".to_string())));
        assert!(h.contains(&("x-forwarded-host", "a.example".to_string())));
        assert!(h.contains(&("x-real-ip", "127.0.0.5".to_string())));
        assert!(!h.iter().any(|(n, _)| *n == crate::client_cert::XFCC));
        let h = forwarded_headers(
            &hm("1.1.1.1"),
            Some(peer),
            None,
            true,
            None,
            None,
            Some("Hash=ab"),
        );
        assert!(h.contains(&(crate::client_cert::XFCC, "Hash=ab".to_string())));
    }
}

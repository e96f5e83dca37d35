//! Request-head rules pingora's path applies before routing: absolute-form targets
//! (RFC 9112 §3.2.2), `Expect` (RFC 9110 §10.1.1) and which `Upgrade` requests are tunnelled
//! at all. (The Host field is checked for both request paths in `policy`.)

use bytes::BytesMut;
use http::header::{CONNECTION, EXPECT, UPGRADE};
use http::HeaderValue;
use pingora::http::authority::{is_http_family_scheme, raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;

use super::normalize::valid_host;

/// RFC 7540 §3.2.1: sent only with an h2c upgrade, and hop-by-hop.
const HTTP2_SETTINGS: &str = "http2-settings";

/// Most header fields [`host_from_target`] rewrites; a longer head is left to pingora.
const MAX_FIELDS: usize = 256;

/// Whether a client's field `name` spells `Content-Length` or `Transfer-Encoding` with `_`
/// for some `-` (`Transfer_Encoding`, `content_length`). Never forwarded, as nginx drops
/// fields with underscores: the proxy frames the request by the real fields alone, while
/// servers that fold `_` and `-` into one CGI-style variable (Puma before 6.4.3, Mongrel's
/// other heirs) would frame it by these too, and read the rest of the body, or the next
/// request on the shared backend connection, as something else (request smuggling).
pub(crate) fn is_framing_mimic(name: &str) -> bool {
    const FRAMING: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];
    let name = name.as_bytes();
    // Length first: most fields are neither length, and this runs for every field.
    FRAMING.iter().any(|f| {
        f.len() == name.len()
            && name.contains(&b'_')
            && f.iter()
                .zip(name)
                .all(|(&f, &n)| f == n.to_ascii_lowercase() || (f == b'-' && n == b'_'))
    })
}

/// The length a request's `Content-Length` repeats when it is written as a list or as
/// several fields of one value (`5, 5`); `None` when it is a single plain value, absent,
/// beside `Transfer-Encoding` (which frames the request), or not one repeated number
/// (refused before this is asked).
pub(crate) fn repeated_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    let fields = headers.get_all(http::header::CONTENT_LENGTH);
    let listed = fields.iter().count() > 1 || fields.iter().any(|v| v.as_bytes().contains(&b','));
    if !listed {
        return None;
    }
    let mut items = fields
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty());
    let first = items.next()?;
    if items.any(|item| item != first) || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(first).ok()?.parse().ok()
}

/// A request's `Cookie` fields joined with `"; "` when there are several (RFC 9113 §8.2.3);
/// `None` for one or none.
pub(crate) fn split_cookies(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let mut fields = headers.get_all(http::header::COOKIE).iter();
    let first = fields.next()?;
    let mut rest = fields.peekable();
    rest.peek()?;
    let mut joined = first.as_bytes().to_vec();
    for v in rest {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    http::HeaderValue::from_bytes(&joined).ok()
}

/// Whether the request target has a form the routes can read (RFC 9112 §3.2): a path
/// (origin-form), an http(s)/ws(s) URL (absolute-form), or `*` on an OPTIONS request.
/// pingora routes any other target as `/` (its URI is left empty) but forwards it as
/// sent, so a backend would act on a path no route was chosen for: `GET x/../admin`, or
/// `GET  /admin` (two spaces), which pingora repairs to the target `%20/admin`.
pub(crate) fn routable_target(req: &RequestHeader) -> bool {
    match req.raw_path() {
        [b'/', ..] => true,
        b"*" => req.method == http::Method::OPTIONS,
        _ => target_authority(req).is_some(),
    }
}

/// The authority of an absolute-form target with an http(s)/ws(s) scheme, as sent.
pub(crate) fn target_authority(req: &RequestHeader) -> Option<&str> {
    if let Some(a) = req.uri.authority() {
        return Some(a.as_str());
    }
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if is_http_family_scheme(scheme) => std::str::from_utf8(authority).ok(),
        _ => None,
    }
}

/// The origin-form of an absolute-form target (`/path?query`), None for any other target.
pub(crate) fn origin_form(req: &RequestHeader) -> Option<Vec<u8>> {
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute {
            scheme,
            path_and_query,
            ..
        } if is_http_family_scheme(scheme) => Some(match path_and_query {
            // RFC 9112 §3.2.4: an OPTIONS for the server as a whole.
            b"" if req.method == http::Method::OPTIONS => b"*".to_vec(),
            b"" => b"/".to_vec(),
            // `http://a?q`: the query is kept, the path is the root.
            pq if pq.first() == Some(&b'?') => [b"/".as_slice(), pq].concat(),
            pq => pq.to_vec(),
        }),
        _ => None,
    }
}

/// What a request's `Expect` field asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expectation {
    None,
    /// `100-continue`, the only expectation HTTP defines.
    Continue,
    /// Anything else: answered with 417 (RFC 9110 §10.1.1).
    Unsupported,
}

pub(crate) fn expectation(req: &RequestHeader) -> Expectation {
    let mut found = Expectation::None;
    for v in req.headers.get_all(EXPECT) {
        for token in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"100-continue") {
                found = Expectation::Continue;
            } else if !token.is_empty() {
                return Expectation::Unsupported;
            }
        }
    }
    found
}

/// The comma-separated tokens of every `name` field.
fn tokens(req: &RequestHeader, name: http::header::HeaderName) -> Vec<String> {
    req.headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).into_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Replaces every `name` field by one holding `keep`, or removes it when `keep` is empty.
fn set_tokens(req: &mut RequestHeader, name: http::header::HeaderName, keep: &[String]) {
    req.remove_header(&name);
    if keep.is_empty() {
        return;
    }
    // Tokens came from valid field values, so their join is one too.
    if let Ok(v) = HeaderValue::from_str(&keep.join(", ")) {
        let _ = req.insert_header(name, v);
    }
}

/// Decides whether an HTTP/1.1 `Upgrade` request is tunnelled, rewriting its head when not.
///
/// An `h2c` upgrade is connection-specific (RFC 9113 §3.1, RFC 7540 §3.2): it is never
/// forwarded; the request goes on as a plain HTTP/1.1 one without `Upgrade`,
/// `HTTP2-Settings` and the `Connection` tokens naming them. Any other upgrade request that
/// carries a body is also proxied as a plain request: our tunnel sends only the head, so its
/// body would never reach the backend. Returns true when the request stays an upgrade
/// (body-less WebSocket, `tcp`, `SPDY/3.1`, ...).
pub(crate) fn settle_upgrade(req: &mut RequestHeader, has_body: bool) -> bool {
    let offered = tokens(req, UPGRADE);
    let keep: Vec<String> = offered
        .iter()
        .filter(|p| {
            let name = p.split('/').next().unwrap_or_default();
            !name.trim().eq_ignore_ascii_case("h2c")
        })
        .cloned()
        .collect();
    let tunnel = !keep.is_empty() && !has_body;
    let mut drop_tokens = vec![HTTP2_SETTINGS];
    req.remove_header(HTTP2_SETTINGS);
    if tunnel {
        if keep.len() != offered.len() {
            set_tokens(req, UPGRADE, &keep);
        }
    } else {
        req.remove_header(&UPGRADE);
        drop_tokens.push("upgrade");
    }
    let connection = tokens(req, CONNECTION);
    let rest: Vec<String> = connection
        .iter()
        .filter(|t| !drop_tokens.iter().any(|d| t.eq_ignore_ascii_case(d)))
        .cloned()
        .collect();
    if rest.len() != connection.len() {
        set_tokens(req, CONNECTION, &rest);
    }
    tunnel
}

/// For the complete request head at the start of `buf` with an absolute-form target, the
/// same bytes with its Host fields replaced by one naming the target's authority; None when
/// there is nothing to change (or no such head).
///
/// RFC 9112 §3.2.2: a server receiving an absolute-form target ignores the Host field. pingora
/// refuses (400) a Host that differs from the target's authority, and more than one Host,
/// while parsing the head, before any of our hooks runs: requests our HTTP/1 path hands to
/// pingora are rewritten so before pingora reads them.
pub(crate) fn host_from_target(buf: &[u8]) -> Option<BytesMut> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(len)) = req.parse(buf) else {
        return None;
    };
    let authority = match raw_target_authority(req.path?.as_bytes()) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if is_http_family_scheme(scheme)
            && !authority.is_empty()
            && std::str::from_utf8(authority).is_ok_and(valid_host) =>
        {
            authority
        }
        // Other targets keep pingora's own checks.
        _ => return None,
    };
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    if let (Some(h), None) = (hosts.next(), hosts.next()) {
        if h.value == authority {
            return None;
        }
    }
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut out = BytesMut::with_capacity(buf.len() + authority.len() + 8);
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"host: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&buf[len..]);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::Version;

    #[test]
    fn several_cookie_fields_are_joined() {
        let mut h = http::HeaderMap::new();
        assert_eq!(split_cookies(&h), None);
        h.append(http::header::COOKIE, "a=1".parse().unwrap());
        assert_eq!(split_cookies(&h), None, "one field stays as it is");
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        h.append(http::header::COOKIE, "c=3; d=4".parse().unwrap());
        assert_eq!(split_cookies(&h).unwrap(), "a=1; b=2; c=3; d=4");
    }

    fn req(version: Version, target: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        r.set_version(version);
        for (n, v) in fields {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_repeated_length_is_found_for_one_field_to_replace_it() {
        let length =
            |fields: &[(&str, &str)]| repeated_length(&req(Version::HTTP_10, "/", fields).headers);
        assert_eq!(length(&[("content-length", "5, 5")]), Some(5));
        assert_eq!(
            length(&[("content-length", "5"), ("content-length", "5")]),
            Some(5)
        );
        assert_eq!(length(&[("content-length", "5,")]), Some(5));
        // Nothing to replace, or nothing that may be.
        assert_eq!(length(&[("content-length", "5")]), None);
        assert_eq!(length(&[]), None);
        assert_eq!(length(&[("content-length", "5, 6")]), None);
        assert_eq!(length(&[("content-length", "+5, +5")]), None);
        assert_eq!(
            length(&[("content-length", "5, 5"), ("transfer-encoding", "chunked")]),
            None
        );
    }

    #[test]
    fn underscore_spellings_of_framing_fields() {
        for mimic in [
            "Transfer_Encoding",
            "content_length",
            "CONTENT_LENGTH",
            "Content-Length_",
        ] {
            assert_eq!(is_framing_mimic(mimic), !mimic.ends_with('_'), "{mimic}");
        }
        for real in [
            "Content-Length",
            "transfer-encoding",
            "X_Custom",
            "Content_Type",
            "te",
        ] {
            assert!(!is_framing_mimic(real), "{real}");
        }
    }

    #[test]
    fn routable_targets() {
        let routable = |method: &str, target: &str| {
            let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
            r.set_version(Version::HTTP_11);
            routable_target(&r)
        };
        for (method, target) in [
            ("GET", "/"),
            ("GET", "/a?b"),
            ("GET", "http://a.example/x"),
            ("GET", "https://a.example"),
            ("OPTIONS", "*"),
        ] {
            assert!(routable(method, target), "{method} {target}");
        }
        for (method, target) in [
            ("GET", "%20/admin"),
            ("GET", "x/../admin"),
            ("GET", "?q"),
            ("GET", "ftp://a.example/x"),
            ("GET", "*"),
        ] {
            assert!(!routable(method, target), "{method} {target}");
        }
    }

    #[test]
    fn absolute_form_parts() {
        let r = req(Version::HTTP_11, "http://t:81/a/b?q=1", &[("host", "x")]);
        assert_eq!(target_authority(&r), Some("t:81"));
        assert_eq!(origin_form(&r).as_deref(), Some(&b"/a/b?q=1"[..]));
        // pingora's URI holds the origin-form, which routing reads.
        assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/a/b?q=1");
        let r = req(Version::HTTP_11, "http://t", &[]);
        assert_eq!(origin_form(&r).as_deref(), Some(&b"/"[..]));
        let r = req(Version::HTTP_11, "/a", &[("host", "x")]);
        assert_eq!((target_authority(&r), origin_form(&r)), (None, None));
    }

    #[test]
    fn expectations() {
        let e = |v: &str| expectation(&req(Version::HTTP_11, "/", &[("expect", v)]));
        assert_eq!(e("100-continue"), Expectation::Continue);
        assert_eq!(e("100-Continue "), Expectation::Continue);
        assert_eq!(e("100-continue, foo"), Expectation::Unsupported);
        assert_eq!(e("200-ok"), Expectation::Unsupported);
        assert_eq!(
            expectation(&req(Version::HTTP_11, "/", &[])),
            Expectation::None
        );
    }

    #[test]
    fn h2c_upgrades_become_plain_requests() {
        let mut r = req(
            Version::HTTP_11,
            "/",
            &[
                ("host", "a"),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        );
        assert!(!settle_upgrade(&mut r, false));
        for f in ["connection", "upgrade", "http2-settings"] {
            assert!(r.headers.get(f).is_none(), "{f}: {:?}", r.headers);
        }
        assert_eq!(r.headers.get("host").unwrap(), "a");
    }

    #[test]
    fn upgrades_with_a_body_become_plain_requests_and_others_stay() {
        let fields = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        let mut r = req(Version::HTTP_11, "/", &fields);
        assert!(!settle_upgrade(&mut r, true));
        assert!(r.headers.get("upgrade").is_none());
        assert_eq!(r.headers.get("connection").unwrap(), "keep-alive");

        let mut r = req(Version::HTTP_11, "/", &fields);
        assert!(settle_upgrade(&mut r, false));
        assert_eq!(r.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(r.headers.get("connection").unwrap(), "keep-alive, Upgrade");

        // h2c is dropped from a list; what remains is tunnelled.
        let mut r = req(
            Version::HTTP_11,
            "/",
            &[("connection", "upgrade"), ("upgrade", "h2c, SPDY/3.1")],
        );
        assert!(settle_upgrade(&mut r, false));
        assert_eq!(r.headers.get("upgrade").unwrap(), "SPDY/3.1");
    }

    #[test]
    fn absolute_form_heads_get_the_targets_host() {
        let head = b"GET http://t:81/x HTTP/1.1\r\nHost: other\r\nA: b\r\nhost: third\r\n\r\nBODY";
        let out = host_from_target(head).unwrap();
        assert_eq!(
            &out[..],
            &b"GET http://t:81/x HTTP/1.1\r\nA: b\r\nhost: t:81\r\n\r\nBODY"[..]
        );
        // Nothing to change, or not absolute-form, or not complete: left alone.
        assert!(host_from_target(b"GET http://t/x HTTP/1.1\r\nHost: t\r\n\r\n").is_none());
        assert!(host_from_target(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").is_none());
        assert!(host_from_target(b"GET http://t/x HTTP/1.1\r\nHost: o\r\n").is_none());
        assert!(host_from_target(b"GET http://u@t/x HTTP/1.1\r\nHost: o\r\n\r\n").is_none());
        // Absent Host: one is added (pingora would accept it, but it costs nothing).
        let out = host_from_target(b"GET http://t/ HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(&out[..], &b"GET http://t/ HTTP/1.0\r\nhost: t\r\n\r\n"[..]);
    }
}

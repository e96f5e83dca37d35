//! The request path that routes match, and the Host that requests must carry.
//!
//! Routes match the path a backend will act on, not the bytes on the wire: a backend that
//! decodes `%61pi` to `api` or resolves `/api/../admin` would otherwise serve paths the
//! operator routed elsewhere. So, as nginx does for `location`, the path is percent-decoded,
//! runs of slashes are merged and dot-segments are resolved before matching; the request
//! itself is forwarded as it came, unless its route rewrites its prefix
//! ([`rewrite_target`]).
//!
//! Unlike nginx, a segment's `;` parameters (RFC 3986 §3.3) are left out of the path routes
//! match, and `..;x` is a dot-segment: servlet containers (Tomcat, Jetty) and Spring act on
//! `/admin;x/secret` as `/admin/secret` and resolve `/x/..;/admin`, so a route by the
//! literal segments would let those paths past an `allow` list or out of a rewritten
//! prefix. A backend that reads `;` literally only ever sees routes chosen more strictly.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a path cannot be routed (the client gets a 400 with [`BadPath::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    Escape,
    Nul,
    AboveRoot,
}

impl BadPath {
    /// The reason, as the 400's text says it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Escape => "a percent escape in the path is invalid",
            Self::Nul => "the path contains a NUL byte",
            Self::AboveRoot => "the path climbs above the root",
        }
    }
}

/// The path routes match for the origin-form `path` (no query).
pub fn route_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if is_plain(path) {
        return Ok(Cow::Borrowed(path));
    }
    let out = normalized(path, Params::Drop)?;
    Ok(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// Whether `path` is its own normalized form: nothing to decode, merge, resolve or strip.
fn is_plain(path: &str) -> bool {
    !path.contains('%') && !path.contains("//") && !path.contains("/.") && !path.contains(';')
}

/// What [`normalized`] does with a segment's `;` parameters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Params {
    /// Left out: the path routes match.
    Drop,
    /// Kept (the backend may need them, e.g. `;jsessionid=`): a rewritten path.
    Keep,
}

/// `path` decoded, its slashes merged and its dot-segments resolved, as bytes (a decoded
/// byte need not be UTF-8). A segment is a dot-segment by its name before any `;`.
fn normalized(path: &str, params: Params) -> Result<Vec<u8>, BadPath> {
    let decoded = decode(path.as_bytes())?;
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    // Segments of `decoded` after its leading slash; `""` segments are merged slashes.
    let mut segments = decoded.split(|&b| b == b'/').skip(1).peekable();
    out.push(b'/');
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        let name = seg.split(|&b| b == b';').next().unwrap_or(seg);
        let seg = if params == Params::Drop { name } else { seg };
        match name {
            b"" if !last && seg.is_empty() => {}
            b"." => {}
            b".." => {
                // Drop the last segment written (out ends with '/').
                if out.len() == 1 {
                    return Err(BadPath::AboveRoot);
                }
                out.pop();
                let cut = out.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
                out.truncate(cut);
            }
            _ => {
                out.extend_from_slice(seg);
                if !last {
                    out.push(b'/');
                }
            }
        }
    }
    Ok(out)
}

/// The target a backend gets for `path_and_query` (origin-form) when a route's `prefix`
/// (which its normalized path starts with) is to be replaced by `rewrite`: None if the
/// path does not start with `prefix` after all.
///
/// The path sent is the normalized one, as nginx sends it for a `proxy_pass` with a URI:
/// were the raw bytes cut instead, `/a/b/y/../../b/z` (routed as `/a/b/z` under `/a/b/`)
/// sent as `/c/` + `y/../../b/z` would reach `/b/z`, outside the rewrite. Bytes a path
/// cannot hold are percent-encoded again (an encoded `/` has become a separator, as in
/// nginx). The query is kept as it came.
pub fn rewrite_target(path_and_query: &str, prefix: &str, rewrite: &str) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut out = String::with_capacity(rewrite.len() + path_and_query.len());
    out.push_str(rewrite);
    if is_plain(path) {
        out.push_str(path.strip_prefix(prefix)?);
    } else {
        // With its parameters, unless they are in the prefix's segments: the route was
        // matched without them.
        let kept = normalized(path, Params::Keep).ok()?;
        match kept.strip_prefix(prefix.as_bytes()) {
            Some(rest) => push_encoded(&mut out, rest),
            None => {
                let dropped = normalized(path, Params::Drop).ok()?;
                push_encoded(&mut out, dropped.strip_prefix(prefix.as_bytes())?);
            }
        }
    }
    out.push_str(query);
    Some(out)
}

/// `path` (text, as routes hold it) as a URI path: bytes a path cannot hold
/// percent-encoded, as a rewritten path is.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    push_encoded(&mut out, path.as_bytes());
    out
}

fn push_encoded(out: &mut String, path: &[u8]) {
    for &b in path {
        if is_path_char(b) {
            out.push(char::from(b));
        } else {
            // Into `out` itself: a `String`'s `write_fmt` cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Whether `b` may stand unencoded in a path: `pchar` or `/` (RFC 3986 §3.3).
pub fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

fn decode(path: &[u8]) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let hex = |j: usize| path.get(j).and_then(|&c| (c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(BadPath::Escape);
            };
            let v = (hi * 16 + lo) as u8;
            if v == 0 {
                return Err(BadPath::Nul);
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Whether `b` may appear in a token (RFC 9110 §5.6.2): a method, a field name, a cookie
/// name.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `host` is a valid Host field value: `uri-host [ ":" port ]` (RFC 9110 §7.2,
/// RFC 3986 §3.2). Empty is valid (a target without an authority). Anything else, such as
/// `@`, `/`, spaces or a second port, is what request smuggling and cache poisoning
/// attempts send.
pub fn valid_host(host: &str) -> bool {
    let digits = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    let bytes = host.as_bytes();
    if bytes.first() == Some(&b'[') {
        let Some(close) = bytes.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &bytes[1..close];
        let after = &bytes[close + 1..];
        let literal_ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        let port_ok = after.is_empty() || after.strip_prefix(b":").is_some_and(digits);
        return literal_ok && port_ok;
    }
    // A port with no host names nothing (nginx refuses it too).
    if bytes.first() == Some(&b':') {
        return false;
    }
    // Every request's Host goes through here: one pass, a table lookup per byte until the
    // port, digits after it.
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b':' {
            return digits(&bytes[i + 1..]);
        }
        if !REG_NAME[usize::from(b)] {
            return false;
        }
        i += 1;
    }
    true
}

/// The bytes of a `reg-name`: unreserved, sub-delims and `%` of pct-encoded (RFC 3986).
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_target_replaces_the_prefix_of_the_normalized_path() {
        let cases = [
            ("/api/x?q=1", "/api/", "/", Some("/x?q=1")),
            ("/api/", "/api/", "/", Some("/")),
            ("/api/x", "/api/", "/v2/", Some("/v2/x")),
            ("/old/x", "/old", "/new", Some("/new/x")),
            ("/x/y", "/", "/base/", Some("/base/x/y")),
            // Decoded, merged and resolved as routes saw them, then encoded again.
            ("/%61pi//x", "/api/", "/", Some("/x")),
            (
                "/api/a%20b/%3F?k=%20",
                "/api/",
                "/",
                Some("/a%20b/%3F?k=%20"),
            ),
            ("/api/%C3%A9", "/api/", "/", Some("/%C3%A9")),
            ("/api/%FF", "/api/", "/", Some("/%FF")),
            // Climbing back out of a deeper prefix stays within the rewrite.
            ("/a/b/y/../../b/z", "/a/b/", "/c/", Some("/c/z")),
            // Parameters kept, but a dot-segment by its name: `..;` climbs as `..` does.
            ("/api/a;v=1/b", "/api/", "/v2/", Some("/v2/a;v=1/b")),
            ("/api/x;jsessionid=1", "/api/", "/", Some("/x;jsessionid=1")),
            ("/api/a/..;/b", "/api/", "/v2/", Some("/v2/b")),
            ("/api/a/..%3B/b", "/api/", "/v2/", Some("/v2/b")),
            ("/api;x/b", "/api/", "/v2/", Some("/v2/b")),
            ("/api/..;/..;/admin", "/api/", "/v2/", None),
            ("/api/../admin", "/api/", "/", None),
            ("/apix", "/api/", "/", None),
            ("/api/%zz", "/api/", "/", None),
        ];
        for (pq, prefix, rewrite, want) in cases {
            assert_eq!(
                rewrite_target(pq, prefix, rewrite).as_deref(),
                want,
                "{pq} under {prefix} -> {rewrite}"
            );
        }
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/", "/api/x", "/a.b/c.d", "/x?"] {
            assert!(
                matches!(route_path(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn escapes_slashes_and_dot_segments_are_resolved() {
        let cases = [
            ("/%61pi/x", "/api/x"),
            ("/api/../secret", "/secret"),
            ("/api/%2e%2e/secret", "/secret"),
            ("/api%2F..%2Fsecret", "/secret"),
            ("//api///x", "/api/x"),
            ("/api/./x/.", "/api/x/"),
            ("/api/x/..", "/api/"),
            ("/a/b/../../c", "/c"),
            ("/api/", "/api/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b", "/a/..b"),
            // Path parameters are not part of the path a servlet container acts on.
            ("/admin;x/secret", "/admin/secret"),
            ("/x/..;/admin/secret", "/admin/secret"),
            ("/x/..;y/admin", "/admin"),
            ("/x/.;/admin", "/x/admin"),
            ("/x/..%3B/admin", "/admin"),
            ("/app/page;jsessionid=AB", "/app/page"),
            ("/a/;x/b", "/a/b"),
            ("/a/;x", "/a/"),
        ];
        for (raw, want) in cases {
            assert_eq!(route_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        assert_eq!(route_path("/../etc"), Err(BadPath::AboveRoot));
        assert_eq!(route_path("/a/../../etc"), Err(BadPath::AboveRoot));
        assert_eq!(route_path("/%2e%2e/x"), Err(BadPath::AboveRoot));
        assert_eq!(route_path("/api/..;/..;/admin"), Err(BadPath::AboveRoot));
        assert_eq!(route_path("/a%zz"), Err(BadPath::Escape));
        assert_eq!(route_path("/a%4"), Err(BadPath::Escape));
        assert_eq!(route_path("/a%00b"), Err(BadPath::Nul));
    }

    #[test]
    fn hosts() {
        for ok in [
            "",
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "xn--bcher-kva.example",
            "a_b.local:",
        ] {
            assert!(valid_host(ok), "{ok:?} should be valid");
        }
        for bad in [
            "a b", "a@b", "a/b", "a b/c@d", "a:b:c", "host:80x", "[::1", "[::1]x", "[]", "a?b",
            "a#b", "a\tb", ":80", ":",
        ] {
            assert!(!valid_host(bad), "{bad:?} should be invalid");
        }
    }
}

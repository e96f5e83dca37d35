//! Request and response heads on the HTTP/1 path: which requests it takes, the head sent
//! to the backend, and the head sent back to the client.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use crate::proxy::policy::{self, Rejection, RequestView};
use crate::proxy::request::is_framing_mimic;
use crate::proxy::request_headers::RequestHeaders;
use crate::proxy::request_id::{self, RequestId};
use crate::proxy::{forwarded, is_forwarded_field, FieldValue};

use super::body::Framing;

/// The answer to CONNECT, on HTTP/1 and h2. pingora answers it with an empty 405: a
/// reverse proxy opens no tunnels to addresses its clients name (that is a forward
/// proxy's job, and an open relay's).
pub(crate) const CONNECT_REFUSED: Rejection = Rejection {
    status: 501,
    reason: "method",
    detail: "CONNECT is not supported: this proxy forwards requests to its backends and opens no tunnels to other addresses",
};
/// Most header fields a head may have on this path; more go to pingora's parser.
pub const MAX_HEADERS: usize = 64;
/// Most header fields a request may have at all: pingora's parser takes no more.
pub const MAX_FIELDS: usize = 256;

/// Room for a head's fields. Left uninitialised: httparse fills what it parses, and
/// zeroing 2 KiB per head showed in profiles.
pub type Fields<'a> = [MaybeUninit<httparse::Header<'a>>; MAX_HEADERS];

pub fn fields<'a>() -> Fields<'a> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Hop-by-hop fields: they describe one connection and are never forwarded.
/// (`Trailer` is not one: it announces the trailer fields, which are relayed.)
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

fn is_one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A parsed request head, borrowing the connection's read buffer.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: u64,
    /// The client asked to close after this request.
    pub close: bool,
    /// The `Host` field (read by routing and by the forwarded fields: found once).
    host: Option<&'a str>,
    /// How many Host fields there are (more than one is refused).
    hosts: usize,
    /// Content-Length came as a list or more than once (with one value): sent on as one.
    length_repeated: bool,
}

/// What the HTTP/1 path makes of the bytes read so far.
pub enum Parse<'a> {
    /// A complete head this path handles.
    Ready(RequestHead<'a>),
    /// More bytes are needed.
    Partial,
    /// Valid or not, this request is left to pingora: HTTP/1.0, upgrades, CONNECT,
    /// chunked or `Expect` bodies, absolute-form targets, unusual framing, a request line
    /// pingora may repair (it escapes stray bytes in the target), more fields than fit here.
    Handoff,
    /// A head no parser accepts: answered 400 with this reason, then the connection closes
    /// (pingora would answer with an empty 400).
    Invalid(&'static str),
}

/// The 400 reason for a head httparse refuses, when no parser would take it.
fn malformed(e: httparse::Error) -> Option<&'static str> {
    match e {
        httparse::Error::HeaderName => Some("malformed request head: invalid header field name"),
        httparse::Error::HeaderValue => Some("malformed request head: invalid header field value"),
        httparse::Error::NewLine => Some("malformed request head: invalid line ending"),
        _ => None,
    }
}

pub fn parse_request<'a>(buf: &'a [u8], fields: &'a mut Fields<'a>) -> Parse<'a> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(e) => return malformed(e).map_or(Parse::Handoff, Parse::Invalid),
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parse::Handoff;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Parse::Handoff;
    }
    let mut content_length = None;
    let mut close = false;
    let mut host: Option<Option<&str>> = None;
    let mut hosts = 0;
    let mut length_repeated = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            // The first one counts, as in `header()`.
            host.get_or_insert(std::str::from_utf8(h.value).ok());
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: a list of one value repeated (`5, 5`), or the field repeated
            // with one value, is that value; the backend gets it once.
            let mut values = h.value.split(|&b| b == b',');
            let Some(n) = values.next().and_then(parse_length) else {
                return Parse::Handoff;
            };
            for other in values {
                if parse_length(other) != Some(n) {
                    return Parse::Handoff;
                }
                length_repeated = true;
            }
            if let Some(c) = content_length {
                if c != n {
                    return Parse::Handoff;
                }
                length_repeated = true;
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parse::Handoff;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    // Other fields named hop-by-hop by the client: rare, left to pingora.
                    return Parse::Handoff;
                }
            }
        }
    }
    Parse::Ready(RequestHead {
        method,
        target,
        headers: req.headers,
        len,
        content_length: content_length.unwrap_or(0),
        close,
        host: host.flatten(),
        hosts,
        length_repeated,
    })
}

/// What pingora refuses in a request line it would otherwise repair, with an empty 400:
/// refused here with the reason. A control byte (a tab for a space), a target that is not
/// UTF-8, an absolute-form target with userinfo or of a scheme other than http(s) or
/// ws(s) (whose authority pingora compares with Host).
fn check_handoff_line(line: &[u8]) -> Result<(), Rejection> {
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Rejection::bad_request(
            "malformed request line: a control character (a tab for a space?)",
        ));
    }
    // Between the method and the version (pingora escapes spaces within).
    let (Some(start), Some(end)) = (memchr::memchr(b' ', line), memchr::memrchr(b' ', line)) else {
        return Ok(());
    };
    let target = line.get(start + 1..end).unwrap_or_default().trim_ascii();
    if std::str::from_utf8(target).is_err() {
        return Err(Rejection::bad_request(
            "malformed request line: the target is not UTF-8 (percent-encode it)",
        ));
    }
    if target.starts_with(b"/") {
        return Ok(());
    }
    let Some(colon) = target.windows(3).position(|w| w == b"://") else {
        return Ok(());
    };
    let scheme = &target[..colon];
    if !["http", "https", "ws", "wss"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s.as_bytes()))
    {
        return Err(Rejection {
            status: 400,
            reason: "bad_target",
            detail: "the request target is not a path, an http(s) URL, or * for OPTIONS",
        });
    }
    let rest = &target[colon + 3..];
    let authority = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .map_or(rest, |end| &rest[..end]);
    if authority.contains(&b'@') {
        return Err(Rejection::bad_request("userinfo in the request target"));
    }
    Ok(())
}

/// Where a request handed to pingora ends, read from its complete head at the start of
/// `buf` (leading empty lines already dropped): the head's length and the body's framing.
/// Its framing follows the rules of pingora's parser, which reads it next; what that parser
/// would refuse with an empty 400 is refused here, with a reason.
pub fn handoff_framing(buf: &[u8]) -> Result<(usize, Framing), Rejection> {
    let malformed_head = Rejection::bad_request;
    // The request line is not parsed: pingora repairs some that httparse refuses (it escapes
    // stray bytes in the target), and the framing is in the fields alone.
    let Some(line_end) = memchr::memchr(b'\n', buf) else {
        return Err(malformed_head("malformed request head: no request line"));
    };
    // pingora's parser takes these two versions alone and refuses any other (HTTP/2.0,
    // HTTP/1.2, a lower-case or missing version, tabs for spaces) with an empty 400: refused
    // here with the reason. The version is the last word of the line, whatever pingora
    // makes of the words before it.
    let line = buf[..line_end].trim_ascii_end();
    let http10 = match line.rsplit(|&b| b == b' ').next().unwrap_or_default() {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => {
            return Err(malformed_head(
                "malformed request line: the version is not HTTP/1.1 or HTTP/1.0",
            ))
        }
    };
    if line.starts_with(b"CONNECT ") {
        return Err(CONNECT_REFUSED);
    }
    check_handoff_line(line)?;
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let (len, fields) = match httparse::parse_headers(&buf[line_end + 1..], &mut fields) {
        Ok(httparse::Status::Complete((n, parsed))) => (line_end + 1 + n, parsed),
        Ok(httparse::Status::Partial) => {
            return Err(malformed_head("malformed request head: incomplete"))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection {
                status: 431,
                reason: "too_many_fields",
                detail: "too many header fields (more than 256)",
            })
        }
        Err(e) => {
            return Err(malformed_head(
                malformed(e).unwrap_or("malformed request head"),
            ))
        }
    };
    let chunked = policy::check_transfer_encoding(
        fields
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value),
        http10,
    )?;
    if chunked {
        // pingora ignores a Content-Length beside it (and closes after the answer).
        return Ok((len, Framing::Chunked(Default::default())));
    }
    let mut length = None;
    for h in fields
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        // RFC 9110 §8.6: one value, however often repeated.
        for v in h.value.split(|&b| b == b',') {
            match (parse_length(v), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return Err(malformed_head(
                        "malformed request head: invalid or conflicting Content-Length",
                    ))
                }
            }
        }
    }
    Ok(match length {
        Some(n) if n > 0 => (len, Framing::Length(n)),
        _ => (len, Framing::Empty),
    })
}

/// The answer to a request head (complete or not, at the start of `buf`) longer than
/// `limit`: 414 when its request line alone is, or has not ended within it; 431 otherwise.
pub fn oversized(buf: &[u8], limit: usize) -> Rejection {
    let line = memchr::memchr(b'\n', buf).map_or(usize::MAX, |i| i + 1);
    if line > limit {
        Rejection {
            status: 414,
            reason: "request_line_too_long",
            detail: "request line too long",
        }
    } else {
        Rejection {
            status: 431,
            reason: "header_too_large",
            detail: "request header fields too large",
        }
    }
}

/// A Content-Length value: digits only (no sign, no spaces inside).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl RequestHead<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// A field's value as sent, whatever its bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Whether the request may be sent twice: an idempotent method (RFC 9110 §9.2.2), or
    /// a client's `Idempotency-Key` saying the backend de-duplicates it.
    pub fn idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ) || self.header("idempotency-key").is_some()
    }

    /// Writes the head sent to the backend into `out`: the request line and fields as
    /// received, minus hop-by-hop fields and the ones we replace, plus X-Forwarded-*.
    /// `peer_text` is `peer` as text, formatted once per connection. A route's
    /// `prefix_rewrite` gives the `target` sent instead and the prefix it `stripped`; its
    /// `request_headers` (`set`) replace the client's fields of their names.
    #[allow(clippy::too_many_arguments)]
    pub fn write_upstream(
        &self,
        out: &mut Vec<u8>,
        (target, stripped): (Option<&str>, Option<&str>),
        set: Option<&RequestHeaders>,
        peer: Option<IpAddr>,
        peer_text: &str,
        client: Option<IpAddr>,
        tls: bool,
        client_cert: Option<&str>,
        request_id: Option<&RequestId>,
    ) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.unwrap_or(self.target).as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in self.headers {
            if is_one_of(h.name, HOP_BY_HOP)
                || is_forwarded_field(h.name)
                || is_framing_mimic(h.name)
                || (self.length_repeated && h.name.eq_ignore_ascii_case("content-length"))
                || (request_id.is_some() && request_id::is_id_field(h.name))
                || set.is_some_and(|set| set.replaces(h.name))
            {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if self.length_repeated {
            let _ = write!(out, "Content-Length: {}\r\n", self.content_length);
        }
        if let Some(id) = request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        forwarded(
            self.values("x-forwarded-for"),
            peer,
            client,
            tls,
            self.host(),
            stripped,
            client_cert,
            |name, value| {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                match value {
                    FieldValue::Text(t) => out.extend_from_slice(t.as_bytes()),
                    FieldValue::Ip(ip) if Some(ip) == peer => {
                        out.extend_from_slice(peer_text.as_bytes())
                    }
                    other => {
                        let _ = write!(out, "{other}");
                    }
                }
                out.extend_from_slice(b"\r\n");
            },
        );
        if let Some(set) = set {
            for (name, value) in set.sent() {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl RequestView for RequestHead<'_> {
    fn path_and_query(&self) -> &str {
        self.target
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn host_fields(&self) -> (usize, Option<&str>) {
        (self.hosts, self.host)
    }
    fn head_size(&self) -> usize {
        self.len
    }
    fn content_length(&self) -> Option<u64> {
        Some(self.content_length)
    }
    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", self.reason())]
pub enum BadResponse {
    Invalid,
    TooLarge,
    Length,
    Upgrade,
}

impl BadResponse {
    /// What is wrong, as the client's 502 says it.
    pub fn reason(&self) -> &'static str {
        match self {
            BadResponse::Invalid => "the backend sent an invalid response head",
            BadResponse::TooLarge => "the backend's response head is too large",
            BadResponse::Length => "the backend sent an invalid or conflicting Content-Length",
            BadResponse::Upgrade => {
                "the backend switched protocols on a request that asked for no upgrade"
            }
        }
    }
}

/// A backend's response head, rewritten for the client.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head as received.
    pub len: usize,
    pub framing: Framing,
    /// The backend keeps the connection open after this response.
    pub reusable: bool,
    /// The body runs until the backend closes and no field frames it: the client gets it
    /// chunked (with `Transfer-Encoding: chunked` added to [`ResponseHead::out`]), so that
    /// a backend failing mid-body shows as a cut body rather than a complete one, and the
    /// client connection outlives the backend's.
    pub rechunk: bool,
    /// The head for the client: status line and end-to-end fields, without the final blank
    /// line (the caller adds its own fields first).
    pub out: Vec<u8>,
}

/// Parses a response head from `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
    max: usize,
) -> Result<Option<ResponseHead>, BadResponse> {
    // As many fields as pingora's parser takes: a response has no other path to go to, and
    // one with more fields than a request on this path may have (Set-Cookie, security
    // headers) is an ordinary answer. Left uninitialised, the room costs nothing unused.
    let mut fields: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        // A head that came whole in the read that took the buffer past the limit is over
        // the limit all the same.
        Ok(httparse::Status::Complete(len)) if len > max => return Err(BadResponse::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(BadResponse::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Invalid),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(BadResponse::Invalid);
    };
    if status == 101 {
        return Err(BadResponse::Upgrade);
    }
    if !(100..=599).contains(&status) {
        // RFC 9110 §15: a status code is three digits from 100 on, and values from 600 are
        // invalid (libraries use them for their own errors); a client is to take one as a
        // 5xx, so the proxy says so itself.
        return Err(BadResponse::Invalid);
    }
    let mut out = Vec::with_capacity(len + 64);
    // The status line as received (it parsed, so it is `HTTP/1.x NNN reason` and ends in a
    // newline within the head, after any empty lines the parser skipped), always answered
    // as HTTP/1.1.
    let start = buf[..len]
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(len);
    let line_end = buf[start..len]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(len, |i| start + i + 1);
    let line = buf[(start + b"HTTP/1.1".len()).min(line_end)..line_end].trim_ascii_end();
    out.extend_from_slice(b"HTTP/1.1");
    out.extend_from_slice(line);
    if line.len() == b" 200".len() {
        // No reason phrase: the space before it is still required (RFC 9112 §4), and was
        // trimmed (or never sent).
        out.push(b' ');
    }
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut chunked = None;
    let mut close = version == 0;
    let mut dated = (100..200).contains(&status);
    // Fields the backend named in Connection describe its connection to us only
    // (RFC 9110 §7.6.1).
    let connection_tokens = || {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    let lists_fields = connection_tokens().any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    });
    for h in resp.headers.iter() {
        let name = h.name;
        dated |= name.eq_ignore_ascii_case("date");
        if name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if is_one_of(name, HOP_BY_HOP)
            || (lists_fields
                && connection_tokens().any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(h.value).ok_or(BadResponse::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Length);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only counts as the final coding.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let framing =
        if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked(Default::default()),
                (Some(false), _) => Framing::UntilClose,
                (None, Some(0)) => Framing::Empty,
                (None, Some(n)) => Framing::Length(n),
                (None, None) => Framing::UntilClose,
            }
        };
    if !dated {
        // A recipient with a clock adds the Date a response lacks (RFC 9110 §6.6.1).
        out.extend_from_slice(b"date: ");
        with_http_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    let rechunk = chunked.is_none() && length.is_none() && framing.until_close();
    if rechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    let both = chunked.is_some() && length.is_some();
    if both {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); sending both on
        // would let a downstream parser pick the wrong one.
        strip_field(&mut out, b"content-length");
    }
    if status == 204 || (100..200).contains(&status) {
        // Neither field belongs on a 1xx or 204 (RFC 9110 §8.6, RFC 9112 §6.1): a client
        // that took one for a body would read the next answer as this one's body.
        if length.is_some() && !both {
            strip_field(&mut out, b"content-length");
        }
        if chunked.is_some() {
            strip_field(&mut out, b"transfer-encoding");
        }
    }
    Ok(Some(ResponseHead {
        status,
        len,
        // Both fields at once may be an attempt at response splitting (RFC 9112 §6.3): the
        // answer is framed by Transfer-Encoding, but the backend may have framed it by the
        // length, so its connection is not used again (nginx refuses such an answer).
        reusable: !close && !framing.until_close() && !both,
        rechunk,
        framing,
        out,
    }))
}

/// Calls `f` with the current time as an HTTP date, formatted once a second per thread.
pub(crate) fn with_http_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut date = cell.borrow_mut();
        if date.0 != secs || date.1.is_empty() {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        f(date.1.as_bytes())
    })
}

/// Sets `fields` on a rewritten head (before its blank line), replacing any of the same
/// names.
pub fn set_fields(head: &mut Vec<u8>, fields: &[(String, String)]) {
    for (name, value) in fields {
        strip_field(head, name.as_bytes());
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
}

/// [`set_fields`] on a whole head, blank line included.
pub fn with_fields_set(head: &[u8], fields: &[(String, String)]) -> Vec<u8> {
    let Some(fields_part) = head.strip_suffix(b"\r\n").filter(|_| !fields.is_empty()) else {
        return head.to_vec();
    };
    let mut out = fields_part.to_vec();
    set_fields(&mut out, fields);
    out.extend_from_slice(b"\r\n");
    out
}

/// Removes every `name: value\r\n` line from a head being built (status line kept).
fn strip_field(head: &mut Vec<u8>, name: &[u8]) {
    let mut kept = Vec::with_capacity(head.len());
    for (i, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let is_field = i > 0
            && line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':';
        if !is_field {
            kept.extend_from_slice(line);
        }
    }
    *head = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewritten head without the Date field this proxy adds.
    fn undated(out: &[u8]) -> String {
        String::from_utf8_lossy(out)
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect()
    }

    #[test]
    fn a_date_is_added_only_when_missing() {
        let head = |raw: &[u8]| {
            parse_response(raw, false, 1024)
                .ok()
                .flatten()
                .map(|r| String::from_utf8_lossy(&r.out).into_owned())
                .unwrap_or_default()
        };
        let added = head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let date = added
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .map(|d| httpdate::parse_http_date(d).is_ok());
        assert_eq!(date, Some(true), "{added}");
        let kept = head(
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            kept,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n"
        );
    }

    fn ready(raw: &[u8]) -> bool {
        let mut h = fields();
        matches!(parse_request(raw, &mut h), Parse::Ready(_))
    }

    #[test]
    fn takes_plain_requests_and_hands_off_the_rest() {
        assert!(ready(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ready(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc"
        ));
        for raw in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: x-secret\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(!ready(raw), "{}", String::from_utf8_lossy(raw));
        }
        let mut h = fields();
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHo", &mut h),
            Parse::Partial
        ));
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
        ] {
            let mut h = fields();
            assert!(
                matches!(parse_request(raw, &mut h), Parse::Invalid(_)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn a_repeated_content_length_goes_upstream_once() {
        for raw in [
            &b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nhi"[..],
            b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhi",
        ] {
            let mut h = fields();
            let Parse::Ready(head) = parse_request(raw, &mut h) else {
                panic!("not ready: {}", String::from_utf8_lossy(raw));
            };
            assert_eq!(head.content_length, 2);
            let mut out = Vec::new();
            head.write_upstream(
                &mut out,
                (None, None),
                None,
                None,
                "",
                None,
                false,
                None,
                None,
            );
            let text = String::from_utf8_lossy(&out);
            assert_eq!(
                text.to_ascii_lowercase().matches("content-length").count(),
                1,
                "{text}"
            );
            assert!(text.contains("Content-Length: 2\r\n"), "{text}");
        }
        let mut h = fields();
        let raw = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 3\r\n\r\nhi";
        assert!(matches!(parse_request(raw, &mut h), Parse::Handoff));
    }

    #[test]
    fn where_a_handed_off_request_ends() {
        let framing = |raw: &[u8]| handoff_framing(raw).map_err(|r| (r.status, r.detail));
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            framing(head),
            Ok((head.len(), Framing::Chunked(Default::default())))
        );
        // A request line httparse refuses is still measured (pingora may repair it).
        let head = b"GET /a|b c HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabcNEXT";
        assert_eq!(framing(head), Ok((head.len() - 7, Framing::Length(3))));
        assert_eq!(framing(b"GET / HTTP/1.0\r\n\r\n"), Ok((18, Framing::Empty)));
        assert_eq!(
            framing(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
                .map_err(|e| e.0),
            Err(501)
        );
        for line in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET\t/\tHTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                framing(line).map_err(|e| e.1),
                Err("malformed request line: the version is not HTTP/1.1 or HTTP/1.0"),
                "{}",
                line.escape_ascii()
            );
        }
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(
            framing(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err((400, "Transfer-Encoding in an HTTP/1.0 request"))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
                .map_err(|e| e.0),
            Err(501)
        );
    }

    #[test]
    fn heads_over_the_limits() {
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            handoff_framing(head.as_bytes()).map_err(|r| r.status),
            Err(431)
        );
        let status = |buf: &[u8]| oversized(buf, 16).status;
        assert_eq!(status(b"GET /0123456789abcdef"), 414);
        assert_eq!(status(b"GET /0123456789a HTTP/1.1\r\n"), 414);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a.example\r\n"), 431);
    }

    #[test]
    fn upstream_head_carries_the_routes_request_headers_instead_of_the_clients() {
        let raw = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Env: dev\r\nx_env: dev\r\nX-Debug: 1\r\nX-Keep: k\r\n\r\n";
        let mut h = fields();
        let Parse::Ready(head) = parse_request(raw, &mut h) else {
            panic!("not ready");
        };
        let set = RequestHeaders::new(&[
            ("Host".to_owned(), "api.internal".to_owned()),
            ("X-Debug".to_owned(), String::new()),
            ("X-Env".to_owned(), "prod".to_owned()),
        ]);
        let mut out = Vec::new();
        head.write_upstream(
            &mut out,
            (None, None),
            set.as_ref(),
            None,
            "",
            None,
            false,
            None,
            None,
        );
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text,
            "GET / HTTP/1.1\r\nX-Keep: k\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.example\r\nHost: api.internal\r\nX-Env: prod\r\n\r\n"
        );
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_replaces_forwarded_fields() {
        let raw = b"GET /p?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\nKeep-Alive: 5\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Client-Cert: Hash=forged\r\nX_Forwarded_Client_Cert: Hash=forged\r\nX-Custom: Yes\r\n\r\n";
        let mut h = fields();
        let Parse::Ready(head) = parse_request(raw, &mut h) else {
            panic!("not ready");
        };
        assert!(head.close);
        let mut out = Vec::new();
        let peer = "127.0.0.9".parse().ok();
        head.write_upstream(
            &mut out,
            (None, None),
            None,
            peer,
            "127.0.0.9",
            peer,
            false,
            None,
            None,
        );
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text,
            "GET /p?q=1 HTTP/1.1\r\nHost: a.example\r\nX-Custom: Yes\r\n\
             x-forwarded-for: 1.1.1.1, 127.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.example\r\nx-real-ip: 127.0.0.9\r\n\r\n"
        );
        // A connection with a verified client certificate: ours, never the client's.
        out.clear();
        head.write_upstream(
            &mut out,
            (None, None),
            None,
            peer,
            "127.0.0.9",
            peer,
            true,
            Some("Hash=ab;Subject=\"CN=c\""),
            None,
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.ends_with("x-forwarded-client-cert: Hash=ab;Subject=\"CN=c\"\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("forged"), "{text}");
    }

    #[test]
    fn status_line_after_empty_lines_keeps_its_code() {
        let r = parse_response(
            b"\r\n\r\nHTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            false,
            4096,
        )
        .ok()
        .flatten()
        .map(|r| undated(&r.out));
        assert_eq!(
            r.as_deref(),
            Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n")
        );
    }

    #[test]
    fn fields_the_backend_names_in_connection_are_dropped_and_trailer_kept() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\nX-End: 2\r\n\
              Trailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            1024,
        )
        .ok()
        .flatten()
        .map(|r| undated(&r.out));
        assert_eq!(
            r.as_deref(),
            Some("HTTP/1.1 200 OK\r\nX-End: 2\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n")
        );
    }

    #[test]
    fn response_framing() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
            false,
            1024,
        )
        .ok()
        .flatten();
        let r = r.as_ref();
        assert_eq!(r.map(|r| r.framing.clone()), Some(Framing::Length(5)));
        assert_eq!(r.map(|r| r.reusable), Some(true));
        assert_eq!(
            r.map(|r| undated(&r.out)),
            Some("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n".to_string())
        );

        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            1024,
        )
        .ok()
        .flatten();
        let r = r.as_ref();
        assert!(matches!(r.map(|r| &r.framing), Some(Framing::Chunked(_))));
        assert_eq!(
            r.map(|r| undated(&r.out)),
            Some("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_string())
        );
        assert_eq!(r.map(|r| r.reusable), Some(false), "CL and TE: not reused");

        let r = parse_response(b"HTTP/1.0 200 OK\n\n", false, 1024)
            .ok()
            .flatten();
        assert_eq!(
            r.as_ref().map(|r| undated(&r.out)),
            Some("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n".to_string())
        );
        assert_eq!(r.as_ref().map(|r| r.reusable), Some(false));
        assert_eq!(r.as_ref().map(|r| r.rechunk), Some(true));
        assert_eq!(r.map(|r| r.framing), Some(Framing::UntilClose));
        // A coding other than chunked also runs until close, but is not re-framed.
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            1024,
        )
        .ok()
        .flatten();
        assert_eq!(r.as_ref().map(|r| r.rechunk), Some(false));
        assert_eq!(r.map(|r| r.framing), Some(Framing::UntilClose));

        for (raw, want) in [
            (
                &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX: 1\r\n\r\n"[..],
                "HTTP/1.1 204 No Content\r\nX: 1\r\n",
            ),
            (
                b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.1 204 No Content\r\n",
            ),
            (
                b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\n",
            ),
            (
                b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 \r\nContent-Length: 0\r\n",
            ),
            (
                b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 \r\nContent-Length: 0\r\n",
            ),
        ] {
            let r = parse_response(raw, false, 1024).ok().flatten();
            assert_eq!(r.map(|r| undated(&r.out)).as_deref(), Some(want));
        }
        for raw in [
            &b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 999 High\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(raw, false, 1024).err(),
                Some(BadResponse::Invalid),
                "{}",
                raw.escape_ascii()
            );
        }

        let r = parse_response(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            1024,
        )
        .ok()
        .flatten();
        assert_eq!(r.map(|r| r.framing), Some(Framing::Empty));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, 1024)
            .ok()
            .flatten();
        assert_eq!(r.map(|r| r.framing), Some(Framing::Empty));

        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                1024
            )
            .err(),
            Some(BadResponse::Length)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", false, 1024).err(),
            Some(BadResponse::Upgrade)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nX: aaaaaaaaaaaa", false, 8).err(),
            Some(BadResponse::TooLarge)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nX: aaaaaaaaaaaa\r\n\r\n", false, 20).err(),
            Some(BadResponse::TooLarge)
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nX:", false, 1024),
            Ok(None)
        ));
    }
}

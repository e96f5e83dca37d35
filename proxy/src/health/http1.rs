//! The request of an HTTP health check, over HTTP/1.1, and the reading of its answer.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{body_contains, CheckRequest};
use crate::config::MAX_CHECK_BODY;

/// Most bytes of a response head read before the check gives up on it.
const MAX_HEAD: usize = 16 * 1024;

/// The request head: `GET path` with `Host`, the configured fields (their own User-Agent
/// replacing the check's), and `Connection: close`, so that a body without framing ends
/// with the connection.
pub(super) fn head(req: &CheckRequest<'_>) -> String {
    let mut head = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", req.path, req.host);
    if !req.sets_user_agent() {
        head.push_str("User-Agent: switchyard-health\r\n");
    }
    for (name, value) in req.headers.iter().filter(|(_, v)| !v.is_empty()) {
        // Writing to a String cannot fail.
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

/// Sends the request on `s` and returns the answer's status, and whether its body contains
/// `req.body` (true when there is none to look for; the body is then not read). None when
/// the backend fails or does not answer HTTP/1. The caller bounds the time.
pub(super) async fn get<S>(s: &mut S, req: &CheckRequest<'_>) -> Option<(u16, bool)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(head(req).as_bytes()).await.ok()?;
    s.flush().await.ok()?;
    let Some(needle) = req.body else {
        return Some((status_only(s).await?, true));
    };
    let (status, framing, rest) = read_head(s).await?;
    let body = match framing {
        Framing::None => Vec::new(),
        Framing::Length(len) => read_length(s, rest, len).await?,
        Framing::Close => read_length(s, rest, u64::MAX).await?,
        Framing::Chunked => read_chunked(s, rest).await?,
    };
    Some((status, body_contains(&body, needle)))
}

/// The status of the answer, from its first line alone (`HTTP/1.1 200`).
async fn status_only<S: AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s.read(&mut buf[got..]).await.ok()?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = std::str::from_utf8(&buf[..got]).ok()?;
    line.get(9..12)?.parse().ok()
}

/// How the body of an answer ends (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// There is none (204, 304, 1xx).
    None,
    Length(u64),
    Chunked,
    /// With the connection.
    Close,
}

/// Reads the response head: its status, how its body ends, and the bytes read past it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u16, Framing, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if !read_more(s, &mut buf).await? || buf.len() > MAX_HEAD {
            return None;
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(end) = response.parse(&buf).ok()? else {
            continue;
        };
        let status = response.code?;
        let framing = framing(status, response.headers)?;
        return Some((status, framing, buf.split_off(end)));
    }
}

/// None when the framing is unreadable (a Content-Length that is not a number).
fn framing(status: u16, fields: &[httparse::Header<'_>]) -> Option<Framing> {
    if status < 200 || status == 204 || status == 304 {
        return Some(Framing::None);
    }
    let values = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| String::from_utf8_lossy(f.value).trim().to_ascii_lowercase())
            .collect()
    };
    if let Some(codings) = values("transfer-encoding").last() {
        return Some(match codings.rsplit(',').next().map(str::trim) {
            Some("chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    match values("content-length").first() {
        Some(len) => len.parse().ok().map(Framing::Length),
        None => Some(Framing::Close),
    }
}

/// Appends what the next read gives; false at the end of the stream.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    Some(n > 0)
}

/// Up to `len` bytes of body (at most [`MAX_CHECK_BODY`]), `rest` first; a stream that ends
/// early gives what came.
async fn read_length<S: AsyncRead + Unpin>(
    s: &mut S,
    mut body: Vec<u8>,
    len: u64,
) -> Option<Vec<u8>> {
    let want = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .min(MAX_CHECK_BODY);
    while body.len() < want {
        if !read_more(s, &mut body).await? {
            break;
        }
    }
    body.truncate(want);
    Some(body)
}

/// Up to [`MAX_CHECK_BODY`] bytes of a chunked body, `raw` being what was read past the head.
async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, mut raw: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < MAX_CHECK_BODY {
        let size = match httparse::parse_chunk_size(&raw).ok()? {
            httparse::Status::Complete((used, size)) => {
                raw.drain(..used);
                size
            }
            // A size line that never ends (endless chunk extensions) would otherwise
            // grow `raw` for as long as the check's timeout lets the backend write.
            httparse::Status::Partial if raw.len() > MAX_HEAD => return None,
            httparse::Status::Partial => match read_more(s, &mut raw).await? {
                true => continue,
                false => break,
            },
        };
        if size == 0 {
            break;
        }
        let mut left = usize::try_from(size).unwrap_or(usize::MAX);
        while left > 0 && body.len() < MAX_CHECK_BODY {
            if raw.is_empty() && !read_more(s, &mut raw).await? {
                return Some(body);
            }
            let take = left.min(raw.len());
            body.extend(raw.drain(..take));
            left -= take;
        }
        // The CRLF after the chunk's data.
        while raw.len() < 2 && body.len() < MAX_CHECK_BODY {
            if !read_more(s, &mut raw).await? {
                return Some(body);
            }
        }
        raw.drain(..raw.len().min(2));
    }
    body.truncate(MAX_CHECK_BODY);
    Some(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The status and whether the body has "OK", for an answer written by a backend that
    /// then closes.
    async fn answer(response: &[u8]) -> Option<(u16, bool)> {
        let (mut client, mut server) = tokio::io::duplex(256 * 1024);
        let response = response.to_vec();
        let backend = tokio::spawn(async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                server.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            // A write the client stops reading does not matter.
            let _ = server.write_all(&response).await;
        });
        let req = CheckRequest {
            host: "h",
            path: "/",
            headers: &[],
            body: Some("OK"),
        };
        let got = get(&mut client, &req).await;
        drop(client);
        backend.await.unwrap();
        got
    }

    #[tokio::test]
    async fn finds_the_text_in_each_framing() {
        type Case = (&'static [u8], Option<(u16, bool)>);
        let cases: [Case; 8] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", Some((200, true))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nFAIL", Some((200, false))),
            // Beyond Content-Length is not the body.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nOK", Some((200, false))),
            (b"HTTP/1.1 503 x\r\n\r\nstatus: OK", Some((503, true))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nall\r\n4\r\n is \r\n2\r\nOK\r\n0\r\n\r\n",
                Some((200, true)),
            ),
            // Text split across chunks is found in the joined body.
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n1\r\nO\r\n1\r\nK\r\n0\r\n\r\n",
                Some((200, true)),
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Some((204, false))),
            (b"SSH-2.0-OpenSSH\r\n\r\n", None),
        ];
        for (response, want) in cases {
            assert_eq!(
                answer(response).await,
                want,
                "{}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[tokio::test]
    async fn reads_a_bounded_part_of_the_body() {
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'.', MAX_CHECK_BODY));
        big.extend(b"OK");
        assert_eq!(answer(&big).await, Some((200, false)));
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..MAX_CHECK_BODY / 1000 + 1 {
            chunked.extend(format!("3e8\r\n{}\r\n", ".".repeat(1000)).as_bytes());
        }
        chunked.extend(b"2\r\nOK\r\n0\r\n\r\n");
        assert_eq!(answer(&chunked).await, Some((200, false)));
        // A chunk size line that does not end is not buffered without bound.
        let mut endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=".to_vec();
        endless.extend(std::iter::repeat_n(b'y', 4 * MAX_HEAD));
        assert_eq!(answer(&endless).await, None);
    }
}

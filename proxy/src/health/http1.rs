//! The request of an HTTP health check, over HTTP/1.1, and the reading of its answer.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{body_contains, CheckRequest};
use crate::config::MAX_CHECK_BODY;
use crate::h1::head::parse_response;

/// Most bytes of a response head read before the check gives up on it.
const MAX_HEAD: usize = 16 * 1024;

/// The request head: `GET path` with `Host`, the configured fields (their own User-Agent
/// replacing the check's), and `Connection: close`, so that a body without framing ends
/// with the connection.
pub(super) fn head(req: &CheckRequest<'_>) -> String {
    let mut head = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", req.path, req.host);
    for (name, value) in req.fields() {
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
    let (status, body) = read_answer(s).await?;
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

/// Reads the answer with the proxy's own parser and framing (`h1::head`, `h1::body`), as
/// strict as for an answer relayed to a client: its status and up to [`MAX_CHECK_BODY`]
/// bytes of its body's content (a body cut short by the close gives what came). None when
/// the answer cannot be read as HTTP/1 (a head over [`MAX_HEAD`], a malformed chunked body,
/// two lengths that differ, a `101`).
async fn read_answer<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u16, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        if !read_more(s, &mut buf).await? {
            return None;
        }
        if let Some(head) = parse_response(&buf, false, MAX_HEAD).ok()? {
            break head;
        }
    };
    let mut framing = head.framing;
    let mut body = Vec::new();
    let mut unread = buf.split_off(head.len);
    loop {
        let (_, done) = framing
            .feed_with(&unread, |data| {
                let room = MAX_CHECK_BODY - body.len();
                body.extend_from_slice(&data[..data.len().min(room)]);
            })
            .ok()?;
        if done || body.len() >= MAX_CHECK_BODY {
            return Some((head.status, body));
        }
        unread.clear();
        if !read_more(s, &mut unread).await? {
            return Some((head.status, body));
        }
    }
}

/// Appends what the next read gives; false at the end of the stream.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await.ok()?;
    buf.extend_from_slice(&chunk[..n]);
    Some(n > 0)
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

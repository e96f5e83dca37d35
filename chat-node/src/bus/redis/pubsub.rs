//! The hub's pub/sub connection, spoken directly in RESP2.
//!
//! Every node reads every message of every room it serves on this one connection, so its
//! cost per message is paid by each node for each message. The redis crate's reader (a
//! general combinator parser, then a task and a channel between it and its user) spent
//! about 7.7k instructions on each, 40% of a node's whole work per message (callgrind at
//! 5 msgs/s per client, 2026-11-30); pub/sub needs only flat arrays of bulk strings, which
//! this reads in place in a few hundred. Commands and catch-up reads keep the crate.

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The most elements of a reply read: pub/sub's have three.
const MAX_ELEMENTS: usize = 8;
/// The largest bulk string read (Redis's own `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Room made in the read buffer before each read.
const READ_ROOM: usize = 16 * 1024;

/// What Redis sent on a pub/sub connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// A message published on a subscribed channel.
    Message { channel: Bytes, payload: Bytes },
    /// SUBSCRIBE's confirmation of a channel.
    Subscribed(Bytes),
    /// UNSUBSCRIBE's confirmation of a channel (none when nothing was subscribed).
    Unsubscribed(Option<Bytes>),
    /// The answer to PING (an array while subscribed, `+PONG` otherwise).
    Pong,
    /// A status reply (`+OK` to AUTH).
    Status(Bytes),
    /// An error reply to the command in turn.
    Error(String),
    /// Any other array (a kind this connection never asks for).
    Other,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PubSubError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("Redis closed the connection")]
    Closed,
    #[error("malformed reply from Redis: {0}")]
    Protocol(&'static str),
    #[error("Redis refused AUTH: {0}")]
    Refused(String),
    #[error("the pub/sub connection does not support this Redis address: {0}")]
    Unsupported(String),
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The receiving side: replies in the order Redis sent them.
pub(super) struct Reader {
    io: ReadHalf,
    buf: BytesMut,
}

/// The sending side: commands, each written whole.
pub(super) struct Writer {
    io: WriteHalf,
    buf: Vec<u8>,
}

/// Connects to the Redis of `info` and authenticates as it says (the database number does
/// not matter to pub/sub).
pub(super) async fn open(info: &ConnectionInfo) -> Result<(Reader, Writer), PubSubError> {
    let (read, write): (ReadHalf, WriteHalf) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        ConnectionAddr::Unix(path) => {
            let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
            (Box::new(r), Box::new(w))
        }
        other => return Err(PubSubError::Unsupported(other.to_string())),
    };
    let mut reader = Reader {
        io: read,
        buf: BytesMut::new(),
    };
    let mut writer = Writer {
        io: write,
        buf: Vec::new(),
    };
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let password = password.as_bytes();
        match settings.username() {
            Some(user) => writer.send(&[b"AUTH", user.as_bytes(), password]).await?,
            None => writer.send(&[b"AUTH", password]).await?,
        }
        match reader.next().await? {
            Reply::Status(_) => {}
            Reply::Error(e) => return Err(PubSubError::Refused(e)),
            _ => return Err(PubSubError::Protocol("unexpected answer to AUTH")),
        }
    }
    Ok((reader, writer))
}

impl Reader {
    /// The next reply. Cancel-safe: what was read stays in the buffer for the next call.
    pub(super) async fn next(&mut self) -> Result<Reply, PubSubError> {
        loop {
            if let Some(reply) = parse(&mut self.buf)? {
                return Ok(reply);
            }
            self.buf.reserve(READ_ROOM);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(PubSubError::Closed);
            }
        }
    }
}

impl Writer {
    /// Writes one command, its arguments as bulk strings.
    pub(super) async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.buf.clear();
        encode(&mut self.buf, args);
        self.io.write_all(&self.buf).await
    }
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Commands are few (a SUBSCRIBE per room, a PING per keep-alive): no need to be quick.
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// One element of an array reply, as positions in the frame.
#[derive(Clone, Copy)]
enum Element {
    Bulk(usize, usize),
    Nil,
    /// An integer or status: nothing pub/sub's replies need from it.
    Scalar,
}

/// Takes the first whole reply off `buf`; `None` until one has arrived.
fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, PubSubError> {
    let Some((kind, span, mut at)) = line(buf, 0)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => {
            let text = buf.split_to(at).freeze().slice(span.0..span.1);
            return Ok(Some(if kind == b'+' {
                if text.eq_ignore_ascii_case(b"PONG") {
                    Reply::Pong
                } else {
                    Reply::Status(text)
                }
            } else {
                Reply::Error(String::from_utf8_lossy(&text).into_owned())
            }));
        }
        b'*' => {}
        _ => {
            return Err(PubSubError::Protocol(
                "a reply that is not an array or a status",
            ))
        }
    }
    let count = number(&buf[span.0..span.1])?;
    let count = usize::try_from(count)
        .ok()
        .filter(|n| *n <= MAX_ELEMENTS)
        .ok_or(PubSubError::Protocol("array length"))?;
    let mut elements = [Element::Nil; MAX_ELEMENTS];
    for element in elements.iter_mut().take(count) {
        let Some((kind, span, next)) = line(buf, at)? else {
            return Ok(None);
        };
        at = next;
        *element = match kind {
            b'$' => {
                let len = number(&buf[span.0..span.1])?;
                if len < 0 {
                    Element::Nil
                } else {
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|n| *n <= MAX_BULK)
                        .ok_or(PubSubError::Protocol("bulk length"))?;
                    let end = at + len;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(PubSubError::Protocol("bulk string not ended by CRLF"));
                    }
                    let bulk = Element::Bulk(at, end);
                    at = end + 2;
                    bulk
                }
            }
            b':' | b'+' => Element::Scalar,
            _ => return Err(PubSubError::Protocol("an array element of another kind")),
        };
    }
    let frame = buf.split_to(at).freeze();
    let bulk = |i: usize| match elements.get(i) {
        Some(Element::Bulk(from, to)) => Some(frame.slice(*from..*to)),
        _ => None,
    };
    let Some(kind) = bulk(0) else {
        return Ok(Some(Reply::Other));
    };
    let reply = if kind.eq_ignore_ascii_case(b"message") {
        match (bulk(1), bulk(2)) {
            (Some(channel), Some(payload)) if count == 3 => Reply::Message { channel, payload },
            _ => {
                return Err(PubSubError::Protocol(
                    "a message without channel or payload",
                ))
            }
        }
    } else if kind.eq_ignore_ascii_case(b"subscribe") {
        Reply::Subscribed(bulk(1).ok_or(PubSubError::Protocol("subscribe without channel"))?)
    } else if kind.eq_ignore_ascii_case(b"unsubscribe") {
        Reply::Unsubscribed(bulk(1))
    } else if kind.eq_ignore_ascii_case(b"pong") {
        Reply::Pong
    } else {
        Reply::Other
    };
    Ok(Some(reply))
}

/// The line starting at `at`: its type byte, the span of the rest before CRLF, and where
/// the next begins; `None` until the whole line has arrived.
type Line = (u8, (usize, usize), usize);

fn line(buf: &[u8], at: usize) -> Result<Option<Line>, PubSubError> {
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    let Some(lf) = memchr::memchr(b'\n', rest) else {
        return Ok(None);
    };
    if lf < 2 || rest[lf - 1] != b'\r' {
        return Err(PubSubError::Protocol("a line not ended by CRLF"));
    }
    Ok(Some((rest[0], (at + 1, at + lf - 1), at + lf + 1)))
}

/// A decimal integer, as RESP writes lengths and counts.
fn number(text: &[u8]) -> Result<i64, PubSubError> {
    let bad = PubSubError::Protocol("not a number");
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(bad);
    }
    let mut n: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return Err(bad);
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if negative { -n } else { n })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Reply>, PubSubError> {
        let mut buf = BytesMut::from(bytes);
        let mut replies = Vec::new();
        while let Some(reply) = parse(&mut buf)? {
            replies.push(reply);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(replies)
    }

    #[test]
    fn replies_of_a_subscribed_connection_are_read_in_order() {
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$8\r\n1-0 a\r\nb\r\n\
            *2\r\n$4\r\npong\r\n$0\r\n\r\n\
            *3\r\n$11\r\nunsubscribe\r\n$4\r\nroom\r\n:0\r\n\
            *3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n\
            +PONG\r\n+OK\r\n-NOPERM no\r\n\
            *3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:1\r\n";
        let room = Bytes::from_static(b"room");
        assert_eq!(
            parse_all(wire).unwrap(),
            [
                Reply::Subscribed(room.clone()),
                Reply::Message {
                    channel: room.clone(),
                    payload: Bytes::from_static(b"1-0 a\r\nb"),
                },
                Reply::Pong,
                Reply::Unsubscribed(Some(room)),
                Reply::Unsubscribed(None),
                Reply::Pong,
                Reply::Status(Bytes::from_static(b"OK")),
                Reply::Error("NOPERM no".to_owned()),
                Reply::Other,
            ]
        );
    }

    #[test]
    fn a_reply_split_anywhere_is_read_once_whole() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(parse(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing taken at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            let reply = parse(&mut buf).unwrap().unwrap();
            assert!(matches!(reply, Reply::Message { ref payload, .. } if payload == "hello"));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"$5\r\nhello\r\n"[..],
            b"*x\r\n",
            b"*99\r\n",
            b"*1\r\n*1\r\n:1\r\n",
            b"*1\r\n$2\r\nabcd\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n:1\r\n",
            b"*1\r\n$-\r\n",
            b"+OK\n",
            b"\n",
        ] {
            assert!(
                parse_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SUBSCRIBE", b"room 1"]);
        assert_eq!(out, b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nroom 1\r\n");
    }
}

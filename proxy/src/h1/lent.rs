//! A client connection lent to pingora for one request.
//!
//! pingora reads a request from the stream it is given, and keeps what it reads past that
//! request's end for the next one, in its session, out of our reach. A connection handed
//! to it once would then stay with its parser for good: later requests would get its empty
//! 400s for heads it refuses, and its 400 for an absolute-form target whose Host differs.
//! So pingora gets the stream through [`Lent`], which gives it the bytes of one request
//! (its head, then its body as framed) and nothing after them. What comes after waits here;
//! once pingora is done with the request, [`take_back`] returns the stream and those bytes
//! to our path, which reads the next request itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::Framing;

/// Bytes of what follows the request read ahead while pingora serves it (reading is how a
/// client's close is noticed); more wait in the socket.
const HOLD: usize = 16 * 1024;

/// A client stream that reads as one request and then as nothing more.
#[derive(Debug)]
pub struct Lent {
    inner: Stream,
    /// Read from the client, not yet given to pingora: the rest of the request, then what
    /// follows it.
    buf: BytesMut,
    progress: Progress,
    /// The client closed its side.
    eof: bool,
}

/// How much of the request pingora has been given.
#[derive(Debug)]
struct Progress {
    /// Bytes of the head still to give.
    head_left: usize,
    /// The body's framing, fed with the body bytes as they are given.
    body: Framing,
    /// The whole request has been given.
    done: bool,
    /// The body's framing could not be followed (a malformed chunked body): pingora gets
    /// the bytes as they come, finds the fault itself, and the connection is not taken back.
    lost: bool,
}

impl Progress {
    /// Counts `bytes`, the next ones given to pingora: how many of them belong to the request.
    fn belong(&mut self, bytes: &[u8]) -> usize {
        if self.lost {
            return bytes.len();
        }
        let head = self.head_left.min(bytes.len());
        self.head_left -= head;
        if self.head_left > 0 {
            return head;
        }
        // Fed even with nothing left: an empty body is over with the head.
        match self.body.feed(&bytes[head..]) {
            Ok((n, done)) => {
                self.done = done;
                head + n
            }
            Err(_) => {
                self.lost = true;
                bytes.len()
            }
        }
    }
}

impl Lent {
    /// `stream`, of which `buf` has been read: a request whose head is `head_len` bytes,
    /// followed by a body framed by `body`.
    pub fn new(stream: Stream, buf: BytesMut, head_len: usize, body: Framing) -> Self {
        Self {
            inner: stream,
            buf,
            progress: Progress {
                head_left: head_len,
                body,
                done: false,
                lost: false,
            },
            eof: false,
        }
    }

    /// Reads more of the client's bytes into `buf`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; 4096];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(n))
    }
}

/// What came back from pingora.
pub enum Returned {
    /// A lent stream whose request was read whole, with the bytes that followed it.
    Back(Stream, BytesMut),
    /// A lent stream that cannot carry another request of ours: closed.
    Unfinished,
    /// Not a lent stream.
    Other(Stream),
}

/// Takes a stream back from pingora once it is done with the request it was lent for.
pub fn take_back(stream: Stream) -> Returned {
    // Deref explicitly: on the box, `as_any` would name the box's own type.
    if !(*stream).as_any().is::<Lent>() {
        return Returned::Other(stream);
    }
    match stream.into_any().downcast::<Lent>() {
        Ok(lent) if lent.progress.done && !lent.progress.lost => {
            Returned::Back(lent.inner, lent.buf)
        }
        _ => Returned::Unfinished,
    }
}

impl AsyncRead for Lent {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            // An empty read would look like the client's close.
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.progress.done {
                if !this.buf.is_empty() {
                    let n = this.buf.len().min(out.remaining());
                    let take = this.progress.belong(&this.buf[..n]);
                    out.put_slice(&this.buf[..take]);
                    this.buf.advance(take);
                    // Nothing taken means the request ended with the bytes given before
                    // (each framing takes a byte it is fed until then): on to the end.
                    if take > 0 || !this.progress.done {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                if this.eof {
                    return Poll::Ready(Ok(()));
                }
                if this.progress.lost {
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                // Straight into pingora's buffer; what lies past the request's end is moved
                // back out of it.
                let before = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                let got = &out.filled()[before..];
                if got.is_empty() {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let take = this.progress.belong(got);
                if take < got.len() {
                    this.buf.extend_from_slice(&got[take..]);
                    out.set_filled(before + take);
                }
                if take > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The request has been given whole. Nothing more is for pingora, but the
            // client's close is: it ends the request as it would on the bare stream.
            if this.eof {
                if this.buf.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // A request came before the close: it is still to be served.
                return Poll::Pending;
            }
            if this.buf.len() >= HOLD {
                // The rest waits in the socket; pingora is woken by its other work.
                return Poll::Pending;
            }
            ready!(this.fill(cx))?;
        }
    }
}

impl AsyncWrite for Lent {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Lent {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Lent {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Lent {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Lent {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Lent {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Lent {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// Peeking would show bytes that are not pingora's; it is only used before a session starts.
impl Peek for Lent {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One poll of a read of `lent`: the bytes it gives, None while it gives nothing.
    fn poll_once(lent: &mut Lent) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 64];
        let mut out = ReadBuf::new(&mut chunk);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(lent).poll_read(&mut cx, &mut out) {
            Poll::Ready(r) => {
                r.unwrap();
                Some(out.filled().to_vec())
            }
            Poll::Pending => None,
        }
    }

    /// Reads from `lent` until it gives nothing more for now.
    fn drain(lent: &mut Lent) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(bytes) = poll_once(lent) {
            if bytes.is_empty() {
                break;
            }
            got.extend(bytes);
        }
        got
    }

    #[tokio::test]
    async fn gives_one_request_and_keeps_what_follows() {
        let (mut client, server) = tokio::io::duplex(1024);
        // The head and part of a chunked body were read before the loan; the rest of the
        // body comes behind the next request's first bytes, in one write.
        let head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut read = BytesMut::from(&head[..]);
        read.extend_from_slice(b"5\r\nhel");
        let body = Framing::Chunked(Default::default());
        let mut lent = Lent::new(Box::new(server), read, head.len(), body);
        assert_eq!(drain(&mut lent), [&head[..], b"5\r\nhel"].concat());
        client
            .write_all(b"lo\r\n0\r\nx-sum: 1\r\n\r\nGET /b HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(drain(&mut lent), b"lo\r\n0\r\nx-sum: 1\r\n\r\n");
        // Nothing more for pingora, however long it asks.
        assert_eq!(poll_once(&mut lent), None);
        client.write_all(b"\r\n").await.unwrap();
        assert_eq!(poll_once(&mut lent), None);

        let Returned::Back(mut stream, rest) = take_back(Box::new(lent)) else {
            panic!("not taken back");
        };
        let mut rest = rest.to_vec();
        AsyncWriteExt::shutdown(&mut client).await.unwrap();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"GET /b HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_close_after_the_request_reads_as_the_end() {
        let (client, server) = tokio::io::duplex(64);
        let req = b"GET / HTTP/1.0\r\n\r\n";
        let mut lent = Lent::new(
            Box::new(server),
            BytesMut::from(&req[..]),
            req.len(),
            Framing::Empty,
        );
        assert_eq!(drain(&mut lent), req);
        assert_eq!(poll_once(&mut lent), None);
        drop(client);
        assert_eq!(poll_once(&mut lent), Some(Vec::new()));
    }

    #[tokio::test]
    async fn an_unfinished_or_foreign_stream_is_not_taken_back() {
        let (_client, server) = tokio::io::duplex(64);
        let head = b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n";
        let lent = Lent::new(
            Box::new(server),
            BytesMut::from(&head[..]),
            head.len(),
            Framing::Length(9),
        );
        assert!(matches!(take_back(Box::new(lent)), Returned::Unfinished));
        let (_client, server) = tokio::io::duplex(64);
        assert!(matches!(take_back(Box::new(server)), Returned::Other(_)));
    }
}

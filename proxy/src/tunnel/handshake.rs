//! The upstream half of an HTTP/1.1 upgrade: connect, send the request head, read the
//! response head.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::logging::Throttle;
use crate::upstream::stream::UpstreamStream;
use crate::upstream::tls::TlsClient;

/// Largest upstream response head we accept for an upgrade.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection could not be made: nothing was sent, so another backend may be tried.
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The TLS handshake failed (an untrusted or misnamed certificate, a backend that does
    /// not speak TLS): nothing was sent.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls { addr: SocketAddr, source: io::Error },
    /// The request was sent; the backend then failed.
    #[error("upstream {addr} failed during the upgrade: {reason}")]
    Upstream { addr: SocketAddr, reason: String },
    #[error("upstream {0} did not answer the upgrade in time")]
    ReadTimeout(SocketAddr),
}

impl HandshakeError {
    /// Whether the request may be retried on another backend (it was never sent).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout(_) | Self::Tls { .. }
        )
    }
}

/// The upstream's answer to an upgrade request.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub stream: UpstreamStream,
    pub status: u16,
    /// The raw response head, ending with the blank line.
    pub head: Vec<u8>,
    /// Bytes that arrived after the head (the start of the tunnel or of a body).
    pub rest: BytesMut,
    /// Content-Length of a non-101 answer, if any.
    pub content_length: Option<u64>,
    pub chunked: bool,
}

/// Connects to a backend, with a TLS handshake when its upstream has `tls`;
/// `connect_timeout` bounds both.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    connect_timeout: Duration,
) -> Result<UpstreamStream, HandshakeError> {
    connect_alpn(addr, tls, connect_timeout, false).await
}

/// [`connect`], offering h2 alone by ALPN when `h2` (an h2 upstream's health checks).
pub async fn connect_alpn(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    connect_timeout: Duration,
    h2: bool,
) -> Result<UpstreamStream, HandshakeError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => return Err(HandshakeError::ConnectTimeout(addr)),
        Ok(Err(source)) => return Err(HandshakeError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    tcp.set_nodelay(true).ok();
    let Some(tls) = tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let handshake = tls.connector(h2).connect(tls.name_for(addr), tcp);
    match tokio::time::timeout_at(deadline, handshake).await {
        Err(_) => Err(HandshakeError::ConnectTimeout(addr)),
        Ok(Err(source)) => {
            let e = HandshakeError::Tls { addr, source };
            warn_tls(&e);
            Err(e)
        }
        Ok(Ok(s)) => Ok(UpstreamStream::Tls(Box::new(s))),
    }
}

static TLS_FAILURES: Throttle = Throttle::new();

/// Logs a failed TLS session with a backend. Most often a setting to fix (a CA, a name, a
/// client certificate), which the client's 502 does not say: warned, but once a minute at
/// most, since it repeats on every request.
pub(crate) fn warn_tls(e: &dyn std::fmt::Display) {
    if TLS_FAILURES.allow() {
        tracing::warn!("{e}");
    }
}

/// The alert a backend ended a TLS session with, if `e` is one. Under TLS 1.3 a backend
/// that refuses the client certificate says so only after the client's side of the
/// handshake is done: on the first read, not at connect.
pub(crate) fn tls_alert(e: &io::Error) -> Option<String> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(format!("{alert:?}")),
        _ => None,
    }
}

/// Sends `head` on `stream` and reads the response head.
pub async fn exchange(
    mut stream: UpstreamStream,
    addr: SocketAddr,
    head: &[u8],
    read_timeout: Duration,
) -> Result<UpstreamResponse, HandshakeError> {
    let fail = |reason: String| HandshakeError::Upstream { addr, reason };
    // The flush matters over TLS, which may hold the last record back.
    let sent = async {
        stream.write_all(head).await?;
        stream.flush().await
    };
    sent.await.map_err(|e| fail(format!("write: {e}")))?;
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + read_timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(HandshakeError::ReadTimeout(addr)),
            Ok(Err(e)) => return Err(fail(format!("read: {e}"))),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(fail("closed before a complete response head".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let mut content_length = None;
                let mut coded = false;
                let mut chunked = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok());
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        // Chunked only counts as the final coding (RFC 9112 §6.3).
                        coded = true;
                        let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                        chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                    }
                }
                if coded {
                    // Transfer-Encoding overrides Content-Length; without chunked last, the
                    // close ends the body.
                    content_length = None;
                }
                let head = buf.split_to(len).to_vec();
                return Ok(UpstreamResponse {
                    stream,
                    status,
                    head,
                    rest: buf,
                    content_length,
                    chunked,
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_RESPONSE_HEAD {
                    return Err(fail("response head too large".into()));
                }
            }
            Err(e) => return Err(fail(format!("invalid response head: {e}"))),
        }
    }
}

/// Inserts extra header lines (each ending in CRLF) before the blank line of a head.
pub fn with_extra_headers(head: &[u8], extra: &str) -> Vec<u8> {
    if extra.is_empty() || head.len() < 2 {
        return head.to_vec();
    }
    let cut = head.len() - 2;
    let mut out = Vec::with_capacity(head.len() + extra.len());
    out.extend_from_slice(&head[..cut]);
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(&head[cut..]);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn extra_headers_go_before_the_blank_line() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let out = with_extra_headers(head, "Set-Cookie: a=b\r\n");
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSet-Cookie: a=b\r\n\r\n"
        );
    }
}

//! Plain HTTP sent to a TLS listener: answered with a 400 that says so, in plain text.
//!
//! Without this, pingora starts the TLS handshake on whatever arrives, rustls fails on the
//! first byte, and the client sees the connection close with no answer (curl: "Empty reply
//! from server"), which looks like a crashed proxy. nginx answers these with "400 The plain
//! HTTP request was sent to HTTPS port", Go's servers and Caddy with a 400 too. This runs
//! after accept and before the handshake: it peeks at the first byte, and only a byte that
//! can start a request line (a token character: a method) is answered here; a TLS record
//! (0x16) and anything else go on to the handshake untouched.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest as _, Peek as _};
use pingora::{Error, ErrorType};

use super::{addresses, bound::bounded, first_head_timeout, first_line, refuse, LINGER};
use crate::proxy::is_token_char;
use crate::proxy::policy::Rejection;
use crate::proxy_protocol::{self, Expecting};
use crate::state::Shared;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// What the client is told.
const DETAIL: &str = "plain HTTP request sent to a TLS listener (use https://)";

/// The pre-TLS step of every TLS listener of the proxy service. It also reads the PROXY
/// protocol header of the listeners that expect one, which comes before the handshake.
pub struct PlainHttpOnTls {
    shared: Arc<Shared>,
    expecting: Vec<Expecting>,
}

impl PlainHttpOnTls {
    pub fn new(shared: Arc<Shared>, expecting: Vec<Expecting>) -> Self {
        Self { shared, expecting }
    }
}

#[async_trait]
impl PreTlsProcess for PlainHttpOnTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let rt = self.shared.current();
        // The same bound as the first byte of a request on a plain listener, for the whole
        // handshake: a client that connects and says nothing, or that starts its handshake
        // and stalls (slowloris over TLS), is not kept for pingora's 60 s handshake limit.
        let wait = first_head_timeout(&rt);
        self.shared.handshakes.start(&self.shared, stream, wait);
        if !self.expecting.is_empty() {
            if let Err(e) =
                proxy_protocol::accept(&self.shared, &self.expecting, stream, None, wait).await
            {
                return Err(Error::explain(ErrorType::ConnectRefused, e.to_string()));
            }
        }
        // Until the first record (the ClientHello) is in, the wait is also bounded here,
        // which tells a silent client from a plain HTTP one and a stalled handshake.
        let mut first = [0u8; 1];
        let peeked = bounded(wait, async {
            if !stream.try_peek(&mut first).await? {
                return Ok::<_, std::io::Error>(false);
            }
            if first[0] == TLS_HANDSHAKE {
                peek_first_record(stream).await?;
            }
            Ok(true)
        })
        .await;
        match peeked {
            Ok(Ok(true)) => {}
            // Peeking is not offered on this stream: the handshake decides, as before.
            Ok(Ok(false)) => return Ok(()),
            Ok(Err(e)) => {
                return Err(Error::because(
                    ErrorType::ConnectionClosed,
                    "closed before a TLS handshake",
                    e,
                ))
            }
            Err(_) => {
                self.shared.metrics.reject("header_timeout");
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "no TLS handshake within the header timeout",
                ));
            }
        }
        if first[0] == TLS_HANDSHAKE || !is_token_char(first[0]) {
            return Ok(());
        }

        // The first line, for the access log (as nginx logs `$request` of this 400).
        let head = first_line(stream, wait.min(MAX_LINE_WAIT)).await;
        let (peer_ip, local) = addresses(stream.get_socket_digest().as_deref());
        let r = Rejection {
            status: 400,
            reason: "plain_http_on_tls",
            detail: DETAIL,
        };
        refuse(
            &self.shared,
            stream,
            r,
            peer_ip,
            &head,
            rt.response_headers(local),
            rt.config.server.request_id,
            LINGER,
        )
        .await;
        Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "plain HTTP request on a TLS listener: answered 400",
        ))
    }
}

/// Waits until the whole first TLS record (the ClientHello) has arrived, leaving it unread
/// for the handshake. A length no ClientHello has is left for rustls to refuse.
async fn peek_first_record(stream: &mut L4Stream) -> std::io::Result<()> {
    let mut header = [0u8; 5];
    stream.try_peek(&mut header).await?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len <= MAX_RECORD {
        let mut record = vec![0u8; header.len() + len];
        stream.try_peek(&mut record).await?;
    }
    Ok(())
}

/// The largest TLS plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

/// How long the rest of the first line may take once a plain request has begun: the answer
/// does not depend on it, only the access log's line does.
const MAX_LINE_WAIT: Duration = Duration::from_secs(1);

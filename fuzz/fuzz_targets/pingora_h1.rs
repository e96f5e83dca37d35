//! pingora's own HTTP/1 sessions, which read what Switchyard's path hands them (HTTP/1.0,
//! chunked or `Expect` bodies, upgrades, absolute-form targets) and every backend answer to
//! an h2 client: a client's requests and bodies through the server session (kept-alive, so
//! the bytes after one request start the next), a backend's answers and bodies through the
//! client session, each fed in arbitrary reads. Each must end in a value or an error: a
//! panic or a hang is a find. `log` runs at debug, the most the proxy lets through
//! (`proxy/src/logging.rs`), so that the records pingora formats on these paths are
//! formatted here too.
#![no_main]

use std::fmt::Write as _;
use std::sync::Once;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as ClientSession;
use pingora::protocols::http::v1::server::HttpSession as ServerSession;
use pingora::protocols::http::HttpTask;
use pingora::protocols::Stream;
use tokio::io::{AsyncWriteExt as _, DuplexStream};

/// Which session reads the bytes.
#[derive(Arbitrary, Debug)]
enum Side {
    /// The client's side: requests, as the proxy's server session reads them.
    Client,
    /// The backend's side: the answer to this request, as the proxy's client session reads it.
    Backend { request: Request },
}

/// The request the proxy sent the backend: its method decides whether an answer has a body.
#[derive(Arbitrary, Debug)]
enum Request {
    Get,
    Head,
    /// `POST` with a 1-byte body.
    Post,
    /// A WebSocket upgrade (pingora's path relays a refused one).
    Upgrade,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    side: Side,
    /// The sizes of the reads the bytes arrive in (the rest at once).
    cuts: Vec<u8>,
    bytes: &'a [u8],
}

/// Formats every record and throws the text away.
struct Discard;

impl log::Log for Discard {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let _ = Sink.write_fmt(*record.args());
    }

    fn flush(&self) {}
}

struct Sink;

impl std::fmt::Write for Sink {
    fn write_str(&mut self, _: &str) -> std::fmt::Result {
        Ok(())
    }
}

/// Enough for every read to be answered at once; what the session writes back is small.
const PIPE: usize = 1 << 20;

/// Writes `bytes` in pieces of the `cuts` sizes, letting the reader run between them, then
/// ends the stream. The stream is returned so that the session's own writes still have
/// somewhere to go.
async fn feed(mut tx: DuplexStream, bytes: &[u8], cuts: &[u8]) -> DuplexStream {
    let mut at = 0;
    let mut cuts = cuts.iter().map(|&c| usize::from(c).max(1));
    while at < bytes.len() {
        let n = cuts.next().unwrap_or(bytes.len()).min(bytes.len() - at);
        if tx.write_all(&bytes[at..at + n]).await.is_err() {
            return tx;
        }
        at += n;
        tokio::task::yield_now().await;
    }
    let _ = tx.shutdown().await;
    tx
}

/// Reads requests as the proxy's server session does, answering each, for as long as the
/// connection stays reusable (every loop consumes bytes, so `rounds` is only a backstop).
async fn serve(io: DuplexStream, rounds: usize) {
    let mut stream: Stream = Box::new(io);
    for _ in 0..rounds {
        let mut s = ServerSession::new(stream);
        s.set_server_keepalive(Some(60));
        match s.read_request().await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
        let _ = s.validate_request();
        let _ = s.request_summary();
        let _ = s.is_upgrade_req();
        let _ = s.get_header("host");
        // As the proxy does, a `100 Continue` before a body the client waits to send.
        let expects = s
            .get_header("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects && !s.is_body_empty() && s.write_continue_response().await.is_err() {
            return;
        }
        for _ in 0..rounds {
            match s.read_body_bytes().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = s.is_body_done();
        let Ok(mut answer) = ResponseHeader::build(200, None) else {
            return;
        };
        let _ = answer.insert_header("content-length", "0");
        if s.write_response_header(Box::new(answer)).await.is_err()
            || s.finish_body().await.is_err()
        {
            return;
        }
        match s.reuse().await {
            Ok(Some(next)) => stream = next.into_parts().0,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Sends `request` and reads the answer as the proxy's client session does, through 1xx
/// answers and the body, then asks whether the connection could be reused.
async fn fetch(io: DuplexStream, request: &Request, rounds: usize) {
    let mut s = ClientSession::new(Box::new(io));
    let method = match request {
        Request::Get | Request::Upgrade => "GET",
        Request::Head => "HEAD",
        Request::Post => "POST",
    };
    let Ok(mut head) = RequestHeader::build(method, b"/", None) else {
        return;
    };
    let _ = head.insert_header("host", "backend");
    match request {
        Request::Post => {
            let _ = head.insert_header("content-length", "1");
        }
        Request::Upgrade => {
            let _ = head.insert_header("connection", "upgrade");
            let _ = head.insert_header("upgrade", "websocket");
        }
        Request::Get | Request::Head => {}
    }
    if s.write_request_header(Box::new(head)).await.is_err() {
        return;
    }
    if matches!(request, Request::Post) && s.write_body(b"x").await.is_err() {
        return;
    }
    if s.finish_body().await.is_err() {
        return;
    }
    for _ in 0..rounds {
        match s.read_response_task().await {
            Ok(HttpTask::Header(head, end)) => {
                let _ = head.status;
                let _ = s.get_status();
                if end && !(100..200).contains(&head.status.as_u16()) {
                    break;
                }
            }
            Ok(HttpTask::Body(_, end) | HttpTask::UpgradedBody(_, end)) => {
                if end {
                    break;
                }
            }
            Ok(HttpTask::Done | HttpTask::Trailer(_) | HttpTask::Failed(_)) | Err(_) => break,
        }
    }
    let _ = s.was_upgraded();
    s.respect_keepalive();
    let _ = s.will_keepalive();
    let _ = s.reuse().await;
}

fuzz_target!(|input: Input<'_>| {
    static LOGGER: Once = Once::new();
    LOGGER.call_once(|| {
        if log::set_logger(&Discard).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    });
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let (ours, theirs) = tokio::io::duplex(PIPE);
    // Every round of either loop takes at least a byte, or ends.
    let rounds = input.bytes.len() + 4;
    rt.block_on(async {
        match &input.side {
            Side::Client => {
                let _ = tokio::join!(
                    feed(theirs, input.bytes, &input.cuts),
                    serve(ours, rounds)
                );
            }
            Side::Backend { request } => {
                let _ = tokio::join!(
                    feed(theirs, input.bytes, &input.cuts),
                    fetch(ours, request, rounds)
                );
            }
        }
    });
});

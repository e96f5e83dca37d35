//! Raw HTTP/1.1 on both ends of a connection, for tests that check every byte on the
//! wire: a client that reads responses exactly as framed, and backends on a 127.0.0.1
//! socket that misbehave on purpose.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::fixtures::{entries, listener, upstream, TWO_THREADS};
use crate::{free_port, Backend, Proxy, STEP_TIMEOUT};

/// How long a raw backend waits for request bytes the proxy should send before it answers
/// that they never came (a bound, not a synchronisation: the answer says which it was).
pub const BODY_WAIT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 reader for both ends of a connection.

/// A byte stream with what has been read of it but not yet taken.
pub struct RawConn<R> {
    pub io: R,
    pub buf: Vec<u8>,
}

/// A response as the client received it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The head as text, status line included.
    pub head: String,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the head carries `connection: close`.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A request as a raw backend received it.
#[derive(Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    /// Its fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The declared body did not arrive within [`BODY_WAIT`].
    pub body_missing: bool,
}

/// Splits a head into its first line and its fields.
pub fn split_head(head: &str) -> (&str, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (first, fields)
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl<R: AsyncRead + Unpin> RawConn<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes (bounded by `limit`): how many, 0 at EOF; `Err` on timeout or error.
    pub async fn fill(&mut self, limit: Duration) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(limit, self.io.read(&mut chunk)).await {
            Err(_) => Err(format!("nothing to read within {limit:?}")),
            Ok(Err(e)) => Err(format!("read failed: {e}")),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    /// Takes a head (without its blank line); `Ok(None)` at EOF before any byte of it.
    pub async fn head(&mut self, limit: Duration) -> Result<Option<String>, String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return Ok(Some(head));
            }
            if self.fill(limit).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(format!(
                        "EOF inside a head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                };
            }
        }
    }

    /// Takes exactly `n` bytes.
    pub async fn take(&mut self, n: usize, limit: Duration) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill(limit).await? == 0 {
                return Err(format!("EOF after {} of {n} bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes a line, without its CRLF.
    pub async fn line(&mut self, limit: Duration) -> Result<String, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.fill(limit).await? == 0 {
                return Err("EOF inside a line".into());
            }
        }
    }

    /// Reads one response; `no_body` for the answer to a HEAD request.
    pub async fn try_response(&mut self, no_body: bool) -> Result<Resp, String> {
        let head = self
            .head(STEP_TIMEOUT)
            .await?
            .ok_or("the connection closed before a response")?;
        let (first, headers) = split_head(&head);
        let status = first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {first:?}"))?;
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        let chunked = field(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if no_body || (100..200).contains(&status) || status == 204 || status == 304 {
        } else if chunked {
            loop {
                let line = self.line(STEP_TIMEOUT).await?;
                let size = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                if size == 0 {
                    loop {
                        let t = self.line(STEP_TIMEOUT).await?;
                        if t.is_empty() {
                            break;
                        }
                        trailers.push(t);
                    }
                    break;
                }
                body.extend(self.take(size, STEP_TIMEOUT).await?);
                if !self.take(2, STEP_TIMEOUT).await?.eq(b"\r\n") {
                    return Err("chunk data not followed by CRLF".into());
                }
            }
        } else if let Some(len) = field(&headers, "content-length") {
            let len: usize = len.parse().map_err(|_| format!("content-length {len:?}"))?;
            body = self.take(len, STEP_TIMEOUT).await?;
        } else {
            while self.fill(STEP_TIMEOUT).await? > 0 {}
            body = std::mem::take(&mut self.buf);
        }
        Ok(Resp {
            status,
            head,
            headers,
            body,
            trailers,
        })
    }

    /// Reads one response, panicking with the reason when there is none.
    pub async fn response(&mut self, no_body: bool) -> Resp {
        match self.try_response(no_body).await {
            Ok(r) => r,
            Err(e) => panic!(
                "reading a response: {e}; unread bytes {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Asserts the peer closes the connection (within [`STEP_TIMEOUT`]) without sending
    /// anything more.
    pub async fn expect_eof(&mut self, what: &str) {
        loop {
            match self.fill(STEP_TIMEOUT).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.starts_with("read failed") => break,
                Err(e) => panic!("{what}: the connection is still open: {e}"),
            }
        }
        assert!(
            self.buf.is_empty(),
            "{what}: unexpected bytes before the close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Reads one request (server side); `None` when the connection ends or breaks first.
    pub async fn request(&mut self) -> Option<Req> {
        let head = self.head(STEP_TIMEOUT).await.ok()??;
        let (first, fields) = split_head(&head);
        let mut parts = first.split(' ');
        let method = parts.next()?.to_owned();
        let path = parts.next()?.to_owned();
        let len = field(&fields, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (body, body_missing) = match self.take(len, BODY_WAIT).await {
            Ok(b) => (b, false),
            Err(_) => (std::mem::take(&mut self.buf), true),
        };
        Some(Req {
            method,
            path,
            headers: fields.clone(),
            body,
            body_missing,
        })
    }
}

impl RawConn<TcpStream> {
    /// A client connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let s = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Self::new(s)
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        tokio::time::timeout(STEP_TIMEOUT, self.io.write_all(bytes.as_ref()))
            .await
            .unwrap()
            .unwrap();
    }

    /// Sends `bytes` and reads one response.
    pub async fn exchange(&mut self, bytes: impl AsRef<[u8]>) -> Resp {
        self.send(bytes).await;
        self.response(false).await
    }
}

/// `GET <path>` with a Host.
pub fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

// ---------------------------------------------------------------------------------------
// Raw backends and proxies.

/// An HTTP server on a 127.0.0.1 socket that speaks raw bytes, for backend behaviour the
/// echo backend never shows. It lives until the test's runtime ends.
pub struct RawBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl RawBackend {
    /// Serves each accepted connection with `serve(connection, index of the connection)`.
    pub async fn start<F, Fut>(serve: F) -> RawBackend
    where
        F: Fn(RawConn<TcpStream>, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(RawConn::new(s), n));
            }
        });
        RawBackend { addr, accepted }
    }

    /// A backend that answers every request of every connection with `answer`.
    pub async fn answering(answer: &'static [u8]) -> RawBackend {
        RawBackend::start(move |mut conn, _| async move {
            while conn.request().await.is_some() {
                if !reply(&mut conn, answer).await {
                    return;
                }
            }
        })
        .await
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A proxy with one upstream over the raw backends; `extra` is added to the config.
pub fn proxy_for_raw(backends: &[&RawBackend], extra: &str) -> Proxy {
    Proxy::start_config(&raw_config(backends, extra))
}

/// The config of [`proxy_for_raw`], for a proxy started some other way ([`ProxyCmd`]).
///
/// [`ProxyCmd`]: crate::ProxyCmd
pub fn raw_config(backends: &[&RawBackend], extra: &str) -> String {
    let entries: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ addr = \"{}\", id = \"raw{i}\" }}", b.addr))
        .collect();
    format!(
        "{TWO_THREADS}\n{extra}\n{}\n{}",
        listener(free_port()),
        upstream("app", None, &entries)
    )
}

/// An echo backend `b1`, a proxy in front of it, and a client connection to the proxy.
pub async fn echo_setup() -> (Backend, Proxy, RawConn<TcpStream>) {
    let b = Backend::start("b1");
    let proxy = proxy_for(&b);
    let c = RawConn::connect(proxy.addr()).await;
    (b, proxy, c)
}

/// A proxy with one upstream over the echo backend `b`.
pub fn proxy_for(b: &Backend) -> Proxy {
    Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}",
        listener(free_port()),
        upstream("app", None, &entries(&[b]))
    ))
}

/// Writes `bytes` to a raw backend's connection; a failed write ends the connection anyway.
pub async fn reply(conn: &mut RawConn<TcpStream>, bytes: impl AsRef<[u8]>) -> bool {
    conn.io.write_all(bytes.as_ref()).await.is_ok()
}

/// A backend each connection of which answers its first request ([`echo_answer`]) and
/// closes at the second, whose path it hands over: a kept-alive connection that the
/// backend's idle timeout closed as the proxy reused it.
pub async fn closing_at_second_request(
) -> (RawBackend, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let raw = RawBackend::start(move |mut conn: RawConn<TcpStream>, _| {
        let closed_tx = closed_tx.clone();
        async move {
            if let Some(req) = conn.request().await {
                if !reply(&mut conn, echo_answer(&req)).await {
                    return;
                }
            }
            if let Some(req) = conn.request().await {
                let _ = closed_tx.send(req.path);
            }
        }
    })
    .await;
    (raw, closed_rx)
}

/// The answer of a backend that echoes: `200` with the body `req` carried, or
/// `400 body missing` when the declared body never came.
pub fn echo_answer(req: &Req) -> String {
    if req.body_missing {
        "HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nbody missing".to_owned()
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            req.body.len(),
            String::from_utf8_lossy(&req.body)
        )
    }
}

/// A keep-alive backend that holds each request until the test lets it go, for requests
/// that must stay in flight: [`Self::wait_arrived`] waits until it has read `n` requests,
/// [`Self::release`] lets `n` of them (held or still to come) be answered `200 <name>`.
pub struct HoldingBackend {
    pub addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    /// The paths of the requests read so far, in the order they arrived.
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl HoldingBackend {
    pub async fn start(name: &'static str) -> HoldingBackend {
        let arrived = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, permits, seen) = (arrived.clone(), gate.clone(), paths.clone());
        let raw = RawBackend::start(move |mut conn, _| {
            let (count, permits, seen) = (count.clone(), permits.clone(), seen.clone());
            async move {
                while let Some(req) = conn.request().await {
                    seen.lock().unwrap().push(req.path);
                    count.fetch_add(1, Ordering::SeqCst);
                    let Ok(permit) = permits.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if !reply(&mut conn, answer).await {
                        return;
                    }
                }
            }
        })
        .await;
        HoldingBackend {
            addr: raw.addr,
            arrived,
            paths,
            gate,
        }
    }

    /// The paths of the requests read so far, in the order they arrived.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Requests read so far (held or answered).
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Waits (up to [`STEP_TIMEOUT`]) until `n` requests have arrived.
    pub async fn wait_arrived(&self, n: usize) {
        crate::wait_until(
            STEP_TIMEOUT,
            &format!("{n} requests reach the backend on {}", self.addr),
            || async { self.arrived() >= n },
        )
        .await;
    }

    /// Lets `n` more requests be answered.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

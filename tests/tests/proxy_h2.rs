//! HTTP/2 from clients, end to end: requests over TLS with ALPN h2, which go through
//! pingora's proxy loop rather than our HTTP/1 path, checked where they used to behave worse
//! than HTTP/1.1 ones — real `echo-backend` and `proxy` processes on 127.0.0.1, and raw h2
//! clients (the `h2` crate) for frames a browser-like client would not send.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use tests::fixtures::{listener, tls_keys, upstream, TWO_THREADS};
use tests::h2client::{
    connect as h2_connect, get as h2_get, get_full, read_full, read_response, tls_connect,
};
use tests::raw::{field, split_head, RawBackend, RawConn};
use tests::{Certs, Proxy, ProxyCmd, STEP_TIMEOUT};

/// A TLS proxy in front of `raw` and an h2 connection to it: the proxy, the folder of its
/// certificates, its port and the connection.
async fn h2_to_raw(
    raw: &tests::raw::RawBackend,
) -> (
    Proxy,
    tempfile::TempDir,
    u16,
    h2::client::SendRequest<Bytes>,
) {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let (proxy, port) = tls_proxy(
        &certs,
        &format!("{{ addr = \"{}\", id = \"raw\" }}", raw.addr),
        "",
    );
    let h2 = h2_connect(&certs.ca_pem(), port).await;
    (proxy, dir, port, h2)
}

/// Sends `req` on `h2` with `data` as DATA frames, the last one empty and ending the stream
/// (as clients that stream a body of unknown length end it), and reads the response.
async fn send_streamed(
    h2: &h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
    data: &[&'static [u8]],
) -> (http::StatusCode, String) {
    let mut h2 = tokio::time::timeout(STEP_TIMEOUT, h2.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (resp, mut stream) = h2.send_request(req, false).unwrap();
    for d in data {
        stream.send_data(Bytes::from_static(d), false).unwrap();
    }
    stream.send_data(Bytes::new(), true).unwrap();
    read_response(resp).await.unwrap()
}

/// A TLS listener on a fresh port with the certificates of `certs`, `extra` before it (other
/// tables) and one upstream over `backend` (a `{ addr, id }` entry).
fn tls_proxy(certs: &Certs, backend: &str, extra: &str) -> (Proxy, u16) {
    let port = tests::free_port();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}{extra}\n{}{}\n\n{}",
        listener(port),
        tls_keys(&certs.cert, &certs.key),
        upstream("app", None, &[backend.to_owned()]),
    ));
    (proxy, port)
}

/// A backend that answers every request `200 ok` and reports its fields on the receiver.
async fn fields_backend() -> (
    RawBackend,
    tokio::sync::mpsc::UnboundedReceiver<Vec<(String, String)>>,
) {
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let raw = RawBackend::start(move |mut conn: RawConn<TcpStream>, _| {
        let seen_tx = seen_tx.clone();
        async move {
            while let Some(req) = conn.request().await {
                let _ = seen_tx.send(req.headers);
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if !tests::raw::reply(&mut conn, answer).await {
                    return;
                }
            }
        }
    })
    .await;
    (raw, seen)
}

/// Sends the body-less `req` on `h2` to a [`fields_backend`], checks its `200 ok`, and
/// returns the fields the backend got.
async fn fields_sent(
    h2: &h2::client::SendRequest<Bytes>,
    req: http::request::Builder,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<(String, String)>>,
) -> Vec<(String, String)> {
    let mut ready = tokio::time::timeout(STEP_TIMEOUT, h2.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (resp, _) = ready.send_request(req.body(()).unwrap(), true).unwrap();
    assert_eq!(
        read_response(resp).await,
        Ok((http::StatusCode::OK, "ok".to_owned()))
    );
    tokio::time::timeout(STEP_TIMEOUT, seen.recv())
        .await
        .unwrap()
        .unwrap()
}

/// Reads a chunked body off `conn` up to its last chunk; the bytes of the chunks, or None
/// when it did not end in time. Trailers are not expected.
async fn chunked_body(conn: &mut RawConn<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size = conn.line(STEP_TIMEOUT).await.ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return conn
                .line(STEP_TIMEOUT)
                .await
                .ok()?
                .is_empty()
                .then_some(body);
        }
        body.extend(conn.take(size, STEP_TIMEOUT).await.ok()?);
        conn.line(STEP_TIMEOUT).await.ok()?;
    }
}

/// An h2 request body that ends with an empty DATA frame (how clients streaming a body of
/// unknown length end it) reaches an HTTP/1 backend as a chunked body with one last chunk.
/// pingora wrote the empty frame as a chunk of size 0 — a last chunk — and then the last
/// chunk again: the backend read that second `0\r\n\r\n` as the start of the next request
/// on the kept-alive connection, so a later request (any client's) got an error.
#[tokio::test]
async fn a_body_ended_by_an_empty_data_frame_gets_one_last_chunk_upstream() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let raw = RawBackend::start(move |mut conn: RawConn<TcpStream>, _| {
        let log = log.clone();
        async move {
            while let Ok(Some(head)) = conn.head(STEP_TIMEOUT).await {
                let (line, fields) = split_head(&head);
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                if !path.starts_with('/') {
                    // Not a request: the bytes the proxy sent after the last one's end.
                    log.lock().unwrap().push(format!("not a request: {head:?}"));
                    continue;
                }
                let body = if field(&fields, "transfer-encoding") == Some("chunked") {
                    chunked_body(&mut conn).await
                } else {
                    let n = field(&fields, "content-length").map_or(0, |v| v.parse().unwrap());
                    conn.take(n, STEP_TIMEOUT).await.ok()
                };
                let Some(body) = body else { return };
                let body = String::from_utf8_lossy(&body).into_owned();
                log.lock()
                    .unwrap()
                    .push(format!("{method} {path} {body:?}"));
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if !tests::raw::reply(&mut conn, answer).await {
                    return;
                }
            }
        }
    })
    .await;
    let (_proxy, _dir, port, h2) = h2_to_raw(&raw).await;

    let url = |path: &str| format!("https://localhost:{port}{path}");
    for (path, data) in [("/streamed", &[&b"hello"[..]][..]), ("/empty", &[])] {
        let req = http::Request::post(url(path)).body(()).unwrap();
        let (status, body) = send_streamed(&h2, req, data).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body, String::from_utf8_lossy(&data.concat()), "{path}");
    }
    // Sent after the others on the same kept-alive backend connection.
    let (status, _) = h2_get(&h2, &url("/next")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            r#"POST /streamed "hello""#,
            r#"POST /empty """#,
            r#"GET /next """#
        ],
        "what the backend read, in order"
    );
}

/// An echo backend and a TLS proxy in front of it, with `extra` (other tables).
fn echo_tls_proxy(certs: &Certs, extra: &str) -> (tests::Backend, Proxy, u16) {
    let b = tests::Backend::start("b1");
    let entry = tests::fixtures::backend_entry(&b, "");
    let (proxy, port) = tls_proxy(certs, &entry, extra);
    (b, proxy, port)
}

/// Bound for a close the proxy should make after a 1 s or 2 s timeout (generous for a
/// loaded machine).
const CLOSE_BOUND: Duration = Duration::from_secs(8);

/// An h2 connection is bounded as an HTTP/1 one is: one that says nothing after the TLS
/// handshake is closed after `header_read_timeout` (it was kept for good: a slowloris hole
/// on every TLS listener), and one that idles after its requests after
/// `downstream_keepalive`; a request that takes longer than both is not cut.
#[tokio::test]
async fn h2_connections_that_say_nothing_or_idle_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let (_b, _proxy, port) = echo_tls_proxy(
        &certs,
        "[limits]\nheader_read_timeout = \"1s\"\n[timeouts]\ndownstream_keepalive = \"2s\"\n",
    );
    let ca = certs.ca_pem();

    // Silent after the TLS handshake: no h2 preface, no request.
    let mut silent = tls_connect(&ca, port, &[b"h2"]).await;
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(CLOSE_BOUND, async {
        // The proxy's own SETTINGS may come first.
        while matches!(silent.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "a silent h2 connection was still open after {:?}",
        started.elapsed()
    );

    // A request longer than both timeouts is served; then the idle connection is closed.
    let tls = tls_connect(&ca, port, &[b"h2"]).await;
    let (h2, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let (status, body) = h2_get(&h2, &format!("https://localhost:{port}/delay/3000"))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "b1"));
    let idle = Instant::now();
    let ended = tokio::time::timeout(CLOSE_BOUND, driver).await;
    assert!(
        ended.is_ok(),
        "an idle h2 connection was still open after {:?}",
        idle.elapsed()
    );
}

/// `max_request_header_bytes` works on h2 as on HTTP/1: a head over it gets our `431` with
/// the reason, and a limit above the h2 library's default bound (64 KiB) lets through a
/// head below it (the library refused those with a bare `431`).
#[tokio::test]
async fn h2_heads_are_held_to_max_request_header_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let (_b, _proxy, port) =
        echo_tls_proxy(&certs, "[limits]\nmax_request_header_bytes = 131072\n");
    let client = tests::tls_client(&certs.ca_pem(), tests::Alpn::H2);
    let url = format!("https://localhost:{port}/id");

    let r = tests::send(client.get(&url).header("x-big", "a".repeat(80_000))).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!((r.status.as_u16(), r.backend()), (200, Some("b1")), "{r:?}");

    let r = tests::send(client.get(&url).header("x-big", "a".repeat(140_000))).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.body.contains("request header fields too large"), "{r:?}");
    assert_eq!(r.backend(), None);

    // The HTTP/1 paths' bound on the number of fields holds for h2 too.
    let many = |n: usize| {
        (0..n).fold(client.get(&url), |req, i| {
            req.header(format!("x-f{i}"), "v")
        })
    };
    // (The echo backend, hyper, takes up to 100.)
    let r = tests::send(many(80)).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, Some("b1")), "{r:?}");
    let r = tests::send(many(300)).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert!(r.body.contains("too many header fields"), "{r:?}");
    assert_eq!(r.backend(), None);
}

/// An h2 request's `content_length` and `transfer_encoding` fields (underscores) never
/// reach an HTTP/1 backend, where a server that reads `_` as `-` would frame the request
/// by them (as on the HTTP/1 paths, `proxy_request_checks.rs`).
#[tokio::test]
async fn framing_fields_spelled_with_underscores_are_dropped() {
    let (raw, mut seen) = fields_backend().await;
    let (_proxy, _dir, port, h2) = h2_to_raw(&raw).await;
    let req = http::Request::get(format!("https://localhost:{port}/p"))
        .header("content_length", "40")
        .header("transfer_encoding", "chunked");
    let headers = fields_sent(&h2, req, &mut seen).await;
    assert!(headers.iter().all(|(n, _)| !n.contains('_')), "{headers:?}");
}

/// An h2 client's cookies sent as one field each (RFC 9113 §8.2.3, as browsers compress
/// them) reach an HTTP/1 backend as one `Cookie` field, joined with `; `: a server that reads
/// one `Cookie` line would otherwise lose all but one of them.
#[tokio::test]
async fn split_cookies_reach_an_http1_backend_as_one_field() {
    let (raw, mut seen) = fields_backend().await;
    let (_proxy, _dir, port, h2) = h2_to_raw(&raw).await;
    for (cookies, want) in [
        (&["a=1", "b=2", "c=3; d=4"][..], "a=1; b=2; c=3; d=4"),
        (&["only=1"][..], "only=1"),
    ] {
        let mut req = http::Request::get(format!("https://localhost:{port}/c"));
        for c in cookies {
            req = req.header(http::header::COOKIE, *c);
        }
        let headers = fields_sent(&h2, req, &mut seen).await;
        let sent: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(sent, [want], "{headers:?}");
    }
}

/// What the README's HTTP/2 section says of the requests pingora refuses while accepting the
/// stream, before any hook of the proxy runs: a `Host` that differs from `:authority` gets
/// a bare `400` (no reason), has no access-log line, and the connection goes on serving.
/// Should a pingora upgrade hand such requests to the proxy's hooks, this fails: they should
/// then get a reason and a log line, and the README be updated.
#[tokio::test]
async fn a_host_differing_from_authority_gets_pingoras_bare_400_unlogged_and_connect_a_501() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let log = dir.path().join("access.log");
    let (_b, _proxy, port) = echo_tls_proxy(
        &certs,
        &format!(
            "[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n",
            log.display()
        ),
    );
    let h2 = h2_connect(&certs.ca_pem(), port).await;

    let mut ready = tokio::time::timeout(STEP_TIMEOUT, h2.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let req = http::Request::get(format!("https://localhost:{port}/bad-host"))
        .header("host", "other.example")
        .body(())
        .unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    let r = read_full(resp).await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (400, ""));

    // The same connection serves the next request, which is logged.
    let (status, body) = h2_get(&h2, &format!("https://localhost:{port}/after"))
        .await
        .unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "b1"));
    let text = tests::wait_for(STEP_TIMEOUT, "the access-log line of /after", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("\"/after\"").then_some(text)
    })
    .await;
    assert!(!text.contains("/bad-host"), "{text}");

    // CONNECT is seen before pingora's bare 405: it is answered as over HTTP/1 (501 with
    // the reason) and logged.
    let mut ready = tokio::time::timeout(STEP_TIMEOUT, h2.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("example.com:443")
        .body(())
        .unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    let r = read_full(resp).await.unwrap();
    assert_eq!(r.status.as_u16(), 501, "{}", r.body);
    assert!(r.body.contains("CONNECT is not supported"), "{}", r.body);
    tests::wait_for(
        STEP_TIMEOUT,
        "the access-log line of the CONNECT",
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|l| l.contains("\"CONNECT\"") && l.contains("\"status\":501"))
                .then_some(())
        },
    )
    .await;
}

/// pingora's HTTP/1 client reads the backend's answer to every h2 request; with trace
/// logging on it used to panic on a head holding obs-text (see `proxy_pingora_path.rs`,
/// section 8). The h2 client gets the answer, its Latin-1 byte intact.
#[tokio::test]
async fn an_h2_client_gets_an_obs_text_answer_with_trace_logging_on() {
    let raw =
        RawBackend::answering(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
            .await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let port = tests::free_port();
    let proxy = ProxyCmd::config(&format!(
        "{TWO_THREADS}\n{}{}\n\n{}",
        listener(port),
        tls_keys(&certs.cert, &certs.key),
        upstream(
            "app",
            None,
            &[format!("{{ addr = \"{}\", id = \"raw\" }}", raw.addr)]
        ),
    ))
    .env("RUST_LOG", "trace")
    .start();
    let h2 = h2_connect(&certs.ca_pem(), port).await;
    let r = get_full(&h2, &format!("https://localhost:{port}/latin1"))
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    assert_eq!(
        r.headers.get("x-name").map(|v| v.as_bytes()),
        Some(&b"caf\xe9"[..])
    );
    assert!(
        !proxy.logs().contains("panicked"),
        "the proxy panicked:\n{}",
        proxy.logs()
    );
}

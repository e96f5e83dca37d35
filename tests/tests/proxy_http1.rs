//! The proxy's own HTTP/1.1 path end to end: pipelining, hand-offs to pingora on one
//! connection, streamed bodies, backend keep-alive and stale pooled connections, response
//! framing (Content-Length, chunked with trailers, until close, HEAD, interim 1xx) and a
//! 101 nobody asked for. Clients are raw TCP streams so every byte on the wire is checked;
//! backends are real `echo-backend` processes or, for specific misbehaviour, raw HTTP servers
//! on a 127.0.0.1 socket inside the test.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use std::net::SocketAddr;

use tests::fixtures::{entries, listener, upstream, TWO_THREADS};
use tests::raw::{
    echo_answer, echo_setup, get_req, proxy_for, proxy_for_raw, reply, HoldingBackend, RawBackend,
    RawConn,
};
use tests::{free_port, get, Backend, Proxy, STEP_TIMEOUT};

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_b, _proxy, mut c) = echo_setup().await;

    // Three requests in one write: each one's answer tells it apart.
    let mut batch = get_req("/status/203");
    batch.push_str("GET /headers HTTP/1.1\r\nHost: test\r\nX-Marker: second\r\n\r\n");
    batch.push_str(&get_req("/id"));
    c.send(batch).await;

    let r = c.response(false).await;
    assert_eq!(r.status, 203, "{r:?}");
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{r:?}");
    let h: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(h["x-marker"], "second", "{h}");
    let r = c.response(false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "b1"), "{r:?}");

    // The connection still serves what comes next.
    let r = c.exchange(get_req("/status/202")).await;
    assert_eq!(r.status, 202, "{r:?}");
}

/// Requests a client pipelines while the one before waits for its backend are kept, and
/// answered in order. The proxy reads the client during that wait (to notice a client that
/// leaves), so what it reads then must not be lost or reordered.
#[tokio::test]
async fn requests_pipelined_while_one_waits_are_answered_in_order() {
    let a = HoldingBackend::start("a").await;
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n[upstreams.app]\nbackends = [{{ addr = \"{}\" }}]\n",
        listener(free_port()),
        a.addr
    ));
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(get_req("/1")).await;
    a.wait_arrived(1).await;
    // Sent while the first is held on the backend, in two writes.
    c.send(get_req("/2")).await;
    c.send(get_req("/3")).await;
    // Long enough for the proxy to read them during the wait on a loaded machine; the
    // answers below are checked either way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.release(4);
    for _ in 0..3 {
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "a"), "{r:?}");
    }
    assert_eq!(a.paths(), ["/1", "/2", "/3"]);
    let r = c.exchange(get_req("/4")).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn one_connection_carries_plain_chunked_and_http10_requests() {
    let (_b, _proxy, mut c) = echo_setup().await;

    // A chunked body goes to pingora.
    let r = c
        .exchange(
            "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"), "{r:?}");
    assert!(!r.closes(), "{r:?}");

    // A plain GET after it comes back to the h1 path, on the same connection.
    let r = c.exchange(get_req("/id")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "b1"), "{r:?}");

    // HTTP/1.0 with keep-alive (pingora), then HTTP/1.1 again.
    let r = c
        .exchange("GET /id HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "b1"), "{r:?}");
    assert!(
        !r.closes(),
        "an HTTP/1.0 keep-alive request keeps the connection: {r:?}"
    );
    let r = c.exchange(get_req("/status/202")).await;
    assert_eq!(r.status, 202, "{r:?}");
}

#[tokio::test]
async fn pipelined_request_after_a_handed_off_one_is_answered() {
    let (_b, _proxy, mut c) = echo_setup().await;

    // In one write: a GET (h1 path), a chunked POST (handed to pingora with the rest of the
    // batch already read), and a GET that pingora finds read past the POST's body.
    let mut batch = get_req("/status/203");
    batch.push_str(
        "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n",
    );
    batch.push_str(&get_req("/id"));
    c.send(batch).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 203, "{r:?}");
    let r = c.response(false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "abc"), "{r:?}");
    let r = c.response(false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "b1"), "{r:?}");
}

/// POSTs `len` bytes with a Content-Length to `/echo` through the proxy at `addr`, writing
/// and reading at once (the echo answers while the body is still coming), and asserts the
/// body comes back byte-identical.
async fn echo_through(addr: SocketAddr, len: u32) {
    // Not a repeating short pattern, so a lost or repeated block shows.
    let body: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = tcp.split();
    let mut c = RawConn::new(rd);
    // Bounded by progress, not by total time (like the reads): a stall of a whole step is
    // the deadlock this guards against; a slow, busy machine only takes longer.
    let write = async {
        wr.write_all(head.as_bytes()).await.unwrap();
        for (i, chunk) in body.chunks(64 * 1024).enumerate() {
            tokio::time::timeout(STEP_TIMEOUT, wr.write_all(chunk))
                .await
                .unwrap_or_else(|_| panic!("writing the body stalled at chunk {i}"))
                .unwrap();
        }
    };
    let (r, ()) = tokio::join!(c.response(false), write);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "the echoed body differs");
}

#[tokio::test]
async fn one_mib_body_streams_through_byte_identical() {
    let b = Backend::start("b1");
    let proxy = proxy_for(&b);
    echo_through(proxy.addr(), 1024 * 1024).await;
}

#[tokio::test]
async fn large_body_to_a_backend_that_answers_while_reading_does_not_deadlock() {
    // The echo backend answers as it reads. Once more is in flight than the socket buffers
    // between proxy and backend hold, a proxy that reads the answer only after sending the
    // whole body waits on a backend that waits on it.
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n[limits]\nmax_request_body_bytes = {}\n{}\n{}",
        64 * 1024 * 1024,
        listener(free_port()),
        upstream("app", None, &entries(&[&b]))
    ));
    echo_through(proxy.addr(), 32 * 1024 * 1024).await;
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let (b, _proxy, mut c) = echo_setup().await;
    for i in 0..50 {
        let r = c.exchange(get_req("/id")).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "b1"),
            "request {i}: {r:?}"
        );
    }
    // Asked directly: this request is one more connection.
    let stats = get(&b.url("/stats")).await.json();
    assert!(stats["requests"].as_u64().unwrap() >= 50, "{stats}");
    assert!(
        stats["connections"].as_u64().unwrap() <= 3,
        "50 sequential requests should share a pooled connection: {stats}"
    );
}

/// Bytes a backend sends after the end of an answer (here a whole second answer, written
/// once the first one has reached the client) are not read as the answer to the next
/// request on that pooled connection, which is another client's: the connection is
/// dropped, and every later answer still matches its request.
#[tokio::test]
async fn bytes_after_an_answer_are_not_served_to_the_next_client() {
    let first_seen = Arc::new(tokio::sync::Notify::new());
    let (extra_tx, mut extra_written) = mpsc::unbounded_channel();
    let seen = first_seen.clone();
    let raw = RawBackend::start(move |mut conn, n| {
        let (seen, extra_tx) = (seen.clone(), extra_tx.clone());
        async move {
            let mut first = n == 0;
            while let Some(req) = conn.request().await {
                if std::mem::take(&mut first) {
                    if !reply(&mut conn, "HTTP/1.1 204 No Content\r\n\r\n").await {
                        return;
                    }
                    seen.notified().await;
                    let stray = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nnot for you!";
                    reply(&mut conn, stray).await;
                    let _ = extra_tx.send(());
                    continue;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                    req.path.len(),
                    req.path
                );
                if !reply(&mut conn, answer).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut a = RawConn::connect(proxy.addr()).await;
    let r = a.exchange(get_req("/one")).await;
    assert_eq!(r.status, 204, "{r:?}");
    first_seen.notify_one();
    tokio::time::timeout(STEP_TIMEOUT, extra_written.recv())
        .await
        .unwrap();
    for (i, path) in ["/two", "/three"].into_iter().enumerate() {
        let mut b = RawConn::connect(proxy.addr()).await;
        let r = b.exchange(get_req(path)).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, path),
            "client {i} got another request's answer: {r:?}"
        );
    }
    // (Were the connection with the stray bytes used again, the first client above would
    // have had them for its answer. How many connections the later requests took is not
    // checked: a client may have its answer before the proxy has pooled the connection.)
}

#[tokio::test]
async fn stale_pooled_connection_is_replaced_and_the_request_resent() {
    // Answers one request per connection and closes, without saying so: every pooled
    // connection is stale by the time the next request comes.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let raw = RawBackend::start(move |mut conn, _| {
        let seen_tx = seen_tx.clone();
        async move {
            if let Some(req) = conn.request().await {
                let _ = seen_tx.send(req);
                reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    for i in 0..20 {
        let r = c.exchange(get_req(&format!("/n{i}"))).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "request {i}: {r:?}"
        );
    }
    // A POST whose whole body comes with its head may be resent as well.
    let r = c
        .exchange("POST /form HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");

    let mut paths = Vec::new();
    while let Ok(req) = seen.try_recv() {
        if req.path == "/form" {
            assert_eq!(req.method, "POST");
            assert_eq!(req.body, b"hello", "{req:?}");
        }
        paths.push(req.path);
    }
    let want: Vec<String> = (0..20)
        .map(|i| format!("/n{i}"))
        .chain(["/form".to_owned()])
        .collect();
    assert_eq!(paths, want, "each request reached the backend once");
    assert_eq!(raw.accepted(), 21);
}

/// A body without a length or chunked framing runs until the backend closes. The client
/// gets it chunked: the backend's close becomes the last chunk, so the client connection
/// carries the next request, and a backend that fails mid-body leaves the body visibly cut
/// (no last chunk) instead of ending it as if it were complete.
#[tokio::test]
async fn a_body_until_close_is_chunked_for_the_client_and_a_cut_shows() {
    let body: String = (0..20_000).map(|i| format!("{i},")).collect();
    let sent = body.clone();
    let raw = RawBackend::start(move |mut conn, _| {
        let body = sent.clone();
        async move {
            let Some(req) = conn.request().await else {
                return;
            };
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
            if req.path == "/stall" {
                // Part of the body, then nothing: past upstream_read the backend has failed.
                reply(&mut conn, format!("{head}partial-")).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            } else {
                reply(&mut conn, format!("{head}{body}")).await;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"1s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    for _ in 0..2 {
        c.send(get_req("/")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{}", r.head);
        assert!(r.header("content-length").is_none(), "{}", r.head);
        assert!(!r.closes(), "the client connection stays open: {}", r.head);
        assert!(r.text() == body, "{} of {} bytes", r.body.len(), body.len());
    }
    assert_eq!(raw.accepted(), 2, "one backend connection per answer");

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(get_req("/stall")).await;
    // Everything up to the proxy's close (after upstream_read, 1 s).
    while c.fill(STEP_TIMEOUT).await.unwrap() > 0 {}
    let got = String::from_utf8_lossy(&c.buf);
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got:?}");
    assert!(
        got.ends_with("\r\n\r\n8\r\npartial-\r\n"),
        "relayed, with no last chunk: {got:?}"
    );
}

#[tokio::test]
async fn interim_103_is_forwarded_before_the_final_answer() {
    let raw = RawBackend::answering(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    for _ in 0..2 {
        c.send(get_req("/")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 103, "{r:?}");
        assert_eq!(r.header("link"), Some("</a>; rel=preload"), "{r:?}");
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    }
}

#[tokio::test]
async fn chunked_response_with_trailer_keeps_both_connections() {
    let raw = RawBackend::start(|mut conn, _| async move {
        while let Some(req) = conn.request().await {
            let path = req.path;
            // The path split over two chunks, with an extension, then a trailer.
            let (a, b) = path.split_at(path.len() / 2);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
                 {:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-sum: {}\r\n\r\n",
                a.len(),
                b.len(),
                path.len()
            );
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    for path in ["/first/request", "/second"] {
        let r = c.exchange(get_req(path)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), path, "{r:?}");
        assert_eq!(r.trailers, [format!("x-sum: {}", path.len())], "{r:?}");
        assert!(!r.closes(), "{r:?}");
    }
    assert_eq!(
        raw.accepted(),
        1,
        "the backend connection is reused after a chunked body"
    );
}

#[tokio::test]
async fn unasked_101_gets_502() {
    let raw = RawBackend::start(|mut conn, _| async move {
        if conn.request().await.is_some() {
            let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\n\r\n";
            reply(&mut conn, answer).await;
            // Holds the connection open: only the proxy may end it.
            let _ = conn.fill(STEP_TIMEOUT * 2).await;
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{r:?}"
    );
    assert!(r.text().starts_with("502"), "{r:?}");
    assert!(r.closes(), "{r:?}");
    c.expect_eof("after a 502").await;
}

/// An answer whose framing the proxy cannot follow exactly gets a 502 that says why, and
/// neither connection is used again: a head over the 64 KiB limit (even one that came
/// whole in one read), an invalid Content-Length, and chunked bodies with a malformed size
/// or with bare LFs where a lenient client would end a line (in a chunk extension, ending a
/// trailer), which that client would frame apart from the proxy.
#[tokio::test]
async fn answers_with_broken_framing_get_502_with_the_reason() {
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases = [
        (
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "x".repeat(70_000)
            ),
            "the backend's response head is too large",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok".to_owned(),
            "the backend sent an invalid or conflicting Content-Length",
        ),
        (
            format!("{chunked}zz\r\nabc\r\n0\r\n\r\n"),
            "the backend sent a malformed chunked body",
        ),
        (
            format!("{chunked}3;x\nabc\r\n0\r\n\r\n"),
            "the backend sent a malformed chunked body",
        ),
        (
            format!("{chunked}3\r\nabc\r\n0\r\nx-sum: 3\n\r\n"),
            "the backend sent a malformed chunked body",
        ),
        // RFC 9110 §15: a client takes a status from 600 as a 5xx; the proxy says so.
        (
            "HTTP/1.1 600 Library Error\r\nContent-Length: 2\r\n\r\nok".to_owned(),
            "the backend sent an invalid response head",
        ),
    ];
    let answers: Vec<String> = cases.iter().map(|(a, _)| a.clone()).collect();
    let raw = RawBackend::start(move |mut conn, _| {
        let answers = answers.clone();
        async move {
            while let Some(req) = conn.request().await {
                let i: usize = req
                    .path
                    .trim_start_matches('/')
                    .parse()
                    .unwrap_or(usize::MAX);
                let answer = answers
                    .get(i)
                    .map_or("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", |a| a);
                if !reply(&mut conn, answer).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    for (i, (_, reason)) in cases.iter().enumerate() {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c.exchange(get_req(&format!("/{i}"))).await;
        let head: String = r.head.chars().take(300).collect();
        assert_eq!(r.status, 502, "case {i}: {head}");
        assert_eq!(r.text(), format!("502 Bad Gateway: {reason}\n"), "case {i}");
        assert!(r.closes(), "case {i}: {head}");
        c.expect_eof(&format!("case {i}")).await;
    }
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/ok")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    assert_eq!(
        raw.accepted(),
        cases.len() + 1,
        "a connection with a broken answer was used again"
    );
}

/// What the client gets of an answer head leaves it no room to frame the answer otherwise
/// than the proxy did: a status line without a reason phrase keeps the space before it, a
/// 204 loses the Content-Length it must not have, and an answer with
/// both fields is framed by Transfer-Encoding alone, its backend connection not reused (the
/// backend may have framed it by the length). A status below 100 gets a 502.
#[tokio::test]
async fn answer_heads_leave_the_client_one_framing() {
    let answers = [
        "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok",
    ];
    let raw = RawBackend::start(move |mut conn, _| async move {
        while let Some(req) = conn.request().await {
            let i: usize = req.path.trim_start_matches('/').parse().unwrap_or(0);
            if !reply(&mut conn, answers.get(i).copied().unwrap_or(answers[0])).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;

    let r = c.exchange(get_req("/0")).await;
    assert!(r.head.starts_with("HTTP/1.1 200 \r\n"), "{:?}", r.head);
    assert_eq!(r.text(), "ok");

    let r = c.exchange(get_req("/1")).await;
    assert_eq!(r.status, 204, "{r:?}");
    for field in ["content-length", "transfer-encoding"] {
        assert_eq!(r.header(field), None, "{r:?}");
    }
    assert_eq!(
        raw.accepted(),
        1,
        "a plain 204 keeps the backend connection"
    );

    let r = c.exchange(get_req("/2")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    assert!(!r.closes(), "{r:?}");
    let r = c.exchange(get_req("/0")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        raw.accepted(),
        2,
        "the connection that sent both Content-Length and Transfer-Encoding was reused"
    );

    let r = c.exchange(get_req("/3")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.text(),
        "502 Bad Gateway: the backend sent an invalid response head\n"
    );
}

/// An answer with more header fields than a request on the proxy's own path may have (it
/// hands those to pingora; an answer has no other path) is relayed whole, up to the 256
/// pingora takes: many cookies and security headers are an ordinary answer, not a 502.
#[tokio::test]
async fn an_answer_with_many_fields_is_relayed() {
    let cookies: String = (0..150)
        .map(|i| format!("Set-Cookie: c{i}=v{i}\r\n"))
        .collect();
    let answer = format!("HTTP/1.1 200 OK\r\n{cookies}Content-Length: 2\r\n\r\nok");
    let raw = RawBackend::start(move |mut conn, _| {
        let answer = answer.clone();
        async move {
            while conn.request().await.is_some() {
                if !reply(&mut conn, &answer).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    let cookies = r.headers.iter().filter(|(n, _)| n == "set-cookie").count();
    assert_eq!(cookies, 150, "{r:?}");
}

#[tokio::test]
async fn head_response_has_no_body_and_the_connection_goes_on() {
    let (_b, _proxy, mut c) = echo_setup().await;
    for _ in 0..2 {
        c.send("HEAD /id HTTP/1.1\r\nHost: test\r\n\r\n").await;
        let r = c.response(true).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-length"), Some("2"), "{r:?}");
        // Were a body relayed, it would be read as the start of the next answer.
        let r = c.exchange(get_req("/status/202")).await;
        assert_eq!((r.status, r.text().as_str()), (202, "b1"), "{r:?}");
    }
}

/// A streamed answer (server-sent events, a slow backend) reaches the client as it comes:
/// the backend sends the head and a first small chunk, then waits until the client has
/// them before it sends the rest. (The proxy's client stream buffers small writes; a relay
/// that flushed only at the end of the body held both here until the backend went on.)
#[tokio::test]
async fn a_streamed_body_reaches_the_client_before_it_ends() {
    for framing in ["chunked", "close"] {
        let go = Arc::new(tokio::sync::Notify::new());
        let backend_go = go.clone();
        let raw = RawBackend::start(move |mut conn, _| {
            let go = backend_go.clone();
            async move {
                if conn.head(STEP_TIMEOUT).await.ok().flatten().is_none() {
                    return;
                }
                let (head, first, rest) = if framing == "chunked" {
                    (
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                        "7\r\nevent 1\r\n",
                        "7\r\nevent 2\r\n0\r\n\r\n",
                    )
                } else {
                    ("HTTP/1.1 200 OK\r\n\r\n", "event 1", "event 2")
                };
                if !reply(&mut conn, format!("{head}{first}")).await {
                    return;
                }
                go.notified().await;
                reply(&mut conn, rest).await;
            }
        })
        .await;
        let proxy = proxy_for_raw(&[&raw], "");
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(get_req("/events")).await;
        let head = c.head(STEP_TIMEOUT).await;
        let head =
            head.unwrap_or_else(|e| panic!("{framing}: no head while the body streams: {e}"));
        assert!(
            head.is_some_and(|h| h.starts_with("HTTP/1.1 200")),
            "{framing}"
        );
        // A body until close comes chunked too, its close as the last chunk.
        let first = "7\r\nevent 1\r\n";
        let got = c.take(first.len(), STEP_TIMEOUT).await;
        assert_eq!(
            got.as_deref().map(String::from_utf8_lossy),
            Ok(first.into()),
            "{framing}: the first part of the body did not come before the rest"
        );
        go.notify_one();
        let rest = "7\r\nevent 2\r\n0\r\n\r\n";
        let got = c.take(rest.len(), STEP_TIMEOUT).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), rest, "{framing}");
    }
}

/// Takes the next request's head, tells `head_tx`, takes its 5-byte body and hangs up
/// without answering: what the proxy sees of a backend that fails after reading a request.
async fn take_request_and_hang_up(
    conn: &mut RawConn<TcpStream>,
    head_tx: &mpsc::UnboundedSender<()>,
) {
    if let Ok(Some(_)) = conn.head(STEP_TIMEOUT).await {
        let _ = head_tx.send(());
        let _ = conn.take(5, STEP_TIMEOUT).await;
    }
}

/// Answers one request with the body it carried, or `400 body missing` when the declared
/// body never came.
async fn answer_with_body(conn: &mut RawConn<TcpStream>) {
    if let Some(req) = conn.request().await {
        reply(conn, echo_answer(&req)).await;
    }
}

/// Sends `head` (declaring a 5-byte body) and then the body in a second write, and asserts
/// the body comes back whole: the proxy reads a small body completely before the request
/// goes upstream, so a request sent again (to another backend, or on a fresh connection)
/// always carries it. `head_seen` hears from the backend that hung up on the first try.
async fn send_split_body_and_check(
    c: &mut RawConn<TcpStream>,
    head: &str,
    head_seen: &mut mpsc::UnboundedReceiver<()>,
) {
    c.send(head).await;
    c.send("hello").await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"hello"[..]),
        "the request was not sent again whole: {r:?}"
    );
    assert!(
        head_seen.try_recv().is_ok(),
        "the first backend never saw the request"
    );
}

#[tokio::test]
async fn idempotent_retry_sends_the_whole_body_again() {
    // Whichever backend takes the first connection reads the whole request and closes
    // without answering; the other answers with the body it received.
    let (head_tx, mut head_seen) = mpsc::unbounded_channel::<()>();
    let first = Arc::new(AtomicUsize::new(0));
    let serve = Arc::new(move |mut conn: RawConn<TcpStream>| {
        let head_tx = head_tx.clone();
        let is_first = first.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if is_first {
                take_request_and_hang_up(&mut conn, &head_tx).await;
            } else {
                answer_with_body(&mut conn).await;
            }
        }
    });
    let s1 = serve.clone();
    let a = RawBackend::start(move |c, _| s1(c)).await;
    let b = RawBackend::start(move |c, _| serve(c)).await;
    let proxy = proxy_for_raw(&[&a, &b], "[timeouts]\nupstream_read = \"8s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    let head = "PUT /doc HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n";
    send_split_body_and_check(&mut c, head, &mut head_seen).await;
}

#[tokio::test]
async fn stale_connection_resend_sends_the_whole_body_again() {
    // The first connection answers one GET with keep-alive, then takes the next request
    // whole and closes without answering, as a backend closing an idle connection just as
    // a request arrives looks to the proxy. Later connections answer with the body they got.
    let (head_tx, mut head_seen) = mpsc::unbounded_channel::<()>();
    let raw = RawBackend::start(move |mut conn, n| {
        let head_tx = head_tx.clone();
        async move {
            if n > 0 {
                answer_with_body(&mut conn).await;
            } else if conn.request().await.is_some()
                && reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await
            {
                take_request_and_hang_up(&mut conn, &head_tx).await;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"8s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    // An idempotent request on a pooled connection that turns out closed is resent on a
    // new one, whole.
    let head = "PUT /doc HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n";
    send_split_body_and_check(&mut c, head, &mut head_seen).await;
}

#[tokio::test]
async fn a_post_the_backend_read_and_dropped_is_not_sent_twice() {
    // The first connection answers one GET with keep-alive, then reads the POST whole and
    // closes without answering: the backend may have acted on it, so the proxy must not
    // send it again (nginx does not either); the client gets a 502.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
    let raw = RawBackend::start(move |mut conn, _| {
        let seen_tx = seen_tx.clone();
        async move {
            while let Some(req) = conn.request().await {
                let _ = seen_tx.send(format!("{} {}", req.method, req.path));
                if req.method == "POST" {
                    return;
                }
                if !reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    let r = c
        .exchange("POST /pay HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(r.status, 502, "{r:?}");
    c.expect_eof("after a 502").await;
    // Every request the backend saw was reported before the proxy answered.
    let mut got = Vec::new();
    while let Ok(line) = seen.try_recv() {
        got.push(line);
    }
    assert_eq!(got, ["GET /", "POST /pay"], "the POST was sent twice");

    // With an Idempotency-Key the client says the backend de-duplicates: it goes again.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/")).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.send(
        "POST /pay HTTP/1.1\r\nHost: test\r\nIdempotency-Key: k1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 502, "{r:?}");
    let mut posts = 0;
    while let Ok(line) = seen.try_recv() {
        posts += usize::from(line == "POST /pay");
    }
    assert_eq!(
        posts, 2,
        "a POST with an Idempotency-Key is resent once on a new connection"
    );
}

#[tokio::test]
async fn the_pingora_path_can_be_chosen_and_serves_the_same_requests() {
    let b = Backend::start("b1");
    let toml = format!(
        "{TWO_THREADS}http1 = \"pingora\"\n\n{}\n{}",
        listener(free_port()),
        upstream("app", None, &entries(&[&b]))
    );
    let summary = Proxy::check(&toml).output();
    assert!(summary.contains("HTTP/1 path pingora"), "{summary}");

    let proxy = Proxy::start_config(&toml);
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/status/203")).await;
    assert_eq!((r.status, r.text().as_str()), (203, "b1"), "{r:?}");
    c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]), "{r:?}");
    let r = c.exchange(get_req("/status/202")).await;
    assert_eq!((r.status, r.text().as_str()), (202, "b1"), "{r:?}");
}

#[tokio::test]
async fn refused_upgrade_answers_are_relayed_whole_and_the_connection_goes_on() {
    // A backend that refuses WebSocket upgrades: first with a chunked body whose first part
    // ends in `0\r\n\r\n` inside the data (which must not be taken for the end) and whose
    // rest is sent only once the client has the first part; then with a Content-Length
    // body. It holds its connections open, so only the framing can tell where an answer ends.
    let go_on = Arc::new(tokio::sync::Notify::new());
    let backend_go_on = go_on.clone();
    let raw = RawBackend::start(move |mut conn, n| {
        let go_on = backend_go_on.clone();
        async move {
            if conn.request().await.is_none() {
                return;
            }
            if n == 0 {
                let head = "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n";
                reply(&mut conn, format!("{head}b\r\nno 0\r\n\r\n")).await;
                if tokio::time::timeout(STEP_TIMEOUT, go_on.notified())
                    .await
                    .is_ok()
                {
                    reply(&mut conn, " ws\r\n5\r\n here\r\n0\r\n\r\n").await;
                }
            } else {
                reply(
                    &mut conn,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\nlog in",
                )
                .await;
            }
            let _ = conn.fill(STEP_TIMEOUT * 2).await;
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let upgrade = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(upgrade).await;
    let head = c.head(STEP_TIMEOUT).await.unwrap().unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let first = c.take(11, STEP_TIMEOUT).await.unwrap();
    assert_eq!(first, b"b\r\nno 0\r\n\r\n");
    go_on.notify_one();
    let rest = c.take(20, STEP_TIMEOUT).await;
    assert_eq!(
        rest.as_deref(),
        Ok(&b" ws\r\n5\r\n here\r\n0\r\n\r\n"[..]),
        "the answer was cut at a `0\\r\\n\\r\\n` inside a chunk"
    );

    // The next request on the same connection starts right after that end: the answer to it
    // is read as a whole response.
    let r = c.exchange(upgrade).await;
    assert_eq!((r.status, r.text().as_str()), (401, "log in"), "{r:?}");
    assert!(!r.closes(), "{r:?}");
}

/// A backend that answers `GET /wait/<ms>` after that many milliseconds, on every request
/// of a kept-alive connection.
async fn slow_backend() -> RawBackend {
    RawBackend::start(|mut conn, _| async move {
        while let Some(req) = conn.request().await {
            let ms = req
                .path
                .strip_prefix("/wait/")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if !reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn each_wait_for_a_backend_is_bounded_from_its_own_start() {
    // The proxy keeps one timer per connection across requests and moves it lazily; a
    // wait that ends after an earlier wait's deadline must still get its whole bound.
    let raw = slow_backend().await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"2s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    // Answered at ~1.2 s (its bound ends at 2 s), then one answered at ~2.4 s: past the
    // first bound, within its own (3.2 s).
    for i in 0..2 {
        let r = c.exchange(get_req("/wait/1200")).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "request {i}: {r:?}"
        );
    }
    // And the bound still holds: a backend that takes 9 s is cut off with a 504.
    let started = std::time::Instant::now();
    let r = c.exchange(get_req("/wait/9000")).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "cut off before its bound: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_client_connection_closes_after_the_keep_alive_time_from_its_last_answer() {
    let raw = slow_backend().await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\ndownstream_keepalive = \"1s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    // Requests that keep the connection busy for longer than one keep-alive time: the
    // idle bound set while waiting for the first request must not close it later.
    for i in 0..3 {
        let r = c.exchange(get_req("/wait/600")).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "request {i}: {r:?}"
        );
    }
    let answered = std::time::Instant::now();
    c.expect_eof("an idle kept-alive connection").await;
    // Timers never fire early; a little slack for the timer wheel's millisecond ticks.
    assert!(
        answered.elapsed() >= Duration::from_millis(950),
        "closed {:?} after the last answer",
        answered.elapsed()
    );
}

#[tokio::test]
async fn stopping_proxy_closes_idle_kept_alive_connections_at_once() {
    let raw = slow_backend().await;
    // A grace period far longer than the test's waits: only the stop signal itself can
    // close the idle connection in time.
    let proxy = Proxy::start_config(&format!(
        "[server]\nthreads = 2\ngrace_period = \"60s\"\n{}\n{}",
        listener(free_port()),
        upstream(
            "app",
            None,
            &[format!("{{ addr = \"{}\", id = \"raw0\" }}", raw.addr)]
        )
    ));
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/wait/0")).await;
    assert_eq!(r.status, 200, "{r:?}");
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    c.expect_eof("an idle connection when the proxy stops")
        .await;
}

/// `[upstreams.NAME.timeouts]` bound that upstream's backends alone, on both HTTP/1 paths
/// and for its tunnels: an API answering within 200 ms beside an upstream that may take its
/// time (the global 60 s), as long-polling does.
#[tokio::test]
async fn an_upstream_s_own_timeouts_bind_its_backends_alone() {
    let quick = Backend::start("quick");
    let patient = Backend::start("patient");
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}[upstreams.quick.timeouts]\nupstream_read = \"200ms\"\n\
         tunnel_idle = \"1s\"\n\n{}\n\
         [[routes]]\npath_prefix = \"/quick/\"\nprefix_rewrite = \"/\"\nupstream = \"quick\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"patient\"\n",
        listener(free_port()),
        upstream("quick", None, &entries(&[&quick])),
        upstream("patient", None, &entries(&[&patient])),
    ));
    // Ours, then pingora's path (HTTP/1.0).
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!("GET /quick/delay/600 {version}\r\nHost: t\r\n\r\n"))
            .await;
        assert_eq!(r.status, 504, "{version}: {}", r.text());
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!("GET /delay/600 {version}\r\nHost: t\r\n\r\n"))
            .await;
        assert_eq!((r.status, r.text()), (200, "patient".into()), "{version}");
    }

    let url = |path: &str| format!("ws://{}{path}", proxy.addr());
    let opts = tests::ws::WsOptions::default();
    let (mut short, _) = tests::ws::connect_and_greet(&url("/quick/ws"), &opts).await;
    let (mut long, _) = tests::ws::connect_and_greet(&url("/ws"), &opts).await;
    tests::ws::ws_expect_closed(&mut short, Duration::from_secs(10)).await;
    tests::ws::ws_echo(&mut long, "still open").await;
}

/// A request refused by policy (no route, an address a route does not allow, a rate limit)
/// leaves the connection open for the next one, as nginx leaves it after its own 403, 404
/// and 429: every refused client reconnected, a TLS handshake each time for one that is
/// rate-limited. One whose body is left unread (413), or that asked to close, closes it.
#[tokio::test]
async fn a_request_refused_by_policy_keeps_the_connection_for_the_next() {
    let b = Backend::start("b1");
    let routes = "[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\
                  [[routes]]\npath_prefix = \"/admin/\"\nupstream = \"app\"\nallow = [\"10.0.0.0/8\"]\n";
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}[limits]\nmax_request_body_bytes = 10\n{}{}{routes}",
        listener(free_port()),
        upstream("app", None, &entries(&[&b])),
    ));
    let mut c = RawConn::connect(proxy.addr()).await;
    for (path, status) in [("/nowhere", 404), ("/admin/x", 403), ("/api/id", 200)] {
        let r = c.exchange(get_req(path)).await;
        assert_eq!(r.status, status, "{path}: {r:?}");
        assert!(!r.closes(), "{path}: {r:?}");
    }
    let r = c
        .exchange("GET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.closes(), "{r:?}");
    c.expect_eof("after a refusal the client asked to close on")
        .await;
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange("POST /api/echo HTTP/1.1\r\nHost: test\r\nContent-Length: 20\r\n\r\n")
        .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.closes(), "{r:?}");

    // A rate-limited client keeps its connection too: each refusal, then (once the rate
    // lets it) an answer, on the one connection.
    let limited = Proxy::start_config(&format!(
        "{TWO_THREADS}[limits]\nrequests_per_second_per_ip = 1\n{}{}{routes}",
        listener(free_port()),
        upstream("app", None, &entries(&[&b])),
    ));
    let mut c = RawConn::connect(limited.addr()).await;
    let mut refused = 0;
    for _ in 0..20 {
        let r = c.exchange(get_req("/api/id")).await;
        assert!(matches!(r.status, 200 | 429), "{r:?}");
        assert!(!r.closes(), "{r:?}");
        refused += usize::from(r.status == 429);
    }
    assert!(refused > 0, "20 requests at once, none refused at 1/s");
}

/// The proxy's own answers carry a Date, as the backends' answers do when they lack one and
/// as nginx's and HAProxy's own do (RFC 9110 §6.6.1), on both HTTP/1 paths: errors and
/// redirects alike.
#[tokio::test]
async fn the_proxys_own_answers_carry_a_date() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}{}{}[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n",
        listener(free_port()),
        upstream("app", None, &entries(&[&b])),
    ));
    for (req, status) in [
        // Switchyard's path: a refusal, a redirect, a malformed request.
        (get_req("/nowhere"), 404),
        (get_req("/api"), 308),
        ("GET /x HTTP/1.1\r\n\r\n".to_owned(), 400),
        // pingora's path (HTTP/1.0): a refusal and a redirect.
        (
            "GET /nowhere HTTP/1.0\r\nHost: test\r\n\r\n".to_owned(),
            404,
        ),
        ("GET /api HTTP/1.0\r\nHost: test\r\n\r\n".to_owned(), 308),
    ] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c.exchange(&req).await;
        assert_eq!(r.status, status, "{req:?}: {r:?}");
        let date = r
            .header("date")
            .unwrap_or_else(|| panic!("{req:?}: no Date: {r:?}"));
        assert!(
            date.ends_with(" GMT") && date.len() == 29,
            "{req:?}: {date:?}"
        );
    }
}

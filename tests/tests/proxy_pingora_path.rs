//! Requests our HTTP/1 path hands to pingora's proxy loop, end to end: upgrades that are
//! not tunnelled (h2c, upgrades with a body) and those that are, refused upgrades with long
//! or cut answers and the connection they leave for the next request, HTTP/1.0 clients (no
//! chunked body, no 1xx), `Expect: 100-continue`, absolute-form targets on the first and
//! later requests of a connection, error answers that name no backend, and the Host field
//! rules.
//! Clients are raw TCP streams, backends raw HTTP servers on a 127.0.0.1 socket.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use tests::fixtures::{entries, listener, upstream, TWO_THREADS};
use tests::raw::{echo_answer, field, proxy_for_raw, raw_config, reply, RawBackend, RawConn, Req};
use tests::{free_port, Backend, Proxy, ProxyCmd, STEP_TIMEOUT};

// ---------------------------------------------------------------------------------------
// Backends.

/// Answers every request of a connection with `200` and the body it received (or `400 body
/// missing` when the declared body never came), and reports each request on `seen`.
async fn echo_backend(seen: mpsc::UnboundedSender<Req>) -> RawBackend {
    RawBackend::start(move |mut conn, _| {
        let seen = seen.clone();
        async move {
            while let Some(req) = conn.request().await {
                let answer = echo_answer(&req);
                let _ = seen.send(req);
                if !reply(&mut conn, answer).await {
                    return;
                }
            }
        }
    })
    .await
}

/// Reads the next request a backend reported, bounded.
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Req>) -> Req {
    tokio::time::timeout(STEP_TIMEOUT, seen.recv())
        .await
        .expect("the backend saw no request")
        .expect("the backend is gone")
}

/// Reads the body of a request whose head fields are `headers`, de-chunked
/// (`conn.request()` reads Content-Length bodies only).
async fn read_body(conn: &mut RawConn<TcpStream>, headers: &[(String, String)]) -> Vec<u8> {
    if field(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line = conn.line(STEP_TIMEOUT).await.unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                while !conn.line(STEP_TIMEOUT).await.unwrap().is_empty() {}
                return body;
            }
            body.extend(conn.take(size, STEP_TIMEOUT).await.unwrap());
            conn.take(2, STEP_TIMEOUT).await.unwrap();
        }
    }
    let len = field(headers, "content-length").map_or(0, |v| v.parse().unwrap());
    conn.take(len, STEP_TIMEOUT).await.unwrap()
}

const WS_UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

// ---------------------------------------------------------------------------------------
// 1. Upgrades that are not tunnelled, and those that are.

#[tokio::test]
async fn h2c_upgrade_is_proxied_as_a_plain_http11_request() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let raw = echo_backend(tx).await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;

    // What `curl --http2 http://…` sends, first without a body, then with one (handed to
    // pingora with or without the body: both are upgrade requests).
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
               HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n";
    let r = c
        .exchange(format!("GET /plain HTTP/1.1\r\nHost: test\r\n{h2c}\r\n"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let req = next_seen(&mut seen).await;
    assert_eq!(req.path, "/plain");
    for name in ["upgrade", "http2-settings"] {
        assert!(
            field(&req.headers, name).is_none(),
            "{name} forwarded: {req:?}"
        );
    }
    assert!(
        field(&req.headers, "connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("upgrade")),
        "{req:?}"
    );
    assert!(!r.closes(), "a plain request keeps the connection: {r:?}");

    // The same connection goes on, and a body comes through whole.
    let r = c
        .exchange(format!(
            "POST /form HTTP/1.1\r\nHost: test\r\n{h2c}Content-Length: 5\r\n\r\nhello"
        ))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
    let req = next_seen(&mut seen).await;
    assert!(field(&req.headers, "upgrade").is_none(), "{req:?}");
}

#[tokio::test]
async fn upgrade_request_with_a_body_is_proxied_without_the_upgrade() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let raw = echo_backend(tx).await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"8s\"\n");

    // With a Content-Length body.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(format!(
            "POST /ws HTTP/1.1\r\nHost: test\r\n{WS_UPGRADE}Content-Length: 5\r\n\r\nhello"
        ))
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello"),
        "the body must reach the backend: {r:?}"
    );
    let req = next_seen(&mut seen).await;
    assert!(field(&req.headers, "upgrade").is_none(), "{req:?}");

    // With a chunked body (sent upstream with its length or chunked: the backend reads a
    // Content-Length only, so the proxy's framing shows in the answer).
    let (tx, mut seen) = mpsc::unbounded_channel::<Vec<u8>>();
    let raw = RawBackend::start(move |mut conn, _| {
        let tx = tx.clone();
        async move {
            if let Ok(Some(head)) = conn.head(STEP_TIMEOUT).await {
                let (_, headers) = tests::raw::split_head(&head);
                assert!(field(&headers, "upgrade").is_none(), "{head}");
                let body = read_body(&mut conn, &headers).await;
                let _ = tx.send(body.clone());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                    body.len(),
                    String::from_utf8_lossy(&body)
                );
                reply(&mut conn, answer).await;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(format!(
            "POST /ws HTTP/1.1\r\nHost: test\r\n{WS_UPGRADE}Transfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"), "{r:?}");
    let body = tokio::time::timeout(STEP_TIMEOUT, seen.recv())
        .await
        .unwrap();
    assert_eq!(body.as_deref(), Some(&b"hello world"[..]));
}

/// An upgrade's head reaches the backend with a `Connection` of ours (`upgrade`), not the
/// client's: a client's could list the fields the proxy adds (X-Forwarded-For,
/// X-Request-Id) for a next hop to delete, so that it took the proxy for the client. The
/// fields the client's lists are hop-by-hop and not sent, and the framing fields' underscore
/// spellings are dropped as on every other path.
#[tokio::test]
async fn an_upgrade_carries_our_connection_field_and_no_framing_look_alikes() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let raw = RawBackend::start(move |mut conn, _| {
        let seen_tx = seen_tx.clone();
        async move {
            let Some(req) = conn.request().await else {
                return;
            };
            let _ = seen_tx.send(req);
            let _ = reply(
                &mut conn,
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
            .await;
            // Held open until the client goes.
            let _ = conn.fill(STEP_TIMEOUT).await;
        }
    })
    .await;
    for path in ["", "http1 = \"pingora\"\n"] {
        let proxy = proxy_for_raw(&[&raw], path);
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(
            "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade, X-Forwarded-For, X-Request-Id, X-Secret\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Secret: hop\r\nContent_Length: 7\r\nTransfer_Encoding: chunked\r\nX-Kept: 1\r\n\r\n",
        )
        .await;
        let head = c.head(STEP_TIMEOUT).await.unwrap().unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 101"), "{path:?}: {head}");
        let req = next_seen(&mut seen).await;
        let all = |name: &str| -> Vec<&str> {
            req.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(all("connection"), ["upgrade"], "{path:?}: {req:?}");
        assert_eq!(all("upgrade"), ["websocket"], "{path:?}: {req:?}");
        assert_eq!(all("x-forwarded-for"), ["127.0.0.1"], "{path:?}: {req:?}");
        assert_eq!(all("x-kept"), ["1"], "{path:?}: {req:?}");
        assert!(all("x-secret").is_empty(), "{path:?}: {req:?}");
        assert!(
            req.headers.iter().all(|(n, _)| !n.contains('_')),
            "{path:?}: {req:?}"
        );
    }
}

#[tokio::test]
async fn body_less_tcp_upgrade_is_still_tunnelled() {
    // `Upgrade: tcp` (docker attach): 101, then raw bytes both ways.
    let raw = RawBackend::start(|mut conn, _| async move {
        let Some(req) = conn.request().await else {
            return;
        };
        assert_eq!(field(&req.headers, "upgrade"), Some("tcp"), "{req:?}");
        if !reply(
            &mut conn,
            "HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
        )
        .await
        {
            return;
        }
        loop {
            if !conn.buf.is_empty() {
                let out = std::mem::take(&mut conn.buf);
                if !reply(&mut conn, out).await {
                    return;
                }
            }
            if !matches!(conn.fill(STEP_TIMEOUT).await, Ok(n) if n > 0) {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(
        "POST /containers/x/attach HTTP/1.1\r\nHost: test\r\nUpgrade: tcp\r\n\
         Connection: Upgrade\r\n\r\n",
    )
    .await;
    let head = c.head(STEP_TIMEOUT).await.unwrap().unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.send("ping").await;
    assert_eq!(c.take(4, STEP_TIMEOUT).await.as_deref(), Ok(&b"ping"[..]));
}

// ---------------------------------------------------------------------------------------
// 2. Refused upgrades: long answers relayed whole, cut answers never look complete.

/// Answers an upgrade with a 403 whose body is delimited by the close: `parts` parts, each
/// `pause` after the previous one. With `stall`, it sends one part and then holds the
/// connection open, sending nothing more.
async fn refusing_backend(parts: usize, pause: Duration, stall: bool) -> RawBackend {
    RawBackend::start(move |mut conn, _| async move {
        if conn.request().await.is_none() {
            return;
        }
        if !reply(
            &mut conn,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n\r\n",
        )
        .await
        {
            return;
        }
        for i in 0..parts {
            if i > 0 {
                // The backend's own pace, not a synchronisation: a slow producer.
                tokio::time::sleep(pause).await;
            }
            if !reply(&mut conn, format!("part {i};")).await {
                return;
            }
            if stall {
                // Held open: only the proxy may end it.
                let _ = conn.fill(STEP_TIMEOUT * 2).await;
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn refused_upgrade_answer_longer_than_the_read_timeout_is_relayed_whole() {
    // Seven parts 400 ms apart: 2.4 s in all, longer than the read timeout, never idle for
    // more than a fifth of it (room for a loaded machine's scheduling).
    let raw = refusing_backend(7, Duration::from_millis(400), false).await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"2s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(format!(
        "GET /ws HTTP/1.1\r\nHost: test\r\n{WS_UPGRADE}\r\n"
    ))
    .await;
    let r = c.try_response(false).await.unwrap_or_else(|e| {
        panic!(
            "the answer did not end cleanly: {e}; {:?}",
            String::from_utf8_lossy(&c.buf)
        )
    });
    assert_eq!(r.status, 403, "{r:?}");
    let want: String = (0..7).map(|i| format!("part {i};")).collect();
    assert_eq!(r.text(), want, "{r:?}");
    // The backend's close ended the body; the client got it chunked, and the connection
    // goes on.
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert!(!r.closes(), "{r:?}");
}

#[tokio::test]
async fn refused_upgrade_answer_cut_by_the_idle_timeout_does_not_look_complete() {
    let raw = refusing_backend(3, Duration::ZERO, true).await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"1s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(format!(
        "GET /ws HTTP/1.1\r\nHost: test\r\n{WS_UPGRADE}\r\n"
    ))
    .await;
    // A body ended by the close would read as complete; the client must see it broken.
    match c.try_response(false).await {
        Err(e) => assert!(
            e.contains("EOF") || e.contains("read failed"),
            "not a cut connection: {e}"
        ),
        Ok(r) => panic!("a cut answer looked complete: {r:?}"),
    }
}

#[tokio::test]
async fn refused_upgrade_with_a_framed_answer_leaves_the_connection_usable() {
    // Refuses upgrades by path, with a length, a chunked or a close-delimited body; answers
    // any other request `200 plain`.
    let raw = RawBackend::start(|mut conn, _| async move {
        while let Some(req) = conn.request().await {
            let answer = match (field(&req.headers, "upgrade"), req.path.as_str()) {
                (None, _) => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain",
                (Some(_), "/ws/401") => {
                    "HTTP/1.1 401 Unauthorized\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                     Content-Length: 6\r\n\r\nlog in"
                }
                (Some(_), "/ws/404") => {
                    "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                     4\r\nnone\r\n5\r\n here\r\n0\r\n\r\n"
                }
                (Some(_), _) => {
                    reply(&mut conn, "HTTP/1.1 200 OK\r\n\r\nuntil close").await;
                    return;
                }
            };
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let upgrade = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test\r\n{WS_UPGRADE}\r\n");
    // On our HTTP/1 path, and with pingora serving every request.
    for http1 in ["", "http1 = \"pingora\"\n"] {
        let proxy = proxy_for_raw(&[&raw], http1);
        let mut c = RawConn::connect(proxy.addr()).await;
        for (path, status, body) in [
            ("/ws/401", 401, "log in"),
            ("/ws/404", 404, "none here"),
            // Delimited by the backend's close: the client gets it chunked, which ends it.
            ("/ws/200", 200, "until close"),
        ] {
            let r = c.exchange(upgrade(path)).await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (status, body),
                "{http1:?} {path}: {r:?}"
            );
            assert!(!r.closes(), "{http1:?} {path}: {r:?}");
            assert!(r.header("keep-alive").is_none(), "{http1:?} {path}: {r:?}");
            // The same connection carries the next request.
            let r = c.exchange("GET /next HTTP/1.1\r\nHost: test\r\n\r\n").await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "plain"),
                "{http1:?} after {path}: {r:?}"
            );
        }
        // A request sent right behind the upgrade is answered after the refusal.
        c.send(upgrade("/ws/401") + "GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 401, "{r:?}");
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, "plain"), "{r:?}");

        // A client that asked to close gets the answer, then the close.
        c.send(upgrade("/ws/401").replace("Connection: Upgrade", "Connection: Upgrade, close"))
            .await;
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (401, "log in"), "{r:?}");
        assert!(r.closes(), "{r:?}");
        c.expect_eof("after a refusal the client asked to close")
            .await;
    }
}

// ---------------------------------------------------------------------------------------
// 3. HTTP/1.0 clients: no chunked bodies, no 1xx.

#[tokio::test]
async fn http10_client_gets_raw_bodies_and_no_interim_answers() {
    let raw = RawBackend::start(|mut conn, _| async move {
        while let Some(req) = conn.request().await {
            let answer = match req.path.as_str() {
                // Chunked, after a 103 and a 100 nobody asked for.
                "/chunked" => {
                    "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n\
                               HTTP/1.1 100 Continue\r\n\r\n\
                               HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                               5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                }
                "/length" => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsized",
                // Delimited by the close (pingora chunks those for HTTP/1.1 clients).
                _ => {
                    reply(&mut conn, "HTTP/1.1 200 OK\r\n\r\nuntil close").await;
                    return;
                }
            };
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");

    for (path, keep_alive, body) in [
        ("/chunked", false, "hello world"),
        ("/chunked", true, "hello world"),
        ("/close", false, "until close"),
        ("/close", true, "until close"),
    ] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let connection = if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            ""
        };
        let r = c
            .exchange(format!(
                "GET {path} HTTP/1.0\r\nHost: test\r\n{connection}\r\n"
            ))
            .await;
        assert_eq!(r.status, 200, "{path}: no 1xx to an HTTP/1.0 client: {r:?}");
        assert!(
            r.header("transfer-encoding").is_none(),
            "{path}: chunked to an HTTP/1.0 client: {r:?}"
        );
        assert_eq!(r.text(), body, "{path}: {r:?}");
        assert!(
            r.closes(),
            "{path}: the body ends at the close, and says so: {r:?}"
        );
        c.expect_eof(path).await;
    }

    // A Content-Length from the backend stays, and so does a kept-alive connection.
    let mut c = RawConn::connect(proxy.addr()).await;
    for _ in 0..2 {
        let r = c
            .exchange("GET /length HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
            .await;
        assert_eq!((r.status, r.text().as_str()), (200, "sized"), "{r:?}");
        assert_eq!(r.header("content-length"), Some("5"), "{r:?}");
        assert!(!r.closes(), "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Expect: 100-continue.

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_proxy_and_not_forwarded() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let raw = echo_backend(tx).await;
    let proxy = proxy_for_raw(&[&raw], "[timeouts]\nupstream_read = \"8s\"\n");
    let mut c = RawConn::connect(proxy.addr()).await;

    for i in 0..2 {
        // The head only: the client waits for the 100 before its body, and this backend
        // never sends one.
        c.send("POST /form HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .await;
        let head = c.head(STEP_TIMEOUT).await.unwrap().unwrap_or_default();
        assert_eq!(head, "HTTP/1.1 100 Continue", "request {i}");
        let r = c.exchange("hello").await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello"),
            "request {i}: {r:?}"
        );
        assert!(!r.closes(), "request {i}: {r:?}");
        let req = next_seen(&mut seen).await;
        assert!(field(&req.headers, "expect").is_none(), "{req:?}");
    }

    // No body, no 100: the answer comes straight.
    let r = c
        .exchange("POST /form HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn a_backends_own_100_does_not_reach_the_client_twice() {
    // Sends 100 Continue to every request (as some backends do, asked or not).
    let raw = RawBackend::start(|mut conn, _| async move {
        while let Ok(Some(head)) = conn.head(STEP_TIMEOUT).await {
            let (_, headers) = tests::raw::split_head(&head);
            if !reply(&mut conn, "HTTP/1.1 100 Continue\r\n\r\n").await {
                return;
            }
            let body = read_body(&mut conn, &headers).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                String::from_utf8_lossy(&body)
            );
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send("PUT /doc HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let head = c.head(STEP_TIMEOUT).await.unwrap().unwrap_or_default();
    assert_eq!(head, "HTTP/1.1 100 Continue");
    c.send("hello").await;
    let r = c.response(false).await;
    // Not the backend's 100 in second place: the final answer, and nothing after it.
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
    assert!(c.buf.is_empty(), "{:?}", String::from_utf8_lossy(&c.buf));
}

#[tokio::test]
async fn unknown_expectation_gets_417() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let raw = echo_backend(tx).await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(
            "POST /form HTTP/1.1\r\nHost: test\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
    assert_eq!(r.status, 417, "{r:?}");
    assert!(
        r.text()
            .starts_with("417 Expectation Failed: unsupported expectation"),
        "{r:?}"
    );
    assert_eq!(raw.accepted(), 0, "the backend was contacted");
}

// ---------------------------------------------------------------------------------------
// 5. Absolute-form targets.

#[tokio::test]
async fn absolute_form_target_is_routed_by_its_authority_and_sent_origin_form() {
    let (api_tx, mut api_seen) = mpsc::unbounded_channel();
    let api = echo_backend(api_tx).await;
    let (web_tx, mut web_seen) = mpsc::unbounded_channel();
    let web = echo_backend(web_tx).await;
    let entry =
        |b: &RawBackend, id: &str| vec![format!("{{ addr = \"{}\", id = \"{id}\" }}", b.addr)];
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}\n{}\n[[routes]]\nhost = \"api.example\"\nupstream = \"api\"\n\n\
         [[routes]]\nupstream = \"web\"\n",
        listener(free_port()),
        upstream("api", None, &entry(&api, "api")),
        upstream("web", None, &entry(&web, "web")),
    ));

    // The Host field differs (ignored), matches, or is absent: the target's authority wins.
    // Each as the first request of a connection (later ones: the next test).
    for host in ["Host: web.example\r\n", "Host: api.example\r\n", ""] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!(
                "GET http://api.example/echo?x=1 HTTP/1.1\r\n{host}Content-Length: 2\r\n\r\nhi"
            ))
            .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hi"),
            "{host:?}: {r:?}"
        );
        let req = next_seen(&mut api_seen).await;
        assert_eq!(req.path, "/echo?x=1", "{host:?}: not origin-form: {req:?}");
        assert_eq!(field(&req.headers, "host"), Some("api.example"), "{req:?}");
        assert!(
            !req.headers
                .iter()
                .any(|(n, v)| n == "host" && v == "web.example"),
            "{req:?}"
        );
    }
    // An origin-form request still goes by its Host.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(
            "POST /x HTTP/1.1\r\nHost: web.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let req = next_seen(&mut web_seen).await;
    assert_eq!(req.path, "/x");
    assert!(api_seen.try_recv().is_err());
}

#[tokio::test]
async fn absolute_form_requests_after_a_hand_off_are_routed_by_their_authority() {
    let (api_tx, mut api_seen) = mpsc::unbounded_channel();
    let api = echo_backend(api_tx).await;
    let (web_tx, mut web_seen) = mpsc::unbounded_channel();
    let web = echo_backend(web_tx).await;
    let entry =
        |b: &RawBackend, id: &str| vec![format!("{{ addr = \"{}\", id = \"{id}\" }}", b.addr)];
    let absolute =
        |n: usize| format!("GET http://api.example/abs/{n} HTTP/1.1\r\nHost: web.example\r\n\r\n");

    // On our HTTP/1 path, and with pingora serving every request.
    for http1 in ["", "http1 = \"pingora\"\n"] {
        let proxy = Proxy::start_config(&format!(
            "{TWO_THREADS}{http1}\n{}\n{}\n{}\n[[routes]]\nhost = \"api.example\"\nupstream = \"api\"\n\n\
             [[routes]]\nupstream = \"web\"\n",
            listener(free_port()),
            upstream("api", None, &entry(&api, "api")),
            upstream("web", None, &entry(&web, "web")),
        ));

        // Handed to pingora first: HTTP/1.0, then an absolute-form target itself.
        for first in [
            "GET /first HTTP/1.0\r\nHost: web.example\r\nConnection: keep-alive\r\n\r\n".to_owned(),
            absolute(0),
        ] {
            let mut c = RawConn::connect(proxy.addr()).await;
            let r = c.exchange(&first).await;
            assert_eq!(r.status, 200, "{http1:?} {first:?}: {r:?}");
            assert!(!r.closes(), "{http1:?} {first:?}: {r:?}");
            let req = if first.contains("http://") {
                next_seen(&mut api_seen).await
            } else {
                next_seen(&mut web_seen).await
            };
            assert!(
                req.path.ends_with("first") || req.path == "/abs/0",
                "{req:?}"
            );

            // Then absolute-form requests whose Host differs, one at a time and pipelined.
            let r = c.exchange(absolute(1)).await;
            assert_eq!(r.status, 200, "{http1:?} {first:?}: {r:?}");
            c.send(absolute(2) + &absolute(3)).await;
            for n in 2..4 {
                assert_eq!(
                    c.response(false).await.status,
                    200,
                    "{http1:?} {first:?}: request {n}"
                );
            }
            for n in 1..4 {
                let req = next_seen(&mut api_seen).await;
                assert_eq!(
                    req.path,
                    format!("/abs/{n}"),
                    "{http1:?} {first:?}: {req:?}"
                );
                assert_eq!(field(&req.headers, "host"), Some("api.example"), "{req:?}");
            }
            assert!(
                web_seen.try_recv().is_err(),
                "{http1:?} {first:?}: routed by the Host field"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. Error answers name no backend.

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413_without_the_backends_address() {
    // Reads whatever comes and never answers.
    let raw = RawBackend::start(|mut conn, _| async move {
        while matches!(conn.fill(STEP_TIMEOUT * 2).await, Ok(n) if n > 0) {}
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "[limits]\nmax_request_body_bytes = 1024\n");
    let mut c = RawConn::connect(proxy.addr()).await;
    let chunk = "c".repeat(1500);
    // 1500 bytes in one chunk, and the body never ends.
    c.send(format!(
        "POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    ))
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 413, "{r:?}");
    let text = r.text();
    assert_eq!(
        text, "413 Payload Too Large: request body too large\n",
        "{r:?}"
    );
    let addr = raw.addr.to_string();
    assert!(!r.head.contains(&addr) && !text.contains("peer"), "{r:?}");

    // A malformed chunked body gets its 400. Neither writes an ERROR line: any client
    // could fill the error log with them (the access log has each request).
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send("POST /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    assert_eq!(c.response(false).await.status, 400);
    let logs = proxy.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

// ---------------------------------------------------------------------------------------
// 7. The Host field.

#[tokio::test]
async fn missing_repeated_or_malformed_host_gets_400() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let raw = echo_backend(tx).await;
    let proxy = proxy_for_raw(&[&raw], "");
    let chunked = "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

    for (host, reason) in [
        ("", Some("missing Host header")),
        ("Host: a/b\r\n", Some("invalid Host header")),
        ("Host: a b\r\n", Some("invalid Host header")),
        ("Host: user@a\r\n", None),
        ("Host: a:8x\r\n", Some("invalid Host header")),
        // pingora refuses these two while reading the head, with its own 400.
        ("Host: a\r\nHost: b\r\n", None),
    ] {
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(format!("POST /form HTTP/1.1\r\n{host}{chunked}"))
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 400, "{host:?}: {r:?}");
        if let Some(reason) = reason {
            assert_eq!(r.text(), format!("400 Bad Request: {reason}\n"), "{r:?}");
            assert!(
                r.header("content-type")
                    .is_some_and(|v| v.starts_with("text/plain")),
                "{r:?}"
            );
        }
        c.expect_eof(host).await;
    }
    assert_eq!(raw.accepted(), 0, "a request reached the backend");

    // HTTP/1.0 may omit it; HTTP/1.1 with one is served.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange("POST /ten HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
    assert_eq!(next_seen(&mut seen).await.path, "/ten");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(format!(
            "POST /ok HTTP/1.1\r\nHost: a.example:8080\r\n{chunked}"
        ))
        .await;
    // (This backend reads Content-Length bodies only: the chunked one is not echoed.)
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(next_seen(&mut seen).await.path, "/ok");
}

/// A backend that refuses every connection is logged once a minute, on every path alike:
/// pingora's path no longer writes an ERROR line per request (nor a warning per retried
/// attempt), Switchyard's HTTP/1 path and the upgrade path the same single warning. Each
/// request's status is in the access log.
#[tokio::test]
async fn a_failing_backend_is_logged_once_a_minute_on_every_path_never_as_error() {
    let [port, dead] = tests::port_array();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}[access_log]\nenabled = true\nformat = \"combined\"\n{}{}",
        listener(port),
        upstream(
            "app",
            None,
            &[format!("{{ addr = \"127.0.0.1:{dead}\", id = \"dead\" }}")]
        ),
    ));
    let requests = [
        // The upgrade path.
        "GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        // Switchyard's HTTP/1 path.
        "GET /one HTTP/1.1\r\nHost: test\r\n\r\n",
        // pingora's path: HTTP/1.0, then a chunked body.
        "GET /two HTTP/1.0\r\nHost: test\r\n\r\n",
        "POST /three HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    ];
    for req in requests {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c.exchange(req).await;
        assert_eq!(r.status, 502, "{req:?}: {r:?}");
        assert!(r.text().contains("could not connect"), "{req:?}: {r:?}");
    }
    // The access line of the last request follows anything logged while it was served.
    proxy.wait_log("\"POST /three HTTP/1.1\" 502", STEP_TIMEOUT);
    let logs = proxy.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(!logs.contains("Fail to proxy"), "{logs}");
    let warned = logs
        .lines()
        .filter(|l| l.contains("further failures of this backend within a minute"))
        .count();
    assert_eq!(warned, 1, "{logs}");
}

/// A refused target is logged as the client sent it, on pingora's path as on Switchyard's:
/// pingora's path logged `/` for any target it could not parse.
#[tokio::test]
async fn a_refused_target_is_logged_as_sent() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}http1 = \"pingora\"\n[access_log]\nenabled = true\nformat = \"combined\"\n{}{}",
        listener(free_port()),
        upstream("app", None, &entries(&[&b])),
    ));
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange("GET foo HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    proxy.wait_log("\"GET foo HTTP/1.1\" 400", STEP_TIMEOUT);
}

/// A kept-alive backend connection that the backend closes when the next request comes
/// (its idle timeout struck as the request went out) is no failure of the backend: on
/// pingora's path too the request goes again on a fresh connection, to the same backend
/// when it is the only one, instead of a `503 no healthy backend`. A POST is not sent
/// twice (it gets the `502`) unless it carries an `Idempotency-Key`.
#[tokio::test]
async fn a_request_on_a_kept_alive_connection_the_backend_closed_is_sent_again() {
    // Each connection answers its first request, and closes at the second, which it
    // reports (whether the proxy reuses a connection is its pool's timing: the test sends
    // requests until one meets a closed connection).
    let (raw, mut closed_rx) = tests::raw::closing_at_second_request().await;
    let proxy = proxy_for_raw(&[&raw], "");
    // HTTP/1.0: pingora's path.
    let (path, r) = until_closed(&proxy, &mut closed_rx, |n| {
        format!("GET /again{n} HTTP/1.0\r\nHost: test\r\n\r\n")
    })
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, ""), "{path}: {r:?}");
    let (path, r) = until_closed(&proxy, &mut closed_rx, |n| {
        format!("POST /once{n} HTTP/1.0\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi")
    })
    .await;
    assert_eq!(r.status, 502, "{path}: {r:?}");
    // The same with an Idempotency-Key: the backend de-duplicates, so it may go again.
    let (path, r) = until_closed(&proxy, &mut closed_rx, |n| {
        format!(
            "POST /keyed{n} HTTP/1.0\r\nHost: test\r\nIdempotency-Key: k{n}\r\n\
             Content-Length: 2\r\n\r\nhi"
        )
    })
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"), "{path}: {r:?}");
}

/// Sends the requests `make(0)`, `make(1)`, ... through `proxy`, each on a new client
/// connection, until the backend reports on `closed` that one met a kept-alive connection
/// it closed; returns that request's path and answer. The others must succeed.
async fn until_closed(
    proxy: &Proxy,
    closed: &mut mpsc::UnboundedReceiver<String>,
    make: impl Fn(usize) -> String,
) -> (String, tests::raw::Resp) {
    for n in 0..50 {
        let req = make(n);
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c.exchange(req.as_str()).await;
        let path = req.split(' ').nth(1).unwrap_or_default().to_owned();
        // The backend reports before it closes, so before the proxy can answer.
        let mut hit = false;
        while let Ok(p) = closed.try_recv() {
            hit |= p == path;
        }
        if hit {
            return (path, r);
        }
        assert_eq!(r.status, 200, "{req:?} on a fresh connection: {r:?}");
    }
    panic!("no request met a kept-alive connection in 50 tries");
}

/// An answer with both Content-Length and Transfer-Encoding reaches a client of pingora's
/// path framed by Transfer-Encoding alone (RFC 9112 §6.3: an intermediary removes the
/// length), as on Switchyard's path. Unlike Switchyard's path, pingora's may use that
/// backend connection again: its HTTP/1 client drops the length before any hook sees the
/// answer (the README says so). The backend here keeps its connection, so that what the
/// second request meets is the proxy's doing, not a close racing the pool.
#[tokio::test]
async fn an_answer_with_both_framings_keeps_transfer_encoding_alone() {
    let raw = RawBackend::start(|mut conn, _| async move {
        while let Some(req) = conn.request().await {
            // The requests' chunked bodies are empty: their last chunk and end.
            if field(&req.headers, "transfer-encoding").is_some()
                && (conn.line(STEP_TIMEOUT).await.is_err()
                    || conn.line(STEP_TIMEOUT).await.is_err())
            {
                return;
            }
            let answer = if req.path == "/both" {
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n\
                 2\r\nok\r\n0\r\n\r\n"
                    .to_owned()
            } else {
                echo_answer(&req)
            };
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    // A chunked request body: pingora's path, on a kept-alive connection.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(
            "POST /both HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    let r = c
        .exchange(
            "POST /next HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // An HTTP/1.0 client gets the body unchunked, ended by the close, with no length
    // (the backend's 9 would make it wait for 7 bytes that never come).
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange("GET /both HTTP/1.0\r\nHost: test\r\n\r\n").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
}

// ---------------------------------------------------------------------------------------
// 8. Trace logging.

/// pingora 0.9.1 writes a backend's response head into a `trace!` record as UTF-8 with an
/// `unwrap()` (`protocols/http/v1/client.rs`, `read_response_task`). Field values may hold
/// obs-text (bytes 0x80–0xFF, RFC 9110 §5.5: Latin-1 from older servers), so with trace
/// logging on (`RUST_LOG=trace`, what an operator sets to debug a backend) such a response
/// would panic the request's task and the client would get a closed connection instead of
/// its answer. The proxy keeps `log` records (pingora's) at debug and below.
#[tokio::test]
async fn a_response_head_with_obs_text_is_relayed_with_trace_logging_on() {
    let raw =
        RawBackend::answering(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
            .await;
    let proxy = ProxyCmd::config(&raw_config(&[&raw], ""))
        .env("RUST_LOG", "trace")
        .start();
    // HTTP/1.0: pingora's path, whose client reads the backend's head; then HTTP/1.1, ours.
    for version in ["1.0", "1.1"] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!("GET /latin1 HTTP/{version}\r\nHost: test\r\n\r\n"))
            .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "{version}: {r:?}"
        );
        assert_eq!(r.header("x-name"), Some("caf\u{fffd}"), "{version}: {r:?}");
    }
    assert!(
        !proxy.logs().contains("panicked"),
        "the proxy panicked:\n{}",
        proxy.logs()
    );
}

// ---------------------------------------------------------------------------------------
// 9. Heads repaired or refused as on Switchyard's own path.

/// A `Content-Length` list of one repeated value goes to the backend as the single field it
/// means, and an HTTP/1.0 request without Host gets one, since it goes on as HTTP/1.1.
#[tokio::test]
async fn a_repeated_length_and_a_missing_host_are_repaired_for_the_backend() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let raw = echo_backend(tx).await;
    let proxy = proxy_for_raw(&[&raw], "");
    for fields in [
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
    ] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!("POST /cl HTTP/1.0\r\nHost: a\r\n{fields}\r\nhello"))
            .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello"),
            "{fields:?}: {r:?}"
        );
        let req = next_seen(&mut seen).await;
        let lengths: Vec<_> = req
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths, ["5"], "{fields:?}: {req:?}");
    }

    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange("GET /nohost HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    let req = next_seen(&mut seen).await;
    assert_eq!(req.path, "/nohost");
    assert_eq!(
        field(&req.headers, "host"),
        Some(raw.addr.to_string().as_str()),
        "{req:?}"
    );
}

/// Answers Switchyard's own path refuses get the same `502` and reason on pingora's (here
/// for HTTP/1.0 clients): a `101` to a request that asked for no upgrade (the client got
/// it, then a dead connection), a status outside 100–599, a head over 64 KiB. A `204`
/// loses its `Content-Length`.
#[tokio::test]
async fn answers_our_path_refuses_are_refused_on_pingoras_too() {
    let big = format!("X-Big: {}\r\n", "b".repeat(70_000));
    let raw = RawBackend::start(move |mut conn, _| {
        let big = big.clone();
        async move {
            while let Some(req) = conn.request().await {
                let answer = match req.path.as_str() {
                    "/101" => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n".to_owned(),
                    "/600" => "HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok".to_owned(),
                    "/big" => format!("HTTP/1.1 200 OK\r\n{big}Content-Length: 2\r\n\r\nok"),
                    "/204" => "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_owned(),
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_owned(),
                };
                if !reply(&mut conn, answer).await {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    for (path, reason) in [
        (
            "/101",
            "the backend switched protocols on a request that asked for no upgrade",
        ),
        ("/600", "the backend sent an invalid response head"),
        ("/big", "the backend's response head is too large"),
    ] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n"))
            .await;
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert_eq!(
            r.text(),
            format!("502 Bad Gateway: {reason}\n"),
            "{path}: {r:?}"
        );
    }
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send("GET /204 HTTP/1.0\r\nHost: test\r\n\r\n").await;
    let r = c.response(true).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.header("content-length").is_none(), "{r:?}");
}

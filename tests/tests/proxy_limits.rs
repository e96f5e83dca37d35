//! Forwarded headers and per-client limits end to end: X-Forwarded-*, 431, 413, 429 (rate and
//! concurrency), the header read timeout against slowloris, and 404 for unrouted requests —
//! real `echo-backend` and `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use tests::admin::{backend_status, counter};
use tests::fixtures::{entries, listener, upstream, TWO_THREADS};
use tests::http::assert_plain_text;
use tests::ws::{ws_close, ws_open, WsOptions};
use tests::{
    client, client_from, free_port, get, get_with, send, wait_for, wait_until, ws_connect, ws_echo,
    Backend, Proxy, STEP_TIMEOUT,
};

/// Bound for waits on the proxy's state (a slot freed after a tunnel closes).
const T: Duration = Duration::from_secs(15);
/// How long a connection that stalls its request head may stay open when
/// `header_read_timeout = "1s"` (generous for a loaded machine; the default is 10 s).
const SLOWLORIS_BOUND: Duration = Duration::from_secs(5);

/// One listener on a fresh port, one upstream `app` over `backend`, and `limits` as the body
/// of the `[limits]` table.
fn config(backend: &Backend, limits: &str) -> String {
    format!(
        r#"
{TWO_THREADS}
[limits]
{limits}

{listener}
{upstream}"#,
        listener = listener(free_port()),
        upstream = upstream("app", None, &entries(&[backend])),
    )
}

/// Writes `bytes` on a fresh connection to `addr` and reads the answer's head (up to the
/// blank line, or whatever came before EOF), bounded by [`STEP_TIMEOUT`].
async fn raw_head(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    if tokio::time::timeout(STEP_TIMEOUT, read).await.is_err() {
        panic!(
            "no complete answer within {STEP_TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads from `s` until the peer closes (EOF or error), discarding data; panics when the
/// connection is still open after `bound`.
async fn expect_closed_within(s: &mut (impl AsyncRead + Unpin), bound: Duration, what: &str) {
    let closed = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {bound:?}");
}

#[tokio::test]
async fn forwarded_headers_are_added_and_x_forwarded_for_appended() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, ""));
    let url = proxy.url("/headers");

    let h = send(client().get(&url).header("x-forwarded-for", "1.2.3.4"))
        .await
        .json();
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(
        h["x-forwarded-host"],
        proxy.addr().to_string(),
        "the Host header as sent: {h}"
    );
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{h}");

    // A Host of the client's choosing, no prior X-Forwarded-For, spoofed proto and real IP.
    let h = send(
        client()
            .get(&url)
            .header("host", "App.Test:8080")
            .header("x-forwarded-proto", "https")
            .header("x-real-ip", "9.9.9.9"),
    )
    .await
    .json();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-host"], "App.Test:8080", "{h}");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "a client cannot claim https: {h}"
    );
    assert_eq!(
        h["x-real-ip"], "127.0.0.1",
        "a client cannot choose its real IP: {h}"
    );

    // From another loopback address, with a chain of two.
    let from = client_from("127.0.0.7".parse().unwrap());
    let h = send(
        from.get(&url)
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8"),
    )
    .await
    .json();
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.7", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.7", "{h}");
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "max_request_header_bytes = 8192"));
    let url = proxy.url("/id");

    let r = send(client().get(&url).header("x-small", "s".repeat(4 * 1024))).await;
    assert_eq!(r.status, 200, "a head under the limit passes: {r:?}");

    let r = send(client().get(&url).header("x-big", "b".repeat(20 * 1024))).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.backend(), None, "{r:?}");
    assert_plain_text(&r);
    assert!(!r.body.trim().is_empty());

    // Many small headers add up as well.
    let mut req = client().get(&url);
    for i in 0..40 {
        req = req.header(format!("x-h{i}"), "v".repeat(400));
    }
    let r = send(req).await;
    assert_eq!(r.status, 431, "{r:?}");
}

#[tokio::test]
async fn declared_body_over_the_limit_gets_413_without_contacting_the_backend() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "max_request_body_bytes = 1024"));

    // Under the limit: echoed.
    let r = send(client().post(proxy.url("/echo")).body("x".repeat(1000))).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.len(), 1000);
    let before = counter(&backend_status(&proxy, "b1").await, "requests");

    // Over the limit by Content-Length: answered from the head alone (no body is sent, so
    // nothing unread is left to reset the connection).
    let head = raw_head(
        proxy.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("x-backend-id"),
        "{head}"
    );
    assert_eq!(
        counter(&backend_status(&proxy, "b1").await, "requests"),
        before,
        "the backend was not contacted"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    // The backend holds every answer for 30 s, so whatever the proxy answers within the
    // test's bounds is its own.
    let b = Backend::start_with("b1", &["--delay-ms", "30000"]);
    let proxy = Proxy::start_config(&config(&b, "max_request_body_bytes = 1024"));
    let chunk = "c".repeat(1500);
    // 1500 bytes in one chunk, and the body never ends.
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
        chunk.len()
    );
    let head = raw_head(proxy.addr(), request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
}

#[tokio::test]
async fn request_rate_over_the_limit_gets_429() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "requests_per_second_per_ip = 5"));
    let c = client();
    let url = proxy.url("/id");

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..20 {
        let r = get_with(&c, &url).await;
        statuses.push(r.status.as_u16());
        if r.status == 429 && limited.is_none() {
            limited = Some(r);
        }
    }
    // No one-second window can hold more than five of the first five.
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let r = limited.unwrap_or_else(|| panic!("no 429 in 20 quick requests: {statuses:?}"));
    assert_plain_text(&r);
    assert!(r.body.contains("too many requests"), "{:?}", r.body);
    assert_eq!(r.backend(), None);

    // Another client address has its own budget.
    let other = client_from("127.0.0.9".parse().unwrap());
    assert_eq!(get_with(&other, &url).await.status, 200);
}

#[tokio::test]
async fn concurrent_connections_over_the_limit_get_429_until_one_closes() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "max_connections_per_ip = 2"));
    let url = proxy.url("/id");

    let (mut ws1, _) = ws_connect(&proxy.ws_url("/ws")).await;
    let (ws2, _) = ws_connect(&proxy.ws_url("/ws")).await;

    let r = get(&url).await;
    assert_eq!(r.status, 429, "a third request: {r:?}");
    assert_plain_text(&r);
    assert_eq!(r.backend(), None);
    match ws_open(&proxy.ws_url("/ws"), &WsOptions::default()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429, "{resp:?}");
        }
        Ok(_) => panic!("a third WebSocket was accepted"),
        Err(e) => panic!("expected 429 to a third WebSocket, got {e}"),
    }
    // Another client address is not affected.
    let other = client_from("127.0.0.11".parse().unwrap());
    assert_eq!(get_with(&other, &url).await.status, 200);

    // Closing one tunnel frees a slot.
    ws_close(ws2).await;
    wait_until(T, "a slot freed by the closed WebSocket", || {
        let url = url.clone();
        async move { get(&url).await.status == 200 }
    })
    .await;
    ws_echo(&mut ws1, "the first one still works").await;
}

#[tokio::test]
async fn stalled_request_head_is_disconnected_after_the_header_read_timeout() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&format!(
        "{}\n[access_log]\nenabled = true\nformat = \"combined\"\n",
        config(&b, "header_read_timeout = \"1s\"")
    ));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /half HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    expect_closed_within(&mut s, SLOWLORIS_BOUND, "a connection with half a head").await;
    // In the access log as a 408, as nginx logs it.
    proxy.wait_log("\"GET /half HTTP/1.1\" 408", STEP_TIMEOUT);
    // The proxy still serves everyone else.
    assert_eq!(get(&proxy.url("/id")).await.status, 200);
}

#[tokio::test]
async fn silent_connection_is_disconnected_after_the_header_read_timeout() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "header_read_timeout = \"1s\""));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    expect_closed_within(&mut s, SLOWLORIS_BOUND, "a connection that sends nothing").await;
}

/// Writes `head` one byte at a time, then `tail` whole over and over, one write every
/// 200 ms (each read is quick, no head ever completes), and asserts the proxy closes the
/// connection within [`SLOWLORIS_BOUND`] (`header_read_timeout = 1s`).
async fn trickle_until_closed(s: TcpStream, head: &'static [u8], tail: &'static [u8], what: &str) {
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        let writes = head.chunks(1).chain(std::iter::repeat(tail));
        for write in writes {
            if wr.write_all(write).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    expect_closed_within(&mut rd, SLOWLORIS_BOUND, what).await;
    trickle.abort();
}

#[tokio::test]
async fn trickled_request_head_is_disconnected_after_the_header_read_timeout() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "header_read_timeout = \"1s\""));
    let s = TcpStream::connect(proxy.addr()).await.unwrap();
    trickle_until_closed(
        s,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"a",
        "a head trickled one byte per 200 ms (header_read_timeout = 1s)",
    )
    .await;
}

/// Empty lines before a request are allowed (RFC 9112 §2.2), but they start the head's
/// clock: a client that sent one every 200 ms kept its connection for good, on a new
/// connection and on a kept-alive one.
#[tokio::test]
async fn trickled_empty_lines_are_disconnected_after_the_header_read_timeout() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "header_read_timeout = \"1s\""));
    let s = TcpStream::connect(proxy.addr()).await.unwrap();
    trickle_until_closed(s, b"", b"\r\n", "empty lines on a new connection").await;

    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /id HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"b1") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    trickle_until_closed(s, b"", b"\r\n", "empty lines after a request").await;
}

#[tokio::test]
async fn request_matching_no_route_gets_404() {
    let b = Backend::start("b1");
    let toml = format!(
        r#"
{listener}
{upstream}
[[routes]]
host = "only.test"
path_prefix = "/"
upstream = "app"
"#,
        listener = listener(free_port()),
        upstream = upstream("app", None, &entries(&[&b])),
    );
    let proxy = Proxy::start_config(&toml);
    let url = proxy.url("/id");

    let r = send(client().get(&url).header("host", "only.test")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));
    let r = send(client().get(&url).header("host", "ONLY.test:8080")).await;
    assert_eq!(r.status, 200, "host match ignores case and port: {r:?}");

    for host in [None, Some("other.test")] {
        let mut req = client().get(&url);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let r = send(req).await;
        assert_eq!(r.status, 404, "host {host:?}: {r:?}");
        assert_eq!(r.backend(), None);
        assert_plain_text(&r);
        assert!(r.body.contains("no route"), "{:?}", r.body);
    }
}

/// `max_connections` caps the open client connections and WebSockets of the whole proxy, as
/// HAProxy's `maxconn` does: one over it gets `503` with the reason and is closed, counted
/// under its own reason in the metrics; once a connection closes, new ones are served again.
#[tokio::test]
async fn connections_over_max_connections_get_503_until_one_closes() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&config(&b, "max_connections = 2"));
    let addr = proxy.addr();
    let get_one = b"GET /id HTTP/1.1\r\nHost: test\r\n\r\n";
    // The harness's start-up probe (a TCP connect) is a connection too, counted until the
    // proxy reads its close, which a loaded machine may delay past the next connect.
    wait_until(T, "the start-up probe's connection closed", || async {
        let metrics = tests::admin::admin_get(&proxy, "/metrics", None).await.body;
        metrics.contains("switchyard_client_connections 0")
    })
    .await;

    // One kept-alive connection and one WebSocket: the cap is reached.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(get_one).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(STEP_TIMEOUT, kept.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let (mut ws, _) = ws_connect(&proxy.ws_url("/ws")).await;

    let head = raw_head(addr, get_one).await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(get_one).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(STEP_TIMEOUT, s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.ends_with(
            "503 Service Unavailable: the proxy is at its connection limit, try again shortly\n"
        ),
        "{answer}"
    );
    // The two that were in keep serving.
    ws_echo(&mut ws, "still served at the cap").await;
    kept.write_all(get_one).await.unwrap();
    let n = tokio::time::timeout(STEP_TIMEOUT, kept.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    // The WebSocket closes: its slot is free again.
    ws_close(ws).await;
    wait_until(
        T,
        "a new connection served after the WebSocket closed",
        || async { raw_head(addr, get_one).await.starts_with("HTTP/1.1 200") },
    )
    .await;
    let metrics = get(&proxy.admin_url("/metrics")).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_rejected_total{reason=\"max_connections\"}")),
        "{metrics}"
    );
}

/// Behind an HTTP balancer (here at 127.0.0.7, listed in `[server] real_ip_from`), the
/// client is the right-most address its X-Forwarded-For names that is not a balancer's:
/// that address gets `X-Real-IP`, its own request budget, the route's `allow` and the
/// access log's `client`. What a client wrote left of it is not believed, nor an
/// X-Forwarded-For from a connection that is no balancer's.
#[tokio::test]
async fn behind_a_real_ip_from_balancer_its_x_forwarded_for_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&format!(
        r#"
{TWO_THREADS}real_ip_from = ["127.0.0.6/31"]

[limits]
requests_per_second_per_ip = 3

[access_log]
enabled = true
format = "json"
path = "{log}"

{listener}
{upstream}
[[routes]]
path_prefix = "/"
upstream = "app"
allow = ["203.0.113.0/24", "127.0.0.1"]
"#,
        log = log.display(),
        listener = listener(free_port()),
        upstream = upstream("app", None, &entries(&[&b])),
    ));
    let url = proxy.url("/headers");
    let balancer = client_from("127.0.0.7".parse().unwrap());
    let via = |xff: &'static str| balancer.get(&url).header("x-forwarded-for", xff);

    let r = send(via("198.51.100.1, 203.0.113.7")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let h = r.json();
    assert_eq!(h["x-real-ip"], "203.0.113.7", "{h}");
    assert_eq!(
        h["x-forwarded-for"], "198.51.100.1, 203.0.113.7, 127.0.0.7",
        "{h}"
    );
    // Two balancers in a row: both are skipped.
    let h = send(via("203.0.113.8, 127.0.0.6")).await.json();
    assert_eq!(h["x-real-ip"], "203.0.113.8", "{h}");

    // The route's `allow` sees the client, not the balancer.
    let r = send(via("203.0.113.7, 198.51.100.1")).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = send(balancer.get(&url)).await;
    assert_eq!(r.status, 403, "the balancer itself is not allowed: {r:?}");

    // Each client behind the balancer has its own budget: 203.0.113.7 has used two.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(via("203.0.113.7")).await.status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(send(via("203.0.113.9")).await.status, 200);

    // A direct client cannot claim an address.
    let h = send(client().get(&url).header("x-forwarded-for", "203.0.113.7"))
        .await
        .json();
    assert_eq!(h["x-real-ip"], "127.0.0.1", "{h}");

    let line = wait_for(T, "the access log line of 203.0.113.9", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.contains("\"203.0.113.9\""))
                .map(str::to_owned)
        }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["client"].as_str(), v["status"].as_u64()),
        (Some("203.0.113.9"), Some(200)),
        "{v}"
    );
    // A refusal too is logged with the client it refused, not the balancer.
    let refused_clients = || {
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["status"] == 429 || v["status"] == 403)
            .filter_map(|v| v["client"].as_str().map(str::to_owned))
            .collect::<std::collections::BTreeSet<String>>()
    };
    let want: std::collections::BTreeSet<String> = ["127.0.0.7", "198.51.100.1", "203.0.113.7"]
        .map(str::to_owned)
        .into();
    wait_until(T, "the refusals logged with their clients", || async {
        refused_clients() == want
    })
    .await;
}

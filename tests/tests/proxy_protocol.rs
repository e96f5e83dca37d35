//! PROXY protocol listeners (behind a TCP load balancer): the client's address from v1 and
//! v2 headers reaches X-Forwarded-For and the access log on both HTTP/1 request paths, over
//! TLS (HTTP/1.1 and h2), and only once per connection; connections without a valid header,
//! or from peers not in `proxy_protocol_from`, are refused — real `echo-backend` and
//! `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ppp::v2;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use tests::fixtures::{entries, tls_keys, upstream};
use tests::h2client::{self, tls_connect_after};
use tests::raw::{get_req, RawConn};
use tests::{free_port, port_array, wait_for, Backend, Certs, Proxy, STEP_TIMEOUT};

/// How long to wait for an access log line or a log line.
const T: Duration = Duration::from_secs(10);

/// A v1 header for a TCP4 client `source` connecting to `port`.
fn v1(source: &str, port: u16) -> String {
    format!("PROXY TCP4 {source} 127.0.0.1 51234 {port}\r\n")
}

/// A v2 `PROXY` header from `source` to `destination`.
fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (
            source.parse::<SocketAddr>().unwrap(),
            destination.parse::<SocketAddr>().unwrap(),
        ),
    )
    // A TLV of the kind load balancers add (AWS: the VPC endpoint), which must be skipped.
    .write_tlv(0xEA_u8, b"\x01vpce-0123456789")
    .unwrap()
    .build()
    .unwrap()
}

/// The `X-Forwarded-For` the echo backend saw, from its `/headers` answer.
fn forwarded_for(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    v["x-forwarded-for"].as_str().unwrap_or_default().to_owned()
}

/// A `[[listeners]]` entry on `port` expecting the header, plus `extra` keys.
fn pp_listener(port: u16, extra: &str) -> String {
    format!("[[listeners]]\nlisten = \"127.0.0.1:{port}\"\nproxy_protocol = true\n{extra}\n")
}

/// A proxy config: `server` table, `listeners`, a JSON access log to `log`, one upstream.
fn config(server: &str, listeners: &str, log: &Path, b: &Backend) -> String {
    format!(
        "{server}\n[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n\n{listeners}\n{}",
        log.display(),
        upstream("app", None, &entries(&[b]))
    )
}

/// Waits for an access log line of `path` for a request from `client`.
async fn logged_client(path: &Path, client: &str) {
    let want = format!("\"client\":\"{client}\"");
    wait_for(T, &format!("an access log line from {client}"), || {
        let want = want.clone();
        async move {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines().any(|l| l.contains(&want)).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn headers_give_the_client_address_once_per_connection_on_both_paths() {
    let b = Backend::start("b1");
    // Kept-alive requests are served by our loop (`native`) or by pingora's: neither reads
    // a second header.
    for http1 in ["native", "pingora"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let port = free_port();
        let proxy = Proxy::start_config(&config(
            &format!("[server]\nthreads = 2\nhttp1 = \"{http1}\"\n"),
            &pp_listener(port, ""),
            &log,
            &b,
        ));

        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(v1("203.0.113.7", port)).await;
        for i in 0..3 {
            let r = c.exchange(get_req("/headers")).await;
            assert_eq!(r.status, 200, "{http1}, request {i}: {}", r.text());
            assert_eq!(
                forwarded_for(&r.body),
                "203.0.113.7",
                "{http1}, request {i}"
            );
        }
        logged_client(&log, "203.0.113.7").await;

        // v2, IPv6, the header and the request in separate writes.
        let mut c = RawConn::connect(proxy.addr()).await;
        c.io.set_nodelay(true).unwrap();
        let header = v2_header("[2001:db8::7]:40000", &format!("[2001:db8::1]:{port}"));
        let (first, rest) = header.split_at(10);
        c.send(first).await;
        c.send(rest).await;
        for i in 0..2 {
            let r = c.exchange(get_req("/headers")).await;
            assert_eq!(r.status, 200, "{http1}, v2 request {i}: {}", r.text());
            assert_eq!(
                forwarded_for(&r.body),
                "2001:db8::7",
                "{http1}, v2 request {i}"
            );
        }
        logged_client(&log, "2001:db8::7").await;

        // The balancer's own check (v2 LOCAL): the connection's own address stands.
        let local = v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(&local).await;
        let r = c.exchange(get_req("/headers")).await;
        assert_eq!(r.status, 200, "{http1}, LOCAL: {}", r.text());
        assert_eq!(forwarded_for(&r.body), "127.0.0.1", "{http1}, LOCAL");
    }
}

#[tokio::test]
async fn tls_listeners_read_the_header_before_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let port = free_port();
    let proxy = Proxy::start_config(&config(
        "[server]\nthreads = 2\n",
        &pp_listener(port, &tls_keys(&certs.cert, &certs.key)),
        &log,
        &b,
    ));
    let ca = certs.ca_pem();

    // HTTP/1.1 over TLS, v2 header.
    let header = v2_header("198.51.100.9:5000", &format!("127.0.0.1:{port}"));
    let tls = tls_connect_after(&ca, port, &[b"http/1.1"], &header).await;
    let mut c = RawConn::new(tls);
    for i in 0..2 {
        c.io.write_all(get_req("/headers").as_bytes())
            .await
            .unwrap();
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(forwarded_for(&r.body), "198.51.100.9", "request {i}");
    }

    // h2, v1 TCP6 header.
    let header = format!("PROXY TCP6 2001:db8::42 ::1 40001 {port}\r\n");
    let tls = tls_connect_after(&ca, port, &[b"h2"], header.as_bytes()).await;
    let h2 = h2client::handshake(tls).await;
    for i in 0..2 {
        let (status, body) = h2client::get(&h2, "https://localhost/headers")
            .await
            .unwrap();
        assert_eq!(status, 200, "h2 request {i}: {body}");
        assert_eq!(forwarded_for(body.as_bytes()), "2001:db8::42", "h2 {i}");
    }
    logged_client(&log, "2001:db8::42").await;
    drop(proxy);
}

#[tokio::test]
async fn connections_without_a_valid_header_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let listeners = format!(
        "{}{}",
        pp_listener(plain, ""),
        pp_listener(tls, &tls_keys(&certs.cert, &certs.key))
    );
    let proxy = Proxy::start_config(&config(
        "[server]\nthreads = 2\n[limits]\nheader_read_timeout = \"1s\"\n",
        &listeners,
        &log,
        &b,
    ));

    // A plain request straight to the listener is told why, not cut off.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/headers")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("PROXY protocol header"), "{}", r.text());
    c.expect_eof("after the 400").await;
    proxy.wait_log(
        "connection refused: no PROXY protocol header: the connection began with an HTTP request",
        T,
    );

    // A malformed header, a header cut short, nothing at all: closed without an answer.
    let addr = proxy.addr();
    let mut c = RawConn::connect(addr).await;
    c.send("PROXY TCP4 nonsense here\r\nGET / HTTP/1.1\r\n\r\n")
        .await;
    c.expect_eof("a malformed v1 header").await;
    let mut c = RawConn::connect(addr).await;
    c.send("PROXY TCP4 203.0.113.7 127.0.0.1 512").await;
    c.expect_eof("a header cut short (header_read_timeout)")
        .await;
    let mut c = RawConn::connect(addr).await;
    c.expect_eof("no header (header_read_timeout)").await;

    // A TLS client without a header: no handshake.
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tests::ws::rustls_client_config(
        &certs.ca_pem(),
        &[b"http/1.1"],
    ));
    let name = "localhost".try_into().unwrap();
    let handshake = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("the handshake ends in time");
    assert!(handshake.is_err(), "a TLS handshake without a header");

    // Nothing reached the backend.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines().all(|l| l.contains("\"status\":400")),
        "only the 400 is logged: {text}"
    );
}

#[tokio::test]
async fn only_listed_load_balancers_may_connect() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let [listed, elsewhere] = port_array();
    let listeners = format!(
        "{}{}",
        pp_listener(listed, "proxy_protocol_from = [\"127.0.0.0/8\"]"),
        pp_listener(elsewhere, "proxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]"),
    );
    let proxy = Proxy::start_config(&config("[server]\nthreads = 2\n", &listeners, &log, &b));

    let mut c = RawConn::connect(SocketAddr::from(([127, 0, 0, 1], listed))).await;
    c.send(v1("203.0.113.8", listed)).await;
    let r = c.exchange(get_req("/headers")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(forwarded_for(&r.body), "203.0.113.8");

    // A valid header from a peer that is not a listed balancer claims nothing.
    let mut c = RawConn::connect(SocketAddr::from(([127, 0, 0, 1], elsewhere))).await;
    c.send(format!(
        "{}{}",
        v1("203.0.113.8", elsewhere),
        get_req("/headers")
    ))
    .await;
    c.expect_eof("a peer not in proxy_protocol_from").await;
    proxy.wait_log("not in the listener's proxy_protocol_from", T);
}

/// Over `max_connections`, a connection's header is still read: the 503's access-log line
/// names the client behind the load balancer, not the balancer.
#[tokio::test]
async fn a_connection_over_the_cap_is_logged_with_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let port = free_port();
    let proxy = Proxy::start_config(&config(
        "[server]\nthreads = 2\n[limits]\nmax_connections = 1\n",
        &pp_listener(port, ""),
        &log,
        &b,
    ));

    // The one connection the cap allows, kept open. The start-up's readiness probe (a
    // connect and close) counts until the proxy has seen it close: until then this one
    // may be refused too.
    let addr = proxy.addr();
    let held = wait_for(T, "a connection within the cap", || async move {
        let mut c = RawConn::connect(addr).await;
        c.send(v1("203.0.113.7", port)).await;
        let r = c.exchange(get_req("/headers")).await;
        (r.status == 200).then_some(c)
    })
    .await;

    // The refusals but those of the attempts above (whose lines may still be coming).
    let refusals = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"status\":503") && !l.contains("203.0.113.7"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = refusals(&log).len();
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange(format!(
            "{}{}",
            v1("198.51.100.23", port),
            get_req("/headers")
        ))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let line = wait_for(T, "the 503's access log line", || {
        let lines = refusals(&log);
        async move { lines.get(before).cloned() }
    })
    .await;
    assert!(
        line.contains("\"client\":\"198.51.100.23\""),
        "the client behind the balancer: {line}"
    );
    drop(held);
}

#[tokio::test]
async fn quick_mode_and_check_show_the_setting() {
    let b = Backend::start("b1");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let backend = b.addr().to_string();
    let proxy = Proxy::start_quick(&[
        "--listen",
        &listen,
        "--backend",
        &backend,
        "--proxy-protocol",
    ]);
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(v1("192.0.2.44", port)).await;
    let r = c.exchange(get_req("/headers")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(forwarded_for(&r.body), "192.0.2.44");

    let check = Proxy::check(&format!(
        "{}\n{}",
        pp_listener(free_port(), "proxy_protocol_from = [\"10.0.0.0/8\"]"),
        upstream("app", None, &entries(&[&b]))
    ));
    assert_eq!(check.code(), Some(0), "{}", check.output());
    assert!(
        check.output().contains("proxy_protocol from 10.0.0.0/8"),
        "{}",
        check.output()
    );
}

/// A connection that has not begun its header is idle, as a plain connection that has not
/// begun its first request: a graceful stop closes it at once, instead of keeping the
/// process for `header_read_timeout` or the whole grace period. A load
/// balancer may well hold such connections (a client's preconnect, passed on as it came).
#[tokio::test]
async fn a_stop_closes_connections_whose_header_has_not_begun() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let port = free_port();
    let mut proxy = Proxy::start_config(&config(
        "[server]\nthreads = 2\ngrace_period = \"60s\"\n[limits]\nheader_read_timeout = \"60s\"\n",
        &pp_listener(port, ""),
        &log,
        &b,
    ));
    let mut idle = RawConn::connect(proxy.addr()).await;
    // A listener's connections are accepted in turn: once a later one has been answered,
    // the idle one is in the proxy's hands.
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(v1("203.0.113.9", port)).await;
    let r = c.exchange(get_req("/headers")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(c);

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    idle.expect_eof("a connection without its header when the proxy stops")
        .await;
    assert!(
        proxy.wait_exit(T).is_some(),
        "the proxy exits without waiting out the header timeout or the grace period"
    );
}

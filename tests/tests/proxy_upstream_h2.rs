//! Upstreams that speak h2 (`protocol = "h2"`): h2c with prior knowledge to plain backends,
//! ALPN h2 to TLS ones, for HTTP/1.1, HTTP/1.0 and h2 clients alike; trailers (gRPC's
//! `grpc-status`) reach h2 clients; health checks speak h2 to backends that speak nothing
//! else; requests share connections; WebSocket upgrades still use HTTP/1.1.
//! Backends are `echo-backend --h2-only` (refuses HTTP/1.1, as a gRPC server does) or
//! `--h2c` (both, as Go's h2c handler or hyper's auto server).

#![allow(clippy::unwrap_used)]

use tests::admin::{wait_backend, wait_health};
use tests::fixtures::{http_health, listener, tls_keys, TWO_THREADS};
use tests::raw::RawConn;
use tests::ws::{ws_connect, ws_echo};
use tests::{Backend, Certs, Proxy, TestCa, STEP_TIMEOUT};

/// An upstream `app` over `backend` speaking h2, with `extra` keys in its table.
fn h2_upstream(backend: &Backend, extra: &str) -> String {
    format!(
        "[upstreams.app]\nprotocol = \"h2\"\n{extra}backends = [{{ addr = \"{}\", id = \"{}\" }}]\n",
        backend.addr(),
        backend.id()
    )
}

/// A proxy with a plain and a TLS listener in front of `upstreams` (one of them `app`,
/// routed for every path); its certificates live in `dir`.
fn proxy_with(dir: &std::path::Path, upstreams: &str) -> (Proxy, Certs) {
    let certs = Certs::generate(dir, &["localhost", "127.0.0.1"]);
    let [plain, tls] = tests::port_array();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}{}\n\n{upstreams}",
        listener(plain),
        listener(tls),
        tls_keys(&certs.cert, &certs.key),
    ));
    (proxy, certs)
}

#[tokio::test]
async fn h2c_backends_serve_http1_http10_and_h2_clients_with_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start_with("g1", &["--h2-only"]);
    // Active checks: the backend gets traffic only once an h2 check has passed, and an
    // HTTP/1.1 check would fail against it.
    let (proxy, certs) = proxy_with(
        dir.path(),
        &format!(
            "{}{}",
            h2_upstream(&backend, ""),
            http_health("app", "100ms", "1s", 1, 1)
        ),
    );
    wait_health(&proxy, "g1", "up", STEP_TIMEOUT).await;
    // HTTP/1.1, two requests on one kept-alive connection: both reach the backend over h2.
    let mut c = RawConn::connect(proxy.addr()).await;
    for _ in 0..2 {
        let r = c
            .exchange("GET /version HTTP/1.1\r\nHost: test\r\n\r\n")
            .await;
        assert_eq!((r.status, r.text().as_str()), (200, "HTTP/2.0"), "{r:?}");
    }
    // A body, and HTTP/1.0.
    let r = c
        .exchange("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
    let mut c10 = RawConn::connect(proxy.addr()).await;
    let r = c10.exchange("GET /id HTTP/1.0\r\nHost: test\r\n\r\n").await;
    assert_eq!((r.status, r.text().as_str()), (200, "g1"), "{r:?}");
    // An h2 client gets the backend's trailers, as a gRPC client needs its grpc-status.
    let h2 = tests::h2client::connect(&certs.ca_pem(), proxy.tls_addr().port()).await;
    let full = tests::h2client::get_full(&h2, &proxy.https_url("/trailers"))
        .await
        .unwrap();
    assert_eq!((full.status.as_u16(), full.body.as_str()), (200, "g1"));
    let trailers = full.trailers.expect("trailers relayed");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    assert_eq!(trailers.get("x-trailer-id").unwrap(), "g1", "{trailers:?}");
}

#[tokio::test]
async fn concurrent_requests_share_an_h2_connection_to_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start_with("g2", &["--h2-only"]);
    let (proxy, certs) = proxy_with(dir.path(), &h2_upstream(&backend, ""));
    let h2 = tests::h2client::connect(&certs.ca_pem(), proxy.tls_addr().port()).await;
    // Each request starts while the ones before it are in flight (pingora opens a
    // connection per request while none is open yet, so a burst would race).
    let url = proxy.https_url("/delay/2000");
    let mut inflight = Vec::new();
    for n in 1..=5u64 {
        let (h2, url) = (h2.clone(), url.clone());
        inflight.push(tokio::spawn(async move {
            tests::h2client::get(&h2, &url).await
        }));
        wait_backend(&proxy, "g2", STEP_TIMEOUT, "requests in flight", |b| {
            b["active"] == n
        })
        .await;
    }
    for r in inflight {
        assert_eq!(
            r.await.unwrap().unwrap(),
            (http::StatusCode::OK, "g2".to_owned())
        );
    }
    let (_, stats) = tests::h2client::get(&h2, &proxy.https_url("/stats"))
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    // One connection carried the five at once (pingora's default, one stream per
    // connection, would have opened one per request in flight).
    assert_eq!(stats["connections"], 1, "{stats}");
}

#[tokio::test]
async fn tls_backends_are_reached_by_alpn_h2_and_checked_over_h2() {
    let dir = tempfile::tempdir().unwrap();
    // Apart from the proxy's own CA, which `proxy_with` writes to `dir`.
    let backend_dir = dir.path().join("backend");
    std::fs::create_dir_all(&backend_dir).unwrap();
    let ca = TestCa::new(&backend_dir);
    let (cert, key) = ca.issue(&["backend.test"]);
    let backend = Backend::start_with(
        "g3",
        &[
            "--h2-only",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let upstream = format!(
        "{}[upstreams.app.tls]\nserver_name = \"backend.test\"\nca = \"{}\"\n{}",
        h2_upstream(&backend, ""),
        ca.pem.display(),
        http_health("app", "100ms", "1s", 1, 1),
    );
    let (proxy, certs) = proxy_with(dir.path(), &upstream);
    wait_health(&proxy, "g3", "up", STEP_TIMEOUT).await;
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange("GET /version HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "HTTP/2.0"), "{r:?}");
    let h2 = tests::h2client::connect(&certs.ca_pem(), proxy.tls_addr().port()).await;
    let full = tests::h2client::get_full(&h2, &proxy.https_url("/trailers"))
        .await
        .unwrap();
    assert_eq!(full.trailers.unwrap().get("grpc-status").unwrap(), "0");
}

#[tokio::test]
async fn websocket_upgrades_to_an_h2_upstream_use_http1() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start_with("g4", &["--h2c"]);
    let (proxy, _certs) = proxy_with(dir.path(), &h2_upstream(&backend, ""));
    let (mut ws, hello) = ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(hello, "g4");
    ws_echo(&mut ws, "over HTTP/1.1").await;
    let r = tests::http::get(&proxy.url("/version")).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "HTTP/2.0"),
        "{r:?}"
    );
}

#[tokio::test]
async fn quick_mode_speaks_h2_with_backend_h2() {
    let backend = Backend::start_with("g5", &["--h2-only"]);
    let listen = format!("127.0.0.1:{}", tests::free_port());
    let b = backend.addr().to_string();
    let proxy = Proxy::start_quick(&["--listen", &listen, "--backend", &b, "--backend-h2"]);
    let r = tests::http::get(&proxy.url("/version")).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "HTTP/2.0"),
        "{r:?}"
    );
}

#[test]
fn an_unknown_protocol_is_a_config_error_with_its_key() {
    let out = Proxy::check(
        "[[listeners]]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.app]\nprotocol = \"h3\"\n\
         backends = [{ addr = \"127.0.0.1:2\" }]\n",
    );
    let text = out.expect_refusal("protocol = \"h3\"");
    assert!(text.contains(":5: upstreams.app.protocol"), "{text}");
    assert!(text.contains("`http1`") && text.contains("`h2`"), "{text}");
    // A valid one is shown in the summary.
    let out = Proxy::check(
        "[[listeners]]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.app]\nprotocol = \"h2\"\n\
         backends = [{ addr = \"127.0.0.1:2\" }]\n",
    );
    assert_eq!(out.code(), Some(0), "{}", out.output());
    assert!(
        out.output().contains("strategy round_robin  h2"),
        "{}",
        out.output()
    );
}

//! TLS to backends (`[upstreams.NAME.tls]`) end to end: plain requests on Switchyard's own
//! HTTP/1 path, requests pingora proxies (chunked, HTTP/1.0, h2 clients), WebSockets and
//! active health checks all reach `echo-backend` processes serving TLS with a test CA's
//! certificate; an untrusted or misnamed certificate gets a 502 with its reason, and bad
//! settings are config errors with their key — real processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;
use tests::admin::{admin_post, status, wait_health};
use tests::fixtures::{admin, listener, tls_keys, TWO_THREADS};
use tests::raw::RawConn;
use tests::{
    client, get, get_with, port_array, send, tls_client, wait_until, ws_connect, ws_echo, Alpn,
    Backend, Proxy, ProxyCmd, TestCa, STEP_TIMEOUT,
};

/// A test CA and an `echo-backend` serving TLS with a certificate for `backend.test` and
/// 127.0.0.1 that the CA signed.
struct TlsBackend {
    backend: Backend,
    ca: TestCa,
    _dir: TempDir,
}

impl TlsBackend {
    fn start(id: &str) -> TlsBackend {
        Self::start_with(id, &[])
    }

    /// [`TlsBackend::start`] with `args` for `echo-backend` (`--h2-only`).
    fn start_with(id: &str, args: &[&str]) -> TlsBackend {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let (cert, key) = ca.issue(&["backend.test", "127.0.0.1"]);
        let mut all = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let backend = Backend::start_with(id, &all);
        TlsBackend {
            backend,
            ca,
            _dir: dir,
        }
    }

    fn ca(&self) -> &Path {
        &self.ca.pem
    }
}

/// `[upstreams.<name>]` over `b` with `tls_table` as its `[upstreams.<name>.tls]` body and
/// a route for `/<name>/` (the echo backend answers its id to any path it does not know).
fn tls_upstream(name: &str, b: &Backend, tls_table: &str) -> String {
    routed(name, b, tls_table, &format!("/{name}/"))
}

/// [`tls_upstream`] with a route for `prefix`.
fn routed(name: &str, b: &Backend, tls_table: &str, prefix: &str) -> String {
    format!(
        "[upstreams.{name}]\nbackends = [{{ addr = \"{}\", id = \"{}\" }}]\n\
         [upstreams.{name}.tls]\n{tls_table}\n\
         [[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"{name}\"\n",
        b.addr(),
        b.id(),
    )
}

fn trusting(ca: &Path, server_name: &str) -> String {
    format!(
        "ca = \"{}\"\nserver_name = \"{server_name}\"\n",
        ca.display()
    )
}

#[tokio::test]
async fn requests_and_websockets_reach_a_tls_backend_on_every_path() {
    let tb = TlsBackend::start("t1");
    let [port] = port_array();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}",
        listener(port),
        routed("app", &tb.backend, &trusting(tb.ca(), "backend.test"), "/"),
    ));

    // Switchyard's own path, several requests on one client connection, a POST among
    // them (which checks the pooled TLS connection before reusing it): one backend
    // connection carries them all.
    let c = client();
    let r = get_with(&c, &proxy.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "t1"), "{r:?}");
    let r = send(c.post(proxy.url("/echo")).body("over tls")).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "over tls"),
        "{r:?}"
    );
    let r = get_with(&c, &proxy.url("/stats")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["connections"],
        1,
        "the pooled TLS connection was reused: {r:?}"
    );

    // Requests pingora proxies: a chunked body, and HTTP/1.0.
    let mut raw = RawConn::connect(proxy.addr()).await;
    let resp = raw
        .exchange(
            "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "hello"),
        "{resp:?}"
    );
    let mut raw = RawConn::connect(proxy.addr()).await;
    let resp = raw.exchange("GET /id HTTP/1.0\r\nHost: test\r\n\r\n").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "t1"), "{resp:?}");

    // A WebSocket: the backend's greeting, then an echo, through the TLS connection.
    let (mut ws, hello) = ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(hello, "t1", "the greeting names the backend");
    ws_echo(&mut ws, "through tls").await;
}

#[tokio::test]
async fn h2_clients_reach_a_tls_backend_through_pingora() {
    let tb = TlsBackend::start("t2");
    let dir = tempfile::tempdir().unwrap();
    let front = TestCa::new(dir.path());
    let (cert, key) = front.issue(&["localhost", "127.0.0.1"]);
    let [port] = port_array();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}{}\n{}\n{}",
        listener(port),
        tls_keys(&cert, &key),
        tls_upstream("app", &tb.backend, &trusting(tb.ca(), "backend.test")),
        tls_upstream("bad", &tb.backend, "server_name = \"other.test\"\n"),
    ));
    let c = tls_client(&std::fs::read(&front.pem).unwrap(), Alpn::H2);
    let r = get_with(&c, &proxy.https_url("/app/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "t2"), "{r:?}");
    // pingora's connector checks the name too.
    let r = get_with(&c, &proxy.https_url("/bad/id")).await;
    assert_eq!(r.status, 502, "{r:?}");
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_gets_502_unless_verify_is_off() {
    let tb = TlsBackend::start("t3");
    let [port] = port_array();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}\n{}\n{}",
        listener(port),
        // The system's roots, which do not hold the test CA.
        tls_upstream("untrusted", &tb.backend, "server_name = \"backend.test\"\n"),
        tls_upstream("misnamed", &tb.backend, &trusting(tb.ca(), "other.test")),
        tls_upstream("unchecked", &tb.backend, "verify = false\n"),
    ));
    for name in ["untrusted", "misnamed"] {
        let r = get(&proxy.url(&format!("/{name}/id"))).await;
        assert_eq!(r.status, 502, "{name}: {r:?}");
        assert!(
            r.body.contains("TLS handshake with the backend failed"),
            "{name}: {r:?}"
        );
        // The same for a WebSocket upgrade and for a request pingora proxies.
        let mut raw = RawConn::connect(proxy.addr()).await;
        let resp = raw
            .exchange(format!(
                "GET /{name}/ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ))
            .await;
        assert_eq!(resp.status, 502, "{name} upgrade: {resp:?}");
        assert!(
            resp.text()
                .contains("TLS handshake with the backend failed"),
            "{name} upgrade: {resp:?}"
        );
        let mut raw = RawConn::connect(proxy.addr()).await;
        let resp = raw
            .exchange(format!("GET /{name}/id HTTP/1.0\r\nHost: test\r\n\r\n"))
            .await;
        assert_eq!(resp.status, 502, "{name} via pingora: {resp:?}");
        assert!(
            resp.text()
                .contains("TLS handshake with the backend failed"),
            "{name} via pingora: {resp:?}"
        );
    }
    let r = get(&proxy.url("/unchecked/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "t3"), "{r:?}");
    let mut raw = RawConn::connect(proxy.addr()).await;
    let resp = raw
        .exchange("GET /unchecked/id HTTP/1.0\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "t3"), "{resp:?}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_backends_that_require_one() {
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = (dir.path().join("server"), dir.path().join("client"));
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&client_dir).unwrap();
    let server_ca = TestCa::new(&server_dir);
    let client_ca = TestCa::new(&client_dir);
    let (cert, key) = server_ca.issue(&["backend.test"]);
    let (client_cert, client_key) = client_ca.issue(&["switchyard.client"]);
    let backend = Backend::start_with(
        "m1",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            client_ca.pem.to_str().unwrap(),
        ],
    );
    let trusted = trusting(&server_ca.pem, "backend.test");
    let with_cert = format!(
        "{trusted}cert = \"{}\"\nkey = \"{}\"\n",
        client_cert.display(),
        client_key.display()
    );
    let [port] = port_array();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}\n{}",
        listener(port),
        tls_upstream("mtls", &backend, &with_cert),
        tls_upstream("nocert", &backend, &trusted),
    ));
    // Switchyard's own path, pingora's path and a WebSocket all present it.
    let r = get(&proxy.url("/mtls/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "m1"), "{r:?}");
    let mut raw = RawConn::connect(proxy.addr()).await;
    let resp = raw
        .exchange("GET /mtls/id HTTP/1.0\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "m1"), "{resp:?}");
    let (mut ws, hello) = ws_connect(&proxy.ws_url("/mtls/ws")).await;
    assert_eq!(hello, "m1");
    ws_echo(&mut ws, "mutual").await;
    // Without one the backend refuses the connection: a handshake failure, said so.
    let r = get(&proxy.url("/nocert/id")).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body.contains("TLS handshake with the backend failed"),
        "{r:?}"
    );
    // The log says why (once a minute at most).
    proxy.wait_log(
        "refused the TLS session: alert CertificateRequired",
        STEP_TIMEOUT,
    );
    let mut raw = RawConn::connect(proxy.addr()).await;
    let resp = raw
        .exchange("GET /nocert/id HTTP/1.0\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(
        resp.text()
            .contains("TLS handshake with the backend failed"),
        "via pingora: {resp:?}"
    );
}

#[tokio::test]
async fn a_reload_applies_new_tls_settings_to_the_next_connection() {
    let tb = TlsBackend::start("r1");
    let [port, admin_port] = port_array();
    let proxy = Proxy::start_config(&reloadable(
        port,
        admin_port,
        &tb,
        "server_name = \"backend.test\"\n",
    ));
    let reload = |tls_table: &str| {
        proxy.write_config(&reloadable(port, admin_port, &tb, tls_table));
        async {
            let r = admin_post(&proxy, "/reload", Some("t")).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    let c = client();
    let r = get_with(&c, &proxy.url("/id")).await;
    assert_eq!(
        r.status, 502,
        "the system's roots do not hold the test CA: {r:?}"
    );
    let s = status(&proxy).await;
    let tls = &s["upstreams"][0]["tls"];
    assert_eq!(
        (&tls["server_name"], &tls["ca"], &tls["verify"]),
        (&json!("backend.test"), &json!(null), &json!(true)),
        "{s}"
    );
    reload(&trusting(tb.ca(), "backend.test")).await;
    let r = get_with(&c, &proxy.url("/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "r1"), "{r:?}");
    let s = status(&proxy).await;
    let ca = tb.ca().display().to_string();
    assert_eq!(s["upstreams"][0]["tls"]["ca"], json!(ca), "{s}");
    // And back: the kept-alive connection opened under the old settings is not reused.
    reload(&trusting(tb.ca(), "other.test")).await;
    let r = get_with(&c, &proxy.url("/id")).await;
    assert_eq!(r.status, 502, "the name no longer matches: {r:?}");
}

/// pingora's path pools its backend connections too: a reload that changes only the
/// trusted roots must not go on using a connection verified under the old ones.
#[tokio::test]
async fn a_reload_that_changes_only_the_roots_is_applied_on_pingoras_path_too() {
    let tb = TlsBackend::start("r2");
    let other = TempDir::new().unwrap();
    let other_ca = TestCa::new(other.path());
    let [port, admin_port] = port_array();
    let config = |ca: &Path| reloadable(port, admin_port, &tb, &trusting(ca, "backend.test"));
    let proxy = Proxy::start_config(&config(tb.ca()));
    // HTTP/1.0 requests are proxied by pingora, which keeps the backend connection.
    let via_pingora = || async {
        let mut raw = RawConn::connect(proxy.addr()).await;
        raw.exchange("GET /id HTTP/1.0\r\nHost: test\r\n\r\n").await
    };
    let resp = via_pingora().await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "r2"), "{resp:?}");
    proxy.write_config(&config(&other_ca.pem));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resp = via_pingora().await;
    assert_eq!(
        resp.status, 502,
        "served on a connection the old roots verified: {resp:?}"
    );
}

/// A reload that leaves a TLS upstream as it was (another upstream and route added) keeps
/// its client, and so the backend connection it pools: the backend sees no new connection,
/// no new handshake. Each reload used to open a new one, the pooled connections of the old
/// settings going unused until they aged out.
#[tokio::test]
async fn a_reload_that_leaves_a_tls_upstream_as_it_was_keeps_its_backend_connections() {
    let tb = TlsBackend::start("r3");
    let [port, admin_port] = port_array();
    let tls = trusting(tb.ca(), "backend.test");
    let proxy = Proxy::start_config(&reloadable(port, admin_port, &tb, &tls));
    let c = client();
    // Through the proxy, on the route to `app`: the connection that asks is counted too.
    let connections = || async {
        let r = get_with(&c, &proxy.url("/stats")).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["connections"].as_u64().unwrap()
    };
    let r = get_with(&c, &proxy.url("/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "r3"), "{r:?}");
    assert_eq!(connections().await, 1);

    proxy.write_config(&format!(
        "{TWO_THREADS}\n{}\n{}\n{}\n{}",
        admin(admin_port, "t"),
        listener(port),
        tls_upstream("other", &tb.backend, &tls),
        routed("app", &tb.backend, &tls, "/")
    ));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report = &r.json()["report"];
    assert_eq!(
        (&report["upstreams"], &report["unchanged_upstreams"]),
        (&json!(2), &json!(1)),
        "{report}"
    );
    let r = get_with(&c, &proxy.url("/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "r3"), "{r:?}");
    assert_eq!(
        connections().await,
        1,
        "the reload dropped the pooled TLS connection"
    );
}

/// One TLS upstream for every path, and an admin listener whose token is `t`.
fn reloadable(port: u16, admin_port: u16, tb: &TlsBackend, tls_table: &str) -> String {
    format!(
        "{TWO_THREADS}\n{}\n{}\n{}",
        admin(admin_port, "t"),
        listener(port),
        routed("app", &tb.backend, tls_table, "/")
    )
}

#[tokio::test]
async fn health_checks_pass_only_through_a_trusted_handshake() {
    let tb = TlsBackend::start("t4");
    let [port] = port_array();
    let health = |name: &str, kind: &str| {
        format!(
            "[upstreams.{name}.health]\nkind = \"{kind}\"\n{}interval = \"100ms\"\nrise = 1\nfall = 1\n",
            if kind == "http" { "path = \"/healthz\"\n" } else { "" }
        )
    };
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        listener(port),
        tls_upstream("good", &tb.backend, &trusting(tb.ca(), "backend.test")),
        health("good", "http"),
        tls_upstream("bad", &tb.backend, "server_name = \"backend.test\"\n"),
        health("bad", "http"),
        // A TCP check on a TLS upstream does the handshake too.
        tls_upstream("badtcp", &tb.backend, "server_name = \"backend.test\"\n"),
        health("badtcp", "tcp"),
    ));
    // With active checks a backend takes traffic only after its first passing check.
    wait_until(
        STEP_TIMEOUT,
        "the trusted backend passes its check",
        || async { get(&proxy.url("/good/id")).await.status == 200 },
    )
    .await;
    // Several intervals later, the untrusted ones still have not passed one.
    let seen = wait_for_checks(&tb, 5).await;
    for name in ["bad", "badtcp"] {
        let r = get(&proxy.url(&format!("/{name}/id"))).await;
        assert_eq!(r.status, 503, "{name} after {seen} checks: {r:?}");
        assert!(r.body.contains("no healthy backend"), "{name}: {r:?}");
    }
}

/// An HTTP check over TLS sends its `headers` and reads the body for `expect_body`, over
/// HTTP/1.1 and over h2 (chosen by ALPN): each backend's `/headers` answers the fields it
/// got, and the token among them keeps it up; a reload that drops the fields takes both
/// down.
#[tokio::test]
async fn an_http_check_over_tls_sends_its_fields_over_http1_and_h2() {
    let h1 = TlsBackend::start("t6");
    let h2 = TlsBackend::start_with("t7", &["--h2-only"]);
    let [port] = port_array();
    let upstream = |name: &str, protocol: &str, tb: &TlsBackend, fields: &str| {
        format!(
            "[upstreams.{name}]\nprotocol = \"{protocol}\"\n\
             backends = [{{ addr = \"{}\", id = \"{}\" }}]\n\
             [upstreams.{name}.tls]\n{}\
             [upstreams.{name}.health]\nkind = \"http\"\npath = \"/headers\"\n\
             interval = \"100ms\"\nrise = 1\nfall = 1\nexpect_body = \"s3cret\"\n{fields}",
            tb.backend.addr(),
            tb.backend.id(),
            trusting(tb.ca(), "backend.test"),
        )
    };
    let config = |fields: &str| {
        format!(
            "{TWO_THREADS}\n{}\n{}\n{}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"one\"\n",
            listener(port),
            upstream("one", "http1", &h1, fields),
            upstream("two", "h2", &h2, fields),
        )
    };
    let proxy = Proxy::start_config(&config("headers = { \"X-Health-Token\" = \"s3cret\" }\n"));
    for id in ["t6", "t7"] {
        wait_health(&proxy, id, "up", STEP_TIMEOUT).await;
    }
    proxy.reload(&config(""));
    for id in ["t6", "t7"] {
        wait_health(&proxy, id, "down", STEP_TIMEOUT).await;
    }
}

/// Waits until the backend has answered `n` more health checks (the `healthz` count of its
/// `/stats`, asked directly), returning the count.
async fn wait_for_checks(tb: &TlsBackend, n: u64) -> u64 {
    let c = tls_client(&std::fs::read(tb.ca()).unwrap(), Alpn::Http1);
    let url = tb.backend.url("/stats").replace("http://", "https://");
    let checks = || async { get_with(&c, &url).await.json()["healthz"].as_u64().unwrap() };
    let start = checks().await;
    wait_until(STEP_TIMEOUT, "the backend answers more checks", || async {
        checks().await >= start + n
    })
    .await;
    checks().await
}

#[test]
fn bad_upstream_tls_settings_are_config_errors_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let ca = TestCa::new(dir.path());
    let (other_cert, _) = ca.issue(&["one.test"]);
    let (_, mismatched_key) = ca.issue(&["two.test"]);
    let b = Backend::start("t5");
    let [port] = port_array();
    let config =
        |tls_table: &str| format!("{}\n{}", listener(port), tls_upstream("app", &b, tls_table));
    let cases = [
        (
            format!("ca = \"{}\"\n", dir.path().join("missing.pem").display()),
            "upstreams.app.tls.ca",
            "cannot read",
        ),
        (
            format!("ca = \"{}\"\n", garbage.display()),
            "upstreams.app.tls.ca",
            "no PEM certificate",
        ),
        (
            "server_name = \"bad name!\"\n".to_owned(),
            "upstreams.app.tls.server_name",
            "bad name!",
        ),
        ("verfy = false\n".to_owned(), "upstreams.app.tls", "verfy"),
        (
            format!("cert = \"{}\"\n", other_cert.display()),
            "upstreams.app.tls.key",
            "required with `cert`",
        ),
        (
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                other_cert.display(),
                mismatched_key.display()
            ),
            "upstreams.app.tls.key",
            "does not match the certificate",
        ),
    ];
    for (table, key, detail) in cases {
        let checked = Proxy::check(&config(&table));
        assert_eq!(checked.code(), Some(1), "{table}: {}", checked.output());
        let out = checked.output();
        assert!(out.contains(key), "{table}: wants {key}: {out}");
        assert!(out.contains(detail), "{table}: wants {detail}: {out}");
        assert!(
            out.contains("proxy.toml:"),
            "{table}: wants file:line: {out}"
        );
        let refused = ProxyCmd::config(&config(&table))
            .run_to_exit(Duration::from_secs(20))
            .expect_refusal("the proxy");
        assert!(refused.contains(key), "{table}: at start: {refused}");
    }
    // verify = false is allowed, with a warning.
    let checked = Proxy::check(&config("verify = false\n"));
    assert_eq!(checked.code(), Some(0), "{}", checked.output());
    assert!(
        checked.output().contains("upstreams.app.tls.verify"),
        "{}",
        checked.output()
    );
}

#[tokio::test]
async fn quick_mode_reaches_tls_backends_and_names_the_flag_of_a_bad_setting() {
    let tb = TlsBackend::start("q1");
    let listen = format!("127.0.0.1:{}", tests::free_port());
    let (addr, ca) = (tb.backend.addr().to_string(), tb.ca().display().to_string());
    let proxy = Proxy::start_quick(&[
        "--listen",
        &listen,
        "--backend",
        &addr,
        "--backend-ca",
        &ca,
        "--backend-server-name",
        "backend.test",
    ]);
    let r = get(&proxy.url("/id")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "q1"), "{r:?}");
    // --backend-tls alone checks against the system's roots, which lack the test CA.
    let listen = format!("127.0.0.1:{}", tests::free_port());
    let proxy = Proxy::start_quick(&["--listen", &listen, "--backend", &addr, "--backend-tls"]);
    let r = get(&proxy.url("/id")).await;
    assert_eq!(r.status, 502, "{r:?}");

    let missing = tb._dir.path().join("missing.pem").display().to_string();
    let out = ProxyCmd::quick(&[
        "--listen",
        &listen,
        "--backend",
        &addr,
        "--backend-ca",
        &missing,
    ])
    .run_to_exit(Duration::from_secs(20))
    .expect_refusal("the proxy");
    assert!(
        out.contains("--backend-ca") && out.contains("cannot read"),
        "{out}"
    );
}

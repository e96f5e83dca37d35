//! Client certificates on TLS listeners (mutual TLS) end to end: required and optional
//! client certificates, revocation lists, `x-forwarded-client-cert` on every path (the
//! HTTP/1 path, a request lent to pingora, h2, WebSocket upgrades) and never a client's own,
//! a reload that changes the CA without a restart, and clear errors for bad files — real
//! `echo-backend` and `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;
use tests::admin::{admin_post, reload_needing};
use tests::fixtures::{admin, entries, listener, upstream, TWO_THREADS};
use tests::http::{tls_builder, try_send};
use tests::ws::{rustls_client_config_with, ws_open, WsOptions};
use tests::{
    free_port, get_with, port_array, send, Alpn, Backend, Certs, ClientCert, Proxy, TestCa,
    STEP_TIMEOUT,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const XFCC: &str = "x-forwarded-client-cert";

/// The listener's `tls` table: the server's certificate and `extra` keys.
fn tls_table(certs: &Certs, extra: &str) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\"{extra} }}",
        certs.cert.display(),
        certs.key.display()
    )
}

/// `, client_ca = "<ca>"` and more keys.
fn client_ca(ca: &Path, more: &str) -> String {
    format!(", client_ca = \"{}\"{more}", ca.display())
}

/// A plain listener, a TLS listener with `tls`, an admin listener (token `t`), one upstream.
fn config(plain: u16, tls: u16, admin_port: u16, backend: &Backend, keys: &str) -> String {
    format!(
        "{TWO_THREADS}\n{}\n{}\n{}{keys}\n\n{}",
        admin(admin_port, "t"),
        listener(plain),
        listener(tls),
        upstream("app", None, &entries(&[backend]))
    )
}

/// The server certificate (trusted by clients through `server.ca`), the CA that issues
/// client certificates, an unrelated one, and a proxy asking for client certificates with
/// `more` keys after `client_ca`.
struct Mtls {
    proxy: Proxy,
    _backend: Backend,
    server: Certs,
    clients: TestCa,
    stranger: TestCa,
    tls: u16,
    _dirs: [TempDir; 3],
}

impl Mtls {
    fn start(more: &str) -> Mtls {
        let dirs = [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        ];
        let server = Certs::generate(dirs[0].path(), &["localhost", "127.0.0.1"]);
        let clients = TestCa::new(dirs[1].path());
        let stranger = TestCa::new(dirs[2].path());
        let backend = Backend::start("b1");
        let [plain, tls] = port_array();
        let keys = tls_table(&server, &client_ca(&clients.pem, more));
        let proxy = Proxy::start_config(&config(plain, tls, free_port(), &backend, &keys));
        Mtls {
            proxy,
            _backend: backend,
            server,
            clients,
            stranger,
            tls,
            _dirs: dirs,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.tls)
    }
}

/// An HTTPS client trusting the proxy's CA, presenting `cert` when given.
fn client(server: &Certs, alpn: Alpn, cert: Option<&ClientCert>) -> reqwest::Client {
    let mut b = tls_builder(&server.ca_pem(), alpn);
    if let Some(c) = cert {
        b = b.identity(reqwest::Identity::from_pem(&c.identity_pem()).unwrap());
    }
    b.build().unwrap()
}

/// What the backend got as `x-forwarded-client-cert` for `GET /headers` (None: none), with
/// a forged one sent by the client in both spellings; the status must be 200.
async fn xfcc_seen(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = send(
        client
            .get(url)
            .header(XFCC, "Hash=forged;Subject=\"CN=admin\"")
            .header("x_forwarded_client_cert", "Hash=forged"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let h = r.json();
    assert!(h.get("x_forwarded_client_cert").is_none(), "{h}");
    h.get(XFCC).map(|v| v.as_str().unwrap().to_owned())
}

/// Envoy's format: `Hash=<sha256 of the DER>;Subject="<RFC 4514>";URI=<first URI name>`.
fn expected_xfcc(cert: &ClientCert, cn: &str) -> String {
    format!(
        "Hash={};Subject=\"CN={cn},O=Switchyard tests\";URI=spiffe://switchyard.test/{cn}",
        cert.sha256_hex()
    )
}

/// Whether a request over a fresh connection with `cert` (or none) is served.
async fn served(m: &Mtls, cert: Option<&ClientCert>) -> bool {
    served_at(&m.server, m.tls, cert).await
}

/// Whether a request to the TLS listener on `port` over a fresh connection with `cert` (or
/// none) is served.
async fn served_at(server: &Certs, port: u16, cert: Option<&ClientCert>) -> bool {
    let c = client(server, Alpn::Http1, cert);
    let url = format!("https://localhost:{port}/id");
    matches!(try_send(c.get(url)).await, Ok(r) if r.status == 200)
}

/// For the reload tests: the server's certificate, two client CAs with a client certificate
/// each (`one`, `two`), and a proxy started with no client certificate checks.
struct Reloadable {
    proxy: Proxy,
    backend: Backend,
    server: Certs,
    ca1: TestCa,
    ca2: TestCa,
    one: ClientCert,
    two: ClientCert,
    /// Plain, TLS and admin listeners.
    ports: [u16; 3],
    dirs: [TempDir; 3],
}

impl Reloadable {
    fn start() -> Reloadable {
        let dirs = [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        ];
        let server = Certs::generate(dirs[0].path(), &["localhost", "127.0.0.1"]);
        let (ca1, ca2) = (TestCa::new(dirs[1].path()), TestCa::new(dirs[2].path()));
        let (one, two) = (ca1.issue_client("one", 1), ca2.issue_client("two", 1));
        let backend = Backend::start("b1");
        let ports = port_array();
        let [plain, tls, admin_port] = ports;
        let toml = config(plain, tls, admin_port, &backend, &tls_table(&server, ""));
        Reloadable {
            proxy: Proxy::start_config(&toml),
            backend,
            server,
            ca1,
            ca2,
            one,
            two,
            ports,
            dirs,
        }
    }

    /// The config with `extra` keys in the TLS listener's table.
    fn with(&self, extra: &str) -> String {
        let [plain, tls, admin_port] = self.ports;
        config(
            plain,
            tls,
            admin_port,
            &self.backend,
            &tls_table(&self.server, extra),
        )
    }

    fn tls(&self) -> u16 {
        self.ports[1]
    }

    async fn served(&self, cert: Option<&ClientCert>) -> bool {
        served_at(&self.server, self.tls(), cert).await
    }
}

/// A raw HTTP/1.0 request over TLS with `cert` (pingora's path takes HTTP/1.0 requests),
/// read to the end.
async fn http10_over_tls(m: &Mtls, cert: &ClientCert, request: &str) -> String {
    let config = rustls_client_config_with(&m.server.ca_pem(), &[b"http/1.1"], Some(cert));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.tls))
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(STEP_TIMEOUT, exchange).await.unwrap()
}

#[tokio::test]
async fn a_required_client_certificate_is_verified_and_named_to_the_backend_on_every_path() {
    let m = Mtls::start("");
    let alice = m.clients.issue_client("alice", 1);
    let want = expected_xfcc(&alice, "alice");

    // No certificate, or one from another CA: no request gets through.
    assert!(!served(&m, None).await, "a client without a certificate");
    let mallory = m.stranger.issue_client("mallory", 1);
    assert!(
        !served(&m, Some(&mallory)).await,
        "another CA's certificate"
    );

    // HTTP/1.1 (Switchyard's own path): ours, not the forged one.
    let c = client(&m.server, Alpn::Http1, Some(&alice));
    assert_eq!(
        xfcc_seen(&c, &m.url("/headers")).await.as_deref(),
        Some(&*want)
    );
    // A second request on the same connection carries it too.
    assert_eq!(
        xfcc_seen(&c, &m.url("/headers")).await.as_deref(),
        Some(&*want)
    );

    // h2 (pingora's path).
    let c = client(&m.server, Alpn::H2, Some(&alice));
    let r = send(c.get(m.url("/headers")).header(XFCC, "Hash=forged")).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()[XFCC], *want, "{}", r.body);

    // HTTP/1.0, lent to pingora.
    let answer = http10_over_tls(
        &m,
        &alice,
        "GET /headers HTTP/1.0\r\nHost: localhost\r\nX-Forwarded-Client-Cert: Hash=forged\r\n\r\n",
    )
    .await;
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let h: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(h[XFCC], *want, "{answer}");

    // A WebSocket upgrade: the backend's 101 lists the headers it got.
    let opts = WsOptions {
        ca_pem: Some(m.server.ca_pem()),
        client_cert: Some(alice.clone()),
        headers: vec![(XFCC.to_owned(), "Hash=forged".to_owned())],
        ..WsOptions::default()
    };
    let (_ws, resp) = ws_open(&format!("wss://localhost:{}/ws", m.tls), &opts)
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(
        resp.headers()
            .get("x-request-headers")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(seen[XFCC], *want, "{seen}");

    // A WebSocket without a certificate is refused with the rest.
    let opts = WsOptions {
        ca_pem: Some(m.server.ca_pem()),
        ..WsOptions::default()
    };
    assert!(ws_open(&format!("wss://localhost:{}/ws", m.tls), &opts)
        .await
        .is_err());

    // The plain listener never passes a client's own on.
    let plain = tests::client();
    assert_eq!(get_with(&plain, &m.proxy.url("/id")).await.status, 200);
    assert_eq!(xfcc_seen(&plain, &m.proxy.url("/headers")).await, None);
}

#[tokio::test]
async fn an_optional_client_certificate_lets_clients_without_one_in_unnamed() {
    let m = Mtls::start(", client_auth = \"optional\"");
    let bob = m.clients.issue_client("bob", 7);

    for alpn in [Alpn::Http1, Alpn::H2] {
        let anonymous = client(&m.server, alpn, None);
        assert_eq!(
            xfcc_seen(&anonymous, &m.url("/headers")).await,
            None,
            "{alpn:?}: the forged field must not reach the backend"
        );
        let c = client(&m.server, alpn, Some(&bob));
        assert_eq!(
            xfcc_seen(&c, &m.url("/headers")).await,
            Some(expected_xfcc(&bob, "bob")),
            "{alpn:?}"
        );
    }
    // A certificate that does not verify is still refused.
    let mallory = m.stranger.issue_client("mallory", 7);
    assert!(!served(&m, Some(&mallory)).await);
    assert!(served(&m, None).await);
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let ca_dir = tempfile::tempdir().unwrap();
    let clients = TestCa::new(ca_dir.path());
    let (good, revoked) = (
        clients.issue_client("good", 10),
        clients.issue_client("gone", 11),
    );
    let crl = clients.crl(&[11]);
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let keys = tls_table(
        &server,
        &client_ca(
            &clients.pem,
            &format!(", client_crl = \"{}\"", crl.display()),
        ),
    );
    let proxy = Proxy::start_config(&config(plain, tls, free_port(), &b, &keys));
    let url = format!("https://localhost:{tls}/id");
    let get = |cert: &ClientCert| {
        let c = client(&server, Alpn::Http1, Some(cert));
        let url = url.clone();
        async move { matches!(try_send(c.get(url)).await, Ok(r) if r.status == 200) }
    };
    assert!(get(&good).await, "a certificate the CRL does not list");
    assert!(!get(&revoked).await, "a revoked certificate");
    drop(proxy);
}

#[tokio::test]
async fn a_reload_adds_changes_and_removes_client_certificate_checks_without_a_restart() {
    let r = Reloadable::start();
    let Reloadable {
        proxy,
        ca1,
        ca2,
        one,
        two,
        dirs,
        ..
    } = &r;
    let (with, served) = (|extra: &str| r.with(extra), |c| r.served(c));
    let pid = proxy.pid();
    assert!(
        served(None).await,
        "no client certificate asked for at first"
    );

    // Added by a reload (SIGHUP): a client without a certificate is refused from then on.
    proxy.reload(&with(&client_ca(&ca1.pem, "")));
    tests::wait_until(STEP_TIMEOUT, "client certificates required", || {
        let anonymous = served(None);
        async move { !anonymous.await }
    })
    .await;
    assert!(served(Some(one)).await);

    // Another CA: the first one's certificate is refused, the new one's accepted.
    proxy.reload(&with(&client_ca(&ca2.pem, "")));
    tests::wait_until(STEP_TIMEOUT, "the new CA trusted", || served(Some(two))).await;
    assert!(!served(Some(one)).await, "the old CA's certificate");

    // A file that cannot be used rejects the reload; the running checks stay.
    let missing = dirs[1].path().join("missing.pem");
    proxy.write_config(&with(&client_ca(&missing, "")));
    let r = admin_post(proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_owned();
    let line = with(&client_ca(&missing, ""))
        .lines()
        .position(|l| l.contains("client_ca"))
        .unwrap()
        + 1;
    assert!(
        error.contains(&format!(":{line}: listeners[1].tls.client_ca: "))
            && error.contains(&missing.display().to_string()),
        "{error}"
    );
    assert!(served(Some(two)).await);
    assert!(!served(None).await);

    // Removed: no certificate asked for again, and the report names no restart.
    proxy.write_config(&with(""));
    reload_needing(proxy, "t", &[]).await;
    assert!(served(None).await);
    assert_eq!(proxy.pid(), pid, "no restart");
}

/// `GET /headers` over a new TLS connection made with `config` (which keeps the sessions it
/// gets, so the next connection resumes one): how the handshake went, and the answer read
/// to the end ("" when the connection closed without one).
async fn exchange(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
) -> (Option<rustls::HandshakeKind>, String) {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        (kind, String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(STEP_TIMEOUT, attempt).await.unwrap()
}

/// The `x-forwarded-client-cert` the backend's `/headers` answer (head and body) shows.
fn xfcc_in(answer: &str) -> Option<String> {
    let (_, body) = answer.split_once("\r\n\r\n")?;
    let headers: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(headers.get(XFCC)?.as_str()?.to_owned())
}

/// A client that resumes a TLS session made before a reload is held to the reload's client
/// certificate checks. rustls verifies nothing on a resumed session: without the listener's
/// own check, a session from before `client_ca` was added went on without a certificate,
/// and one whose certificate's CA a reload dropped went on naming it to the backend.
#[tokio::test]
async fn a_session_resumed_after_a_reload_is_held_to_the_new_client_certificate_checks() {
    use rustls::HandshakeKind::{Full, Resumed};

    let r = Reloadable::start();
    let Reloadable {
        proxy,
        server,
        ca1,
        ca2,
        one,
        two,
        ..
    } = &r;
    let (with, served, tls) = (|extra: &str| r.with(extra), |c| r.served(c), r.tls());

    // A session without a client certificate, then `client_ca` added by a reload.
    let anonymous = rustls_client_config_with(&server.ca_pem(), &[b"http/1.1"], None);
    let (kind, answer) = exchange(&anonymous, tls).await;
    assert_eq!(kind, Some(Full));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    proxy.reload(&with(&client_ca(&ca1.pem, "")));
    tests::wait_until(STEP_TIMEOUT, "client certificates required", || {
        let anonymous = served(None);
        async move { !anonymous.await }
    })
    .await;
    let (kind, answer) = exchange(&anonymous, tls).await;
    assert_eq!(kind, Some(Resumed), "the test needs a resumed session");
    assert_eq!(
        answer, "",
        "a resumed session without a certificate was served"
    );

    // A session with the first CA's certificate, then that CA replaced by a reload.
    let with_one = rustls_client_config_with(&server.ca_pem(), &[b"http/1.1"], Some(one));
    let (kind, answer) = exchange(&with_one, tls).await;
    assert_eq!(kind, Some(Full));
    assert_eq!(
        xfcc_in(&answer),
        Some(expected_xfcc(one, "one")),
        "{answer}"
    );
    let (kind, answer) = exchange(&with_one, tls).await;
    assert_eq!(kind, Some(Resumed), "the test needs a resumed session");
    assert_eq!(
        xfcc_in(&answer),
        Some(expected_xfcc(one, "one")),
        "a resumed session whose certificate still verifies is served: {answer}"
    );
    proxy.reload(&with(&client_ca(&ca2.pem, "")));
    tests::wait_until(STEP_TIMEOUT, "the new CA trusted", || served(Some(two))).await;
    let (kind, answer) = exchange(&with_one, tls).await;
    assert_eq!(kind, Some(Resumed), "the test needs a resumed session");
    assert_eq!(
        answer, "",
        "a resumed session with the dropped CA's certificate was served"
    );
}

#[test]
fn check_reports_client_certificate_errors_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Certs::generate(dir.path(), &["localhost"]);
    let check = |extra: &str| {
        Proxy::check(&format!(
            "[[listeners]]\nlisten = \"127.0.0.1:18443\"\n{}\n\n\
             [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n",
            tls_table(&server, extra)
        ))
    };
    let expect = |extra: &str, want: &str| {
        let out = check(extra);
        let all = out.expect_refusal(want);
        assert_eq!(out.code(), Some(1), "{all}");
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&format!("/proxy.toml:3: {want}"))),
            "no line with {want:?} in:\n{all}"
        );
    };
    let missing = dir.path().join("nope.pem");
    expect(
        &client_ca(&missing, ""),
        &format!(
            "listeners[0].tls.client_ca: {}: cannot read",
            missing.display()
        ),
    );
    expect(
        &client_ca(&server.key, ""),
        &format!(
            "listeners[0].tls.client_ca: {}: no PEM certificate found",
            server.key.display()
        ),
    );
    expect(
        &client_ca(
            &server.ca,
            &format!(", client_crl = \"{}\"", server.ca.display()),
        ),
        &format!(
            "listeners[0].tls.client_crl: {}: no PEM certificate revocation list (X509 CRL) found",
            server.ca.display()
        ),
    );
    expect(
        ", client_auth = \"optional\"",
        "listeners[0].tls.client_auth: only valid with `client_ca`",
    );
    expect(
        &format!(", client_crl = \"{}\"", server.ca.display()),
        "listeners[0].tls.client_crl: only valid with `client_ca`",
    );
    expect(
        &client_ca(&server.ca, ", client_auth = \"maybe\""),
        "listeners[0].tls.client_auth: unknown variant `maybe`, expected `required` or `optional`",
    );
    // A valid one passes, and the summary says what is asked.
    let out = check(&client_ca(&server.ca, ", client_auth = \"optional\""));
    assert_eq!(out.code(), Some(0), "{}", out.output());
    let want = format!("client certificates optional, ca {}", server.ca.display());
    assert!(out.stdout.contains(&want), "{}", out.output());
}

/// Quick mode asks for client certificates with `--client-ca` (required unless
/// `--client-auth optional`, revocations from `--client-crl`), names them to the backend,
/// and refuses the flags without `--tls-listen` or `--client-ca`, and a CA file that holds
/// no certificate, naming the flag.
#[tokio::test]
async fn quick_mode_asks_for_client_certificates_with_client_ca() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let server = Certs::generate(dirs[0].path(), &["localhost", "127.0.0.1"]);
    let clients = TestCa::new(dirs[1].path());
    let (alice, bob) = (
        clients.issue_client("alice", 1),
        clients.issue_client("bob", 2),
    );
    let crl = clients.crl(&[2]);
    let backend = Backend::start("b1");
    let quick = |tls: u16, more: &[String]| {
        let mut args = vec![
            "--tls-listen".to_string(),
            format!("127.0.0.1:{tls}"),
            "--cert".into(),
            server.cert.display().to_string(),
            "--key".into(),
            server.key.display().to_string(),
            "--backend".into(),
            backend.addr().to_string(),
            "--client-ca".into(),
            clients.pem.display().to_string(),
        ];
        args.extend(more.iter().cloned());
        args
    };
    let start = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start_quick(&args)
    };

    let tls = free_port();
    let crl_flag = ["--client-crl".to_string(), crl.display().to_string()];
    let _required = start(quick(tls, &crl_flag));
    assert!(!served_at(&server, tls, None).await, "no certificate");
    assert!(!served_at(&server, tls, Some(&bob)).await, "a revoked one");
    let c = client(&server, Alpn::Http1, Some(&alice));
    let url = format!("https://localhost:{tls}/headers");
    assert_eq!(
        xfcc_seen(&c, &url).await.as_deref(),
        Some(&*expected_xfcc(&alice, "alice"))
    );

    let tls = free_port();
    let _optional = start(quick(tls, &["--client-auth".into(), "optional".into()]));
    let url = format!("https://localhost:{tls}/headers");
    let anonymous = client(&server, Alpn::Http1, None);
    assert_eq!(xfcc_seen(&anonymous, &url).await, None);
    let c = client(&server, Alpn::Http1, Some(&bob));
    assert_eq!(
        xfcc_seen(&c, &url).await.as_deref(),
        Some(&*expected_xfcc(&bob, "bob"))
    );

    let refused = |args: &[&str], want: &str| {
        let out = tests::ProxyCmd::quick(args).run_to_exit(STEP_TIMEOUT);
        let all = out.expect_refusal(want);
        assert_eq!(out.code(), Some(1), "{all}");
        assert!(all.contains(want), "no {want:?} in:\n{all}");
    };
    let ca = clients.pem.display().to_string();
    let b = backend.addr().to_string();
    refused(
        &[
            "--listen",
            "127.0.0.1:1",
            "--backend",
            &b,
            "--client-ca",
            &ca,
        ],
        "--client-ca: needs --tls-listen",
    );
    let mut no_ca = quick(free_port(), &["--client-auth".into(), "optional".into()]);
    no_ca.truncate(no_ca.len() - 4);
    no_ca.extend(["--client-auth".into(), "optional".into()]);
    let no_ca: Vec<&str> = no_ca.iter().map(String::as_str).collect();
    refused(&no_ca, "--client-auth: needs --client-ca");
    let mut bad_ca = quick(free_port(), &[]);
    let last = bad_ca.len() - 1;
    bad_ca[last] = server.key.display().to_string();
    let bad_ca: Vec<&str> = bad_ca.iter().map(String::as_str).collect();
    refused(
        &bad_ca,
        &format!(
            "--client-ca: {}: no PEM certificate found",
            server.key.display()
        ),
    );
}

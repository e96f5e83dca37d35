//! TLS end to end: HTTPS over HTTP/1.1 and h2, WSS, certificates chosen by SNI, protocol
//! versions, the HTTP → HTTPS redirect listener, certificates renewed by a reload, and clear
//! start-up errors for bad certificate files — real `echo-backend` and `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use tempfile::TempDir;
use tests::admin::{admin_post, reload_needing};
use tests::fixtures::{admin, entries, listener, tls_keys, upstream, TWO_THREADS};
use tests::http::tls_builder;
use tests::ws::rustls_client_config;
use tests::{
    free_port, get_with, port_array, send, tls_client, ws_connect_tls, ws_echo, Alpn, Backend,
    Certs, Proxy, ProxyCmd, TestCa, STEP_TIMEOUT,
};

/// Bound for a graceful stop's steps.
const T: Duration = Duration::from_secs(30);

/// A backend, a TLS listener (and a plain one) with `tls_table` as the listener's TLS keys.
fn tls_config(plain: u16, tls: u16, backend: &Backend, tls_table: &str) -> String {
    format!(
        r#"
{TWO_THREADS}
{plain}
{tls}{tls_table}

{upstream}"#,
        plain = listener(plain),
        tls = listener(tls),
        upstream = upstream("app", None, &entries(&[backend])),
    )
}

/// `keys` (see [`tls_keys`]) and an SNI entry: `server_name` gets `cert` and `key`.
fn with_sni(keys: &str, server_name: &str, cert: &Path, key: &Path) -> String {
    format!(
        "{keys}\nsni = [{{ server_name = \"{server_name}\", cert = \"{}\", key = \"{}\" }}]",
        cert.display(),
        key.display()
    )
}

/// Certificates for `localhost` and `127.0.0.1` from a fresh test CA, and a proxy with a plain
/// and a TLS listener using them in front of one backend, `b1`.
struct TlsProxy {
    /// Fields drop in order: the proxy first, its certificate files last.
    proxy: Proxy,
    _backend: Backend,
    certs: Certs,
    _dir: TempDir,
    /// The TLS listener's port.
    tls: u16,
}

impl TlsProxy {
    fn start() -> TlsProxy {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
        let backend = Backend::start("b1");
        let [plain, tls] = port_array();
        let keys = tls_keys(&certs.cert, &certs.key);
        let proxy = Proxy::start_config(&tls_config(plain, tls, &backend, &keys));
        TlsProxy {
            proxy,
            _backend: backend,
            certs,
            _dir: dir,
            tls,
        }
    }
}

/// `proxy gen-cert --out <dir>`: (ca.pem, localhost.pem, localhost-key.pem).
fn gen_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let out = Proxy::gen_cert(dir);
    assert_eq!(out.code(), Some(0), "gen-cert: {}", out.output());
    (
        dir.join("ca.pem"),
        dir.join("localhost.pem"),
        dir.join("localhost-key.pem"),
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Accepts any server certificate (still checking handshake signatures), so a test can look
/// at which certificate the proxy chose.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that accepts any certificate, offering `versions`.
fn any_cert_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let p = provider();
    let config = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(p)))
        .with_no_client_auth();
    Arc::new(config)
}

/// A verifying client config trusting only the CA in `ca_pem`, offering `versions`.
fn verifying_config(
    ca_pem: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS handshake with 127.0.0.1:`port`, sending `server_name` as SNI (none for an IP).
async fn handshake(
    port: u16,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let attempt = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        TlsConnector::from(config).connect(name, tcp).await
    };
    match tokio::time::timeout(STEP_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("TLS handshake timed out")),
    }
}

/// The end-entity certificate the server presented.
fn peer_leaf(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// The first certificate of a PEM file.
fn leaf_of(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn https_http1_h2_and_wss_work_with_the_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = gen_cert(dir.path());
    let ca = std::fs::read(ca).unwrap();
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let proxy = Proxy::start_config(&tls_config(plain, tls, &b, &tls_keys(&cert, &key)));

    // HTTP/1.1 over TLS.
    let r = get_with(&tls_client(&ca, Alpn::Http1), &proxy.https_url("/id")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));
    assert_eq!(r.version, http::Version::HTTP_11);

    // h2, forced and negotiated by ALPN.
    for alpn in [Alpn::H2, Alpn::Auto] {
        let r = get_with(&tls_client(&ca, alpn), &proxy.https_url("/id")).await;
        assert_eq!(r.status, 200, "{alpn:?}: {r:?}");
        assert_eq!(r.version, http::Version::HTTP_2, "{alpn:?}");
        assert_eq!(r.backend(), Some("b1"), "{alpn:?}");
        assert_eq!(r.body, "b1");
    }
    // A body through h2.
    let body = "y".repeat(100_000);
    let r = send(
        tls_client(&ca, Alpn::H2)
            .post(proxy.https_url("/echo"))
            .body(body.clone()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);

    // The backend learns the client came over TLS.
    for alpn in [Alpn::Http1, Alpn::H2] {
        let h = get_with(&tls_client(&ca, alpn), &proxy.https_url("/headers"))
            .await
            .json();
        assert_eq!(h["x-forwarded-proto"], "https", "{alpn:?}: {h}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{alpn:?}: {h}");
    }
    let h = get_with(&tests::client(), &proxy.url("/headers"))
        .await
        .json();
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");

    // WSS through the TLS listener.
    let (mut ws, id) = ws_connect_tls(&ca, &proxy.wss_url("/ws")).await;
    assert_eq!(id, "b1");
    ws_echo(&mut ws, "over tls").await;
    ws_echo(&mut ws, &"z".repeat(70_000)).await;

    // A client that does not trust the CA is refused.
    let other = tempfile::tempdir().unwrap();
    let stranger = Certs::generate(other.path(), &["localhost"]).ca_pem();
    let err = tests::http::try_send(tls_client(&stranger, Alpn::Http1).get(proxy.https_url("/")))
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test]
async fn alpn_offers_h2_and_http1() {
    let setup = TlsProxy::start();
    let (ca, tls) = (setup.certs.ca_pem(), setup.tls);
    for (offer, want) in [
        (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let s = handshake(tls, "localhost", rustls_client_config(&ca, offer))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(want));
    }
}

/// A wildcard `server_name` serves a wildcard certificate to every name one label in front
/// of it, as the certificate itself covers (RFC 6125): a client verifying the name accepts
/// it; deeper names and the bare suffix get the default, and an exact entry wins over the
/// wildcard.
#[tokio::test]
async fn a_wildcard_server_name_serves_its_certificate_to_names_one_label_deep() {
    let dir = tempfile::tempdir().unwrap();
    let default = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let api_dir = tempfile::tempdir().unwrap();
    let api_ca = TestCa::new(api_dir.path());
    let (wild_cert, wild_key) = api_ca.issue(&["*.api.test"]);
    let (exact_cert, exact_key) = api_ca.issue(&["eu.api.test"]);
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let keys = format!(
        "{}\nsni = [\n  {{ server_name = \"*.api.test\", cert = \"{}\", key = \"{}\" }},\n  \
         {{ server_name = \"eu.api.test\", cert = \"{}\", key = \"{}\" }},\n]",
        tls_keys(&default.cert, &default.key),
        wild_cert.display(),
        wild_key.display(),
        exact_cert.display(),
        exact_key.display(),
    );
    let proxy = Proxy::start_config(&tls_config(plain, tls, &b, &keys));
    let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    let api_trust = std::fs::read(&api_ca.pem).unwrap();

    for name in ["us.api.test", "US.Api.Test"] {
        let s = handshake(tls, name, verifying_config(&api_trust, both))
            .await
            .unwrap_or_else(|e| panic!("SNI {name} must get the *.api.test certificate: {e}"));
        assert_eq!(peer_leaf(&s), leaf_of(&wild_cert), "SNI {name}");
    }
    let s = handshake(tls, "eu.api.test", verifying_config(&api_trust, both))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), leaf_of(&exact_cert), "the exact entry wins");
    for name in ["a.b.api.test", "api.test", "localhost"] {
        let s = handshake(tls, name, any_cert_config(both)).await.unwrap();
        assert_eq!(peer_leaf(&s), leaf_of(&default.cert), "SNI {name}");
    }
    drop(proxy);
}

#[tokio::test]
async fn sni_picks_the_certificate_for_the_name_and_unknown_names_get_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let default = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    // `api.test` is issued by a second, unrelated CA.
    let api_dir = tempfile::tempdir().unwrap();
    let api_ca = TestCa::new(api_dir.path());
    let (api_cert, api_key) = api_ca.issue(&["api.test"]);
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let keys = with_sni(
        &tls_keys(&default.cert, &default.key),
        "api.test",
        &api_cert,
        &api_key,
    );
    let proxy = Proxy::start_config(&tls_config(plain, tls, &b, &keys));
    let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];

    // A client trusting only the api.test CA verifies the chain and the name.
    let api_trust = std::fs::read(&api_ca.pem).unwrap();
    let s = handshake(tls, "api.test", verifying_config(&api_trust, both))
        .await
        .unwrap_or_else(|e| panic!("SNI api.test must get the api.test certificate: {e}"));
    assert_eq!(peer_leaf(&s), leaf_of(&api_cert));
    // Names match case-insensitively.
    let s = handshake(tls, "API.Test", any_cert_config(both))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), leaf_of(&api_cert));
    // The api.test CA does not vouch for the default certificate.
    assert!(
        handshake(tls, "localhost", verifying_config(&api_trust, both))
            .await
            .is_err()
    );

    // Unknown names and no SNI at all (an IP address) get the default certificate.
    for name in ["localhost", "unknown.test", "127.0.0.1"] {
        let s = handshake(tls, name, any_cert_config(both)).await.unwrap();
        assert_eq!(peer_leaf(&s), leaf_of(&default.cert), "SNI {name}");
    }
    let s = handshake(tls, "localhost", verifying_config(&default.ca_pem(), both))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), leaf_of(&default.cert));

    // And requests flow on the SNI certificate's connections.
    let client = tls_builder(&api_trust, Alpn::Auto)
        .resolve(
            "api.test",
            std::net::SocketAddr::from(([127, 0, 0, 1], tls)),
        )
        .build()
        .unwrap();
    let r = get_with(&client, &format!("https://api.test:{tls}/id")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));
    let h = get_with(&client, &format!("https://api.test:{tls}/headers"))
        .await
        .json();
    assert_eq!(h["x-forwarded-host"], format!("api.test:{tls}"), "{h}");
    drop(proxy);
}

/// Hand-made TLS 1.1 ClientHello (no `supported_versions` extension), ECDHE/RSA CBC suites.
/// Copies `from` over `to` the way deployment tools do: a new file renamed into place.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test]
async fn a_reload_serves_renewed_certificates_without_a_restart() {
    let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    let (first_dir, renewed_dir, live_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // The two certificates come from unrelated CAs, so each CA vouches for one only.
    let first = Certs::generate(first_dir.path(), &["localhost", "127.0.0.1"]);
    let renewed = Certs::generate(renewed_dir.path(), &["localhost", "127.0.0.1"]);
    let (cert, key) = (
        live_dir.path().join("cert.pem"),
        live_dir.path().join("key.pem"),
    );
    replace_file(&first.cert, &cert);
    replace_file(&first.key, &key);

    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let admin_port = free_port();
    let toml = format!(
        "{}\n{}",
        admin(admin_port, "t"),
        tls_config(plain, tls, &b, &tls_keys(&cert, &key))
    );
    let proxy = Proxy::start_config(&toml);
    let s = handshake(tls, "localhost", any_cert_config(both))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), leaf_of(&first.cert));

    replace_file(&renewed.cert, &cert);
    replace_file(&renewed.key, &key);
    reload_needing(&proxy, "t", &[]).await;

    // New handshakes get the renewed certificate; a client trusting only its CA verifies it
    // and is served.
    let s = handshake(tls, "localhost", any_cert_config(both))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), leaf_of(&renewed.cert));
    assert!(
        handshake(tls, "localhost", verifying_config(&first.ca_pem(), both))
            .await
            .is_err(),
        "the first CA must no longer match"
    );
    let client = tls_client(&renewed.ca_pem(), Alpn::Auto);
    let r = get_with(&client, &format!("https://localhost:{tls}/id")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));

    // A broken key file rejects the reload with its key path; the renewed certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("listeners[1].tls.key") && error.contains(&key.display().to_string()),
        "{error}"
    );
    let s = handshake(tls, "localhost", any_cert_config(both))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&s), leaf_of(&renewed.cert));
    drop(proxy);
}

fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version: TLS 1.1
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    let suites: [u8; 8] = [0xc0, 0x14, 0xc0, 0x13, 0x00, 0x35, 0x00, 0x2f];
    body.extend(u16::try_from(suites.len()).unwrap().to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]); // compression: null
    let mut ext = Vec::new();
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]); // groups
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
    body.extend(u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01]; // ClientHello
    hs.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(hs.len()).unwrap().to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_accepted_and_1_1_is_not() {
    let setup = TlsProxy::start();
    let (ca, tls) = (setup.certs.ca_pem(), setup.tls);
    for (version, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut s = handshake(tls, "localhost", verifying_config(&ca, &[version]))
            .await
            .unwrap_or_else(|e| panic!("{want:?} handshake: {e}"));
        assert_eq!(s.get_ref().1.protocol_version(), Some(want));
        // And a request works on it.
        s.write_all(b"GET /id HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut resp))
            .await
            .unwrap()
            .ok();
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{want:?}: {resp}");
        assert!(resp.ends_with("b1"), "{want:?}: {resp}");
    }

    // TLS 1.1: the server must not answer with a ServerHello (0x16); an alert or a close is
    // fine.
    let mut tcp = TcpStream::connect(("127.0.0.1", tls)).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = match tokio::time::timeout(STEP_TIMEOUT, tcp.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => 0,
        Err(_) => panic!("no answer to a TLS 1.1 ClientHello within {STEP_TIMEOUT:?}"),
    };
    if n > 0 {
        assert_eq!(
            buf[0],
            0x15,
            "expected an alert to a TLS 1.1 hello, got {:02x?}",
            &buf[..n]
        );
    }
}

#[tokio::test]
async fn plain_listener_redirects_to_https_with_308() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let toml = format!(
        r#"
{plain_listener}redirect_https_port = {tls}

{tls_listener}{keys}

{upstream}"#,
        plain_listener = listener(plain),
        tls_listener = listener(tls),
        keys = tls_keys(&certs.cert, &certs.key),
        upstream = upstream("app", None, &entries(&[&b])),
    );
    let proxy = Proxy::start_config(&toml);
    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let r = get_with(&no_follow, &format!("http://127.0.0.1:{plain}/path?q=1")).await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://127.0.0.1:{tls}/path?q=1").as_str())
    );
    assert_eq!(r.backend(), None, "the redirect never reaches a backend");

    let r = send(
        no_follow
            .post(format!("http://127.0.0.1:{plain}/a/b?x=y&z"))
            .header("host", "shop.test:8080")
            .body("payload"),
    )
    .await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("https://shop.test:{tls}/a/b?x=y&z").as_str())
    );

    // An IPv6 literal keeps its brackets, with or without a port.
    for host in ["[::1]", "[::1]:8080"] {
        let r = send(
            no_follow
                .get(format!("http://127.0.0.1:{plain}/v6"))
                .header("host", host),
        )
        .await;
        assert_eq!(r.status, 308, "Host {host}: {r:?}");
        assert_eq!(
            r.header("location"),
            Some(format!("https://[::1]:{tls}/v6").as_str()),
            "Host {host}"
        );
    }

    // A client that follows it ends up on the TLS listener.
    let follow = tls_builder(&certs.ca_pem(), Alpn::Auto).build().unwrap();
    let r = get_with(&follow, &format!("http://localhost:{plain}/id")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));
    drop(proxy);
}

/// Plain HTTP sent to the TLS port gets a 400 that says so, in plain text (as nginx answers
/// it), not a bare close that looks like a crashed proxy; TLS clients on the same listener
/// are served as before, and bytes that are neither go on to the handshake, which refuses
/// them.
#[tokio::test]
async fn plain_http_sent_to_the_tls_port_gets_a_400_saying_so() {
    let setup = TlsProxy::start();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], setup.tls));

    let mut c = tests::raw::RawConn::connect(addr).await;
    let r = c
        .exchange("GET /id HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.text()
            .contains("plain HTTP request sent to a TLS listener (use https://)"),
        "{r:?}"
    );
    assert!(r.closes(), "{r:?}");
    c.expect_eof("the connection after the 400").await;

    // A request line trickled in byte by byte is answered the same.
    let mut c = tests::raw::RawConn::connect(addr).await;
    c.send("P").await;
    let r = c.exchange("OST / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");

    // Binary that is no request is left to the TLS handshake: closed without an HTTP answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x01\x02\x03").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the handshake refused the bytes in time");
    assert!(!out.starts_with(b"HTTP/"), "{out:?}");
    // A connection closed before any byte, as a load balancer's TCP check does.
    drop(TcpStream::connect(addr).await.unwrap());

    // HTTPS on the same listener is untouched.
    let r = get_with(
        &tls_client(&setup.certs.ca_pem(), Alpn::Http1),
        &format!("https://localhost:{}/id", setup.tls),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));
    // None of these is an error an operator could act on: nothing at ERROR in the log (as
    // nginx logs them at `info`), while pingora's failed-handshake lines are still there at
    // INFO for whoever turns them on.
    let logs = setup.proxy.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("handshake")),
        "{logs}"
    );
    // Piped, not a terminal: no colour codes in the lines.
    assert!(!logs.contains('\u{1b}'), "{logs}");
}

/// A TLS handshake is held to `header_read_timeout` as a request head is: a client that
/// starts its ClientHello and stalls (one byte, or a record header and part of the record)
/// is closed then, not after pingora's 60 s handshake limit (slowloris over TLS), and does
/// not hold a graceful stop that long either.
#[tokio::test]
async fn a_stalled_client_hello_is_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let backend = Backend::start("b1");
    let [plain, tls] = port_array();
    let keys = tls_keys(&certs.cert, &certs.key);
    let config = format!(
        "{}\n[limits]\nheader_read_timeout = \"1s\"\n",
        tls_config(plain, tls, &backend, &keys)
    );
    let _proxy = Proxy::start_config(&config);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls));
    for start in [
        &b"\x16"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(start).await.unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        // A bound well under pingora's 60 s: 1 s, on a loaded machine.
        let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
        assert!(
            closed.is_ok(),
            "{}: still open after {:?}",
            start.escape_ascii(),
            started.elapsed()
        );
    }
    // A whole handshake is unaffected.
    let r = get_with(
        &tls_client(&certs.ca_pem(), Alpn::Http1),
        &format!("https://localhost:{tls}/id"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A TLS 1.3 handshake with 127.0.0.1:`port` up to the client's Finished, held back: the
/// proxy has accepted the connection, answered the ClientHello, and waits for the client.
fn held_handshake(port: u16, ca_pem: &[u8]) -> (rustls::ClientConnection, std::net::TcpStream) {
    let config = verifying_config(ca_pem, &[&rustls::version::TLS13]);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    while tls.wants_write() {
        tls.write_tls(&mut tcp).unwrap();
    }
    while !tls.wants_write() {
        assert_ne!(
            tls.read_tls(&mut tcp).unwrap(),
            0,
            "the proxy closed the handshake"
        );
        tls.process_new_packets().unwrap();
    }
    (tls, tcp)
}

/// Whether the proxy closes `tcp` within `within` (an end of stream or a reset).
fn closed_within(tcp: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read as _;
    tcp.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// The rest of a handshake is bounded by `header_read_timeout` too, not only its first
/// record: a client that sends a whole ClientHello and never its Finished was held for
/// pingora's fixed 60 s (slowloris over TLS, past any configured timeout).
#[test]
fn a_handshake_stalled_after_its_client_hello_is_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let backend = Backend::start("b1");
    let [plain, tls] = port_array();
    let keys = tls_keys(&certs.cert, &certs.key);
    let mut proxy = Proxy::start_config(&format!(
        "{}\n[limits]\nheader_read_timeout = \"1s\"\n",
        tls_config(plain, tls, &backend, &keys)
    ));
    let (_tls, mut tcp) = held_handshake(tls, &certs.ca_pem());
    // A bound well under pingora's 60 s: 1 s, on a loaded machine.
    assert!(
        closed_within(&mut tcp, Duration::from_secs(10)),
        "a stalled handshake is still open\n{}",
        proxy.logs()
    );
    assert!(proxy.is_running(), "{}", proxy.logs());
}

/// Connections in their TLS handshake count against `limits.max_connections`, as HAProxy's
/// `maxconn` counts them: pingora counted a connection only once its handshake was done, so
/// any number of stalled handshakes could hold descriptors beyond the cap. A client over
/// the cap still gets its `503` with the reason, and a handshake's count ends with it.
#[tokio::test]
async fn handshakes_in_progress_count_against_max_connections() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let backend = Backend::start("b1");
    let [plain, tls] = port_array();
    let keys = tls_keys(&certs.cert, &certs.key);
    let proxy = Proxy::start_config(&format!(
        "{}\n[limits]\nmax_connections = 2\n",
        tls_config(plain, tls, &backend, &keys)
    ));
    let ca = certs.ca_pem();
    let url = format!("https://localhost:{tls}/id");
    let mut held: Vec<_> = (0..2).map(|_| held_handshake(tls, &ca)).collect();

    let r = get_with(&tls_client(&ca, Alpn::Http1), &url).await;
    assert_eq!(r.status, 503, "{r:?}\n{}", proxy.logs());
    assert!(r.body.contains("connection limit"), "{r:?}");

    // One handshake ends (its client goes away): the cap has room again.
    held.pop();
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let r = get_with(&tls_client(&ca, Alpn::Http1), &url).await;
        if r.status == 200 {
            assert_eq!(r.body, "b1");
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still over the cap with one handshake left\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a proxy that must refuse to start; returns its output.
fn must_fail(cmd: ProxyCmd) -> String {
    cmd.run_to_exit(Duration::from_secs(20))
        .expect_refusal("the proxy")
}

#[test]
fn bad_certificate_files_are_a_clear_startup_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost"]);
    let b = Backend::start("b1");
    let missing = dir.path().join("missing-cert.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let [plain, tls] = port_array();

    let cases: [(&Path, &Path, &Path); 4] = [
        // (cert, key, the file the message must name)
        (&missing, &certs.key, &missing),
        (&certs.cert, &missing, &missing),
        (&garbage, &certs.key, &garbage),
        // A certificate where the key should be.
        (&certs.cert, &certs.cert, &certs.cert),
    ];
    for (cert, key, named) in cases {
        let toml = tls_config(plain, tls, &b, &tls_keys(cert, key));
        let out = must_fail(ProxyCmd::config(&toml));
        assert!(
            out.contains(&named.display().to_string()),
            "cert {cert:?} key {key:?}: the message must name {named:?}: {out}"
        );
    }

    // An SNI certificate too.
    let keys = with_sni(
        &tls_keys(&certs.cert, &certs.key),
        "api.test",
        &missing,
        &certs.key,
    );
    let out = must_fail(ProxyCmd::config(&tls_config(plain, tls, &b, &keys)));
    assert!(out.contains(&missing.display().to_string()), "{out}");

    // Quick mode.
    let listen = format!("127.0.0.1:{plain}");
    let tls_listen = format!("127.0.0.1:{tls}");
    let backend = b.addr().to_string();
    let missing_s = missing.display().to_string();
    let key_s = certs.key.display().to_string();
    let out = must_fail(ProxyCmd::quick(&[
        "--listen",
        &listen,
        "--tls-listen",
        &tls_listen,
        "--cert",
        &missing_s,
        "--key",
        &key_s,
        "--backend",
        &backend,
    ]));
    assert!(out.contains(&missing_s), "{out}");
}

/// The line of `out` that reports an error about `key` as `…proxy.toml:<line>: <key>: …`.
fn error_line<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}: ");
    out.lines()
        .find(|l| {
            l.split_once("proxy.toml:")
                .and_then(|(_, rest)| rest.split_once(": "))
                .is_some_and(|(line, rest)| {
                    line.parse::<usize>().is_ok() && rest.starts_with(&prefix)
                })
        })
        .unwrap_or_else(|| panic!("no `proxy.toml:<line>: {key}: ` error in: {out}"))
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_refused_at_start_by_check_and_by_reload() {
    let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    // Two certificates for the same names from unrelated CAs: each file is fine on its own,
    // but `first.cert` with `other.key` cannot complete a handshake.
    let (first_dir, other_dir, live_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let first = Certs::generate(first_dir.path(), &["localhost", "127.0.0.1"]);
    let other = Certs::generate(other_dir.path(), &["localhost", "127.0.0.1"]);
    let b = Backend::start("b1");
    let [plain, tls] = port_array();
    let mismatched = tls_keys(&first.cert, &other.key);
    let wants = |out: &str, key: &str| {
        let line = error_line(out, key);
        for part in [
            other.key.display().to_string(),
            "does not match the certificate".to_owned(),
            first.cert.display().to_string(),
        ] {
            assert!(line.contains(&part), "{part:?} missing from: {line}");
        }
    };

    // At start and in `proxy check`, with the file, line and key (as `nginx -t` refuses it).
    let toml = tls_config(plain, tls, &b, &mismatched);
    wants(&must_fail(ProxyCmd::config(&toml)), "listeners[1].tls.key");
    let checked = Proxy::check(&toml);
    assert_eq!(checked.code(), Some(1), "{}", checked.output());
    wants(&checked.output(), "listeners[1].tls.key");

    // An SNI certificate's key.
    let keys = with_sni(
        &tls_keys(&first.cert, &first.key),
        "api.test",
        &first.cert,
        &other.key,
    );
    wants(
        &must_fail(ProxyCmd::config(&tls_config(plain, tls, &b, &keys))),
        "listeners[1].sni[0].key",
    );

    // Quick mode names the flag.
    let (listen, tls_listen) = (format!("127.0.0.1:{plain}"), format!("127.0.0.1:{tls}"));
    let (cert_s, key_s) = (
        first.cert.display().to_string(),
        other.key.display().to_string(),
    );
    let backend = b.addr().to_string();
    let out = must_fail(ProxyCmd::quick(&[
        "--listen",
        &listen,
        "--tls-listen",
        &tls_listen,
        "--cert",
        &cert_s,
        "--key",
        &key_s,
        "--backend",
        &backend,
    ]));
    assert!(
        out.contains(&format!(
            "--key: {key_s}: does not match the certificate {cert_s}"
        )),
        "{out}"
    );

    // A reload that would pair the running certificate with another key is rejected, and
    // the running pair keeps serving.
    let (cert, key) = (
        live_dir.path().join("cert.pem"),
        live_dir.path().join("key.pem"),
    );
    replace_file(&first.cert, &cert);
    replace_file(&first.key, &key);
    let admin_port = free_port();
    let toml = format!(
        "{}\n{}",
        admin(admin_port, "t"),
        tls_config(plain, tls, &b, &tls_keys(&cert, &key))
    );
    let proxy = Proxy::start_config(&toml);
    replace_file(&other.key, &key);
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("listeners[1].tls.key") && error.contains("does not match the certificate"),
        "{error}"
    );
    let s = handshake(tls, "localhost", verifying_config(&first.ca_pem(), both))
        .await
        .unwrap_or_else(|e| panic!("the running certificate must still be served: {e}"));
    assert_eq!(peer_leaf(&s), leaf_of(&first.cert));
    let client = tls_client(&first.ca_pem(), Alpn::Auto);
    let r = get_with(&client, &format!("https://localhost:{tls}/id")).await;
    assert_eq!(r.status, 200, "{r:?}");
    drop(proxy);
}

/// A graceful stop waits for a connection it accepted before the stop whose TLS handshake
/// is not done yet. The drain's count sees a connection only once its handshake is done
/// (and, on a loaded machine, only once its task has run), so going by the count alone
/// the proxy exited a moment into the grace period and cut such a client.
#[test]
fn a_graceful_stop_waits_for_a_tls_handshake_begun_before_it() {
    use std::io::{Read as _, Write as _};

    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost"]);
    let backend = Backend::start("b1");
    let port = free_port();
    let mut proxy = Proxy::start_config(&format!(
        "[server]\nthreads = 1\ngrace_period = \"60s\"\n{}{}\n{}",
        listener(port),
        tls_keys(&certs.cert, &certs.key),
        upstream("app", None, &entries(&[&backend]))
    ));

    let (mut tls, mut tcp) = held_handshake(port, &certs.ca_pem());

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait_log("graceful stop: waiting for the open connections", T);
    assert!(proxy.is_running(), "{}", proxy.logs());

    // The handshake ends and the request is served; the stop closes the connection after it.
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    stream
        .write_all(b"GET /id HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading the answer: {e}\n{}", proxy.logs()),
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("b1"), "{answer}");
    drop(tcp);

    let status = proxy
        .wait_exit(T)
        .unwrap_or_else(|| panic!("still running with nothing left:\n{}", proxy.logs()));
    assert!(status.success(), "{status:?}");
    assert!(proxy.logs().contains("every connection has closed"));
}

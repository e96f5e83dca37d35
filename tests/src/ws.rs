//! WebSocket clients for tests: plain, from a chosen local address, or over TLS trusting a test
//! CA; the echo backend's `hello <id>` greeting tells which backend a tunnel reached.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::STEP_TIMEOUT;

/// A byte stream a WebSocket runs over (TCP or TLS over TCP).
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// A client WebSocket.
pub type Ws = WebSocketStream<Pin<Box<dyn IoStream>>>;

/// How [`ws_open`] connects.
#[derive(Clone, Debug, Default)]
pub struct WsOptions {
    /// Bind the client socket to this address (port 0) first, e.g. `127.0.0.9`.
    pub local_ip: Option<IpAddr>,
    /// For `wss://`: trust only this CA (PEM). Required for `wss://`.
    pub ca_pem: Option<Vec<u8>>,
    /// Extra request headers (e.g. `cookie`).
    pub headers: Vec<(String, String)>,
    /// For `wss://`: present this client certificate (mutual TLS).
    pub client_cert: Option<crate::ClientCert>,
}

/// Opens a WebSocket without reading anything: the socket and the handshake response (e.g. for
/// `set-cookie` on the 101). A non-101 answer is `Err(tungstenite::Error::Http(response))`.
/// `localhost` resolves to 127.0.0.1. Bounded by [`STEP_TIMEOUT`].
pub async fn ws_open(url: &str, opts: &WsOptions) -> Result<(Ws, Response), tungstenite::Error> {
    crate::init();
    match tokio::time::timeout(STEP_TIMEOUT, open_inner(url, opts)).await {
        Ok(r) => r,
        Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("WebSocket handshake with {url} timed out"),
        ))),
    }
}

async fn open_inner(url: &str, opts: &WsOptions) -> Result<(Ws, Response), tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in &opts.headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
        req.headers_mut().append(name, value);
    }
    let uri = req.uri().clone();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => {
            return Err(tungstenite::Error::Url(
                tungstenite::error::UrlError::UnsupportedUrlScheme,
            ))
        }
    };
    let host = uri
        .host()
        .ok_or(tungstenite::Error::Url(
            tungstenite::error::UrlError::NoHostName,
        ))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = resolve(&host, port).await?;
    let tcp = connect_tcp(addr, opts.local_ip).await?;
    let _ = tcp.set_nodelay(true);
    let stream: Pin<Box<dyn IoStream>> = if tls {
        let ca = opts.ca_pem.as_deref().ok_or_else(|| {
            tungstenite::Error::Io(std::io::Error::other("wss:// needs WsOptions::ca_pem"))
        })?;
        let config = rustls_client_config_with(ca, &[b"http/1.1"], opts.client_cert.as_ref());
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Box::pin(tls)
    } else {
        Box::pin(tcp)
    };
    tokio_tungstenite::client_async(req, stream).await
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, tungstenite::Error> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::from((ip, port)));
    }
    let mut addrs = tokio::net::lookup_host((host, port)).await?;
    addrs.next().ok_or_else(|| {
        tungstenite::Error::Io(std::io::Error::other(format!("{host} does not resolve")))
    })
}

async fn connect_tcp(addr: SocketAddr, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(addr).await;
    };
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// A rustls client config (ring provider, TLS 1.2 and 1.3) trusting only the CAs in `ca_pem`.
pub fn rustls_client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    rustls_client_config_with(ca_pem, alpn, None)
}

/// [`rustls_client_config`], presenting `client` when the server asks for a certificate.
pub fn rustls_client_config_with(
    ca_pem: &[u8],
    alpn: &[&[u8]],
    client: Option<&crate::ClientCert>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA certificate is acceptable as a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots);
    let mut config = match client {
        None => config.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_file_iter(&c.cert)
                .expect("reading the client cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM parses");
            let key = PrivateKeyDer::from_pem_file(&c.key).expect("client key PEM parses");
            config
                .with_client_auth_cert(chain, key)
                .expect("the client cert and key are a pair")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Opens `url` and reads the backend's `hello <id>` greeting; returns the socket and the id.
///
/// # Panics
/// If the handshake fails or no greeting arrives within [`STEP_TIMEOUT`].
pub async fn ws_connect(url: &str) -> (Ws, String) {
    connect_and_greet(url, &WsOptions::default()).await
}

/// [`ws_connect`] from a given local address (`ip_hash` tests).
pub async fn ws_connect_from(local_ip: IpAddr, url: &str) -> (Ws, String) {
    let opts = WsOptions {
        local_ip: Some(local_ip),
        ..Default::default()
    };
    connect_and_greet(url, &opts).await
}

/// [`ws_connect`] over TLS (`wss://localhost:<port>/…`) trusting `ca_pem`.
pub async fn ws_connect_tls(ca_pem: &[u8], url: &str) -> (Ws, String) {
    let opts = WsOptions {
        ca_pem: Some(ca_pem.to_vec()),
        ..Default::default()
    };
    connect_and_greet(url, &opts).await
}

/// [`ws_connect`] with any options.
pub async fn connect_and_greet(url: &str, opts: &WsOptions) -> (Ws, String) {
    let (mut ws, _) = ws_open(url, opts)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    let id = ws_read_hello(&mut ws).await;
    (ws, id)
}

/// Reads the `hello <id>` greeting and returns the id.
pub async fn ws_read_hello(ws: &mut Ws) -> String {
    match ws_recv(ws, STEP_TIMEOUT).await {
        Some(Message::Text(t)) => match t.as_str().strip_prefix("hello ") {
            Some(id) => id.to_owned(),
            None => panic!("expected `hello <id>`, got {:?}", t.as_str()),
        },
        other => panic!("expected the `hello <id>` greeting, got {other:?}"),
    }
}

/// The next data or close message (pings and pongs are skipped), or `None` when the stream
/// ended, failed, or nothing came within `timeout`.
pub async fn ws_recv(ws: &mut Ws, timeout: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(msg))) => return Some(msg),
            _ => return None,
        }
    }
}

/// Sends `text` and expects the same text back within [`STEP_TIMEOUT`].
pub async fn ws_echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text))
        .await
        .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
    match ws_recv(ws, STEP_TIMEOUT).await {
        Some(Message::Text(t)) if t.as_str() == text => {}
        other => panic!("echo of {text:?}: got {other:?}"),
    }
}

/// Sends `data` as a binary message and expects it back within [`STEP_TIMEOUT`].
pub async fn ws_echo_binary(ws: &mut Ws, data: &[u8]) {
    ws.send(Message::binary(data.to_vec()))
        .await
        .unwrap_or_else(|e| panic!("sending {} bytes: {e}", data.len()));
    match ws_recv(ws, STEP_TIMEOUT).await {
        Some(Message::Binary(b)) if b.as_ref() == data => {}
        other => panic!("binary echo of {} bytes: got {other:?}", data.len()),
    }
}

/// Closes from the client side and waits (bounded) for the server's close.
pub async fn ws_close(mut ws: Ws) {
    let _ = tokio::time::timeout(STEP_TIMEOUT, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Asserts the server closes the socket (close frame, EOF or reset) within `timeout`; data
/// messages that arrive first are ignored.
pub async fn ws_expect_closed(ws: &mut Ws, timeout: Duration) {
    let result = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    if result.is_err() {
        panic!("WebSocket still open after {timeout:?}");
    }
}

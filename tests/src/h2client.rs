//! h2 clients of the proxy's TLS listeners (the `h2` crate, so that tests see frames and
//! trailers as they are), and responses read whole.

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::ws::rustls_client_config;
use crate::STEP_TIMEOUT;

/// A TLS connection to 127.0.0.1:`port` for `localhost`, offering only `alpn`.
pub async fn tls_connect(ca: &[u8], port: u16, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tls_connect_after(ca, port, alpn, b"").await
}

/// [`tls_connect`], with `first` sent before the handshake (a PROXY protocol header).
pub async fn tls_connect_after(
    ca: &[u8],
    port: u16,
    alpn: &[&[u8]],
    first: &[u8],
) -> TlsStream<TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let attempt = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connecting to the proxy");
        tcp.write_all(first).await.expect("sending the preamble");
        let name = "localhost".try_into().expect("a valid server name");
        TlsConnector::from(rustls_client_config(ca, alpn))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the proxy")
    };
    tokio::time::timeout(STEP_TIMEOUT, attempt)
        .await
        .expect("TLS connection in time")
}

/// An h2 connection to the TLS listener on `port`, its driver running in the background.
pub async fn connect(ca: &[u8], port: u16) -> h2::client::SendRequest<Bytes> {
    handshake(tls_connect(ca, port, &[b"h2"]).await).await
}

/// An h2 connection over `tls`, its driver running in the background.
pub async fn handshake(tls: TlsStream<TcpStream>) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = tokio::time::timeout(STEP_TIMEOUT, h2::client::handshake(tls))
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A response read whole: status, header fields, body and trailers (if any).
pub struct Full {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
    pub trailers: Option<http::HeaderMap>,
}

/// Reads `resp` whole, trailers included.
pub async fn read_full(resp: h2::client::ResponseFuture) -> Result<Full, String> {
    let resp = tokio::time::timeout(STEP_TIMEOUT, resp)
        .await
        .map_err(|_| "no response in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = tokio::time::timeout(STEP_TIMEOUT, body.data())
        .await
        .map_err(|_| "the body did not end in time".to_owned())?
    {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    let trailers = tokio::time::timeout(STEP_TIMEOUT, body.trailers())
        .await
        .map_err(|_| "the trailers did not come in time".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(Full {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&out).into_owned(),
        trailers,
    })
}

/// A response read whole: its status and body.
pub async fn read_response(
    resp: h2::client::ResponseFuture,
) -> Result<(http::StatusCode, String), String> {
    read_full(resp).await.map(|f| (f.status, f.body))
}

/// Sends `GET url` on `h2` and reads the answer whole.
pub async fn get_full(h2: &h2::client::SendRequest<Bytes>, url: &str) -> Result<Full, String> {
    let mut h2 = tokio::time::timeout(STEP_TIMEOUT, h2.clone().ready())
        .await
        .map_err(|_| "the connection was not ready in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let req = http::Request::get(url)
        .body(())
        .map_err(|e| e.to_string())?;
    let (resp, _) = h2.send_request(req, true).map_err(|e| e.to_string())?;
    read_full(resp).await
}

/// A GET with no body on `h2`: status and body.
pub async fn get(
    h2: &h2::client::SendRequest<Bytes>,
    url: &str,
) -> Result<(http::StatusCode, String), String> {
    get_full(h2, url).await.map(|f| (f.status, f.body))
}

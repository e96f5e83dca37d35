//! The request of an HTTP health check, over h2 (for an h2 upstream).

use crate::upstream::stream::UpstreamStream;

/// Sends `GET path` to `host` on `stream` (h2 already agreed, by ALPN or prior knowledge)
/// and returns the answer's status; None when the backend does not speak h2 or fails.
/// The caller bounds the time.
pub async fn get(stream: UpstreamStream, tls: bool, host: &str, path: &str) -> Option<u16> {
    let (client, connection) = ::h2::client::handshake(stream).await.ok()?;
    let scheme = if tls { "https" } else { "http" };
    let request = http::Request::get(format!("{scheme}://{host}{path}"))
        .header(http::header::USER_AGENT, "switchyard-health")
        .body(())
        .ok()?;
    let exchange = async move {
        let mut client = client.ready().await.ok()?;
        let (response, _) = client.send_request(request, true).ok()?;
        let response = response.await.ok()?;
        Some(response.status().as_u16())
    };
    // The connection is driven beside the exchange, and dropped (closed) with it.
    tokio::select! {
        status = exchange => status,
        _ = connection => None,
    }
}

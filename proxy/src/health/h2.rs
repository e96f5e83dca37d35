//! The request of an HTTP health check, over h2 (for an h2 upstream).

use super::{body_contains, CheckRequest};
use crate::config::MAX_CHECK_BODY;
use crate::upstream::stream::UpstreamStream;

/// Sends `GET path` with the request's fields on `stream` (h2 already agreed, by ALPN or
/// prior knowledge) and returns the answer's status, and whether its body contains
/// `req.body` (true when there is none to look for). None when the backend does not speak
/// h2 or fails. The caller bounds the time.
pub(super) async fn get(
    stream: UpstreamStream,
    tls: bool,
    req: &CheckRequest<'_>,
) -> Option<(u16, bool)> {
    let (client, connection) = ::h2::client::handshake(stream).await.ok()?;
    let scheme = if tls { "https" } else { "http" };
    let mut request = http::Request::get(format!("{scheme}://{}{}", req.host, req.path));
    for (name, value) in req.fields() {
        // `http` lowers the name, as h2 requires (`X-Health-Token` goes as `x-health-token`).
        request = request.header(name, value);
    }
    let request = match request.body(()) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("health check: the request cannot be sent over h2: {e}");
            return None;
        }
    };
    let exchange = async move {
        let mut client = client.ready().await.ok()?;
        let (response, _) = client.send_request(request, true).ok()?;
        let response = response.await.ok()?;
        let status = response.status().as_u16();
        let Some(needle) = req.body else {
            return Some((status, true));
        };
        let mut body = response.into_body();
        let mut got = Vec::new();
        while got.len() < MAX_CHECK_BODY {
            let Some(data) = body.data().await else {
                break;
            };
            let data = data.ok()?;
            // Returned to the window, or a body longer than it would stall.
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        got.truncate(MAX_CHECK_BODY);
        Some((status, body_contains(&got, needle)))
    };
    // The connection is driven beside the exchange, and dropped (closed) with it.
    tokio::select! {
        status = exchange => status,
        _ = connection => None,
    }
}

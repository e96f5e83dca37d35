//! Responses the proxy writes itself: errors with a short plain-text reason, redirects.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Writes `status` with a one-line plain-text body `"<status> <reason>: <detail>\n"`.
pub async fn text(session: &mut Session, status: u16, detail: &str) -> Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = Bytes::from(format!("{status} {reason}: {detail}\n"));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if status == 429 || status == 503 {
        resp.insert_header("retry-after", "1")?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Permanent redirect (308 keeps the method and body).
pub async fn redirect(session: &mut Session, location: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(308, Some(3))?;
    resp.insert_header("location", location)?;
    resp.insert_header("content-length", "0")?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

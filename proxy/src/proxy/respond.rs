//! Responses the proxy writes itself: errors with a short plain-text reason, redirects.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// The one-line plain-text body of every local answer: `"<status> <reason>: <detail>\n"`.
fn text_body(status: u16, detail: &str) -> String {
    format!("{status} {}: {detail}\n", reason(status))
}

/// A complete HTTP/1.1 answer with the plain-text body of [`text`], as bytes, closing the
/// connection: for request paths that write to the socket themselves.
pub fn text_bytes(status: u16, detail: &str) -> Vec<u8> {
    let body = text_body(status, detail);
    let retry = if status == 429 || status == 503 {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\n{retry}connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

/// A permanent redirect as bytes (see [`redirect`]); `close` ends the connection after it.
pub fn redirect_bytes(location: &str, close: bool) -> Vec<u8> {
    let connection = if close { "connection: close\r\n" } else { "" };
    format!("HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n{connection}\r\n")
        .into_bytes()
}

/// Writes `status` with a one-line plain-text body `"<status> <reason>: <detail>\n"`.
pub async fn text(session: &mut Session, status: u16, detail: &str) -> Result<()> {
    let body = Bytes::from(text_body(status, detail));
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

//! Responses the proxy writes itself: errors with a short plain-text reason, redirects.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::h1::head::set_fields;

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
/// connection: for request paths that write to the socket themselves. `added` are the
/// listener's `response_headers`.
pub fn text_bytes(status: u16, detail: &str, added: &[(String, String)]) -> Vec<u8> {
    text_bytes_on(status, detail, true, added)
}

/// [`text_bytes`], keeping the connection open unless `close`.
pub fn text_bytes_on(
    status: u16,
    detail: &str,
    close: bool,
    added: &[(String, String)],
) -> Vec<u8> {
    let body = text_body(status, detail);
    let retry = if status == 429 || status == 503 {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    let connection = if close { "connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\n{retry}{connection}",
        reason(status),
        body.len()
    );
    finish(head, added, body.as_bytes())
}

/// A permanent redirect as bytes (see [`redirect`]); `close` ends the connection after it.
pub fn redirect_bytes(location: &str, close: bool, added: &[(String, String)]) -> Vec<u8> {
    let connection = if close { "connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n{connection}"
    );
    finish(head, added, b"")
}

/// `head` (its fields, without the blank line) with `added` set, then `body`.
fn finish(head: String, added: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = head.into_bytes();
    // RFC 9110 §6.6.1: a server with a clock sends Date, as the backends' answers get it
    // when they lack one and as nginx and HAProxy date their own answers.
    out.extend_from_slice(b"date: ");
    crate::h1::head::with_http_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    if !added.is_empty() {
        set_fields(&mut out, added);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sets the listener's `response_headers` on an answer of the proxy's own, replacing ours
/// of the same name (an operator's `cache-control`, say).
fn insert_all(resp: &mut ResponseHeader, added: &[(String, String)]) -> Result<()> {
    for (name, value) in added {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    Ok(())
}

/// Writes `status` with a one-line plain-text body `"<status> <reason>: <detail>\n"`.
pub async fn text(
    session: &mut Session,
    status: u16,
    detail: &str,
    added: &[(String, String)],
) -> Result<()> {
    let (resp, body) = text_answer(status, detail, added)?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The head and body of [`text`], for sessions written outside pingora's proxy loop.
pub fn text_answer(
    status: u16,
    detail: &str,
    added: &[(String, String)],
) -> Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from(text_body(status, detail));
    let mut resp = ResponseHeader::build(status, Some(5 + added.len()))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    crate::h1::head::with_http_date(|d| resp.insert_header("date", d))?;
    if status == 429 || status == 503 {
        resp.insert_header("retry-after", "1")?;
    }
    insert_all(&mut resp, added)?;
    Ok((resp, body))
}

/// Permanent redirect (308 keeps the method and body).
pub async fn redirect(
    session: &mut Session,
    location: &str,
    added: &[(String, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(308, Some(3 + added.len()))?;
    resp.insert_header("location", location)?;
    resp.insert_header("content-length", "0")?;
    crate::h1::head::with_http_date(|d| resp.insert_header("date", d))?;
    insert_all(&mut resp, added)?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(())
}

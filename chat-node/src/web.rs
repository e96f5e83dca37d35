//! The browser chat page (`chat-node/web/`): `GET /` and `GET /assets/{file}`, embedded in
//! the binary (no files to deploy, no build step), with headers that keep the page strict: a
//! Content-Security-Policy without inline code, `nosniff`, and no referrer (invite tokens
//! live in the URL fragment and must not leak).
//!
//! Files are revalidated on every load (`no-cache` plus an `ETag`): their names carry no
//! version, so a long cache would keep an old client after an upgrade.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's Content-Security-Policy: its own scripts, styles and connections only,
/// nothing inline, no framing. `connect-src 'self'` covers the Socket.IO WebSocket to the
/// page's own host (CSP Level 3 matches `ws:`/`wss:` to an `http:`/`https:` origin), so an
/// injected script could not open a WebSocket to any other host.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// The name under `/assets/`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../web/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        name: "sio.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/sio.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../web/favicon.svg"),
    },
];

/// The page's routes: `/`, `/index.html` and `/assets/{file}` (GET and HEAD).
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset, &headers),
        None => with_security_headers(
            (
                StatusCode::NOT_FOUND,
                [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                "not found",
            )
                .into_response(),
        ),
    }
}

/// The file, or `304 Not Modified` when the browser's copy is current.
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = etag(asset.body);
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
            asset.body,
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Hex digits in quotes: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(ETAG, value);
    }
    with_security_headers(response)
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// A strong validator: FNV-1a (64 bit) of the content, quoted. Not cryptographic; it only
/// has to change when the file does.
fn etag(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::node::{Node, NodeConfig};

    /// Serves a whole node (so the page is tested as `Node::router` mounts it) on a free
    /// port; the server stops with the test's runtime.
    async fn serve_node() -> String {
        let node = Node::new(NodeConfig {
            node_id: "web-test".to_owned(),
            ..NodeConfig::default()
        })
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, std::future::pending()));
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_strict_headers() {
        let base = serve_node().await;
        let http = client();
        for (path, content_type, marker) in [
            ("/", "text/html; charset=utf-8", "id=\"status-node\""),
            ("/index.html", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/assets/app.js",
                "text/javascript; charset=utf-8",
                "import { SioClient }",
            ),
            (
                "/assets/sio.js",
                "text/javascript; charset=utf-8",
                "export class SioClient",
            ),
            ("/assets/app.css", "text/css; charset=utf-8", "#status"),
            ("/assets/favicon.svg", "image/svg+xml", "<svg"),
        ] {
            let response = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(header(&response, "content-type"), content_type, "{path}");
            assert_eq!(header(&response, "content-security-policy"), CSP, "{path}");
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            assert_eq!(header(&response, "referrer-policy"), "no-referrer");
            assert_eq!(header(&response, "cache-control"), "no-cache");
            assert_eq!(header(&response, "x-served-by"), "web-test");
            let body = response.text().await.unwrap();
            assert!(body.contains(marker), "{path} lacks {marker:?}");
        }
    }

    #[test]
    fn the_csp_forbids_inline_code_and_the_page_has_none() {
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self' data:",
        ] {
            assert!(CSP.split("; ").any(|d| d == directive), "{directive}");
        }
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
        let page = std::str::from_utf8(INDEX.body).unwrap();
        // Every <script> has a src, nothing carries a style attribute or an inline handler.
        for (i, _) in page.match_indices("<script") {
            let tag = &page[i..i + page[i..].find('>').unwrap()];
            assert!(tag.contains("src=\"/assets/"), "inline script: {tag}");
        }
        assert!(!page.contains("<style"));
        assert!(!page.contains(" style="));
        assert!(!page.contains(" onclick=") && !page.contains(" onload="));
    }

    #[tokio::test]
    async fn a_current_copy_is_revalidated_and_unknown_assets_are_404() {
        let base = serve_node().await;
        let http = client();
        let first = http
            .get(format!("{base}/assets/app.js"))
            .send()
            .await
            .unwrap();
        let tag = header(&first, "etag").to_owned();
        let again = http
            .get(format!("{base}/assets/app.js"))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        let changed = http
            .get(format!("{base}/assets/app.js"))
            .header("if-none-match", "\"0000000000000000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200);
        for path in ["/assets/nope.js", "/assets/..%2Fsrc%2Flib.rs", "/assets/"] {
            let response = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(header(&response, "x-served-by"), "web-test");
        }
        let head = http.head(format!("{base}/")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "content-security-policy"), CSP);
    }

    #[test]
    fn etags_differ_when_content_differs() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"same"), etag(b"same"));
        assert_eq!(etag(b"").len(), 18);
    }
}

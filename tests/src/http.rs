//! HTTP clients for tests (reqwest over rustls with ring) and [`Reply`], a response read whole.
//!
//! Every client ignores proxy environment variables, times out after [`STEP_TIMEOUT`], and is
//! made per call site: a reqwest client belongs to the tokio runtime that first used it, and
//! each `#[tokio::test]` has its own runtime.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{HeaderMap, StatusCode, Version};
use reqwest::{Client, ClientBuilder, RequestBuilder};

use crate::STEP_TIMEOUT;

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `x-backend-id` header the echo backend sets (`None` if the proxy answered itself).
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend-id")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header (e.g. several `set-cookie`).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// The body parsed as JSON (`GET /headers`, `/stats`, the admin's `/status`).
    ///
    /// # Panics
    /// If the body is not JSON, with the body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Forced ALPN for [`tls_client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// Offer h2 and http/1.1; the server picks.
    Auto,
    /// Offer only http/1.1.
    Http1,
    /// Offer only h2 (the request fails if the server does not speak it).
    H2,
}

fn base() -> ClientBuilder {
    crate::init();
    Client::builder()
        .no_proxy()
        .timeout(STEP_TIMEOUT)
        .connect_timeout(STEP_TIMEOUT)
        .tls_built_in_root_certs(false)
}

/// A plain client with a keep-alive pool.
pub fn client() -> Client {
    base().build().expect("building an HTTP client")
}

/// A client whose connections come from `local` (e.g. `127.0.0.7`): distinct client addresses
/// for `ip_hash` tests. Any address in 127.0.0.0/8 works on Linux without setup.
pub fn client_from(local: IpAddr) -> Client {
    base()
        .local_address(local)
        .build()
        .expect("building an HTTP client with a local address")
}

/// A client with a cookie store (for `sticky_cookie`: the pinning cookie is sent back).
pub fn cookie_client() -> Client {
    base()
        .cookie_store(true)
        .build()
        .expect("building an HTTP client with cookies")
}

/// An HTTPS client trusting only the CA in `ca_pem`, resolving `localhost` to 127.0.0.1 (the
/// test certificates are for `localhost`), with the given ALPN.
pub fn tls_client(ca_pem: &[u8], alpn: Alpn) -> Client {
    tls_builder(ca_pem, alpn)
        .build()
        .expect("building a TLS client")
}

/// The builder behind [`tls_client`], to add more (cookies, a local address…).
pub fn tls_builder(ca_pem: &[u8], alpn: Alpn) -> ClientBuilder {
    let mut b = base()
        .use_rustls_tls()
        .resolve(
            "localhost",
            SocketAddr::from((IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
        )
        .min_tls_version(reqwest::tls::Version::TLS_1_2);
    for cert in reqwest::Certificate::from_pem_bundle(ca_pem).expect("CA PEM parses") {
        b = b.add_root_certificate(cert);
    }
    match alpn {
        Alpn::Auto => b,
        Alpn::Http1 => b.http1_only(),
        Alpn::H2 => b.http2_prior_knowledge(),
    }
}

/// Sends a request and reads the whole response.
///
/// # Panics
/// On any transport error (connect, timeout, reset), naming the request.
pub async fn send(req: RequestBuilder) -> Reply {
    let what = req
        .try_clone()
        .and_then(|r| r.build().ok())
        .map(|r| format!("{} {}", r.method(), r.url()))
        .unwrap_or_else(|| "request".into());
    match try_send(req).await {
        Ok(reply) => reply,
        Err(e) => {
            // reqwest's Display stops at "error sending request"; the cause (refused,
            // reset, closed before the answer) is what tells one failure from another.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            panic!("{what}: {why}")
        }
    }
}

/// Like [`send`], returning transport errors instead of panicking.
pub async fn try_send(req: RequestBuilder) -> Result<Reply, reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.text().await?;
    Ok(Reply {
        status,
        version,
        headers,
        body,
    })
}

/// `GET url` with a fresh plain client.
pub async fn get(url: &str) -> Reply {
    get_with(&client(), url).await
}

/// `GET url` with the given client.
pub async fn get_with(client: &Client, url: &str) -> Reply {
    send(client.get(url)).await
}

/// `n` GETs in sequence; the `x-backend-id` of each (`"-"` when missing). For order tests.
pub async fn backend_sequence(client: &Client, url: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = get_with(client, url).await;
        out.push(r.backend().unwrap_or("-").to_owned());
    }
    out
}

/// `n` GETs in sequence, counted by `x-backend-id` (`"-"` when missing).
pub async fn backend_counts(client: &Client, url: &str, n: usize) -> BTreeMap<String, usize> {
    tally(
        backend_sequence(client, url, n)
            .await
            .iter()
            .map(String::as_str),
    )
}

/// Sends as many GETs to `url` as `want` counts in all, and asserts that exactly those
/// backends answered them, that many times each: `assert_counts(&c, &url, &[("a", 5), ("b", 5)])`.
pub async fn assert_counts(client: &Client, url: &str, want: &[(&str, usize)]) {
    let n = want.iter().map(|(_, k)| k).sum();
    let got = backend_counts(client, url, n).await;
    assert_eq!(
        got,
        counts(want),
        "which backends answered {n} GETs of {url}"
    );
}

/// How many times each id occurs.
pub fn tally<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The counts spelled out by `pairs`, to compare with [`backend_counts`] or [`tally`]:
/// `counts(&[("a", 5), ("b", 5)])`.
pub fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Asserts `r` is a `text/plain` answer (the proxy's own error pages are).
pub fn assert_plain_text(r: &Reply) {
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}: {r:?}");
}

/// The value of gauge or counter `series` (its name with any labels, as the text format
/// writes it) in a Prometheus scrape of `url`; `None` when the scrape lacks it.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let body = send(client().get(url)).await.body;
    body.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

//! What the proxy checks in a request before it routes it, on both request paths (its own
//! HTTP/1.1 path, and pingora's, which a chunked body or HTTP/1.0 leads to): one valid Host
//! on every HTTP/1.1 request, and routes matched on the path a backend will act on
//! (percent-decoded, dot-segments resolved); a malformed head gets a 400 that says what is
//! wrong, one over the size limits a 414 or 431, and a transfer coding other than chunked
//! alone a 501 or 400; client fields that mimic ours with underscores never reach a
//! backend. Also what it
//! adds to or keeps from answers:
//! a Date when the backend sent none, a status line after stray empty lines, and the only
//! backend of an upstream kept in service through failures any client can cause.

#![allow(clippy::unwrap_used)]

use tokio::net::TcpStream;

use tests::fixtures::{backend_entry, listener, tls_keys, upstream, TWO_THREADS};
use tests::raw::{get_req, proxy_for_raw, reply, RawBackend, RawConn, Resp};
use tests::{free_port, port_array, Backend, Certs, Proxy};

/// A raw backend that answers every request `200 ok` and counts the connections it got.
async fn ok_backend() -> RawBackend {
    RawBackend::start(|mut conn: RawConn<TcpStream>, _| async move {
        while conn.request().await.is_some() {
            if !reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await {
                return;
            }
        }
    })
    .await
}

/// A backend that answers `200 ok` to every request and hands over the fields and body of
/// each, as it received them.
async fn recording_backend() -> (
    RawBackend,
    tokio::sync::mpsc::UnboundedReceiver<(Vec<(String, String)>, Vec<u8>)>,
) {
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let raw = RawBackend::start(move |mut conn: RawConn<TcpStream>, _| {
        let seen_tx = seen_tx.clone();
        async move {
            while let Some(req) = conn.request().await {
                let _ = seen_tx.send((req.headers, req.body));
                if !reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await {
                    return;
                }
            }
        }
    })
    .await;
    (raw, seen)
}

/// Sends `raw` on a new connection and returns the answer.
async fn send(proxy: &Proxy, raw: &str) -> Resp {
    RawConn::connect(proxy.addr()).await.exchange(raw).await
}

/// Sends `raw` on a new connection and returns the answer's status and body text.
async fn answer(proxy: &Proxy, raw: &str) -> (u16, String) {
    let r = send(proxy, raw).await;
    (r.status, r.text())
}

/// Sends each request of `cases` on a connection of its own and checks that `read` makes
/// its paired value of the answer (`what` names the request path in a failure).
async fn expect_each<T: PartialEq + std::fmt::Debug>(
    proxy: &Proxy,
    what: &str,
    cases: impl IntoIterator<Item = (&str, T)>,
    read: impl Fn(&Resp) -> T,
) {
    for (req, want) in cases {
        let r = send(proxy, req).await;
        assert_eq!(read(&r), want, "{what}: {req:?}: {}", r.text());
    }
}

#[tokio::test]
async fn requests_without_one_valid_host_get_400_and_reach_no_backend() {
    let raw = ok_backend().await;
    let proxy = proxy_for_raw(&[&raw], "");
    let chunked = "Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    let cases = [
        // The proxy's own path.
        ("GET / HTTP/1.1\r\n\r\n", "missing Host header"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a b/c@d\r\n\r\n",
            "invalid Host header",
        ),
        (
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            "invalid Host header",
        ),
        ("GET / HTTP/1.1\r\nHost: :80\r\n\r\n", "invalid Host header"),
        // pingora's path (a chunked body).
        (
            &format!("POST / HTTP/1.1\r\n{chunked}"),
            "missing Host header",
        ),
        (
            &format!("POST / HTTP/1.1\r\nHost: a:80x\r\n{chunked}"),
            "invalid Host header",
        ),
    ];
    for (req, reason) in cases {
        let (status, body) = answer(&proxy, req).await;
        assert_eq!(status, 400, "{req:?}: {body}");
        assert!(body.contains(reason), "{req:?}: {body}");
    }
    assert_eq!(raw.accepted(), 0, "a rejected request reached the backend");

    // Valid ones pass: HTTP/1.0 needs no Host; ports and IPv6 literals are fine.
    for req in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    ] {
        assert_eq!(answer(&proxy, req).await, (200, "ok".into()), "{req:?}");
    }
}

#[tokio::test]
async fn routes_match_the_decoded_path_with_dot_segments_resolved() {
    let api = Backend::start("api");
    let web = Backend::start("web");
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}\n{}\n{}\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"api\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"web\"\n",
        listener(free_port()),
        upstream("api", None, &[backend_entry(&api, "")]),
        upstream("web", None, &[backend_entry(&web, "")]),
    ));
    let cases = [
        ("/api/x", 200, "api"),
        ("/%61pi/x", 200, "api"),
        ("//api//x", 200, "api"),
        ("/api/./x", 200, "api"),
        ("/api/../secret", 200, "web"),
        ("/api/%2e%2e/secret", 200, "web"),
        ("/api%2F..%2Fsecret", 200, "web"),
        ("/apiary", 200, "web"),
        // Path parameters are left out and `..;` climbs, as a servlet container reads them.
        ("/api;x/y", 200, "api"),
        ("/x/..;/api/y", 200, "api"),
        ("/x/..%3B/api/y", 200, "api"),
        ("/api/..;/secret", 200, "web"),
        ("/api/..;/..;/x", 400, "the path climbs above the root"),
        ("/../etc/passwd", 400, "the path climbs above the root"),
        ("/api/../../x", 400, "the path climbs above the root"),
        ("/a%zz", 400, "a percent escape in the path is invalid"),
        ("/a%00", 400, "the path contains a NUL byte"),
        // Targets that are not paths: pingora routed them as `/` and forwarded them as
        // sent (two spaces after the method are repaired to the target `%20/api/x`).
        (
            " /api/x",
            400,
            "the request target is not a path, an http(s) URL, or * for OPTIONS",
        ),
        (
            "api/../x",
            400,
            "the request target is not a path, an http(s) URL, or * for OPTIONS",
        ),
    ];
    for (path, status, want) in cases {
        let (got_status, body) = answer(&proxy, &get_req(path)).await;
        assert_eq!(got_status, status, "{path}: {got_status} {body}");
        assert!(body.contains(want), "{path}: {body}");
    }
}

/// The route tests' two backends, `api` and `web`, and the certificate of their proxies'
/// TLS listener.
struct ApiAndWeb {
    api: Backend,
    web: Backend,
    certs: Certs,
    _dir: tempfile::TempDir,
}

impl ApiAndWeb {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
        ApiAndWeb {
            api: Backend::start("api"),
            web: Backend::start("web"),
            certs,
            _dir: dir,
        }
    }

    /// A proxy on `http1`'s request path with a plain and a TLS listener (returned with it,
    /// in that order) and two upstreams, `api` and `web`, of one backend each, under
    /// `routes`.
    fn proxy(&self, http1: &str, routes: &str) -> (Proxy, u16, u16) {
        let [plain, tls] = port_array();
        let proxy = Proxy::start_config(&format!(
            "[server]\nthreads = 2\nhttp1 = \"{http1}\"\n{}\n{}{}\n\n{}\n{}\n{routes}",
            listener(plain),
            listener(tls),
            tls_keys(&self.certs.cert, &self.certs.key),
            upstream("api", None, &[backend_entry(&self.api, "")]),
            upstream("web", None, &[backend_entry(&self.web, "")]),
        ));
        (proxy, plain, tls)
    }
}

/// `prefix_rewrite` replaces a route's prefix in the target the backend gets, on every path
/// a request can take: Switchyard's HTTP/1.1 path and pingora's (HTTP/1.0, or chosen), h2,
/// and a WebSocket's upgrade. The backend gets the normalized path, so a request cannot
/// climb out of the rewritten prefix; a route without it forwards the target as it came.
#[tokio::test]
async fn a_prefix_rewrite_reaches_the_backend_on_every_path() {
    let backends = ApiAndWeb::start();
    let certs = &backends.certs;
    for http1 in ["native", "pingora"] {
        let (proxy, plain, tls) = backends.proxy(
            http1,
            "[[routes]]\npath_prefix = \"/api/\"\nprefix_rewrite = \"/target/\"\nupstream = \"api\"\n\n\
             [[routes]]\npath_prefix = \"/strip/\"\nprefix_rewrite = \"/\"\nupstream = \"api\"\n\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"web\"\n",
        );
        let cases = [
            (
                "GET /api/x?q=1&r=%20 HTTP/1.1\r\nHost: t\r\n\r\n",
                "/target/x?q=1&r=%20",
            ),
            (
                "GET /%61pi//x/./y HTTP/1.1\r\nHost: t\r\n\r\n",
                "/target/x/y",
            ),
            (
                "GET /api/a%20b/%C3%A9 HTTP/1.1\r\nHost: t\r\n\r\n",
                "/target/a%20b/%C3%A9",
            ),
            // From a deeper segment back into the prefix: still under the rewrite.
            ("GET /api/y/../z HTTP/1.1\r\nHost: t\r\n\r\n", "/target/z"),
            ("GET /api/y/..;/z HTTP/1.1\r\nHost: t\r\n\r\n", "/target/z"),
            // Parameters go on, unless they were in the prefix's segments.
            (
                "GET /api/a;v=1/b HTTP/1.1\r\nHost: t\r\n\r\n",
                "/target/a;v=1/b",
            ),
            ("GET /api;v=1/b HTTP/1.1\r\nHost: t\r\n\r\n", "/target/b"),
            // pingora's path.
            ("GET /api/old?v HTTP/1.0\r\n\r\n", "/target/old?v"),
            // An absolute-form target is sent origin-form.
            (
                "GET http://t/api/abs?q HTTP/1.1\r\nHost: t\r\n\r\n",
                "/target/abs?q",
            ),
            // Another route: the target as it came.
            ("GET /target/./w HTTP/1.1\r\nHost: t\r\n\r\n", "/target/./w"),
        ];
        let cases = cases.map(|(req, want)| (req, (200, want.to_owned())));
        expect_each(&proxy, http1, cases, |r| (r.status, r.text())).await;

        // The backend is told the prefix stripped; a client's own is never passed on, on
        // this route or another.
        let headers = |route: &'static str, version: &'static str| {
            let addr = proxy.addr();
            async move {
                let mut c = RawConn::connect(addr).await;
                let r = c
                    .exchange(format!(
                        "GET {route} {version}\r\nHost: t\r\nX-Forwarded-Prefix: /evil\r\n\r\n"
                    ))
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                v["x-forwarded-prefix"].as_str().map(str::to_owned)
            }
        };
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let prefix = headers("/strip/headers", version).await;
            assert_eq!(prefix.as_deref(), Some("/strip"), "{http1} {version}");
            let prefix = headers("/headers", version).await;
            assert_eq!(prefix, None, "{http1} {version}");
        }
        let h2 = tests::h2client::connect(&certs.ca_pem(), tls).await;
        let (status, body) =
            tests::h2client::get(&h2, &format!("https://localhost:{tls}/api/h2?x=1"))
                .await
                .unwrap();
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "/target/h2?x=1"),
            "{http1}: h2"
        );

        let (_ws, resp) = tests::ws::ws_open(
            &format!("ws://127.0.0.1:{plain}/api/chat?room=a"),
            &tests::ws::WsOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            resp.headers()
                .get("x-request-target")
                .and_then(|v| v.to_str().ok()),
            Some("/target/chat?room=a"),
            "{http1}: websocket"
        );
        let (_ws, resp) = tests::ws::ws_open(
            &format!("ws://127.0.0.1:{plain}/strip/chat"),
            &tests::ws::WsOptions {
                headers: vec![("x-forwarded-prefix".into(), "/evil".into())],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let seen = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(
            seen("x-request-target"),
            Some("/chat"),
            "{http1}: websocket"
        );
        assert_eq!(
            seen("x-request-forwarded-prefix"),
            Some("/strip"),
            "{http1}: websocket"
        );
    }
}

/// A request for a route's prefix without its last `/` (`/api` for `/api/`) is redirected
/// to the prefix with it, query kept, as nginx redirects for `location /api/`, on every path
/// (a 308, so that a POST stays a POST); unless the route's `slash_redirect` is off, or an
/// earlier route takes the request. The location is the prefix as a URI path.
#[tokio::test]
async fn a_prefix_without_its_slash_is_redirected_to_its_route() {
    let backends = ApiAndWeb::start();
    let certs = &backends.certs;
    for http1 in ["native", "pingora"] {
        let (proxy, _, tls) = backends.proxy(
            http1,
            "[[routes]]\npath_prefix = \"/first\"\nupstream = \"web\"\n\n\
             [[routes]]\npath_prefix = \"/api/\"\nprefix_rewrite = \"/target/\"\nupstream = \"api\"\n\n\
             [[routes]]\npath_prefix = \"/first/\"\nupstream = \"api\"\n\n\
             [[routes]]\npath_prefix = \"/my docs/\"\nupstream = \"api\"\n\n\
             [[routes]]\npath_prefix = \"/raw/\"\nslash_redirect = false\nupstream = \"api\"\n\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"web\"\n",
        );
        let redirects = [
            (
                "GET /api?x=1&y=%20 HTTP/1.1\r\nHost: t\r\n\r\n",
                "/api/?x=1&y=%20",
            ),
            ("GET /%61pi HTTP/1.1\r\nHost: t\r\n\r\n", "/api/"),
            ("GET //api HTTP/1.1\r\nHost: t\r\n\r\n", "/api/"),
            ("GET /api HTTP/1.0\r\n\r\n", "/api/"),
            ("GET http://t/api?q HTTP/1.1\r\nHost: t\r\n\r\n", "/api/?q"),
            (
                "POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
                "/api/",
            ),
            ("GET /my%20docs HTTP/1.1\r\nHost: t\r\n\r\n", "/my%20docs/"),
        ];
        let redirects = redirects.map(|(req, want)| (req, (308, Some(want.to_owned()))));
        expect_each(&proxy, http1, redirects, |r| {
            (r.status, r.header("location").map(str::to_owned))
        })
        .await;
        // Not redirected: the prefix itself, a longer name, a route with the redirect off,
        // and a path an earlier route takes.
        let forwarded = [
            ("/api/", "/target/"),
            ("/apix", "web"),
            ("/raw", "web"),
            ("/raw/", "api"),
            ("/first", "web"),
        ];
        for (path, want) in forwarded {
            let (status, body) = answer(&proxy, &get_req(path)).await;
            assert_eq!((status, body.as_str()), (200, want), "{http1}: {path}");
        }
        // The redirect keeps the connection for the next request.
        let mut c = RawConn::connect(proxy.addr()).await;
        assert_eq!(c.exchange(get_req("/api")).await.status, 308, "{http1}");
        assert_eq!(
            c.exchange(get_req("/api/")).await.text(),
            "/target/",
            "{http1}"
        );

        let h2 = tests::h2client::connect(&certs.ca_pem(), tls).await;
        let full = tests::h2client::get_full(&h2, &format!("https://localhost:{tls}/api?h=2"))
            .await
            .unwrap();
        assert_eq!(
            (
                full.status.as_u16(),
                full.headers.get("location").and_then(|v| v.to_str().ok())
            ),
            (308, Some("/api/?h=2")),
            "{http1}: h2"
        );
    }
}

/// A route with `allow` serves only the clients it lists, by the connection's address (a
/// PROXY header's behind a balancer, never X-Forwarded-For): others get `403` with the
/// reason, on every path, upgrades and the slash redirect included (which would tell them
/// the route exists).
#[tokio::test]
async fn a_route_with_allow_serves_only_the_addresses_it_lists() {
    let backends = ApiAndWeb::start();
    let certs = &backends.certs;
    for http1 in ["native", "pingora"] {
        let balanced = free_port();
        let (proxy, plain, tls) = backends.proxy(
            http1,
            &format!(
                "[[listeners]]\nlisten = \"127.0.0.1:{balanced}\"\nproxy_protocol = true\n\n\
                 [[routes]]\npath_prefix = \"/internal/\"\nallow = [\"10.0.0.0/8\", \"::1\"]\nupstream = \"api\"\n\n\
                 [[routes]]\npath_prefix = \"/local/\"\nallow = [\"127.0.0.1\"]\nupstream = \"api\"\n\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"web\"\n"
            ),
        );
        let cases = [
            ("GET /internal/x HTTP/1.1\r\nHost: t\r\n\r\n", 403),
            // The client's own claim is not believed.
            (
                "GET /internal/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n",
                403,
            ),
            ("GET /internal HTTP/1.1\r\nHost: t\r\n\r\n", 403),
            // A backend that reads `;` as parameters (Tomcat, Spring) acts on /internal/x.
            ("GET /internal;x/x HTTP/1.1\r\nHost: t\r\n\r\n", 403),
            ("GET /y/..;/internal/x HTTP/1.1\r\nHost: t\r\n\r\n", 403),
            ("GET /internal/x HTTP/1.0\r\n\r\n", 403),
            (
                "POST /internal/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                403,
            ),
            (
                "GET /internal/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                403,
            ),
            ("GET /local/x HTTP/1.1\r\nHost: t\r\n\r\n", 200),
            ("GET /local HTTP/1.1\r\nHost: t\r\n\r\n", 308),
            ("GET /other HTTP/1.1\r\nHost: t\r\n\r\n", 200),
        ];
        // Each 403 with the reason.
        let cases = cases.map(|(req, status)| (req, (status, status == 403)));
        expect_each(&proxy, http1, cases, |r| {
            let reason = r.text().contains("this address may not use this route");
            (r.status, reason)
        })
        .await;
        // Behind a balancer, the address its PROXY header gives is the one checked.
        for (source, status) in [("10.9.8.7", 200), ("192.0.2.1", 403)] {
            let mut c = RawConn::connect(([127, 0, 0, 1], balanced).into()).await;
            let r = c
                .exchange(format!(
                    "PROXY TCP4 {source} 127.0.0.1 51234 {balanced}\r\nGET /internal/x HTTP/1.1\r\nHost: t\r\n\r\n"
                ))
                .await;
            assert_eq!(r.status, status, "{http1}: from {source}: {}", r.text());
        }
        let h2 = tests::h2client::connect(&certs.ca_pem(), tls).await;
        for (path, status) in [("/internal/h2", 403), ("/local/h2", 200)] {
            let (got, body) = tests::h2client::get(&h2, &format!("https://localhost:{tls}{path}"))
                .await
                .unwrap();
            assert_eq!(got.as_u16(), status, "{http1}: h2 {path}: {body}");
        }
        let _ = plain;
    }
}

/// A route for a host takes the host's fully qualified spelling too (`admin.local.`, to
/// DNS and to backends the same site), so that it cannot be used to get past the route's
/// `allow`, on either request path.
#[tokio::test]
async fn a_host_route_takes_its_host_with_a_trailing_dot() {
    let backends = ApiAndWeb::start();
    for http1 in ["native", "pingora"] {
        let (proxy, _, _) = backends.proxy(
            http1,
            "[[routes]]\nhost = \"admin.local\"\nallow = [\"10.0.0.0/8\"]\nupstream = \"api\"\n\n\
             [[routes]]\nupstream = \"web\"\n",
        );
        let cases = [
            ("GET /x HTTP/1.1\r\nHost: admin.local\r\n\r\n", 403),
            ("GET /x HTTP/1.1\r\nHost: admin.local.\r\n\r\n", 403),
            ("GET /x HTTP/1.1\r\nHost: ADMIN.local.:80\r\n\r\n", 403),
            ("GET http://admin.local./x HTTP/1.1\r\nHost: t\r\n\r\n", 403),
            ("GET /x HTTP/1.1\r\nHost: other.local.\r\n\r\n", 200),
        ];
        expect_each(&proxy, http1, cases, |r| r.status).await;
    }
}

#[tokio::test]
async fn a_date_is_added_and_a_status_line_after_empty_lines_is_kept() {
    let raw = RawBackend::start(|mut conn: RawConn<TcpStream>, _| async move {
        while let Some(req) = conn.request().await {
            let answer = if req.path == "/dated" {
                "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok"
            } else {
                "\r\n\r\nHTTP/1.1 203 Fine\r\nContent-Length: 2\r\n\r\nok"
            };
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(&[&raw], "");
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_req("/undated")).await;
    assert!(r.head.starts_with("HTTP/1.1 203 Fine\r\n"), "{r:?}");
    let date = r.header("date").unwrap_or_default();
    assert!(httpdate::parse_http_date(date).is_ok(), "{r:?}");
    let r = c.exchange(get_req("/dated")).await;
    assert_eq!(
        r.header("date"),
        Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        "{r:?}"
    );
    assert_eq!(r.head.matches("ate:").count(), 1, "{r:?}");
}

#[tokio::test]
async fn the_only_backend_stays_in_service_through_failed_requests() {
    // `/garbage` gets an answer that is not HTTP: a failure any client can cause.
    let raw = RawBackend::start(|mut conn: RawConn<TcpStream>, _| async move {
        while let Some(req) = conn.request().await {
            let answer = if req.path == "/garbage" {
                "NOT HTTP\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            };
            if !reply(&mut conn, answer).await || req.path == "/garbage" {
                return;
            }
        }
    })
    .await;
    let proxy = proxy_for_raw(
        &[&raw],
        "[upstreams.app.health]\nmax_fails = 2\nfail_window = \"30s\"\n",
    );
    for _ in 0..4 {
        let (status, body) = answer(&proxy, &get_req("/garbage")).await;
        assert_eq!(status, 502, "{body}");
    }
    assert_eq!(answer(&proxy, &get_req("/")).await, (200, "ok".into()));
}

/// A client's forwarded fields never reach a backend beside ours: the underscore spellings,
/// and RFC 7239's `Forwarded` and `X-Forwarded-Port`, which frameworks read with ours
/// (Spring's forwarded-header filter reads `Forwarded` first).
#[tokio::test]
async fn forwarded_fields_spelled_with_underscores_are_dropped() {
    let (raw, mut seen) = recording_backend().await;
    let proxy = proxy_for_raw(&[&raw], "");
    let spoof = "X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nx_forwarded_host: evil\r\n\
                 Forwarded: for=6.6.6.6;proto=https;host=evil\r\nX-Forwarded-Port: 6666\r\n";
    // The HTTP/1 path, then pingora's (HTTP/1.0).
    for req in [
        format!("GET / HTTP/1.1\r\nHost: test\r\n{spoof}X-Custom_Name: kept\r\n\r\n"),
        format!("GET / HTTP/1.0\r\n{spoof}X-Custom_Name: kept\r\n\r\n"),
    ] {
        let (status, _) = answer(&proxy, &req).await;
        assert_eq!(status, 200, "{req:?}");
        let (headers, _) = seen.recv().await.unwrap();
        assert!(
            headers
                .iter()
                .all(|(_, v)| !v.contains("6.6.6.6") && v != "evil" && v != "6666"),
            "{req:?}: {headers:?}"
        );
        for kept in [("x-custom_name", "kept"), ("x-real-ip", "127.0.0.1")] {
            assert!(
                headers.contains(&(kept.0.into(), kept.1.into())),
                "{req:?}: {headers:?}"
            );
        }
    }
}

/// `Content_Length` and `Transfer_Encoding` never reach a backend, on either request path:
/// the proxy frames a request by the real fields, and a server that reads `_` as `-` (Puma
/// before 6.4.3 maps both to one CGI variable) would frame it by these, reading the next
/// request on the shared backend connection as this one's body or the other way round.
#[tokio::test]
async fn framing_fields_spelled_with_underscores_are_dropped() {
    let (raw, mut seen) = recording_backend().await;
    let spoof = "Content_Length: 40\r\nTransfer_Encoding: chunked\r\ncontent_length: 7\r\n";
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(&[&raw], path);
        for req in [
            format!("POST /p HTTP/1.1\r\nHost: test\r\n{spoof}Content-Length: 2\r\n\r\nhi"),
            format!("GET /p HTTP/1.1\r\nHost: test\r\n{spoof}\r\n"),
            // pingora's path on either setting (HTTP/1.0).
            format!("POST /p HTTP/1.0\r\n{spoof}Content-Length: 2\r\n\r\nhi"),
        ] {
            let what = format!("{path:?} {req:?}");
            assert_eq!(answer(&proxy, &req).await, (200, "ok".into()), "{what}");
            let (headers, body) = seen.recv().await.unwrap();
            assert!(
                headers.iter().all(|(n, _)| !n.contains('_')),
                "{what}: {headers:?}"
            );
            let want: &[u8] = if req.starts_with("POST") { b"hi" } else { b"" };
            assert_eq!(body, want, "{what}");
        }
    }
}

/// A `Connection` field naming a field the proxy sets (which a next hop would then delete)
/// is refused by pingora, on either path: with its reason, not a bare `bad request`.
#[tokio::test]
async fn a_connection_field_naming_a_forwarded_field_gets_400_with_the_reason() {
    let raw = ok_backend().await;
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(&[&raw], path);
        for listed in ["X-Forwarded-For", "Host"] {
            let req = format!("GET / HTTP/1.1\r\nHost: t\r\nConnection: {listed}\r\n\r\n");
            let (status, body) = answer(&proxy, &req).await;
            assert_eq!(status, 400, "{path:?} {listed}: {body}");
            assert!(
                body.contains("protected header cannot be nominated by the Connection header"),
                "{path:?} {listed}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn malformed_heads_get_400_with_the_reason() {
    let raw = ok_backend().await;
    let proxy = proxy_for_raw(&[&raw], "");
    for (req, reason) in [
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
            "invalid header field name",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n",
            "invalid header field name",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
            "invalid header field value",
        ),
    ] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c.exchange(req).await;
        assert_eq!(r.status, 400, "{req:?}: {r:?}");
        assert!(
            r.text()
                .contains(&format!("malformed request head: {reason}")),
            "{req:?}: {r:?}"
        );
        c.expect_eof("after a malformed head").await;
    }
    assert_eq!(raw.accepted(), 0, "a malformed request reached the backend");
}

/// A request line whose version is not HTTP/1.1 or HTTP/1.0 (HTTP/2.0 or HTTP/1.2 over an
/// HTTP/1 connection, a lower-case version, none at all as in HTTP/0.9, tabs for spaces)
/// gets a 400 that says so on either path, not pingora's empty one, and reaches no backend.
#[tokio::test]
async fn request_lines_without_a_known_version_get_400_with_the_reason() {
    let raw = ok_backend().await;
    let detail = "malformed request line: the version is not HTTP/1.1 or HTTP/1.0";
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(&[&raw], path);
        for line in [
            "GET / HTTP/2.0",
            "GET / HTTP/1.2",
            "GET / http/1.1",
            "GET /",
            "GET\t/\tHTTP/1.1",
        ] {
            let what = format!("{path:?} {line:?}");
            let mut c = RawConn::connect(proxy.addr()).await;
            let req = format!("{line}\r\nHost: test\r\n\r\n");
            refused(&mut c, &req, 400, detail, &what).await;
        }
    }
    assert_eq!(raw.accepted(), 0, "a refused request reached the backend");
}

/// What pingora refuses with an empty 400 in a request line it otherwise repairs (it
/// escapes spaces and quotes in a target), and a `Transfer-Encoding` that ends in an empty
/// element, get the 400 with the reason on either path, and reach no backend.
#[tokio::test]
async fn request_lines_pingora_would_refuse_bare_get_400_with_the_reason() {
    let raw = ok_backend().await;
    let not_routable = "the request target is not a path, an http(s) URL, or * for OPTIONS";
    let cases: [(&[u8], &str); 6] = [
        (
            b"GET\t/x HTTP/1.1\r\nHost: test\r\n\r\n",
            "malformed request line: a control character (a tab for a space?)",
        ),
        (
            b"GET /\xff HTTP/1.1\r\nHost: test\r\n\r\n",
            "malformed request line: the target is not UTF-8 (percent-encode it)",
        ),
        (
            b"GET http://u:p@b.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "userinfo in the request target",
        ),
        (
            b"GET ftp://b.example/x HTTP/1.1\r\nHost: test\r\n\r\n",
            not_routable,
        ),
        (
            b"GET ftp://b.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
            not_routable,
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked ,\r\n\r\n0\r\n\r\n",
            "chunked is not the final transfer coding",
        ),
    ];
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(&[&raw], path);
        for (req, detail) in cases {
            let what = format!("{path:?} {}", req.escape_ascii());
            let mut c = RawConn::connect(proxy.addr()).await;
            refused(&mut c, req, 400, detail, &what).await;
        }
        // What pingora repairs still goes through.
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c.exchange("GET /a b HTTP/1.1\r\nHost: test\r\n\r\n").await;
        assert_eq!(r.status, 200, "{path:?}: {r:?}");
    }
    // One connection per proxy, for the repaired request alone.
    assert_eq!(
        raw.accepted(),
        BOTH_PATHS.len(),
        "only the repaired requests reached the backend"
    );
}

#[tokio::test]
async fn connect_gets_501_with_the_reason_and_opens_no_tunnel() {
    let raw = ok_backend().await;
    let detail = "CONNECT is not supported: this proxy forwards requests to its backends \
                  and opens no tunnels to other addresses";
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(&[&raw], path);
        let mut c = RawConn::connect(proxy.addr()).await;
        let req = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
        refused(&mut c, req, 501, detail, &format!("{path:?}")).await;
    }
    assert_eq!(raw.accepted(), 0, "a CONNECT reached the backend");
}

#[tokio::test]
async fn a_content_length_list_of_one_value_reaches_the_backend_once() {
    let (raw, mut seen) = recording_backend().await;
    let proxy = proxy_for_raw(&[&raw], "");
    for lengths in [
        "Content-Length: 2, 2\r\n",
        "Content-Length: 2\r\nContent-Length: 2\r\n",
    ] {
        let req = format!("POST /p HTTP/1.1\r\nHost: test\r\n{lengths}\r\nhi");
        assert_eq!(
            answer(&proxy, &req).await,
            (200, "ok".into()),
            "{lengths:?}"
        );
        let (headers, body) = seen.recv().await.unwrap();
        let lengths_seen: Vec<_> = headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths_seen, ["2"], "{headers:?}");
        assert_eq!(body, b"hi");
    }
    // Two different values: refused, nothing forwarded.
    let (status, _) = answer(
        &proxy,
        "POST /p HTTP/1.1\r\nHost: test\r\nContent-Length: 2, 3\r\n\r\nhi",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        seen.try_recv().is_err(),
        "a conflicting length was forwarded"
    );
}

/// The two request paths a test runs on: the proxy's own (`native`, the default), and
/// pingora's for every request (`server.http1 = "pingora"`).
const BOTH_PATHS: [&str; 2] = ["", "http1 = \"pingora\"\n"];

/// Sends `raw` on `c` and checks the answer is `status` with the plain-text reason
/// `"<status> <phrase>: <detail>"`, then that the connection closes.
async fn refused(
    c: &mut RawConn<TcpStream>,
    raw: impl AsRef<[u8]>,
    status: u16,
    detail: &str,
    what: &str,
) {
    c.send(raw).await;
    let r = c.response(false).await;
    assert_eq!(r.status, status, "{what}: {r:?}");
    let text = r.text();
    assert!(
        text.starts_with(&format!("{status} ")) && text.ends_with(&format!(": {detail}\n")),
        "{what}: {text:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{what}: {r:?}"
    );
    c.expect_eof(what).await;
}

#[tokio::test]
async fn heads_over_the_limits_get_431_or_414_with_the_reason() {
    let raw = ok_backend().await;
    // 300 short fields: within the byte limit, over the count either parser takes.
    let many: String = (0..300).map(|i| format!("X-F{i}: v\r\n")).collect();
    let long_uri = format!("/{}", "u".repeat(9000));
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(
            &[&raw],
            &format!("{path}[limits]\nmax_request_header_bytes = 8192\n"),
        );
        let cases = [
            (
                format!("GET / HTTP/1.1\r\nHost: test\r\n{many}\r\n"),
                431,
                "too many header fields (more than 256)",
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
                    "b".repeat(9000)
                ),
                431,
                "request header fields too large",
            ),
            (
                format!("GET {long_uri} HTTP/1.1\r\nHost: test\r\n\r\n"),
                414,
                "request line too long",
            ),
            // Over the limit before its line even ends.
            (
                format!("GET /{} HTTP/1.1\r\nHost: test\r\n\r\n", "u".repeat(70_000)),
                414,
                "request line too long",
            ),
        ];
        for (req, status, detail) in &cases {
            let what = format!("{path:?} {status} {detail}");
            let mut c = RawConn::connect(proxy.addr()).await;
            refused(&mut c, req, *status, detail, &what).await;

            // The same on a connection that pingora served a request on before (HTTP/1.0
            // is handed to it).
            let mut c = RawConn::connect(proxy.addr()).await;
            let r = c
                .exchange("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .await;
            assert_eq!(r.status, 200, "{what}: {r:?}");
            refused(&mut c, req, *status, detail, &format!("{what}, second")).await;
        }
        // Just under the limits: served.
        let fields: String = (0..250).map(|i| format!("X-F{i}: v\r\n")).collect();
        let uri = format!("/{}", "u".repeat(7000));
        for req in [
            format!("GET / HTTP/1.1\r\nHost: test\r\n{fields}\r\n"),
            format!("GET {uri} HTTP/1.1\r\nHost: test\r\n\r\n"),
        ] {
            assert_eq!(answer(&proxy, &req).await, (200, "ok".into()), "{path:?}");
        }
    }
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_alone_are_refused() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let raw = RawBackend::start(move |mut conn: RawConn<TcpStream>, _| {
        let seen_tx = seen_tx.clone();
        async move {
            // One request per connection: its chunked body is left unread.
            if let Ok(Some(head)) = conn.head(tests::STEP_TIMEOUT).await {
                let _ = seen_tx.send(head);
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                reply(&mut conn, answer).await;
            }
        }
    })
    .await;
    let body = "\r\n5\r\nhello\r\n0\r\n\r\n";
    let cases = [
        // RFC 9112 §6.1: a coding the proxy cannot apply or forward: 501, as nginx answers.
        (
            format!("POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n{body}"),
            501,
            "only the chunked transfer coding is supported",
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\
                 Transfer-Encoding: chunked\r\n{body}"
            ),
            501,
            "only the chunked transfer coding is supported",
        ),
        // RFC 9112 §6.3: without chunked last, the body's length cannot be known.
        (
            format!("POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked, gzip\r\n{body}"),
            400,
            "chunked is not the final transfer coding",
        ),
        (
            format!("POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n{body}"),
            400,
            "chunked is not the final transfer coding",
        ),
        // RFC 9112 §6.1: faulty framing from an HTTP/1.0 client.
        (
            format!("POST / HTTP/1.0\r\nHost: test\r\nTransfer-Encoding: chunked\r\n{body}"),
            400,
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
    ];
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(&[&raw], path);
        for (req, status, detail) in &cases {
            let what = format!("{path:?} {req:?}");
            let mut c = RawConn::connect(proxy.addr()).await;
            refused(&mut c, req, *status, detail, &what).await;
        }
        assert!(
            seen.try_recv().is_err(),
            "{path:?}: a refused request was forwarded"
        );
        // Chunked alone is forwarded.
        let (status, _) = answer(
            &proxy,
            &format!("POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: Chunked\r\n{body}"),
        )
        .await;
        assert_eq!(status, 200, "{path:?}");
        let head = seen.recv().await.unwrap_or_default().to_ascii_lowercase();
        assert!(!head.contains("gzip"), "{head}");
    }
}

/// Bytes that cannot start a request are answered at once, as nginx and HAProxy answer
/// them, not after the header timeout (60 s here, longer than any wait of this test): a
/// TLS handshake sent to a plain listener is named as such, other binary as not HTTP.
#[tokio::test]
async fn bytes_that_cannot_start_a_request_get_400_at_once() {
    let raw = ok_backend().await;
    for path in BOTH_PATHS {
        let proxy = proxy_for_raw(
            &[&raw],
            &format!("{path}[limits]\nheader_read_timeout = \"60s\"\n"),
        );
        // The start of a TLS ClientHello record, and NUL bytes.
        for (bytes, detail) in [
            (
                "\u{16}\u{3}\u{1}\u{0}\u{5}hello",
                "TLS handshake on a plain-HTTP listener (use https:// on the TLS port)",
            ),
            ("\u{0}\u{0}\u{0}", "not an HTTP request"),
            ("\r\n\u{7f}GET", "not an HTTP request"),
        ] {
            let mut c = RawConn::connect(proxy.addr()).await;
            refused(&mut c, bytes, 400, detail, &format!("{path}{bytes:?}")).await;
        }
        // An empty line before a request is still only skipped, however it arrives.
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send("\r").await;
        let r = c.exchange(format!("\n{}", get_req("/"))).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    assert_eq!(
        raw.accepted(),
        BOTH_PATHS.len(),
        "only the real requests reached the backend"
    );
}

/// `response_headers` on a listener sets its fields on every answer relayed through it —
/// on the proxy's own HTTP/1 path, on pingora's (an HTTP/1.0 request), and on a refused
/// upgrade — replacing a backend's field of the same name rather than adding a second one;
/// another listener's answers keep the backend's fields as they were.
#[tokio::test]
async fn a_listeners_response_headers_are_set_on_every_answer_through_it() {
    let raw = RawBackend::start(|mut conn: RawConn<TcpStream>, _| async move {
        while conn.request().await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\nX-Frame-Options: SAMEORIGIN\r\n\
                          Content-Length: 2\r\n\r\nok";
            if !reply(&mut conn, answer).await {
                return;
            }
        }
    })
    .await;
    let (with, without) = (free_port(), free_port());
    let _proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}{}response_headers = {{ \"Strict-Transport-Security\" = \"max-age=600\", \
         X-Frame-Options = \"DENY\" }}\n{}{}",
        listener(with),
        listener(without),
        upstream(
            "app",
            None,
            &[format!("{{ addr = \"{}\", id = \"raw\" }}", raw.addr)]
        )
    ));
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let fields = |r: &tests::raw::Resp, name: &str| -> Vec<String> {
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    for (what, req) in [
        ("our path", get_req("/a")),
        ("pingora's path", "GET /b HTTP/1.0\r\n\r\n".to_owned()),
        (
            "a refused upgrade",
            "GET /c HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_owned(),
        ),
    ] {
        let mut c = RawConn::connect(at(with)).await;
        let r = c.exchange(&req).await;
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert_eq!(fields(&r, "x-frame-options"), ["DENY"], "{what}: {r:?}");
        assert_eq!(
            fields(&r, "strict-transport-security"),
            ["max-age=600"],
            "{what}: {r:?}"
        );

        let mut c = RawConn::connect(at(without)).await;
        let r = c.exchange(&req).await;
        assert_eq!(
            fields(&r, "x-frame-options"),
            ["SAMEORIGIN"],
            "{what}: {r:?}"
        );
        assert!(
            fields(&r, "strict-transport-security").is_empty(),
            "{what}: {r:?}"
        );
    }
}

/// The proxy's own answers carry the listener's `response_headers` too (as nginx's
/// `add_header … always`): refusals from the head, errors when no backend answers, and
/// redirects, on both HTTP/1 paths and for upgrades; a field the operator sets replaces the
/// proxy's own of that name.
#[tokio::test]
async fn a_listeners_response_headers_are_set_on_the_proxys_own_answers() {
    let (plain, redirecting, tls_port) = (free_port(), free_port(), free_port());
    let added = "response_headers = { \"Strict-Transport-Security\" = \"max-age=600\", \
                 Cache-Control = \"private\" }\n";
    let _proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}{}{added}{}redirect_https_port = {tls_port}\n{added}{}",
        listener(plain),
        listener(redirecting),
        // Nothing listens there: every attempt fails.
        upstream(
            "app",
            None,
            &[format!(
                "{{ addr = \"127.0.0.1:{}\", id = \"dead\" }}",
                free_port()
            )]
        )
    ));
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let upgrade = "GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for (what, port, req, statuses) in [
        (
            "no backend, our path",
            plain,
            get_req("/a"),
            &[502, 503][..],
        ),
        (
            "no backend, pingora's path",
            plain,
            "GET /b HTTP/1.0\r\nHost: test\r\n\r\n".to_owned(),
            &[502, 503],
        ),
        (
            "no backend, an upgrade",
            plain,
            upgrade.to_owned(),
            &[502, 503],
        ),
        (
            "a head refused",
            plain,
            "GET /no-host HTTP/1.1\r\n\r\n".to_owned(),
            &[400],
        ),
        ("not HTTP", plain, "\u{0}\u{0}".to_owned(), &[400]),
        ("a redirect, our path", redirecting, get_req("/r"), &[308]),
        (
            "a redirect, pingora's path",
            redirecting,
            "GET /r HTTP/1.0\r\nHost: test\r\n\r\n".to_owned(),
            &[308],
        ),
    ] {
        let mut c = RawConn::connect(at(port)).await;
        let r = c.exchange(&req).await;
        assert!(statuses.contains(&r.status), "{what}: {r:?}");
        let values = |name: &str| -> Vec<&str> {
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(
            values("strict-transport-security"),
            ["max-age=600"],
            "{what}: {r:?}"
        );
        if r.status != 308 {
            assert_eq!(values("cache-control"), ["private"], "{what}: {r:?}");
        }
    }
}

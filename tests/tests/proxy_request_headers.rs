//! A route's `request_headers` (nginx's `proxy_set_header`): each field is set on every
//! request the route sends to a backend, replacing the client's of that name in any case
//! and in the underscore spelling; an empty value removes the client's; a `Host` reaches
//! the backend while routing and `X-Forwarded-Host` keep the client's. On every path:
//! Switchyard's HTTP/1.1, pingora's (a chunked body, HTTP/1.0, `http1 = "pingora"`), h2
//! clients, h2 backends, WebSocket upgrades; and a reload changes them — real
//! `echo-backend` and `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use serde_json::Value;

use tests::admin::admin_post;
use tests::fixtures::{admin, entries, listener, tls_keys, upstream};
use tests::raw::RawConn;
use tests::ws::{ws_close, ws_open, WsOptions};
use tests::{free_port, Backend, Certs, Proxy};

/// The route's fields, as a TOML inline table.
const SET: &str = r#"{ "X-Env" = "prod", "Host" = "api.internal", "X-Debug" = "" }"#;

/// The client's fields the route replaces or removes, in several spellings, and one it
/// keeps.
const CLIENT: &str = "X-Env: dev\r\nx_env: dev2\r\nX-DEBUG: 1\r\nX_Debug: 2\r\nX-Keep: k\r\n";

/// Routes: `localhost` goes to `app` with `fields` set (none when empty), anything
/// else to `other`, so a request routed by the Host it sends the backend would reach
/// `other`.
fn config(server: &str, extra: &str, app: &str, fields: &str, other: &Backend) -> String {
    let set = if fields.is_empty() {
        String::new()
    } else {
        format!("request_headers = {fields}\n")
    };
    format!(
        "[server]\nthreads = 2\n{server}\n{extra}\n{app}\n{}\n\
         [[routes]]\nhost = \"localhost\"\nupstream = \"app\"\n{set}\
         [[routes]]\nupstream = \"other\"\n",
        upstream("other", None, &entries(&[other])),
    )
}

/// The id of the backend that answered `GET /headers`, sent as `HTTP/<version>` with
/// `Host: <host>` and `rest` (fields, then any body), and the fields it reports.
async fn headers_seen(proxy: &Proxy, version: &str, host: &str, rest: &str) -> (String, Value) {
    let r = RawConn::connect(proxy.addr())
        .await
        .exchange(format!(
            "GET /headers HTTP/{version}\r\nHost: {host}\r\n{rest}\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-backend-id").unwrap_or_default().to_owned();
    (id, serde_json::from_slice(&r.body).unwrap())
}

/// What a backend that saw the route's fields in place of the client's reports.
#[track_caller]
fn assert_replaced(seen: &Value, what: &str) {
    assert_eq!(seen["x-env"], "prod", "{what}: {seen}");
    assert_eq!(seen["host"], "api.internal", "{what}: {seen}");
    for gone in ["x_env", "x-debug", "x_debug"] {
        assert!(seen.get(gone).is_none(), "{what}: {gone} in {seen}");
    }
    assert!(
        seen["x-forwarded-host"]
            .as_str()
            .is_some_and(|h| h.starts_with("localhost")),
        "{what}: {seen}"
    );
}

/// On Switchyard's HTTP/1.1 path (a plain GET) and on pingora's (a chunked body, HTTP/1.0,
/// and every request with `http1 = "pingora"`): the backend of the route chosen by the
/// client's Host gets the route's fields and none of the client's of those names.
#[tokio::test]
async fn a_routes_fields_replace_the_clients_on_both_http1_paths() {
    let (b, other) = (Backend::start("b1"), Backend::start("other"));
    let app = upstream("app", None, &entries(&[&b]));
    for http1 in ["native", "pingora"] {
        let proxy = Proxy::start_config(&config(
            &format!("http1 = \"{http1}\""),
            &listener(free_port()),
            &app,
            SET,
            &other,
        ));
        for (version, body) in [
            ("1.1", ""),
            ("1.1", "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"),
            ("1.0", ""),
        ] {
            let what = format!("{http1} HTTP/{version} {body:?}");
            let (id, seen) =
                headers_seen(&proxy, version, "localhost", &format!("{CLIENT}{body}")).await;
            assert_eq!(id, "b1", "{what}");
            assert_replaced(&seen, &what);
            assert_eq!(seen["x-keep"], "k", "{what}: {seen}");
        }
        // A route without fields passes the client's on.
        let (id, seen) = headers_seen(&proxy, "1.1", "elsewhere", CLIENT).await;
        assert_eq!(id, "other", "{http1}");
        assert_eq!(seen["x-env"], "dev", "{http1}: {seen}");
        assert_eq!(seen["x_debug"], "2", "{http1}: {seen}");
    }
}

/// An h2 client over TLS, to an HTTP/1.1 backend and to an h2 backend (whose `:authority`
/// the route's Host becomes).
#[tokio::test]
async fn h2_clients_and_h2_backends_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let other = Backend::start("other");
    let h1 = Backend::start("b1");
    let h2 = Backend::start_with("g1", &["--h2c"]);
    let h2_app = format!(
        "[upstreams.app]\nprotocol = \"h2\"\nbackends = [{{ addr = \"{}\", id = \"g1\" }}]\n",
        h2.addr()
    );
    for (app, backend) in [
        (upstream("app", None, &entries(&[&h1])), "b1"),
        (h2_app, "g1"),
    ] {
        let port = free_port();
        let tls = format!("{}{}\n", listener(port), tls_keys(&certs.cert, &certs.key));
        let _proxy = Proxy::start_config(&config("", &tls, &app, SET, &other));
        let send = tests::h2client::connect(&certs.ca_pem(), port).await;
        let mut send = tokio::time::timeout(tests::STEP_TIMEOUT, send.ready())
            .await
            .unwrap()
            .unwrap();
        let req = http::Request::get(format!("https://localhost:{port}/headers"))
            .header("x-env", "dev")
            .header("x_env", "dev2")
            .header("x-debug", "1")
            .header("x_debug", "2")
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let full = tests::h2client::read_full(resp).await.unwrap();
        assert_eq!(full.status, 200, "{backend}: {}", full.body);
        assert_eq!(
            full.headers
                .get("x-backend-id")
                .and_then(|v| v.to_str().ok()),
            Some(backend)
        );
        assert_replaced(&serde_json::from_str(&full.body).unwrap(), backend);
    }
}

/// A WebSocket upgrade's request to the backend carries them too (the backend's `101`
/// reports the fields it got).
#[tokio::test]
async fn websocket_upgrades_get_them() {
    let (b, other) = (Backend::start("b1"), Backend::start("other"));
    let proxy = Proxy::start_config(&config(
        "",
        &listener(free_port()),
        &upstream("app", None, &entries(&[&b])),
        SET,
        &other,
    ));
    // ws://localhost:<port>: the Host field the route is chosen by.
    let headers = [
        ("X-Env", "dev"),
        ("x_env", "dev2"),
        ("X-Debug", "1"),
        ("X_Debug", "2"),
    ];
    let opts = WsOptions {
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        ..WsOptions::default()
    };
    let (ws, resp) = ws_open(&format!("ws://localhost:{}/ws", proxy.addr().port()), &opts)
        .await
        .unwrap();
    let seen = resp
        .headers()
        .get("x-request-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_replaced(&serde_json::from_str(seen).unwrap(), "websocket");
    ws_close(ws).await;
}

/// A reload replaces a route's fields, and one that drops them lets the client's through.
#[tokio::test]
async fn a_reload_changes_them() {
    let (b, other) = (Backend::start("b1"), Backend::start("other"));
    let front = format!("{}{}", listener(free_port()), admin(free_port(), "t"));
    let app = upstream("app", None, &entries(&[&b]));
    let proxy = Proxy::start_config(&config("", &front, &app, SET, &other));
    let env_seen = || async {
        let (_, seen) = headers_seen(&proxy, "1.1", "localhost", "X-Env: dev\r\n").await;
        seen["x-env"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(env_seen().await, "prod");
    for (fields, want) in [(r#"{ "X-Env" = "staging" }"#, "staging"), ("", "dev")] {
        proxy.write_config(&config("", &front, &app, fields, &other));
        let r = admin_post(&proxy, "/reload", Some("t")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(env_seen().await, want, "after a reload to {fields:?}");
    }
}

//! `[server] request_id = true`: every request gets a fresh `X-Request-Id` (the client's
//! replaced), the backend sees it, the answer carries it — the backend's, the proxy's own
//! error and a WebSocket's 101 — and the access log line has it, on both HTTP/1 request
//! paths; off (the default), a client's `X-Request-Id` passes untouched — real
//! `echo-backend` and `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use tests::fixtures::{entries, listener, upstream};
use tests::raw::RawConn;
use tests::ws::{ws_close, ws_open, WsOptions};
use tests::{free_port, wait_for, Backend, Proxy};

const T: Duration = Duration::from_secs(10);

/// One listener, upstream `app` over `b` and `dead` (a port nobody listens on) on
/// `/dead/`, a JSON access log to `log`.
fn config(server: &str, log: &Path, b: &Backend) -> String {
    let dead = free_port();
    format!(
        "[server]\nthreads = 2\n{server}\n[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n\n{}\n{}\n{}\n[[routes]]\npath_prefix = \"/dead/\"\nupstream = \"dead\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        log.display(),
        listener(free_port()),
        upstream("app", None, &entries(&[b])),
        upstream(
            "dead",
            None,
            &[format!("{{ addr = \"127.0.0.1:{dead}\", id = \"dead\" }}")]
        ),
    )
}

/// A proxy over `b` with `request_id = true` and `http1 = <http1>`: its folder (kept while
/// the test runs), its access log and the proxy.
fn with_ids(http1: &str, b: &Backend) -> (tempfile::TempDir, std::path::PathBuf, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start_config(&config(
        &format!("http1 = \"{http1}\"\nrequest_id = true"),
        &log,
        b,
    ));
    (dir, log, proxy)
}

/// A GET of `path` with the client's own `X-Request-Id: forged`.
fn get_forged(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nX-Request-Id: forged\r\n\r\n")
}

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The access log line whose `request_id` is `id`.
async fn logged(log: &Path, id: &str) -> serde_json::Value {
    let want = format!("\"request_id\":\"{id}\"");
    wait_for(
        T,
        &format!("an access log line with request id {id}"),
        || {
            let want = want.clone();
            async move {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let line = text.lines().find(|l| l.contains(&want))?;
                serde_json::from_str(line).ok()
            }
        },
    )
    .await
}

#[tokio::test]
async fn every_request_gets_a_fresh_id_on_both_paths() {
    let b = Backend::start("b1");
    for http1 in ["native", "pingora"] {
        let (_dir, log, proxy) = with_ids(http1, &b);
        let mut c = RawConn::connect(proxy.addr()).await;

        // A backend's answer: the backend saw the proxy's id, not the client's.
        let mut ids = Vec::new();
        for _ in 0..2 {
            let r = c.exchange(get_forged("/headers")).await;
            assert_eq!(r.status, 200, "{http1}: {}", r.text());
            let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let id = seen["x-request-id"].as_str().unwrap_or_default().to_owned();
            assert!(is_id(&id), "{http1}: the backend saw {seen}");
            assert_eq!(r.header("x-request-id"), Some(id.as_str()), "{http1}");
            let line = logged(&log, &id).await;
            assert_eq!(line["path"], "/headers", "{http1}: {line}");
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1], "{http1}: one id per request");

        // The proxy's own answer.
        let r = c.exchange(get_forged("/dead/x")).await;
        assert_eq!(r.status, 502, "{http1}: {}", r.text());
        let id = r.header("x-request-id").unwrap_or_default().to_owned();
        assert!(is_id(&id), "{http1}: {:?}", r.headers);
        assert_eq!(logged(&log, &id).await["status"], 502, "{http1}");

        // A WebSocket: the 101 carries the id, and so does the tunnel's line.
        let (ws, resp) = ws_open(&proxy.ws_url("/ws"), &WsOptions::default())
            .await
            .unwrap();
        let id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(is_id(&id), "{http1}: {resp:?}");
        ws_close(ws).await;
        assert_eq!(logged(&log, &id).await["tunnel"], true, "{http1}");
    }
}

#[tokio::test]
async fn off_by_default_a_clients_id_passes_untouched() {
    let b = Backend::start("b1");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let proxy = Proxy::start_config(&config("", &log, &b));
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange(get_forged("/headers")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["x-request-id"], "forged", "{seen}");
    assert_eq!(r.header("x-request-id"), None);
    let line = wait_for(T, "the access log line", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().next().map(str::to_owned)
    })
    .await;
    assert!(!line.contains("request_id"), "{line}");
}

/// The client's id in any spelling is dropped, not only `X-Request-Id`: upper case,
/// repeated, and `X_Request_Id`, which CGI-style servers (PHP, WSGI, Rack) read as the
/// same variable as `X-Request-Id` — passed on, it would sit beside the proxy's id and
/// a backend could log the client's instead. On both HTTP/1 paths, HTTP/1.0 and an upgrade.
#[tokio::test]
async fn a_clients_id_in_any_spelling_is_dropped() {
    let b = Backend::start("b1");
    let spoof = "X-REQUEST-ID: forged1\r\nx-request-id: forged2\r\nX_Request_Id: forged3\r\nx_request_id: forged4\r\n";
    for http1 in ["native", "pingora"] {
        let (_dir, _log, proxy) = with_ids(http1, &b);
        // An upgrade takes its own path upstream (the backend refuses it here,
        // and the proxy relays the refusal).
        let ws = "Connection: Upgrade\r\nUpgrade: example/1\r\n";
        for (version, extra) in [("1.1", ""), ("1.0", ""), ("1.1", ws)] {
            let what = format!("{http1} HTTP/{version} {extra:?}");
            let mut c = RawConn::connect(proxy.addr()).await;
            let r = c
                .exchange(format!(
                    "GET /headers HTTP/{version}\r\nHost: test\r\n{extra}{spoof}\r\n"
                ))
                .await;
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(!seen.to_string().contains("forged"), "{what}: {seen}");
            let id = seen["x-request-id"].as_str().unwrap_or_default();
            assert!(is_id(id), "{what}: {seen}");
            assert_eq!(r.header("x-request-id"), Some(id), "{what}");
        }
    }
}

/// The proxy's refusals of a request it read but will not forward (a transfer coding it
/// cannot frame, CONNECT, a version it does not speak) carry an id too, the same one as
/// their access log line, on both HTTP/1 settings (the front reads these heads on both),
/// as h2's CONNECT refusal and pingora's own checks do: the answer a user reports is the
/// one an operator most needs to find.
#[tokio::test]
async fn refusals_carry_the_id_of_their_log_line() {
    let b = Backend::start("b1");
    for http1 in ["native", "pingora"] {
        let (_dir, log, proxy) = with_ids(http1, &b);
        for (req, status) in [
            (
                "POST /te HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n",
                400,
            ),
            ("CONNECT test:443 HTTP/1.1\r\nHost: test:443\r\n\r\n", 501),
            ("GET /v HTTP/1.2\r\nHost: test\r\n\r\n", 400),
        ] {
            let what = format!("{http1} {req:?}");
            let mut c = RawConn::connect(proxy.addr()).await;
            let r = c.exchange(req).await;
            assert_eq!(r.status, status, "{what}: {}", r.text());
            let id = r.header("x-request-id").unwrap_or_default().to_owned();
            assert!(is_id(&id), "{what}: {:?}", r.headers);
            assert_eq!(logged(&log, &id).await["status"], status, "{what}");
        }
    }
}

/// An h2 request and h2's CONNECT refusal: the backend gets the proxy's id alone (the
/// client's, in either spelling, dropped), the answer has it, and so has the log line.
#[tokio::test]
async fn h2_requests_and_their_refusals_carry_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tests::Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let port = free_port();
    let _proxy = Proxy::start_config(&format!(
        "[server]\nthreads = 2\nrequest_id = true\n[access_log]\nenabled = true\nformat = \"json\"\npath = \"{}\"\n\n{}{}\n\n{}",
        log.display(),
        listener(port),
        tests::fixtures::tls_keys(&certs.cert, &certs.key),
        upstream("app", None, &entries(&[&b])),
    ));
    let h2 = tests::h2client::connect(&certs.ca_pem(), port).await;

    let send = |req: http::Request<()>| {
        let h2 = h2.clone();
        async move {
            let mut ready = tokio::time::timeout(T, h2.ready()).await.unwrap().unwrap();
            let (resp, _) = ready.send_request(req, true).unwrap();
            let resp = tokio::time::timeout(T, resp).await.unwrap().unwrap();
            let (parts, mut body) = resp.into_parts();
            let mut out = Vec::new();
            while let Some(chunk) = tokio::time::timeout(T, body.data()).await.unwrap() {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                out.extend_from_slice(&chunk);
            }
            let id = parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (parts.status.as_u16(), id, out)
        }
    };

    let req = http::Request::get(format!("https://localhost:{port}/headers"))
        .header("x-request-id", "forged1")
        .header("x_request_id", "forged2")
        .body(())
        .unwrap();
    let (status, id, body) = send(req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(!seen.to_string().contains("forged"), "{seen}");
    assert_eq!(seen["x-request-id"].as_str(), Some(id.as_str()), "{seen}");
    assert!(is_id(&id), "{id:?}");
    assert_eq!(logged(&log, &id).await["status"], 200);

    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("example.com:443")
        .body(())
        .unwrap();
    let (status, id, _) = send(req).await;
    assert_eq!(status, 501);
    assert!(is_id(&id), "{id:?}");
    assert_eq!(logged(&log, &id).await["status"], 501);
}

//! The echo backend and the harness itself, end to end: real `echo-backend` processes on
//! 127.0.0.1, driven through the harness's clients.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use tests::fixtures::wait_ws_open;
use tests::http::{backend_counts, client};
use tests::ws::ws_close;
use tests::{
    get, send, tls_client, wait_until, ws_connect, ws_connect_from, ws_connect_tls, ws_echo,
    ws_echo_binary, ws_expect_closed, ws_recv, Alpn, Backend, Certs,
};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn answers_with_its_id_everywhere() {
    let b = Backend::start("b1");
    for path in ["/id", "/", "/anything/else?q=1"] {
        let r = get(&b.url(path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, "b1", "{path}");
        assert_eq!(r.backend(), Some("b1"), "{path}");
    }
    let r = get(&b.url("/status/418")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.backend(), Some("b1"));
    let r = get(&b.url("/status/503")).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn echoes_post_bodies() {
    let b = Backend::start("b1");
    let body = "x".repeat(300_000);
    let r = send(client().post(b.url("/echo")).body(body.clone())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), Some("b1"));
    assert_eq!(r.body, body);
}

#[tokio::test]
async fn reports_request_headers_as_json() {
    let b = Backend::start("b1");
    let r = send(
        client()
            .get(b.url("/headers"))
            .header("X-Forwarded-For", "10.1.2.3")
            .header("x-multi", "a")
            .header("x-multi", "b"),
    )
    .await;
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    assert_eq!(h["x-multi"], "a, b");
    assert_eq!(h["host"], b.addr().to_string());
}

#[tokio::test]
async fn delays_answers() {
    let b = Backend::start("b1");
    let t0 = Instant::now();
    let r = get(&b.url("/delay/150")).await;
    assert_eq!(r.body, "b1");
    assert!(t0.elapsed() >= Duration::from_millis(150));

    let slow = Backend::start_with("slow", &["--delay-ms", "120"]);
    let t0 = Instant::now();
    assert_eq!(get(&slow.url("/id")).await.body, "slow");
    assert!(t0.elapsed() >= Duration::from_millis(120));
}

#[tokio::test]
async fn health_switch_fails_and_restores_healthz() {
    let b = Backend::start("b1");
    let c = client();
    assert_eq!(get(&b.url("/healthz")).await.status, 200);
    assert_eq!(send(c.post(b.url("/health/off"))).await.status, 200);
    let r = get(&b.url("/healthz")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.backend(), Some("b1"));
    // Other routes keep working while "unhealthy".
    assert_eq!(get(&b.url("/id")).await.status, 200);
    assert_eq!(send(c.post(b.url("/health/on"))).await.status, 200);
    assert_eq!(get(&b.url("/healthz")).await.status, 200);

    let stats = get(&b.url("/stats")).await.json();
    assert_eq!(stats["id"], "b1");
    assert_eq!(stats["healthz"], 3);
}

#[tokio::test]
async fn websocket_greets_then_echoes_text_and_binary() {
    let b = Backend::start("b7");
    let (mut ws, id) = ws_connect(&b.ws_url("/ws")).await;
    assert_eq!(id, "b7");
    ws_echo(&mut ws, "hi there").await;
    ws_echo_binary(&mut ws, &[0, 1, 2, 255]).await;
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    // The pong comes back before the next echo.
    match tokio::time::timeout(T, ws.next()).await {
        Ok(Some(Ok(Message::Pong(p)))) => assert_eq!(p.as_ref(), b"p"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws_echo(&mut ws, "after ping").await;
    let stats = get(&b.url("/stats")).await.json();
    assert_eq!(stats["ws_open"], 1);

    // A client close is answered and the server side goes away.
    ws_close(ws).await;
    wait_ws_open(&b, 0, T).await;
}

#[tokio::test]
async fn websocket_upgrade_works_on_any_path_and_from_other_loopback_addresses() {
    let b = Backend::start("b2");
    let (mut ws, id) = ws_connect_from("127.0.0.9".parse().unwrap(), &b.ws_url("/x/y")).await;
    assert_eq!(id, "b2");
    ws_echo(&mut ws, "from 127.0.0.9").await;
}

#[tokio::test]
async fn killed_backend_closes_its_sockets_and_restarts_on_the_same_port() {
    let mut b = Backend::start("b1");
    let addr = b.addr();
    let (mut ws, _) = ws_connect(&b.ws_url("/ws")).await;
    b.kill();
    assert!(!b.is_running());
    ws_expect_closed(&mut ws, T).await;
    assert!(tests::http::try_send(client().get(b.url("/id")))
        .await
        .is_err());

    b.restart();
    assert_eq!(b.addr(), addr);
    assert!(b.is_running());
    assert_eq!(get(&b.url("/id")).await.body, "b1");
    // Restart while running works too.
    b.restart();
    assert_eq!(get(&b.url("/id")).await.body, "b1");
}

#[tokio::test]
async fn stopped_backend_hangs_until_continued() {
    let b = Backend::start("b1");
    b.stop();
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = tests::http::try_send(quick.get(b.url("/id")))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    b.cont();
    assert_eq!(get(&b.url("/id")).await.body, "b1");
}

#[tokio::test]
async fn dropping_a_backend_ends_its_process() {
    let b = Backend::start("b1");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(b.pid().unwrap()).unwrap());
    drop(b);
    // Reaped in Drop, so the pid is gone.
    assert_eq!(
        nix::sys::signal::kill(pid, None),
        Err(nix::errno::Errno::ESRCH)
    );
}

#[tokio::test]
async fn two_hundred_concurrent_websockets_all_echo() {
    let b = Backend::start("many");
    let url = b.ws_url("/ws");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut ws, id) = ws_connect(&url).await;
                assert_eq!(id, "many");
                ws_echo(&mut ws, &format!("msg {i}")).await;
                ws
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await.unwrap());
    }
    assert_eq!(get(&b.url("/stats")).await.json()["ws_open"], 200);
    // All still open and echoing after everyone connected.
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws_echo(ws, &format!("again {i}")).await;
    }
    for ws in sockets {
        ws_close(ws).await;
    }
    wait_ws_open(&b, 0, T).await;
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let b = Backend::start("b1");
    let c = client();
    let counts = backend_counts(&c, &b.url("/id"), 50).await;
    assert_eq!(counts.get("b1"), Some(&50));
    let stats = tests::get_with(&c, &b.url("/stats")).await.json();
    assert_eq!(stats["requests"], 51);
    assert_eq!(stats["connections"], 1);
}

#[tokio::test]
async fn tls_backend_speaks_http1_h2_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    let b = Backend::start_with("tls1", &["--tls-cert", cert, "--tls-key", key]);
    let url = format!("https://localhost:{}/id", b.addr().port());
    let ca = certs.ca_pem();

    let r = tests::get_with(&tls_client(&ca, Alpn::Http1), &url).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "tls1"));
    assert_eq!(r.version, http::Version::HTTP_11);

    let r = tests::get_with(&tls_client(&ca, Alpn::H2), &url).await;
    assert_eq!(r.body, "tls1");
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.backend(), Some("tls1"));

    let r = tests::get_with(&tls_client(&ca, Alpn::Auto), &url).await;
    assert_eq!(r.version, http::Version::HTTP_2);

    let wss = format!("wss://localhost:{}/ws", b.addr().port());
    let (mut ws, id) = ws_connect_tls(&ca, &wss).await;
    assert_eq!(id, "tls1");
    ws_echo(&mut ws, "secure").await;

    // A client that does not trust this CA is refused.
    let other = tempfile::tempdir().unwrap();
    let stranger = Certs::generate(other.path(), &["localhost"]).ca_pem();
    let err = tests::http::try_send(tls_client(&stranger, Alpn::Http1).get(&url)).await;
    assert!(err.is_err());
}

#[tokio::test]
async fn port_file_and_listening_line_agree() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("port");
    let b = Backend::start_with("pf", &["--port-file", file.to_str().unwrap()]);
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written, b.addr().to_string());
}

#[test]
fn ports_are_distinct_and_free() {
    let ports = tests::ports(20);
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20);
    for p in ports {
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}

#[tokio::test]
async fn ws_recv_times_out_quietly() {
    let b = Backend::start("b1");
    let (mut ws, _) = ws_connect(&b.ws_url("/")).await;
    assert!(ws_recv(&mut ws, Duration::from_millis(50)).await.is_none());
}

#[tokio::test]
#[should_panic(expected = "waiting for: never")]
async fn wait_until_panics_with_its_message() {
    wait_until(Duration::from_millis(100), "never", || async { false }).await;
}

//! The client's side of a request has its own timeout (`timeouts.client`), apart from the
//! backend's (`upstream_read`): a client that pauses reading its download or sending its
//! body is bounded by it, and its stall is never counted against the backend. Real proxy
//! processes, raw clients and raw backends on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use tests::admin::{admin_get, backend_status};
use tests::raw::{raw_config, reply, RawBackend, RawConn};
use tests::{Proxy, STEP_TIMEOUT};

/// A download large enough to fill every socket buffer between the backend and a client
/// with a small receive buffer.
const BIG: usize = 16 << 20;

/// A backend answering every request with [`BIG`] bytes.
async fn big_answers() -> RawBackend {
    RawBackend::start(|mut conn: RawConn<TcpStream>, _| async move {
        while conn.request().await.is_some() {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
            if !reply(&mut conn, head).await {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..BIG / chunk.len() {
                if !reply(&mut conn, &chunk).await {
                    return;
                }
            }
        }
    })
    .await
}

/// A backend that answers once it has read each request's whole body.
async fn answers_after_the_body() -> RawBackend {
    RawBackend::start(|mut conn: RawConn<TcpStream>, _| async move {
        while conn.request().await.is_some() {
            if !reply(&mut conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await {
                return;
            }
        }
    })
    .await
}

/// Everything the proxy sends until it closes, within [`STEP_TIMEOUT`].
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP_TIMEOUT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that stops reading its download for longer than `upstream_read` (a short one,
/// as an API's) still gets all of it: writing to the client is bounded by the client's
/// timeout. Switchyard's own HTTP/1.1 path bounded those writes by `upstream_read`, and cut
/// the download.
#[tokio::test]
async fn a_client_pausing_its_download_longer_than_upstream_read_gets_all_of_it() {
    let b = big_answers().await;
    let proxy = Proxy::start_config(&raw_config(&[&b], "[timeouts]\nupstream_read = \"1s\"\n"));
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut s = socket.connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0u8; 1 << 20];
    tokio::time::timeout(STEP_TIMEOUT, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut body = got.len() - head_end;

    // The pause under test: the proxy waits on the client for longer than upstream_read.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut buf = vec![0u8; 256 << 10];
    while body < BIG {
        match tokio::time::timeout(STEP_TIMEOUT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => body += n,
            Err(_) => panic!("the download stalled at {body} bytes"),
        }
    }
    assert_eq!(body, BIG, "the download was cut\n{}", proxy.logs());
}

/// A request body that stalls for `timeouts.client` gets `408` with the reason, on
/// Switchyard's path (a small body, read whole before going upstream): it was closed with
/// no answer, after `upstream_read`.
#[tokio::test]
async fn a_stalled_small_body_gets_408() {
    let b = answers_after_the_body().await;
    let proxy = Proxy::start_config(&raw_config(&[&b], "[timeouts]\nclient = \"1s\"\n"));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 100]).await.unwrap();
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("the request body stalled"), "{answer:?}");
    let metrics = admin_get(&proxy, "/metrics", None).await.body;
    assert!(
        metrics.contains("switchyard_rejected_total{reason=\"body_timeout\"} 1"),
        "{metrics}"
    );
}

/// A client that pauses its upload while the backend waits for the rest: the backend's
/// `upstream_read` strikes first, but the stall is the client's. It gets `408`, and the
/// backend is not counted as failed; with `max_fails = 1` it was marked down (and every
/// client paused for longer than `upstream_read` took one backend out).
#[tokio::test]
async fn a_paused_upload_is_the_clients_stall_not_a_backend_failure() {
    let b = answers_after_the_body().await;
    let config = format!(
        "{}\n[upstreams.app.health]\nmax_fails = 1\n",
        raw_config(
            &[&b],
            "[timeouts]\nupstream_read = \"1s\"\nclient = \"10s\"\n"
        )
    );
    let proxy = Proxy::start_config(&config);
    // Several times: with one timeout for both sides, which struck first was a race that
    // the backend lost about one time in three.
    for round in 0..5 {
        // Over 64 KiB: streamed by pingora, which sends the backend what it has.
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'x'; 30_000]).await.unwrap();
        let answer = read_all(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "round {round}: {answer:?}"
        );
        let status = backend_status(&proxy, "raw0").await;
        assert_eq!(
            status["health"],
            "up",
            "round {round}: {status}\n{}",
            proxy.logs()
        );
    }
    // Counted as the proxy's own answers, as on Switchyard's path.
    let metrics = admin_get(&proxy, "/metrics", None).await.body;
    assert!(
        metrics.contains("switchyard_rejected_total{reason=\"body_timeout\"} 5"),
        "{metrics}"
    );

    // The backend serves the next request.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
}

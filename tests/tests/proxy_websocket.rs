//! WebSockets through the proxy end to end: frames both ways, closes propagating in both
//! directions, thousands of tunnels (pingora #946), the tunnel idle timeout, and config
//! reloads that keep open tunnels.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tests::admin::{admin_post, backend_status, counter, status, total, wait_backend, wait_idle};
use tests::fixtures::{admin, entries, listener, quick_proxy, upstream, wait_ws_open, weight_1};
use tests::http::tally;
use tests::{
    client, free_port, get_with, port_array, ws_close, ws_connect, ws_echo, ws_echo_binary,
    ws_expect_closed, Backend, Proxy, Ws,
};

/// Bound for waits on the proxy's state (a tunnel closing, a counter settling).
const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn frames_and_closes_cross_the_plain_listener() {
    let mut bs = Backend::start_many(&["a"]);
    let proxy = quick_proxy("least_conn", &weight_1(&bs), &[]);
    let addr = bs[0].addr().to_string();
    let url = proxy.ws_url("/chat?room=1");

    let (mut ws, id) = ws_connect(&url).await;
    assert_eq!(id, "a");
    ws_echo(&mut ws, "hello through the proxy").await;
    ws_echo_binary(&mut ws, &[0, 1, 2, 127, 128, 254, 255]).await;
    // Larger than one read of the relay, in both directions.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws_echo_binary(&mut ws, &big).await;
    ws_echo(&mut ws, &"é".repeat(50_000)).await;
    wait_backend(&proxy, &addr, T, "one open tunnel", |b| {
        counter(b, "tunnels") == 1
    })
    .await;

    // The client closes: the backend sees it, and the proxy forgets the tunnel.
    ws_close(ws).await;
    wait_ws_open(&bs[0], 0, T).await;
    wait_idle(&proxy, T).await;

    // The backend dies: the client's stream ends.
    let (mut ws, _) = ws_connect(&url).await;
    wait_ws_open(&bs[0], 1, T).await;
    bs[0].kill();
    ws_expect_closed(&mut ws, Duration::from_secs(5)).await;
    // Once the client lets go of its socket too, the proxy forgets the tunnel.
    drop(ws);
    wait_idle(&proxy, T).await;
}

/// Opens one WebSocket, reads the greeting and echoes one message.
async fn open_and_echo(url: String, n: usize) -> (Ws, String) {
    let (mut ws, id) = ws_connect(&url).await;
    ws_echo(&mut ws, &format!("message {n}")).await;
    (ws, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_tunnels_all_greet_echo_and_close() {
    const N: usize = 2000;
    const BATCH: usize = 200;
    let bs = Backend::start_many(&["a", "b"]);
    let proxy = quick_proxy("least_conn", &weight_1(&bs), &[]);
    let url = proxy.ws_url("/ws");

    // Bounded as a whole, so a stuck handshake fails the test instead of hanging it.
    let body = async {
        let mut open: Vec<(Ws, String)> = Vec::with_capacity(N);
        for batch in 0..N / BATCH {
            let tasks: Vec<_> = (0..BATCH)
                .map(|i| tokio::spawn(open_and_echo(url.clone(), batch * BATCH + i)))
                .collect();
            for t in tasks {
                match t.await {
                    Ok(pair) => open.push(pair),
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
        }
        let by_backend = tally(open.iter().map(|(_, id)| id.as_str()));
        assert_eq!(by_backend.values().sum::<usize>(), N, "{by_backend:?}");
        let s = status(&proxy).await;
        assert_eq!(total(&s, "tunnels"), N as u64, "{s}");

        // Every tunnel still works once all are open.
        for (i, (ws, _)) in open.iter_mut().enumerate().step_by(97) {
            ws_echo(ws, &format!("again {i}")).await;
        }

        // Close them all, a batch at a time.
        while !open.is_empty() {
            let rest = open.split_off(open.len().saturating_sub(BATCH));
            let closing: Vec<_> = rest
                .into_iter()
                .map(|(ws, _)| tokio::spawn(ws_close(ws)))
                .collect();
            for t in closing {
                t.await.unwrap();
            }
        }
        wait_idle(&proxy, Duration::from_secs(20)).await;
        for b in &bs {
            wait_ws_open(b, 0, T).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(50), body)
        .await
        .is_err()
    {
        panic!("2000 tunnels did not open, echo and close within 50 s");
    }
}

#[tokio::test]
async fn idle_tunnels_close_and_busy_ones_stay() {
    let bs = Backend::start_many(&["a"]);
    let toml = format!(
        r#"
[timeouts]
tunnel_idle = "1s"

{listener}
{upstream}"#,
        listener = listener(free_port()),
        upstream = upstream("main", Some("least_conn"), &entries(&[&bs[0]])),
    );
    let proxy = Proxy::start_config(&toml);
    let url = proxy.ws_url("/ws");
    let (mut idle, _) = ws_connect(&url).await;
    let (mut busy, _) = ws_connect(&url).await;

    // One message every 300 ms for 2.5 s keeps `busy` open, while `idle` is closed.
    let keep_busy = async {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let mut n = 0;
        while started.elapsed() < Duration::from_millis(2500) {
            tick.tick().await;
            ws_echo(&mut busy, &format!("tick {n}")).await;
            n += 1;
        }
    };
    let (_, ()) = tokio::join!(
        keep_busy,
        ws_expect_closed(&mut idle, Duration::from_secs(4))
    );
    ws_echo(&mut busy, "still open").await;
    wait_backend(&proxy, "a", T, "only the busy tunnel left", |b| {
        counter(b, "tunnels") == 1
    })
    .await;
    wait_ws_open(&bs[0], 1, T).await;
}

/// The reload test's config: one upstream `main` with `backends`, admin token `t`.
fn reload_config(listen: u16, admin_port: u16, strategy: &str, backends: &[&Backend]) -> String {
    format!(
        "{}\n{}\n{}",
        admin(admin_port, "t"),
        listener(listen),
        upstream("main", Some(strategy), &entries(backends))
    )
}

#[tokio::test]
async fn reload_keeps_open_websockets_and_rejects_a_bad_config() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let (a, b, c) = (&bs[0], &bs[1], &bs[2]);
    let [listen, admin_port] = port_array();
    let proxy = Proxy::start_config(&reload_config(listen, admin_port, "round_robin", &[a, b]));
    let url = proxy.ws_url("/ws");

    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(ws_connect(&url).await);
    }
    let mut ids: Vec<&str> = open.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a", "a", "b", "b"]);

    // A wrong token changes nothing.
    let r = admin_post(&proxy, "/reload", Some("wrong")).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Add c and switch to least_conn.
    proxy.write_config(&reload_config(listen, admin_port, "least_conn", &[a, b, c]));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true, "{}", r.body);
    let s = status(&proxy).await;
    assert_eq!(s["upstreams"][0]["strategy"], "least_conn", "{s}");
    assert_eq!(
        s["upstreams"][0]["backends"].as_array().unwrap().len(),
        3,
        "{s}"
    );

    // The old tunnels still work, and are still counted.
    for (i, (ws, _)) in open.iter_mut().enumerate() {
        ws_echo(ws, &format!("after reload {i}")).await;
    }
    for id in ["a", "b"] {
        assert_eq!(counter(&backend_status(&proxy, id).await, "tunnels"), 2);
    }
    // So least_conn sends new requests to c, the only idle backend.
    let http = client();
    for _ in 0..6 {
        assert_eq!(
            get_with(&http, &proxy.url("/id")).await.backend(),
            Some("c")
        );
    }

    // An invalid file is refused with its errors; the running config keeps serving.
    proxy.write_config(&reload_config(listen, admin_port, "leest_conn", &[a, b, c]));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let j = r.json();
    assert_eq!(j["ok"], false, "{}", r.body);
    let err = j["error"].as_str().unwrap();
    assert!(
        err.contains("strategy") && err.contains("leest_conn"),
        "{err}"
    );
    let s = status(&proxy).await;
    assert_eq!(s["upstreams"][0]["strategy"], "least_conn", "{s}");
    for (i, (ws, _)) in open.iter_mut().enumerate() {
        ws_echo(ws, &format!("after the bad reload {i}")).await;
    }
    assert_eq!(
        get_with(&http, &proxy.url("/id")).await.backend(),
        Some("c")
    );
    let (mut ws, id) = ws_connect(&url).await;
    assert_eq!(id, "c");
    ws_echo(&mut ws, "new tunnel").await;
}

/// A listener's `response_headers` are on the `101` of a tunnel too, and the tunnel works.
#[tokio::test]
async fn the_101_carries_the_listeners_response_headers() {
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&format!(
        "{}response_headers = {{ \"Strict-Transport-Security\" = \"max-age=600\" }}\n{}",
        listener(free_port()),
        upstream("app", None, &entries(&[&b]))
    ));
    let (mut ws, response) =
        tests::ws::ws_open(&proxy.ws_url("/ws"), &tests::ws::WsOptions::default())
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    let hsts: Vec<_> = response
        .headers()
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(hsts, ["max-age=600"], "{response:?}");
    let hello = tokio::time::timeout(T, futures::StreamExt::next(&mut ws)).await;
    assert!(
        matches!(&hello, Ok(Some(Ok(m))) if m.to_text().ok() == Some("hello b1")),
        "{hello:?}"
    );
    ws_echo(&mut ws, "still a tunnel").await;
}

/// A WebSocket backend that echoes text and reports every Close frame it receives (code
/// and reason) on the returned channel.
async fn close_reporting_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(u16, String)>,
) {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Close(frame) = &m {
                        let _ = tx.send(frame.as_ref().map_or((0, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        }));
                    }
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The Close frame (code, reason) the client receives next, within `limit`.
async fn next_close(ws: &mut Ws, limit: Duration) -> (u16, String) {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let got = tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ok((u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) => {
                    return Err("a Close frame without a code".to_owned())
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("the stream failed instead: {e}")),
                None => return Err("the stream ended without a Close frame".to_owned()),
            }
        }
    })
    .await;
    got.unwrap_or_else(|_| Err(format!("no Close frame within {limit:?}")))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A proxy with `section` in front of the close-reporting backend at `backend`.
fn proxy_before(backend: std::net::SocketAddr, section: &str) -> Proxy {
    Proxy::start_config(&format!(
        "{section}\n{}\n{}",
        listener(free_port()),
        upstream(
            "app",
            None,
            &[format!("{{ addr = \"{backend}\", id = \"ws\" }}")]
        )
    ))
}

/// Asserts the close-reporting backend receives a Close frame 1001 with `reason`.
async fn backend_gets_1001(
    closes: &mut tokio::sync::mpsc::UnboundedReceiver<(u16, String)>,
    reason: &str,
) {
    let got = tokio::time::timeout(T, closes.recv())
        .await
        .unwrap_or_else(|_| panic!("no Close frame at the backend within {T:?}"));
    assert_eq!(got, Some((1001, reason.to_owned())));
}

/// Opens a WebSocket through `proxy` to the close-reporting backend and echoes once.
async fn open_raw(proxy: &Proxy) -> Ws {
    let (mut ws, _) = tests::ws::ws_open(&proxy.ws_url("/ws"), &Default::default())
        .await
        .unwrap();
    ws_echo(&mut ws, "open").await;
    ws
}

/// When the proxy ends a WebSocket itself — at the end of a graceful stop's grace period —
/// each side gets a Close frame with 1001 (going away), as a server going down sends one,
/// not a bare TCP close that a browser reports as an abnormal closure (1006). The tunnel
/// stays usable through the grace period until then, and the proxy exits once it closed.
#[tokio::test]
async fn a_stopping_proxy_closes_websockets_with_1001_at_the_end_of_its_grace_period() {
    let (backend, mut closes) = close_reporting_backend().await;
    let mut proxy = proxy_before(backend, "[server]\nthreads = 1\ngrace_period = \"4s\"");
    let mut ws = open_raw(&proxy).await;
    let stopped = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    ws_echo(&mut ws, "still open in the grace period").await;
    let (code, reason) = next_close(&mut ws, T).await;
    assert_eq!((code, reason.as_str()), (1001, "proxy stopping"));
    // Near the end of the 4 s grace period (1 s before it), not at its start.
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    backend_gets_1001(&mut closes, "proxy stopping").await;
    // The client answers the close; the proxy is then left with nothing and exits.
    ws_close(ws).await;
    let status = proxy
        .wait_exit(T)
        .unwrap_or_else(|| panic!("the proxy still runs:\n{}", proxy.logs()));
    assert!(status.success(), "{status:?}");
}

/// A WebSocket idle for `tunnel_idle` is ended with a Close frame (1001, "idle timeout") to
/// both sides, not cut.
#[tokio::test]
async fn an_idle_websocket_is_closed_with_1001_to_both_sides() {
    let (backend, mut closes) = close_reporting_backend().await;
    let proxy = proxy_before(backend, "[timeouts]\ntunnel_idle = \"1s\"");
    let mut ws = open_raw(&proxy).await;
    let (code, reason) = next_close(&mut ws, T).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    backend_gets_1001(&mut closes, "idle timeout").await;
    ws_close(ws).await;
    wait_idle(&proxy, T).await;
}

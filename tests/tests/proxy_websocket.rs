//! WebSockets through the proxy end to end: frames both ways, closes propagating in both
//! directions, thousands of tunnels (pingora #946), the tunnel idle timeout, and config
//! reloads that keep open tunnels.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tests::admin::{admin_post, backend_status, counter, status, total, wait_backend, wait_idle};
use tests::{
    client, get, get_with, ports, wait_until, ws_close, ws_connect, ws_echo, ws_echo_binary,
    ws_expect_closed, Backend, Proxy, Ws,
};

/// Bound for waits on the proxy's state (a tunnel closing, a counter settling).
const T: Duration = Duration::from_secs(10);

/// A quick-mode least_conn proxy in front of `backends`.
fn quick(backends: &[Backend]) -> Proxy {
    let listen = format!("127.0.0.1:{}", ports(1)[0]);
    let specs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let mut args = vec!["--listen", listen.as_str(), "--strategy", "least_conn"];
    for s in &specs {
        args.extend(["--backend", s.as_str()]);
    }
    Proxy::start_quick(&args)
}

/// `backends = [...]` entries with the echo ids as proxy ids.
fn backends_toml(backends: &[&Backend]) -> String {
    let entries: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\", id = \"{}\" }}", b.addr(), b.id()))
        .collect();
    format!("[{}]", entries.join(", "))
}

/// Waits until the backend process itself counts `n` open WebSockets.
async fn wait_backend_ws_open(b: &Backend, n: u64) {
    wait_until(
        T,
        &format!("backend {} counts {n} open WebSockets", b.id()),
        || async { get(&b.url("/stats")).await.json()["ws_open"] == n },
    )
    .await;
}

#[tokio::test]
async fn frames_and_closes_cross_the_plain_listener() {
    let mut bs = Backend::start_many(&["a"]);
    let proxy = quick(&bs);
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
    wait_backend_ws_open(&bs[0], 0).await;
    wait_idle(&proxy, T).await;

    // The backend dies: the client's stream ends.
    let (mut ws, _) = ws_connect(&url).await;
    wait_backend_ws_open(&bs[0], 1).await;
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
    let proxy = quick(&bs);
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
        let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
        for (_, id) in &open {
            *by_backend.entry(id.clone()).or_insert(0) += 1;
        }
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
            wait_backend_ws_open(b, 0).await;
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
    let port = ports(1)[0];
    let toml = format!(
        r#"
[timeouts]
tunnel_idle = "1s"

[[listeners]]
listen = "127.0.0.1:{port}"

[upstreams.main]
strategy = "least_conn"
backends = {}
"#,
        backends_toml(&[&bs[0]])
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
    wait_backend_ws_open(&bs[0], 1).await;
}

/// The reload test's config: one upstream `main` with `backends`, admin token `t`.
fn reload_config(listen: u16, admin: u16, strategy: &str, backends: &[&Backend]) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
token = "t"

[[listeners]]
listen = "127.0.0.1:{listen}"

[upstreams.main]
strategy = "{strategy}"
backends = {}
"#,
        backends_toml(backends)
    )
}

#[tokio::test]
async fn reload_keeps_open_websockets_and_rejects_a_bad_config() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let (a, b, c) = (&bs[0], &bs[1], &bs[2]);
    let p = ports(2);
    let proxy = Proxy::start_config(&reload_config(p[0], p[1], "round_robin", &[a, b]));
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
    proxy.write_config(&reload_config(p[0], p[1], "least_conn", &[a, b, c]));
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
    proxy.write_config(&reload_config(p[0], p[1], "leest_conn", &[a, b, c]));
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

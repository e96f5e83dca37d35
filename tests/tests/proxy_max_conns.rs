//! Per-backend `max_conns` end to end: requests held in flight on real backends fill them,
//! the next request goes elsewhere or gets `503`, on every request path (Switchyard's
//! HTTP/1.1, pingora's, HTTP/1.0, h2, WebSocket tunnels, retries) and across reloads.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;

use tests::admin::{admin_get, backend_status, counter, wait_backend};
use tests::fixtures::{backend_entry, listener, tls_keys, TWO_THREADS};
use tests::h2client::{connect as h2_connect, get as h2_get};
use tests::raw::{get_req, HoldingBackend, RawConn, Resp};
use tests::{
    client, free_port, get_with, wait_until, ws_close, ws_connect, Backend, Certs, Proxy,
    STEP_TIMEOUT,
};

/// Bound for waits on the proxy's state (a count going down, a reload applied).
const T: Duration = Duration::from_secs(10);

const FULL: &str = "all backends of upstream app are at max_conns";

/// How a test's requests reach the proxy.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// HTTP/1.1 on Switchyard's own request path.
    Native,
    /// HTTP/1.1 with `server.http1 = "pingora"`.
    Pingora,
    /// HTTP/1.0, which Switchyard's path lends to pingora's.
    Http10,
}

impl Path {
    fn server(self) -> &'static str {
        match self {
            Path::Pingora => "http1 = \"pingora\"\n",
            Path::Native | Path::Http10 => "",
        }
    }

    fn request(self, path: &str) -> String {
        match self {
            Path::Http10 => format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n"),
            Path::Native | Path::Pingora => get_req(path),
        }
    }
}

/// A round-robin upstream `app` over `backends` (`{ addr, ... }` entries) with `keys`
/// (`max_conns = 1`) on the upstream, behind a plain listener on `port`.
fn config(path: Path, port: u16, keys: &str, backends: &[String]) -> String {
    format!(
        "{TWO_THREADS}{}\n{}\n[upstreams.app]\nstrategy = \"round_robin\"\n{keys}backends = [{}]\n",
        path.server(),
        listener(port),
        backends.join(", ")
    )
}

fn holding_entry(b: &HoldingBackend, keys: &str) -> String {
    if keys.is_empty() {
        format!("{{ addr = \"{}\" }}", b.addr)
    } else {
        format!("{{ addr = \"{}\", {keys} }}", b.addr)
    }
}

/// One request on a connection of its own, in the background: it may be held.
fn spawn_request(proxy: SocketAddr, path: Path) -> JoinHandle<Resp> {
    spawn_get(proxy, path, "/held")
}

/// [`spawn_request`] for `target`, which the backend sees (the order of queued requests).
fn spawn_get(proxy: SocketAddr, path: Path, target: &'static str) -> JoinHandle<Resp> {
    tokio::spawn(async move {
        RawConn::connect(proxy)
            .await
            .exchange(path.request(target))
            .await
    })
}

/// A request held on `backend`: sent, and waited for until the backend has read it.
async fn hold(proxy: &Proxy, path: Path, backend: &HoldingBackend) -> JoinHandle<Resp> {
    let n = backend.arrived() + 1;
    let held = spawn_request(proxy.addr(), path);
    backend.wait_arrived(n).await;
    held
}

/// The outcome of a request sent in the background, within [`STEP_TIMEOUT`].
async fn answer<T>(request: JoinHandle<T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, request)
        .await
        .expect("an answer in time")
        .unwrap()
}

/// One request on a connection of its own, answered at once (a `503`, or a released
/// backend's `200`).
async fn request(proxy: SocketAddr, path: Path) -> Resp {
    tokio::time::timeout(
        STEP_TIMEOUT,
        RawConn::connect(proxy).await.exchange(path.request("/now")),
    )
    .await
    .expect("an answer in time (not held by a full backend)")
}

fn assert_full(r: &Resp) {
    assert_full_in(r, "app");
}

/// `r` is the `503` of an `upstream` whose backends are all full.
fn assert_full_in(r: &Resp, upstream: &str) {
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(r.header("retry-after"), Some("1"), "{}", r.head);
    let want = format!("all backends of upstream {upstream} are at max_conns");
    assert!(r.text().contains(&want), "{:?}", r.text());
}

/// Waits until the proxy counts nothing in flight on `addr`.
async fn wait_released(proxy: &Proxy, addr: SocketAddr) {
    wait_backend(proxy, &addr.to_string(), T, "no request in flight", |s| {
        counter(s, "active") == 0
    })
    .await;
}

/// The sum of a metric's series in the proxy's `/metrics`, `filter` on the label text.
async fn metric(proxy: &Proxy, name: &str, filter: &str) -> f64 {
    let text = admin_get(proxy, "/metrics", None).await.body;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two backends with `max_conns = 1`: two held requests fill them, a third gets `503` with
/// the reason and reaches no backend; once one ends, the next is served by that backend.
async fn held_requests_fill_every_backend(path: Path) {
    let a = HoldingBackend::start("a").await;
    let b = HoldingBackend::start("b").await;
    let proxy = Proxy::start_config(&config(
        path,
        free_port(),
        "max_conns = 1\n",
        &[holding_entry(&a, ""), holding_entry(&b, "")],
    ));
    let first = spawn_request(proxy.addr(), path);
    wait_until(T, "the first request reaches a backend", || async {
        a.arrived() + b.arrived() == 1
    })
    .await;
    let held = [first, spawn_request(proxy.addr(), path)];
    // One each: a full backend is passed over.
    a.wait_arrived(1).await;
    b.wait_arrived(1).await;

    let refused = request(proxy.addr(), path).await;
    assert_full(&refused);
    assert_eq!(
        a.arrived() + b.arrived(),
        2,
        "the refused request reached a backend"
    );

    // `a` answers its request, and the one after it at once.
    a.release(2);
    wait_released(&proxy, a.addr).await;
    let next = request(proxy.addr(), path).await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "a"),
        "{}",
        next.head
    );
    assert_eq!(b.arrived(), 1, "the full backend got a request");

    b.release(1);
    let mut bodies = Vec::new();
    for h in held {
        let r = answer(h).await;
        assert_eq!(r.status, 200);
        bodies.push(r.text());
    }
    bodies.sort();
    assert_eq!(bodies, ["a", "b"]);

    for backend in [&a, &b] {
        let s = backend_status(&proxy, &backend.addr.to_string()).await;
        assert_eq!(counter(&s, "max_conns"), 1);
    }
    assert_eq!(
        metric(&proxy, "switchyard_rejected_total", "reason=\"max_conns\"").await,
        1.0
    );
    assert_eq!(
        metric(&proxy, "switchyard_backend_max_conns", "upstream=\"app\"").await,
        2.0
    );
    // Each request placed while a backend was full counts on it: the second held request
    // (the first's backend), the refusal (both), the request after it (`b`).
    assert_eq!(
        metric(&proxy, "switchyard_backend_full_total", "upstream=\"app\"").await,
        4.0
    );
}

#[tokio::test]
async fn held_requests_fill_every_backend_on_switchyards_path() {
    held_requests_fill_every_backend(Path::Native).await;
}

#[tokio::test]
async fn held_requests_fill_every_backend_on_pingoras_path() {
    held_requests_fill_every_backend(Path::Pingora).await;
}

#[tokio::test]
async fn held_requests_fill_every_backend_with_http10_requests() {
    held_requests_fill_every_backend(Path::Http10).await;
}

/// A request whose first backend refuses the connection is retried only on a backend with
/// room: with the other one full, the client gets the `503` of a full upstream rather
/// than a wait on the full backend.
async fn a_retry_passes_over_a_full_backend(path: Path) {
    let b = HoldingBackend::start("b").await;
    // Nothing listens there: every connection is refused.
    let dead = format!("{{ addr = \"127.0.0.1:{}\" }}", free_port());
    let proxy = Proxy::start_config(&config(
        path,
        free_port(),
        "",
        &[dead, holding_entry(&b, "max_conns = 1")],
    ));
    let held = hold(&proxy, path, &b).await;
    for _ in 0..2 {
        assert_full(&request(proxy.addr(), path).await);
    }
    assert_eq!(b.arrived(), 1);
    b.release(1);
    let r = answer(held).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_retry_passes_over_a_full_backend_on_switchyards_path() {
    a_retry_passes_over_a_full_backend(Path::Native).await;
}

#[tokio::test]
async fn a_retry_passes_over_a_full_backend_on_pingoras_path() {
    a_retry_passes_over_a_full_backend(Path::Pingora).await;
}

/// h2 streams count like requests: a held stream fills its backend, the next stream on the
/// same connection gets the `503`.
#[tokio::test]
async fn h2_streams_count_against_max_conns() {
    let a = HoldingBackend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let port = free_port();
    let proxy = Proxy::start_config(&format!(
        "{TWO_THREADS}\n{}{}\n\n[upstreams.app]\nbackends = [{}]\n",
        listener(port),
        tls_keys(&certs.cert, &certs.key),
        holding_entry(&a, "max_conns = 1"),
    ));
    let h2 = h2_connect(&certs.ca_pem(), port).await;
    let url = format!("https://localhost:{port}/x");
    let held = {
        let (h2, url) = (h2.clone(), url.clone());
        tokio::spawn(async move { h2_get(&h2, &url).await })
    };
    a.wait_arrived(1).await;
    let (status, body) = h2_get(&h2, &url).await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains(FULL), "{body:?}");
    assert_eq!(a.arrived(), 1);

    a.release(2);
    let (status, body) = answer(held).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    wait_released(&proxy, a.addr).await;
    let (status, body) = h2_get(&h2, &url).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
}

/// An open WebSocket holds its backend's only slot: requests go to the other backend until
/// it closes, and with both tunnels open, a request gets the `503`.
#[tokio::test]
async fn open_websockets_count_against_max_conns() {
    let bs = Backend::start_many(&["a", "b"]);
    let port = free_port();
    let proxy = Proxy::start_config(&config(
        Path::Native,
        port,
        "max_conns = 1\n",
        &[backend_entry(&bs[0], ""), backend_entry(&bs[1], "")],
    ));
    let c = client();
    let id_url = proxy.url("/id");

    let (ws, first) = ws_connect(&proxy.ws_url("/ws")).await;
    let other = if first == "a" { "b" } else { "a" };
    let other_addr = bs.iter().find(|b| b.id() == other).unwrap().addr();
    // Round robin would alternate; the tunnel's backend is full.
    for _ in 0..4 {
        // Each request's slot is given back just after its answer went out.
        wait_released(&proxy, other_addr).await;
        let r = get_with(&c, &id_url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), Some(other));
    }

    wait_released(&proxy, other_addr).await;
    let (ws2, second) = ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(second, other);
    let r = get_with(&c, &id_url).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains(FULL), "{:?}", r.body);

    ws_close(ws).await;
    let first_addr = bs.iter().find(|b| b.id() == first).unwrap().addr();
    wait_released(&proxy, first_addr).await;
    let r = get_with(&c, &id_url).await;
    assert_eq!(r.backend(), Some(first.as_str()));
    ws_close(ws2).await;
}

/// A reload applies a new limit at once to the requests already in flight, which it keeps
/// counting.
#[tokio::test]
async fn a_reload_lowers_and_raises_the_limit_at_once() {
    let a = HoldingBackend::start("a").await;
    let port = free_port();
    let with_limit = |n: u32| {
        config(
            Path::Native,
            port,
            "",
            &[holding_entry(&a, &format!("max_conns = {n}"))],
        )
    };
    let proxy = Proxy::start_config(&with_limit(2));
    let key = a.addr.to_string();
    let mut held = vec![hold(&proxy, Path::Native, &a).await];

    proxy.reload(&with_limit(1));
    wait_backend(&proxy, &key, T, "max_conns 1 applied", |s| {
        counter(s, "max_conns") == 1
    })
    .await;
    assert_eq!(counter(&backend_status(&proxy, &key).await, "active"), 1);
    assert_full(&request(proxy.addr(), Path::Native).await);

    proxy.reload(&with_limit(3));
    wait_backend(&proxy, &key, T, "max_conns 3 applied", |s| {
        counter(s, "max_conns") == 3
    })
    .await;
    held.push(spawn_request(proxy.addr(), Path::Native));
    held.push(spawn_request(proxy.addr(), Path::Native));
    a.wait_arrived(3).await;
    assert_full(&request(proxy.addr(), Path::Native).await);

    a.release(3);
    for h in held {
        let r = answer(h).await;
        assert_eq!(r.status, 200);
    }
}

/// A request that meets a kept-alive connection its backend just closed goes again, to the
/// same backend when it is the only one: the failed attempt's slot is given back first, or
/// at `max_conns = 1` the request would find its own backend full.
#[tokio::test]
async fn a_request_sent_again_after_a_stale_connection_reuses_its_own_slot() {
    // Each connection answers its first request and closes at the second, which it reports.
    let (raw, mut closed_rx) = tests::raw::closing_at_second_request().await;
    let proxy = Proxy::start_config(&config(
        Path::Native,
        free_port(),
        "max_conns = 1\n",
        &[format!("{{ addr = \"{}\" }}", raw.addr)],
    ));
    // HTTP/1.0 goes through pingora's path, HTTP/1.1 through Switchyard's. Whether the
    // proxy reuses a connection is its pool's timing: requests go until one meets a
    // connection the backend closed.
    for version in ["1.0", "1.1"] {
        let mut met_closed = false;
        for n in 0..50 {
            // The previous request's slot is given back just after its answer went out.
            wait_released(&proxy, raw.addr).await;
            let path = format!("/again{version}-{n}");
            let r = RawConn::connect(proxy.addr())
                .await
                .exchange(format!("GET {path} HTTP/{version}\r\nHost: test\r\n\r\n"))
                .await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            // The backend reports before it closes, so before the proxy can answer.
            while let Ok(p) = closed_rx.try_recv() {
                met_closed |= p == path;
            }
            if met_closed {
                break;
            }
        }
        assert!(
            met_closed,
            "HTTP/{version}: no request met a kept-alive connection"
        );
    }
}

/// `proxy check` lists each backend's limit, and refuses one out of range with file, line
/// and key.
#[test]
fn proxy_check_shows_limits_and_locates_a_bad_one() {
    let toml = |limit: &str| {
        format!(
            "{}\n[upstreams.app]\nmax_conns = 8\nbackends = [\n  {{ addr = \"127.0.0.1:9001\" }},\n  {{ addr = \"127.0.0.1:9002\", max_conns = {limit} }},\n]\n",
            listener(free_port())
        )
    };
    let out = Proxy::check(&toml("3"));
    assert_eq!(out.code(), Some(0), "{}", out.output());
    assert!(out.stdout.contains("  max_conns 8"), "{}", out.stdout);
    assert!(out.stdout.contains("  max_conns 3"), "{}", out.stdout);

    let out = Proxy::check(&toml("2000000"));
    let all = out.expect_refusal("max_conns 2000000");
    assert!(
        all.contains(
            ":8: upstreams.app.backends[1].max_conns: max_conns 2000000 is out of range (0 for unlimited, or up to 1000000)"
        ),
        "{all}"
    );
}

/// With `max_queue`, a request that finds every backend full waits for a slot and is served
/// when one is freed; one more than the queue holds gets `503` at once, and a queued one
/// that waits out `queue_timeout` gets its `503` then. On both HTTP/1 paths.
async fn a_full_upstream_queues_requests(path: Path) {
    let a = HoldingBackend::start("a").await;
    let port = free_port();
    let queue = |timeout: &str| {
        config(
            path,
            port,
            &format!("max_queue = 1\nqueue_timeout = \"{timeout}\"\n"),
            &[holding_entry(&a, "max_conns = 1")],
        )
    };
    let proxy = Proxy::start_config(&queue("10s"));
    let held = hold(&proxy, path, &a).await;
    let queued = spawn_request(proxy.addr(), path);
    wait_until(T, "one request waits in the queue", || {
        let status = tests::admin::status(&proxy);
        async move { status.await["upstreams"][0]["queue"]["waiting"] == 1 }
    })
    .await;
    let r = request(proxy.addr(), path).await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(
        r.text().contains("at max_conns and its queue is full"),
        "{:?}",
        r.text()
    );
    assert_eq!(
        a.arrived(),
        1,
        "the queued request went to the full backend"
    );

    // The held request ends: the queued one takes its slot.
    a.release(2);
    for h in [held, queued] {
        let r = answer(h).await;
        assert_eq!((r.status, r.text().as_str()), (200, "a"), "{}", r.head);
    }
    assert_eq!(a.arrived(), 2);

    // A short queue_timeout: the queued request gives up with the reason.
    proxy.reload(&queue("300ms"));
    wait_until(T, "queue_timeout 300ms applied", || {
        let status = tests::admin::status(&proxy);
        async move { status.await["upstreams"][0]["queue"]["timeout_ms"] == 300 }
    })
    .await;
    wait_released(&proxy, a.addr).await;
    let held = hold(&proxy, path, &a).await;
    let r = request(proxy.addr(), path).await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(
        r.text()
            .contains("stayed at max_conns for 300ms (queue_timeout)"),
        "{:?}",
        r.text()
    );
    a.release(1);
    let r = answer(held).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(
            &proxy,
            "switchyard_rejected_total",
            "reason=\"max_conns_queue_full\""
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &proxy,
            "switchyard_rejected_total",
            "reason=\"max_conns_queue_timeout\""
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_full_upstream_queues_requests_on_switchyards_path() {
    a_full_upstream_queues_requests(Path::Native).await;
}

#[tokio::test]
async fn a_full_upstream_queues_requests_on_pingoras_path() {
    a_full_upstream_queues_requests(Path::Pingora).await;
}

/// A client connection with one request sent, left unanswered.
async fn sent(proxy: &Proxy, path: Path, target: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(path.request(target).as_bytes()).await.unwrap();
    s
}

/// Closes `s` the way `reset` says: a reset, or an orderly close (FIN).
#[allow(deprecated)] // set_linger: the blocking close it warns of is what a reset wants.
fn leave(s: tokio::net::TcpStream, reset: bool) {
    if reset {
        s.set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(s);
}

/// A client that leaves while its request waits (for a slot in the queue, or for the
/// backend's answer) gives up its place and its slot at once, as nginx and pingora's path
/// do: the queue and the backend's count go down before anything is answered, and a queued
/// request whose client has gone is never sent. Switchyard's own HTTP/1.1 path noticed the
/// client only when writing the answer, so the abandoned requests kept the queue full (new
/// clients got `503`) and were sent to the backend when their turn came.
async fn a_client_that_leaves_gives_up_its_place_and_its_slot(path: Path) {
    let a = HoldingBackend::start("a").await;
    let port = free_port();
    let proxy = Proxy::start_config(&config(
        path,
        port,
        "max_queue = 4\nqueue_timeout = \"30s\"\n",
        &[holding_entry(&a, "max_conns = 1")],
    ));
    let held = hold(&proxy, path, &a).await;
    for reset in [false, true] {
        let gone = sent(&proxy, path, "/gone").await;
        wait_queued(&proxy, 1).await;
        leave(gone, reset);
        wait_queued(&proxy, 0).await;
    }
    a.release(1);
    let r = answer(held).await;
    assert_eq!(r.status, 200, "{}", r.head);

    // Waiting for the answer: the backend's slot is freed before the backend answers.
    for reset in [false, true] {
        wait_released(&proxy, a.addr).await;
        let n = a.arrived() + 1;
        let waiting = sent(&proxy, path, "/waiting").await;
        a.wait_arrived(n).await;
        leave(waiting, reset);
        wait_released(&proxy, a.addr).await;
    }
    a.release(2);

    let after = spawn_get(proxy.addr(), path, "/after");
    a.release(1);
    let r = answer(after).await;
    assert_eq!((r.status, r.text().as_str()), (200, "a"), "{}", r.head);
    assert_eq!(a.paths(), ["/held", "/waiting", "/waiting", "/after"]);
}

#[tokio::test]
async fn a_client_that_leaves_gives_up_its_place_and_its_slot_on_switchyards_path() {
    a_client_that_leaves_gives_up_its_place_and_its_slot(Path::Native).await;
}

#[tokio::test]
async fn a_client_that_leaves_gives_up_its_place_and_its_slot_on_pingoras_path() {
    a_client_that_leaves_gives_up_its_place_and_its_slot(Path::Pingora).await;
}

/// Waits until `n` requests wait in upstream `app`'s queue (`/metrics`).
async fn wait_queued(proxy: &Proxy, n: usize) {
    wait_until(T, &format!("{n} requests wait in the queue"), || async {
        metric(proxy, "switchyard_upstream_queued", "upstream=\"app\"").await == n as f64
    })
    .await;
}

/// The queue is first come, first served: requests that queued while the backend was full
/// are served in the order they came, and one that comes later queues behind them. Slots
/// are freed one at a time (the room a reload adds, then one ended request): two freed
/// together would send two requests off at once, and which reaches the backend first is a
/// race the queue does not decide.
async fn queued_requests_are_served_in_order(path: Path) {
    let a = HoldingBackend::start("a").await;
    let port = free_port();
    let with_limit = |n: u32| {
        config(
            path,
            port,
            "max_queue = 10\nqueue_timeout = \"30s\"\n",
            &[holding_entry(&a, &format!("max_conns = {n}"))],
        )
    };
    let proxy = Proxy::start_config(&with_limit(1));
    let mut answers = vec![hold(&proxy, path, &a).await];
    for (waiting, target) in [(1, "/a"), (2, "/b")] {
        answers.push(spawn_get(proxy.addr(), path, target));
        wait_queued(&proxy, waiting).await;
    }
    proxy.reload(&with_limit(2));
    a.wait_arrived(2).await;
    wait_queued(&proxy, 1).await;
    assert_eq!(a.paths(), ["/held", "/a"]);
    answers.push(spawn_get(proxy.addr(), path, "/c"));
    wait_queued(&proxy, 2).await;

    a.release(1);
    a.wait_arrived(3).await;
    assert_eq!(a.paths(), ["/held", "/a", "/b"]);
    a.release(3);
    for r in answers {
        let r = answer(r).await;
        assert_eq!((r.status, r.text().as_str()), (200, "a"), "{}", r.head);
    }
    assert_eq!(a.paths(), ["/held", "/a", "/b", "/c"]);
}

#[tokio::test]
async fn queued_requests_are_served_in_order_on_switchyards_path() {
    queued_requests_are_served_in_order(Path::Native).await;
}

#[tokio::test]
async fn queued_requests_are_served_in_order_on_pingoras_path() {
    queued_requests_are_served_in_order(Path::Pingora).await;
}

/// A reload that raises `max_conns` while requests wait in the queue serves them at once,
/// while the request that filled the backend is still held there; one that adds a backend
/// sends the waiting requests to it. Without the hand-over they would wait for a slot under
/// the limits and backends of the config they came under.
async fn a_reload_serves_the_waiting_requests_under_the_new_config(path: Path) {
    let (a, b) = (
        HoldingBackend::start("a").await,
        HoldingBackend::start("b").await,
    );
    let port = free_port();
    let with = |backends: &[String]| {
        config(
            path,
            port,
            "max_queue = 10\nqueue_timeout = \"60s\"\n",
            backends,
        )
    };
    let proxy = Proxy::start_config(&with(&[holding_entry(&a, "max_conns = 1")]));
    let queue_two = |first: &'static str, second: &'static str| {
        let proxy = &proxy;
        async move {
            let mut waiting = Vec::new();
            for (n, target) in [(1, first), (2, second)] {
                waiting.push(spawn_get(proxy.addr(), path, target));
                wait_queued(proxy, n).await;
            }
            waiting
        }
    };

    // A higher limit: both waiting requests go to `a` beside the held one.
    let held = hold(&proxy, path, &a).await;
    let waiting = queue_two("/q1", "/q2").await;
    proxy.reload(&with(&[holding_entry(&a, "max_conns = 3")]));
    a.wait_arrived(3).await;
    wait_queued(&proxy, 0).await;
    a.release(3);
    for r in [held].into_iter().chain(waiting) {
        let r = answer(r).await;
        assert_eq!((r.status, r.text().as_str()), (200, "a"), "{}", r.head);
    }
    // Both were let through at once: in either order.
    let mut paths = a.paths();
    paths[1..].sort();
    assert_eq!(paths, ["/held", "/q1", "/q2"]);

    // Back to one slot, then a second backend: the waiting requests go to it.
    proxy.reload(&with(&[holding_entry(&a, "max_conns = 1")]));
    wait_backend(&proxy, &a.addr.to_string(), T, "max_conns 1 applied", |s| {
        counter(s, "max_conns") == 1
    })
    .await;
    wait_released(&proxy, a.addr).await;
    let held = hold(&proxy, path, &a).await;
    let waiting = queue_two("/q3", "/q4").await;
    proxy.reload(&with(&[
        holding_entry(&a, "max_conns = 1"),
        holding_entry(&b, "max_conns = 2"),
    ]));
    b.wait_arrived(2).await;
    wait_queued(&proxy, 0).await;
    b.release(2);
    for r in waiting {
        let r = answer(r).await;
        assert_eq!((r.status, r.text().as_str()), (200, "b"), "{}", r.head);
    }
    let mut paths = b.paths();
    paths.sort();
    assert_eq!(paths, ["/q3", "/q4"]);
    a.release(1);
    assert_eq!(answer(held).await.status, 200);
}

#[tokio::test]
async fn a_reload_serves_the_waiting_requests_under_the_new_config_on_switchyards_path() {
    a_reload_serves_the_waiting_requests_under_the_new_config(Path::Native).await;
}

#[tokio::test]
async fn a_reload_serves_the_waiting_requests_under_the_new_config_on_pingoras_path() {
    a_reload_serves_the_waiting_requests_under_the_new_config(Path::Pingora).await;
}

/// A queued WebSocket upgrade gets the slot of a tunnel that closes.
#[tokio::test]
async fn a_queued_upgrade_gets_the_slot_of_a_closed_tunnel() {
    let b = Backend::start("a");
    let proxy = Proxy::start_config(&config(
        Path::Native,
        free_port(),
        "max_queue = 4\nqueue_timeout = \"10s\"\n",
        &[backend_entry(&b, "max_conns = 1")],
    ));
    let (ws, _) = ws_connect(&proxy.ws_url("/ws")).await;
    let url = proxy.ws_url("/ws");
    let second = tokio::spawn(async move { ws_connect(&url).await });
    wait_until(T, "the second upgrade waits in the queue", || {
        let status = tests::admin::status(&proxy);
        async move { status.await["upstreams"][0]["queue"]["waiting"] == 1 }
    })
    .await;
    ws_close(ws).await;
    let (ws2, id) = answer(second).await;
    assert_eq!(id, "a");
    ws_close(ws2).await;
}

/// Quick mode's `--max-conns` limits every backend.
#[tokio::test]
async fn quick_mode_limits_every_backend() {
    let a = HoldingBackend::start("a").await;
    let listen = format!("127.0.0.1:{}", free_port());
    let backend = a.addr.to_string();
    let proxy = Proxy::start_quick(&[
        "--listen",
        &listen,
        "--backend",
        &backend,
        "--max-conns",
        "1",
    ]);
    let held = hold(&proxy, Path::Native, &a).await;
    assert_full_in(&request(proxy.addr(), Path::Native).await, "default");
    a.release(1);
    let r = answer(held).await;
    assert_eq!(r.status, 200);
}

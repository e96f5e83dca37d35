//! Health handling end to end: passive and active checks, recovery, backups, `503` with no
//! usable backend, and draining through the admin API — real `echo-backend` and `proxy`
//! processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use tests::admin::{admin_post, backend_status, counter, status, wait_backend, wait_health};
use tests::http::backend_counts;
use tests::ws::{ws_open, WsOptions};
use tests::{
    client, get, get_with, ports, send, wait_until, ws_connect, ws_echo, Backend, Proxy, Reply,
};

/// Bound for waits on the proxy's state (a health change, a backend back in service).
const T: Duration = Duration::from_secs(15);
/// The admin token of the tests that use the admin API.
const TOKEN: &str = "health-test-token";

/// Active HTTP checks, fast enough for tests.
const ACTIVE: &str = r#"
[upstreams.app.health]
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "500ms"
rise = 2
fall = 2
"#;

/// A config with one listener on `port` and one upstream `app` (round_robin) routing
/// everything to `primaries` and `backups` (ids are the backends' ids). `extra` is appended
/// as is (health, admin).
fn config(port: u16, primaries: &[&Backend], backups: &[&Backend], extra: &str) -> String {
    let mut entries: Vec<String> = primaries
        .iter()
        .map(|b| format!("{{ addr = \"{}\", id = \"{}\" }}", b.addr(), b.id()))
        .collect();
    entries.extend(backups.iter().map(|b| {
        format!(
            "{{ addr = \"{}\", id = \"{}\", backup = true }}",
            b.addr(),
            b.id()
        )
    }));
    format!(
        r#"
[server]
threads = 2

[[listeners]]
listen = "127.0.0.1:{port}"

[upstreams.app]
strategy = "round_robin"
backends = [{}]
{extra}
"#,
        entries.join(", ")
    )
}

/// An `[admin]` table on a free port with the test token.
fn admin_with_token() -> String {
    format!(
        "\n[admin]\nlisten = \"127.0.0.1:{}\"\ntoken = \"{TOKEN}\"\n",
        ports(1)[0]
    )
}

fn tally(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// `POST /health/off` or `/health/on` on the backend itself.
async fn set_backend_health(b: &Backend, on: bool) {
    let path = if on { "/health/on" } else { "/health/off" };
    let r = send(client().post(b.url(path))).await;
    assert_eq!(r.status, 200, "{path} on {}: {r:?}", b.id());
}

/// Polls the proxy with GETs until one is answered by `id`.
async fn wait_traffic_reaches(proxy: &Proxy, id: &str) {
    let url = proxy.url("/id");
    wait_until(
        T,
        &format!("a request through the proxy to reach {id}"),
        || {
            let url = url.clone();
            async move { get(&url).await.backend() == Some(id) }
        },
    )
    .await;
}

fn assert_plain_text(r: &Reply) {
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}: {r:?}");
}

#[tokio::test]
async fn killed_backend_gets_no_requests_after_passive_detection() {
    let mut a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], ""));
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(
        backend_counts(&c, &url, 10).await,
        tally(&[("a", 5), ("b", 5)])
    );

    a.kill();
    // Until `a` is marked down (3 failed connects within 10 s), the requests picked for it fail
    // to connect and are retried on `b`: every one is answered.
    let mut sent = 0;
    while backend_status(&proxy, "a").await["health"] != "down" {
        sent += 1;
        assert!(
            sent <= 30,
            "a still not down after {sent} requests: {}",
            status(&proxy).await
        );
        let r = get_with(&c, &url).await;
        assert_eq!(r.status, 200, "request {sent} after the kill: {r:?}");
        assert_eq!(r.backend(), Some("b"), "request {sent} after the kill");
    }

    // Marked down: the proxy no longer even tries it.
    let tried_before = counter(&backend_status(&proxy, "a").await, "requests");
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[("b", 20)]));
    let a_status = backend_status(&proxy, "a").await;
    assert_eq!(a_status["health"], "down");
    assert_eq!(
        counter(&a_status, "requests"),
        tried_before,
        "no request was sent to the dead backend: {a_status}"
    );
}

#[tokio::test]
async fn killed_backend_returns_to_service_after_restart_with_active_checks() {
    let mut a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], ACTIVE));
    wait_health(&proxy, "a", "up", T).await;
    wait_health(&proxy, "b", "up", T).await;
    let c = client();
    let url = proxy.url("/id");

    a.kill();
    wait_health(&proxy, "a", "down", T).await;
    let counts = backend_counts(&c, &url, 20).await;
    assert_eq!(counts, tally(&[("b", 20)]));

    a.restart();
    wait_traffic_reaches(&proxy, "a").await;
    assert_eq!(backend_status(&proxy, "a").await["health"], "up");
    // Back in the rotation for good, not a single lucky request.
    let counts = backend_counts(&c, &url, 10).await;
    assert_eq!(counts, tally(&[("a", 5), ("b", 5)]));
}

/// Without active checks, a backend that passive checks marked down gets one probe request
/// per `fail_window`, and a successful answer re-admits it (README, "Health").
#[tokio::test]
async fn passively_failed_backend_is_probed_and_readmitted_after_restart() {
    let mut a = Backend::start("a");
    let b = Backend::start("b");
    let health = "[upstreams.app.health]\nmax_fails = 3\nfail_window = \"1s\"\n";
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], health));
    let c = client();
    let url = proxy.url("/id");

    a.kill();
    let mut sent = 0;
    while backend_status(&proxy, "a").await["health"] != "down" {
        sent += 1;
        assert!(sent <= 30, "a still not down after {sent} requests");
        assert_eq!(get_with(&c, &url).await.status, 200);
    }

    a.restart();
    // Requests keep flowing (to `b`); after the 1 s window one of them must probe `a`.
    wait_until(
        T,
        "a restarted backend to be probed and re-admitted",
        || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let r = get_with(&c, &url).await;
                assert_eq!(r.status, 200, "{r:?}");
                r.backend() == Some("a")
            }
        },
    )
    .await;
    wait_health(&proxy, "a", "up", T).await;
}

#[tokio::test]
async fn failing_active_check_takes_a_backend_out_and_passing_brings_it_back() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], ACTIVE));
    wait_health(&proxy, "a", "up", T).await;
    wait_health(&proxy, "b", "up", T).await;
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(
        backend_counts(&c, &url, 10).await,
        tally(&[("a", 5), ("b", 5)])
    );

    set_backend_health(&a, false).await;
    wait_health(&proxy, "a", "down", T).await;
    let before = counter(&backend_status(&proxy, "a").await, "requests");
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[("b", 20)]));
    assert_eq!(
        counter(&backend_status(&proxy, "a").await, "requests"),
        before
    );
    // The metrics agree.
    let m = get(&proxy.admin_url("/metrics")).await.body;
    let up_line = |addr: String| {
        m.lines()
            .find(|l| l.starts_with("switchyard_backend_up{") && l.contains(&addr))
            .map(str::to_owned)
    };
    let a_up = up_line(format!("backend=\"{}\"", a.addr())).unwrap();
    assert!(a_up.ends_with(" 0"), "{a_up}");
    let b_up = up_line(format!("backend=\"{}\"", b.addr())).unwrap();
    assert!(b_up.ends_with(" 1"), "{b_up}");

    set_backend_health(&a, true).await;
    wait_health(&proxy, "a", "up", T).await;
    assert_eq!(
        backend_counts(&c, &url, 10).await,
        tally(&[("a", 5), ("b", 5)])
    );
}

#[tokio::test]
async fn with_active_checks_a_new_backend_gets_no_traffic_until_it_passes() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // `b` fails its checks from the start.
    set_backend_health(&b, false).await;
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], ACTIVE));
    let first = backend_status(&proxy, "b").await;
    assert!(
        first["health"] == "pending" || first["health"] == "down",
        "a never-checked backend must not start up: {first}"
    );
    wait_health(&proxy, "a", "up", T).await;
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[("a", 20)]));
    let b_status = backend_status(&proxy, "b").await;
    assert_ne!(b_status["health"], "up", "{b_status}");
    assert_eq!(counter(&b_status, "requests"), 0, "{b_status}");

    set_backend_health(&b, true).await;
    wait_traffic_reaches(&proxy, "b").await;
    assert_eq!(backend_status(&proxy, "b").await["health"], "up");
}

#[tokio::test]
async fn with_active_checks_a_backend_added_by_reload_waits_for_its_first_pass() {
    let a = Backend::start("a");
    let n = Backend::start("n");
    set_backend_health(&n, false).await;
    let port = ports(1)[0];
    let proxy = Proxy::start_config(&config(port, &[&a], &[], ACTIVE));
    wait_health(&proxy, "a", "up", T).await;

    proxy.reload(&config(port, &[&a, &n], &[], ACTIVE));
    let added = wait_backend(&proxy, "n", T, "the reload to add backend n", |_| true).await;
    assert_ne!(added["health"], "up", "{added}");
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[("a", 20)]));
    let n_status = backend_status(&proxy, "n").await;
    assert_ne!(n_status["health"], "up", "{n_status}");
    assert_eq!(counter(&n_status, "requests"), 0, "{n_status}");

    set_backend_health(&n, true).await;
    wait_traffic_reaches(&proxy, "n").await;
}

#[tokio::test]
async fn backup_gets_traffic_only_while_every_primary_is_down() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let bk = Backend::start("backup");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[&bk], ACTIVE));
    for id in ["a", "b", "backup"] {
        wait_health(&proxy, id, "up", T).await;
    }
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(
        backend_counts(&c, &url, 20).await,
        tally(&[("a", 10), ("b", 10)])
    );

    // One primary down: the other takes everything, the backup still nothing.
    set_backend_health(&a, false).await;
    wait_health(&proxy, "a", "down", T).await;
    assert_eq!(backend_counts(&c, &url, 10).await, tally(&[("b", 10)]));

    // Every primary down: the backup takes over.
    set_backend_health(&b, false).await;
    wait_health(&proxy, "b", "down", T).await;
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[("backup", 20)]));

    // A primary is back: traffic returns to it, the backup gets nothing.
    set_backend_health(&a, true).await;
    wait_health(&proxy, "a", "up", T).await;
    let before = counter(&backend_status(&proxy, "backup").await, "requests");
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[("a", 20)]));
    assert_eq!(
        counter(&backend_status(&proxy, "backup").await, "requests"),
        before
    );
}

#[tokio::test]
async fn killed_primaries_fail_over_to_the_backup_without_errors() {
    let mut a = Backend::start("a");
    let mut b = Backend::start("b");
    let bk = Backend::start("backup");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[&bk], ""));
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(
        backend_counts(&c, &url, 10).await,
        tally(&[("a", 5), ("b", 5)])
    );

    a.kill();
    b.kill();
    // Failed connects are retried, ending on the backup: no request fails, even before the
    // primaries are marked down.
    for i in 0..20 {
        let r = get_with(&c, &url).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.backend(), Some("backup"), "request {i}");
    }
    wait_health(&proxy, "a", "down", T).await;
    wait_health(&proxy, "b", "down", T).await;
    assert_eq!(backend_counts(&c, &url, 10).await, tally(&[("backup", 10)]));
}

#[tokio::test]
async fn no_healthy_backend_is_an_immediate_503_with_a_reason() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], ACTIVE));
    wait_health(&proxy, "a", "up", T).await;
    wait_health(&proxy, "b", "up", T).await;
    set_backend_health(&a, false).await;
    set_backend_health(&b, false).await;
    wait_health(&proxy, "a", "down", T).await;
    wait_health(&proxy, "b", "down", T).await;

    // `get` fails the test if the answer takes longer than the harness's step timeout.
    for path in ["/id", "/some/other/path?x=1"] {
        let r = get(&proxy.url(path)).await;
        assert_eq!(r.status, 503, "{path}: {r:?}");
        assert_eq!(r.backend(), None, "answered by the proxy itself: {r:?}");
        assert_plain_text(&r);
        assert!(
            r.body.contains("no healthy backend"),
            "{path}: {:?}",
            r.body
        );
    }
    // A WebSocket upgrade is refused the same way.
    match ws_open(&proxy.ws_url("/ws"), &WsOptions::default()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503, "{resp:?}");
            let body = resp.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            assert!(body.contains("no healthy backend"), "{body:?}");
        }
        Ok((_, resp)) => panic!("upgrade with no healthy backend succeeded: {resp:?}"),
        Err(e) => panic!("expected a 503 answer to the upgrade, got {e}"),
    }
}

#[tokio::test]
async fn killed_backends_end_in_an_immediate_503_with_a_reason() {
    let mut a = Backend::start("a");
    let mut b = Backend::start("b");
    // A long window so that no probe request is due while the test runs.
    let health = "[upstreams.app.health]\nmax_fails = 3\nfail_window = \"60s\"\n";
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], health));
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(get_with(&c, &url).await.status, 200);
    a.kill();
    b.kill();

    // Before both are marked down, failed connects give an error status (never a hang).
    let mut sent = 0;
    loop {
        let r = get_with(&c, &url).await;
        assert_ne!(r.status, 200, "{r:?}");
        if r.status == 503 {
            break;
        }
        sent += 1;
        assert!(sent <= 20, "no 503 after {sent} requests; last: {r:?}");
    }
    wait_health(&proxy, "a", "down", T).await;
    wait_health(&proxy, "b", "down", T).await;
    for _ in 0..5 {
        let r = get_with(&c, &url).await;
        assert_eq!(r.status, 503, "{r:?}");
        assert_plain_text(&r);
        assert!(r.body.contains("no healthy backend"), "{:?}", r.body);
    }
}

#[tokio::test]
async fn drained_backend_gets_no_new_requests_and_keeps_its_websockets() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], &admin_with_token()));
    let c = client();
    let url = proxy.url("/id");

    let (mut ws, on) = ws_connect(&proxy.ws_url("/ws")).await;
    let other = if on == "a" { "b" } else { "a" };
    let addr = if on == "a" { a.addr() } else { b.addr() };
    let drain = format!("/backends/app/{addr}/drain");

    // Mutations need the token.
    let r = admin_post(&proxy, &drain, None).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = admin_post(&proxy, &drain, Some("not-the-token")).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(backend_status(&proxy, &on).await["draining"], false);

    let r = admin_post(&proxy, &drain, Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["draining"], true, "{r:?}");
    assert_eq!(backend_status(&proxy, &on).await["draining"], true);

    // No new requests or tunnels on the drained backend...
    assert_eq!(backend_counts(&c, &url, 20).await, tally(&[(other, 20)]));
    let (mut ws2, on2) = ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(on2, other);
    // ...while its open WebSocket keeps working.
    ws_echo(&mut ws, "still here while draining").await;
    ws_echo(&mut ws2, "on the other one").await;
    assert_eq!(backend_status(&proxy, &on).await["tunnels"], 1);

    // Undrain by id works as well as by address.
    let r = admin_post(&proxy, &format!("/backends/app/{on}/undrain"), Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend_status(&proxy, &on).await["draining"], false);
    let counts = backend_counts(&c, &url, 10).await;
    assert!(
        counts.get(on.as_str()).is_some_and(|n| *n > 0),
        "{counts:?}"
    );
    ws_echo(&mut ws, "after undrain").await;
}

#[tokio::test]
async fn admin_mutations_are_refused_without_a_configured_token() {
    let a = Backend::start("a");
    // No [admin] table: the harness adds one without a token.
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a], &[], ""));
    let path = format!("/backends/app/{}/drain", a.addr());
    for token in [None, Some("anything")] {
        let r = admin_post(&proxy, &path, token).await;
        assert_eq!(r.status, 403, "token {token:?}: {r:?}");
    }
    assert_eq!(backend_status(&proxy, "a").await["draining"], false);
    assert_eq!(get(&proxy.url("/id")).await.backend(), Some("a"));
}

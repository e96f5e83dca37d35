//! Health handling end to end: passive and active checks, recovery, backups, `503` with no
//! usable backend, and draining through the admin API — real `echo-backend` and `proxy`
//! processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tests::admin::{
    admin_get, admin_post, backend_status, counter, status, wait_backend, wait_health,
};
use tests::fixtures::{admin, backend_entry, entries, http_health, listener, upstream, ONE_THREAD};
use tests::http::{assert_counts, assert_plain_text, backend_counts};
use tests::raw::{get_req, RawConn};
use tests::ws::{ws_open, WsOptions};
use tests::{client, get, get_with, ports, send, wait_until, ws_connect, ws_echo, Backend, Proxy};

/// Bound for waits on the proxy's state (a health change, a backend back in service).
const T: Duration = Duration::from_secs(15);
/// The admin token of the tests that use the admin API.
const TOKEN: &str = "health-test-token";

/// Active HTTP checks of upstream `app`, fast enough for tests.
fn active() -> String {
    http_health("app", "200ms", "500ms", 2, 2)
}

/// A config with one listener on `port` and one upstream `app` (round_robin) routing
/// everything to `primaries` and `backups` (ids are the backends' ids). `extra` is appended
/// as is (health, admin).
fn config(port: u16, primaries: &[&Backend], backups: &[&Backend], extra: &str) -> String {
    let mut backends = entries(primaries);
    backends.extend(backups.iter().map(|b| backend_entry(b, "backup = true")));
    format!(
        r#"
{ONE_THREAD}
{listener}
{upstream}
{extra}
"#,
        listener = listener(port),
        upstream = upstream("app", Some("round_robin"), &backends),
    )
}

/// An `[admin]` table on a free port with the test token.
fn admin_with_token() -> String {
    admin(ports(1)[0], TOKEN)
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

/// Asserts that `want` answer the GETs of `url` (as [`assert_counts`]) without the proxy even
/// trying backend `skipped`: its request counter does not move. Returns its entry after.
async fn assert_counts_skipping(
    proxy: &Proxy,
    c: &reqwest::Client,
    url: &str,
    want: &[(&str, usize)],
    skipped: &str,
) -> serde_json::Value {
    let before = counter(&backend_status(proxy, skipped).await, "requests");
    assert_counts(c, url, want).await;
    let after = backend_status(proxy, skipped).await;
    assert_eq!(
        counter(&after, "requests"),
        before,
        "no request was sent to {skipped}: {after}"
    );
    after
}

/// Backends `a` and `b` behind a proxy with [`active`] checks, once both are up.
async fn both_up_with_active_checks() -> (Backend, Backend, Proxy) {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], &active()));
    wait_health(&proxy, "a", "up", T).await;
    wait_health(&proxy, "b", "up", T).await;
    (a, b, proxy)
}

/// With `fresh` failing its checks: asserts that `a` answers all of 20 requests and that
/// `fresh` is not up and was sent none; then lets `fresh` pass and waits for traffic to reach it.
async fn assert_left_out_until_it_passes(proxy: &Proxy, fresh: &Backend) {
    assert_counts(&client(), &proxy.url("/id"), &[("a", 20)]).await;
    let fresh_status = backend_status(proxy, fresh.id()).await;
    assert_ne!(fresh_status["health"], "up", "{fresh_status}");
    assert_eq!(counter(&fresh_status, "requests"), 0, "{fresh_status}");

    set_backend_health(fresh, true).await;
    wait_traffic_reaches(proxy, fresh.id()).await;
}

#[tokio::test]
async fn killed_backend_gets_no_requests_after_passive_detection() {
    let mut a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], ""));
    let c = client();
    let url = proxy.url("/id");
    assert_counts(&c, &url, &[("a", 5), ("b", 5)]).await;

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
    let a_status = assert_counts_skipping(&proxy, &c, &url, &[("b", 20)], "a").await;
    assert_eq!(a_status["health"], "down");
}

#[tokio::test]
async fn killed_backend_returns_to_service_after_restart_with_active_checks() {
    let (mut a, _b, proxy) = both_up_with_active_checks().await;
    let c = client();
    let url = proxy.url("/id");

    a.kill();
    wait_health(&proxy, "a", "down", T).await;
    assert_counts(&c, &url, &[("b", 20)]).await;

    a.restart();
    wait_traffic_reaches(&proxy, "a").await;
    assert_eq!(backend_status(&proxy, "a").await["health"], "up");
    // Back in the rotation for good, not a single lucky request.
    assert_counts(&c, &url, &[("a", 5), ("b", 5)]).await;
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
    fail_passively(&proxy, "a").await;

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

/// Marks backend `a` down through passive checks: GETs (answered by the others) until its
/// `/status` entry says so. `a` must refuse connections.
async fn fail_passively(proxy: &Proxy, a: &str) {
    let (c, url) = (client(), proxy.url("/id"));
    let mut sent = 0;
    while backend_status(proxy, a).await["health"] != "down" {
        sent += 1;
        assert!(sent <= 30, "{a} still not down after {sent} requests");
        assert_eq!(get_with(&c, &url).await.status, 200);
    }
}

/// A probe whose client goes away before the backend answers says nothing about the
/// backend: the next request probes it again. The probe slot used to stay taken, so a
/// backend without active checks was never probed again, never re-admitted.
#[tokio::test]
async fn a_probe_abandoned_by_its_client_does_not_keep_the_backend_out_for_good() {
    let mut a = Backend::start("a");
    let b = Backend::start("b");
    let extra = "[upstreams.app.health]\nmax_fails = 1\nfail_window = \"1s\"\n\
                 [timeouts]\nupstream_read = \"60s\"\n";
    // pingora's path notices a client that closes while the backend is silent.
    let toml = config(ports(1)[0], &[&a, &b], &[], extra).replacen(
        "[server]\n",
        "[server]\nhttp1 = \"pingora\"\n",
        1,
    );
    let proxy = Proxy::start_config(&toml);

    a.kill();
    fail_passively(&proxy, "a").await;
    // Back, but hung: the probe waits for an answer.
    a.restart();
    a.stop();
    // b answers until the fail window has passed and a request is a's probe.
    let probe = tokio::time::timeout(T, async {
        loop {
            let mut conn = RawConn::connect(proxy.addr()).await;
            conn.send(get_req("/id")).await;
            tokio::select! {
                r = conn.try_response(false) => {
                    let r = r.unwrap();
                    assert_eq!((r.status, r.header("x-backend-id")), (200, Some("b")));
                }
                _ = wait_backend(&proxy, "a", T, "a's probe", |e| counter(e, "active") == 1) => {
                    break conn;
                }
            }
        }
    })
    .await
    .expect("a request probes a within the bound");
    drop(probe);
    wait_backend(&proxy, "a", T, "the abandoned probe to end", |e| {
        counter(e, "active") == 0
    })
    .await;

    a.cont();
    wait_traffic_reaches(&proxy, "a").await;
    wait_health(&proxy, "a", "up", T).await;
}

#[tokio::test]
async fn failing_active_check_takes_a_backend_out_and_passing_brings_it_back() {
    let (a, b, proxy) = both_up_with_active_checks().await;
    let c = client();
    let url = proxy.url("/id");
    assert_counts(&c, &url, &[("a", 5), ("b", 5)]).await;

    set_backend_health(&a, false).await;
    wait_health(&proxy, "a", "down", T).await;
    assert_counts_skipping(&proxy, &c, &url, &[("b", 20)], "a").await;
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
    assert_counts(&c, &url, &[("a", 5), ("b", 5)]).await;
}

/// A backend the active checks take out is a warning that says why (HAProxy's `Server ...
/// is DOWN, reason: ...`): it was an info line, `health changed`, without a reason.
#[tokio::test]
async fn a_backend_marked_down_by_active_checks_is_a_warning_with_the_reason() {
    let (a, _b, proxy) = both_up_with_active_checks().await;
    set_backend_health(&a, false).await;
    let needle = format!("backend={}", a.addr());
    let line = tests::wait_for(T, "the line of the check that took a out", || {
        let line = proxy
            .logs()
            .lines()
            .find(|l| l.contains("marked down by active checks") && l.contains(&needle))
            .map(str::to_owned);
        std::future::ready(line)
    })
    .await;
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("status 503 is not expected"), "{line}");
}

#[tokio::test]
async fn with_active_checks_a_new_backend_gets_no_traffic_until_it_passes() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // `b` fails its checks from the start.
    set_backend_health(&b, false).await;
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], &active()));
    let first = backend_status(&proxy, "b").await;
    assert!(
        first["health"] == "pending" || first["health"] == "down",
        "a never-checked backend must not start up: {first}"
    );
    wait_health(&proxy, "a", "up", T).await;
    assert_left_out_until_it_passes(&proxy, &b).await;
    assert_eq!(backend_status(&proxy, "b").await["health"], "up");
}

#[tokio::test]
async fn with_active_checks_a_backend_added_by_reload_waits_for_its_first_pass() {
    let a = Backend::start("a");
    let n = Backend::start("n");
    set_backend_health(&n, false).await;
    let port = ports(1)[0];
    let proxy = Proxy::start_config(&config(port, &[&a], &[], &active()));
    wait_health(&proxy, "a", "up", T).await;

    proxy.reload(&config(port, &[&a, &n], &[], &active()));
    let added = wait_backend(&proxy, "n", T, "the reload to add backend n", |_| true).await;
    assert_ne!(added["health"], "up", "{added}");
    assert_left_out_until_it_passes(&proxy, &n).await;
}

/// A backend that a reload adds is checked at once, not at its upstream's next round of
/// checks: it used to wait that whole interval (an hour here) with no traffic.
#[tokio::test]
async fn with_active_checks_a_backend_added_by_reload_is_checked_at_once() {
    let a = Backend::start("a");
    let n = Backend::start("n");
    let port = ports(1)[0];
    let checks = http_health("app", "1h", "500ms", 1, 1);
    let proxy = Proxy::start_config(&config(port, &[&a], &[], &checks));
    wait_health(&proxy, "a", "up", T).await;

    proxy.reload(&config(port, &[&a, &n], &[], &checks));
    wait_health(&proxy, "n", "up", T).await;
    wait_traffic_reaches(&proxy, "n").await;
}

#[tokio::test]
async fn a_reload_that_shortens_the_check_interval_applies_it_at_once() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = ports(1)[0];
    let with_interval = |interval: &str| {
        config(
            port,
            &[&a, &b],
            &[],
            &http_health("app", interval, "500ms", 1, 1),
        )
    };
    // The first round of checks runs at start; the next one would be an hour later.
    let proxy = Proxy::start_config(&with_interval("1h"));
    wait_health(&proxy, "a", "up", T).await;
    wait_health(&proxy, "b", "up", T).await;

    set_backend_health(&a, false).await;
    proxy.reload(&with_interval("100ms"));
    wait_health(&proxy, "a", "down", T).await;
    assert_counts_skipping(&proxy, &client(), &proxy.url("/id"), &[("b", 10)], "a").await;
}

#[tokio::test]
async fn backup_gets_traffic_only_while_every_primary_is_down() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let bk = Backend::start("backup");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[&bk], &active()));
    for id in ["a", "b", "backup"] {
        wait_health(&proxy, id, "up", T).await;
    }
    let c = client();
    let url = proxy.url("/id");
    assert_counts(&c, &url, &[("a", 10), ("b", 10)]).await;

    // One primary down: the other takes everything, the backup still nothing.
    set_backend_health(&a, false).await;
    wait_health(&proxy, "a", "down", T).await;
    assert_counts(&c, &url, &[("b", 10)]).await;

    // Every primary down: the backup takes over.
    set_backend_health(&b, false).await;
    wait_health(&proxy, "b", "down", T).await;
    assert_counts(&c, &url, &[("backup", 20)]).await;

    // A primary is back: traffic returns to it, the backup gets nothing.
    set_backend_health(&a, true).await;
    wait_health(&proxy, "a", "up", T).await;
    assert_counts_skipping(&proxy, &c, &url, &[("a", 20)], "backup").await;
}

#[tokio::test]
async fn with_active_checks_a_late_answer_does_not_bring_a_failed_backend_back() {
    let a = Backend::start("a");
    let bk = Backend::start("backup");
    // `rise = 200` at 100ms: a backend the checks took down needs 20 s of passing checks.
    let health = http_health("app", "100ms", "500ms", 200, 1);
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a], &[&bk], &health));
    wait_health(&proxy, "a", "up", T).await;
    wait_health(&proxy, "backup", "up", T).await;

    // A slow request is in flight on `a` when its checks fail and take it down.
    let slow_url = proxy.url("/delay/3000");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    wait_backend(&proxy, "a", T, "the slow request in flight on a", |b| {
        counter(b, "active") == 1
    })
    .await;
    set_backend_health(&a, false).await;
    wait_health(&proxy, "a", "down", T).await;
    set_backend_health(&a, true).await;

    // Its answer, sent before `a` went down, says nothing of `a` now: only `rise` passing
    // checks bring it back (as in HAProxy), so the backup keeps the traffic.
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("a"), "{r:?}");
    let after = backend_status(&proxy, "a").await;
    assert_eq!(after["health"], "down", "{after}");
    assert_counts_skipping(&proxy, &client(), &proxy.url("/id"), &[("backup", 10)], "a").await;
}

#[tokio::test]
async fn killed_primaries_fail_over_to_the_backup_without_errors() {
    let mut a = Backend::start("a");
    let mut b = Backend::start("b");
    let bk = Backend::start("backup");
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[&bk], ""));
    let c = client();
    let url = proxy.url("/id");
    assert_counts(&c, &url, &[("a", 5), ("b", 5)]).await;

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
    assert_counts(&c, &url, &[("backup", 10)]).await;
}

#[tokio::test]
async fn no_healthy_backend_is_an_immediate_503_with_a_reason() {
    let (a, b, proxy) = both_up_with_active_checks().await;
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

/// `fail_open`: while every backend fails its checks (a dependency they share is down, or a
/// deploy broke the check path), requests and WebSockets go to all of them not drained,
/// rather than a `503` that would take the whole site down. Once one passes again, it alone
/// takes the traffic.
#[tokio::test]
async fn with_fail_open_every_backend_failing_its_checks_still_gets_the_traffic() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let drained = Backend::start("d");
    let extra = format!("{}fail_open = true\n{}", active(), admin_with_token());
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b, &drained], &[], &extra));
    for id in ["a", "b", "d"] {
        wait_health(&proxy, id, "up", T).await;
    }
    let r = admin_post(&proxy, "/backends/app/d/drain", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let failing_open = |s: &serde_json::Value| s["upstreams"][0]["failing_open"].clone();
    assert_eq!(failing_open(&status(&proxy).await), false);
    // The first passes at start-up bring nothing back.
    let back = "a backend is in service again";
    assert!(!proxy.logs().contains(back), "{}", proxy.logs());

    for backend in [&a, &b, &drained] {
        set_backend_health(backend, false).await;
    }
    for id in ["a", "b", "d"] {
        wait_health(&proxy, id, "down", T).await;
    }
    let s = status(&proxy).await;
    assert_eq!(failing_open(&s), true, "{s}");
    let metrics = admin_get(&proxy, "/metrics", None).await.body;
    assert!(
        metrics.contains("upstream_failing_open{upstream=\"app\"} 1"),
        "{metrics}"
    );
    let c = client();
    let url = proxy.url("/id");
    assert_counts(&c, &url, &[("a", 10), ("b", 10)]).await;
    let (mut ws, on) = ws_connect(&proxy.ws_url("/ws")).await;
    assert!(on == "a" || on == "b", "{on}");
    ws_echo(&mut ws, "through a backend failing its checks").await;

    proxy.wait_log(
        "no backend in service: failing open, requests go to every backend not drained",
        T,
    );
    set_backend_health(&b, true).await;
    wait_health(&proxy, "b", "up", T).await;
    proxy.wait_log(back, T);
    assert_counts(&c, &url, &[("b", 20)]).await;
    assert_eq!(failing_open(&status(&proxy).await), false);
    let metrics = admin_get(&proxy, "/metrics", None).await.body;
    assert!(
        metrics.contains("upstream_failing_open{upstream=\"app\"} 0"),
        "{metrics}"
    );
}

/// Quick mode's `--fail-open` is the config's `fail_open`.
#[tokio::test]
async fn quick_mode_fails_open_with_the_flag() {
    let a = Backend::start("a");
    let listen = format!("127.0.0.1:{}", ports(1)[0]);
    let backend = a.addr().to_string();
    let proxy = Proxy::start_quick(&[
        "--listen",
        &listen,
        "--backend",
        &backend,
        "--health-path",
        "/healthz",
        "--fail-open",
        "--threads",
        "1",
    ]);
    // Quick mode names backends by a hash of their address: found here by the address.
    wait_health(&proxy, &backend, "up", T).await;
    set_backend_health(&a, false).await;
    wait_health(&proxy, &backend, "down", T).await;
    let r = get(&proxy.url("/id")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, Some("a")), "{r:?}");
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

/// The last backend left in service (the others drained, for a deploy say) is not marked
/// down by passive checks, as the only backend of an upstream is not: one slow answer, which
/// any client can ask for, took it out, and every request got a 503 for the fail window.
#[tokio::test]
async fn passive_checks_never_take_out_the_last_backend_not_drained() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let extra = format!(
        "[upstreams.app.health]\nmax_fails = 1\nfail_window = \"60s\"\n\
         [timeouts]\nupstream_read = \"300ms\"\n{}",
        admin_with_token()
    );
    let proxy = Proxy::start_config(&config(ports(1)[0], &[&a, &b], &[], &extra));
    let r = admin_post(&proxy, "/backends/app/b/drain", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");

    let c = client();
    let slow = get_with(&c, &proxy.url("/delay/3000")).await;
    assert_ne!(slow.status, 200, "{slow:?}");
    let r = get_with(&c, &proxy.url("/id")).await;
    assert_eq!((r.status.as_u16(), r.backend()), (200, Some("a")), "{r:?}");
    assert_eq!(backend_status(&proxy, "a").await["health"], "up");
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
    assert_counts(&c, &url, &[(other, 20)]).await;
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
    let got = backend_counts(&c, &url, 10).await;
    assert!(got.get(on.as_str()).is_some_and(|n| *n > 0), "{got:?}");
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

/// `host` sets the `Host` a check sends, for a backend that serves virtual hosts and
/// answers any other name (its bare address too) with 404: every check arrives with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_check_sends_the_configured_host() {
    use std::sync::{Arc, Mutex};
    use tests::raw::{field, proxy_for_raw, RawBackend};

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let vhost = RawBackend::start(move |mut conn, _| {
        let record = record.clone();
        async move {
            while let Some(req) = conn.request().await {
                let host = field(&req.headers, "host").unwrap_or("").to_owned();
                let known = host == "app.internal";
                record.lock().unwrap().push(format!("{} {host}", req.path));
                let answer: &[u8] = if known {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                };
                conn.send(answer).await;
            }
        }
    })
    .await;
    let health = "[upstreams.app.health]\nkind = \"http\"\npath = \"/healthz\"\n\
                  host = \"app.internal\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
                  rise = 1\nfall = 1\n";
    let _proxy = proxy_for_raw(&[&vhost], health);
    wait_until(T, "a check with the configured Host", || {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .iter()
                .any(|r| r == "/healthz app.internal")
        }
    })
    .await;
    let checks: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("/healthz"))
        .cloned()
        .collect();
    assert!(
        checks.iter().all(|r| r == "/healthz app.internal"),
        "{checks:?}"
    );
}

/// A config with one upstream `app` over raw backends `raw0`, `raw1`... and `health` as its
/// `[upstreams.app.health]` body, for a proxy listening on `port`.
fn raw_config(port: u16, backends: &[&tests::raw::RawBackend], health: &str) -> String {
    let entries: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ addr = \"{}\", id = \"raw{i}\" }}", b.addr))
        .collect();
    format!(
        "{ONE_THREAD}\n{}\n{}\n[upstreams.app.health]\nkind = \"http\"\npath = \"/healthz\"\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n{health}",
        listener(port),
        upstream("app", None, &entries),
    )
}

/// A raw backend answering `/healthz` with what `answer` makes of the request's fields.
async fn health_backend(
    answer: impl Fn(&[(String, String)]) -> &'static str + Send + Sync + 'static,
) -> tests::raw::RawBackend {
    let answer = std::sync::Arc::new(answer);
    tests::raw::RawBackend::start(move |mut conn, _| {
        let answer = answer.clone();
        async move {
            while let Some(req) = conn.request().await {
                conn.send(answer(&req.headers)).await;
            }
        }
    })
    .await
}

/// `headers` go with every check: a backend that lets only checks carrying its token
/// pass (HAProxy's `http-check send hdr`) stays up with them, and goes down when a reload
/// drops them.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_check_sends_the_configured_fields() {
    use tests::raw::field;

    let guarded = health_backend(|fields| match field(fields, "x-health-token") {
        Some("s3cret") => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        _ => "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
    })
    .await;
    let port = ports(1)[0];
    let with =
        "headers = { \"X-Health-Token\" = \"s3cret\", \"User-Agent\" = \"switchyard-check\" }\n";
    let proxy = Proxy::start_config(&raw_config(port, &[&guarded], with));
    wait_health(&proxy, "raw0", "up", T).await;
    // Every check passes, not a lucky one: with `fall = 1`, one 403 would take it down.
    let checked = guarded.accepted();
    wait_until(T, "five more checks", || async {
        guarded.accepted() >= checked + 5
    })
    .await;
    assert_eq!(backend_status(&proxy, "raw0").await["health"], "up");

    proxy.reload(&raw_config(port, &[&guarded], ""));
    wait_health(&proxy, "raw0", "down", T).await;
}

/// `expect_status` narrows the statuses that pass: backends answering 204 and 301 are up
/// by default (any 2xx or 3xx) and down with `expect_status = [200]`.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_check_passes_only_on_the_expected_statuses() {
    let no_content = health_backend(|_| "HTTP/1.1 204 No Content\r\n\r\n").await;
    let moved =
        health_backend(|_| "HTTP/1.1 301 Moved\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n").await;
    let ok = health_backend(|_| "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let port = ports(1)[0];
    let backends = [&no_content, &moved, &ok];
    let proxy = Proxy::start_config(&raw_config(port, &backends, ""));
    for id in ["raw0", "raw1", "raw2"] {
        wait_health(&proxy, id, "up", T).await;
    }

    proxy.reload(&raw_config(port, &backends, "expect_status = [200]\n"));
    wait_health(&proxy, "raw0", "down", T).await;
    wait_health(&proxy, "raw1", "down", T).await;
    assert_eq!(backend_status(&proxy, "raw2").await["health"], "up");
}

/// `expect_body` passes only answers whose body has the text (HAProxy's `http-check expect
/// string`), in any framing: a backend that answers 200 "starting" is up by default and
/// down with `expect_body = "OK"`; one that answers "all OK" in chunks stays up.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_check_looks_for_the_expected_text_in_the_body() {
    let starting = health_backend(|_| "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nstarting").await;
    let ready = health_backend(|_| {
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nall O\r\n1\r\nK\r\n0\r\n\r\n"
    })
    .await;
    let port = ports(1)[0];
    let backends = [&starting, &ready];
    let proxy = Proxy::start_config(&raw_config(port, &backends, ""));
    wait_health(&proxy, "raw0", "up", T).await;
    wait_health(&proxy, "raw1", "up", T).await;

    proxy.reload(&raw_config(port, &backends, "expect_body = \"OK\"\n"));
    wait_health(&proxy, "raw0", "down", T).await;
    let checked = ready.accepted();
    wait_until(T, "more checks of raw1", || async {
        ready.accepted() >= checked + 3
    })
    .await;
    assert_eq!(backend_status(&proxy, "raw1").await["health"], "up");
}

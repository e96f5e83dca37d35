//! Binary upgrade without downtime: a proxy started with `--upgrade` takes over the
//! listening sockets of a running one that is sent SIGQUIT. No connection is refused
//! meanwhile, and the old process finishes its open tunnels within its grace period, then
//! exits — real `echo-backend` and `proxy` processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tests::admin::wait_health;
use tests::fixtures::{entries, listener, upstream};
use tests::{free_port, get_with, ws_connect, ws_echo, Backend, Proxy, ProxyCmd};

/// Bound for the hand-over and for the old process to exit (pingora waits 5 s after sending
/// its sockets, then the grace period).
const T: Duration = Duration::from_secs(30);

/// Clients sending requests besides the one that tracks which process answers.
const LOAD_CLIENTS: usize = 7;

#[tokio::test]
async fn an_upgrade_hands_the_listeners_over_without_refusing_a_connection() {
    hand_over(&[], "", "1s").await;
}

/// With active checks, the new process checks its backends before it serves: they would
/// wait for their first pass, and its first requests got `503 no healthy backend` (here
/// for a whole check, the backends answering after 1 s). Every answer takes a second
/// here, so the first from the new process may come only after the old one stops
/// accepting (about 5 s): the old one's grace period outlasts that, so that its tunnel is
/// still there to check.
#[tokio::test]
async fn an_upgrade_with_active_checks_refuses_no_request_either() {
    hand_over(
        &["--delay-ms", "1000"],
        "[upstreams.app.health]\nkind = \"http\"\npath = \"/id\"\ninterval = \"1s\"\ntimeout = \"3s\"\n",
        "10s",
    )
    .await;
}

/// Starts a proxy to backend `a`, then one with `--upgrade` to backend `b` (both started
/// with `backend_args`, the upstream with the `health` table, the proxies with `grace`
/// as their grace period), sends the first SIGQUIT,
/// and checks every request, each on a fresh connection, is answered `200` throughout.
async fn hand_over(backend_args: &[&str], health: &str, grace: &str) {
    let a = Backend::start_with("a", backend_args);
    let b = Backend::start_with("b", backend_args);
    let port = free_port();
    // The old process sends everything to `a`, the new one to `b`: the answers tell which
    // process took each connection.
    let config = |backend: &Backend| {
        format!(
            "[server]\nthreads = 1\ngrace_period = \"{grace}\"\n{}\n{}\n{health}",
            listener(port),
            upstream("app", None, &entries(&[backend]))
        )
    };
    let mut old = Proxy::start_config(&config(&a));
    if !health.is_empty() {
        // The old process's own start: its backend serves after its first check.
        wait_health(&old, "a", "up", T).await;
    }
    let url = old.url("/id");
    let (mut tunnel, on) = ws_connect(&old.ws_url("/ws")).await;
    assert_eq!(on, "a");

    let new = ProxyCmd::config(&config(&b))
        .arg("--upgrade")
        .no_auto_admin()
        .start();
    new.wait_log("waiting for the running proxy's sockets", T);
    old.signal(Signal::SIGQUIT);

    // A fresh connection for every request: each must be accepted and answered. For a few
    // seconds both processes accept on the shared sockets (pingora lets the old one finish
    // what it has queued), then only the new one.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // More clients at once, so that both processes take some while the new one starts.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| {
            let (fresh, url, stop) = (fresh.clone(), url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut refused = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = get_with(&fresh, &url).await;
                    if r.status != 200 {
                        refused.push(format!("{r:?}"));
                    }
                }
                refused
            })
        })
        .collect();
    let deadline = Instant::now() + T;
    let (mut by_old, mut by_new) = (0, 0);
    while old.is_running() {
        let r = get_with(&fresh, &url).await;
        assert_eq!(r.status, 200, "{r:?}");
        match r.backend() {
            Some("a") => by_old += 1,
            Some("b") => {
                if by_new == 0 {
                    // The tunnel opened on the old process outlives the hand-over.
                    ws_echo(&mut tunnel, "still through the old process").await;
                }
                by_new += 1;
            }
            other => panic!("answered by {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the old proxy did not exit within {T:?} of SIGQUIT (new took {by_new})\n{}",
            new.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in load {
        let refused = client.await.unwrap();
        assert!(
            refused.is_empty(),
            "refused during the hand-over: {refused:?}"
        );
    }
    assert!(by_old > 0 && by_new > 0, "old {by_old}, new {by_new}");
    for _ in 0..20 {
        assert_eq!(get_with(&fresh, &url).await.backend(), Some("b"));
    }
}

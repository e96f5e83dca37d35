//! The proxy's admin API from tests: `GET /status` as JSON, per-backend lookups by id or
//! address, bounded waits on its counters and health, and bearer-authorised `POST`s.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{client, send, Reply};
use crate::procs::Proxy;
use crate::wait::POLL;

/// `GET /status` on the proxy's admin listener, parsed.
///
/// # Panics
/// If the admin listener does not answer 200 with JSON.
pub async fn status(proxy: &Proxy) -> Value {
    let r = send(client().get(proxy.admin_url("/status"))).await;
    assert_eq!(r.status, 200, "GET /status: {}", r.body);
    r.json()
}

/// Every backend entry of every upstream in a `/status` document.
pub fn backends(status: &Value) -> Vec<&Value> {
    status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["backends"].as_array().into_iter().flatten())
        .collect()
}

/// The backend entry whose `id` or `addr` is `key` (first match over all upstreams).
pub fn find_backend<'a>(status: &'a Value, key: &str) -> Option<&'a Value> {
    backends(status)
        .into_iter()
        .find(|b| b["id"] == key || b["addr"] == key)
}

/// The `/status` entry of the backend with this id or address.
///
/// # Panics
/// If the proxy has no such backend, with the status document.
pub async fn backend_status(proxy: &Proxy, key: &str) -> Value {
    let s = status(proxy).await;
    match find_backend(&s, key) {
        Some(b) => b.clone(),
        None => panic!("no backend {key:?} in /status: {s}"),
    }
}

/// A numeric field of a backend entry (`active`, `tunnels`, `requests`…), 0 when missing.
pub fn counter(backend: &Value, field: &str) -> u64 {
    backend[field].as_u64().unwrap_or(0)
}

/// The sum of a numeric field over every backend of a `/status` document.
pub fn total(status: &Value, field: &str) -> u64 {
    backends(status).iter().map(|b| counter(b, field)).sum()
}

/// Polls `/status` every [`POLL`] until `check` returns `Some`; panics naming `what`, with
/// the last document seen, after `timeout`.
pub async fn wait_status<T>(
    proxy: &Proxy,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = tokio::time::timeout(left.max(POLL), status(proxy))
            .await
            .ok();
        if let Some(v) = last.as_ref().and_then(&check) {
            return v;
        }
        if Instant::now() >= deadline {
            let last = last.map_or_else(|| "(no answer)".to_owned(), |s| s.to_string());
            panic!("timed out after {timeout:?} waiting for: {what}; last /status: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `/status` until the entry of backend `key` satisfies `cond`; returns that entry.
/// Panics naming `what` after `timeout`.
pub async fn wait_backend(
    proxy: &Proxy,
    key: &str,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    wait_status(proxy, timeout, what, |s| {
        find_backend(s, key).filter(|b| cond(b)).cloned()
    })
    .await
}

/// Waits until backend `key` has `health` equal to `health` (`"up"`, `"down"`, `"pending"`).
pub async fn wait_health(proxy: &Proxy, key: &str, health: &str, timeout: Duration) {
    wait_backend(
        proxy,
        key,
        timeout,
        &format!("backend {key} health {health:?}"),
        |b| b["health"] == health,
    )
    .await;
}

/// Waits until no backend has an open tunnel or an in-flight request.
pub async fn wait_idle(proxy: &Proxy, timeout: Duration) {
    wait_status(
        proxy,
        timeout,
        "every backend at 0 tunnels and 0 active",
        |s| (total(s, "tunnels") == 0 && total(s, "active") == 0).then_some(()),
    )
    .await
}

/// `POST <path>` on the admin listener, with `Authorization: Bearer <token>` when given.
pub async fn admin_post(proxy: &Proxy, path: &str, token: Option<&str>) -> Reply {
    admin_request(client().post(proxy.admin_url(path)), token).await
}

/// Reloads the proxy's config through the admin API with `token` and asserts it succeeded
/// and listed `needs_restart` as the settings only a restart applies.
///
/// # Panics
/// If the reload failed or listed other settings.
pub async fn reload_needing(proxy: &Proxy, token: &str, needs_restart: &[&str]) {
    let r = admin_post(proxy, "/reload", Some(token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["report"]["needs_restart"],
        serde_json::json!(needs_restart),
        "{}",
        r.body
    );
}

/// `GET <path>` on the admin listener, with `Authorization: Bearer <token>` when given.
pub async fn admin_get(proxy: &Proxy, path: &str, token: Option<&str>) -> Reply {
    admin_request(client().get(proxy.admin_url(path)), token).await
}

async fn admin_request(mut req: reqwest::RequestBuilder, token: Option<&str>) -> Reply {
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

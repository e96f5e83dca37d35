//! Balancing strategies end to end: real `echo-backend` processes behind a real `proxy` on
//! 127.0.0.1, with exact expectations on where requests and WebSockets land.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tests::admin::{admin_post, backend_status, counter, wait_backend, wait_health};
use tests::fixtures::{
    admin, entries, http_health, listener, quick_proxy, upstream, weight_1, TWO_THREADS,
};
use tests::http::{backend_counts, backend_sequence, counts, tally};
use tests::{
    client, client_from, free_port, get_with, send, wait_until, ws_close, ws_connect, Backend,
    Proxy, Reply,
};

/// Bound for waits on the proxy's state (a tunnel closing, a health change).
const T: Duration = Duration::from_secs(10);
/// The sticky-cookie HMAC key shared by the proxies of the sticky tests (32 bytes).
const STICKY_KEY: &str = "0123456789abcdef0123456789abcdef";
/// The proxy's default sticky cookie name (`config::DEFAULT_STICKY_COOKIE`).
const COOKIE: &str = "syd_route";
/// The admin token of the tests that reload through the admin API.
const TOKEN: &str = "balance-test-token";

/// The id the proxy gives `backend` (quick mode derives it from the address).
async fn proxy_id(proxy: &Proxy, backend: &Backend) -> String {
    let b = backend_status(proxy, &backend.addr().to_string()).await;
    b["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn round_robin_follows_nginx_smooth_weighted_order() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let proxy = quick_proxy("round_robin", &[(&bs[0], 5), (&bs[1], 1), (&bs[2], 1)], &[]);
    let c = client();
    let url = proxy.url("/id");

    let first = backend_sequence(&c, &url, 7).await;
    assert_eq!(first, ["a", "a", "b", "a", "c", "a", "a"]);

    let got = backend_counts(&c, &url, 70).await;
    assert_eq!(got, counts(&[("a", 50), ("b", 10), ("c", 10)]));
}

#[tokio::test]
async fn least_conn_counts_open_websockets() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let proxy = quick_proxy("least_conn", &weight_1(&bs), &[]);
    let url = proxy.ws_url("/ws");

    // Opened one after the other and kept open: each takes the least loaded backend.
    let mut open = Vec::new();
    for _ in 0..6 {
        open.push(ws_connect(&url).await);
    }
    let ids = tally(open.iter().map(|(_, id)| id.as_str()));
    assert_eq!(ids, counts(&[("a", 2), ("b", 2), ("c", 2)]));
    for b in &bs {
        wait_backend(
            &proxy,
            &b.addr().to_string(),
            T,
            &format!("{} shows 2 tunnels", b.id()),
            |s| counter(s, "tunnels") == 2,
        )
        .await;
    }

    // Close the two on `a`; the proxy must notice before the next placement.
    let (on_a, others): (Vec<_>, Vec<_>) = open.into_iter().partition(|(_, id)| id == "a");
    for (ws, _) in on_a {
        ws_close(ws).await;
    }
    wait_backend(
        &proxy,
        &bs[0].addr().to_string(),
        T,
        "a's tunnels closed",
        |s| counter(s, "tunnels") == 0,
    )
    .await;

    // a (0) is now below b and c (2 each): both new WebSockets go to a.
    let mut again = Vec::new();
    for _ in 0..2 {
        let (ws, id) = ws_connect(&url).await;
        assert_eq!(id, "a");
        again.push(ws);
    }
    drop(others);
}

#[tokio::test]
async fn least_conn_ties_rotate() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let proxy = quick_proxy("least_conn", &weight_1(&bs), &[]);
    let got = backend_counts(&client(), &proxy.url("/id"), 30).await;
    assert_eq!(got, counts(&[("a", 10), ("b", 10), ("c", 10)]));
}

/// Where each client lands: three requests each, which must agree.
async fn placement(clients: &[reqwest::Client], url: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let r = get_with(c, url).await;
            assert_eq!(r.status, 200, "client {i}: {}", r.body);
            seen.insert(r.backend().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "client {i} was not stable: {seen:?}");
        out.push(seen.into_iter().next().unwrap());
    }
    out
}

#[tokio::test]
async fn ip_hash_is_stable_and_remaps_only_the_lost_backends_clients() {
    let mut bs = Backend::start_many(&["a", "b", "c"]);
    let all: Vec<&Backend> = bs.iter().collect();
    // Fast active checks, so the killed backend is marked down quickly; a generous timeout,
    // so a loaded machine does not fail checks of live backends.
    let toml = format!(
        r#"
{listener}
{upstream}
{health}"#,
        listener = listener(free_port()),
        upstream = upstream("main", Some("ip_hash"), &entries(&all)),
        health = http_health("main", "250ms", "2s", 1, 2),
    );
    let proxy = Proxy::start_config(&toml);
    for id in ["a", "b", "c"] {
        wait_health(&proxy, id, "up", T).await;
    }

    let clients: Vec<reqwest::Client> = (2..=61u8)
        .map(|i| client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))))
        .collect();
    let url = proxy.url("/id");
    let before = placement(&clients, &url).await;
    let spread = tally(before.iter().map(String::as_str));
    for id in ["a", "b", "c"] {
        assert!(
            spread.get(id).copied().unwrap_or(0) >= 1,
            "backend {id} got no client: {spread:?}"
        );
    }

    // Lose b.
    bs[1].kill();
    wait_health(&proxy, "b", "down", T).await;

    let after = placement(&clients, &url).await;
    for (i, (was, now)) in before.iter().zip(&after).enumerate() {
        if was == "b" {
            assert_ne!(now, "b", "client {i} still on the dead backend");
        } else {
            assert_eq!(now, was, "client {i} (127.0.0.{}) moved", i + 2);
        }
    }
}

/// A `Set-Cookie` header split into name, value and attributes.
fn parse_set_cookie(header: &str) -> (String, String, BTreeSet<String>) {
    let mut parts = header.split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    let attrs = parts.map(str::to_owned).collect();
    (name.to_owned(), value.to_owned(), attrs)
}

/// Asserts `r` carries exactly one sticky Set-Cookie for the backend that answered it, with
/// the expected attributes; returns the cookie value `<proxy id>.<mac>`.
async fn issued_cookie(proxy: &Proxy, r: &Reply, bs: &[Backend]) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    let set = r.header_all("set-cookie");
    assert_eq!(set.len(), 1, "expected one Set-Cookie, got {set:?}");
    let (name, value, attrs) = parse_set_cookie(&set[0]);
    assert_eq!(name, COOKIE, "{}", set[0]);
    let want: BTreeSet<String> = ["Path=/", "HttpOnly", "SameSite=Lax"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(attrs, want, "{}", set[0]);
    let (id, mac) = value.rsplit_once('.').unwrap();
    assert!(!mac.is_empty(), "{value}");
    let answered = r.backend().unwrap();
    let backend = bs.iter().find(|b| b.id() == answered).unwrap();
    assert_eq!(
        id,
        proxy_id(proxy, backend).await,
        "the cookie names another backend than the one that answered"
    );
    value
}

/// `GET /id` with the sticky cookie set to `value`.
async fn with_cookie(c: &reqwest::Client, url: &str, value: &str) -> Reply {
    send(c.get(url).header("cookie", format!("{COOKIE}={value}"))).await
}

/// Asserts `n` requests carrying `value` all reach `backend`.
async fn assert_pinned(c: &reqwest::Client, url: &str, value: &str, backend: &str, n: usize) {
    for i in 0..n {
        let r = with_cookie(c, url, value).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend(), Some(backend), "request {i} with {value}");
    }
}

/// Swaps one character of a base64url MAC for another valid one.
fn flip_first(mac: &str) -> String {
    let mut chars: Vec<char> = mac.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn sticky_cookie_pins_resists_tampering_fails_over_and_is_shared_by_replicas() {
    let mut bs = Backend::start_many(&["a", "b", "c"]);
    let key = ["--sticky-key", STICKY_KEY];
    let p1 = quick_proxy("sticky_cookie", &weight_1(&bs), &key);
    let c = client();
    let url = p1.url("/id");

    // First request: placed, and a signed cookie names the backend.
    let r = send(c.get(&url)).await;
    let pinned = r.backend().unwrap().to_owned();
    let value = issued_cookie(&p1, &r, &bs).await;
    assert_pinned(&c, &url, &value, &pinned, 20).await;

    // A MAC with one character changed is ignored: answered, and a fresh valid cookie set.
    let (id, mac) = value.rsplit_once('.').unwrap();
    let forged = format!("{id}.{}", flip_first(mac));
    let r = with_cookie(&c, &url, &forged).await;
    let fresh = issued_cookie(&p1, &r, &bs).await;
    assert_pinned(&c, &url, &fresh, r.backend().unwrap(), 3).await;

    // Another backend's id with the old MAC is ignored too.
    let other = bs.iter().find(|b| b.id() != pinned).unwrap();
    let swapped = format!("{}.{mac}", proxy_id(&p1, other).await);
    let r = with_cookie(&c, &url, &swapped).await;
    let fresh = issued_cookie(&p1, &r, &bs).await;
    assert_pinned(&c, &url, &fresh, r.backend().unwrap(), 3).await;
    // Any client can send bad cookies: the log warns of one a minute, not of each (the
    // proxy writes its log before it answers).
    for _ in 0..5 {
        with_cookie(&c, &url, &forged).await;
    }
    let warned = p1
        .logs()
        .matches("ignoring a sticky cookie with a bad signature")
        .count();
    assert_eq!(warned, 1, "{}", p1.logs());

    // A cookie for every backend (the fallback, least_conn, rotates over idle backends).
    let mut cookies: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..12 {
        if cookies.len() == bs.len() {
            break;
        }
        let r = send(c.get(&url)).await;
        let v = issued_cookie(&p1, &r, &bs).await;
        cookies.insert(r.backend().unwrap().to_owned(), v);
    }
    assert_eq!(cookies.len(), bs.len(), "{cookies:?}");

    // A second proxy with the same key and backends routes every cookie the same way.
    let p2 = quick_proxy("sticky_cookie", &weight_1(&bs), &key);
    let url2 = p2.url("/id");
    for (backend, v) in &cookies {
        assert_pinned(&c, &url2, v, backend, 5).await;
    }

    // The pinned backend dies: requests with its cookie are re-placed and re-pinned.
    let dead = bs.iter().position(|b| b.id() == pinned).unwrap();
    bs[dead].kill();
    let mut replaced = None;
    for _ in 0..5 {
        let r = with_cookie(&c, &url, &value).await;
        assert_ne!(r.backend(), Some(pinned.as_str()));
        let v = issued_cookie(&p1, &r, &bs).await;
        replaced = Some((r.backend().unwrap().to_owned(), v));
    }
    let (backend, v) = replaced.unwrap();
    assert_pinned(&c, &url, &v, &backend, 20).await;
}

/// Two sticky upstreams on two routes, sharing the key and the cookie name, whose backends
/// have the same ids: a cookie minted by one names a backend of the other too. Its MAC
/// covers the upstream's name, so the other ignores it, places the request with its
/// fallback and sets its own cookie. Before, upstream b followed upstream a's cookie.
#[tokio::test]
async fn a_cookie_minted_by_one_upstream_is_not_followed_by_another() {
    let bs = Backend::start_many(&["a1", "a2", "b1", "b2"]);
    let entry = |b: &Backend, id: &str| format!("{{ addr = \"{}\", id = \"{id}\" }}", b.addr());
    // round_robin as the fallback: where an ignored cookie lands is known (it alternates).
    let sticky = |name: &str| {
        format!("[upstreams.{name}.sticky]\nkey = \"{STICKY_KEY}\"\nfallback = \"round_robin\"\n")
    };
    let toml = format!(
        "{TWO_THREADS}\n{}\n{}{}\n{}{}\n\
         [[routes]]\npath_prefix = \"/a/\"\nupstream = \"a\"\n\n\
         [[routes]]\npath_prefix = \"/b/\"\nupstream = \"b\"\n",
        listener(free_port()),
        upstream(
            "a",
            Some("sticky_cookie"),
            &[entry(&bs[0], "one"), entry(&bs[1], "two")]
        ),
        sticky("a"),
        upstream(
            "b",
            Some("sticky_cookie"),
            &[entry(&bs[2], "one"), entry(&bs[3], "two")]
        ),
        sticky("b"),
    );
    let proxy = Proxy::start_config(&toml);
    let c = client();
    let (url_a, url_b) = (proxy.url("/a/id"), proxy.url("/b/id"));

    // A cookie from upstream a for its backend `two` (a2): round robin reaches it second.
    let mut from_a = None;
    for _ in 0..2 {
        let r = send(c.get(&url_a)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.backend() == Some("a2") {
            let set = r.header_all("set-cookie");
            assert_eq!(set.len(), 1, "{set:?}");
            let (name, value, _) = parse_set_cookie(&set[0]);
            assert_eq!(name, COOKIE);
            assert!(value.starts_with("two."), "{value}");
            from_a = Some(value);
        }
    }
    let from_a = from_a.expect("upstream a placed a request on a2");
    // Upstream a follows its own cookie.
    assert_pinned(&c, &url_a, &from_a, "a2", 3).await;

    // Upstream b ignores it: every request is placed by round robin (b1 and b2 in turn),
    // and answered with b's own cookie.
    let mut seen = BTreeSet::new();
    let mut from_b = BTreeMap::new();
    for i in 0..4 {
        let r = with_cookie(&c, &url_b, &from_a).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let backend = r.backend().unwrap().to_owned();
        let set = r.header_all("set-cookie");
        assert_eq!(
            set.len(),
            1,
            "request {i} to upstream b with upstream a's cookie (answered by {backend}) \
             got no cookie of its own: {set:?}"
        );
        let (name, value, _) = parse_set_cookie(&set[0]);
        assert_eq!(name, COOKIE);
        assert_ne!(value, from_a, "upstream b minted upstream a's cookie");
        seen.insert(backend.clone());
        from_b.insert(backend, value);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
        "upstream a's cookie steered upstream b's requests"
    );
    // b's own cookies pin on b, and are not followed by a.
    assert_pinned(&c, &url_b, &from_b["b2"], "b2", 3).await;
    let r = with_cookie(&c, &url_a, &from_b["b2"]).await;
    assert_eq!(
        r.header_all("set-cookie").len(),
        1,
        "upstream a followed b's cookie"
    );
}

/// Without active checks, a backend marked down is probed with one request per fail window:
/// a request the strategy would send it, never one whose cookie pins it to another backend.
/// The first request after the window used to be the probe whatever its cookie, so a client
/// pinned to a healthy backend was moved to the recovered one, and pinned there.
#[tokio::test]
async fn a_probe_never_takes_a_request_pinned_to_another_backend() {
    let mut bs = Backend::start_many(&["a", "b"]);
    let toml = format!(
        "{TWO_THREADS}\n{}\n{}\n[upstreams.app.sticky]\nkey = \"{STICKY_KEY}\"\n\
         [upstreams.app.health]\nmax_fails = 1\nfail_window = \"1s\"\n",
        listener(free_port()),
        upstream("app", Some("sticky_cookie"), &entries(&[&bs[0], &bs[1]])),
    );
    let proxy = Proxy::start_config(&toml);
    let c = client();
    let url = proxy.url("/id");
    // The fallback (least_conn) rotates over the idle backends: b within two requests.
    let mut on_b = None;
    for _ in 0..4 {
        let r = send(c.get(&url)).await;
        if r.backend() == Some("b") {
            on_b = Some(issued_cookie(&proxy, &r, &bs).await);
            break;
        }
    }
    let on_b = on_b.expect("a cookie for b");

    // Requests without a cookie reach a, fail, are retried on b: a is marked down.
    bs[0].kill();
    let mut sent = 0;
    while backend_status(&proxy, "a").await["health"] != "down" {
        sent += 1;
        assert!(sent <= 30, "a still not down after {sent} requests");
        assert_eq!(send(c.get(&url)).await.status, 200);
    }
    let down = Instant::now();
    bs[0].restart();
    // Until well past the 1 s window, only the client pinned to b asks: it stays on b and
    // is not re-pinned.
    while down.elapsed() < Duration::from_millis(1500) {
        let r = with_cookie(&c, &url, &on_b).await;
        assert_eq!(r.backend(), Some("b"), "the client pinned to b was moved");
        assert_eq!(r.header_all("set-cookie"), Vec::<String>::new());
    }
    // A request without a cookie is a's probe, and brings it back.
    wait_until(T, "a request without a cookie to probe a", || {
        let (c, url) = (c.clone(), url.clone());
        async move { send(c.get(&url)).await.backend() == Some("a") }
    })
    .await;
    wait_health(&proxy, "a", "up", T).await;
    assert_pinned(&c, &url, &on_b, "b", 5).await;
}

/// A reload that leaves an upstream as it was (another upstream and route added) keeps its
/// strategy's state, as Envoy keeps an unchanged cluster: the rotation goes on where it
/// was. Each reload used to start it over at the first backend, so frequent reloads sent
/// it more than its share. So does one that rebuilds the upstream with the same backends
/// (a new timeout).
#[tokio::test]
async fn round_robin_goes_on_across_a_reload_that_leaves_its_upstream_as_it_was() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let (port, admin_port) = (free_port(), free_port());
    let config = |other: &str| {
        format!(
            "{TWO_THREADS}\n{}\n{}\n{other}{}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
            listener(port),
            admin(admin_port, TOKEN),
            upstream(
                "app",
                Some("round_robin"),
                &entries(&[&bs[0], &bs[1], &bs[2]])
            ),
        )
    };
    let proxy = Proxy::start_config(&config(""));
    let c = client();
    let url = proxy.url("/id");
    assert_eq!(backend_sequence(&c, &url, 1).await, ["a"]);

    let other = format!(
        "{}[[routes]]\npath_prefix = \"/other/\"\nupstream = \"other\"\n",
        upstream("other", None, &entries(&[&bs[0]]))
    );
    proxy.write_config(&config(&other));
    let r = admin_post(&proxy, "/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backend_sequence(&c, &url, 3).await, ["b", "c", "a"]);

    let timeout = format!("{other}[upstreams.app.timeouts]\nconnect = \"5s\"\n");
    proxy.write_config(&config(&timeout));
    let r = admin_post(&proxy, "/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("\"unchanged_upstreams\":1"),
        "app is rebuilt, other kept: {}",
        r.body
    );
    assert_eq!(backend_sequence(&c, &url, 2).await, ["b", "c"]);
}

/// A reload that removes a backend, then one that adds it back while WebSockets opened to
/// it are still open: least_conn still counts them, so new ones go to the other backend.
/// The backend added back used to start from zero, as if it carried nothing.
#[tokio::test]
async fn least_conn_counts_survive_removing_a_backend_and_adding_it_back() {
    let bs = Backend::start_many(&["a", "b"]);
    let (port, admin_port) = (free_port(), free_port());
    let config = |backends: &[&Backend]| {
        format!(
            "{TWO_THREADS}\n{}\n{}\n{}",
            listener(port),
            upstream("app", Some("least_conn"), &entries(backends)),
            admin(admin_port, TOKEN),
        )
    };
    let proxy = Proxy::start_config(&config(&[&bs[0]]));
    let reload = |backends: &[&Backend]| {
        proxy.write_config(&config(backends));
        let proxy = &proxy;
        async move {
            let r = admin_post(proxy, "/reload", Some(TOKEN)).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    let url = proxy.ws_url("/ws");
    let mut open = Vec::new();
    for _ in 0..2 {
        let (ws, id) = ws_connect(&url).await;
        assert_eq!(id, "a");
        open.push(ws);
    }

    reload(&[&bs[1]]).await;
    reload(&[&bs[0], &bs[1]]).await;
    let a = backend_status(&proxy, "a").await;
    assert_eq!(
        (counter(&a, "active"), counter(&a, "tunnels")),
        (2, 2),
        "a's open WebSockets are not counted: {a}"
    );
    for _ in 0..2 {
        let (ws, id) = ws_connect(&url).await;
        assert_eq!(id, "b");
        open.push(ws);
    }
}

#[tokio::test]
async fn p2c_spreads_over_equal_backends() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let proxy = quick_proxy("p2c", &weight_1(&bs), &[]);
    let got = backend_counts(&client(), &proxy.url("/id"), 60).await;
    for id in ["a", "b", "c"] {
        let n = got.get(id).copied().unwrap_or(0);
        assert!(n >= 5, "{id} got {n} of 60: {got:?}");
    }
}

#[tokio::test]
async fn least_time_avoids_the_slow_backend() {
    let slow = Backend::start_with("slow", &["--delay-ms", "200"]);
    let fast = Backend::start_many(&["fast1", "fast2"]);
    let proxy = quick_proxy(
        "least_time",
        &[(&slow, 1), (&fast[0], 1), (&fast[1], 1)],
        &[],
    );
    let c = client();
    let url = proxy.url("/id");
    let warm = backend_counts(&c, &url, 20).await;
    let got = backend_counts(&c, &url, 30).await;
    let n = got.get("slow").copied().unwrap_or(0);
    assert!(
        n * 5 < 30,
        "slow got {n} of 30 after the warm-up: {got:?} (warm-up: {warm:?})"
    );
}

/// ip_hash takes the client address from X-Forwarded-For only when the TCP peer is a
/// trusted proxy; from anyone else the header is ignored.
#[tokio::test]
async fn ip_hash_believes_x_forwarded_for_only_from_trusted_proxies() {
    let bs = Backend::start_many(&["a", "b", "c"]);
    let all: Vec<&Backend> = bs.iter().collect();
    let toml = format!(
        r#"
{listener}
{upstream}
[upstreams.main.ip_hash]
trusted_proxies = ["127.0.0.1/32"]
"#,
        listener = listener(free_port()),
        upstream = upstream("main", Some("ip_hash"), &entries(&all)),
    );
    let proxy = Proxy::start_config(&toml);
    let url = proxy.url("/id");

    // From the trusted peer 127.0.0.1: each forwarded client keeps its backend, and the
    // forwarded clients spread over the backends.
    let trusted = client_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut seen = Vec::new();
    for i in 1..=40u8 {
        let xff = format!("203.0.113.{i}");
        let mut ids = BTreeSet::new();
        for _ in 0..3 {
            let r = send(trusted.get(&url).header("x-forwarded-for", &xff)).await;
            ids.insert(r.backend().unwrap().to_string());
        }
        assert_eq!(ids.len(), 1, "forwarded client {xff} moved: {ids:?}");
        seen.extend(ids);
    }
    let spread = tally(seen.iter().map(String::as_str));
    assert!(
        spread.len() >= 2,
        "forwarded clients all on one backend: {spread:?}"
    );

    // From an untrusted peer the header is ignored: one peer, one backend.
    let untrusted = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
    let mut ids = BTreeSet::new();
    for i in 1..=20u8 {
        let r = send(
            untrusted
                .get(&url)
                .header("x-forwarded-for", format!("198.51.100.{i}")),
        )
        .await;
        ids.insert(r.backend().unwrap().to_string());
    }
    assert_eq!(
        ids.len(),
        1,
        "an untrusted peer steered ip_hash with X-Forwarded-For: {ids:?}"
    );
}

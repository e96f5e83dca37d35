//! The proxy's command line and observability end to end: `proxy check` on good and bad
//! files (`file:line: key: message`), quick-mode flag errors, `proxy gen-cert`, `/metrics`,
//! `/status`, the admin token and the access log — real processes on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use tests::admin::{admin_get, admin_post, backend_status, counter, reload_needing, status};
use tests::fixtures::{admin, backend_entry, entries, listener, tls_keys, upstream};
use tests::http::backend_counts;
use tests::raw::{get_req, RawConn};
use tests::{
    client, free_port, get, port_array, wait_for, ws_close, ws_connect, ws_echo, Backend, Certs,
    Exited, Proxy, ProxyCmd,
};

/// Bound for waits on files the proxy writes.
const T: Duration = Duration::from_secs(10);

/// The example config shipped with the proxy.
fn example_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/examples/proxy.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts a `check` (or a start) failed with exit code 1, without a panic, and that one of
/// its output lines ends with `want` (`proxy.toml:<line>: <key>: <message>`, after the
/// directory the harness wrote the file to).
fn assert_error_line(out: &Exited, want: &str) {
    assert_error(out, want, "ending with", |l| {
        l.ends_with(want) && l.contains(&format!("/{want}"))
    });
}

/// Like [`assert_error_line`], for a message whose tail varies (an OS error, a list).
fn assert_error_prefix(out: &Exited, want: &str) {
    assert_error(out, want, "with", |l| l.contains(&format!("/{want}")));
}

/// Exit code 1, no panic, and a line of stderr for which `line_ok` holds; `how` and `want`
/// describe that line in the message.
fn assert_error(out: &Exited, want: &str, how: &str, line_ok: impl Fn(&str) -> bool) {
    let all = out.output();
    assert_eq!(out.code(), Some(1), "exit code: {all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(
        out.stderr.lines().any(line_ok),
        "no line {how} {want:?} in:\n{all}"
    );
}

#[test]
fn check_accepts_the_example_config_and_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let gen = Proxy::gen_cert(dir.path());
    assert_eq!(gen.code(), Some(0), "{}", gen.output());
    let certs = dir.path().display().to_string();
    let toml = example_config().replace("\"certs/", &format!("\"{certs}/"));
    assert!(toml.contains(&format!("{certs}/localhost-key.pem")));

    let out = Proxy::check(&toml);
    assert_eq!(out.code(), Some(0), "{}", out.output());
    let s = &out.stdout;
    for want in [
        "listeners:",
        "127.0.0.1:8080  http  (redirects everything to https port 8443)",
        "127.0.0.1:8443  https",
        "alpn h2,http/1.1",
        "chat  strategy least_conn",
        "127.0.0.1:9009",
        "backup",
        "active check: http GET /healthz every 2s",
        "routes (first match wins):",
        "chat.example.com/ -> chat",
        "proxy.toml: OK",
    ] {
        assert!(s.contains(want), "summary lacks {want:?}:\n{s}");
    }
}

#[test]
fn check_reports_an_unknown_key_with_file_line_and_key() {
    let out = Proxy::check(
        "[server]\ntreads = 3\n\n[[listeners]]\nlisten = \"127.0.0.1:18080\"\n\n\
         [upstreams.app]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n",
    );
    assert_error_line(
        &out,
        "proxy.toml:2: server.treads: unknown key, expected one of `threads`, `grace_period`, `http1`, `request_id`, `real_ip_from`",
    );
}

#[test]
fn check_reports_a_bad_strategy_with_file_line_and_key() {
    let out = Proxy::check(
        "[[listeners]]\nlisten = \"127.0.0.1:18080\"\n\n[upstreams.app]\n\
         strategy = \"leest_conn\"\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n",
    );
    assert_error_prefix(
        &out,
        "proxy.toml:5: upstreams.app.strategy: unknown variant `leest_conn`, expected one of",
    );
}

#[test]
fn check_reports_a_route_to_an_unknown_upstream() {
    let out = Proxy::check(
        "[[listeners]]\nlisten = \"127.0.0.1:18080\"\n\n[upstreams.app]\n\
         backends = [{ addr = \"127.0.0.1:9001\" }]\n\n[[routes]]\npath_prefix = \"/\"\n\
         upstream = \"apx\"\n",
    );
    assert_error_line(
        &out,
        "proxy.toml:9: routes[0].upstream: no upstream named `apx`",
    );
}

#[test]
fn check_reports_a_missing_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost"]);
    let missing = dir.path().join("nope.pem");
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:18443\"\n{}\n\n\
         [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n",
        tls_keys(&missing, &certs.key)
    );
    let out = Proxy::check(&toml);
    assert_error_prefix(
        &out,
        &format!(
            "proxy.toml:3: listeners[0].tls.cert: {}: cannot read",
            missing.display()
        ),
    );
}

#[test]
fn check_reports_every_semantic_error_in_one_run_and_run_refuses_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path(), &["localhost"]);
    let missing = dir.path().join("gone.pem");
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:18443\"\n{}\n\n\
         [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n\n[[routes]]\n\
         path_prefix = \"/\"\nupstream = \"apx\"\n",
        tls_keys(&certs.cert, &missing)
    );
    let key_error = format!(
        "proxy.toml:3: listeners[0].tls.key: {}: cannot read",
        missing.display()
    );
    let route_error = "proxy.toml:10: routes[0].upstream: no upstream named `apx`";
    let out = Proxy::check(&toml);
    assert_error_prefix(&out, &key_error);
    assert_error_line(&out, route_error);

    // Running (not checking) the same file fails the same way, before listening.
    let out = ProxyCmd::config(&toml).run_to_exit(Duration::from_secs(20));
    assert_error_prefix(&out, &key_error);
    assert_error_line(&out, route_error);
}

/// An address another process listens on: an error at start and exit code 1, for a proxy
/// listener and for the admin one (pingora would retry for 30 s, then panic in its service
/// thread and leave the process up, its admin port answering, no proxy port open).
#[test]
fn an_address_in_use_is_an_error_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let b = Backend::start("b1");
    let ups = upstream("app", None, &entries(&[&b]));
    let cases = [
        (
            format!("{}\n{ups}", listener(taken_port)),
            format!("error: listener 127.0.0.1:{taken_port}: cannot listen: "),
        ),
        (
            format!(
                "{}\n{}\n{ups}",
                admin(taken_port, "t"),
                listener(free_port())
            ),
            format!("error: admin listener 127.0.0.1:{taken_port}: cannot listen: "),
        ),
    ];
    for (toml, want) in cases {
        let out = ProxyCmd::config(&toml).run_to_exit(Duration::from_secs(20));
        let all = out.output();
        assert_eq!(out.code(), Some(1), "{all}");
        assert!(!all.contains("panicked"), "{all}");
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(&want) && l.contains("in use")),
            "no line starting {want:?}: {all}"
        );
    }
}

#[test]
fn quick_mode_rejects_a_bad_backend_address_naming_it() {
    let listen = format!("127.0.0.1:{}", free_port());
    for bad in [
        "127.0.0.1:notaport",
        "localhost-ish",
        "127.0.0.1:9001=heavy",
    ] {
        let all = ProxyCmd::quick(&["--listen", &listen, "--backend", bad])
            .run_to_exit(Duration::from_secs(20))
            .expect_refusal(bad);
        assert!(
            all.contains(&format!("--backend {bad}")),
            "the message must name the flag and its value {bad:?}: {all}"
        );
    }
}

#[test]
fn gen_cert_writes_a_ca_and_a_localhost_certificate_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = Proxy::gen_cert(&out_dir);
    assert_eq!(out.code(), Some(0), "{}", out.output());
    for (file, private) in [
        ("ca.pem", false),
        ("ca-key.pem", true),
        ("localhost.pem", false),
        ("localhost-key.pem", true),
    ] {
        let path = out_dir.join(file);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let text = std::fs::read_to_string(&path).unwrap();
        if private {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
            assert!(text.contains("PRIVATE KEY-----"), "{file}");
        } else {
            assert!(text.contains("-----BEGIN CERTIFICATE-----"), "{file}");
        }
    }

    // Running it again keeps the CA, so a CA trusted once stays trusted.
    let ca_key = std::fs::read(out_dir.join("ca-key.pem")).unwrap();
    let out = Proxy::gen_cert(&out_dir);
    assert_eq!(out.code(), Some(0), "{}", out.output());
    assert_eq!(std::fs::read(out_dir.join("ca-key.pem")).unwrap(), ca_key);
    // And says so, rather than asking for the CA to be trusted again.
    assert!(out.stdout.contains("kept the CA"), "{}", out.output());
    assert!(!out.stdout.contains("trust the CA"), "{}", out.output());
}

/// The value of the first sample of `metrics` whose line starts with `name{` and contains
/// every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_and_status_report_backends_traffic_and_health() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let toml = format!(
        "{}\n{}",
        listener(free_port()),
        upstream(
            "app",
            Some("round_robin"),
            &[backend_entry(&a, ""), backend_entry(&b, "weight = 2")]
        )
    );
    let proxy = Proxy::start_config(&toml);
    let counts = backend_counts(&client(), &proxy.url("/id"), 9).await;
    assert_eq!(counts.get("a"), Some(&3));
    assert_eq!(counts.get("b"), Some(&6));
    let (mut ws, on) = ws_connect(&proxy.ws_url("/ws")).await;
    ws_echo(&mut ws, "hi").await;
    let ws_addr = if on == "a" { a.addr() } else { b.addr() };

    let m = get(&proxy.admin_url("/metrics")).await.body;
    for name in [
        "switchyard_requests_total",
        "switchyard_backend_up",
        "switchyard_backend_tunnels",
        "switchyard_upstream_response_seconds_bucket",
        "switchyard_picks_total",
    ] {
        assert!(m.contains(&format!("{name}{{")), "no {name} sample:\n{m}");
    }
    let picks = sample(
        &m,
        "switchyard_picks_total",
        &["upstream=\"app\"", "strategy=\"round_robin\""],
    );
    assert_eq!(picks, Some(10.0), "{m}");
    let ba = format!("backend=\"{}\"", a.addr());
    let bb = format!("backend=\"{}\"", b.addr());
    let req_a = sample(&m, "switchyard_requests_total", &[&ba]).unwrap();
    let req_b = sample(&m, "switchyard_requests_total", &[&bb]).unwrap();
    assert_eq!(req_a + req_b, 10.0, "{m}");
    for bl in [&ba, &bb] {
        assert_eq!(sample(&m, "switchyard_backend_up", &[bl]), Some(1.0), "{m}");
    }
    let wl = format!("backend=\"{ws_addr}\"");
    assert_eq!(
        sample(&m, "switchyard_backend_tunnels", &[&wl]),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "switchyard_upstream_response_seconds_bucket",
            &[&ba, "le=\"+Inf\""]
        )
        .is_some_and(|n| n >= 3.0),
        "{m}"
    );

    let s = status(&proxy).await;
    let ups = s["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 1, "{s}");
    assert_eq!(ups[0]["name"], "app");
    assert_eq!(ups[0]["strategy"], "round_robin");
    let backends = ups[0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{s}");
    let sa = backend_status(&proxy, "a").await;
    let sb = backend_status(&proxy, "b").await;
    assert_eq!(sa["addr"], a.addr().to_string());
    assert_eq!(
        (sa["weight"].as_u64(), sb["weight"].as_u64()),
        (Some(1), Some(2))
    );
    for x in [&sa, &sb] {
        assert_eq!(x["health"], "up", "{x}");
        assert_eq!(x["draining"], false, "{x}");
        assert_eq!(x["backup"], false, "{x}");
    }
    assert_eq!(counter(&sa, "requests") + counter(&sb, "requests"), 10);
    let on_ws = if on == "a" { &sa } else { &sb };
    assert_eq!(counter(on_ws, "tunnels"), 1, "{on_ws}");
}

/// One listener, one upstream `app` over `backend`, and an access log in `format` to `log`.
fn access_log_config(format: &str, log: &Path, backend: &Backend) -> String {
    format!(
        r#"
[access_log]
enabled = true
format = "{format}"
path = "{log}"

{listener}
{upstream}"#,
        log = log.display(),
        listener = listener(free_port()),
        upstream = upstream("app", None, &entries(&[backend])),
    )
}

/// Waits for a line of `path` satisfying `pred`; returns it.
async fn wait_log_line(path: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let pred = &pred;
    wait_for(T, what, || async move {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().find(|l| pred(l)).map(str::to_owned)
    })
    .await
}

#[tokio::test]
async fn access_log_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&access_log_config("json", &log, &b));
    let r = tests::send(
        client()
            .get(proxy.url("/id?from=test"))
            .header("user-agent", "access-log-test"),
    )
    .await;
    assert_eq!(r.status, 200);

    let line = wait_log_line(&log, "an access log line for /id?from=test", |l| {
        l.contains("/id?from=test")
    })
    .await;
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["path"], "/id?from=test", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["upstream"], "app", "{v}");
    assert_eq!(v["backend"], b.addr().to_string(), "{v}");
    assert_eq!(v["user_agent"], "access-log-test", "{v}");
    assert_eq!(v["client"], "127.0.0.1", "{v}");

    // Error statuses are logged with the status sent.
    let r = get(&proxy.url("/status/404")).await;
    assert_eq!(r.status, 404);
    let line = wait_log_line(&log, "an access log line for /status/404", |l| {
        l.contains("/status/404")
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 404, "{v}");

    // The proxy's own answers count their body as sent, as a backend's do (nginx's
    // `$body_bytes_sent`), not their head too; nothing was received of a refused request.
    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c
        .exchange("GET /own-answer HTTP/1.1\r\nHost: bad host\r\n\r\n")
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let line = wait_log_line(&log, "an access log line for /own-answer", |l| {
        l.contains("/own-answer")
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["bytes_sent"], r.body.len(), "{v}");
    assert_eq!(v["bytes_received"], 0, "{v}");

    // A User-Agent past ASCII is logged, on both HTTP/1 paths (HTTP/1.0 goes to
    // pingora's): it was dropped, so a client could hide it from the log.
    for version in ["1.1", "1.0"] {
        let mut c = RawConn::connect(proxy.addr()).await;
        let r = c
            .exchange(format!(
                "GET /ua-{version} HTTP/{version}\r\nHost: test\r\nUser-Agent: \u{fc}-agent\r\n\r\n"
            ))
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let line = wait_log_line(&log, "an access log line for /ua-", |l| {
            l.contains(&format!("/ua-{version}"))
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["user_agent"], "\u{fc}-agent", "{v}");
    }

    // A WebSocket is logged when it closes, as a tunnel, with its client's User-Agent and
    // every byte it relayed: the backend's greeting may come in the same read as its 101,
    // before the relay counts.
    let opts = tests::ws::WsOptions {
        headers: vec![("user-agent".into(), "ws-log-test".into())],
        ..Default::default()
    };
    let (ws, _) = tests::ws::connect_and_greet(&proxy.ws_url("/chat"), &opts).await;
    tests::ws_close(ws).await;
    let line = wait_log_line(&log, "an access log line for the tunnel", |l| {
        l.contains("\"/chat\"")
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 101, "{v}");
    assert_eq!(v["tunnel"], true, "{v}");
    assert_eq!(v["user_agent"], "ws-log-test", "{v}");
    // The greeting (`hello b1`, a 10-byte frame) and the backend's Close (2 bytes or more).
    assert!(v["bytes_sent"].as_u64().unwrap() >= 12, "{v}");
}

/// Each failing backend gets its own warning and its failures a counter: the warning was
/// throttled for the whole proxy, so a second backend that began failing within the minute
/// of the first was logged at debug only, and nothing in `/metrics` showed the proxy's own
/// 502s (`responses_total` counts backends' answers).
#[tokio::test]
async fn each_failing_backend_is_logged_and_counted() {
    let (admin_port, port) = (free_port(), free_port());
    let (dead_a, dead_b) = (free_port(), free_port());
    let toml = format!(
        r#"{admin}
{listener}
[upstreams.a]
backends = [{{ addr = "127.0.0.1:{dead_a}" }}]
[upstreams.b]
backends = [{{ addr = "127.0.0.1:{dead_b}" }}]
[[routes]]
path_prefix = "/a/"
upstream = "a"
[[routes]]
path_prefix = "/b/"
upstream = "b"
"#,
        admin = admin(admin_port, "t"),
        listener = listener(port),
    );
    let proxy = Proxy::start_config(&toml);
    for path in ["/a/x", "/b/x"] {
        assert_eq!(get(&proxy.url(path)).await.status, 502, "{path}");
    }
    for dead in [dead_a, dead_b] {
        let needle = format!("backend=127.0.0.1:{dead}");
        wait_for(T, "a warning for each dead backend", || {
            let found = proxy
                .logs()
                .lines()
                .any(|l| l.contains(" WARN ") && l.contains(&needle));
            std::future::ready(found.then_some(()))
        })
        .await;
    }
    let metrics = admin_get(&proxy, "/metrics", None).await.body;
    for (up, dead) in [("a", dead_a), ("b", dead_b)] {
        let backend = format!("backend=\"127.0.0.1:{dead}\"");
        let upstream = format!("upstream=\"{up}\"");
        assert_eq!(
            sample(
                &metrics,
                "switchyard_backend_failures_total",
                &[&backend, &upstream]
            ),
            Some(1.0),
            "{metrics}"
        );
    }
}

/// An access log line that cannot be written (a full disk) is dropped, and the proxy says
/// so in its own log, as nginx does: it dropped them in silence.
#[tokio::test]
async fn an_access_log_that_cannot_be_written_is_reported() {
    let b = Backend::start("b1");
    // Opens for appending; every write fails with ENOSPC.
    let proxy = Proxy::start_config(&access_log_config("json", Path::new("/dev/full"), &b));
    assert_eq!(get(&proxy.url("/id")).await.status, 200);
    proxy.wait_log("cannot write the access log", T);
    // The request was served all the same, and the next one too.
    assert_eq!(get(&proxy.url("/id")).await.status, 200);
}

/// With the access log on stdout (`path = "-"`), stdout holds nothing else: the proxy's own
/// lines (`listening`, warnings) go to stderr, or a shipper parsing stdout as JSON breaks.
#[tokio::test]
async fn an_access_log_on_stdout_is_not_mixed_with_the_proxys_own_log() {
    let b = Backend::start("b1");
    let toml = format!(
        r#"
[access_log]
enabled = true
format = "json"
path = "-"

{listener}
{upstream}"#,
        listener = listener(free_port()),
        upstream = upstream("app", None, &entries(&[&b])),
    );
    let proxy = Proxy::start_config(&toml);
    let r = get(&proxy.url("/id?stdout-log")).await;
    assert_eq!(r.status, 200);
    let stdout = proxy.dir().join("stdout.log");
    wait_log_line(&stdout, "the access log line on stdout", |l| {
        l.contains("/id?stdout-log")
    })
    .await;
    let text = std::fs::read_to_string(&stdout).unwrap();
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a line on stdout that is not an access log entry: {line:?}\n{}",
            proxy.logs()
        );
    }
    proxy.wait_log("listening", T);
}

/// A reload that moves a listener needs a restart; until then the socket bound at start
/// keeps accepting, and keeps its own settings: a redirecting port still redirects, with
/// its `response_headers`, instead of proxying plain HTTP without them.
#[tokio::test]
async fn a_listener_a_reload_moves_keeps_its_settings_until_the_restart() {
    let b = Backend::start("b1");
    let (admin_port, first, moved) = (free_port(), free_port(), free_port());
    let config = |port: u16| {
        format!(
            "{}\n{}redirect_https_port = 8443\n\
             response_headers = {{ \"Strict-Transport-Security\" = \"max-age=60\" }}\n{}",
            admin(admin_port, "t"),
            listener(port),
            upstream("app", None, &entries(&[&b]))
        )
    };
    let proxy = Proxy::start_config(&config(first));
    let redirected = |what: &'static str| async move {
        let mut c = RawConn::connect(std::net::SocketAddr::from(([127, 0, 0, 1], first))).await;
        c.send(get_req("/secret")).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 308, "{what}: {r:?}");
        assert_eq!(
            r.header("location"),
            Some("https://test:8443/secret"),
            "{what}: {r:?}"
        );
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=60"),
            "{what}: {r:?}"
        );
    };
    redirected("before the reload").await;

    proxy.write_config(&config(moved));
    reload_needing(&proxy, "t", &["listeners"]).await;
    redirected("after a reload that moved it").await;

    // Moved back: what runs is what the file says again, nothing waits for a restart.
    proxy.write_config(&config(first));
    reload_needing(&proxy, "t", &[]).await;
    redirected("moved back").await;
}

/// What needs a restart is judged against what runs, not against the last file read: a
/// second reload of a changed thread count (or admin address, HTTP/1 path, grace period)
/// still lists it, and one back to the running value lists nothing. They were compared
/// with the previous reload's file, so the second reload said nothing waited.
#[tokio::test]
async fn a_reload_lists_what_needs_a_restart_until_the_file_matches_what_runs() {
    let b = Backend::start("b1");
    let (admin_port, port, other_admin) = (free_port(), free_port(), free_port());
    let config = |threads: usize, admin_at: u16, grace: &str| {
        format!(
            "[server]\nthreads = {threads}\ngrace_period = \"{grace}\"\n{}\n{}{}",
            admin(admin_at, "t"),
            listener(port),
            upstream("app", None, &entries(&[&b]))
        )
    };
    let proxy = Proxy::start_config(&config(2, admin_port, "5s"));
    proxy.write_config(&config(1, other_admin, "9s"));
    let changed = ["admin.listen", "server.threads", "server.grace_period"];
    reload_needing(&proxy, "t", &changed).await;
    reload_needing(&proxy, "t", &changed).await;
    proxy.write_config(&config(2, admin_port, "5s"));
    reload_needing(&proxy, "t", &[]).await;
}

/// A reload refused through the admin API is in the log, as one refused on SIGHUP is: the
/// caller of `POST /reload` (a deploy script that ignores the answer) may be the only one
/// that saw the errors, while the file on disk no longer says what runs. A reload whose
/// changes wait for a restart says so at warning level.
#[tokio::test]
async fn a_reload_refused_through_the_admin_api_is_logged_with_its_errors() {
    let b = Backend::start("b1");
    let (admin_port, port) = (free_port(), free_port());
    let config = |strategy: &str, threads: usize| {
        format!(
            "[server]\nthreads = {threads}\n{}\n{}{}",
            admin(admin_port, "t"),
            listener(port),
            upstream("app", Some(strategy), &entries(&[&b]))
        )
    };
    let proxy = Proxy::start_config(&config("round_robin", 2));
    proxy.write_config(&config("leest_conn", 2));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    proxy.wait_log("reload rejected, the running config stays", T);
    assert!(
        proxy.logs().contains("unknown variant `leest_conn`"),
        "{}",
        proxy.logs()
    );

    proxy.write_config(&config("round_robin", 1));
    reload_needing(&proxy, "t", &["server.threads"]).await;
    proxy.wait_log("apply only after a restart", T);
}

/// Whether the last reload was applied is a metric, under Prometheus's own names, so that a
/// refused reload (a file on disk that is not what runs) can be alerted on.
#[tokio::test]
async fn the_last_reloads_outcome_is_a_metric() {
    let b = Backend::start("b1");
    let (admin_port, port) = (free_port(), free_port());
    let config = |strategy: &str| {
        format!(
            "{}\n{}{}",
            admin(admin_port, "t"),
            listener(port),
            upstream("app", Some(strategy), &entries(&[&b]))
        )
    };
    let proxy = Proxy::start_config(&config("round_robin"));
    let gauge = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let ok = "switchyard_config_last_reload_successful";
    let at = "switchyard_config_last_reload_success_timestamp_seconds";
    let m = admin_get(&proxy, "/metrics", None).await.body;
    assert_eq!(gauge(&m, ok), Some(1.0), "{m}");
    let started = gauge(&m, at).unwrap_or_else(|| panic!("{m}"));
    assert!(started > 1.7e9, "{m}");

    proxy.write_config(&config("leest_conn"));
    assert_eq!(admin_post(&proxy, "/reload", Some("t")).await.status, 422);
    let m = admin_get(&proxy, "/metrics", None).await.body;
    assert_eq!(gauge(&m, ok), Some(0.0), "{m}");
    assert_eq!(gauge(&m, at), Some(started), "{m}");

    proxy.write_config(&config("least_conn"));
    reload_needing(&proxy, "t", &[]).await;
    let m = admin_get(&proxy, "/metrics", None).await.body;
    assert_eq!(gauge(&m, ok), Some(1.0), "{m}");
    assert!(gauge(&m, at).is_some_and(|t| t >= started), "{m}");
}

#[tokio::test]
async fn a_reload_reopens_the_access_log_and_refuses_one_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let b = Backend::start("b1");
    let admin_port = free_port();
    let config = |log: &Path| {
        format!(
            "{}\n{}",
            admin(admin_port, "t"),
            access_log_config("json", log, &b)
        )
    };
    let proxy = Proxy::start_config(&config(&log));
    assert_eq!(get(&proxy.url("/id?n=1")).await.status, 200);
    wait_log_line(&log, "the line of n=1", |l| l.contains("/id?n=1")).await;

    // Rotation as logrotate does it: rename, then reload.
    std::fs::rename(&log, &rotated).unwrap();
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&proxy.url("/id?n=2")).await.status, 200);
    wait_log_line(&log, "the line of n=2 in a new file", |l| {
        l.contains("/id?n=2")
    })
    .await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/id?n=1") && !old.contains("/id?n=2"), "{old}");

    // A log that cannot be opened (its folder is missing) rejects the reload, naming the
    // file and key; the running config keeps logging where it did.
    let missing = dir.path().join("no-such-dir").join("access.log");
    proxy.write_config(&config(&missing));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_owned();
    let toml = config(&missing);
    let line = toml.lines().position(|l| l.starts_with("path = ")).unwrap() + 1;
    let want = format!(
        "proxy.toml:{line}: access_log.path: cannot open {} for appending: no directory {}",
        missing.display(),
        dir.path().join("no-such-dir").display()
    );
    assert!(error.contains(&want), "{error}");
    assert_eq!(get(&proxy.url("/id?n=3")).await.status, 200);
    wait_log_line(&log, "the line of n=3 after the refused reload", |l| {
        l.contains("/id?n=3")
    })
    .await;

    // Starting with that file fails the same way, before listening, and `proxy check`
    // finds it too.
    let out = ProxyCmd::config(&toml).run_to_exit(Duration::from_secs(20));
    assert_error_line(&out, &want);
    assert_error_line(&Proxy::check(&toml), &want);
}

#[tokio::test]
async fn access_log_writes_combined_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&access_log_config("combined", &log, &b));
    let r = tests::send(
        client()
            .get(proxy.url("/id?c=1"))
            .header("user-agent", "combined-test")
            .header("referer", "http://ref.test/"),
    )
    .await;
    assert_eq!(r.status, 200);
    let line = wait_log_line(&log, "a combined line for /id?c=1", |l| {
        l.contains("/id?c=1")
    })
    .await;
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("\"GET /id?c=1 HTTP/1.1\" 200 "),
        "request line and status: {line}"
    );
    assert!(
        line.ends_with("\"http://ref.test/\" \"combined-test\""),
        "{line}"
    );
}

#[tokio::test]
async fn combined_lines_escape_quotes_the_client_sent_as_nginx_does() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&access_log_config("combined", &log, &b));
    // A User-Agent that, written as is, closes its field and forges a status and a
    // User-Agent of its own.
    let r = tests::send(
        client()
            .get(proxy.url("/id?esc=1"))
            .header("user-agent", r#"evil" 200 0 "-" "forged"#)
            .header("referer", r"http://ref.test/a\b"),
    )
    .await;
    assert_eq!(r.status, 200);
    let line = wait_log_line(&log, "a combined line for /id?esc=1", |l| {
        l.contains("/id?esc=1")
    })
    .await;
    assert!(
        line.ends_with(r#" "http://ref.test/a\x5Cb" "evil\x22 200 0 \x22-\x22 \x22forged""#),
        "{line}"
    );
    // Three quoted fields: the request line, the Referer and the User-Agent.
    assert_eq!(line.matches('"').count(), 6, "{line}");
}

/// Requests the proxy answers itself are logged like the rest, with the bytes it sent:
/// one refused before it could be parsed (a TLS handshake on the plain port, logged with
/// its first line as it came, as nginx logs a bad `$request`) and one refused by policy
/// (no Host).
#[tokio::test]
async fn answers_of_the_proxys_own_are_logged_with_their_size() {
    use tests::raw::RawConn;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = Backend::start("b1");
    let proxy = Proxy::start_config(&access_log_config("combined", &log, &b));

    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange("\u{16}\u{3}\u{1}\u{0}\u{5}hello").await;
    assert_eq!(r.status, 400, "{r:?}");
    let line = wait_log_line(&log, "a line for the TLS bytes", |l| l.contains("hello")).await;
    assert!(
        line.contains(r#""- \x16\x03\x01\x00\x05hello -" 400 "#),
        "{line}"
    );
    let sent: u64 = line
        .split("\" 400 ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent > 0, "{line}");

    let mut c = RawConn::connect(proxy.addr()).await;
    let r = c.exchange("GET /no-host HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    let line = wait_log_line(&log, "a line for /no-host", |l| l.contains("/no-host")).await;
    assert!(line.contains(r#""GET /no-host HTTP/1.1" 400 "#), "{line}");
    assert!(!line.contains(r#"" 400 0 "#), "{line}");
}

#[tokio::test]
async fn admin_answers_a_wrong_method_with_405_and_allow_and_takes_any_case_of_bearer() {
    let a = Backend::start("a");
    let [listen, admin_port] = port_array();
    let toml = format!(
        "{}\n{}\n{}",
        admin(admin_port, "tok"),
        listener(listen),
        upstream("app", None, &entries(&[&a]))
    );
    let proxy = Proxy::start_config(&toml);
    let c = client();
    let url = |path: &str| proxy.admin_url(path);
    // An endpoint asked with another method: 405 naming the one it takes (RFC 9110
    // §15.5.6), not a 404 that says it does not exist.
    for (method, path, allow) in [
        (http::Method::GET, "/reload", "POST"),
        (http::Method::GET, "/backends/app/a/drain", "POST"),
        (http::Method::DELETE, "/status", "GET"),
        (http::Method::PUT, "/metrics", "GET"),
        // Without the token too: the method is checked first.
        (http::Method::POST, "/status", "GET"),
        (http::Method::POST, "/healthz", "GET"),
    ] {
        let r = tests::send(c.request(method.clone(), url(path))).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        assert_eq!(
            r.header("allow"),
            Some(allow),
            "{method} {path}: {:?}",
            r.headers
        );
    }
    // A path that is no endpoint is still a 404.
    let r = tests::send(c.delete(url("/nope"))).await;
    assert_eq!(r.status, 404, "{}", r.body);

    // The scheme of `Authorization` is case-insensitive (RFC 9110 §11.1); the token is not.
    for (value, want) in [
        ("bearer tok", 200),
        ("BEARER tok", 200),
        ("Bearer tok", 200),
        ("Bearer TOK", 401),
        ("Bearer to", 401),
        ("Basic tok", 401),
    ] {
        let r = tests::send(c.post(url("/reload")).header("authorization", value)).await;
        assert_eq!(r.status, want, "Authorization: {value}: {}", r.body);
    }
}

#[tokio::test]
async fn a_reload_rotates_the_admin_token_and_auth_reads_guards_status_and_metrics() {
    let a = Backend::start("a");
    let [listen, admin_port] = port_array();
    let config = |token: &str, auth_reads: bool| {
        format!(
            "{}auth_reads = {auth_reads}\n{}\n{}",
            admin(admin_port, token),
            listener(listen),
            upstream("app", None, &entries(&[&a]))
        )
    };
    let proxy = Proxy::start_config(&config("old", false));
    // Reads are open by default.
    assert_eq!(get(&proxy.admin_url("/status")).await.status, 200);
    assert_eq!(get(&proxy.admin_url("/metrics")).await.status, 200);

    proxy.write_config(&config("new", true));
    let r = admin_post(&proxy, "/reload", Some("old")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The old token is dead at once, for mutations and reads alike.
    let r = admin_post(&proxy, "/reload", Some("old")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    for path in ["/status", "/metrics"] {
        for r in [
            get(&proxy.admin_url(path)).await,
            admin_get(&proxy, path, Some("old")).await,
        ] {
            assert_eq!(r.status, 401, "{path}: {}", r.body);
            assert_eq!(
                r.headers.get("www-authenticate").map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{path}"
            );
            assert!(!r.body.contains("127.0.0.1"), "{path} leaked: {}", r.body);
        }
    }
    // The new one opens both; a load balancer's /healthz needs none.
    let s = admin_get(&proxy, "/status", Some("new")).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.json()["upstreams"][0]["name"], "app", "{}", s.body);
    let m = admin_get(&proxy, "/metrics", Some("new")).await;
    assert_eq!(m.status, 200);
    assert!(m.body.contains("switchyard_backend_up{"), "{}", m.body);
    assert_eq!(get(&proxy.admin_url("/healthz")).await.status, 200);
    let r = admin_post(&proxy, "/reload", Some("new")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Proxying never needed any of it.
    assert_eq!(get(&proxy.url("/id")).await.backend(), Some("a"));
}

/// A proxy with one worker thread and `grace_period`, in front of one echo backend `b1`.
fn proxy_with_grace(grace: &str) -> (Backend, Proxy) {
    let b = Backend::start("b1");
    let toml = format!(
        "[server]\nthreads = 1\ngrace_period = \"{grace}\"\n{}\n{}",
        listener(free_port()),
        upstream("app", None, &entries(&[&b]))
    );
    (b, Proxy::start_config(&toml))
}

/// Starts a 500 ms request, waits until `b1` counts `active` requests and tunnels, sends
/// SIGTERM and asserts that the request is answered all the same.
async fn a_request_outlives_sigterm(proxy: &Proxy, active: u64) {
    let url = proxy.url("/delay/500");
    let slow = tokio::spawn(async move { tests::http::try_send(client().get(url)).await });
    tests::admin::wait_backend(proxy, "b1", T, "the request in flight", |b| {
        counter(b, "active") == active
    })
    .await;
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let r = slow
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the in-flight request was cut by the stop: {e:#}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.backend(), Some("b1"));
}

#[tokio::test]
async fn a_sub_second_grace_period_still_lets_in_flight_requests_finish() {
    let (_b, mut proxy) = proxy_with_grace("900ms");
    a_request_outlives_sigterm(&proxy, 1).await;
    let exited = proxy.signal_and_wait(nix::sys::signal::Signal::SIGTERM, T);
    assert!(
        exited.is_some(),
        "the proxy must exit after its grace period"
    );
}

/// A graceful stop ends once the last connection is done, as nginx's and HAProxy's do
/// (pingora alone sleeps the whole grace period, however idle): a request in flight and an
/// open WebSocket are let finish, the tunnel keeps working after the request is done, and
/// the proxy exits when the WebSocket closes, long before its 60 s grace period.
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_exits_when_the_last_connection_closes_not_when_the_grace_period_ends() {
    let (_b, mut proxy) = proxy_with_grace("60s");
    let (mut ws, on) = ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(on, "b1");
    a_request_outlives_sigterm(&proxy, 2).await;
    ws_echo(&mut ws, "still open after the request").await;
    assert!(proxy.is_running(), "the proxy exited with a tunnel open");

    ws_close(ws).await;
    let exited = proxy.wait_exit(T);
    let status = exited.unwrap_or_else(|| {
        panic!(
            "the proxy still runs with nothing left to finish:\n{}",
            proxy.logs()
        )
    });
    assert!(status.success(), "{status:?}");
    assert!(
        proxy.logs().contains("every connection has closed"),
        "{}",
        proxy.logs()
    );
}

/// The proxy's `client_connections` gauge.
async fn client_connections(proxy: &Proxy) -> Option<u64> {
    let metrics = admin_get(proxy, "/metrics", None).await.body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_client_connections "))
        .and_then(|v| v.trim().parse().ok())
}

/// A client that opened its connection before a stop and sends its request just after it
/// gets an answer: it did nothing wrong, and a new connection closed with no answer is an
/// error it does not retry (the stop closed it, as pingora does; under load, that cut
/// requests already sent). A kept-alive connection idle at the stop is closed at once: its
/// client retries on a new connection. One that never sends a request is closed a moment
/// into the stop.
#[tokio::test]
async fn a_request_sent_just_after_the_stop_on_a_connection_opened_before_it_is_answered() {
    let (_b, mut proxy) = proxy_with_grace("60s");
    let mut kept = RawConn::connect(proxy.addr()).await;
    let r = kept.exchange(get_req("/id")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "b1"), "{r:?}");
    let mut fresh = RawConn::connect(proxy.addr()).await;
    // One that never sends anything, as a browser's preconnect.
    let mut silent = RawConn::connect(proxy.addr()).await;
    let proxy_ref = &proxy;
    tests::wait_until(T, "the three connections counted", || async move {
        client_connections(proxy_ref).await == Some(3)
    })
    .await;

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    // The stop has reached the connections.
    kept.expect_eof("the kept-alive connection idle at the stop")
        .await;
    let r = fresh.exchange(get_req("/id")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "b1"), "{r:?}");
    assert!(r.closes(), "{r:?}");
    fresh.expect_eof("the connection after its answer").await;
    // Closed 2 s into the stop, not at the end of the 60 s grace period.
    silent
        .expect_eof("the connection that sent nothing, a moment into the stop")
        .await;

    let status = proxy
        .wait_exit(T)
        .unwrap_or_else(|| panic!("still running with nothing left:\n{}", proxy.logs()));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_request_on_a_kept_alive_connection_follows_a_reload_made_while_it_waited() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let [listen, admin_port] = port_array();
    let config = |backend: &Backend| {
        format!(
            "{}\n{}\n{}",
            admin(admin_port, "t"),
            listener(listen),
            upstream("app", None, &entries(&[backend]))
        )
    };
    let proxy = Proxy::start_config(&config(&a));
    let mut conn = RawConn::connect(proxy.addr()).await;
    let resp = conn.exchange(get_req("/id")).await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "a"), "{resp:?}");
    // The connection now waits for its next request; the reload moves the upstream to b.
    proxy.write_config(&config(&b));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resp = conn.exchange(get_req("/id")).await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "b"),
        "served under the config of before the reload: {resp:?}"
    );
}

/// A reload says what a start says of its config: the warnings (here, two sticky
/// upstreams under one cookie name) are in the admin answer and in the log, with file,
/// line and key; the reload is made all the same.
#[tokio::test]
async fn a_reload_reports_the_new_configs_warnings() {
    let a = Backend::start("a");
    let [listen, admin_port] = port_array();
    let sticky = |name: &str| {
        format!(
            "[upstreams.{name}]\nstrategy = \"sticky_cookie\"\nbackends = [{}]\n\
             [upstreams.{name}.sticky]\nkey = \"0123456789abcdef\"\n",
            backend_entry(&a, "")
        )
    };
    let routes = "[[routes]]\npath_prefix = \"/x/\"\nupstream = \"x\"\n\
                  [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let base = format!("{}\n{}", admin(admin_port, "t"), listener(listen));
    let proxy = Proxy::start_config(&format!("{base}{}", sticky("app")));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["report"]["warnings"],
        serde_json::json!([]),
        "{}",
        r.body
    );

    proxy.write_config(&format!("{base}{}{}{routes}", sticky("app"), sticky("x")));
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let warnings = r.json()["report"]["warnings"].clone();
    let warning = warnings[0].as_str().unwrap_or_default().to_owned();
    assert!(
        warning.contains("proxy.toml:")
            && warning.contains("upstreams.x.sticky: cookie `syd_route` is upstream app's too"),
        "{}",
        r.body
    );
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{}", r.body);
    proxy.wait_log(&warning, tests::STEP_TIMEOUT);
    assert_eq!(get(&proxy.url("/x/id")).await.status, 200);
}

/// A request retried on another backend (its connection to the first was refused) names
/// every backend it tried, as nginx's `$upstream_addr` does: `backend` the one that
/// answered, `tried` the ones before it. On both HTTP/1 paths.
#[tokio::test]
async fn a_retried_request_logs_every_backend_it_tried() {
    for path in ["native", "pingora"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let mut a = Backend::start("a");
        let b = Backend::start("b");
        let proxy = Proxy::start_config(&format!(
            "[server]\nhttp1 = \"{path}\"\n\n[access_log]\nenabled = true\nformat = \"json\"\n\
             path = \"{log}\"\n\n{listener}\n{upstream}\n",
            log = log.display(),
            listener = listener(free_port()),
            upstream = upstream("app", Some("round_robin"), &entries(&[&a, &b])),
        ));
        let (dead, alive) = (a.addr().to_string(), b.addr().to_string());
        a.kill();
        // Round robin sends one of any two requests to `a` first.
        for i in 0..2 {
            let r = get(&proxy.url(&format!("/id?n={i}"))).await;
            assert_eq!(r.backend(), Some("b"), "{path}: {r:?}");
        }
        let line = wait_log_line(&log, "a retried request's line", |l| {
            l.contains("\"tried\"")
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (
                v["tried"].as_str(),
                v["backend"].as_str(),
                v["status"].as_u64()
            ),
            (Some(dead.as_str()), Some(alive.as_str()), Some(200)),
            "{path}: {v}"
        );
        // Every retried line says the same; none names a backend twice.
        let text = std::fs::read_to_string(&log).unwrap();
        for l in text.lines().filter(|l| l.contains("\"tried\"")) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["tried"].as_str(), Some(dead.as_str()), "{path}: {v}");
        }
    }
}

//! Tests of loading and validating config files: the example file, the defaults, and one
//! test per error with its exact `file:line: key: message`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// Environment seen by the tests (the process environment is never touched).
fn env(name: &str) -> Option<String> {
    match name {
        "TEST_ADMIN_TOKEN" | "SWITCHYARD_ADMIN_TOKEN" => Some("admin-secret".to_string()),
        "TEST_STICKY_KEY" | "SWITCHYARD_STICKY_KEY" => Some("0123456789abcdef0123".to_string()),
        "TEST_SHORT_KEY" => Some("short".to_string()),
        "TEST_EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, Some(Path::new("proxy.toml")), &env, &SystemResolver)
}

fn ok(text: &str) -> Config {
    match load(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The rendered errors.
fn errs(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.lines(),
    }
}

/// The single error, rendered.
fn err(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A temporary directory with a self-signed certificate (`cert.pem`) and its key (`key.pem`).
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        Certs { dir }
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

const EXAMPLE: &str = include_str!("../../examples/proxy.toml");

/// The example with its certificate paths pointing at generated files.
fn example_with(certs: &Certs) -> String {
    EXAMPLE
        .replace("certs/localhost.pem", &certs.cert().display().to_string())
        .replace(
            "certs/localhost-key.pem",
            &certs.key().display().to_string(),
        )
}

/// Line (1-based) of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn the_example_file_loads() {
    let certs = Certs::new();
    let c = ok(&example_with(&certs));

    assert_eq!(c.server.threads, 2);
    assert_eq!(c.server.grace_period, Duration::from_secs(5));
    let admin = c.admin.as_ref().unwrap();
    assert_eq!(admin.listen, addr("127.0.0.1:9900"));
    assert_eq!(admin.token.as_deref(), Some("admin-secret"));
    assert_eq!(
        c.access_log,
        AccessLogConfig {
            enabled: false,
            format: AccessLogFormat::Json,
            path: None
        }
    );
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_connections_per_ip, None);
    // From the open-file limit: two descriptors per connection, less a reserve.
    let open_files = crate::capacity::open_files().unwrap_or(1024);
    assert_eq!(
        c.limits.max_connections,
        Some(crate::capacity::default_max_connections(open_files))
    );
    assert_eq!(c.limits.max_request_header_bytes, Some(16384));
    assert_eq!(c.limits.max_request_body_bytes, Some(10 * 1024 * 1024));
    assert_eq!(c.limits.header_read_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(3600));

    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].listen, addr("127.0.0.1:8080"));
    assert_eq!(c.listeners[0].redirect_https_port, Some(8443));
    assert!(c.listeners[0].tls.is_none());
    let tls = c.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.cert, certs.cert());
    assert_eq!(tls.key, certs.key());
    assert!(tls.sni.is_empty());
    assert!(tls.h2);

    assert_eq!(c.upstreams.len(), 1);
    let u = c.upstream("chat").unwrap();
    assert_eq!(u.strategy, StrategyKind::LeastConn);
    assert_eq!(
        u.backends,
        vec![
            BackendConfig {
                id: derived_id(addr("127.0.0.1:9001")),
                addr: addr("127.0.0.1:9001"),
                weight: 1,
                backup: false,
                max_conns: 0,
                dns: None,
            },
            BackendConfig {
                id: "n2".to_string(),
                addr: addr("127.0.0.1:9002"),
                weight: 3,
                backup: false,
                max_conns: 0,
                dns: None,
            },
            BackendConfig {
                id: derived_id(addr("127.0.0.1:9009")),
                addr: addr("127.0.0.1:9009"),
                weight: 1,
                backup: true,
                max_conns: 0,
                dns: None,
            },
        ]
    );
    assert_eq!(u.slow_start, Some(Duration::from_secs(10)));
    assert_eq!(
        u.health,
        HealthConfig {
            active: Some(ActiveCheck {
                kind: CheckKind::http("/healthz", None),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 2,
            }),
            max_fails: 3,
            fail_window: Duration::from_secs(10),
            fail_open: false,
        }
    );
    // Not sticky_cookie: the sticky table is ignored (and reported as such).
    assert!(u.sticky.key.is_empty());
    assert_eq!(
        u.ip_hash
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["127.0.0.1/32", "10.0.0.0/8"]
    );
    assert!(u.ip_hash.is_trusted("10.1.2.3".parse().unwrap()));
    assert!(!u.ip_hash.is_trusted("192.168.0.1".parse().unwrap()));

    assert_eq!(
        c.routes,
        vec![
            Route {
                host: Some("chat.example.com".to_string()),
                path_prefix: "/".to_string(),
                upstream: "chat".to_string(),
                prefix_rewrite: None,
                slash_redirect: true,
                allow: None,
                request_headers: Vec::new(),
            },
            Route {
                host: None,
                path_prefix: "/".to_string(),
                upstream: "chat".to_string(),
                prefix_rewrite: None,
                slash_redirect: true,
                allow: None,
                request_headers: Vec::new(),
            },
        ]
    );
    assert_eq!(c.source.as_deref(), Some(Path::new("proxy.toml")));
    let sticky_line = line_of(EXAMPLE, "[upstreams.chat.sticky]");
    let ip_hash_line = line_of(EXAMPLE, "[upstreams.chat.ip_hash]");
    assert_eq!(
        c.warnings,
        vec![
            format!("proxy.toml:{sticky_line}: upstreams.chat.sticky: ignored: strategy is least_conn, not sticky_cookie"),
            format!("proxy.toml:{ip_hash_line}: upstreams.chat.ip_hash: ignored: strategy is least_conn, not ip_hash"),
        ]
    );

    let summary = c.summary();
    for needle in [
        "127.0.0.1:8080  http  (redirects everything to https port 8443)",
        "alpn h2,http/1.1",
        "chat  strategy least_conn  slow start 10s",
        "127.0.0.1:9002  weight 3      id n2",
        "backup",
        "active check: http GET /healthz every 2s, timeout 1s, rise 2, fall 2; passive: down after 3 failures in 10s",
        "chat.example.com/ -> chat",
        "*/ -> chat",
        "admin: 127.0.0.1:9900 (token set)",
        "limits: connections ",
        "connections/ip off, requests/s/ip off, header bytes 16384",
    ] {
        assert!(summary.contains(needle), "summary lacks {needle:?}:\n{summary}");
    }
    assert!(!summary.contains("admin-secret"));
}

#[test]
fn the_example_as_shipped_names_its_missing_certificates() {
    // Relative to the test's working directory the example's cert paths do not exist.
    let line = line_of(EXAMPLE, "tls = { cert");
    let e = errs(EXAMPLE);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with(&format!(
            "proxy.toml:{line}: listeners[1].tls.cert: certs/localhost.pem: cannot read: "
        )),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with(&format!(
            "proxy.toml:{line}: listeners[1].tls.key: certs/localhost-key.pem: cannot read: "
        )),
        "{}",
        e[1]
    );
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.source.as_deref(), Some(path.as_path()));

    let missing = dir.path().join("nope.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(e.errors()[0].kind, ErrorKind::Read(_)));
    let line = e.to_string();
    assert!(
        line.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{line}"
    );

    // A file's errors carry its path.
    std::fs::write(&path, "[server]\ntreads = 3\n").unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2: server.treads: unknown key", path.display())),
        "{e}"
    );
}

const MINIMAL: &str = r#"[[listeners]]
listen = "127.0.0.1:8080"

[upstreams.app]
backends = [{ addr = "127.0.0.1:9001" }]
"#;

#[test]
fn defaults_and_the_implied_route() {
    let c = ok(MINIMAL);
    assert_eq!(
        c.server.threads,
        std::thread::available_parallelism().unwrap().get()
    );
    assert_eq!(c.server.grace_period, Duration::from_secs(5));
    assert!(c.admin.is_none());
    assert_eq!(c.access_log, AccessLogConfig::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(
        c.timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            upstream_read: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(3600),
            downstream_keepalive: Duration::from_secs(60),
            client: Duration::from_secs(60),
        }
    );
    let u = &c.upstreams[0];
    assert_eq!(u.strategy, StrategyKind::RoundRobin);
    assert_eq!(u.health, HealthConfig::default());
    assert_eq!(u.health.max_fails, 3);
    assert_eq!(u.health.fail_window, Duration::from_secs(10));
    assert_eq!(u.slow_start, None);
    assert_eq!(
        c.routes,
        vec![Route {
            host: None,
            path_prefix: "/".to_string(),
            upstream: "app".to_string(),
            prefix_rewrite: None,
            slash_redirect: true,
            allow: None,
            request_headers: Vec::new(),
        }]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn active_check_defaults() {
    let c = ok(&format!(
        "{MINIMAL}[upstreams.app.health]\nkind = \"tcp\"\n"
    ));
    assert_eq!(
        c.upstreams[0].health.active,
        Some(ActiveCheck::with_defaults(CheckKind::Tcp))
    );
    let a = c.upstreams[0].health.active.clone().unwrap();
    assert_eq!(
        (a.interval, a.timeout, a.rise, a.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 2, 2)
    );
}

#[test]
fn unknown_key() {
    let e = err(&format!("[server]\ntreads = 3\n{MINIMAL}"));
    assert_eq!(
        e,
        "proxy.toml:2: server.treads: unknown key, expected one of `threads`, `grace_period`, `http1`, `request_id`, `real_ip_from`"
    );
    let e = err(&format!(
        "{MINIMAL}[upstreams.app.health]\nkind = \"tcp\"\nrize = 3\n"
    ));
    assert!(
        e.starts_with("proxy.toml:8: upstreams.app.health.rize: unknown key, expected one of"),
        "{e}"
    );
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [\n  { addr = \"127.0.0.1:2\", wieght = 2 },\n]\n");
    assert!(
        e.starts_with("proxy.toml:5: upstreams.a.backends[0].wieght: unknown key"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[extra]\n"));
    assert!(e.starts_with("proxy.toml:6: extra: unknown key"), "{e}");
}

#[test]
fn unknown_strategy() {
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.chat]\nstrategy = \"leest_conn\"\nbackends = [{ addr = \"127.0.0.1:2\" }]\n");
    assert_eq!(
        e,
        "proxy.toml:5: upstreams.chat.strategy: unknown variant `leest_conn`, expected one of \
         `round_robin`, `least_conn`, `ip_hash`, `sticky_cookie`, `p2c`, `least_time`"
    );
}

#[test]
fn wrong_types_and_bad_values() {
    let e = err(&format!("[server]\nthreads = \"two\"\n{MINIMAL}"));
    assert_eq!(
        e,
        "proxy.toml:2: server.threads: invalid type: string \"two\", expected usize"
    );
    let e = err(&format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_read = \"5x\"\n{MINIMAL}"
    ));
    assert!(
        e.starts_with("proxy.toml:3: timeouts.upstream_read: invalid duration \"5x\": "),
        "{e}"
    );
    // humantime reads up to 2^64 seconds; a timeout past 2^63 overflowed `Instant + Duration`
    // (a panic) on every request the HTTP/1 path forwarded.
    let e = err(&format!(
        "[timeouts]\nupstream_read = \"500000000000y\"\n{MINIMAL}"
    ));
    assert!(
        e.starts_with(
            "proxy.toml:2: timeouts.upstream_read: invalid duration \"500000000000y\": longer than 100 years"
        ),
        "{e}"
    );
    let e = err(&format!("[timeouts]\nclient = \"0s\"\n{MINIMAL}"));
    assert!(e.starts_with("proxy.toml:2: timeouts.client: "), "{e}");
    let e = err(&format!("[timeouts]\nconnect = 2\n{MINIMAL}"));
    assert!(e.starts_with("proxy.toml:2: timeouts.connect: invalid type: integer `2`, expected a duration with a unit"), "{e}");
    let e = err("[[listeners]]\nlisten = \"localhost\"\n");
    assert_eq!(
        e,
        "proxy.toml:2: listeners[0].listen: invalid address `localhost` (expected ip:port, e.g. 127.0.0.1:9001 or [::1]:9001)"
    );
    let e = err(&format!("{MINIMAL}[access_log]\nformat = \"xml\"\n"));
    assert_eq!(
        e,
        "proxy.toml:7: access_log.format: unknown variant `xml`, expected `json` or `combined`"
    );
    let e = err(
        "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [{ weight = 2 }]\n",
    );
    assert!(
        e.starts_with("proxy.toml:4: upstreams.a.backends[0]: missing field `addr`"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_a_line_and_no_key() {
    let e = err("[server]\nthreads = 2\n[listeners\n");
    assert!(e.starts_with("proxy.toml:3: invalid table header"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// A value the TOML parser itself refuses (a number too large for any integer) is named
/// by its key too, read from its line and the table above it.
#[test]
fn a_number_too_large_names_its_key() {
    let e = err(&format!(
        "{MINIMAL}[limits]\nmax_connections = 18446744073709551615\n"
    ));
    assert_eq!(
        e,
        "proxy.toml:7: limits.max_connections: number too large to fit in target type"
    );
    let e = err(&format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:1\"\n[[listeners]]\nlisten = \"127.0.0.1:2\"\nh2 = 99999999999999999999\n"
    ));
    assert_eq!(
        e,
        "proxy.toml:10: listeners[2].h2: number too large to fit in target type"
    );
    // Inside a multi-line array no key is guessed.
    let e = err(
        "[[listeners]]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nbackends = [\n  { addr = \"127.0.0.1:9001\", weight = 99999999999999999999 },\n]\n",
    );
    assert_eq!(e, "proxy.toml:5: number too large to fit in target type");
}

#[test]
fn route_to_unknown_upstream() {
    let text = format!("{MINIMAL}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"ap\"\n");
    assert_eq!(
        err(&text),
        "proxy.toml:9: routes[0].upstream: no upstream named `ap`"
    );
    assert!(matches!(
        load(&text).unwrap_err().errors()[0].kind,
        ErrorKind::UnknownUpstream(ref u) if u == "ap"
    ));
}

#[test]
fn upstream_without_a_primary_backend() {
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.a]\nbackends = [\n  { addr = \"127.0.0.1:2\", backup = true },\n]\n");
    assert_eq!(
        e,
        "proxy.toml:5: upstreams.a.backends: no primary backend (every backend is a backup, or none is listed)"
    );
    // No `backends` key at all: the line of the upstream's header.
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.a]\nstrategy = \"p2c\"\n");
    assert!(
        e.starts_with("proxy.toml:4: upstreams.a.backends: no primary backend"),
        "{e}"
    );
}

#[test]
fn duplicate_backend_address_and_id() {
    let text = "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [\n  { addr = \"127.0.0.1:2\" },\n  { addr = \"127.0.0.1:3\", id = \"x\" },\n  { addr = \"127.0.0.1:2\", weight = 2 },\n  { addr = \"127.0.0.1:4\", id = \"x\" },\n]\n";
    assert_eq!(
        errs(text),
        vec![
            "proxy.toml:7: upstreams.a.backends[2].addr: duplicate backend address 127.0.0.1:2",
            "proxy.toml:8: upstreams.a.backends[3].id: duplicate backend id `x`",
        ]
    );
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [{ addr = \"127.0.0.1:2\", id = \"a b\" }]\n");
    assert!(
        e.starts_with("proxy.toml:4: upstreams.a.backends[0].id: invalid backend id `a b`"),
        "{e}"
    );
}

#[test]
fn weight_out_of_range() {
    let text = "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [\n  { addr = \"127.0.0.1:2\", weight = 0 },\n  { addr = \"127.0.0.1:3\", weight = 10000 },\n  { addr = \"127.0.0.1:4\", weight = 10001 },\n]\n";
    assert_eq!(
        errs(text),
        vec![
            "proxy.toml:5: upstreams.a.backends[0].weight: weight 0 is out of range (1 to 10000)",
            "proxy.toml:7: upstreams.a.backends[2].weight: weight 10001 is out of range (1 to 10000)",
        ]
    );
}

#[test]
fn max_conns_defaults_from_the_upstream_and_a_backend_overrides_it() {
    let c = ok("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nmax_conns = 50\nbackends = [\n  { addr = \"127.0.0.1:2\" },\n  { addr = \"127.0.0.1:3\", max_conns = 7 },\n  { addr = \"127.0.0.1:4\", max_conns = 0 },\n]\n[upstreams.b]\nbackends = [{ addr = \"127.0.0.1:5\" }]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n");
    let limits = |name: &str| -> Vec<u32> {
        c.upstream(name)
            .unwrap()
            .backends
            .iter()
            .map(|b| b.max_conns)
            .collect()
    };
    // A backend's own 0 means unlimited, whatever the upstream's default.
    assert_eq!(limits("a"), vec![50, 7, 0]);
    assert_eq!(limits("b"), vec![0]);
    let summary = c.summary();
    assert!(
        summary.contains("127.0.0.1:3  weight 1      id "),
        "{summary}"
    );
    assert!(summary.contains("  max_conns 7"), "{summary}");
    assert!(summary.contains("  max_conns 50"), "{summary}");
    assert_eq!(summary.matches("max_conns").count(), 2, "{summary}");
}

#[test]
fn max_conns_out_of_range_or_mistyped() {
    let text = "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nmax_conns = 1000001\nbackends = [\n  { addr = \"127.0.0.1:2\", max_conns = 1000000 },\n  { addr = \"127.0.0.1:3\", max_conns = 4000000000 },\n]\n";
    assert_eq!(
        errs(text),
        vec![
            "proxy.toml:4: upstreams.a.max_conns: max_conns 1000001 is out of range (0 for unlimited, or up to 1000000)",
            "proxy.toml:7: upstreams.a.backends[1].max_conns: max_conns 4000000000 is out of range (0 for unlimited, or up to 1000000)",
        ]
    );
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [\n  { addr = \"127.0.0.1:2\", max_conns = -1 },\n]\n");
    assert!(
        e.starts_with(
            "proxy.toml:5: upstreams.a.backends[0].max_conns: invalid value: integer `-1`"
        ),
        "{e}"
    );
    let e = err("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nmax_conns = \"10\"\nbackends = [{ addr = \"127.0.0.1:2\" }]\n");
    assert!(
        e.starts_with("proxy.toml:4: upstreams.a.max_conns: invalid type: string \"10\""),
        "{e}"
    );
}

#[test]
fn max_queue_and_queue_timeout() {
    let up = |keys: &str| {
        format!("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\n{keys}backends = [{{ addr = \"127.0.0.1:2\", max_conns = 4 }}]\n")
    };
    let c = ok(&up("max_queue = 10\n"));
    assert_eq!(
        c.upstream("a").unwrap().queue,
        Some(QueueConfig {
            max: 10,
            timeout: DEFAULT_QUEUE_TIMEOUT
        })
    );
    assert!(c
        .summary()
        .contains("queue 10 for 5s when every backend is full"));
    let c = ok(&up("max_queue = 2\nqueue_timeout = \"300ms\"\n"));
    assert_eq!(
        c.upstream("a").unwrap().queue.map(|q| q.timeout),
        Some(Duration::from_millis(300))
    );
    let c = ok(&up("queue_timeout = \"1s\"\n"));
    assert_eq!(c.upstream("a").unwrap().queue, None);
    assert_eq!(
        c.warnings,
        ["proxy.toml:4: upstreams.a.queue_timeout: ignored: max_queue is 0 (no queue)"]
    );
    let c = ok("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nmax_queue = 3\nbackends = [{ addr = \"127.0.0.1:2\" }]\n");
    assert_eq!(c.upstream("a").unwrap().queue, None);
    assert_eq!(
        c.warnings,
        ["proxy.toml:4: upstreams.a.max_queue: ignored: no backend of this upstream has max_conns, so none is ever full"]
    );
    assert_eq!(
        errs(&up("max_queue = 2000000\nqueue_timeout = \"0s\"\n")),
        [
            "proxy.toml:4: upstreams.a.max_queue: must be at most 1000000",
            "proxy.toml:5: upstreams.a.queue_timeout: must be greater than 0",
        ]
    );
}

#[test]
fn duplicate_listener() {
    let text = format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8081\"\n[[listeners]]\nlisten = \"127.0.0.1:8080\"\n[[listeners]]\nlisten = \"0.0.0.0:8081\"\n"
    );
    assert_eq!(
        errs(&text),
        vec![
            "proxy.toml:9: listeners[2].listen: address 127.0.0.1:8080 conflicts with the listener on 127.0.0.1:8080",
            "proxy.toml:11: listeners[3].listen: address 0.0.0.0:8081 conflicts with the listener on 127.0.0.1:8081",
        ]
    );
}

#[test]
fn admin_on_a_listener_address() {
    let text = format!("[admin]\nlisten = \"127.0.0.1:8080\"\n{MINIMAL}");
    assert_eq!(
        err(&text),
        "proxy.toml:2: admin.listen: conflicts with the proxy listener on 127.0.0.1:8080"
    );
}

#[test]
fn admin_token_sources() {
    let c = ok(&format!("[admin]\ntoken = \"t0k\"\n{MINIMAL}"));
    let admin = c.admin.unwrap();
    assert_eq!(admin.listen, DEFAULT_ADMIN_LISTEN);
    assert_eq!(admin.token.as_deref(), Some("t0k"));
    assert!(!format!("{admin:?}").contains("t0k"));

    let c = ok(&format!(
        "[admin]\ntoken_env = \"TEST_ADMIN_TOKEN\"\n{MINIMAL}"
    ));
    assert_eq!(c.admin.unwrap().token.as_deref(), Some("admin-secret"));

    // An unset or empty variable: no token (mutations refused), no error, and a warning,
    // as for an empty `token`: a variable missing from the service's environment showed
    // only as every mutation refused.
    for var in ["TEST_UNSET", "TEST_EMPTY"] {
        let c = ok(&format!("[admin]\ntoken_env = \"{var}\"\n{MINIMAL}"));
        assert_eq!(c.admin.unwrap().token, None);
        assert_eq!(
            c.warnings,
            vec![format!(
                "proxy.toml:2: admin.token_env: `{var}` is not set or empty: admin mutations are refused"
            )]
        );
    }

    let e = err(&format!(
        "[admin]\ntoken = \"a\"\ntoken_env = \"TEST_ADMIN_TOKEN\"\n{MINIMAL}"
    ));
    assert_eq!(
        e,
        "proxy.toml:3: admin.token_env: set either `token` or `token_env`, not both"
    );
}

#[test]
fn admin_auth_reads_needs_a_token() {
    let c = ok(&format!(
        "[admin]\ntoken = \"t0k\"\nauth_reads = true\n{MINIMAL}"
    ));
    assert!(c
        .summary()
        .contains("admin: 127.0.0.1:9900 (token set, reads need it too)"));
    assert!(c.admin.unwrap().auth_reads);
    assert!(!ok(&format!("[admin]\n{MINIMAL}")).admin.unwrap().auth_reads);

    // Without a token (none, or an unset variable) every read would be refused.
    for (source, line) in [("", 2), ("token_env = \"TEST_UNSET\"\n", 3)] {
        let e = err(&format!("[admin]\n{source}auth_reads = true\n{MINIMAL}"));
        assert_eq!(
            e,
            format!(
                "proxy.toml:{line}: admin.auth_reads: missing: a token (`token`, or \
                 `token_env` naming a set variable): with auth_reads = true every read \
                 would be refused"
            )
        );
    }
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_a_warning_with_file_line_and_key() {
    let certs = Certs::new();
    let write = |name: &str, from: (i32, u8, u8), to: (i32, u8, u8)| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let cert = params.self_signed(&key).unwrap();
        (
            certs.file(&format!("{name}.pem"), &cert.pem()),
            certs.file(&format!("{name}-key.pem"), &key.serialize_pem()),
        )
    };
    let (expired, expired_key) = write("expired", (2020, 1, 1), (2020, 2, 1));
    let (future, future_key) = write("future", (2200, 1, 1), (2201, 1, 1));
    let text = format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\nsni = [{{ server_name = \"localhost\", cert = \"{}\", key = \"{}\" }}]\n",
        expired.display(),
        expired_key.display(),
        future.display(),
        future_key.display()
    );
    let c = ok(&text);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with(&format!(
            "proxy.toml:8: listeners[1].tls.cert: {}: the certificate expired on ",
            expired.display()
        )),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings[1].starts_with(&format!(
            "proxy.toml:9: listeners[1].sni[0].cert: {}: the certificate is not valid before ",
            future.display()
        )),
        "{:?}",
        c.warnings
    );

    // A certificate in its validity period says nothing.
    let c = ok(&format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        certs.cert().display(),
        certs.key().display()
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn an_sni_certificate_that_does_not_cover_its_name_is_a_warning() {
    let certs = Certs::new();
    let wild = rcgen::generate_simple_self_signed(vec!["*.example.com".to_string()]).unwrap();
    let (wild_cert, wild_key) = (
        certs.file("wild.pem", &wild.cert.pem()),
        certs.file("wild-key.pem", &wild.key_pair.serialize_pem()),
    );
    let entry = |name: &str, cert: &Path, key: &Path| {
        format!(
            "{{ server_name = \"{name}\", cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        )
    };
    let text = format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\nsni = [{}, {}, {}, {}, {}]\n",
        certs.cert().display(),
        certs.key().display(),
        entry("localhost", &certs.cert(), &certs.key()),
        entry("api.example.com", &wild_cert, &wild_key),
        entry("*.example.com", &wild_cert, &wild_key),
        entry("chat.example.org", &certs.cert(), &certs.key()),
        entry("a.b.example.com", &wild_cert, &wild_key),
    );
    let c = ok(&text);
    assert_eq!(
        c.warnings,
        vec![
            format!(
                "proxy.toml:9: listeners[1].sni[3].cert: {}: the certificate does not cover `chat.example.org` (its names: localhost); clients asking for it will refuse it",
                certs.cert().display()
            ),
            format!(
                "proxy.toml:9: listeners[1].sni[4].cert: {}: the certificate does not cover `a.b.example.com` (its names: *.example.com); clients asking for it will refuse it",
                wild_cert.display()
            ),
        ]
    );
}

#[test]
fn tls_files_must_hold_a_certificate_and_a_key() {
    let certs = Certs::new();
    let listener = |cert: &Path, key: &Path| {
        format!(
            "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        )
    };
    // Valid pair.
    let c = ok(&listener(&certs.cert(), &certs.key()));
    assert!(c.listeners[1].tls.as_ref().unwrap().h2);

    // Missing files.
    let missing = certs.dir.path().join("missing.pem");
    let e = errs(&listener(&missing, &missing));
    assert_eq!(e.len(), 2);
    assert!(
        e[0].starts_with(&format!(
            "proxy.toml:8: listeners[1].tls.cert: {}: cannot read: ",
            missing.display()
        )),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("proxy.toml:8: listeners[1].tls.key: "),
        "{}",
        e[1]
    );

    // Swapped: the key file holds no certificate, the cert file holds no key.
    let e = errs(&listener(&certs.key(), &certs.cert()));
    assert_eq!(
        e,
        vec![
            format!(
                "proxy.toml:8: listeners[1].tls.cert: {}: no PEM certificate found",
                certs.key().display()
            ),
            format!(
                "proxy.toml:8: listeners[1].tls.key: {}: no PEM private key found (PKCS#8, RSA or EC)",
                certs.cert().display()
            ),
        ]
    );

    // Not PEM at all.
    let junk = certs.file("junk.pem", "hello\n");
    let e = errs(&listener(&junk, &certs.key()));
    assert_eq!(
        e,
        vec![format!(
            "proxy.toml:8: listeners[1].tls.cert: {}: no PEM certificate found",
            junk.display()
        )]
    );
    let broken = certs.file(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let e = err(&listener(&broken, &certs.key()));
    assert!(e.contains(": invalid PEM: "), "{e}");
}

#[test]
fn sni_certificates_and_tls_only_keys() {
    let certs = Certs::new();
    let (c, k) = (
        certs.cert().display().to_string(),
        certs.key().display().to_string(),
    );
    let text = format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\nh2 = false\nsni = [\n  {{ server_name = \"Chat.Example.com\", cert = \"{c}\", key = \"{k}\" }},\n]\n"
    );
    let cfg = ok(&text);
    let tls = cfg.listeners[1].tls.as_ref().unwrap();
    assert!(!tls.h2);
    assert_eq!(tls.sni[0].server_name, "chat.example.com");

    let text = format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\nsni = [\n  {{ server_name = \"a.example\", cert = \"{c}\", key = \"{k}\" }},\n  {{ server_name = \"A.example\", cert = \"{c}\", key = \"/nope\" }},\n]\n"
    );
    let e = errs(&text);
    assert_eq!(
        e[0],
        "proxy.toml:11: listeners[1].sni[1].server_name: duplicate server name `a.example`"
    );
    assert!(
        e[1].starts_with("proxy.toml:11: listeners[1].sni[1].key: /nope: cannot read: "),
        "{}",
        e[1]
    );

    // A wildcard covers one label in front of a name; it is no pattern language.
    let sni = |name: &str| {
        format!(
            "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\nsni = [\n  {{ server_name = \"{name}\", cert = \"{c}\", key = \"{k}\" }},\n]\n"
        )
    };
    let cfg = ok(&sni("*.Example.com"));
    let tls = cfg.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.sni[0].server_name, "*.example.com");
    for bad in [
        "*",
        "*.",
        "a.*.example.com",
        "*example.com",
        "**.example.com",
        "*.10.0.0.1",
    ] {
        assert_eq!(
            errs(&sni(bad))[0],
            format!("proxy.toml:10: listeners[1].sni[0].server_name: invalid host `{bad}`"),
            "{bad}"
        );
    }

    let e = errs(&format!(
        "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\nh2 = true\nredirect_https_port = 0\n"
    ));
    assert_eq!(
        e,
        vec![
            "proxy.toml:8: listeners[1].h2: only valid on a TLS listener (set `tls = { cert = ..., key = ... }`)",
            "proxy.toml:9: listeners[1].redirect_https_port: port must not be 0",
        ]
    );
}

const STICKY: &str = r#"[[listeners]]
listen = "127.0.0.1:8080"

[upstreams.app]
strategy = "sticky_cookie"
backends = [{ addr = "127.0.0.1:9001" }]
"#;

#[test]
fn a_sticky_max_age_under_a_second_is_refused() {
    // It would go out as `Max-Age=0`, which deletes the cookie: no client ever pinned.
    for age in ["0s", "500ms"] {
        assert_eq!(
            err(&format!(
                "{STICKY}[upstreams.app.sticky]\nkey = \"0123456789abcdef\"\nmax_age = \"{age}\"\n"
            )),
            "proxy.toml:9: upstreams.app.sticky.max_age: must be at least 1s"
        );
    }
    let c = ok(&format!(
        "{STICKY}[upstreams.app.sticky]\nkey = \"0123456789abcdef\"\nmax_age = \"1s\"\n"
    ));
    assert_eq!(
        c.upstream("app").unwrap().sticky.max_age,
        Some(Duration::from_secs(1))
    );
}

#[test]
fn sticky_cookie_needs_a_long_enough_key() {
    // No [sticky] table: reported at the upstream's header.
    assert_eq!(
        err(STICKY),
        "proxy.toml:4: upstreams.app.sticky: strategy sticky_cookie needs `key` or `key_env` in [upstreams.<name>.sticky]"
    );
    // A table without a key: at the table's header.
    let e = err(&format!(
        "{STICKY}\n[upstreams.app.sticky]\ncookie = \"s\"\n"
    ));
    assert_eq!(
        e,
        "proxy.toml:8: upstreams.app.sticky: strategy sticky_cookie needs `key` or `key_env` in [upstreams.<name>.sticky]"
    );
    assert_eq!(
        err(&format!("{STICKY}[upstreams.app.sticky]\nkey_env = \"TEST_UNSET\"\n")),
        "proxy.toml:8: upstreams.app.sticky.key_env: environment variable `TEST_UNSET` is unset or empty"
    );
    assert_eq!(
        err(&format!("{STICKY}[upstreams.app.sticky]\nkey_env = \"TEST_EMPTY\"\n")),
        "proxy.toml:8: upstreams.app.sticky.key_env: environment variable `TEST_EMPTY` is unset or empty"
    );
    assert_eq!(
        err(&format!(
            "{STICKY}[upstreams.app.sticky]\nkey_env = \"TEST_SHORT_KEY\"\n"
        )),
        "proxy.toml:8: upstreams.app.sticky.key_env: key is 5 bytes long, at least 16 are required"
    );
    assert_eq!(
        err(&format!(
            "{STICKY}[upstreams.app.sticky]\nkey = \"0123456789abcde\"\n"
        )),
        "proxy.toml:8: upstreams.app.sticky.key: key is 15 bytes long, at least 16 are required"
    );
    assert_eq!(
        errs(&format!(
            "{STICKY}[upstreams.app.sticky]\nkey = \"0123456789abcdef\"\nfallback = \"sticky_cookie\"\ncookie = \"a;b\"\n"
        )),
        vec![
            "proxy.toml:9: upstreams.app.sticky.fallback: the fallback cannot be sticky_cookie",
            "proxy.toml:10: upstreams.app.sticky.cookie: invalid cookie name `a;b`",
        ]
    );

    let c = ok(&format!(
        "{STICKY}[upstreams.app.sticky]\nkey_env = \"TEST_STICKY_KEY\"\nmax_age = \"1h\"\n"
    ));
    let s = &c.upstreams[0].sticky;
    assert_eq!(s.key, b"0123456789abcdef0123");
    assert_eq!(s.cookie, "syd_route");
    assert_eq!(s.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(s.fallback, StrategyKind::LeastConn);
    assert!(!format!("{s:?}").contains("0123456789"));
    let c = ok(&format!(
        "{STICKY}[upstreams.app.sticky]\nkey = \"0123456789abcdef\"\n"
    ));
    assert_eq!(c.upstreams[0].sticky.key, b"0123456789abcdef");
    assert!(c.upstreams[0].sticky.max_age.is_none());
}

#[test]
fn health_check_values() {
    let h = |body: &str| format!("{MINIMAL}[upstreams.app.health]\n{body}");
    assert_eq!(
        errs(&h("kind = \"tcp\"\nrise = 0\nfall = 0\n")),
        vec![
            "proxy.toml:8: upstreams.app.health.rise: must be at least 1",
            "proxy.toml:9: upstreams.app.health.fall: must be at least 1",
        ]
    );
    assert_eq!(
        errs(&h("kind = \"tcp\"\ninterval = \"0s\"\ntimeout = \"0ms\"\n")),
        vec![
            "proxy.toml:8: upstreams.app.health.interval: must be greater than 0",
            "proxy.toml:9: upstreams.app.health.timeout: must be greater than 0",
        ]
    );
    assert_eq!(
        err(&h("kind = \"http\"\n")),
        "proxy.toml:6: upstreams.app.health.path: missing: required when kind = \"http\", e.g. path = \"/healthz\""
    );
    assert_eq!(
        err(&h("kind = \"http\"\npath = \"healthz\"\n")),
        "proxy.toml:8: upstreams.app.health.path: `healthz` must start with `/`"
    );
    assert_eq!(
        err(&h("kind = \"http\"\npath = \"/a b\"\n")),
        "proxy.toml:8: upstreams.app.health.path: `/a b` is not a request path (visible ASCII only, no spaces; percent-encode the rest)"
    );
    // A Host for backends that serve virtual hosts: a name or address, with a port or not.
    for host in [
        "app.internal",
        "app.internal:8080",
        "10.0.0.1:80",
        "[::1]:8080",
        "[::1]",
    ] {
        let c = ok(&h(&format!(
            "kind = \"http\"\npath = \"/healthz\"\nhost = \"{host}\"\n"
        )));
        let active = c.upstreams[0].health.active.clone().unwrap();
        assert_eq!(active.kind, CheckKind::http("/healthz", Some(host.into())));
    }
    for host in [
        "",
        "a b",
        "app:port",
        "::1",
        "[::1",
        "a/b",
        "app.internal\\r\\nX: y",
    ] {
        assert_eq!(
            err(&h(&format!(
                "kind = \"http\"\npath = \"/healthz\"\nhost = \"{host}\"\n"
            ))),
            format!(
                "proxy.toml:9: upstreams.app.health.host: invalid host `{}`",
                host.replace("\\r\\n", "\r\n")
            ),
            "{host}"
        );
    }
    assert_eq!(
        err(&h("kind = \"tcp\"\nhost = \"app.internal\"\n")),
        "proxy.toml:8: upstreams.app.health.host: only valid when kind = \"http\""
    );
    assert_eq!(
        err(&h("max_fails = 2\nfail_window = \"0s\"\n")),
        "proxy.toml:8: upstreams.app.health.fail_window: must be greater than 0"
    );
    // "none" (or no kind) disables active checks; max_fails = 0 disables passive ones.
    let c = ok(&h(
        "kind = \"none\"\npath = \"/x\"\nmax_fails = 0\nfail_window = \"0s\"\n",
    ));
    assert_eq!(c.upstreams[0].health.active, None);
    assert_eq!(c.upstreams[0].health.max_fails, 0);
    // A timeout longer than the interval is allowed, with a warning.
    let c = ok(&h("kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n"));
    assert_eq!(
        c.warnings,
        vec!["proxy.toml:9: upstreams.app.health.timeout: longer than the interval: checks of one backend will overlap"]
    );
}

#[test]
fn fail_open_is_read_and_checked() {
    let h = |body: &str| format!("{MINIMAL}[upstreams.app.health]\n{body}");
    let c = ok(&h("kind = \"tcp\"\nfail_open = true\n"));
    assert!(c.upstreams[0].health.fail_open);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(!ok(MINIMAL).upstreams[0].health.fail_open);
    assert_eq!(
        err(&h("kind = \"tcp\"\nfail_open = \"yes\"\n")),
        "proxy.toml:8: upstreams.app.health.fail_open: invalid type: string \"yes\", expected a boolean"
    );
}

#[test]
fn http_check_fields_and_expectations_are_parsed() {
    let h = |body: &str| {
        format!("{MINIMAL}[upstreams.app.health]\nkind = \"http\"\npath = \"/healthz\"\n{body}")
    };
    // The defaults: no extra fields, any 2xx or 3xx, the body unread.
    let c = ok(&h(""));
    let active = c.upstreams[0].health.active.clone().unwrap();
    assert_eq!(active.kind, CheckKind::http("/healthz", None));
    let CheckKind::Http {
        headers,
        expect_status,
        expect_body,
        ..
    } = active.kind
    else {
        panic!("not an http check");
    };
    assert!(headers.is_empty());
    assert_eq!(expect_status, StatusSet::default());
    assert!(expect_status.contains(204) && expect_status.contains(302));
    assert!(!expect_status.contains(404));
    assert_eq!(expect_body, None);
    assert!(c
        .summary()
        .contains("active check: http GET /healthz every 2s"));

    let c = ok(&h(concat!(
        "host = \"chat.internal\"\n",
        "headers = { \"X-Health-Token\" = \"s3cret\", \"User-Agent\" = \"switchyard-check\", X-Note = \"a b\" }\n",
        "expect_status = [200, \"3xx\"]\n",
        "expect_body = \"OK\"\n",
    )));
    let CheckKind::Http {
        headers,
        expect_status,
        expect_body,
        ..
    } = c.upstreams[0].health.active.clone().unwrap().kind
    else {
        panic!("not an http check");
    };
    assert_eq!(
        headers,
        [
            ("User-Agent", "switchyard-check"),
            ("X-Health-Token", "s3cret"),
            ("X-Note", "a b"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert!(expect_status.contains(200) && expect_status.contains(308));
    assert!(!expect_status.contains(204));
    assert_eq!(expect_body.as_deref(), Some("OK"));
    // Field names, never their values (a token).
    let summary = c.summary();
    assert!(
        summary.contains(
            "active check: http GET /healthz (Host: chat.internal; sends User-Agent, X-Health-Token, X-Note; expects 200, 3xx; body contains \"OK\") every 2s"
        ),
        "{summary}"
    );
    assert!(!summary.contains("s3cret"));
    // One status on its own, and a class in either case.
    for (v, passes, fails) in [
        ("204", 204, 200),
        ("\"5XX\"", 503, 200),
        ("[\"200\"]", 200, 201),
    ] {
        let c = ok(&h(&format!("expect_status = {v}\n")));
        let Some(ActiveCheck {
            kind: CheckKind::Http { expect_status, .. },
            ..
        }) = &c.upstreams[0].health.active
        else {
            panic!("not an http check");
        };
        assert!(
            expect_status.contains(passes) && !expect_status.contains(fails),
            "{v}"
        );
    }
}

#[test]
fn http_check_fields_and_expectations_are_checked() {
    let h = |body: &str| {
        format!("{MINIMAL}[upstreams.app.health]\nkind = \"http\"\npath = \"/healthz\"\n{body}")
    };
    let framing = "cannot be set here: it describes the connection or the body's framing";
    let value = "invalid value: visible text and spaces, no CR, LF, NUL";
    let mut cases: Vec<(String, String)> = [
        (r#""X Bad" = "v""#, "`X Bad` is not a field name"),
        (r#"":authority" = "v""#, "`:authority` is not a field name"),
        (r#"X-A = "a\r\nX-B: b""#, value),
        (r#"X-A = "a\u0000b""#, value),
        (r#"X-A = " padded""#, value),
        (
            r#"Host = "api.internal""#,
            "`Host` cannot be set here: the check's Host is set by `host` in this table",
        ),
        (
            r#"X-A = "a", host = "b""#,
            "`host` cannot be set here: the check's Host is set by `host` in this table",
        ),
        (
            r#"X-Env = "a", x_env = "b""#,
            "upstreams.app.health.headers.x_env: `x_env` names the same field as `X-Env`",
        ),
    ]
    .iter()
    .map(|(f, w)| ((*f).to_owned(), (*w).to_owned()))
    .collect();
    for name in [
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "content_length",
    ] {
        cases.push((format!("{name} = \"x\""), format!("`{name}` {framing}")));
    }
    for (fields, why) in cases {
        let e = err(&h(&format!("headers = {{ {fields} }}\n")));
        assert!(
            e.starts_with("proxy.toml:9: upstreams.app.health.headers.") && e.contains(&why),
            "{fields}: {e}"
        );
    }
    // Each `expect_status` entry on its own line, with its index.
    assert_eq!(
        errs(&h("expect_status = [\n  200,\n  600,\n  \"2xy\",\n  true,\n]\n")),
        vec![
            "proxy.toml:11: upstreams.app.health.expect_status[1]: `600` is not a status: a code from 100 to 599, or a class such as \"2xx\"",
            "proxy.toml:12: upstreams.app.health.expect_status[2]: `\"2xy\"` is not a status: a code from 100 to 599, or a class such as \"2xx\"",
            "proxy.toml:13: upstreams.app.health.expect_status[3]: `true` is not a status: a code from 100 to 599, or a class such as \"2xx\"",
        ]
    );
    for (v, shown) in [
        ("99", "99"),
        ("\"6xx\"", "\"6xx\""),
        ("\"2xy\"", "\"2xy\""),
        ("true", "true"),
        ("[200, \"ok\"]", "\"ok\""),
    ] {
        let e = err(&h(&format!("expect_status = {v}\n")));
        let at = if v.starts_with('[') { "[1]" } else { "" };
        assert_eq!(
            e,
            format!("proxy.toml:9: upstreams.app.health.expect_status{at}: `{shown}` is not a status: a code from 100 to 599, or a class such as \"2xx\""),
        );
    }
    assert_eq!(
        err(&h("expect_status = []\n")),
        "proxy.toml:9: upstreams.app.health.expect_status: no status would pass: list at least one, e.g. [200] (default: any 2xx or 3xx)"
    );
    for body in [String::new(), "x".repeat(1025)] {
        assert_eq!(
            err(&h(&format!("expect_body = \"{body}\"\n"))),
            "proxy.toml:9: upstreams.app.health.expect_body: must be 1 to 1024 bytes"
        );
    }
    // Meaningless for a tcp check.
    assert_eq!(
        errs(&format!(
            "{MINIMAL}[upstreams.app.health]\nkind = \"tcp\"\nheaders = {{ X-A = \"b\" }}\nexpect_status = [200]\nexpect_body = \"OK\"\n"
        )),
        vec![
            "proxy.toml:8: upstreams.app.health.headers: only valid when kind = \"http\"",
            "proxy.toml:9: upstreams.app.health.expect_status: only valid when kind = \"http\"",
            "proxy.toml:10: upstreams.app.health.expect_body: only valid when kind = \"http\"",
        ]
    );
}

#[test]
fn trusted_proxies_are_cidrs_or_ips() {
    let text = format!(
        "{MINIMAL}strategy = \"ip_hash\"\n[upstreams.app.ip_hash]\ntrusted_proxies = [\n  \"10.0.0.0/8\",\n  \"192.168.1.7\",\n  \"::1\",\n  \"10.0.0.0/40\",\n  \"proxy.local\",\n]\n"
    );
    assert_eq!(
        errs(&text),
        vec![
            "proxy.toml:12: upstreams.app.ip_hash.trusted_proxies[3]: invalid network `10.0.0.0/40`: expected an address and a prefix length, e.g. 10.0.0.0/8",
            "proxy.toml:13: upstreams.app.ip_hash.trusted_proxies[4]: invalid network `proxy.local`: expected an IP address or a CIDR, e.g. 10.0.0.0/8",
        ]
    );
    let text = format!(
        "{MINIMAL}strategy = \"ip_hash\"\n[upstreams.app.ip_hash]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"::1\"]\n"
    );
    let c = ok(&text);
    let nets: Vec<String> = c.upstreams[0]
        .ip_hash
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, vec!["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
}

#[test]
fn real_ip_from_is_cidrs_or_ips() {
    let text = format!("[server]\nreal_ip_from = [\"10.0.0.0/8\", \"alb.internal\"]\n{MINIMAL}");
    assert_eq!(
        errs(&text),
        vec!["proxy.toml:2: server.real_ip_from[1]: invalid network `alb.internal`: expected an IP address or a CIDR, e.g. 10.0.0.0/8"]
    );
    let c = ok(&format!(
        "[server]\nreal_ip_from = [\"10.0.0.0/8\", \"::1\"]\n{MINIMAL}"
    ));
    let nets: Vec<String> = c
        .server
        .real_ip_from
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, vec!["10.0.0.0/8", "::1/128"]);
    assert!(ok(MINIMAL).server.real_ip_from.is_empty());
}

#[test]
fn access_log_path() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s.log");
    let with = |path: &std::path::Path, enabled: bool| {
        format!(
            "{MINIMAL}[access_log]\nenabled = {enabled}\nformat = \"combined\"\npath = \"{}\"\n",
            path.display()
        )
    };
    let c = ok(&with(&log, true));
    assert_eq!(
        c.access_log,
        AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::Combined,
            path: Some(log.clone())
        }
    );
    assert!(!log.exists(), "checking the path creates nothing");
    // What the proxy could not open is found by the check too, with its line.
    let missing = dir.path().join("no-such-dir").join("s.log");
    assert_eq!(
        err(&with(&missing, true)),
        format!(
            "proxy.toml:9: access_log.path: cannot open {} for appending: no directory {}",
            missing.display(),
            dir.path().join("no-such-dir").display()
        )
    );
    assert_eq!(
        err(&with(dir.path(), true)),
        format!(
            "proxy.toml:9: access_log.path: cannot open {} for appending: it is a directory",
            dir.path().display()
        )
    );
    // A log that is off is not opened, so its path is not checked.
    assert!(!ok(&with(&missing, false)).access_log.enabled);
    assert_eq!(
        err(&format!("{MINIMAL}[access_log]\npath = \"\"\n")),
        "proxy.toml:7: access_log.path: must not be empty (use \"-\" for stdout)"
    );
}

#[test]
fn timeouts_and_limits() {
    assert_eq!(
        err(&format!("[timeouts]\ntunnel_idle = \"500ms\"\n{MINIMAL}")),
        "proxy.toml:2: timeouts.tunnel_idle: must be at least 1s"
    );
    assert_eq!(
        err(&format!("[timeouts]\nconnect = \"0s\"\n{MINIMAL}")),
        "proxy.toml:2: timeouts.connect: must be greater than 0"
    );
    let c = ok(&format!(
        "[timeouts]\ntunnel_idle = \"1s\"\ndownstream_keepalive = \"0s\"\n[limits]\nmax_connections = 0\nmax_connections_per_ip = 10\nrequests_per_second_per_ip = 5\nmax_request_header_bytes = 0\nmax_request_body_bytes = 0\nheader_read_timeout = \"0s\"\n{MINIMAL}"
    ));
    assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(1));
    assert_eq!(c.timeouts.downstream_keepalive, Duration::ZERO);
    assert_eq!(
        c.limits,
        Limits {
            max_connections: None,
            max_connections_per_ip: Some(10),
            requests_per_second_per_ip: Some(5),
            max_request_header_bytes: None,
            max_request_body_bytes: None,
            header_read_timeout: None,
        }
    );
    assert_eq!(
        err(&format!("[server]\nthreads = 0\n{MINIMAL}")),
        "proxy.toml:2: server.threads: must be at least 1"
    );
    assert_eq!(
        err(&format!("[server]\nthreads = 100000\n{MINIMAL}")),
        "proxy.toml:2: server.threads: must be at most 1024"
    );
}

#[test]
fn no_listener() {
    assert_eq!(
        err("[upstreams.app]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n"),
        "proxy.toml: listeners: no listener configured: add a [[listeners]] table"
    );
}

#[test]
fn routes_required_unless_one_upstream() {
    let two = format!("{MINIMAL}[upstreams.other]\nbackends = [{{ addr = \"127.0.0.1:9002\" }}]\n");
    assert_eq!(
        err(&two),
        "proxy.toml: routes: no route: add [[routes]] (a default route `/` is implied only when [[routes]] is absent and there is exactly one upstream)"
    );
    assert!(err(&format!("routes = []\n{MINIMAL}")).starts_with("proxy.toml:1: routes: no route"));
    assert_eq!(
        err("[[listeners]]\nlisten = \"127.0.0.1:8080\"\n"),
        "proxy.toml: upstreams: no upstream defined"
    );

    // Routes: host lowercased, prefixes checked, unused upstreams reported.
    let c = ok(&format!(
        "{two}[[routes]]\nhost = \"API.Example.com\"\npath_prefix = \"/api\"\nupstream = \"app\"\n"
    ));
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(c.routes[0].path_prefix, "/api");
    assert_eq!(
        c.warnings,
        vec!["proxy.toml:6: upstreams.other: no route uses this upstream"]
    );
    // A route an earlier one always takes first is reported; a narrower one listed before a
    // wider one, or one for another host, is fine.
    let route = |host: &str, prefix: &str| {
        let host = if host.is_empty() {
            String::new()
        } else {
            format!("host = \"{host}\"\n")
        };
        format!("[[routes]]\n{host}path_prefix = \"{prefix}\"\nupstream = \"app\"\n")
    };
    let c = ok(&format!(
        "{MINIMAL}{}{}{}{}{}",
        route("", "/api/"),
        route("a.test", "/"),
        route("", "/"),
        route("", "/api/v2/"),
        route("b.test", "/x")
    ));
    assert_eq!(
        c.warnings,
        vec![
            "proxy.toml:16: routes[3]: never used: routes[0] comes first and takes every request it would match",
            "proxy.toml:19: routes[4]: never used: routes[2] comes first and takes every request it would match",
        ]
    );
    assert_eq!(
        errs(&format!(
            "{MINIMAL}[[routes]]\nhost = \"a b\"\npath_prefix = \"api\"\nupstream = \"app\"\n"
        )),
        vec![
            "proxy.toml:7: routes[0].host: invalid host `a b`",
            "proxy.toml:8: routes[0].path_prefix: `api` must start with `/`",
        ]
    );
}

#[test]
fn route_request_headers_are_parsed() {
    let c = ok(&format!(
        "{MINIMAL}[[routes]]\nupstream = \"app\"\n\
         request_headers = {{ \"X-Env\" = \"prod\", \"Host\" = \"api.internal:8443\", \"X-Debug\" = \"\", X-Note = \"a b\\tc\" }}\n"
    ));
    // In name order (a TOML table's keys have none of their own); "" removes.
    assert_eq!(
        c.routes[0].request_headers,
        [
            ("Host", "api.internal:8443"),
            ("X-Debug", ""),
            ("X-Env", "prod"),
            ("X-Note", "a b\tc"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert!(
        c.summary()
            .contains("*/ -> app (sets Host, X-Env, X-Note; removes X-Debug)"),
        "{}",
        c.summary()
    );
    // Without `[server] request_id` the proxy leaves X-Request-Id to the client: a route
    // may remove it or set it.
    let c = ok(&format!(
        "{MINIMAL}[[routes]]\nupstream = \"app\"\nrequest_headers = {{ X-Request-Id = \"\" }}\n"
    ));
    assert_eq!(c.routes[0].request_headers.len(), 1);
    assert!(
        c.summary().contains("*/ -> app (removes X-Request-Id)"),
        "{}",
        c.summary()
    );
    assert!(ok(MINIMAL).routes[0].request_headers.is_empty());
}

#[test]
fn route_request_headers_are_checked() {
    let with = |server: &str, fields: &str| {
        format!(
            "{server}{MINIMAL}[[routes]]\nupstream = \"app\"\nrequest_headers = {{ {fields} }}\n"
        )
    };
    let framing = "cannot be set here: it describes the connection or the body's framing";
    let forwarded =
        "cannot be set here: the proxy sets X-Forwarded-For, -Proto, -Host, -Prefix and X-Real-IP";
    let value = "invalid value: visible text and spaces, no CR, LF, NUL";
    let fixed = [
        (r#""X Bad" = "v""#, "`X Bad` is not a field name"),
        (r#""" = "v""#, "`` is not a field name"),
        (r#"":authority" = "v""#, "`:authority` is not a field name"),
        (r#"X-A = "a\r\nX-B: b""#, value),
        (r#"X-A = "a\nb""#, value),
        (r#"X-A = "a\u0000b""#, value),
        (r#"X-A = "a\u007fb""#, value),
        (r#"X-A = " padded""#, value),
        (r#"Host = "a b""#, "`a b` is not a valid Host"),
        (r#"Host = "a@b""#, "`a@b` is not a valid Host"),
        (r#"Host = "api:port""#, "`api:port` is not a valid Host"),
        (r#"Host = """#, "`` is not a valid Host"),
        (
            r#"X-Env = "a", x_env = "b""#,
            "routes[0].request_headers.x_env: `x_env` names the same field as `X-Env`",
        ),
    ];
    let mut cases: Vec<(String, &str)> = fixed.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect();
    for name in [
        "Connection",
        "keep-alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Transfer_Encoding",
        "Upgrade",
        "Content-Length",
        "content_length",
    ] {
        cases.push((format!("{name} = \"x\""), framing));
    }
    for name in [
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "x-forwarded-host",
        "X-Forwarded-Prefix",
        "X_Forwarded_Prefix",
        "X-Real-IP",
    ] {
        cases.push((format!("{name} = \"x\""), forwarded));
    }
    for (fields, why) in cases {
        let e = err(&with("", &fields));
        assert!(
            e.starts_with("proxy.toml:8: routes[0].request_headers.") && e.contains(why),
            "{fields}: {e}"
        );
    }
    // The proxy sets X-Request-Id itself when request ids are on, in either spelling.
    for name in ["X-Request-Id", "x_request_id"] {
        let e = err(&with(
            "[server]\nrequest_id = true\n",
            &format!("{name} = \"\""),
        ));
        assert!(
            e.starts_with("proxy.toml:10: routes[0].request_headers.")
                && e.contains(&format!(
                    "`{name}` cannot be set here: the proxy sets it, as `[server] request_id` is on"
                )),
            "{e}"
        );
    }
}

#[test]
fn prefix_rewrites_are_checked() {
    let route = |prefix: &str, rewrite: &str| {
        format!(
            "{MINIMAL}[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"app\"\nprefix_rewrite = \"{rewrite}\"\n"
        )
    };
    let c = load(&route("/api/", "/")).unwrap();
    assert_eq!(c.routes[0].prefix_rewrite.as_deref(), Some("/"));
    assert!(load(&route("/old", "/new")).is_ok());
    for (prefix, rewrite, why) in [
        (
            "/api/",
            "/v2",
            "must end with `/` exactly when path_prefix does",
        ),
        (
            "/api",
            "/",
            "must end with `/` exactly when path_prefix does",
        ),
        ("/api/", "v2/", "must start with `/`"),
        (
            "/api/",
            "/a b/",
            "holds a character a path cannot have unencoded",
        ),
        (
            "/api/",
            "/x?y/",
            "holds a character a path cannot have unencoded",
        ),
        (
            "/api/",
            "/%41/",
            "holds a character a path cannot have unencoded",
        ),
    ] {
        let e = errs(&route(prefix, rewrite));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!(
                "proxy.toml:9: routes[0].prefix_rewrite: `{rewrite}`: {why}"
            )),
            "{prefix} -> {rewrite}: {e:?}"
        );
    }
}

#[test]
fn slash_redirect_is_on_unless_turned_off() {
    let route = |extra: &str| {
        format!("{MINIMAL}[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n{extra}")
    };
    let on = load(&route("")).unwrap();
    assert!(on.routes[0].slash_redirect);
    assert!(!on.summary().contains("no slash redirect"));
    let off = load(&route("slash_redirect = false\n")).unwrap();
    assert!(!off.routes[0].slash_redirect);
    assert!(
        off.summary().contains("*/api/ -> app (no slash redirect)"),
        "{}",
        off.summary()
    );
    assert_eq!(
        errs(&route("slash_redirect = \"no\"\n")),
        vec!["proxy.toml:9: routes[0].slash_redirect: invalid type: string \"no\", expected a boolean"]
    );
}

#[test]
fn a_route_allow_list_is_read_and_checked() {
    let route = |allow: &str| {
        format!(
            "{MINIMAL}[[routes]]\npath_prefix = \"/admin/\"\nupstream = \"app\"\nallow = {allow}\n"
        )
    };
    let c = load(&route(r#"["10.1.2.3/8", "::1", "192.0.2.7"]"#)).unwrap();
    let nets: Vec<String> = c.routes[0]
        .allow
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
    assert!(
        c.summary()
            .contains("*/admin/ -> app (allow 10.0.0.0/8, ::1/128, 192.0.2.7/32)"),
        "{}",
        c.summary()
    );
    assert_eq!(
        errs(&route(r#"["10.0.0.0/8", "office"]"#)),
        vec!["proxy.toml:9: routes[0].allow[1]: invalid network `office`: expected an IP address or a CIDR, e.g. 10.0.0.0/8"]
    );
    assert_eq!(
        errs(&route("[]")),
        vec!["proxy.toml:9: routes[0].allow: an empty list lets no client use the route: list the addresses allowed, or remove the key to allow every client"]
    );
}

#[test]
fn all_semantic_errors_are_reported_in_file_order() {
    let text = r#"[admin]
listen = "127.0.0.1:8080"

[[listeners]]
listen = "127.0.0.1:8080"

[upstreams.a]
strategy = "sticky_cookie"
backends = [
  { addr = "127.0.0.1:1", weight = 0 },
  { addr = "127.0.0.1:1" },
]

[[routes]]
upstream = "b"
"#;
    let e = load(text).unwrap_err();
    assert_eq!(
        e.lines(),
        vec![
            "proxy.toml:2: admin.listen: conflicts with the proxy listener on 127.0.0.1:8080",
            "proxy.toml:7: upstreams.a.sticky: strategy sticky_cookie needs `key` or `key_env` in [upstreams.<name>.sticky]",
            "proxy.toml:10: upstreams.a.backends[0].weight: weight 0 is out of range (1 to 10000)",
            "proxy.toml:11: upstreams.a.backends[1].addr: duplicate backend address 127.0.0.1:1",
            "proxy.toml:15: routes[0].upstream: no upstream named `b`",
        ]
    );
    // Display is the same lines joined.
    assert_eq!(e.to_string(), e.lines().join("\n"));
    assert_eq!(e.errors()[4].line, Some(15));
    assert_eq!(e.errors()[4].key, "routes[0].upstream");
}

#[test]
fn upstreams_keep_file_order() {
    let c = ok("[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.zeta]\nbackends = [{ addr = \"127.0.0.1:2\" }]\n[upstreams.alpha]\nbackends = [{ addr = \"127.0.0.1:3\" }]\n[[routes]]\nupstream = \"zeta\"\n[[routes]]\nupstream = \"alpha\"\n");
    let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, vec!["zeta", "alpha"]);
}

#[test]
fn listener_response_headers() {
    let with = |fields: &str| {
        format!(
            "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8081\"\nresponse_headers = {{ {fields} }}\n"
        )
    };
    let c = ok(&with(
        r#""Strict-Transport-Security" = "max-age=63072000; includeSubDomains", X-Frame-Options = "DENY""#,
    ));
    assert_eq!(
        c.listeners[1].response_headers,
        vec![
            (
                "Strict-Transport-Security".to_owned(),
                "max-age=63072000; includeSubDomains".to_owned()
            ),
            ("X-Frame-Options".to_owned(), "DENY".to_owned()),
        ]
    );
    assert!(c.listeners[0].response_headers.is_empty());
    for (fields, why) in [
        (r#""X Bad" = "v""#, "`X Bad` is not a field name"),
        (
            r#""Content-Length" = "5""#,
            "`Content-Length` cannot be set here",
        ),
        (r#"Set-Cookie = "a=b""#, "`Set-Cookie` cannot be set here"),
        (r#"Connection = "close""#, "`Connection` cannot be set here"),
        (r#"X-A = "a\r\nX-B: b""#, "invalid value"),
        (r#"X-A = """#, "invalid value"),
        (r#"X-A = " padded""#, "invalid value"),
    ] {
        let e = err(&with(fields));
        assert!(
            e.starts_with("proxy.toml:8: listeners[1].response_headers.") && e.contains(why),
            "{fields}: {e}"
        );
    }
}

#[test]
fn sticky_upstreams_sharing_a_cookie_name_are_warned_about() {
    let upstream = |name: &str, port: u16, cookie: &str| {
        format!(
            "[upstreams.{name}]\nstrategy = \"sticky_cookie\"\n\
             backends = [{{ addr = \"127.0.0.1:{port}\" }}]\n\
             [upstreams.{name}.sticky]\nkey = \"0123456789abcdef\"\n{cookie}"
        )
    };
    let listener = "[[listeners]]\nlisten = \"127.0.0.1:8080\"\n\
                    [[routes]]\npath_prefix = \"/a/\"\nupstream = \"a\"\n\
                    [[routes]]\npath_prefix = \"/\"\nupstream = \"b\"\n";
    // Both on the default name.
    let text = format!(
        "{listener}{}{}",
        upstream("a", 9001, ""),
        upstream("b", 9002, "")
    );
    let c = ok(&text);
    let line = line_of(&text, "[upstreams.b.sticky]");
    assert_eq!(
        c.warnings,
        vec![format!(
            "proxy.toml:{line}: upstreams.b.sticky: cookie `syd_route` is upstream a's too: if \
             both serve one host, each overwrites the other's and a client moving between them \
             sticks to neither; give each its own `cookie`"
        )]
    );
    // Names of their own: nothing to say.
    let c = ok(&format!(
        "{listener}{}{}",
        upstream("a", 9001, "cookie = \"a_route\"\n"),
        upstream("b", 9002, "cookie = \"b_route\"\n")
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn proxy_protocol_on_a_listener() {
    let text = "[[listeners]]\nlisten = \"127.0.0.1:8080\"\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"lb.local\"]\n\n[upstreams.app]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n";
    assert_eq!(
        errs(text),
        vec![
            "proxy.toml:4: listeners[0].proxy_protocol_from[1]: invalid network `lb.local`: expected an IP address or a CIDR, e.g. 10.0.0.0/8"
        ]
    );
    let c = ok(&text.replace(", \"lb.local\"", ", \"192.0.2.7\""));
    let from: Vec<String> = c.listeners[0]
        .proxy_protocol
        .as_ref()
        .unwrap()
        .from
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(from, vec!["10.0.0.0/8", "192.0.2.7/32"]);
    assert!(ok(MINIMAL).listeners[0].proxy_protocol.is_none());
    // A list of load balancers without the header would trust nobody's header.
    assert_eq!(
        errs(&text.replace("proxy_protocol = true\n", "").replace(", \"lb.local\"", "")),
        vec![
            "proxy.toml:3: listeners[0].proxy_protocol_from: only valid with `proxy_protocol = true` on this listener"
        ]
    );
}

#[test]
fn an_upstream_has_its_own_timeouts_or_the_global_ones() {
    let text = r#"[timeouts]
connect = "3s"
upstream_read = "45s"

[[listeners]]
listen = "127.0.0.1:8080"

[upstreams.api]
backends = [{ addr = "127.0.0.1:9001" }]
[upstreams.api.timeouts]
upstream_read = "5s"

[upstreams.chat]
backends = [{ addr = "127.0.0.1:9002" }]

[[routes]]
path_prefix = "/api/"
upstream = "api"
[[routes]]
path_prefix = "/"
upstream = "chat"
"#;
    let c = load(text).unwrap();
    let api = &c.upstreams[0].timeouts;
    assert_eq!(
        (api.connect, api.upstream_read, api.tunnel_idle),
        (
            Duration::from_secs(3),
            Duration::from_secs(5),
            Duration::from_secs(3600)
        )
    );
    assert_eq!(c.upstreams[1].timeouts, (&c.timeouts).into());
    let summary = c.summary();
    assert!(
        summary.contains("api  strategy round_robin  timeouts: connect 3s, upstream read 5s"),
        "{summary}"
    );
    assert!(
        !summary.contains("chat  strategy round_robin  timeouts"),
        "{summary}"
    );

    assert_eq!(
        errs(&format!(
            "{MINIMAL}[upstreams.app.timeouts]\nconnect = \"0s\"\ntunnel_idle = \"500ms\"\n"
        )),
        vec![
            "proxy.toml:7: upstreams.app.timeouts.connect: must be greater than 0",
            "proxy.toml:8: upstreams.app.timeouts.tunnel_idle: must be at least 1s",
        ]
    );
    // The client side's timeouts are the whole proxy's.
    let e = errs(&format!(
        "{MINIMAL}[upstreams.app.timeouts]\ndownstream_keepalive = \"5s\"\n"
    ));
    assert!(
        e[0].starts_with("proxy.toml:7: upstreams.app.timeouts.downstream_keepalive: unknown key"),
        "{e:?}"
    );
}

/// Loads `text` with names answered by `resolver`.
fn load_with(text: &str, resolver: &dyn Resolver) -> Result<Config, ConfigErrors> {
    parse_with(text, Some(Path::new("proxy.toml")), &env, resolver)
}

/// A listener and upstream `a` over `backends` (TOML array entries), then `extra` keys of
/// `[upstreams.a]`.
fn named(backends: &[&str], extra: &str) -> String {
    format!(
        "[[listeners]]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\n{extra}backends = [\n{}\n]\n",
        backends
            .iter()
            .map(|b| format!("  {b},"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

#[test]
fn a_name_with_several_addresses_is_one_backend_per_address() {
    let r = dns::TableResolver::new(&[
        ("node", &["10.0.0.2", "10.0.0.1", "10.0.0.2", "fd00::1"]),
        ("one", &["10.0.0.9"]),
    ]);
    let text = named(
        &[
            "{ addr = \"node:9000\", weight = 3 }",
            "{ addr = \"node:9001\", id = \"api\", backup = true }",
            "{ addr = \"one:80\", id = \"solo\" }",
            "{ addr = \"127.0.0.1:80\" }",
        ],
        "",
    );
    let c = load_with(&text, &*r).unwrap();
    let u = c.upstream("a").unwrap();
    let got: Vec<_> = u
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.id.clone(), b.weight, b.backup))
        .collect();
    let d = |s: &str| derived_id(addr(s));
    assert_eq!(
        got,
        vec![
            // Sorted, duplicates dropped, each address its own derived id.
            ("10.0.0.1:9000".into(), d("10.0.0.1:9000"), 3, false),
            ("10.0.0.2:9000".into(), d("10.0.0.2:9000"), 3, false),
            ("[fd00::1]:9000".into(), d("[fd00::1]:9000"), 3, false),
            // An explicit id takes each address's derived id as a suffix.
            (
                "10.0.0.1:9001".into(),
                format!("api-{}", d("10.0.0.1:9001")),
                1,
                true
            ),
            (
                "10.0.0.2:9001".into(),
                format!("api-{}", d("10.0.0.2:9001")),
                1,
                true
            ),
            (
                "[fd00::1]:9001".into(),
                format!("api-{}", d("[fd00::1]:9001")),
                1,
                true
            ),
            // One address: the id as written.
            ("10.0.0.9:80".into(), "solo".into(), 1, false),
            ("127.0.0.1:80".into(), d("127.0.0.1:80"), 1, false),
        ]
    );
    let origin = u.backends[0].dns.as_ref().unwrap();
    assert_eq!((origin.host.as_str(), origin.entry), ("node", 0));
    assert!(u.backends[7].dns.is_none());
    // On by default.
    assert_eq!(u.dns, DnsSettings::default());
    assert_eq!(u.dns.refresh, Some(Duration::from_secs(30)));

    // dns_family keeps one family; dns_refresh = 0 turns refreshing off.
    let text = named(
        &["{ addr = \"node:9000\" }"],
        "dns_family = \"ipv6\"\ndns_refresh = \"0s\"\n",
    );
    let c = load_with(&text, &*r).unwrap();
    let u = c.upstream("a").unwrap();
    assert_eq!(u.backends.len(), 1);
    assert_eq!(u.backends[0].addr, addr("[fd00::1]:9000"));
    assert_eq!(u.dns.refresh, None);
    assert!(
        c.summary().contains("dns refresh off  dns family ipv6"),
        "{}",
        c.summary()
    );
    let c = load_with(
        &named(&["{ addr = \"node:9000\" }"], "dns_family = \"ipv4\"\n"),
        &*r,
    )
    .unwrap();
    assert_eq!(c.upstreams[0].backends.len(), 2);
}

/// Answers every lookup with its time running out, to show the bound it was given.
#[derive(Debug)]
struct Unanswering;

impl Resolver for Unanswering {
    fn lookup(
        &self,
        _host: &str,
        _port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, dns::ResolveError> {
        Err(dns::ResolveError::TimedOut(timeout))
    }
}

#[test]
fn dns_timeout_bounds_each_lookup_and_must_be_positive() {
    let r = dns::TableResolver::new(&[("node", &["10.0.0.1"])]);
    let entry = ["{ addr = \"node:9000\" }"];
    let c = load_with(&named(&entry, ""), &*r).unwrap();
    assert_eq!(c.upstreams[0].dns.timeout, Duration::from_secs(5));
    assert!(!c.summary().contains("dns timeout"), "{}", c.summary());
    let c = load_with(&named(&entry, "dns_timeout = \"1500ms\"\n"), &*r).unwrap();
    assert_eq!(c.upstreams[0].dns.timeout, Duration::from_millis(1500));
    assert!(
        c.summary().contains("dns timeout 1s 500ms"),
        "{}",
        c.summary()
    );

    // The upstream's timeout is the lookup's.
    let e = load_with(&named(&entry, "dns_timeout = \"2s\"\n"), &Unanswering)
        .unwrap_err()
        .lines();
    assert_eq!(
        e,
        ["proxy.toml:6: upstreams.a.backends[0].addr: cannot resolve `node:9000`: no answer from the resolver within 2s"]
    );

    let e = load_with(&named(&entry, "dns_timeout = \"0s\"\n"), &*r)
        .unwrap_err()
        .lines();
    assert_eq!(
        e,
        ["proxy.toml:4: upstreams.a.dns_timeout: must be greater than 0"]
    );
}

#[test]
fn a_name_and_its_address_written_out_get_the_same_id() {
    // The system resolver: /etc/hosts gives localhost 127.0.0.1 (and maybe ::1).
    let c = ok(&named(
        &["{ addr = \"localhost:9001\" }"],
        "dns_family = \"ipv4\"\n",
    ));
    let b = &c.upstreams[0].backends;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].addr, addr("127.0.0.1:9001"));
    assert_eq!(b[0].id, derived_id(addr("127.0.0.1:9001")));
    // The summary shows the name and the address it resolved to.
    let summary = c.summary();
    assert!(
        summary.contains(&format!(
            "    localhost:9001 (127.0.0.1:9001)  weight 1      id {}",
            b[0].id
        )),
        "{summary}"
    );
    assert!(
        summary.contains("strategy round_robin  dns refresh 30s"),
        "{summary}"
    );
}

#[test]
fn an_unresolvable_name_is_an_error_with_file_line_and_key() {
    let text = named(
        &[
            "{ addr = \"127.0.0.1:9001\" }",
            "{ addr = \"nonexistent.invalid:80\" }",
        ],
        "",
    );
    let e = err(&text);
    assert!(
        e.starts_with(
            "proxy.toml:6: upstreams.a.backends[1].addr: cannot resolve `nonexistent.invalid:80`: "
        ),
        "{e}"
    );
    // The resolver's reason follows.
    assert!(e.len() > "proxy.toml:6: upstreams.a.backends[1].addr: cannot resolve `nonexistent.invalid:80`: ".len(), "{e}");
    // Its only backend unresolvable: that error alone, not also "no primary backend".
    let e = err(&named(&["{ addr = \"nonexistent.invalid:80\" }"], ""));
    assert!(e.contains("backends[0].addr: cannot resolve"), "{e}");

    // A name whose addresses are all of the other family.
    let r = dns::TableResolver::new(&[("v4only", &["10.0.0.1"])]);
    let e = load_with(
        &named(&["{ addr = \"v4only:80\" }"], "dns_family = \"ipv6\"\n"),
        &*r,
    )
    .unwrap_err()
    .lines();
    assert_eq!(
        e,
        ["proxy.toml:6: upstreams.a.backends[0].addr: `v4only:80` has no IPv6 address (dns_family = \"ipv6\"), only 10.0.0.1:80"]
    );
}

#[test]
fn backend_addresses_are_host_port_or_ip_port() {
    for (bad, line) in [
        ("node1", 5),
        ("node1:0", 5),
        ("10.0.0.1:0", 5),
        ("[::1]", 5),
        ("10.0.0.300:80", 5),
    ] {
        let e = err(&named(&[&format!("{{ addr = \"{bad}\" }}")], ""));
        assert_eq!(
            e,
            format!(
                "proxy.toml:{line}: upstreams.a.backends[0].addr: invalid address `{bad}` (expected host:port or ip:port, e.g. node1:9001, 127.0.0.1:9001 or [::1]:9001)"
            )
        );
    }
    // [v6]:port as before.
    let c = ok(&named(&["{ addr = \"[::1]:80\" }"], ""));
    assert_eq!(c.upstreams[0].backends[0].addr, addr("[::1]:80"));
    assert!(c.upstreams[0].backends[0].dns.is_none());
    // Listeners stay addresses.
    let e = err("[[listeners]]\nlisten = \"localhost:80\"\n[upstreams.a]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n");
    assert!(
        e.starts_with("proxy.toml:2: listeners[0].listen: invalid address"),
        "{e}"
    );
}

#[test]
fn a_name_giving_an_address_listed_too_is_a_duplicate() {
    let r = dns::TableResolver::new(&[("node", &["10.0.0.1", "10.0.0.2"])]);
    let e = load_with(
        &named(
            &["{ addr = \"10.0.0.2:80\" }", "{ addr = \"node:80\" }"],
            "",
        ),
        &*r,
    )
    .unwrap_err()
    .lines();
    assert_eq!(
        e,
        ["proxy.toml:6: upstreams.a.backends[1].addr: duplicate backend address 10.0.0.2:80"]
    );
    // An id too long to take an address's suffix.
    let long = "x".repeat(60);
    let e = load_with(
        &named(&[&format!("{{ addr = \"node:80\", id = \"{long}\" }}")], ""),
        &*r,
    )
    .unwrap_err()
    .lines();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("proxy.toml:5: upstreams.a.backends[0].id: invalid backend id `xxxx"),
        "{e:?}"
    );
}

#[test]
fn a_refresh_replaces_the_addresses_of_a_name_that_changed() {
    let r = dns::TableResolver::new(&[
        ("node", &["10.0.0.1", "10.0.0.2"]),
        ("other", &["10.0.1.1"]),
    ]);
    let text = named(
        &[
            "{ addr = \"127.0.0.1:80\" }",
            "{ addr = \"node:80\", weight = 4, id = \"n\" }",
            "{ addr = \"other:80\", backup = true }",
        ],
        "",
    );
    let c = load_with(&text, &*r).unwrap();
    let u = c.upstreams[0].clone();
    // Nothing changed: nothing to do.
    assert_eq!(refresh(&u, &*r), (None, Vec::new()));

    r.set("node", &["10.0.0.3", "10.0.0.2"]);
    let (new, errors) = refresh(&u, &*r);
    assert!(errors.is_empty(), "{errors:?}");
    let new = new.unwrap();
    assert_eq!(
        new.changes,
        [NameChange {
            name: "node:80".into(),
            added: vec![addr("10.0.0.3:80")],
            removed: vec![addr("10.0.0.1:80")],
        }]
    );
    // Exactly what a load of the file would now give.
    let reloaded = load_with(&text, &*r).unwrap();
    assert_eq!(new.backends, reloaded.upstreams[0].backends);
    assert_eq!(
        new.backends[2].id,
        format!("n-{}", derived_id(addr("10.0.0.3:80")))
    );
    assert_eq!(new.backends[2].weight, 4);

    // A name that stops resolving keeps its addresses; the others are refreshed.
    let u = reloaded.upstreams[0].clone();
    r.set("node", &[]);
    r.set("other", &["10.0.1.2"]);
    let (new, errors) = refresh(&u, &*r);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .starts_with("cannot resolve `node:80`: "),
        "{errors:?}"
    );
    let new = new.unwrap();
    assert_eq!(new.backends[..3], u.backends[..3]);
    assert_eq!(new.backends[3].addr, addr("10.0.1.2:80"));
    assert!(new.backends[3].backup);

    // A new address that another backend has: nothing changes.
    r.set("node", &["10.0.0.2", "10.0.0.3"]);
    r.set("other", &["127.0.0.1"]);
    let (new, errors) = refresh(&u, &*r);
    assert_eq!(new, None);
    assert!(
        matches!(&errors[..], [RefreshError::Clash(m)] if m.starts_with("127.0.0.1:80 would be")),
        "{errors:?}"
    );
}

/// A CA certificate (`ca.pem`) and a CRL it signed (`crl.pem`) in `certs`' directory.
fn ca_and_crl(certs: &Certs) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = params.self_signed(&key).unwrap();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2035, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &key)
    .unwrap();
    (
        certs.file("ca.pem", &ca.pem()),
        certs.file("crl.pem", &crl.pem().unwrap()),
    )
}

#[test]
fn client_certificates_are_checked_against_a_ca_file_and_optional_crls() {
    let certs = Certs::new();
    let (ca, crl) = ca_and_crl(&certs);
    let listener = |extra: &str| {
        format!(
            "{MINIMAL}[[listeners]]\nlisten = \"127.0.0.1:8443\"\ntls = {{ cert = \"{}\", key = \"{}\"{extra} }}\n",
            certs.cert().display(),
            certs.key().display()
        )
    };
    let c = ok(&listener(""));
    assert!(c.listeners[1].tls.as_ref().unwrap().client_auth.is_none());

    // Required unless told otherwise.
    let c = ok(&listener(&format!(", client_ca = \"{}\"", ca.display())));
    let auth = c.listeners[1]
        .tls
        .as_ref()
        .unwrap()
        .client_auth
        .clone()
        .unwrap();
    assert_eq!(auth.mode, ClientAuthMode::Required);
    assert_eq!(
        (auth.ca.path.as_path(), auth.ca.certs.len()),
        (ca.as_path(), 1)
    );
    assert!(auth.crls.is_none());
    let c = ok(&listener(&format!(
        ", client_ca = \"{}\", client_auth = \"optional\", client_crl = \"{}\"",
        ca.display(),
        crl.display()
    )));
    let auth = c.listeners[1]
        .tls
        .as_ref()
        .unwrap()
        .client_auth
        .clone()
        .unwrap();
    assert_eq!(auth.mode, ClientAuthMode::Optional);
    assert_eq!(auth.crls.unwrap().crls.len(), 1);

    // Without client_ca, the other two mean nothing.
    assert_eq!(
        errs(&listener(&format!(
            ", client_auth = \"required\", client_crl = \"{}\"",
            crl.display()
        ))),
        [
            "proxy.toml:8: listeners[1].tls.client_auth: only valid with `client_ca` (the CA file client certificates are checked against)",
            "proxy.toml:8: listeners[1].tls.client_crl: only valid with `client_ca` (the CA file client certificates are checked against)",
        ]
    );
    let e = err(&listener(&format!(
        ", client_ca = \"{}\", client_auth = \"sometimes\"",
        ca.display()
    )));
    assert!(
        e.starts_with("proxy.toml:8: listeners[1].tls.client_auth: unknown variant `sometimes`, expected `required` or `optional`"),
        "{e}"
    );

    // Files that are missing or do not hold what they should.
    let missing = certs.dir.path().join("missing.pem");
    let e = err(&listener(&format!(
        ", client_ca = \"{}\"",
        missing.display()
    )));
    assert!(
        e.starts_with(&format!(
            "proxy.toml:8: listeners[1].tls.client_ca: {}: cannot read: ",
            missing.display()
        )),
        "{e}"
    );
    assert_eq!(
        err(&listener(&format!(
            ", client_ca = \"{}\"",
            certs.key().display()
        ))),
        format!(
            "proxy.toml:8: listeners[1].tls.client_ca: {}: no PEM certificate found",
            certs.key().display()
        )
    );
    assert_eq!(
        err(&listener(&format!(
            ", client_ca = \"{}\", client_crl = \"{}\"",
            ca.display(),
            ca.display()
        ))),
        format!(
            "proxy.toml:8: listeners[1].tls.client_crl: {}: no PEM certificate revocation list (X509 CRL) found",
            ca.display()
        )
    );
    // Base64 that is no CRL.
    let bad = certs.file(
        "bad-crl.pem",
        "-----BEGIN X509 CRL-----\nAAECAwQF\n-----END X509 CRL-----\n",
    );
    let e = err(&listener(&format!(
        ", client_ca = \"{}\", client_crl = \"{}\"",
        ca.display(),
        bad.display()
    )));
    assert!(
        e.starts_with(&format!(
            "proxy.toml:8: listeners[1].tls.client_crl: {}: invalid certificate revocation list: ",
            bad.display()
        )),
        "{e}"
    );
    // Both files wrong: both reported.
    let e = errs(&listener(&format!(
        ", client_ca = \"{}\", client_crl = \"{}\"",
        missing.display(),
        ca.display()
    )));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].contains("tls.client_ca: ") && e[1].contains("tls.client_crl: "),
        "{e:#?}"
    );
}

//! Backends named by host (`addr = "localhost:PORT"`) through the system resolver, end to
//! end: requests are served, `proxy check` and a start refuse a name that does not resolve
//! (`.invalid` never does, RFC 6761) with file, line and key, and a reload naming one is
//! rejected while the proxy goes on serving. `dns_refresh` is tested with a proxy that has
//! an `/etc/hosts` of its own (a bind mount in a private mount namespace), which the test
//! rewrites to move a name; the proxy's unit tests cover the same through a resolver they
//! control. Quick mode's `--dns-family` is tested here too.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use tests::admin::{admin_get, admin_post};
use tests::fixtures::{admin, listener, ONE_THREAD};
use tests::http::backend_counts;
use tests::ws::{ws_connect, ws_echo};
use tests::{client, free_port, get, wait_until, Backend, Exited, Proxy, ProxyCmd};

/// A config whose upstream `app` has one backend, `addr` (`localhost:9001`), kept to IPv4
/// so that a `::1` that /etc/hosts may also give `localhost` (where the echo backend does
/// not listen) is not a second backend. One worker thread: the proxy then runs
/// current-thread runtimes, where blocking the admin API's or the signal handler's thread
/// with a lookup (or `block_in_place`) would show.
fn config(listen: u16, admin_port: u16, addr: &str) -> String {
    format!(
        "{ONE_THREAD}{}{}\n[upstreams.app]\ndns_family = \"ipv4\"\nbackends = [\n  {{ addr = \"{addr}\" }},\n]\n",
        admin(admin_port, "t"),
        listener(listen),
    )
}

/// The line of `upstreams.app.backends[0].addr` in [`config`]'s text.
fn addr_line(toml: &str) -> usize {
    toml.lines().position(|l| l.contains("addr =")).unwrap() + 1
}

/// Exit code 1, no panic, and a stderr line holding `want` after the harness's directory.
fn assert_refused(out: &Exited, want: &str) {
    let all = out.output();
    assert_eq!(out.code(), Some(1), "exit code: {all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(
        out.stderr.lines().any(|l| l.contains(&format!("/{want}"))),
        "no line with {want:?} in:\n{all}"
    );
}

#[tokio::test]
async fn a_backend_named_localhost_is_resolved_and_served() {
    let b = Backend::start("named");
    let admin_port = free_port();
    let toml = config(
        free_port(),
        admin_port,
        &format!("localhost:{}", b.addr().port()),
    );
    let proxy = Proxy::start_config(&toml);
    let r = get(&proxy.url("/id")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.backend(), Some("named"));

    // The backend is its address, with the id the address written out would have (the
    // first 10 hex digits of SHA-256 of `127.0.0.1:PORT`), so sticky cookies stay valid.
    let status = admin_get(&proxy, "/status", None).await.json();
    let backend = &status["upstreams"][0]["backends"][0];
    let ip_port = format!("127.0.0.1:{}", b.addr().port());
    let id: String = Sha256::digest(ip_port.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(backend["addr"], ip_port, "{status}");
    assert_eq!(backend["id"], id, "{status}");
    assert_eq!(
        backend["name"],
        format!("localhost:{}", b.addr().port()),
        "{status}"
    );

    // A reload looks the name up again, off the admin API's single thread.
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&proxy.url("/id")).await.backend(), Some("named"));
}

#[test]
fn check_and_start_refuse_a_name_that_does_not_resolve() {
    let toml = config(free_port(), free_port(), "nonexistent.invalid:80");
    let want = format!(
        "proxy.toml:{}: upstreams.app.backends[0].addr: cannot resolve `nonexistent.invalid:80`: ",
        addr_line(&toml)
    );
    assert_refused(&Proxy::check(&toml), &want);
    assert_refused(
        &ProxyCmd::config(&toml).run_to_exit(Duration::from_secs(20)),
        &want,
    );

    // The summary of a good one shows the name and the address it resolved to.
    let out = Proxy::check(&config(free_port(), free_port(), "localhost:9001"));
    assert_eq!(out.code(), Some(0), "{}", out.output());
    assert!(
        out.stdout.contains("localhost:9001 (127.0.0.1:9001)"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_reload_naming_an_unresolvable_host_is_rejected_and_the_proxy_keeps_serving() {
    let b = Backend::start("kept");
    let (listen, admin_port) = (free_port(), free_port());
    let good = config(
        listen,
        admin_port,
        &format!("localhost:{}", b.addr().port()),
    );
    let proxy = Proxy::start_config(&good);
    assert_eq!(get(&proxy.url("/id")).await.backend(), Some("kept"));

    let bad = config(listen, admin_port, "nonexistent.invalid:80");
    proxy.write_config(&bad);
    let r = admin_post(&proxy, "/reload", Some("t")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&format!(
            "proxy.toml:{}: upstreams.app.backends[0].addr: cannot resolve `nonexistent.invalid:80`: ",
            addr_line(&bad)
        )),
        "{error}"
    );
    // The running config stays.
    assert_eq!(get(&proxy.url("/id")).await.backend(), Some("kept"));
}

/// Quick mode's `--dns-family` keeps the addresses of one family of a backend named by
/// host, as `dns_family` does in a file; a family it does not know is refused with those
/// it does.
#[tokio::test]
async fn quick_mode_keeps_one_family_of_a_named_backend() {
    let b = Backend::start("named");
    let backend = format!("localhost:{}", b.addr().port());
    let quick = |family: &str| {
        [
            "--listen".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--backend".to_owned(),
            backend.clone(),
            "--dns-family".to_owned(),
            family.to_owned(),
        ]
    };
    let args = quick("ipv4");
    let proxy = Proxy::start_quick(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = admin_get(&proxy, "/status", None).await.json();
    let backends = &status["upstreams"][0]["backends"];
    assert_eq!(backends.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(
        backends[0]["addr"],
        format!("127.0.0.1:{}", b.addr().port()),
        "{status}"
    );
    assert_eq!(get(&proxy.url("/id")).await.backend(), Some("named"));

    let args = quick("ipv5");
    let out = ProxyCmd::quick(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .run_to_exit(Duration::from_secs(20));
    let all = out.output();
    assert_eq!(out.code(), Some(2), "{all}");
    assert!(
        out.stderr
            .contains("invalid value 'ipv5' for '--dns-family")
            && out.stderr.contains("[possible values: all, ipv4, ipv6]"),
        "{all}"
    );
}

/// The name the `dns_refresh` test moves; `.test` is never a real name (RFC 6761).
const MOVING: &str = "backend.test";

/// An `/etc/hosts` of one proxy's own: the proxy starts in a private mount namespace
/// (`unshare`) where this file is bind-mounted over `/etc/hosts`, so that the test changes
/// what the system resolver answers for the proxy alone. Root gets a mount namespace; anyone
/// else a user namespace mapping them to root as well, which creating one needs.
struct Hosts {
    _dir: TempDir,
    path: PathBuf,
}

impl Hosts {
    fn new(names: &str) -> Hosts {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let hosts = Hosts { _dir: dir, path };
        hosts.set(names);
        hosts
    }

    /// Rewrites the file in place: the bind mount holds the inode, so a new file renamed
    /// over it would not be seen. `localhost` stays, as the machine's file has it.
    fn set(&self, names: &str) {
        std::fs::write(&self.path, format!("127.0.0.1 localhost\n{names}")).unwrap();
    }

    /// Moves the name to 127.0.0.3 and waits until the proxy at `url` sends requests
    /// there, to the backend `b`.
    async fn move_to_b(&self, url: &str) {
        self.set(&format!("127.0.0.3 {MOVING}\n"));
        wait_until(
            Duration::from_secs(15),
            "requests to go to the new address",
            || async { get(url).await.backend() == Some("b") },
        )
        .await;
    }

    /// Starts a proxy with `toml` that sees this file as `/etc/hosts`.
    fn start(&self, toml: &str) -> Proxy {
        let via = self.via();
        let via: Vec<&str> = via.iter().map(String::as_str).collect();
        ProxyCmd::config(toml).via(&via).start()
    }

    fn via(&self) -> Vec<String> {
        let mut via = vec!["unshare".to_string()];
        if !nix::unistd::geteuid().is_root() {
            via.extend(["--user".into(), "--map-root-user".into()]);
        }
        // `unshare` makes the mounts private, so the bind mount stays in the namespace; `sh`
        // execs the proxy, which keeps the pid the harness signals.
        via.extend([
            "--mount".into(),
            "sh".into(),
            "-c".into(),
            r#"mount --bind "$0" /etc/hosts && exec "$@""#.into(),
            self.path.display().to_string(),
        ]);
        via
    }
}

/// `dns_refresh` follows a name to its new address, then to two, and keeps the last ones
/// while the name does not resolve; a WebSocket opened to the old address stays open, as
/// at a reload.
#[tokio::test]
async fn dns_refresh_follows_a_name_that_moves_and_keeps_the_tunnels_to_the_old_address() {
    // One port at two loopback addresses: the move changes only the address.
    let a = Backend::start_on("a", "127.0.0.2:0".parse().unwrap(), &[]);
    let port = a.addr().port();
    let b = Backend::start_on("b", format!("127.0.0.3:{port}").parse().unwrap(), &[]);
    let hosts = Hosts::new(&format!("127.0.0.2 {MOVING}\n"));
    let toml = format!(
        "{ONE_THREAD}{}\n[upstreams.app]\nstrategy = \"round_robin\"\ndns_refresh = \"1s\"\n\
         dns_timeout = \"1s\"\ndns_family = \"ipv4\"\nbackends = [{{ addr = \"{MOVING}:{port}\" }}]\n",
        listener(free_port()),
    );
    let proxy = hosts.start(&toml);
    let url = proxy.url("/id");
    assert_eq!(get(&url).await.backend(), Some("a"), "{}", proxy.logs());
    let (mut ws, id) = ws_connect(&proxy.ws_url("/ws")).await;
    assert_eq!(id, "a");

    hosts.move_to_b(&url).await;
    let http = client();
    assert_eq!(
        backend_counts(&http, &url, 10).await,
        [("b".to_string(), 10)].into(),
        "the old address still gets requests"
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("backend addresses changed")
            && logs.contains(&format!("added=[127.0.0.3:{port}]"))
            && logs.contains(&format!("removed=[127.0.0.2:{port}]")),
        "{logs}"
    );
    // The tunnel to the address the name left goes on.
    ws_echo(&mut ws, "still open").await;

    hosts.set(&format!("127.0.0.2 {MOVING}\n127.0.0.3 {MOVING}\n"));
    wait_until(
        Duration::from_secs(15),
        "both addresses to be served",
        || async { backend_counts(&http, &url, 4).await.len() == 2 },
    )
    .await;

    // Gone from the resolver: a warning, and the last addresses go on serving.
    hosts.set("");
    proxy.wait_log("keeping the last addresses", Duration::from_secs(15));
    assert_eq!(
        backend_counts(&http, &url, 4).await,
        [("a".to_string(), 2), ("b".to_string(), 2)].into()
    );
    drop(b);
}

/// A DNS refresh that moves one TLS backend's name keeps the connections pooled to the
/// upstream's other backends: the client's settings did not change, and each pooled
/// connection is keyed by the name it was verified for.
#[tokio::test]
async fn a_dns_move_keeps_the_pooled_tls_connections_to_the_other_backends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tests::TestCa::new(dir.path());
    let (cert, key) = ca.issue(&[MOVING, "127.0.0.1"]);
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let a = Backend::start_on("a", "127.0.0.2:0".parse().unwrap(), &tls);
    let port = a.addr().port();
    let b = Backend::start_on("b", format!("127.0.0.3:{port}").parse().unwrap(), &tls);
    let c = Backend::start_with("c", &tls);
    let hosts = Hosts::new(&format!("127.0.0.2 {MOVING}\n"));
    let toml = format!(
        "{ONE_THREAD}{}\n[upstreams.app]\nstrategy = \"round_robin\"\ndns_refresh = \"1s\"\n\
         dns_family = \"ipv4\"\nbackends = [{{ addr = \"{MOVING}:{port}\" }}, {{ addr = \"{}\" }}]\n\
         [upstreams.app.tls]\nca = \"{}\"\n",
        listener(free_port()),
        c.addr(),
        ca.pem.display(),
    );
    let proxy = hosts.start(&toml);
    let url = proxy.url("/id");
    let http = client();
    // The connections `c` has accepted, this look's own (a new one each time) included.
    let ca_pem = std::fs::read(&ca.pem).unwrap();
    let stats_url = format!("https://127.0.0.1:{}/stats", c.addr().port());
    let accepted = || async {
        let direct = tests::tls_client(&ca_pem, tests::Alpn::Http1);
        let stats = tests::get_with(&direct, &stats_url).await.json();
        stats["connections"].as_u64().unwrap()
    };

    assert_eq!(
        backend_counts(&http, &url, 6).await,
        [("a".to_string(), 3), ("c".to_string(), 3)].into(),
        "{}",
        proxy.logs()
    );
    let before = accepted().await;

    hosts.move_to_b(&url).await;
    let after_move = backend_counts(&http, &url, 6).await;
    assert_eq!(after_move.get("c"), Some(&3), "{after_move:?}");
    assert_eq!(after_move.get("a"), None, "{after_move:?}");
    // One more: this look's own. A new TLS client would have opened another.
    assert_eq!(accepted().await, before + 1, "{}", proxy.logs());
    drop(b);
}

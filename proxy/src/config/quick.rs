//! Quick mode: a whole configuration from a few command-line flags — one upstream named
//! `default`, one route `/` → it, the file's defaults for everything else.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::dns::{self, BackendAddr, DnsFamily, DnsSettings, Resolver};
use super::error::ErrorKind;
use super::file::UpstreamTlsFile;
use super::resolve::{
    addrs_conflict, check_max_conns, check_weight, client_auth_checked, tls_pair_problems,
    upstream_tls, TlsFindings,
};
use super::{
    AccessLogConfig, ActiveCheck, AdminConfig, BackendConfig, CheckKind, Config, ConfigError,
    ConfigErrors, Env, HealthConfig, IpHashConfig, Limits, ListenerConfig, ProxyProtocolConfig,
    Route, ServerConfig, StickyConfig, StrategyKind, Timeouts, TlsConfig, UpstreamConfig,
    UpstreamProtocol, MIN_STICKY_KEY_LEN, QUICK_STICKY_KEY_ENV,
};

/// Name of the single upstream of quick mode.
pub const QUICK_UPSTREAM: &str = "default";

/// The flags of quick mode (`proxy run --listen ... --backend ...`), as parsed by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickOptions {
    /// Plain HTTP listener.
    pub listen: Option<SocketAddr>,
    /// Primary backends: `ip:port`, `[v6]:port` or `host:port`, each with `=weight` optionally.
    pub backends: Vec<String>,
    /// Backup backends, same syntax.
    pub backups: Vec<String>,
    /// Balancing strategy.
    pub strategy: StrategyKind,
    /// TLS listener (needs `cert` and `key`); offers h2.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for `tls_listen`.
    pub cert: Option<PathBuf>,
    /// PEM private key for `tls_listen`.
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that clients of `tls_listen` must present a certificate from
    /// (the listener's `client_ca`).
    pub client_ca: Option<PathBuf>,
    /// Whether a client without a certificate is refused (`client_auth`; default required).
    pub client_auth: Option<super::ClientAuthMode>,
    /// Revoked client certificates (PEM CRLs; `client_crl`).
    pub client_crl: Option<PathBuf>,
    /// Enables an HTTP active check of this path with the default timings.
    pub health_path: Option<String>,
    /// With every backend down, requests go to all of them (`fail_open`).
    pub fail_open: bool,
    /// Admin listener (the CLI's bare `--admin` means [`super::DEFAULT_ADMIN_LISTEN`]).
    pub admin: Option<SocketAddr>,
    /// Bearer token for admin mutations.
    pub admin_token: Option<String>,
    /// Worker threads; default the number of cores.
    pub threads: Option<usize>,
    /// Sticky-cookie key; else `SWITCHYARD_STICKY_KEY`; else a random key (with a warning).
    pub sticky_key: Option<String>,
    /// The backends speak TLS (implied by the two below).
    pub backend_tls: bool,
    /// CA certificates (PEM) trusted for the backends; default the system's.
    pub backend_ca: Option<PathBuf>,
    /// The name the backends' certificates must carry; default each one's IP address.
    pub backend_server_name: Option<String>,
    /// The backends speak h2 (h2c without TLS).
    pub backend_h2: bool,
    /// Both listeners expect a PROXY protocol header on every connection.
    pub proxy_protocol: bool,
    /// `max_conns` of every backend; 0: unlimited.
    pub max_conns: u32,
    /// Which addresses of a backend's name become backends (`dns_family`).
    pub dns_family: DnsFamily,
}

impl Default for QuickOptions {
    fn default() -> Self {
        QuickOptions {
            listen: None,
            backends: Vec::new(),
            backups: Vec::new(),
            strategy: StrategyKind::RoundRobin,
            tls_listen: None,
            cert: None,
            key: None,
            client_ca: None,
            client_auth: None,
            client_crl: None,
            health_path: None,
            fail_open: false,
            admin: None,
            admin_token: None,
            threads: None,
            sticky_key: None,
            backend_tls: false,
            backend_ca: None,
            backend_server_name: None,
            backend_h2: false,
            proxy_protocol: false,
            max_conns: 0,
            dns_family: DnsFamily::All,
        }
    }
}

/// Collects errors keyed by flag.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, kind: ErrorKind) {
        self.0.push(ConfigError {
            file: None,
            line: None,
            key: key.into(),
            kind,
        });
    }
}

/// Parses `addr` or `addr=weight`, `addr` being `ip:port`, `[v6]:port` or `host:port`.
fn parse_backend(spec: &str) -> Result<(BackendAddr, u32), ErrorKind> {
    let (addr, weight) = match spec.split_once('=') {
        Some((a, w)) => {
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| ErrorKind::WeightSyntax(w.to_string()))?;
            (a, w)
        }
        None => (spec, 1),
    };
    let addr = BackendAddr::parse(addr.trim())?;
    check_weight(weight)?;
    Ok((addr, weight))
}

pub(super) fn resolve(
    q: &QuickOptions,
    env: Env<'_>,
    resolver: &dyn Resolver,
) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let mut warnings = Vec::new();

    let threads = match q.threads {
        Some(0) => {
            errs.push("--threads", ErrorKind::Zero);
            1
        }
        Some(n) if n > super::MAX_THREADS => {
            errs.push("--threads", ErrorKind::AtMost(super::MAX_THREADS));
            1
        }
        Some(n) => n,
        None => super::resolve::default_threads(),
    };

    let mut listeners = Vec::new();
    let proxy_protocol = q.proxy_protocol.then(ProxyProtocolConfig::default);
    if let Some(listen) = q.listen {
        listeners.push(ListenerConfig {
            listen,
            tls: None,
            redirect_https_port: None,
            response_headers: Vec::new(),
            proxy_protocol: proxy_protocol.clone(),
        });
    }
    match (q.tls_listen, &q.cert, &q.key) {
        (Some(listen), Some(cert), Some(key)) => {
            if let Some(plain) = q.listen.filter(|p| addrs_conflict(*p, listen)) {
                errs.push(
                    "--tls-listen",
                    ErrorKind::DuplicateListener {
                        addr: listen,
                        other: plain,
                    },
                );
            }
            let (cert_problem, key_problem) = tls_pair_problems(cert, key);
            for (flag, kind) in [("--cert", cert_problem), ("--key", key_problem)] {
                if let Some(kind) = kind {
                    errs.push(flag, kind);
                }
            }
            let (client_auth, problems) =
                client_auth_checked(q.client_ca.clone(), q.client_auth, q.client_crl.clone());
            for (setting, kind) in problems {
                let kind = match kind {
                    ErrorKind::NeedsClientCa => ErrorKind::NeedsFlags("--client-ca"),
                    other => other,
                };
                errs.push(format!("--{}", setting.replace('_', "-")), kind);
            }
            listeners.push(ListenerConfig {
                listen,
                tls: Some(TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                    sni: Vec::new(),
                    h2: true,
                    client_auth,
                }),
                redirect_https_port: None,
                response_headers: Vec::new(),
                proxy_protocol: proxy_protocol.clone(),
            });
        }
        (Some(_), _, _) => errs.push("--tls-listen", ErrorKind::NeedsFlags("--cert and --key")),
        (None, cert, key) => {
            let flags = [
                ("--cert", cert.is_some()),
                ("--key", key.is_some()),
                ("--client-ca", q.client_ca.is_some()),
                ("--client-auth", q.client_auth.is_some()),
                ("--client-crl", q.client_crl.is_some()),
            ];
            for (flag, _) in flags.into_iter().filter(|(_, given)| *given) {
                errs.push(flag, ErrorKind::NeedsFlags("--tls-listen"));
            }
        }
    }
    if q.listen.is_none() && q.tls_listen.is_none() {
        errs.push(
            "",
            ErrorKind::Missing("at least one of --listen and --tls-listen is required"),
        );
    }

    let dns = DnsSettings {
        family: q.dns_family,
        ..DnsSettings::default()
    };
    let mut backends: Vec<BackendConfig> = Vec::new();
    let specs = q
        .backends
        .iter()
        .map(|s| ("--backend", s, false))
        .chain(q.backups.iter().map(|s| ("--backup", s, true)));
    let parsed: Vec<_> = specs
        .map(|(flag, spec, backup)| (format!("{flag} {spec}"), parse_backend(spec), backup))
        .collect();
    // Host names are looked up together, as a file's are.
    let found = dns::lookup_all(
        resolver,
        dns::names(
            parsed
                .iter()
                .filter_map(|(_, p, _)| p.as_ref().ok().map(|(a, _)| (a, dns.timeout))),
        ),
    );
    for (entry, (key, parsed, backup)) in parsed.into_iter().enumerate() {
        let expanded = parsed.and_then(|(addr, weight)| {
            dns::entry_backends(&addr, None, entry, &found, dns.family).map(|b| (b, weight))
        });
        match expanded {
            Ok((list, weight)) => {
                for (addr, id, dns) in list {
                    if backends.iter().any(|b| b.addr == addr) {
                        errs.push(key.clone(), ErrorKind::DuplicateBackend(addr));
                        continue;
                    }
                    backends.push(BackendConfig {
                        id,
                        addr,
                        weight,
                        backup,
                        max_conns: q.max_conns,
                        dns,
                    });
                }
            }
            Err(kind) => errs.push(key, kind),
        }
    }
    if q.backends.is_empty() {
        errs.push("", ErrorKind::NoBackend);
    }
    if let Err(kind) = check_max_conns(q.max_conns) {
        errs.push(format!("--max-conns {}", q.max_conns), kind);
    }

    let active = match &q.health_path {
        Some(path) => match super::check_path(path) {
            Ok(()) => Some(ActiveCheck::with_defaults(CheckKind::http(
                path.clone(),
                None,
            ))),
            Err(kind) => {
                errs.push("--health-path", kind);
                None
            }
        },
        None => None,
    };

    let mut sticky = StickyConfig::default();
    if q.strategy == StrategyKind::StickyCookie {
        let given = q
            .sticky_key
            .clone()
            .map(|k| ("--sticky-key", k))
            .or_else(|| env(QUICK_STICKY_KEY_ENV).map(|k| (QUICK_STICKY_KEY_ENV, k)))
            .filter(|(_, k)| !k.is_empty());
        sticky.key = match given {
            Some((source, k)) => {
                if k.len() < MIN_STICKY_KEY_LEN {
                    errs.push(source, ErrorKind::StickyKeyTooShort(k.len()));
                }
                k.into_bytes()
            }
            None => {
                warnings.push(format!(
                    "sticky_cookie: no --sticky-key and no {QUICK_STICKY_KEY_ENV}: using a \
                     random key, so cookies are not shared across replicas or restarts"
                ));
                rand::random::<[u8; 32]>().to_vec()
            }
        };
    }

    let tls =
        (q.backend_tls || q.backend_ca.is_some() || q.backend_server_name.is_some()).then(|| {
            let mut found = TlsFindings::default();
            let file = UpstreamTlsFile {
                server_name: q.backend_server_name.clone(),
                ca: q.backend_ca.clone(),
                ..UpstreamTlsFile::default()
            };
            let tls = upstream_tls(file, &mut found);
            for (key, kind) in found.errors {
                errs.push(
                    match key {
                        "ca" => "--backend-ca",
                        "server_name" => "--backend-server-name",
                        _ => "--backend-tls",
                    },
                    kind,
                );
            }
            tls
        });

    let admin = q.admin.map(|listen| {
        if let Some(l) = listeners.iter().find(|l| addrs_conflict(l.listen, listen)) {
            errs.push("--admin", ErrorKind::AdminClashesWithListener(l.listen));
        }
        AdminConfig {
            listen,
            token: q.admin_token.clone().filter(|t| !t.is_empty()),
            auth_reads: false,
        }
    });

    if !errs.0.is_empty() {
        return Err(ConfigErrors(errs.0));
    }
    Ok(Config {
        server: ServerConfig {
            threads,
            grace_period: std::time::Duration::from_secs(5),
            http1: super::Http1Path::Native,
            request_id: false,
            real_ip_from: Vec::new(),
        },
        admin,
        access_log: AccessLogConfig::default(),
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        listeners,
        upstreams: vec![UpstreamConfig {
            name: QUICK_UPSTREAM.to_string(),
            strategy: q.strategy,
            backends,
            slow_start: None,
            health: HealthConfig {
                active,
                fail_open: q.fail_open,
                ..HealthConfig::default()
            },
            sticky,
            ip_hash: IpHashConfig::default(),
            tls,
            protocol: if q.backend_h2 {
                UpstreamProtocol::H2
            } else {
                UpstreamProtocol::Http1
            },
            timeouts: (&Timeouts::default()).into(),
            queue: None,
            dns,
        }],
        routes: vec![Route {
            host: None,
            path_prefix: "/".to_string(),
            upstream: QUICK_UPSTREAM.to_string(),
            prefix_rewrite: None,
            slash_redirect: true,
            allow: None,
            request_headers: Vec::new(),
        }],
        source: None,
        warnings,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::derived_id;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn opts(backends: &[&str]) -> QuickOptions {
        QuickOptions {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            backends: backends.iter().map(|s| s.to_string()).collect(),
            ..QuickOptions::default()
        }
    }

    fn resolve(q: &QuickOptions, env: Env<'_>) -> Result<Config, ConfigErrors> {
        super::resolve(q, env, &super::super::SystemResolver)
    }

    fn errors(q: &QuickOptions) -> Vec<String> {
        resolve(q, &no_env).unwrap_err().lines()
    }

    #[test]
    fn max_conns_applies_to_every_backend() {
        let mut q = opts(&["127.0.0.1:9001", "127.0.0.1:9002"]);
        q.backups = vec!["127.0.0.1:9009".to_string()];
        q.max_conns = 25;
        let c = resolve(&q, &no_env).unwrap();
        assert!(c.upstreams[0].backends.iter().all(|b| b.max_conns == 25));
        q.max_conns = 1_000_001;
        assert_eq!(
            errors(&q),
            ["--max-conns 1000001: max_conns 1000001 is out of range (0 for unlimited, or up to 1000000)"]
        );
    }

    #[test]
    fn backends_with_weights_and_backups() {
        let mut q = opts(&["127.0.0.1:9001", "127.0.0.1:9002=3"]);
        q.backups = vec!["[::1]:9009".to_string()];
        let c = resolve(&q, &no_env).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.name, "default");
        assert_eq!(u.strategy, StrategyKind::RoundRobin);
        let got: Vec<_> = u
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight, b.backup))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1:9001".to_string(), 1, false),
                ("127.0.0.1:9002".to_string(), 3, false),
                ("[::1]:9009".to_string(), 1, true),
            ]
        );
        assert_eq!(u.backends[0].id, derived_id(u.backends[0].addr));
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.routes[0].upstream, "default");
        assert_eq!(c.listeners.len(), 1);
        assert!(c.admin.is_none());
        assert!(u.health.active.is_none());
        assert_eq!(c.limits, Limits::default());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn a_backend_named_by_host_is_one_backend_per_address() {
        let r = super::super::TableResolver::new(&[("node", &["10.0.0.2", "10.0.0.1"])]);
        let mut q = opts(&["node:9000=2"]);
        q.backups = vec!["127.0.0.1:9009".to_string()];
        let c = super::resolve(&q, &no_env, &*r).unwrap();
        let got: Vec<_> = c.upstreams[0]
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.id.clone(), b.weight, b.backup))
            .collect();
        let d = |s: &str| derived_id(s.parse().unwrap());
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:9000".to_string(), d("10.0.0.1:9000"), 2, false),
                ("10.0.0.2:9000".to_string(), d("10.0.0.2:9000"), 2, false),
                ("127.0.0.1:9009".to_string(), d("127.0.0.1:9009"), 1, true),
            ]
        );
        let e = super::resolve(&opts(&["nonexistent.invalid:80"]), &no_env, &*r)
            .unwrap_err()
            .lines();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "--backend nonexistent.invalid:80: cannot resolve `nonexistent.invalid:80`: "
            ),
            "{e:?}"
        );
    }

    #[test]
    fn dns_family_keeps_the_addresses_of_one_family() {
        let r = super::super::TableResolver::new(&[("node", &["10.0.0.1", "fd00::1"])]);
        let mut q = opts(&["node:9000"]);
        let addrs = |q: &QuickOptions| -> Vec<String> {
            let c = super::resolve(q, &no_env, &*r).unwrap();
            assert_eq!(c.upstreams[0].dns.family, q.dns_family);
            c.upstreams[0]
                .backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect()
        };
        assert_eq!(addrs(&q), ["10.0.0.1:9000", "[fd00::1]:9000"]);
        q.dns_family = DnsFamily::Ipv4;
        assert_eq!(addrs(&q), ["10.0.0.1:9000"]);
        q.dns_family = DnsFamily::Ipv6;
        assert_eq!(addrs(&q), ["[fd00::1]:9000"]);
    }

    #[test]
    fn bad_backends_are_all_reported() {
        let q = opts(&[
            "127.0.0.1:x",
            "127.0.0.1:9001=0",
            "127.0.0.1:9002=abc",
            "127.0.0.1:9003",
            "127.0.0.1:9003=2",
        ]);
        assert_eq!(
            errors(&q),
            vec![
                "--backend 127.0.0.1:x: invalid address `127.0.0.1:x` (expected host:port or ip:port, e.g. node1:9001, 127.0.0.1:9001 or [::1]:9001)",
                "--backend 127.0.0.1:9001=0: weight 0 is out of range (1 to 10000)",
                "--backend 127.0.0.1:9002=abc: invalid weight `abc` (expected 1 to 10000)",
                "--backend 127.0.0.1:9003=2: duplicate backend address 127.0.0.1:9003",
            ]
        );
    }

    #[test]
    fn needs_a_listener_and_a_backend() {
        let q = QuickOptions::default();
        assert_eq!(
            errors(&q),
            vec![
                "missing: at least one of --listen and --tls-listen is required",
                "at least one --backend is required",
            ]
        );
        let mut q = opts(&[]);
        q.backups = vec!["127.0.0.1:9001".to_string()];
        assert_eq!(errors(&q), vec!["at least one --backend is required"]);
    }

    #[test]
    fn tls_listen_needs_cert_and_key() {
        let mut q = opts(&["127.0.0.1:9001"]);
        q.tls_listen = Some("127.0.0.1:8443".parse().unwrap());
        assert_eq!(errors(&q), vec!["--tls-listen: needs --cert and --key"]);
        q.cert = Some("/nonexistent/cert.pem".into());
        q.key = Some("/nonexistent/key.pem".into());
        let e = errors(&q);
        assert_eq!(e.len(), 2);
        assert!(
            e[0].starts_with("--cert: /nonexistent/cert.pem: cannot read: "),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("--key: /nonexistent/key.pem: cannot read: "),
            "{e:?}"
        );
        q.tls_listen = None;
        assert_eq!(
            errors(&q),
            vec!["--cert: needs --tls-listen", "--key: needs --tls-listen"]
        );
    }

    #[test]
    fn health_path_enables_an_http_check_with_defaults() {
        let mut q = opts(&["127.0.0.1:9001"]);
        q.health_path = Some("/healthz".to_string());
        let c = resolve(&q, &no_env).unwrap();
        let active = c.upstreams[0].health.active.clone().unwrap();
        assert_eq!(
            active,
            ActiveCheck::with_defaults(CheckKind::http("/healthz", None))
        );
        assert_eq!(active.rise, 2);
        assert_eq!(c.upstreams[0].health.max_fails, 3);
        assert!(!c.upstreams[0].health.fail_open);
        q.fail_open = true;
        assert!(resolve(&q, &no_env).unwrap().upstreams[0].health.fail_open);
        q.health_path = Some("healthz".to_string());
        assert_eq!(
            errors(&q),
            vec!["--health-path: `healthz` must start with `/`"]
        );
    }

    #[test]
    fn admin_and_threads() {
        let mut q = opts(&["127.0.0.1:9001"]);
        q.admin = Some(super::super::DEFAULT_ADMIN_LISTEN);
        q.admin_token = Some("s3cret".to_string());
        q.threads = Some(3);
        let c = resolve(&q, &no_env).unwrap();
        let admin = c.admin.unwrap();
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9900");
        assert_eq!(admin.token.as_deref(), Some("s3cret"));
        assert_eq!(c.server.threads, 3);

        q.admin = Some("127.0.0.1:8080".parse().unwrap());
        q.threads = Some(0);
        assert_eq!(
            errors(&q),
            vec![
                "--threads: must be at least 1",
                "--admin: conflicts with the proxy listener on 127.0.0.1:8080",
            ]
        );
    }

    #[test]
    fn sticky_key_from_flag_env_or_random() {
        let mut q = opts(&["127.0.0.1:9001"]);
        q.strategy = StrategyKind::StickyCookie;

        // Neither: a random 32-byte key and a warning.
        let c = resolve(&q, &no_env).unwrap();
        assert_eq!(c.upstreams[0].sticky.key.len(), 32);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("not shared across replicas"));

        // From the environment.
        let env =
            |name: &str| (name == QUICK_STICKY_KEY_ENV).then(|| "0123456789abcdef-env".to_string());
        let c = resolve(&q, &env).unwrap();
        assert_eq!(c.upstreams[0].sticky.key, b"0123456789abcdef-env");
        assert!(c.warnings.is_empty());

        // The flag wins over the environment.
        q.sticky_key = Some("0123456789abcdef-flag".to_string());
        let c = resolve(&q, &env).unwrap();
        assert_eq!(c.upstreams[0].sticky.key, b"0123456789abcdef-flag");

        q.sticky_key = Some("short".to_string());
        assert_eq!(
            errors(&q),
            vec!["--sticky-key: key is 5 bytes long, at least 16 are required"]
        );
    }
}

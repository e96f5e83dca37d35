//! File types → [`Config`]: applies defaults, reads `*_env` secrets, checks every value and
//! collects all errors (each with its key path) instead of stopping at the first.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::proxy::request_headers::same_field;
use crate::proxy::request_id::is_id_field;
use crate::proxy::{is_forwarded_field, is_token_char};

use super::dns::{self, DnsSettings, Resolver};
use super::duration::HumanDuration;
use super::error::{ErrorKind, TlsFileProblem};
use super::file::{
    FileConfig, HealthFile, HealthKindFile, LimitsFile, ListenerFile, RouteFile, StickyFile,
    TimeoutsFile, UpstreamFile, UpstreamTlsFile,
};
use super::locate::KeyPath;
use super::{
    AccessLogConfig, ActiveCheck, AdminConfig, BackendConfig, BackendTimeouts, CheckKind,
    ClientAuth, ClientAuthMode, Config, Crls, Env, HealthConfig, IpHashConfig, Limits,
    ListenerConfig, ProxyProtocolConfig, QueueConfig, Route, ServerConfig, SniCert, StatusSet,
    StickyConfig, StrategyKind, Timeouts, TlsConfig, UpstreamConfig, UpstreamTlsConfig,
    DEFAULT_QUEUE_TIMEOUT, MAX_CONNS, MAX_WEIGHT, MIN_STICKY_KEY_LEN, MIN_TUNNEL_IDLE,
};

/// Errors and warnings found while resolving, each with the key path it is about.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    pub errors: Vec<(KeyPath, ErrorKind)>,
    pub warnings: Vec<(KeyPath, String)>,
}

impl Resolved {
    fn err(&mut self, path: KeyPath, kind: ErrorKind) {
        self.errors.push((path, kind));
    }

    fn warn(&mut self, path: KeyPath, msg: impl Into<String>) {
        self.warnings.push((path, msg.into()));
    }
}

/// Whether a log file could be opened for appending, found without creating or changing
/// anything: an existing file must open for appending, a new one needs its directory.
fn appendable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err("it is a directory".to_owned()),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                Ok(())
            } else {
                Err(format!("no directory {}", dir.display()))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Builds the config from the parsed file. Invalid entries are reported in `out` and left
/// out of the result, which is only meaningful when `out.errors` stays empty.
pub(super) fn resolve(
    f: FileConfig,
    env: Env<'_>,
    resolver: &dyn Resolver,
    out: &mut Resolved,
) -> Config {
    let root = KeyPath::root();
    // Every backend host name of the file, looked up together before anything else.
    let found = dns::lookup_all(
        resolver,
        dns::names(f.upstreams.0.iter().flat_map(|(_, u)| {
            // A zero, refused below, must not fail every lookup meanwhile.
            let timeout = dns_timeout(u.dns_timeout).unwrap_or(super::DEFAULT_DNS_TIMEOUT);
            u.backends.iter().map(move |b| (&b.addr, timeout))
        })),
    );

    let server = {
        let p = root.key("server");
        let threads = match f.server.threads {
            Some(0) => {
                out.err(p.key("threads"), ErrorKind::Zero);
                1
            }
            Some(n) if n > super::MAX_THREADS => {
                out.err(p.key("threads"), ErrorKind::AtMost(super::MAX_THREADS));
                1
            }
            Some(n) => n,
            None => default_threads(),
        };
        let real_ip_from = parse_nets(&f.server.real_ip_from, &p.key("real_ip_from"), out);
        ServerConfig {
            threads,
            grace_period: f.server.grace_period.0,
            http1: f.server.http1,
            request_id: f.server.request_id,
            real_ip_from,
        }
    };

    let admin = f.admin.map(|a| {
        let p = root.key("admin");
        let token = match (a.token, a.token_env) {
            (Some(_), Some(_)) => {
                out.err(
                    p.key("token_env"),
                    ErrorKind::Conflict("token", "token_env"),
                );
                None
            }
            (Some(t), None) => {
                if t.is_empty() {
                    out.warn(p.key("token"), "empty token: admin mutations are refused");
                }
                Some(t)
            }
            // An unset variable means "no token": mutations are refused, as documented. Said
            // at load, as an empty `token` is: a variable missing from the service's
            // environment showed only as every `POST /reload` refused.
            (None, Some(var)) => {
                let token = env(&var);
                if token.as_deref().is_none_or(str::is_empty) {
                    out.warn(
                        p.key("token_env"),
                        format!("`{var}` is not set or empty: admin mutations are refused"),
                    );
                }
                token
            }
            (None, None) => None,
        }
        .filter(|t| !t.is_empty());
        if a.auth_reads && token.is_none() {
            out.err(
                p.key("auth_reads"),
                ErrorKind::Missing("a token (`token`, or `token_env` naming a set variable): with auth_reads = true every read would be refused"),
            );
        }
        AdminConfig {
            listen: a.listen.0,
            token,
            auth_reads: a.auth_reads,
        }
    });

    let access_log = {
        let a = f.access_log;
        let path = if a.path.as_os_str().is_empty() {
            out.err(root.key("access_log").key("path"), ErrorKind::EmptyPath);
            None
        } else if a.path == Path::new("-") {
            None
        } else {
            if a.enabled {
                // Checked here, not only when the proxy opens it, so that `proxy check`
                // finds what a start or reload would refuse, with its line.
                if let Err(reason) = appendable(&a.path) {
                    out.err(
                        root.key("access_log").key("path"),
                        ErrorKind::CannotOpen {
                            path: a.path.clone(),
                            reason,
                        },
                    );
                }
            }
            Some(a.path)
        };
        AccessLogConfig {
            enabled: a.enabled,
            format: a.format,
            path,
        }
    };

    let limits = limits_from(f.limits);

    let timeouts = timeouts_from(f.timeouts);
    check_backend_timeouts(
        Some(timeouts.connect),
        Some(timeouts.upstream_read),
        Some(timeouts.tunnel_idle),
        &root.key("timeouts"),
        out,
    );
    positive(out, root.key("timeouts").key("client"), timeouts.client);

    let listeners = resolve_listeners(f.listeners, &root, out);
    if let Some(admin) = &admin {
        if let Some(l) = listeners
            .iter()
            .find(|l| addrs_conflict(l.listen, admin.listen))
        {
            out.err(
                root.key("admin").key("listen"),
                ErrorKind::AdminClashesWithListener(l.listen),
            );
        }
    }

    let upstreams: Vec<UpstreamConfig> = f
        .upstreams
        .0
        .into_iter()
        .map(|(name, u)| resolve_upstream(name, u, &timeouts, &root, env, &found, out))
        .collect();
    if upstreams.is_empty() {
        out.err(root.key("upstreams"), ErrorKind::NoUpstream);
    }
    warn_shared_sticky_cookies(&upstreams, &root, out);

    let routes = resolve_routes(f.routes, &upstreams, server.request_id, &root, out);

    Config {
        server,
        admin,
        access_log,
        limits,
        timeouts,
        listeners,
        upstreams,
        routes,
        source: None,
        warnings: Vec::new(),
    }
}

/// Two sticky upstreams under one cookie name, serving one host, overwrite each other's
/// cookie (same name, path `/`): a client whose requests go to both is re-placed at every
/// switch, and sticks to neither. Only a warning: on different hosts they do not meet.
fn warn_shared_sticky_cookies(upstreams: &[UpstreamConfig], root: &KeyPath, out: &mut Resolved) {
    let mut first_by_cookie: HashMap<&str, &str> = HashMap::new();
    for u in upstreams
        .iter()
        .filter(|u| u.strategy == StrategyKind::StickyCookie)
    {
        match first_by_cookie.entry(u.sticky.cookie.as_str()) {
            Entry::Vacant(v) => {
                v.insert(u.name.as_str());
            }
            Entry::Occupied(o) => out.warn(
                root.key("upstreams").key(u.name.as_str()).key("sticky"),
                format!(
                    "cookie `{}` is upstream {}'s too: if both serve one host, each overwrites \
                     the other's and a client moving between them sticks to neither; give \
                     each its own `cookie`",
                    u.sticky.cookie,
                    o.get()
                ),
            ),
        }
    }
}

/// `[limits]` with 0 resolved to None.
pub(super) fn limits_from(l: LimitsFile) -> Limits {
    Limits {
        max_connections: match l.max_connections {
            None => Some(crate::capacity::default_max_connections(
                crate::capacity::open_files().unwrap_or(1024),
            )),
            Some(n) => nonzero(n),
        },
        max_connections_per_ip: nonzero(l.max_connections_per_ip),
        requests_per_second_per_ip: nonzero(l.requests_per_second_per_ip),
        max_request_header_bytes: (l.max_request_header_bytes != 0)
            .then_some(l.max_request_header_bytes),
        max_request_body_bytes: (l.max_request_body_bytes != 0).then_some(l.max_request_body_bytes),
        header_read_timeout: Some(l.header_read_timeout.0).filter(|d| !d.is_zero()),
    }
}

pub(super) fn timeouts_from(t: TimeoutsFile) -> Timeouts {
    Timeouts {
        connect: t.connect.0,
        upstream_read: t.upstream_read.0,
        tunnel_idle: t.tunnel_idle.0,
        downstream_keepalive: t.downstream_keepalive.0,
        client: t.client.0,
    }
}

/// Checks the timeouts towards backends given under `p` (`[timeouts]`, or an upstream's
/// own, where a value not given is `[timeouts]`', checked there).
fn check_backend_timeouts(
    connect: Option<Duration>,
    upstream_read: Option<Duration>,
    tunnel_idle: Option<Duration>,
    p: &KeyPath,
    out: &mut Resolved,
) {
    if let Some(d) = connect {
        positive(out, p.key("connect"), d);
    }
    if let Some(d) = upstream_read {
        positive(out, p.key("upstream_read"), d);
    }
    if tunnel_idle.is_some_and(|d| d < MIN_TUNNEL_IDLE) {
        out.err(
            p.key("tunnel_idle"),
            ErrorKind::DurationTooShort(MIN_TUNNEL_IDLE),
        );
    }
}

pub(super) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn nonzero(v: u32) -> Option<u32> {
    (v != 0).then_some(v)
}

fn positive(out: &mut Resolved, path: KeyPath, d: Duration) {
    if d.is_zero() {
        out.err(path, ErrorKind::ZeroDuration);
    }
}

/// Two bind addresses that cannot both be bound: equal, or the same port with a wildcard
/// address on either side (Linux binds `[::]` dual-stack). Port 0 never conflicts.
pub(super) fn addrs_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn resolve_listeners(
    files: Vec<ListenerFile>,
    root: &KeyPath,
    out: &mut Resolved,
) -> Vec<ListenerConfig> {
    let base = root.key("listeners");
    if files.is_empty() {
        out.err(base.clone(), ErrorKind::NoListener);
    }
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, l) in files.into_iter().enumerate() {
        let p = base.index(i);
        let listen = l.listen.0;
        if let Some(other) = listeners.iter().find(|o| addrs_conflict(o.listen, listen)) {
            out.err(
                p.key("listen"),
                ErrorKind::DuplicateListener {
                    addr: listen,
                    other: other.listen,
                },
            );
        }
        if l.redirect_https_port == Some(0) {
            out.err(p.key("redirect_https_port"), ErrorKind::ZeroPort);
        }
        let tls = match l.tls {
            Some(t) => {
                check_pair(out, &p.key("tls"), &t.cert, &t.key);
                let mut names = HashSet::new();
                let mut sni = Vec::new();
                for (j, s) in l.sni.into_iter().enumerate() {
                    let sp = p.key("sni").index(j);
                    let server_name = normalize_host(&s.server_name);
                    if !valid_server_name(&server_name) {
                        out.err(
                            sp.key("server_name"),
                            ErrorKind::InvalidHost(s.server_name.clone()),
                        );
                    } else if !names.insert(server_name.clone()) {
                        out.err(
                            sp.key("server_name"),
                            ErrorKind::DuplicateServerName(server_name.clone()),
                        );
                    }
                    if check_pair(out, &sp, &s.cert, &s.key) {
                        if let Some(w) = sni_name_warning(&s.cert, &server_name) {
                            out.warn(sp.key("cert"), w);
                        }
                    }
                    sni.push(SniCert {
                        server_name,
                        cert: s.cert,
                        key: s.key,
                    });
                }
                let client_auth =
                    client_auth(t.client_ca, t.client_auth, t.client_crl, &p.key("tls"), out);
                Some(TlsConfig {
                    cert: t.cert,
                    key: t.key,
                    sni,
                    h2: l.h2.unwrap_or(true),
                    client_auth,
                })
            }
            None => {
                if !l.sni.is_empty() {
                    out.err(p.key("sni"), ErrorKind::NeedsTls);
                }
                if l.h2 == Some(true) {
                    out.err(p.key("h2"), ErrorKind::NeedsTls);
                }
                None
            }
        };
        let headers = p.key("response_headers");
        let response_headers = l
            .response_headers
            .into_iter()
            .filter(|(name, value)| match check_added_field(name, value) {
                Ok(()) => true,
                Err(kind) => {
                    out.err(headers.key(name.as_str()), kind);
                    false
                }
            })
            .collect();
        let from = p.key("proxy_protocol_from");
        let nets = parse_nets(&l.proxy_protocol_from, &from, out);
        let proxy_protocol = if l.proxy_protocol {
            Some(ProxyProtocolConfig { from: nets })
        } else {
            if !l.proxy_protocol_from.is_empty() {
                out.err(from, ErrorKind::NeedsProxyProtocol);
            }
            None
        };
        listeners.push(ListenerConfig {
            listen,
            tls,
            redirect_https_port: l.redirect_https_port,
            response_headers,
            proxy_protocol,
        });
    }
    listeners
}

/// The fields about a connection or a message's framing, which the proxy sets for each of
/// its hops itself: neither a listener's answers nor a route's requests may set them.
const HOP_AND_FRAMING: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// A field a listener adds to answers: a token name (RFC 9110 §5.1) that is not about the
/// connection or the framing, which the proxy itself sets, nor `set-cookie`, which would
/// replace the application's cookies; a value of visible text, spaces and tabs.
fn check_added_field(name: &str, value: &str) -> Result<(), ErrorKind> {
    let token = !name.is_empty() && name.bytes().all(is_token_char);
    if !token {
        return Err(ErrorKind::InvalidFieldName(name.to_owned()));
    }
    if name.eq_ignore_ascii_case("set-cookie")
        || HOP_AND_FRAMING.iter().any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(ErrorKind::ReservedField(name.to_owned()));
    }
    let visible = value
        .bytes()
        .all(|b| b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80);
    if !visible || value.trim().len() != value.len() || value.is_empty() {
        return Err(ErrorKind::InvalidFieldValue);
    }
    Ok(())
}

/// The checks shared by every field the proxy sends to a backend (a route's
/// `request_headers`, a health check's `headers`): a token name (RFC 9110 §5.1) that does not
/// describe a connection or a body's framing (the proxy sets those for its own hop to the
/// backend), in either spelling (`_` for `-`, as CGI-style backends read it).
fn check_sent_field_name(name: &str) -> Result<(), ErrorKind> {
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(ErrorKind::InvalidFieldName(name.to_owned()));
    }
    if HOP_AND_FRAMING.iter().any(|f| same_field(f, name)) {
        return Err(ErrorKind::ReservedRequestField(
            name.to_owned(),
            "it describes the connection or the body's framing, which the proxy sets for each hop",
        ));
    }
    Ok(())
}

/// A value without control characters, where a CR or LF would end the field and start
/// another; empty means "send none".
fn check_sent_field_value(value: &str) -> Result<(), ErrorKind> {
    let text = value
        .bytes()
        .all(|b| b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80);
    if !text || value.trim().len() != value.len() {
        return Err(ErrorKind::InvalidRequestFieldValue);
    }
    Ok(())
}

/// A field a route sets on requests (`request_headers`): one the proxy may send
/// ([`check_sent_field_name`]) and does not set itself; a value without control characters,
/// or empty to remove the client's. A `Host` must be one.
fn check_request_field(name: &str, value: &str, request_id: bool) -> Result<(), ErrorKind> {
    check_sent_field_name(name)?;
    let reserved = |why| Err(ErrorKind::ReservedRequestField(name.to_owned(), why));
    if is_forwarded_field(name) {
        return reserved("the proxy sets X-Forwarded-For, -Proto, -Host, -Prefix and X-Real-IP");
    }
    if request_id && is_id_field(name) {
        return reserved("the proxy sets it, as `[server] request_id` is on");
    }
    if name.eq_ignore_ascii_case("host") {
        return match valid_authority(value) {
            true => Ok(()),
            false => Err(ErrorKind::InvalidHostField(value.to_owned())),
        };
    }
    check_sent_field_value(value)
}

/// A field a health check sends (`headers`): as a route's, but `Host` has its own key,
/// which also decides the TLS check's and the h2 check's `:authority`.
fn check_health_field(name: &str, value: &str) -> Result<(), ErrorKind> {
    check_sent_field_name(name)?;
    if same_field(name, "host") {
        return Err(ErrorKind::ReservedRequestField(
            name.to_owned(),
            "the check's Host is set by `host` in this table",
        ));
    }
    check_sent_field_value(value)
}

/// Fields to send (a route's `request_headers`, a check's `headers`), each checked by
/// `check`; one that is invalid, or that a backend would read as one already kept, is
/// reported and left out.
fn resolve_sent_fields(
    fields: std::collections::BTreeMap<String, String>,
    check: impl Fn(&str, &str) -> Result<(), ErrorKind>,
    p: &KeyPath,
    out: &mut Resolved,
) -> Vec<(String, String)> {
    let mut kept: Vec<(String, String)> = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        let key = p.key(name.as_str());
        if let Err(kind) = check(&name, &value) {
            out.err(key, kind);
        } else if let Some((other, _)) = kept.iter().find(|(n, _)| same_field(n, &name)) {
            out.err(key, ErrorKind::SameRequestField(name, other.clone()));
        } else {
            kept.push((name, value));
        }
    }
    kept
}

/// A listener's client certificate checks (`<p>.client_ca`, `.client_auth`, `.client_crl`),
/// read and then built as a handshake will use them, so that `proxy check` and a reload
/// refuse what the listener could not verify with.
fn client_auth(
    ca: Option<PathBuf>,
    mode: Option<ClientAuthMode>,
    crl: Option<PathBuf>,
    p: &KeyPath,
    out: &mut Resolved,
) -> Option<ClientAuth> {
    let (auth, problems) = client_auth_checked(ca, mode, crl);
    for (key, kind) in problems {
        out.err(p.key(key), kind);
    }
    auth
}

/// [`client_auth`]'s checks, each problem under the name of its setting (`client_ca`,
/// `client_auth` or `client_crl`), which quick mode turns into its flags.
pub(super) fn client_auth_checked(
    ca: Option<PathBuf>,
    mode: Option<ClientAuthMode>,
    crl: Option<PathBuf>,
) -> (Option<ClientAuth>, Vec<(&'static str, ErrorKind)>) {
    let mut problems = Vec::new();
    let Some(ca_path) = ca else {
        if mode.is_some() {
            problems.push(("client_auth", ErrorKind::NeedsClientCa));
        }
        if crl.is_some() {
            problems.push(("client_crl", ErrorKind::NeedsClientCa));
        }
        return (None, problems);
    };
    let file = |path: PathBuf, problem| ErrorKind::TlsFile { path, problem };
    let ca = match read_ca_file(&ca_path) {
        Ok(certs) => Some(super::CaCerts {
            path: ca_path,
            certs,
        }),
        Err(problem) => {
            problems.push(("client_ca", file(ca_path, problem)));
            None
        }
    };
    let crls = match crl.map(|path| read_crl_file(&path).map(|crls| Crls { path, crls })) {
        None => None,
        Some(Ok(crls)) => Some(crls),
        Some(Err((path, problem))) => {
            problems.push(("client_crl", file(path, problem)));
            return (None, problems);
        }
    };
    let Some(ca) = ca else {
        return (None, problems);
    };
    let auth = ClientAuth {
        ca,
        mode: mode.unwrap_or_default(),
        crls,
    };
    use crate::client_cert::ClientVerifierError;
    use rustls::server::VerifierBuilderError;
    match (crate::client_cert::client_verifier(&auth), &auth.crls) {
        (Ok(_), _) => return (Some(auth), problems),
        (Err(ClientVerifierError::Build(VerifierBuilderError::InvalidCrl(e))), Some(crls)) => {
            let problem = TlsFileProblem::InvalidCrl(crl_problem(&e));
            problems.push(("client_crl", file(crls.path.clone(), problem)));
        }
        // The CA file was checked to hold trust anchors above: hardly reachable.
        (Err(e), _) => {
            let problem = TlsFileProblem::InvalidPem(e.to_string());
            problems.push(("client_ca", file(auth.ca.path, problem)));
        }
    }
    (None, problems)
}

/// What rustls found wrong with a CRL, in words (its error has no `Display`).
fn crl_problem(e: &rustls::CertRevocationListError) -> String {
    use rustls::CertRevocationListError as E;
    match e {
        E::ParseError => "it is not correctly encoded".to_owned(),
        E::UnsupportedCrlVersion => "it is not a version 2 X.509 CRL".to_owned(),
        E::InvalidCrlNumber => "its CRL number is invalid".to_owned(),
        E::InvalidRevokedCertSerialNumber => {
            "a revoked certificate's serial number is invalid".to_owned()
        }
        E::Other(o) => format!("it cannot be read ({o})"),
        other => format!("{other:?}"),
    }
}

/// The revocation lists of a PEM file, at least one.
fn read_crl_file(path: &Path) -> Result<std::sync::Arc<[Vec<u8>]>, (PathBuf, TlsFileProblem)> {
    let fail = |problem| (path.to_path_buf(), problem);
    let data = std::fs::read(path).map_err(|e| fail(TlsFileProblem::Read(e)))?;
    let mut crls = Vec::new();
    for crl in rustls_pemfile::crls(&mut data.as_slice()) {
        let der = crl.map_err(|e| fail(TlsFileProblem::InvalidPem(e.to_string())))?;
        crls.push(der.to_vec());
    }
    if crls.is_empty() {
        return Err(fail(TlsFileProblem::NoCrl));
    }
    Ok(crls.into())
}

/// Checks `<p>.cert` and `<p>.key`.
/// Whether the pair is usable.
fn check_pair(out: &mut Resolved, p: &KeyPath, cert: &Path, key: &Path) -> bool {
    let (cert_problem, key_problem) = tls_pair_problems(cert, key);
    let usable = cert_problem.is_none() && key_problem.is_none();
    for (name, kind) in [("cert", cert_problem), ("key", key_problem)] {
        if let Some(kind) = kind {
            out.err(p.key(name), kind);
        }
    }
    if usable {
        if let Some(w) = leaf_validity_warning(cert, std::time::SystemTime::now()) {
            out.warn(p.key("cert"), w);
        }
    }
    usable
}

/// A warning when an SNI entry's certificate does not cover its `server_name`: the wrong
/// file copied into one entry loads, and clients asking for that name then refuse the
/// site, which nothing said at load.
fn sni_name_warning(cert: &Path, server_name: &str) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let data = std::fs::read(cert).ok()?;
    let der = rustls_pemfile::certs(&mut data.as_slice()).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    let names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        // Without a SAN extension clients match nothing (the subject's CN is ignored).
        _ => Vec::new(),
    };
    let covered = names.iter().any(|n| {
        n == server_name
            || n.strip_prefix("*.").is_some_and(|suffix| {
                server_name
                    .split_once('.')
                    .is_some_and(|(label, rest)| label != "*" && rest == suffix)
            })
    });
    (!covered).then(|| {
        format!(
            "{}: the certificate does not cover `{server_name}` (its names: {}); clients \
             asking for it will refuse it",
            cert.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )
    })
}

/// A warning when the chain's first certificate is outside its validity period at `now`: a
/// renewal that was copied over the wrong file, or never ran, loads and serves, and every
/// browser then refuses the site, while nginx and HAProxy load it as silently. A warning
/// rather than an error: a clock set wrong on this host must not stop the proxy.
fn leaf_validity_warning(cert: &Path, now: std::time::SystemTime) -> Option<String> {
    let data = std::fs::read(cert).ok()?;
    let der = rustls_pemfile::certs(&mut data.as_slice()).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    let now = match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(_) => return None,
    };
    let validity = parsed.validity();
    if now > validity.not_after.timestamp() {
        Some(format!(
            "{}: the certificate expired on {} (clients will refuse it)",
            cert.display(),
            validity.not_after
        ))
    } else if now < validity.not_before.timestamp() {
        Some(format!(
            "{}: the certificate is not valid before {} (clients will refuse it until then)",
            cert.display(),
            validity.not_before
        ))
    } else {
        None
    }
}

/// What is wrong with a certificate and its key, as (the certificate's, the key's): each
/// file on its own first, so both are reported at once; then, when both read well, the pair
/// as a listener loads it (a key that is not the certificate's, or one that cannot sign),
/// so `proxy check` and a reload refuse what would fail every handshake.
pub(super) fn tls_pair_problems(cert: &Path, key: &Path) -> (Option<ErrorKind>, Option<ErrorKind>) {
    let file = |path: &Path, problem| ErrorKind::TlsFile {
        path: path.to_path_buf(),
        problem,
    };
    let cert_problem = check_cert_file(cert).err().map(|p| file(cert, p));
    let key_problem = check_key_file(key).err().map(|p| file(key, p));
    if cert_problem.is_some() || key_problem.is_some() {
        return (cert_problem, key_problem);
    }
    match crate::tls::load_certified_key(cert, key) {
        Ok(_) => (None, None),
        // Only a file replaced between the two reads can fail on the certificate here.
        Err(e) if e.path == cert => (Some(file(cert, e.problem)), None),
        Err(e) => (None, Some(file(key, e.problem))),
    }
}

/// The file is readable PEM holding at least one certificate.
fn check_cert_file(path: &Path) -> Result<(), TlsFileProblem> {
    let data = std::fs::read(path).map_err(TlsFileProblem::Read)?;
    let mut count = 0usize;
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        cert.map_err(|e| TlsFileProblem::InvalidPem(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(TlsFileProblem::NoCertificate);
    }
    Ok(())
}

/// The file is readable PEM holding a private key (PKCS#8, PKCS#1 or SEC1).
fn check_key_file(path: &Path) -> Result<(), TlsFileProblem> {
    let data = std::fs::read(path).map_err(TlsFileProblem::Read)?;
    match rustls_pemfile::private_key(&mut data.as_slice()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(TlsFileProblem::NoPrivateKey),
        Err(e) => Err(TlsFileProblem::InvalidPem(e.to_string())),
    }
}

#[allow(clippy::too_many_arguments)]
fn resolve_upstream(
    name: String,
    u: UpstreamFile,
    global: &Timeouts,
    root: &KeyPath,
    env: Env<'_>,
    found: &dns::Lookups,
    out: &mut Resolved,
) -> UpstreamConfig {
    let p = root.key("upstreams").key(name.as_str());
    if !valid_name(&name) {
        out.err(
            p.clone(),
            ErrorKind::InvalidName {
                what: "upstream name",
                name: name.clone(),
            },
        );
    }

    let mut backends: Vec<BackendConfig> = Vec::new();
    let mut unresolved = false;
    for (j, b) in u.backends.into_iter().enumerate() {
        let bp = p.key("backends").index(j);
        if let Err(kind) = check_weight(b.weight) {
            out.err(bp.key("weight"), kind);
        }
        // The backend's own limit, even 0, overrides the upstream's default.
        let max_conns = match b.max_conns {
            Some(n) => {
                if let Err(kind) = check_max_conns(n) {
                    out.err(bp.key("max_conns"), kind);
                }
                n
            }
            None => u.max_conns.unwrap_or(0),
        };
        if let Some(id) = b.id.as_ref().filter(|id| !valid_name(id)) {
            out.err(
                bp.key("id"),
                ErrorKind::InvalidName {
                    what: "backend id",
                    name: id.clone(),
                },
            );
        }
        let addrs = match dns::entry_backends(&b.addr, b.id.as_deref(), j, found, u.dns_family) {
            Ok(addrs) => addrs,
            Err(kind) => {
                out.err(bp.key("addr"), kind);
                unresolved = true;
                continue;
            }
        };
        for (addr, id, dns) in addrs {
            if backends.iter().any(|o| o.addr == addr) {
                out.err(bp.key("addr"), ErrorKind::DuplicateBackend(addr));
            } else if backends.iter().any(|o| o.id == id) {
                out.err(bp.key("id"), ErrorKind::DuplicateBackendId(id.clone()));
            } else if !valid_name(&id) && b.id.as_ref().is_some_and(|own| valid_name(own)) {
                // The entry's own id is valid but too long to take an address's suffix.
                out.err(
                    bp.key("id"),
                    ErrorKind::InvalidName {
                        what: "backend id",
                        name: id.clone(),
                    },
                );
            }
            backends.push(BackendConfig {
                id,
                addr,
                weight: b.weight,
                backup: b.backup,
                max_conns,
                dns,
            });
        }
    }
    // An entry that did not resolve is reported as such, not as a missing primary.
    if !unresolved && !backends.iter().any(|b| !b.backup) {
        out.err(p.key("backends"), ErrorKind::NoPrimaryBackend);
    }
    if let Some(Err(kind)) = u.max_conns.map(check_max_conns) {
        out.err(p.key("max_conns"), kind);
    }

    let slow_start = u.slow_start.map(|d| d.0).filter(|d| !d.is_zero());
    let health = resolve_health(u.health, &p.key("health"), out);

    let sticky = if u.strategy == StrategyKind::StickyCookie {
        resolve_sticky(u.sticky.unwrap_or_default(), &p.key("sticky"), env, out)
    } else {
        if u.sticky.is_some() {
            out.warn(
                p.key("sticky"),
                format!(
                    "ignored: strategy is {}, not sticky_cookie",
                    u.strategy.as_str()
                ),
            );
        }
        StickyConfig::default()
    };

    let ip_hash = match u.ip_hash {
        Some(ih) => {
            if u.strategy != StrategyKind::IpHash {
                out.warn(
                    p.key("ip_hash"),
                    format!("ignored: strategy is {}, not ip_hash", u.strategy.as_str()),
                );
            }
            let tp = p.key("ip_hash").key("trusted_proxies");
            IpHashConfig {
                trusted_proxies: parse_nets(&ih.trusted_proxies, &tp, out),
            }
        }
        None => IpHashConfig::default(),
    };

    let tls = u.tls.map(|t| {
        let mut found = TlsFindings::default();
        let tls = upstream_tls(t, &mut found);
        for (key, kind) in found.errors {
            out.err(p.key("tls").key(key), kind);
        }
        for (key, msg) in found.warnings {
            out.warn(p.key("tls").key(key), msg);
        }
        tls
    });

    let own = u.timeouts;
    let (connect, upstream_read, tunnel_idle) = (
        own.connect.map(Duration::from),
        own.upstream_read.map(Duration::from),
        own.tunnel_idle.map(Duration::from),
    );
    check_backend_timeouts(connect, upstream_read, tunnel_idle, &p.key("timeouts"), out);
    let timeouts = BackendTimeouts {
        connect: connect.unwrap_or(global.connect),
        upstream_read: upstream_read.unwrap_or(global.upstream_read),
        tunnel_idle: tunnel_idle.unwrap_or(global.tunnel_idle),
    };

    let queue = resolve_queue(
        u.max_queue,
        u.queue_timeout.map(|d| d.0),
        &backends,
        &p,
        out,
    );

    UpstreamConfig {
        name,
        strategy: u.strategy,
        backends,
        slow_start,
        health,
        sticky,
        ip_hash,
        tls,
        protocol: u.protocol,
        timeouts,
        queue,
        dns: DnsSettings {
            refresh: match u.dns_refresh {
                None => Some(super::DEFAULT_DNS_REFRESH),
                Some(d) => Some(d.0).filter(|d| !d.is_zero()),
            },
            family: u.dns_family,
            timeout: match dns_timeout(u.dns_timeout) {
                Some(t) => t,
                None => {
                    out.err(p.key("dns_timeout"), ErrorKind::ZeroDuration);
                    super::DEFAULT_DNS_TIMEOUT
                }
            },
        },
    }
}

/// `dns_timeout` (absent: the default); None for a zero, which is refused.
fn dns_timeout(timeout: Option<HumanDuration>) -> Option<Duration> {
    match timeout {
        None => Some(super::DEFAULT_DNS_TIMEOUT),
        Some(d) => Some(d.0).filter(|d| !d.is_zero()),
    }
}

/// `max_queue` and `queue_timeout` of an upstream: a queue only where a backend has a
/// limit to wait for.
fn resolve_queue(
    max_queue: u32,
    queue_timeout: Option<Duration>,
    backends: &[BackendConfig],
    p: &KeyPath,
    out: &mut Resolved,
) -> Option<QueueConfig> {
    let timeout = queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT);
    if max_queue == 0 {
        if queue_timeout.is_some() {
            out.warn(p.key("queue_timeout"), "ignored: max_queue is 0 (no queue)");
        }
        return None;
    }
    if max_queue > MAX_CONNS {
        out.err(p.key("max_queue"), ErrorKind::AtMost(MAX_CONNS as usize));
    }
    positive(out, p.key("queue_timeout"), timeout);
    if backends.iter().all(|b| b.max_conns == 0) {
        out.warn(
            p.key("max_queue"),
            "ignored: no backend of this upstream has max_conns, so none is ever full",
        );
        return None;
    }
    Some(QueueConfig {
        max: max_queue,
        timeout,
    })
}

/// What [`upstream_tls`] found wrong or risky, by key of `[upstreams.NAME.tls]`, for the
/// file (key paths) and quick mode (flags) to report in their own terms.
#[derive(Default)]
pub(super) struct TlsFindings {
    pub errors: Vec<(&'static str, ErrorKind)>,
    pub warnings: Vec<(&'static str, String)>,
}

pub(super) fn upstream_tls(t: UpstreamTlsFile, out: &mut TlsFindings) -> UpstreamTlsConfig {
    let server_name = t.server_name.map(|n| normalize_host(&n));
    if let Some(name) = &server_name {
        // The TLS library's own check, so that a name it would refuse at the first
        // handshake is refused here instead.
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            out.errors
                .push(("server_name", ErrorKind::InvalidHost(name.clone())));
        }
    }
    let ca = t.ca.and_then(|path| match read_ca_file(&path) {
        Ok(certs) => Some(super::CaCerts { path, certs }),
        Err(problem) => {
            out.errors
                .push(("ca", ErrorKind::TlsFile { path, problem }));
            None
        }
    });
    if !t.verify {
        out.warnings.push((
            "verify",
            "backend certificates are not checked: the connection is encrypted, but \
             anyone on the path to the backends can pose as them"
                .to_owned(),
        ));
    }
    let client_cert = match (t.cert, t.key) {
        (None, None) => None,
        (Some(_), None) => {
            out.errors
                .push(("key", ErrorKind::Missing("required with `cert`")));
            None
        }
        (None, Some(_)) => {
            out.errors
                .push(("cert", ErrorKind::Missing("required with `key`")));
            None
        }
        (Some(cert), Some(key)) => read_client_cert(cert, key, out),
    };
    UpstreamTlsConfig {
        server_name,
        ca,
        verify: t.verify,
        client_cert,
    }
}

/// A client certificate and its key, checked as a listener's pair is (readable, matching)
/// and, since pingora's connector panics on what it cannot use, for pingora too: every
/// certificate parses and the key's DER format is one it recognises.
fn read_client_cert(
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    out: &mut TlsFindings,
) -> Option<super::ClientCert> {
    let (cert_problem, key_problem) = tls_pair_problems(&cert, &key);
    let mut failed = false;
    for (name, kind) in [("cert", cert_problem), ("key", key_problem)] {
        if let Some(kind) = kind {
            out.errors.push((name, kind));
            failed = true;
        }
    }
    if failed {
        return None;
    }
    let chain = match read_certs(&cert) {
        Ok(chain) => chain,
        Err(problem) => {
            out.errors.push((
                "cert",
                ErrorKind::TlsFile {
                    path: cert,
                    problem,
                },
            ));
            return None;
        }
    };
    let der = std::fs::read(&key)
        .map_err(TlsFileProblem::Read)
        .and_then(
            |pem| match rustls_pemfile::private_key(&mut pem.as_slice()) {
                Ok(Some(k)) => Ok(k.secret_der().to_vec()),
                Ok(None) => Err(TlsFileProblem::NoPrivateKey),
                Err(e) => Err(TlsFileProblem::InvalidPem(e.to_string())),
            },
        )
        .and_then(
            |der| match rustls::pki_types::PrivateKeyDer::try_from(der.clone()) {
                Ok(_) => Ok(der),
                Err(e) => Err(TlsFileProblem::UnusableKey(e.to_string())),
            },
        );
    match der {
        Ok(der) => Some(super::ClientCert {
            cert,
            chain,
            key: der.into(),
        }),
        Err(problem) => {
            out.errors
                .push(("key", ErrorKind::TlsFile { path: key, problem }));
            None
        }
    }
}

/// The certificates of a CA file, each one the TLS library takes as a trust anchor.
fn read_ca_file(path: &Path) -> Result<std::sync::Arc<[Vec<u8>]>, TlsFileProblem> {
    let certs = read_certs(path)?;
    for (i, der) in certs.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        if let Err(e) = store.add(der.clone().into()) {
            return Err(TlsFileProblem::InvalidPem(format!(
                "certificate {} cannot be a trust anchor: {e}",
                i + 1
            )));
        }
    }
    Ok(certs)
}

/// The certificates of a PEM file, at least one, each one pingora's certificate parser
/// (which panics on what it cannot read) accepts.
fn read_certs(path: &Path) -> Result<std::sync::Arc<[Vec<u8>]>, TlsFileProblem> {
    let data = std::fs::read(path).map_err(TlsFileProblem::Read)?;
    let mut certs = Vec::new();
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = cert.map_err(|e| TlsFileProblem::InvalidPem(e.to_string()))?;
        if let Err(e) = x509_parser::parse_x509_certificate(&der) {
            return Err(TlsFileProblem::InvalidPem(format!(
                "certificate {} cannot be parsed: {e}",
                certs.len() + 1
            )));
        }
        certs.push(der.to_vec());
    }
    if certs.is_empty() {
        return Err(TlsFileProblem::NoCertificate);
    }
    Ok(certs.into())
}

/// 1 to [`MAX_WEIGHT`].
pub(super) fn check_weight(w: u32) -> Result<(), ErrorKind> {
    if w == 0 || w > MAX_WEIGHT {
        return Err(ErrorKind::WeightOutOfRange(w));
    }
    Ok(())
}

/// 0 (unlimited) to [`MAX_CONNS`]: more than any one proxy can hold open, so a larger
/// value is a typo (an extra digit) rather than a limit.
pub(super) fn check_max_conns(n: u32) -> Result<(), ErrorKind> {
    if n > MAX_CONNS {
        return Err(ErrorKind::MaxConnsOutOfRange(n));
    }
    Ok(())
}

/// The default backend id: the first 10 hex digits of SHA-256 of the address as written by
/// `SocketAddr`'s `Display` (`127.0.0.1:9001`, `[::1]:9001`). Deterministic, so every proxy
/// replica names a backend the same way in sticky cookies.
pub fn derived_id(addr: SocketAddr) -> String {
    let digest = Sha256::digest(addr.to_string().as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// Longest `expect_body`: a marker such as "OK" or `"status":"up"`, far shorter than the
/// part of a body a check reads.
const MAX_EXPECT_BODY: usize = 1024;

/// Names that go into cookies, URL paths and metric labels unescaped.
pub(super) fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn resolve_health(h: HealthFile, p: &KeyPath, out: &mut Resolved) -> HealthConfig {
    let http = matches!(h.kind, HealthKindFile::Http);
    for (key, set) in [
        ("host", h.host.is_some()),
        ("headers", !h.headers.is_empty()),
        ("expect_status", h.expect_status.is_some()),
        ("expect_body", h.expect_body.is_some()),
    ] {
        if set && !http {
            out.err(p.key(key), ErrorKind::OnlyForHttpChecks);
        }
    }
    if let Some(host) = h.host.as_ref().filter(|host| !valid_authority(host)) {
        out.err(p.key("host"), ErrorKind::InvalidHost(host.clone()));
    }
    let host = h.host;
    let headers = resolve_sent_fields(h.headers, check_health_field, &p.key("headers"), out);
    let expect_status = match &h.expect_status {
        None => StatusSet::default(),
        Some(value) => StatusSet::from_toml(value).unwrap_or_else(|errors| {
            let key = p.key("expect_status");
            for (at, kind) in errors {
                out.err(at.map_or(key.clone(), |i| key.index(i)), kind);
            }
            StatusSet::default()
        }),
    };
    let expect_body = h.expect_body;
    if let Some(body) = &expect_body {
        if body.is_empty() || body.len() > MAX_EXPECT_BODY {
            out.err(
                p.key("expect_body"),
                ErrorKind::ExpectBodyLength(MAX_EXPECT_BODY),
            );
        }
    }
    let kind = match h.kind {
        HealthKindFile::None => None,
        HealthKindFile::Tcp => Some(CheckKind::Tcp),
        HealthKindFile::Http => match h.path {
            Some(path) => match super::check_path(&path) {
                Ok(()) => Some(CheckKind::Http {
                    path,
                    host,
                    headers,
                    expect_status,
                    expect_body,
                }),
                Err(kind) => {
                    out.err(p.key("path"), kind);
                    None
                }
            },
            None => {
                out.err(
                    p.key("path"),
                    ErrorKind::Missing("required when kind = \"http\", e.g. path = \"/healthz\""),
                );
                None
            }
        },
    };
    let active = kind.map(|kind| {
        positive(out, p.key("interval"), h.interval.0);
        positive(out, p.key("timeout"), h.timeout.0);
        if h.rise == 0 {
            out.err(p.key("rise"), ErrorKind::Zero);
        }
        if h.fall == 0 {
            out.err(p.key("fall"), ErrorKind::Zero);
        }
        if h.timeout.0 > h.interval.0 && !h.interval.0.is_zero() {
            out.warn(
                p.key("timeout"),
                "longer than the interval: checks of one backend will overlap",
            );
        }
        ActiveCheck {
            kind,
            interval: h.interval.0,
            timeout: h.timeout.0,
            rise: h.rise,
            fall: h.fall,
        }
    });
    if h.max_fails > 0 {
        positive(out, p.key("fail_window"), h.fail_window.0);
    }
    HealthConfig {
        active,
        max_fails: h.max_fails,
        fail_window: h.fail_window.0,
        fail_open: h.fail_open,
    }
}

fn resolve_sticky(s: StickyFile, p: &KeyPath, env: Env<'_>, out: &mut Resolved) -> StickyConfig {
    if !valid_cookie_name(&s.cookie) {
        out.err(
            p.key("cookie"),
            ErrorKind::InvalidCookieName(s.cookie.clone()),
        );
    }
    if s.fallback == StrategyKind::StickyCookie {
        out.err(p.key("fallback"), ErrorKind::InvalidFallback(s.fallback));
    }
    let key = match (s.key, s.key_env) {
        (Some(_), Some(_)) => {
            out.err(p.key("key_env"), ErrorKind::Conflict("key", "key_env"));
            Vec::new()
        }
        (Some(k), None) => check_sticky_key(k.into_bytes(), out, p.key("key")),
        (None, Some(var)) => match env(&var).filter(|v| !v.is_empty()) {
            Some(k) => check_sticky_key(k.into_bytes(), out, p.key("key_env")),
            None => {
                out.err(p.key("key_env"), ErrorKind::EnvUnset(var));
                Vec::new()
            }
        },
        (None, None) => {
            out.err(p.clone(), ErrorKind::StickyKeyMissing);
            Vec::new()
        }
    };
    // Max-Age counts whole seconds: under one, the cookie would go out as `Max-Age=0`,
    // which tells the browser to delete it, and no client would ever be pinned.
    if s.max_age.is_some_and(|a| a.0 < Duration::from_secs(1)) {
        out.err(
            p.key("max_age"),
            ErrorKind::DurationTooShort(Duration::from_secs(1)),
        );
    }
    StickyConfig {
        cookie: s.cookie,
        max_age: s.max_age.map(|d| d.0),
        key,
        fallback: s.fallback,
    }
}

fn check_sticky_key(key: Vec<u8>, out: &mut Resolved, p: KeyPath) -> Vec<u8> {
    if key.len() < MIN_STICKY_KEY_LEN {
        out.err(p, ErrorKind::StickyKeyTooShort(key.len()));
    }
    key
}

/// RFC 6265 cookie-name: an RFC 2616 token.
pub(super) fn valid_cookie_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// A list of [`parse_net`] entries under `key`; each bad one is an error at its index.
fn parse_nets(list: &[String], key: &KeyPath, out: &mut Resolved) -> Vec<ipnet::IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(k, s)| match parse_net(s) {
            Ok(net) => Some(net),
            Err(kind) => {
                out.err(key.index(k), kind);
                None
            }
        })
        .collect()
}

/// A CIDR (`10.0.0.0/8`) or a bare IP (`10.1.2.3` → /32, `::1` → /128).
pub(super) fn parse_net(s: &str) -> Result<ipnet::IpNet, ErrorKind> {
    let t = s.trim();
    if let Ok(net) = t.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let reason = if t.contains('/') {
        "expected an address and a prefix length, e.g. 10.0.0.0/8"
    } else {
        "expected an IP address or a CIDR, e.g. 10.0.0.0/8"
    };
    Err(ErrorKind::InvalidCidr {
        value: s.to_string(),
        reason: reason.to_string(),
    })
}

/// Lowercase, without a trailing dot.
fn normalize_host(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS name or an IP address, as a Host header (without port) can hold.
fn valid_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

/// A `Host` value: a DNS name or IPv4 address, or an IPv6 address in brackets, with an
/// optional port.
fn valid_authority(s: &str) -> bool {
    let port_ok = |p: Option<&str>| p.is_none_or(|p| p.parse::<u16>().is_ok());
    if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, tail)) = rest.split_once(']') else {
            return false;
        };
        let port = match tail {
            "" => None,
            t => match t.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        return v6.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(port);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    port_ok(port) && valid_host(host)
}

/// An SNI `server_name`: a DNS name, or a wildcard `*.<name>` standing for one more label
/// in front of `<name>` (as a wildcard certificate covers it, RFC 6125 §6.4.3).
fn valid_server_name(s: &str) -> bool {
    match s.strip_prefix("*.") {
        Some(rest) => rest.parse::<IpAddr>().is_err() && valid_host(rest),
        None => valid_host(s),
    }
}

/// Why `rewrite` cannot replace `prefix`, if it cannot. Both must end in `/` or neither:
/// `/api/` → `/v2` would send `/api/x` as `/v2x`, and `/api` → `/` would send `//x`.
fn bad_prefix_rewrite(prefix: &str, rewrite: &str) -> Option<ErrorKind> {
    let bad = |why| Some(ErrorKind::BadPrefixRewrite(rewrite.to_string(), why));
    if !rewrite.starts_with('/') {
        return bad("must start with `/`");
    }
    // Sent as it is written: only characters a path may hold unencoded.
    if !rewrite.bytes().all(crate::proxy::normalize::is_path_char) {
        return bad("holds a character a path cannot have unencoded (`%`, `?`, `#`, a space, ...)");
    }
    if prefix.ends_with('/') != rewrite.ends_with('/') {
        return bad("must end with `/` exactly when path_prefix does");
    }
    None
}

fn resolve_routes(
    files: Option<Vec<RouteFile>>,
    upstreams: &[UpstreamConfig],
    request_id: bool,
    root: &KeyPath,
    out: &mut Resolved,
) -> Vec<Route> {
    let base = root.key("routes");
    let files = match files {
        Some(r) => r,
        None => {
            // The documented default: one upstream and no [[routes]] → `/` → that upstream.
            return match upstreams {
                [only] => vec![Route {
                    host: None,
                    path_prefix: "/".to_string(),
                    upstream: only.name.clone(),
                    prefix_rewrite: None,
                    slash_redirect: true,
                    allow: None,
                    request_headers: Vec::new(),
                }],
                [] => Vec::new(), // already reported as "no upstream"
                _ => {
                    out.err(base, ErrorKind::NoRoute);
                    Vec::new()
                }
            };
        }
    };
    if files.is_empty() {
        out.err(base.clone(), ErrorKind::NoRoute);
    }
    let mut routes = Vec::new();
    for (i, r) in files.into_iter().enumerate() {
        let p = base.index(i);
        if !upstreams.iter().any(|u| u.name == r.upstream) {
            out.err(
                p.key("upstream"),
                ErrorKind::UnknownUpstream(r.upstream.clone()),
            );
        }
        if !r.path_prefix.starts_with('/') {
            out.err(
                p.key("path_prefix"),
                ErrorKind::NotAbsolutePath(r.path_prefix.clone()),
            );
        }
        if let Some(rewrite) = &r.prefix_rewrite {
            if let Some(kind) = bad_prefix_rewrite(&r.path_prefix, rewrite) {
                out.err(p.key("prefix_rewrite"), kind);
            }
        }
        let allow = r.allow.map(|list| {
            if list.is_empty() {
                out.err(p.key("allow"), ErrorKind::EmptyAllow);
            }
            parse_nets(&list, &p.key("allow"), out)
        });
        let request_headers = resolve_sent_fields(
            r.request_headers,
            |name, value| check_request_field(name, value, request_id),
            &p.key("request_headers"),
            out,
        );
        let host = r.host.map(|h| {
            let n = normalize_host(&h);
            if !valid_host(&n) {
                out.err(p.key("host"), ErrorKind::InvalidHost(h));
            }
            n
        });
        // First match wins: a route every request of which an earlier one takes is dead
        // config, most often a catch-all `/` listed first.
        if let Some(j) = routes.iter().position(|e: &Route| {
            (e.host.is_none() || e.host == host) && r.path_prefix.starts_with(&e.path_prefix)
        }) {
            out.warn(
                p.clone(),
                format!(
                    "never used: routes[{j}] comes first and takes every request it would match"
                ),
            );
        }
        routes.push(Route {
            host,
            path_prefix: r.path_prefix,
            upstream: r.upstream,
            prefix_rewrite: r.prefix_rewrite,
            slash_redirect: r.slash_redirect,
            allow,
            request_headers,
        });
    }
    for u in upstreams {
        if !routes.is_empty() && !routes.iter().any(|r| r.upstream == u.name) {
            out.warn(
                root.key("upstreams").key(u.name.as_str()),
                "no route uses this upstream",
            );
        }
    }
    routes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn derived_id_is_ten_hex_digits_of_sha256() {
        let id = derived_id("127.0.0.1:9001".parse().unwrap());
        assert_eq!(id.len(), 10);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let full = Sha256::digest(b"127.0.0.1:9001");
        let hex: String = full.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, hex[..10]);
        assert_ne!(id, derived_id("127.0.0.1:9002".parse().unwrap()));
    }

    #[test]
    fn nets_accept_cidrs_and_bare_ips() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("localhost").is_err());
    }

    #[test]
    fn wildcard_listeners_conflict_on_the_same_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(addrs_conflict(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(addrs_conflict(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(addrs_conflict(a("127.0.0.1:80"), a("[::]:80")));
        assert!(!addrs_conflict(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!addrs_conflict(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!addrs_conflict(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(valid_cookie_name("syd_route"));
        assert!(!valid_cookie_name(""));
        assert!(!valid_cookie_name("a b"));
        assert!(!valid_cookie_name("a=b"));
    }
}

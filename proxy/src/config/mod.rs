//! Proxy configuration: the TOML file (`proxy/examples/proxy.toml` documents every key and
//! default), its validation, and the quick (flags-only) mode.
//!
//! # Layout
//! - this file: the resolved, typed [`Config`] that the rest of the proxy consumes, and the
//!   entry points [`Config::load`], [`Config::from_toml_str`] and [`Config::from_quick`].
//! - `file`: serde types mirroring the file key for key, with the defaults; unknown keys are
//!   refused everywhere.
//! - `resolve`: file types → [`Config`], with every semantic check; all errors are collected.
//! - `quick`: [`QuickOptions`] (command-line flags) → [`Config`].
//! - `locate`: key paths and the line each is on, for error messages.
//! - `dns`: backends named `host:port`: the lookup (bounded in time), one backend per
//!   address, and the re-resolution of `dns_refresh`.
//! - `duration`: durations written with a unit ("250ms", "5s", "2m", "1h").
//! - `expect`: [`StatusSet`], the statuses an HTTP health check passes on.
//! - `error`: [`ConfigError`] / [`ConfigErrors`], rendered `<file>:<line>: <key.path>: <message>`.
//! - `summary`: [`Config::summary`], the human summary printed by `proxy check`.
//!
//! # Rules worth knowing
//! - **Default route**: when `[[routes]]` is absent and exactly one upstream is defined, one
//!   route `/` → that upstream is implied. Otherwise at least one route is required
//!   (`routes = []` is an error).
//! - **No admin by default**: without `[admin]` there is no admin listener. Quick mode enables
//!   it only when asked (`--admin`, usually [`DEFAULT_ADMIN_LISTEN`]).
//! - **Relative file paths** (certificates, access log) are used as written, i.e. relative to
//!   the working directory of the proxy, not to the config file.
//! - **Backend ids** default to the first 10 hex digits of SHA-256 of the address
//!   (`127.0.0.1:9001`), so replicas of the proxy agree on sticky cookies.
//! - **Backend names** (`addr = "node1:9000"`) are looked up at load (start, `proxy check`,
//!   each reload): one backend per address, sorted; a name without an address is an error.
//!   A backend's id is derived from its address as for an address written out.
//! - **Secrets** from `*_env` keys are read at load (and reload) time. An unset `token_env` just
//!   means no token (admin mutations refused); an unset sticky `key_env` is an error.
//! - **0 disables** each `[limits]` entry; it is resolved to `None` here.

mod dns;
mod duration;
mod error;
mod expect;
mod file;
mod locate;
mod quick;
mod resolve;
mod summary;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(test)]
pub(crate) use self::dns::TableResolver;
pub use self::dns::{
    refresh, BackendAddr, DnsFamily, DnsOrigin, DnsSettings, NameChange, RefreshError, Refreshed,
    ResolveError, Resolver, SystemResolver, DEFAULT_DNS_REFRESH, DEFAULT_DNS_TIMEOUT,
};
pub use self::duration::{fmt_duration, parse_duration, HumanDuration};
pub use self::error::{ConfigError, ConfigErrors, ErrorKind, TlsFileProblem};
pub use self::expect::StatusSet;
pub use self::quick::{QuickOptions, QUICK_UPSTREAM};
pub use self::resolve::derived_id;
pub use crate::balance::StrategyKind;

use self::locate::Locator;

/// Admin address used when the admin listener is enabled without an address.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9900);
/// Default sticky cookie name.
pub const DEFAULT_STICKY_COOKIE: &str = "syd_route";
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest backend `max_conns`.
pub const MAX_CONNS: u32 = 1_000_000;

/// A health check's request path: from `/`, visible ASCII only (it goes on the request line
/// as written).
/// Whether a connection whose local address is `local` came in on the listener bound to
/// `listen`: the same port, and the same address unless the listener's is a wildcard.
pub fn accepted_on(listen: SocketAddr, local: SocketAddr) -> bool {
    listen.port() == local.port() && (listen.ip().is_unspecified() || listen.ip() == local.ip())
}

pub(crate) fn check_path(path: &str) -> Result<(), ErrorKind> {
    if !path.starts_with('/') {
        return Err(ErrorKind::NotAbsolutePath(path.to_owned()));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ErrorKind::InvalidRequestPath(path.to_owned()));
    }
    Ok(())
}

/// Most worker threads a proxy service may have: each is an OS thread with its own runtime,
/// and far more than the cores only adds switching (a typo such as `100000` would otherwise
/// try to start them all).
pub const MAX_THREADS: usize = 1024;
/// Shortest sticky-cookie HMAC key, in bytes.
pub const MIN_STICKY_KEY_LEN: usize = 16;
/// Shortest `timeouts.tunnel_idle`.
pub const MIN_TUNNEL_IDLE: Duration = Duration::from_secs(1);
/// Environment variable read for the sticky key in quick mode.
pub const QUICK_STICKY_KEY_ENV: &str = "SWITCHYARD_STICKY_KEY";

/// The resolved configuration: every default applied, every value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Process-wide settings.
    pub server: ServerConfig,
    /// The admin listener (metrics, status, admin API); None when not configured.
    pub admin: Option<AdminConfig>,
    /// Access logging.
    pub access_log: AccessLogConfig,
    /// Per-client and per-request limits.
    pub limits: Limits,
    /// Timeouts towards backends and clients.
    pub timeouts: Timeouts,
    /// Proxy listeners, at least one, distinct addresses.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream groups, in file order, names unique.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, first match wins; every `upstream` names an entry of `upstreams`.
    pub routes: Vec<Route>,
    /// The file this was loaded from; None in quick mode.
    pub source: Option<PathBuf>,
    /// Things that are allowed but probably not meant (unused sections, unshared keys), one
    /// rendered line each, to be logged at start-up and printed by `proxy check`.
    pub warnings: Vec<String>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Worker threads of the proxy service, 1 to [`MAX_THREADS`]. Default: the number of CPU
    /// cores.
    pub threads: usize,
    /// How long a stopping proxy lets in-flight requests finish.
    pub grace_period: Duration,
    pub http1: Http1Path,
    /// Every request gets a fresh `X-Request-Id` ([`crate::proxy::request_id`]), sent to
    /// the backend, set on the answer and logged.
    pub request_id: bool,
    /// HTTP balancers in front of the proxy (an AWS ALB, a CDN) whose X-Forwarded-For is
    /// believed: a request from one of them is taken to come from the right-most address
    /// of its X-Forwarded-For that is not one of them (nginx's `set_real_ip_from` with
    /// `real_ip_recursive on`), for the per-address limits, routes' `allow`, `ip_hash`
    /// (unless its own `trusted_proxies` is set), `X-Real-IP` and the access log. Empty:
    /// the connection's address (a PROXY header's) is the client's.
    pub real_ip_from: Vec<ipnet::IpNet>,
}

/// `server.http1`: which code serves plain HTTP/1.1 requests (see `crate::h1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Path {
    /// Our own request path; requests it does not take still go to pingora's.
    #[default]
    Native,
    /// pingora's proxy for every request (the escape hatch, and a baseline to compare).
    Pingora,
}

/// `[admin]`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin listener; never one of the proxy listeners.
    pub listen: SocketAddr,
    /// Bearer token for mutations; None (or unset `token_env`) refuses every mutation.
    /// Never empty.
    pub token: Option<String>,
    /// `GET /status` and `GET /metrics` need the token too (`/healthz` never does).
    pub auth_reads: bool,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("auth_reads", &self.auth_reads)
            .finish()
    }
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Whether requests are logged at all.
    pub enabled: bool,
    /// Line format.
    pub format: AccessLogFormat,
    /// File appended to; None for stdout (`"-"` in the file).
    pub path: Option<PathBuf>,
}

impl Default for AccessLogConfig {
    /// Off, JSON, stdout.
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            format: AccessLogFormat::Json,
            path: None,
        }
    }
}

/// The protocol spoken to an upstream's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (nginx's `proxy_pass`, HAProxy's default).
    #[default]
    Http1,
    /// HTTP/2: by ALPN over TLS, with prior knowledge (h2c) over plain TCP, with many
    /// requests multiplexed on each connection. gRPC backends need it (trailers, streams).
    H2,
}

impl UpstreamProtocol {
    /// The name used in the config file.
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Apache/nginx "combined".
    Combined,
}

impl AccessLogFormat {
    /// The name used in the config file.
    pub fn as_str(&self) -> &'static str {
        match self {
            AccessLogFormat::Json => "json",
            AccessLogFormat::Combined => "combined",
        }
    }
}

/// `[limits]`; None means the limit is off (0 in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections and tunnels of the whole proxy (503 beyond).
    pub max_connections: Option<u32>,
    /// Concurrent requests + open tunnels per client IP (429 beyond).
    pub max_connections_per_ip: Option<u32>,
    /// Average requests per second per client IP over 1 s windows (429 beyond).
    pub requests_per_second_per_ip: Option<u32>,
    /// Request line + headers (431 beyond; 414 when the request line alone is beyond).
    pub max_request_header_bytes: Option<usize>,
    /// Request body (413 beyond).
    pub max_request_body_bytes: Option<u64>,
    /// Time allowed to send a request head (slowloris guard).
    pub header_read_timeout: Option<Duration>,
}

impl Default for Limits {
    /// The file's defaults: 16 KiB of headers, 10 MiB of body, 10s to send a head.
    fn default() -> Self {
        resolve::limits_from(file::LimitsFile::default())
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend; > 0.
    pub connect: Duration,
    /// Waiting for a backend's response (not for tunnels); > 0.
    pub upstream_read: Duration,
    /// Idle time of an upgraded tunnel before both sides are closed; ≥ 1s.
    pub tunnel_idle: Duration,
    /// Idle time of a client keep-alive connection; zero disables keep-alive.
    pub downstream_keepalive: Duration,
    /// Each wait on the client during a request: the next piece of its body, room in its
    /// connection for the answer (HAProxy's `timeout client`, nginx's
    /// `client_body_timeout` and `send_timeout`); > 0. Not `upstream_read`: a client that
    /// pauses is not a backend that failed, and a short `upstream_read` (an API's) must
    /// not cut a slow client's download.
    pub client: Duration,
}

impl Default for Timeouts {
    /// The file's defaults: connect 2s, upstream_read 60s, tunnel_idle 1h, keep-alive 60s,
    /// client 60s.
    fn default() -> Self {
        resolve::timeouts_from(file::TimeoutsFile::default())
    }
}

/// One `[[listeners]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// TLS settings; None for plain HTTP.
    pub tls: Option<TlsConfig>,
    /// When set, every request is answered 308 → `https://<host>:<port><path>`.
    pub redirect_https_port: Option<u16>,
    /// Fields set on every answer through this listener, a backend's or the proxy's own,
    /// replacing any of the same name (as nginx's `add_header ... always` and HAProxy's
    /// `http-response set-header`): names are tokens, values visible text.
    pub response_headers: Vec<(String, String)>,
    /// Every connection begins with a PROXY protocol header from a load balancer, which
    /// gives the client's address ([`crate::proxy_protocol`]).
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

/// A listener's PROXY protocol settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// Peers allowed to connect (bare IPs become /32 or /128); empty: any.
    pub from: Vec<ipnet::IpNet>,
}

/// TLS settings of a listener. The files were checked to hold a certificate / a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Default certificate chain (PEM).
    pub cert: PathBuf,
    /// Default private key (PEM: PKCS#8, RSA or EC).
    pub key: PathBuf,
    /// More certificates chosen by SNI; names unique and lowercase.
    pub sni: Vec<SniCert>,
    /// Offer h2 by ALPN (besides http/1.1).
    pub h2: bool,
    /// Client certificates asked for and checked (mutual TLS); None: none asked for.
    pub client_auth: Option<ClientAuth>,
}

/// A TLS listener's client certificate checks (nginx's `ssl_verify_client`, HAProxy's
/// `verify required ca-file`), read at load and again at each reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The roots a client's certificate must chain to.
    pub ca: CaCerts,
    /// Whether a client without a certificate is refused.
    pub mode: ClientAuthMode,
    /// Revoked certificates, when configured.
    pub crls: Option<Crls>,
}

/// Whether a TLS listener with `client_ca` requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// A client without a verified certificate is refused during the handshake.
    #[default]
    Required,
    /// A client may present no certificate (the backend then gets no
    /// `x-forwarded-client-cert`); one that presents a certificate that does not verify is
    /// still refused.
    Optional,
}

/// Certificate revocation lists read from a PEM file at load (and again at each reload).
#[derive(Clone, PartialEq, Eq)]
pub struct Crls {
    /// The file, as configured.
    pub path: PathBuf,
    /// DER CRLs, each checked to parse.
    pub crls: std::sync::Arc<[Vec<u8>]>,
}

impl std::fmt::Debug for Crls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} CRLs)", self.path.display(), self.crls.len())
    }
}

/// A certificate served for one TLS server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lowercase server name.
    pub server_name: String,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// `[upstreams.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The table name; routes refer to it.
    pub name: String,
    /// Balancing strategy.
    pub strategy: StrategyKind,
    /// Backends in file order: at least one primary; addresses and ids unique.
    pub backends: Vec<BackendConfig>,
    /// Ramp of a recovered backend's weight; None when off.
    pub slow_start: Option<Duration>,
    /// Active and passive health checking.
    pub health: HealthConfig,
    /// Sticky-cookie settings (meaningful for `StrategyKind::StickyCookie`).
    pub sticky: StickyConfig,
    /// Client-IP hashing settings (meaningful for `StrategyKind::IpHash`).
    pub ip_hash: IpHashConfig,
    /// Set when the backends speak TLS.
    pub tls: Option<UpstreamTlsConfig>,
    /// HTTP/1.1 or h2 to the backends (WebSocket upgrades always use HTTP/1.1).
    pub protocol: UpstreamProtocol,
    /// The timeouts towards its backends: `[upstreams.<name>.timeouts]` over `[timeouts]`.
    pub timeouts: BackendTimeouts,
    /// Requests wait for a slot while every backend is at `max_conns`; None: `503` at once.
    pub queue: Option<QueueConfig>,
    /// How named backends are looked up: which addresses, how often again.
    pub dns: DnsSettings,
}

impl UpstreamConfig {
    /// The `host:port` a backend at `addr` was written as, when it was named by host.
    pub fn backend_name(&self, addr: SocketAddr) -> Option<String> {
        self.backends
            .iter()
            .find(|c| c.addr == addr)
            .and_then(|c| c.dns.as_ref())
            .map(|d| d.name(addr.port()))
    }
}

/// The wait queue of an upstream whose backends are all at their `max_conns` (nginx's
/// `queue`, HAProxy's `timeout queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Requests waiting at most; one more gets `503` at once. At least 1.
    pub max: u32,
    /// How long one waits for a slot before its `503`; > 0.
    pub timeout: Duration,
}

/// Default wait of a queued request.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The timeouts that concern an upstream's backends, resolved (its own, or `[timeouts]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTimeouts {
    /// TCP connect (and TLS handshake) to a backend; > 0.
    pub connect: Duration,
    /// Waiting for a backend's response, and each read of it; > 0.
    pub upstream_read: Duration,
    /// Idle time of an upgraded tunnel before both sides are closed; ≥ 1s.
    pub tunnel_idle: Duration,
}

impl From<&Timeouts> for BackendTimeouts {
    fn from(t: &Timeouts) -> Self {
        BackendTimeouts {
            connect: t.connect,
            upstream_read: t.upstream_read,
            tunnel_idle: t.tunnel_idle,
        }
    }
}

/// `[upstreams.<name>.tls]`: the backends are reached over TLS (nginx's `proxy_pass
/// https://`, HAProxy's `server ... ssl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// The name each backend's certificate must carry, also sent as SNI; None: the host
    /// of a backend named `host:port`, else the backend's IP address, which the
    /// certificate must then list.
    pub server_name: Option<String>,
    /// Roots trusted for the backends; None: the system's.
    pub ca: Option<CaCerts>,
    /// false accepts any certificate (encrypted, not authenticated).
    pub verify: bool,
    /// A client certificate for backends that ask for one (mTLS).
    pub client_cert: Option<ClientCert>,
}

/// A certificate chain and its key, read at load (and again at each reload) and checked to
/// be a pair.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate file, as configured.
    pub cert: PathBuf,
    /// DER certificates, leaf first.
    pub chain: std::sync::Arc<[Vec<u8>]>,
    /// The private key, DER (PKCS#8, PKCS#1 or SEC1).
    pub key: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "{}", self.cert.display())
    }
}

/// CA certificates read from a PEM file at load (and again at each reload).
#[derive(Clone, PartialEq, Eq)]
pub struct CaCerts {
    /// The file, as configured.
    pub path: PathBuf,
    /// DER certificates, each checked to parse.
    pub certs: std::sync::Arc<[Vec<u8>]>,
}

impl std::fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// One backend of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable id (cookie-safe characters), explicit or derived from the address.
    pub id: String,
    /// Backend address.
    pub addr: SocketAddr,
    /// 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// Receives traffic only while every primary is unavailable.
    pub backup: bool,
    /// In-flight requests plus open tunnels at most (nginx's `max_conns`); 0: unlimited.
    pub max_conns: u32,
    /// Set when `addr` is one of the addresses of a host name (`addr = "node1:9000"`).
    pub dns: Option<DnsOrigin>,
}

/// Health checking of an upstream's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active checks; None when not configured (backends start up).
    pub active: Option<ActiveCheck>,
    /// Passive: failures within `fail_window` that mark a backend down; 0 disables.
    pub max_fails: u32,
    /// Passive: the failure window, also the wait before a probe request.
    pub fail_window: Duration,
    /// While no backend is in service by health (every one down or not yet checked), send
    /// requests to every backend not drained, as if all were up, instead of answering `503`
    /// (Envoy's panic routing). For backends whose checks can all fail together for a
    /// reason that does not stop them serving: a shared dependency such as a database,
    /// or a check path broken by a deploy.
    pub fail_open: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            active: None,
            max_fails: 3,
            fail_window: Duration::from_secs(10),
            fail_open: false,
        }
    }
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// What is checked.
    pub kind: CheckKind,
    /// Time between checks of one backend; > 0.
    pub interval: Duration,
    /// Time allowed for one check; > 0.
    pub timeout: Duration,
    /// Consecutive passes to mark a backend up; ≥ 1.
    pub rise: u32,
    /// Consecutive failures to mark a backend down; ≥ 1.
    pub fall: u32,
}

impl ActiveCheck {
    /// The defaults of the file: every 2s, timeout 1s, rise 2, fall 2.
    pub fn with_defaults(kind: CheckKind) -> Self {
        ActiveCheck {
            kind,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
        }
    }
}

/// Most bytes of a body an HTTP check reads looking for `expect_body`: enough for a status
/// page, little enough that a backend answering its home page costs the check nothing.
pub const MAX_CHECK_BODY: usize = 64 * 1024;

/// Kind of active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET path`; a status in `expect_status` passes. `path` starts with `/`.
    Http {
        /// Request path (and query): visible ASCII only, from `/`.
        path: String,
        /// The `Host` the check sends; default `[upstreams.NAME.tls] server_name`, else the
        /// backend's `host:port` as written, else its address (a backend serving
        /// virtual hosts may answer that with 404 or a redirect).
        host: Option<String>,
        /// Fields sent besides Host, in name order: valid field names and values, none
        /// about the connection or framing. An empty value sends nothing (so
        /// `User-Agent = ""` drops the check's own).
        headers: Vec<(String, String)>,
        /// The statuses that pass; default any 2xx or 3xx.
        expect_status: StatusSet,
        /// Text the body must contain within its first [`MAX_CHECK_BODY`] bytes; None: the
        /// body is not read.
        expect_body: Option<String>,
    },
    /// A TCP connect passes.
    Tcp,
}

impl CheckKind {
    /// `GET path` with the defaults of the file: no extra fields, 2xx and 3xx pass.
    pub fn http(path: impl Into<String>, host: Option<String>) -> Self {
        CheckKind::Http {
            path: path.into(),
            host,
            headers: Vec::new(),
            expect_status: StatusSet::default(),
            expect_body: None,
        }
    }
}

/// Sticky-cookie settings.
#[derive(Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// Cookie name (an RFC 6265 token).
    pub cookie: String,
    /// Cookie Max-Age; None for a session cookie.
    pub max_age: Option<Duration>,
    /// HMAC key signing the cookie; at least [`MIN_STICKY_KEY_LEN`] bytes when the strategy is
    /// sticky_cookie, empty otherwise.
    pub key: Vec<u8>,
    /// Strategy placing requests without a valid cookie; never sticky_cookie.
    pub fallback: StrategyKind,
}

impl Default for StickyConfig {
    fn default() -> Self {
        StickyConfig {
            cookie: DEFAULT_STICKY_COOKIE.to_string(),
            max_age: None,
            key: Vec::new(),
            fallback: StrategyKind::LeastConn,
        }
    }
}

impl fmt::Debug for StickyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyConfig")
            .field("cookie", &self.cookie)
            .field("max_age", &self.max_age)
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .field("fallback", &self.fallback)
            .finish()
    }
}

/// Client-IP hashing settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpHashConfig {
    /// Peers whose `X-Forwarded-For` is believed (bare IPs become /32 or /128).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl IpHashConfig {
    /// Whether `peer` is a trusted proxy.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// One `[[routes]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Exact host to match, lowercase, without port; None matches any host.
    pub host: Option<String>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Name of the upstream (always defined).
    pub upstream: String,
    /// What replaces `path_prefix` in the path sent to the backend; None: the request's
    /// target is sent as it came.
    pub prefix_rewrite: Option<String>,
    /// For a `path_prefix` ending in `/`: a request for it without that `/` gets a `308`
    /// to it.
    pub slash_redirect: bool,
    /// The client addresses that may use the route (the connection's peer, or the address
    /// a PROXY header gave); None: every client.
    pub allow: Option<Vec<ipnet::IpNet>>,
    /// Fields set on every request sent to a backend, replacing the client's of the same
    /// name in any case or spelling (`_` for `-`); an empty value removes the client's.
    pub request_headers: Vec<(String, String)>,
}

impl Config {
    /// Reads, parses and validates a config file. On failure, returns every semantic error
    /// (or the first syntax/type error), each as `<file>:<line>: <key.path>: <message>`.
    ///
    /// Backend host names are looked up with the system resolver, which blocks (for at
    /// most each upstream's `dns_timeout`): call it off the request-serving runtime
    /// (`tokio::task::spawn_blocking`).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_with(path, &SystemResolver)
    }

    /// [`Config::load`] with backend names looked up by `resolver`.
    pub fn load_with(path: &Path, resolver: &dyn Resolver) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            line: None,
            key: String::new(),
            kind: ErrorKind::Read(e),
        })?;
        parse_with(
            &text,
            Some(path),
            &|name| std::env::var(name).ok(),
            resolver,
        )
    }

    /// Parses and validates config text; `source` names it in errors and in
    /// [`Config::source`]. Secrets named by `*_env` keys are read from the environment.
    pub fn from_toml_str(text: &str, source: Option<&Path>) -> Result<Config, ConfigErrors> {
        parse_with(
            text,
            source,
            &|name| std::env::var(name).ok(),
            &SystemResolver,
        )
    }

    /// Builds the configuration of quick mode from command-line flags.
    pub fn from_quick(q: &QuickOptions) -> Result<Config, ConfigErrors> {
        quick::resolve(q, &|name| std::env::var(name).ok(), &SystemResolver)
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Looks up an environment variable (injected so tests need not touch the process env).
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// [`Config::from_toml_str`] with the environment and the resolver given.
pub(crate) fn parse_with(
    text: &str,
    source: Option<&Path>,
    env: Env<'_>,
    resolver: &dyn Resolver,
) -> Result<Config, ConfigErrors> {
    let locator = Locator::new(text);
    let file = source.map(Path::to_path_buf);
    let parsed: file::FileConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| ConfigErrors::from(serde_error(e, file.as_deref(), &locator)))?;

    let mut out = resolve::Resolved::default();
    let mut config = resolve::resolve(parsed, env, resolver, &mut out);
    let warnings = out
        .warnings
        .iter()
        .map(|(path, msg)| {
            let mut s = String::new();
            let key = path.to_string();
            // Writing into a String cannot fail.
            let _ =
                error::write_location(&mut s, file.as_deref(), locator.line_of_path(path), &key);
            s.push_str(msg);
            s
        })
        .collect();
    if !out.errors.is_empty() {
        let mut errors: Vec<ConfigError> = out
            .errors
            .into_iter()
            .map(|(path, kind)| ConfigError {
                file: file.clone(),
                line: locator.line_of_path(&path),
                key: path.to_string(),
                kind,
            })
            .collect();
        // File order; errors about the file as a whole (no line) last.
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        return Err(ConfigErrors(errors));
    }
    config.source = file;
    config.warnings = warnings;
    Ok(config)
}

/// Converts the parser's error (syntax, wrong type, unknown key) into a located error.
fn serde_error(
    e: serde_path_to_error::Error<toml::de::Error>,
    file: Option<&Path>,
    locator: &Locator<'_>,
) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let line = inner.span().map(|s| locator.line_of_offset(s.start));
    let message = inner
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    let kind = match message.strip_prefix("unknown field `") {
        Some(rest) => ErrorKind::UnknownKey {
            hint: rest
                .split_once('`')
                .map(|(_, hint)| hint.to_string())
                .unwrap_or_default(),
        },
        None => ErrorKind::Syntax(message),
    };
    let key = if path != "." {
        path
    } else {
        line.and_then(|l| locator.key_at_line(l))
            .unwrap_or_default()
    };
    ConfigError {
        file: file.map(Path::to_path_buf),
        line,
        key,
        kind,
    }
}

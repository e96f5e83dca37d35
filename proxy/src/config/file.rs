//! The config file as written: serde types mirroring `proxy/examples/proxy.toml` key for key,
//! with its defaults. Unknown keys are refused everywhere. [`super::resolve`] turns these
//! into the typed [`super::Config`].

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::duration::HumanDuration;
use super::{AccessLogFormat, UpstreamProtocol};
use crate::balance::StrategyKind;

/// The whole file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    /// `[server]`: process-wide settings.
    pub server: ServerFile,
    /// `[admin]`: absent means no admin listener.
    pub admin: Option<AdminFile>,
    /// `[access_log]`.
    pub access_log: AccessLogFile,
    /// `[limits]`: per-client and per-request limits.
    pub limits: LimitsFile,
    /// `[timeouts]`.
    pub timeouts: TimeoutsFile,
    /// `[[listeners]]`: at least one is required.
    pub listeners: Vec<ListenerFile>,
    /// `[upstreams.<name>]`, in file order.
    pub upstreams: OrderedMap<UpstreamFile>,
    /// `[[routes]]`; None when the key is absent (see the default-route rule in `super`).
    pub routes: Option<Vec<RouteFile>>,
}

/// `[server]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServerFile {
    /// Worker threads; default: the number of CPU cores.
    pub threads: Option<usize>,
    /// Time in-flight requests get to finish on SIGTERM. Default 5s.
    pub grace_period: HumanDuration,
    /// Which code serves plain HTTP/1.1 requests. Default "native".
    pub http1: super::Http1Path,
    /// A fresh X-Request-Id on every request. Default false.
    pub request_id: bool,
    /// Balancers in front (CIDRs or addresses) whose X-Forwarded-For names the client
    /// (nginx's `set_real_ip_from`). Default none.
    pub real_ip_from: Vec<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            threads: None,
            grace_period: HumanDuration::secs(5),
            http1: super::Http1Path::Native,
            request_id: false,
            real_ip_from: Vec::new(),
        }
    }
}

/// `[admin]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AdminFile {
    /// Admin listener address. Default 127.0.0.1:9900.
    pub listen: Addr,
    /// Bearer token for mutations, inline.
    pub token: Option<String>,
    /// Name of an environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// Whether `GET /status` and `GET /metrics` need the token too.
    pub auth_reads: bool,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            listen: Addr(super::DEFAULT_ADMIN_LISTEN),
            token: None,
            token_env: None,
            auth_reads: false,
        }
    }
}

/// `[access_log]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AccessLogFile {
    /// Off by default.
    pub enabled: bool,
    /// "json" (default) or "combined".
    pub format: AccessLogFormat,
    /// "-" (default) for stdout, else a file appended to.
    pub path: PathBuf,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        Self {
            enabled: false,
            format: AccessLogFormat::Json,
            path: PathBuf::from("-"),
        }
    }
}

/// `[limits]`; 0 disables a limit.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LimitsFile {
    /// Open client connections and tunnels, all clients together. Default: from the
    /// open-file limit ([`crate::capacity`]); 0 turns the cap off.
    pub max_connections: Option<u32>,
    /// Concurrent requests + open tunnels per client IP. Default 0 (off).
    pub max_connections_per_ip: u32,
    /// Requests per second per client IP. Default 0 (off).
    pub requests_per_second_per_ip: u32,
    /// Request line + headers. Default 16384.
    pub max_request_header_bytes: usize,
    /// Request body. Default 10 MiB.
    pub max_request_body_bytes: u64,
    /// Time allowed to send a request head. Default 10s.
    pub header_read_timeout: HumanDuration,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_connections_per_ip: 0,
            requests_per_second_per_ip: 0,
            max_request_header_bytes: 16 * 1024,
            max_request_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: HumanDuration::secs(10),
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TimeoutsFile {
    /// TCP connect to a backend. Default 2s.
    pub connect: HumanDuration,
    /// Waiting for a backend's response. Default 60s.
    pub upstream_read: HumanDuration,
    /// Idle time of an upgraded tunnel. Default 1h, at least 1s.
    pub tunnel_idle: HumanDuration,
    /// Idle keep-alive of client connections. Default 60s; 0 disables keep-alive.
    pub downstream_keepalive: HumanDuration,
    /// Each wait on the client during a request (its body, room for the answer). Default 60s.
    pub client: HumanDuration,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        Self {
            connect: HumanDuration::secs(2),
            upstream_read: HumanDuration::secs(60),
            tunnel_idle: HumanDuration::secs(3600),
            downstream_keepalive: HumanDuration::secs(60),
            client: HumanDuration::secs(60),
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    /// Address to bind.
    pub listen: Addr,
    /// Answer everything with 308 to https on this port.
    #[serde(default)]
    pub redirect_https_port: Option<u16>,
    /// Default certificate; makes this a TLS listener.
    #[serde(default)]
    pub tls: Option<CertFile>,
    /// Extra certificates chosen by SNI.
    #[serde(default)]
    pub sni: Vec<SniFile>,
    /// Offer h2 by ALPN; default true on TLS listeners.
    #[serde(default)]
    pub h2: Option<bool>,
    /// Fields set on every answer (Strict-Transport-Security, ...), by name.
    #[serde(default)]
    pub response_headers: std::collections::BTreeMap<String, String>,
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Only these peers (IPs or CIDRs: the load balancers) may connect; default any.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
}

/// `tls = { cert, key, client_ca, client_auth, client_crl }`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertFile {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that clients' certificates are checked against; absent: no
    /// client certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether a client must present a certificate; default "required" with `client_ca`.
    #[serde(default)]
    pub client_auth: Option<super::ClientAuthMode>,
    /// PEM certificate revocation lists for the client certificates.
    #[serde(default)]
    pub client_crl: Option<PathBuf>,
}

/// One `sni = [...]` entry.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SniFile {
    /// The TLS server name this certificate answers.
    pub server_name: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[upstreams.<name>]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// Balancing strategy; default round_robin.
    #[serde(default = "default_strategy")]
    pub strategy: StrategyKind,
    /// The backends; at least one must be a primary.
    #[serde(default)]
    pub backends: Vec<BackendFile>,
    /// Weight ramp after recovery; absent or 0 disables.
    #[serde(default)]
    pub slow_start: Option<HumanDuration>,
    /// Default `max_conns` of each backend that sets none; absent or 0: unlimited.
    #[serde(default)]
    pub max_conns: Option<u32>,
    /// Requests that may wait for a slot while every backend is full; 0 (default): none.
    #[serde(default)]
    pub max_queue: u32,
    /// How long a queued request waits for a slot; default 5s.
    #[serde(default)]
    pub queue_timeout: Option<HumanDuration>,
    /// `[upstreams.<name>.health]`.
    #[serde(default)]
    pub health: HealthFile,
    /// `[upstreams.<name>.sticky]`, read when strategy = "sticky_cookie".
    #[serde(default)]
    pub sticky: Option<StickyFile>,
    /// `[upstreams.<name>.ip_hash]`, read when strategy = "ip_hash".
    #[serde(default)]
    pub ip_hash: Option<IpHashFile>,
    /// `[upstreams.<name>.tls]`: present when the backends speak TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
    /// "http1" (default) or "h2".
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `[upstreams.<name>.timeouts]`: this upstream's own, each defaulting to `[timeouts]`.
    #[serde(default)]
    pub timeouts: UpstreamTimeoutsFile,
    /// How often backends named `host:port` are looked up again; default 30s, 0 turns it
    /// off (looked up at load and reload only).
    #[serde(default)]
    pub dns_refresh: Option<HumanDuration>,
    /// Which addresses of a name become backends: "all" (default), "ipv4" or "ipv6".
    #[serde(default)]
    pub dns_family: super::DnsFamily,
    /// How long one lookup of a backend's name may take before it fails; default 5s.
    #[serde(default)]
    pub dns_timeout: Option<HumanDuration>,
}

/// `[upstreams.<name>.timeouts]`: the timeouts that concern backends, per upstream (an API
/// that must answer in seconds beside long-polling that waits for half a minute).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct UpstreamTimeoutsFile {
    pub connect: Option<HumanDuration>,
    pub upstream_read: Option<HumanDuration>,
    pub tunnel_idle: Option<HumanDuration>,
}

/// `[upstreams.<name>.tls]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct UpstreamTlsFile {
    /// Name checked against the certificates and sent as SNI; default the backend's host
    /// name (`addr = "host:port"`), else its IP.
    pub server_name: Option<String>,
    /// PEM file of trusted CA certificates; default the system's roots.
    pub ca: Option<PathBuf>,
    /// Check the backends' certificates. Default true.
    pub verify: bool,
    /// PEM client certificate chain, for backends that ask for one.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl Default for UpstreamTlsFile {
    fn default() -> Self {
        Self {
            server_name: None,
            ca: None,
            verify: true,
            cert: None,
            key: None,
        }
    }
}

fn default_strategy() -> StrategyKind {
    StrategyKind::RoundRobin
}

/// One `backends = [...]` entry.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendFile {
    /// `ip:port`, `[v6]:port` or `host:port` (one backend per address of the name).
    pub addr: super::BackendAddr,
    /// Default 1; 1 to 10000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Stable id; default derived from the address.
    #[serde(default)]
    pub id: Option<String>,
    /// Only used while every primary is down.
    #[serde(default)]
    pub backup: bool,
    /// In-flight requests plus tunnels at most; absent: the upstream's `max_conns`; 0:
    /// unlimited, whatever the upstream's.
    #[serde(default)]
    pub max_conns: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

/// Active check kind as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum HealthKindFile {
    /// No active check (default).
    #[default]
    None,
    /// GET `path`; a status in `expect_status` (default 2xx/3xx) passes.
    Http,
    /// TCP connect.
    Tcp,
}

/// `[upstreams.<name>.health]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct HealthFile {
    /// Active check kind; default none.
    pub kind: HealthKindFile,
    /// Path for http checks.
    pub path: Option<String>,
    /// Host header for http checks; default the tls server_name, else the backend's
    /// `host:port` as written, else its address.
    pub host: Option<String>,
    /// Fields sent with every http check besides Host (HAProxy's `http-check send hdr`,
    /// Envoy's `request_headers_to_add`).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Statuses that pass an http check: a code, a class ("2xx"), or a list of them; a
    /// `toml::Value` so that each entry's error is ours, with its own line. Default 2xx/3xx.
    pub expect_status: Option<toml::Value>,
    /// Text an http check's body must contain; default the body is not read.
    pub expect_body: Option<String>,
    /// Default 2s.
    pub interval: HumanDuration,
    /// Default 1s.
    pub timeout: HumanDuration,
    /// Default 2.
    pub rise: u32,
    /// Default 2.
    pub fall: u32,
    /// Passive: failures within `fail_window` that mark a backend down. Default 3; 0 disables.
    pub max_fails: u32,
    /// Default 10s.
    pub fail_window: HumanDuration,
    /// With no backend in service by health, spread requests over all those not drained
    /// rather than answer `503`. Default false.
    pub fail_open: bool,
}

impl Default for HealthFile {
    fn default() -> Self {
        Self {
            kind: HealthKindFile::None,
            path: None,
            host: None,
            headers: Default::default(),
            expect_status: None,
            expect_body: None,
            interval: HumanDuration::secs(2),
            timeout: HumanDuration::secs(1),
            rise: 2,
            fall: 2,
            max_fails: 3,
            fail_window: HumanDuration::secs(10),
            fail_open: false,
        }
    }
}

/// `[upstreams.<name>.sticky]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct StickyFile {
    /// Cookie name; default "syd_route".
    pub cookie: String,
    /// Cookie Max-Age; absent for a session cookie.
    pub max_age: Option<HumanDuration>,
    /// HMAC key, inline (at least 16 bytes).
    pub key: Option<String>,
    /// Name of an environment variable holding the key.
    pub key_env: Option<String>,
    /// Strategy for first requests and re-placement; default least_conn.
    pub fallback: StrategyKind,
}

impl Default for StickyFile {
    fn default() -> Self {
        Self {
            cookie: super::DEFAULT_STICKY_COOKIE.to_string(),
            max_age: None,
            key: None,
            key_env: None,
            fallback: StrategyKind::LeastConn,
        }
    }
}

/// `[upstreams.<name>.ip_hash]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct IpHashFile {
    /// CIDRs or bare IPs whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    /// Exact host, case-insensitive; absent matches any.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix; default "/".
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Upstream name.
    pub upstream: String,
    /// Replaces the matched `path_prefix` in the path the backend gets (Envoy's
    /// `prefix_rewrite`, nginx's `proxy_pass` with a URI); absent: the path as it came.
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// A request for `path_prefix` without its last `/` is redirected to it (nginx's
    /// behaviour for `location /api/`); default on.
    #[serde(default = "yes")]
    pub slash_redirect: bool,
    /// Client addresses or CIDRs that may use the route (others get 403); absent: all.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Fields set on every request the route sends to a backend, replacing the client's of
    /// the same name; an empty value removes the client's (nginx's `proxy_set_header`).
    #[serde(default)]
    pub request_headers: std::collections::BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

fn default_prefix() -> String {
    "/".to_string()
}

/// A TOML table read as (key, value) pairs in file order (a `BTreeMap` would sort them).
#[derive(Debug)]
pub(super) struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        deserializer.deserialize_map(Vis(PhantomData))
    }
}

/// A socket address (`ip:port`) whose parse error quotes the value and shows the syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Vis;
        impl Visitor<'_> for Vis {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address as \"ip:port\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Addr, E> {
                v.parse()
                    .map(Addr)
                    .map_err(|_| E::custom(super::ErrorKind::InvalidAddress(v.to_string())))
            }
        }
        deserializer.deserialize_str(Vis)
    }
}

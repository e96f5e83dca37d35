//! Configuration errors: what went wrong ([`ErrorKind`]), where ([`ConfigError`]), and all of
//! them at once ([`ConfigErrors`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::balance::StrategyKind;

use super::fmt_duration;

/// Every error that loading or validating a configuration can report.
///
/// Rendered as `<file>:<line>: <key.path>: <message>` by [`ConfigError`]; the key and line
/// are not part of these messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration file could not be read.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// TOML syntax, or a value of the wrong type, as reported by the parser.
    #[error("{0}")]
    Syntax(String),
    /// A key that the configuration does not have (often a typo).
    #[error("unknown key{hint}")]
    UnknownKey {
        /// `, expected one of ...` as serde phrased it, or empty.
        hint: String,
    },
    /// A route names an upstream that is not defined.
    #[error("no upstream named `{0}`")]
    UnknownUpstream(String),
    /// No `[upstreams.*]` table.
    #[error("no upstream defined")]
    NoUpstream,
    /// An upstream whose backends are all backups (or that lists none).
    #[error("no primary backend (every backend is a backup, or none is listed)")]
    NoPrimaryBackend,
    /// Two backends of one upstream with the same address.
    #[error("duplicate backend address {0}")]
    DuplicateBackend(SocketAddr),
    /// Two backends of one upstream with the same id (explicit, or derived from the address).
    #[error("duplicate backend id `{0}`")]
    DuplicateBackendId(String),
    /// An upstream name or backend id that cannot go into a cookie, URL path or metric label.
    #[error("invalid {what} `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    InvalidName {
        /// "upstream name" or "backend id".
        what: &'static str,
        /// The name as written.
        name: String,
    },
    /// A backend weight outside `1..=10000`.
    #[error("weight {0} is out of range (1 to {max})", max = super::MAX_WEIGHT)]
    WeightOutOfRange(u32),
    /// A `max_conns` above [`MAX_CONNS`](super::MAX_CONNS).
    #[error("max_conns {0} is out of range (0 for unlimited, or up to {max})", max = super::MAX_CONNS)]
    MaxConnsOutOfRange(u32),
    /// An address that is not `ip:port`.
    #[error("invalid address `{0}` (expected ip:port, e.g. 127.0.0.1:9001 or [::1]:9001)")]
    InvalidAddress(String),
    /// A backend address that is neither `ip:port` nor `host:port`.
    #[error("invalid address `{0}` (expected host:port or ip:port, e.g. node1:9001, 127.0.0.1:9001 or [::1]:9001)")]
    InvalidBackendAddress(String),
    /// A backend's host name that the resolver gave no address for (or no answer in time).
    #[error("cannot resolve `{name}`: {reason}")]
    Unresolvable {
        /// `host:port` as written.
        name: String,
        /// The resolver's complaint.
        reason: String,
    },
    /// A backend's host name with addresses, none of them of `dns_family`.
    #[error("`{name}` has no {} address (dns_family = \"{}\"), only {}", family_name(*.family), .family.as_str(), list(.found))]
    NoAddressOfFamily {
        /// `host:port` as written.
        name: String,
        /// The family asked for.
        family: super::dns::DnsFamily,
        /// The addresses it has.
        found: Vec<SocketAddr>,
    },
    /// Quick mode: the `=weight` of a `--backend` is not a number.
    #[error("invalid weight `{0}` (expected 1 to {max})", max = super::MAX_WEIGHT)]
    WeightSyntax(String),
    /// Two listeners on one address (or a wildcard address and another on the same port).
    #[error("address {addr} conflicts with the listener on {other}")]
    DuplicateListener {
        /// This listener's address.
        addr: SocketAddr,
        /// The earlier listener's address.
        other: SocketAddr,
    },
    /// The admin listener on the address (or port, with a wildcard) of a proxy listener.
    #[error("conflicts with the proxy listener on {0}")]
    AdminClashesWithListener(SocketAddr),
    /// A certificate or key file that is missing or does not hold what it should.
    #[error("{}: {problem}", path.display())]
    TlsFile {
        /// The offending file, as configured.
        path: PathBuf,
        /// What is wrong with it.
        problem: TlsFileProblem,
    },
    /// The access log file cannot be opened for appending.
    #[error("cannot open {} for appending: {reason}", path.display())]
    CannotOpen {
        /// The file, as configured.
        path: PathBuf,
        /// The operating system's complaint.
        reason: String,
    },
    /// A setting that only makes sense on a TLS listener.
    #[error("only valid on a TLS listener (set `tls = {{ cert = ..., key = ... }}`)")]
    NeedsTls,
    /// `client_auth` or `client_crl` on a listener without `client_ca`.
    #[error("only valid with `client_ca` (the CA file client certificates are checked against)")]
    NeedsClientCa,
    /// `proxy_protocol_from` on a listener without `proxy_protocol = true`.
    #[error("only valid with `proxy_protocol = true` on this listener")]
    NeedsProxyProtocol,
    /// Two SNI certificates for one server name.
    #[error("duplicate server name `{0}`")]
    DuplicateServerName(String),
    /// strategy = "sticky_cookie" without `key` or `key_env`.
    #[error("strategy sticky_cookie needs `key` or `key_env` in [upstreams.<name>.sticky]")]
    StickyKeyMissing,
    /// `key_env` (or a similar `*_env` key) names an unset or empty variable.
    #[error("environment variable `{0}` is unset or empty")]
    EnvUnset(String),
    /// A sticky-cookie key shorter than 16 bytes.
    #[error("key is {0} bytes long, at least {min} are required", min = super::MIN_STICKY_KEY_LEN)]
    StickyKeyTooShort(usize),
    /// A fallback strategy that is itself sticky.
    #[error("the fallback cannot be {}", .0.as_str())]
    InvalidFallback(StrategyKind),
    /// A cookie name that is not an RFC 6265 token.
    #[error("invalid cookie name `{0}`")]
    InvalidCookieName(String),
    /// Two mutually exclusive keys both set.
    #[error("set either `{0}` or `{1}`, not both")]
    Conflict(&'static str, &'static str),
    /// A count that must be at least 1.
    #[error("must be at least 1")]
    Zero,
    /// A request path with spaces or control characters.
    #[error(
        "`{0}` is not a request path (visible ASCII only, no spaces; percent-encode the rest)"
    )]
    InvalidRequestPath(String),
    /// A response field name that is not a token.
    #[error("`{0}` is not a field name (letters, digits and !#$%&'*+-.^_`|~ only)")]
    InvalidFieldName(String),
    /// A response field the proxy or the backend's framing owns.
    #[error("`{0}` cannot be set here: the proxy or the backend's framing sets it")]
    ReservedField(String),
    /// A response field value with control characters, or empty or padded.
    #[error("invalid value: visible text without line breaks, not empty, no spaces around it")]
    InvalidFieldValue,
    /// A request field a route may not set, with the reason.
    #[error("`{0}` cannot be set here: {1}")]
    ReservedRequestField(String, &'static str),
    /// A request field value with control characters, or padded.
    #[error("invalid value: visible text and spaces, no CR, LF, NUL or other control characters, no spaces around it (\"\" removes the field)")]
    InvalidRequestFieldValue,
    /// Two request fields that a backend reads as one.
    #[error("`{0}` names the same field as `{1}` (case and `_` for `-` aside)")]
    SameRequestField(String, String),
    /// A `Host` to send that is not an authority.
    #[error("`{0}` is not a valid Host: a DNS name or IP address, with an optional port")]
    InvalidHostField(String),
    /// An `expect_status` entry that is neither a status code nor a class.
    #[error("`{0}` is not a status: a code from 100 to 599, or a class such as \"2xx\"")]
    InvalidStatus(String),
    /// An empty `expect_status`.
    #[error("no status would pass: list at least one, e.g. [200] (default: any 2xx or 3xx)")]
    NoStatus,
    /// An `expect_body` that is empty or longer than the part of a body a check reads.
    #[error("must be 1 to {0} bytes")]
    ExpectBodyLength(usize),
    /// A key meaningful only for HTTP health checks.
    #[error("only valid when kind = \"http\"")]
    OnlyForHttpChecks,
    /// A count above its bound.
    #[error("must be at most {0}")]
    AtMost(usize),
    /// A duration that must be greater than zero.
    #[error("must be greater than 0")]
    ZeroDuration,
    /// A duration below its minimum.
    #[error("must be at least {}", fmt_duration(*.0))]
    DurationTooShort(Duration),
    /// A required key is absent.
    #[error("missing: {0}")]
    Missing(&'static str),
    /// An HTTP path (health check path, route prefix) that does not start with `/`.
    #[error("`{0}` must start with `/`")]
    NotAbsolutePath(String),
    /// A `prefix_rewrite` that would make bad or surprising paths.
    #[error("`{0}`: {1}")]
    BadPrefixRewrite(String, &'static str),
    /// A host name with characters a Host header cannot have.
    #[error("invalid host `{0}`")]
    InvalidHost(String),
    /// A `trusted_proxies` entry that is neither a CIDR nor an IP address.
    #[error("invalid network `{value}`: {reason}")]
    InvalidCidr {
        /// The entry as written.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A file path that is empty.
    #[error("must not be empty (use \"-\" for stdout)")]
    EmptyPath,
    /// Port 0 where a real port is needed.
    #[error("port must not be 0")]
    ZeroPort,
    /// No proxy listener at all.
    #[error("no listener configured: add a [[listeners]] table")]
    NoListener,
    /// No route, and none can be implied.
    #[error("no route: add [[routes]] (a default route `/` is implied only when [[routes]] is absent and there is exactly one upstream)")]
    NoRoute,
    #[error("an empty list lets no client use the route: list the addresses allowed, or remove the key to allow every client")]
    EmptyAllow,
    /// A reload stopped before it ended (the proxy is stopping).
    #[error("the reload was cancelled: the proxy is stopping")]
    Cancelled,
    /// Quick mode: no `--backend`.
    #[error("at least one --backend is required")]
    NoBackend,
    /// Quick mode: a flag that needs others.
    #[error("needs {0}")]
    NeedsFlags(&'static str),
}

fn family_name(f: super::dns::DnsFamily) -> &'static str {
    match f {
        super::dns::DnsFamily::Ipv6 => "IPv6",
        _ => "IPv4",
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What is wrong with a certificate or private key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsFileProblem {
    /// Missing or unreadable.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// Not valid PEM.
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    /// Valid PEM, but no `CERTIFICATE` section.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// Valid PEM, but no PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    #[error("no PEM private key found (PKCS#8, RSA or EC)")]
    NoPrivateKey,
    /// Valid PEM, but no `X509 CRL` section.
    #[error("no PEM certificate revocation list (X509 CRL) found")]
    NoCrl,
    /// A revocation list the TLS library cannot use.
    #[error("invalid certificate revocation list: {0}")]
    InvalidCrl(String),
    /// A private key the TLS library cannot sign with (an unsupported algorithm or curve).
    #[error("unusable private key: {0}")]
    UnusableKey(String),
    /// A private key that is not the one of the certificate it is paired with.
    #[error("does not match the certificate {} (the key's public key is not the certificate's)", cert.display())]
    KeyMismatch {
        /// The certificate file the key was paired with.
        cert: PathBuf,
    },
}

/// One error, located: the file and line, and the key path (`upstreams.chat.backends[1].weight`)
/// or, in quick mode, the flag (`--backend 127.0.0.1:x`).
#[derive(Debug)]
pub struct ConfigError {
    /// The configuration file, or None for quick-mode flags.
    pub file: Option<PathBuf>,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// Key path or flag; empty for errors about the whole file (syntax, unreadable).
    pub key: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, self.file.as_deref(), self.line, &self.key)?;
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

/// Writes `file:line: key: ` (each part only when known).
pub(crate) fn write_location(
    f: &mut impl fmt::Write,
    file: Option<&std::path::Path>,
    line: Option<usize>,
    key: &str,
) -> fmt::Result {
    match (file, line) {
        (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
        (Some(file), None) => write!(f, "{}: ", file.display())?,
        (None, Some(line)) => write!(f, "line {line}: ")?,
        (None, None) => {}
    }
    if !key.is_empty() {
        write!(f, "{key}: ")?;
    }
    Ok(())
}

/// All errors found in one configuration, in file order, one per line when displayed.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// The errors, in file order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// The errors, one rendered line each.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

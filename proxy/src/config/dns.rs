//! Backends named by DNS name: the `addr` syntax (`ip:port`, `[v6]:port`, `host:port`), the
//! lookup of names with the system resolver under a time bound, the expansion of one entry
//! into one backend per address (as nginx does for a `server` name), and the re-resolution
//! that `dns_refresh` runs on a live upstream ([`refresh`]).
//!
//! Lookups sit behind [`Resolver`] so that tests can answer with addresses of their choice:
//! without root, the machine's own answers cannot be changed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, Visitor};

use super::error::ErrorKind;
use super::resolve::derived_id;
use super::{BackendConfig, UpstreamConfig};

/// Default `dns_timeout`, how long one lookup may take before it is an error: a resolver
/// that does not answer must not hold a start, a `proxy check` or a reload for ever
/// (glibc's own bound is `timeout × attempts` per server, 10 s and more with the defaults).
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Default `dns_refresh`: named backends are looked up again every 30 s (Envoy's STRICT_DNS
/// every 5 s; nginx OSS only at load, which `dns_refresh = "0s"` gives).
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);

/// Lookups of the system resolver that outlived their wait and still run, beyond which a
/// new one fails at once: a resolver that hangs must not have each refresh leave more
/// threads behind.
const MAX_ABANDONED_LOOKUPS: usize = 64;

/// Names looked up at once by [`lookup_all`].
const PARALLEL_LOOKUPS: usize = 32;

/// A backend's `addr` as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    /// `ip:port` or `[v6]:port`.
    Socket(SocketAddr),
    /// `host:port`, the host lowercase without a trailing dot.
    Name { host: String, port: u16 },
}

impl BackendAddr {
    /// Parses `ip:port`, `[v6]:port` or `host:port` (a DNS name: letters, digits, `-`, `_`
    /// and dots, its last label not all digits, so that a mistyped IPv4 address such as
    /// `10.0.0.300:80` is refused here rather than sent to the resolver).
    pub fn parse(s: &str) -> Result<Self, ErrorKind> {
        let bad = || ErrorKind::InvalidBackendAddress(s.to_owned());
        if let Ok(addr) = s.parse::<SocketAddr>() {
            // Nothing listens on port 0: every connection would be refused, as nginx's
            // `invalid port` refuses it at load, and as a name with port 0 is below.
            if addr.port() == 0 {
                return Err(bad());
            }
            return Ok(BackendAddr::Socket(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let last_numeric = host
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if port == 0 || host.len() > 253 || last_numeric || !host.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(BackendAddr::Name { host, port })
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Socket(a) => write!(f, "{a}"),
            BackendAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl<'de> Deserialize<'de> for BackendAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Vis;
        impl Visitor<'_> for Vis {
            type Value = BackendAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address as \"host:port\" or \"ip:port\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BackendAddr, E> {
                BackendAddr::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Vis)
    }
}

/// `dns_family` (quick mode: `--dns-family`): which addresses of a name become backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum DnsFamily {
    /// IPv4 and IPv6 (nginx's behaviour).
    #[default]
    All,
    /// IPv4 only (`localhost` without a `::1` on which nothing listens).
    Ipv4,
    /// IPv6 only.
    Ipv6,
}

impl DnsFamily {
    /// The name used in the config file.
    pub fn as_str(&self) -> &'static str {
        match self {
            DnsFamily::All => "all",
            DnsFamily::Ipv4 => "ipv4",
            DnsFamily::Ipv6 => "ipv6",
        }
    }

    fn admits(self, a: &SocketAddr) -> bool {
        match self {
            DnsFamily::All => true,
            DnsFamily::Ipv4 => a.is_ipv4(),
            DnsFamily::Ipv6 => a.is_ipv6(),
        }
    }
}

/// An upstream's DNS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsSettings {
    /// How often named backends are looked up again; None: only at load and reload.
    pub refresh: Option<Duration>,
    /// Which addresses of a name are used.
    pub family: DnsFamily,
    /// How long one lookup of a name may take (at load, reload and refresh).
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            refresh: Some(DEFAULT_DNS_REFRESH),
            family: DnsFamily::All,
            timeout: DEFAULT_DNS_TIMEOUT,
        }
    }
}

/// Where a backend's address came from when its entry named a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOrigin {
    /// The host as written (lowercase, no trailing dot); the port is the address's.
    pub host: String,
    /// The entry's index in the upstream's `backends`: the backends of one entry are looked
    /// up and replaced together.
    pub entry: usize,
    /// The entry's own `id`, from which each address's id is made ([`backend_id`]).
    pub id: Option<String>,
}

impl DnsOrigin {
    /// `host:port`, as written.
    pub fn name(&self, port: u16) -> String {
        format!("{}:{port}", self.host)
    }
}

/// Why a name gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The resolver's own answer (no such name, no address, a failure).
    #[error("{0}")]
    Failed(String),
    /// No answer in time.
    #[error("no answer from the resolver within {}", super::fmt_duration(*.0))]
    TimedOut(Duration),
    /// Too many lookups already wait for a resolver that does not answer.
    #[error("too many lookups already waiting for the resolver")]
    Busy,
}

/// Looks up the addresses of a name; the system's in the proxy, a table in tests.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// Every address of `host`, with `port`, in any order, duplicates allowed, or
    /// [`ResolveError::TimedOut`] after `timeout`.
    fn lookup(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, ResolveError>;
}

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS, as `nsswitch.conf` says).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let host = host.to_owned();
        bounded(timeout, move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .map_err(|e| ResolveError::Failed(e.to_string()))
        })
    }
}

/// Lookups whose waiter gave up and that have not ended yet.
static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// Where a lookup's thread leaves its answer for its waiter.
enum Slot {
    Waiting,
    Done(Result<Vec<SocketAddr>, ResolveError>),
    /// The waiter gave up: the answer, when it comes, is dropped.
    Abandoned,
}

/// Runs a blocking lookup on its own thread and waits at most `timeout` for it:
/// `getaddrinfo` cannot be cancelled, so one that outlives the wait finishes on its own and
/// its answer is dropped. While [`MAX_ABANDONED_LOOKUPS`] such lookups are still running
/// (a resolver that does not answer at all), new ones fail at once instead of adding
/// threads at every refresh.
fn bounded<F>(timeout: Duration, lookup: F) -> Result<Vec<SocketAddr>, ResolveError>
where
    F: FnOnce() -> Result<Vec<SocketAddr>, ResolveError> + Send + 'static,
{
    if ABANDONED.load(Ordering::Acquire) >= MAX_ABANDONED_LOOKUPS {
        return Err(ResolveError::Busy);
    }
    let slot = Arc::new((Mutex::new(Slot::Waiting), Condvar::new()));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("dns lookup".to_owned())
        .spawn(move || {
            let answer = lookup();
            let (lock, ready) = &*theirs;
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(*s, Slot::Abandoned) {
                ABANDONED.fetch_sub(1, Ordering::AcqRel);
            } else {
                *s = Slot::Done(answer);
                ready.notify_one();
            }
        });
    if let Err(e) = spawned {
        return Err(ResolveError::Failed(format!("cannot start a lookup: {e}")));
    }
    let (lock, ready) = &*slot;
    let s = lock.lock().unwrap_or_else(|p| p.into_inner());
    let (mut s, _) = ready
        .wait_timeout_while(s, timeout, |s| matches!(s, Slot::Waiting))
        .unwrap_or_else(|p| p.into_inner());
    match std::mem::replace(&mut *s, Slot::Abandoned) {
        Slot::Done(answer) => answer,
        Slot::Waiting => {
            ABANDONED.fetch_add(1, Ordering::AcqRel);
            Err(ResolveError::TimedOut(timeout))
        }
        Slot::Abandoned => Err(ResolveError::Failed(
            "the lookup ended without an answer".to_owned(),
        )),
    }
}

/// The answer for each name, by (host, port).
pub(super) type Lookups = HashMap<(String, u16), Result<Vec<SocketAddr>, ResolveError>>;

/// Names to look up, by (host, port), each with how long its lookup may take.
pub(super) type Names = HashMap<(String, u16), Duration>;

/// The names among `addrs`, each address with its upstream's `dns_timeout`. A name in
/// several upstreams gets the longest of their timeouts: it is looked up once for all.
pub(super) fn names<'a>(addrs: impl Iterator<Item = (&'a BackendAddr, Duration)>) -> Names {
    let mut names = Names::new();
    for (a, timeout) in addrs {
        if let BackendAddr::Name { host, port } = a {
            let t = names.entry((host.clone(), *port)).or_insert(timeout);
            *t = (*t).max(timeout);
        }
    }
    names
}

/// The backends one `backends` entry (the `entry`th) defines, as (address, id, origin):
/// its address, or one per address its name has (sorted), ids by [`backend_id`].
pub(super) fn entry_backends(
    addr: &BackendAddr,
    id: Option<&str>,
    entry: usize,
    found: &Lookups,
    family: DnsFamily,
) -> Result<Vec<(SocketAddr, String, Option<DnsOrigin>)>, ErrorKind> {
    let (host, port) = match addr {
        BackendAddr::Socket(a) => return Ok(vec![(*a, backend_id(id, *a, 1), None)]),
        BackendAddr::Name { host, port } => (host, *port),
    };
    let addrs = entry_addresses(host, port, found.get(&(host.clone(), port)), family)?;
    let origin = DnsOrigin {
        host: host.clone(),
        entry,
        id: id.map(str::to_owned),
    };
    Ok(addrs
        .iter()
        .map(|&a| (a, backend_id(id, a, addrs.len()), Some(origin.clone())))
        .collect())
}

/// The answers for every name in `names`, looked up in parallel (a batch at a time) so that
/// a file naming many hosts waits for the slowest lookup of each batch, not for their sum.
pub(super) fn lookup_all(resolver: &dyn Resolver, names: Names) -> Lookups {
    let names: Vec<((String, u16), Duration)> = names.into_iter().collect();
    let mut found = Lookups::new();
    for batch in names.chunks(PARALLEL_LOOKUPS) {
        std::thread::scope(|s| {
            let pending: Vec<_> = batch
                .iter()
                .map(|((host, port), timeout)| {
                    (
                        (host.clone(), *port),
                        s.spawn(move || resolver.lookup(host, *port, *timeout)),
                    )
                })
                .collect();
            for (key, handle) in pending {
                let answer = handle
                    .join()
                    .unwrap_or_else(|_| Err(ResolveError::Failed("the lookup failed".to_owned())));
                found.insert(key, answer);
            }
        });
    }
    found
}

/// The addresses a name's answer gives under `family`: sorted and without duplicates, so
/// that the backends, their order and a refresh's comparison do not depend on the order the
/// resolver answered in (which round-robin DNS changes at every lookup).
pub fn addresses(found: &[SocketAddr], family: DnsFamily) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = found.iter().copied().filter(|a| family.admits(a)).collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// The id of the backend at `addr`: the entry's own `id` when its name gave one address,
/// `{id}-{derived}` for each address when it gave several (each must differ, and the
/// suffix stays the same for an address whatever others come and go), and without an `id`
/// the one derived from the address, as for an address written out.
pub fn backend_id(explicit: Option<&str>, addr: SocketAddr, count: usize) -> String {
    match explicit {
        None => derived_id(addr),
        Some(id) if count <= 1 => id.to_owned(),
        Some(id) => format!("{id}-{}", derived_id(addr)),
    }
}

/// What one named entry looked up to: its addresses, or why it has none.
pub(super) fn entry_addresses(
    host: &str,
    port: u16,
    found: Option<&Result<Vec<SocketAddr>, ResolveError>>,
    family: DnsFamily,
) -> Result<Vec<SocketAddr>, ErrorKind> {
    let name = format!("{host}:{port}");
    let found = match found {
        Some(Ok(found)) => found,
        Some(Err(e)) => {
            return Err(ErrorKind::Unresolvable {
                name,
                reason: e.to_string(),
            })
        }
        // lookup_all answers every name it is given.
        None => {
            return Err(ErrorKind::Unresolvable {
                name,
                reason: "not looked up".to_owned(),
            })
        }
    };
    let addrs = addresses(found, family);
    if addrs.is_empty() {
        return Err(if found.is_empty() {
            ErrorKind::Unresolvable {
                name,
                reason: "no address".to_owned(),
            }
        } else {
            ErrorKind::NoAddressOfFamily {
                name,
                family,
                found: addresses(found, DnsFamily::All),
            }
        });
    }
    Ok(addrs)
}

/// A named entry whose addresses changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameChange {
    /// `host:port`, as written.
    pub name: String,
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

/// An upstream's backends after a refresh that changed some name's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// Every backend, in the order a load would give them.
    pub backends: Vec<BackendConfig>,
    pub changes: Vec<NameChange>,
}

/// Why a refresh left a name (or the whole upstream) on the addresses it had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The lookup failed or gave nothing usable: that name keeps its last good addresses.
    #[error("{0}")]
    Name(String),
    /// The new addresses would clash with another backend's: nothing changes.
    #[error("{0}")]
    Clash(String),
}

/// Looks up every named entry of `u` again. Returns the new backends when some name's
/// addresses changed (None when none did), and what failed: a name whose lookup fails
/// keeps the addresses it had, and a result that would give two backends one address or
/// one id (two names now sharing an address) changes nothing. Every other key of an entry
/// (weight, backup, ...) is carried to its new backends from its current ones.
pub fn refresh(
    u: &UpstreamConfig,
    resolver: &dyn Resolver,
) -> (Option<Refreshed>, Vec<RefreshError>) {
    let names: Names = u
        .backends
        .iter()
        .filter_map(|b| {
            b.dns
                .as_ref()
                .map(|d| ((d.host.clone(), b.addr.port()), u.dns.timeout))
        })
        .collect();
    if names.is_empty() {
        return (None, Vec::new());
    }
    let found = lookup_all(resolver, names);
    let mut errors = Vec::new();
    let mut changes = Vec::new();
    let mut backends: Vec<BackendConfig> = Vec::with_capacity(u.backends.len());
    let mut i = 0;
    while i < u.backends.len() {
        let first = &u.backends[i];
        let Some(origin) = &first.dns else {
            backends.push(first.clone());
            i += 1;
            continue;
        };
        let group_len = u.backends[i..]
            .iter()
            .take_while(|b| b.dns.as_ref().is_some_and(|d| d.entry == origin.entry))
            .count();
        let group = &u.backends[i..i + group_len];
        i += group_len;
        let port = first.addr.port();
        let old: Vec<SocketAddr> = group.iter().map(|b| b.addr).collect();
        let key = (origin.host.clone(), port);
        match entry_addresses(&origin.host, port, found.get(&key), u.dns.family) {
            Ok(new) if new == old => backends.extend(group.iter().cloned()),
            Ok(new) => {
                changes.push(NameChange {
                    name: origin.name(port),
                    added: new.iter().filter(|a| !old.contains(a)).copied().collect(),
                    removed: old.iter().filter(|a| !new.contains(a)).copied().collect(),
                });
                backends.extend(new.iter().map(|&addr| BackendConfig {
                    id: backend_id(origin.id.as_deref(), addr, new.len()),
                    addr,
                    ..first.clone()
                }));
            }
            Err(kind) => {
                errors.push(RefreshError::Name(kind.to_string()));
                backends.extend(group.iter().cloned());
            }
        }
    }
    if changes.is_empty() {
        return (None, errors);
    }
    let mut addrs = HashSet::new();
    let mut ids = HashSet::new();
    for b in &backends {
        if !addrs.insert(b.addr) {
            errors.push(RefreshError::Clash(format!(
                "{} would be two backends' address: keeping the last addresses",
                b.addr
            )));
            return (None, errors);
        }
        if !ids.insert(b.id.as_str()) || !super::resolve::valid_name(&b.id) {
            errors.push(RefreshError::Clash(format!(
                "backend id `{}` would be invalid or another backend's: keeping the last addresses",
                b.id
            )));
            return (None, errors);
        }
    }
    (Some(Refreshed { backends, changes }), errors)
}

/// A resolver answering from a table, for tests; a name not in it fails.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct TableResolver(pub std::sync::Mutex<HashMap<String, Vec<SocketAddr>>>);

#[cfg(test)]
impl TableResolver {
    pub fn new(entries: &[(&str, &[&str])]) -> std::sync::Arc<Self> {
        let r = std::sync::Arc::new(TableResolver::default());
        for (host, addrs) in entries {
            r.set(host, addrs);
        }
        r
    }

    /// Answers `addrs` (IPs, without a port) for `host` from now on; none: a failure.
    pub fn set(&self, host: &str, addrs: &[&str]) {
        #[allow(clippy::unwrap_used)]
        let ips = addrs
            .iter()
            .map(|a| SocketAddr::new(a.parse().unwrap(), 0))
            .collect();
        #[allow(clippy::unwrap_used)]
        self.0.lock().unwrap().insert(host.to_owned(), ips);
    }
}

#[cfg(test)]
impl Resolver for TableResolver {
    fn lookup(
        &self,
        host: &str,
        port: u16,
        _timeout: Duration,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        #[allow(clippy::unwrap_used)]
        let table = self.0.lock().unwrap();
        match table.get(host) {
            Some(addrs) if !addrs.is_empty() => Ok(addrs
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect()),
            _ => Err(ResolveError::Failed(
                "Name or service not known (test table)".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_ip_port_v6_or_host_port() {
        assert_eq!(
            BackendAddr::parse("127.0.0.1:80").unwrap(),
            BackendAddr::Socket(sa("127.0.0.1:80"))
        );
        assert_eq!(
            BackendAddr::parse("[::1]:80").unwrap(),
            BackendAddr::Socket(sa("[::1]:80"))
        );
        assert_eq!(
            BackendAddr::parse("Node1.Internal.:9000").unwrap(),
            BackendAddr::Name {
                host: "node1.internal".to_owned(),
                port: 9000
            }
        );
        assert_eq!(
            BackendAddr::parse("chat_node-2:3000").unwrap().to_string(),
            "chat_node-2:3000"
        );
        for bad in [
            "node1",
            "node1:",
            "node1:0",
            "127.0.0.1:0",
            "[::1]:0",
            "node1:65536",
            "node1:x",
            ":80",
            "a..b:80",
            "-a:80",
            "a b:80",
            "::1:80",
            "[::1]",
            "[::1:80",
            "10.0.0.300:80",
            "1.2.3:80",
        ] {
            assert!(
                matches!(
                    BackendAddr::parse(bad),
                    Err(ErrorKind::InvalidBackendAddress(ref s)) if s == bad
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_are_filtered_sorted_and_deduplicated() {
        let found = [
            sa("10.0.0.2:80"),
            sa("[::1]:80"),
            sa("10.0.0.1:80"),
            sa("10.0.0.2:80"),
        ];
        assert_eq!(
            addresses(&found, DnsFamily::All),
            [sa("10.0.0.1:80"), sa("10.0.0.2:80"), sa("[::1]:80")]
        );
        assert_eq!(
            addresses(&found, DnsFamily::Ipv4),
            [sa("10.0.0.1:80"), sa("10.0.0.2:80")]
        );
        assert_eq!(addresses(&found, DnsFamily::Ipv6), [sa("[::1]:80")]);
    }

    #[test]
    fn ids_of_a_name_with_several_addresses_carry_the_address() {
        let a = sa("10.0.0.1:80");
        assert_eq!(backend_id(None, a, 3), derived_id(a));
        assert_eq!(backend_id(Some("api"), a, 1), "api");
        assert_eq!(
            backend_id(Some("api"), a, 2),
            format!("api-{}", derived_id(a))
        );
    }

    #[test]
    fn family_names_agree_across_serde_clap_and_as_str() {
        use clap::ValueEnum;
        for family in DnsFamily::value_variants() {
            let name = family.as_str();
            assert_eq!(DnsFamily::from_str(name, false), Ok(*family));
            let back: DnsFamily =
                serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                    serde::de::value::Error,
                >::new(name))
                .unwrap();
            assert_eq!(back, *family);
        }
    }

    #[test]
    fn a_lookup_that_does_not_answer_times_out() {
        // The lookup blocks until the test ends: only the bound can end the wait.
        let (_hold, wait) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let r = bounded(Duration::from_millis(50), move || {
            let _ = wait.recv();
            Ok(Vec::new())
        });
        assert_eq!(r, Err(ResolveError::TimedOut(Duration::from_millis(50))));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_system_resolver_finds_localhost_and_not_an_invalid_name() {
        let r = SystemResolver;
        let found = r.lookup("localhost", 80, DEFAULT_DNS_TIMEOUT).unwrap();
        assert!(found.contains(&sa("127.0.0.1:80")), "{found:?}");
        // RFC 6761: .invalid never resolves.
        let e = r
            .lookup("nonexistent.invalid", 80, DEFAULT_DNS_TIMEOUT)
            .unwrap_err();
        assert!(matches!(e, ResolveError::Failed(_)), "{e:?}");
    }
}

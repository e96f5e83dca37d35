//! The live, swappable state of a running proxy: the current config with its upstreams and
//! routes, and the reload that replaces it without touching open connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::admin::metrics::Metrics;
use crate::client_cert::{client_verifier, ClientCerts};
use crate::config::{
    BackendConfig, Config, ConfigError, ConfigErrors, ErrorKind, ProxyProtocolConfig,
    UpstreamProtocol,
};
use crate::limits::ClientLimits;
use crate::proxy::request_headers::RequestHeaders;
use crate::tls::{ListenerTls, SniCerts, SniResolver};
use crate::upstream::{StatsRegistry, Upstream};

/// A route of the running config.
#[derive(Debug)]
pub struct RouteTo {
    host: Option<String>,
    pub prefix: String,
    pub rewrite: Option<Box<PrefixRewrite>>,
    pub upstream: Arc<Upstream>,
    /// For a prefix ending in `/` (not `/` itself) with `slash_redirect` on: where a
    /// request for the prefix without its slash is sent (the prefix, percent-encoded).
    slash_location: Option<Box<str>>,
    /// The clients the route admits (`allow`); None: all.
    allow: Option<Box<[ipnet::IpNet]>>,
    /// Fields set on its requests (`request_headers`), shared with each request that
    /// outlives a reload; None for most routes.
    pub request_headers: Option<Arc<RequestHeaders>>,
}

impl RouteTo {
    /// Whether a client at `ip` may use this route (a client of unknown address may not,
    /// when the route names who may).
    pub fn allows(&self, ip: Option<std::net::IpAddr>) -> bool {
        match &self.allow {
            None => true,
            Some(nets) => ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        }
    }

    /// Where a request for the prefix without its slash is redirected (see [`Routed`]).
    pub fn slash_location(&self) -> Option<&str> {
        self.slash_location.as_deref()
    }
}

/// What a request's host and path lead to.
#[derive(Debug)]
pub enum Routed<'a> {
    Forward(&'a RouteTo),
    /// A request for `/api` whose route is `/api/`: redirected to the prefix with its slash
    /// ([`RouteTo::slash_location`], the query to be added), as nginx redirects for a
    /// `location /api/`.
    AddSlash(&'a RouteTo),
}

/// A route's `prefix_rewrite` (boxed: most routes have none, and the request path then
/// moves one word for it).
#[derive(Debug)]
pub struct PrefixRewrite {
    /// What replaces the route's prefix in the path sent.
    pub to: String,
    /// The prefix a rewrite to `/` strips, without its last `/`: the backend is told it
    /// (`X-Forwarded-Prefix`) to build its links and redirects under it.
    pub stripped: Option<String>,
}

/// Everything built from one config. Requests take an `Arc` of it once and keep it, so a
/// reload never changes the rules under a request that is already running.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Each route with its upstream, in route order (first match wins).
    routes: Vec<RouteTo>,
    /// The listeners that set fields on answers, with those fields (most have none).
    response_headers: Vec<(SocketAddr, Vec<(String, String)>)>,
    /// Some route leads to an h2 upstream (which only pingora's path speaks).
    any_h2: bool,
}

impl Runtime {
    /// Builds the runtime of `config`, which replaces `previous` (None at start).
    ///
    /// An upstream whose resolved config equals the running one's is kept as it is, the
    /// same `Arc` (as Envoy keeps an unchanged cluster): its strategy's state (round-robin
    /// positions, latency estimates), its TLS client with the backend connections pooled
    /// under it and its session cache, its sticky signer and queue. The config is all
    /// [`Upstream::build`] reads besides the stats registry and metrics, which are the
    /// process's own, and the global settings it depends on (`[timeouts]`) are folded
    /// into it when it is resolved. A changed upstream is built anew, keeping its TLS client
    /// when that would come out the same, and its rotation when its backends and strategy
    /// stay ([`Upstream::build_after`]).
    pub fn build(
        config: Config,
        previous: Option<&Runtime>,
        registry: &StatsRegistry,
        metrics: &Metrics,
    ) -> Self {
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let running = previous.and_then(|p| p.upstreams.get(&u.name));
                let up = match running {
                    Some(r) if r.config == *u => r.clone(),
                    _ => Arc::new(Upstream::build_after(
                        u,
                        running.map(|r| &**r),
                        registry,
                        metrics,
                    )),
                };
                (u.name.clone(), up)
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                Some(RouteTo {
                    host: r.host.clone(),
                    prefix: r.path_prefix.clone(),
                    rewrite: r.prefix_rewrite.as_ref().map(|to| {
                        Box::new(PrefixRewrite {
                            to: to.clone(),
                            stripped: (to == "/" && r.path_prefix != "/")
                                .then(|| r.path_prefix.trim_end_matches('/').to_owned()),
                        })
                    }),
                    upstream: upstreams.get(&r.upstream)?.clone(),
                    slash_location: (r.slash_redirect
                        && r.path_prefix.len() > 1
                        && r.path_prefix.ends_with('/'))
                    .then(|| crate::proxy::encode_path(&r.path_prefix).into()),
                    allow: r.allow.as_ref().map(|a| a.clone().into_boxed_slice()),
                    request_headers: RequestHeaders::new(&r.request_headers).map(Arc::new),
                })
            })
            .collect();
        let response_headers = config
            .listeners
            .iter()
            .filter(|l| !l.response_headers.is_empty())
            .map(|l| (l.listen, l.response_headers.clone()))
            .collect();
        let any_h2 = config
            .upstreams
            .iter()
            .any(|u| u.protocol == UpstreamProtocol::H2);
        Self {
            config: Arc::new(config),
            upstreams,
            routes,
            response_headers,
            any_h2,
        }
    }

    /// Whether a request goes to an h2 upstream, which Switchyard's HTTP/1 path does not
    /// speak: pingora's path serves it. Routed as `crate::proxy::policy::admit` routes (a
    /// path that does not route is left to that path's answer).
    pub(crate) fn routes_to_h2<V: crate::proxy::policy::RequestView>(&self, req: &V) -> bool {
        self.any_h2
            && crate::proxy::route_path(req.path()).is_ok_and(|path| {
                matches!(self.route(req.host(), &path),
                    Some(Routed::Forward(r)) if r.upstream.config.protocol == UpstreamProtocol::H2)
            })
    }

    /// The fields the listener a connection came in on (its local address) sets on answers.
    pub fn response_headers(&self, local: Option<SocketAddr>) -> &[(String, String)] {
        let (Some(local), false) = (local, self.response_headers.is_empty()) else {
            return &[];
        };
        self.response_headers
            .iter()
            .find(|(listen, _)| crate::config::accepted_on(*listen, local))
            .map_or(&[], |(_, fields)| fields.as_slice())
    }

    /// The route of a request, by host (exact, case-insensitive, port and a trailing dot
    /// ignored) and path prefix; first match wins. A route `/api/` also matches `/api`
    /// exactly, to redirect it (unless its `slash_redirect` is off), as nginx's
    /// `location /api/` does.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Routed<'_>> {
        // `admin.local.` is `admin.local` fully qualified: the same site to DNS and to
        // backends (Django, nginx's server names), so it must not miss the site's route.
        let host = host.map(|h| fqdn(strip_port(h)));
        self.routes.iter().find_map(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => fqdn(want).eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            if !host_ok {
                None
            } else if path.starts_with(r.prefix.as_str()) {
                Some(Routed::Forward(r))
            } else {
                r.slash_location.as_ref()?;
                (r.prefix.len() == path.len() + 1 && r.prefix.starts_with(path))
                    .then_some(Routed::AddSlash(r))
            }
        })
    }
}

/// `host` without one trailing dot.
#[inline]
fn fqdn(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// `host` without its `:port`, if any; an IPv6 literal keeps its brackets.
#[inline]
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// State shared by the proxy service, the health checker and the admin API.
#[derive(Debug)]
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub registry: StatsRegistry,
    pub metrics: Metrics,
    pub limits: ClientLimits,
    /// Swapped by reload: a new path or format, or the same file reopened after rotation.
    pub access_log: ArcSwap<AccessLog>,
    /// The certificate resolver and client certificate verifier of each TLS listener, by
    /// address: a reload swaps in the certificates its files hold now and its client
    /// certificate checks.
    pub certs: Vec<(SocketAddr, ListenerTls)>,
    /// The file to re-read on reload (None in quick mode: reload re-applies the same config).
    pub config_path: Option<PathBuf>,
    /// The listeners as bound at start, which serve until a restart.
    bound: Vec<FixedListener>,
    /// The other settings taken at start, which a reload cannot change.
    started: Started,
    /// Open client connections and tunnels: a graceful stop ends when none is left
    /// ([`crate::drain`]).
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// TLS handshakes in progress (counted in `open`).
    pub handshakes: Arc<crate::handshakes::Handshakes>,
    /// Looks up backend names at each reload (the system's; tests put their own).
    pub(crate) resolver: Arc<dyn crate::config::Resolver>,
    /// Held while a new runtime is built from the current one and stored (a reload, a
    /// DNS refresh), so that neither overwrites the other's with one built before it.
    swap: std::sync::Mutex<()>,
}

/// The settings other than listeners that only a restart changes, as the process started
/// with them: a reload is compared with these, not with the last file read (a second
/// reload of a changed thread count still needs the restart the first one reported).
#[derive(Debug)]
struct Started {
    admin_listen: Option<SocketAddr>,
    threads: usize,
    http1: crate::config::Http1Path,
    grace_period: std::time::Duration,
}

impl Started {
    fn of(config: &Config) -> Self {
        Self {
            admin_listen: config.admin.as_ref().map(|a| a.listen),
            threads: config.server.threads,
            http1: config.server.http1,
            grace_period: config.server.grace_period,
        }
    }
}

/// What of a listener is fixed at start: its address, TLS or not, ALPN and the PROXY
/// protocol (its certificates are not).
#[derive(Debug, PartialEq)]
struct FixedListener {
    listen: SocketAddr,
    h2: Option<bool>,
    proxy_protocol: Option<ProxyProtocolConfig>,
}

impl FixedListener {
    fn of(config: &Config) -> Vec<Self> {
        config
            .listeners
            .iter()
            .map(|l| Self {
                listen: l.listen,
                h2: l.tls.as_ref().map(|t| t.h2),
                proxy_protocol: l.proxy_protocol.clone(),
            })
            .collect()
    }
}

/// What a reload swaps in under one running TLS listener, loaded before anything is
/// swapped.
struct LoadedTls<'a> {
    resolver: &'a SniResolver,
    certs: SniCerts,
    verifier: &'a ClientCerts,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// What a successful reload changed, for the admin answer and the log.
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    pub upstreams: usize,
    /// Upstreams whose config the reload left as it was: they go on as they were (balancing
    /// positions, TLS sessions and pooled backend connections), see [`Runtime::build`].
    pub unchanged_upstreams: usize,
    pub routes: usize,
    /// Settings that only take effect after a restart (listener addresses, TLS or not and
    /// h2, the admin address, threads, http1, grace period).
    pub needs_restart: Vec<String>,
    /// The new config's warnings (file, line, key and why), as a start logs them: a reload
    /// that brings in `verify = false` or a shared sticky cookie name says so too.
    pub warnings: Vec<String>,
}

impl Shared {
    pub fn new(config: Config, certs: Vec<(SocketAddr, ListenerTls)>) -> anyhow::Result<Self> {
        let registry = StatsRegistry::default();
        let access_log = open_access_log(&config)?;
        let config_path = config.source.clone();
        let bound = FixedListener::of(&config);
        let started = Started::of(&config);
        let metrics = Metrics::new();
        let runtime = Runtime::build(config, None, &registry, &metrics);
        Ok(Self {
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            metrics,
            limits: ClientLimits::default(),
            access_log: ArcSwap::from_pointee(access_log),
            certs,
            config_path,
            bound,
            started,
            open: Arc::default(),
            handshakes: Arc::default(),
            resolver: Arc::new(crate::config::SystemResolver),
            swap: std::sync::Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The certificates and client certificate verifier `config` gives each running TLS
    /// listener that it keeps (a listener it adds or turns to TLS waits for a restart,
    /// which the reload reports).
    fn load_certs(&self, config: &Config) -> Result<Vec<LoadedTls<'_>>, ConfigErrors> {
        let mut loaded = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let (Some(tls), Some((_, running))) = (
                &l.tls,
                self.certs.iter().find(|(addr, _)| *addr == l.listen),
            ) else {
                continue;
            };
            let error = |kind| {
                ConfigErrors::from(ConfigError {
                    file: config.source.clone(),
                    line: None,
                    key: format!("listeners[{i}].tls"),
                    kind,
                })
            };
            let certs = SniCerts::load(tls).map_err(|e| {
                error(ErrorKind::TlsFile {
                    path: e.path,
                    problem: e.problem,
                })
            })?;
            // Checked when the config was read; only a broken crypto provider fails here.
            let clients = match &tls.client_auth {
                Some(auth) => Some(client_verifier(auth).map_err(|e| {
                    error(ErrorKind::TlsFile {
                        path: auth.ca.path.clone(),
                        problem: crate::config::TlsFileProblem::InvalidPem(e.to_string()),
                    })
                })?),
                None => None,
            };
            loaded.push(LoadedTls {
                resolver: &running.certs,
                certs,
                verifier: &running.clients,
                clients,
            });
        }
        Ok(loaded)
    }

    /// Puts back, first in `new`'s listeners, the running settings of each socket bound at
    /// start that `new` moves or drops: it accepts until the restart the reload asks for,
    /// and looked up by address in `new` it would match nothing, so a port that redirected
    /// to HTTPS would proxy plain HTTP and lose its `response_headers` (HSTS). First, so
    /// that a wildcard of `new` on the same port does not take its connections.
    fn keep_moved_listeners(&self, running: &Config, new: &mut Config) {
        let kept: Vec<_> = running
            .listeners
            .iter()
            .filter(|l| self.bound.iter().any(|b| b.listen == l.listen))
            .filter(|l| !new.listeners.iter().any(|n| n.listen == l.listen))
            .cloned()
            .collect();
        if !kept.is_empty() {
            new.listeners.splice(0..0, kept);
        }
    }

    /// Re-reads the config file and swaps upstreams, strategies, routes, limits, timeouts,
    /// TLS certificates, the admin token and the access log (reopened). An upstream whose
    /// config did not change is kept as it was ([`Runtime::build`]). Open tunnels and
    /// in-flight requests keep the backend state they hold. An invalid file, or a
    /// certificate or log file that cannot be used, leaves the running config untouched.
    ///
    /// It blocks: reading files and looking up backend names (for at most each upstream's
    /// `dns_timeout`). From async code, use [`Shared::reload_blocking`].
    pub fn reload(&self) -> Result<ReloadReport, ConfigErrors> {
        // Read and looked up before the swap is locked: a slow resolver holds no one else.
        let new_config = match &self.config_path {
            Some(path) => Config::load_with(path, &*self.resolver)?,
            // Quick mode has no file: the same config, its backend names looked up again (a
            // name that fails keeps its addresses, as a DNS refresh does).
            None => self.current_with_names_looked_up(),
        };
        // Poisoned only by a panic while building a runtime, which left nothing half-stored.
        let _swap = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current();
        let mut needs_restart = Vec::new();
        if FixedListener::of(&new_config) != self.bound {
            needs_restart.push("listeners".to_string());
        }
        let started = &self.started;
        if new_config.admin.as_ref().map(|a| a.listen) != started.admin_listen {
            needs_restart.push("admin.listen".to_string());
        }
        if new_config.server.threads != started.threads {
            needs_restart.push("server.threads".to_string());
        }
        if new_config.server.http1 != started.http1 {
            needs_restart.push("server.http1".to_string());
        }
        // pingora takes the grace period when the server is built.
        if new_config.server.grace_period != started.grace_period {
            needs_restart.push("server.grace_period".to_string());
        }
        // Opened before anything is swapped: a log or certificate that cannot be loaded
        // rejects the reload.
        let access_log = open_access_log(&new_config)?;
        let certs = self.load_certs(&new_config)?;
        let mut new_config = new_config;
        self.keep_moved_listeners(&old.config, &mut new_config);
        let runtime = Runtime::build(new_config, Some(&old), &self.registry, &self.metrics);
        let report = ReloadReport {
            upstreams: runtime.upstreams.len(),
            unchanged_upstreams: runtime
                .upstreams
                .iter()
                .filter(|(name, up)| {
                    let running = old.upstreams.get(*name);
                    running.is_some_and(|r| Arc::ptr_eq(r, up))
                })
                .count(),
            routes: runtime.routes.len(),
            needs_restart,
            warnings: runtime.config.warnings.clone(),
        };
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        let runtime = Arc::new(runtime);
        self.runtime.store(runtime.clone());
        hand_over_queues(&old, &runtime);
        self.access_log.store(Arc::new(access_log));
        for loaded in certs {
            loaded.resolver.store(loaded.certs);
            loaded.verifier.store_verifier(loaded.clients);
        }
        // The old config no longer holds its backends' stats: what still does is in use.
        drop(old);
        self.forget_unused_stats();
        tracing::info!(?report, "configuration reloaded");
        if !report.needs_restart.is_empty() {
            tracing::warn!(
                needs_restart = ?report.needs_restart,
                "the reload changed settings that apply only after a restart; until then they run as at start"
            );
        }
        Ok(report)
    }

    /// The running config with every upstream's named backends looked up again.
    fn current_with_names_looked_up(&self) -> Config {
        let mut config = (*self.current().config).clone();
        for u in &mut config.upstreams {
            let (refreshed, errors) = crate::config::refresh(u, &*self.resolver);
            for e in errors {
                tracing::warn!(upstream = %u.name, "reload: {e}");
            }
            if let Some(r) = refreshed {
                for c in &r.changes {
                    tracing::info!(upstream = %u.name, name = %c.name, added = ?c.added, removed = ?c.removed, "backend addresses changed");
                }
                u.backends = r.backends;
            }
        }
        config
    }

    /// [`Shared::reload`] on tokio's blocking pool: the file reads and name lookups of a
    /// reload must not stall the runtime the caller runs on (the admin API's, the signal
    /// handler's; with `threads = 1` each is a current-thread runtime, on which
    /// `block_in_place` is not allowed).
    pub async fn reload_blocking(self: &Arc<Self>) -> Result<ReloadReport, ConfigErrors> {
        let shared = self.clone();
        let result = match tokio::task::spawn_blocking(move || shared.reload()).await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(ConfigErrors::from(ConfigError {
                    file: self.config_path.clone(),
                    line: None,
                    key: String::new(),
                    kind: ErrorKind::Cancelled,
                })),
            },
        };
        // Logged here, whoever asked (SIGHUP or `POST /reload`): the admin API's caller gets
        // the errors in its answer, but the operator reading the log must see that the file
        // on disk is not what runs, as nginx logs a failed `nginx -s reload`.
        if let Err(errors) = &result {
            tracing::error!("reload rejected, the running config stays:\n{errors}");
        }
        self.metrics.reloaded(result.is_ok());
        result
    }

    /// Replaces the backends of `upstream` with `backends` (a DNS refresh found other
    /// addresses), as a reload would, without reading the config file: counters and
    /// health of the backends kept carry over, and every other upstream is kept as it is.
    /// Does nothing, and says so, when the upstream's backends are no longer `base` (a
    /// reload came in between with its own).
    pub fn replace_backends(
        &self,
        upstream: &str,
        base: &[BackendConfig],
        backends: Vec<BackendConfig>,
    ) -> bool {
        let _swap = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current();
        let mut config = (*old.config).clone();
        let Some(u) = config.upstreams.iter_mut().find(|u| u.name == upstream) else {
            return false;
        };
        if u.backends != base {
            return false;
        }
        u.backends = backends;
        let runtime = Arc::new(Runtime::build(
            config,
            Some(&old),
            &self.registry,
            &self.metrics,
        ));
        self.runtime.store(runtime.clone());
        hand_over_queues(&old, &runtime);
        drop(old);
        self.forget_unused_stats();
        true
    }

    /// Drops the stats of backends no upstream of the current runtime has (those still in
    /// use by a request or tunnel stay alive through it).
    fn forget_unused_stats(&self) {
        let current = self.current();
        self.registry.retain(|u, a| {
            current
                .upstreams
                .get(u)
                .is_some_and(|up| up.backends.iter().any(|b| b.addr == *a))
        });
    }
}

/// Once `new` is running: the requests waiting in the queue of an upstream that `new`
/// replaced pick again under its successor (see [`crate::upstream::queue`]). An upstream
/// `new` kept as it was keeps its waiters; one it dropped leaves them to its old backends.
fn hand_over_queues(old: &Runtime, new: &Runtime) {
    for (name, up) in &new.upstreams {
        let before = old.upstreams.get(name);
        if before.is_some_and(|b| Arc::ptr_eq(b, up)) {
            continue;
        }
        // One queue per name, shared by both configs when both have one: the old config's
        // waiters are in the old one's, which the new config may have dropped.
        let old_queue = before.and_then(|b| b.queue.as_ref());
        if let Some(q) = old_queue {
            q.hand_over(up);
        }
        if let Some(q) = up
            .queue
            .as_ref()
            .filter(|q| !old_queue.is_some_and(|o| Arc::ptr_eq(o, q)))
        {
            q.hand_over(up);
        }
    }
}

/// Opens the access log of `config`; an error names the file and key like a config error.
fn open_access_log(config: &Config) -> Result<AccessLog, ConfigErrors> {
    AccessLog::open(&config.access_log).map_err(|e| {
        ConfigErrors::from(ConfigError {
            file: config.source.clone(),
            line: None,
            key: "access_log.path".to_owned(),
            kind: ErrorKind::CannotOpen {
                path: config.access_log.path.clone().unwrap_or_default(),
                reason: e.to_string(),
            },
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::{strip_port, Shared};
    use crate::balance::PickContext;
    use crate::config::Config;
    use crate::upstream::{Health, Upstream};

    #[test]
    fn a_reload_lists_what_only_a_restart_applies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let config = |threads: u32, grace: &str, listen: u16| {
            format!(
                "[server]\nthreads = {threads}\ngrace_period = \"{grace}\"\n\
                 [[listeners]]\nlisten = \"127.0.0.1:{listen}\"\n\
                 [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n"
            )
        };
        std::fs::write(&path, config(1, "5s", 18080)).unwrap();
        let shared = Shared::new(Config::load(&path).unwrap(), Vec::new()).unwrap();
        assert!(shared.reload().unwrap().needs_restart.is_empty());

        std::fs::write(&path, config(2, "9s", 18081)).unwrap();
        assert_eq!(
            shared.reload().unwrap().needs_restart,
            ["listeners", "server.threads", "server.grace_period"]
        );

        // The PROXY protocol is read by the accept path set up at start.
        let with_pp = config(2, "9s", 18081).replace(
            "listen = \"127.0.0.1:18081\"\n",
            "listen = \"127.0.0.1:18081\"\nproxy_protocol = true\n",
        );
        std::fs::write(&path, with_pp).unwrap();
        // The thread count and grace period read at start still wait for the restart too.
        assert_eq!(
            shared.reload().unwrap().needs_restart,
            ["listeners", "server.threads", "server.grace_period"]
        );
        // Back to what runs: nothing waits.
        std::fs::write(&path, config(1, "5s", 18080)).unwrap();
        assert!(shared.reload().unwrap().needs_restart.is_empty());
    }

    #[test]
    fn a_reload_that_drops_active_checks_admits_backends_still_waiting_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let config = |health: &str| {
            format!(
                "[[listeners]]\nlisten = \"127.0.0.1:18090\"\n\
                 [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n{health}"
            )
        };
        let checks = "[upstreams.app.health]\nkind = \"http\"\npath = \"/healthz\"\n";
        std::fs::write(&path, config(checks)).unwrap();
        let shared = Shared::new(Config::load(&path).unwrap(), Vec::new()).unwrap();
        let backend = |shared: &Shared| shared.current().upstreams["app"].backends[0].clone();
        // No check has run yet: the backend waits for its first pass.
        assert_eq!(backend(&shared).stats.health(), Health::Pending);

        // Without active checks nothing would ever pass it: it must be taken as up, as a
        // backend configured without checks is.
        std::fs::write(&path, config("")).unwrap();
        shared.reload().unwrap();
        assert_eq!(backend(&shared).stats.health(), Health::Up);
        let up = shared.current().upstreams["app"].clone();
        assert!(up.pick(&PickContext::default(), &[]).is_ok());
    }

    /// Answers 127.0.0.1 once released (or after 10 s).
    #[derive(Debug)]
    struct Gate(std::sync::Mutex<std::sync::mpsc::Receiver<()>>);

    impl crate::config::Resolver for Gate {
        fn lookup(
            &self,
            _host: &str,
            port: u16,
            _timeout: std::time::Duration,
        ) -> Result<Vec<std::net::SocketAddr>, crate::config::ResolveError> {
            let _ = self
                .0
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(10));
            Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))])
        }
    }

    #[test]
    fn a_reload_waiting_for_the_resolver_leaves_a_current_thread_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            "[[listeners]]\nlisten = \"127.0.0.1:18097\"\n\
             [upstreams.app]\nbackends = [{ addr = \"node:9001\" }]\n",
        )
        .unwrap();
        let table = crate::config::TableResolver::new(&[("node", &["127.0.0.1"])]);
        let mut shared =
            Shared::new(Config::load_with(&path, &*table).unwrap(), Vec::new()).unwrap();
        let (release, gate) = std::sync::mpsc::channel();
        shared.resolver = std::sync::Arc::new(Gate(std::sync::Mutex::new(gate)));
        let shared = std::sync::Arc::new(shared);
        // The flavour of `threads = 1`, where the admin API and the SIGHUP handler run too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = shared.clone();
            let reload = tokio::spawn(async move { s.reload_blocking().await });
            tokio::task::yield_now().await;
            // Another task of this one thread runs while the reload waits for the resolver.
            let other = tokio::spawn(async { 42 });
            assert_eq!(other.await.unwrap(), 42);
            assert!(
                !reload.is_finished(),
                "the reload held the runtime's thread"
            );
            release.send(()).unwrap();
            reload.await.unwrap().unwrap();
        });
    }

    #[test]
    fn a_reload_without_a_file_looks_the_names_up_again() {
        let table = crate::config::TableResolver::new(&[("node", &["10.0.0.1"])]);
        // As quick mode builds it: no file behind it.
        let config = crate::config::parse_with(
            "[[listeners]]\nlisten = \"127.0.0.1:18098\"\n\
             [upstreams.app]\nbackends = [{ addr = \"node:9001\" }]\n",
            None,
            &|_| None,
            &*table,
        )
        .unwrap();
        let mut shared = Shared::new(config, Vec::new()).unwrap();
        assert!(shared.config_path.is_none());
        shared.resolver = table.clone();
        table.set("node", &["10.0.0.2"]);
        shared.reload().unwrap();
        let addr = |s: &Shared| s.current().upstreams["app"].backends[0].addr;
        assert_eq!(addr(&shared), "10.0.0.2:9001".parse().unwrap());
        // A name that stops resolving keeps its addresses.
        table.set("node", &[]);
        shared.reload().unwrap();
        assert_eq!(addr(&shared), "10.0.0.2:9001".parse().unwrap());
    }

    /// Upstreams `a` (round robin over three backends) and `b` (`b_table` as its body),
    /// each routed.
    fn two_upstreams(b_table: &str, extra: &str) -> String {
        format!(
            "[[listeners]]\nlisten = \"127.0.0.1:18099\"\n\
             [upstreams.a]\nstrategy = \"round_robin\"\nbackends = [\
             {{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\" }}, \
             {{ addr = \"127.0.0.1:9003\" }}]\n\
             [upstreams.b]\n{b_table}\n\
             [[routes]]\npath_prefix = \"/a/\"\nupstream = \"a\"\n\
             [[routes]]\npath_prefix = \"/b/\"\nupstream = \"b\"\n{extra}"
        )
    }

    fn forwarded_to(rt: &super::Runtime, path: &str) -> Arc<Upstream> {
        match rt.route(None, path) {
            Some(super::Routed::Forward(r)) => r.upstream.clone(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn a_reload_keeps_each_unchanged_upstream_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let b = |weight: u32| {
            format!("backends = [{{ addr = \"127.0.0.1:9101\", weight = {weight} }}]\n")
        };
        std::fs::write(&path, two_upstreams(&b(1), "")).unwrap();
        let shared = Shared::new(Config::load(&path).unwrap(), Vec::new()).unwrap();
        let before = shared.current();
        let a = before.upstreams["a"].clone();
        assert_eq!(a.pick(&PickContext::default(), &[]).unwrap().index, 0);

        // `b` changes, and a route is added: `a` is not touched.
        let route = "[[routes]]\npath_prefix = \"/more/\"\nupstream = \"b\"\n";
        std::fs::write(&path, two_upstreams(&b(2), route)).unwrap();
        let report = shared.reload().unwrap();
        assert_eq!((report.upstreams, report.unchanged_upstreams), (2, 1));
        let after = shared.current();
        assert!(Arc::ptr_eq(&after.upstreams["a"], &a));
        assert!(!Arc::ptr_eq(&after.upstreams["b"], &before.upstreams["b"]));
        assert_eq!(after.upstreams["b"].backends[0].weight, 2);
        // The routes lead to the upstreams of the new runtime, kept or not.
        assert!(Arc::ptr_eq(&forwarded_to(&after, "/a/x"), &a));
        assert!(Arc::ptr_eq(
            &forwarded_to(&after, "/more/x"),
            &after.upstreams["b"]
        ));
        // The rotation goes on where it was, rather than from the first backend again.
        let next = after.upstreams["a"].pick(&PickContext::default(), &[]);
        assert_eq!(next.unwrap().index, 1);
    }

    /// Picks `n` times from `up`, each released before the next (so that least_conn sees
    /// ties), as backend numbers from 0.
    fn picks(up: &Upstream, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| up.pick(&PickContext::default(), &[]).unwrap().index)
            .collect()
    }

    #[test]
    fn a_rebuilt_upstream_with_the_same_backends_goes_on_where_its_rotation_stood() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let three = "backends = [{ addr = \"127.0.0.1:9201\" }, \
                     { addr = \"127.0.0.1:9202\" }, { addr = \"127.0.0.1:9203\" }]\n";
        let config = |strategy: &str, extra: &str, backends: &str| {
            let sticky = if strategy == "sticky_cookie" {
                "[upstreams.a.sticky]\nkey = \"a-key-of-sixteen-bytes-or-more\"\n"
            } else {
                ""
            };
            format!(
                "[[listeners]]\nlisten = \"127.0.0.1:18098\"\n\
                 [upstreams.a]\nstrategy = \"{strategy}\"\n{backends}{sticky}{extra}\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n"
            )
        };
        for strategy in ["round_robin", "least_conn", "sticky_cookie", "least_time"] {
            std::fs::write(&path, config(strategy, "", three)).unwrap();
            let shared = Shared::new(Config::load(&path).unwrap(), Vec::new()).unwrap();
            let first = shared.current().upstreams["a"].clone();
            assert_eq!(picks(&first, 2), [0, 1], "{strategy}");

            // Only the upstream's timeouts change: it is rebuilt, and picks the third next.
            let timeouts = "[upstreams.a.timeouts]\nconnect = \"5s\"\n";
            std::fs::write(&path, config(strategy, timeouts, three)).unwrap();
            shared.reload().unwrap();
            let rebuilt = shared.current().upstreams["a"].clone();
            assert!(!Arc::ptr_eq(&rebuilt, &first), "{strategy}");
            assert_eq!(picks(&rebuilt, 4), [2, 0, 1, 2], "{strategy}");

            // Other backends: the old positions mean nothing for them, and it starts over.
            let moved = "backends = [{ addr = \"127.0.0.1:9201\" }, \
                       { addr = \"127.0.0.1:9204\" }, { addr = \"127.0.0.1:9203\" }]\n";
            std::fs::write(&path, config(strategy, timeouts, moved)).unwrap();
            shared.reload().unwrap();
            let other = shared.current().upstreams["a"].clone();
            assert_eq!(picks(&other, 1), [0], "{strategy}");
        }
    }

    #[test]
    fn a_dns_refresh_of_one_upstream_keeps_the_others() {
        let table = crate::config::TableResolver::new(&[("node", &["10.0.0.1"])]);
        let config = crate::config::parse_with(
            &two_upstreams("backends = [{ addr = \"node:9001\" }]\n", ""),
            None,
            &|_| None,
            &*table,
        )
        .unwrap();
        let shared = Shared::new(config, Vec::new()).unwrap();
        let before = shared.current();
        let base = before.upstreams["b"].config.backends.clone();
        let mut moved = base.clone();
        moved[0].addr = "10.0.0.2:9001".parse().unwrap();
        assert!(shared.replace_backends("b", &base, moved));
        let after = shared.current();
        assert!(Arc::ptr_eq(&after.upstreams["a"], &before.upstreams["a"]));
        assert!(!Arc::ptr_eq(&after.upstreams["b"], &before.upstreams["b"]));
    }

    /// The id of the TLS client of `b` in the running config.
    fn tls_id(shared: &Shared) -> u64 {
        shared.current().upstreams["b"].tls.as_ref().unwrap().id
    }

    #[test]
    fn a_changed_upstream_keeps_its_tls_client_while_its_settings_and_names_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let b = |backends: &str, tls: &str| {
            format!("backends = [{backends}]\n[upstreams.b.tls]\nverify = false\n{tls}")
        };
        let one = "{ addr = \"127.0.0.1:9101\" }";
        let two = "{ addr = \"127.0.0.1:9101\" }, { addr = \"127.0.0.1:9102\" }";
        std::fs::write(&path, two_upstreams(&b(one, ""), "")).unwrap();
        let shared = Shared::new(Config::load(&path).unwrap(), Vec::new()).unwrap();
        let first = tls_id(&shared);

        // Another backend: the connections pooled to the first stay usable.
        std::fs::write(&path, two_upstreams(&b(two, ""), "")).unwrap();
        assert_eq!(shared.reload().unwrap().unchanged_upstreams, 1);
        assert_eq!(tls_id(&shared), first);

        // Another name to verify: none of them is.
        let named = "server_name = \"api.internal\"\n";
        std::fs::write(&path, two_upstreams(&b(two, named), "")).unwrap();
        shared.reload().unwrap();
        let renamed = tls_id(&shared);
        assert_ne!(renamed, first);
        // Back to the first settings: a new client still, never one of an older config.
        std::fs::write(&path, two_upstreams(&b(two, ""), "")).unwrap();
        shared.reload().unwrap();
        assert!(![first, renamed].contains(&tls_id(&shared)));
    }

    /// A DNS refresh keeps the upstream's TLS client (its id) while the settings stay, so
    /// the connections pooled to the other backends stay usable; an address named otherwise
    /// gets another pool key, so none verified for another name is reused for it.
    #[test]
    fn a_dns_refresh_keeps_the_tls_client_and_keys_the_pool_by_name() {
        let table = crate::config::TableResolver::new(&[("node", &["10.0.0.1"])]);
        let load = |tls: &str| {
            let b = format!(
                "backends = [{{ addr = \"node:9443\" }}, {{ addr = \"127.0.0.1:9443\" }}]\n\
                 [upstreams.b.tls]\nverify = false\n{tls}"
            );
            let config =
                crate::config::parse_with(&two_upstreams(&b, ""), None, &|_| None, &*table);
            Shared::new(config.unwrap(), Vec::new()).unwrap()
        };
        let refresh = |shared: &Shared, to: &str| {
            let base = shared.current().upstreams["b"].config.backends.clone();
            let mut moved = base.clone();
            let named = moved.iter_mut().find(|b| b.dns.is_some()).unwrap();
            named.addr = to.parse().unwrap();
            assert!(shared.replace_backends("b", &base, moved));
        };
        let key = |shared: &Shared, addr: &str| {
            let rt = shared.current();
            rt.upstreams["b"]
                .tls
                .as_ref()
                .unwrap()
                .pool_key(addr.parse().unwrap())
        };
        let (one, two, bare) = ("10.0.0.1:9443", "10.0.0.2:9443", "127.0.0.1:9443");

        // With `server_name`, every backend is verified for it, wherever it moves.
        let shared = load("server_name = \"api.internal\"\n");
        let (id, before) = (tls_id(&shared), key(&shared, one));
        refresh(&shared, two);
        assert_eq!(tls_id(&shared), id);
        assert_eq!(key(&shared, two), before);

        // Without it, each address of `node` is verified for `node`, the bare address for
        // its IP: the client stays, the bare address keeps its key, and the named one's
        // key carries the name's tag.
        let shared = load("");
        let (id, bare_key, named_key) = (tls_id(&shared), key(&shared, bare), key(&shared, one));
        assert_eq!(bare_key, (id, 0));
        assert_ne!(named_key.1, 0);
        refresh(&shared, two);
        assert_eq!(tls_id(&shared), id);
        assert_eq!(key(&shared, bare), bare_key);
        assert_eq!(key(&shared, two), named_key, "the name's key moves with it");
        // `10.0.0.1` no longer named `node`: anything pooled for it under the name is not
        // reused for the address alone, which would be verified for its IP.
        assert_eq!(key(&shared, one), (id, 0));
        assert_ne!(key(&shared, one), named_key);
    }

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}

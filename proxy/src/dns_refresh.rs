//! `dns_refresh`: a background task that looks up the names of backends written `host:port`
//! again, every upstream on its own interval, and swaps in an upstream's new backends when
//! a name's addresses change (a container or pod restarted elsewhere), as a reload would
//! but without reading the config file: an edited file is applied by a reload alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Resolver, UpstreamConfig};
use crate::state::Shared;

/// How often the task wakes to see which upstream is due.
const TICK: Duration = Duration::from_secs(1);

/// A name that keeps failing is warned about once per this long (then at debug), not at
/// every refresh.
const WARN_EVERY: Duration = Duration::from_secs(300);

pub struct DnsRefresher {
    shared: Arc<Shared>,
    resolver: Arc<dyn Resolver>,
}

/// Per upstream: when its next refresh is due (and the interval that was computed with),
/// and when a failure of it was last warned about.
#[derive(Debug, Default)]
pub struct Schedules {
    due: HashMap<String, (Instant, Duration)>,
    warned: HashMap<String, Instant>,
}

impl DnsRefresher {
    pub fn new(shared: Arc<Shared>, resolver: Arc<dyn Resolver>) -> Self {
        Self { shared, resolver }
    }

    /// Refreshes each upstream with named backends whose refresh is due at `now`. An
    /// upstream seen for the first time is due one interval later: it was just looked up
    /// by the load that made it.
    pub async fn run_due(&self, schedules: &mut Schedules, now: Instant) {
        let rt = self.shared.current();
        for up in rt.upstreams.values() {
            let Some(every) = up.config.dns.refresh else {
                continue;
            };
            if !up.config.backends.iter().any(|b| b.dns.is_some()) {
                continue;
            }
            let due = schedules
                .due
                .entry(up.name.clone())
                .or_insert((now + every, every));
            if due.1 != every {
                // A reload changed the interval: counted from now.
                *due = (now + every, every);
            }
            if due.0 > now {
                continue;
            }
            due.0 = now + every;
            self.refresh(&up.config, &mut schedules.warned, now).await;
        }
        schedules
            .due
            .retain(|name, _| rt.upstreams.contains_key(name));
        schedules
            .warned
            .retain(|name, _| rt.upstreams.contains_key(name));
    }

    async fn refresh(
        &self,
        config: &UpstreamConfig,
        warned: &mut HashMap<String, Instant>,
        now: Instant,
    ) {
        let name = config.name.as_str();
        let (cfg, resolver) = (config.clone(), self.resolver.clone());
        // Lookups block (for at most the upstream's dns_timeout each): never on a runtime thread.
        let looked_up =
            tokio::task::spawn_blocking(move || crate::config::refresh(&cfg, &*resolver)).await;
        let (refreshed, errors) = match looked_up {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(upstream = name, "dns refresh failed: {e}");
                return;
            }
        };
        if errors.is_empty() {
            if warned.remove(name).is_some() {
                tracing::info!(upstream = name, "dns refresh: every name resolves again");
            }
        } else {
            let why = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let quiet = warned
                .get(name)
                .is_some_and(|last| now.saturating_duration_since(*last) < WARN_EVERY);
            if quiet {
                tracing::debug!(
                    upstream = name,
                    "dns refresh: {why}; keeping the last addresses"
                );
            } else {
                warned.insert(name.to_owned(), now);
                tracing::warn!(
                    upstream = name,
                    "dns refresh: {why}; keeping the last addresses (repeated failures are \
                     logged at debug for {} min)",
                    WARN_EVERY.as_secs() / 60
                );
            }
        }
        let Some(refreshed) = refreshed else {
            return;
        };
        if !self
            .shared
            .replace_backends(name, &config.backends, refreshed.backends)
        {
            tracing::debug!(upstream = name, "dns refresh: a reload came first");
            return;
        }
        for c in &refreshed.changes {
            tracing::info!(
                upstream = name,
                name = %c.name,
                added = ?c.added,
                removed = ?c.removed,
                "backend addresses changed"
            );
        }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut schedules = Schedules::default();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.run_due(&mut schedules, Instant::now()).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;
    use crate::config::{parse_with, TableResolver};

    fn addrs(shared: &Shared) -> Vec<SocketAddr> {
        shared.current().upstreams["app"]
            .backends
            .iter()
            .map(|b| b.addr)
            .collect()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_due_refresh_swaps_in_new_addresses_and_keeps_the_state_of_the_others() {
        let resolver = TableResolver::new(&[("node", &["10.0.0.1", "10.0.0.2"])]);
        let text = "[[listeners]]\nlisten = \"127.0.0.1:18095\"\n\
                    [upstreams.app]\ndns_refresh = \"10s\"\n\
                    backends = [{ addr = \"node:80\", weight = 2 }]\n";
        let config =
            parse_with(text, Some(Path::new("proxy.toml")), &|_| None, &*resolver).unwrap();
        let shared = Arc::new(Shared::new(config, Vec::new()).unwrap());
        let refresher = DnsRefresher::new(shared.clone(), resolver.clone());
        let mut schedules = Schedules::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(10);

        // State an operator set on a backend that stays: it must survive the swap.
        shared.current().upstreams["app"].backends[1]
            .stats
            .set_draining(true);
        resolver.set("node", &["10.0.0.2", "10.0.0.3"]);

        // Just loaded: the first refresh is one interval away.
        refresher.run_due(&mut schedules, t0).await;
        assert_eq!(addrs(&shared), [sa("10.0.0.1:80"), sa("10.0.0.2:80")]);
        refresher.run_due(&mut schedules, t0 + every).await;
        assert_eq!(addrs(&shared), [sa("10.0.0.2:80"), sa("10.0.0.3:80")]);
        let rt = shared.current();
        let up = &rt.upstreams["app"];
        assert!(up.backends[0].stats.is_draining(), "state carried over");
        assert!(!up.backends[1].stats.is_draining());
        assert!(up.backends.iter().all(|b| b.weight == 2));
        // The config the admin API and a later refresh see is the new one.
        assert_eq!(up.config.backends[1].addr, sa("10.0.0.3:80"));

        // A failing name keeps its addresses, and is warned about once, not every time.
        resolver.set("node", &[]);
        refresher.run_due(&mut schedules, t0 + 2 * every).await;
        assert_eq!(addrs(&shared), [sa("10.0.0.2:80"), sa("10.0.0.3:80")]);
        assert_eq!(schedules.warned.get("app"), Some(&(t0 + 2 * every)));
        refresher.run_due(&mut schedules, t0 + 3 * every).await;
        assert_eq!(schedules.warned.get("app"), Some(&(t0 + 2 * every)));
        // Resolving again clears it.
        resolver.set("node", &["10.0.0.2", "10.0.0.3"]);
        refresher.run_due(&mut schedules, t0 + 4 * every).await;
        assert!(schedules.warned.is_empty());
    }

    #[tokio::test]
    async fn a_refresh_never_overwrites_a_reload_that_came_between() {
        let resolver = TableResolver::new(&[("node", &["10.0.0.1"])]);
        let text = "[[listeners]]\nlisten = \"127.0.0.1:18096\"\n\
                    [upstreams.app]\nbackends = [{ addr = \"node:80\" }]\n";
        let config =
            parse_with(text, Some(Path::new("proxy.toml")), &|_| None, &*resolver).unwrap();
        let shared = Shared::new(config, Vec::new()).unwrap();
        let stale = shared.current().upstreams["app"].config.backends.clone();
        let mut other = stale.clone();
        other[0].addr = sa("10.0.0.7:80");
        assert!(shared.replace_backends("app", &stale, other.clone()));
        // Based on what is no longer there: refused.
        assert!(!shared.replace_backends("app", &stale, stale.clone()));
        assert_eq!(addrs(&shared), [sa("10.0.0.7:80")]);
        assert!(!shared.replace_backends("nope", &other, stale));
    }
}

//! Active health checks: a background task that probes every backend of every upstream
//! with an active check configured (HTTP GET or TCP connect), applying rise/fall.
//! Passive checks live with the backend state (`upstream::backend`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod h2;

use crate::config::{ActiveCheck, CheckKind, UpstreamProtocol};
use crate::state::Shared;
use crate::tunnel::handshake;
use crate::upstream::tls::TlsClient;

/// How often the checker wakes to see which upstream is due.
const TICK: Duration = Duration::from_millis(50);

pub struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// One probe. HTTP: `GET path`, any 2xx or 3xx passes; TCP: the connect succeeds. With
/// `tls`, either kind needs the TLS handshake to pass too (as HAProxy's `check-ssl`): a
/// backend whose certificate the proxy refuses would fail every request sent to it.
/// An h2 upstream is checked over h2, as its backends may speak nothing else (a gRPC
/// server refuses HTTP/1.1). `name` is the backend's `host:port` when it was named so.
pub async fn probe(
    addr: SocketAddr,
    name: Option<&str>,
    tls: Option<&TlsClient>,
    kind: &CheckKind,
    timeout: Duration,
    h2: bool,
) -> bool {
    let attempt = async {
        let mut s = match handshake::connect_alpn(addr, tls, timeout, h2).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("health check: {e}");
                return None;
            }
        };
        let (path, host) = match kind {
            CheckKind::Tcp => return Some(true),
            CheckKind::Http { path, host } => (path, host),
        };
        // A backend serving several names by SNI expects the same name in Host; one named
        // `host:port` in the config is asked for that name, as a request to it through
        // nginx's `proxy_pass http://host:port` would be, not for its address.
        let host = match (host, tls.and_then(TlsClient::server_name), name) {
            (Some(host), _, _) => host.clone(),
            (None, Some(server_name), _) => server_name.to_owned(),
            (None, None, Some(name)) => name.to_owned(),
            (None, None, None) => addr.to_string(),
        };
        if h2 {
            let code = h2::get(s, tls.is_some(), &host, path).await?;
            return Some((200..400).contains(&code));
        }
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-health\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        s.flush().await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                break;
            }
            got += n;
        }
        // "HTTP/1.1 200"
        let line = std::str::from_utf8(&buf[..got]).ok()?;
        let code: u16 = line.get(9..12)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// The checks of one upstream: when its next round is due, the settings that date was
/// computed with, and the backends it has checked.
struct Schedule {
    due: Instant,
    settings: ActiveCheck,
    /// A backend not in here (one a reload added) is checked at once: it gets no traffic
    /// until its first pass, which would otherwise wait for the next round, up to a whole
    /// interval.
    backends: HashSet<SocketAddr>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Per upstream: when its next round of checks is due, and the check settings that
        // date was computed with. A reload that changes them (a shorter interval, another
        // path) checks at once: kept, the old due time would delay the new settings by up to
        // a whole old interval (an hour-long interval shortened to 2 s waited the hour).
        let mut schedules: HashMap<String, Schedule> = HashMap::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let rt = self.shared.current();
            let now = Instant::now();
            for up in rt.upstreams.values() {
                let Some(active) = up.config.health.active.clone() else {
                    continue;
                };
                let s = schedules
                    .entry(up.name.clone())
                    .or_insert_with(|| Schedule {
                        due: now,
                        settings: active.clone(),
                        backends: HashSet::new(),
                    });
                if s.settings != active {
                    s.due = now;
                    s.settings = active.clone();
                }
                let round = s.due <= now;
                if round {
                    s.due = now + active.interval;
                }
                for b in &up.backends {
                    if !s.backends.insert(b.addr) && !round {
                        continue;
                    }
                    let (up, b, kind) = (up.clone(), b.clone(), active.kind.clone());
                    let timeout = active.timeout;
                    tokio::spawn(async move {
                        let h2 = up.config.protocol == UpstreamProtocol::H2;
                        let name = up.config.backend_name(b.addr);
                        let ok = probe(
                            b.addr,
                            name.as_deref(),
                            up.tls.as_deref(),
                            &kind,
                            timeout,
                            h2,
                        )
                        .await;
                        up.report_check(&b, ok);
                    });
                }
                // Forget the backends a reload removed, so that one added back is new again.
                if s.backends.len() > up.backends.len() {
                    s.backends
                        .retain(|addr| up.backends.iter().any(|b| b.addr == *addr));
                }
            }
            schedules.retain(|name, _| rt.upstreams.contains_key(name));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The request head an http check sends to a listener that answers 200.
    async fn check_head(name: Option<&str>, host: Option<&str>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the end of the head");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let kind = CheckKind::Http {
            path: "/healthz".to_owned(),
            host: host.map(str::to_owned),
        };
        assert!(probe(addr, name, None, &kind, Duration::from_secs(5), false).await);
        let head = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        head.replace(&addr.to_string(), "ADDR")
    }

    #[tokio::test]
    async fn an_http_check_of_a_named_backend_asks_for_its_name() {
        assert!(check_head(None, None).await.contains("\r\nHost: ADDR\r\n"));
        let head = check_head(Some("node1:9000"), None).await;
        assert!(head.contains("\r\nHost: node1:9000\r\n"), "{head}");
        // A configured host wins.
        let head = check_head(Some("node1:9000"), Some("chat.internal")).await;
        assert!(head.contains("\r\nHost: chat.internal\r\n"), "{head}");
    }
}

//! Active health checks: a background task that probes every backend of every upstream
//! with an active check configured (HTTP GET or TCP connect), applying rise/fall. The
//! HTTP exchange itself is in `http1` and, for h2 upstreams, `h2`.
//! Passive checks live with the backend state (`upstream::backend`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
mod h2;
mod http1;

use crate::config::{ActiveCheck, CheckKind, UpstreamProtocol};
use crate::state::Shared;
use crate::tunnel::handshake;
use crate::upstream::tls::TlsClient;
use crate::upstream::{Backend, Upstream};

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

/// What an HTTP check sends, and the text its body must have.
pub(super) struct CheckRequest<'a> {
    host: &'a str,
    path: &'a str,
    /// As configured: validated, in name order; an empty value sends nothing.
    headers: &'a [(String, String)],
    /// `expect_body`; None: the body is not read.
    body: Option<&'a str>,
}

impl CheckRequest<'_> {
    /// The fields sent besides `Host`, over HTTP/1.1 and h2 alike: the check's own
    /// `User-Agent` unless one is configured (an empty one sends none), then the
    /// configured fields that have a value.
    fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        let configured = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let own_agent = !configured
            .clone()
            .any(|(name, _)| name.eq_ignore_ascii_case("user-agent"));
        own_agent
            .then_some(("User-Agent", "switchyard-health"))
            .into_iter()
            .chain(configured.filter(|(_, value)| !value.is_empty()))
    }
}

/// Whether the part of a body that was read has `text` (`expect_body`).
fn body_contains(body: &[u8], text: &str) -> bool {
    text.is_empty() || body.windows(text.len()).any(|w| w == text.as_bytes())
}

/// One probe. HTTP: `GET path` with the configured fields; it passes on a status of
/// `expect_status` (default any 2xx or 3xx) with `expect_body` in the body when set. TCP:
/// the connect succeeds. With `tls`, either kind needs the TLS handshake to pass too (as
/// HAProxy's `check-ssl`): a backend whose certificate the proxy refuses would fail every
/// request sent to it. An h2 upstream is checked over h2, as its backends may speak nothing
/// else (a gRPC server refuses HTTP/1.1). `name` is the backend's `host:port` when it was
/// named so. A failure says why, for the log line of a backend the checks mark down.
pub async fn probe(
    addr: SocketAddr,
    name: Option<&str>,
    tls: Option<&TlsClient>,
    kind: &CheckKind,
    timeout: Duration,
    h2: bool,
) -> Result<(), String> {
    let attempt = async {
        let mut s = match handshake::connect_alpn(addr, tls, timeout, h2).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("health check: {e}");
                return Err(e.to_string());
            }
        };
        let CheckKind::Http {
            path,
            host,
            headers,
            expect_status,
            expect_body,
        } = kind
        else {
            return Ok(());
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
        let req = CheckRequest {
            host: &host,
            path,
            headers,
            body: expect_body.as_deref(),
        };
        let answer = match h2 {
            true => h2::get(s, tls.is_some(), &req).await,
            false => http1::get(&mut s, &req).await,
        };
        let Some((status, body_ok)) = answer else {
            return Err("no valid answer to the check".to_owned());
        };
        let failed = if !expect_status.contains(status) {
            format!("status {status} is not expected")
        } else if !body_ok {
            "the body lacks the expected text".to_owned()
        } else {
            return Ok(());
        };
        tracing::debug!("health check of {addr}: {failed}");
        Err(failed)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
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

/// Probes backend `b` of `up` as `active` says and records the result (rise/fall);
/// whether it passed.
async fn check(up: Arc<Upstream>, b: Arc<Backend>, active: ActiveCheck) -> bool {
    let h2 = up.config.protocol == UpstreamProtocol::H2;
    let name = up.config.backend_name(b.addr);
    let ok = probe(
        b.addr,
        name.as_deref(),
        up.tls.as_deref(),
        &active.kind,
        active.timeout,
        h2,
    )
    .await;
    let passed = ok.is_ok();
    up.report_check(&b, ok);
    passed
}

/// Checks every backend of every upstream with active checks once, all at once, and
/// records the results; returns how many passed, of how many. For a process that takes
/// over a running proxy's sockets (`--upgrade`): until its first check passes a backend
/// gets no traffic, and the requests of that first round would get `503`, though the
/// backends are up.
pub async fn first_round(shared: &Shared) -> (usize, usize) {
    let rt = shared.current();
    let mut probes = tokio::task::JoinSet::new();
    for up in rt.upstreams.values() {
        let Some(active) = up.config.health.active.clone() else {
            continue;
        };
        for b in &up.backends {
            probes.spawn(check(up.clone(), b.clone(), active.clone()));
        }
    }
    let (mut passed, mut all) = (0, 0);
    while let Some(done) = probes.join_next().await {
        all += 1;
        passed += usize::from(done.unwrap_or(false));
    }
    (passed, all)
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
                    tokio::spawn(check(up.clone(), b.clone(), active.clone()));
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::StatusSet;

    /// Whether an http check of `kind` passes against a listener answering `response`,
    /// and the request head it sent.
    async fn check(name: Option<&str>, kind: &CheckKind, response: &'static str) -> (bool, String) {
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
            s.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let ok = probe(addr, name, None, kind, Duration::from_secs(5), false)
            .await
            .is_ok();
        let head = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        (ok, head.replace(&addr.to_string(), "ADDR"))
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    /// The request head an http check sends to a listener that answers 200.
    async fn check_head(name: Option<&str>, host: Option<&str>) -> String {
        let kind = CheckKind::http("/healthz", host.map(str::to_owned));
        let (ok, head) = check(name, &kind, OK).await;
        assert!(ok);
        head
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

    fn with_headers(headers: &[(&str, &str)]) -> CheckKind {
        let mut kind = CheckKind::http("/healthz", None);
        if let CheckKind::Http { headers: h, .. } = &mut kind {
            *h = headers
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
        }
        kind
    }

    #[tokio::test]
    async fn an_http_check_sends_the_configured_fields() {
        let (_, head) = check(None, &with_headers(&[("X-Health-Token", "s3cret")]), OK).await;
        assert_eq!(
            head,
            "GET /healthz HTTP/1.1\r\nHost: ADDR\r\nUser-Agent: switchyard-health\r\nX-Health-Token: s3cret\r\nConnection: close\r\n\r\n"
        );
        // A configured User-Agent replaces the check's; an empty one sends none.
        let (_, head) = check(None, &with_headers(&[("user-agent", "probe/1")]), OK).await;
        assert!(head.contains("\r\nuser-agent: probe/1\r\n"), "{head}");
        assert!(!head.contains("switchyard-health"), "{head}");
        let (_, head) = check(None, &with_headers(&[("User-Agent", "")]), OK).await;
        assert!(!head.to_ascii_lowercase().contains("user-agent"), "{head}");
    }

    #[tokio::test]
    async fn an_http_check_passes_on_the_expected_statuses() {
        let answer = |code: u16| -> &'static str {
            match code {
                200 => OK,
                204 => "HTTP/1.1 204 No Content\r\n\r\n",
                301 => "HTTP/1.1 301 Moved\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n",
                _ => "HTTP/1.1 503 Unavailable\r\ncontent-length: 0\r\n\r\n",
            }
        };
        let mut only_200 = CheckKind::http("/healthz", None);
        let mut also_503 = CheckKind::http("/healthz", None);
        let set = |v: &str| {
            let doc: toml::Table = toml::from_str(&format!("v = {v}")).unwrap();
            StatusSet::from_toml(&doc["v"]).unwrap()
        };
        if let CheckKind::Http { expect_status, .. } = &mut only_200 {
            *expect_status = set("[200]");
        }
        if let CheckKind::Http { expect_status, .. } = &mut also_503 {
            *expect_status = set("[\"2xx\", 503]");
        }
        let default = CheckKind::http("/healthz", None);
        for (code, default_passes, only_200_passes, also_503_passes) in [
            (200, true, true, true),
            (204, true, false, true),
            (301, true, false, false),
            (503, false, false, true),
        ] {
            assert_eq!(
                check(None, &default, answer(code)).await.0,
                default_passes,
                "{code}"
            );
            assert_eq!(
                check(None, &only_200, answer(code)).await.0,
                only_200_passes,
                "{code}"
            );
            assert_eq!(
                check(None, &also_503, answer(code)).await.0,
                also_503_passes,
                "{code}"
            );
        }
    }

    /// Whether an h2 check of `kind` passes against an h2c listener answering `status` with
    /// `body`, and the fields of the request it sent.
    async fn h2_check(
        kind: &CheckKind,
        status: u16,
        body: &'static str,
    ) -> (bool, http::HeaderMap) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut conn = ::h2::server::handshake(s).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let response = http::Response::builder().status(status).body(()).unwrap();
            let mut send = respond.send_response(response, body.is_empty()).unwrap();
            if !body.is_empty() {
                send.send_data(body.into(), true).unwrap();
            }
            // Driven until the check closes it, so that the answer goes out.
            while let Some(Ok(_)) = conn.accept().await {}
            req.headers().clone()
        });
        let ok = probe(addr, None, None, kind, Duration::from_secs(5), true)
            .await
            .is_ok();
        let fields = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        (ok, fields)
    }

    #[tokio::test]
    async fn an_h2_check_sends_the_fields_and_checks_the_answer() {
        let mut kind = with_headers(&[("X-Health-Token", "s3cret"), ("User-Agent", "probe/1")]);
        let (ok, fields) = h2_check(&kind, 204, "").await;
        assert!(ok);
        assert_eq!(fields["x-health-token"], "s3cret");
        assert_eq!(fields["user-agent"], "probe/1");
        assert_eq!(fields.get_all("user-agent").iter().count(), 1);
        let (_, fields) = h2_check(&CheckKind::http("/healthz", None), 200, "").await;
        assert_eq!(fields["user-agent"], "switchyard-health");

        if let CheckKind::Http {
            expect_status,
            expect_body,
            ..
        } = &mut kind
        {
            let doc: toml::Table = toml::from_str("v = [200]").unwrap();
            *expect_status = StatusSet::from_toml(&doc["v"]).unwrap();
            *expect_body = Some("OK".to_owned());
        }
        assert!(!h2_check(&kind, 204, "").await.0);
        assert!(h2_check(&kind, 200, "all OK").await.0);
        assert!(!h2_check(&kind, 200, "all fine").await.0);
    }
}

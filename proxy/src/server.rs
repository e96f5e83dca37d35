//! Assembles the pingora server: the proxy service with its listeners, the admin listener,
//! the health checker and the SIGHUP reload handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::health::HealthChecker;
use crate::proxy::{EdgeProxy, HEAD_READ};
use crate::state::Shared;
use crate::tls;

/// Wraps pingora's HTTP proxy app to apply our header read timeout before the request head
/// is read (pingora's default is a fixed 60 s), the slowloris guard.
struct Edge {
    inner: Arc<HttpProxy<EdgeProxy>>,
    shared: Arc<Shared>,
}

#[async_trait]
impl HttpServerApp for Edge {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let cfg = self.shared.current().config.clone();
        let Some(head_timeout) = cfg.limits.header_read_timeout else {
            return self.inner.process_new_http(session, shutdown).await;
        };
        // A fresh connection must send its head within the timeout; a kept-alive one may
        // first idle for the keep-alive time. pingora only bounds each read, so a client
        // trickling one byte at a time would never hit it: the deadline below bounds the
        // whole head, and dropping the request future closes the connection.
        // pingora enables keep-alive on every new HTTP/1 session; a reused connection is
        // recognised by the marker our proxy leaves in the connection context.
        let reused = match session.take_connection_user_context() {
            Some(c) => {
                session.set_connection_user_context(Some(c));
                true
            }
            None => false,
        };
        let deadline = if reused {
            head_timeout + cfg.timeouts.downstream_keepalive
        } else {
            // With keep-alive off, pingora bounds each read of the head by the read timeout;
            // it turns keep-alive back on once the head is parsed.
            session.set_keepalive(None);
            session.set_read_timeout(Some(head_timeout));
            head_timeout
        };
        let head_read = Arc::new(AtomicBool::new(false));
        let request = HEAD_READ.scope(
            head_read.clone(),
            self.inner.process_new_http(session, shutdown),
        );
        tokio::pin!(request);
        tokio::select! {
            r = &mut request => r,
            _ = tokio::time::sleep(deadline) => {
                if head_read.load(Ordering::Acquire) {
                    request.await
                } else {
                    self.shared.metrics.reject("header_timeout");
                    None
                }
            }
        }
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// Reloads the config on SIGHUP.
struct ReloadOnHup {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ReloadOnHup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(errors) = self.shared.reload() {
                        tracing::error!("reload rejected, the running config stays:\n{errors}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Builds every service and runs until SIGINT/SIGTERM. Everything that can fail on bad
/// input (certificates, files) is checked before pingora starts, which would panic.
pub fn run(config: Config) -> Result<()> {
    let mut tls_settings = Vec::new();
    for l in &config.listeners {
        tls_settings.push(match &l.tls {
            Some(t) => {
                Some(tls::listener_settings(t).with_context(|| format!("listener {}", l.listen))?)
            }
            None => None,
        });
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }

    // pingora's default pid and upgrade-socket paths are shared names in /tmp: two proxies
    // on one machine would clash.
    let pid = std::process::id();
    let tmp = |ext: &str| {
        std::env::temp_dir()
            .join(format!("switchyard-proxy-{pid}.{ext}"))
            .display()
            .to_string()
    };
    let conf = ServerConf {
        threads: config.server.threads.max(1),
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(2),
        pid_file: tmp("pid"),
        upgrade_sock: tmp("sock"),
        ..Default::default()
    };

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let threads = config.server.threads.max(1);
    let admin = config.admin.clone();
    let listeners = config.listeners.clone();
    let shared = Arc::new(Shared::new(config)?);

    let mut proxy = HttpProxy::new(EdgeProxy::new(shared.clone()), server.configuration.clone());
    proxy.handle_init_modules();
    let edge = Edge {
        inner: Arc::new(proxy),
        shared: shared.clone(),
    };
    let mut service = Service::new("switchyard proxy".to_string(), edge);
    service.threads = Some(threads);
    for (l, tls) in listeners.iter().zip(tls_settings) {
        // No L4 read buffer: request heads are parsed from pingora's own header buffer and
        // tunnels read through our relay, so a 64 KiB buffer per connection buys nothing
        // and costs RSS per idle WebSocket.
        let mut lc =
            ListenerConfig::tcp(l.listen.to_string()).l4_buffer(L4BufferSettings::new(0, 1460));
        if let Some(t) = tls {
            lc = lc.tls(t);
        }
        service.add_listener(lc);
        tracing::info!(listen = %l.listen, tls = l.tls.is_some(), "listening");
    }
    server.add_service(service);

    if let Some(admin) = admin {
        if admin.token.is_none() {
            tracing::warn!(
                "admin API on {} has no token: drain/undrain/reload are refused",
                admin.listen
            );
        }
        let mut svc = Service::new(
            "switchyard admin".to_string(),
            AdminApp::new(shared.clone(), admin.token),
        );
        svc.add_tcp(&admin.listen.to_string());
        svc.threads = Some(1);
        server.add_service(svc);
        tracing::info!(listen = %admin.listen, "admin listening");
    }
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(shared.clone()),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        ReloadOnHup { shared },
    ));
    server.run_forever();
}

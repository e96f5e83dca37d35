//! [`Config::summary`]: what `proxy check` prints about a valid configuration.

use std::fmt::Write;

use super::duration::fmt_duration;
use super::{CheckKind, Config, StatusSet, StrategyKind};

impl Config {
    /// A human summary: listeners (TLS, h2, redirect), upstreams (strategy, backends with
    /// weight, backup flag and id, health, sticky/ip_hash settings), routes, limits, timeouts,
    /// admin, access log and warnings. Secrets are never printed.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail; the results are ignored below.
        let _ = self.write_summary(&mut s);
        s
    }

    fn write_summary(&self, s: &mut String) -> std::fmt::Result {
        match &self.source {
            Some(p) => writeln!(s, "config: {}", p.display())?,
            None => writeln!(s, "config: quick mode (command-line flags)")?,
        }
        writeln!(
            s,
            "server: {} worker thread{}, grace period {}, HTTP/1 path {}",
            self.server.threads,
            plural(self.server.threads),
            fmt_duration(self.server.grace_period),
            match self.server.http1 {
                super::Http1Path::Native => "native",
                super::Http1Path::Pingora => "pingora",
            }
        )?;

        writeln!(s, "listeners:")?;
        for l in &self.listeners {
            write!(s, "  {}", l.listen)?;
            match &l.tls {
                Some(t) => {
                    write!(
                        s,
                        "  https  cert {}  key {}",
                        t.cert.display(),
                        t.key.display()
                    )?;
                    write!(
                        s,
                        "  alpn {}",
                        if t.h2 { "h2,http/1.1" } else { "http/1.1" }
                    )?;
                    if let Some(c) = &t.client_auth {
                        let mode = match c.mode {
                            super::ClientAuthMode::Required => "required",
                            super::ClientAuthMode::Optional => "optional",
                        };
                        write!(
                            s,
                            "\n      client certificates {mode}, ca {}",
                            c.ca.path.display()
                        )?;
                        if let Some(crls) = &c.crls {
                            write!(s, ", crl {}", crls.path.display())?;
                        }
                    }
                    for sni in &t.sni {
                        write!(
                            s,
                            "\n      sni {} -> cert {}",
                            sni.server_name,
                            sni.cert.display()
                        )?;
                    }
                }
                None => write!(s, "  http")?,
            }
            if let Some(p) = &l.proxy_protocol {
                write!(s, "  proxy_protocol")?;
                if !p.from.is_empty() {
                    let from: Vec<String> = p.from.iter().map(|n| n.to_string()).collect();
                    write!(s, " from {}", from.join(", "))?;
                }
            }
            if let Some(port) = l.redirect_https_port {
                write!(s, "  (redirects everything to https port {port})")?;
            }
            writeln!(s)?;
        }

        writeln!(s, "upstreams:")?;
        for u in &self.upstreams {
            write!(s, "  {}  strategy {}", u.name, u.strategy.as_str())?;
            if u.protocol == super::UpstreamProtocol::H2 {
                write!(s, "  h2")?;
            }
            if let Some(d) = u.slow_start {
                write!(s, "  slow start {}", fmt_duration(d))?;
            }
            if let Some(q) = u.queue {
                write!(
                    s,
                    "  queue {} for {} when every backend is full",
                    q.max,
                    fmt_duration(q.timeout)
                )?;
            }
            if u.timeouts != (&self.timeouts).into() {
                let t = &u.timeouts;
                write!(
                    s,
                    "  timeouts: connect {}, upstream read {}, tunnel idle {}",
                    fmt_duration(t.connect),
                    fmt_duration(t.upstream_read),
                    fmt_duration(t.tunnel_idle)
                )?;
            }
            if u.backends.iter().any(|b| b.dns.is_some()) {
                match u.dns.refresh {
                    Some(d) => write!(s, "  dns refresh {}", fmt_duration(d))?,
                    None => write!(s, "  dns refresh off")?,
                }
                if u.dns.family != super::DnsFamily::All {
                    write!(s, "  dns family {}", u.dns.family.as_str())?;
                }
                if u.dns.timeout != super::DEFAULT_DNS_TIMEOUT {
                    write!(s, "  dns timeout {}", fmt_duration(u.dns.timeout))?;
                }
            }
            writeln!(s)?;
            // A named backend shows its name and the address it resolved to.
            let label = |b: &super::BackendConfig| match &b.dns {
                Some(d) => format!("{} ({})", d.name(b.addr.port()), b.addr),
                None => b.addr.to_string(),
            };
            let width = u.backends.iter().map(|b| label(b).len()).max().unwrap_or(0);
            for b in &u.backends {
                write!(
                    s,
                    "    {:<width$}  weight {:<5}  id {}{}",
                    label(b),
                    b.weight,
                    b.id,
                    if b.backup { "  backup" } else { "" },
                )?;
                if b.max_conns > 0 {
                    write!(s, "  max_conns {}", b.max_conns)?;
                }
                writeln!(s)?;
            }
            match &u.health.active {
                Some(a) => {
                    let what = match &a.kind {
                        CheckKind::Http {
                            path,
                            host,
                            headers,
                            expect_status,
                            expect_body,
                        } => {
                            let mut notes: Vec<String> =
                                host.iter().map(|h| format!("Host: {h}")).collect();
                            if !headers.is_empty() {
                                // Names only: a value may be a token.
                                let names: Vec<&str> =
                                    headers.iter().map(|(n, _)| n.as_str()).collect();
                                notes.push(format!("sends {}", names.join(", ")));
                            }
                            if *expect_status != StatusSet::default() {
                                notes.push(format!("expects {expect_status}"));
                            }
                            if let Some(body) = expect_body {
                                notes.push(format!("body contains {body:?}"));
                            }
                            let mut what = format!("http GET {path}");
                            if !notes.is_empty() {
                                write!(what, " ({})", notes.join("; "))?;
                            }
                            what
                        }
                        CheckKind::Tcp => "tcp connect".to_string(),
                    };
                    write!(
                        s,
                        "    active check: {what} every {}, timeout {}, rise {}, fall {}",
                        fmt_duration(a.interval),
                        fmt_duration(a.timeout),
                        a.rise,
                        a.fall
                    )?;
                }
                None => write!(s, "    active check: none")?,
            }
            if u.health.max_fails == 0 {
                writeln!(s, "; passive: off")?;
            } else {
                writeln!(
                    s,
                    "; passive: down after {} failure{} in {}",
                    u.health.max_fails,
                    plural(u.health.max_fails as usize),
                    fmt_duration(u.health.fail_window)
                )?;
            }
            if let Some(tls) = &u.tls {
                writeln!(
                    s,
                    "    tls: name {}, roots {}{}",
                    tls.server_name
                        .as_deref()
                        .unwrap_or("each backend's host name, or IP address"),
                    match &tls.ca {
                        Some(ca) => format!("{ca:?}"),
                        None => "of the system".to_string(),
                    },
                    if tls.verify {
                        ""
                    } else {
                        ", certificates NOT verified"
                    },
                )?;
                if let Some(c) = &tls.client_cert {
                    writeln!(s, "    tls client certificate: {c:?}")?;
                }
            }
            match u.strategy {
                StrategyKind::StickyCookie => writeln!(
                    s,
                    "    sticky: cookie {}, {}, key {} bytes, fallback {}",
                    u.sticky.cookie,
                    match u.sticky.max_age {
                        Some(d) => format!("max-age {}", fmt_duration(d)),
                        None => "session cookie".to_string(),
                    },
                    u.sticky.key.len(),
                    u.sticky.fallback.as_str()
                )?,
                StrategyKind::IpHash => {
                    let nets: Vec<String> = u
                        .ip_hash
                        .trusted_proxies
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    writeln!(
                        s,
                        "    ip_hash: trusted proxies {}",
                        if nets.is_empty() {
                            "none (X-Forwarded-For ignored)".to_string()
                        } else {
                            nets.join(", ")
                        }
                    )?
                }
                _ => {}
            }
        }

        writeln!(s, "routes (first match wins):")?;
        for r in &self.routes {
            writeln!(
                s,
                "  {}{} -> {}{}{}{}{}",
                r.host.as_deref().unwrap_or("*"),
                r.path_prefix,
                r.upstream,
                r.prefix_rewrite
                    .as_deref()
                    .map_or_else(String::new, |w| format!(" (as {w})")),
                if !r.slash_redirect && r.path_prefix.len() > 1 && r.path_prefix.ends_with('/') {
                    " (no slash redirect)"
                } else {
                    ""
                },
                r.allow.as_ref().map_or_else(String::new, |nets| format!(
                    " (allow {})",
                    nets.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                request_fields(&r.request_headers),
            )?;
        }

        let l = &self.limits;
        let off = |v: Option<String>| v.unwrap_or_else(|| "off".to_string());
        writeln!(
            s,
            "limits: connections {}, connections/ip {}, requests/s/ip {}, header bytes {}, body bytes {}, header read timeout {}",
            off(l.max_connections.map(|v| v.to_string())),
            off(l.max_connections_per_ip.map(|v| v.to_string())),
            off(l.requests_per_second_per_ip.map(|v| v.to_string())),
            off(l.max_request_header_bytes.map(|v| v.to_string())),
            off(l.max_request_body_bytes.map(|v| v.to_string())),
            off(l.header_read_timeout.map(fmt_duration)),
        )?;
        let t = &self.timeouts;
        writeln!(
            s,
            "timeouts: connect {}, upstream read {}, tunnel idle {}, downstream keep-alive {}, \
             client {}",
            fmt_duration(t.connect),
            fmt_duration(t.upstream_read),
            fmt_duration(t.tunnel_idle),
            if t.downstream_keepalive.is_zero() {
                "off".to_string()
            } else {
                fmt_duration(t.downstream_keepalive)
            },
            fmt_duration(t.client),
        )?;
        match &self.admin {
            Some(a) => writeln!(
                s,
                "admin: {} ({}{})",
                a.listen,
                if a.token.is_some() {
                    "token set"
                } else {
                    "no token: mutations refused"
                },
                if a.auth_reads {
                    ", reads need it too"
                } else {
                    ""
                }
            )?,
            None => writeln!(s, "admin: off")?,
        }
        if self.access_log.enabled {
            writeln!(
                s,
                "access log: {} to {}",
                self.access_log.format.as_str(),
                self.access_log
                    .path
                    .as_ref()
                    .map_or("stdout".to_string(), |p| p.display().to_string())
            )?;
        } else {
            writeln!(s, "access log: off")?;
        }
        for w in &self.warnings {
            writeln!(s, "warning: {w}")?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A route's `request_headers` in its summary line: ` (sets X-Env, Host; removes X-Debug)`.
fn request_fields(fields: &[(String, String)]) -> String {
    let names = |removed: bool| {
        fields
            .iter()
            .filter(|(_, v)| v.is_empty() == removed)
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (names(false), names(true)) {
        (set, removed) if set.is_empty() && removed.is_empty() => String::new(),
        (set, removed) if removed.is_empty() => format!(" (sets {set})"),
        (set, removed) if set.is_empty() => format!(" (removes {removed})"),
        (set, removed) => format!(" (sets {set}; removes {removed})"),
    }
}

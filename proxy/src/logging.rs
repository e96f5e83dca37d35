//! Logging: `tracing` for the proxy's own events, and pingora's `log` records bridged into
//! it, with the TLS and h2 handshake failures that clients cause demoted from ERROR to INFO.
//!
//! pingora logs every failed downstream handshake at ERROR: a port scanner, a load
//! balancer's TCP check that connects and closes, a client that does not trust the
//! certificate, plain HTTP sent to the TLS port. An edge proxy on the internet sees these all
//! day, and ERROR lines that nobody can act on bury the ones that matter. nginx logs them at
//! `info` ("client closed connection while SSL handshaking", "client sent plain HTTP
//! request to HTTPS port"). Here they become INFO records of their pingora target, which
//! the default filter (`pingora_core=warn`) hides and `RUST_LOG=pingora_core=info` shows.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, Log, Metadata, Record};
use tracing::level_filters::LevelFilter;
use tracing_log::AsLog as _;

/// The default filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// For a process whose stdout carries something else: the proxy's access log (`path =
    /// "-"`), `switchyard`'s `LISTENING` lines and banner.
    Stderr,
}

/// Installs the subscriber (colours only on a terminal: in a file, journald or `docker
/// logs` escape codes are noise) and the bridge for `log` records (pingora's).
pub fn init(output: Output) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let installed = match output {
        Output::Stdout => tracing::subscriber::set_global_default(
            builder.with_ansi(std::io::stdout().is_terminal()).finish(),
        ),
        Output::Stderr => tracing::subscriber::set_global_default(
            builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .finish(),
        ),
    };
    if installed.is_err() {
        return;
    }
    if log::set_boxed_logger(Box::new(Bridge)).is_ok() {
        // Records above the subscriber's most verbose level are skipped by `log` itself,
        // without formatting (pingora's hot paths are full of `debug!`). Never above debug:
        // pingora 0.9.1 formats a backend's response head as UTF-8 with `unwrap()` in a
        // `trace!` (`v1/client.rs`, `read_response_task`), and a head with obs-text bytes
        // would panic the request's task. `log` evaluates a record's arguments as soon as
        // its level passes this cap, before any logger could refuse it, so the cap is the
        // only guard; pingora's and rustls's trace records are its price.
        log::set_max_level(LevelFilter::current().as_log().min(log::LevelFilter::Debug));
    }
}

/// Forwards `log` records to `tracing`, demoting client-caused handshake failures.
struct Bridge;

impl Log for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if is_client_handshake_failure(record) {
            let demoted = Record::builder()
                .args(*record.args())
                .level(Level::Info)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            tracing_log::format_trace(&demoted).ok();
        } else {
            tracing_log::format_trace(record).ok();
        }
    }

    fn flush(&self) {}
}

/// pingora's "Downstream handshake error …" and "… timeout" from its listening service
/// (TLS), and its "H2 handshake error …" from its HTTP app (a client that goes away or
/// sends no valid h2 preface).
fn is_client_handshake_failure(record: &Record<'_>) -> bool {
    if record.level() != Level::Error {
        return false;
    }
    let prefix = match record.target() {
        t if t.starts_with("pingora_core::services::listening") => "Downstream handshake",
        t if t.starts_with("pingora_core::apps") => "H2 handshake error",
        _ => return false,
    };
    record.args().to_string().starts_with(prefix)
}

/// A request (or upgrade) could not be served by a backend: refused, reset, timed out, a
/// malformed answer. Every path of the proxy logs it here, the first of each minute for
/// each backend as a warning and the others at debug: a backend that fails every request
/// would otherwise write a line per request, as pingora's own ERROR did, and the access log
/// already has each request's status (`backend_failures_total` counts them all). The
/// throttle is the backend's own: with one for the whole proxy, a second backend that
/// started failing within the minute of the first went unlogged. A backend that goes down
/// is logged by its health (warn).
pub fn backend_failure(
    upstream: &str,
    backend: &crate::upstream::Backend,
    what: &dyn std::fmt::Display,
) {
    let addr = backend.addr;
    if backend.stats.failure_log.allow() {
        tracing::warn!(
            upstream,
            backend = %addr,
            "{what} (further failures of this backend within a minute are logged at debug)"
        );
    } else {
        tracing::debug!(upstream, backend = %addr, "{what}");
    }
}

/// Lets a warning that can repeat per connection (a full connection table, a backend whose
/// certificate is refused) through once a minute at most, so it is seen without flooding.
#[derive(Debug)]
pub struct Throttle {
    /// When a line was last let through (Unix seconds).
    last: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

impl Throttle {
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
        }
    }

    /// Whether to log now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        now >= last + 60
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(target: &str, level: Level, message: std::fmt::Arguments<'_>) -> bool {
        is_client_handshake_failure(
            &Record::builder()
                .args(message)
                .level(level)
                .target(target)
                .build(),
        )
    }

    #[test]
    fn only_pingoras_handshake_errors_are_demoted() {
        let listening = "pingora_core::services::listening";
        let peer = "127.0.0.1:4000";
        assert!(check(
            listening,
            Level::Error,
            format_args!("Downstream handshake error from {peer}: early eof")
        ));
        assert!(check(
            listening,
            Level::Error,
            format_args!("Downstream handshake timeout")
        ));
        assert!(check(
            "pingora_core::apps",
            Level::Error,
            format_args!("H2 handshake error  while h2 handshaking with client cause: Broken pipe")
        ));
        assert!(!check(
            "pingora_core::apps",
            Level::Error,
            format_args!("something else")
        ));
        // Accept failures (out of descriptors) stay errors, as does anything elsewhere.
        assert!(!check(
            listening,
            Level::Error,
            format_args!("Accept() failed Too many open files")
        ));
        assert!(!check(
            "pingora_proxy",
            Level::Error,
            format_args!("Downstream handshake error")
        ));
        assert!(!check(
            listening,
            Level::Warn,
            format_args!("Downstream handshake error")
        ));
    }
}

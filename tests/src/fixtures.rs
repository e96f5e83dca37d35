//! Fixtures shared by the end-to-end tests: proxy config snippets built from running
//! [`Backend`]s, a quick-mode proxy in front of backends, and waits on the echo backend's state.
//!
//! The snippets are TOML text, so a test still reads as the file the proxy gets:
//!
//! ```no_run
//! # fn f(b: &tests::Backend) {
//! use tests::fixtures::{entries, listener, upstream, TWO_THREADS};
//! let toml = format!(
//!     "{TWO_THREADS}\n{}\n{}",
//!     listener(tests::free_port()),
//!     upstream("app", Some("least_conn"), &entries(&[b])),
//! );
//! # }
//! ```

use std::path::Path;
use std::time::Duration;

use crate::http::get;
use crate::procs::{free_port, Backend, Proxy};
use crate::wait::wait_until;

/// `[server]` with two worker threads: plenty for one test, light on a shared machine.
pub const TWO_THREADS: &str = "[server]\nthreads = 2\n";

/// `[server]` with one worker thread, which the proxy runs on a current-thread runtime (no
/// work stealing): the health checker, reloads and the admin API run on that flavour too.
pub const ONE_THREAD: &str = "[server]\nthreads = 1\n";

/// A plain `[[listeners]]` entry on 127.0.0.1:`port`.
pub fn listener(port: u16) -> String {
    format!("[[listeners]]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// The `backends` entry of `b`, with its echo id as the proxy's id:
/// `{ addr = "<addr>", id = "<id>" }`, plus `keys` (`backup = true`, `weight = 2`) when not
/// empty.
pub fn backend_entry(b: &Backend, keys: &str) -> String {
    let (addr, id) = (b.addr(), b.id());
    if keys.is_empty() {
        format!("{{ addr = \"{addr}\", id = \"{id}\" }}")
    } else {
        format!("{{ addr = \"{addr}\", id = \"{id}\", {keys} }}")
    }
}

/// The plain [`backend_entry`] of each backend.
pub fn entries(backends: &[&Backend]) -> Vec<String> {
    backends.iter().map(|b| backend_entry(b, "")).collect()
}

/// An `[upstreams.<name>]` table over `entries` (see [`entries`], [`backend_entry`]), with
/// `strategy` when given (else the proxy's default).
pub fn upstream(name: &str, strategy: Option<&str>, entries: &[String]) -> String {
    let strategy = strategy.map_or_else(String::new, |s| format!("strategy = \"{s}\"\n"));
    format!(
        "[upstreams.{name}]\n{strategy}backends = [{}]\n",
        entries.join(", ")
    )
}

/// An `[upstreams.<upstream>.health]` table: active HTTP checks of `/healthz` every
/// `interval` (a humantime string such as `"200ms"`), each bounded by `timeout`; `rise`
/// passes bring a backend up, `fall` failures take it down.
pub fn http_health(upstream: &str, interval: &str, timeout: &str, rise: u32, fall: u32) -> String {
    format!(
        "[upstreams.{upstream}.health]\nkind = \"http\"\npath = \"/healthz\"\n\
         interval = \"{interval}\"\ntimeout = \"{timeout}\"\nrise = {rise}\nfall = {fall}\n"
    )
}

/// An `[admin]` table on 127.0.0.1:`port` whose mutations need `token`.
pub fn admin(port: u16, token: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n")
}

/// The `tls` key of a listener: `tls = { cert = "<cert>", key = "<key>" }`.
pub fn tls_keys(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

/// A quick-mode proxy on a free port in front of `backends` (each with its weight) using
/// `strategy`; `extra` is appended to its arguments.
pub fn quick_proxy(strategy: &str, backends: &[(&Backend, u32)], extra: &[&str]) -> Proxy {
    let listen = format!("127.0.0.1:{}", free_port());
    let specs: Vec<String> = backends
        .iter()
        .map(|(b, w)| format!("{}={w}", b.addr()))
        .collect();
    let mut args = vec!["--listen", listen.as_str(), "--strategy", strategy];
    for s in &specs {
        args.extend(["--backend", s.as_str()]);
    }
    args.extend(extra);
    Proxy::start_quick(&args)
}

/// Every backend with weight 1, for [`quick_proxy`].
pub fn weight_1(backends: &[Backend]) -> Vec<(&Backend, u32)> {
    backends.iter().map(|b| (b, 1)).collect()
}

/// Waits (up to `timeout`) until the backend process itself counts `n` open WebSockets
/// (`ws_open` in its `/stats`).
pub async fn wait_ws_open(b: &Backend, n: u64, timeout: Duration) {
    wait_until(
        timeout,
        &format!("backend {} counts {n} open WebSockets", b.id()),
        || async { get(&b.url("/stats")).await.json()["ws_open"] == n },
    )
    .await;
}

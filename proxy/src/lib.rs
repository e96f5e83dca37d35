//! Switchyard's edge proxy: a pingora-based reverse proxy and load balancer for HTTP and
//! WebSocket backends.
//!
//! # Layout
//! - [`config`]: the TOML configuration, its validation and the quick (flags-only) mode.
//! - [`upstream`]: upstream groups and the live state of each backend (counters, health,
//!   draining), kept across reloads; the choice of a backend for a request, its `max_conns`
//!   and the queue of requests waiting for a slot.
//! - [`balance`]: the balancing strategies, one module each, behind [`balance::Strategy`].
//! - [`health`]: active health checks (passive ones live with the backend state).
//! - [`dns_refresh`]: looks up backends named `host:port` again and swaps in new addresses.
//! - [`tunnel`]: the WebSocket upgrade handshake and a byte relay that holds no buffer while
//!   idle.
//! - [`h1`]: our own HTTP/1.1 request path, which serves plain requests without pingora's
//!   per-request machinery and hands everything else to [`proxy`].
//! - [`h2`]: bounds on HTTP/2 client connections (the first request's deadline, the idle
//!   timeout, the header-list size), which pingora serves.
//! - [`proxy`]: the pingora `ProxyHttp` implementation tying it together.
//! - [`limits`]: per-client-IP concurrency and rate limits.
//! - [`capacity`]: the cap on open connections, from the open-file limit.
//! - [`logging`]: the subscriber, and pingora's log records bridged into it.
//! - [`admin`]: metrics, status and the token-protected admin API.
//! - [`tls`]: certificate loading, SNI selection and the dev CA generator.
//! - [`client_cert`]: client certificates (mutual TLS): the verifier a reload swaps, and the
//!   `x-forwarded-client-cert` a verified one gives the backends.
//! - [`state`]: the swappable runtime built from a config, and reload.
//! - [`server`]: assembles the pingora server and its services.
//! - [`drain`]: ends a graceful stop as soon as the last client connection has closed.

// The crate's readers are its developers: its docs are built with --document-private-items,
// where links to private items resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod capacity;
pub mod client_cert;
pub mod config;
pub mod dns_refresh;
pub mod drain;
#[doc(hidden)]
pub mod fuzzing;
pub mod h1;
pub mod h2;
pub mod handshakes;
pub mod health;
pub mod limits;
pub mod logging;
pub mod proxy;
pub mod proxy_protocol;
pub mod server;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upstream;

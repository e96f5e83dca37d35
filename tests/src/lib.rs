//! End-to-end test harness: real `echo-backend` and `proxy` processes on 127.0.0.1, plus HTTP,
//! TLS and WebSocket clients and bounded waiting — the one place for test helpers.
//!
//! # Layout
//! - [`procs`]: locating built binaries ([`bin_path`]), free ports ([`ports`]), and the child
//!   processes [`Backend`] (echo backend, started on port 0) and [`Proxy`] (quick mode or a TOML
//!   config), killed on drop.
//! - [`fixtures`]: what several test files set up alike — proxy config snippets built from
//!   running backends (listeners, upstreams, health checks, admin, TLS keys), a quick-mode proxy
//!   in front of backends, waits on the echo backend's open WebSockets.
//! - [`http`]: `reqwest` clients (plain, bound to a local 127.0.0.x, TLS trusting a test CA with
//!   forced ALPN), [`Reply`], a response read whole, and counts of which backend answered.
//! - [`h2client`]: h2 clients of the TLS listeners (`h2` crate), responses with trailers.
//! - [`ws`]: WebSocket clients (plain, from a local address, TLS) that read the backend's
//!   `hello <id>` greeting, and echo helpers.
//! - [`certs`]: a throw-away CA and server certificates ([`Certs`]), client certificates and
//!   revocation lists, made with rcgen.
//! - [`raw`]: raw HTTP/1.1 clients and misbehaving backends, for tests of exact bytes.
//! - [`wait`]: [`wait_until`] / [`wait_for`] — poll a condition with a bounded timeout.
//! - [`admin`]: the proxy's admin API — `/status` lookups, waits on its counters and health,
//!   authorised `POST`s.
//! - [`socketio`]: the chat-node `conformance` server process and the official
//!   `socket.io-client` suite under `tests/node/` (run with Node, bounded by a timeout).
//!
//! # Binaries
//! Tests in this crate get `echo-backend` built by cargo; `proxy` comes from another package, so
//! build it first: `cargo build --workspace --bins && cargo test --workspace`. Binaries are
//! looked up in the target directory of the running test executable (see [`target_dir`]), or
//! in `$SWITCHYARD_BIN_DIR` when that is set.
//!
//! # Rules the helpers follow
//! No fixed ports (backends bind port 0 and report `LISTENING <addr>`; proxies get ports from
//! [`ports`]), no bare sleeps (everything waits on an event with a deadline), no orphans
//! (children are killed on drop; the echo backend also exits when its stdin closes).

pub mod admin;
pub mod browser;
pub mod certs;
pub mod chatnode;
pub mod fixtures;
pub mod h2client;
pub mod http;
pub mod procs;
pub mod raw;
pub mod redis;
pub mod socketio;
pub mod wait;
pub mod ws;

pub use certs::{Certs, ClientCert, TestCa};
pub use http::{client, client_from, get, get_with, metric, send, tls_client, Alpn, Reply};
pub use procs::{
    bin_path, free_port, init, port_array, ports, target_dir, Backend, Exited, Proxy, ProxyCmd,
};
pub use wait::{wait_for, wait_until};
pub use ws::{
    ws_close, ws_connect, ws_connect_from, ws_connect_tls, ws_echo, ws_echo_binary,
    ws_expect_closed, ws_open, ws_read_hello, ws_recv, Ws, WsOptions,
};

/// Default bound for a single network step (connect, one request, one message).
pub const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

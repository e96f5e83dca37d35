//! Switchyard's edge proxy: a pingora-based reverse proxy and load balancer for HTTP and
//! WebSocket backends.
//!
//! # Layout
//! - [`config`]: the TOML configuration, its validation and the quick (flags-only) mode.
//! - [`upstream`]: upstream groups and the live state of each backend (counters, health,
//!   draining), kept across reloads.
//! - [`balance`]: the balancing strategies, one module each, behind [`balance::Strategy`].
//! - [`health`]: active health checks (passive ones live with the backend state).
//! - [`tunnel`]: the WebSocket upgrade handshake and a byte relay that holds no buffer while
//!   idle.
//! - [`proxy`]: the pingora `ProxyHttp` implementation tying it together.
//! - [`limits`]: per-client-IP concurrency and rate limits.
//! - [`admin`]: metrics, status and the token-protected admin API.
//! - [`tls`]: certificate loading, SNI selection and the dev CA generator.
//! - [`state`]: the swappable runtime built from a config, and reload.
//! - [`server`]: assembles the pingora server and its services.

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod config;
pub mod health;
pub mod limits;
pub mod proxy;
pub mod server;
pub mod state;
pub mod tls;
pub mod tunnel;
pub mod upstream;

//! `switchyard up`: the whole chat stack with one command — a development CA and localhost
//! certificate, Redis (given, private, or none), N chat nodes and the TLS proxy in front of
//! them, with prefixed logs and a clean stop on Ctrl-C.
//!
//! # One binary, several roles
//! `switchyard` links the `proxy` and `chat-node` libraries and starts *itself* in hidden roles
//! (`switchyard proxy --config …`, `switchyard node --listen …`) for its child processes.
//! So `cargo run --release --bin switchyard -- up` builds everything it runs, and a stale
//! `proxy` or `chat-node` binary lying in `target/` can never be picked up by mistake. The
//! children are still separate processes (as in a real deployment: a node that crashes does
//! not take the proxy down, each has its own signals and logs). Without Redis, the nodes run
//! inside the `switchyard` process instead, sharing one in-memory bus, session directory and
//! chat store.
//!
//! # Layout
//! - [`cli`]: the command line (`up` and its flags, the hidden roles).
//! - [`console`]: what the user sees: `[name] line` output that never panics on a closed stdout.
//! - [`certs`]: the dev CA and localhost certificate (the proxy's `gen-cert`), and how to trust it.
//! - [`ports`]: friendly refusals when an address is taken, free ports for a private Redis.
//! - [`children`]: child processes that die with `switchyard`, with prefixed logs, stopped
//!   with SIGTERM and then SIGKILL after a bounded grace.
//! - [`redis`]: choosing Redis (`--redis`, a private `redis-server`, or the embedded default).
//! - [`proxy_config`]: the proxy's TOML for the stack.
//! - [`nodes`]: serving one chat node (the `node` role) and the embedded in-process nodes.
//! - [`ready`]: bounded waits until the proxy serves the nodes over TLS.
//! - [`signals`]: SIGINT and SIGTERM.
//! - [`up`]: putting it together: start, report, supervise, stop.

pub mod certs;
pub mod children;
pub mod cli;
pub mod console;
pub mod nodes;
pub mod ports;
pub mod proxy_config;
pub mod ready;
pub mod redis;
pub mod signals;
pub mod up;

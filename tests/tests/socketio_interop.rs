//! Interop with the official `socket.io-client` (Node, pinned by `tests/node/package-lock.json`):
//! `tests/node/interop.test.mjs` runs against the chat-node `conformance --suite socket.io`
//! server, directly and through the proxy (quick mode, round_robin, that server as its one
//! backend — so the polling requests, the WebSocket upgrade and the WebSocket itself all cross
//! the proxy).
//!
//! Needs `node` (`scripts/install-deps.sh` installs it, with npm, when missing); without
//! it the tests fail. `node_modules` comes from `scripts/install-deps.sh`, or from `npm ci`
//! here when it is missing. Build the binaries first:
//! `cargo build --workspace --bins && cargo test -p tests --test socketio_interop`.

use std::time::Duration;

use tests::socketio::{self, Conformance};
use tests::{free_port, Proxy};

/// Bound for one run of the Node suite (it takes about 10 s alone; the machine is shared).
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);
const SUITE: &str = "interop.test.mjs";

#[test]
fn official_client_against_the_conformance_server() {
    socketio::require_node();
    let server = Conformance::start("socket.io");
    socketio::run_node_suite(SUITE, &server.url(), SUITE_TIMEOUT)
        .assert_passed(&format!("direct, {}", server.url()));
}

#[test]
fn official_client_through_a_round_robin_proxy() {
    socketio::require_node();
    let server = Conformance::start("socket.io");
    let listen = format!("127.0.0.1:{}", free_port());
    let backend = server.addr().to_string();
    let proxy = Proxy::start_quick(&[
        "--listen",
        &listen,
        "--strategy",
        "round_robin",
        "--backend",
        &backend,
    ]);
    let run = socketio::run_node_suite(SUITE, &proxy.url(""), SUITE_TIMEOUT);
    if !run.success() {
        eprintln!("{}", proxy.logs());
    }
    run.assert_passed(&format!("through the proxy, {}", proxy.url("")));
}

//! The servers that the official protocol test suites run against (their READMEs give
//! the reference configuration): used by the `conformance` binary and by the tests.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use serde_json::{Map, Value};

use crate::engineio::echo::Echo;
use crate::engineio::{Cors, EngineConfig, EngineIo};
use crate::socketio::{AckSender, ConnectError, Data, SocketIo, SocketIoConfig, SocketRef};

/// Which official suite to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// `socketio/engine.io-protocol`: an echo server on `/engine.io/`.
    #[value(name = "engine.io")]
    EngineIo,
    /// `socketio/socket.io-protocol`: a Socket.IO server on `/socket.io/`.
    #[value(name = "socket.io")]
    SocketIo,
}

/// The Engine.IO settings both suites expect, on `path`.
pub fn engine_config(path: &str) -> EngineConfig {
    EngineConfig {
        path: path.to_owned(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        cors: Cors::AnyOrigin,
        node_id: "conformance".to_owned(),
        ..EngineConfig::default()
    }
}

/// The engine.io suite's server: every message, text or binary, is sent back.
pub fn engine_io_server() -> anyhow::Result<EngineIo> {
    Ok(EngineIo::new(engine_config("/engine.io/"), Echo)?)
}

/// The socket.io suite's Socket.IO server: on `/`, emit `auth` with the CONNECT payload,
/// answer `message` with `message-back` and `message-with-ack` with an ack, both with the
/// same arguments; on `/custom`, emit `auth` only.
pub fn socket_io() -> SocketIo {
    let io = SocketIo::new(SocketIoConfig {
        connect_timeout: Duration::from_millis(1000),
        ..SocketIoConfig::default()
    });
    // Both names are valid namespaces: registering cannot fail.
    let _ = io.ns(
        "/",
        |socket: SocketRef, auth: Option<Map<String, Value>>| async move {
            emit_auth(&socket, auth);
            socket.on(
                "message",
                |socket: SocketRef, args: Vec<Data>, _: Option<AckSender>| async move {
                    let _ = socket.emit("message-back", args);
                },
            );
            socket.on(
                "message-with-ack",
                |_: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                    if let Some(ack) = ack {
                        let _ = ack.send(args);
                    }
                },
            );
            Ok::<(), ConnectError>(())
        },
    );
    let _ = io.ns(
        "/custom",
        |socket: SocketRef, auth: Option<Map<String, Value>>| async move {
            emit_auth(&socket, auth);
            Ok::<(), ConnectError>(())
        },
    );
    io
}

/// `socket.emit("auth", socket.handshake.auth)`: `{}` when the CONNECT had no payload.
fn emit_auth(socket: &SocketRef, auth: Option<Map<String, Value>>) {
    let auth = Data::from(Value::Object(auth.unwrap_or_default()));
    let _ = socket.emit("auth", vec![auth]);
}

/// The socket.io suite's server: [`socket_io`] on `/socket.io/`.
pub fn socket_io_server() -> anyhow::Result<EngineIo> {
    Ok(EngineIo::new(engine_config("/socket.io/"), socket_io())?)
}

/// Serves `suite`'s server on `listener` until `shutdown` completes.
pub async fn serve<F>(suite: Suite, listener: TcpListener, shutdown: F) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let engine = match suite {
        Suite::EngineIo => engine_io_server()?,
        Suite::SocketIo => socket_io_server()?,
    };
    engine.serve(listener, shutdown).await?;
    Ok(())
}

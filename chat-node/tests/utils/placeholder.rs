//! A minimal test application on namespace `/` (the placeholder app nodes served before the
//! chat): the transport and cluster tests use it to watch broadcasts, rooms and binary
//! attachments cross nodes without the chat's identity and membership rules. Installing it
//! replaces the chat on that node's `/`.
//!
//! - on connect: emit `welcome` `{node, sid}`;
//! - `join` `{room}`: join the room; ack `{ok:true}`;
//! - `leave` `{room}`: leave it; ack `{ok:true}`;
//! - `broadcast` `{room, payload}`: emit `message` `{room, from, payload}` to the room's
//!   members on every node, except the sender; ack `{ok:true}`.
//!
//! A malformed request is answered with the ack `{ok:false, error}`.

use chat_node::node::Node;
use chat_node::socketio::{AckSender, ConnectError, Data, Object, SocketRef};
use serde_json::{json, Map, Value};

/// Why a request failed; sent back as `{ok:false, error}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AppError {
    /// The first argument is not an object with a string `room`.
    #[error("expected {{room: string}}")]
    MissingRoom,
    /// The adapter failed (the bus is unreachable).
    #[error("{0}")]
    Adapter(String),
}

/// Replaces the chat on `/` of `node` with the test application; returns the node.
pub fn install(node: Node) -> Node {
    let name = node.config().node_id.clone();
    let registered = node.io().ns(
        "/",
        move |socket: SocketRef, _auth: Option<Map<String, Value>>| {
            let node = name.clone();
            async move {
                let welcome = json!({"node": node, "sid": socket.id().as_str()});
                let _ = socket.emit("welcome", vec![welcome.into()]);
                socket.on(
                    "join",
                    |s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                        let result = match room(&args) {
                            Ok(room) => s
                                .join(room)
                                .await
                                .map_err(|e| AppError::Adapter(e.to_string())),
                            Err(error) => Err(error),
                        };
                        reply(ack, result);
                    },
                );
                socket.on(
                    "leave",
                    |s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                        let result = match room(&args) {
                            Ok(room) => s
                                .leave(room)
                                .await
                                .map_err(|e| AppError::Adapter(e.to_string())),
                            Err(error) => Err(error),
                        };
                        reply(ack, result);
                    },
                );
                socket.on(
                    "broadcast",
                    |s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                        let result = match room(&args) {
                            Ok(room) => {
                                let payload = object(&args)
                                    .and_then(|o| o.get("payload"))
                                    .cloned()
                                    .unwrap_or_default();
                                let mut message = Object::new();
                                message.insert("room".to_owned(), room.clone().into());
                                message.insert("from".to_owned(), s.id().as_str().into());
                                message.insert("payload".to_owned(), payload);
                                s.to(room)
                                    .emit("message", vec![Data::Object(message)])
                                    .await
                                    .map_err(|e| AppError::Adapter(e.to_string()))
                            }
                            Err(error) => Err(error),
                        };
                        reply(ack, result);
                    },
                );
                Ok::<(), ConnectError>(())
            }
        },
    );
    registered.expect("/ is a valid namespace");
    node
}

fn object(args: &[Data]) -> Option<&Object> {
    match args.first() {
        Some(Data::Object(object)) => Some(object),
        _ => None,
    }
}

fn room(args: &[Data]) -> Result<String, AppError> {
    object(args)
        .and_then(|o| o.get("room"))
        .and_then(Data::as_str)
        .map(str::to_owned)
        .ok_or(AppError::MissingRoom)
}

/// Answers the ack, if the client asked for one: `{ok:true}` or `{ok:false, error}`.
fn reply(ack: Option<AckSender>, result: Result<(), AppError>) {
    let Some(ack) = ack else { return };
    let answer = match result {
        Ok(()) => json!({"ok": true}),
        Err(error) => json!({"ok": false, "error": error.to_string()}),
    };
    let _ = ack.send(vec![answer.into()]);
}

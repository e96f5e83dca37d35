//! The Socket.IO server end to end over raw Engine.IO clients: connect and CONNECT_ERROR,
//! events and acks both ways, binary, namespaces, rooms and broadcasts, disconnects,
//! `connect_timeout`, protocol errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::time::{Duration, Instant};

use chat_node::engineio::EngineIo;
use chat_node::socketio::{
    AckError, AckSender, ConnectError, Data, EmitError, SocketIo, SocketIoConfig, SocketRef,
};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use utils::{quiet_config, Polling, TestServer, Ws, STEP};

/// How long the server waits for a client's ack in the test application.
const ACK_TIMEOUT: Duration = Duration::from_millis(300);

/// The test application: the conformance server's behaviour plus rooms, broadcasts,
/// server-to-client acks and disconnects. Disconnects are reported on the channel.
fn app(config: SocketIoConfig) -> (SocketIo, mpsc::UnboundedReceiver<String>) {
    let io = SocketIo::new(config);
    let (reports, rx) = mpsc::unbounded_channel();
    io.ns(
        "/",
        move |socket: SocketRef, auth: Option<Map<String, Value>>| {
            let reports = reports.clone();
            async move {
                let auth = Value::Object(auth.unwrap_or_default());
                socket.emit("auth", vec![auth.into()]).unwrap();
                socket.on(
                    "message",
                    |s: SocketRef, args: Vec<Data>, _: Option<AckSender>| async move {
                        let _ = s.emit("message-back", args);
                    },
                );
                socket.on(
                    "message-with-ack",
                    |_: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                        if let Some(ack) = ack {
                            ack.send(args).unwrap();
                        }
                    },
                );
                socket.on(
                    "join",
                    |s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                        let room = args[0].as_str().unwrap().to_owned();
                        s.join(room).await.unwrap();
                        if let Some(ack) = ack {
                            ack.send(vec!["joined".into()]).unwrap();
                        }
                    },
                );
                socket.on(
                    "leave",
                    |s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                        s.leave(args[0].as_str().unwrap()).await.unwrap();
                        if let Some(ack) = ack {
                            ack.send(vec!["left".into()]).unwrap();
                        }
                    },
                );
                socket.on(
                    "say",
                    |s: SocketRef, args: Vec<Data>, _: Option<AckSender>| async move {
                        let room = args[0].as_str().unwrap().to_owned();
                        s.to(room).emit("said", args[1..].to_vec()).await.unwrap();
                    },
                );
                socket.on(
                    "shout",
                    |s: SocketRef, args: Vec<Data>, _: Option<AckSender>| async move {
                        s.broadcast().emit("shouted", args).await.unwrap();
                    },
                );
                socket.on(
                    "ask",
                    |s: SocketRef, args: Vec<Data>, _: Option<AckSender>| async move {
                        match s.emit_with_ack("question", args, ACK_TIMEOUT).await {
                            Ok(answer) => s.emit("answer", answer).unwrap(),
                            Err(AckError::Timeout(_)) => s.emit("no-answer", vec![]).unwrap(),
                            Err(error) => panic!("{error}"),
                        }
                    },
                );
                socket.on(
                    "kick-me",
                    |s: SocketRef, _: Vec<Data>, _: Option<AckSender>| async move {
                        s.disconnect();
                    },
                );
                socket.on_disconnect(move |s, reason| {
                    let _ = reports.send(format!("{} {reason}", s.namespace()));
                });
                Ok(())
            }
        },
    )
    .unwrap();
    io.ns(
        "/private",
        |_: SocketRef, auth: Option<Map<String, Value>>| async move {
            let token = auth
                .as_ref()
                .and_then(|a| a.get("token"))
                .and_then(Value::as_str);
            if token == Some("secret") {
                Ok(())
            } else {
                Err(ConnectError::new("unauthorized").with_data(json!({"reason": "bad token"})))
            }
        },
    )
    .unwrap();
    io.ns(
        "/custom",
        |socket: SocketRef, auth: Option<Map<String, Value>>| async move {
            let auth = Value::Object(auth.unwrap_or_default());
            socket.emit("auth", vec![auth.into()]).unwrap();
            Ok::<(), ConnectError>(())
        },
    )
    .unwrap();
    (io, rx)
}

async fn start(config: SocketIoConfig) -> (TestServer, SocketIo, mpsc::UnboundedReceiver<String>) {
    let (io, reports) = app(config);
    let engine = EngineIo::new(quiet_config("/socket.io/"), io.clone()).unwrap();
    (TestServer::start(engine).await, io, reports)
}

async fn server() -> (TestServer, SocketIo, mpsc::UnboundedReceiver<String>) {
    start(SocketIoConfig::default()).await
}

/// A WebSocket client connected to `/`, past its CONNECT reply and "auth" event.
async fn connected(server: &TestServer) -> Ws {
    let (mut ws, _) = Ws::open(server).await;
    ws.send_text("40").await;
    assert!(ws.recv_text().await.starts_with("40{"));
    assert_eq!(ws.recv_text().await, r#"42["auth",{}]"#);
    ws
}

/// The JSON of a packet after its prefix.
fn json_after(packet: &str, prefix: &str) -> Value {
    let rest = packet
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{packet:?} does not start with {prefix:?}"));
    serde_json::from_str(rest).unwrap()
}

async fn next_report(reports: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(STEP, reports.recv())
        .await
        .expect("no report in time")
        .unwrap()
}

#[tokio::test]
async fn connect_to_the_main_namespace_over_websocket() {
    let (server, _io, _) = server().await;
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text(r#"40{"token":"123"}"#).await;
    let reply = json_after(&ws.recv_text().await, "40");
    let keys: Vec<&String> = reply.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sid"]);
    assert_eq!(reply["sid"].as_str().unwrap().len(), 20);
    assert_eq!(ws.recv_text().await, r#"42["auth",{"token":"123"}]"#);
}

#[tokio::test]
async fn connect_and_talk_over_polling() {
    let (server, _io, _) = server().await;
    let session = Polling::open(&server).await;
    session.send(r#"40{"token":"abc"}"#).await;
    let body = session.poll().await;
    let packets: Vec<&str> = body.split('\x1e').collect();
    assert_eq!(packets.len(), 2, "{body}");
    json_after(packets[0], "40");
    assert_eq!(packets[1], r#"42["auth",{"token":"abc"}]"#);

    session
        .send("42[\"message\",1]\x1e4212[\"message-with-ack\",\"x\"]")
        .await;
    let mut received = Vec::new();
    while received.len() < 2 {
        received.extend(session.poll().await.split('\x1e').map(str::to_owned));
    }
    assert_eq!(received, [r#"42["message-back",1]"#, r#"4312["x"]"#]);
}

#[tokio::test]
async fn the_connect_hook_can_refuse_with_connect_error() {
    let (server, _io, _) = server().await;
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text(r#"40/private,{"token":"nope"}"#).await;
    let error = json_after(&ws.recv_text().await, "44/private,");
    assert_eq!(
        error,
        json!({"message": "unauthorized", "data": {"reason": "bad token"}})
    );
    // The connection stays; a second try may succeed.
    ws.send_text(r#"40/private,{"token":"secret"}"#).await;
    let reply = json_after(&ws.recv_text().await, "40/private,");
    assert!(reply["sid"].is_string());
}

#[tokio::test]
async fn an_unknown_namespace_is_refused() {
    let (server, _io, _) = server().await;
    let (mut ws, _) = Ws::open(&server).await;
    ws.send_text("40/random").await;
    assert_eq!(
        ws.recv_text().await,
        r#"44/random,{"message":"Invalid namespace"}"#
    );
}

#[tokio::test]
async fn events_and_acks_from_the_client() {
    let (server, _io, _) = server().await;
    let mut ws = connected(&server).await;
    ws.send_text(r#"42["message",1,"2",{"3":[true]},1.5e300]"#)
        .await;
    assert_eq!(
        ws.recv_text().await,
        r#"42["message-back",1,"2",{"3":[true]},1.5e+300]"#
    );
    ws.send_text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#)
        .await;
    assert_eq!(ws.recv_text().await, r#"43456[1,"2",{"3":[false]}]"#);
    // An event nobody handles is ignored.
    ws.send_text(r#"42["nobody-listens"]"#).await;
    ws.send_text(r#"42["message","after"]"#).await;
    assert_eq!(ws.recv_text().await, r#"42["message-back","after"]"#);
}

#[tokio::test]
async fn binary_events_and_acks() {
    let (server, _io, _) = server().await;
    let mut ws = connected(&server).await;
    ws.send_text(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        .await;
    ws.send_binary(&[1, 2, 3]).await;
    ws.send_binary(&[4, 5, 6]).await;
    assert_eq!(
        ws.recv_text().await,
        r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
    );
    assert_eq!(ws.recv_binary().await, [1, 2, 3]);
    assert_eq!(ws.recv_binary().await, [4, 5, 6]);

    ws.send_text(r#"451-789["message-with-ack",{"_placeholder":true,"num":0}]"#)
        .await;
    ws.send_binary(&[7]).await;
    assert_eq!(
        ws.recv_text().await,
        r#"461-789[{"_placeholder":true,"num":0}]"#
    );
    assert_eq!(ws.recv_binary().await, [7]);
}

#[tokio::test]
async fn acks_from_the_server_and_their_timeout() {
    let (server, _io, _) = server().await;
    let mut ws = connected(&server).await;
    ws.send_text(r#"42["ask","why?"]"#).await;
    assert_eq!(ws.recv_text().await, r#"420["question","why?"]"#);
    ws.send_text(r#"430["because",{"a":1}]"#).await;
    assert_eq!(ws.recv_text().await, r#"42["answer","because",{"a":1}]"#);

    ws.send_text(r#"42["ask","again?"]"#).await;
    assert_eq!(ws.recv_text().await, r#"421["question","again?"]"#);
    let asked = Instant::now();
    assert_eq!(ws.recv_text().await, r#"42["no-answer"]"#);
    assert!(asked.elapsed() >= ACK_TIMEOUT - Duration::from_millis(50));
    // A late or unknown ack is ignored.
    ws.send_text(r#"431["too late"]"#).await;
    ws.send_text(r#"42["message","still here"]"#).await;
    assert_eq!(ws.recv_text().await, r#"42["message-back","still here"]"#);
}

#[tokio::test]
async fn a_custom_namespace_on_the_same_connection() {
    let (server, _io, _) = server().await;
    let mut ws = connected(&server).await;
    ws.send_text(r#"40/custom,{"token":"abc"}"#).await;
    json_after(&ws.recv_text().await, "40/custom,");
    assert_eq!(
        ws.recv_text().await,
        r#"42/custom,["auth",{"token":"abc"}]"#
    );
    ws.send_text("41/custom,").await;
    ws.send_text(r#"42["message","main"]"#).await;
    assert_eq!(ws.recv_text().await, r#"42["message-back","main"]"#);
}

#[tokio::test]
async fn room_broadcasts_reach_members_except_the_sender() {
    let (server, io, _) = server().await;
    let mut a = connected(&server).await;
    let mut b = connected(&server).await;
    let mut c = connected(&server).await;
    let polling = Polling::open(&server).await;
    polling.send("40").await;
    let body = polling.poll().await;
    assert!(body.ends_with(r#"42["auth",{}]"#), "{body}");

    for ws in [&mut a, &mut b] {
        ws.send_text(r#"421["join","red"]"#).await;
        assert_eq!(ws.recv_text().await, r#"431["joined"]"#);
    }
    polling.send(r#"421["join","red"]"#).await;
    assert_eq!(polling.poll().await, r#"431["joined"]"#);

    a.send_text(r#"42["say","red","hi"]"#).await;
    assert_eq!(b.recv_text().await, r#"42["said","hi"]"#);
    assert_eq!(polling.poll().await, r#"42["said","hi"]"#);
    // Neither the sender nor a socket outside the room got it: their next packet is the
    // answer to a later message.
    for ws in [&mut a, &mut c] {
        ws.send_text(r#"42["message","sync"]"#).await;
        assert_eq!(ws.recv_text().await, r#"42["message-back","sync"]"#);
    }

    // To everybody but the sender.
    c.send_text(r#"42["shout","hey"]"#).await;
    assert_eq!(a.recv_text().await, r#"42["shouted","hey"]"#);
    assert_eq!(b.recv_text().await, r#"42["shouted","hey"]"#);
    assert_eq!(polling.poll().await, r#"42["shouted","hey"]"#);

    // After leaving, b is out of the room.
    b.send_text(r#"422["leave","red"]"#).await;
    assert_eq!(b.recv_text().await, r#"432["left"]"#);
    a.send_text(r#"42["say","red","bye"]"#).await;
    assert_eq!(polling.poll().await, r#"42["said","bye"]"#);
    b.send_text(r#"42["message","sync"]"#).await;
    assert_eq!(b.recv_text().await, r#"42["message-back","sync"]"#);

    // From the server, to a room, with binary.
    let nsp = io.of("/").unwrap();
    nsp.to("red")
        .emit("news", vec![Data::from(vec![9u8])])
        .await
        .unwrap();
    assert_eq!(
        a.recv_text().await,
        r#"451-["news",{"_placeholder":true,"num":0}]"#
    );
    assert_eq!(a.recv_binary().await, [9]);
    assert_eq!(
        polling.poll().await,
        "451-[\"news\",{\"_placeholder\":true,\"num\":0}]\x1ebCQ=="
    );
    assert_eq!(
        nsp.emit("connect", vec![]).await,
        Err(EmitError::ReservedEvent("connect".into()))
    );
    assert_eq!(nsp.sockets().len(), 4);
}

#[tokio::test]
async fn disconnects_from_either_side() {
    let (server, _io, mut reports) = server().await;
    let mut ws = connected(&server).await;
    ws.send_text(r#"42["kick-me"]"#).await;
    assert_eq!(ws.recv_text().await, "41");
    assert_eq!(
        next_report(&mut reports).await,
        "/ server namespace disconnect"
    );
    // The connection stays open: the client can join again.
    ws.send_text("40").await;
    json_after(&ws.recv_text().await, "40");
    assert_eq!(ws.recv_text().await, r#"42["auth",{}]"#);

    ws.send_text("41").await;
    assert_eq!(
        next_report(&mut reports).await,
        "/ client namespace disconnect"
    );

    let ws = connected(&server).await;
    drop(ws);
    assert_eq!(next_report(&mut reports).await, "/ transport close");
}

#[tokio::test]
async fn a_connection_that_joins_nothing_is_closed() {
    let (server, _io, _) = start(SocketIoConfig {
        connect_timeout: Duration::from_millis(300),
        ..SocketIoConfig::default()
    })
    .await;
    let started = Instant::now();
    let (mut ws, _) = Ws::open(&server).await;
    ws.expect_close().await;
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Joining in time disarms it.
    let mut ws = connected(&server).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    ws.send_text(r#"42["message","alive"]"#).await;
    assert_eq!(ws.recv_text().await, r#"42["message-back","alive"]"#);
}

#[tokio::test]
async fn protocol_errors_close_the_connection() {
    let (server, _io, _) = server().await;
    for bad in [
        "4abc",
        "42{}",
        r#"42abc["message-with-ack",1]"#,
        r#"43["no id"]"#,
        r#"42["connect"]"#,
        r#"42/custom,["not joined"]"#,
        "40",
        r#"44{"message":"from the client"}"#,
        // More attachments than a packet may announce.
        r#"4511-["message"]"#,
    ] {
        let mut ws = connected(&server).await;
        ws.send_text(bad).await;
        // The close frame says why (the official client reports it as a transport close).
        assert_eq!(
            ws.expect_close_frame().await,
            (1002, "parse error".into()),
            "{bad}"
        );
    }
    // Binary where text is expected, and text where an attachment is expected.
    let mut ws = connected(&server).await;
    ws.send_binary(&[1]).await;
    ws.expect_close().await;
    let mut ws = connected(&server).await;
    ws.send_text(r#"451-["message",{"_placeholder":true,"num":0}]"#)
        .await;
    ws.send_text(r#"42["message"]"#).await;
    ws.expect_close().await;
}

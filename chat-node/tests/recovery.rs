//! Connection-state recovery across nodes: a client whose connection dies reconnects to
//! another node with `{pid, offset}` and gets its socket id, its rooms and every broadcast
//! it missed, replayed before the CONNECT reply; with no offset, what followed its
//! connection; not after leaving on purpose, not twice, not with a forged pid. On the
//! in-process bus and on a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod utils;

use std::sync::Arc;
use std::time::Duration;

use chat_node::bus::{Bus, MemoryBus};
use chat_node::node::{Node, NodeConfig};
use chat_node::socketio::{AckSender, Data, SocketRef};
use serde_json::{json, Map, Value};
use utils::redis::RedisServer;
use utils::{TestServer, Ws};

fn config(node_id: &str, redis: Option<&RedisServer>) -> NodeConfig {
    NodeConfig {
        node_id: node_id.to_owned(),
        redis_url: redis.map(RedisServer::url),
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        recovery_window: Duration::from_secs(30),
        ..NodeConfig::default()
    }
}

/// Namespace `/t`: `join {room}` joins a room; `shout {room, text}` broadcasts `msg text`
/// to the room (sender included); on connect the server emits `hello recovered`.
fn register(node: &Node) {
    let io = node.io().clone();
    node.io()
        .ns(
            "/t",
            move |socket: SocketRef, _auth: Option<Map<String, Value>>| {
                let io = io.clone();
                async move {
                    socket.on(
                        "join",
                        |s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| async move {
                            let room = arg(&args, "room");
                            s.join(room).await.unwrap();
                            if let Some(ack) = ack {
                                let _ = ack.send(vec![json!("ok").into()]);
                            }
                        },
                    );
                    socket.on(
                        "shout",
                        move |_s: SocketRef, args: Vec<Data>, ack: Option<AckSender>| {
                            let io = io.clone();
                            async move {
                                let nsp = io.of("/t").unwrap();
                                let text = arg(&args, "text");
                                nsp.to(arg(&args, "room"))
                                    .emit("msg", vec![text.into()])
                                    .await
                                    .unwrap();
                                if let Some(ack) = ack {
                                    let _ = ack.send(vec![json!("ok").into()]);
                                }
                            }
                        },
                    );
                    let _ = socket.emit("hello", vec![Value::Bool(socket.recovered()).into()]);
                    Ok(())
                }
            },
        )
        .unwrap();
}

fn arg(args: &[Data], key: &str) -> String {
    match args.first() {
        Some(Data::Object(o)) => o.get(key).and_then(Data::as_str).unwrap().to_owned(),
        other => panic!("expected an object, got {other:?}"),
    }
}

async fn start(node: Node) -> TestServer {
    register(&node);
    TestServer::start_node(node).await
}

/// A client of `/t`: what came before the CONNECT reply, the reply, and `hello`'s value.
struct Client {
    ws: Ws,
    before: Vec<String>,
    sid: String,
    pid: String,
    recovered: bool,
}

async fn connect(server: &TestServer, auth: Value) -> Client {
    let (mut ws, _) = Ws::open(server).await;
    ws.send_text(&format!("40/t,{auth}")).await;
    let mut before = Vec::new();
    let reply = loop {
        let text = ws.recv_text().await;
        match text.strip_prefix("40/t,") {
            Some(reply) => break serde_json::from_str::<Value>(reply).unwrap(),
            None => before.push(text),
        }
    };
    let hello = ws.recv_text().await;
    let recovered = match hello.as_str() {
        r#"42/t,["hello",true]"# => true,
        r#"42/t,["hello",false]"# => false,
        other => panic!("expected hello, got {other}"),
    };
    Client {
        ws,
        before,
        sid: reply["sid"].as_str().unwrap().to_owned(),
        pid: reply["pid"].as_str().unwrap().to_owned(),
        recovered,
    }
}

impl Client {
    async fn call(&mut self, id: u32, event: &str, arg: Value) {
        self.ws
            .send_text(&format!("42/t,{id}{}", json!([event, arg])))
            .await;
        loop {
            let text = self.ws.recv_text().await;
            if text == format!("43/t,{id}[\"ok\"]") {
                return;
            }
            // Broadcasts may arrive before the ack; the tests read them with `msg`.
            self.before.push(text);
        }
    }

    /// The next `msg` event: its text and offset.
    async fn msg(&mut self) -> (String, String) {
        let text = if self.before.is_empty() {
            self.ws.recv_text().await
        } else {
            self.before.remove(0)
        };
        parse_msg(&text)
    }
}

fn parse_msg(text: &str) -> (String, String) {
    let json = text
        .strip_prefix("42/t,")
        .unwrap_or_else(|| panic!("not an event: {text}"));
    let args: Vec<String> = serde_json::from_str(json).unwrap();
    match args.as_slice() {
        [name, text, offset] if name == "msg" => (text.clone(), offset.clone()),
        _ => panic!("expected msg with an offset, got {text}"),
    }
}

/// Two nodes on one bus; `c1` on the first and `c2` on the second, both in room `r`.
async fn recovery_across_nodes(a: &TestServer, b: &TestServer) {
    let mut c1 = connect(a, json!({})).await;
    assert!(!c1.recovered);
    assert_eq!(c1.pid.len(), 32, "a 128-bit pid: {}", c1.pid);
    c1.call(1, "join", json!({"room": "r"})).await;
    let mut c2 = connect(b, json!({})).await;
    c2.call(1, "join", json!({"room": "r"})).await;

    c2.call(2, "shout", json!({"room": "r", "text": "one"}))
        .await;
    let (text, offset) = c1.msg().await;
    assert_eq!(text, "one");

    // c1's connection dies; the others go on talking.
    drop(c1.ws);
    for (id, text) in [(3, "two"), (4, "three")] {
        c2.call(id, "shout", json!({"room": "r", "text": text}))
            .await;
    }

    // c1 comes back on the other node: same socket, same room, the missed messages first.
    let mut back = connect(b, json!({"pid": c1.pid, "offset": offset})).await;
    assert!(back.recovered);
    assert_eq!(back.sid, c1.sid);
    assert_eq!(back.pid, c1.pid);
    let replayed: Vec<String> = back.before.iter().map(|t| parse_msg(t).0).collect();
    assert_eq!(replayed, ["two", "three"]);
    let offsets: Vec<String> = back.before.drain(..).map(|t| parse_msg(&t).1).collect();
    assert_ne!(offsets[0], offsets[1]);
    // Its room came back with it.
    c2.call(5, "shout", json!({"room": "r", "text": "four"}))
        .await;
    assert_eq!(back.msg().await.0, "four");

    // While its socket is connected on a node, that node does not hand the same state to
    // a second connection.
    let again = connect(b, json!({"pid": c1.pid, "offset": offset})).await;
    assert!(!again.recovered);
    assert_ne!(again.sid, c1.sid);
}

#[tokio::test]
async fn a_client_recovers_on_another_node_of_the_in_process_bus() {
    let bus = Arc::new(MemoryBus::new());
    let a = start(Node::with_bus(config("a", None), bus.clone()).unwrap()).await;
    let b = start(Node::with_bus(config("b", None), bus).unwrap()).await;
    recovery_across_nodes(&a, &b).await;
}

#[tokio::test]
async fn a_client_recovers_on_another_node_through_redis() {
    let redis = RedisServer::start();
    let a = start(Node::new(config("a", Some(&redis))).await.unwrap()).await;
    let b = start(Node::new(config("b", Some(&redis))).await.unwrap()).await;
    recovery_across_nodes(&a, &b).await;
}

#[tokio::test]
async fn a_client_that_saw_no_offset_gets_what_followed_its_connection() {
    let redis = RedisServer::start();
    let a = start(Node::new(config("a", Some(&redis))).await.unwrap()).await;
    let b = start(Node::new(config("b", Some(&redis))).await.unwrap()).await;
    let mut c1 = connect(&a, json!({})).await;
    c1.call(1, "join", json!({"room": "quiet"})).await;
    let mut c2 = connect(&b, json!({})).await;
    // Before c1 connected's log position moves on: c1 must not get this one.
    c2.call(
        1,
        "shout",
        json!({"room": "elsewhere", "text": "not for c1"}),
    )
    .await;
    drop(c1.ws);
    c2.call(2, "shout", json!({"room": "quiet", "text": "missed"}))
        .await;
    let back = connect(&b, json!({"pid": c1.pid})).await;
    assert!(back.recovered);
    let replayed: Vec<String> = back.before.iter().map(|t| parse_msg(t).0).collect();
    assert_eq!(replayed, ["missed"]);
}

#[tokio::test]
async fn a_node_that_stops_leaves_its_clients_recoverable_elsewhere() {
    let redis = RedisServer::start();
    let a = start(Node::new(config("a", Some(&redis))).await.unwrap()).await;
    let b = start(Node::new(config("b", Some(&redis))).await.unwrap()).await;
    let mut c1 = connect(&a, json!({})).await;
    c1.call(1, "join", json!({"room": "r"})).await;
    let mut c2 = connect(&b, json!({})).await;
    c2.call(1, "shout", json!({"room": "r", "text": "first"}))
        .await;
    let (_, offset) = c1.msg().await;
    a.stop().await;
    c1.ws.expect_close().await;
    c2.call(2, "shout", json!({"room": "r", "text": "while a was down"}))
        .await;
    let back = connect(&b, json!({"pid": c1.pid, "offset": offset})).await;
    assert!(back.recovered);
    assert_eq!(back.sid, c1.sid);
    let replayed: Vec<String> = back.before.iter().map(|t| parse_msg(t).0).collect();
    assert_eq!(replayed, ["while a was down"]);
}

#[tokio::test]
async fn forged_pids_stale_offsets_and_deliberate_leaves_do_not_recover() {
    let bus = Arc::new(MemoryBus::new());
    let a = start(Node::with_bus(config("a", None), bus.clone()).unwrap()).await;

    // A pid nobody was given.
    let forged = connect(
        &a,
        json!({"pid": "0123456789abcdef0123456789abcdef", "offset": "1-0"}),
    )
    .await;
    assert!(!forged.recovered);
    let garbage = connect(&a, json!({"pid": {"$gt": ""}, "offset": 7})).await;
    assert!(!garbage.recovered);

    // An offset that is not in the log: what was missed cannot be known.
    let c1 = connect(&a, json!({})).await;
    drop(c1.ws);
    let stale = connect(&a, json!({"pid": c1.pid, "offset": "1-0"})).await;
    assert!(!stale.recovered);
    assert_ne!(stale.sid, c1.sid);

    // Leaving the namespace on purpose ends the state.
    let mut c2 = connect(&a, json!({})).await;
    c2.ws.send_text("41/t,").await;
    let store = bus.session_store();
    let key_gone = async {
        loop {
            if store.take(&c2.pid).await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(utils::STEP, key_gone).await.unwrap();
    let after_leave = connect(&a, json!({"pid": c2.pid})).await;
    assert!(!after_leave.recovered);
}

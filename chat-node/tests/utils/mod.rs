//! Test fixtures: a server started in-process on 127.0.0.1:0, a raw polling client and a
//! raw WebSocket client. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod bus;
pub mod chat;
pub mod placeholder;
pub mod process;
pub mod redis;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use chat_node::engineio::{Cors, EngineConfig, EngineIo};
use chat_node::node::Node;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(5);

/// Settings with a heartbeat too slow to get in the way of tests about something else.
pub fn quiet_config(path: &str) -> EngineConfig {
    EngineConfig {
        path: path.to_owned(),
        ping_interval: Duration::from_secs(20),
        ping_timeout: Duration::from_secs(20),
        cors: Cors::AnyOrigin,
        node_id: "test-node".to_owned(),
        ..EngineConfig::default()
    }
}

/// Settings with the official suites' fast heartbeat (300 ms / 200 ms).
pub fn fast_config(path: &str) -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        ..quiet_config(path)
    }
}

/// A server running on its own port; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub path: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(engine: EngineIo) -> Self {
        let path = engine.config().path.clone();
        Self::spawn(path, move |listener, shutdown| {
            engine.serve(listener, shutdown)
        })
        .await
    }

    /// A whole chat node (engine path, `/healthz`, bounded shutdown).
    pub async fn start_node(node: Node) -> Self {
        let path = node.engine().config().path.clone();
        Self::spawn(path, move |listener, shutdown| {
            node.serve(listener, shutdown)
        })
        .await
    }

    async fn spawn<S, Fut>(path: String, serve: S) -> Self
    where
        S: FnOnce(TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async move {
                let _ = rx.await;
            }),
        ));
        Self {
            addr,
            path,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://addr<path>?EIO=4&<query>`.
    pub fn url(&self, query: &str) -> String {
        format!("http://{}{}?EIO=4&{query}", self.addr, self.path)
    }

    /// `ws://addr<path>?EIO=4&transport=websocket[&sid=..]`.
    pub fn ws_url(&self, sid: Option<&str>) -> String {
        let mut url = format!("ws://{}{}?EIO=4&transport=websocket", self.addr, self.path);
        if let Some(sid) = sid {
            url.push_str("&sid=");
            url.push_str(sid);
        }
        url
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STEP, task)
                .await
                .expect("server did not stop in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(STEP).build().unwrap()
}

pub async fn request(req: reqwest::RequestBuilder) -> Reply {
    let response = req.send().await.expect("request failed");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

/// A raw long-polling client of one session.
pub struct Polling {
    pub client: reqwest::Client,
    pub base: String,
    pub sid: String,
    pub open: serde_json::Value,
}

impl Polling {
    /// Opens a session (the handshake GET).
    pub async fn open(server: &TestServer) -> Self {
        let client = http();
        let base = server.url("transport=polling");
        let reply = request(client.get(&base)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let json = reply.body.strip_prefix('0').expect("an open packet");
        let open: serde_json::Value = serde_json::from_str(json).unwrap();
        let sid = open["sid"].as_str().unwrap().to_owned();
        Self {
            client,
            base,
            sid,
            open,
        }
    }

    pub fn url(&self) -> String {
        format!("{}&sid={}", self.base, self.sid)
    }

    pub async fn get(&self) -> Reply {
        request(self.client.get(self.url())).await
    }

    /// A GET that must succeed: its body.
    pub async fn poll(&self) -> String {
        let reply = self.get().await;
        assert_eq!(reply.status, 200, "poll failed: {}", reply.body);
        reply.body
    }

    /// A long poll that is (very likely) pending on the server when `packet` is posted;
    /// returns what the poll got. Either order gives the same answer, so the delay only
    /// makes the test exercise the pending path.
    pub async fn poll_while_sending(&self, packet: &str) -> String {
        let (reply, ()) = tokio::join!(self.poll(), async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.send(packet).await;
        });
        reply
    }

    pub async fn post(&self, body: impl Into<String>) -> Reply {
        request(self.client.post(self.url()).body(body.into())).await
    }

    /// A POST that must succeed.
    pub async fn send(&self, body: impl Into<String>) {
        let reply = self.post(body).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    }
}

/// What a WebSocket client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// A raw WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect timed out")
            .expect("websocket connect failed");
        Self { stream }
    }

    /// Connects and reads the Engine.IO handshake; returns it with the client.
    pub async fn open(server: &TestServer) -> (Self, serde_json::Value) {
        let mut ws = Self::connect(&server.ws_url(None)).await;
        let open = ws.recv_text().await;
        let json = open.strip_prefix('0').expect("an open packet");
        (ws, serde_json::from_str(json).unwrap())
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(WsMessage::Text(text.into()))
            .await
            .unwrap();
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.stream
            .send(WsMessage::Binary(data.to_vec().into()))
            .await
            .unwrap();
    }

    /// The next data frame, `None` when the connection closes.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            let next = tokio::time::timeout(STEP, self.stream.next())
                .await
                .expect("nothing received in time");
            match next {
                Some(Ok(WsMessage::Text(text))) => return Some(Frame::Text(text.to_string())),
                Some(Ok(WsMessage::Binary(data))) => return Some(Frame::Binary(data.to_vec())),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Some(Frame::Text(text)) => text,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Some(Frame::Binary(data)) => data,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Waits for the server's close frame and returns its code and reason; fails on any
    /// data frame, or when the connection ends without a close frame.
    pub async fn expect_close_frame(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(STEP, self.stream.next())
                .await
                .expect("nothing received in time");
            match next {
                Some(Ok(WsMessage::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string())
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!("expected a close frame with a code, got {other:?}"),
            }
        }
    }

    /// Sends a close frame with `code`, as a client ending the connection does.
    pub async fn send_close(&mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        self.stream
            .send(WsMessage::Close(Some(frame)))
            .await
            .unwrap();
    }

    /// Waits for the server to close the connection; fails on any data frame.
    pub async fn expect_close(&mut self) {
        if let Some(frame) = self.recv().await {
            panic!("expected the connection to close, got {frame:?}");
        }
    }
}

//! `bench backend`: the fast backend every scenario runs as a separate process (so it can be
//! killed and frozen). Each HTTP answer is `200` with the backend's id as the body (after
//! `--delay`); a WebSocket upgrade gets `hello <id>` and then an echo of every message;
//! `GET /healthz` answers `ok` without delay.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::cli::BackendArgs;

struct Backend {
    id: Bytes,
    delay: Duration,
}

/// Serves until killed. One thread: three of these share two cores with the proxy.
pub fn run(args: BackendArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: BackendArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("LISTENING {addr}");
    let backend = Arc::new(Backend {
        id: Bytes::from(args.id.into_bytes()),
        delay: args.delay,
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of descriptors or a reset during accept: keep serving the others.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(backend.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    backend: Arc<Backend>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
            return Ok(status(StatusCode::BAD_REQUEST));
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        let id = backend.id.clone();
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                echo(TokioIo::new(upgraded), id).await;
            }
        });
        let mut res = status(StatusCode::SWITCHING_PROTOCOLS);
        let h = res.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        return Ok(res);
    }
    if !backend.delay.is_zero() {
        tokio::time::sleep(backend.delay).await;
    }
    let mut res = Response::new(Full::new(backend.id.clone()));
    if let Ok(v) = HeaderValue::from_bytes(&backend.id) {
        res.headers_mut().insert("x-backend-id", v);
    }
    Ok(res)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = code;
    res
}

async fn echo<S>(io: S, id: Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let hello = format!("hello {}", String::from_utf8_lossy(&id));
    if ws.send(Message::text(hello)).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

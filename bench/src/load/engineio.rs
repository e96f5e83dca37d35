//! A Socket.IO client on Engine.IO v4 long-polling: handshake `GET`, connect packet `POST`,
//! then `GET` polls answered with pings that are answered with `POST` pongs — each request
//! a chance for a balancer to send it to a node that does not know the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::connect_from;

const TIMEOUT: Duration = Duration::from_secs(5);
const SEPARATOR: char = '\u{1e}';

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct PollStats {
    pub sessions: u64,
    /// Handshake and Socket.IO connect both succeeded.
    pub handshakes_ok: u64,
    /// Sessions that ran all their cycles without an error.
    pub sessions_ok: u64,
    pub requests: u64,
    /// `400` with `Session ID unknown`.
    pub unknown_sid: u64,
    pub other_errors: u64,
    /// Handshakes answered by each node (`x-served-by`).
    pub per_node: Vec<u64>,
}

impl PollStats {
    pub fn add(&mut self, o: &PollStats) {
        self.sessions += o.sessions;
        self.handshakes_ok += o.handshakes_ok;
        self.sessions_ok += o.sessions_ok;
        self.requests += o.requests;
        self.unknown_sid += o.unknown_sid;
        self.other_errors += o.other_errors;
        if self.per_node.len() < o.per_node.len() {
            self.per_node.resize(o.per_node.len(), 0);
        }
        for (a, b) in self.per_node.iter_mut().zip(&o.per_node) {
            *a += b;
        }
    }
}

struct Client {
    i: usize,
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    cookie: Option<String>,
    stats: PollStats,
    nodes: Arc<Vec<String>>,
    /// `x-served-by` of the last answer.
    served_by: Option<String>,
}

enum Reply {
    Ok(String),
    UnknownSid,
    Failed,
}

impl Client {
    async fn call(&mut self, method: Method, query: &str, body: &str) -> Reply {
        self.stats.requests += 1;
        let work = async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = connect_from(self.i, self.addr).await.ok()?;
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .ok()?;
                tokio::spawn(conn);
                self.sender = Some(s);
            }
            let s = self.sender.as_mut()?;
            s.ready().await.ok()?;
            let mut req = Request::builder()
                .method(method)
                .uri(format!("/socket.io/?EIO=4&transport=polling{query}"))
                .header(HOST, "bench")
                .header(CONTENT_TYPE, "text/plain;charset=UTF-8");
            if let Some(c) = &self.cookie {
                req = req.header(COOKIE, c.as_str());
            }
            let req = req.body(Full::new(Bytes::from(body.to_owned()))).ok()?;
            let resp = s.send_request(req).await.ok()?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.ok()?.to_bytes();
            Some((parts, body))
        };
        match tokio::time::timeout(TIMEOUT, work).await {
            Ok(Some((parts, body))) => {
                self.served_by = parts
                    .headers
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(c) = parts
                    .headers
                    .get(SET_COOKIE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                {
                    self.cookie = Some(c.trim().to_owned());
                }
                let text = String::from_utf8_lossy(&body).into_owned();
                if parts.status == StatusCode::OK {
                    Reply::Ok(text)
                } else if parts.status == StatusCode::BAD_REQUEST
                    && text.contains("Session ID unknown")
                {
                    Reply::UnknownSid
                } else {
                    Reply::Failed
                }
            }
            _ => {
                self.sender = None;
                Reply::Failed
            }
        }
    }

    fn fail(&mut self, r: &Reply) {
        match r {
            Reply::UnknownSid => self.stats.unknown_sid += 1,
            _ => self.stats.other_errors += 1,
        }
    }

    /// One session: handshake, connect, `cycles` poll/pong rounds. True if all went well.
    async fn session(&mut self, cycles: usize) -> bool {
        self.stats.sessions += 1;
        let open = match self.call(Method::GET, "", "").await {
            Reply::Ok(t) => t,
            r => {
                self.fail(&r);
                return false;
            }
        };
        let Some(sid) = open
            .strip_prefix('0')
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_owned))
        else {
            self.stats.other_errors += 1;
            return false;
        };
        if let Some(k) = self
            .served_by
            .as_deref()
            .and_then(|id| super::backend_index(&self.nodes, id.as_bytes()))
        {
            self.stats.per_node[k] += 1;
        }
        let q = format!("&sid={sid}");
        let auth = format!("40{{\"name\":\"bench{}\"}}", self.i);
        if let r @ (Reply::UnknownSid | Reply::Failed) = self.call(Method::POST, &q, &auth).await {
            self.fail(&r);
            return false;
        }
        // The connect ack `40{...}` arrives on a poll.
        let mut connected = false;
        for _ in 0..3 {
            match self.call(Method::GET, &q, "").await {
                Reply::Ok(t) => {
                    let pong = t.split(SEPARATOR).any(|p| p == "2");
                    if t.split(SEPARATOR).any(|p| p.starts_with("40")) {
                        connected = true;
                    }
                    if pong && !self.pong(&q).await {
                        return false;
                    }
                    if connected {
                        break;
                    }
                }
                r => {
                    self.fail(&r);
                    return false;
                }
            }
        }
        if !connected {
            self.stats.other_errors += 1;
            return false;
        }
        self.stats.handshakes_ok += 1;
        for _ in 0..cycles {
            match self.call(Method::GET, &q, "").await {
                Reply::Ok(t) => {
                    if t.split(SEPARATOR).any(|p| p == "2") && !self.pong(&q).await {
                        return false;
                    }
                    if t.split(SEPARATOR).any(|p| p.starts_with('1')) {
                        // Closed by the server.
                        self.stats.other_errors += 1;
                        return false;
                    }
                }
                r => {
                    self.fail(&r);
                    return false;
                }
            }
        }
        let _ = self.call(Method::POST, &q, "1").await;
        self.stats.sessions_ok += 1;
        true
    }

    async fn pong(&mut self, q: &str) -> bool {
        match self.call(Method::POST, q, "3").await {
            Reply::Ok(_) => true,
            r => {
                self.fail(&r);
                false
            }
        }
    }
}

/// `clients` clients, each running `sessions` sessions of `cycles` polls.
pub async fn run(
    addr: SocketAddr,
    nodes: Arc<Vec<String>>,
    clients: usize,
    sessions: usize,
    cycles: usize,
) -> PollStats {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let mut c = Client {
                    i,
                    addr,
                    sender: None,
                    cookie: None,
                    stats: PollStats {
                        per_node: vec![0; nodes.len()],
                        ..PollStats::default()
                    },
                    nodes,
                    served_by: None,
                };
                for _ in 0..sessions {
                    c.session(cycles).await;
                }
                c.stats
            })
        })
        .collect();
    let mut total = PollStats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.add(&s);
        }
    }
    total
}

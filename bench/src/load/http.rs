//! Keep-alive HTTP/1.1 load: every connection sends `GET /id` one request at a time, either
//! as fast as answers come (closed loop) or on a fixed schedule (open loop). In open loop a
//! latency runs from the time the request was *due*, not sent, so a stall counts for every
//! request it delayed (coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::{backend_index, connect_from};
use crate::stats::histogram;

/// What to send.
#[derive(Debug, Clone)]
pub struct HttpLoad {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    /// Total requests/s over all connections; None: closed loop.
    pub rate: Option<u64>,
    pub backend_ids: Vec<String>,
    pub timeout: Duration,
    /// Timeline resolution.
    pub bucket: Duration,
    /// Stop each connection after this many requests.
    pub max_requests: Option<usize>,
    /// Cookie each client starts with (sticky).
    pub cookies: Vec<Option<String>>,
}

/// Counts in one timeline bucket, by the time the requests were due.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Bucket {
    pub ok: u64,
    pub errors: u64,
    pub per_backend: Vec<u64>,
}

/// What came back.
pub struct HttpOutcome {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub per_backend: Vec<u64>,
    pub timeline: Vec<Bucket>,
    pub elapsed: Duration,
    /// Per client: the backend index of each answer (None for an error).
    pub sequences: Vec<Vec<Option<usize>>>,
    /// Per client: the cookie it ended with.
    pub cookies: Vec<Option<String>>,
}

struct ClientResult {
    latency: Histogram<u64>,
    timeline: Vec<Bucket>,
    sequence: Vec<Option<usize>>,
    cookie: Option<String>,
}

/// Runs the load to completion.
pub async fn run(load: HttpLoad) -> HttpOutcome {
    let load = Arc::new(load);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(load.connections);
    for i in 0..load.connections {
        let load = load.clone();
        tasks.push(tokio::spawn(client(i, load, start)));
    }
    let nb = load.backend_ids.len();
    let mut out = HttpOutcome {
        latency: histogram(),
        ok: 0,
        errors: 0,
        per_backend: vec![0; nb],
        timeline: Vec::new(),
        elapsed: Duration::ZERO,
        sequences: Vec::new(),
        cookies: Vec::new(),
    };
    for t in tasks {
        let Ok(r) = t.await else { continue };
        let _ = out.latency.add(&r.latency);
        if out.timeline.len() < r.timeline.len() {
            out.timeline.resize(r.timeline.len(), Bucket::default());
        }
        for (i, b) in r.timeline.iter().enumerate() {
            let dst = &mut out.timeline[i];
            dst.ok += b.ok;
            dst.errors += b.errors;
            if dst.per_backend.len() < nb {
                dst.per_backend.resize(nb, 0);
            }
            for (k, c) in b.per_backend.iter().enumerate() {
                dst.per_backend[k] += c;
                out.per_backend[k] += c;
            }
            out.ok += b.ok;
            out.errors += b.errors;
        }
        out.sequences.push(r.sequence);
        out.cookies.push(r.cookie);
    }
    out.elapsed = start
        .elapsed()
        .min(load.duration.max(Duration::from_millis(1)));
    if load.max_requests.is_some() {
        out.elapsed = start.elapsed();
    }
    out
}

enum Answer {
    Ok(Option<usize>, Option<String>),
    Status,
    Broken,
}

async fn client(i: usize, load: Arc<HttpLoad>, start: Instant) -> ClientResult {
    let nb = load.backend_ids.len();
    let deadline = start + load.duration;
    let mut res = ClientResult {
        latency: histogram(),
        timeline: Vec::new(),
        sequence: Vec::new(),
        cookie: load.cookies.get(i).cloned().flatten(),
    };
    let interval = load
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(load.connections as f64 / r as f64));
    // Stagger the schedules so the connections do not fire in lockstep.
    let mut next = start
        + interval.map_or(Duration::ZERO, |iv| {
            iv * i as u32 / load.connections.max(1) as u32
        });
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let mut sent = 0usize;
    loop {
        if load.max_requests.is_some_and(|m| sent >= m) {
            break;
        }
        let due = match interval {
            Some(iv) => {
                let due = next;
                next += iv;
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        if load.max_requests.is_none() && due >= deadline {
            break;
        }
        sent += 1;
        let answer = request(i, &load, &mut sender, res.cookie.as_deref()).await;
        let done = Instant::now();
        // By due time: a bucket says what happened to the requests sent then.
        let slot = (due.saturating_duration_since(start).as_micros()
            / load.bucket.as_micros().max(1)) as usize;
        if res.timeline.len() <= slot {
            res.timeline.resize(slot + 1, Bucket::default());
        }
        let bucket = &mut res.timeline[slot];
        if bucket.per_backend.len() < nb {
            bucket.per_backend.resize(nb, 0);
        }
        match answer {
            Answer::Ok(backend, cookie) => {
                bucket.ok += 1;
                if let Some(k) = backend {
                    bucket.per_backend[k] += 1;
                }
                let us = done.saturating_duration_since(due).as_micros() as u64;
                let _ = res.latency.record(us.max(1));
                if cookie.is_some() {
                    res.cookie = cookie;
                }
                res.sequence.push(backend);
            }
            Answer::Status => {
                bucket.errors += 1;
                res.sequence.push(None);
            }
            Answer::Broken => {
                bucket.errors += 1;
                res.sequence.push(None);
                sender = None;
                // A refused connect returns at once; don't spin in closed loop.
                if interval.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    res
}

async fn request(
    i: usize,
    load: &HttpLoad,
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    cookie: Option<&str>,
) -> Answer {
    let work = async {
        if sender.as_mut().map(|s| s.is_closed()).unwrap_or(true) {
            *sender = None;
            let stream = connect_from(i, load.addr).await.ok()?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            *sender = Some(s);
        }
        let s = sender.as_mut()?;
        s.ready().await.ok()?;
        let mut req = Request::get("/id").header(HOST, "bench");
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        let req = req.body(Empty::new()).ok()?;
        let resp = s.send_request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some((parts, body))
    };
    match tokio::time::timeout(load.timeout, work).await {
        Ok(Some((parts, body))) if parts.status.is_success() => {
            let set = parts
                .headers
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .map(|v| v.trim().to_owned());
            Answer::Ok(backend_index(&load.backend_ids, &body), set)
        }
        Ok(Some(_)) => Answer::Status,
        _ => Answer::Broken,
    }
}

//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (JSON), and the
//! token-protected mutations `POST /backends/<upstream>/<backend>/drain|undrain` and
//! `POST /reload`. With `auth_reads` the two reads need the token too. The token and
//! `auth_reads` are read from the live configuration on every request, so a reload that
//! changes them (a rotated token) takes effect at once.

pub mod metrics;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::state::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Checks the bearer token of a mutation, or of a read when `auth_reads` is set; the
    /// error is the answer to send instead.
    fn access(
        &self,
        session: &ServerSession,
        mutation: bool,
    ) -> Result<(), Box<Response<Vec<u8>>>> {
        let rt = self.shared.current();
        let admin = rt.config.admin.as_ref();
        if !mutation && !admin.is_some_and(|a| a.auth_reads) {
            return Ok(());
        }
        let Some(token) = admin.and_then(|a| a.token.as_deref()) else {
            return Err(Box::new(json_reply(
                StatusCode::FORBIDDEN,
                json!({"ok": false, "error": "admin mutations are disabled: no admin token configured"}),
            )));
        };
        if bearer_matches(session, token) {
            return Ok(());
        }
        let mut r = json_reply(
            StatusCode::UNAUTHORIZED,
            json!({"ok": false, "error": "missing or wrong bearer token"}),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        Err(Box::new(r))
    }

    pub fn status_json(&self) -> serde_json::Value {
        let rt = self.shared.current();
        let mut ups: Vec<_> = rt.upstreams.values().collect();
        ups.sort_by(|a, b| a.name.cmp(&b.name));
        let upstreams: Vec<_> = ups
            .iter()
            .map(|u| {
                let backends: Vec<_> = u
                    .backends
                    .iter()
                    .map(|b| {
                        let s = &b.stats;
                        json!({
                            "id": b.id,
                            "addr": b.addr.to_string(),
                            "weight": b.weight,
                            "effective_weight": b.effective_weight(),
                            "backup": b.backup,
                            "health": s.health(),
                            "draining": s.is_draining(),
                            "active": s.active.load(Ordering::Relaxed),
                            "tunnels": s.tunnels.load(Ordering::Relaxed),
                            "requests": s.requests.load(Ordering::Relaxed),
                            "ewma_ms": s.ewma.get_us() / 1000.0,
                        })
                    })
                    .collect();
                json!({
                    "name": u.name,
                    "strategy": u.config.strategy.as_str(),
                    "active_checks": u.config.health.active.is_some(),
                    "backends": backends,
                })
            })
            .collect();
        json!({ "upstreams": upstreams })
    }
}

fn bearer_matches(session: &ServerSession, token: &str) -> bool {
    session
        .get_header(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| constant_time_eq(got.trim().as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mutation = method == Method::POST;
        // A load balancer probing /healthz has no token.
        let read = method == Method::GET && segments.as_slice() != ["healthz"];
        if mutation || read {
            if let Err(denied) = self.access(session, mutation) {
                return *denied;
            }
        }
        match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(&self.shared.current()),
            ),
            (&Method::GET, ["status"]) => json_reply(StatusCode::OK, self.status_json()),
            (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::POST, ["reload"]) => match self.shared.reload() {
                Ok(report) => json_reply(StatusCode::OK, json!({"ok": true, "report": report})),
                Err(errors) => json_reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"ok": false, "error": errors.to_string()}),
                ),
            },
            (&Method::POST, ["backends", upstream, backend, action @ ("drain" | "undrain")]) => {
                let rt = self.shared.current();
                let Some(up) = rt.upstreams.get(*upstream) else {
                    return json_reply(
                        StatusCode::NOT_FOUND,
                        json!({"ok": false, "error": format!("no upstream {upstream:?}")}),
                    );
                };
                let Some(b) = up.find_backend(backend) else {
                    return json_reply(
                        StatusCode::NOT_FOUND,
                        json!({"ok": false, "error": format!("no backend {backend:?} in {upstream:?}")}),
                    );
                };
                b.stats.set_draining(*action == "drain");
                tracing::info!(upstream = %up.name, backend = %b.addr, action, "admin");
                json_reply(
                    StatusCode::OK,
                    json!({"ok": true, "backend": b.addr.to_string(), "draining": b.stats.is_draining()}),
                )
            }
            (&Method::GET | &Method::POST, _) => json_reply(
                StatusCode::NOT_FOUND,
                json!({"ok": false, "error": "unknown endpoint; see GET /status, GET /metrics, POST /reload, POST /backends/<upstream>/<backend>/drain|undrain"}),
            ),
            _ => json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"ok": false, "error": "method not allowed"}),
            ),
        }
    }
}

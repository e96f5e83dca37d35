//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (JSON), and the
//! token-protected mutations `POST /backends/<upstream>/<backend>/drain|undrain` and
//! `POST /reload`.

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
    token: Option<String>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>, token: Option<String>) -> Self {
        Self { shared, token }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = self.token.as_deref() else {
            return false;
        };
        let Some(got) = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(got.trim().as_bytes(), token.as_bytes())
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
        match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(&self.shared.current()),
            ),
            (&Method::GET, ["status"]) => json_reply(StatusCode::OK, self.status_json()),
            (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::POST, _) if self.token.is_none() => json_reply(
                StatusCode::FORBIDDEN,
                json!({"ok": false, "error": "admin mutations are disabled: no admin token configured"}),
            ),
            (&Method::POST, _) if !self.authorized(session) => {
                let mut r = json_reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"ok": false, "error": "missing or wrong bearer token"}),
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                r
            }
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

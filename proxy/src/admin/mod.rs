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
                        // A backend written `host:port`: that name (null otherwise).
                        let name = u.config.backend_name(b.addr);
                        json!({
                            "id": b.id,
                            "addr": b.addr.to_string(),
                            "name": name,
                            "weight": b.weight,
                            "effective_weight": b.effective_weight(),
                            "backup": b.backup,
                            "health": s.health(),
                            "draining": s.is_draining(),
                            "active": s.active.load(Ordering::Relaxed),
                            "tunnels": s.tunnels.load(Ordering::Relaxed),
                            "max_conns": b.max_conns,
                            "requests": s.requests.load(Ordering::Relaxed),
                            "ewma_ms": s.ewma.get_us() / 1000.0,
                        })
                    })
                    .collect();
                json!({
                    "name": u.name,
                    "strategy": u.config.strategy.as_str(),
                    "protocol": u.config.protocol.as_str(),
                    "active_checks": u.config.health.active.is_some(),
                    "fail_open": u.config.health.fail_open,
                    // No backend in service, and requests go to all of them anyway.
                    "failing_open": u.failing_open(),
                    // Requests waiting for a slot while every backend is at max_conns.
                    "queue": u.config.queue.map(|q| json!({
                        "max": q.max,
                        "timeout_ms": u64::try_from(q.timeout.as_millis()).unwrap_or(u64::MAX),
                        "waiting": u.queue.as_ref().map_or(0, |w| w.waiting()),
                    })),
                    // What an operator checks when a backend's handshakes fail.
                    "tls": u.config.tls.as_ref().map(|t| json!({
                        "server_name": t.server_name,
                        "ca": t.ca.as_ref().map(|c| c.path.display().to_string()),
                        "verify": t.verify,
                        "client_cert": t.client_cert.as_ref().map(|c| c.cert.display().to_string()),
                    })),
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
        .and_then(bearer_credentials)
        .is_some_and(|got| tokens_equal(got, token))
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110 §11.1): clients and libraries that send `bearer` are not
/// refused for it.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then(|| credentials.trim())
}

/// Compares the SHA-256 digests of the two tokens in constant time, so that neither the
/// position of the first differing byte nor the token's length shows in the time taken (a
/// plain comparison that returns early on a length mismatch tells an attacker the length).
fn tokens_equal(got: &str, want: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (
        Sha256::digest(got.as_bytes()),
        Sha256::digest(want.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The one method each endpoint answers, or None for a path that is not an endpoint.
fn endpoint_method(segments: &[&str]) -> Option<Method> {
    match segments {
        ["metrics"] | ["status"] | ["healthz"] => Some(Method::GET),
        ["reload"] | ["backends", _, _, "drain" | "undrain"] => Some(Method::POST),
        _ => None,
    }
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
        // An endpoint asked with another method gets 405 and the method it takes, as RFC
        // 9110 §15.5.6 requires, rather than a 404 that says it does not exist.
        match endpoint_method(&segments) {
            None => {
                return json_reply(
                    StatusCode::NOT_FOUND,
                    json!({"ok": false, "error": "unknown endpoint; see GET /status, GET /metrics, POST /reload, POST /backends/<upstream>/<backend>/drain|undrain"}),
                )
            }
            Some(allowed) if allowed != method => {
                let mut r = json_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"ok": false, "error": format!("method not allowed; use {allowed}")}),
                );
                if let Ok(v) = http::HeaderValue::from_str(allowed.as_str()) {
                    r.headers_mut().insert(http::header::ALLOW, v);
                }
                return r;
            }
            Some(_) => {}
        }
        // After the method check: the endpoints and their methods are no secret (they are
        // documented), and a client asking with the wrong one is told so, token or not.
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
                self.shared.metrics.render(
                    &self.shared.current(),
                    self.shared.open.load(std::sync::atomic::Ordering::Acquire),
                ),
            ),
            (&Method::GET, ["status"]) => json_reply(StatusCode::OK, self.status_json()),
            (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::POST, ["reload"]) => match self.shared.reload_blocking().await {
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
            // endpoint_method() answered every other pair above.
            _ => json_reply(
                StatusCode::NOT_FOUND,
                json!({"ok": false, "error": "unknown endpoint"}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_credentials, endpoint_method, tokens_equal};
    use http::Method;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("bearer  abc "), Some("abc"));
        assert_eq!(bearer_credentials("BEARER abc"), Some("abc"));
        assert_eq!(bearer_credentials("Basic abc"), None);
        assert_eq!(bearer_credentials("Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_equal("secret", "secret"));
        assert!(!tokens_equal("secre", "secret"));
        assert!(!tokens_equal("secret!", "secret"));
        assert!(!tokens_equal("", "secret"));
    }

    #[test]
    fn each_endpoint_has_one_method() {
        assert_eq!(endpoint_method(&["metrics"]), Some(Method::GET));
        assert_eq!(endpoint_method(&["reload"]), Some(Method::POST));
        assert_eq!(
            endpoint_method(&["backends", "app", "b1", "drain"]),
            Some(Method::POST)
        );
        assert_eq!(endpoint_method(&["backends", "app", "b1", "kill"]), None);
        assert_eq!(endpoint_method(&["nope"]), None);
    }
}

//! The HTTP errors of the reference server, with its codes and messages, in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A request the server refuses; each maps to the reference server's status and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A missing or unknown `transport` (400, code 0).
    #[error("Transport unknown")]
    UnknownTransport,
    /// A `sid` that names no open session (400, code 1).
    #[error("Session ID unknown")]
    UnknownSid,
    /// A handshake that is not a GET (400, code 2).
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// Anything else the protocol forbids: overlapping polls, a poll on a session that
    /// moved to WebSocket, an invalid payload, a WebSocket request without the upgrade
    /// (400, code 3).
    #[error("Bad request")]
    BadRequest,
    /// The application refused the connection (403, code 4).
    #[error("Forbidden")]
    Forbidden,
    /// `EIO` is missing or not `4` (400, code 5).
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
    /// A POST larger than `max_payload` (413, empty body, as the reference server).
    #[error("Payload too large")]
    PayloadTooLarge,
    /// A handshake while `max_sessions` are open (503, code 4 as the reference server's
    /// refusals by the application, with its own message).
    #[error("Server at capacity")]
    AtCapacity,
    /// A handshake while the client already has `max_sessions_per_client` sessions open
    /// (429, code 4 as [`EngineError::AtCapacity`]).
    #[error("Too many sessions from this client")]
    TooManyFromClient,
    /// A request for another node's session that cannot be routed now: the session
    /// directory or the bus (Redis) failed. 503 with `Retry-After`, no code (the reference
    /// server has none for it): the session may well exist, and the request may be sent
    /// again; not `Session ID unknown`, which ends the client's session.
    #[error("Session directory unavailable")]
    Unavailable,
}

impl EngineError {
    /// The reference server's error code, when it has one.
    pub fn code(self) -> Option<u8> {
        Some(match self {
            Self::UnknownTransport => 0,
            Self::UnknownSid => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest => 3,
            Self::Forbidden | Self::AtCapacity | Self::TooManyFromClient => 4,
            Self::UnsupportedProtocolVersion => 5,
            Self::PayloadTooLarge | Self::Unavailable => return None,
        })
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::AtCapacity | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyFromClient => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        if self == Self::Unavailable {
            let body = serde_json::json!({ "message": self.to_string() }).to_string();
            return (
                self.status(),
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::RETRY_AFTER, HeaderValue::from_static("1")),
                ],
                body,
            )
                .into_response();
        }
        let Some(code) = self.code() else {
            return self.status().into_response();
        };
        let body = serde_json::json!({ "code": code, "message": self.to_string() }).to_string();
        (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn body(error: EngineError) -> (StatusCode, String) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn bodies_match_the_reference_server() {
        let cases = [
            (
                EngineError::UnknownTransport,
                400,
                r#"{"code":0,"message":"Transport unknown"}"#,
            ),
            (
                EngineError::UnknownSid,
                400,
                r#"{"code":1,"message":"Session ID unknown"}"#,
            ),
            (
                EngineError::BadHandshakeMethod,
                400,
                r#"{"code":2,"message":"Bad handshake method"}"#,
            ),
            (
                EngineError::BadRequest,
                400,
                r#"{"code":3,"message":"Bad request"}"#,
            ),
            (
                EngineError::Forbidden,
                403,
                r#"{"code":4,"message":"Forbidden"}"#,
            ),
            (
                EngineError::UnsupportedProtocolVersion,
                400,
                r#"{"code":5,"message":"Unsupported protocol version"}"#,
            ),
            (EngineError::PayloadTooLarge, 413, ""),
            (
                EngineError::AtCapacity,
                503,
                r#"{"code":4,"message":"Server at capacity"}"#,
            ),
            (
                EngineError::TooManyFromClient,
                429,
                r#"{"code":4,"message":"Too many sessions from this client"}"#,
            ),
            (
                EngineError::Unavailable,
                503,
                r#"{"message":"Session directory unavailable"}"#,
            ),
        ];
        for (error, status, expected) in cases {
            assert_eq!(
                body(error).await,
                (StatusCode::from_u16(status).unwrap(), expected.to_owned())
            );
        }
    }
}

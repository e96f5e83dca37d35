//! HTTP long-polling: a GET waits for packets (one GET at a time), a POST delivers the
//! client's packets. Both work on a [`Session`] and know nothing of HTTP framing, so that a
//! request can be served wherever its session lives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::error::EngineError;
use super::packet::{Packet, Transport};
use super::payload;
use super::session::{CloseReason, PollEnd, Session, Upgrade};

/// How long a poll that arrives during an upgrade (after the probe) waits before it is
/// answered with a noop, so that the client's `5`, if already on its way, wins. The
/// reference server answers such polls from a 100 ms timer.
const UPGRADE_NOOP_DELAY: Duration = Duration::from_millis(50);

/// A GET: waits until there is something for the client and returns the payload.
///
/// A second GET while one is pending is an error that closes the session: the pending one
/// returns a close packet, this one an error (as in the reference server). A GET dropped
/// before it is answered (the client went away) closes the session too.
pub async fn poll(session: &Arc<Session>) -> Result<String, EngineError> {
    let noop_at = {
        let mut state = session.lock();
        if state.closed.is_some() {
            if std::mem::take(&mut state.noop_owed) {
                drop(state);
                session.forget();
                return Ok(Packet::Noop.to_text());
            }
            return Err(EngineError::UnknownSid);
        }
        if state.transport != Transport::Polling {
            return Err(EngineError::BadRequest);
        }
        if state.polling {
            drop(state);
            tracing::debug!(sid = %session.id(), "overlapping polls");
            session.close(CloseReason::TransportError);
            return Err(EngineError::BadRequest);
        }
        state.polling = true;
        if std::mem::replace(&mut state.handshake_polled, true) {
            state.returned = true;
        }
        if state.upgrade == Upgrade::Probed {
            Instant::now() + UPGRADE_NOOP_DELAY
        } else {
            Instant::now()
        }
    };
    let mut guard = PendingPoll {
        session,
        answered: false,
    };
    loop {
        let notified = session.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wait_for_noop = {
            let mut state = session.lock();
            let noop_allowed = Instant::now() >= noop_at;
            match session.take_poll(&mut state, noop_allowed) {
                Ok(Some(poll)) => {
                    state.polling = false;
                    drop(state);
                    guard.answered = true;
                    if poll.finish {
                        session.close(CloseReason::ForcedClose);
                    }
                    return Ok(poll.body);
                }
                Ok(None) => state.upgrade == Upgrade::Probed && !noop_allowed,
                Err(PollEnd::Upgraded) => {
                    state.polling = false;
                    guard.answered = true;
                    return Err(EngineError::BadRequest);
                }
            }
        };
        if wait_for_noop {
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(noop_at) => {}
            }
        } else {
            notified.await;
        }
    }
}

/// Closes the session if the GET is dropped unanswered ("poll connection closed
/// prematurely").
struct PendingPoll<'a> {
    session: &'a Arc<Session>,
    answered: bool,
}

impl Drop for PendingPoll<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.session.lock().polling = false;
            self.session.close(CloseReason::TransportError);
        }
    }
}

/// A POST: decodes the body and hands its packets to the session in order.
///
/// `binary` is whether the request said `Content-Type: application/octet-stream`, which
/// Engine.IO v4 never sends (binary travels as base64): an error that closes the session.
/// An invalid payload closes the session too. A second POST while one is being read is an
/// error that closes the session. The caller enforces `max_payload` while reading.
pub async fn post(session: &Arc<Session>, binary: bool, body: Bytes) -> Result<(), EngineError> {
    {
        let mut state = session.lock();
        if state.closed.is_some() {
            return Err(EngineError::UnknownSid);
        }
        if state.transport != Transport::Polling {
            return Err(EngineError::BadRequest);
        }
        if state.posting {
            drop(state);
            tracing::debug!(sid = %session.id(), "overlapping posts");
            session.close(CloseReason::TransportError);
            return Err(EngineError::BadRequest);
        }
        state.posting = true;
        state.returned = true;
    }
    let _posting = Posting(session);
    receive(session, binary, &body).await
}

/// Marks the end of a POST, also when the client goes away in the middle of it.
struct Posting<'a>(&'a Session);

impl Drop for Posting<'_> {
    fn drop(&mut self) {
        self.0.lock().posting = false;
    }
}

async fn receive(session: &Arc<Session>, binary: bool, body: &[u8]) -> Result<(), EngineError> {
    if binary {
        session.close(CloseReason::TransportError);
        return Err(EngineError::BadRequest);
    }
    let packets = match payload::decode(body) {
        Ok(packets) => packets,
        Err(error) => {
            tracing::debug!(sid = %session.id(), %error, "invalid payload");
            session.close(CloseReason::ParseError);
            return Err(EngineError::BadRequest);
        }
    };
    for packet in packets {
        if session.receive(packet).await.is_err() {
            // Closed by this packet (a close packet answers "ok") or before it.
            break;
        }
    }
    Ok(())
}

//! The WebSocket transport: one Engine.IO packet per frame (binary messages as binary
//! frames), for sessions that start on WebSocket and for sessions upgraded from polling.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};

use super::packet::{Frame, Packet, PROBE};
use super::session::{CloseReason, Session};

/// The frames a WebSocket (or a bridged one) receives.
pub(crate) trait Incoming:
    Stream<Item = Result<WsMessage, axum::Error>> + Unpin + Send
{
}
impl<T: Stream<Item = Result<WsMessage, axum::Error>> + Unpin + Send> Incoming for T {}

/// Where a WebSocket (or a bridged one) writes frames.
pub(crate) trait Outgoing: Sink<WsMessage> + Unpin + Send {}
impl<T: Sink<WsMessage> + Unpin + Send> Outgoing for T {}

/// Serves a session on `socket` until either ends.
pub(crate) async fn run(socket: WebSocket, session: Arc<Session>) {
    let (tx, rx) = socket.split();
    run_on(rx, tx, session).await;
}

/// Serves a session on a WebSocket's two halves until either ends.
pub(crate) async fn run_on<R: Incoming, W: Outgoing>(
    mut rx: R,
    mut socket: W,
    session: Arc<Session>,
) {
    loop {
        let notified = session.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let (packets, closing) = match session.take_all() {
            Ok(taken) => taken,
            Err(reason) => {
                close_for(&mut socket, reason).await;
                return;
            }
        };
        if !packets.is_empty() && write(&mut socket, packets).await.is_err() {
            session.close(CloseReason::TransportError);
            return;
        }
        if let Some(reason) = closing {
            // Everything queued before the close has been written.
            session.close(reason);
            close_for(&mut socket, reason).await;
            return;
        }

        tokio::select! {
            () = &mut notified => {}
            frame = rx.next() => {
                let packet = match frame {
                    Some(Ok(WsMessage::Text(text))) => Packet::decode_frame(Frame::Text(text)),
                    Some(Ok(WsMessage::Binary(data))) => Packet::decode_frame(Frame::Binary(data)),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | None => {
                        session.close(CloseReason::TransportClose);
                        return;
                    }
                    Some(Err(error)) => {
                        // Mostly a connection dropped without a close frame; also a
                        // message larger than `max_payload`, which the client is told.
                        tracing::debug!(sid = %session.id(), %error, "websocket error");
                        session.close(CloseReason::TransportClose);
                        if error.to_string().contains("Message too long") {
                            close_with(&mut socket, 1009, "message larger than maxPayload").await;
                        }
                        return;
                    }
                };
                let result = match packet {
                    Ok(packet) => session.receive(packet).await,
                    Err(error) => {
                        tracing::debug!(sid = %session.id(), %error, "invalid packet");
                        session.close(CloseReason::ParseError);
                        Err(CloseReason::ParseError)
                    }
                };
                if let Err(reason) = result {
                    close_for(&mut socket, reason).await;
                    return;
                }
            }
        }
    }
}

/// Runs the upgrade of a polling session to `socket`: the probe (`2probe` → `3probe`,
/// which makes pending polls return a noop), then `5`, after which the WebSocket carries
/// the session. Anything else, a timeout or the session closing ends only the WebSocket;
/// polling goes on.
pub(crate) async fn upgrade(socket: WebSocket, session: Arc<Session>) {
    let (tx, rx) = socket.split();
    upgrade_on(rx, tx, session).await;
}

/// [`upgrade`] on a WebSocket's two halves.
pub(crate) async fn upgrade_on<R: Incoming, W: Outgoing>(
    mut rx: R,
    mut socket: W,
    session: Arc<Session>,
) {
    let deadline = tokio::time::sleep(session.config().upgrade_timeout);
    tokio::pin!(deadline);
    loop {
        let frame = tokio::select! {
            () = &mut deadline => None,
            () = session.closed() => None,
            frame = rx.next() => frame,
        };
        let packet = match frame {
            Some(Ok(WsMessage::Text(text))) => Packet::decode_text(text.as_str()).ok(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            _ => None,
        };
        match packet {
            Some(Packet::Ping(data)) if data == PROBE => {
                let pong = Packet::Pong(PROBE.to_owned()).to_text();
                if socket.send(WsMessage::Text(pong.into())).await.is_err() {
                    break;
                }
                session.upgrade_probed();
            }
            Some(Packet::Upgrade) => {
                if session.complete_upgrade() {
                    return run_on(rx, socket, session).await;
                }
                break;
            }
            _ => break,
        }
    }
    session.abort_upgrade();
    close(&mut socket).await;
}

/// Writes packets, one frame each, then flushes.
async fn write<W: Outgoing>(socket: &mut W, packets: Vec<Packet>) -> Result<(), W::Error> {
    for packet in packets {
        let message = match packet.to_frame() {
            Frame::Text(text) => WsMessage::Text(text),
            Frame::Binary(data) => WsMessage::Binary(data),
        };
        socket.feed(message).await?;
    }
    socket.flush().await
}

/// Sends a close frame; the peer may already be gone.
pub(crate) async fn close<W: Outgoing>(socket: &mut W) {
    let _ = socket.send(WsMessage::Close(None)).await;
}

/// Sends the close frame for why the server ends a session: a status code (RFC 6455
/// §7.4.1) and the reference server's name for the reason, so that a client, or whoever
/// reads its logs, sees why rather than a bare close.
async fn close_for<W: Outgoing>(socket: &mut W, reason: CloseReason) {
    let code = match reason {
        CloseReason::ParseError => 1002,
        CloseReason::TransportError => 1008,
        CloseReason::ServerShutdown => 1001,
        CloseReason::ClientClose
        | CloseReason::TransportClose
        | CloseReason::PingTimeout
        | CloseReason::ForcedClose => 1000,
    };
    close_with(socket, code, reason.as_str()).await;
}

async fn close_with<W: Outgoing>(socket: &mut W, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(WsMessage::Close(Some(frame))).await;
}

//! The WebSocket transport: one Engine.IO packet per frame (binary messages as binary
//! frames), for sessions that start on WebSocket and for sessions upgraded from polling.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::time::Instant;

use super::pacing::Density;
use super::packet::{Frame, Packet, PROBE};
use super::session::{CloseReason, Session};
use crate::metrics::metrics;

/// The frames a WebSocket (or a bridged one) receives.
pub(crate) trait Incoming:
    Stream<Item = Result<WsMessage, axum::Error>> + Unpin + Send
{
}
impl<T: Stream<Item = Result<WsMessage, axum::Error>> + Unpin + Send> Incoming for T {}

/// Where a WebSocket (or a bridged one) writes frames.
pub(crate) trait Outgoing: Sink<WsMessage> + Unpin + Send {}
impl<T: Sink<WsMessage> + Unpin + Send> Outgoing for T {}

/// The longest the answer to a client's close frame, or a close frame of ours, may take
/// to be written.
const CLOSE_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
    // When the last packets were written and how densely they have been coming (whether
    // a hold would merge enough to be worth its wait), and, while packets queued since
    // wait for the interval to pass, when they go out; see `EngineConfig::ws_flush_interval`.
    let mut density = Density::default();
    let mut flush_at: Option<Instant> = None;
    loop {
        let notified = session.changed.notified();
        tokio::pin!(notified);
        let waiting = flush_at.is_some();
        if !waiting {
            notified.as_mut().enable();
            let (packets, closing) = match session.take_all() {
                Ok(taken) => taken,
                Err(reason) => {
                    close_for(&mut socket, reason).await;
                    return;
                }
            };
            if !packets.is_empty() {
                let count = packets.len();
                let bytes = packets.iter().map(Packet::held_len).sum();
                let written = tokio::select! {
                    written = write(&mut socket, packets) => Some(written.is_ok()),
                    // A client that stops reading leaves the write pending for good: the
                    // session's close (too much queued meanwhile, a missed pong) ends it.
                    () = session.closed() => None,
                };
                match written {
                    Some(true) => session.written(bytes),
                    Some(false) => {
                        session.close(CloseReason::TransportError);
                        return;
                    }
                    None => {
                        let reason = session.close_reason().unwrap_or(CloseReason::ForcedClose);
                        close_for(&mut socket, reason).await;
                        return;
                    }
                }
                density.record(count, Instant::now());
            }
            if let Some(reason) = closing {
                // Everything queued before the close has been written.
                session.close(reason);
                close_for(&mut socket, reason).await;
                return;
            }
        }
        let flush = async {
            if let Some(at) = flush_at {
                tokio::time::sleep_until(at).await;
            }
        };

        tokio::select! {
            () = &mut notified, if !waiting => {
                // Not woken again until the interval is over: the queue is read then.
                let interval = session.flush_interval();
                flush_at = density
                    .last_write()
                    .filter(|_| !interval.is_zero() && density.merges(interval))
                    .map(|at| at + interval)
                    .filter(|&at| at > Instant::now());
            }
            () = flush, if waiting => flush_at = None,
            frame = rx.next() => {
                let packet = match frame {
                    Some(Ok(WsMessage::Text(text))) => Packet::decode_frame(Frame::Text(text)),
                    Some(Ok(WsMessage::Binary(data))) => Packet::decode_frame(Frame::Binary(data)),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) => {
                        session.close(CloseReason::TransportClose);
                        // RFC 6455 §5.5.1: a close is answered with a close, or the client
                        // sees an unclean end (1006). The WebSocket queued the answer when it
                        // read the frame; closing the sink writes it. Bounded: a peer that
                        // has stopped reading must not hold the task.
                        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, socket.close()).await;
                        return;
                    }
                    None => {
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
    let frames = packets.len();
    for packet in packets {
        let message = match packet.to_frame() {
            Frame::Text(text) => WsMessage::Text(text),
            Frame::Binary(data) => WsMessage::Binary(data),
        };
        socket.feed(message).await?;
    }
    socket.flush().await?;
    metrics().websocket_written(frames);
    Ok(())
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
        CloseReason::TransportError | CloseReason::SlowClient => 1008,
        CloseReason::ServerShutdown => 1001,
        CloseReason::ClientClose
        | CloseReason::TransportClose
        | CloseReason::PingTimeout
        | CloseReason::ForcedClose => 1000,
    };
    close_with(socket, code, reason.as_str()).await;
}

/// Bounded: behind the frame may wait what a client that stopped reading never takes.
async fn close_with<W: Outgoing>(socket: &mut W, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ =
        tokio::time::timeout(CLOSE_REPLY_WAIT, socket.send(WsMessage::Close(Some(frame)))).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Mutex, Weak};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::time::advance;

    use super::*;
    use crate::engineio::{EngineConfig, Message, Sid, Transport};

    /// The frames written to a WebSocket, grouped by the flush that sent them: what the
    /// peer would get in one write each.
    #[derive(Default, Clone)]
    struct Writes {
        feeding: Arc<Mutex<Vec<String>>>,
        flushed: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl Writes {
        fn flushed(&self) -> Vec<Vec<String>> {
            self.flushed.lock().unwrap().clone()
        }
    }

    impl Sink<WsMessage> for Writes {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, message: WsMessage) -> Result<(), Self::Error> {
            let text = match message {
                WsMessage::Text(text) => text.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            self.feeding.lock().unwrap().push(text);
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let batch = std::mem::take(&mut *self.feeding.lock().unwrap());
            if !batch.is_empty() {
                self.flushed.lock().unwrap().push(batch);
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    /// A WebSocket session served by `run_on`, whose open packet has been written.
    async fn serve(interval: Duration) -> (Arc<Session>, Writes) {
        let config = EngineConfig {
            ws_flush_interval: interval,
            ..EngineConfig::default()
        };
        let (session, _inbound) = Session::new(
            Sid::random(),
            Arc::new(config),
            Transport::Websocket,
            Weak::new(),
            None,
        );
        let writes = Writes::default();
        tokio::spawn(run_on(
            futures::stream::pending(),
            writes.clone(),
            Arc::clone(&session),
        ));
        settle().await;
        assert_eq!(writes.flushed().len(), 1, "the open packet");
        writes.flushed.lock().unwrap().clear();
        (session, writes)
    }

    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    fn send(session: &Session, text: &str) {
        session.send(Message::Text(text.into())).unwrap();
    }

    const INTERVAL: Duration = Duration::from_millis(5);

    /// Makes the session's client one that receives a dense stream: a burst sent at once
    /// (the first packet written, the rest held and written together at the interval's
    /// end), so that a hold now merges enough packets. Clears what it wrote.
    async fn dense(session: &Session, writes: &Writes) {
        for i in 0..8 {
            send(session, &format!("burst{i}"));
            settle().await;
        }
        advance(INTERVAL).await;
        settle().await;
        let flushed = writes.flushed();
        assert_eq!(flushed.len(), 2, "{flushed:?}");
        assert_eq!(flushed[1].len(), 7, "{flushed:?}");
        writes.flushed.lock().unwrap().clear();
    }

    #[tokio::test(start_paused = true)]
    async fn packets_queued_within_the_interval_go_out_together_at_its_end() {
        let (session, writes) = serve(INTERVAL).await;
        dense(&session, &writes).await;
        // Packets were written just now: these wait for the interval's end.
        send(&session, "a");
        settle().await;
        send(&session, "b");
        settle().await;
        advance(INTERVAL - Duration::from_millis(1)).await;
        settle().await;
        assert!(writes.flushed().is_empty(), "{:?}", writes.flushed());
        advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(writes.flushed(), vec![vec!["4a", "4b"]]);

        // A packet after a quiet interval is written at once.
        advance(INTERVAL).await;
        send(&session, "c");
        settle().await;
        assert_eq!(writes.flushed(), vec![vec!["4a", "4b"], vec!["4c"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_whose_packets_would_not_merge_is_written_at_once() {
        let (session, writes) = serve(INTERVAL).await;
        // A packet every 3.3 ms: a 5 ms hold would merge one or two, so none is held.
        for i in 0..20 {
            advance(Duration::from_micros(3300)).await;
            send(&session, &format!("{i}"));
            settle().await;
            assert_eq!(writes.flushed().len(), i + 1, "{:?}", writes.flushed());
        }
        assert!(writes.flushed().iter().all(|w| w.len() == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_waiting_behind_the_interval_still_comes_after_the_packets() {
        let (session, writes) = serve(INTERVAL).await;
        dense(&session, &writes).await;
        send(&session, "last");
        session.disconnect();
        settle().await;
        assert!(writes.flushed().is_empty());
        advance(INTERVAL).await;
        settle().await;
        let flushed = writes.flushed().concat();
        assert_eq!(flushed[0], "4last", "{flushed:?}");
        assert!(flushed.iter().any(|f| f.contains("Close")), "{flushed:?}");
        assert!(session.is_closed());
    }

    /// A WebSocket whose client reads the open packet, then nothing: every write after
    /// it waits for good.
    #[derive(Default)]
    struct Unread {
        flushed: bool,
    }

    impl Sink<WsMessage> for Unread {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.flushed {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn start_send(self: Pin<&mut Self>, _: WsMessage) -> Result<(), Self::Error> {
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            if self.flushed {
                Poll::Pending
            } else {
                self.flushed = true;
                Poll::Ready(Ok(()))
            }
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_closed_and_its_write_abandoned() {
        let config = EngineConfig {
            ws_flush_interval: Duration::ZERO,
            max_queued_bytes: 100,
            ..EngineConfig::default()
        };
        let (session, _inbound) = Session::new(
            Sid::random(),
            Arc::new(config),
            Transport::Websocket,
            Weak::new(),
            None,
        );
        let task = tokio::spawn(run_on(
            futures::stream::pending(),
            Unread::default(),
            Arc::clone(&session),
        ));
        settle().await;
        // The first write is taken and never ends; the next ones wait behind it.
        let text = "x".repeat(39);
        let mut sent = 0;
        while session.send(Message::Text(text.as_str().into())).is_ok() {
            sent += 1;
            settle().await;
            assert!(sent < 10, "never closed");
        }
        assert_eq!(
            sent, 2,
            "40 bytes in the write, 40 queued, 40 more is too much"
        );
        assert_eq!(session.close_reason(), Some(CloseReason::SlowClient));
        // The task ends (its close frame, which cannot be written either, bounded).
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the WebSocket task ends")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_writes_every_packet_at_once() {
        let (session, writes) = serve(Duration::ZERO).await;
        send(&session, "a");
        settle().await;
        send(&session, "b");
        settle().await;
        assert_eq!(writes.flushed(), vec![vec!["4a"], vec!["4b"]]);
    }
}

//! An Engine.IO handler that sends every message back: the server the official
//! engine.io-protocol test suite expects, and a fixture for tests.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::server::Handler;
use super::session::{Message, Session};

/// Sends each message, text or binary, back to its sender.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_open(&self, session: Arc<Session>, mut inbound: mpsc::Receiver<Message>) {
        tokio::spawn(async move {
            while let Some(message) = inbound.recv().await {
                if session.send(message).is_err() {
                    break;
                }
            }
        });
    }
}

//! The stop signals: SIGINT (Ctrl-C) and SIGTERM, for `up` and for the node role alike.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Listens for SIGINT and SIGTERM from now on (installed before anything starts, so an early
/// Ctrl-C is not lost).
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Installs the handlers. Call inside a Tokio runtime.
    pub fn install() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Completes at the next SIGINT or SIGTERM, with its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

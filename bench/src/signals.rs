//! SIGINT, SIGTERM and SIGHUP while a scenario runs. The handlers are installed before
//! anything is started, so that none of these signals kills bench outright: a killed bench
//! runs no destructor and leaves its backends, proxies, chat nodes and redis-server behind
//! (SIGHUP, from a closed terminal or SSH session, did exactly that). The driver stops at
//! the measurement in progress, stops every process it started and writes a partial report.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Stop {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Stop {
    /// Installs the handlers (within a tokio runtime).
    pub fn install() -> std::io::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for one of the signals; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// A signal that has arrived since the last call, without waiting.
    pub async fn arrived(&mut self) -> Option<&'static str> {
        tokio::select! {
            biased;
            s = self.recv() => Some(s),
            () = std::future::ready(()) => None,
        }
    }
}

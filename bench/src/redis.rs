//! A throwaway redis-server on a free loopback port, for the chat nodes' shared state.

use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Stopped on drop.
pub struct Redis {
    pub url: String,
    child: Child,
}

impl Redis {
    /// The server's process id (to count its CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> anyhow::Result<Redis> {
        let port = crate::targets::free_port()?;
        let child = crate::child::command("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let mut redis = Redis {
            url: format!("redis://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(redis);
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                bail!("redis-server exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redis-server did not listen on port {port}")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

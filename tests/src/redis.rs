//! A real `redis-server` on a free port, without persistence, for tests that run chat nodes
//! as a cluster; killed on drop.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{free_port, kill_and_reap, stop_until_dropped, Stopped, START_TIMEOUT};
use crate::wait::POLL;

/// A running `redis-server`.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// If `redis-server` is not installed (`scripts/install-deps.sh` installs it) or does not
    /// start within [`START_TIMEOUT`] on any of a few ports.
    pub fn start() -> RedisServer {
        crate::procs::init();
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::start_on(free_port()) {
                Ok(server) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn start_on(port: u16) -> Result<RedisServer, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("spawning redis-server (run scripts/install-deps.sh to install it): {e}")
            })?;
        let mut server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ping(port) {
                return Ok(server);
            }
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                server.child = None;
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            std::thread::sleep(POLL);
        }
        Err(format!(
            "redis-server on port {port} did not answer PING in time"
        ))
    }

    /// Kills it (SIGKILL): an outage. [`restart`](Self::restart) brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts it again on the same port, empty (it keeps nothing), and waits until it
    /// answers `PING`.
    ///
    /// # Panics
    /// If it does not start within [`START_TIMEOUT`].
    pub fn restart(&mut self) {
        self.stop();
        match Self::start_on(self.port) {
            Ok(mut server) => self.child = server.child.take(),
            Err(error) => panic!("restarting redis-server: {error}"),
        }
    }

    /// SIGSTOP: a stalled Redis. Its connections stay open and the kernel buffers the
    /// commands sent to it, which it runs when the returned guard is dropped (SIGCONT), a
    /// panicking test's included: a command whose client gave up waiting still runs.
    pub fn freeze(&self) -> Stopped<'_> {
        stop_until_dropped(self.child.as_ref())
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

impl RedisServer {
    /// Runs one command whose reply is one line (an integer, a status, an error), e.g.
    /// `HSET` or `HEXISTS`, and returns that line (`:1`, `+OK`, `-ERR …`).
    ///
    /// # Panics
    /// If Redis does not answer within [`STEP_TIMEOUT`](crate::STEP_TIMEOUT).
    pub fn command(&self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            let _ = write!(request, "${}\r\n{arg}\r\n", arg.len());
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to redis");
        stream
            .set_read_timeout(Some(crate::STEP_TIMEOUT))
            .expect("a read timeout");
        stream
            .write_all(request.as_bytes())
            .expect("sending a command to redis");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("reading redis's reply");
            line.push(byte[0]);
        }
        line.truncate(line.len() - 2);
        String::from_utf8_lossy(&line).into_owned()
    }
}

impl RedisServer {
    /// How many times Redis has run `command` (lower case, e.g. `evalsha`) since it
    /// started or since `CONFIG RESETSTAT`: `INFO commandstats`.
    ///
    /// # Panics
    /// If Redis does not answer within [`STEP_TIMEOUT`](crate::STEP_TIMEOUT).
    pub fn calls(&self, command: &str) -> u64 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to redis");
        stream
            .set_read_timeout(Some(crate::STEP_TIMEOUT))
            .expect("a read timeout");
        stream
            .write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            .expect("sending INFO to redis");
        // A bulk string: `$<length>`, then the text and its CRLF.
        let mut header = Vec::new();
        let mut byte = [0u8; 1];
        while !header.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("reading redis's reply");
            header.push(byte[0]);
        }
        let length: usize = std::str::from_utf8(&header[1..header.len() - 2])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("INFO's reply: {header:?}"));
        let mut text = vec![0u8; length + 2];
        stream.read_exact(&mut text).expect("reading INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// From now on clients may write only the keys matching `pattern` (a Redis glob);
    /// every key stays readable: the ACL of the `default` user, which every client
    /// without credentials is, connected ones included. A write of another key is refused
    /// (`NOPERM`), a script's before it runs. [`all_keys_writable`](Self::all_keys_writable)
    /// lifts it.
    ///
    /// # Panics
    /// If Redis refuses the rule.
    pub fn writable_keys_only(&self, pattern: &str) {
        // One command: the rules change together, no write is refused in between.
        let writable = format!("~{pattern}");
        let reply = self.command(&["ACL", "SETUSER", "default", "resetkeys", "%R~*", &writable]);
        assert_eq!(
            reply, "+OK",
            "ACL SETUSER default resetkeys %R~* {writable}"
        );
    }

    /// Every key writable again (after [`writable_keys_only`](Self::writable_keys_only)).
    ///
    /// # Panics
    /// If Redis refuses the rule.
    pub fn all_keys_writable(&self) {
        let reply = self.command(&["ACL", "SETUSER", "default", "resetkeys", "~*"]);
        assert_eq!(reply, "+OK", "ACL SETUSER ~*");
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

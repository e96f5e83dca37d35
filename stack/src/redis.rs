//! Which Redis the chat nodes use: the one given with `--redis`; else a private
//! `redis-server` started for this run when one is installed (own directory, no persistence,
//! stopped at exit); else none, and the nodes run in-process on the embedded default.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::children::{self, Exit, Supervised};
use crate::ports;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// `--redis URL`.
    Given(String),
    /// A private `redis-server` (this binary).
    Private(PathBuf),
    /// No Redis: nodes in-process; the reason, for the banner.
    Embedded(&'static str),
}

/// Decides from the flags and what is installed.
pub fn choose(given: Option<&str>, no_redis: bool) -> Choice {
    match (given, no_redis) {
        (Some(url), _) => Choice::Given(url.to_owned()),
        (None, true) => Choice::Embedded("--no-redis was given"),
        (None, false) => match find_in_path("redis-server") {
            Some(bin) => Choice::Private(bin),
            None => Choice::Embedded("no redis-server is installed"),
        },
    }
}

/// `url` with the password of its user information replaced by `***`, for the banner and the
/// logs: `redis://:secret@host:6379` shows as `redis://:***@host:6379`. A user name alone
/// stays.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

/// The first executable `name` on `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Starts `redis-server` on a free 127.0.0.1 port with its files in `dir` and no persistence;
/// returns it and its URL once it answers `PING`.
pub async fn start_private(
    bin: &Path,
    dir: &Path,
    timeout: Duration,
    exits: mpsc::UnboundedSender<Exit>,
) -> Result<(Supervised, String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = ports::free_local_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--loglevel", "warning", "--dir"])
        .arg(dir);
    let spawned = children::spawn("redis", cmd, exits)?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + timeout;
    loop {
        if ping(&addr).await {
            return Ok((spawned.child, format!("redis://{addr}")));
        }
        if Instant::now() >= deadline {
            spawned.child.stop(Duration::from_secs(2)).await;
            bail!("the private redis-server on {addr} did not answer PING within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a Redis at `addr` answers `PING` with `+PONG`.
async fn ping(addr: &str) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_win_over_what_is_installed() {
        assert_eq!(
            choose(Some("redis://h:1"), false),
            Choice::Given("redis://h:1".into())
        );
        assert!(matches!(choose(None, true), Choice::Embedded(_)));
        let auto = choose(None, false);
        match find_in_path("redis-server") {
            Some(bin) => assert_eq!(auto, Choice::Private(bin)),
            None => assert!(matches!(auto, Choice::Embedded(_))),
        }
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redacted("rediss://app:p@ss:w0rd@h:1"),
            "rediss://app:***@h:1"
        );
        assert_eq!(redacted("redis://app@h:1"), "redis://app@h:1");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("not a url"), "not a url");
    }

    #[test]
    fn find_in_path_finds_sh_only() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-switchyard").is_none());
    }
}

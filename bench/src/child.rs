//! The processes bench starts (backends, proxies, chat nodes, redis-server) end with it, even
//! when bench itself is killed with SIGKILL, which runs no destructor and no signal handler:
//! each child asks the kernel for SIGTERM when bench goes away (`PR_SET_PDEATHSIG`).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sys::signal::Signal;

/// A `Command` for `program` whose process gets SIGTERM when bench exits for any reason.
///
/// SIGTERM rather than SIGKILL: nginx's master and the Node.js cluster's primary then stop
/// their own workers, which a SIGKILL would leave behind. The signal survives `taskset`'s
/// exec. Bench spawns from its main thread and its runtime's workers, which live as long as
/// bench does: the kernel sends the signal when the spawning *thread* exits, so a short-lived
/// thread must never call this.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls (prctl, getppid), both async-signal-safe; it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // bench died between fork and prctl: nothing will send the signal now.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("bench exited while starting a child"));
            }
            Ok(())
        });
    }
    cmd
}

/// `words` as one line a POSIX shell reads back as the same words (for the report's
/// "exact commands").
pub fn shell_line<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words.into_iter().collect();
    shlex::try_join(words.iter().copied()).unwrap_or_else(|_| words.join(" "))
}

//! CPU affinity of whole processes: the proxy under test on one CPU, and, with `--isolate`,
//! everything bench runs itself (load generator, backends, chat nodes) on the others.

use anyhow::Context as _;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Sets the affinity of every thread of `pid` to `cpus`; threads and processes started later
/// inherit it from the thread that starts them.
pub fn set_threads(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    }
    let tasks = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let tid = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok());
        if let Some(tid) = tid {
            // A thread may have ended since the listing.
            let _ = sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
        }
    }
    Ok(())
}

/// The CPUs this process may run on, in order (all CPUs when the kernel will not say).
pub fn allowed() -> Vec<usize> {
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..online()).collect(),
    }
}

/// The machine's online CPUs, whatever this process's own affinity.
pub fn online() -> usize {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

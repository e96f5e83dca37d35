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

/// The CPUs this process may run on, as the kernel lists them (`0-1`, `0,2-3`).
pub fn allowed_self() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// The machine's online CPUs, whatever this process's own affinity.
pub fn online() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| count_list(list.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts the CPUs of a kernel CPU list (`0-3,6`); `None` when it does not parse.
fn count_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::count_list;

    #[test]
    fn counts_kernel_cpu_lists() {
        assert_eq!(count_list("0"), Some(1));
        assert_eq!(count_list("0-1"), Some(2));
        assert_eq!(count_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_list("3-1"), None);
        assert_eq!(count_list("x"), None);
        assert_eq!(count_list(""), None);
    }
}

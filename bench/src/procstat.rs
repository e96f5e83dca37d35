//! CPU time and resident memory of a process and its children, read from /proc.

use std::fs;

/// Kernel clock ticks per second for /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of `pid` and of its direct children (nginx's workers).
pub fn cpu_seconds(pid: u32) -> f64 {
    let mut total = own_cpu(pid).unwrap_or(0.0);
    for child in children(pid) {
        total += own_cpu(child).unwrap_or(0.0);
    }
    total
}

/// Resident set size in KiB of `pid` plus its direct children.
pub fn rss_kib(pid: u32) -> u64 {
    let mut total = own_rss(pid).unwrap_or(0);
    for child in children(pid) {
        total += own_rss(child).unwrap_or(0);
    }
    total
}

fn own_cpu(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

fn own_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(list) = fs::read_to_string(path) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Total memory of the machine in MiB, from /proc/meminfo.
pub fn mem_total_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        assert!(cpu_seconds(me) >= 0.0);
        assert!(mem_total_mib() > 0);
    }
}

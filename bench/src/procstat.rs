//! CPU time and resident memory of a process and its children, read from /proc.

use std::fs;

/// Kernel clock ticks per second for `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Below this many CPU seconds a count per CPU-second is not reported: /proc counts CPU
/// time in 10 ms ticks, so a measurement that used 0.03 s could have used 0.02 or 0.04
/// (a short open loop gave 6667, 10000 and 20000 requests per CPU-second for the same
/// work). At 0.1 s the tick is 10% of the total; a longer --duration gets more.
pub const MIN_CPU_SECONDS: f64 = 0.1;

/// Below this many CPU seconds (100 ticks) a per-CPU-second figure is marked low-precision:
/// one tick is then more than 1% of it (17 ticks, a low open-loop rate over a short
/// --duration, gave a figure that one tick more or less moves by 6%).
pub const PRECISE_CPU_SECONDS: f64 = 1.0;

/// Whether a figure divided by `cpu` seconds rests on too few ticks to be precise.
pub fn low_precision(cpu: f64) -> bool {
    cpu < PRECISE_CPU_SECONDS
}

/// /proc ticks in `cpu` seconds.
pub fn ticks(cpu: f64) -> f64 {
    (cpu * TICKS_PER_SEC).round()
}

/// `count` per CPU second, or None when `cpu` is too little to divide by.
pub fn per_cpu_second(count: f64, cpu: f64) -> Option<f64> {
    (cpu >= MIN_CPU_SECONDS).then(|| count / cpu)
}

/// The note for a report whose per-CPU-second columns may be `-`.
pub fn coarse_cpu_note() -> String {
    format!(
        "A per-CPU-second figure shown as `-` had less than {MIN_CPU_SECONDS} CPU-second to \
         divide by: /proc counts CPU time in 10 ms ticks, so it would be off by more than 10% \
         (a longer --duration or a higher rate measures it); one marked {LOW_PRECISION} had \
         less than {PRECISE_CPU_SECONDS} (the number of ticks is in results.json as \
         `<column>_cpu_ticks`)."
    )
}

/// How a per-CPU-second cell on fewer than 100 ticks is marked.
pub const LOW_PRECISION: &str = "(low precision)";

/// The mark of a per-CPU-second column `key` (see `set_per_cpu`).
pub fn low_precision_mark(key: &str) -> crate::report::Mark {
    crate::report::Mark {
        key: format!("{key}_low_precision"),
        text: LOW_PRECISION.to_owned(),
        legend: format!(
            "the CPU time divided by was under {PRECISE_CPU_SECONDS} CPU-second (100 /proc \
             ticks of 10 ms), so each tick moves the figure by more than 1%; a longer \
             --duration measures it more precisely"
        ),
    }
}

/// Sets `key` to `count` per CPU-second of `cpu` (when there is enough to divide by),
/// with the ticks it rests on and whether they are too few for precision.
pub fn set_per_cpu(r: &mut crate::report::RunResult, key: &str, count: f64, cpu: f64) {
    if let Some(per) = per_cpu_second(count, cpu) {
        r.set(key, per);
        r.set(&format!("{key}_cpu_ticks"), ticks(cpu));
        r.set(
            &format!("{key}_low_precision"),
            f64::from(u8::from(low_precision(cpu))),
        );
    }
}

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
    let rest = stat.get(stat.rfind(')')? + 2..)?;
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

    #[test]
    fn too_little_cpu_gives_no_ratio() {
        // 200 requests in 3 ticks: 6667/s, but 2 or 4 ticks would give 10000 or 5000.
        assert_eq!(per_cpu_second(200.0, 0.03), None);
        assert_eq!(per_cpu_second(0.0, 0.0), None);
        assert_eq!(per_cpu_second(5000.0, 0.1), Some(50000.0));
    }

    #[test]
    fn a_figure_on_fewer_than_100_ticks_is_marked() {
        let mut r = crate::report::RunResult::default();
        set_per_cpu(&mut r, "req_per_cpu_s", 1700.0, 0.17);
        assert_eq!(r.metric("req_per_cpu_s"), Some(10000.0));
        assert_eq!(r.metric("req_per_cpu_s_cpu_ticks"), Some(17.0));
        assert_eq!(r.metric("req_per_cpu_s_low_precision"), Some(1.0));
        set_per_cpu(&mut r, "req_per_cpu_s", 25000.0, 2.5);
        assert_eq!(r.metric("req_per_cpu_s_low_precision"), Some(0.0));
        // Too little to divide by: nothing at all.
        let mut none = crate::report::RunResult::default();
        set_per_cpu(&mut none, "req_per_cpu_s", 10.0, 0.02);
        assert!(none.metrics.is_empty());
    }
}

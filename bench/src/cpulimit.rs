//! A CPU budget shared by a group of processes: a cgroup with a CFS bandwidth quota.
//!
//! Two chat clusters compare "at equal CPU" most directly when each gets the same budget and
//! the one that sustains more load within it wins. Dividing deliveries by CPU seconds at one
//! offered load is only a proxy for that: an event loop that has fallen behind handles many
//! messages per wake-up and looks cheaper per message while its latency runs into seconds.
//!
//! cgroup v1 (`cpu.cfs_quota_us`, as on hybrid hosts) or v2 (`cpu.max`); creating one needs
//! write access to the cgroup file system (root, or a delegated subtree).
//!
//! The group's processes are also pinned to one CPU. Each CPU's run queue draws its share of
//! the quota in 5 ms slices (`sched_cfs_bandwidth_slice_us`): with 0.4 CPU of a 10 ms period
//! (4 ms), one slice is more than the whole budget, and processes running on another CPU
//! were held back while the group was nearly idle (the Node.js cluster showed a p99 of
//! 40-70 ms at 5% CPU). On one run queue the budget is simply 40% of that CPU.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// A short period keeps the stalls of a group that used up its budget short (a 100 ms
/// period stalls it for up to 60 ms at 0.4 CPU, which then dominates any latency bound).
const PERIOD_US: u64 = 10_000;

const V1_ROOT: &str = "/sys/fs/cgroup/cpu";
const V2_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup limited to some CPUs; removed on drop (once its processes are gone).
#[derive(Debug)]
pub struct CpuLimit {
    dir: PathBuf,
    pub cpus: f64,
    /// The CPU its processes run on, if pinned.
    pin: Option<usize>,
}

impl CpuLimit {
    /// Creates a cgroup limited to `cpus` CPUs (e.g. 0.5: half of one core's time), whose
    /// processes run on CPU `pin` (then `cpus` must not exceed 1).
    pub fn create(cpus: f64, pin: Option<usize>) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !(cpus.is_finite() && cpus >= 0.01 && cpus <= cores as f64) {
            bail!("--cpu-limit {cpus}: give a number of CPUs between 0.01 and {cores}");
        }
        if pin.is_some() && cpus > 1.0 {
            bail!(
                "--cpu-limit {cpus}: the nodes are pinned to one CPU, give at most 1 (or --no-pin)"
            );
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "switchyard-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
        let limit = if Path::new(V1_ROOT).join("cpu.cfs_quota_us").exists() {
            remove_stale(Path::new(V1_ROOT));
            let dir = Path::new(V1_ROOT).join(&name);
            create_dir(&dir)?;
            let limit = CpuLimit { dir, cpus, pin };
            limit.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            limit.write("cpu.cfs_quota_us", &quota.to_string())?;
            limit
        } else if cpu_controller_v2() {
            // A v2 child only gets the cpu files when its parent delegates the controller.
            let _ = std::fs::write(Path::new(V2_ROOT).join("cgroup.subtree_control"), "+cpu");
            remove_stale(Path::new(V2_ROOT));
            let dir = Path::new(V2_ROOT).join(&name);
            create_dir(&dir)?;
            let limit = CpuLimit { dir, cpus, pin };
            limit.write("cpu.max", &format!("{quota} {PERIOD_US}"))?;
            limit
        } else {
            bail!(
                "--cpu-limit needs the cgroup cpu controller ({V1_ROOT}/cpu.cfs_quota_us or \
                 {V2_ROOT}/cgroup.controllers listing `cpu`); neither is here"
            );
        };
        Ok(limit)
    }

    /// Moves a process (all its threads) into the group, and onto its CPU.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        self.write("cgroup.procs", &pid.to_string())?;
        if let Some(cpu) = self.pin {
            crate::affinity::set_threads(pid, &[cpu])?;
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // A process that outlives the group's users (the shared redis-server) goes back to
        // the parent group, or the kernel would refuse to remove this one.
        if let (Ok(procs), Some(parent)) = (
            std::fs::read_to_string(self.dir.join("cgroup.procs")),
            self.dir.parent(),
        ) {
            for pid in procs.lines() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        // The kernel refuses while a just-killed process is still leaving the group.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: could not remove the cgroup {}", self.dir.display());
    }
}

/// Removes the groups of earlier bench processes that are gone: one killed with SIGKILL
/// could not remove its own. A group is removed only once empty (its processes got their
/// SIGTERM with bench, see `crate::child`), which the kernel checks.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("switchyard-bench-"))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(dir).with_context(|| {
        format!(
            "creating the cgroup {} for --cpu-limit (needs write access to the cgroup file \
             system, e.g. root)",
            dir.display()
        )
    })
}

fn cpu_controller_v2() -> bool {
    std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
}

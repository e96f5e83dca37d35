//! The report of one scenario: results.json, report.md, SVG charts and the terminal table.

pub mod charts;
pub mod compare;
mod markdown;
pub mod meta;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::load::http::Bucket;
use crate::stats::{Fairness, Percentiles};

/// One measured number shown as a column: key in `metrics`, header, decimals, and the
/// marks its cells can carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    pub key: String,
    pub header: String,
    pub decimals: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<Mark>,
}

/// A qualification of a cell: `text` follows the number when the target's metric `key` is
/// above 0 (a flag such as `open5000_saturated`), and `legend` explains it under the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub key: String,
    pub text: String,
    pub legend: String,
}

pub fn col(key: &str, header: &str, decimals: usize) -> Column {
    Column {
        key: key.to_owned(),
        header: header.to_owned(),
        decimals,
        marks: Vec::new(),
    }
}

impl Column {
    /// The column with `mark` on the cells of targets whose `mark.key` is set.
    pub fn marked(mut self, mark: Mark) -> Column {
        self.marks.push(mark);
        self
    }
}

/// `200, 1000` for a description (not Rust's `[200, 1000]`).
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A timeline: (seconds since start, successes/s, errors/s).
pub type Timeline = Vec<(f64, f64, f64)>;

/// One measurement of one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(deserialize_with = "crate::stats::metrics_null_as_nan")]
    pub metrics: BTreeMap<String, f64>,
    pub per_backend: Vec<f64>,
    pub latency: Option<Percentiles>,
    /// Throughput/error timeline (time in s, ok/s, errors/s).
    pub timeline: Timeline,
    /// Free-form points for a scenario chart (ws-hold: connections → RSS MiB).
    pub curve: Vec<(f64, f64)>,
    pub details: serde_json::Value,
    /// What bench did to the backends during the run (failover: `kill b1` at 1.0 s), in the
    /// timeline's seconds: drawn on it, so that a dip can be read against its cause.
    /// Absent from reports written before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<(f64, String)>,
}

impl RunResult {
    pub fn set(&mut self, key: &str, value: f64) {
        self.metrics.insert(key.to_owned(), value);
    }

    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }
}

/// Turns HTTP buckets into a (t, ok/s, errors/s) timeline.
pub fn timeline_of(buckets: &[Bucket], bucket_secs: f64) -> Timeline {
    buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                i as f64 * bucket_secs,
                b.ok as f64 / bucket_secs,
                b.errors as f64 / bucket_secs,
            )
        })
        .collect()
}

/// Everything about one target over the runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    /// `ok`, or why it did not run (`n/a (...)`, `skipped (...)`, `failed: ...`).
    pub status: String,
    /// Runs that failed (`run 2: …`); with status `ok` the medians are over the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub command: String,
    /// Medians over the runs.
    #[serde(deserialize_with = "crate::stats::metrics_null_as_nan")]
    pub metrics: BTreeMap<String, f64>,
    pub per_backend: Vec<f64>,
    pub fairness: Fairness,
    pub latency: Option<Percentiles>,
    pub runs: Vec<RunResult>,
}

impl TargetReport {
    /// A target that ran, with one run per value of `key` (no medians: tests set or
    /// derive those themselves).
    #[cfg(test)]
    pub fn with_runs(name: &str, key: &str, values: &[f64]) -> Self {
        let mut t = TargetReport::unavailable(name.to_owned(), "ok".to_owned());
        t.runs = values
            .iter()
            .map(|&v| {
                let mut r = RunResult::default();
                r.set(key, v);
                r
            })
            .collect();
        t
    }

    pub fn unavailable(target: String, status: String) -> Self {
        TargetReport {
            target,
            status,
            errors: Vec::new(),
            command: String::new(),
            metrics: BTreeMap::new(),
            per_backend: Vec::new(),
            fairness: Fairness::default(),
            latency: None,
            runs: Vec::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }
}

/// A table as plain text: the first column left-aligned, the others right-aligned.
pub fn aligned(headers: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .chain([headers[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut s = line(headers);
    s.push('\n');
    for r in rows {
        s.push_str(&line(r));
        s.push('\n');
    }
    s
}

/// Whether a target's per-backend counts say something about balancing: `direct` talks to
/// the first backend only, and its row (all on b1, Jain 0.33, max/min inf) in the
/// distribution table and chart read as the worst balancer of all.
pub fn balanced(t: &TargetReport) -> bool {
    t.target.split([' ', ':']).next() != Some("direct")
}

/// A goal from the issue, checked against the measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub goal: String,
    pub measured: String,
    /// None when it could not be evaluated (a target missing).
    pub met: Option<bool>,
}

/// A report of a run that did not make all its measurements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// Measurements finished (each target in each run), of `total`.
    pub done: usize,
    pub total: usize,
    /// The signal that stopped the run. None in the report written after each measurement
    /// while the run goes on: one that stays so was left by a bench that was killed
    /// (SIGKILL, out of memory, the machine gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<String>,
}

impl Partial {
    /// The line report.md opens with.
    pub fn describe(&self) -> String {
        let Partial { done, total, .. } = self;
        match &self.interrupted_by {
            Some(sig) => format!(
                "**Partial report**: interrupted by {sig} after {done} of {total} \
                 measurements; the medians are over the runs that finished."
            ),
            None => format!(
                "**Partial report**: {done} of {total} measurements done. bench rewrites \
                 this report after each measurement; one left partial is from a run that \
                 was killed before it ended. The medians are over the runs that finished."
            ),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Set while the run goes on and when it was interrupted; absent from a complete report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    pub scenario: String,
    pub description: String,
    pub meta: serde_json::Value,
    pub columns: Vec<Column>,
    pub backends: Vec<String>,
    pub targets: Vec<TargetReport>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub charts: Vec<String>,
}

/// A report folder locked for one bench, until dropped.
pub type FolderLock = nix::fcntl::Flock<std::fs::File>;

/// Locks the report folder `dir` for this process; None when another holds it (a bench
/// measuring into it, or redrawing it). The lock is the kernel's (flock on the folder), so a
/// killed bench leaves none behind, and children do not inherit it (std opens files
/// close-on-exec).
pub fn lock_folder(dir: &Path) -> std::io::Result<Option<FolderLock>> {
    let file = std::fs::File::open(dir)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// How the note of charts that could not be drawn begins.
const NO_CHARTS: &str = "No charts:";

/// Replaces `path` with `bytes` such that a reader, or a bench killed at any moment, finds
/// the old file or the new one and never part of one: the bytes go to a file beside it (same
/// file system, so the rename is atomic), reach the disk, then take its name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        // Without it a machine that goes down can leave the new name on an empty file.
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // A full disk keeps no half-written copy.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself survives a machine that goes down once the folder is synced; a
    // folder that cannot be opened for it still has the new file.
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Default report folder: `bench/results/<date>-<time>-<scenario>/`.
pub fn default_out(scenario: &str) -> PathBuf {
    let date = chrono::Local::now().format("%Y-%m-%d-%H%M%S");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    root.join(format!("{date}-{scenario}"))
}

impl Report {
    /// A complete `http` report of `targets` with nothing else in it, for tests.
    #[cfg(test)]
    pub(crate) fn of(targets: Vec<TargetReport>) -> Report {
        Report {
            partial: None,
            scenario: "http".into(),
            description: String::new(),
            meta: serde_json::json!({}),
            columns: Vec::new(),
            backends: Vec::new(),
            targets,
            checks: Vec::new(),
            notes: Vec::new(),
            charts: Vec::new(),
        }
    }

    /// Reads the results.json of an earlier run.
    pub fn read(dir: &Path) -> anyhow::Result<Report> {
        let path = dir.join("results.json");
        let json = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes results.json, the charts and report.md into `out`.
    pub fn write(&mut self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // A report read back (`bench redraw`) holds the note of its last write's charts:
        // this write's charts replace it.
        self.notes.retain(|n| !n.starts_with(NO_CHARTS));
        // Without charts the numbers are still worth writing.
        self.charts = match charts::draw_all(self, out) {
            Ok(files) => files,
            Err(e) => {
                eprintln!("bench: no charts: {e:#}");
                self.notes.push(format!("{NO_CHARTS} {e:#}"));
                Vec::new()
            }
        };
        // The charts first: when results.json is new, so is everything it lists. Then
        // results.json, the data, and report.md, drawn from it, last: a bench killed (or a
        // disk filled) between the two leaves report.md a step behind its data, which
        // `bench redraw` brings level, rather than a report showing a measurement whose
        // data is lost.
        let json = serde_json::to_string_pretty(self).context("serialising the results")?;
        write_atomic(&out.join("results.json"), json.as_bytes()).context("writing results.json")?;
        write_atomic(&out.join("report.md"), markdown::render(self).as_bytes())
            .context("writing report.md")?;
        Ok(())
    }

    /// Whether a target that ran shows `-` for a per-CPU-second column (too few /proc
    /// ticks to divide by); `direct` has no proxy CPU to divide by at all.
    fn cpu_figure_dropped(&self) -> bool {
        self.columns
            .iter()
            .filter(|c| c.key.contains("_per_cpu_s"))
            .any(|c| {
                self.targets
                    .iter()
                    .any(|t| t.ok() && t.target != "direct" && !t.metrics.contains_key(&c.key))
            })
    }

    /// The summary table as aligned plain text.
    pub fn terminal_table(&self) -> String {
        let (headers, rows) = markdown::table_cells(self);
        let mut s = aligned(&headers, &rows);
        for line in markdown::legends(self) {
            s.push_str(&line);
            s.push('\n');
        }
        // report.md explains a per-CPU-second `-` in its notes; the terminal showed the
        // dash alone, which reads as "not applicable" for a proxy that did run.
        let coarse = crate::procstat::coarse_cpu_note();
        if self.notes.contains(&coarse) && self.cpu_figure_dropped() {
            s.push_str(&coarse);
            s.push('\n');
        }
        for t in self.targets.iter().filter(|t| !t.ok()) {
            s.push_str(&format!("{}: {}\n", t.target, t.status));
        }
        for line in markdown::failed_runs(self) {
            s.push_str(&line);
            s.push('\n');
        }
        for c in &self.checks {
            let mark = match c.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            };
            s.push_str(&format!("[{mark}] {} — {}\n", c.goal, c.measured));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_cpu_figure_is_explained_on_the_terminal() {
        let row = |name: &str, per_cpu: Option<f64>| {
            let mut t = TargetReport::unavailable(name.into(), "ok".into());
            t.metrics.insert("rps".into(), 100.0);
            if let Some(v) = per_cpu {
                t.metrics.insert("req_per_cpu_s".into(), v);
            }
            t
        };
        let table = |targets| {
            let mut r = Report::of(targets);
            r.columns = vec![col("rps", "rps", 0), col("req_per_cpu_s", "req/CPU-s", 0)];
            r.notes = vec![crate::procstat::coarse_cpu_note()];
            r.terminal_table()
        };
        let why = "A per-CPU-second figure shown as `-`";
        let text = table(vec![
            row("direct", None),
            row("nginx:round_robin", Some(5.0)),
        ]);
        assert!(!text.contains(why), "{text}");
        let text = table(vec![row("direct", None), row("nginx:round_robin", None)]);
        assert!(text.contains(why), "{text}");
    }

    #[test]
    fn a_file_is_replaced_whole_and_no_copy_is_left() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("results.json");
        write_atomic(&path, b"first").expect("first write");
        write_atomic(&path, b"second").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["results.json"]);
        // Nowhere to write: an error, and the folder is not made.
        let gone = tmp.path().join("gone/results.json");
        assert!(write_atomic(&gone, b"x").is_err());
        assert!(!tmp.path().join("gone").exists());
    }

    #[test]
    fn a_write_cut_between_its_files_leaves_the_data_ahead_of_the_report() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut report = Report::of(Vec::new());
        report.notes = vec!["first measurement".into()];
        report.write(tmp.path()).expect("first write");
        // report.md's temp file cannot be made: the write stops between the two files, as
        // a bench killed there would.
        let blocker = tmp.path().join(".report.md.tmp");
        std::fs::create_dir(&blocker).expect("mkdir");
        report.notes = vec!["second measurement".into()];
        assert!(report.write(tmp.path()).is_err());
        let read = |name: &str| std::fs::read_to_string(tmp.path().join(name)).expect("read");
        assert!(read("results.json").contains("second measurement"));
        assert!(read("report.md").contains("first measurement"));
        // What `bench redraw` does brings the report level with its data.
        std::fs::remove_dir(&blocker).expect("rmdir");
        Report::read(tmp.path())
            .expect("read back")
            .write(tmp.path())
            .expect("redraw");
        assert!(read("report.md").contains("second measurement"));
    }

    #[test]
    fn a_redrawn_report_keeps_one_note_of_its_charts() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut t = TargetReport::unavailable("switchyard:round_robin".into(), "ok".into());
        t.latency = Some(Percentiles::default());
        let mut report = Report::of(vec![t]);
        report.notes = vec!["a scenario's note".into()];
        // A folder in the chart's way: it cannot be drawn.
        let blocker = tmp.path().join(".latency.svg.tmp");
        std::fs::create_dir(&blocker).expect("mkdir");
        let no_charts = |r: &Report| r.notes.iter().filter(|n| n.starts_with(NO_CHARTS)).count();
        report.write(tmp.path()).expect("first write");
        let mut again = Report::read(tmp.path()).expect("read back");
        again.write(tmp.path()).expect("redraw");
        assert_eq!(no_charts(&again), 1, "{:?}", again.notes);
        // Drawn at last: the note goes.
        std::fs::remove_dir(&blocker).expect("rmdir");
        let mut last = Report::read(tmp.path()).expect("read back");
        if charts::draw_all(&last, tmp.path()).is_ok() {
            last.write(tmp.path()).expect("redraw");
            assert_eq!(no_charts(&last), 0, "{:?}", last.notes);
            assert_eq!(last.charts, ["latency.svg"]);
        }
        assert!(last.notes.contains(&"a scenario's note".to_owned()));
    }

    #[test]
    fn the_partial_mark_reads_back() {
        let p = Partial {
            done: 3,
            total: 8,
            interrupted_by: None,
        };
        assert!(p
            .describe()
            .starts_with("**Partial report**: 3 of 8 measurements done."));
        let json = serde_json::to_value(&p).expect("serialise");
        assert_eq!(json, serde_json::json!({"done": 3, "total": 8}));
        let back: Partial = serde_json::from_value(json).expect("parse");
        assert_eq!(back, p);
    }
}

//! `bench compare`: two reports of one scenario side by side, for a before and after (two
//! builds, two configs, two machines). Each target both measured, metric by metric: the
//! two medians, their ratio, the range of each one's runs, and whether the change goes
//! beyond those ranges. On a shared machine runs of one build spread by 10–30%: a change
//! whose ranges overlap is not shown to be a change, whatever its ratio.

use std::path::Path;

use anyhow::bail;

use super::{aligned, Column, Report, TargetReport};

/// What the runs of two measurements say about a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every run after is above every run before.
    Higher,
    /// Every run after is below every run before.
    Lower,
    /// The ranges of the runs overlap.
    WithinSpread,
    /// The same median and the same range of runs.
    Same,
    /// Different, but one side has this many runs, fewer than `MIN_RUNS`: too few to know
    /// their spread.
    TooFewRuns(usize),
}

/// Runs each side needs before a difference can be judged against the spread: one run has
/// none, and two say little about it.
pub const MIN_RUNS: usize = 3;

impl Verdict {
    fn word(self) -> String {
        match self {
            Verdict::Higher => "higher".into(),
            Verdict::Lower => "lower".into(),
            Verdict::WithinSpread => "within the spread".into(),
            Verdict::Same => "same".into(),
            Verdict::TooFewRuns(0) => "n/a (no runs)".into(),
            Verdict::TooFewRuns(1) => "n/a (1 run)".into(),
            Verdict::TooFewRuns(n) => format!("n/a ({n} runs)"),
        }
    }
}

/// One metric of one target in both reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub target: String,
    pub metric: String,
    pub decimals: usize,
    pub before: f64,
    pub after: f64,
    /// The smallest and largest value of the runs (the median alone when runs are missing).
    pub before_runs: (f64, f64),
    pub after_runs: (f64, f64),
    pub verdict: Verdict,
}

/// The comparison of two reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// What differs between the two measurements besides the code (machine, command).
    pub caveats: Vec<String>,
    /// Targets not compared, and why.
    pub skipped: Vec<String>,
}

/// Compares `after` with `before`. Reports of two different scenarios cannot be compared.
pub fn compare(before: &Report, after: &Report) -> anyhow::Result<Comparison> {
    if before.scenario != after.scenario {
        bail!(
            "cannot compare a `{}` report with a `{}` report",
            before.scenario,
            after.scenario
        );
    }
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for a in &after.targets {
        let Some(b) = before.targets.iter().find(|b| b.target == a.target) else {
            skipped.push(format!("{}: only in the second report", a.target));
            continue;
        };
        if !b.ok() || !a.ok() {
            let why = if b.ok() { &a.status } else { &b.status };
            skipped.push(format!("{}: {why}", a.target));
            continue;
        }
        for c in after.columns.iter().filter(|c| has_column(before, c)) {
            if let Some(row) = row(b, a, c) {
                rows.push(row);
            }
        }
    }
    for b in &before.targets {
        if !after.targets.iter().any(|a| a.target == b.target) {
            skipped.push(format!("{}: only in the first report", b.target));
        }
    }
    Ok(Comparison {
        rows,
        caveats: caveats(before, after),
        skipped,
    })
}

fn has_column(r: &Report, c: &Column) -> bool {
    r.columns.iter().any(|x| x.key == c.key)
}

fn row(b: &TargetReport, a: &TargetReport, c: &Column) -> Option<Row> {
    let before = b.metric(&c.key).filter(|v| v.is_finite())?;
    let after = a.metric(&c.key).filter(|v| v.is_finite())?;
    let before_runs = range(b, &c.key).unwrap_or((before, before));
    let after_runs = range(a, &c.key).unwrap_or((after, after));
    let runs = runs_of(b, &c.key).min(runs_of(a, &c.key));
    let verdict = if before == after && before_runs == after_runs {
        Verdict::Same
    } else if runs < MIN_RUNS {
        // Two single runs always differ somewhat, and were called higher or lower.
        Verdict::TooFewRuns(runs)
    } else if after_runs.0 > before_runs.1 {
        Verdict::Higher
    } else if after_runs.1 < before_runs.0 {
        Verdict::Lower
    } else {
        Verdict::WithinSpread
    };
    Some(Row {
        target: a.target.clone(),
        metric: c.header.clone(),
        decimals: c.decimals,
        before,
        after,
        before_runs,
        after_runs,
        verdict,
    })
}

/// How many of a target's runs measured `key`.
fn runs_of(t: &TargetReport, key: &str) -> usize {
    t.runs
        .iter()
        .filter(|r| r.metric(key).is_some_and(f64::is_finite))
        .count()
}

/// The smallest and largest finite value of `key` over a target's runs.
fn range(t: &TargetReport, key: &str) -> Option<(f64, f64)> {
    t.runs
        .iter()
        .filter_map(|r| r.metric(key))
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
        })
}

/// The differences in how the two were measured that make a ratio mean less.
fn caveats(before: &Report, after: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for (key, what) in [
        ("cpu", "CPUs"),
        ("cores", "core counts"),
        ("kernel", "kernels"),
        ("proxy_workers", "proxy worker counts"),
    ] {
        let (b, a) = (&before.meta[key], &after.meta[key]);
        if b != a {
            out.push(format!("different {what}: {b} and {a}"));
        }
    }
    let (b, a) = (pinned(before), pinned(after));
    if b != a {
        out.push(format!("different proxy CPU pinning: {b} and {a}"));
    }
    let (b, a) = (options(before), options(after));
    if b != a {
        out.push(format!(
            "the commands differ: `{}` and `{}`",
            b.join(" "),
            a.join(" ")
        ));
    }
    out
}

/// The CPUs a report's proxy was pinned to; reports before `--workers` pinned as many
/// CPUs recorded one (or null) as `proxy_pinned_cpu`.
fn pinned(r: &Report) -> serde_json::Value {
    match (
        r.meta.get("proxy_pinned_cpus"),
        r.meta.get("proxy_pinned_cpu"),
    ) {
        (Some(list), _) => list.clone(),
        (None, Some(serde_json::Value::Null)) | (None, None) => serde_json::json!([]),
        (None, Some(one)) => serde_json::json!([one]),
    }
}

/// A report's command without the options that do not change what is measured.
fn options(r: &Report) -> Vec<String> {
    let line = r.meta["command"].as_str().unwrap_or_default();
    let words = shlex::split(line).unwrap_or_else(|| vec![line.to_owned()]);
    let mut out = Vec::new();
    let mut it = words.into_iter().skip(1);
    while let Some(w) = it.next() {
        match w.as_str() {
            "--out" => {
                it.next();
            }
            "--quiet" => {}
            _ if w.starts_with("--out=") => {}
            _ => out.push(w),
        }
    }
    out
}

impl Comparison {
    fn cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let headers = [
            "target",
            "metric",
            "first",
            "second",
            "second/first",
            "runs, first",
            "runs, second",
            "change",
        ]
        .map(str::to_owned)
        .to_vec();
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let n = |v: f64| format!("{v:.prec$}", prec = r.decimals);
                let span = |(lo, hi): (f64, f64)| format!("{}–{}", n(lo), n(hi));
                let ratio = if r.before != 0.0 {
                    format!("{:.2}×", r.after / r.before)
                } else {
                    "-".to_owned()
                };
                vec![
                    r.target.clone(),
                    r.metric.clone(),
                    n(r.before),
                    n(r.after),
                    ratio,
                    span(r.before_runs),
                    span(r.after_runs),
                    r.verdict.word(),
                ]
            })
            .collect();
        (headers, rows)
    }

    fn footer(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for c in &self.caveats {
            lines.push(format!("note: {c}"));
        }
        for s in &self.skipped {
            lines.push(format!("not compared: {s}"));
        }
        lines
    }

    /// Aligned plain text for the terminal.
    pub fn text(&self, first: &Path, second: &Path) -> String {
        let (headers, rows) = self.cells();
        let mut s = format!(
            "first: {}\nsecond: {}\n\n",
            first.display(),
            second.display()
        );
        s.push_str(&aligned(&headers, &rows));
        for line in self.footer() {
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    /// A Markdown table, for a results file or a pull request.
    pub fn markdown(&self, first: &Path, second: &Path) -> String {
        let (headers, rows) = self.cells();
        let mut s = format!(
            "First: `{}`, second: `{}`.\n\n| {} |\n|{}\n",
            first.display(),
            second.display(),
            headers.join(" | "),
            "---|".repeat(headers.len())
        );
        for r in rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        let footer = self.footer();
        if !footer.is_empty() {
            s.push('\n');
            for line in footer {
                s.push_str(&format!("- {line}\n"));
            }
        }
        s
    }
}

/// `bench compare <first> <second>`: prints the comparison of two report folders.
pub fn run(first: &Path, second: &Path, markdown: bool) -> anyhow::Result<()> {
    let before = Report::read(first)?;
    let after = Report::read(second)?;
    if before.partial.is_some() || after.partial.is_some() {
        eprintln!("bench: an interrupted report is compared on what it measured");
    }
    let c = compare(&before, &after)?;
    if markdown {
        print!("{}", c.markdown(first, second));
    } else {
        print!("{}", c.text(first, second));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::col;

    fn target(name: &str, runs: &[f64]) -> TargetReport {
        let mut t = TargetReport::with_runs(name, "rps", runs);
        t.metrics
            .insert("rps".to_owned(), crate::stats::median(runs));
        t
    }

    fn report(command: &str, cpu: &str, targets: Vec<TargetReport>) -> Report {
        Report {
            partial: None,
            scenario: "http".to_owned(),
            description: String::new(),
            meta: serde_json::json!({ "command": command, "cpu": cpu, "cores": 2 }),
            columns: vec![col("rps", "rps", 0)],
            backends: Vec::new(),
            targets,
            checks: Vec::new(),
            notes: Vec::new(),
            charts: Vec::new(),
        }
    }

    #[test]
    fn a_change_counts_only_beyond_the_spread_of_the_runs() {
        let before = report(
            "bench http --runs 3 --out a",
            "EPYC",
            vec![
                target("switchyard:round_robin", &[100.0, 110.0, 120.0]),
                target("nginx:round_robin", &[100.0, 105.0, 110.0]),
                target("haproxy:round_robin", &[100.0, 101.0, 102.0]),
            ],
        );
        let after = report(
            "bench http --runs 3 --out b --quiet",
            "EPYC",
            vec![
                // 1.09× the median, but its runs overlap the first's.
                target("switchyard:round_robin", &[115.0, 120.0, 125.0]),
                // Every run above every earlier one.
                target("nginx:round_robin", &[111.0, 112.0, 130.0]),
                // Every run below.
                target("haproxy:round_robin", &[90.0, 95.0, 99.0]),
            ],
        );
        let c = compare(&before, &after).expect("same scenario");
        let verdicts: Vec<(&str, Verdict)> = c
            .rows
            .iter()
            .map(|r| (r.target.as_str(), r.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("switchyard:round_robin", Verdict::WithinSpread),
                ("nginx:round_robin", Verdict::Higher),
                ("haproxy:round_robin", Verdict::Lower),
            ]
        );
        let r = &c.rows[0];
        assert_eq!((r.before, r.after), (110.0, 120.0));
        assert_eq!(
            (r.before_runs, r.after_runs),
            ((100.0, 120.0), (115.0, 125.0))
        );
        // Only --out and --quiet differ: nothing to warn about.
        assert!(c.caveats.is_empty(), "{:?}", c.caveats);
        let text = c.text(Path::new("a"), Path::new("b"));
        assert!(text.contains("1.09×"), "{text}");
        assert!(text.contains("100–120"), "{text}");
        assert!(text.contains("within the spread"), "{text}");
        let md = c.markdown(Path::new("a"), Path::new("b"));
        assert!(
            md.contains(
                "| nginx:round_robin | rps | 105 | 112 | 1.07× | 100–110 | 111–130 | higher |"
            ),
            "{md}"
        );
    }

    #[test]
    fn targets_in_one_report_only_or_not_run_are_named_not_compared() {
        let mut down = target("haproxy:round_robin", &[1.0]);
        down.status = "skipped (haproxy is not installed)".to_owned();
        let before = report(
            "bench http",
            "EPYC",
            vec![
                target("direct", &[5.0]),
                target("nginx:round_robin", &[1.0]),
                down,
            ],
        );
        let after = report(
            "bench http --runs 5",
            "Xeon",
            vec![
                target("direct", &[5.0]),
                target("haproxy:round_robin", &[1.0]),
                target("switchyard:round_robin", &[1.0]),
            ],
        );
        let c = compare(&before, &after).expect("same scenario");
        assert_eq!(c.rows.len(), 1, "{:?}", c.rows);
        assert_eq!(
            (c.rows[0].target.as_str(), c.rows[0].verdict),
            ("direct", Verdict::Same)
        );
        assert_eq!(
            c.skipped,
            [
                "haproxy:round_robin: skipped (haproxy is not installed)",
                "switchyard:round_robin: only in the second report",
                "nginx:round_robin: only in the first report",
            ]
        );
        assert_eq!(
            c.caveats,
            [
                "different CPUs: \"EPYC\" and \"Xeon\"",
                "the commands differ: `http` and `http --runs 5`",
            ]
        );
    }

    #[test]
    fn single_runs_are_not_called_higher_or_lower() {
        let before = report(
            "bench http --runs 1",
            "EPYC",
            vec![
                target("direct", &[100.0]),
                target("nginx:round_robin", &[100.0, 101.0]),
            ],
        );
        let after = report(
            "bench http --runs 1",
            "EPYC",
            vec![
                target("direct", &[150.0]),
                target("nginx:round_robin", &[200.0, 201.0, 202.0]),
            ],
        );
        let c = compare(&before, &after).expect("same scenario");
        let verdicts: Vec<Verdict> = c.rows.iter().map(|r| r.verdict).collect();
        assert_eq!(verdicts, [Verdict::TooFewRuns(1), Verdict::TooFewRuns(2)]);
        let text = c.text(Path::new("a"), Path::new("b"));
        assert!(
            text.contains("n/a (1 run)") && text.contains("n/a (2 runs)"),
            "{text}"
        );
        assert!(!text.contains("higher"), "{text}");
    }

    #[test]
    fn an_older_reports_single_pinned_cpu_reads_as_a_list() {
        let mut before = report("bench http", "EPYC", Vec::new());
        let mut after = report("bench http", "EPYC", Vec::new());
        before.meta["proxy_pinned_cpu"] = serde_json::json!(1);
        after.meta["proxy_pinned_cpus"] = serde_json::json!([1]);
        assert!(caveats(&before, &after).is_empty());
        after.meta["proxy_pinned_cpus"] = serde_json::json!([0, 1]);
        assert_eq!(
            caveats(&before, &after),
            ["different proxy CPU pinning: [1] and [0,1]"]
        );
    }

    #[test]
    fn reports_of_two_scenarios_are_refused() {
        let before = report("bench http", "EPYC", Vec::new());
        let mut after = report("bench ws-echo", "EPYC", Vec::new());
        after.scenario = "ws-echo".to_owned();
        let e = compare(&before, &after).expect_err("two scenarios");
        assert_eq!(
            e.to_string(),
            "cannot compare a `http` report with a `ws-echo` report"
        );
    }
}

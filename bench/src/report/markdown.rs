//! report.md: summary table, goals, charts, per-backend distribution, machine and commands.

use std::fmt::Write as _;

use super::Report;

/// Header and rows of the summary table (also used for the terminal).
pub(super) fn table_cells(r: &Report) -> (Vec<String>, Vec<Vec<String>>) {
    let mut headers = vec!["target".to_owned()];
    headers.extend(r.columns.iter().map(|c| c.header.clone()));
    let rows = r
        .targets
        .iter()
        .map(|t| {
            let mut row = vec![t.target.clone()];
            for (i, c) in r.columns.iter().enumerate() {
                let mut cell = match t.metrics.get(&c.key) {
                    Some(v) if v.is_finite() => format!("{v:.prec$}", prec = c.decimals),
                    Some(_) => "∞".to_owned(),
                    None if t.ok() || i > 0 => "-".to_owned(),
                    // The reason is listed under the table; the cell says which kind.
                    None => t.status.split([' ', ':']).next().unwrap_or("-").to_owned(),
                };
                if t.metrics.contains_key(&c.key) {
                    for m in c.marks.iter().filter(|m| marked(t, m)) {
                        cell.push(' ');
                        cell.push_str(&m.text);
                    }
                }
                row.push(cell);
            }
            row
        })
        .collect();
    (headers, rows)
}

fn marked(t: &super::TargetReport, m: &super::Mark) -> bool {
    t.metric(&m.key).is_some_and(|v| v > 0.0)
}

/// `<mark>: <legend>` for each mark some cell of the table carries.
pub(super) fn legends(r: &Report) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in &r.columns {
        for m in &c.marks {
            let shown = r
                .targets
                .iter()
                .any(|t| t.metrics.contains_key(&c.key) && marked(t, m));
            let line = format!("{}: {}", m.text, m.legend);
            if shown && !out.contains(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// A line per target that lost some of its runs (the others made its medians).
pub(super) fn failed_runs(r: &Report) -> Vec<String> {
    r.targets
        .iter()
        .filter(|t| t.ok() && !t.errors.is_empty())
        .map(|t| {
            let n = t.errors.len();
            format!(
                "{}: {n} of {} runs failed, the medians are over the other {}: {}",
                t.target,
                n + t.runs.len(),
                t.runs.len(),
                t.errors.join("; ")
            )
        })
        .collect()
}

pub(super) fn render(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# bench `{}`\n\n{}\n", r.scenario, r.description);
    if let Some(p) = &r.partial {
        let _ = writeln!(md, "{}\n", p.describe());
    }
    let _ = writeln!(md, "## Summary\n\nMedians over the runs.\n");
    let (headers, rows) = table_cells(r);
    let _ = writeln!(md, "| {} |", headers.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(headers.len()));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    for line in legends(r) {
        let _ = writeln!(md, "\n{line}");
    }
    for t in r.targets.iter().filter(|t| !t.ok()) {
        let _ = writeln!(md, "\n{}: {}", t.target, t.status);
    }
    for line in failed_runs(r) {
        let _ = writeln!(md, "\n{line}");
    }
    let _ = writeln!(md, "\n## Goals\n");
    if r.checks.is_empty() {
        let _ = writeln!(md, "No goal from the issue applies to this scenario.");
    }
    for c in &r.checks {
        let mark = match c.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not evaluated",
        };
        let _ = writeln!(md, "- {}: {mark} — {}", c.goal, c.measured);
    }
    let _ = writeln!(md, "\n## Charts\n");
    if r.charts.is_empty() {
        let _ = writeln!(md, "None.\n");
    }
    for c in &r.charts {
        let _ = writeln!(md, "![{c}]({c})\n");
    }
    let _ = writeln!(md, "## Per-backend distribution\n");
    if r.targets.iter().any(|t| t.ok() && !super::balanced(t)) {
        let _ = writeln!(
            md,
            "`direct` is left out: it sends everything to the first backend, which says \
             nothing about balancing.\n"
        );
    }
    let _ = writeln!(
        md,
        "| target | {} | CV | Jain | max/min |",
        r.backends.join(" | ")
    );
    let _ = writeln!(md, "|{}", "---|".repeat(r.backends.len() + 4));
    for t in r
        .targets
        .iter()
        .filter(|t| t.ok() && super::balanced(t) && !t.per_backend.is_empty())
    {
        let counts: Vec<String> = t.per_backend.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.2} |",
            t.target,
            counts.join(" | "),
            t.fairness.cv,
            t.fairness.jain,
            t.fairness.max_over_min
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let _ = writeln!(md, "\n## Machine and versions\n");
    let _ = writeln!(
        md,
        "```json\n{}\n```",
        serde_json::to_string_pretty(&r.meta).unwrap_or_default()
    );
    let _ = writeln!(md, "\n## Commands\n");
    if let Some(cmd) = r.meta.get("command").and_then(|c| c.as_str()) {
        let _ = writeln!(md, "bench: `{cmd}`\n");
    }
    for t in r.targets.iter().filter(|t| !t.command.is_empty()) {
        let _ = writeln!(md, "- {}: `{}`", t.target, t.command);
    }
    let _ = writeln!(md, "\nGenerated configs are in `configs/`.");
    md
}

#[cfg(test)]
mod tests {
    use super::super::{col, Report, RunResult, TargetReport};

    pub(crate) fn report(targets: Vec<TargetReport>) -> Report {
        Report {
            partial: None,
            scenario: "http".into(),
            description: String::new(),
            meta: serde_json::json!({}),
            columns: vec![col("rps", "rps", 0)],
            backends: vec!["b1".into(), "b2".into()],
            targets,
            checks: Vec::new(),
            notes: Vec::new(),
            charts: Vec::new(),
        }
    }

    #[test]
    fn direct_is_not_in_the_distribution() {
        let mut direct = TargetReport::unavailable("direct".into(), "ok".into());
        direct.per_backend = vec![100.0, 0.0];
        let mut rr = TargetReport::unavailable("switchyard:round_robin".into(), "ok".into());
        rr.per_backend = vec![50.0, 50.0];
        let md = super::render(&report(vec![direct, rr]));
        let dist = md
            .split("## Per-backend distribution")
            .nth(1)
            .unwrap_or_default();
        assert!(
            dist.contains("| switchyard:round_robin | 50 | 50 |"),
            "{md}"
        );
        assert!(!dist.contains("| direct |"), "{md}");
        assert!(dist.contains("`direct` is left out"), "{md}");
    }

    #[test]
    fn runs_that_failed_are_in_report_md() {
        let mut t = TargetReport::unavailable("nginx:round_robin".into(), "ok".into());
        t.runs = vec![RunResult::default(); 2];
        t.errors = vec!["run 2: nginx did not answer".into()];
        let md = super::render(&report(vec![t]));
        assert!(
            md.contains("nginx:round_robin: 1 of 3 runs failed, the medians are over the other 2: run 2: nginx did not answer"),
            "{md}"
        );
    }
}

//! SVG charts with plotters: latency percentiles per target, per-backend distribution,
//! throughput/error timelines, and a scenario's own curve (ws-hold: RSS over connections).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Report, Timeline};

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

const FONT: &str = "sans-serif";

/// TrueType fonts tried in turn for the charts' text (plotters measures text with it; a
/// system font keeps the build free of fontconfig).
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers the first font found, once.
fn ensure_font() -> anyhow::Result<()> {
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *FONT_OK.get_or_init(|| {
        FONT_FILES.iter().any(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                // Registered fonts must live for the whole program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
            })
        })
    });
    if ok {
        Ok(())
    } else {
        anyhow::bail!("no TrueType font found for the charts (apt-get install fonts-dejavu-core)")
    }
}

/// Draws every chart that has data; returns the file names.
pub fn draw_all(r: &Report, out: &Path) -> anyhow::Result<Vec<String>> {
    ensure_font()?;
    let mut files = Vec::new();
    let ok: Vec<_> = r.targets.iter().filter(|t| t.ok()).collect();
    let lat: Vec<(String, Vec<f64>)> = ok
        .iter()
        .filter_map(|t| {
            t.latency
                .map(|p| (t.target.clone(), vec![p.p50, p.p90, p.p99, p.p999]))
        })
        .collect();
    if !lat.is_empty() {
        publish(out, "latency.svg", &mut files, |path| {
            latency(path, &r.scenario, &lat)
        })?;
    }
    let dist: Vec<(String, Vec<f64>)> = ok
        .iter()
        .filter(|t| super::balanced(t) && !t.per_backend.is_empty())
        .map(|t| (t.target.clone(), t.per_backend.clone()))
        .collect();
    if !dist.is_empty() {
        publish(out, "distribution.svg", &mut files, |path| {
            distribution(path, &r.scenario, &r.backends, &dist)
        })?;
    }
    // Timelines and curves of the last run of each target.
    let lines: Vec<(String, Timeline)> = ok
        .iter()
        .filter_map(|t| {
            t.runs
                .last()
                .map(|run| (t.target.clone(), run.timeline.clone()))
        })
        .filter(|(_, tl)| !tl.is_empty())
        .collect();
    // The same for every target (failover's kill and restart times): the first run's.
    let events = ok
        .iter()
        .filter_map(|t| t.runs.last())
        .map(|run| run.events.clone())
        .find(|e| !e.is_empty())
        .unwrap_or_default();
    if !lines.is_empty() {
        publish(out, "timeline.svg", &mut files, |path| {
            timeline(path, &r.scenario, &lines, &events)
        })?;
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = ok
        .iter()
        .filter_map(|t| {
            t.runs
                .last()
                .map(|run| (t.target.clone(), run.curve.clone()))
        })
        .filter(|(_, c)| !c.is_empty())
        .collect();
    if !curves.is_empty() {
        publish(out, "curve.svg", &mut files, |path| {
            let lw = legend_width(curves.iter().map(|(n, _)| n.as_str()));
            let root = SVGBackend::new(path, (900 + lw, 500)).into_drawing_area();
            xy(
                &root,
                &format!("{}: proxy RSS over open connections", r.scenario),
                "open connections",
                "RSS (MiB)",
                &curves,
                &[],
            )?;
            root.present().map_err(err)
        })?;
    }
    let ladders: Vec<(String, Vec<[f64; 3]>)> = ok
        .iter()
        .map(|t| (t.target.clone(), ladder_steps(t)))
        .filter(|(_, steps)| !steps.is_empty())
        .collect();
    if !ladders.is_empty() {
        // A failed step's p99 can be seconds: clip at 3× the bound so the rest stays legible.
        let bound = ok.iter().find_map(|t| t.metric("max_p99_ms"));
        let clip = bound.map_or(f64::MAX, |b| 3.0 * b);
        let pick = |i: usize| -> Vec<(String, Vec<(f64, f64)>)> {
            ladders
                .iter()
                .map(|(name, steps)| {
                    let cap = if i == 2 { clip } else { f64::MAX };
                    let pts = steps.iter().map(|s| (s[0], s[i].min(cap))).collect();
                    (name.clone(), pts)
                })
                .collect()
        };
        let p99_title = match bound {
            Some(b) => format!("p99 per step (bound {b:.0} ms; clipped at {clip:.0})"),
            None => "p99 delivery latency per step".to_owned(),
        };
        publish(out, "ladder.svg", &mut files, |path| {
            let lw = legend_width(ladders.iter().map(|(n, _)| n.as_str()));
            let root = SVGBackend::new(path, (1100 + 2 * lw, 480)).into_drawing_area();
            let (left, right) = root.split_horizontally(550 + lw);
            xy(
                &left,
                &format!("{}: delivered/s per load step", r.scenario),
                "messages/s per client",
                "delivered/s",
                &pick(1),
                &[],
            )?;
            xy(
                &right,
                &format!("{}: {p99_title}", r.scenario),
                "messages/s per client",
                "p99 ms",
                &pick(2),
                &[],
            )?;
            root.present().map_err(err)
        })?;
    }
    Ok(files)
}

/// Draws one chart into a file beside `name`, then gives it that name: the report is
/// rewritten after each measurement, and a bench killed meanwhile must not leave a
/// half-drawn chart.
fn publish(
    out: &Path,
    name: &str,
    files: &mut Vec<String>,
    draw: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let tmp = out.join(format!(".{name}.tmp"));
    let drawn = draw(&tmp).and_then(|()| {
        std::fs::rename(&tmp, out.join(name)).map_err(|e| err(format!("naming {name}: {e}")))
    });
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn?;
    files.push(name.to_owned());
    Ok(())
}

/// A target's load steps (chat with a CPU limit), ladder and refinement, by rate:
/// [rate, delivered/s, p99 ms] each.
fn ladder_steps(t: &super::TargetReport) -> Vec<[f64; 3]> {
    let series = |name: &str| -> Vec<[f64; 3]> {
        (0..)
            .map_while(|k| {
                let m = |key: &str| t.metric(&format!("{name}{k}_{key}"));
                Some([m("rate")?, m("delivered_per_s")?, m("p99_ms")?])
            })
            .collect()
    };
    let mut steps = series("step");
    steps.extend(series("refine"));
    steps.sort_by(|a, b| a[0].total_cmp(&b[0]));
    steps
}

fn latency(path: &Path, scenario: &str, series: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    let lw = legend_width(series.iter().map(|(n, _)| n.as_str()));
    let root = SVGBackend::new(path, (900 + lw, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (root, key) = root.split_horizontally(900);
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let hi = all.clone().fold(0.01f64, f64::max) * 1.5;
    let lo = all.fold(f64::MAX, f64::min).max(0.001) / 1.5;
    let names = ["p50", "p90", "p99", "p99.9"];
    let lo = lo.min(hi / 2.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(latency_caption(scenario), (FONT, 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(
            -0.2f64..3.2f64,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| label_at(*x, &names))
        .y_label_formatter(&|y| tick(*y))
        .y_desc("ms")
        .draw()
        .map_err(err)?;
    for (i, (_, v)) in series.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(k, y)| (k as f64, y.max(lo)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
    }
    side_legend(&key, series.iter().map(|(n, _)| n.as_str()), Swatch::Line)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The latency chart's title: which latency a scenario's chart shows.
fn latency_caption(scenario: &str) -> String {
    let what = match scenario {
        // The open-loop rates are in the table; the chart is the closed loop's.
        "http" => "closed-loop latency percentiles",
        "failover" => "latency percentiles, both phases' requests together",
        _ => "latency percentiles",
    };
    format!("{scenario}: {what} (ms, log)")
}

/// Ticks at 1, 2 and 5 of each decade within `lo..=hi` (ms): plotters' own put them on whole
/// decades and their multiples only, which left a chart of sub-millisecond latencies
/// labelled at 1–5 ms alone. None below the 1 µs the labels resolve.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return ticks;
    }
    for e in (lo.log10().floor() as i32)..=(hi.log10().ceil() as i32) {
        for k in [1.0, 2.0, 5.0] {
            // Via the string so that 0.1 × 2 is 0.2, not 0.20000000000000004.
            let v: f64 = format!("{k}e{e}").parse().unwrap_or(f64::NAN);
            if v >= lo && v <= hi && v >= 0.001 {
                ticks.push(v);
            }
        }
    }
    ticks
}

/// An axis label: plotters prints the raw f64 of a tick (`0.30000000000000004`,
/// `10000.0`); three decimals at most, trailing zeros dropped.
fn tick(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn label_at(x: f64, names: &[impl AsRef<str>]) -> String {
    let k = x.round();
    if (x - k).abs() < 0.05 && k >= 0.0 {
        names
            .get(k as usize)
            .map(|s| s.as_ref().to_owned())
            .unwrap_or_default()
    } else {
        String::new()
    }
}

fn distribution(
    path: &Path,
    scenario: &str,
    backends: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let width = (160 + 110 * series.len()).max(700) as u32;
    let lw = legend_width(backends.iter().map(String::as_str));
    let root = SVGBackend::new(path, (width + lw, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (root, key) = root.split_horizontally(width);
    // Shares in percent, so targets with different totals compare.
    let shares: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, v)| {
            let sum: f64 = v.iter().sum();
            v.iter()
                .map(|x| if sum > 0.0 { 100.0 * x / sum } else { 0.0 })
                .collect()
        })
        .collect();
    let hi = shares.iter().flatten().copied().fold(10.0f64, f64::max) * 1.15;
    let n = series.len();
    let names: Vec<String> = series.iter().map(|(n, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: share per backend (%)"), (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(2))
        .x_label_formatter(&|x| label_at(*x, &names))
        .x_label_style((FONT, 11))
        .y_label_formatter(&|y| tick(*y))
        .y_desc("% of requests / connections")
        .draw()
        .map_err(err)?;
    let nb = backends.len().max(1);
    let w = 0.8 / nb as f64;
    for b in 0..backends.len() {
        let c = color(b);
        chart
            .draw_series(shares.iter().enumerate().map(|(t, v)| {
                let x0 = t as f64 - 0.4 + b as f64 * w;
                let y = v.get(b).copied().unwrap_or(0.0);
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, y)], c.filled())
            }))
            .map_err(err)?;
    }
    side_legend(&key, backends.iter().map(String::as_str), Swatch::Box)?;
    root.present().map_err(err)?;
    Ok(())
}

fn timeline(
    path: &Path,
    scenario: &str,
    series: &[(String, Timeline)],
    events: &[(f64, String)],
) -> anyhow::Result<()> {
    let lw = legend_width(series.iter().map(|(n, _)| n.as_str()));
    let root = SVGBackend::new(path, (900 + lw, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(400);
    let ok: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, tl)| (n.clone(), steps(tl, |p| p.1)))
        .collect();
    let errs: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, tl)| (n.clone(), steps(tl, |p| p.2)))
        .collect();
    xy(
        &top,
        &format!("{scenario}: successful requests/s"),
        "time (s)",
        "ok/s",
        &ok,
        events,
    )?;
    xy(
        &bottom,
        &format!("{scenario}: errors/s"),
        "time (s)",
        "errors/s",
        &errs,
        events,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// A timeline as steps: each bucket's rate held from its start to its end. Drawn at the
/// starts alone, a 2 s run's line stopped at 1 s, as if its last second were missing.
fn steps(tl: &[(f64, f64, f64)], value: impl Fn(&(f64, f64, f64)) -> f64) -> Vec<(f64, f64)> {
    let width = match tl {
        [a, b, ..] if b.0 > a.0 => b.0 - a.0,
        _ => 1.0,
    };
    tl.iter()
        .flat_map(|p| [(p.0, value(p)), (p.0 + width, value(p))])
        .collect()
}

/// Lines of `series` over x, with a dashed vertical line and its label at each of
/// `events` (x, what happened then).
fn xy(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    events: &[(f64, String)],
) -> anyhow::Result<()> {
    area.fill(&WHITE).map_err(err)?;
    let lw = legend_width(series.iter().map(|(n, _)| n.as_str()));
    let (plot_w, _) = area.dim_in_pixel();
    let (area, key) = area.split_horizontally(plot_w.saturating_sub(lw));
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let ymax = pts.map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(xdesc)
        .y_desc(ydesc)
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .draw()
        .map_err(err)?;
    for (x, what) in events.iter().filter(|(x, _)| *x <= xmax) {
        let grey = RGBColor(110, 110, 110);
        chart
            .draw_series(DashedLineSeries::new(
                [(*x, 0.0), (*x, ymax)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                what.clone(),
                (*x, ymax * 0.98),
                (FONT, 11).into_font().color(&grey),
            )))
            .map_err(err)?;
    }
    // Each line a pixel thinner than the one drawn before it: lines with equal values
    // (every target at the same rate) show as nested bands, not the last one alone.
    let n = series.len();
    for (i, (_, v)) in series.iter().enumerate() {
        let c = color(i);
        let width = 2 + u32::try_from(n.saturating_sub(i + 1).min(4)).unwrap_or(0);
        chart
            .draw_series(LineSeries::new(v.clone(), c.stroke_width(width)))
            .map_err(err)?;
    }
    side_legend(&key, series.iter().map(|(n, _)| n.as_str()), Swatch::Line)?;
    Ok(())
}

/// How a series is keyed in its legend.
#[derive(Clone, Copy)]
enum Swatch {
    Line,
    Box,
}

const LEGEND_FONT: u32 = 12;

/// Pixels for a legend of `names` beside the plot: plotters' own legend sat inside the plot
/// area and covered bars and lines (the distribution chart's last bars, the latency
/// lines' p99–p99.9 rise), whatever corner it was put in.
fn legend_width<'a>(names: impl Iterator<Item = &'a str>) -> u32 {
    let chars = names.map(|n| n.chars().count()).max().unwrap_or(0) as u32;
    // DejaVu Sans at 12 px averages under 7 px per character.
    (chars * 7 + 44).clamp(80, 360)
}

/// The legend in its own column `area`, one row per name in series order (the colours of
/// `color(i)`).
fn side_legend<'a>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    names: impl Iterator<Item = &'a str>,
    swatch: Swatch,
) -> anyhow::Result<()> {
    for (i, name) in names.enumerate() {
        let c = color(i);
        let y = 48 + 18 * i as i32;
        match swatch {
            Swatch::Line => area
                .draw(&PathElement::new(vec![(6, y), (26, y)], c.stroke_width(2)))
                .map_err(err)?,
            Swatch::Box => area
                .draw(&Rectangle::new([(10, y - 5), (22, y + 5)], c.filled()))
                .map_err(err)?,
        }
        let style = TextStyle::from((FONT, LEGEND_FONT).into_font()).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            ),
        );
        area.draw(&Text::new(name.to_owned(), (32, y), style))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ensure_font, latency_caption, legend_width, log_ticks, steps, tick, timeline};

    #[test]
    fn a_timeline_marks_what_was_done_to_the_backends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("timeline.svg");
        let series = [
            ("a".to_owned(), vec![(0.0, 10.0, 0.0), (1.0, 10.0, 2.0)]),
            ("b".to_owned(), vec![(0.0, 10.0, 0.0), (1.0, 10.0, 2.0)]),
        ];
        let events = [(0.4, "kill b1".to_owned()), (1.2, "restart b1".to_owned())];
        ensure_font().expect("a font");
        timeline(&path, "failover", &series, &events).expect("a chart");
        let svg = std::fs::read_to_string(&path).expect("the chart");
        // Both charts (ok/s, errors/s) carry each event in range.
        assert_eq!(svg.matches("kill b1").count(), 2, "{svg}");
        assert_eq!(svg.matches("restart b1").count(), 2);
        // Equal lines stay apart: the first drawn is the wider.
        assert!(svg.contains("stroke-width=\"3\""), "{svg}");
        assert!(svg.contains("stroke-width=\"2\""));
    }

    #[test]
    fn sub_millisecond_latencies_are_labelled() {
        // The audit's http chart: 0.04 ms to 6 ms had labels at 1–5 ms only.
        let ticks: Vec<String> = log_ticks(0.03, 6.0).into_iter().map(tick).collect();
        assert_eq!(
            ticks,
            ["0.05", "0.1", "0.2", "0.5", "1", "2", "5"].map(str::to_owned)
        );
        assert_eq!(log_ticks(0.0004, 0.0015), [0.001]);
        assert!(log_ticks(0.0, 1.0).is_empty());
        assert!(latency_caption("http").contains("closed-loop"));
        assert!(latency_caption("failover").contains("both phases"));
    }

    #[test]
    fn the_legend_column_fits_the_longest_name() {
        let short = legend_width(["b1", "b2"].into_iter());
        let long = legend_width(["switchyard:sticky_cookie [shared]"].into_iter());
        assert_eq!(short, 80);
        assert!((33 * 7..360).contains(&long), "{long}");
        assert_eq!(legend_width(["x".repeat(500).as_str()].into_iter()), 360);
    }

    #[test]
    fn a_timeline_covers_its_last_bucket() {
        let tl = vec![(0.0, 10.0, 0.0), (1.0, 20.0, 1.0)];
        assert_eq!(
            steps(&tl, |p| p.1),
            [(0.0, 10.0), (1.0, 10.0), (1.0, 20.0), (2.0, 20.0)]
        );
        assert_eq!(steps(&[(0.0, 5.0, 0.0)], |p| p.2), [(0.0, 0.0), (1.0, 0.0)]);
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(0.6000000000000001), "0.6");
        assert_eq!(tick(10000.0), "10000");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(0.015), "0.015");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(-1.5), "-1.5");
    }
}

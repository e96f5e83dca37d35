//! The progress bar: one step per measurement, the current target as its message.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

pub fn bar(steps: u64, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(steps);
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} measurements{left}  {msg}",
    )
    .map(|s| s.with_key("left", left))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// ` (~3m 20s left)` once a measurement is done: the default run (3 runs of every target)
/// takes many minutes and the bar gave no idea how many. Nothing before the first
/// measurement, when there is no pace to go by (indicatif's own `{eta}` shows 0s then).
fn left(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    if state.pos() > 0 {
        let eta = indicatif::HumanDuration(state.eta());
        let _ = write!(w, " (~{eta} left)");
    }
}

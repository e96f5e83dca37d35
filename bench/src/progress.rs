//! The progress bar: one step per measurement, the current target as its message.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(steps: u64, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(steps);
    if quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} measurements  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

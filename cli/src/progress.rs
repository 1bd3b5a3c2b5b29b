//! The progress bar (indicatif) with ETA, hidden with `--quiet` or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(quiet: bool, label: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40.cyan/blue}] {pos}/{len} calls {elapsed_precise} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

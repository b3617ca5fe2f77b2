//! Progress bars on stderr, hidden when stderr is not a terminal or with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// What a bar counts, from its name: the rate is shown with this unit.
fn unit(what: &str) -> &'static str {
    match what {
        "epochs" => "epochs",
        "dream" => "steps",
        "attacks" => "attacks",
        _ => "images",
    }
}

pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let unit = unit(what);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {rate} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} {unit}/s", s.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

pub fn bytes_bar(what: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(0);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The library's progress reports as bars (one per phase) and lines on stderr.
pub struct Bars {
    quiet: bool,
    current: std::sync::Mutex<Option<(String, ProgressBar)>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars {
            quiet,
            current: std::sync::Mutex::new(None),
        }
    }
}

impl whisker::learner::Observer for Bars {
    fn progress(&self, phase: &str, done: usize, total: usize) {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|(p, _)| p != phase) {
            if let Some((_, pb)) = g.take() {
                pb.finish_and_clear();
            }
            *g = Some((phase.to_string(), bar(total as u64, phase, self.quiet)));
        }
        if let Some((_, pb)) = g.as_ref() {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        }
    }
    fn finished(&self, phase: &str) {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_some_and(|(p, _)| p == phase) {
            if let Some((_, pb)) = g.take() {
                pb.finish_and_clear();
            }
        }
    }
    fn message(&self, text: &str) {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some((_, pb)) => pb.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }
    fn epoch(&self, s: &whisker::train::head::EpochStats, frozen: bool) {
        self.message(&epoch_line(s, if frozen { " (frozen)" } else { "" }));
    }
}

/// One line per epoch.
pub fn epoch_line(s: &whisker::train::head::EpochStats, tag: &str) -> String {
    format!(
        "epoch {:>3}{tag}  train loss {:.4}  val loss {}  val acc {}  lr {:.2e}",
        s.epoch,
        s.train_loss,
        s.val_loss
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        s.val_accuracy
            .map(|v| format!("{:.2}%", v * 100.0))
            .unwrap_or_else(|| "-".into()),
        s.lr
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_have_units() {
        assert_eq!(super::unit("epochs"), "epochs");
        assert_eq!(super::unit("features"), "images");
        assert_eq!(super::unit("dream"), "steps");
    }
}

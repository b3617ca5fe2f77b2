//! Progress bars on stderr, hidden when stderr is not a terminal or with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// What a bar counts, from its name: the rate is shown with this unit (plural, singular).
fn unit(what: &str) -> (&'static str, &'static str) {
    match what {
        "epochs" => ("epochs", "epoch"),
        "dream" => ("steps", "step"),
        "attacks" => ("attacks", "attack"),
        _ => ("images", "image"),
    }
}

/// The rate since the bar's first position (work done before it, such as features taken
/// from the cache, is not counted), once it has run for a second: `12.3 images/s`, or
/// `4.5 s/epoch` below one a second; nothing before there is a sensible figure.
pub fn rate_text(done: u64, secs: f64, units: (&str, &str)) -> String {
    if done == 0 || secs < 1.0 {
        return String::new();
    }
    let r = done as f64 / secs;
    if r >= 1.0 {
        format!("{r:.1} {}/s", units.0)
    } else {
        format!("{:.1} s/{}", 1.0 / r, units.1)
    }
}

pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let unit = unit(what);
    let first = std::sync::Arc::new(std::sync::Mutex::new(None::<(u64, f64)>));
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {rate} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let (pos, t) = (s.pos(), s.elapsed().as_secs_f64());
                    let mut g = first.lock().unwrap_or_else(|p| p.into_inner());
                    let (p0, t0) = *g.get_or_insert((pos, t));
                    let _ = write!(w, "{}", rate_text(pos.saturating_sub(p0), t - t0, unit));
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
            // reports from parallel workers may arrive out of order: never backwards
            pb.set_position((done as u64).max(pb.position()));
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

/// A spinner with a message, for work of unknown length (hidden as the bars are).
pub fn spinner(msg: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_have_units() {
        assert_eq!(super::unit("epochs"), ("epochs", "epoch"));
        assert_eq!(super::unit("features"), ("images", "image"));
        assert_eq!(super::unit("dream"), ("steps", "step"));
    }

    /// Issue 25, item 13: "1509954.5 images/s" (cached work counted as done in no time),
    /// "13295.0 epochs/s": no rate before a second of work, slow rates as time per unit.
    #[test]
    fn item13_rates_are_sensible_figures() {
        use super::rate_text;
        let u = ("epochs", "epoch");
        assert_eq!(rate_text(0, 10.0, u), "");
        assert_eq!(rate_text(900, 0.0006, u), "");
        assert_eq!(rate_text(30, 2.0, u), "15.0 epochs/s");
        assert_eq!(rate_text(1, 4.5, u), "4.5 s/epoch");
    }
}

//! `whisker dream`: an "ideal class" image by gradient ascent on the input.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

#[derive(clap::Args)]
pub struct DreamArgs {
    /// Class index or ImageNet label ("tabby", "zebra").
    #[arg(long)]
    class: String,
    /// Gradient-ascent steps.
    #[arg(long, default_value_t = 300, value_parser = crate::args::whole(1, crate::args::MAX_STEPS))]
    steps: usize,
    /// Adam learning rate of the image parameters.
    #[arg(long, default_value_t = 0.05, value_parser = crate::args::real(0.0, 100.0, false))]
    lr: f64,
    /// Weight of the total-variation penalty.
    #[arg(long, default_value_t = 0.01, value_parser = crate::args::real(0.0, 1e4, true))]
    tv: f64,
    /// Maximum random shift of the view each step (pixels).
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(0, 1024))]
    jitter: usize,
    /// Image parameterisation: fft (decorrelated frequencies and colours) or pixel.
    #[arg(long, default_value = "fft", value_parser = ["fft", "pixel"])]
    param: String,
    /// Maximise the log-probability instead of the logit.
    #[arg(long)]
    log_prob: bool,
    /// Random scale of the view each step, within [1/S, S] (1: off).
    #[arg(long, default_value_t = 1.1, value_parser = crate::args::real(1.0, 4.0, true))]
    scale: f64,
    /// Random rotation of the view each step, within ±R degrees (0: off).
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::degrees)]
    rotate: f64,
    /// Size of the square image, from the backbone's input size to 2048 (default: its resize
    /// size, 256 for 224 inputs).
    #[arg(long, value_parser = crate::args::image_side)]
    size: Option<usize>,
    /// Seed of the starting image and the random views.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    which: super::ModelArgs,
    /// The picture (PNG).
    #[arg(long)]
    out: PathBuf,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn dream_cmd(a: DreamArgs, quiet: bool) -> Result<i32> {
    use whisker::inspect::dream::{dream, DreamConfig, Param};
    let device = whisker::default_device().autodiff();
    let subject = a.which.load(&device)?;
    let class = subject.class_index(&a.class)?;
    let cfg = DreamConfig {
        class,
        steps: a.steps,
        lr: a.lr,
        tv_weight: a.tv,
        jitter: a.jitter,
        param: a.param.parse::<Param>()?,
        log_prob: a.log_prob,
        seed: a.seed,
        scale: a.scale,
        rotate: a.rotate,
        size: a.size,
    };
    let t = std::time::Instant::now();
    let pb = crate::progress::bar(cfg.steps as u64, "dream", quiet);
    let r = dream(&subject, &cfg, &|d, _| pb.set_position(d as u64))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    whisker::report::save_png(&r.image, &a.out)?;
    let labels = subject.labels();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "class": class, "label": labels[class], "probability": r.probability,
                "top1": r.top1, "top1_label": labels[r.top1], "history": r.history,
                "seconds": secs, "settings": cfg, "out": crate::path_str(&a.out),
            }))?
        );
    } else {
        println!(
            "{} ({class}): probability {:.1}% when classified (top-1: {}), {} steps in {:.0} s → {}",
            labels[class],
            r.probability * 100.0,
            labels[r.top1],
            cfg.steps,
            secs,
            a.out.display()
        );
    }
    Ok(0)
}

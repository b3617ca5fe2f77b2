//! `whisker attack`: an adversarial example through the preprocessing.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;
use whisker::inspect::attack::{attack, diff_image, AttackConfig, Method, Norm};

#[derive(clap::Args)]
pub struct AttackArgs {
    /// The photo to perturb (any size; the model sees it through its preprocessing).
    image: PathBuf,
    /// Target class (index or ImageNet label, e.g. "tiger cat").
    #[arg(long, conflicts_with = "untargeted")]
    target: Option<String>,
    /// Make the model leave its current answer.
    #[arg(long)]
    untargeted: bool,
    /// Attack: FGSM (one step), BIM, PGD, or Carlini–Wagner L2 (minimal norm).
    #[arg(long, default_value = "pgd", value_parser = ["fgsm", "bim", "pgd", "cw"])]
    method: String,
    /// Norm of the budget: L∞ (every pixel within eps) or L2 [default: linf; Carlini–Wagner
    /// is L2].
    #[arg(long, value_parser = ["linf", "l2"])]
    norm: Option<String>,
    /// Carlini–Wagner's constant c (with --method cw; its learning rate is --alpha, default 0.01).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::real(0.0, 1e6, false))]
    c: f64,
    /// Perturbation budget in [0,1] pixel units; fractions like 4/255 are accepted.
    #[arg(long, default_value = "4/255", value_parser = crate::args::epsilon)]
    eps: f64,
    /// Step size [default: eps/4 for L∞, eps/5 for L2; Carlini–Wagner's learning rate 0.01].
    #[arg(long, value_parser = crate::args::real(0.0, whisker::inspect::attack::MAX_L2_EPS, false))]
    alpha: Option<f64>,
    /// Iterations (BIM, PGD, C&W), 1 to 10000 [default: 40; 100 for C&W].
    #[arg(long, value_parser = crate::args::whole(1, whisker::inspect::attack::MAX_STEPS))]
    steps: Option<usize>,
    /// PGD: start from a random point of the epsilon ball.
    #[arg(long)]
    random_start: bool,
    /// Targeted: keep going until the target's probability reaches this.
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::probability)]
    confidence: f32,
    /// Also write original | perturbation | adversarial side by side, labelled.
    #[arg(long)]
    side_by_side: Option<PathBuf>,
    /// Seed of the random start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    which: super::ModelArgs,
    /// The adversarial image (PNG, original resolution).
    #[arg(long)]
    out: PathBuf,
    /// Also write the perturbation, amplified ×10 around grey.
    #[arg(long)]
    diff: Option<PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn attack_cmd(a: AttackArgs) -> Result<i32> {
    if a.target.is_none() && !a.untargeted {
        bail!("give --target CLASS or --untargeted");
    }
    let method: Method = a.method.parse()?;
    let norm: Option<Norm> = a.norm.as_deref().map(str::parse).transpose()?;
    // the settings are checked before anything is loaded; an L∞ budget in 0–255 units gets
    // the flag's hint
    if method != Method::Cw && norm.unwrap_or(Norm::Linf) == Norm::Linf {
        crate::args::check_linf(a.eps)?;
    }
    let cfg0 = AttackConfig::new(method, norm, a.eps, a.alpha, a.steps, None)?;
    let device = whisker::default_device().autodiff();
    let subject = a.which.load(&device)?;
    let img = whisker::data::decode_file(&a.image)?;
    let target = a
        .target
        .as_deref()
        .map(|t| subject.class_index(t))
        .transpose()?;
    let cfg = AttackConfig {
        random_start: a.random_start,
        target,
        seed: a.seed,
        min_confidence: a.confidence,
        cw_c: a.c,
        ..cfg0
    };
    let r = attack(&subject, &img, &cfg)?;
    whisker::report::save_png(&r.adversarial, &a.out)?;
    if let Some(d) = &a.diff {
        whisker::report::save_png(&diff_image(&img, &r.adversarial, 10.0), d)?;
    }
    let labels = subject.labels();
    if let Some(p) = &a.side_by_side {
        let diff = diff_image(&img, &r.adversarial, 10.0);
        let tiles = [
            whisker::report::Tile {
                image: &img,
                lines: vec![
                    "original".into(),
                    format!(
                        "\"{}\" {}",
                        labels[r.original_top1],
                        whisker::report::probability_text(r.original_prob)
                    ),
                ],
            },
            whisker::report::Tile {
                image: &diff,
                lines: vec![
                    "perturbation ×10".into(),
                    if cfg.norm == Norm::L2 {
                        format!("L2 {:.3}  PSNR {:.1} dB", r.l2, r.psnr)
                    } else {
                        format!("L∞ {}/255  PSNR {:.1} dB", r.linf_255, r.psnr)
                    },
                ],
            },
            whisker::report::Tile {
                image: &r.adversarial,
                lines: vec![
                    "adversarial".into(),
                    format!(
                        "\"{}\" {}",
                        labels[r.adversarial_top1],
                        whisker::report::probability_text(r.adversarial_prob)
                    ),
                ],
            },
        ];
        whisker::report::contact_sheet(
            &tiles,
            &format!(
                "{} → {}",
                labels[r.original_top1], labels[r.adversarial_top1]
            ),
            // the pictures at their own resolution (within 224–448 px), so that the
            // perturbation can be seen
            img.width().max(img.height()).clamp(224, 448),
            p,
        )?;
    }
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["original_label"] = json!(labels[r.original_top1]);
        v["adversarial_label"] = json!(labels[r.adversarial_top1]);
        v["settings"] = serde_json::to_value(&cfg)?;
        v["out"] = json!(crate::path_str(&a.out));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} ({:.1}%) → {} ({:.1}%){}  [{} steps, L∞ {}/255, L2 {:.3}, PSNR {:.1} dB] → {}",
            if r.success { "success" } else { "failed" },
            labels[r.original_top1],
            r.original_prob * 100.0,
            labels[r.adversarial_top1],
            r.adversarial_prob * 100.0,
            r.target_prob
                .map(|p| format!(", target {:.1}%", p * 100.0))
                .unwrap_or_default(),
            r.steps_used,
            r.linf_255,
            r.l2,
            r.psnr,
            a.out.display()
        );
    }
    Ok(if r.success { 0 } else { 1 })
}

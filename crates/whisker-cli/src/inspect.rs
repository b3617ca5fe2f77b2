//! `whisker featuremap`, `whisker attack`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use whisker::inspect::attack::{attack, diff_image, AttackConfig, Method, Norm};
use whisker::inspect::featuremap;
use whisker::model::Model;

/// A zoo backbone (ImageNet classes) or a trained whisker model (its classes), on a device.
fn load_model(
    model: Option<&PathBuf>,
    name: &str,
    weights: Option<&PathBuf>,
    device: &burn::tensor::Device,
) -> Result<Model> {
    Ok(match (model, weights) {
        (Some(m), _) => Model::load(m, device)?,
        (None, Some(w)) => Model::from_weights(name, w, device)
            .with_context(|| format!("loading {name} weights"))?,
        (None, None) => {
            Model::pretrained(name, device).with_context(|| format!("loading {name} weights"))?
        }
    })
}

#[derive(clap::Args)]
pub struct FeatureMapArgs {
    #[arg(required_unless_present = "list_layers")]
    image: Option<PathBuf>,
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// Layer to show (default: a mid-level one); see --list-layers.
    #[arg(long)]
    layer: Option<String>,
    /// Print the layer names and exit.
    #[arg(long)]
    list_layers: bool,
    /// How many channels (the most active ones).
    #[arg(long, default_value_t = 32, value_parser = crate::args::count)]
    channels: usize,
    /// A trained whisker model (its backbone, fine-tuned or not) instead of a zoo backbone.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, required_unless_present = "list_layers")]
    out: Option<PathBuf>,
}

pub fn featuremap(a: FeatureMapArgs) -> Result<i32> {
    let device = whisker::default_device();
    let subject = load_model(a.model.as_ref(), &a.backbone, a.weights.as_ref(), &device)?;
    let b = subject.backbone();
    if a.list_layers {
        for n in b.layer_names() {
            println!("{n}");
        }
        return Ok(0);
    }
    let layer = a
        .layer
        .clone()
        .unwrap_or_else(|| featuremap::default_layer(b));
    let image = a.image.clone().unwrap_or_default();
    let crop = b.preprocess().load(&image)?;
    let acts = featuremap::activations(b, &crop, &layer)?;
    let img = featuremap::render(&crop, &acts, a.channels, 96);
    let out = a.out.clone().unwrap_or_default();
    whisker::report::save_png(&img, &out)?;
    println!(
        "{} {} [{} channels, {}×{}] → {}",
        b.spec.name,
        layer,
        acts.0,
        acts.1,
        acts.2,
        out.display()
    );
    Ok(0)
}

#[derive(clap::Args)]
pub struct AttackArgs {
    image: PathBuf,
    /// Target class (index or ImageNet label, e.g. "tiger cat").
    #[arg(long, conflicts_with = "untargeted")]
    target: Option<String>,
    /// Make the model leave its current answer.
    #[arg(long)]
    untargeted: bool,
    #[arg(long, default_value = "pgd", value_parser = ["fgsm", "bim", "pgd", "cw"])]
    method: String,
    #[arg(long, default_value = "linf", value_parser = ["linf", "l2"])]
    norm: String,
    /// Carlini–Wagner's constant c (with --method cw; its learning rate is --alpha, default 0.01).
    #[arg(long, default_value_t = 1.0, value_parser = crate::args::positive)]
    c: f64,
    /// Perturbation budget in [0,1] pixel units; fractions like 4/255 are accepted.
    #[arg(long, default_value = "4/255", value_parser = crate::args::epsilon)]
    eps: f64,
    /// Step size (default: eps/4 for L∞, eps/5 for L2).
    #[arg(long, value_parser = crate::args::positive)]
    alpha: Option<f64>,
    #[arg(long, default_value_t = 40, value_parser = crate::args::count)]
    steps: usize,
    #[arg(long)]
    random_start: bool,
    /// Targeted: keep going until the target's probability reaches this.
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::probability)]
    confidence: f32,
    /// Also write original | perturbation | adversarial side by side, labelled.
    #[arg(long)]
    side_by_side: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// A trained whisker model (run directory or model.safetensors) instead of a zoo backbone.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The adversarial image (PNG, original resolution).
    #[arg(long)]
    out: PathBuf,
    /// Also write the perturbation, amplified ×10 around grey.
    #[arg(long)]
    diff: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn attack_cmd(a: AttackArgs) -> Result<i32> {
    if a.target.is_none() && !a.untargeted {
        bail!("give --target CLASS or --untargeted");
    }
    let eps = a.eps;
    let norm = if a.norm == "l2" { Norm::L2 } else { Norm::Linf };
    if norm == Norm::Linf && a.method != "cw" {
        crate::args::check_linf(eps)?;
    }
    let device = whisker::default_device().autodiff();
    let subject = load_model(a.model.as_ref(), &a.backbone, a.weights.as_ref(), &device)?;
    let img = whisker::data::decode_file(&a.image)?;
    let alpha = match a.alpha {
        Some(v) => v,
        None => eps / if norm == Norm::L2 { 5.0 } else { 4.0 },
    };
    let method = match a.method.as_str() {
        "fgsm" => Method::Fgsm,
        "bim" => Method::Bim,
        "cw" => Method::Cw,
        _ => Method::Pgd,
    };
    let (norm, alpha) = if method == Method::Cw {
        let lr = a.alpha.unwrap_or(0.01);
        (Norm::L2, lr)
    } else {
        (norm, alpha)
    };
    let target = a
        .target
        .as_deref()
        .map(|t| subject.class_index(t))
        .transpose()?;
    let cfg = AttackConfig {
        method,
        norm,
        eps,
        alpha,
        steps: a.steps,
        random_start: a.random_start,
        target,
        seed: a.seed,
        min_confidence: a.confidence,
        cw_c: a.c,
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
                        "{} {:.0}%",
                        labels[r.original_top1],
                        r.original_prob * 100.0
                    ),
                ],
            },
            whisker::report::Tile {
                image: &diff,
                lines: vec![
                    "perturbation ×10".into(),
                    format!("L∞ {}/255  PSNR {:.1} dB", r.linf_255, r.psnr),
                ],
            },
            whisker::report::Tile {
                image: &r.adversarial,
                lines: vec![
                    "adversarial".into(),
                    format!(
                        "{} {:.0}%",
                        labels[r.adversarial_top1],
                        r.adversarial_prob * 100.0
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

#[derive(clap::Args)]
pub struct DreamArgs {
    /// Class index or ImageNet label ("tabby", "zebra").
    #[arg(long)]
    class: String,
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    #[arg(long, short)]
    weights: Option<PathBuf>,
    #[arg(long, default_value_t = 300, value_parser = crate::args::count)]
    steps: usize,
    #[arg(long, default_value_t = 0.05, value_parser = crate::args::positive)]
    lr: f64,
    /// Weight of the total-variation penalty.
    #[arg(long, default_value_t = 0.01, value_parser = crate::args::non_negative)]
    tv: f64,
    /// Maximum random shift of the view each step (pixels).
    #[arg(long, default_value_t = 16)]
    jitter: usize,
    /// Image parameterisation: fft (decorrelated frequencies and colours) or pixel.
    #[arg(long, default_value = "fft", value_parser = ["fft", "pixel"])]
    param: String,
    /// Maximise the log-probability instead of the logit.
    #[arg(long)]
    log_prob: bool,
    /// Random scale of the view each step, within [1/S, S] (1: off).
    #[arg(long, default_value_t = 1.1, value_parser = crate::args::at_least_one)]
    scale: f64,
    /// Random rotation of the view each step, within ±R degrees (0: off).
    #[arg(long, default_value_t = 5.0, value_parser = crate::args::degrees)]
    rotate: f64,
    /// Size of the square image, 32 to 2048 (default: the backbone's resize size, 256 for
    /// 224 inputs).
    #[arg(long, value_parser = crate::args::image_side)]
    size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A trained whisker model (run directory or model.safetensors) instead of a zoo backbone.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn dream_cmd(a: DreamArgs, quiet: bool) -> Result<i32> {
    use whisker::inspect::dream::{dream, DreamConfig, Param};
    let device = whisker::default_device().autodiff();
    let subject = load_model(a.model.as_ref(), &a.backbone, a.weights.as_ref(), &device)?;
    let class = subject.class_index(&a.class)?;
    let cfg = DreamConfig {
        class,
        steps: a.steps,
        lr: a.lr,
        tv_weight: a.tv,
        jitter: a.jitter,
        param: if a.param == "pixel" {
            Param::Pixel
        } else {
            Param::Fft
        },
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

#[derive(clap::Args)]
pub struct RobustnessArgs {
    /// A trained whisker model (run directory or model.safetensors), or a zoo backbone name
    /// (then DATASET's class folders are ImageNet labels or indices).
    model: PathBuf,
    /// The dataset it was trained on (its saved split is used), or any folder per class.
    dataset: PathBuf,
    /// Comma-separated budgets in [0,1] pixel units (fractions like 4/255 accepted).
    #[arg(long, default_value = "0,1/255,2/255,4/255,8/255", value_parser = crate::args::epsilons)]
    eps: std::vec::Vec<f64>,
    #[arg(long, default_value = "pgd", value_parser = ["fgsm", "bim", "pgd"])]
    method: String,
    #[arg(long, default_value = "linf", value_parser = ["linf", "l2"])]
    norm: String,
    #[arg(long, default_value_t = 10, value_parser = crate::args::count)]
    steps: usize,
    /// At most this many images of the split.
    #[arg(long, value_parser = crate::args::count)]
    limit: Option<usize>,
    #[arg(long, default_value = "test", value_parser = ["test", "val", "all"])]
    split: String,
    /// Plot of accuracy against epsilon (default: RUN_DIR/robustness.png).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

pub fn robustness_cmd(a: RobustnessArgs, quiet: bool) -> Result<i32> {
    use whisker::inspect::robustness::{robustness, RobustnessAttack};
    if a.norm != "l2" {
        for &e in &a.eps {
            crate::args::check_linf(e)?;
        }
    }
    let device = whisker::default_device().autodiff();
    // MODEL: a trained whisker model, or a zoo backbone name (then the dataset's class
    // folders must be ImageNet labels or indices, and the whole dataset is used)
    let zoo = !a.model.exists() && whisker::backbones::spec(&a.model.to_string_lossy()).is_ok();
    let subject = if zoo {
        load_model(None, &a.model.to_string_lossy(), None, &device)?
    } else {
        load_model(Some(&a.model), "", None, &device)?
    };
    let run_dir = if a.model.is_dir() {
        a.model.clone()
    } else {
        a.model.parent().map(PathBuf::from).unwrap_or_default()
    };
    let ds = whisker::data::datasets::Dataset::open(
        &a.dataset,
        None,
        whisker::data::datasets::Labels::Breed,
    )?;
    let class_map: Vec<usize> = if zoo {
        ds.classes
            .iter()
            .map(|c| subject.class_index(c))
            .collect::<whisker::Result<_>>()?
    } else {
        if ds.classes != subject.labels() {
            bail!("the dataset's classes are not the model's");
        }
        (0..ds.classes.len()).collect()
    };
    let idx: Vec<usize> = if a.split != "all" && !zoo {
        let split: whisker::run::SplitFile = whisker::run::read_json(&run_dir.join("split.json"))?;
        split.indices(&ds, a.split.parse()?)
    } else {
        (0..ds.items.len()).collect()
    };
    let mut items: Vec<(PathBuf, usize)> = idx
        .iter()
        .map(|&i| (ds.items[i].path.clone(), class_map[ds.items[i].label]))
        .collect();
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    let data: Vec<(image::RgbImage, usize)> = items
        .iter()
        .filter_map(|(p, l)| whisker::data::decode_file(p).ok().map(|i| (i, *l)))
        .collect();
    if data.is_empty() {
        bail!(
            "no image of the {} split of {} could be read: nothing to evaluate",
            a.split,
            a.dataset.display()
        );
    }
    let eps: Vec<f64> = a.eps.clone();
    let method = match a.method.as_str() {
        "fgsm" => Method::Fgsm,
        "bim" => Method::Bim,
        _ => Method::Pgd,
    };
    let norm = if a.norm == "l2" { Norm::L2 } else { Norm::Linf };
    let pb = crate::progress::bar((eps.len() * data.len()) as u64, "attacks", quiet);
    let t = std::time::Instant::now();
    let settings = RobustnessAttack {
        method,
        norm,
        steps: a.steps,
        seed: a.seed,
    };
    let r = robustness(&subject, &data, &eps, settings, &|d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_dir.join("robustness.png"));
    let points: Vec<(f64, f64)> = r
        .rows
        .iter()
        .map(|row| (row.eps, row.robust_accuracy))
        .collect();
    whisker::report::robustness_plot(
        &points,
        &format!("robust accuracy, {} {} ({} images)", a.method, a.norm, r.n),
        &out,
    )?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["seconds"] = json!(t.elapsed().as_secs_f64());
        v["plot"] = json!(crate::path_str(&out));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} images, clean accuracy {:.2}%",
            r.n,
            r.clean_accuracy * 100.0
        );
        println!(
            "{:>10} {:>10} {:>14} {:>10} {:>8}",
            "eps", "robust acc", "attack success", "mean L∞", "mean L2"
        );
        for row in &r.rows {
            println!(
                "{:>10} {:>9.2}% {:>13.2}% {:>10.4} {:>8.3}",
                format!("{:.0}/255", row.eps * 255.0),
                row.robust_accuracy * 100.0,
                row.attack_success_rate * 100.0,
                row.mean_linf,
                row.mean_l2
            );
        }
        println!("plot: {}", out.display());
    }
    Ok(0)
}

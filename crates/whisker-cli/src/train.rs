//! `whisker train`, `whisker eval`, `whisker predict`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use whisker::backbones::{top_k, Backbone};
use whisker::data::datasets::{Dataset, Format, Labels, Split};
use whisker::features::{extract, Extracted, FeatureCache};
use whisker::train::head::{HeadConfig, HeadState};
use whisker::train::metrics::{evaluate, Metrics};
use whisker::train::model_file::{Head, ModelMeta, TrainedModel};
use whisker::train::probe;
use whisker::train::run_dir::{check_complete, RunWriter, Start};
use whisker::weights::cache::{sha256_file, write_atomic, Cache};

#[derive(clap::Args)]
pub struct DataArgs {
    /// Dataset root: Oxford-IIIT Pet, PetImages (Cats-vs-Dogs) or a folder per class.
    dataset: PathBuf,
    /// Dataset layout (default: detected from the path).
    #[arg(long, value_parser = ["oxford-pets", "cats-vs-dogs", "image-folder"])]
    format: Option<String>,
    /// Oxford-IIIT Pet labels.
    #[arg(long, default_value = "breed", value_parser = ["breed", "species"])]
    labels: String,
}

impl DataArgs {
    fn open(&self) -> Result<Dataset> {
        let format: Option<Format> = self.format.as_deref().map(str::parse).transpose()?;
        let labels = if self.labels == "species" {
            Labels::Species
        } else {
            Labels::Breed
        };
        Ok(Dataset::open(&self.dataset, format, labels)?)
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Run directory: model.safetensors, metrics.json, split.json, skipped.json, summary.txt.
    #[arg(long)]
    out: PathBuf,
    /// Training mode. probe: L-BFGS logistic regression on cached features, L2 chosen on
    /// validation. head: an MLP head trained with AdamW on cached features.
    /// finetune: train the backbone too (last --unfreeze units, one frozen warm-up epoch,
    /// discriminative learning rates, augmentation).
    #[arg(long, default_value = "probe", value_parser = ["probe", "head", "finetune"])]
    mode: String,
    /// Finetune: backbone units to unfreeze from the top, or `all`.
    #[arg(long, default_value = "all")]
    unfreeze: String,
    /// Finetune: epochs with the backbone frozen first (fastai's fine_tune does 1).
    #[arg(long, default_value_t = 1)]
    freeze_epochs: usize,
    /// Finetune: backbone learning rate = head learning rate / this.
    #[arg(long, default_value_t = 10.0, value_parser = crate::args::positive)]
    lr_mult: f64,
    /// Finetune: clip the gradient norm to this value.
    #[arg(long, value_parser = crate::args::positive)]
    grad_clip: Option<f64>,
    /// Finetune: no augmentation (plain resize and centre crop).
    #[arg(long)]
    no_augment: bool,
    /// Finetune: train BatchNorm in the unfrozen units (batch statistics, running statistics
    /// updated) instead of keeping it frozen in eval mode.
    #[arg(long)]
    train_bn: bool,
    /// Continue a killed `--mode head` or `--mode finetune` run from the last checkpoint in
    /// --out.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace the run already in --out (its files are removed first).
    #[arg(long)]
    force: bool,
    /// Epochs (head mode).
    #[arg(long, default_value_t = 30, value_parser = crate::args::count)]
    epochs: usize,
    /// Peak learning rate (head mode).
    #[arg(long, default_value_t = 1e-3, value_parser = crate::args::positive)]
    lr: f64,
    /// Mini-batch size for head training.
    #[arg(long, default_value_t = 64, value_parser = crate::args::count)]
    head_batch_size: usize,
    /// Hidden units of the MLP head.
    #[arg(long, default_value_t = 512, value_parser = crate::args::count)]
    hidden: usize,
    /// Dropout probability of the MLP head, in [0, 1).
    #[arg(long, default_value_t = 0.5, value_parser = crate::args::fraction)]
    dropout: f64,
    /// AdamW weight decay (decoupled, as PyTorch).
    #[arg(long, default_value_t = 1e-2, value_parser = crate::args::non_negative)]
    weight_decay: f64,
    /// Label smoothing of the cross-entropy, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::fraction)]
    label_smoothing: f64,
    #[arg(long, default_value = "one-cycle", value_parser = ["one-cycle", "cosine"])]
    schedule: String,
    /// Early stopping: epochs without a better validation loss (0: off).
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Head mode: train on features of augmented images (random resized crop, flip, colour
    /// jitter, small rotation), extracted anew every epoch, instead of cached features.
    #[arg(long)]
    augment: bool,
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Backbone weights file (default: the cache).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// Fraction of each class held out for validation (model selection).
    #[arg(long, default_value_t = 0.1, value_parser = crate::args::fraction)]
    val_split: f64,
    /// Fraction of each class held out for testing (ignored when the dataset has an official test split).
    #[arg(long, default_value_t = 0.2, value_parser = crate::args::fraction)]
    test_split: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass during extraction.
    #[arg(long, default_value_t = 16, value_parser = crate::args::count)]
    batch_size: usize,
    /// Maximum L-BFGS iterations per regularisation strength.
    #[arg(long, default_value_t = 300)]
    max_iter: usize,
    /// One JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn weights_path(name: &str, weights: Option<&Path>) -> Result<(PathBuf, String)> {
    Ok(match weights {
        Some(w) => (w.to_path_buf(), sha256_file(w)?),
        None => {
            let c = Cache::default().require(name)?;
            (c.file, c.sha256)
        }
    })
}

fn load_backbone(name: &str, weights: Option<&Path>) -> Result<(Backbone, String)> {
    let device = whisker::default_device();
    let (path, sha) = weights_path(name, weights)?;
    let b = Backbone::from_file(name, &path, &device)
        .with_context(|| format!("loading {name} weights"))?
        .fold_batchnorm();
    Ok((b, sha))
}

fn extract_all(
    b: &Backbone,
    sha: &str,
    paths: &[PathBuf],
    batch: usize,
    quiet: bool,
) -> Result<Extracted> {
    let device = whisker::default_device();
    let cache = FeatureCache::new(None, b, sha);
    let pb = crate::progress::bar(paths.len() as u64, "features", quiet);
    let ex = extract(b, &device, paths, Some(&cache), batch, &|done, _| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    Ok(ex)
}

fn gather(ex: &Extracted, ds: &Dataset, idx: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let mut x = Vec::with_capacity(idx.len() * ex.dim);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        x.extend_from_slice(ex.row(i));
        y.push(ds.items[i].label);
    }
    (x, y)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

/// The files of one part (`train`, `val`, `test`) of the split a run saved in `split.json`.
pub(crate) fn split_paths(
    run_dir: &Path,
    part: &str,
) -> Result<std::collections::HashSet<PathBuf>> {
    let sj = run_dir.join("split.json");
    let text = std::fs::read_to_string(&sj)
        .with_context(|| format!("reading the run's split {}", sj.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v[part]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str().map(PathBuf::from))
        .collect())
}

fn split_json(ds: &Dataset, split: &Split) -> serde_json::Value {
    let paths = |idx: &[usize]| -> Vec<serde_json::Value> {
        idx.iter()
            .map(|&i| json!({"path": crate::path_str(&ds.items[i].path), "label": ds.items[i].label}))
            .collect()
    };
    json!({
        "seed": split.seed,
        "classes": ds.classes,
        "train": paths(&split.train),
        "val": paths(&split.val),
        "test": paths(&split.test),
    })
}

pub fn train(a: TrainArgs, quiet: bool) -> Result<i32> {
    if a.val_split + a.test_split >= 1.0 {
        bail!(
            "--val-split {} + --test-split {} leave no training images: their sum must be below 1",
            a.val_split,
            a.test_split
        );
    }
    // one writer per run directory, no silent overwrite, a marker written last
    let run = RunWriter::open(
        &a.out,
        if a.resume {
            Start::Resume
        } else {
            Start::Fresh { force: a.force }
        },
    )?;
    let ds = a.data.open()?;
    let (backbone, sha) = load_backbone(&a.backbone, a.weights.as_deref())?;
    let mut split = ds.split(a.val_split, a.test_split, a.seed);
    eprintln!(
        "{}: {} images in {} classes ({:?}), {} skipped; split {} train / {} val / {} test",
        ds.root.display(),
        ds.items.len(),
        ds.classes.len(),
        ds.format,
        ds.skipped.len(),
        split.train.len(),
        split.val.len(),
        split.test.len()
    );
    let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
    let t0 = std::time::Instant::now();
    let ex = extract_all(&backbone, &sha, &paths, a.batch_size, quiet)?;
    let extract_secs = t0.elapsed().as_secs_f64();
    if ex.cached == paths.len() {
        eprintln!(
            "features: all {} images from the feature cache",
            paths.len()
        );
    } else {
        eprintln!(
            "features: {} images ({} from cache) in {:.1} s, {:.1} images/s computed",
            paths.len(),
            ex.cached,
            extract_secs,
            ex.images_per_s
        );
    }
    // files that failed to decode leave their split and join the skipped list
    let mut skipped: Vec<serde_json::Value> = ds
        .skipped
        .iter()
        .map(|s| json!({"path": crate::path_str(&s.path), "reason": s.reason}))
        .collect();
    for (i, e) in ex.errors.iter().enumerate() {
        if let Some(e) = e {
            skipped.push(json!({"path": crate::path_str(&ds.items[i].path), "reason": e}));
        }
    }
    let ok = |v: &mut Vec<usize>| v.retain(|&i| ex.errors[i].is_none());
    ok(&mut split.train);
    ok(&mut split.val);
    ok(&mut split.test);
    if split.train.is_empty() {
        bail!("no training image could be read");
    }
    // a class whose images all failed to decode leaves the classifier without examples
    let mut seen = vec![false; ds.classes.len()];
    for &i in &split.train {
        seen[ds.items[i].label] = true;
    }
    let empty: Vec<&str> = ds
        .classes
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(c, _)| c.as_str())
        .collect();
    if !empty.is_empty() {
        bail!(
            "{}: no readable training image in class(es) {}: every file there failed to decode",
            ds.root.display(),
            empty.join(", ")
        );
    }
    let k = ds.classes.len();
    let (tx, ty) = gather(&ex, &ds, &split.train);
    let (vx, vy) = gather(&ex, &ds, &split.val);
    let device = whisker::default_device();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let t1 = std::time::Instant::now();
    let mut backbone_weights = None;
    let mut test_logits: Option<Vec<f32>> = None;
    let (head, fit_info, head_name) = if a.mode == "finetune" {
        let (h, info, sd, tl) = train_finetune(&a, &ds, &split, quiet)?;
        backbone_weights = Some(sd);
        test_logits = Some(tl);
        (Head::Linear(h), info, "finetune")
    } else if a.mode == "probe" {
        let fit = probe::fit(
            probe::Samples { x: &tx, y: &ty },
            probe::Samples { x: &vx, y: &vy },
            ex.dim,
            k,
            &device,
            a.max_iter,
        );
        let info = json!({"l2": fit.l2, "l2_search": fit.search, "lbfgs_iterations": fit.iterations, "max_iter": a.max_iter});
        eprintln!(
            "L2 chosen on validation: {:e} (tried {})",
            fit.l2,
            fit.search
                .iter()
                .map(|(l, acc)| format!("{l:e}→{:.1}%", acc * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        (Head::Linear(fit.head), info, "linear")
    } else {
        let train_paths: Vec<PathBuf> = split
            .train
            .iter()
            .map(|&i| ds.items[i].path.clone())
            .collect();
        let augment = whisker::data::augment::Augment::new(backbone.spec.input_size);
        let aug_features = |epoch: usize| -> Result<Vec<f32>> {
            let pb = crate::progress::bar(train_paths.len() as u64, "augmented", quiet);
            let ex = whisker::features::extract_augmented(
                &backbone,
                &device,
                &train_paths,
                &augment,
                a.seed,
                epoch,
                a.batch_size,
                &|d, _| pb.set_position(d as u64),
            )?;
            pb.finish_and_clear();
            Ok(ex.features)
        };
        let aug: Option<&dyn Fn(usize) -> Result<Vec<f32>>> =
            if a.augment { Some(&aug_features) } else { None };
        let (state, cfg) = train_head(&a, &tx, &ty, &vx, &vy, ex.dim, k, &device, quiet, aug)?;
        let info = json!({"config": cfg, "history": state.history, "epochs_run": state.epoch,
            "best_val_loss": state.best.as_ref().map(|b| b.0)});
        (Head::Mlp(state.best_head()), info, "mlp")
    };
    let fit_secs = t1.elapsed().as_secs_f64();
    let (sx, sy) = gather(&ex, &ds, &split.test);
    let test_metrics: Option<Metrics> = (!sy.is_empty())
        .then(|| {
            let logits = test_logits
                .clone()
                .unwrap_or_else(|| head.logits(&sx, &device));
            evaluate(&logits, &sy, &ds.classes)
        })
        .transpose()?;
    let settings = json!({
        "mode": a.mode, "backbone": backbone.spec.name, "seed": a.seed, "val_split": a.val_split,
        "test_split": a.test_split, "format": ds.format, "labels": a.data.labels, "dataset": crate::path_str(&ds.root),
        "fit": fit_info, "augment": a.augment,
    });
    let metrics = json!({
        "test": test_metrics, "n_train": split.train.len(), "n_val": split.val.len(),
        "n_test": split.test.len(), "skipped": skipped.len(),
        "extraction_seconds": extract_secs, "extraction_images_per_s": ex.images_per_s,
        "features_from_cache": ex.cached, "fit_seconds": fit_secs,
    });
    let pre = backbone.preprocess();
    let model = TrainedModel {
        meta: ModelMeta {
            format: "whisker-model".into(),
            version: 2,
            backbone: backbone.spec.name.into(),
            weights_sha256: sha.clone(),
            resize: pre.resize,
            crop: pre.crop,
            normalization: pre.norm.describe().into(),
            classes: ds.classes.clone(),
            head: head_name.into(),
            settings: settings.clone(),
            metrics: metrics.clone(),
        },
        head,
        backbone_weights,
    };
    model.save(&a.out.join("model.safetensors"))?;
    write_json(&a.out.join("metrics.json"), &metrics)?;
    write_json(&a.out.join("split.json"), &split_json(&ds, &split))?;
    write_json(&a.out.join("skipped.json"), &json!(skipped))?;
    let mut summary = format!(
        "whisker {} on {} ({} classes) with {} ({})\n",
        a.mode,
        ds.root.display(),
        k,
        backbone.spec.name,
        &sha[..12]
    );
    summary.push_str(&format!(
        "train {} / val {} / test {} images, {} skipped\n",
        split.train.len(),
        split.val.len(),
        split.test.len(),
        skipped.len(),
    ));
    summary.push_str(&format!(
        "extraction {extract_secs:.1} s ({:.1} images/s), fit {fit_secs:.2} s\n",
        ex.images_per_s
    ));
    if let Some(m) = &test_metrics {
        summary.push_str(&format!(
            "test accuracy {:.2}%  mean per-class {:.2}%  top-3 {:.2}%  top-5 {:.2}%  (n = {})\n",
            m.accuracy * 100.0,
            m.mean_per_class_accuracy * 100.0,
            m.top3 * 100.0,
            m.top5 * 100.0,
            m.n
        ));
    }
    if let Some(h) = model.meta.settings["fit"].get("history") {
        let history: Vec<whisker::train::head::EpochStats> = serde_json::from_value(h.clone())?;
        whisker::report::training_curves(&history, &a.out.join("curves.png"))?;
    }
    if let Some(m) = &test_metrics {
        whisker::report::confusion_matrix(m, &a.out.join("confusion.png"))?;
    }
    write_atomic(&a.out.join("summary.txt"), summary.as_bytes())?;
    run.finish()?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"out": crate::path_str(&a.out), "settings": settings, "metrics": metrics})
            )?
        );
    } else {
        print!("{summary}");
        println!("model: {}", a.out.join("model.safetensors").display());
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A model file (model.safetensors) or its run directory.
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Which images: the run's test or validation split, or all of the dataset.
    #[arg(long, default_value = "test", value_parser = ["test", "val", "all"])]
    split: String,
    #[arg(long, default_value_t = 16, value_parser = crate::args::count)]
    batch_size: usize,
    /// Where to write confusion.png and top_losses.png (default: RUN_DIR/eval-SPLIT).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How many of the most confidently wrong images to show.
    #[arg(long, default_value_t = 12)]
    top_losses: usize,
    #[arg(long)]
    json: bool,
}

fn model_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("model.safetensors")
    } else {
        p.to_path_buf()
    }
}

/// A trained model and its backbone on `device`: the fine-tuned backbone stored in the model
/// file, or the cached pretrained weights it was trained on (checked by sha256).
pub(crate) fn load_trained(
    p: &Path,
    device: &burn::tensor::Device,
) -> Result<(TrainedModel, Backbone)> {
    let mp = model_path(p);
    if let Some(dir) = mp.parent() {
        check_complete(dir)?;
    }
    let model = TrainedModel::load(&mp)?;
    if let Some(sd) = &model.backbone_weights {
        let b = Backbone::from_state_dict(&model.meta.backbone, sd.clone(), device)?;
        return Ok((model, b));
    }
    let c = Cache::default().require(&model.meta.backbone)?;
    if c.sha256 != model.meta.weights_sha256 {
        bail!(
            "the model was trained on {} weights with sha256 {}, but the cache holds {} ({}); fetch or import the same weights",
            model.meta.backbone,
            model.meta.weights_sha256,
            c.sha256,
            c.file.display()
        );
    }
    let b = Backbone::from_file(&model.meta.backbone, &c.file, device)?;
    Ok((model, b))
}

/// For inference: BatchNorm folded into the convolutions.
fn load_model(p: &Path) -> Result<(TrainedModel, Backbone)> {
    let (model, b) = load_trained(p, &whisker::default_device())?;
    Ok((model, b.fold_batchnorm()))
}

pub fn eval(a: EvalArgs, quiet: bool) -> Result<i32> {
    let (model, backbone) = load_model(&a.model)?;
    let ds = a.data.open()?;
    if ds.classes != model.meta.classes {
        bail!(
            "the dataset's classes ({}) are not the model's ({})",
            ds.classes.join(", "),
            model.meta.classes.join(", ")
        );
    }
    // the split saved with the run, so that evaluation never leaks training images
    let run_dir = model_path(&a.model)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let idx: Vec<usize> = if a.split == "all" {
        (0..ds.items.len()).collect()
    } else {
        let wanted = split_paths(&run_dir, &a.split)?;
        (0..ds.items.len())
            .filter(|&i| wanted.contains(&ds.items[i].path))
            .collect()
    };
    let paths: Vec<PathBuf> = idx.iter().map(|&i| ds.items[i].path.clone()).collect();
    // a fine-tuned backbone has its own features: key its cache by the model file
    let key = if model.backbone_weights.is_some() {
        format!("finetuned-{}", sha256_file(&model_path(&a.model))?)
    } else {
        model.meta.weights_sha256.clone()
    };
    let ex = extract_all(&backbone, &key, &paths, a.batch_size, quiet)?;
    let good: Vec<usize> = (0..paths.len())
        .filter(|&j| ex.errors[j].is_none())
        .collect();
    let skipped = paths.len() - good.len() + ds.skipped.len();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for &j in &good {
        x.extend_from_slice(ex.row(j));
        y.push(ds.items[idx[j]].label);
    }
    if y.is_empty() {
        bail!("no image of the {} split could be read", a.split);
    }
    let logits = model.head.logits(&x, &whisker::default_device());
    let m = evaluate(&logits, &y, &ds.classes)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_dir.join(format!("eval-{}", a.split)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    whisker::report::confusion_matrix(&m, &out.join("confusion.png"))?;
    let k = ds.classes.len();
    let mut wrong: Vec<(f64, usize, usize, f32)> = Vec::new();
    for (r, &l) in y.iter().enumerate() {
        let row = &logits[r * k..(r + 1) * k];
        let pred = whisker::train::metrics::decision(row, l);
        if pred != l {
            let lse = whisker::train::metrics::log_sum_exp(row);
            wrong.push((
                lse - row[l] as f64,
                r,
                pred,
                ((row[pred] as f64 - lse).exp()) as f32,
            ));
        }
    }
    wrong.sort_by(|p, q| q.0.total_cmp(&p.0));
    wrong.truncate(a.top_losses);
    let pre = backbone.preprocess();
    let imgs: Vec<(image::RgbImage, Vec<String>)> = wrong
        .iter()
        .filter_map(|&(loss, r, pred, prob)| {
            let item = &ds.items[idx[good[r]]];
            let img = pre.load(&item.path).ok()?;
            let name = item
                .path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            Some((
                img,
                vec![
                    format!("{name}  loss {loss:.2}"),
                    format!("true: {}", ds.classes[item.label]),
                    format!("pred: {} ({:.0}%)", ds.classes[pred], prob * 100.0),
                ],
            ))
        })
        .collect();
    if !imgs.is_empty() {
        let tiles: Vec<whisker::report::Tile<'_>> = imgs
            .iter()
            .map(|(i, l)| whisker::report::Tile {
                image: i,
                lines: l.clone(),
            })
            .collect();
        whisker::report::contact_sheet(
            &tiles,
            "top losses: the most confidently wrong predictions",
            &out.join("top_losses.png"),
        )?;
    }
    if a.json {
        let mut v = serde_json::to_value(&m)?;
        v["skipped"] = json!(skipped);
        v["split"] = json!(a.split);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} images ({} split), {} skipped\naccuracy {:.2}%  mean per-class {:.2}%  top-3 {:.2}%  top-5 {:.2}%\n",
            m.n,
            a.split,
            skipped,
            m.accuracy * 100.0,
            m.mean_per_class_accuracy * 100.0,
            m.top3 * 100.0,
            m.top5 * 100.0
        );
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>8}",
            "class", "precision", "recall", "f1", "support"
        );
        for c in &m.per_class {
            println!(
                "{:<24} {:>9.3} {:>9.3} {:>9.3} {:>8}",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        println!("\n{}", m.confusion_text());
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A model file (model.safetensors) or its run directory.
    model: PathBuf,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, short = 'k', default_value_t = 5, value_parser = crate::args::count)]
    top: usize,
    #[arg(long, default_value_t = 16, value_parser = crate::args::count)]
    batch_size: usize,
    /// Test-time augmentation: average the probabilities of the centre crop, its mirror
    /// image and the four corner crops.
    #[arg(long)]
    tta: bool,
    #[arg(long)]
    json: bool,
}

/// Per image: mean softmax over its TTA views, as log-probabilities (so that `top_k` gives
/// back the averaged probabilities), or the error.
fn tta_logprobs(
    model: &TrainedModel,
    backbone: &Backbone,
    images: &[PathBuf],
    device: &burn::tensor::Device,
) -> Vec<Result<Vec<f32>, String>> {
    let pre = backbone.preprocess();
    let k = model.head.classes();
    images
        .iter()
        .map(|p| {
            let img = whisker::data::decode_file(p).map_err(|e| e.to_string())?;
            let views = pre.tta_views(&img);
            let f = backbone.features(whisker::data::transforms::to_tensor(&views, device));
            let feats: Vec<f32> = f
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| format!("{e:?}"))?;
            let logits = model.head.logits(&feats, device);
            let mut mean = vec![0f64; k];
            for row in logits.chunks_exact(k) {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = row.iter().map(|v| (*v as f64 - m).exp()).sum();
                for (acc, v) in mean.iter_mut().zip(row) {
                    *acc += (*v as f64 - m).exp() / z / views.len() as f64;
                }
            }
            Ok(mean.iter().map(|p| p.max(1e-30).ln() as f32).collect())
        })
        .collect()
}

pub fn predict(a: PredictArgs, quiet: bool) -> Result<i32> {
    let (model, backbone) = load_model(&a.model)?;
    let device = whisker::default_device();
    let _ = quiet;
    let labels: Vec<&str> = model.meta.classes.iter().map(String::as_str).collect();
    let (logits, errors): (Vec<f32>, Vec<Option<String>>) = if a.tta {
        let r = tta_logprobs(&model, &backbone, &a.images, &device);
        let k = labels.len();
        let logits = r
            .iter()
            .flat_map(|x| x.clone().unwrap_or_else(|_| vec![0.0; k]))
            .collect();
        (logits, r.into_iter().map(|x| x.err()).collect())
    } else {
        let ex = extract(
            &backbone,
            &device,
            &a.images,
            None,
            a.batch_size,
            &|_, _| {},
        )?;
        (model.head.logits(&ex.features, &device), ex.errors)
    };
    let lt = burn::tensor::Tensor::<2>::from_data(
        burn::tensor::TensorData::new(logits, [a.images.len(), labels.len()]),
        &device,
    );
    let tops = top_k(lt, a.top, &labels);
    let mut failed = 0;
    let results: Vec<serde_json::Value> = a
        .images
        .iter()
        .zip(tops)
        .zip(&errors)
        .map(|((p, t), e)| match e {
            Some(e) => {
                failed += 1;
                json!({"image": crate::path_str(p), "error": e})
            }
            None => json!({"image": crate::path_str(p), "top": t}),
        })
        .collect();
    crate::classify::print_results(
        &model.meta.backbone,
        &model.meta.weights_sha256,
        &results,
        a.json,
    )?;
    Ok(if failed > 0 { 1 } else { 0 })
}

/// The per-epoch line: train loss, validation loss and accuracy, learning rate.
fn epoch_line(s: &whisker::train::head::EpochStats, tag: &str) -> String {
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

#[allow(clippy::too_many_arguments)]
fn train_head(
    a: &TrainArgs,
    tx: &[f32],
    ty: &[usize],
    vx: &[f32],
    vy: &[usize],
    dim: usize,
    k: usize,
    device: &burn::tensor::Device,
    quiet: bool,
    augmented: Option<&dyn Fn(usize) -> Result<Vec<f32>>>,
) -> Result<(HeadState, HeadConfig)> {
    let ckpt = a.out.join("checkpoint.safetensors");
    let cfg = HeadConfig {
        hidden: a.hidden,
        dropout: a.dropout,
        epochs: a.epochs,
        batch_size: a.head_batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        label_smoothing: a.label_smoothing,
        schedule: a.schedule.clone(),
        patience: a.patience,
        seed: a.seed,
    };
    let train = probe::Samples { x: tx, y: ty };
    let val = probe::Samples { x: vx, y: vy };
    let mut state = if a.resume && ckpt.exists() {
        let (s, saved) = HeadState::load(&ckpt)?;
        if saved != cfg {
            bail!(
                "--resume: the checkpoint in {} was made with other settings",
                a.out.display()
            );
        }
        eprintln!("resuming from epoch {} ({})", s.epoch, ckpt.display());
        s
    } else {
        if a.resume {
            bail!("--resume: no checkpoint in {}", a.out.display());
        }
        HeadState::new(train, dim, k, &cfg)
    };
    let pb = crate::progress::bar(cfg.epochs as u64, "epochs", quiet);
    pb.set_position(state.epoch as u64);
    while !state.finished(&cfg) {
        let s = match augmented {
            Some(f) => {
                let x = pb.suspend(|| f(state.epoch))?;
                state.epoch(probe::Samples { x: &x, y: ty }, val, &cfg, device)?
            }
            None => state.epoch(train, val, &cfg, device)?,
        };
        state.save(&ckpt, &cfg)?;
        pb.suspend(|| eprintln!("{}", epoch_line(&s, "")));
        pb.set_position(state.epoch as u64);
    }
    pb.finish_and_clear();
    Ok((state, cfg))
}

#[derive(clap::Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// Where to write lr_find.png (default: the current directory).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    #[arg(long, default_value_t = 512, value_parser = crate::args::count)]
    hidden: usize,
    #[arg(long, default_value_t = 64, value_parser = crate::args::count)]
    head_batch_size: usize,
    #[arg(long, default_value_t = 1e-7, value_parser = crate::args::positive)]
    start_lr: f64,
    #[arg(long, default_value_t = 10.0, value_parser = crate::args::positive)]
    end_lr: f64,
    #[arg(long, default_value_t = 100, value_parser = crate::args::count)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16, value_parser = crate::args::count)]
    batch_size: usize,
    #[arg(long)]
    json: bool,
}

/// `whisker lr-find`: the learning-rate range test for the head, on cached features of the
/// training split.
pub fn lr_find(a: LrFindArgs, quiet: bool) -> Result<i32> {
    let ds = a.data.open()?;
    let (backbone, sha) = load_backbone(&a.backbone, a.weights.as_deref())?;
    let split = ds.split(0.1, 0.2, a.seed);
    let paths: Vec<PathBuf> = split
        .train
        .iter()
        .map(|&i| ds.items[i].path.clone())
        .collect();
    let ex = extract_all(&backbone, &sha, &paths, a.batch_size, quiet)?;
    let good: Vec<usize> = (0..paths.len())
        .filter(|&j| ex.errors[j].is_none())
        .collect();
    let x: Vec<f32> = good.iter().flat_map(|&j| ex.row(j).to_vec()).collect();
    let y: Vec<usize> = good
        .iter()
        .map(|&j| ds.items[split.train[j]].label)
        .collect();
    let cfg = HeadConfig {
        hidden: a.hidden,
        batch_size: a.head_batch_size,
        seed: a.seed,
        ..Default::default()
    };
    let device = whisker::default_device();
    let curve = whisker::train::head::lr_find(
        probe::Samples { x: &x, y: &y },
        ex.dim,
        ds.classes.len(),
        &cfg,
        whisker::train::head::RangeTest {
            start: a.start_lr,
            end: a.end_lr,
            steps: a.steps,
        },
        &device,
    );
    let (steep, min10) = whisker::train::head::lr_suggestions(&curve);
    std::fs::create_dir_all(&a.out)?;
    let png = a.out.join("lr_find.png");
    whisker::report::lr_find_plot(&curve, steep, &png)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"steepest": steep, "minimum_over_10": min10, "curve": curve, "plot": crate::path_str(&png)})
            )?
        );
    } else {
        println!(
            "suggested learning rate: {} (steepest descent), {} (minimum / 10); plot: {}",
            steep
                .map(|v| format!("{v:.2e}"))
                .unwrap_or_else(|| "-".into()),
            min10
                .map(|v| format!("{v:.2e}"))
                .unwrap_or_else(|| "-".into()),
            png.display()
        );
    }
    Ok(0)
}

fn train_finetune(
    a: &TrainArgs,
    ds: &Dataset,
    split: &Split,
    quiet: bool,
) -> Result<(
    whisker::train::probe::LinearHead,
    serde_json::Value,
    whisker::weights::StateDict,
    Vec<f32>,
)> {
    use whisker::data::augment::Augment;
    use whisker::train::finetune::{FineTuneConfig, FineTuner};
    let device = whisker::default_device().autodiff();
    let spec = whisker::backbones::spec(&a.backbone)?;
    let unfreeze = if a.unfreeze == "all" {
        None
    } else {
        Some(
            a.unfreeze
                .parse::<usize>()
                .with_context(|| format!("--unfreeze {}: a number or `all`", a.unfreeze))?,
        )
    };
    let cfg = FineTuneConfig {
        unfreeze,
        freeze_epochs: a.freeze_epochs,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        lr_mult: a.lr_mult,
        weight_decay: a.weight_decay,
        label_smoothing: a.label_smoothing,
        grad_clip: a.grad_clip,
        seed: a.seed,
        augment: (!a.no_augment).then(|| Augment::new(spec.input_size)),
        train_bn: a.train_bn,
    };
    let ckpt = a.out.join("checkpoint");
    let mut t = if a.resume && ckpt.join("finetune_state.json").is_file() {
        let (t, saved) = FineTuner::load(&ckpt, &a.backbone, &device)?;
        if saved != cfg {
            bail!(
                "--resume: the checkpoint in {} was made with other settings",
                ckpt.display()
            );
        }
        eprintln!("resuming from epoch {} ({})", t.epoch, ckpt.display());
        t
    } else {
        if a.resume {
            bail!("--resume: no checkpoint in {}", ckpt.display());
        }
        let (path, _) = weights_path(&a.backbone, a.weights.as_deref())?;
        FineTuner::new(
            Backbone::from_file(&a.backbone, &path, &device)?,
            ds.classes.len(),
            &cfg,
        )?
    };
    let pre = spec.preprocess();
    let part = |idx: &[usize]| -> (Vec<PathBuf>, Vec<usize>) {
        idx.iter()
            .map(|&i| (ds.items[i].path.clone(), ds.items[i].label))
            .unzip()
    };
    let (tp, tl) = part(&split.train);
    let (vp, vl) = part(&split.val);
    let (sp, _) = part(&split.test);
    let load_train = |i: usize, epoch: usize| -> Option<image::RgbImage> {
        let img = whisker::data::decode_file(&tp[i]).ok()?;
        Some(match &cfg.augment {
            Some(aug) => aug.apply(&img, &mut Augment::rng(cfg.seed, epoch, i)),
            None => pre.apply(&img),
        })
    };
    let load_val = |i: usize| pre.load(&vp[i]).ok();
    let total = cfg.freeze_epochs + cfg.epochs;
    while !t.finished(&cfg) {
        let pb = crate::progress::bar(
            tp.len() as u64,
            &format!("epoch {}/{}", t.epoch + 1, total),
            quiet,
        );
        let s = t.epoch(&tl, &vl, &cfg, &load_train, &load_val, &|d, _| {
            pb.set_position(d as u64)
        })?;
        pb.finish_and_clear();
        t.save(&ckpt, &cfg)?;
        let frozen = if s.epoch <= cfg.freeze_epochs {
            " (frozen)"
        } else {
            ""
        };
        eprintln!("{}", epoch_line(&s, frozen));
    }
    let test_logits = t.predict_logits(sp.len(), &|i| pre.load(&sp[i]).ok(), a.batch_size);
    let (sd, head) = t.export();
    let info = json!({"config": cfg, "history": t.history, "units": t.backbone.units});
    Ok((head, info, sd, test_logits))
}

//! `whisker train`: argument parsing and printing around [`whisker::learner::Learner`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::json;
use whisker::data::datasets::{Dataset, Format, Labels};
use whisker::learner::{Learner, Mode, TrainConfig};
use whisker::run::Start;

#[derive(clap::Args)]
pub struct DataArgs {
    /// Dataset root: Oxford-IIIT Pet, PetImages (Cats-vs-Dogs) or a folder per class.
    pub dataset: PathBuf,
    /// Dataset layout (default: detected from the path).
    #[arg(long, value_parser = ["oxford-pets", "cats-vs-dogs", "image-folder"])]
    format: Option<String>,
    /// Oxford-IIIT Pet labels.
    #[arg(long, default_value = "breed", value_parser = ["breed", "species"])]
    labels: String,
}

impl DataArgs {
    pub fn open(&self) -> Result<Dataset> {
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
    /// validation (--epochs and --lr do not apply). head: an MLP head trained with AdamW on
    /// cached features. finetune: train the backbone too (last --unfreeze units, one frozen
    /// warm-up epoch, discriminative learning rates, augmentation).
    #[arg(long, default_value = "probe", value_parser = ["probe", "head", "finetune"])]
    mode: String,
    /// Finetune: backbone units to unfreeze from the top, or `all`.
    #[arg(long, default_value = "all")]
    unfreeze: String,
    /// Finetune: epochs with the backbone frozen first (fastai's fine_tune does 1).
    #[arg(long, default_value_t = 1, value_parser = crate::args::whole(0, crate::args::MAX_STEPS))]
    freeze_epochs: usize,
    /// Finetune: backbone learning rate = head learning rate / this (fastai's default, 100).
    #[arg(long, default_value_t = 100.0, value_parser = crate::args::real(0.0, 1e6, false))]
    lr_mult: f64,
    /// Finetune: clip the gradient norm to this value.
    #[arg(long, value_parser = crate::args::real(0.0, 1e6, false))]
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
    /// Epochs: of the head (head mode), or after the frozen ones (finetune mode).
    /// [default: 30]
    #[arg(long, value_parser = crate::args::whole(1, crate::args::MAX_STEPS))]
    epochs: Option<usize>,
    /// Peak learning rate of the head (head and finetune modes; the backbone's is this /
    /// --lr-mult) [default: 1e-3 in head mode; 1e-2 in finetune mode, where the new head
    /// starts from scratch and a small dataset gives it few steps].
    #[arg(long, value_parser = crate::args::real(0.0, 10.0, false))]
    lr: Option<f64>,
    /// Head mode: mini-batch size.
    #[arg(long, default_value_t = 64, value_parser = crate::args::whole(1, 1 << 16))]
    head_batch_size: usize,
    /// Head mode: hidden units of the MLP.
    #[arg(long, default_value_t = 512, value_parser = crate::args::whole(1, 1 << 16))]
    hidden: usize,
    /// Dropout probability of the MLP head, in [0, 1).
    #[arg(long, default_value_t = 0.5, value_parser = crate::args::fraction)]
    dropout: f64,
    /// AdamW weight decay (decoupled, as PyTorch).
    #[arg(long, default_value_t = 1e-2, value_parser = crate::args::real(0.0, 100.0, true))]
    weight_decay: f64,
    /// Label smoothing of the cross-entropy, in [0, 1).
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::fraction)]
    label_smoothing: f64,
    /// Head mode: learning-rate schedule (fine-tuning uses one-cycle).
    #[arg(long, default_value = "one-cycle", value_parser = ["one-cycle", "cosine"])]
    schedule: String,
    /// Head mode: early stopping after this many epochs without a better validation loss
    /// (0: off).
    #[arg(long, default_value_t = 5, value_parser = crate::args::whole(0, crate::args::MAX_STEPS))]
    patience: usize,
    /// Head mode: train on features of augmented images (random resized crop, flip, colour
    /// jitter, small rotation), extracted anew every epoch, instead of cached features.
    #[arg(long)]
    augment: bool,
    /// Backbone (see `whisker models`).
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
    /// Seed of the split, the initialisation, dropout and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass during extraction; the mini-batch in finetune mode.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// Probe mode: maximum L-BFGS iterations per regularisation strength.
    #[arg(long, default_value_t = 300, value_parser = crate::args::whole(0, 1_000_000))]
    max_iter: usize,
    /// One JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let unfreeze = if self.unfreeze == "all" {
            None
        } else {
            Some(
                self.unfreeze
                    .parse::<usize>()
                    .with_context(|| format!("--unfreeze {}: a number or `all`", self.unfreeze))?,
            )
        };
        Ok(TrainConfig {
            mode: self.mode.parse()?,
            backbone: self.backbone.clone(),
            weights: self.weights.clone(),
            val_split: self.val_split,
            test_split: self.test_split,
            seed: self.seed,
            batch_size: self.batch_size,
            max_iter: self.max_iter,
            epochs: self.epochs.unwrap_or(30),
            lr: self.lr.unwrap_or(if self.mode == "finetune" {
                whisker::learner::FINETUNE_LR
            } else {
                1e-3
            }),
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            hidden: self.hidden,
            dropout: self.dropout,
            head_batch_size: self.head_batch_size,
            schedule: self.schedule.parse()?,
            patience: self.patience,
            augment: if self.mode == "finetune" {
                !self.no_augment
            } else {
                self.augment
            },
            unfreeze,
            freeze_epochs: self.freeze_epochs,
            lr_mult: self.lr_mult,
            grad_clip: self.grad_clip,
            train_bn: self.train_bn,
        })
    }
}

pub fn train(a: TrainArgs, quiet: bool) -> Result<i32> {
    let cfg = a.config()?;
    cfg.validate()?;
    if cfg.mode == Mode::Probe && a.epochs.is_some() {
        bail!("--epochs does not apply to --mode probe (an L-BFGS fit: see --max-iter); use --mode head or finetune");
    }
    let ds = a.data.open()?;
    let start = if a.resume {
        Start::Resume
    } else {
        Start::Fresh { force: a.force }
    };
    let bars = crate::progress::Bars::new(quiet);
    let r = Learner::new(cfg).fit(&ds, &a.out, start, &bars)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "out": crate::path_str(&a.out),
                "settings": r.settings,
                "metrics": r.metrics,
                "report": r.report.as_deref().map(crate::path_str),
            }))?
        );
    } else {
        print!("{}", r.summary);
        println!("model: {}", a.out.join("model.safetensors").display());
        if let Some(p) = &r.report {
            println!("report: {}", p.display());
        }
    }
    Ok(0)
}

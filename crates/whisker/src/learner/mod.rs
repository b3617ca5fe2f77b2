//! [`Learner`]: transfer learning end to end, as fastai's `vision_learner` + `fit`: a dataset
//! and a configuration in, a complete run directory out ([`crate::run`]) — the split, the
//! fitted model (linear probe, MLP head, or fine-tuned backbone), its test metrics, curves, the
//! skipped files — with exact resume after a kill.
//!
//! ```no_run
//! # fn main() -> whisker::Result<()> {
//! use whisker::data::datasets::{Dataset, Labels};
//! use whisker::learner::{Learner, Mode, Silent, TrainConfig};
//! use whisker::run::Start;
//! let ds = Dataset::open("digits".as_ref(), None, Labels::Breed)?;
//! let cfg = TrainConfig { mode: Mode::Probe, ..TrainConfig::default() };
//! let run = Learner::new(cfg).fit(&ds, "run".as_ref(), Start::Fresh { force: true }, &Silent)?;
//! println!("test accuracy {:.2}%", run.metrics.test.unwrap().accuracy * 100.0);
//! # Ok(()) }
//! ```

pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backbones::Backbone;
use crate::cache::Cache;
use crate::data::augment::Augment;
use crate::data::datasets::{Dataset, Split};
use crate::error::{Error, Result};
use crate::features::{extract, Extracted, FeatureCache};
use crate::io::{sha256_file, write_atomic};
use crate::run::{RunMetrics, RunWriter, SkippedFile, SplitFile, Start};
use crate::train::finetune::{FineTuneConfig, FineTuner};
use crate::train::head::{EpochStats, HeadConfig, HeadState};
use crate::train::metrics::{evaluate, Metrics};
use crate::train::model_file::{Head, ModelMeta, TrainedModel};
use crate::train::probe::{self, Samples};

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Multinomial logistic regression on frozen features (L-BFGS, L2 chosen on validation).
    Probe,
    /// An MLP head on frozen features (AdamW, one-cycle or cosine, early stopping).
    Head,
    /// The backbone too: a frozen warm-up, then the last units unfrozen.
    Finetune,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "probe" => Ok(Mode::Probe),
            "head" => Ok(Mode::Head),
            "finetune" => Ok(Mode::Finetune),
            _ => Err(Error::Invalid(format!(
                "unknown mode `{s}` (probe, head, finetune)"
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Probe => "probe",
            Mode::Head => "head",
            Mode::Finetune => "finetune",
        })
    }
}

/// Every setting of a training run (the defaults are the CLI's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub mode: Mode,
    pub backbone: String,
    /// Backbone weights file (default: the cache).
    pub weights: Option<PathBuf>,
    /// Fraction of each class held out for validation.
    pub val_split: f64,
    /// Fraction of each class held out for testing (unless the dataset has an official split).
    pub test_split: f64,
    pub seed: u64,
    /// Images per forward pass (extraction, and the fine-tuning batch).
    pub batch_size: usize,
    /// Probe: L-BFGS iterations per regularisation strength.
    pub max_iter: usize,
    /// Head and fine-tune: epochs (after the frozen ones).
    pub epochs: usize,
    /// Head and fine-tune: peak learning rate (of the head).
    pub lr: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Head: hidden units, dropout, mini-batch, schedule, early-stopping patience.
    pub hidden: usize,
    pub dropout: f64,
    pub head_batch_size: usize,
    pub schedule: crate::train::head::Schedule,
    pub patience: usize,
    /// Head: features of augmented images, anew every epoch. Fine-tune: augmentation on.
    pub augment: bool,
    /// Fine-tune: units to unfreeze from the top (`None`: all).
    pub unfreeze: Option<usize>,
    pub freeze_epochs: usize,
    /// Fine-tune: backbone learning rate = head learning rate / this.
    pub lr_mult: f64,
    pub grad_clip: Option<f64>,
    pub train_bn: bool,
}

/// The head's peak learning rate that `whisker train --mode finetune` uses by default: the
/// new head starts from scratch and, on a small dataset, has few steps (200 digits at batch
/// 16: 9 an epoch) — at the head mode's 1e-3 a frozen epoch barely moves it (issue 25, item
/// 14: 22.5 % test accuracy after one frozen and one unfrozen epoch; 52.5 % at 1e-2 with
/// `lr_mult` 100).
pub const FINETUNE_LR: f64 = 1e-2;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            mode: Mode::Probe,
            backbone: "efficientnet_lite0".into(),
            weights: None,
            val_split: 0.1,
            test_split: 0.2,
            seed: 0,
            batch_size: 16,
            max_iter: 300,
            epochs: 30,
            lr: 1e-3,
            weight_decay: 1e-2,
            label_smoothing: 0.0,
            hidden: 512,
            dropout: 0.5,
            head_batch_size: 64,
            schedule: crate::train::head::Schedule::OneCycle,
            patience: 5,
            augment: false,
            unfreeze: None,
            freeze_epochs: 1,
            // fastai's fine_tune: the backbone at a hundredth of the head's rate
            lr_mult: 100.0,
            grad_clip: None,
            train_bn: false,
        }
    }
}

impl TrainConfig {
    /// Refuse settings outside their ranges (the library's own check; the CLI also checks
    /// when parsing).
    ///
    /// ```
    /// use whisker::learner::{Mode, TrainConfig};
    /// assert!(TrainConfig::default().validate().is_ok());
    /// let bad = TrainConfig { mode: Mode::Head, dropout: 1.5, ..TrainConfig::default() };
    /// assert!(bad.validate().unwrap_err().to_string().contains("dropout"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: String, range: &str| {
            Err(Error::Invalid(format!("{what} = {v}: must be {range}")))
        };
        let frac = |v: f64| (0.0..1.0).contains(&v);
        if !frac(self.val_split) {
            return bad("val_split", self.val_split.to_string(), "in [0, 1)");
        }
        if !frac(self.test_split) {
            return bad("test_split", self.test_split.to_string(), "in [0, 1)");
        }
        if self.val_split + self.test_split >= 1.0 {
            return bad(
                "val_split + test_split",
                (self.val_split + self.test_split).to_string(),
                "below 1 (else nothing is left to train on)",
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string(), "a finite number > 0");
        }
        if !(self.lr_mult.is_finite() && self.lr_mult > 0.0) {
            return bad("lr_mult", self.lr_mult.to_string(), "a finite number > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay.to_string(), "≥ 0");
        }
        if !frac(self.dropout) {
            return bad("dropout", self.dropout.to_string(), "in [0, 1)");
        }
        if !frac(self.label_smoothing) {
            return bad(
                "label_smoothing",
                self.label_smoothing.to_string(),
                "in [0, 1)",
            );
        }
        if let Some(g) = self.grad_clip {
            if !(g.is_finite() && g > 0.0) {
                return bad("grad_clip", g.to_string(), "a finite number > 0");
            }
        }
        for (what, v) in [
            ("batch_size", self.batch_size),
            ("head_batch_size", self.head_batch_size),
            ("hidden", self.hidden),
            ("epochs", self.epochs),
        ] {
            if v == 0 {
                return bad(what, "0".into(), "≥ 1");
            }
        }
        crate::backbones::spec(&self.backbone)?;
        Ok(())
    }

    fn head_config(&self) -> HeadConfig {
        HeadConfig {
            hidden: self.hidden,
            dropout: self.dropout,
            epochs: self.epochs,
            batch_size: self.head_batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            label_smoothing: self.label_smoothing,
            schedule: self.schedule,
            patience: self.patience,
            seed: self.seed,
        }
    }

    fn finetune_config(&self) -> Result<FineTuneConfig> {
        let spec = crate::backbones::spec(&self.backbone)?;
        Ok(FineTuneConfig {
            unfreeze: self.unfreeze,
            freeze_epochs: self.freeze_epochs,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            lr_mult: self.lr_mult,
            weight_decay: self.weight_decay,
            label_smoothing: self.label_smoothing,
            grad_clip: self.grad_clip,
            seed: self.seed,
            augment: self.augment.then(|| Augment::new(spec.input_size)),
            train_bn: self.train_bn,
        })
    }
}

/// What a long operation reports while it runs (the CLI turns these into progress bars and
/// log lines). Every method has a silent default.
pub trait Observer: Sync {
    /// `done` of `total` items of a phase (`"features"`, `"decode"`, `"epoch 3/5"`…).
    fn progress(&self, _phase: &str, _done: usize, _total: usize) {}
    /// A phase ended.
    fn finished(&self, _phase: &str) {}
    /// A line for the user.
    fn message(&self, _text: &str) {}
    /// An epoch ended (`frozen`: the backbone was frozen during it).
    fn epoch(&self, _stats: &EpochStats, _frozen: bool) {}
}

/// An observer that says nothing.
pub struct Silent;
impl Observer for Silent {}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub dir: PathBuf,
    pub metrics: RunMetrics,
    /// Every setting, as stored in the model file.
    pub settings: serde_json::Value,
    /// The human summary (also `summary.txt`).
    pub summary: String,
    /// `report.html`, unless drawing it failed (the run is complete either way).
    pub report: Option<PathBuf>,
}

/// Trains classifiers on a backbone's features, or fine-tunes it.
#[derive(Debug, Clone)]
pub struct Learner {
    pub config: TrainConfig,
}

struct Weights {
    path: PathBuf,
    sha256: String,
}

fn weights(cfg: &TrainConfig) -> Result<Weights> {
    Ok(match &cfg.weights {
        Some(p) => Weights {
            path: p.clone(),
            sha256: sha256_file(p)?,
        },
        None => {
            let c = Cache::default().require(&cfg.backbone)?;
            Weights {
                path: c.file,
                sha256: c.sha256,
            }
        }
    })
}

/// The backbone (BatchNorm folded) and its features of `paths`, through the feature cache.
fn frozen_features(
    cfg: &TrainConfig,
    w: &Weights,
    paths: &[PathBuf],
    obs: &dyn Observer,
) -> Result<(Backbone, Extracted)> {
    let device = crate::default_device();
    let b = Backbone::from_file(&cfg.backbone, &w.path, &device)?.fold_batchnorm();
    let cache = FeatureCache::new(None, &b, &w.sha256);
    let ex = extract(&b, &device, paths, Some(&cache), cfg.batch_size, &|d, n| {
        obs.progress("features", d, n)
    })?;
    obs.finished("features");
    Ok((b, ex))
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

/// What the fit produced, before it is written.
struct Fitted {
    head: Head,
    info: serde_json::Value,
    backbone_weights: Option<crate::weights::StateDict>,
    /// Test logits computed by the fit itself (fine-tuning), else computed from features.
    test_logits: Option<Vec<f32>>,
    history: Vec<EpochStats>,
}

impl Learner {
    pub fn new(config: TrainConfig) -> Self {
        Learner { config }
    }

    /// Train on `ds` into the run directory `out`, and evaluate on the test split.
    pub fn fit(
        &self,
        ds: &Dataset,
        out: &Path,
        start: Start,
        obs: &dyn Observer,
    ) -> Result<RunResult> {
        let cfg = &self.config;
        cfg.validate()?;
        if start == Start::Resume {
            // before anything in the run changes: a refused resume leaves the run as it was
            check_resume(out, cfg)?;
        }
        // one writer per run directory, no silent overwrite, the marker written last
        let run = RunWriter::open(out, start)?;
        let resume = start == Start::Resume;
        let w = weights(cfg)?;
        let mut split = ds.split(cfg.val_split, cfg.test_split, cfg.seed);
        obs.message(&format!(
            "{}: {} images in {} classes ({:?}), {} skipped; split {} train / {} val / {} test",
            ds.root.display(),
            ds.items.len(),
            ds.classes.len(),
            ds.format,
            ds.skipped.len(),
            split.train.len(),
            split.val.len(),
            split.test.len()
        ));
        let paths: Vec<PathBuf> = ds.items.iter().map(|i| i.path.clone()).collect();
        let device = crate::default_device();
        let t0 = Instant::now();
        // Frozen features for the probe and the head; for fine-tuning only a check that
        // every image decodes (no forward pass).
        let (ex, errors): (Option<(Backbone, Extracted)>, Vec<Option<String>>) =
            if cfg.mode == Mode::Finetune {
                let done = std::sync::atomic::AtomicUsize::new(0);
                let errors = paths
                    .par_iter()
                    .map(|p| {
                        let r = crate::data::decode_file(p).err().map(|e| e.to_string());
                        let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        obs.progress("decode", d, paths.len());
                        r
                    })
                    .collect();
                obs.finished("decode");
                (None, errors)
            } else {
                let (b, ex) = frozen_features(cfg, &w, &paths, obs)?;
                if ex.cached == paths.len() {
                    obs.message(&format!(
                        "features: all {} images from the feature cache",
                        paths.len()
                    ));
                } else {
                    obs.message(&format!(
                        "features: {} images ({} from cache) in {}",
                        paths.len(),
                        ex.cached,
                        timing(t0.elapsed().as_secs_f64(), ex.images_per_s)
                    ));
                }
                if let Some(w) = &ex.cache_warning {
                    obs.message(&format!("warning: {w}"));
                }
                let errors = ex.errors.clone();
                (Some((b, ex)), errors)
            };
        let extract_secs = t0.elapsed().as_secs_f64();
        // files that failed to decode leave their split and join the skipped list
        let mut skipped: Vec<SkippedFile> = ds.skipped.iter().map(SkippedFile::from).collect();
        for (i, e) in errors.iter().enumerate() {
            if let Some(e) = e {
                skipped.push(SkippedFile {
                    path: ds.items[i].path.to_string_lossy().into_owned(),
                    reason: e.clone(),
                });
            }
        }
        for part in [&mut split.train, &mut split.val, &mut split.test] {
            part.retain(|&i| errors[i].is_none());
        }
        check_trainable(ds, &split)?;
        let t1 = Instant::now();
        let fitted = match (&ex, cfg.mode) {
            (_, Mode::Finetune) => self.fit_finetune(ds, &split, &w, out, resume, obs)?,
            (Some((_, ex)), Mode::Probe) => self.fit_probe(ds, &split, ex, obs)?,
            (Some((b, ex)), Mode::Head) => self.fit_head(ds, &split, b, ex, out, resume, obs)?,
            (None, _) => return Err(Error::Internal("no features".into())),
        };
        let fit_secs = t1.elapsed().as_secs_f64();
        let test_eval: Option<Evaluation> = if split.test.is_empty() {
            None
        } else {
            let logits = match (&fitted.test_logits, &ex) {
                (Some(l), _) => l.clone(),
                (None, Some((_, ex))) => fitted
                    .head
                    .logits(&gather(ex, ds, &split.test).0, &device)?,
                (None, None) => return Err(Error::Internal("no test logits".into())),
            };
            let labels: Vec<usize> = split.test.iter().map(|&i| ds.items[i].label).collect();
            Some(Evaluation {
                metrics: evaluate(&logits, &labels, &ds.classes)?,
                items: split.test.clone(),
                logits,
                skipped: skipped.len(),
            })
        };
        let test_metrics: Option<Metrics> = test_eval.as_ref().map(|e| e.metrics.clone());
        let spec = crate::backbones::spec(&cfg.backbone)?;
        let mut settings = identity(cfg, spec.name);
        settings.insert("format".into(), json!(ds.format));
        settings.insert("dataset".into(), json!(ds.root.to_string_lossy()));
        settings.insert("fit".into(), fitted.info);
        let settings = serde_json::Value::Object(settings);
        let metrics = RunMetrics {
            test: test_metrics.clone(),
            n_train: split.train.len(),
            n_val: split.val.len(),
            n_test: split.test.len(),
            skipped: skipped.len(),
            extraction_seconds: extract_secs,
            extraction_images_per_s: ex.as_ref().map(|(_, e)| e.images_per_s).unwrap_or(0.0),
            features_from_cache: ex.as_ref().map(|(_, e)| e.cached).unwrap_or(0),
            fit_seconds: fit_secs,
        };
        let pre = spec.preprocess();
        let head_kind = match cfg.mode {
            Mode::Probe => "linear",
            Mode::Head => "mlp",
            Mode::Finetune => "finetune",
        };
        let model = TrainedModel {
            meta: ModelMeta {
                format: "whisker-model".into(),
                version: 2,
                backbone: spec.name.into(),
                weights_sha256: w.sha256.clone(),
                resize: pre.resize,
                crop: pre.crop,
                normalization: pre.norm.describe().into(),
                interpolation: pre.filter,
                classes: ds.classes.clone(),
                head: head_kind.into(),
                settings: settings.clone(),
                metrics: serde_json::to_value(&metrics)
                    .map_err(|e| Error::Internal(e.to_string()))?,
            },
            head: fitted.head,
            backbone_weights: fitted.backbone_weights,
        };
        model.save(&out.join("model.safetensors"))?;
        crate::run::write_json(&out.join("metrics.json"), &metrics)?;
        crate::run::write_json(&out.join("split.json"), &SplitFile::new(ds, &split))?;
        crate::run::write_json(&out.join("skipped.json"), &skipped)?;
        if !fitted.history.is_empty() {
            write_atomic(
                &out.join("history.csv"),
                crate::run::history_csv(&fitted.history).as_bytes(),
            )?;
            let marks = crate::report::CurveMarks {
                unfreeze: (cfg.mode == Mode::Finetune
                    && cfg.freeze_epochs > 0
                    && fitted.history.len() > cfg.freeze_epochs)
                    .then_some(cfg.freeze_epochs + 1),
                // the head keeps its best epoch; fine-tuning keeps the last
                best: match cfg.mode {
                    Mode::Finetune => fitted.history.last().map(|s| s.epoch),
                    _ => crate::report::CurveMarks::best_of(&fitted.history),
                },
            };
            crate::report::training_curves(&fitted.history, &marks, &out.join("curves.png"))?;
        }
        if let Some(m) = &test_metrics {
            crate::report::confusion_matrix(m, &out.join("confusion.png"))?;
        }
        let summary = summary(cfg, ds, spec.name, &w.sha256, &metrics);
        write_atomic(&out.join("summary.txt"), summary.as_bytes())?;
        run.finish()?;
        // the page is a view of the finished run: a failure to draw it is reported, and the
        // run stays complete
        let evaluated = test_eval.as_ref().map(|ev| report::Evaluated {
            part: "test".into(),
            ev,
            ds,
        });
        let opts = report::ReportOptions {
            batch_size: cfg.batch_size,
            ..Default::default()
        };
        let progress = |phase: &str, d: usize, n: usize| obs.progress(phase, d, n);
        let report = match report::write_report(out, None, evaluated, None, &opts, &progress) {
            Ok(p) => Some(p),
            Err(e) => {
                obs.message(&format!("warning: report.html was not written: {e}"));
                None
            }
        };
        obs.finished("top losses");
        Ok(RunResult {
            dir: out.to_path_buf(),
            metrics,
            settings,
            summary,
            report,
        })
    }

    fn fit_probe(
        &self,
        ds: &Dataset,
        split: &Split,
        ex: &Extracted,
        obs: &dyn Observer,
    ) -> Result<Fitted> {
        let cfg = &self.config;
        let (tx, ty) = gather(ex, ds, &split.train);
        let (vx, vy) = gather(ex, ds, &split.val);
        let fit = probe::fit(
            Samples { x: &tx, y: &ty },
            Samples { x: &vx, y: &vy },
            ex.dim,
            ds.classes.len(),
            &crate::default_device(),
            cfg.max_iter,
        )?;
        obs.message(&if fit.search.is_empty() {
            format!(
                "L2 {:e} (no validation split to choose it on: pass --val-split to search)",
                fit.l2
            )
        } else {
            format!(
                "L2 chosen on validation: {:e} (tried {})",
                fit.l2,
                fit.search
                    .iter()
                    .map(|(l, acc)| format!("{l:e}→{:.1}%", acc * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        Ok(Fitted {
            info: json!({"l2": fit.l2, "l2_search": fit.search, "lbfgs_iterations": fit.iterations, "max_iter": cfg.max_iter}),
            head: Head::Linear(fit.head),
            backbone_weights: None,
            test_logits: None,
            history: Vec::new(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fit_head(
        &self,
        ds: &Dataset,
        split: &Split,
        backbone: &Backbone,
        ex: &Extracted,
        out: &Path,
        resume: bool,
        obs: &dyn Observer,
    ) -> Result<Fitted> {
        let cfg = &self.config;
        let hc = cfg.head_config();
        let device = crate::default_device();
        let (tx, ty) = gather(ex, ds, &split.train);
        let (vx, vy) = gather(ex, ds, &split.val);
        let train = Samples { x: &tx, y: &ty };
        let val = Samples { x: &vx, y: &vy };
        let ckpt = out.join("checkpoint.safetensors");
        let mut state = resume_or_start(
            resume,
            &ckpt,
            ckpt.exists(),
            || HeadState::load(&ckpt),
            &hc,
            |s: &HeadState| s.epoch,
            || Ok(HeadState::new(train, ex.dim, ds.classes.len(), &hc)),
            obs,
        )?;
        let train_paths: Vec<PathBuf> = split
            .train
            .iter()
            .map(|&i| ds.items[i].path.clone())
            .collect();
        let augment = Augment::new(backbone.spec.input_size);
        while !state.finished(&hc) {
            let s = if cfg.augment {
                let fx = crate::features::extract_augmented(
                    backbone,
                    &device,
                    &train_paths,
                    &augment,
                    cfg.seed,
                    state.epoch,
                    cfg.batch_size,
                    &|d, n| obs.progress("augmented", d, n),
                )?;
                obs.finished("augmented");
                state.epoch(
                    Samples {
                        x: &fx.features,
                        y: &ty,
                    },
                    val,
                    &hc,
                    &device,
                )?
            } else {
                state.epoch(train, val, &hc, &device)?
            };
            state.save(&ckpt, &hc)?;
            obs.epoch(&s, false);
            obs.progress("epochs", state.epoch, hc.epochs);
        }
        obs.finished("epochs");
        Ok(Fitted {
            info: json!({"config": hc, "history": state.history, "epochs_run": state.epoch,
                "best_val_loss": state.best.as_ref().map(|b| b.0)}),
            history: state.history.clone(),
            head: Head::Mlp(state.best_head()),
            backbone_weights: None,
            test_logits: None,
        })
    }

    fn fit_finetune(
        &self,
        ds: &Dataset,
        split: &Split,
        w: &Weights,
        out: &Path,
        resume: bool,
        obs: &dyn Observer,
    ) -> Result<Fitted> {
        let cfg = &self.config;
        let fc = cfg.finetune_config()?;
        let device = crate::default_device().autodiff();
        let ckpt = out.join("checkpoint");
        let mut t = resume_or_start(
            resume,
            &ckpt,
            ckpt.join("finetune_state.json").is_file(),
            || FineTuner::load(&ckpt, &cfg.backbone, &device),
            &fc,
            |t: &FineTuner| t.epoch,
            || {
                FineTuner::new(
                    Backbone::from_file(&cfg.backbone, &w.path, &device)?,
                    ds.classes.len(),
                    &fc,
                )
            },
            obs,
        )?;
        let pre = crate::backbones::spec(&cfg.backbone)?.preprocess();
        let part = |idx: &[usize]| -> (Vec<PathBuf>, Vec<usize>) {
            idx.iter()
                .map(|&i| (ds.items[i].path.clone(), ds.items[i].label))
                .unzip()
        };
        let (tp, tl) = part(&split.train);
        let (vp, vl) = part(&split.val);
        let (sp, _) = part(&split.test);
        let load_train = |i: usize, epoch: usize| -> Option<image::RgbImage> {
            let img = crate::data::decode_file(&tp[i]).ok()?;
            Some(match &fc.augment {
                Some(aug) => aug.apply(&img, &mut Augment::rng(fc.seed, epoch, i)),
                None => pre.apply(&img),
            })
        };
        let load_val = |i: usize| pre.load(&vp[i]).ok();
        let total = fc.freeze_epochs + fc.epochs;
        while !t.finished(&fc) {
            let phase = format!("epoch {}/{}", t.epoch + 1, total);
            let s = t.epoch(&tl, &vl, &fc, &load_train, &load_val, &|d, n| {
                obs.progress(&phase, d, n)
            })?;
            obs.finished(&phase);
            t.save(&ckpt, &fc)?;
            obs.epoch(&s, s.epoch <= fc.freeze_epochs);
        }
        // the training steps' cached buffers (tapes, gradients: up to a few GB) are not
        // needed by what follows
        whisker_kernels::buffers::release();
        let test_logits = t.predict_logits(sp.len(), &|i| pre.load(&sp[i]).ok(), cfg.batch_size)?;
        let (sd, head) = t.export()?;
        Ok(Fitted {
            info: json!({"config": fc, "history": t.history, "units": t.backbone.units}),
            history: t.history.clone(),
            head: Head::Linear(head),
            backbone_weights: Some(sd),
            test_logits: Some(test_logits),
        })
    }
}

/// The dataset's classes must be the model's, in the same order; else an error listing both
/// (at most 20 names each) and the first place they differ.
pub fn check_classes(dataset: &[String], model: &[String]) -> Result<()> {
    if dataset == model {
        return Ok(());
    }
    let list = |v: &[String]| {
        let mut s = v.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 20 {
            s.push_str(&format!(", … ({} more)", v.len() - 20));
        }
        s
    };
    let first = dataset
        .iter()
        .zip(model)
        .position(|(a, b)| a != b)
        .map(|i| {
            format!(
                "; first difference at {i}: `{}` vs `{}`",
                dataset[i], model[i]
            )
        })
        .unwrap_or_default();
    Err(Error::Invalid(format!(
        "the dataset's {} classes ({}) are not the model's {} ({}){first}",
        dataset.len(),
        list(dataset),
        model.len(),
        list(model)
    )))
}

/// The settings that make a run what it is, as `--resume` compares them: the mode, the
/// backbone, the split, and the fit's own settings.
fn resume_settings(cfg: &TrainConfig) -> Result<serde_json::Value> {
    let spec = crate::backbones::spec(&cfg.backbone)?;
    let config = match cfg.mode {
        Mode::Probe => json!({"max_iter": cfg.max_iter}),
        Mode::Head => to_json(cfg.head_config())?,
        Mode::Finetune => to_json(cfg.finetune_config()?)?,
    };
    let mut r = identity(cfg, spec.name);
    r.insert("config".into(), config);
    Ok(serde_json::Value::Object(r))
}

/// The settings that make a run what it is, recorded in its model file (`settings`) and
/// compared by `--resume`: its keys are [`IDENTITY`].
fn identity(cfg: &TrainConfig, backbone: &str) -> serde_json::Map<String, serde_json::Value> {
    let values = [
        json!(cfg.mode),
        json!(backbone),
        json!(cfg.seed),
        json!(cfg.val_split),
        json!(cfg.test_split),
        json!(cfg.augment),
    ];
    IDENTITY.iter().map(|k| k.to_string()).zip(values).collect()
}

/// The keys of [`identity`].
const IDENTITY: [&str; 6] = [
    "mode",
    "backbone",
    "seed",
    "val_split",
    "test_split",
    "augment",
];

fn to_json(v: impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(e.to_string()))
}

/// What the run in `dir` records of [`resume_settings`] (only what it records), or `None`
/// when it holds neither a complete run nor a checkpoint.
fn recorded_settings(dir: &Path) -> Result<Option<serde_json::Value>> {
    let model = dir.join("model.safetensors");
    if dir.join(crate::run::MARKER).is_file() && model.is_file() {
        let s = TrainedModel::load(&model)?.meta.settings;
        let mut r = serde_json::Map::new();
        for k in IDENTITY {
            if let Some(v) = s.get(k) {
                r.insert(k.into(), v.clone());
            }
        }
        let fit = &s["fit"];
        let config = match s["mode"].as_str() {
            Some("probe") => fit.get("max_iter").map(|m| json!({ "max_iter": m })),
            _ => fit.get("config").cloned(),
        };
        if let Some(c) = config {
            r.insert("config".into(), c);
        }
        return Ok(Some(serde_json::Value::Object(r)));
    }
    let head = dir.join("checkpoint.safetensors");
    if head.is_file() {
        let (_, hc) = HeadState::load(&head)?;
        return Ok(Some(json!({"mode": Mode::Head, "config": to_json(hc)?})));
    }
    let ft = dir.join("checkpoint");
    if ft.join("finetune_state.json").is_file() {
        let fc = FineTuner::saved_config(&ft)?;
        return Ok(Some(
            json!({"mode": Mode::Finetune, "config": to_json(fc)?}),
        ));
    }
    Ok(None)
}

/// Where `recorded` and `current` differ, for the keys `recorded` has: "path: the run has
/// A, this command B".
fn settings_diff(
    recorded: &serde_json::Value,
    current: &serde_json::Value,
    at: &str,
) -> Vec<String> {
    match (recorded, current) {
        (serde_json::Value::Object(r), serde_json::Value::Object(c)) => r
            .iter()
            .flat_map(|(k, rv)| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match c.get(k) {
                    Some(cv) => settings_diff(rv, cv, &path),
                    None => vec![format!("{path}: the run has {rv}, this command none")],
                }
            })
            .collect(),
        (r, c) if r == c => Vec::new(),
        // numbers written as integers or floats (1 and 1.0) are the same setting
        (r, c) if r.as_f64().is_some() && r.as_f64() == c.as_f64() => Vec::new(),
        (r, c) => vec![format!("{at}: the run has {r}, this command {c}")],
    }
}

/// `--resume` continues the run in `out` only with the settings it was made with, and only
/// if there is something to continue; else an error naming the difference, before anything
/// in `out` changes.
fn check_resume(out: &Path, cfg: &TrainConfig) -> Result<()> {
    let current = resume_settings(cfg)?;
    match recorded_settings(out)? {
        None if cfg.mode == Mode::Probe => Ok(()),
        None => Err(Error::Conflict {
            path: out.to_path_buf(),
            reason: format!(
                "--resume: no {} checkpoint and no complete run here: nothing to resume (train without --resume)",
                if cfg.mode == Mode::Head { "head" } else { "fine-tuning" }
            ),
        }),
        Some(recorded) => {
            let diff = settings_diff(&recorded, &current, "");
            if diff.is_empty() {
                return Ok(());
            }
            const SHOW: usize = 6;
            let mut list = diff.iter().take(SHOW).cloned().collect::<Vec<_>>().join("; ");
            if diff.len() > SHOW {
                list.push_str(&format!("; … ({} more)", diff.len() - SHOW));
            }
            Err(Error::Conflict {
                path: out.to_path_buf(),
                reason: format!(
                    "--resume: the run was made with other settings ({list}); give the run's settings to continue it, or --force to replace it"
                ),
            })
        }
    }
}

/// The training state: loaded from the checkpoint at `ckpt` when resuming (its settings must
/// be `cfg`), else a fresh one. Resuming without a checkpoint is an error.
#[allow(clippy::too_many_arguments)]
fn resume_or_start<S, C: PartialEq>(
    resume: bool,
    ckpt: &Path,
    exists: bool,
    load: impl FnOnce() -> Result<(S, C)>,
    cfg: &C,
    epoch: impl Fn(&S) -> usize,
    fresh: impl FnOnce() -> Result<S>,
    obs: &dyn Observer,
) -> Result<S> {
    if !resume {
        return fresh();
    }
    if !exists {
        return Err(Error::Invalid(format!(
            "--resume: no checkpoint at {}",
            ckpt.display()
        )));
    }
    let (state, saved) = load()?;
    if &saved != cfg {
        return Err(Error::Invalid(format!(
            "--resume: the checkpoint at {} was made with other settings",
            ckpt.display()
        )));
    }
    obs.message(&format!(
        "resuming from epoch {} ({})",
        epoch(&state),
        ckpt.display()
    ));
    Ok(state)
}

/// Every class needs a training image that decodes.
fn check_trainable(ds: &Dataset, split: &Split) -> Result<()> {
    if split.train.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no training image could be read",
            ds.root.display()
        )));
    }
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
        return Err(Error::Invalid(format!(
            "{}: no readable training image in class(es) {}: every file there failed to decode",
            ds.root.display(),
            empty.join(", ")
        )));
    }
    Ok(())
}

/// "12.3 s, 45.6 images/s computed": the rate only when there was a second of work to
/// measure it on (a few images computed in no time are no rate).
fn timing(secs: f64, images_per_s: f64) -> String {
    if secs >= 1.0 && images_per_s > 0.0 {
        format!("{secs:.1} s, {images_per_s:.1} images/s computed")
    } else {
        format!("{secs:.1} s")
    }
}

fn summary(cfg: &TrainConfig, ds: &Dataset, backbone: &str, sha: &str, m: &RunMetrics) -> String {
    let mut s = format!(
        "whisker {} on {} ({} classes) with {} ({})\n",
        cfg.mode,
        ds.root.display(),
        ds.classes.len(),
        backbone,
        &sha[..12.min(sha.len())]
    );
    s.push_str(&format!(
        "train {} / val {} / test {} images, {} skipped\n",
        m.n_train, m.n_val, m.n_test, m.skipped,
    ));
    let features = if cfg.mode == Mode::Finetune {
        String::new()
    } else if m.extraction_images_per_s == 0.0 {
        "features from the cache, ".to_string()
    } else {
        format!(
            "extraction {}, ",
            timing(m.extraction_seconds, m.extraction_images_per_s)
        )
    };
    s.push_str(&format!("{features}fit {:.2} s\n", m.fit_seconds));
    if let Some(t) = &m.test {
        s.push_str(&format!(
            "test accuracy {:.2}%  mean per-class {:.2}%  top-3 {:.2}%  top-5 {:.2}%  (n = {})\n",
            t.accuracy * 100.0,
            t.mean_per_class_accuracy * 100.0,
            t.top3 * 100.0,
            t.top5 * 100.0,
            t.n
        ));
    }
    s
}

/// Which images of a dataset an evaluation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    /// A part of the split saved with the run (never a training image for `Test`).
    Part(crate::run::Part),
    /// Every image of the dataset.
    All,
}

/// One misclassified image, by how confidently it is wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLoss {
    /// Index into the dataset's items.
    pub item: usize,
    /// Cross-entropy of the true class.
    pub loss: f64,
    /// The class it was taken for, and that class's probability.
    pub predicted: usize,
    pub probability: f64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub metrics: Metrics,
    /// Dataset items evaluated (images that could be read), in order.
    pub items: Vec<usize>,
    /// `[items.len(), classes]` logits.
    pub logits: Vec<f32>,
    /// Images of the subset that could not be read, plus the dataset's skipped files.
    pub skipped: usize,
}

impl Evaluation {
    /// The `n` most confidently wrong images, worst first (fastai's `top_losses`).
    pub fn top_losses(&self, ds: &Dataset, n: usize) -> Vec<TopLoss> {
        let k = ds.classes.len();
        let mut wrong: Vec<TopLoss> = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(r, &item)| {
                let row = &self.logits[r * k..(r + 1) * k];
                let l = ds.items[item].label;
                let pred = crate::train::metrics::decision(row, l);
                (pred != l).then(|| {
                    let lse = crate::train::metrics::log_sum_exp(row);
                    TopLoss {
                        item,
                        loss: lse - row[l] as f64,
                        predicted: pred,
                        probability: (row[pred] as f64 - lse).exp(),
                    }
                })
            })
            .collect();
        wrong.sort_by(|a, b| b.loss.total_cmp(&a.loss));
        wrong.truncate(n);
        wrong
    }
}

/// Evaluate a trained model on `ds`: the part of the split saved in its run directory
/// (`run`), or all of it. The dataset's classes must be the model's; an evaluation with no
/// readable image is an error.
pub fn evaluate_model(
    model: &crate::model::Model,
    run: &Path,
    ds: &Dataset,
    subset: Subset,
    batch_size: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Evaluation> {
    check_classes(&ds.classes, model.labels())?;
    let idx: Vec<usize> = match subset {
        Subset::All => (0..ds.items.len()).collect(),
        Subset::Part(p) => {
            let split: SplitFile = crate::run::read_json(&run.join("split.json"))?;
            split.indices(ds, p)
        }
    };
    let paths: Vec<PathBuf> = idx.iter().map(|&i| ds.items[i].path.clone()).collect();
    let opts = crate::model::PredictOptions {
        batch_size,
        ..Default::default()
    };
    let p = model.predict_files(&paths, &opts, progress)?;
    let good: Vec<usize> = (0..paths.len())
        .filter(|&j| p.errors[j].is_none())
        .collect();
    if good.is_empty() {
        let what = match subset {
            Subset::All => "the dataset".to_string(),
            Subset::Part(part) => format!("the run's {part} split"),
        };
        return Err(Error::Invalid(format!(
            "{}: no image of {what} could be read ({} listed): is it the dataset the model was trained on?",
            ds.root.display(),
            paths.len()
        )));
    }
    let k = p.k;
    let logits: Vec<f32> = good
        .iter()
        .flat_map(|&j| p.scores[j * k..(j + 1) * k].to_vec())
        .collect();
    let items: Vec<usize> = good.iter().map(|&j| idx[j]).collect();
    let labels: Vec<usize> = items.iter().map(|&i| ds.items[i].label).collect();
    Ok(Evaluation {
        metrics: evaluate(&logits, &labels, &ds.classes)?,
        skipped: paths.len() - good.len() + ds.skipped.len(),
        items,
        logits,
    })
}

impl Learner {
    /// The learning-rate range test (fastai's `lr_find`) for the head on the training split's
    /// cached features: (learning rate, smoothed loss) pairs.
    pub fn lr_find(
        &self,
        ds: &Dataset,
        range: crate::train::head::RangeTest,
        obs: &dyn Observer,
    ) -> Result<Vec<(f64, f64)>> {
        let cfg = &self.config;
        cfg.validate()?;
        let w = weights(cfg)?;
        let device = crate::default_device();
        let split = ds.split(cfg.val_split, cfg.test_split, cfg.seed);
        let paths: Vec<PathBuf> = split
            .train
            .iter()
            .map(|&i| ds.items[i].path.clone())
            .collect();
        let (_, ex) = frozen_features(cfg, &w, &paths, obs)?;
        let good: Vec<usize> = (0..paths.len())
            .filter(|&j| ex.errors[j].is_none())
            .collect();
        let x: Vec<f32> = good.iter().flat_map(|&j| ex.row(j).to_vec()).collect();
        let y: Vec<usize> = good
            .iter()
            .map(|&j| ds.items[split.train[j]].label)
            .collect();
        if y.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no training image could be read",
                ds.root.display()
            )));
        }
        crate::train::head::lr_find(
            Samples { x: &x, y: &y },
            ex.dim,
            ds.classes.len(),
            &cfg.head_config(),
            range,
            &device,
        )
    }
}

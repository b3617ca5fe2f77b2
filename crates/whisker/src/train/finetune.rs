//! `--mode finetune`: train the backbone itself, as fastai's `fine_tune`: first
//! `freeze_epochs` with only the new head training (backbone frozen), then the last
//! `unfreeze` units of the backbone (or all) unfrozen, with discriminative learning rates
//! (backbone lr = head lr / `lr_mult`), augmentation, optional gradient clipping. BatchNorm
//! keeps its running statistics (eval mode: Keras' lesson for small datasets); its affine
//! parameters train with their unit. Every parameter id is a hash of its checkpoint key, so
//! a checkpoint (weights + AdamW state) reloads onto the same ids and `--resume` continues
//! exactly.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::head::{lr_at, EpochStats, HeadConfig};
use super::loss_scale::{self, LossScaler};
use super::probe::LinearHead;
use crate::backbones::{Backbone, Net};
use crate::data::augment::Augment;
use crate::data::datasets::SplitMix64;
use crate::data::transforms::to_tensor;
use crate::error::{Error, Result};
use crate::weights::{param_id, RawTensor, StateDict};

/// Settings of fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FineTuneConfig {
    /// Units of the backbone to unfreeze, from the top (None: all).
    pub unfreeze: Option<usize>,
    pub freeze_epochs: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub lr_mult: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    pub augment: Option<Augment>,
    /// Train BatchNorm in the unfrozen units with batch statistics (updating the running
    /// statistics) instead of keeping it in eval mode.
    #[serde(default)]
    pub train_bn: bool,
}

/// The network being fine-tuned: the backbone's feature extractor and a new linear head.
#[derive(Module, Debug)]
pub struct FineTuneModel {
    pub net: Net,
    pub head: crate::backbones::layers::Linear,
}

/// Training state, enough to resume exactly.
pub struct FineTuner {
    pub model: FineTuneModel,
    pub backbone: Backbone,
    opt_head: ModuleOptimizer,
    opt_net: ModuleOptimizer,
    pub epoch: usize,
    pub step: u64,
    pub history: Vec<EpochStats>,
    pub classes: usize,
    /// The loss scale of f16 mixed precision (`--precision f16` on a GPU); unused otherwise.
    pub loss_scale: LossScaler,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    epoch: usize,
    step: u64,
    history: Vec<EpochStats>,
    config: FineTuneConfig,
    classes: usize,
    /// sha256 of each optimiser-state file of this epoch.
    files: BTreeMap<String, String>,
    /// f16 mixed precision's loss scale (absent in older checkpoints: the initial one).
    #[serde(default)]
    loss_scale: LossScaler,
}

struct SetGrad<'a> {
    trainable: &'a HashSet<ParamId>,
}

impl ModuleMapper for SetGrad<'_> {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let on = self.trainable.contains(&p.id);
        p.set_require_grad(on)
    }
}

fn adamw(cfg: &FineTuneConfig) -> ModuleOptimizer {
    let mut c = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(cfg.weight_decay as f32);
    if let Some(g) = cfg.grad_clip {
        c = c.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(g as f32),
        ));
    }
    c.init()
}

fn head_cfg(cfg: &FineTuneConfig) -> HeadConfig {
    HeadConfig {
        lr: cfg.lr,
        schedule: super::head::Schedule::OneCycle,
        ..Default::default()
    }
}

impl FineTuner {
    /// Start from a pretrained backbone (loaded on an autodiff device) and a fresh head.
    pub fn new(backbone: Backbone, classes: usize, cfg: &FineTuneConfig) -> Result<Self> {
        let device = backbone
            .net
            .devices()
            .into_iter()
            .next()
            .unwrap_or_default();
        if !device.is_autodiff() {
            return Err(Error::Invalid(
                "fine-tuning needs the backbone on an autodiff device".into(),
            ));
        }
        let d = backbone.spec.feature_dim;
        // PyTorch's nn.Linear initialisation, seeded
        let mut rng = SplitMix64(cfg.seed ^ 0x0F17_E700);
        let bound = 1.0 / (d as f64).sqrt();
        let mut u = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                .collect()
        };
        let (w, b) = (u(d * classes), u(classes));
        let name = backbone.spec.name;
        let head = crate::backbones::layers::Linear {
            weight: Param::initialized(
                param_id(name, "head.weight"),
                Tensor::from_data(TensorData::new(w, [d, classes]), &device),
            ),
            bias: Param::initialized(
                param_id(name, "head.bias"),
                Tensor::from_data(TensorData::new(b, [classes]), &device),
            ),
        };
        let model = FineTuneModel {
            net: backbone.net.clone(),
            head,
        };
        Ok(FineTuner {
            model,
            backbone,
            opt_head: adamw(cfg),
            opt_net: adamw(cfg),
            epoch: 0,
            step: 0,
            history: Vec::new(),
            classes,
            loss_scale: LossScaler::default(),
        })
    }

    /// Parameters trainable in the current phase.
    fn trainable(&self, cfg: &FineTuneConfig) -> HashSet<ParamId> {
        let name = self.backbone.spec.name;
        let mut set: HashSet<ParamId> =
            [param_id(name, "head.weight"), param_id(name, "head.bias")].into();
        if self.epoch >= cfg.freeze_epochs {
            // the last unit is the ImageNet classifier, unused by the feature extractor
            let n_units = self.backbone.units.len() - 1;
            let first = match cfg.unfreeze {
                Some(n) => n_units.saturating_sub(n),
                None => 0,
            };
            for p in &self.backbone.param_info {
                if !p.buffer && p.unit >= first && p.unit < n_units {
                    set.insert(p.id);
                }
            }
        }
        set
    }

    /// Whether all epochs ran.
    pub fn finished(&self, cfg: &FineTuneConfig) -> bool {
        self.epoch >= cfg.freeze_epochs + cfg.epochs
    }

    /// One epoch over `train` (image paths with labels; images already decoded by `load`),
    /// then validation. `load(i, epoch)` returns the network input (u8, crop size) of item i.
    pub fn epoch(
        &mut self,
        train_labels: &[usize],
        val_labels: &[usize],
        cfg: &FineTuneConfig,
        load_train: &(dyn Fn(usize, usize) -> Option<image::RgbImage> + Sync),
        load_val: &(dyn Fn(usize) -> Option<image::RgbImage> + Sync),
        progress: &dyn Fn(usize, usize),
    ) -> Result<EpochStats> {
        let trainable = self.trainable(cfg);
        let model = std::mem::replace(&mut self.model, placeholder(&self.backbone, self.classes));
        self.model = model.map(&mut SetGrad {
            trainable: &trainable,
        });
        let frozen_phase = self.epoch < cfg.freeze_epochs;
        if cfg.train_bn && !frozen_phase {
            for bn in self.model.net.batchnorms() {
                if bn.train_stats.is_none() && trainable.contains(&bn.weight.id) {
                    bn.enable_train_stats();
                }
            }
        }
        let (phase_epoch, phase_len) = if frozen_phase {
            (self.epoch, cfg.freeze_epochs)
        } else {
            (self.epoch - cfg.freeze_epochs, cfg.epochs)
        };
        let n = train_labels.len();
        let bs = cfg.batch_size.max(1);
        let steps = n.div_ceil(bs) as u64;
        let mut order: Vec<usize> = (0..n).collect();
        SplitMix64(cfg.seed ^ (self.epoch as u64).wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
        let device = self
            .backbone
            .net
            .devices()
            .into_iter()
            .next()
            .unwrap_or_default();
        let norm = self.backbone.spec.norm;
        let scaling = loss_scale::needed(&device);
        let mut sum = 0.0;
        let mut seen = 0;
        let (mut lr_sum, mut lr_steps) = (0.0f64, 0usize);
        for (bi, chunk) in order.chunks(bs).enumerate() {
            let imgs: Vec<(usize, Option<image::RgbImage>)> = chunk
                .par_iter()
                .map(|&i| (i, load_train(i, self.epoch)))
                .collect();
            let (idx, imgs): (Vec<usize>, Vec<image::RgbImage>) = imgs
                .into_iter()
                .filter_map(|(i, m)| m.map(|m| (i, m)))
                .unzip();
            if imgs.is_empty() {
                continue;
            }
            let labels: Vec<usize> = idx.iter().map(|&i| train_labels[i]).collect();
            let x = norm.normalize(to_tensor(&imgs, &device));
            let f = crate::backbones::train_features(&self.model.net, norm, x, cfg.train_bn);
            let logits = self.model.head.forward(f);
            let loss = super::head::cross_entropy(
                logits,
                &labels,
                self.classes,
                cfg.label_smoothing,
                &device,
            );
            let batch_loss = loss.clone().into_scalar::<f32>() as f64;
            super::check_loss(batch_loss, self.epoch + 1, bi + 1)?;
            sum += batch_loss * labels.len() as f64;
            seen += labels.len();
            let mut grads = if scaling {
                self.loss_scale.scale_loss(loss).backward()
            } else {
                loss.backward()
            };
            let step_in_phase = phase_epoch as u64 * steps + bi as u64;
            let lr = lr_at(&head_cfg(cfg), step_in_phase, steps * phase_len as u64);
            lr_sum += lr;
            lr_steps += 1;
            let mut g_head = GradientsParams::from_module(&mut grads, &self.model.head);
            let mut g_net = GradientsParams::from_module(&mut grads, &self.model.net);
            // f16: gradients back to their true size; an overflowed step is skipped
            let apply = if scaling {
                let mut u = self.loss_scale.unscaling();
                u.apply(&mut g_head, &self.model.head);
                u.apply(&mut g_net, &self.model.net);
                let finite = u.finish()?;
                self.loss_scale.update(finite);
                finite
            } else {
                true
            };
            if apply {
                let FineTuneModel { net, head } =
                    std::mem::replace(&mut self.model, placeholder(&self.backbone, self.classes));
                let head = self.opt_head.step(lr, head, g_head);
                let net = if frozen_phase {
                    net
                } else {
                    self.opt_net.step(lr / cfg.lr_mult, net, g_net)
                };
                self.model = FineTuneModel { net, head };
            }
            self.step += 1;
            progress(seen, n);
        }
        self.epoch += 1;
        let (val_loss, val_accuracy) = if val_labels.is_empty() {
            (None, None)
        } else {
            let logits = self.predict_logits(val_labels.len(), load_val, bs)?;
            super::check_validation(&logits, self.epoch)?;
            let m =
                super::metrics::evaluate(&logits, val_labels, &vec![String::new(); self.classes])?;
            (Some(m.log_loss), Some(m.accuracy))
        };
        let s = EpochStats {
            epoch: self.epoch,
            train_loss: sum / seen.max(1) as f64,
            val_loss,
            val_accuracy,
            // the mean over the epoch's steps: the last one's is ~0 at a one-cycle's end
            lr: lr_sum / lr_steps.max(1) as f64,
        };
        self.history.push(s.clone());
        Ok(s)
    }

    /// Logits of `n` images (eval mode, no augmentation).
    pub fn predict_logits(
        &self,
        n: usize,
        load: &(dyn Fn(usize) -> Option<image::RgbImage> + Sync),
        bs: usize,
    ) -> Result<Vec<f32>> {
        let model = self.model.valid();
        let device = model.net.devices().into_iter().next().unwrap_or_default();
        let mut out = vec![0f32; n * self.classes];
        let idx: Vec<usize> = (0..n).collect();
        let mut features = crate::backbones::EvalFeatures::new(&model.net, self.backbone.spec.norm);
        for chunk in idx.chunks(bs.max(1)) {
            let imgs: Vec<(usize, Option<image::RgbImage>)> =
                chunk.par_iter().map(|&i| (i, load(i))).collect();
            let ok: Vec<(usize, image::RgbImage)> = imgs
                .into_iter()
                .filter_map(|(i, m)| m.map(|m| (i, m)))
                .collect();
            if ok.is_empty() {
                continue;
            }
            let x = self.backbone.spec.norm.normalize(to_tensor(
                &ok.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
                &device,
            ));
            let f = features.features(x);
            let l = model.head.forward(f);
            let v = crate::tensor::to_vec(l)?;
            for (j, (i, _)) in ok.iter().enumerate() {
                out[i * self.classes..(i + 1) * self.classes]
                    .copy_from_slice(&v[j * self.classes..(j + 1) * self.classes]);
            }
        }
        Ok(out)
    }

    /// The fine-tuned backbone as a state dict with its checkpoint keys, and the head.
    pub fn export(&self) -> Result<(StateDict, LinearHead)> {
        let mut net = self.model.net.clone();
        for bn in net.batchnorms() {
            bn.commit_train_stats();
        }
        let mut sd = net.state_dict(&self.backbone.param_info)?;
        sd.source = "fine-tuned".into();
        let d = self.backbone.spec.feature_dim;
        let w = crate::tensor::to_vec(self.model.head.weight.val())?;
        let b = crate::tensor::to_vec(self.model.head.bias.val())?;
        let head = LinearHead {
            dim: d,
            classes: self.classes,
            mean: vec![0.0; d],
            std: vec![1.0; d],
            w,
            b,
        };
        Ok((sd, head))
    }

    /// Write a checkpoint into `dir`: weights (safetensors, checkpoint keys) and AdamW states
    /// in files named after the epoch, then `finetune_state.json` pointing at them, each file
    /// atomically; older epochs' files are removed only after. A kill at any moment leaves a
    /// consistent checkpoint (the previous or the new one).
    pub fn save(&self, dir: &Path, cfg: &FineTuneConfig) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let e = self.epoch;
        let (mut sd, head) = self.export()?;
        let (w, b) = (
            RawTensor {
                shape: vec![head.dim, head.classes],
                data: head.w,
            },
            RawTensor {
                shape: vec![head.classes],
                data: head.b,
            },
        );
        sd.tensors.insert("head.weight".into(), w);
        sd.tensors.insert("head.bias".into(), b);
        if let Some(reason) = crate::weights::non_finite(&sd.tensors) {
            return Err(Error::NonFinite(format!(
                "{}: checkpoint not written: {reason} (training diverged)",
                dir.display()
            )));
        }
        let weights_file = format!("weights-e{e}.safetensors");
        sd.save_safetensors(&dir.join(&weights_file))?;
        let mut files = BTreeMap::new();
        files.insert(
            weights_file.clone(),
            crate::io::sha256_file(&dir.join(&weights_file))?,
        );
        for (name, opt) in [("optim_head", &self.opt_head), ("optim_net", &self.opt_net)] {
            let bytes = opt
                .into_bytes()
                .map_err(|err| Error::Internal(format!("optimizer state: {err:?}")))?;
            let file = format!("{name}-e{e}.bin");
            files.insert(file.clone(), sha256_hex(&bytes));
            crate::io::write_atomic(&dir.join(file), &bytes)?;
        }
        let meta = Meta {
            epoch: e,
            step: self.step,
            history: self.history.clone(),
            config: cfg.clone(),
            classes: self.classes,
            files,
            loss_scale: self.loss_scale,
        };
        let state =
            serde_json::to_string_pretty(&meta).map_err(|err| Error::Internal(err.to_string()))?;
        let doc = StateFile {
            format: STATE_FORMAT.into(),
            sha256: sha256_hex(state.as_bytes()),
            state,
        };
        let json =
            serde_json::to_vec_pretty(&doc).map_err(|err| Error::Internal(err.to_string()))?;
        crate::io::write_atomic(&dir.join("finetune_state.json"), &json)?;
        let current = [
            format!("weights-e{e}.safetensors"),
            format!("optim_head-e{e}.bin"),
            format!("optim_net-e{e}.bin"),
        ];
        if let Ok(rd) = std::fs::read_dir(dir) {
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                let ours = ["weights-e", "optim_head-e", "optim_net-e"]
                    .iter()
                    .any(|p| n.starts_with(p));
                if ours && !current.contains(&n) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    /// The settings a checkpoint written by [`FineTuner::save`] was made with (its state
    /// file checked, no weights read).
    pub fn saved_config(dir: &Path) -> Result<FineTuneConfig> {
        Ok(Self::read_meta(dir)?.config)
    }

    fn read_meta(dir: &Path) -> Result<Meta> {
        let meta_path = dir.join("finetune_state.json");
        let text = crate::io::read_regular(&meta_path, crate::io::MAX_SMALL_FILE)?;
        let corrupt = |reason: String| Error::NotACheckpoint {
            path: meta_path.clone(),
            reason,
        };
        let doc: StateFile = serde_json::from_slice(&text)
            .map_err(|e| corrupt(format!("not a whisker fine-tuning checkpoint: {e}")))?;
        if doc.format != STATE_FORMAT || sha256_hex(doc.state.as_bytes()) != doc.sha256 {
            return Err(corrupt(
                "its checksum does not match: the checkpoint is corrupt".into(),
            ));
        }
        serde_json::from_str(&doc.state).map_err(|e| corrupt(format!("invalid state: {e}")))
    }

    /// Reload a checkpoint written by [`FineTuner::save`] for `backbone_name` on `device`
    /// (an autodiff device).
    pub fn load(
        dir: &Path,
        backbone_name: &str,
        device: &Device,
    ) -> Result<(Self, FineTuneConfig)> {
        let meta_path = dir.join("finetune_state.json");
        let corrupt = |reason: String| Error::NotACheckpoint {
            path: meta_path.clone(),
            reason,
        };
        let meta = Self::read_meta(dir)?;
        let scale = meta.loss_scale.scale;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(corrupt(format!(
                "invalid state: loss scale {scale} (a positive number)"
            )));
        }
        let e = meta.epoch;
        let weights_file = format!("weights-e{e}.safetensors");
        let wp = dir.join(&weights_file);
        if meta.files.get(&weights_file) != Some(&crate::io::sha256_file(&wp)?) {
            return Err(Error::NotACheckpoint {
                path: wp,
                reason: "its sha256 is not the one the checkpoint recorded: the file is corrupt"
                    .into(),
            });
        }
        let mut sd = StateDict::from_file(&wp)?;
        let hw = sd
            .tensors
            .remove("head.weight")
            .ok_or_else(|| Error::NotACheckpoint {
                path: wp.clone(),
                reason: "it lacks head.weight".into(),
            })?;
        let hb = sd
            .tensors
            .remove("head.bias")
            .ok_or_else(|| Error::NotACheckpoint {
                path: wp.clone(),
                reason: "it lacks head.bias".into(),
            })?;
        let backbone = Backbone::from_state_dict(backbone_name, sd, device)?;
        let mut t = FineTuner::new(backbone, meta.classes, &meta.config)?;
        let name = backbone_name;
        t.model.head.weight = Param::initialized(
            param_id(name, "head.weight"),
            Tensor::from_data(TensorData::new(hw.data, [hw.shape[0], hw.shape[1]]), device),
        );
        t.model.head.bias = Param::initialized(
            param_id(name, "head.bias"),
            Tensor::from_data(TensorData::new(hb.data, [hb.shape[0]]), device),
        );
        for (file, opt) in [
            ("optim_head", &mut t.opt_head),
            ("optim_net", &mut t.opt_net),
        ] {
            let name = format!("{file}-e{e}.bin");
            let p = dir.join(&name);
            let bytes = crate::io::read_regular(&p, crate::io::MAX_WEIGHTS_FILE)?;
            if meta.files.get(&name) != Some(&sha256_hex(&bytes)) {
                return Err(Error::NotACheckpoint {
                    path: p,
                    reason:
                        "its sha256 is not the one the checkpoint recorded: the file is corrupt"
                            .into(),
                });
            }
            let fresh = std::mem::replace(opt, adamw(&meta.config));
            *opt = fresh
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| Error::NotACheckpoint {
                    path: p.clone(),
                    reason: format!("optimizer state: {e:?}"),
                })?;
        }
        t.epoch = meta.epoch;
        t.step = meta.step;
        t.history = meta.history;
        t.loss_scale = meta.loss_scale;
        Ok((t, meta.config))
    }
}

const STATE_FORMAT: &str = "whisker-finetune-state-v2";

/// `finetune_state.json`: the state as JSON text and its sha256, so that a damaged file is
/// refused instead of resuming from wrong numbers.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    sha256: String,
    state: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A throw-away model used while the real one is moved through the optimisers.
fn placeholder(b: &Backbone, classes: usize) -> FineTuneModel {
    let device = b.net.devices().into_iter().next().unwrap_or_default();
    let _ = classes;
    FineTuneModel {
        net: b.net.clone(),
        head: crate::backbones::layers::Linear {
            weight: Param::from_tensor(Tensor::zeros([1, 1], &device)),
            bias: Param::from_tensor(Tensor::zeros([1], &device)),
        },
    }
}

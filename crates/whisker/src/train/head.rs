//! `--mode head`: an MLP head (Linear → ReLU → Dropout → Linear) trained on cached,
//! standardised features with AdamW (PyTorch's decoupled weight decay, every
//! hyper-parameter explicit), a one-cycle or cosine schedule, optional label smoothing and
//! early stopping on the validation loss. Parameters, optimiser moments and the RNG are
//! plain vectors, so a checkpoint captures the whole state and a resumed run continues
//! exactly as an uninterrupted one.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::probe::{moments, standardize, Samples};
use crate::data::datasets::SplitMix64;

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// PyTorch's OneCycleLR (cosine, 30 % warm-up).
    #[default]
    OneCycle,
    /// Cosine annealing from the peak to 0.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "one-cycle" => Ok(Schedule::OneCycle),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(crate::Error::Invalid(format!(
                "unknown schedule `{s}` (one-cycle, cosine)"
            ))),
        }
    }
}

/// Settings of head training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadConfig {
    pub hidden: usize,
    pub dropout: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub label_smoothing: f64,
    pub schedule: Schedule,
    /// Stop after this many epochs without a better validation loss (0: never).
    pub patience: usize,
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            hidden: 512,
            dropout: 0.5,
            epochs: 30,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            label_smoothing: 0.0,
            schedule: Schedule::OneCycle,
            patience: 5,
            seed: 0,
        }
    }
}

/// A trained MLP head on standardised features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MlpHead {
    pub dim: usize,
    pub hidden: usize,
    pub classes: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `[dim, hidden]`
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `[hidden, classes]`
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

fn t2(v: &[f32], r: usize, c: usize, d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [r, c]), d)
}
fn t1(v: &[f32], d: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), d)
}
fn vec_of<const D: usize>(t: Tensor<D>) -> crate::Result<Vec<f32>> {
    crate::tensor::to_vec(t)
}

impl MlpHead {
    /// Logits `[n, classes]` (eval mode: no dropout).
    pub fn logits(&self, x: &[f32], device: &Device) -> crate::Result<Vec<f32>> {
        let n = x.len() / self.dim;
        vec_of(self.logits_tensor(t2(x, n, self.dim, device)))
    }

    /// Logits of a `[n, dim]` feature tensor, differentiably (eval mode).
    pub fn logits_tensor(&self, f: Tensor<2>) -> Tensor<2> {
        let device = f.device();
        let z = (f - t1(&self.mean, &device).unsqueeze::<2>())
            / t1(&self.std, &device).unsqueeze::<2>();
        let h = z.matmul(t2(&self.w1, self.dim, self.hidden, &device))
            + t1(&self.b1, &device).unsqueeze::<2>();
        let h = burn::tensor::activation::relu(h);
        h.matmul(t2(&self.w2, self.hidden, self.classes, &device))
            + t1(&self.b2, &device).unsqueeze::<2>()
    }
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadState {
    pub head: MlpHead,
    /// Adam first and second moments, per parameter tensor (w1, b1, w2, b2).
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub step: u64,
    pub epoch: usize,
    pub rng: u64,
    pub best: Option<(f64, MlpHead)>,
    pub since_best: usize,
    pub history: Vec<EpochStats>,
}

/// One line of the training log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The mean learning rate of the epoch's steps (the head's; the backbone's is this over
    /// `lr_mult`).
    pub lr: f64,
}

/// Learning rate at `step` (0-based) of `total` steps. one-cycle: PyTorch's OneCycleLR
/// with its defaults (cosine annealing, 30 % warm-up from lr/25 to lr at step 0.3·total − 1,
/// then down to lr/25/1e4 at the last step); cosine: from lr to 0 at the last step.
pub fn lr_at(cfg: &HeadConfig, step: u64, total: u64) -> f64 {
    let cos = |a: f64, b: f64, p: f64| {
        b + (a - b) * 0.5 * (1.0 + (std::f64::consts::PI * p.clamp(0.0, 1.0)).cos())
    };
    let last = (total.max(2) - 1) as f64;
    let s = step as f64;
    if cfg.schedule == Schedule::Cosine {
        return cos(cfg.lr, 0.0, s / last);
    }
    let (start, end) = (cfg.lr / 25.0, cfg.lr / 25.0 / 1e4);
    let warm_end = 0.3 * total as f64 - 1.0;
    if s <= warm_end {
        cos(start, cfg.lr, s / warm_end)
    } else {
        cos(cfg.lr, end, (s - warm_end) / (last - warm_end))
    }
}

fn init_head(
    dim: usize,
    hidden: usize,
    classes: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
    rng: &mut SplitMix64,
) -> MlpHead {
    // PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    let mut u = |n: usize, fan_in: usize| -> Vec<f32> {
        let b = 1.0 / (fan_in as f64).sqrt();
        (0..n)
            .map(|_| ((2.0 * rng.next_f64() - 1.0) * b) as f32)
            .collect()
    };
    MlpHead {
        dim,
        hidden,
        classes,
        mean,
        std,
        w1: u(dim * hidden, dim),
        b1: u(hidden, dim),
        w2: u(hidden * classes, hidden),
        b2: u(classes, hidden),
    }
}

/// Cross-entropy with label smoothing, mean over the batch, of `[n, k]` logits.
pub fn cross_entropy(
    logits: Tensor<2>,
    labels: &[usize],
    k: usize,
    smoothing: f64,
    device: &Device,
) -> Tensor<1> {
    let n = labels.len();
    let mut target = vec![(smoothing / k as f64) as f32; n * k];
    for (i, &l) in labels.iter().enumerate() {
        target[i * k + l] += (1.0 - smoothing) as f32;
    }
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    (logp * t2(&target, n, k, device)).sum().neg() / n as f32
}

impl HeadState {
    /// A fresh state for training on `train`.
    pub fn new(train: Samples<'_>, dim: usize, classes: usize, cfg: &HeadConfig) -> Self {
        let (mean, std) = moments(train.x, dim);
        let mut rng = SplitMix64(cfg.seed ^ 0x005E_ED0F_4EAD);
        let head = init_head(dim, cfg.hidden, classes, mean, std, &mut rng);
        let zeros = |n: usize| vec![0f32; n];
        HeadState {
            m: vec![
                zeros(head.w1.len()),
                zeros(head.b1.len()),
                zeros(head.w2.len()),
                zeros(head.b2.len()),
            ],
            v: vec![
                zeros(head.w1.len()),
                zeros(head.b1.len()),
                zeros(head.w2.len()),
                zeros(head.b2.len()),
            ],
            head,
            step: 0,
            epoch: 0,
            rng: rng.0,
            best: None,
            since_best: 0,
            history: Vec::new(),
        }
    }

    /// Whether training is over (all epochs, or early stopping).
    pub fn finished(&self, cfg: &HeadConfig) -> bool {
        self.epoch >= cfg.epochs || (cfg.patience > 0 && self.since_best >= cfg.patience)
    }

    /// Train one epoch, then evaluate on `val`.
    pub fn epoch(
        &mut self,
        train: Samples<'_>,
        val: Samples<'_>,
        cfg: &HeadConfig,
        device: &Device,
    ) -> crate::Result<EpochStats> {
        let ad = device.clone().autodiff();
        let h = &self.head;
        let (dim, k) = (h.dim, h.classes);
        let n = train.y.len();
        let z = standardize(train.x, &h.mean, &h.std);
        let mut rng = SplitMix64(self.rng);
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let bs = cfg.batch_size.max(1);
        let steps_per_epoch = n.div_ceil(bs) as u64;
        let total = steps_per_epoch * cfg.epochs as u64;
        let mut sum_loss = 0.0;
        let (mut lr_sum, mut lr_steps) = (0.0f64, 0usize);
        for chunk in order.chunks(bs) {
            let mut xb = Vec::with_capacity(chunk.len() * dim);
            let mut yb = Vec::with_capacity(chunk.len());
            for &i in chunk {
                xb.extend_from_slice(&z[i * dim..(i + 1) * dim]);
                yb.push(train.y[i]);
            }
            let lr = lr_at(cfg, self.step, total);
            lr_sum += lr;
            lr_steps += 1;
            let batch_loss = self.step_on(&xb, &yb, lr, cfg, &mut rng, &ad)?;
            super::check_loss(
                batch_loss,
                self.epoch + 1,
                (self.step % steps_per_epoch) as usize,
            )?;
            sum_loss += batch_loss * chunk.len() as f64;
        }
        self.rng = rng.0;
        self.epoch += 1;
        let (val_loss, val_accuracy) = if val.y.is_empty() {
            (None, None)
        } else {
            let logits = self.head.logits(val.x, device)?;
            super::check_validation(&logits, self.epoch)?;
            let m = super::metrics::evaluate(&logits, val.y, &vec![String::new(); k])?;
            (Some(m.log_loss), Some(m.accuracy))
        };
        let score = val_loss.unwrap_or(sum_loss / n as f64);
        if self.best.as_ref().is_none_or(|(b, _)| score < *b) {
            self.best = Some((score, self.head.clone()));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        let s = EpochStats {
            epoch: self.epoch,
            train_loss: sum_loss / n as f64,
            val_loss,
            val_accuracy,
            // the mean over the epoch's steps: the last one's is ~0 at a one-cycle's end
            lr: lr_sum / lr_steps.max(1) as f64,
        };
        self.history.push(s.clone());
        Ok(s)
    }

    /// One optimisation step on a standardised mini-batch; returns its loss.
    fn step_on(
        &mut self,
        xb: &[f32],
        yb: &[usize],
        lr: f64,
        cfg: &HeadConfig,
        rng: &mut SplitMix64,
        ad: &Device,
    ) -> crate::Result<f64> {
        let h = &self.head;
        let (dim, hid, k) = (h.dim, h.hidden, h.classes);
        let b = yb.len();
        // dropout mask, from the same seeded RNG
        let keep = 1.0 - cfg.dropout;
        let mask: Vec<f32> = (0..b * hid)
            .map(|_| {
                if rng.next_f64() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let w1 = t2(&h.w1, dim, hid, ad).require_grad();
        let b1 = t1(&h.b1, ad).require_grad();
        let w2 = t2(&h.w2, hid, k, ad).require_grad();
        let b2 = t1(&h.b2, ad).require_grad();
        let a = burn::tensor::activation::relu(
            t2(xb, b, dim, ad).matmul(w1.clone()) + b1.clone().unsqueeze::<2>(),
        );
        let a = a * t2(&mask, b, hid, ad);
        let logits = a.matmul(w2.clone()) + b2.clone().unsqueeze::<2>();
        let l = cross_entropy(logits, yb, k, cfg.label_smoothing, ad);
        let value = l.clone().into_scalar::<f32>() as f64;
        let grads = l.backward();
        let grad = |p: &Tensor<2>, name: &str| -> crate::Result<Vec<f32>> {
            p.grad(&grads)
                .ok_or_else(|| crate::Error::Internal(format!("no gradient for the head's {name}")))
                .and_then(vec_of)
        };
        let grad1 = |p: &Tensor<1>, name: &str| -> crate::Result<Vec<f32>> {
            p.grad(&grads)
                .ok_or_else(|| crate::Error::Internal(format!("no gradient for the head's {name}")))
                .and_then(vec_of)
        };
        let g: Vec<Vec<f32>> = vec![
            grad(&w1, "w1")?,
            grad1(&b1, "b1")?,
            grad(&w2, "w2")?,
            grad1(&b2, "b2")?,
        ];
        self.step += 1;
        self.adamw(&g, lr, cfg);
        Ok(value)
    }

    /// AdamW exactly as PyTorch: decoupled weight decay on weights (not biases here), then
    /// bias-corrected Adam.
    fn adamw(&mut self, grads: &[Vec<f32>], lr: f64, cfg: &HeadConfig) {
        let a = super::optim::AdamParams {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
        };
        let params: [&mut Vec<f32>; 4] = [
            &mut self.head.w1,
            &mut self.head.b1,
            &mut self.head.w2,
            &mut self.head.b2,
        ];
        for (pi, p) in params.into_iter().enumerate() {
            // weight decay on the weights, not on the biases
            let decay = if pi % 2 == 0 { cfg.weight_decay } else { 0.0 };
            super::optim::adamw_step(
                p,
                &mut self.m[pi],
                &mut self.v[pi],
                &grads[pi],
                self.step as i32,
                lr,
                decay,
                a,
            );
        }
    }

    /// The head to keep: the best on validation.
    pub fn best_head(&self) -> MlpHead {
        self.best
            .as_ref()
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| self.head.clone())
    }
}

fn put(out: &mut Vec<(String, Vec<u8>, Vec<usize>)>, name: &str, v: &[f32]) {
    out.push((
        name.to_string(),
        crate::weights::f32_to_le(v),
        vec![v.len()],
    ));
}

fn head_tensors(out: &mut Vec<(String, Vec<u8>, Vec<usize>)>, p: &str, h: &MlpHead) {
    put(out, &format!("{p}w1"), &h.w1);
    put(out, &format!("{p}b1"), &h.b1);
    put(out, &format!("{p}w2"), &h.w2);
    put(out, &format!("{p}b2"), &h.b2);
    put(out, &format!("{p}mean"), &h.mean);
    put(out, &format!("{p}std"), &h.std);
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    dim: usize,
    hidden: usize,
    classes: usize,
    step: u64,
    epoch: usize,
    rng: u64,
    best_score: Option<f64>,
    since_best: usize,
    history: Vec<EpochStats>,
    config: HeadConfig,
}

impl HeadState {
    /// Write a checkpoint atomically (safetensors: parameters, moments, best head; the rest
    /// in its metadata).
    pub fn save(&self, path: &std::path::Path, cfg: &HeadConfig) -> crate::Result<()> {
        let mut t = Vec::new();
        head_tensors(&mut t, "head.", &self.head);
        if let Some((_, b)) = &self.best {
            head_tensors(&mut t, "best.", b);
        }
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            put(&mut t, &format!("adam.m{i}"), m);
            put(&mut t, &format!("adam.v{i}"), v);
        }
        let meta = StateMeta {
            dim: self.head.dim,
            hidden: self.head.hidden,
            classes: self.head.classes,
            step: self.step,
            epoch: self.epoch,
            rng: self.rng,
            best_score: self.best.as_ref().map(|b| b.0),
            since_best: self.since_best,
            history: self.history.clone(),
            config: cfg.clone(),
        };
        let md = std::collections::HashMap::from([(
            "whisker_head_state".to_string(),
            serde_json::to_string(&meta).map_err(|e| crate::Error::Internal(e.to_string()))?,
        )]);
        let bytes = crate::weights::serialize_f32(&t, Some(md))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Read a checkpoint written by [`HeadState::save`], with the settings it was made with.
    pub fn load(path: &std::path::Path) -> crate::Result<(Self, HeadConfig)> {
        let bytes = crate::io::read_regular(path, crate::io::MAX_WEIGHTS_FILE)?;
        let bad = |r: String| crate::Error::NotACheckpoint {
            path: path.to_path_buf(),
            reason: r,
        };
        let (_, md) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta: StateMeta = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("whisker_head_state"))
            .ok_or_else(|| bad("not a whisker training checkpoint".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| bad(e.to_string())))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        if !crate::weights::verify_checksum(path, &st, &bytes)? {
            return Err(bad(
                "its content checksum is missing: the file is damaged".into()
            ));
        }
        let get = |k: &str| -> crate::Result<Vec<f32>> {
            let v = st
                .tensor(k)
                .map_err(|_| bad(format!("missing tensor `{k}`")))?;
            Ok(crate::weights::f32_from_le(v.data()))
        };
        let head_of = |p: &str| -> crate::Result<MlpHead> {
            Ok(MlpHead {
                dim: meta.dim,
                hidden: meta.hidden,
                classes: meta.classes,
                mean: get(&format!("{p}mean"))?,
                std: get(&format!("{p}std"))?,
                w1: get(&format!("{p}w1"))?,
                b1: get(&format!("{p}b1"))?,
                w2: get(&format!("{p}w2"))?,
                b2: get(&format!("{p}b2"))?,
            })
        };
        let best = match meta.best_score {
            Some(s) => Some((s, head_of("best.")?)),
            None => None,
        };
        let state = HeadState {
            head: head_of("head.")?,
            m: (0..4)
                .map(|i| get(&format!("adam.m{i}")))
                .collect::<crate::Result<_>>()?,
            v: (0..4)
                .map(|i| get(&format!("adam.v{i}")))
                .collect::<crate::Result<_>>()?,
            step: meta.step,
            epoch: meta.epoch,
            rng: meta.rng,
            best,
            since_best: meta.since_best,
            history: meta.history,
        };
        Ok((state, meta.config))
    }
}

/// Learning rates swept by [`lr_find`]: `steps` values from `start` to `end`, exponentially.
#[derive(Debug, Clone, Copy)]
pub struct RangeTest {
    pub start: f64,
    pub end: f64,
    pub steps: usize,
}

/// The learning-rate range test (Smith 2015, fastai's `lr_find`): train a fresh head with a
/// learning rate growing exponentially from `start` to `end` over `steps` mini-batches,
/// recording the exponentially smoothed loss (β = 0.98, bias-corrected); stops once the loss
/// exceeds 4× its minimum. Returns (lr, smoothed loss) pairs.
pub fn lr_find(
    train: Samples<'_>,
    dim: usize,
    classes: usize,
    cfg: &HeadConfig,
    range: RangeTest,
    device: &Device,
) -> crate::Result<Vec<(f64, f64)>> {
    let mut state = HeadState::new(train, dim, classes, cfg);
    let ad = device.clone().autodiff();
    let z = standardize(train.x, &state.head.mean, &state.head.std);
    let n = train.y.len();
    let mut rng = SplitMix64(cfg.seed ^ 0x00F1_7D00);
    let mut order: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    let (mut avg, mut best) = (0.0, f64::INFINITY);
    let bs = cfg.batch_size.max(1).min(n);
    let (start, end, steps) = (range.start, range.end, range.steps);
    for i in 0..steps {
        if order.len() < bs {
            let mut o: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut o);
            order.extend(o);
        }
        let batch: Vec<usize> = order.drain(..bs).collect();
        let mut xb = Vec::with_capacity(bs * dim);
        let mut yb = Vec::with_capacity(bs);
        for &j in &batch {
            xb.extend_from_slice(&z[j * dim..(j + 1) * dim]);
            yb.push(train.y[j]);
        }
        let lr = start * (end / start).powf(i as f64 / (steps.max(2) - 1) as f64);
        let l = state.step_on(&xb, &yb, lr, cfg, &mut rng, &ad)?;
        avg = 0.98 * avg + 0.02 * l;
        let smoothed = avg / (1.0 - 0.98f64.powi(i as i32 + 1));
        if !smoothed.is_finite() || smoothed > 4.0 * best {
            break;
        }
        best = best.min(smoothed);
        out.push((lr, smoothed));
    }
    Ok(out)
}

/// fastai's suggestions from a range test: the learning rate of steepest descent of the
/// smoothed loss, and a tenth of the one at its minimum. As fastai, the first 10 and last 5
/// points (noisy start, divergence) are left out.
pub fn lr_suggestions(curve: &[(f64, f64)]) -> (Option<f64>, Option<f64>) {
    if curve.len() < 18 {
        return (None, None);
    }
    let curve = &curve[10..curve.len() - 5];
    let steep = (1..curve.len())
        .map(|i| {
            let d = (curve[i].1 - curve[i - 1].1) / (curve[i].0.ln() - curve[i - 1].0.ln());
            (d, curve[i].0)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, lr)| lr);
    let min = curve
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(lr, _)| lr / 10.0);
    (steep, min)
}

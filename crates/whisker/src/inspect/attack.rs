//! Adversarial examples bounded in [0, 1] pixel space, as torchattacks defines FGSM, BIM and
//! PGD (L∞ or L2), computed *through the preprocessing*: the photo at its own resolution is
//! the variable, and Pillow's resize (a linear map: two matrices of its filter's weights) and
//! the centre crop are part of the differentiated function. The result is saved losslessly at
//! the original size, and success is judged by classifying the saved u8 image with the exact
//! (Pillow) preprocessing, as `whisker classify` does.

use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::Classifier;
use crate::data::datasets::SplitMix64;
use crate::data::resize::{resize_matrix_rows, shorter_side_size};
use crate::data::transforms::{center_crop_offset_usize, to_image, to_tensor};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Fgsm,
    Bim,
    Pgd,
    /// Carlini–Wagner L2: minimise ‖δ‖² + c·f(x + δ) over a tanh-parameterised image with
    /// Adam (learning rate `alpha`), as torchattacks' CW (κ = 0). Not bounded by `eps`.
    Cw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    Linf,
    L2,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fgsm" => Ok(Method::Fgsm),
            "bim" => Ok(Method::Bim),
            "pgd" => Ok(Method::Pgd),
            "cw" => Ok(Method::Cw),
            _ => Err(Error::Invalid(format!(
                "unknown attack method `{s}` (fgsm, bim, pgd, cw)"
            ))),
        }
    }
}

impl std::str::FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            _ => Err(Error::Invalid(format!("unknown norm `{s}` (linf, l2)"))),
        }
    }
}

/// Attack settings. `eps` and `alpha` are in [0, 1] pixel units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackConfig {
    pub method: Method,
    pub norm: Norm,
    pub eps: f64,
    pub alpha: f64,
    pub steps: usize,
    pub random_start: bool,
    /// Targeted (make the model answer this class) or untargeted (make it leave the top-1).
    pub target: Option<usize>,
    pub seed: u64,
    /// Targeted attacks go on until the target's probability reaches this (0: until it is
    /// the top-1).
    #[serde(default)]
    pub min_confidence: f32,
    /// Carlini–Wagner's trade-off constant c.
    #[serde(default = "one")]
    pub cw_c: f64,
}

fn one() -> f64 {
    1.0
}

/// The largest L2 budget accepted: past it, every pixel of any image may move anywhere.
pub const MAX_L2_EPS: f64 = 1e4;
/// The most iterations an attack may take.
pub const MAX_STEPS: usize = 10_000;
/// The largest photo attacked: attacks work at the photo's own resolution (the saved image
/// is the photo, perturbed), differentiating through its resize, at about 80 bytes a pixel
/// (a 9000×9000 photo took 6.6 GB). 16 megapixels (~1.3 GB) covers the photos of most
/// cameras; larger ones are refused with a message, never taken to an out-of-memory abort.
pub const MAX_ATTACK_PIXELS: u64 = 16_000_000;

impl AttackConfig {
    /// One definition of an attack's settings for every front end (`whisker attack`, the
    /// server's `/api/attack`): the defaults the user did not give, and the ranges.
    ///
    /// - `norm`: L∞ unless given; Carlini–Wagner is an L2 attack (asking it for L∞ is an
    ///   error).
    /// - `alpha`: the step, eps/4 (L∞) or eps/5 (L2); for Carlini–Wagner Adam's learning
    ///   rate, 0.01.
    /// - `steps`: 1 for FGSM, 100 for Carlini–Wagner, else 40.
    pub fn new(
        method: Method,
        norm: Option<Norm>,
        eps: f64,
        alpha: Option<f64>,
        steps: Option<usize>,
        target: Option<usize>,
    ) -> Result<Self> {
        let norm = match (method, norm) {
            (Method::Cw, Some(Norm::Linf)) => {
                return Err(Error::Invalid(
                    "Carlini–Wagner is an L2 attack: leave the norm out or give l2".into(),
                ))
            }
            (Method::Cw, _) => Norm::L2,
            (_, n) => n.unwrap_or(Norm::Linf),
        };
        let alpha = alpha.unwrap_or(match (method, norm) {
            (Method::Cw, _) => 0.01,
            (_, Norm::Linf) => eps / 4.0,
            (_, Norm::L2) => eps / 5.0,
        });
        let steps = steps.unwrap_or(match method {
            Method::Fgsm => 1,
            Method::Cw => 100,
            _ => 40,
        });
        let cfg = AttackConfig {
            method,
            norm,
            eps,
            alpha,
            steps,
            random_start: false,
            target,
            seed: 0,
            min_confidence: 0.0,
            cw_c: 1.0,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every setting within its range (what [`attack`] runs only after checking).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        let finite_in = |name: &str, v: f64, lo: f64, hi: f64| -> Result<()> {
            if !(v.is_finite() && v >= lo && v <= hi) {
                return bad(format!("{name} must be from {lo} to {hi}; got {v:.6e}"));
            }
            Ok(())
        };
        if self.method == Method::Cw {
            if self.norm != Norm::L2 {
                return bad("Carlini–Wagner is an L2 attack: its norm is l2".into());
            }
            finite_in(
                "Carlini–Wagner's learning rate (alpha)",
                self.alpha,
                0.0,
                10.0,
            )?;
            if self.alpha == 0.0 {
                return bad("Carlini–Wagner's learning rate (alpha) must be above 0".into());
            }
            finite_in("Carlini–Wagner's constant c", self.cw_c, 0.0, 1e6)?;
        } else {
            match self.norm {
                Norm::Linf => {
                    if self.eps.is_finite() && self.eps > 1.0 && self.eps <= 255.0 {
                        return bad(format!(
                            "an L∞ budget (eps) of {} is more than 1: budgets are in [0, 1] pixel units (did you mean {}/255?)",
                            self.eps, self.eps
                        ));
                    }
                    finite_in("an L∞ budget (eps)", self.eps, 0.0, 1.0)?;
                    finite_in("the L∞ step (alpha)", self.alpha, 0.0, 1.0)?;
                }
                Norm::L2 => {
                    finite_in("an L2 budget (eps)", self.eps, 0.0, MAX_L2_EPS)?;
                    finite_in("the L2 step (alpha)", self.alpha, 0.0, MAX_L2_EPS)?;
                }
            }
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return bad(format!(
                "steps must be from 1 to {MAX_STEPS}; got {}",
                self.steps
            ));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad(format!(
                "the target's confidence must be from 0 to 1; got {}",
                self.min_confidence
            ));
        }
        Ok(())
    }
}

/// What an attack did, measured on the saved u8 images.
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    pub original_top1: usize,
    pub original_prob: f32,
    pub adversarial_top1: usize,
    pub adversarial_prob: f32,
    pub target: Option<usize>,
    pub target_prob: Option<f32>,
    pub success: bool,
    pub linf_255: u8,
    pub linf: f64,
    pub l2: f64,
    pub psnr: f64,
    pub steps_used: usize,
    #[serde(skip)]
    pub adversarial: RgbImage,
}

/// Classify a u8 image exactly as `whisker classify` does: (top-1, its probability, all
/// probabilities). On an exact tie the top-1 is the lowest index (for accuracy, use
/// [`crate::train::metrics::top1`] on the probabilities: a tie is no decision).
pub fn classify_u8(c: &dyn Classifier, img: &RgbImage) -> Result<(usize, f32, Vec<f32>)> {
    let b = c.backbone();
    let device = b.device().inner();
    let x = to_tensor(&[b.preprocess().apply(img)], &device);
    let logits = c.logits(x).inner();
    let p = crate::tensor::to_vec(burn::tensor::activation::softmax(logits, 1))?;
    let t = (0..p.len())
        .max_by(|&i, &j| p[i].total_cmp(&p[j]).then(j.cmp(&i)))
        .ok_or_else(|| Error::Internal("a model with no classes".into()))?;
    Ok((t, p[t], p))
}

/// What every attack method shares: the photo, its pixels, the resize-and-crop as two
/// matrices (the preprocessing as a differentiable linear map), the label to push to (the
/// target) or away from (the original top-1), and how success is judged.
struct Setup<'a> {
    c: &'a dyn Classifier,
    cfg: &'a AttackConfig,
    image: &'a RgbImage,
    device: burn::tensor::Device,
    w: usize,
    h: usize,
    /// `[w, crop]`: horizontal resize restricted to the crop's columns, transposed.
    rh_t: Tensor<2>,
    /// `[crop, h]`: vertical resize restricted to the crop's rows.
    rv: Tensor<2>,
    /// The photo's pixels in [0, 1], `[3, h, w]` row-major.
    x0: Vec<f32>,
    /// Which columns and rows of the photo the network sees at all (a weight in the
    /// resize-and-crop): the others never move, whatever the method.
    seen_cols: Vec<bool>,
    seen_rows: Vec<bool>,
    label: usize,
    orig_top: usize,
    orig_prob: f32,
}

impl<'a> Setup<'a> {
    fn new(c: &'a dyn Classifier, image: &'a RgbImage, cfg: &'a AttackConfig) -> Result<Self> {
        let b = c.backbone();
        let device = b.device();
        if !device.is_autodiff() {
            return Err(Error::Invalid(
                "attacks need the backbone on an autodiff device".into(),
            ));
        }
        let (w, h) = (image.width() as usize, image.height() as usize);
        if (w as u64) * (h as u64) > MAX_ATTACK_PIXELS {
            return Err(Error::Invalid(format!(
                "the photo is {w}×{h} = {:.1} megapixels; attacks work at the photo's own resolution and take at most {} megapixels (~80 bytes a pixel): resize it first",
                (w * h) as f64 / 1e6,
                MAX_ATTACK_PIXELS / 1_000_000
            )));
        }
        let pre = b.preprocess();
        let (rw, rh) = shorter_side_size(w as u32, h as u32, pre.resize as u32);
        let crop = pre.crop;
        if rw < crop || rh < crop {
            return Err(Error::Invalid(format!(
                "the image ({w}×{h}) resized to {rw}×{rh} is smaller than the {crop}-pixel crop"
            )));
        }
        let (ox, oy) = (
            center_crop_offset_usize(rw, crop),
            center_crop_offset_usize(rh, crop),
        );
        // resize matrices: only the rows / columns the crop keeps
        let mh = resize_matrix_rows(pre.filter, w, rw, ox..ox + crop); // [crop, w]
        let mv = resize_matrix_rows(pre.filter, h, rh, oy..oy + crop); // [crop, h]
        let seen = |m: &[f32], n: usize| -> Vec<bool> {
            (0..n)
                .map(|i| m.chunks_exact(n).any(|row| row[i] != 0.0))
                .collect()
        };
        let (seen_cols, seen_rows) = (seen(&mh, w), seen(&mv, h));
        let rh_t = Tensor::<2>::from_data(TensorData::new(mh, [crop, w]), &device).transpose();
        let rv = Tensor::<2>::from_data(TensorData::new(mv, [crop, h]), &device);
        let x0 = crate::tensor::to_vec(to_tensor(
            std::slice::from_ref(image),
            &device.clone().inner(),
        ))?;
        let (orig_top, orig_prob, _) = classify_u8(c, image)?;
        Ok(Setup {
            c,
            cfg,
            image,
            device,
            w,
            h,
            rh_t,
            rv,
            x0,
            seen_cols,
            seen_rows,
            label: cfg.target.unwrap_or(orig_top),
            orig_top,
            orig_prob,
        })
    }

    /// The network's input of a `[3, h, w]` photo: resized and cropped, differentiably.
    fn resize(&self, t: Tensor<3>) -> Tensor<4> {
        self.rv
            .clone()
            .unsqueeze::<3>()
            .repeat_dim(0, 3)
            .matmul(t.matmul(self.rh_t.clone().unsqueeze::<3>().repeat_dim(0, 3)))
            .unsqueeze::<4>()
    }

    /// Whether pixel `p` (`y · w + x`) is seen by the network.
    fn sees(&self, p: usize) -> bool {
        self.seen_rows[p / self.w] && self.seen_cols[p % self.w]
    }

    /// Pixels to the u8 image that is saved: pixels the network does not see are the
    /// original's, exactly; for L∞ (not Carlini–Wagner: unbounded, L2), rounding must not
    /// leave the ball.
    fn quantise(&self, x: &[f32]) -> RgbImage {
        let mut img = to_image(x, self.w, self.h);
        for (i, (p, o)) in img.as_mut().iter_mut().zip(self.image.as_raw()).enumerate() {
            // interleaved RGB: pixel i / 3
            if !self.sees(i / 3) {
                *p = *o;
            }
        }
        if self.cfg.norm == Norm::Linf && self.cfg.method != Method::Cw {
            // eps ≤ 1 (validated): e ≤ 255
            let e = ((self.cfg.eps * 255.0 + 1e-6).floor() as i32).clamp(0, 255);
            for (p, o) in img.as_mut().iter_mut().zip(self.image.as_raw()) {
                *p = (*p as i32)
                    .clamp(*o as i32 - e, *o as i32 + e)
                    .clamp(0, 255) as u8;
            }
        }
        img
    }

    fn success(&self, top: usize, probs: &[f32]) -> bool {
        match self.cfg.target {
            Some(t) => top == t && probs.get(t).copied().unwrap_or(0.0) >= self.cfg.min_confidence,
            None => top != self.orig_top,
        }
    }

    /// Whether the saved (u8) version of `img` already succeeds.
    fn done(&self, img: &RgbImage) -> Result<bool> {
        let (top, _, probs) = classify_u8(self.c, img)?;
        Ok(self.success(top, &probs))
    }
}

/// FGSM, BIM and PGD: signed (L∞) or normalised (L2) gradient steps on the cross-entropy,
/// projected back into the epsilon ball and [0, 1]. Returns the image and the steps used.
fn gradient_attack(s: &Setup<'_>) -> Result<(RgbImage, usize)> {
    let (cfg, n) = (s.cfg, 3 * s.h * s.w);
    let eps = cfg.eps as f32;
    let mut x = s.x0.clone();
    if cfg.random_start && cfg.method == Method::Pgd {
        let mut rng = SplitMix64(cfg.seed);
        for (i, (xi, x0i)) in x.iter_mut().zip(&s.x0).enumerate() {
            // one draw per pixel whether seen or not: the stream does not depend on the crop
            let u = eps * (2.0 * rng.next_f64() as f32 - 1.0);
            // planar `[3, h, w]`: pixel i mod h·w
            if s.sees(i % (s.w * s.h)) {
                *xi = (x0i + u).clamp(0.0, 1.0);
            }
        }
    }
    let (steps, alpha) = match cfg.method {
        Method::Fgsm => (1, eps),
        _ => (cfg.steps.max(1), cfg.alpha as f32),
    };
    let mut best = s.quantise(&x);
    let mut used = 0;
    for step in 0..steps {
        used = step + 1;
        let xt = Tensor::<1>::from_data(TensorData::new(x.clone(), [n]), &s.device).require_grad();
        let logits = s.c.logits(s.resize(xt.clone().reshape([3, s.h, s.w])));
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let ce = logp.slice([0..1, s.label..s.label + 1]).sum().neg();
        // targeted: descend the target's cross-entropy; untargeted: ascend the true class's
        let objective = if cfg.target.is_some() { ce.neg() } else { ce };
        let grads = objective.backward();
        let g: Vec<f32> = crate::tensor::to_vec(
            xt.grad(&grads)
                .ok_or_else(|| Error::Internal("no gradient for the image".into()))?,
        )?;
        match cfg.norm {
            Norm::Linf => {
                for ((xi, gi), x0i) in x.iter_mut().zip(&g).zip(&s.x0) {
                    // sign(0) = 0 (torch.sign): `f32::signum(0.0)` is 1, which moved every
                    // pixel outside the crop by the step
                    let v = *xi + alpha * sign(*gi);
                    *xi = (x0i + (v - x0i).clamp(-eps, eps)).clamp(0.0, 1.0);
                }
            }
            Norm::L2 => {
                let gn = g.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                for (xi, gi) in x.iter_mut().zip(&g) {
                    *xi += alpha * gi / gn;
                }
                let dn = x
                    .iter()
                    .zip(&s.x0)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt();
                let f = if dn > eps { eps / dn } else { 1.0 };
                for (xi, x0i) in x.iter_mut().zip(&s.x0) {
                    *xi = (x0i + (*xi - x0i) * f).clamp(0.0, 1.0);
                }
            }
        }
        best = s.quantise(&x);
        if s.done(&best)? {
            break;
        }
    }
    Ok((best, used))
}

/// The sign of a gradient as torch.sign: −1, 0 or 1.
fn sign(g: f32) -> f32 {
    if g > 0.0 {
        1.0
    } else if g < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Carlini–Wagner L2: minimise ‖x − x0‖² + c·max(0, f) over x = (tanh w + 1) / 2 with Adam.
fn carlini_wagner(s: &Setup<'_>) -> Result<(RgbImage, usize)> {
    let (cfg, n) = (s.cfg, 3 * s.h * s.w);
    let mut wv: Vec<f32> =
        s.x0.iter()
            .map(|v| (2.0 * v - 1.0).clamp(-0.999_999, 0.999_999).atanh())
            .collect();
    let mut adam = crate::train::optim::Adam::new(n);
    let x0t = Tensor::<1>::from_data(TensorData::new(s.x0.clone(), [n]), &s.device);
    let k =
        s.c.logits(s.resize(x0t.clone().reshape([3, s.h, s.w])))
            .dims()[1];
    let mut onehot = vec![0f32; k];
    onehot[s.label] = 1.0;
    let onehot = Tensor::<1>::from_data(TensorData::new(onehot, [k]), &s.device).unsqueeze::<2>();
    let mut best = s.quantise(&s.x0);
    let mut used = 0;
    for step in 0..cfg.steps.max(1) {
        used = step + 1;
        let wt = Tensor::<1>::from_data(TensorData::new(wv.clone(), [n]), &s.device).require_grad();
        let xt = (wt.clone().tanh() + 1.0) / 2.0;
        let logits = s.c.logits(s.resize(xt.clone().reshape([3, s.h, s.w])));
        let real = (logits.clone() * onehot.clone()).sum_dim(1);
        let other = (logits - onehot.clone() * 1e4).max_dim(1);
        let f = if cfg.target.is_some() {
            other - real
        } else {
            real - other
        };
        let loss = (xt.clone() - x0t.clone()).powf_scalar(2.0).sum()
            + f.clamp_min(0.0).sum() * cfg.cw_c as f32;
        let grads = loss.backward();
        let g: Vec<f32> = crate::tensor::to_vec(
            wt.grad(&grads)
                .ok_or_else(|| Error::Internal("no gradient for the image".into()))?,
        )?;
        adam.step(&mut wv, &g, cfg.alpha);
        let x: Vec<f32> = wv.iter().map(|z| (z.tanh() + 1.0) / 2.0).collect();
        best = s.quantise(&x);
        if s.done(&best)? {
            break;
        }
    }
    Ok((best, used))
}

/// Run the attack on `image` with `c`, whose backbone must live on an autodiff device.
pub fn attack(c: &dyn Classifier, image: &RgbImage, cfg: &AttackConfig) -> Result<AttackResult> {
    cfg.validate()?;
    let s = Setup::new(c, image, cfg)?;
    let (best, used) = match cfg.method {
        Method::Cw => carlini_wagner(&s)?,
        Method::Fgsm | Method::Bim | Method::Pgd => gradient_attack(&s)?,
    };
    let (adv_top, adv_prob, probs) = classify_u8(c, &best)?;
    let d: Vec<i32> = best
        .as_raw()
        .iter()
        .zip(image.as_raw())
        .map(|(a, o)| *a as i32 - *o as i32)
        .collect();
    let linf_255 = d.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u8;
    let l2 = (d.iter().map(|v| (*v as f64 / 255.0).powi(2)).sum::<f64>()).sqrt();
    let mse = d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d.len().max(1) as f64;
    let psnr = if mse > 0.0 {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    } else {
        f64::INFINITY
    };
    Ok(AttackResult {
        original_top1: s.orig_top,
        original_prob: s.orig_prob,
        adversarial_top1: adv_top,
        adversarial_prob: adv_prob,
        target: cfg.target,
        target_prob: cfg.target.and_then(|t| probs.get(t).copied()),
        success: s.success(adv_top, &probs),
        linf_255,
        linf: linf_255 as f64 / 255.0,
        l2,
        psnr,
        steps_used: used,
        adversarial: best,
    })
}

/// The perturbation, amplified for viewing: 128 + gain · (adversarial − original).
pub fn diff_image(original: &RgbImage, adversarial: &RgbImage, gain: f32) -> RgbImage {
    let mut out = original.clone();
    for ((o, a), d) in original
        .as_raw()
        .iter()
        .zip(adversarial.as_raw())
        .zip(out.as_mut().iter_mut())
    {
        *d = (128.0 + gain * (*a as f32 - *o as f32))
            .round()
            .clamp(0.0, 255.0) as u8;
    }
    out
}

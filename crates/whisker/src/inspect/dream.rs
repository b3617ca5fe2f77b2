//! "Ideal class" images: gradient ascent on the input for a class, with a total-variation
//! penalty (the lesson's recipe) and the robustness feature-visualisation libraries use
//! (Lucid/Lucent): a random shift of the crop every step and, with `Param::Fft`, a
//! decorrelated parameterisation (an orthonormal 2-D cosine basis with 1/frequency scaling,
//! and ImageNet's colour decorrelation). The image is made at the backbone's resize size
//! (256 for 224 inputs) so that `whisker classify` (resize, centre crop) sees what was
//! optimised; the reported probability is that of the saved u8 image.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::attack::classify_u8;
use super::decorrelated::Decorrelated;
use super::Classifier;
use crate::data::datasets::SplitMix64;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Param {
    Pixel,
    Fft,
}

impl std::str::FromStr for Param {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "pixel" => Ok(Param::Pixel),
            "fft" => Ok(Param::Fft),
            _ => Err(crate::Error::Invalid(format!(
                "unknown parameterisation `{s}` (fft, pixel)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DreamConfig {
    pub class: usize,
    pub steps: usize,
    pub lr: f64,
    pub tv_weight: f64,
    /// Maximum shift of the crop window from the centre, in pixels, each step.
    pub jitter: usize,
    pub param: Param,
    /// Maximise the log-probability instead of the logit.
    pub log_prob: bool,
    pub seed: u64,
    /// Random scale of the view each step, in [1/s, s] (1: off).
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Random rotation of the view each step, in degrees (0: off).
    #[serde(default = "default_rotate")]
    pub rotate: f64,
    /// Side of the (square) image made; default: the backbone's resize size (256 for 224).
    #[serde(default)]
    pub size: Option<usize>,
}

fn default_scale() -> f64 {
    1.1
}
fn default_rotate() -> f64 {
    5.0
}

impl Default for DreamConfig {
    fn default() -> Self {
        DreamConfig {
            class: 0,
            steps: 300,
            lr: 0.05,
            tv_weight: 0.01,
            jitter: 16,
            param: Param::Fft,
            log_prob: false,
            seed: 0,
            scale: default_scale(),
            rotate: default_rotate(),
            size: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DreamResult {
    pub class: usize,
    /// Probability of the class for the saved image, classified as `whisker classify` does.
    pub probability: f32,
    pub top1: usize,
    /// (step, probability of the saved-image equivalent) along the way.
    pub history: Vec<(usize, f32)>,
    #[serde(skip)]
    pub image: RgbImage,
}

/// Orthonormal DCT-II matrix `[n, n]` (row k = frequency k).
fn dct(n: usize) -> Vec<f32> {
    let mut m = vec![0f32; n * n];
    for k in 0..n {
        let a = if k == 0 {
            (1.0 / n as f64).sqrt()
        } else {
            (2.0 / n as f64).sqrt()
        };
        for i in 0..n {
            m[k * n + i] =
                (a * (std::f64::consts::PI * (i as f64 + 0.5) * k as f64 / n as f64).cos()) as f32;
        }
    }
    m
}

/// ImageNet's colour correlation (Lucid's `color_correlation_svd_sqrt`), normalised.
const COLOUR: [[f32; 3]; 3] = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

fn colour_matrix() -> [[f32; 3]; 3] {
    let max_norm = COLOUR
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .fold(0.0, f32::max);
    COLOUR.map(|r| r.map(|v| v / max_norm))
}

struct Builder {
    s: usize,
    basis: Tensor<2>,
    basis_t: Tensor<2>,
    scale: Tensor<3>,
    colour: Tensor<2>,
    param: Param,
    /// The same map as one tracked operation with fast transforms (the CPU's path).
    fused: std::sync::Arc<Decorrelated>,
}

impl Builder {
    fn new(s: usize, param: Param, device: &Device) -> Self {
        let d = dct(s);
        let basis = Tensor::<2>::from_data(TensorData::new(d, [s, s]), device);
        let basis_t = basis.clone().transpose();
        // 1/frequency scaling (frequency in cycles per pixel: DCT index k is k/(2s)), as
        // Lucid's FFT parameterisation, floored at one cycle per image
        let mut sc = vec![0f32; s * s];
        for u in 0..s {
            for v in 0..s {
                let f = ((u * u + v * v) as f32).sqrt() / (2 * s) as f32;
                sc[u * s + v] = 1.0 / f.max(1.0 / s as f32) / s as f32 * 16.0;
            }
        }
        let c = colour_matrix();
        let fused = std::sync::Arc::new(Decorrelated::new(s, sc.clone(), c));
        let scale = Tensor::<2>::from_data(TensorData::new(sc, [s, s]), device).unsqueeze::<3>();
        let colour = Tensor::<2>::from_data(
            TensorData::new(c.iter().flatten().copied().collect::<Vec<_>>(), [3, 3]),
            device,
        );
        Builder {
            s,
            basis,
            basis_t,
            scale,
            colour,
            param,
            fused,
        }
    }

    /// Latent `[3, s, s]` → image `[3, s, s]` in (0, 1).
    fn image(&self, z: Tensor<3>) -> Tensor<3> {
        if self.param == Param::Fft {
            if let Some(img) = super::decorrelated::image(&self.fused, &z) {
                return img;
            }
        }
        self.image_by_burn(z)
    }

    /// [`Builder::image`] in burn's tensor operations (any device).
    fn image_by_burn(&self, z: Tensor<3>) -> Tensor<3> {
        let s = self.s;
        match self.param {
            Param::Pixel => burn::tensor::activation::sigmoid(z),
            Param::Fft => {
                let coeffs = z * self.scale.clone();
                let bt = self.basis_t.clone().unsqueeze::<3>().repeat_dim(0, 3);
                let b = self.basis.clone().unsqueeze::<3>().repeat_dim(0, 3);
                let spatial = bt.matmul(coeffs).matmul(b); // [3, s, s]
                let mixed = self
                    .colour
                    .clone()
                    .matmul(spatial.reshape([3, s * s]))
                    .reshape([3, s, s]);
                burn::tensor::activation::sigmoid(mixed)
            }
        }
    }
}

fn total_variation(x: Tensor<3>) -> Tensor<1> {
    let [c, h, w] = x.dims();
    let dx = x.clone().slice([0..c, 0..h, 1..w]) - x.clone().slice([0..c, 0..h, 0..w - 1]);
    let dy = x.clone().slice([0..c, 1..h, 0..w]) - x.slice([0..c, 0..h - 1, 0..w]);
    dx.abs().mean() + dy.abs().mean()
}

fn to_u8(x: Tensor<3>) -> Result<RgbImage> {
    let [_, h, w] = x.dims();
    let v: Vec<f32> = crate::tensor::to_vec(x)?;
    Ok(crate::data::transforms::to_image(&v, w, h))
}

/// Grow an image of `cfg.class` for `b` (on an autodiff device). `progress(step, steps)`.
pub fn dream(
    c: &dyn Classifier,
    cfg: &DreamConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<DreamResult> {
    dream_cancellable(c, cfg, progress, &std::sync::atomic::AtomicBool::new(false))
}

/// [`dream`] that stops with [`Error::Cancelled`] at the first step after `cancel` is set.
pub fn dream_cancellable(
    c: &dyn Classifier,
    cfg: &DreamConfig,
    progress: &dyn Fn(usize, usize),
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<DreamResult> {
    let b = c.backbone();
    let device = b.device();
    if !device.is_autodiff() {
        return Err(Error::Invalid(
            "dreaming needs the backbone on an autodiff device".into(),
        ));
    }
    let s = cfg.size.unwrap_or(b.spec.resize);
    if s < b.spec.input_size || s > 4096 {
        return Err(Error::Invalid(format!(
            "image size {s}: must be from {}, {}'s input size, to 4096",
            b.spec.input_size, b.spec.name
        )));
    }
    let crop = b.spec.input_size;
    // the view classify would take of an image this size: the centre crop after resizing
    // the shorter side to the backbone's resize size
    let view_frac = crop as f32 / b.spec.resize as f32;
    let builder = Builder::new(s, cfg.param, &device);
    // the saved image's builder (and the history's), without the tape
    let untracked = Builder::new(s, cfg.param, &device.clone().inner());
    let mut rng = SplitMix64(cfg.seed);
    let n = 3 * s * s;
    let init = if cfg.param == Param::Fft { 0.01 } else { 0.1 };
    let mut z: Vec<f32> = (0..n)
        .map(|_| ((2.0 * rng.next_f64() - 1.0) * init) as f32)
        .collect();
    let mut adam = crate::train::optim::Adam::new(n);
    let centre = (s - crop) / 2;
    let mut history = Vec::new();
    for step in 0..cfg.steps {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let zt = Tensor::<1>::from_data(TensorData::new(z.clone(), [n]), &device).require_grad();
        let img = builder.image(zt.clone().reshape([3, s, s]));
        let j = cfg.jitter.min(centre) as i64;
        let off = |r: &mut SplitMix64| (r.below((2 * j + 1) as usize) as i64 - j) as f32;
        let (dx, dy) = (off(&mut rng), off(&mut rng));
        let view = if cfg.scale <= 1.0 && cfg.rotate <= 0.0 && s == b.spec.resize {
            let (ox, oy) = ((centre as f32 + dx) as usize, (centre as f32 + dy) as usize);
            img.clone()
                .slice([0..3, oy..oy + crop, ox..ox + crop])
                .unsqueeze::<4>()
        } else {
            // a randomly shifted, scaled and rotated view, by an affine sampling grid
            let ls = cfg.scale.max(1.0).ln();
            let sc = (ls * (2.0 * rng.next_f64() - 1.0)).exp() as f32;
            let th = (cfg.rotate * (2.0 * rng.next_f64() - 1.0)).to_radians() as f32;
            let a = view_frac / sc;
            let (sn, cs) = th.sin_cos();
            let (tx, ty) = (2.0 * dx / s as f32, 2.0 * dy / s as f32);
            let theta = [a * cs, -a * sn, tx, a * sn, a * cs, ty];
            // on the CPU one tracked operation; elsewhere burn's grid sample (the same numbers)
            match super::sample::affine_view(&img, theta, crop, crop) {
                Some(v) => v,
                None => {
                    let theta =
                        Tensor::<3>::from_data(TensorData::new(theta.to_vec(), [1, 2, 3]), &device);
                    let grid = burn::tensor::grid::affine_grid_2d(theta, [1, 3, crop, crop]);
                    img.clone()
                        .unsqueeze::<4>()
                        .grid_sample_2d(grid, burn::tensor::ops::GridSampleOptions::default())
                }
            }
        };
        let logits = c.logits(view);
        let score = if cfg.log_prob {
            burn::tensor::activation::log_softmax(logits, 1)
                .slice([0..1, cfg.class..cfg.class + 1])
                .sum()
        } else {
            logits.slice([0..1, cfg.class..cfg.class + 1]).sum()
        };
        let objective = score - total_variation(img) * cfg.tv_weight as f32;
        let grads = objective.neg().backward();
        let g: Vec<f32> = crate::tensor::to_vec(
            zt.grad(&grads)
                .ok_or_else(|| Error::Internal("no gradient for the image".into()))?,
        )?;
        adam.step(&mut z, &g, cfg.lr);
        if (step + 1) % 40 == 0 || step + 1 == cfg.steps {
            let zt =
                Tensor::<1>::from_data(TensorData::new(z.clone(), [n]), &device.clone().inner());
            let u8img = to_u8(untracked.image(zt.reshape([3, s, s])))?;
            let (_, _, p) = classify_u8(c, &u8img)?;
            history.push((step + 1, p.get(cfg.class).copied().unwrap_or(0.0)));
        }
        progress(step + 1, cfg.steps);
    }
    let zt = Tensor::<1>::from_data(TensorData::new(z, [n]), &device.clone().inner());
    let image = to_u8(untracked.image(zt.reshape([3, s, s])))?;
    let (top1, _, p) = classify_u8(c, &image)?;
    Ok(DreamResult {
        class: cfg.class,
        probability: p.get(cfg.class).copied().unwrap_or(0.0),
        top1,
        history,
        image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's fused decorrelated image (fast cosine transforms) equals burn's matrix
    /// products, forward and backward, tracked and untracked; at an odd size and at 256.
    #[test]
    fn fused_image_equals_burns_ops() {
        let device = Device::flex().autodiff();
        for s in [21usize, 256] {
            let b = Builder::new(s, Param::Fft, &device);
            let n = 3 * s * s;
            let mut rng = SplitMix64(s as u64);
            let mut draw = |k: f64| -> Vec<f32> {
                (0..n)
                    .map(|_| ((2.0 * rng.next_f64() - 1.0) * k) as f32)
                    .collect()
            };
            // latents as large as a dream's after many steps, so that the sigmoid saturates
            let (z, g) = (draw(4.0), draw(1.0));
            let run = |fused: bool| {
                let zt = Tensor::<3>::from_data(TensorData::new(z.clone(), [3, s, s]), &device)
                    .require_grad();
                let img = if fused {
                    b.image(zt.clone())
                } else {
                    b.image_by_burn(zt.clone())
                };
                let gt = Tensor::<3>::from_data(TensorData::new(g.clone(), [3, s, s]), &device);
                let grads = (img.clone() * gt).sum().backward();
                let dz = crate::tensor::to_vec(zt.grad(&grads).unwrap()).unwrap();
                (crate::tensor::to_vec(img.inner()).unwrap(), dz)
            };
            let (ours, ours_dz) = run(true);
            let (burns, burns_dz) = run(false);
            let rel = |a: &[f32], b: &[f32]| {
                let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let r: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
                (d / r).sqrt()
            };
            let (fwd, bwd) = (rel(&ours, &burns), rel(&ours_dz, &burns_dz));
            println!("s = {s}: rel. L2 forward {fwd:e}, backward {bwd:e}");
            assert!(fwd < 1e-6 && bwd < 1e-5, "s = {s}: {fwd:e} {bwd:e}");
            // the image spans the sigmoid's range and the gradient is not trivial
            assert!(ours.iter().any(|v| *v < 0.2) && ours.iter().any(|v| *v > 0.8));
            assert!(burns_dz.iter().map(|v| v.abs()).fold(0f32, f32::max) > 1e-3);
            // untracked (the saved image's path) gives the same numbers
            let plain = Builder::new(s, Param::Fft, &device.clone().inner());
            let zt = Tensor::<3>::from_data(
                TensorData::new(z.clone(), [3, s, s]),
                &device.clone().inner(),
            );
            let untracked = crate::tensor::to_vec(plain.image(zt)).unwrap();
            assert_eq!(untracked, ours);
        }
    }
}

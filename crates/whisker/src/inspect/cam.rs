//! Class-activation maps: where the model looked. Grad-CAM (Selvaraju et al. 2017) weighs each
//! channel of a layer's activations `A` by the spatial mean of the class score's gradient
//! `∂y_c/∂A`; Grad-CAM++ (Chattopadhay et al. 2018) by the positive gradients, each weighted
//! by `g² / (2g² + Σ_ij A · g³)`. The map is `relu(Σ_k w_k A_k)` at the layer's resolution,
//! shown over the photo at the photo's own size and aspect ratio: the crop the model saw is
//! coloured, what the preprocessing cut off is greyed.

use burn::tensor::Tensor;
use image::{Rgb, RgbImage};
use serde::Serialize;

use super::Classifier;
use crate::backbones::{Backbone, Taps};
use crate::data::resize::shorter_side_size;
use crate::data::transforms::{center_crop_offset_usize, to_tensor, Preprocess};
use crate::error::{Error, Result};

/// How channels are weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Method {
    /// Grad-CAM: the spatial mean of the gradient.
    #[default]
    #[serde(rename = "gradcam")]
    GradCam,
    /// Grad-CAM++: positive gradients, weighted per position (sharper with several objects).
    #[serde(rename = "gradcam++")]
    GradCamPlusPlus,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gradcam" | "grad-cam" => Ok(Method::GradCam),
            "gradcam++" | "grad-cam++" | "gradcampp" => Ok(Method::GradCamPlusPlus),
            _ => Err(Error::Invalid(format!(
                "unknown CAM method `{s}` (gradcam, gradcam++)"
            ))),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::GradCam => "Grad-CAM",
            Method::GradCamPlusPlus => "Grad-CAM++",
        })
    }
}

/// What to explain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CamOptions {
    pub method: Method,
    /// The class whose score is explained (default: the top-1).
    pub class: Option<usize>,
    /// The layer (a name of [`Backbone::layer_names`]; default: [`default_layer`]).
    pub layer: Option<String>,
}

/// A class-activation map at its layer's resolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cam {
    pub method: Method,
    pub layer: String,
    /// The explained class, its probability, and the top-1 class.
    pub class: usize,
    pub prob: f32,
    pub top1: usize,
    pub h: usize,
    pub w: usize,
    /// `relu(Σ_k w_k A_k)`, row-major `[h, w]`, unscaled.
    pub map: Vec<f32>,
}

impl Cam {
    /// The map scaled to [0, 1] (minimum to maximum; all zeros when the map is flat).
    pub fn normalized(&self) -> Vec<f32> {
        let lo = self.map.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = self.map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = hi - lo;
        if !(span > 0.0 && span.is_finite()) {
            return vec![0.0; self.map.len()];
        }
        self.map.iter().map(|v| (v - lo) / span).collect()
    }
}

/// The default layer: the deepest feature map of the network (the last convolutional block,
/// whose channels are the most class-specific; a transformer's last block, not its final
/// LayerNorm).
pub fn default_layer(b: &Backbone) -> String {
    b.layer_names()
        .into_iter()
        .rfind(|n| !crate::backbones::FINAL_NORM.contains(&n.as_str()))
        .unwrap_or_default()
}

/// The class-activation map of `crop` (an image already preprocessed to the model's input
/// size, as [`Preprocess::apply`] makes it).
pub fn grad_cam(c: &dyn Classifier, crop: &RgbImage, opts: &CamOptions) -> Result<Cam> {
    grad_cams(c, std::slice::from_ref(crop), &[opts.class], opts)?
        .pop()
        .ok_or_else(|| Error::Internal("no map for one photo".into()))
}

/// The maps of several crops in one batch (one forward and one backward pass: the images do
/// not interact, the model being in inference mode), each of the class `classes[i]` (its
/// top-1 when `None`); `opts.class` is not used.
pub fn grad_cams(
    c: &dyn Classifier,
    crops: &[RgbImage],
    classes: &[Option<usize>],
    opts: &CamOptions,
) -> Result<Vec<Cam>> {
    let b = c.backbone();
    let device = b.device();
    if !device.is_autodiff() {
        return Err(Error::Invalid(
            "class-activation maps need the backbone on an autodiff device".into(),
        ));
    }
    if classes.len() != crops.len() {
        return Err(Error::Internal(format!(
            "{} classes for {} photos",
            classes.len(),
            crops.len()
        )));
    }
    if crops.is_empty() {
        return Ok(Vec::new());
    }
    let n = crops.len();
    let layer = opts.layer.clone().unwrap_or_else(|| default_layer(b));
    let x = to_tensor(crops, &device);
    // On the CPU: the engine's forward tape, burn's autodiff for the head alone (from the
    // features), and the engine's backward pass down to the map. Elsewhere: burn's
    // operations, the map a tap in its graph.
    let (logits, source) = match b.map_tape(&x, &layer) {
        Some((tape, f)) => {
            let dim = f.len() / n;
            let f = Tensor::<2>::from_data(burn::tensor::TensorData::new(f, [n, dim]), &device)
                .require_grad();
            (c.head_logits(f.clone()), MapSource::Engine(tape, f))
        }
        None => {
            let mut taps = Taps::grad(&layer);
            let logits = c.logits_tapped(x, &mut taps);
            let a: Tensor<4> = taps.get(&layer).cloned().ok_or_else(|| {
                Error::Invalid(format!(
                    "{} has no layer `{layer}`; its layers: {}",
                    b.spec.name,
                    taps.names.join(", ")
                ))
            })?;
            (logits, MapSource::Burn(a))
        }
    };
    let [_, k] = logits.dims();
    let probs = crate::tensor::to_vec(burn::tensor::activation::softmax(
        logits.clone().detach(),
        1,
    ))?;
    let mut picks = Vec::with_capacity(n);
    for (i, class) in classes.iter().enumerate() {
        let p = &probs[i * k..(i + 1) * k];
        let top1 = (0..k)
            .max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)))
            .ok_or_else(|| Error::Internal("a model with no classes".into()))?;
        let class = class.unwrap_or(top1);
        if class >= k {
            return Err(Error::Invalid(format!(
                "class {class} is out of range: the model has {k} classes"
            )));
        }
        picks.push((class, p[class], top1));
    }
    // Σ_i y_{class_i} of image i: each image's activations get their own class's gradient
    let mut pick = vec![0f32; n * k];
    for (i, &(class, _, _)) in picks.iter().enumerate() {
        pick[i * k + class] = 1.0;
    }
    let pick = Tensor::<2>::from_data(burn::tensor::TensorData::new(pick, [n, k]), &device);
    let grads = (logits * pick).sum().backward();
    let no_grad = || Error::Internal(format!("no gradient reached layer `{layer}`"));
    let (av, gv, [_, ch, h, w]) = match source {
        MapSource::Engine(tape, f) => {
            let df = crate::tensor::to_vec(f.grad(&grads).ok_or_else(no_grad)?)?;
            tape.map_and_grad(&df)?
        }
        MapSource::Burn(a) => {
            let g = a.grad(&grads).ok_or_else(no_grad)?;
            let dims = a.dims();
            (
                crate::tensor::to_vec(a.detach())?,
                crate::tensor::to_vec(g)?,
                dims,
            )
        }
    };
    let per = ch * h * w;
    Ok(picks
        .into_iter()
        .enumerate()
        .map(|(i, (class, prob, top1))| Cam {
            method: opts.method,
            layer: layer.clone(),
            class,
            prob,
            top1,
            h,
            w,
            map: combine(
                opts.method,
                &av[i * per..(i + 1) * per],
                &gv[i * per..(i + 1) * per],
                ch,
                h * w,
            ),
        })
        .collect())
}

/// Where a map and its gradient come from.
enum MapSource {
    /// The engine's tape, and the features (a leaf of burn's graph) the head read.
    Engine(crate::backbones::MapTape, Tensor<2>),
    /// A tap in burn's graph.
    Burn(Tensor<4>),
}

/// `relu(Σ_k w_k A_k)` from activations and gradients `[ch, hw]`.
pub fn combine(method: Method, a: &[f32], g: &[f32], ch: usize, hw: usize) -> Vec<f32> {
    let mut map = vec![0f64; hw];
    for k in 0..ch {
        let (ak, gk) = (&a[k * hw..(k + 1) * hw], &g[k * hw..(k + 1) * hw]);
        let wk = match method {
            Method::GradCam => gk.iter().map(|&v| v as f64).sum::<f64>() / hw as f64,
            Method::GradCamPlusPlus => {
                let sum_a: f64 = ak.iter().map(|&v| v as f64).sum();
                gk.iter()
                    .map(|&gv| {
                        let gv = gv as f64;
                        if gv == 0.0 {
                            return 0.0;
                        }
                        let g2 = gv * gv;
                        let alpha = g2 / (2.0 * g2 + sum_a * g2 * gv + 1e-6);
                        alpha * gv.max(0.0)
                    })
                    .sum()
            }
        };
        for (m, &v) in map.iter_mut().zip(ak) {
            *m += wk * v as f64;
        }
    }
    map.into_iter().map(|v| v.max(0.0) as f32).collect()
}

/// A map shown over its photo, and where it is highest.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub image: RgbImage,
    /// The hottest pixel of the photo (the map bilinearly upsampled), `(x, y)`.
    pub peak: (u32, u32),
}

/// The map over the photo it was computed from (through `pre`, as the model saw it): heat in
/// a colour-blind-safe map blended with weight `alpha` over the crop, the rest greyed.
pub fn overlay(photo: &RgbImage, pre: &Preprocess, cam: &Cam, alpha: f32) -> Overlay {
    let (pw, ph) = (photo.width() as usize, photo.height() as usize);
    let (rw, rh) = shorter_side_size(pw as u32, ph as u32, pre.resize as u32);
    let (ox, oy) = (
        center_crop_offset_usize(rw, pre.crop),
        center_crop_offset_usize(rh, pre.crop),
    );
    let norm = cam.normalized();
    let sample = |u: f64, v: f64| -> f32 {
        // u, v: coordinates on the map's grid (cell centres at integers), clamped
        let u = u.clamp(0.0, (cam.w - 1) as f64);
        let v = v.clamp(0.0, (cam.h - 1) as f64);
        let (u0, v0) = (u.floor() as usize, v.floor() as usize);
        let (u1, v1) = ((u0 + 1).min(cam.w - 1), (v0 + 1).min(cam.h - 1));
        let (fu, fv) = ((u - u0 as f64) as f32, (v - v0 as f64) as f32);
        let at = |x: usize, y: usize| norm[y * cam.w + x];
        let top = at(u0, v0) * (1.0 - fu) + at(u1, v0) * fu;
        let bottom = at(u0, v1) * (1.0 - fu) + at(u1, v1) * fu;
        top * (1.0 - fv) + bottom * fv
    };
    let crop = pre.crop as f64;
    let mut out = RgbImage::new(pw as u32, ph as u32);
    let (mut best, mut peak) = (f32::NEG_INFINITY, (0u32, 0u32));
    for y in 0..ph {
        // the pixel centre in the resized image, then in the crop
        let cy = (y as f64 + 0.5) * rh as f64 / ph as f64 - oy as f64;
        for x in 0..pw {
            let cx = (x as f64 + 0.5) * rw as f64 / pw as f64 - ox as f64;
            let p = photo.get_pixel(x as u32, y as u32).0.map(|v| v as f32);
            let inside = (0.0..crop).contains(&cx) && (0.0..crop).contains(&cy) && !norm.is_empty();
            let rgb = if inside {
                let t = sample(
                    cx * cam.w as f64 / crop - 0.5,
                    cy * cam.h as f64 / crop - 0.5,
                );
                if t > best {
                    best = t;
                    peak = (x as u32, y as u32);
                }
                let c = crate::report::colormap(t).0.map(|v| v as f32);
                [0, 1, 2].map(|i| p[i] * (1.0 - alpha) + c[i] * alpha)
            } else {
                let grey = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
                [grey * 0.5 + 64.0; 3]
            };
            out.put_pixel(
                x as u32,
                y as u32,
                Rgb(rgb.map(|v| v.round().clamp(0.0, 255.0) as u8)),
            );
        }
    }
    Overlay { image: out, peak }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradcam_weighs_channels_by_mean_gradient() {
        // two channels of 2 positions: w = (mean g) = (1, -0.5)
        let a = [1.0, 2.0, 4.0, 0.0];
        let g = [1.0, 1.0, -1.0, 0.0];
        let m = combine(Method::GradCam, &a, &g, 2, 2);
        assert_eq!(m, vec![0.0, 2.0]); // relu(1 - 2) = 0, relu(2 - 0) = 2
    }

    #[test]
    fn gradcam_plus_plus_ignores_negative_gradients() {
        let a = [1.0, 1.0];
        let g = [-1.0, -2.0];
        assert_eq!(
            combine(Method::GradCamPlusPlus, &a, &g, 1, 2),
            vec![0.0, 0.0]
        );
        let g = [1.0, 0.0];
        // alpha = 1 / (2 + 2·1) = 0.25 at the first position; w = 0.25
        let m = combine(Method::GradCamPlusPlus, &a, &g, 1, 2);
        assert!(
            (m[0] - 0.25).abs() < 1e-6 && (m[1] - 0.25).abs() < 1e-6,
            "{m:?}"
        );
    }

    #[test]
    fn method_names_parse() {
        assert_eq!("gradcam".parse::<Method>().unwrap(), Method::GradCam);
        assert_eq!(
            "Grad-CAM++".parse::<Method>().unwrap(),
            Method::GradCamPlusPlus
        );
        assert!("scorecam".parse::<Method>().is_err());
    }
}

//! The dream's random view as one tracked operation on the CPU: bilinear sampling of an
//! affine grid — exactly burn's `affine_grid_2d` followed by `grid_sample_2d` (bilinear,
//! zeros padding, `align_corners = false`, which is PyTorch's default) — with its backward
//! (the transpose: each output's gradient spread over its four taps) in plain loops, instead
//! of burn's generic autodiff of the grid sample (≈ 22 ms of a 75 ms dream step).

use burn::tensor::{Device, Tensor};

/// For each output pixel, its four taps (flat input indices; `u32::MAX` outside the image)
/// and their bilinear weights.
#[derive(Debug, Clone)]
pub(crate) struct Taps {
    /// Input `[c, h, w]` and output `[c, oh, ow]` sizes.
    c: usize,
    hw: usize,
    ohw: usize,
    idx: Vec<[u32; 4]>,
    w: Vec<[f64; 4]>,
}

impl Taps {
    /// The taps of `theta` (2×3, row-major, acting on normalised coordinates) sampling an
    /// `[c, h, w]` image into `[c, oh, ow]`, computed as burn computes them.
    pub(crate) fn new(theta: [f32; 6], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Self {
        let mut idx = Vec::with_capacity(oh * ow);
        let mut wt = Vec::with_capacity(oh * ow);
        // affine_grid_2d: output pixel (i, j) at x = j / ((ow − 1) / 2) − 1 (f32 tensor ops)
        let (sx, sy) = ((ow as f32 - 1.0) / 2.0, (oh as f32 - 1.0) / 2.0);
        for i in 0..oh {
            let yn = i as f32 / sy - 1.0;
            for j in 0..ow {
                let xn = j as f32 / sx - 1.0;
                let gx = theta[0] * xn + theta[1] * yn + theta[2];
                let gy = theta[3] * xn + theta[4] * yn + theta[5];
                // grid_sample_2d (align_corners = false), in f64 as burn-flex does
                let px = (gx as f64 + 1.0) * w as f64 / 2.0 - 0.5;
                let py = (gy as f64 + 1.0) * h as f64 / 2.0 - 0.5;
                let (x0, y0) = (px.floor(), py.floor());
                let (fx, fy) = (px - x0, py - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let at = |x: i64, y: i64| -> u32 {
                    if px.is_finite()
                        && py.is_finite()
                        && (0..w as i64).contains(&x)
                        && (0..h as i64).contains(&y)
                    {
                        (y as usize * w + x as usize) as u32
                    } else {
                        u32::MAX
                    }
                };
                idx.push([
                    at(x0, y0),
                    at(x0, y0 + 1),
                    at(x0 + 1, y0),
                    at(x0 + 1, y0 + 1),
                ]);
                wt.push([
                    (1.0 - fx) * (1.0 - fy),
                    (1.0 - fx) * fy,
                    fx * (1.0 - fy),
                    fx * fy,
                ]);
            }
        }
        Taps {
            c,
            hw: h * w,
            ohw: oh * ow,
            idx,
            w: wt,
        }
    }

    /// `[c, h·w]` → `[c, oh·ow]`.
    pub(crate) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.c * self.ohw];
        for ch in 0..self.c {
            let (xc, oc) = (
                &x[ch * self.hw..(ch + 1) * self.hw],
                &mut out[ch * self.ohw..(ch + 1) * self.ohw],
            );
            for ((o, idx), w) in oc.iter_mut().zip(&self.idx).zip(&self.w) {
                let mut v = 0f64;
                for k in 0..4 {
                    if idx[k] != u32::MAX {
                        v += xc[idx[k] as usize] as f64 * w[k];
                    }
                }
                *o = v as f32;
            }
        }
        out
    }

    /// The transpose: `[c, oh·ow]` gradients → `[c, h·w]`.
    pub(crate) fn backward(&self, g: &[f32]) -> Vec<f32> {
        let mut dx = vec![0f64; self.c * self.hw];
        for ch in 0..self.c {
            let (gc, dc) = (
                &g[ch * self.ohw..(ch + 1) * self.ohw],
                &mut dx[ch * self.hw..(ch + 1) * self.hw],
            );
            for ((&gv, idx), w) in gc.iter().zip(&self.idx).zip(&self.w) {
                for k in 0..4 {
                    if idx[k] != u32::MAX {
                        dc[idx[k] as usize] += gv as f64 * w[k];
                    }
                }
            }
        }
        dx.into_iter().map(|v| v as f32).collect()
    }
}

/// The view `[1, c, oh, ow]` of `img` (`[c, h, w]`) through the affine map `theta`, tracked;
/// `None` when `img` is not on the autodiff CPU device (the caller then uses burn's ops).
pub(crate) fn affine_view(
    img: &Tensor<3>,
    theta: [f32; 6],
    oh: usize,
    ow: usize,
) -> Option<Tensor<4>> {
    if !img.is_autodiff() || img.device() != Device::flex().autodiff() {
        return None;
    }
    let [c, h, w] = img.dims();
    let taps = std::sync::Arc::new(Taps::new(theta, c, h, w, oh, ow));
    let x = crate::tensor::to_vec(img.clone().inner()).ok()?;
    let out = taps.forward(&x);
    super::cpu_op::tracked(
        img,
        out,
        [1, c, oh, ow],
        std::sync::Arc::new(move |g| taps.backward(g)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// The tracked view equals burn's affine grid + grid sample, forward and backward.
    #[test]
    fn the_view_is_burns_grid_sample_forward_and_backward() {
        let device = Device::flex().autodiff();
        let (c, h, w, oh, ow) = (3, 23, 19, 11, 13);
        let data: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
            .collect();
        let gout: Vec<f32> = (0..c * oh * ow)
            .map(|i| ((i * 104_729 % 997) as f32 / 997.0) - 0.3)
            .collect();
        // a rotation, a zoom and a shift that takes some taps outside the image
        let (a, th) = (0.8f32, 0.3f32);
        let theta = [
            a * th.cos(),
            -a * th.sin(),
            0.15,
            a * th.sin(),
            a * th.cos(),
            -0.4,
        ];
        let run = |ours: bool| {
            let x = Tensor::<3>::from_data(TensorData::new(data.clone(), [c, h, w]), &device)
                .require_grad();
            let v = if ours {
                affine_view(&x, theta, oh, ow).expect("the CPU path")
            } else {
                let t = Tensor::<3>::from_data(TensorData::new(theta.to_vec(), [1, 2, 3]), &device);
                let grid = burn::tensor::grid::affine_grid_2d(t, [1, c, oh, ow]);
                x.clone()
                    .unsqueeze::<4>()
                    .grid_sample_2d(grid, burn::tensor::ops::GridSampleOptions::default())
            };
            let g = Tensor::<4>::from_data(TensorData::new(gout.clone(), [1, c, oh, ow]), &device);
            let grads = (v.clone() * g).sum().backward();
            let dx = crate::tensor::to_vec(x.grad(&grads).unwrap()).unwrap();
            (crate::tensor::to_vec(v.inner()).unwrap(), dx)
        };
        let (ours, ours_dx) = run(true);
        let (burns, burns_dx) = run(false);
        let max = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        println!(
            "max |Δ| forward {:e}, backward {:e}",
            max(&ours, &burns),
            max(&ours_dx, &burns_dx)
        );
        assert!(max(&ours, &burns) < 1e-6, "forward {}", max(&ours, &burns));
        assert!(
            max(&ours_dx, &burns_dx) < 1e-5,
            "backward {}",
            max(&ours_dx, &burns_dx)
        );
        assert!(burns_dx.iter().any(|v| *v != 0.0));
    }
}

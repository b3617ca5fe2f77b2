//! The dream's decorrelated parameterisation as one tracked operation on the CPU: latent
//! `z` (`[3, s, s]`) → 1/frequency scaling → orthonormal 2-D inverse DCT of each channel →
//! ImageNet colour mixing → sigmoid, with fast (O(s log s)) cosine transforms along rows and
//! columns instead of two dense `s × s` matrix products a channel, and a backward pass that
//! runs the same chain transposed (sigmoid′, colourᵀ, forward DCT, scaling). Burn's ops
//! compute the same map on other devices (`dream::Builder`); the test below holds the two
//! to each other, forward and backward.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use rustdct::{Dct2, Dct3, DctPlanner};

/// Rows a parallel task transforms.
const ROWS: usize = 32;

pub(crate) struct Decorrelated {
    s: usize,
    /// Per-frequency scaling `[s, s]`.
    scale: Vec<f32>,
    colour: [[f32; 3]; 3],
    dct2: Arc<dyn Dct2<f32>>,
    dct3: Arc<dyn Dct3<f32>>,
    /// The orthonormal DCT's factor of each frequency: √(1/s) for 0, √(2/s) otherwise.
    norm: Vec<f32>,
}

impl std::fmt::Debug for Decorrelated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decorrelated").field("s", &self.s).finish()
    }
}

#[derive(Clone, Copy)]
enum Direction {
    /// Orthonormal DCT-II (image → frequencies).
    Forward,
    /// Its inverse, the orthonormal DCT-III (frequencies → image).
    Inverse,
}

impl Decorrelated {
    pub(crate) fn new(s: usize, scale: Vec<f32>, colour: [[f32; 3]; 3]) -> Self {
        assert_eq!(scale.len(), s * s);
        let mut planner = DctPlanner::new();
        let norm = (0..s)
            .map(|k| {
                if k == 0 {
                    (1.0 / s as f64).sqrt() as f32
                } else {
                    (2.0 / s as f64).sqrt() as f32
                }
            })
            .collect();
        Decorrelated {
            s,
            scale,
            colour,
            dct2: planner.plan_dct2(s),
            dct3: planner.plan_dct3(s),
            norm,
        }
    }

    /// Latent `[3, s, s]` → image `[3, s, s]` in (0, 1).
    pub(crate) fn forward(&self, z: &[f32]) -> Vec<f32> {
        let s2 = self.s * self.s;
        assert_eq!(z.len(), 3 * s2);
        let mut spatial: Vec<f32> = z
            .iter()
            .zip(self.scale.iter().cycle())
            .map(|(z, c)| z * c)
            .collect();
        self.transform(&mut spatial, Direction::Inverse);
        let mut img = vec![0f32; 3 * s2];
        let (r, rest) = img.split_at_mut(s2);
        let (g, b) = rest.split_at_mut(s2);
        let cm = &self.colour;
        (
            r,
            g,
            b,
            &spatial[..s2],
            &spatial[s2..2 * s2],
            &spatial[2 * s2..],
        )
            .into_par_iter()
            .with_min_len(4096)
            .for_each(|(r, g, b, &x0, &x1, &x2)| {
                let mix = |row: &[f32; 3]| row[0] * x0 + row[1] * x1 + row[2] * x2;
                *r = sigmoid(mix(&cm[0]));
                *g = sigmoid(mix(&cm[1]));
                *b = sigmoid(mix(&cm[2]));
            });
        img
    }

    /// The latent's gradient from the image `img` (the forward's output) and its gradient.
    pub(crate) fn backward(&self, img: &[f32], grad: &[f32]) -> Vec<f32> {
        let s2 = self.s * self.s;
        assert_eq!((img.len(), grad.len()), (3 * s2, 3 * s2));
        let mut gs = vec![0f32; 3 * s2];
        let (g0, rest) = gs.split_at_mut(s2);
        let (g1, g2) = rest.split_at_mut(s2);
        let cm = &self.colour;
        let (y, g) = (img, grad);
        (
            (g0, g1, g2),
            (&y[..s2], &y[s2..2 * s2], &y[2 * s2..]),
            (&g[..s2], &g[s2..2 * s2], &g[2 * s2..]),
        )
            .into_par_iter()
            .with_min_len(4096)
            .for_each(|((o0, o1, o2), (&y0, &y1, &y2), (&d0, &d1, &d2))| {
                // through the sigmoid, then the colour mixing transposed
                let m = [
                    d0 * y0 * (1.0 - y0),
                    d1 * y1 * (1.0 - y1),
                    d2 * y2 * (1.0 - y2),
                ];
                let back = |d: usize| cm[0][d] * m[0] + cm[1][d] * m[1] + cm[2][d] * m[2];
                *o0 = back(0);
                *o1 = back(1);
                *o2 = back(2);
            });
        self.transform(&mut gs, Direction::Forward);
        gs.iter_mut()
            .zip(self.scale.iter().cycle())
            .for_each(|(g, c)| *g *= c);
        gs
    }

    /// The orthonormal 2-D transform of each `[s, s]` channel of `x`, in place: along rows,
    /// then (transposed) along columns.
    fn transform(&self, x: &mut [f32], dir: Direction) {
        let s = self.s;
        self.rows(x, dir);
        let mut t = vec![0f32; x.len()];
        for (xc, tc) in x.chunks(s * s).zip(t.chunks_mut(s * s)) {
            transpose(xc, tc, s);
        }
        self.rows(&mut t, dir);
        for (tc, xc) in t.chunks(s * s).zip(x.chunks_mut(s * s)) {
            transpose(tc, xc, s);
        }
    }

    /// The 1-D orthonormal transform of every length-`s` row of `x`, in place.
    fn rows(&self, x: &mut [f32], dir: Direction) {
        let s = self.s;
        let scratch = match dir {
            Direction::Forward => self.dct2.get_scratch_len(),
            Direction::Inverse => self.dct3.get_scratch_len(),
        };
        x.par_chunks_mut(s * ROWS).for_each(|rows| {
            let mut buf = vec![0f32; scratch];
            for row in rows.chunks_mut(s) {
                match dir {
                    Direction::Forward => {
                        self.dct2.process_dct2_with_scratch(row, &mut buf);
                        row.iter_mut().zip(&self.norm).for_each(|(v, n)| *v *= n);
                    }
                    Direction::Inverse => {
                        // rustdct's DCT-III halves the DC term: x_n = X_0 / 2 + Σ X_k cos(…)
                        row.iter_mut().zip(&self.norm).for_each(|(v, n)| *v *= n);
                        row[0] *= 2.0;
                        self.dct3.process_dct3_with_scratch(row, &mut buf);
                    }
                }
            }
        });
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `dst = srcᵀ` for `[s, s]` matrices, in cache-sized tiles.
fn transpose(src: &[f32], dst: &mut [f32], s: usize) {
    const T: usize = 32;
    for i0 in (0..s).step_by(T) {
        for j0 in (0..s).step_by(T) {
            for i in i0..(i0 + T).min(s) {
                for j in j0..(j0 + T).min(s) {
                    dst[j * s + i] = src[i * s + j];
                }
            }
        }
    }
}

/// The image of latent `z` (`[3, s, s]`), tracked, when `z` is on the autodiff CPU device;
/// computed untracked on the plain CPU device; `None` elsewhere (the caller then uses
/// burn's ops).
pub(crate) fn image(op: &Arc<Decorrelated>, z: &Tensor<3>) -> Option<Tensor<3>> {
    let s = op.s;
    if z.dims() != [3, s, s] {
        return None;
    }
    let flex = Device::flex();
    // (a device compares equal to its autodiff wrapper)
    if z.device() != flex {
        return None;
    }
    let x = if z.is_autodiff() {
        crate::tensor::to_vec(z.clone().inner())
    } else {
        crate::tensor::to_vec(z.clone())
    }
    .ok()?;
    let img = op.forward(&x);
    if !z.is_autodiff() {
        return Some(Tensor::from_data(TensorData::new(img, [3, s, s]), &flex));
    }
    let (op, saved) = (op.clone(), img.clone());
    super::cpu_op::tracked(z, img, [3, s, s], Arc::new(move |g| op.backward(&saved, g)))
}

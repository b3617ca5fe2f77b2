//! A named feature map offered to the caller's taps (`featuremap`, Grad-CAM), and the
//! place whose gradient `Plan::value_grad` can stop at.

use burn::tensor::{Tensor, TensorData};
use whisker_kernels as k;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Tap {
    pub name: String,
    pub x: V,
    /// A layer of tokens `(t, 1, c)` whose last `gh·gw` are the patches of the grid of
    /// value `grid` (`(gh, gw, _)`, the patch embeddings): offered as a map on that grid.
    pub grid: Option<V>,
    /// With `grid`: `x` is a layer's packed q, k, v projection `(t, 1, 3c)` of this many
    /// heads, and the tap offers the class token's attention to the patches, one channel per
    /// head (`softmax(q₀·kⱼ/√d)` over every token j, the patches' kept).
    pub heads: Option<usize>,
}

/// The class token's attention of each head to the last `gh·gw` tokens of `t`, from packed
/// `qkv` `[t, 3·heads·d]` (one image): `[heads, gh·gw]` (NCHW order), in f64.
fn class_attention(qkv: &[f32], t: usize, heads: usize, d: usize, patches: usize) -> Vec<f32> {
    let c = heads * d;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = Vec::with_capacity(heads * patches);
    let mut s = vec![0f64; t];
    for h in 0..heads {
        let q = &qkv[h * d..(h + 1) * d];
        for (j, sj) in s.iter_mut().enumerate() {
            let k = &qkv[j * 3 * c + c + h * d..][..d];
            *sj = q
                .iter()
                .zip(k)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale;
        }
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
        out.extend(
            s[t - patches..]
                .iter()
                .map(|v| ((v - max).exp() / sum) as f32),
        );
    }
    out
}

impl Step for Tap {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        None
    }

    fn out_hw(&self, _: usize, _: Shapes<'_>) -> Result<(usize, usize)> {
        Err(Error::Internal("a tap has no output".into()))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        if !cx.taps.wants(&self.name) {
            cx.taps.note(&self.name);
            return Ok(());
        }
        if let (Some(g), Some(heads)) = (self.grid, self.heads) {
            let (n, (t, _, c3), (gh, gw, _)) = (cx.n, cx.shapes[self.x], cx.shapes[g]);
            let d = c3 / 3 / heads.max(1);
            if heads == 0 || c3 != 3 * heads * d || gh * gw > t {
                return Err(Error::Internal(format!(
                    "attention maps of {heads} heads from {:?} on a {gh}×{gw} grid",
                    cx.shapes[self.x]
                )));
            }
            let x = cx.value(self.x);
            let maps: Vec<f32> = x
                .chunks_exact(t * c3)
                .flat_map(|img| class_attention(img, t, heads, d, gh * gw))
                .collect();
            let map = Tensor::<4>::from_data(TensorData::new(maps, [n, heads, gh, gw]), cx.device);
            cx.taps.tap(&self.name, &map);
            return Ok(());
        }
        if let Some(g) = self.grid {
            let (n, (t, _, c), (gh, gw, _)) = (cx.n, cx.shapes[self.x], cx.shapes[g]);
            let x = cx.value(self.x);
            let prefix = t.saturating_sub(gh * gw);
            let mut patches = Vec::with_capacity(n * gh * gw * c);
            for img in x.chunks_exact(t * c) {
                patches.extend_from_slice(&img[prefix * c..]);
            }
            let mut nchw = vec![0f32; patches.len()];
            k::nhwc_to_nchw(&patches, n, gh, gw, c, &mut nchw).map_err(shape_err)?;
            let map = Tensor::<4>::from_data(TensorData::new(nchw, [n, c, gh, gw]), cx.device);
            let tokens = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [n, t, c]), cx.device);
            cx.taps.tap_tokens(&self.name, &map, tokens);
            return Ok(());
        }
        let (n, (h, w, c)) = (cx.n, cx.shapes[self.x]);
        let mut nchw = vec![0f32; cx.len(self.x)];
        k::nhwc_to_nchw(cx.value(self.x), n, h, w, c, &mut nchw).map_err(shape_err)?;
        let t = Tensor::<4>::from_data(TensorData::new(nchw, [n, c, h, w]), cx.device);
        cx.taps.tap(&self.name, &t);
        Ok(())
    }

    fn backward(&self, _: &mut Bwd<'_>) -> Result<()> {
        Ok(())
    }

    fn describe(&self, _: Shapes<'_>) -> String {
        match self.heads {
            Some(h) => format!("tap {} (class token attention, {h} heads)", self.name),
            None => format!("tap {}", self.name),
        }
    }
}

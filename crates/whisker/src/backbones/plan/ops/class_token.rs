//! The class token of a sequence of tokens `(t, 1, c)`: its first, a vector `(1, 1, c)` (a
//! vision transformer's feature vector); or that and the mean of the patch tokens, `(1, 1,
//! 2c)` (DINOv2's linear-probe feature).

use rayon::prelude::*;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::V;
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct ClassToken {
    pub x: V,
    pub out: V,
    /// The mean of the tokens from this one on appended (the patches', after the class and
    /// register tokens).
    pub mean_from: Option<usize>,
}

impl Step for ClassToken {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn out_hw(&self, _: usize, _: Shapes<'_>) -> Result<(usize, usize)> {
        Ok((1, 1))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (t, w, c) = cx.shapes[self.x];
        let from = self.mean_from;
        if from.is_some_and(|f| f >= t * w) {
            return Err(crate::error::Error::Internal(format!(
                "the mean of tokens from {from:?} on of {}",
                t * w
            )));
        }
        let (x, out, _) = cx.io(self.x, self.out, None);
        let oc = if from.is_some() { 2 * c } else { c };
        out.par_chunks_mut(oc)
            .zip(x.par_chunks(t * w * c))
            .for_each(|(o, x)| {
                o[..c].copy_from_slice(&x[..c]);
                if let Some(f) = from {
                    // summed in f64, rounded once
                    let mut sum = vec![0f64; c];
                    for tok in x[f * c..].chunks_exact(c) {
                        sum.iter_mut().zip(tok).for_each(|(s, &v)| *s += v as f64);
                    }
                    let n = (t * w - f) as f64;
                    o[c..]
                        .iter_mut()
                        .zip(&sum)
                        .for_each(|(o, s)| *o = (s / n) as f32);
                }
            });
        Ok(())
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        let (t, w, c) = cx.shape(self.x);
        if cx.wants_input(self.x) {
            let len = cx.len(self.x);
            let oc = if self.mean_from.is_some() { 2 * c } else { c };
            let dx = cx.grads[self.x].get_or_insert_with(|| vec![0f32; len]);
            for (d, g) in dx.chunks_exact_mut(t * w * c).zip(g.chunks_exact(oc)) {
                d[..c].iter_mut().zip(g).for_each(|(d, g)| *d += g);
                if let Some(f) = self.mean_from {
                    let n = (t * w - f) as f32;
                    for tok in d[f * c..].chunks_exact_mut(c) {
                        tok.iter_mut().zip(&g[c..]).for_each(|(d, g)| *d += g / n);
                    }
                }
            }
        }
        whisker_kernels::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        let what = match self.mean_from {
            None => "class token".to_string(),
            Some(f) => format!("class token + mean of tokens {f}.."),
        };
        format!("{what} {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

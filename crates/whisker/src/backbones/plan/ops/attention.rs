//! Multi-head self-attention over tokens: the packed q, k, v projection `(t, 1, 3c)` →
//! `softmax(q·kᵀ/√d)·v` per head, heads side by side `(t, 1, c)` (the output projection is
//! a pointwise op after it).

use whisker_kernels as k;

use super::{missing, Bwd, Fwd, Kept, Shapes, Step};
use crate::backbones::plan::grad::hand_over;
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Attention {
    pub qkv: V,
    pub out: V,
    pub heads: usize,
    pub d: usize,
}

impl Attention {
    /// `1/√d`.
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

impl Step for Attention {
    fn inputs(&self) -> Vec<V> {
        vec![self.qkv]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        let (t, w, c3) = shapes[self.qkv];
        if c3 != 3 * self.heads * self.d {
            return Err(Error::Internal(format!(
                "attention of {} heads of {} on {c3} channels",
                self.heads, self.d
            )));
        }
        Ok((t, w))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (t, w, _) = cx.shapes[self.qkv];
        let (n, isa) = (cx.n, cx.isa);
        let (qkv, out, _) = cx.io(self.qkv, self.out, None);
        k::attention(
            isa,
            qkv,
            (n, t * w, self.heads, self.d),
            self.scale(),
            out,
            None,
        )
        .map_err(shape_err)
    }

    fn forward_kept(&self, cx: &mut Fwd<'_>) -> Result<Kept> {
        let (t, w, _) = cx.shapes[self.qkv];
        let (n, isa) = (cx.n, cx.isa);
        let mut probs = vec![0f32; n * self.heads * t * w * t * w];
        let (qkv, out, _) = cx.io(self.qkv, self.out, None);
        k::attention(
            isa,
            qkv,
            (n, t * w, self.heads, self.d),
            self.scale(),
            out,
            Some(&mut probs),
        )
        .map_err(shape_err)?;
        Ok(Kept {
            bufs: vec![probs],
            ..Kept::default()
        })
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        if cx.wants_input(self.qkv) {
            let [probs] = cx.kept.bufs.as_slice() else {
                return Err(missing());
            };
            let (t, w, _) = cx.shape(self.qkv);
            let mut d = k::buffers::take(cx.len(self.qkv));
            k::attention_backward(
                cx.isa,
                &cx.tape.values[self.qkv],
                probs,
                &g,
                (cx.n, t * w, self.heads, self.d),
                self.scale(),
                &mut d,
            )
            .map_err(shape_err)?;
            hand_over(Some(&mut cx.grads[self.qkv]), d);
        }
        k::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "attention {}×{} {:?} -> {:?}",
            self.heads, self.d, shapes[self.qkv], shapes[self.out]
        )
    }
}

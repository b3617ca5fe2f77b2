//! Multi-head self-attention over tokens: the packed q, k, v projection `(t, 1, 3c)` →
//! `softmax(q·kᵀ/√d)·v` per head, heads side by side `(t, 1, c)` (the output projection is
//! a pointwise op after it).

use whisker_kernels as k;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Attention {
    pub qkv: V,
    pub out: V,
    pub heads: usize,
    pub d: usize,
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
        let scale = 1.0 / (self.d as f32).sqrt();
        let (qkv, out, _) = cx.io(self.qkv, self.out, None);
        k::attention(isa, qkv, (n, t * w, self.heads, self.d), scale, out, None).map_err(shape_err)
    }

    fn backward(&self, _: &mut Bwd<'_>) -> Result<()> {
        // plans for gradients do not lower a transformer yet (its `lower` refuses them, and
        // gradients run on burn's operations)
        Err(Error::Internal(
            "the CPU engine has no attention backward step yet".into(),
        ))
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "attention {}×{} {:?} -> {:?}",
            self.heads, self.d, shapes[self.qkv], shapes[self.out]
        )
    }
}

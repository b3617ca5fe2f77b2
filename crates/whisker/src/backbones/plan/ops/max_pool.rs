//! Max pooling (`k`×`k`, `stride`, padding that never wins).

use whisker_kernels as k;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, too_small, V};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct MaxPool {
    pub x: V,
    pub out: V,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Step for MaxPool {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        let (ih, iw, _) = shapes[self.x];
        let (kk, pad, stride) = (self.k, self.pad, self.stride);
        if ih + 2 * pad < kk || iw + 2 * pad < kk {
            return Err(too_small(k::ShapeError(format!(
                "a {kk}×{kk} max pool on {ih}×{iw}"
            ))));
        }
        Ok((
            (ih + 2 * pad - kk) / stride + 1,
            (iw + 2 * pad - kk) / stride + 1,
        ))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (n, (h, w, c)) = (cx.n, cx.shapes[self.x]);
        let (xb, ob, _) = cx.io(self.x, self.out, None);
        k::max_pool(xb, n, h, w, c, self.k, self.stride, self.pad, ob)
            .map(|_| ())
            .map_err(shape_err)
    }

    /// The gradient routed to each window's maximum; a ReLU right before (the pool its only
    /// reader) has its derivative applied here, and skipped by the op that applied it.
    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let x = self.x;
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        let (h, w, c) = cx.shape(x);
        let acc = cx.grads[x].is_some();
        // (not for a value whose own gradient is asked for)
        let relu = cx.relu_out[x] && cx.consumers[x] == 1 && !acc && cx.stop_at != Some(x);
        let len = cx.len(x);
        let dx = cx.grads[x].get_or_insert_with(|| k::buffers::take(len));
        k::max_pool_backward(
            cx.tape.produced(x),
            cx.n,
            h,
            w,
            c,
            self.k,
            self.stride,
            self.pad,
            &g,
            dx,
            acc,
            relu,
            cx.isa,
        )
        .map_err(shape_err)?;
        cx.premasked[x] = relu;
        k::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("maxpool {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

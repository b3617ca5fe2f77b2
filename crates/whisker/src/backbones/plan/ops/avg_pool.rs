//! Adaptive average pooling to `oh × ow` (global average pooling: 1 × 1).

use whisker_kernels as k;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, V};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct AvgPool {
    pub x: V,
    pub out: V,
    pub oh: usize,
    pub ow: usize,
}

impl Step for AvgPool {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn out_hw(&self, _: usize, _: Shapes<'_>) -> Result<(usize, usize)> {
        Ok((self.oh, self.ow))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (n, (h, w, c)) = (cx.n, cx.shapes[self.x]);
        let (xb, ob, _) = cx.io(self.x, self.out, None);
        k::adaptive_avg_pool(xb, n, h, w, c, self.oh, self.ow, ob).map_err(shape_err)
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        let (h, w, c) = cx.shape(self.x);
        let (n, len) = (cx.n, cx.len(self.x));
        let acc = cx.grads[self.x].is_some();
        let dx = cx.grads[self.x].get_or_insert_with(|| k::buffers::take(len));
        k::adaptive_avg_pool_backward(n, h, w, c, self.oh, self.ow, &g, dx, acc)
            .map_err(shape_err)?;
        k::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("avgpool {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

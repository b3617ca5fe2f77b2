//! The class token of a sequence of tokens `(t, 1, c)`: its first, a vector `(1, 1, c)` (a
//! vision transformer's feature vector).

use rayon::prelude::*;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::V;
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct ClassToken {
    pub x: V,
    pub out: V,
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
        let (x, out, _) = cx.io(self.x, self.out, None);
        out.par_chunks_mut(c)
            .zip(x.par_chunks(t * w * c))
            .for_each(|(o, x)| o.copy_from_slice(&x[..c]));
        Ok(())
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        let (t, w, c) = cx.shape(self.x);
        if cx.wants_input(self.x) {
            let len = cx.len(self.x);
            let dx = cx.grads[self.x].get_or_insert_with(|| vec![0f32; len]);
            for (d, g) in dx.chunks_exact_mut(t * w * c).zip(g.chunks_exact(c)) {
                d[..c].iter_mut().zip(g).for_each(|(d, g)| *d += g);
            }
        }
        whisker_kernels::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("class token {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

//! The sum of two values of one shape, `out = a + b`: a residual added after an activation
//! (EfficientNetV2's fused blocks without expansion), where a convolution's epilogue, which
//! adds its residual before the activation, cannot.

use rayon::prelude::*;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::grad::hand_over;
use crate::backbones::plan::V;
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Add {
    pub a: V,
    pub b: V,
    pub out: V,
}

impl Step for Add {
    fn inputs(&self) -> Vec<V> {
        vec![self.a, self.b]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        let ((ha, wa, ca), (hb, wb, cb)) = (shapes[self.a], shapes[self.b]);
        if (ha, wa, ca) != (hb, wb, cb) {
            return Err(Error::Internal(format!(
                "adding a {:?} value to a {:?} one",
                (ha, wa, ca),
                (hb, wb, cb)
            )));
        }
        Ok((ha, wa))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (a, out, b) = cx.io(self.a, self.out, Some(self.b));
        let b = b.ok_or_else(|| Error::Internal("an addition without its second value".into()))?;
        out.par_chunks_mut(1 << 14)
            .zip(a.par_chunks(1 << 14).zip(b.par_chunks(1 << 14)))
            .for_each(|(o, (a, b))| {
                for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                    *o = a + b;
                }
            });
        Ok(())
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        // both inputs get the output's gradient: a copy for one when both want it
        let (wa, wb) = (cx.wants_input(self.a), cx.wants_input(self.b));
        if wa && wb {
            let mut copy = whisker_kernels::buffers::take(g.len());
            copy.copy_from_slice(&g);
            hand_over(Some(&mut cx.grads[self.b]), copy);
        }
        let to = if wa {
            Some(self.a)
        } else {
            wb.then_some(self.b)
        };
        hand_over(to.map(|v| &mut cx.grads[v]), g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("add {:?}", shapes[self.out])
    }
}

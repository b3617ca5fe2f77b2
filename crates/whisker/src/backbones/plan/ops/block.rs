//! An inverted residual block's 1×1 expansion, depthwise convolution and 1×1 projection (and
//! its residual add of the input) fused, a band of rows at a time: forward-only plans, blocks
//! without squeeze-excitation (the builder's `fuse_block` makes it).

use whisker_kernels as k;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, too_small, Pad, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Block {
    pub x: V,
    pub out: V,
    pub b: k::InvertedResidual,
    pub stride: usize,
    pub pad: Pad,
    pub res: bool,
}

impl Block {
    fn shape(&self, n: usize, shapes: Shapes<'_>) -> k::ConvShape {
        self.pad
            .shape(n, shapes[self.x], self.b.depthwise.kh, self.stride)
    }
}

impl Step for Block {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn out_hw(&self, n: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        let d = &self.b.depthwise;
        self.shape(n, shapes).out_hw(d.kh, d.kw).map_err(too_small)
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        if cx.tape {
            return Err(Error::Internal(
                "a fused block in a plan that keeps values for gradients".into(),
            ));
        }
        let s = self.shape(cx.n, cx.shapes);
        let isa = cx.isa;
        let (xb, ob, _) = cx.io(self.x, self.out, None);
        k::inverted_residual(isa, &self.b, xb, &s, self.res, ob).map_err(shape_err)
    }

    fn backward(&self, _: &mut Bwd<'_>) -> Result<()> {
        // fused only in plans compiled without backward weights
        Err(Error::Internal(
            "a fused block has no backward pass: compile the plan with `backward`".into(),
        ))
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "block {}dw {}x{} s{} 1x1 {:?} -> {:?}{}",
            if self.b.expand.is_some() { "1x1 " } else { "" },
            self.b.depthwise.kh,
            self.b.depthwise.kw,
            self.stride,
            shapes[self.x],
            shapes[self.out],
            if self.res { " +res" } else { "" }
        )
    }
}

//! A linear layer applied at every pixel (or token) — a 1×1 convolution over the value —
//! from a checkpoint's `Linear`, with bias, an optional per-output scale folded into its
//! weights (ConvNeXt's layer scale γ: `γ·(Wx + b) = (γW)x + γb`), an optional residual and
//! an activation in its epilogue.

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, ConvShape, PackedConv};

use super::linear::LinearParams;
use super::{affine_backward, conv_input_grad, Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, V};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct Pointwise {
    pub x: V,
    pub out: V,
    pub res: Option<V>,
    /// `[cout, cin]` (scale folded), packed as a 1×1 convolution.
    pub w: PackedConv,
    pub act: KAct,
    /// The input gradient's weights (plans for gradients).
    pub bw: Option<k::ConvBackward>,
    /// The parameters, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<LinearParams>,
}

impl Pointwise {
    fn shape(&self, n: usize, shapes: Shapes<'_>) -> ConvShape {
        let (h, w, _) = shapes[self.x];
        ConvShape::symmetric(n, h, w, 1, 0)
    }
}

impl Step for Pointwise {
    fn inputs(&self) -> Vec<V> {
        std::iter::once(self.x).chain(self.res).collect()
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn act(&self) -> KAct {
        self.act
    }

    fn param_ids(&self) -> Vec<ParamId> {
        self.params
            .as_ref()
            .map(LinearParams::ids)
            .unwrap_or_default()
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        Ok((shapes[self.x].0, shapes[self.x].1))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let s = self.shape(cx.n, cx.shapes);
        let (isa, act) = (cx.isa, cx.act(self.act));
        let (xb, ob, rb) = cx.io(self.x, self.out, self.res);
        k::conv2d(isa, &self.w, xb, &s, rb, act, ob).map_err(shape_err)
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let s = self.shape(cx.n, &cx.tape.shapes);
        affine_backward(
            cx,
            (self.x, self.out, self.act, self.res),
            |cx, g| match &self.params {
                Some(p) => p.grads(cx.isa, &cx.tape.values[self.x], &s, g, cx.pgrads),
                None => Ok(()),
            },
            |cx, g, prev| conv_input_grad(cx, self.bw.as_ref(), &s, self.x, g, prev),
        )
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "pointwise {:?} -> {:?} {:?}{}",
            shapes[self.x],
            shapes[self.out],
            self.act,
            if self.res.is_some() { " +res" } else { "" }
        )
    }
}

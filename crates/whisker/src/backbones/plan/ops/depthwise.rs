//! A depthwise convolution (one filter a channel, BatchNorm folded in), with bias and an
//! activation in its epilogue.

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, PackedDepthwise};

use super::conv::ConvParams;
use super::{affine_backward, into_input_grad, missing, Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::{shape_err, too_small, Pad, V};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct Depthwise {
    pub x: V,
    pub out: V,
    pub w: PackedDepthwise,
    pub stride: usize,
    pub pad: Pad,
    pub act: KAct,
    /// The input gradient's weights (plans for gradients).
    pub bw: Option<k::DepthwiseBackward>,
    /// The parameters, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<ConvParams>,
}

impl Depthwise {
    fn shape(&self, n: usize, shapes: Shapes<'_>) -> k::ConvShape {
        self.pad.shape(n, shapes[self.x], self.w.kh, self.stride)
    }
}

impl Step for Depthwise {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
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
            .map(ConvParams::ids)
            .unwrap_or_default()
    }

    fn out_hw(&self, n: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        self.shape(n, shapes)
            .out_hw(self.w.kh, self.w.kw)
            .map_err(too_small)
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let s = self.shape(cx.n, cx.shapes);
        let (isa, act) = (cx.isa, cx.act(self.act));
        let (xb, ob, _) = cx.io(self.x, self.out, None);
        k::depthwise(isa, &self.w, xb, &s, act, ob).map_err(shape_err)
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let s = self.shape(cx.n, &cx.tape.shapes);
        affine_backward(
            cx,
            (self.x, self.out, self.act, None),
            |cx, g| {
                let Some(pm) = &self.params else {
                    return Ok(());
                };
                let [c, _, kh, kw] = pm.dims;
                let mut dw = vec![0f32; c * kh * kw];
                let mut db = vec![0f32; c];
                k::depthwise_weight_grad(
                    cx.isa,
                    &cx.tape.values[self.x],
                    &s,
                    c,
                    g,
                    kh,
                    kw,
                    &mut dw,
                    Some(&mut db),
                )
                .map_err(shape_err)?;
                pm.grads(dw, db, cx.pgrads)
            },
            |cx, g, prev| {
                let b = self.bw.as_ref().ok_or_else(missing)?;
                into_input_grad(cx, self.x, prev, |dx, acc| {
                    b.input_grad(cx.isa, g, &s, dx, acc)
                })
            },
        )
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "depthwise {}x{} s{} {:?} -> {:?}",
            self.w.kh, self.w.kw, self.stride, shapes[self.x], shapes[self.out]
        )
    }
}

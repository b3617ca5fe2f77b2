//! A linear layer over each image's whole value (`[n, h·w·c]` in NHWC order), with bias and
//! an activation.

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, ConvShape, PackedConv};

use super::{affine_backward, conv_input_grad, Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::grad::ParamGrad;
use crate::backbones::plan::{shape_err, V};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct Linear {
    pub x: V,
    pub out: V,
    pub w: PackedConv,
    pub act: KAct,
    /// The input gradient's weights (a 1×1 convolution's; plans for gradients).
    pub bw: Option<k::ConvBackward>,
    /// The parameters, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<LinearParams>,
}

/// A linear layer's parameters (burn's `[in, out]` weight); `perm` maps the NHWC flattening
/// of its input to the checkpoint's.
#[derive(Debug)]
pub(in crate::backbones::plan) struct LinearParams {
    pub weight: ParamId,
    pub bias: ParamId,
    pub perm: Option<Vec<usize>>,
    pub inp: usize,
    pub outc: usize,
}

impl Step for Linear {
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
            .map(|p| vec![p.weight, p.bias])
            .unwrap_or_default()
    }

    fn out_hw(&self, _: usize, _: Shapes<'_>) -> Result<(usize, usize)> {
        Ok((1, 1))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let s = ConvShape::symmetric(cx.n, 1, 1, 1, 0);
        let (isa, act) = (cx.isa, cx.act(self.act));
        let (xb, ob, _) = cx.io(self.x, self.out, None);
        k::conv2d(isa, &self.w, xb, &s, None, act, ob).map_err(shape_err)
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        // a 1×1 convolution on 1×1 maps
        let s = ConvShape::symmetric(cx.n, 1, 1, 1, 0);
        affine_backward(
            cx,
            (self.x, self.out, self.act, None),
            |cx, g| {
                let Some(p) = &self.params else {
                    return Ok(());
                };
                let (inp, outc) = (p.inp, p.outc);
                let mut dw = vec![0f32; inp * outc];
                let mut db = vec![0f32; outc];
                k::conv2d_weight_grad(
                    cx.isa,
                    &cx.tape.values[self.x],
                    &s,
                    inp,
                    g,
                    outc,
                    1,
                    1,
                    &mut dw,
                    Some(&mut db),
                )
                .map_err(shape_err)?;
                // [out][in (NHWC order)] → burn's [in (checkpoint order)][out]
                let mut gw = vec![0f32; inp * outc];
                for o in 0..outc {
                    for i in 0..inp {
                        let row = p.perm.as_ref().map_or(i, |q| q[i]);
                        gw[row * outc + o] = dw[o * inp + i];
                    }
                }
                cx.pgrads
                    .push(ParamGrad::new(p.weight, vec![inp, outc], gw));
                cx.pgrads.push(ParamGrad::new(p.bias, vec![outc], db));
                Ok(())
            },
            |cx, g, prev| conv_input_grad(cx, self.bw.as_ref(), &s, self.x, g, prev),
        )
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("linear {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

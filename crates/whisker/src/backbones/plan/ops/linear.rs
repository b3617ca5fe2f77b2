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

/// A linear layer's parameters (burn's `[in, out]` weight and its bias), to map the gradients
/// of its packed weights back to them; for a whole-value layer (`Linear`) `perm` maps the NHWC
/// flattening of its input to the checkpoint's, for a per-pixel one (`Pointwise`) `scale` is
/// the per-output scale folded into its weights.
#[derive(Debug)]
pub(in crate::backbones::plan) struct LinearParams {
    pub weight: ParamId,
    pub bias: ParamId,
    pub perm: Option<Vec<usize>>,
    pub scale: Option<FoldedScale>,
    pub inp: usize,
    pub outc: usize,
}

/// A per-output scale folded into a linear layer (`W' = s·W`, `b' = s·b`): its parameter, its
/// values and the unfolded weight (`[in, out]`) and bias its gradient needs.
#[derive(Debug)]
pub(in crate::backbones::plan) struct FoldedScale {
    pub id: ParamId,
    /// The parameter's shape.
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl LinearParams {
    /// The parameters whose gradients it gives.
    pub fn ids(&self) -> Vec<ParamId> {
        let mut v = vec![self.weight, self.bias];
        v.extend(self.scale.as_ref().map(|s| s.id));
        v
    }

    /// The parameters' gradients from the layer's input `x` (as a 1×1 convolution of geometry
    /// `s`) and the gradient `g` of its (pre-activation) output: `[out][in (NHWC order)]` →
    /// burn's `[in (checkpoint order)][out]`; through a folded scale `dW = s·dW'`,
    /// `db = s·db'`, `ds = Σ_i dW'·W + db'·b`.
    pub fn grads(
        &self,
        isa: k::Isa,
        x: &[f32],
        s: &ConvShape,
        g: &[f32],
        out: &mut Vec<ParamGrad>,
    ) -> Result<()> {
        let (inp, outc) = (self.inp, self.outc);
        // handed to burn (not from the buffer cache: it would not come back)
        let mut dw = vec![0f32; inp * outc];
        let mut db = vec![0f32; outc];
        k::conv2d_weight_grad(isa, x, s, inp, g, outc, 1, 1, &mut dw, Some(&mut db))
            .map_err(shape_err)?;
        let mut gw = vec![0f32; inp * outc];
        for o in 0..outc {
            let so = self.scale.as_ref().map_or(1.0, |sc| sc.values[o]);
            for i in 0..inp {
                let row = self.perm.as_ref().map_or(i, |q| q[i]);
                gw[row * outc + o] = dw[o * inp + i] * so;
            }
        }
        out.push(ParamGrad::new(self.weight, vec![inp, outc], gw));
        match &self.scale {
            None => out.push(ParamGrad::new(self.bias, vec![outc], db)),
            Some(sc) => {
                let ds = (0..outc)
                    .map(|o| {
                        let dot = (0..inp)
                            .map(|i| {
                                let row = self.perm.as_ref().map_or(i, |q| q[i]);
                                dw[o * inp + i] as f64 * sc.w[row * outc + o] as f64
                            })
                            .sum::<f64>();
                        (dot + db[o] as f64 * sc.b[o] as f64) as f32
                    })
                    .collect();
                let gb = db.iter().zip(&sc.values).map(|(d, s)| d * s).collect();
                out.push(ParamGrad::new(self.bias, vec![outc], gb));
                out.push(ParamGrad::new(sc.id, sc.shape.clone(), ds));
            }
        }
        Ok(())
    }
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
            .map(LinearParams::ids)
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
            |cx, g| match &self.params {
                Some(p) => p.grads(cx.isa, &cx.tape.values[self.x], &s, g, cx.pgrads),
                None => Ok(()),
            },
            |cx, g, prev| conv_input_grad(cx, self.bw.as_ref(), &s, self.x, g, prev),
        )
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("linear {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

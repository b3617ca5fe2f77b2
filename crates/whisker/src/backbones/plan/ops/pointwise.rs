//! A linear layer applied at every pixel (or token) — a 1×1 convolution over the value —
//! from a checkpoint's `Linear`, with bias, an optional per-output scale folded into its
//! weights (ConvNeXt's layer scale γ: `γ·(Wx + b) = (γW)x + γb`), an optional residual and
//! an activation in its epilogue.

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, ConvShape, PackedConv};

use super::{affine_backward, conv_input_grad, Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::grad::ParamGrad;
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
    pub params: Option<PointwiseParams>,
}

/// A pointwise layer's parameters: burn's `[in, out]` weight and its bias, unfolded, and the
/// scale folded into them (its values and its parameter).
#[derive(Debug)]
pub(in crate::backbones::plan) struct PointwiseParams {
    pub weight: ParamId,
    pub bias: ParamId,
    /// `[in, out]`, as burn keeps it.
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub scale: Option<(ParamId, Vec<f32>)>,
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
        let Some(p) = &self.params else {
            return Vec::new();
        };
        let mut v = vec![p.weight, p.bias];
        v.extend(p.scale.as_ref().map(|s| s.0));
        v
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
            |cx, g| {
                let Some(p) = &self.params else {
                    return Ok(());
                };
                let (cin, cout) = (self.w.cin, self.w.cout);
                let mut dw = vec![0f32; cout * cin];
                let mut db = vec![0f32; cout];
                k::conv2d_weight_grad(
                    cx.isa,
                    &cx.tape.values[self.x],
                    &s,
                    cin,
                    g,
                    cout,
                    1,
                    1,
                    &mut dw,
                    Some(&mut db),
                )
                .map_err(shape_err)?;
                // W' = s·W, b' = s·b: dW = s·dW', db = s·db', ds = Σ_i dW'·W + db'·b
                let one = vec![1f32; cout];
                let s = p.scale.as_ref().map_or(&one, |(_, v)| v);
                let mut gw = vec![0f32; cin * cout];
                let mut ds = vec![0f64; cout];
                for o in 0..cout {
                    for i in 0..cin {
                        let d = dw[o * cin + i];
                        gw[i * cout + o] = d * s[o];
                        ds[o] += d as f64 * p.w[i * cout + o] as f64;
                    }
                    ds[o] += db[o] as f64 * p.b[o] as f64;
                }
                let gb: Vec<f32> = db.iter().zip(s).map(|(d, s)| d * s).collect();
                cx.pgrads
                    .push(ParamGrad::new(p.weight, vec![cin, cout], gw));
                cx.pgrads.push(ParamGrad::new(p.bias, vec![cout], gb));
                if let Some((id, _)) = &p.scale {
                    let ds = ds.into_iter().map(|v| v as f32).collect();
                    cx.pgrads.push(ParamGrad::new(*id, vec![cout, 1, 1], ds));
                }
                Ok(())
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

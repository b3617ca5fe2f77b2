//! A dense convolution (BatchNorm folded in), with bias, an optional residual and an
//! activation in its epilogue; direct or Winograd F(2×2, 3×3).

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, PackedConv};

use super::{affine_backward, conv_input_grad, Bwd, Fwd, Shapes, Step};
use crate::backbones::layers::{BatchNorm, Conv2d};
use crate::backbones::plan::grad::ParamGrad;
use crate::backbones::plan::{running_stats, shape_err, too_small, values, Pad, V};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct Conv {
    pub x: V,
    pub out: V,
    pub res: Option<V>,
    pub w: PackedConv,
    pub stride: usize,
    pub pad: Pad,
    pub act: KAct,
    /// The input gradient's weights (plans for gradients).
    pub bw: Option<k::ConvBackward>,
    /// The parameters, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<ConvParams>,
}

impl Conv {
    fn shape(&self, n: usize, shapes: Shapes<'_>) -> k::ConvShape {
        self.pad.shape(n, shapes[self.x], self.w.kh, self.stride)
    }
}

impl Step for Conv {
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
        let (xb, ob, rb) = cx.io(self.x, self.out, self.res);
        k::conv2d(isa, &self.w, xb, &s, rb, act, ob).map_err(shape_err)
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let s = self.shape(cx.n, &cx.tape.shapes);
        affine_backward(
            cx,
            (self.x, self.out, self.act, self.res),
            |cx, g| {
                let Some(pm) = &self.params else {
                    return Ok(());
                };
                let [cout, cin, kh, kw] = pm.dims;
                // handed to burn (not from the buffer cache: it would not come back)
                let mut dw = vec![0f32; cout * cin * kh * kw];
                let mut db = vec![0f32; cout];
                k::conv2d_weight_grad(
                    cx.isa,
                    &cx.tape.values[self.x],
                    &s,
                    cin,
                    g,
                    cout,
                    kh,
                    kw,
                    &mut dw,
                    Some(&mut db),
                )
                .map_err(shape_err)?;
                pm.grads(dw, db, cx.pgrads)
            },
            |cx, g, prev| conv_input_grad(cx, self.bw.as_ref(), &s, self.x, g, prev),
        )
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "conv {}x{} s{} {:?} -> {:?} {:?}{}{}",
            self.w.kh,
            self.w.kw,
            self.stride,
            shapes[self.x],
            shapes[self.out],
            self.act,
            if self.res.is_some() { " +res" } else { "" },
            if self.w.is_winograd() {
                " winograd"
            } else {
                ""
            }
        )
    }
}

/// An eval-mode BatchNorm folded into its convolution: its parameters and, per channel,
/// `γ/√(σ²+ε)`, `1/√(σ²+ε)` and the running mean.
#[derive(Debug)]
struct BnFold {
    gamma: ParamId,
    beta: ParamId,
    scale: Vec<f64>,
    inv_std: Vec<f64>,
    mean: Vec<f64>,
}

/// A convolution's parameters (dense or depthwise), to map the gradients of its folded,
/// packed weights back to them: its unfolded weight `[cout, cin/groups, kh, kw]`, its bias
/// (zeros when it has none) and the BatchNorm folded into it.
#[derive(Debug)]
pub(in crate::backbones::plan) struct ConvParams {
    weight: ParamId,
    w: Box<burn::tensor::Tensor<4>>,
    pub dims: [usize; 4],
    bias: Option<ParamId>,
    bias_v: Vec<f32>,
    bn: Option<BnFold>,
}

impl ConvParams {
    /// The parameters of `conv` and the BatchNorm folded into it.
    pub fn new(conv: &Conv2d, bn: Option<&BatchNorm>) -> Result<ConvParams> {
        let dims = conv.weight.dims();
        let bias_v = match &conv.bias {
            Some(b) => values(b.val())?,
            None => vec![0.0; dims[0]],
        };
        let bn = match bn.filter(|bn| !bn.folded) {
            None => None,
            Some(bn) => {
                let g = values(bn.weight.val())?;
                let (mean, var) = running_stats(bn)?;
                let inv_std: Vec<f64> = var
                    .iter()
                    .map(|&v| 1.0 / (v as f64 + bn.eps).sqrt())
                    .collect();
                Some(BnFold {
                    gamma: bn.weight.id,
                    beta: bn.bias.id,
                    scale: g.iter().zip(&inv_std).map(|(&g, s)| g as f64 * s).collect(),
                    inv_std,
                    mean: mean.iter().map(|&m| m as f64).collect(),
                })
            }
        };
        Ok(ConvParams {
            weight: conv.weight.id,
            w: Box::new(conv.weight.val()),
            dims,
            bias: conv.bias.as_ref().map(|b| b.id),
            bias_v,
            bn,
        })
    }

    /// The parameters whose gradients it gives.
    pub fn ids(&self) -> Vec<ParamId> {
        let mut v = vec![self.weight];
        v.extend(self.bias);
        if let Some(bn) = &self.bn {
            v.extend([bn.gamma, bn.beta]);
        }
        v
    }

    /// The parameters' gradients from the gradients of the folded weight `[cout, per]` and
    /// bias: `W' = W·s`, `b' = (b − μ)·s + β` with `s = γ/√(σ²+ε)` give
    /// `dW = dW'·s`, `db = db'·s`, `dβ = db'`, `dγ = (Σ_k dW'·W + db'·(b − μ))/√(σ²+ε)`.
    pub fn grads(&self, mut dw: Vec<f32>, db: Vec<f32>, out: &mut Vec<ParamGrad>) -> Result<()> {
        let cout = self.dims[0];
        let per = (dw.len() / cout.max(1)).max(1);
        let Some(bn) = &self.bn else {
            out.push(ParamGrad::new(self.weight, self.dims.to_vec(), dw));
            if let Some(b) = self.bias {
                out.push(ParamGrad::new(b, vec![cout], db));
            }
            return Ok(());
        };
        // per output channel, in parallel: dW = dW'·s (in place) and the dot product dγ
        // needs, with the weight read where it lies
        use rayon::prelude::*;
        let dots: Vec<f64> = crate::tensor::with_values(&self.w, |w| {
            dw.par_chunks_mut(per)
                .zip(w.par_chunks(per))
                .enumerate()
                .map(|(o, (d, wo))| {
                    let s = bn.scale[o];
                    let dot = d.iter().zip(wo).map(|(&a, &b)| a as f64 * b as f64).sum();
                    for g in d.iter_mut() {
                        *g = (*g as f64 * s) as f32;
                    }
                    dot
                })
                .collect()
        })?;
        let gw = dw;
        let (mut gg, mut gb) = (vec![0f32; cout], vec![0f32; cout]);
        let mut gbias = vec![0f32; cout];
        for o in 0..cout {
            let dbo = db[o] as f64;
            gg[o] = ((dots[o] + dbo * (self.bias_v[o] as f64 - bn.mean[o])) * bn.inv_std[o]) as f32;
            gb[o] = db[o];
            gbias[o] = (dbo * bn.scale[o]) as f32;
        }
        out.push(ParamGrad::new(self.weight, self.dims.to_vec(), gw));
        if let Some(b) = self.bias {
            out.push(ParamGrad::new(b, vec![cout], gbias));
        }
        out.push(ParamGrad::new(bn.gamma, vec![cout], gg));
        out.push(ParamGrad::new(bn.beta, vec![cout], gb));
        Ok(())
    }
}

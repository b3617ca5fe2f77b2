//! Squeeze-excitation, scaling its input in place: `x ⊙ hardsigmoid(fc2 · relu(fc1 ·
//! mean(x)))` (MobileNetV3's).

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, ConvShape, Isa, PackedConv};

use super::{missing, Bwd, Fwd, Kept, Shapes, Step};
use crate::backbones::plan::grad::ParamGrad;
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct Se {
    pub x: V,
    pub fc1: PackedConv,
    pub fc2: PackedConv,
    /// The backward step's weights (plans for gradients).
    pub bw: Option<SeBackward>,
    /// The parameters, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<SeParams>,
}

/// Squeeze-excitation's weights for its backward step: `w1` `[hid, c]`, `w2` `[c, hid]`
/// (the biases are not needed).
#[derive(Debug)]
pub(in crate::backbones::plan) struct SeBackward {
    pub w1: Vec<f32>,
    pub w2: Vec<f32>,
    pub hid: usize,
    pub c: usize,
}

/// Squeeze-excitation's two 1×1 convolutions' parameters.
#[derive(Debug, Clone, Copy)]
pub(in crate::backbones::plan) struct SeParams {
    pub w1: ParamId,
    pub b1: ParamId,
    pub w2: ParamId,
    pub b2: ParamId,
}

impl Se {
    /// The channel scales of `x` `[n, hw, c]`, with the hidden layer (post-ReLU).
    fn scales(&self, isa: Isa, x: &[f32], n: usize, hw: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = self.fc1.cin;
        let mut pooled = vec![0f32; n * c];
        k::global_avg_pool(x, n, hw, c, &mut pooled).map_err(shape_err)?;
        let one = ConvShape::symmetric(n, 1, 1, 1, 0);
        let mut hidden = vec![0f32; n * self.fc1.cout];
        k::conv2d(isa, &self.fc1, &pooled, &one, None, KAct::Relu, &mut hidden)
            .map_err(shape_err)?;
        let mut scales = vec![0f32; n * self.fc2.cout];
        k::conv2d(
            isa,
            &self.fc2,
            &hidden,
            &one,
            None,
            KAct::Hardsigmoid,
            &mut scales,
        )
        .map_err(shape_err)?;
        Ok((hidden, scales))
    }
}

impl Step for Se {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        None
    }

    fn in_place(&self) -> Option<V> {
        Some(self.x)
    }

    fn param_ids(&self) -> Vec<ParamId> {
        self.params
            .map(|p| vec![p.w1, p.b1, p.w2, p.b2])
            .unwrap_or_default()
    }

    fn out_hw(&self, _: usize, _: Shapes<'_>) -> Result<(usize, usize)> {
        Err(Error::Internal("squeeze-excitation has no output".into()))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (n, (h, w, c), isa) = (cx.n, cx.shapes[self.x], cx.isa);
        let xb = cx.value_mut(self.x);
        let (_, s) = self.scales(isa, xb, n, h * w)?;
        k::scale_channels(xb, n, h * w, c, &s).map_err(shape_err)
    }

    fn forward_kept(&self, cx: &mut Fwd<'_>) -> Result<Kept> {
        let (n, (h, w, c), isa) = (cx.n, cx.shapes[self.x], cx.isa);
        let before = cx.value(self.x).to_vec();
        let (hidden, s) = self.scales(isa, &before, n, h * w)?;
        k::scale_channels(cx.value_mut(self.x), n, h * w, c, &s).map_err(shape_err)?;
        Ok(Kept {
            bufs: vec![before, s, hidden],
            ..Kept::default()
        })
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.x].take() else {
            return Ok(());
        };
        let (Some(SeBackward { w1, w2, hid, c }), [xin, s, hidden]) =
            (&self.bw, cx.kept.bufs.as_slice())
        else {
            return Err(missing());
        };
        let (dx, sg) = se_backward(&g, xin, s, hidden, w1, w2, cx.n, *hid, *c);
        cx.grads[self.x] = Some(dx);
        k::buffers::give(g);
        if let (true, Some(SeParams { w1, b1, w2, b2 })) = (cx.want_params, self.params) {
            let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
            let (hid, c) = (*hid, *c);
            cx.pgrads
                .push(ParamGrad::new(w1, vec![hid, c, 1, 1], f(sg.w1)));
            cx.pgrads.push(ParamGrad::new(b1, vec![hid], f(sg.b1)));
            cx.pgrads
                .push(ParamGrad::new(w2, vec![c, hid, 1, 1], f(sg.w2)));
            cx.pgrads.push(ParamGrad::new(b2, vec![c], f(sg.b2)));
        }
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("squeeze-excite {:?}", shapes[self.x])
    }
}

/// Squeeze-excitation's parameter gradients: `w1` `[hid, c]`, `b1`, `w2` `[c, hid]`, `b2`.
#[derive(Debug, Default)]
struct SeGrads {
    w1: Vec<f64>,
    b1: Vec<f64>,
    w2: Vec<f64>,
    b2: Vec<f64>,
}

/// Squeeze-excitation backward: `y = x ⊙ s(mean(x))`, `s = hardsigmoid(w2·relu(w1·p + b1) + b2)`.
#[allow(clippy::too_many_arguments)]
fn se_backward(
    g: &[f32],
    x: &[f32],
    s: &[f32],
    hidden: &[f32],
    w1: &[f32],
    w2: &[f32],
    n: usize,
    hid: usize,
    c: usize,
) -> (Vec<f32>, SeGrads) {
    let hw = g.len() / (n * c).max(1);
    let mut dx = vec![0f32; g.len()];
    let mut pg = SeGrads {
        w1: vec![0.0; hid * c],
        b1: vec![0.0; hid],
        w2: vec![0.0; c * hid],
        b2: vec![0.0; c],
    };
    for b in 0..n {
        let gb = &g[b * hw * c..][..hw * c];
        let xb = &x[b * hw * c..][..hw * c];
        let sb = &s[b * c..][..c];
        // ds = Σ_hw g ⊙ x, then through the hardsigmoid; the pooled input on the way
        let mut dz = vec![0f64; c];
        let mut pooled = vec![0f64; c];
        for p in 0..hw {
            for ch in 0..c {
                dz[ch] += (gb[p * c + ch] * xb[p * c + ch]) as f64;
                pooled[ch] += xb[p * c + ch] as f64;
            }
        }
        for ch in 0..c {
            pooled[ch] /= hw as f64;
            dz[ch] = if sb[ch] > 0.0 && sb[ch] < 1.0 {
                dz[ch] / 6.0
            } else {
                0.0
            };
        }
        // through fc2 and the ReLU
        let hb = &hidden[b * hid..][..hid];
        let mut dh = vec![0f64; hid];
        for (j, d) in dh.iter_mut().enumerate() {
            if hb[j] > 0.0 {
                *d = (0..c).map(|ch| w2[ch * hid + j] as f64 * dz[ch]).sum();
            }
        }
        for ((b2, row), &d) in pg.b2.iter_mut().zip(pg.w2.chunks_exact_mut(hid)).zip(&dz) {
            *b2 += d;
            for (w, &h) in row.iter_mut().zip(hb) {
                *w += d * h as f64;
            }
        }
        for ((b1, row), &d) in pg.b1.iter_mut().zip(pg.w1.chunks_exact_mut(c)).zip(&dh) {
            *b1 += d;
            for (w, &p) in row.iter_mut().zip(&pooled) {
                *w += d * p;
            }
        }
        // through fc1 and the mean
        let dp: Vec<f32> = (0..c)
            .map(|ch| {
                ((0..hid).map(|j| w1[j * c + ch] as f64 * dh[j]).sum::<f64>() / hw as f64) as f32
            })
            .collect();
        let db = &mut dx[b * hw * c..][..hw * c];
        for p in 0..hw {
            for ch in 0..c {
                db[p * c + ch] = gb[p * c + ch] * sb[ch] + dp[ch];
            }
        }
    }
    (dx, pg)
}

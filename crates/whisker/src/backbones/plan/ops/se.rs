//! Squeeze-excitation, scaling its input in place: `x ⊙ gate(fc2 · act(fc1 · mean(x)))`
//! (MobileNetV3's ReLU and hard sigmoid, EfficientNetV2's SiLU and sigmoid, RegNetY's ReLU
//! and sigmoid).

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
    /// The hidden layer's activation and the gate (a sigmoid or hard sigmoid).
    pub act: KAct,
    pub gate: KAct,
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
    /// The channel scales of `x` `[n, hw, c]`, with the hidden layer before and after its
    /// activation.
    fn scales(&self, isa: Isa, x: &[f32], n: usize, hw: usize) -> Result<[Vec<f32>; 3]> {
        let c = self.fc1.cin;
        let mut pooled = vec![0f32; n * c];
        k::global_avg_pool(x, n, hw, c, &mut pooled).map_err(shape_err)?;
        let one = ConvShape::symmetric(n, 1, 1, 1, 0);
        let mut pre = vec![0f32; n * self.fc1.cout];
        k::conv2d(isa, &self.fc1, &pooled, &one, None, KAct::None, &mut pre).map_err(shape_err)?;
        let mut hidden = pre.clone();
        k::act_in_place(isa, self.act, &mut hidden);
        let mut scales = vec![0f32; n * self.fc2.cout];
        k::conv2d(isa, &self.fc2, &hidden, &one, None, self.gate, &mut scales)
            .map_err(shape_err)?;
        Ok([pre, hidden, scales])
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
        let [_, _, s] = self.scales(isa, xb, n, h * w)?;
        k::scale_channels(xb, n, h * w, c, &s).map_err(shape_err)
    }

    fn forward_kept(&self, cx: &mut Fwd<'_>) -> Result<Kept> {
        let (n, (h, w, c), isa) = (cx.n, cx.shapes[self.x], cx.isa);
        let before = cx.value(self.x).to_vec();
        let [pre, hidden, s] = self.scales(isa, &before, n, h * w)?;
        k::scale_channels(cx.value_mut(self.x), n, h * w, c, &s).map_err(shape_err)?;
        Ok(Kept {
            bufs: vec![before, s, hidden, pre],
            ..Kept::default()
        })
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.x].take() else {
            return Ok(());
        };
        let (Some(SeBackward { w1, w2, hid, c }), [xin, s, hidden, pre]) =
            (&self.bw, cx.kept.bufs.as_slice())
        else {
            return Err(missing());
        };
        let (dx, sg) = se_backward(
            &g,
            (xin, s, hidden, pre),
            (w1, w2),
            (self.act, self.gate),
            (cx.n, *hid, *c),
        );
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

/// Squeeze-excitation backward: `y = x ⊙ s(mean(x))`, `s = gate(w2·act(w1·p + b1) + b2)`,
/// from the input `x`, the scales `s`, the hidden layer after (`hidden`) and before (`pre`)
/// its activation.
fn se_backward(
    g: &[f32],
    (x, s, hidden, pre): (&[f32], &[f32], &[f32], &[f32]),
    (w1, w2): (&[f32], &[f32]),
    (act, gate): (KAct, KAct),
    (n, hid, c): (usize, usize, usize),
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
        // ds = Σ_hw g ⊙ x, then through the gate; the pooled input on the way
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
            dz[ch] *= gate_grad(gate, sb[ch]);
        }
        // through fc2 and the hidden activation
        let hb = &hidden[b * hid..][..hid];
        let zb = &pre[b * hid..][..hid];
        let mut dh = vec![0f64; hid];
        for (j, d) in dh.iter_mut().enumerate() {
            let a = k::act_grad(act, zb[j]) as f64;
            if a != 0.0 {
                *d = a
                    * (0..c)
                        .map(|ch| w2[ch * hid + j] as f64 * dz[ch])
                        .sum::<f64>();
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

/// A gate's derivative from its output `s`: the hard sigmoid's 1/6 inside (0, 1), the
/// sigmoid's `s·(1 − s)`.
fn gate_grad(gate: KAct, s: f32) -> f64 {
    match gate {
        KAct::Sigmoid => s as f64 * (1.0 - s as f64),
        _ if s > 0.0 && s < 1.0 => 1.0 / 6.0,
        _ => 0.0,
    }
}

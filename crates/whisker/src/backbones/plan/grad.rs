//! Gradients through the CPU engine: a forward pass that keeps every value (a [`Tape`]), then
//! the ops in reverse, each turning the gradient of its output into the gradient of its
//! inputs with the backward kernels of `whisker-kernels` (stride-phase convolutions on the
//! forward kernels, max/average pool routing) — what `attack`, `dream` and `robustness` need,
//! d(objective)/d(pixels) — and, for a plan compiled with `weight_grads`, the gradient of
//! every parameter ([`Plan::backward`]): each convolution's weight gradient with its
//! BatchNorm folded in, mapped back to the convolution's weight, BatchNorm's γ and β and the
//! biases (frozen running statistics: fine-tuning's default).

use whisker_kernels as k;
use whisker_kernels::{Act as KAct, ConvShape};

use burn::module::ParamId;

use super::{shape_err, values, Op, Plan, V};
use crate::backbones::layers::{BatchNorm, Conv2d};
use crate::error::{Error, Result};

/// An eval-mode BatchNorm folded into its convolution: its parameters and, per channel,
/// `γ/√(σ²+ε)`, `1/√(σ²+ε)` and the running mean.
#[derive(Debug)]
pub(super) struct BnFold {
    gamma: ParamId,
    beta: ParamId,
    scale: Vec<f64>,
    inv_std: Vec<f64>,
    mean: Vec<f64>,
}

/// The parameters an op computes with, to map the gradients of its (folded, packed) weights
/// back to them.
#[derive(Debug)]
pub(super) enum ParamMap {
    /// A convolution, dense or depthwise: its unfolded weight `[cout, cin/groups, kh, kw]`,
    /// its bias (zeros when it has none) and the BatchNorm folded into it.
    Conv {
        weight: ParamId,
        w: Box<burn::tensor::Tensor<4>>,
        dims: [usize; 4],
        bias: Option<ParamId>,
        bias_v: Vec<f32>,
        bn: Option<BnFold>,
    },
    /// A linear layer (burn's `[in, out]` weight); `perm` maps the NHWC flattening of its
    /// input to the checkpoint's.
    Linear {
        weight: ParamId,
        bias: ParamId,
        perm: Option<Vec<usize>>,
        inp: usize,
        outc: usize,
    },
    /// A BatchNorm with batch statistics: its affine parameters.
    Bn { gamma: ParamId, beta: ParamId },
    /// Squeeze-excitation's two 1×1 convolutions.
    Se {
        w1: ParamId,
        b1: ParamId,
        w2: ParamId,
        b2: ParamId,
    },
}

impl ParamMap {
    /// The parameters whose gradients this op gives.
    fn ids(&self) -> Vec<ParamId> {
        match self {
            ParamMap::Conv {
                weight, bias, bn, ..
            } => {
                let mut v = vec![*weight];
                v.extend(*bias);
                if let Some(bn) = bn {
                    v.extend([bn.gamma, bn.beta]);
                }
                v
            }
            ParamMap::Linear { weight, bias, .. } => vec![*weight, *bias],
            ParamMap::Bn { gamma, beta } => vec![*gamma, *beta],
            ParamMap::Se { w1, b1, w2, b2 } => vec![*w1, *b1, *w2, *b2],
        }
    }

    pub(super) fn bn(bn: &BatchNorm) -> ParamMap {
        ParamMap::Bn {
            gamma: bn.weight.id,
            beta: bn.bias.id,
        }
    }

    /// The map of `conv` and the BatchNorm folded into it.
    pub(super) fn conv(conv: &Conv2d, bn: Option<&BatchNorm>) -> Result<ParamMap> {
        let dims = conv.weight.dims();
        let bias_v = match &conv.bias {
            Some(b) => values(b.val())?,
            None => vec![0.0; dims[0]],
        };
        let bn = match bn.filter(|bn| !bn.folded) {
            None => None,
            Some(bn) => {
                let g = values(bn.weight.val())?;
                let (mean, var) = super::running_stats(bn)?;
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
        Ok(ParamMap::Conv {
            weight: conv.weight.id,
            w: Box::new(conv.weight.val()),
            dims,
            bias: conv.bias.as_ref().map(|b| b.id),
            bias_v,
            bn,
        })
    }

    /// The parameters' gradients from the gradients of the folded weight `[cout, per]` and
    /// bias: `W' = W·s`, `b' = (b − μ)·s + β` with `s = γ/√(σ²+ε)` give
    /// `dW = dW'·s`, `db = db'·s`, `dβ = db'`, `dγ = (Σ_k dW'·W + db'·(b − μ))/√(σ²+ε)`.
    fn conv_grads(&self, mut dw: Vec<f32>, db: Vec<f32>, out: &mut Vec<ParamGrad>) -> Result<()> {
        let ParamMap::Conv {
            weight,
            w,
            dims,
            bias,
            bias_v,
            bn,
        } = self
        else {
            return Ok(());
        };
        let cout = dims[0];
        let per = (dw.len() / cout.max(1)).max(1);
        let Some(bn) = bn else {
            out.push(ParamGrad::new(*weight, dims.to_vec(), dw));
            if let Some(b) = bias {
                out.push(ParamGrad::new(*b, vec![cout], db));
            }
            return Ok(());
        };
        // per output channel, in parallel: dW = dW'·s (in place) and the dot product dγ
        // needs, with the weight read where it lies
        use rayon::prelude::*;
        let dots: Vec<f64> = crate::tensor::with_values(w, |w| {
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
            gg[o] = ((dots[o] + dbo * (bias_v[o] as f64 - bn.mean[o])) * bn.inv_std[o]) as f32;
            gb[o] = db[o];
            gbias[o] = (dbo * bn.scale[o]) as f32;
        }
        out.push(ParamGrad::new(*weight, dims.to_vec(), gw));
        if let Some(b) = bias {
            out.push(ParamGrad::new(*b, vec![cout], gbias));
        }
        out.push(ParamGrad::new(bn.gamma, vec![cout], gg));
        out.push(ParamGrad::new(bn.beta, vec![cout], gb));
        Ok(())
    }
}

/// The gradient of one parameter, in burn's layout of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGrad {
    pub id: ParamId,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

impl ParamGrad {
    fn new(id: ParamId, dims: Vec<usize>, values: Vec<f32>) -> Self {
        ParamGrad { id, dims, values }
    }
}

/// What an op's input gradient needs beyond the forward weights.
#[derive(Debug)]
pub(super) enum Bw {
    /// A dense convolution or a linear layer (a 1×1 convolution over a 1×1 map).
    Conv(k::ConvBackward),
    Depthwise(k::DepthwiseBackward),
    /// Squeeze-excitation: `w1` `[hid, c]`, `w2` `[c, hid]` (biases are not needed).
    Se {
        w1: Vec<f32>,
        w2: Vec<f32>,
        hid: usize,
        c: usize,
    },
}

/// What an op kept from the forward pass.
#[derive(Debug, Default)]
enum Saved {
    #[default]
    Nothing,
    /// The input of a hardswish (its derivative is not a function of its output).
    PreActivation(Vec<f32>),
    /// Squeeze-excitation: the map before scaling, the scales, the hidden (post-ReLU) layer.
    Se {
        x: Vec<f32>,
        s: Vec<f32>,
        hidden: Vec<f32>,
    },
}

/// A forward pass kept for [`Plan::input_grad`].
#[derive(Debug)]
pub struct Tape {
    n: usize,
    dims: [usize; 4],
    normalized: bool,
    shapes: Vec<(usize, usize, usize)>,
    values: Vec<Vec<f32>>,
    saved: Vec<Saved>,
    /// For a value squeeze-excitation scaled in place: the op that kept its earlier contents.
    rescaled: Vec<Option<usize>>,
    /// The batch statistics of each BatchNorm op (`train_bn`).
    stats: Vec<Option<k::BatchStats>>,
    features: V,
}

/// A tape's values go back to the buffer cache: the next step's tape reuses them.
impl Drop for Tape {
    fn drop(&mut self) {
        for v in self.values.drain(..) {
            k::buffers::give(v);
        }
    }
}

impl Tape {
    /// The feature vectors `[n, dim]`, row-major.
    pub fn features(&self) -> &[f32] {
        &self.values[self.features]
    }

    /// Images in the batch.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The input's `[n, 3, h, w]`.
    pub fn input_dims(&self) -> [usize; 4] {
        self.dims
    }

    /// What op `v`'s producer wrote (before any in-place squeeze-excitation).
    fn produced(&self, v: V) -> &[f32] {
        match self.rescaled[v].map(|i| &self.saved[i]) {
            Some(Saved::Se { x, .. }) => x,
            _ => &self.values[v],
        }
    }
}

/// `g` times the activation's derivative, from its output `y` (or its input, for hardswish),
/// in parallel chunks and branch-free (selects the compiler vectorises).
fn act_grad(act: KAct, g: &mut [f32], y: &[f32], saved: &Saved) -> Result<()> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    // generic (not a `fn` pointer), so that `f` is inlined into the loop and vectorised: a
    // pointer was one call an element (10 % of a `dream` step)
    fn by<F: Fn(f32, f32) -> f32 + Sync>(f: F, g: &mut [f32], y: &[f32]) {
        g.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK))
            .for_each(|(gc, yc)| {
                for (gv, &v) in gc.iter_mut().zip(yc) {
                    *gv = f(*gv, v);
                }
            })
    }
    match act {
        KAct::None => {}
        KAct::Relu => by(|g, y| if y > 0.0 { g } else { 0.0 }, g, y),
        KAct::Relu6 => by(|g, y| if y > 0.0 && y < 6.0 { g } else { 0.0 }, g, y),
        // PyTorch's hardswish_backward, from the input z
        KAct::Hardswish => match saved {
            Saved::PreActivation(pre) => by(
                |g, z| {
                    if z < -3.0 {
                        0.0
                    } else if z <= 3.0 {
                        g * (z / 3.0 + 0.5)
                    } else {
                        g
                    }
                },
                g,
                pre,
            ),
            _ => return Err(Error::Internal("hardswish input not kept".into())),
        },
        KAct::Hardsigmoid => by(|g, y| if y > 0.0 && y < 1.0 { g / 6.0 } else { 0.0 }, g, y),
    }
    Ok(())
}

fn add_into_par(a: &mut [f32], g: &[f32]) {
    use rayon::prelude::*;
    a.par_chunks_mut(1 << 14)
        .zip(g.par_chunks(1 << 14))
        .for_each(|(ac, gc)| {
            for (x, y) in ac.iter_mut().zip(gc) {
                *x += y;
            }
        });
}

/// An output gradient done with: added into the residual branch's gradient `slot` when
/// there is one (becoming it, without a copy, when it is the first), else given back.
fn hand_over(slot: Option<&mut Option<Vec<f32>>>, g: Vec<f32>) {
    match slot {
        Some(Some(a)) => {
            add_into_par(a, &g);
            k::buffers::give(g);
        }
        Some(slot) => *slot = Some(g),
        None => k::buffers::give(g),
    }
}

impl Plan {
    /// Whether this plan was compiled with backward weights ([`super::PlanOptions::backward`]).
    pub fn has_backward(&self) -> bool {
        !self.bw.is_empty()
    }

    /// Forward to the features (`[n, 3, h, w]` NCHW pixels in [0, 1], or already normalised),
    /// keeping every value for [`Plan::input_grad`].
    pub fn forward_tape(&self, pixels: &[f32], dims: [usize; 4], normalized: bool) -> Result<Tape> {
        super::in_pool(|| self.forward_tape_here(pixels, dims, normalized))
    }

    fn forward_tape_here(
        &self,
        pixels: &[f32],
        dims: [usize; 4],
        normalized: bool,
    ) -> Result<Tape> {
        if !self.has_backward() {
            return Err(Error::Internal(
                "this plan was compiled without backward weights".into(),
            ));
        }
        let [n, c, h, w] = dims;
        if c != 3 || pixels.len() != n * c * h * w {
            return Err(Error::Invalid(format!(
                "the network takes [n, 3, h, w] images, got {} values as [{n}, {c}, {h}, {w}]",
                pixels.len()
            )));
        }
        let shapes = self.shapes(n, h, w)?;
        let len = |v: V| n * shapes[v].0 * shapes[v].1 * shapes[v].2;
        let mut values: Vec<Vec<f32>> = (0..shapes.len())
            .map(|v| k::buffers::take(len(v)))
            .collect();
        let (scale, mean, std) = self.norm_for(normalized);
        k::nchw_to_nhwc_normalized(pixels, n, 3, h, w, scale, &mean, &std, &mut values[0])
            .map_err(shape_err)?;
        let ident: Vec<usize> = (0..shapes.len()).collect();
        let mut saved: Vec<Saved> = (0..self.ops.len()).map(|_| Saved::Nothing).collect();
        let mut rescaled = vec![None; shapes.len()];
        let mut stats: Vec<Option<k::BatchStats>> = (0..self.ops.len()).map(|_| None).collect();
        let device = burn::tensor::Device::flex();
        let mut taps = super::Taps::none();
        let profile = super::profiling();
        for (i, op) in self.ops[..self.classifier_start].iter().enumerate() {
            let t = std::time::Instant::now();
            let _report = Report(profile.then_some((t, op, shapes.as_slice())), "forward");
            match op {
                Op::Se { x, fc1, fc2 } => {
                    let (hh, ww, c) = shapes[*x];
                    let before = values[*x].clone();
                    let (hidden, s) = self.se_scales(&before, n, hh * ww, fc1, fc2)?;
                    k::scale_channels(&mut values[*x], n, hh * ww, c, &s).map_err(shape_err)?;
                    saved[i] = Saved::Se {
                        x: before,
                        s,
                        hidden,
                    };
                    rescaled[*x] = Some(i);
                }
                _ => {
                    if let Op::BatchNorm {
                        stats: running,
                        momentum,
                        ..
                    } = op
                    {
                        // the batch's statistics: kept for the backward pass, and folded
                        // into the running ones (as PyTorch's training-mode forward does)
                        let defer = |a: &KAct| match a {
                            KAct::Hardswish => KAct::None,
                            a => *a,
                        };
                        let st = self.batch_norm(op, n, &shapes, &ident, &mut values, defer)?;
                        crate::backbones::layers::update_running_values(
                            running, *momentum, &st.mean, &st.var, st.count,
                        );
                        stats[i] = Some(st);
                    } else {
                        self.step(
                            op,
                            n,
                            &shapes,
                            &ident,
                            &mut values,
                            &mut taps,
                            &device,
                            true,
                        )?;
                    }
                    if let (Some(out), KAct::Hardswish) = (op.output(), op_act(op)) {
                        let y = &mut values[out];
                        saved[i] = Saved::PreActivation(y.clone());
                        for v in y.iter_mut() {
                            *v = KAct::Hardswish.apply(*v);
                        }
                    }
                }
            }
        }
        Ok(Tape {
            n,
            dims,
            normalized,
            shapes,
            values,
            saved,
            rescaled,
            stats,
            features: self.features,
        })
    }

    /// d(objective)/d(input) `[n, 3, h, w]` (NCHW, pixel space unless the tape's input was
    /// normalised) from d(objective)/d(features) `[n, dim]`.
    pub fn input_grad(&self, tape: &Tape, dfeatures: &[f32]) -> Result<Vec<f32>> {
        Ok(self.backward(tape, dfeatures, true, false)?.0)
    }

    /// The input gradient (zeros unless `input_grad`) and, when `params` (the plan compiled
    /// with [`super::PlanOptions::weight_grads`]), the gradient of every parameter the
    /// features depend on, in burn's layouts.
    pub fn backward(
        &self,
        tape: &Tape,
        dfeatures: &[f32],
        input_grad: bool,
        params: bool,
    ) -> Result<(Vec<f32>, Vec<ParamGrad>)> {
        let all = |_: ParamId| true;
        self.backward_for(tape, dfeatures, input_grad, params.then_some(&all))
    }

    /// [`Plan::backward`] giving only the gradients of the parameters `wanted` accepts (when
    /// given: none otherwise): an op without one computes no weight gradient, and the pass
    /// stops below the lowest op that has one, unless the input gradient is asked for
    /// (fine-tuning the top units: nothing below them runs).
    pub fn backward_for(
        &self,
        tape: &Tape,
        dfeatures: &[f32],
        input_grad: bool,
        wanted: Option<&(dyn Fn(ParamId) -> bool + Sync)>,
    ) -> Result<(Vec<f32>, Vec<ParamGrad>)> {
        self.backward_to(tape, dfeatures, input_grad, wanted, None)
    }

    /// The value the tap `name` offers (a feature map), if the plan has that tap.
    pub fn tap_value(&self, name: &str) -> Option<V> {
        self.ops.iter().find_map(|op| match op {
            Op::Tap { name: n, x } if n == name => Some(*x),
            _ => None,
        })
    }

    /// The tape's final value of `v` (`[n, h, w, c]`, NHWC) and its shape `(h, w, c)`.
    pub fn tape_value<'t>(&self, tape: &'t Tape, v: V) -> (&'t [f32], (usize, usize, usize)) {
        (&tape.values[v], tape.shapes[v])
    }

    /// d(objective)/d(value `v`) (`[n, h, w, c]`, NHWC) from d(objective)/d(features): the
    /// backward pass over the ops after the last one that writes `v` — the gradient a tap on
    /// `v` sees (Grad-CAM's), with no weight or input gradient computed below it.
    pub fn value_grad(&self, tape: &Tape, dfeatures: &[f32], v: V) -> Result<Vec<f32>> {
        Ok(self.backward_to(tape, dfeatures, false, None, Some(v))?.0)
    }

    /// [`Plan::backward_for`], or with `stop_at`, [`Plan::value_grad`] (its first result).
    fn backward_to(
        &self,
        tape: &Tape,
        dfeatures: &[f32],
        input_grad: bool,
        wanted: Option<&(dyn Fn(ParamId) -> bool + Sync)>,
        stop_at: Option<V>,
    ) -> Result<(Vec<f32>, Vec<ParamGrad>)> {
        super::in_pool(|| self.backward_here(tape, dfeatures, input_grad, wanted, stop_at))
    }

    fn backward_here(
        &self,
        tape: &Tape,
        dfeatures: &[f32],
        input_grad: bool,
        wanted: Option<&(dyn Fn(ParamId) -> bool + Sync)>,
        stop_at: Option<V>,
    ) -> Result<(Vec<f32>, Vec<ParamGrad>)> {
        let params = wanted.is_some();
        if params && self.pm.is_empty() {
            return Err(Error::Internal(
                "this plan was compiled without weight gradients".into(),
            ));
        }
        let mut pgrads = Vec::new();
        let n = tape.n;
        let shapes = &tape.shapes;
        let len = |v: V| n * shapes[v].0 * shapes[v].1 * shapes[v].2;
        if dfeatures.len() != len(self.features) {
            return Err(Error::Invalid(format!(
                "a feature gradient of {} values for {} features",
                dfeatures.len(),
                len(self.features)
            )));
        }
        let isa = self.isa;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; shapes.len()];
        grads[self.features] = Some(dfeatures.to_vec());
        let missing = || Error::Internal("no backward weights for an op".into());
        let profile = super::profiling();
        // the ops with a wanted parameter, and the lowest of them
        let needs: Vec<bool> = (0..self.classifier_start)
            .map(|i| match (wanted, self.pm.get(i)) {
                (Some(w), Some(Some(pm))) => pm.ids().into_iter().any(w),
                _ => false,
            })
            .collect();
        // the last op writing `stop_at` (its producer, or a squeeze-excitation rescaling it
        // in place): the pass runs over the ops after it
        let stop_op = stop_at.map(|v| {
            self.ops[..self.classifier_start]
                .iter()
                .rposition(|op| op.output() == Some(v) || matches!(op, Op::Se { x, .. } if *x == v))
        });
        let lowest = match stop_op {
            Some(Some(i)) => i + 1,
            Some(None) => 0,
            None if input_grad => 0,
            None => needs
                .iter()
                .position(|&b| b)
                .unwrap_or(self.classifier_start),
        };
        // a max pool right after a ReLU (its only consumer): ReLU's backward done in the
        // pool's, and skipped by the op that applied the ReLU
        let mut consumers = vec![0usize; shapes.len()];
        let mut relu_out = vec![false; shapes.len()];
        for op in &self.ops {
            if !matches!(op, Op::Tap { .. }) {
                op.inputs().into_iter().for_each(|v| consumers[v] += 1);
            }
            if let (Some(v), KAct::Relu) = (op.output(), op_act(op)) {
                relu_out[v] = true;
            }
        }
        let mut premasked = vec![false; shapes.len()];
        for (i, op) in self.ops[..self.classifier_start].iter().enumerate().rev() {
            if i < lowest {
                break;
            }
            let saved = &tape.saved[i];
            let t = std::time::Instant::now();
            let _report = Report(profile.then_some((t, op, shapes.as_slice())), "backward");
            match op {
                Op::Conv { x, out, act, .. }
                | Op::Linear { x, out, act, .. }
                | Op::Depthwise { x, out, act, .. } => {
                    let Some(mut g) = grads[*out].take() else {
                        continue;
                    };
                    if !premasked[*out] {
                        act_grad(*act, &mut g, tape.produced(*out), saved)?;
                    }
                    // the residual branch's share: g itself, handed over once used here
                    let res = match op {
                        Op::Conv { res, .. } => *res,
                        _ => None,
                    };
                    if needs[i] {
                        if let Some(pm) = &self.pm[i] {
                            let t = std::time::Instant::now();
                            self.op_param_grads(op, pm, tape, &g, &mut pgrads)?;
                            if profile {
                                let ms = t.elapsed().as_secs_f64() * 1e3;
                                eprintln!("{ms:>9.3} ms    of which weight gradients");
                            }
                        }
                    }
                    // the forward geometry (a linear layer: a 1×1 convolution on 1×1 maps)
                    let s = match op {
                        Op::Conv { w, stride, pad, .. } => pad.shape(n, shapes[*x], w.kh, *stride),
                        Op::Depthwise { w, stride, pad, .. } => {
                            pad.shape(n, shapes[*x], w.kh, *stride)
                        }
                        _ => ConvShape::symmetric(n, 1, 1, 1, 0),
                    };
                    // the image's own gradient only when asked for (fine-tuning needs none),
                    // and none below the lowest op with a wanted parameter
                    let wanted_input = input_grad || stop_at == Some(*x);
                    if (*x == 0 || i == lowest) && !wanted_input {
                        hand_over(res.map(|r| &mut grads[r]), g);
                        continue;
                    }
                    match (&self.bw[i], grads[*x].take()) {
                        // the input also feeds another branch: the sum written in one pass
                        (Some(Bw::Conv(b)), Some(prev)) => {
                            let mut dx = k::buffers::take(len(*x));
                            b.input_grad_plus(isa, &g, &s, &prev, &mut dx)
                                .map_err(shape_err)?;
                            k::buffers::give(prev);
                            grads[*x] = Some(dx);
                        }
                        (Some(Bw::Conv(b)), None) => {
                            let mut dx = k::buffers::take(len(*x));
                            b.input_grad(isa, &g, &s, &mut dx, false)
                                .map_err(shape_err)?;
                            grads[*x] = Some(dx);
                        }
                        (Some(Bw::Depthwise(b)), prev) => {
                            let acc = prev.is_some();
                            let mut dx = prev.unwrap_or_else(|| k::buffers::take(len(*x)));
                            b.input_grad(isa, &g, &s, &mut dx, acc).map_err(shape_err)?;
                            grads[*x] = Some(dx);
                        }
                        _ => return Err(missing()),
                    }
                    hand_over(res.map(|r| &mut grads[r]), g);
                }
                Op::BatchNorm {
                    x,
                    out,
                    res,
                    gamma,
                    act,
                    ..
                } => {
                    let Some(mut g) = grads[*out].take() else {
                        continue;
                    };
                    // ReLU's derivative in the kernel's first pass; others here
                    let fused = matches!(act, KAct::Relu | KAct::Relu6);
                    if !fused && !premasked[*out] {
                        act_grad(*act, &mut g, tape.produced(*out), saved)?;
                    }
                    let mask = (fused && !premasked[*out]).then(|| (*act, tape.produced(*out)));
                    let st = tape.stats[i]
                        .as_ref()
                        .ok_or_else(|| Error::Internal("BatchNorm statistics not kept".into()))?;
                    let acc = grads[*x].is_some();
                    let dx = grads[*x].get_or_insert_with(|| k::buffers::take(len(*x)));
                    let c = shapes[*x].2;
                    let (dg, db) = k::batch_norm_train_backward(
                        &tape.values[*x],
                        &mut g,
                        mask,
                        c,
                        gamma,
                        st,
                        dx,
                        acc,
                    )
                    .map_err(shape_err)?;
                    if let (true, Some(ParamMap::Bn { gamma, beta })) = (needs[i], &self.pm[i]) {
                        pgrads.push(ParamGrad::new(*gamma, vec![c], dg));
                        pgrads.push(ParamGrad::new(*beta, vec![c], db));
                    }
                    hand_over(res.map(|r| &mut grads[r]), g);
                }
                Op::MaxPool {
                    x,
                    out,
                    k: kk,
                    stride,
                    pad,
                } => {
                    let Some(g) = grads[*out].take() else {
                        continue;
                    };
                    let (h, wd, c) = shapes[*x];
                    let acc = grads[*x].is_some();
                    // (not for a value whose own gradient is asked for)
                    let relu = relu_out[*x] && consumers[*x] == 1 && !acc && stop_at != Some(*x);
                    let dx = grads[*x].get_or_insert_with(|| k::buffers::take(len(*x)));
                    k::max_pool_backward(
                        tape.produced(*x),
                        n,
                        h,
                        wd,
                        c,
                        *kk,
                        *stride,
                        *pad,
                        &g,
                        dx,
                        acc,
                        relu,
                        isa,
                    )
                    .map_err(shape_err)?;
                    premasked[*x] = relu;
                    k::buffers::give(g);
                }
                Op::AvgPool { x, out, oh, ow } => {
                    let Some(g) = grads[*out].take() else {
                        continue;
                    };
                    let (h, wd, c) = shapes[*x];
                    let acc = grads[*x].is_some();
                    let dx = grads[*x].get_or_insert_with(|| k::buffers::take(len(*x)));
                    k::adaptive_avg_pool_backward(n, h, wd, c, *oh, *ow, &g, dx, acc)
                        .map_err(shape_err)?;
                    k::buffers::give(g);
                }
                Op::Se { x, .. } => {
                    let Some(g) = grads[*x].take() else {
                        continue;
                    };
                    let (Some(Bw::Se { w1, w2, hid, c }), Saved::Se { x: xin, s, hidden }) =
                        (&self.bw[i], saved)
                    else {
                        return Err(missing());
                    };
                    let (dx, sg) = se_backward(&g, xin, s, hidden, w1, w2, n, *hid, *c);
                    grads[*x] = Some(dx);
                    k::buffers::give(g);
                    let se_params = if needs[i] { self.pm[i].as_ref() } else { None };
                    if let Some(ParamMap::Se { w1, b1, w2, b2 }) = se_params {
                        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
                        let (hid, c) = (*hid, *c);
                        pgrads.push(ParamGrad::new(*w1, vec![hid, c, 1, 1], f(sg.w1)));
                        pgrads.push(ParamGrad::new(*b1, vec![hid], f(sg.b1)));
                        pgrads.push(ParamGrad::new(*w2, vec![c, hid, 1, 1], f(sg.w2)));
                        pgrads.push(ParamGrad::new(*b2, vec![c], f(sg.b2)));
                    }
                }
                Op::Tap { .. } => {}
                Op::Block { .. } => {
                    // fused only in plans compiled without backward weights
                    return Err(Error::Internal(
                        "a fused block has no backward pass: compile the plan with `backward`"
                            .into(),
                    ));
                }
            }
        }
        if let Some(v) = stop_at {
            let g = grads[v].take().unwrap_or_else(|| vec![0f32; len(v)]);
            for g in grads.into_iter().flatten() {
                k::buffers::give(g);
            }
            return Ok((g, pgrads));
        }
        // the input normalisation, and NHWC → NCHW
        let [_, _, h, w] = tape.dims;
        let g0 = grads[0].take().unwrap_or_else(|| vec![0f32; n * h * w * 3]);
        let mut out = vec![0f32; g0.len()];
        k::nhwc_to_nchw(&g0, n, h, w, 3, &mut out).map_err(shape_err)?;
        let (scale, _, std) = self.norm_for(tape.normalized);
        for (j, v) in out.iter_mut().enumerate() {
            *v *= scale / std[(j / (h * w)) % 3];
        }
        k::buffers::give(g0);
        for g in grads.into_iter().flatten() {
            k::buffers::give(g);
        }
        Ok((out, pgrads))
    }

    /// The parameter gradients of a convolution, depthwise convolution or linear layer from
    /// the gradient `g` of its linear output (`[n, oh, ow, cout]`).
    fn op_param_grads(
        &self,
        op: &Op,
        pm: &ParamMap,
        tape: &Tape,
        g: &[f32],
        out: &mut Vec<ParamGrad>,
    ) -> Result<()> {
        let n = tape.n;
        let isa = self.isa;
        match (op, pm) {
            (
                Op::Conv {
                    x, w, stride, pad, ..
                },
                ParamMap::Conv { dims, .. },
            ) => {
                let [cout, cin, kh, kw] = *dims;
                let s = pad.shape(n, tape.shapes[*x], w.kh, *stride);
                // handed to burn (not from the buffer cache: it would not come back)
                let mut dw = vec![0f32; cout * cin * kh * kw];
                let mut db = vec![0f32; cout];
                k::conv2d_weight_grad(
                    isa,
                    &tape.values[*x],
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
                pm.conv_grads(dw, db, out)?;
            }
            (
                Op::Depthwise {
                    x, w, stride, pad, ..
                },
                ParamMap::Conv { dims, .. },
            ) => {
                let [c, _, kh, kw] = *dims;
                let s = pad.shape(n, tape.shapes[*x], w.kh, *stride);
                let mut dw = vec![0f32; c * kh * kw];
                let mut db = vec![0f32; c];
                k::depthwise_weight_grad(
                    isa,
                    &tape.values[*x],
                    &s,
                    c,
                    g,
                    kh,
                    kw,
                    &mut dw,
                    Some(&mut db),
                )
                .map_err(shape_err)?;
                pm.conv_grads(dw, db, out)?;
            }
            (
                Op::Linear { x, .. },
                ParamMap::Linear {
                    weight,
                    bias,
                    perm,
                    inp,
                    outc,
                },
            ) => {
                let s = ConvShape::symmetric(n, 1, 1, 1, 0);
                let mut dw = vec![0f32; inp * outc];
                let mut db = vec![0f32; *outc];
                k::conv2d_weight_grad(
                    isa,
                    &tape.values[*x],
                    &s,
                    *inp,
                    g,
                    *outc,
                    1,
                    1,
                    &mut dw,
                    Some(&mut db),
                )
                .map_err(shape_err)?;
                // [out][in (NHWC order)] → burn's [in (checkpoint order)][out]
                let mut gw = vec![0f32; inp * outc];
                for o in 0..*outc {
                    for i in 0..*inp {
                        let row = perm.as_ref().map_or(i, |p| p[i]);
                        gw[row * outc + o] = dw[o * inp + i];
                    }
                }
                out.push(ParamGrad::new(*weight, vec![*inp, *outc], gw));
                out.push(ParamGrad::new(*bias, vec![*outc], db));
            }
            _ => {
                return Err(Error::Internal(
                    "parameters recorded for the wrong kind of op".into(),
                ))
            }
        }
        Ok(())
    }
}

/// Shapes of the plan's values.
type Shapes<'a> = &'a [(usize, usize, usize)];

/// Prints an op's backward time when dropped.
struct Report<'a>(
    Option<(std::time::Instant, &'a Op, Shapes<'a>)>,
    &'static str,
);

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if let Some((t, op, shapes)) = self.0 {
            eprintln!(
                "{:>9.3} ms  {} of {}",
                t.elapsed().as_secs_f64() * 1e3,
                self.1,
                super::describe(op, shapes)
            );
        }
    }
}

/// The activation an op applies to its output (none for pools, taps and SE).
fn op_act(op: &Op) -> KAct {
    match op {
        Op::Conv { act, .. }
        | Op::Linear { act, .. }
        | Op::Depthwise { act, .. }
        | Op::BatchNorm { act, .. } => *act,
        _ => KAct::None,
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

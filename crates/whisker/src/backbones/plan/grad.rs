//! Gradients through the CPU engine: a forward pass that keeps every value (a [`Tape`]), then
//! the ops in reverse, each turning the gradient of its output into the gradient of its
//! inputs with the backward kernels of `whisker-kernels` (stride-phase convolutions on the
//! forward kernels, max/average pool routing) — what `attack`, `dream` and `robustness` need,
//! d(objective)/d(pixels) — and, for a plan compiled with `weight_grads`, the gradient of
//! every parameter ([`Plan::backward`]): each convolution's weight gradient with its
//! BatchNorm folded in, mapped back to the convolution's weight, BatchNorm's γ and β and the
//! biases (frozen running statistics: fine-tuning's default). Each op's own backward step
//! lives in its file (`ops/`); this is the pass over them.

use whisker_kernels as k;
use whisker_kernels::Act as KAct;

use burn::module::ParamId;

use super::ops::{Bwd, Fwd, Kept, Op, Shapes};
use super::{shape_err, Plan, V};
use crate::error::{Error, Result};

/// The gradient of one parameter, in burn's layout of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGrad {
    pub id: ParamId,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

impl ParamGrad {
    pub(super) fn new(id: ParamId, dims: Vec<usize>, values: Vec<f32>) -> Self {
        ParamGrad { id, dims, values }
    }
}

/// A forward pass kept for [`Plan::input_grad`].
#[derive(Debug)]
pub struct Tape {
    n: usize,
    dims: [usize; 4],
    normalized: bool,
    pub(super) shapes: Vec<(usize, usize, usize)>,
    pub(super) values: Vec<Vec<f32>>,
    /// What each op kept for its backward step.
    kept: Vec<Kept>,
    /// For a value an op rescaled in place: the op that kept its earlier contents.
    rescaled: Vec<Option<usize>>,
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

    /// What value `v`'s producer wrote (before any op rescaled it in place).
    pub(super) fn produced(&self, v: V) -> &[f32] {
        match self.rescaled[v].and_then(|i| self.kept[i].bufs.first()) {
            Some(before) => before,
            None => &self.values[v],
        }
    }
}

/// `g` times the activation's derivative, from its output `y` (or its input, for hardswish),
/// in parallel chunks and branch-free (selects the compiler vectorises).
pub(super) fn act_grad(
    isa: k::Isa,
    act: KAct,
    g: &mut [f32],
    y: &[f32],
    pre: Option<&[f32]>,
) -> Result<()> {
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
        KAct::Hardswish => match pre {
            Some(pre) => by(
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
        // GELU's derivative Φ(z) + z·φ(z), SiLU's σ(z)·(1 + z·(1 − σ(z))), from the input z
        // (vectorised)
        KAct::Gelu | KAct::Silu => match pre {
            Some(pre) => k::act_backward(isa, act, g, pre),
            _ => return Err(Error::Internal(format!("{act:?} input not kept"))),
        },
        // PyTorch's sigmoid_backward, from the output y: g·(1 − y)·y
        KAct::Sigmoid => by(|g, y| g * (1.0 - y) * y, g, y),
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
pub(super) fn hand_over(slot: Option<&mut Option<Vec<f32>>>, g: Vec<f32>) {
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
        self.backward
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
        // every value its own buffer
        let ident: Vec<usize> = (0..shapes.len()).collect();
        let mut kept = Vec::with_capacity(self.classifier_start);
        let mut rescaled = vec![None; shapes.len()];
        let device = burn::tensor::Device::flex();
        let mut taps = super::Taps::none();
        let profile = super::profiling();
        for (i, op) in self.ops[..self.classifier_start].iter().enumerate() {
            let t = std::time::Instant::now();
            let _report = Report(profile.then_some((t, op, shapes.as_slice())), "forward");
            let mut cx = Fwd {
                isa: self.isa,
                n,
                shapes: &shapes,
                slot: &ident,
                arena: &mut values,
                taps: &mut taps,
                device: &device,
                tape: true,
            };
            let mut k = op.forward_kept(&mut cx)?;
            if let Some(v) = op.in_place() {
                rescaled[v] = Some(i);
            }
            // an activation whose derivative needs its input was left to here: the input is
            // kept for the backward step
            if let (Some(out), true) = (op.output(), super::ops::needs_input(op.act())) {
                let y = &mut values[out];
                k.pre_act = Some(y.clone());
                k::act_in_place(self.isa, op.act(), y);
            }
            kept.push(k);
        }
        Ok(Tape {
            n,
            dims,
            normalized,
            shapes,
            values,
            kept,
            rescaled,
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
            // (a token layer's map is not a value of the plan: Grad-CAM on it runs on burn)
            Op::Tap(t) if t.name == name && t.grid.is_none() => Some(t.x),
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
        if wanted.is_some() && !self.weight_grads {
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
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; shapes.len()];
        grads[self.features] = Some(dfeatures.to_vec());
        let profile = super::profiling();
        // the ops with a wanted parameter, and the lowest of them
        let needs: Vec<bool> = self.ops[..self.classifier_start]
            .iter()
            .map(|op| wanted.is_some_and(|w| op.param_ids().into_iter().any(w)))
            .collect();
        // the last op writing `stop_at` (its producer, or an op rescaling it in place): the
        // pass runs over the ops after it
        let stop_op = stop_at.map(|v| {
            self.ops[..self.classifier_start]
                .iter()
                .rposition(|op| op.output() == Some(v) || op.in_place() == Some(v))
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
            if !matches!(op, Op::Tap(_)) {
                op.inputs().into_iter().for_each(|v| consumers[v] += 1);
            }
            if let (Some(v), KAct::Relu) = (op.output(), op.act()) {
                relu_out[v] = true;
            }
        }
        let mut premasked = vec![false; shapes.len()];
        for (i, op) in self.ops[..self.classifier_start].iter().enumerate().rev() {
            if i < lowest {
                break;
            }
            let t = std::time::Instant::now();
            let _report = Report(profile.then_some((t, op, shapes.as_slice())), "backward");
            op.backward(&mut Bwd {
                isa: self.isa,
                n,
                tape,
                kept: &tape.kept[i],
                grads: &mut grads,
                premasked: &mut premasked,
                relu_out: &relu_out,
                consumers: &consumers,
                want_params: needs[i],
                pgrads: &mut pgrads,
                input_grad,
                stop_at,
                lowest: i == lowest,
                profile,
            })?;
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
}

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
                op.describe(shapes)
            );
        }
    }
}

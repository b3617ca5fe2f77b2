//! The CPU inference engine: a backbone compiled once into a "plan" of kernel calls on raw
//! NHWC `f32` buffers (`whisker-kernels`), used by every forward-only pass on the CPU.
//!
//! Compiling folds each BatchNorm into its convolution (in f64), packs every weight into the
//! micro-kernels' panel order, fuses bias, activation and residual adds into the epilogues,
//! and assigns the activations to a few reusable buffers (a value's buffer is free again
//! after its last use), so a forward pass allocates nothing per layer. burn stays for
//! gradients and other devices; `WHISKER_ENGINE=burn` (or [`set_engine`]) forces the burn
//! path everywhere, for tests and comparisons.

use std::sync::Mutex;

use burn::module::ParamId;
use burn::tensor::{Device, Tensor};
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, ConvShape, PackedConv, PackedDepthwise};
pub use whisker_kernels::{Isa, IsaKind};

use super::inverted_residual::{InvertedResidual, SqueezeExcite};
use super::layers::{
    tf_same_padding, Act, BatchNorm, Conv2d, ConvBnAct, LayerNorm as LayerNormLayer, Linear,
    Padding, Taps,
};
use super::{Backbone, Net};

mod grad;
pub mod graph;
mod ops;
use crate::data::transforms::{Normalization, IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{Error, Result};
pub use grad::{ParamGrad, Tape};
use ops::{Fwd, Op};

// the engine switch lives with the other process-wide compute settings (`device`), so that
// the layers can read it without depending on the plan
pub use crate::device::{engine, set_engine, Engine};

/// The instruction-set path the engine's kernels use on this CPU (`WHISKER_ISA` lowers it).
pub fn isa() -> Isa {
    Isa::current()
}

/// A value of the plan (a feature map or vector), by index.
pub(super) type V = usize;

/// A convolution's padding: fixed `[top, bottom, left, right]`, or TensorFlow's "same"
/// (resolved for each input size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    Fixed([usize; 4]),
    TfSame,
}

impl Pad {
    fn of(p: Padding) -> Pad {
        match p {
            Padding::Symmetric(p) => Pad::Fixed([p; 4]),
            Padding::TfSame => Pad::TfSame,
        }
    }
    /// The geometry of a `k × k` convolution with this padding on `n` images of `(h, w, _)`.
    pub(super) fn shape(
        self,
        n: usize,
        (h, w, _): (usize, usize, usize),
        k: usize,
        stride: usize,
    ) -> ConvShape {
        ConvShape {
            n,
            h,
            w,
            stride,
            pad: self.resolve(h, w, k, stride),
        }
    }

    /// `[top, bottom, left, right]` for a `k × k` convolution with `stride` on an `h × w` map.
    pub fn resolve(self, h: usize, w: usize, k: usize, stride: usize) -> [usize; 4] {
        match self {
            Pad::Fixed(p) => p,
            Pad::TfSame => {
                let (t, b) = tf_same_padding(h, k, stride);
                let (l, r) = tf_same_padding(w, k, stride);
                [t, b, l, r]
            }
        }
    }
}

/// A backbone compiled for the CPU engine.
pub struct Plan {
    isa: Isa,
    /// `(x·scale − mean) / std` per input channel.
    norm: (f32, [f32; 3], [f32; 3]),
    ops: Vec<Op>,
    /// Ops from this index on compute the logits from the features.
    classifier_start: usize,
    /// Channels of each value (value 0 is the normalised input).
    channels: Vec<usize>,
    /// The buffer each value lives in.
    slot: Vec<usize>,
    slots: usize,
    features: V,
    logits: V,
    /// Buffers kept between calls.
    arena: Mutex<Vec<Vec<f32>>>,
    /// Compiled with backward weights (`PlanOptions::backward`).
    backward: bool,
    /// Compiled with what parameter gradients need (`PlanOptions::weight_grads`).
    weight_grads: bool,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("isa", &self.isa)
            .field("ops", &self.ops.len())
            .field("buffers", &self.slots)
            .finish()
    }
}

/// The engine's result: feature vectors and, when asked for, logits (row-major).
pub struct PlanOutput {
    pub n: usize,
    pub features: Vec<f32>,
    pub logits: Option<Vec<f32>>,
}

/// What a family's lowering returns: the feature vector, the first op of the classifier
/// (ops from there compute the logits only) and the logits.
pub(super) struct Lowered {
    pub features: V,
    pub classifier_start: usize,
    pub logits: V,
}

/// A per-output scale (a layer scale `γ`) to fold into a pointwise layer: its parameter's
/// id and shape (`[C, 1, 1]` in torchvision's ConvNeXt, `[C]` in DINOv2) and its values.
pub(super) struct Scale {
    id: burn::module::ParamId,
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl Scale {
    pub(super) fn of<const D: usize>(p: &burn::module::Param<Tensor<D>>) -> Result<Self> {
        Ok(Scale {
            id: p.id,
            shape: p.dims().to_vec(),
            values: crate::tensor::to_vec(p.val())?,
        })
    }
}

/// Builds a plan: each family's `Arch::lower` calls its methods in network order.
pub(super) struct Builder<'a> {
    ops: Vec<Op>,
    channels: Vec<usize>,
    winograd: bool,
    /// Pack backward weights (`PlanOptions::backward`).
    backward: bool,
    /// Keep each op's parameters, for their gradients (`PlanOptions::weight_grads`).
    weight_grads: bool,
    /// BatchNorms training their statistics normalise with the batch's (`train_bn`).
    train_bn: bool,
    /// Pack input gradients for Winograd even where the forward pass is direct.
    winograd_backward: bool,
    /// The parameters that train, when the plan is told (fine-tuning without an input
    /// gradient): the ops below the first of them get no backward weights or parameter maps.
    trainable: Option<&'a dyn Fn(ParamId) -> bool>,
    /// Whether an op with a trainable parameter was built.
    seen_trainable: bool,
    /// The layers as plain nodes, when recording them ([`Plan::graph`]).
    graph: Option<Vec<graph::Node>>,
}

/// How a backbone is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Run 3×3 stride-1 convolutions (16 or more input channels) with Winograd's F(2×2, 3×3):
    /// 2.25× fewer multiplies, error within a few times the direct sum's (the parity tests
    /// check every backbone both ways). Default: on, unless `WHISKER_WINOGRAD=0`.
    pub winograd: bool,
    /// Also pack what input gradients need (transposed, reversed weights per stride phase):
    /// [`Plan::forward_tape`] and [`Plan::input_grad`]. Off for forward-only plans.
    pub backward: bool,
    /// Also keep what weight gradients need (implies `backward`): each op's parameters (their
    /// ids, the unfolded weights, the BatchNorm folding), for [`Plan::backward`].
    pub weight_grads: bool,
    /// BatchNorms that train their statistics (`BatchNorm::enable_train_stats`, fine-tuning
    /// with `--train-bn`) normalise with the batch's statistics and update their running
    /// ones in [`Plan::forward_tape`], instead of being folded into their convolution.
    pub train_bn: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        static WINOGRAD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let winograd = *WINOGRAD.get_or_init(|| {
            match std::env::var("WHISKER_WINOGRAD")
                .ok()
                .as_deref()
                .map(str::trim)
            {
                None | Some("" | "1" | "on" | "true" | "yes") => true,
                Some("0" | "off" | "false" | "no") => false,
                Some(v) => {
                    eprintln!("whisker: WHISKER_WINOGRAD={v:?} is not 0 or 1; Winograd stays on");
                    true
                }
            }
        });
        PlanOptions {
            winograd,
            backward: false,
            weight_grads: false,
            train_bn: false,
        }
    }
}

/// The position embeddings `pos` (`[1 + grid², c]`, the class token's first) of the
/// patches on a `gh × gw` grid, `[gh·gw, c]`, resampled as the engine does.
pub fn patch_position(pos: &[f32], grid: usize, gh: usize, gw: usize, c: usize) -> Vec<f32> {
    ops::tokens::patch_pos(pos, grid, gh, gw, c)
}

/// `(scale, mean, std)`: the input normalisation `(x·scale − mean) / std`, `x` in [0, 1].
fn norm_constants(norm: Normalization) -> (f32, [f32; 3], [f32; 3]) {
    match norm {
        Normalization::ImageNet => (1.0, IMAGENET_MEAN, IMAGENET_STD),
        Normalization::Tf => (255.0, [127.0; 3], [128.0; 3]),
        Normalization::Inception => (1.0, [0.5; 3], [0.5; 3]),
    }
}

pub(super) fn values(t: Tensor<1>) -> Result<Vec<f32>> {
    crate::tensor::to_vec(t)
}

fn kact(a: Act) -> KAct {
    match a {
        Act::None => KAct::None,
        Act::Relu => KAct::Relu,
        Act::Relu6 => KAct::Relu6,
        Act::Hardswish => KAct::Hardswish,
        Act::Gelu => KAct::Gelu,
        Act::Silu => KAct::Silu,
        Act::Sigmoid => KAct::Sigmoid,
        Act::Hardsigmoid => KAct::Hardsigmoid,
    }
}

pub(super) fn shape_err(e: k::ShapeError) -> Error {
    Error::Internal(format!("compiling the CPU engine: {e}"))
}

/// A BatchNorm's running `(mean, variance)`: the ones it is training (`--train-bn`) while it
/// trains them, else its buffers.
pub(super) fn running_stats(bn: &BatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
    match &bn.train_stats {
        Some(st) => {
            let (m, v) = {
                let st = st.lock().unwrap_or_else(|p| p.into_inner());
                (st.0.clone(), st.1.clone())
            };
            Ok((values(m)?, values(v)?))
        }
        None => Ok((
            values(bn.running_mean.val())?,
            values(bn.running_var.val())?,
        )),
    }
}

/// A convolution's weight `[cout, cin/groups, k, k]` and bias with an eval-mode BatchNorm
/// folded in (f64): `w·γ/√(σ²+ε)`, `(b − μ)·γ/√(σ²+ε) + β`. The weight is read in place
/// (see [`crate::tensor::with_values`]; a fine-tuning step folds every weight again).
fn folded(conv: &Conv2d, bn: Option<&BatchNorm>) -> Result<(Vec<f32>, Vec<f32>, [usize; 4])> {
    folded_with(conv, bn, |w, b, dims| (w.to_vec(), b, dims))
}

/// `f(weight, bias, dims)` of `conv` with `bn` folded in (unless it is already folded); without
/// a BatchNorm to fold, `f` reads the weight in place (no copy).
fn folded_with<R>(
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
    f: impl FnOnce(&[f32], Vec<f32>, [usize; 4]) -> R,
) -> Result<R> {
    use rayon::prelude::*;
    let dims = conv.weight.dims();
    let mut b = match &conv.bias {
        Some(b) => values(b.val())?,
        None => vec![0.0; dims[0]],
    };
    let scale = match bn.filter(|bn| !bn.folded) {
        Some(bn) => {
            let (g, beta) = (values(bn.weight.val())?, values(bn.bias.val())?);
            let (mean, var) = running_stats(bn)?;
            let scale: Vec<f64> = (0..dims[0])
                .map(|o| g[o] as f64 / (var[o] as f64 + bn.eps).sqrt())
                .collect();
            for o in 0..dims[0] {
                b[o] = ((b[o] as f64 - mean[o] as f64) * scale[o] + beta[o] as f64) as f32;
            }
            scale
        }
        None => return crate::tensor::with_values(&conv.weight.val(), |src| f(src, b, dims)),
    };
    let w = crate::tensor::with_values(&conv.weight.val(), |src| {
        let mut w = vec![0f32; src.len()];
        let per = (src.len() / dims[0].max(1)).max(1);
        w.par_chunks_mut(per)
            .zip(src.par_chunks(per))
            .enumerate()
            .for_each(|(o, (d, s))| {
                d.iter_mut()
                    .zip(s)
                    .for_each(|(d, &v)| *d = (v as f64 * scale[o]) as f32)
            });
        w
    })?;
    Ok(f(&w, b, dims))
}

impl Builder<'_> {
    /// Whether an op with parameters `ids` lies in the frozen prefix: below every trainable
    /// parameter, so that neither its weight gradients nor its input gradient is ever needed.
    fn frozen(&mut self, ids: &[ParamId]) -> bool {
        let Some(t) = self.trainable else {
            return false;
        };
        if self.seen_trainable || ids.iter().any(|&i| t(i)) {
            self.seen_trainable = true;
            return false;
        }
        true
    }

    /// Record `node` when the builder records the graph.
    fn record(&mut self, node: graph::Node) {
        if let Some(g) = &mut self.graph {
            g.push(node);
        }
    }

    pub(super) fn value(&mut self, channels: usize) -> V {
        self.channels.push(channels);
        self.channels.len() - 1
    }

    pub(super) fn conv(
        &mut self,
        x: V,
        conv: &Conv2d,
        bn: Option<&BatchNorm>,
        act: Act,
        res: Option<V>,
    ) -> Result<V> {
        // a BatchNorm with batch statistics: the convolution alone, then the BatchNorm
        if let Some((bn, stats)) = bn.filter(|_| self.train_bn).and_then(|bn| {
            let stats = bn.train_stats.clone().filter(|_| !bn.folded)?;
            Some((bn, stats))
        }) {
            // the forward pass direct, not Winograd: the BatchNorm subtracts the batch mean,
            // which turns the convolution's rounding error relative to its mean into error
            // relative to its spread (10–100× larger on VGG's post-ReLU inputs), and
            // Winograd's transforms err a few times more than the direct sum (measured:
            // VGG-16-BN's 4th block gradients 3.6e-4 off float64 with Winograd, 2.2e-6
            // without; PyTorch 1.8e-6). The input gradient has no such mean: Winograd stays
            // (4.0e-6 there). Centring the input (x − m, conv(m) added back per border class)
            // does not cure it: post-ReLU inputs are sparse, and a channel whose output is
            // nearly constant (its receptive fields mostly zero) is exact in the direct sum
            // of zeros but not once centred (measured: VGG-16-BN 6.3e-4 with centring; the
            // 64-channel block-1 conv alone 4.6e-3 on the first layer's gradient).
            let winograd = std::mem::replace(&mut self.winograd, false);
            self.winograd_backward = winograd;
            let z = self.conv(x, conv, None, Act::None, None);
            (self.winograd, self.winograd_backward) = (winograd, false);
            let z = z?;
            let out = self.value(self.channels[z]);
            self.ops.push(Op::BatchNorm(ops::batch_norm::BatchNorm {
                x: z,
                out,
                res,
                gamma: values(bn.weight.val())?,
                beta: values(bn.bias.val())?,
                eps: bn.eps,
                act: kact(act),
                stats,
                momentum: bn.momentum,
                params: self.weight_grads.then_some((bn.weight.id, bn.bias.id)),
            }));
            return Ok(out);
        }
        let mut ids = vec![conv.weight.id];
        ids.extend(conv.bias.as_ref().map(|b| b.id));
        if let Some(bn) = bn {
            ids.extend([bn.weight.id, bn.bias.id]);
        }
        let frozen = self.frozen(&ids);
        let params = (self.weight_grads && !frozen)
            .then(|| ops::conv::ConvParams::new(conv, bn))
            .transpose()?;
        let pad = Pad::of(conv.padding);
        let stride = conv.stride;
        let act = kact(act);
        let backward = self.backward && !frozen;
        let winograd = self.winograd;
        let winograd_backward = self.winograd || self.winograd_backward;
        let [cout, cpg, _, _] = conv.weight.dims();
        let groups = conv.groups;
        let depthwise = groups != 1 && groups == cout && cpg == 1;
        if groups != 1 && res.is_some() {
            return Err(Error::Internal(
                "the CPU engine has no grouped or depthwise convolution with a residual".into(),
            ));
        }
        let out = self.value(cout);
        if self.graph.is_some() {
            let (w, b, dims) = folded(conv, bn)?;
            self.record(graph::Node::Conv {
                x,
                out,
                w,
                b,
                dims,
                stride,
                pad,
                groups,
                act,
                res,
            });
            // (a graph only: nothing packed)
            return Ok(out);
        }
        // the backward and forward packs of the weights side by side (a small layer's packs
        // are one panel each, one thread's work)
        let op = folded_with(conv, bn, |w, b, [cout, cpg, kh, kw]| -> Result<Op> {
            Ok(if groups != 1 && !depthwise {
                let cin = cpg * groups;
                let (bw, fw) = rayon::join(
                    || {
                        backward
                            .then(|| {
                                k::GroupedBackward::from_oihw(
                                    w,
                                    cout,
                                    cin,
                                    kh,
                                    kw,
                                    stride,
                                    groups,
                                    winograd_backward,
                                )
                            })
                            .transpose()
                    },
                    || {
                        let wino = winograd && stride == 1;
                        k::PackedGrouped::from_oihw(w, Some(&b), cout, cin, kh, kw, groups, wino)
                    },
                );
                Op::Grouped(ops::grouped::Grouped {
                    x,
                    out,
                    w: fw.map_err(shape_err)?,
                    stride,
                    pad,
                    act,
                    bw: bw.map_err(shape_err)?,
                    params,
                })
            } else if depthwise {
                let (bw, fw) = rayon::join(
                    || {
                        backward
                            .then(|| k::DepthwiseBackward::from_oihw(w, cout, kh, kw, stride))
                            .transpose()
                    },
                    || PackedDepthwise::from_oihw(w, Some(&b), cout, kh, kw),
                );
                Op::Depthwise(ops::depthwise::Depthwise {
                    x,
                    out,
                    w: fw.map_err(shape_err)?,
                    stride,
                    pad,
                    act,
                    bw: bw.map_err(shape_err)?,
                    params,
                })
            } else {
                let (bw, fw) = rayon::join(
                    || {
                        backward
                            .then(|| {
                                k::ConvBackward::from_oihw(
                                    w,
                                    cout,
                                    cpg,
                                    kh,
                                    kw,
                                    stride,
                                    winograd_backward,
                                )
                            })
                            .transpose()
                    },
                    || {
                        if winograd && (kh, kw, stride, cpg >= 16) == (3, 3, 1, true) {
                            PackedConv::winograd_from_oihw(w, Some(&b), cout, cpg)
                        } else {
                            PackedConv::from_oihw(w, Some(&b), cout, cpg, kh, kw)
                        }
                    },
                );
                Op::Conv(ops::conv::Conv {
                    x,
                    out,
                    res,
                    w: fw.map_err(shape_err)?,
                    stride,
                    pad,
                    act,
                    bw: bw.map_err(shape_err)?,
                    params,
                })
            })
        })??;
        self.ops.push(op);
        Ok(out)
    }

    /// A convolution, its BatchNorm and activation; `res` is added before the activation.
    pub(super) fn cba(&mut self, x: V, c: &ConvBnAct, res: Option<V>) -> Result<V> {
        self.conv(x, &c.conv, Some(&c.bn), c.act, res)
    }

    /// A linear layer; `perm` maps the NHWC flattening of the input to the checkpoint's.
    pub(super) fn linear(
        &mut self,
        x: V,
        l: &Linear,
        act: KAct,
        perm: Option<&[usize]>,
    ) -> Result<V> {
        let [inp, outc] = l.weight.dims();
        let mut w = crate::tensor::to_vec(l.weight.val())?;
        let b = values(l.bias.val())?;
        if self.graph.is_some() {
            // (in the checkpoint's order: the graph flattens maps channel first)
            let out = self.value(outc);
            self.record(graph::Node::Linear { x, out, w, b, act });
            return Ok(out);
        }
        if let Some(perm) = perm {
            let src = w.clone();
            for (i, &j) in perm.iter().enumerate() {
                w[i * outc..(i + 1) * outc].copy_from_slice(&src[j * outc..(j + 1) * outc]);
            }
        }
        let frozen = self.frozen(&[l.weight.id, l.bias.id]);
        let params = (self.weight_grads && !frozen).then(|| ops::linear::LinearParams {
            weight: l.weight.id,
            bias: l.bias.id,
            perm: perm.map(|p| p.to_vec()),
            scale: None,
            inp,
            outc,
        });
        let bw = if self.backward && !frozen {
            // [in, out] → [out, in, 1, 1]
            let mut oihw = vec![0f32; inp * outc];
            for i in 0..inp {
                for o in 0..outc {
                    oihw[o * inp + i] = w[i * outc + o];
                }
            }
            Some(k::ConvBackward::from_oihw(&oihw, outc, inp, 1, 1, 1, false).map_err(shape_err)?)
        } else {
            None
        };
        let w = PackedConv::from_in_out(&w, Some(&b), inp, outc).map_err(shape_err)?;
        let out = self.value(outc);
        self.ops.push(Op::Linear(ops::linear::Linear {
            x,
            out,
            w,
            act,
            bw,
            params,
        }));
        Ok(out)
    }

    pub(super) fn tap(&mut self, name: impl Into<String>, x: V) {
        self.ops.push(Op::Tap(ops::tap::Tap {
            name: name.into(),
            x,
            grid: None,
            heads: None,
        }));
    }

    /// A layer of tokens `x` offered to taps as a map on the patch grid of value `grid`
    /// (the patch embeddings), its leading (class) tokens left out.
    pub(super) fn tap_tokens(&mut self, name: impl Into<String>, x: V, grid: V) {
        self.ops.push(Op::Tap(ops::tap::Tap {
            name: name.into(),
            x,
            grid: Some(grid),
            heads: None,
        }));
    }

    /// The class token's attention to the patches of the grid of value `grid`, computed from
    /// the packed q, k, v projection `qkv` of `heads` heads, offered to taps as a map of one
    /// channel per head.
    pub(super) fn tap_attention(&mut self, name: impl Into<String>, qkv: V, heads: usize, grid: V) {
        self.ops.push(Op::Tap(ops::tap::Tap {
            name: name.into(),
            x: qkv,
            grid: Some(grid),
            heads: Some(heads),
        }));
    }

    /// A vision transformer's input tokens from the patch embeddings `x`: the class token
    /// first, each plus its position embedding (learnt for a `grid × grid` patch grid), and
    /// `registers` (DINOv2's register tokens, without position embeddings) between the class
    /// token and the patches.
    pub(super) fn tokens(
        &mut self,
        x: V,
        cls: &burn::module::Param<Tensor<3>>,
        pos: &burn::module::Param<Tensor<3>>,
        registers: Option<&burn::module::Param<Tensor<3>>>,
    ) -> Result<V> {
        let c = self.channels[x];
        let [_, t, pc] = pos.dims();
        let grid = ((t.max(1) - 1) as f64).sqrt().round() as usize;
        let reg_dims = registers.map(|r| r.dims());
        if cls.dims() != [1, 1, c]
            || pc != c
            || grid * grid + 1 != t
            || reg_dims.is_some_and(|[one, _, rc]| one != 1 || rc != c)
        {
            return Err(Error::Internal(format!(
                "a class token {:?}, position embeddings {:?} and registers {reg_dims:?} for {c} channels",
                cls.dims(),
                pos.dims()
            )));
        }
        let mut ids = vec![cls.id, pos.id];
        ids.extend(registers.map(|r| r.id));
        let frozen = self.frozen(&ids);
        let out = self.value(c);
        let reg = match registers {
            Some(r) => crate::tensor::to_vec(r.val())?,
            None => Vec::new(),
        };
        if self.graph.is_some() {
            self.record(graph::Node::Tokens {
                x,
                out,
                cls: crate::tensor::to_vec(cls.val())?,
                pos: crate::tensor::to_vec(pos.val())?,
                reg,
                grid,
            });
            return Ok(out);
        }
        self.ops.push(Op::Tokens(ops::tokens::Tokens {
            x,
            out,
            cls: crate::tensor::to_vec(cls.val())?,
            pos: crate::tensor::to_vec(pos.val())?,
            reg,
            grid,
            params: (self.weight_grads && !frozen).then(|| ops::tokens::TokenParams {
                cls: cls.id,
                pos: pos.id,
                reg: registers.map(|r| r.id),
            }),
        }));
        Ok(out)
    }

    /// Multi-head self-attention of `heads` heads on the packed q, k, v projection `qkv`.
    pub(super) fn attention(&mut self, qkv: V, heads: usize) -> Result<V> {
        let c3 = self.channels[qkv];
        if heads == 0 || !c3.is_multiple_of(3 * heads) {
            return Err(Error::Internal(format!(
                "attention of {heads} heads on {c3} channels"
            )));
        }
        let out = self.value(c3 / 3);
        self.record(graph::Node::Attention { qkv, out, heads });
        self.ops.push(Op::Attention(ops::attention::Attention {
            qkv,
            out,
            heads,
            d: c3 / 3 / heads,
        }));
        Ok(out)
    }

    /// The first (class) token of the tokens `x`, a vector.
    pub(super) fn class_token(&mut self, x: V) -> V {
        let out = self.value(self.channels[x]);
        self.record(graph::Node::ClassToken {
            x,
            out,
            mean_from: None,
        });
        self.ops.push(Op::ClassToken(ops::class_token::ClassToken {
            x,
            out,
            mean_from: None,
        }));
        out
    }

    /// The first (class) token of the tokens `x` and the mean of its tokens from the
    /// `from`-th on (the patch tokens), concatenated: DINOv2's linear-probe feature.
    pub(super) fn class_and_mean(&mut self, x: V, from: usize) -> V {
        let out = self.value(2 * self.channels[x]);
        self.record(graph::Node::ClassToken {
            x,
            out,
            mean_from: Some(from),
        });
        self.ops.push(Op::ClassToken(ops::class_token::ClassToken {
            x,
            out,
            mean_from: Some(from),
        }));
        out
    }

    /// Max pooling (`k`×`k`, `stride`, zero-free `pad`).
    pub(super) fn max_pool(&mut self, x: V, k: usize, stride: usize, pad: usize) -> V {
        let out = self.value(self.channels[x]);
        self.record(graph::Node::MaxPool {
            x,
            out,
            k,
            stride,
            pad,
        });
        self.ops.push(Op::MaxPool(ops::max_pool::MaxPool {
            x,
            out,
            k,
            stride,
            pad,
        }));
        out
    }

    /// Adaptive average pooling to `oh × ow`.
    pub(super) fn avg_pool(&mut self, x: V, oh: usize, ow: usize) -> V {
        let out = self.value(self.channels[x]);
        self.record(graph::Node::AvgPool { x, out, oh, ow });
        self.ops
            .push(Op::AvgPool(ops::avg_pool::AvgPool { x, out, oh, ow }));
        out
    }

    /// The channels of value `x`.
    pub(super) fn channels_of(&self, x: V) -> usize {
        self.channels[x]
    }

    /// The network's end: `features` (the feature vector) through the ImageNet
    /// classification layer `fc`, whose ops only the logits need.
    pub(super) fn classify(&mut self, features: V, fc: &Linear) -> Result<Lowered> {
        let classifier_start = self.ops.len();
        let logits = self.linear(features, fc, KAct::None, None)?;
        Ok(Lowered {
            features,
            classifier_start,
            logits,
        })
    }

    /// The network's end without an ImageNet classifier: the "logits" are the features.
    pub(super) fn no_classifier(&mut self, features: V) -> Lowered {
        Lowered {
            features,
            classifier_start: self.ops.len(),
            logits: features,
        }
    }

    /// LayerNorm over the channels of `x` (each pixel's, or each token's, values).
    pub(super) fn layer_norm(&mut self, x: V, ln: &LayerNormLayer) -> Result<V> {
        let c = self.channels[x];
        if ln.weight.dims() != [c] {
            return Err(Error::Internal(format!(
                "a LayerNorm of {:?} values on {c} channels",
                ln.weight.dims()
            )));
        }
        let frozen = self.frozen(&[ln.weight.id, ln.bias.id]);
        let out = self.value(c);
        if self.graph.is_some() {
            self.record(graph::Node::LayerNorm {
                x,
                out,
                gamma: values(ln.weight.val())?,
                beta: values(ln.bias.val())?,
                eps: ln.eps,
            });
            return Ok(out);
        }
        self.ops.push(Op::LayerNorm(ops::layer_norm::LayerNorm {
            x,
            out,
            gamma: values(ln.weight.val())?,
            beta: values(ln.bias.val())?,
            eps: ln.eps,
            params: (self.weight_grads && !frozen).then_some((ln.weight.id, ln.bias.id)),
        }));
        Ok(out)
    }

    /// The linear layer `l` at every pixel (or token) of `x`, with `act`, the residual `res`
    /// added before it, and a per-output `scale` (a layer scale) folded in.
    pub(super) fn pointwise(
        &mut self,
        x: V,
        l: &Linear,
        act: KAct,
        scale: Option<Scale>,
        res: Option<V>,
    ) -> Result<V> {
        let [cin, cout] = l.weight.dims();
        if cin != self.channels[x] {
            return Err(Error::Internal(format!(
                "a {cin}-input linear layer on {} channels",
                self.channels[x]
            )));
        }
        let mut ids = vec![l.weight.id, l.bias.id];
        ids.extend(scale.as_ref().map(|s| s.id));
        let frozen = self.frozen(&ids);
        if let Some(s) = scale.as_ref().filter(|s| s.values.len() != cout) {
            return Err(Error::Internal(format!(
                "a layer scale of {} values on {cout} outputs",
                s.values.len()
            )));
        }
        let w_io = crate::tensor::to_vec(l.weight.val())?;
        let b = values(l.bias.val())?;
        let sv = scale.as_ref().map(|s| s.values.clone());
        // [in, out] → [out, in], each output row scaled (in f64, then rounded once)
        let mut oi = vec![0f32; cin * cout];
        let mut bf = vec![0f32; cout];
        for o in 0..cout {
            let so = sv.as_ref().map_or(1.0, |s| s[o] as f64);
            for i in 0..cin {
                oi[o * cin + i] = (w_io[i * cout + o] as f64 * so) as f32;
            }
            bf[o] = (b[o] as f64 * so) as f32;
        }
        if self.graph.is_some() {
            let out = self.value(cout);
            self.record(graph::Node::Pointwise {
                x,
                out,
                w: oi,
                b: bf,
                act,
                res,
            });
            return Ok(out);
        }
        let bw = (self.backward && !frozen)
            .then(|| k::ConvBackward::from_oihw(&oi, cout, cin, 1, 1, 1, false))
            .transpose()
            .map_err(shape_err)?;
        let w = PackedConv::from_oihw(&oi, Some(&bf), cout, cin, 1, 1).map_err(shape_err)?;
        let params = (self.weight_grads && !frozen).then(|| ops::linear::LinearParams {
            weight: l.weight.id,
            bias: l.bias.id,
            perm: None,
            scale: scale.map(|p| ops::linear::FoldedScale {
                id: p.id,
                shape: p.shape,
                values: p.values,
                w: w_io,
                b,
            }),
            inp: cin,
            outc: cout,
        });
        let out = self.value(cout);
        self.ops.push(Op::Pointwise(ops::pointwise::Pointwise {
            x,
            out,
            res,
            w,
            act,
            bw,
            params,
        }));
        Ok(out)
    }

    /// `a + b`, two values of one shape (a residual added after an activation).
    pub(super) fn add(&mut self, a: V, b: V) -> Result<V> {
        if self.channels[a] != self.channels[b] {
            return Err(Error::Internal(format!(
                "adding {} channels to {}",
                self.channels[b], self.channels[a]
            )));
        }
        let out = self.value(self.channels[a]);
        self.record(graph::Node::Add { a, b, out });
        self.ops.push(Op::Add(ops::add::Add { a, b, out }));
        Ok(out)
    }

    pub(super) fn gap(&mut self, x: V) -> V {
        let out = self.value(self.channels[x]);
        self.record(graph::Node::AvgPool {
            x,
            out,
            oh: 1,
            ow: 1,
        });
        self.ops.push(Op::AvgPool(ops::avg_pool::AvgPool {
            x,
            out,
            oh: 1,
            ow: 1,
        }));
        out
    }

    /// An inverted residual block (fused into one op where it can be).
    pub(super) fn inverted_residual(&mut self, x: V, b: &InvertedResidual) -> Result<V> {
        // the block's ops start here
        let start = self.ops.len();
        let mut y = x;
        if let Some(e) = &b.expand {
            y = self.cba(y, e, None)?;
        }
        y = self.cba(y, &b.depthwise, None)?;
        if let Some(se) = &b.se {
            self.squeeze_excite(y, se)?;
        }
        let y = self.cba(y, &b.project, b.residual.then_some(x))?;
        if !self.backward && !self.weight_grads && b.se.is_none() {
            self.fuse_block(start, x)?;
        }
        Ok(y)
    }

    /// Squeeze-excitation of `x`, scaling it in place.
    pub(super) fn squeeze_excite(&mut self, x: V, se: &SqueezeExcite) -> Result<()> {
        if !matches!(se.gate, Act::Sigmoid | Act::Hardsigmoid) {
            return Err(Error::Internal(format!(
                "a squeeze-excitation gate {:?} (the engine has sigmoid and hard sigmoid)",
                se.gate
            )));
        }
        let mut ids = vec![se.fc1.weight.id, se.fc2.weight.id];
        ids.extend(se.fc1.bias.as_ref().map(|b| b.id));
        ids.extend(se.fc2.bias.as_ref().map(|b| b.id));
        let frozen = self.frozen(&ids);
        let bw = if self.backward && !frozen {
            let (w1, _, [hid, c, _, _]) = folded(&se.fc1, None)?;
            let (w2, _, _) = folded(&se.fc2, None)?;
            Some(ops::se::SeBackward { w1, w2, hid, c })
        } else {
            None
        };
        let params = if self.weight_grads && !frozen {
            let bias = |c: &Conv2d| {
                c.bias.as_ref().map(|b| b.id).ok_or_else(|| {
                    Error::Internal("a squeeze-excitation layer without bias".into())
                })
            };
            Some(ops::se::SeParams {
                w1: se.fc1.weight.id,
                b1: bias(&se.fc1)?,
                w2: se.fc2.weight.id,
                b2: bias(&se.fc2)?,
            })
        } else {
            None
        };
        if self.graph.is_some() {
            let (w1, b1, [hid, _, _, _]) = folded(&se.fc1, None)?;
            let (w2, b2, _) = folded(&se.fc2, None)?;
            self.record(graph::Node::Se {
                x,
                w1,
                b1,
                w2,
                b2,
                hid,
                act: kact(se.act),
                gate: kact(se.gate),
            });
            return Ok(());
        }
        let pack = |c: &Conv2d| -> Result<PackedConv> {
            let (w, bias, [o, i, kh, kw]) = folded(c, None)?;
            PackedConv::from_oihw(&w, Some(&bias), o, i, kh, kw).map_err(shape_err)
        };
        self.ops.push(Op::Se(ops::se::Se {
            x,
            fc1: pack(&se.fc1)?,
            fc2: pack(&se.fc2)?,
            act: kact(se.act),
            gate: kact(se.gate),
            bw,
            params,
        }));
        Ok(())
    }

    /// Replace the block's ops from `start` when they are a 1×1 expansion of `x` (or none), a
    /// depthwise convolution and a 1×1 projection (adding `x`, the block's input, or
    /// nothing), all folded, by one fused [`Op::Block`]. Anything else (a BatchNorm with batch
    /// statistics between them) stays as it is.
    fn fuse_block(&mut self, start: usize, x: V) -> Result<()> {
        use ops::conv::Conv;
        use ops::depthwise::Depthwise;
        let one = |w: &PackedConv| w.kh == 1 && w.kw == 1 && !w.is_winograd();
        let project_ok = |p: &Conv, c: usize| {
            one(&p.w) && p.stride == 1 && p.w.cin == c && p.res.is_none_or(|r| r == x)
        };
        let fusable = match &self.ops[start..] {
            [Op::Conv(e), Op::Depthwise(d), Op::Conv(p)] => {
                e.x == x
                    && e.stride == 1
                    && e.res.is_none()
                    && one(&e.w)
                    && e.w.cout == d.w.c
                    && project_ok(p, d.w.c)
            }
            [Op::Depthwise(d), Op::Conv(p)] => d.x == x && project_ok(p, d.w.c),
            _ => false,
        };
        if !fusable {
            return Ok(());
        }
        let mut tail: Vec<Op> = self.ops.drain(start..).collect();
        let (project, depthwise) = (tail.pop(), tail.pop());
        let expand = match tail.pop() {
            Some(Op::Conv(Conv { w, act, .. })) => Some((w, act)),
            _ => None,
        };
        let (
            Some(Op::Depthwise(Depthwise {
                w: dw,
                stride,
                pad,
                act: dw_act,
                ..
            })),
            Some(Op::Conv(Conv {
                out,
                res,
                w: pw,
                act: pw_act,
                ..
            })),
        ) = (depthwise, project)
        else {
            return Err(Error::Internal("fusing a block that is not one".into()));
        };
        let b = k::InvertedResidual::new(expand, dw, dw_act, pw, pw_act).map_err(shape_err)?;
        self.ops.push(Op::Block(ops::block::Block {
            x,
            out,
            b,
            stride,
            pad,
            res: res.is_some(),
        }));
        Ok(())
    }

    /// Stem → inverted residual blocks → head, with the family's tap names.
    pub(super) fn mbconv_net(
        &mut self,
        x: V,
        stem: &ConvBnAct,
        blocks: &[InvertedResidual],
        head: &ConvBnAct,
        names: &dyn Fn(usize) -> String,
    ) -> Result<V> {
        let mut x = self.cba(x, stem, None)?;
        self.tap(names(0), x);
        for (i, b) in blocks.iter().enumerate() {
            x = self.inverted_residual(x, b)?;
            self.tap(names(i + 1), x);
        }
        x = self.cba(x, head, None)?;
        self.tap(names(blocks.len() + 1), x);
        Ok(x)
    }
}

impl Plan {
    /// Compile a backbone (BatchNorm folded or not) for the CPU engine, with the default
    /// [`PlanOptions`].
    pub fn compile(b: &Backbone) -> Result<Plan> {
        Self::compile_with(b, PlanOptions::default())
    }

    /// Compile a backbone with the given options.
    pub fn compile_with(b: &Backbone, opts: PlanOptions) -> Result<Plan> {
        Self::compile_net(&b.net, b.spec.norm, opts)
    }

    /// Compile a network (with its current weights: fine-tuning compiles every step) that
    /// takes input normalised with `norm`.
    pub fn compile_net(net: &Net, norm: Normalization, opts: PlanOptions) -> Result<Plan> {
        Self::compile_net_for(net, norm, opts, None)
    }

    /// [`Plan::compile_net`] told which parameters train (`trainable`, for fine-tuning without
    /// an input gradient): the ops below the first trainable one are packed for the forward
    /// pass only — [`Plan::backward_for`] never goes below it.
    pub fn compile_net_for(
        net: &Net,
        norm: Normalization,
        opts: PlanOptions,
        trainable: Option<&dyn Fn(ParamId) -> bool>,
    ) -> Result<Plan> {
        let mut bl = Builder {
            ops: Vec::new(),
            channels: vec![3],
            winograd: opts.winograd,
            backward: opts.backward || opts.weight_grads,
            weight_grads: opts.weight_grads,
            train_bn: opts.train_bn,
            winograd_backward: false,
            trainable,
            seen_trainable: false,
            graph: None,
        };
        let Lowered {
            features,
            classifier_start,
            logits,
        } = net.arch().lower(&mut bl, 0)?;
        let norm = norm_constants(norm);
        let (slot, slots) = assign_slots(&bl.ops, bl.channels.len(), &[features, logits]);
        Ok(Plan {
            isa: Isa::current(),
            norm,
            backward: bl.backward,
            weight_grads: bl.weight_grads,
            ops: bl.ops,
            classifier_start,
            channels: bl.channels,
            slot,
            slots,
            features,
            logits,
            arena: Mutex::new(Vec::new()),
        })
    }

    /// The network as a graph of plain layers, eval mode (what the CPU engine runs, before
    /// packing): the description every export is made from.
    pub fn graph(net: &Net, norm: Normalization) -> Result<graph::Graph> {
        let mut bl = Builder {
            ops: Vec::new(),
            channels: vec![3],
            winograd: false,
            backward: false,
            weight_grads: false,
            train_bn: false,
            winograd_backward: false,
            trainable: None,
            seen_trainable: false,
            graph: Some(Vec::new()),
        };
        let Lowered {
            features,
            classifier_start: _,
            logits,
        } = net.arch().lower(&mut bl, 0)?;
        let nodes = bl.graph.take().unwrap_or_default();
        // the first node that only the logits need: the one after the last node the
        // features need (the features' own node)
        let classifier_start = nodes
            .iter()
            .position(|n| graph::output_of(n) == Some(features))
            .map_or(nodes.len(), |i| i + 1);
        let (scale, mean, std) = norm_constants(norm);
        Ok(graph::Graph {
            nodes,
            channels: bl.channels,
            features,
            logits,
            classifier_start,
            scale,
            mean,
            std,
        })
    }

    /// `(scale, mean, std)` of the input normalisation, or the identity for normalised input.
    fn norm_for(&self, normalized: bool) -> (f32, [f32; 3], [f32; 3]) {
        if normalized {
            (1.0, [0.0; 3], [1.0; 3])
        } else {
            self.norm
        }
    }

    /// How many inverted residual blocks run fused (expansion, depthwise convolution and
    /// projection in one pass, a band of rows at a time): every block without
    /// squeeze-excitation in a forward-only plan, none in a plan compiled for gradients.
    pub fn fused_blocks(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Block(_)))
            .count()
    }

    /// The instruction-set path this plan runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The same plan on another instruction-set path (an [`Isa`] is a path this CPU was
    /// checked to support: see [`Isa::available`]), to test or benchmark each path.
    pub fn with_isa(mut self, isa: Isa) -> Plan {
        self.isa = isa;
        self
    }

    /// Forward from pixels in [0, 1] (`[n, 3, h, w]`, NCHW, row-major), normalised inside
    /// (`normalized`: the input is already normalised). Feature maps are offered to `taps`.
    pub fn run(
        &self,
        pixels: &[f32],
        [n, c, h, w]: [usize; 4],
        normalized: bool,
        want_logits: bool,
        taps: &mut Taps,
        device: &Device,
    ) -> Result<PlanOutput> {
        if c != 3 || pixels.len() != n * c * h * w {
            return Err(Error::Invalid(format!(
                "the network takes [n, 3, h, w] images, got {} values as [{n}, {c}, {h}, {w}]",
                pixels.len()
            )));
        }
        let shapes = self.shapes(n, h, w)?;
        let mut arena = std::mem::take(&mut *self.arena.lock().unwrap_or_else(|p| p.into_inner()));
        arena.resize_with(self.slots, Vec::new);
        // size every buffer for its largest value
        let mut need = vec![0usize; self.slots];
        for (v, &(vh, vw, vc)) in shapes.iter().enumerate() {
            let s = self.slot[v];
            need[s] = need[s].max(n * vh * vw * vc);
        }
        for (buf, &len) in arena.iter_mut().zip(&need) {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        let (scale, mean, std) = self.norm_for(normalized);
        let len = |v: V| n * shapes[v].0 * shapes[v].1 * shapes[v].2;
        {
            let buf = &mut arena[self.slot[0]][..len(0)];
            k::nchw_to_nhwc_normalized(pixels, n, 3, h, w, scale, &mean, &std, buf)
                .map_err(shape_err)?;
        }
        let end = if want_logits {
            self.ops.len()
        } else {
            self.classifier_start
        };
        let profile = profiling();
        // On one of the pool's threads: each op's parallel split is then work handed to the
        // pool's other threads from inside it, not a job sent from outside and waited for
        // (a sleep and a wake-up an op: tens of microseconds, most of a small op's time).
        in_pool(|| {
            let mut cx = Fwd {
                isa: self.isa,
                n,
                shapes: &shapes,
                slot: &self.slot,
                arena: &mut arena,
                taps,
                device,
                tape: false,
            };
            for op in &self.ops[..end] {
                let t = std::time::Instant::now();
                op.forward(&mut cx)?;
                if profile {
                    eprintln!(
                        "{:>9.3} ms  {}",
                        t.elapsed().as_secs_f64() * 1e3,
                        op.describe(&shapes)
                    );
                }
            }
            Ok::<(), Error>(())
        })?;
        let features = arena[self.slot[self.features]][..len(self.features)].to_vec();
        let logits =
            want_logits.then(|| arena[self.slot[self.logits]][..len(self.logits)].to_vec());
        *self.arena.lock().unwrap_or_else(|p| p.into_inner()) = arena;
        Ok(PlanOutput {
            n,
            features,
            logits,
        })
    }

    /// `(h, w, c)` of every value for an `h × w` input.
    fn shapes(&self, n: usize, h: usize, w: usize) -> Result<Vec<(usize, usize, usize)>> {
        let mut s = vec![(0, 0, 0); self.channels.len()];
        s[0] = (h, w, 3);
        for op in &self.ops {
            if let Some(v) = op.output() {
                let (oh, ow) = op.out_hw(n, &s)?;
                s[v] = (oh, ow, self.channels[v]);
            }
        }
        Ok(s)
    }
}

/// `f()` on a thread of rayon's current pool (here if this is one, else on one of the global
/// pool's, this thread waiting): the parallel loops inside then start without a hand-over
/// from outside the pool each.
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        // `join` runs its first closure on a pool thread when called from outside the pool
        rayon::join(f, || ()).0
    }
}

/// Whether `WHISKER_PLAN_PROFILE` asks for per-op and per-phase timings on stderr.
pub(crate) fn profiling() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("WHISKER_PLAN_PROFILE").is_some())
}

/// With [`profiling`], the time since `t` as one `== phase` line on stderr, with the minor
/// page faults (fresh pages touched) since the last such line where the OS tells them.
pub(crate) fn profile_phase(phase: &str, t: std::time::Instant) {
    if profiling() {
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let faults = minor_faults()
            .map(|f| {
                let d = f - LAST.swap(f, std::sync::atomic::Ordering::Relaxed);
                format!(" ({d} page faults)")
            })
            .unwrap_or_default();
        eprintln!(
            "{:>9.3} ms  == {phase}{faults}",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// This process's minor page faults so far (Linux: `/proc/self/stat`'s 10th field).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

pub(super) fn too_small(e: k::ShapeError) -> Error {
    Error::Invalid(format!("the image is too small for this network: {}", e.0))
}

/// Mutable output and shared inputs from distinct buffers of the arena.
pub(super) fn split3(
    arena: &mut [Vec<f32>],
    x: usize,
    out: usize,
    res: Option<usize>,
) -> (&[f32], &mut [f32], Option<&[f32]>) {
    debug_assert!(x != out && res != Some(out));
    // SAFETY: `out` differs from `x` and `res` (the slot assignment never gives an op's
    // output the buffer of one of its inputs), so the mutable borrow aliases nothing.
    let base = arena.as_mut_ptr();
    unsafe {
        let o = &mut *base.add(out);
        let xi = &*base.add(x);
        let r = res.map(|r| (*base.add(r)).as_slice());
        (xi.as_slice(), o.as_mut_slice(), r)
    }
}

/// Give each value a buffer, reusing a buffer once every reader of its value has run.
/// `keep` values are never overwritten. Returns (value → buffer, number of buffers).
fn assign_slots(ops: &[Op], nvalues: usize, keep: &[V]) -> (Vec<usize>, usize) {
    let mut last = vec![0usize; nvalues];
    for (i, op) in ops.iter().enumerate() {
        for v in op.inputs() {
            last[v] = i;
        }
    }
    for &v in keep {
        last[v] = usize::MAX;
    }
    let mut slot = vec![usize::MAX; nvalues];
    let mut free: Vec<usize> = Vec::new();
    let mut slots = 1;
    slot[0] = 0;
    for (i, op) in ops.iter().enumerate() {
        if let Some(out) = op.output() {
            slot[out] = free.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            });
        }
        for v in op.inputs() {
            if last[v] == i && !free.contains(&slot[v]) {
                free.push(slot[v]);
            }
        }
    }
    // values never produced (none in a well-formed plan) share buffer 0
    for s in slot.iter_mut() {
        if *s == usize::MAX {
            *s = 0;
        }
    }
    (slot, slots)
}

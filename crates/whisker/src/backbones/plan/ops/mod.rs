//! The engine's ops, one file each: what an op reads and writes, its output's shape, its
//! forward step (plain, and keeping what gradients need), its backward step (input gradient
//! and the gradients of its parameters) and its one-line description. [`ops!`] lists them;
//! a new op is its file, its line there, and its kernels in `whisker-kernels`.

use burn::module::ParamId;
use burn::tensor::Device;
use whisker_kernels as k;
use whisker_kernels::{Act as KAct, Isa};

use super::grad::{act_grad, hand_over, ParamGrad, Tape};
use super::{shape_err, split3, Taps, V};
use crate::error::{Error, Result};

pub(super) mod add;
pub(super) mod attention;
pub(super) mod avg_pool;
pub(super) mod batch_norm;
pub(super) mod block;
pub(super) mod class_token;
pub(super) mod conv;
pub(super) mod depthwise;
pub(super) mod grouped;
pub(super) mod layer_norm;
pub(super) mod linear;
pub(super) mod max_pool;
pub(super) mod pointwise;
pub(super) mod se;
pub(super) mod tap;
pub(super) mod tokens;

/// `(h, w, c)` of each value of a plan run.
pub(super) type Shapes<'a> = &'a [(usize, usize, usize)];

/// What every op of the engine does.
pub(super) trait Step: std::fmt::Debug + Send + Sync {
    /// The values it reads.
    fn inputs(&self) -> Vec<V>;
    /// The value it writes (`None`: it writes in place, or nothing).
    fn output(&self) -> Option<V>;
    /// The value it rescales in place (squeeze-excitation), whose earlier contents it keeps.
    fn in_place(&self) -> Option<V> {
        None
    }
    /// The activation it applies to its output.
    fn act(&self) -> KAct {
        KAct::None
    }
    /// The parameters whose gradients its backward step gives (none unless the plan keeps
    /// them: `PlanOptions::weight_grads`).
    fn param_ids(&self) -> Vec<ParamId> {
        Vec::new()
    }
    /// Its output's `(h, w)` from the shapes of the values before it (an op with an output).
    fn out_hw(&self, n: usize, shapes: Shapes<'_>) -> Result<(usize, usize)>;
    /// The forward step.
    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()>;
    /// The forward step on a tape: what it keeps for its backward step.
    fn forward_kept(&self, cx: &mut Fwd<'_>) -> Result<Kept> {
        self.forward(cx)?;
        Ok(Kept::default())
    }
    /// The backward step: the gradient of its output (taken from `cx.grads`) into the
    /// gradients of its inputs, and of its parameters when wanted.
    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()>;
    /// One line about it, for `WHISKER_PLAN_PROFILE=1`.
    fn describe(&self, shapes: Shapes<'_>) -> String;
}

/// The list of ops: one line each, `Variant(type)`. It makes [`Op`], whose dereference is the
/// op's [`Step`].
macro_rules! ops {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One op of a plan.
        #[derive(Debug)]
        pub(super) enum Op {
            $($variant($ty)),*
        }

        impl std::ops::Deref for Op {
            type Target = dyn Step;
            fn deref(&self) -> &(dyn Step + 'static) {
                match self {
                    $(Op::$variant(o) => o),*
                }
            }
        }
    };
}

ops! {
    Conv(conv::Conv),
    Linear(linear::Linear),
    Depthwise(depthwise::Depthwise),
    Grouped(grouped::Grouped),
    Block(block::Block),
    MaxPool(max_pool::MaxPool),
    AvgPool(avg_pool::AvgPool),
    BatchNorm(batch_norm::BatchNorm),
    Se(se::Se),
    Tap(tap::Tap),
    LayerNorm(layer_norm::LayerNorm),
    Pointwise(pointwise::Pointwise),
    Add(add::Add),
    Tokens(tokens::Tokens),
    Attention(attention::Attention),
    ClassToken(class_token::ClassToken),
}

/// What an op kept from its forward step on a tape.
#[derive(Debug, Default)]
pub(super) struct Kept {
    /// The input of a hardswish (its derivative is not a function of its output).
    pub pre_act: Option<Vec<f32>>,
    /// Whatever else the op's backward step needs, in the op's own order (for an op that
    /// rescales in place, the first is the value before).
    pub bufs: Vec<Vec<f32>>,
    /// A BatchNorm's batch statistics.
    pub stats: Option<k::BatchStats>,
}

/// What a forward step works on: the values of one run, in their buffers.
pub(super) struct Fwd<'a> {
    pub isa: Isa,
    pub n: usize,
    pub shapes: Shapes<'a>,
    /// The buffer of each value.
    pub slot: &'a [usize],
    pub arena: &'a mut [Vec<f32>],
    pub taps: &'a mut Taps,
    pub device: &'a Device,
    /// A run on a tape: a hardswish is left to the caller, which keeps its input.
    pub tape: bool,
}

impl Fwd<'_> {
    /// The number of floats of value `v`.
    pub fn len(&self, v: V) -> usize {
        let (h, w, c) = self.shapes[v];
        self.n * h * w * c
    }

    /// Input `x`, output `out` (to write) and residual `res`, each its own length.
    pub fn io(&mut self, x: V, out: V, res: Option<V>) -> (&[f32], &mut [f32], Option<&[f32]>) {
        let (lx, lo) = (self.len(x), self.len(out));
        let (xb, ob, rb) = split3(
            self.arena,
            self.slot[x],
            self.slot[out],
            res.map(|r| self.slot[r]),
        );
        (&xb[..lx], &mut ob[..lo], rb.map(|r| &r[..lo]))
    }

    /// Value `v`, to read.
    pub fn value(&self, v: V) -> &[f32] {
        &self.arena[self.slot[v]][..self.len(v)]
    }

    /// Value `v`, to change in place.
    pub fn value_mut(&mut self, v: V) -> &mut [f32] {
        let l = self.len(v);
        &mut self.arena[self.slot[v]][..l]
    }

    /// The activation the kernel applies (on a tape, one whose derivative needs its input
    /// is left to the caller, which keeps the input).
    pub fn act(&self, a: KAct) -> KAct {
        if self.tape && needs_input(a) {
            KAct::None
        } else {
            a
        }
    }
}

/// Whether an activation's derivative needs its input (not a function of its output):
/// hardswish, GELU and SiLU.
pub(super) fn needs_input(a: KAct) -> bool {
    matches!(a, KAct::Hardswish | KAct::Gelu | KAct::Silu)
}

/// What a backward step works on.
pub(super) struct Bwd<'a> {
    pub isa: Isa,
    pub n: usize,
    pub tape: &'a Tape,
    /// What this op kept.
    pub kept: &'a Kept,
    /// The gradient of each value (`None`: none reached it yet).
    pub grads: &'a mut [Option<Vec<f32>>],
    /// Values whose gradient a max pool already masked with their ReLU's derivative.
    pub premasked: &'a mut [bool],
    /// Values a ReLU wrote.
    pub relu_out: &'a [bool],
    /// How many ops read each value.
    pub consumers: &'a [usize],
    /// This op's parameters' gradients are wanted (into `pgrads`).
    pub want_params: bool,
    pub pgrads: &'a mut Vec<ParamGrad>,
    /// The image's gradient is wanted.
    pub input_grad: bool,
    /// The one value whose gradient is wanted, if that is the pass's end.
    pub stop_at: Option<V>,
    /// This is the lowest op the pass reaches.
    pub lowest: bool,
    pub profile: bool,
}

impl Bwd<'_> {
    /// `(h, w, c)` of value `v`.
    pub fn shape(&self, v: V) -> (usize, usize, usize) {
        self.tape.shapes[v]
    }

    /// The number of floats of value `v`.
    pub fn len(&self, v: V) -> usize {
        let (h, w, c) = self.shape(v);
        self.n * h * w * c
    }

    /// Whether the gradient of the op's input `x` is needed below it.
    pub fn wants_input(&self, x: V) -> bool {
        let wanted = self.input_grad || self.stop_at == Some(x);
        !((x == 0 || self.lowest) && !wanted)
    }
}

fn missing() -> Error {
    Error::Internal("no backward weights for an op".into())
}

/// The backward step of an op linear in its input, then activated, with an optional
/// residual added before the activation (a convolution, depthwise or dense, a linear
/// layer): the activation's derivative, `param_grads` of the pre-activation gradient, then
/// `input_grad(g, previous gradient of x)` → the new gradient of `x`; the residual branch
/// gets the pre-activation gradient itself.
pub(super) fn affine_backward(
    cx: &mut Bwd<'_>,
    (x, out, act, res): (V, V, KAct, Option<V>),
    param_grads: impl FnOnce(&mut Bwd<'_>, &[f32]) -> Result<()>,
    input_grad: impl FnOnce(&Bwd<'_>, &[f32], Option<Vec<f32>>) -> Result<Vec<f32>>,
) -> Result<()> {
    let Some(mut g) = cx.grads[out].take() else {
        return Ok(());
    };
    if !cx.premasked[out] {
        act_grad(
            cx.isa,
            act,
            &mut g,
            cx.tape.produced(out),
            cx.kept.pre_act.as_deref(),
        )?;
    }
    if cx.want_params {
        let t = std::time::Instant::now();
        param_grads(cx, &g)?;
        if cx.profile {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!("{ms:>9.3} ms    of which weight gradients");
        }
    }
    // the image's own gradient only when asked for (fine-tuning needs none), and none below
    // the lowest op with a wanted parameter
    if cx.wants_input(x) {
        let prev = cx.grads[x].take();
        let dx = input_grad(cx, &g, prev)?;
        cx.grads[x] = Some(dx);
    }
    hand_over(res.map(|r| &mut cx.grads[r]), g);
    Ok(())
}

/// The input gradient of a dense convolution (or a linear layer, a 1×1 convolution on 1×1
/// maps) with backward weights `bw` and geometry `s`, added to `prev` when the input also
/// feeds another branch (the sum written in one pass).
/// An input gradient a kernel writes, or adds to the input's earlier gradient `prev` (its
/// `accumulate` flag): `f(dx, accumulate)` into `prev` when there is one, else into a new
/// buffer.
pub(super) fn into_input_grad(
    cx: &Bwd<'_>,
    x: V,
    prev: Option<Vec<f32>>,
    f: impl FnOnce(&mut [f32], bool) -> std::result::Result<(), k::ShapeError>,
) -> Result<Vec<f32>> {
    let acc = prev.is_some();
    let mut dx = prev.unwrap_or_else(|| k::buffers::take(cx.len(x)));
    f(&mut dx, acc).map_err(shape_err)?;
    Ok(dx)
}

pub(super) fn conv_input_grad(
    cx: &Bwd<'_>,
    bw: Option<&k::ConvBackward>,
    s: &k::ConvShape,
    x: V,
    g: &[f32],
    prev: Option<Vec<f32>>,
) -> Result<Vec<f32>> {
    let b = bw.ok_or_else(missing)?;
    let mut dx = k::buffers::take(cx.len(x));
    match prev {
        Some(prev) => {
            b.input_grad_plus(cx.isa, g, s, &prev, &mut dx)
                .map_err(shape_err)?;
            k::buffers::give(prev);
        }
        None => b
            .input_grad(cx.isa, g, s, &mut dx, false)
            .map_err(shape_err)?,
    }
    Ok(dx)
}

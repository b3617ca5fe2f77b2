//! The building blocks the backbones share: convolution (with PyTorch or TensorFlow 'SAME'
//! padding), frozen BatchNorm, linear layers, activations and feature-map taps.

use burn::module::{Module, Param};
use burn::tensor::module::{batch_norm, conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, Tensor};

use crate::error::Result;
use crate::weights::Loader;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// PyTorch style: the same number of zeros on every side.
    Symmetric(usize),
    /// TensorFlow 'SAME': total = max((ceil(i/s)-1)*s + k - i, 0), floor(total/2) before,
    /// the rest after. Depends on the input size, so it is computed at each forward.
    TfSame,
}

/// The padding (before, after) TensorFlow's 'SAME' uses for one dimension.
pub fn tf_same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// A 2-D convolution with checkpoint layout `[out, in/groups, k, k]`.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: usize,
    pub groups: usize,
    #[module(skip)]
    pub padding: Padding,
}

/// Shape and behaviour of a convolution to load.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub bias: bool,
    pub padding: Padding,
}

impl ConvSpec {
    /// A bias-free convolution with PyTorch's "same-ish" padding (k-1)/2.
    pub fn new(cin: usize, cout: usize, kernel: usize, stride: usize) -> Self {
        ConvSpec {
            cin,
            cout,
            kernel,
            stride,
            groups: 1,
            bias: false,
            padding: Padding::Symmetric((kernel - 1) / 2),
        }
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
}

impl Conv2d {
    /// Load `{prefix}.weight` (and `{prefix}.bias`).
    pub fn load(l: &mut Loader, prefix: &str, s: ConvSpec) -> Result<Self> {
        let weight = l.param(
            &format!("{prefix}.weight"),
            [s.cout, s.cin / s.groups, s.kernel, s.kernel],
        )?;
        let bias = if s.bias {
            Some(l.param(&format!("{prefix}.bias"), [s.cout])?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride: s.stride,
            groups: s.groups,
            padding: s.padding,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let k = self.weight.dims()[2];
        let padding = match self.padding {
            Padding::Symmetric(p) => [(p, p), (p, p)],
            Padding::TfSame => [
                tf_same_padding(h, k, self.stride),
                tf_same_padding(w, k, self.stride),
            ],
        };
        let opts =
            ConvOptions::new_with_padding([self.stride, self.stride], padding, [1, 1], self.groups);
        let bias = self.bias.as_ref().map(|b| b.val());
        conv2d_in(arith(&x.device()), x, self.weight.val(), bias, opts)
    }
}

/// How burn's convolutions and matrix products compute on a device (see
/// [`crate::device::GpuPrecision`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arith {
    /// The backend's f32 kernels as they are (the CPU; TF32 on CUDA with `--precision tf32`).
    F32,
    /// f32 from TF32 tensor cores: three products of split operands ([`tf32_split`]).
    SplitF32,
    /// Mixed precision: operands cast to this type, the result cast back to f32; the bias is
    /// added in f32. Gradients flow back through the casts as f32.
    Cast(burn::tensor::FloatDType),
}

/// The arithmetic of burn's convolutions and matrix products on `device`: the chosen GPU
/// precision; on the CPU f32, unless burn's operations are forced (`WHISKER_ENGINE=burn`) with
/// `bf16` / `f16` chosen (an emulation that measures mixed precision without a GPU).
pub fn arith(device: &burn::tensor::Device) -> Arith {
    let p = crate::device::gpu_precision();
    match p.reduced_dtype() {
        Some(dt)
            if !crate::device::is_cpu(device)
                || crate::device::engine() == crate::device::Engine::Burn =>
        {
            Arith::Cast(dt)
        }
        _ if crate::device::split_for_f32(device) => Arith::SplitF32,
        _ => Arith::F32,
    }
}

/// `conv2d` computed as `a` says.
pub fn conv2d_in(
    a: Arith,
    x: Tensor<4>,
    w: Tensor<4>,
    bias: Option<Tensor<1>>,
    opts: ConvOptions<2>,
) -> Tensor<4> {
    match a {
        Arith::F32 => conv2d(x, w, bias, opts),
        Arith::SplitF32 => {
            let (xh, xl) = tf32_split(x);
            let (wh, wl) = tf32_split(w);
            conv2d(xh.clone(), wh.clone(), bias, opts.clone())
                + conv2d(xh, wl, None, opts.clone())
                + conv2d(xl, wh, None, opts)
        }
        Arith::Cast(dt) => {
            let y = conv2d(x.cast(dt), w.cast(dt), None, opts).cast(FloatDType::F32);
            match bias {
                Some(b) => {
                    let c = b.dims()[0];
                    y + b.reshape([1, c, 1, 1])
                }
                None => y,
            }
        }
    }
}

/// `linear` (`x·w + b`, `w` as `[in, out]`) computed as `a` says.
pub fn linear_in(a: Arith, x: Tensor<2>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    match a {
        Arith::F32 => linear(x, w, bias),
        Arith::SplitF32 => {
            let (xh, xl) = tf32_split(x);
            let (wh, wl) = tf32_split(w);
            linear(xh.clone(), wh.clone(), bias) + linear(xh, wl, None) + linear(xl, wh, None)
        }
        Arith::Cast(dt) => {
            let y = linear(x.cast(dt), w.cast(dt), None).cast(FloatDType::F32);
            match bias {
                Some(b) => y + b.unsqueeze(),
                None => y,
            }
        }
    }
}

/// `x` as `hi + lo`, `hi` with at most 11 significant bits (Veltkamp's split with 2^13 + 1), so
/// that a TF32 tensor core multiplies it exactly; `lo` is the rest (≤ 2^-11 |x|). The sum of
/// hi·hi, hi·lo and lo·hi products is then the f32 product to ~2^-21. Gradients flow as through
/// `x` itself (d hi/dx = 1, d lo/dx = 0). Separate kernels, not fused: the rounding is kept.
fn tf32_split<const D: usize>(x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    let c = x.clone() * 8193.0;
    let hi = c.clone() - (c - x.clone());
    let lo = x - hi.clone();
    (hi, lo)
}

/// BatchNorm over channels, always using its running statistics (a frozen backbone, as in
/// PyTorch's `eval()`), whatever the device. Keys: `weight`, `bias`, `running_mean`,
/// `running_var`.
#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
    pub eps: f64,
    /// Folded into the preceding convolution (inference): forward is the identity.
    #[module(skip)]
    pub folded: bool,
    /// `--train-bn`: normalise with batch statistics while training (autodiff input) and
    /// keep running statistics here (unbiased variance, as PyTorch).
    #[module(skip)]
    pub train_stats: Option<TrainStats>,
    /// The running statistics' momentum: 0.1 (PyTorch's default), 0.01 where the family's
    /// reference has it (MobileNetV3, EfficientNet-Lite).
    #[module(skip)]
    pub momentum: f64,
}

/// A BatchNorm's running `(mean, variance)` while it trains them (see `train_stats`).
pub type TrainStats = std::sync::Arc<std::sync::Mutex<(Tensor<1>, Tensor<1>)>>;

/// [`update_running`] from per-channel values (the CPU engine's statistics).
pub fn update_running_values(
    stats: &TrainStats,
    momentum: f64,
    mean: &[f64],
    biased_var: &[f64],
    count: usize,
) {
    let device = stats.lock().unwrap_or_else(|p| p.into_inner()).0.device();
    let t = |v: &[f64]| {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let n = v.len();
        Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [n]), &device)
    };
    update_running(stats, momentum, t(mean), t(biased_var), count)
}

/// Fold one batch's statistics into running ones as PyTorch does, the variance unbiased
/// (`count / (count − 1)`).
pub fn update_running(
    stats: &TrainStats,
    momentum: f64,
    mean: Tensor<1>,
    biased_var: Tensor<1>,
    count: usize,
) {
    let m = momentum as f32;
    let count = count as f32;
    let unbiased = biased_var * (count / (count - 1.0).max(1.0));
    let mut st = stats.lock().unwrap_or_else(|p| p.into_inner());
    let mean = st.0.clone() * (1.0 - m) + mean * m;
    let var = st.1.clone() * (1.0 - m) + unbiased * m;
    *st = (mean, var);
}

impl BatchNorm {
    pub fn load(l: &mut Loader, prefix: &str, c: usize, eps: f64) -> Result<Self> {
        Ok(BatchNorm {
            weight: l.param(&format!("{prefix}.weight"), [c])?,
            bias: l.param(&format!("{prefix}.bias"), [c])?,
            running_mean: l.buffer(&format!("{prefix}.running_mean"), [c])?,
            running_var: l.buffer(&format!("{prefix}.running_var"), [c])?,
            eps,
            folded: false,
            train_stats: None,
            momentum: 0.1,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.folded {
            return x;
        }
        if let Some(stats) = &self.train_stats {
            if x.is_autodiff() {
                let [n, _, h, w] = x.dims();
                let out = burn::tensor::module::batch_norm_train(
                    x,
                    self.weight.val(),
                    self.bias.val(),
                    self.eps,
                );
                update_running(
                    stats,
                    self.momentum,
                    out.mean.detach().inner(),
                    out.variance.detach().inner(),
                    n * h * w,
                );
                return out.output;
            }
            let (mean, var) = {
                let st = stats.lock().unwrap_or_else(|p| p.into_inner());
                (st.0.clone(), st.1.clone())
            };
            return batch_norm(x, self.weight.val(), self.bias.val(), mean, var, self.eps);
        }
        batch_norm(
            x,
            self.weight.val(),
            self.bias.val(),
            self.running_mean.val(),
            self.running_var.val(),
            self.eps,
        )
    }

    /// Start training the statistics (see `train_stats`).
    pub fn enable_train_stats(&mut self) {
        let inner = |t: Tensor<1>| t.detach().inner();
        self.train_stats = Some(std::sync::Arc::new(std::sync::Mutex::new((
            inner(self.running_mean.val()),
            inner(self.running_var.val()),
        ))));
    }

    /// Copy the trained running statistics into the parameters (keeping their ids).
    pub fn commit_train_stats(&mut self) {
        if let Some(stats) = &self.train_stats {
            let st = stats.lock().unwrap_or_else(|p| p.into_inner());
            let device = self.running_mean.val().device();
            let to = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &device);
            self.running_mean =
                Param::initialized(self.running_mean.id, to(&st.0)).set_require_grad(false);
            self.running_var =
                Param::initialized(self.running_var.id, to(&st.1)).set_require_grad(false);
        }
    }
}

/// Fold an eval-mode BatchNorm into the convolution before it, for inference:
/// `w' = w·γ/√(σ²+ε)`, `b' = (b − μ)·γ/√(σ²+ε) + β`. The BatchNorm becomes the identity.
/// (Changes results by float rounding only, ~1e-6 relative.)
pub fn fold_bn(conv: &mut Conv2d, bn: &mut BatchNorm) {
    if bn.folded {
        return;
    }
    let scale = bn.weight.val() / (bn.running_var.val() + bn.eps).sqrt();
    let c = scale.dims()[0];
    let w = conv.weight.val() * scale.clone().reshape([c, 1, 1, 1]);
    let b0 = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([c], &scale.device()),
    };
    let b = (b0 - bn.running_mean.val()) * scale + bn.bias.val();
    conv.weight = Param::from_tensor(w);
    conv.bias = Some(Param::from_tensor(b));
    bn.folded = true;
}

/// A fully connected layer (weights kept as burn's `[in, out]`).
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

impl Linear {
    pub fn load(l: &mut Loader, prefix: &str, inp: usize, out: usize) -> Result<Self> {
        Ok(Linear {
            weight: l.linear_weight(&format!("{prefix}.weight"), out, inp)?,
            bias: l.param(&format!("{prefix}.bias"), [out])?,
        })
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear_in(
            arith(&x.device()),
            x,
            self.weight.val(),
            Some(self.bias.val()),
        )
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// Activation functions, written as PyTorch computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
    Hardswish,
    /// PyTorch's default GELU, `x·Φ(x)` (erf, not the tanh approximation).
    Gelu,
    /// SiLU (swish), `x·σ(x)`.
    Silu,
    /// The logistic sigmoid (squeeze-excitation gates).
    Sigmoid,
    /// `relu6(x + 3) / 6` (MobileNetV3's squeeze-excitation gate).
    Hardsigmoid,
}

impl Act {
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::None => x,
            Act::Relu => burn::tensor::activation::relu(x),
            Act::Relu6 => x.clamp(0.0, 6.0),
            Act::Hardswish => x.clone() * hardsigmoid(x),
            Act::Gelu => burn::tensor::activation::gelu(x),
            Act::Silu => burn::tensor::activation::silu(x),
            Act::Sigmoid => burn::tensor::activation::sigmoid(x),
            Act::Hardsigmoid => hardsigmoid(x),
        }
    }
}

/// LayerNorm over the last dimension (PyTorch's `nn.LayerNorm(c)`), with its affine `γ`, `β`.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    #[module(skip)]
    pub eps: f64,
}

impl LayerNorm {
    /// Load `{prefix}.weight` and `{prefix}.bias` (`[c]`).
    pub fn load(l: &mut Loader, prefix: &str, c: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: l.param(&format!("{prefix}.weight"), [c])?,
            bias: l.param(&format!("{prefix}.bias"), [c])?,
            eps,
        })
    }

    /// Normalise the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let c = self.weight.dims()[0];
        let mut shape = [1usize; D];
        shape[D - 1] = c;
        let g = self.weight.val().reshape(shape);
        let b = self.bias.val().reshape(shape);
        (x - mean) / (var + self.eps).sqrt() * g + b
    }

    /// Normalise the channels of an NCHW map (ConvNeXt's `LayerNorm2d`).
    pub fn forward_channels(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
    }
}

/// PyTorch's hardsigmoid: relu6(x + 3) / 6.
pub fn hardsigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    (x + 3.0).clamp(0.0, 6.0) / 6.0
}

/// Conv → BatchNorm → activation, the unit most backbones are made of.
#[derive(Module, Debug)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    #[module(skip)]
    pub act: Act,
}

impl ConvBnAct {
    pub fn load(
        l: &mut Loader,
        conv_key: &str,
        bn_key: &str,
        spec: ConvSpec,
        eps: f64,
        act: Act,
    ) -> Result<Self> {
        Ok(ConvBnAct {
            conv: Conv2d::load(l, conv_key, spec)?,
            bn: BatchNorm::load(l, bn_key, spec.cout, eps)?,
            act,
        })
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.act.apply(self.bn.forward(self.conv.forward(x)))
    }

    pub fn fold(&mut self) {
        fold_bn(&mut self.conv, &mut self.bn);
    }

    pub fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        vec![&mut self.bn]
    }
}

/// Collects named intermediate feature maps during a forward pass. A layer whose value is a
/// sequence of tokens (a vision transformer's) is offered with [`Taps::hook_tokens`]: its
/// patch tokens as a map on their grid (as pytorch-grad-cam's `reshape_transform` does), so
/// everything that reads maps (feature maps, Grad-CAM) reads it too, and the tokens
/// themselves.
#[derive(Default)]
pub struct Taps {
    mode: TapMode,
    /// The recorded maps `[N, C, H, W]`, in network order (a token layer's: its patch tokens
    /// on their grid).
    pub maps: Vec<(String, Tensor<4>)>,
    /// The recorded token layers' tokens `[N, T, C]` (class and register tokens first, then
    /// the patches row by row), in network order.
    pub tokens: Vec<(String, Tensor<3>)>,
    /// Every tap name passed, recorded or not.
    pub names: Vec<String>,
}

#[derive(Default)]
enum TapMode {
    #[default]
    Off,
    All,
    Only(Vec<String>),
    NamesOnly,
    /// Record this one map as a new leaf that takes gradients (Grad-CAM): the forward pass
    /// goes on from the recorded tensor, so `grad` of it is d(output)/d(map).
    Grad(String),
}

impl Taps {
    /// Record nothing.
    pub fn none() -> Self {
        Taps::default()
    }
    /// Whether nothing is recorded (not even names).
    pub fn is_off(&self) -> bool {
        matches!(self.mode, TapMode::Off)
    }
    /// Record every named feature map.
    pub fn all() -> Self {
        Taps {
            mode: TapMode::All,
            ..Default::default()
        }
    }
    /// Record only these.
    pub fn only(names: &[&str]) -> Self {
        Taps {
            mode: TapMode::Only(names.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }
    /// Record the map `name` as a leaf of the autodiff graph, for its gradient (the forward
    /// pass must run in autodiff, on burn's operations: the backbone takes care of it).
    pub fn grad(name: &str) -> Self {
        Taps {
            mode: TapMode::Grad(name.to_string()),
            ..Default::default()
        }
    }
    /// Record names, no tensors.
    pub fn names_only() -> Self {
        Taps {
            mode: TapMode::NamesOnly,
            ..Default::default()
        }
    }

    /// Offer a feature map under `name`.
    pub fn tap(&mut self, name: &str, x: &Tensor<4>) {
        match &self.mode {
            TapMode::Off => {}
            TapMode::NamesOnly => self.names.push(name.to_string()),
            TapMode::All => {
                self.names.push(name.to_string());
                self.maps.push((name.to_string(), x.clone()));
            }
            TapMode::Only(w) => {
                self.names.push(name.to_string());
                if w.iter().any(|n| n == name) {
                    self.maps.push((name.to_string(), x.clone()));
                }
            }
            TapMode::Grad(w) => {
                self.names.push(name.to_string());
                if w == name {
                    self.maps.push((name.to_string(), x.clone()));
                }
            }
        }
    }

    /// Offer a feature map under `name` and go on with what comes back: `x` itself, or (in
    /// [`Taps::grad`] mode, at its layer) `x` as a new leaf that takes gradients.
    pub fn hook(&mut self, name: &str, x: Tensor<4>) -> Tensor<4> {
        if let TapMode::Grad(w) = &self.mode {
            if w == name {
                let leaf = x.detach().require_grad();
                self.names.push(name.to_string());
                self.maps.push((name.to_string(), leaf.clone()));
                return leaf;
            }
        }
        self.tap(name, &x);
        x
    }

    /// Offer a layer of tokens `x` `[N, T, C]` under `name`, whose last `h·w` tokens are the
    /// patches of an `h × w` grid (row by row; the tokens before them — class, registers —
    /// are not part of the map), and go on with what comes back: `x` itself, or (in
    /// [`Taps::grad`] mode, at this layer) tokens whose patches are the recorded map, a new
    /// leaf that takes gradients (the tokens before them held constant).
    pub fn hook_tokens(&mut self, name: &str, x: Tensor<3>, (h, w): (usize, usize)) -> Tensor<3> {
        if !self.wants(name) {
            self.note(name);
            return x;
        }
        let [n, t, c] = x.dims();
        let prefix = t.saturating_sub(h * w);
        let map = x
            .clone()
            .slice([0..n, prefix..t, 0..c])
            .reshape([n, h, w, c])
            .permute([0, 3, 1, 2]);
        if let TapMode::Grad(_) = &self.mode {
            let leaf = map.detach().require_grad();
            self.names.push(name.to_string());
            self.maps.push((name.to_string(), leaf.clone()));
            let patches = leaf.permute([0, 2, 3, 1]).reshape([n, h * w, c]);
            if prefix == 0 {
                return patches;
            }
            let before = x.slice([0..n, 0..prefix, 0..c]).detach();
            return Tensor::cat(vec![before, patches], 1);
        }
        self.tap_tokens(name, &map, x.clone());
        x
    }

    /// Record a token layer: its patches as the map `map` `[N, C, h, w]`, and its tokens
    /// `[N, T, C]` (what [`Taps::hook_tokens`] records; the CPU engine's taps call it too).
    pub fn tap_tokens(&mut self, name: &str, map: &Tensor<4>, tokens: Tensor<3>) {
        self.tap(name, map);
        if self.maps.last().is_some_and(|(n, _)| n == name) {
            self.tokens.push((name.to_string(), tokens));
        }
    }

    /// The recorded tokens of the token layer `name`.
    pub fn get_tokens(&self, name: &str) -> Option<&Tensor<3>> {
        self.tokens.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Whether the forward pass must run on burn's operations in autodiff (a map's gradient
    /// is asked for).
    pub fn needs_graph(&self) -> bool {
        matches!(self.mode, TapMode::Grad(_))
    }

    /// Whether the map called `name` would be recorded (so a caller can skip making it).
    pub fn wants(&self, name: &str) -> bool {
        match &self.mode {
            TapMode::Off | TapMode::NamesOnly => false,
            TapMode::All => true,
            TapMode::Only(w) => w.iter().any(|n| n == name),
            TapMode::Grad(w) => w == name,
        }
    }

    /// Pass the tap `name` without a map (one that [`Taps::wants`] declined).
    pub fn note(&mut self, name: &str) {
        if !matches!(self.mode, TapMode::Off) {
            self.names.push(name.to_string());
        }
    }

    /// Whether a tap is active at all (to skip work that only serves taps).
    pub fn active(&self) -> bool {
        !matches!(self.mode, TapMode::Off)
    }

    /// The recorded map called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor<4>> {
        self.maps.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Global average pooling `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    burn::tensor::module::adaptive_avg_pool2d(x, [1, 1]).reshape([n, c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// A token layer offered to taps: its patch tokens as a map on their grid (class token
    /// left out), its tokens as they are; in gradient mode the map is a leaf whose gradient
    /// is the objective's with respect to the patch tokens.
    #[test]
    fn token_layers_are_tapped_as_maps_on_their_grid() {
        let (n, h, w, c) = (2, 2, 3, 4);
        let t = 1 + h * w;
        let vals: Vec<f32> = (0..n * t * c).map(|i| i as f32 * 0.5 - 3.0).collect();
        let at = |b: usize, tok: usize, ch: usize| vals[(b * t + tok) * c + ch];
        let x = Tensor::<3>::from_data(TensorData::new(vals.clone(), [n, t, c]), &Device::flex());
        let mut taps = Taps::all();
        let y = taps.hook_tokens("blocks.0", x, (h, w));
        assert_eq!(crate::tensor::to_vec(y).unwrap(), vals);
        assert_eq!(taps.names, ["blocks.0"]);
        let map = crate::tensor::to_vec(taps.get("blocks.0").unwrap().clone()).unwrap();
        assert_eq!(taps.get("blocks.0").unwrap().dims(), [n, c, h, w]);
        for b in 0..n {
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        let m = map[((b * c + ch) * h + i) * w + j];
                        assert_eq!(m, at(b, 1 + i * w + j, ch), "{b} {ch} {i} {j}");
                    }
                }
            }
        }
        let tokens = taps.get_tokens("blocks.0").unwrap();
        assert_eq!(crate::tensor::to_vec(tokens.clone()).unwrap(), vals);
        // declined: passed by name only
        let mut taps = Taps::only(&["other"]);
        let x = Tensor::<3>::from_data(TensorData::new(vals.clone(), [n, t, c]), &Device::flex());
        let _ = taps.hook_tokens("blocks.0", x, (h, w));
        assert!(taps.maps.is_empty() && taps.tokens.is_empty());
        assert_eq!(taps.names, ["blocks.0"]);
        // gradient mode: objective Σ k[t, c] · y[b, t, c] after the layer
        let device = Device::flex().autodiff();
        let k: Vec<f32> = (0..t * c).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::<3>::from_data(TensorData::new(vals.clone(), [n, t, c]), &device);
        let mut taps = Taps::grad("blocks.0");
        let y = taps.hook_tokens("blocks.0", x, (h, w));
        let kt = Tensor::<3>::from_data(TensorData::new(k.clone(), [1, t, c]), &device);
        let grads = (y * kt).sum().backward();
        let leaf = taps.get("blocks.0").unwrap();
        let g = crate::tensor::to_vec(leaf.grad(&grads).unwrap()).unwrap();
        for b in 0..n {
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        let want = k[(1 + i * w + j) * c + ch];
                        assert_eq!(g[((b * c + ch) * h + i) * w + j], want);
                    }
                }
            }
        }
    }

    /// `f` rounded to TF32 (10 mantissa bits, to nearest, ties to even), as tensor cores take
    /// f32 operands.
    fn tf32(f: f32) -> f32 {
        let b = f.to_bits();
        let rest = b & 0x1FFF;
        let mut t = b & !0x1FFF;
        if rest > 0x1000 || (rest == 0x1000 && t & 0x2000 != 0) {
            t += 0x2000;
        }
        f32::from_bits(t)
    }

    #[test]
    fn tf32_split_gives_f32_products_on_tf32_units() {
        let n = 4096;
        let val = |i: usize, s: f32| (i as f32 * s).sin() * 10f32.powi((i % 9) as i32 - 4);
        let x: Vec<f32> = (0..n).map(|i| val(i, 0.7371)).collect();
        let w: Vec<f32> = (0..n).map(|i| val(i, 1.1939) * 0.05).collect();
        let split = |v: &[f32]| {
            let t = Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &Device::flex());
            let (h, l) = tf32_split(t);
            (
                crate::tensor::to_vec(h).unwrap(),
                crate::tensor::to_vec(l).unwrap(),
            )
        };
        let ((xh, xl), (wh, wl)) = (split(&x), split(&w));
        for i in 0..n {
            assert_eq!(xh[i] + xl[i], x[i], "{i}: hi + lo is x exactly");
            assert_eq!(tf32(xh[i]), xh[i], "{i}: hi is exact in TF32");
            assert!(xl[i].abs() <= x[i].abs() * 2f32.powi(-11), "{i}");
        }
        // products through TF32 multipliers (exact products of the rounded operands, in f64)
        let mul = |p: f32, q: f32| tf32(p) as f64 * tf32(q) as f64;
        let (mut plain, mut three) = (0f64, 0f64);
        for i in 0..n {
            let exact = x[i] as f64 * w[i] as f64;
            let rel = |v: f64| (v - exact).abs() / exact.abs().max(1e-30);
            plain = plain.max(rel(mul(x[i], w[i])));
            three = three.max(rel(mul(xh[i], wh[i])
                + mul(xh[i], wl[i])
                + mul(xl[i], wh[i])));
        }
        assert!(plain > 1e-4, "one TF32 product errs up to 2^-11: {plain:e}");
        assert!(
            three < 1e-6,
            "three TF32 products are f32-accurate: {three:e}"
        );
    }

    /// The kernels' naive reference convolution (f64 sums; stride 1, padding 1, no groups) of
    /// one NCHW image with operands rounded by `r`, NCHW out.
    fn conv_ref(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        [c, h, wd]: [usize; 3],
        co: usize,
        r: &dyn Fn(f32) -> f32,
    ) -> Vec<f64> {
        let hw = h * wd;
        let nhwc: Vec<f32> = (0..hw * c).map(|i| r(x[(i % c) * hw + i / c])).collect();
        let w: Vec<f32> = w.iter().map(|v| r(*v)).collect();
        let s = whisker_kernels::ConvShape::symmetric(1, h, wd, 1, 1);
        let out = whisker_kernels::reference::conv2d(
            &nhwc,
            &s,
            c,
            &w,
            Some(b),
            co,
            3,
            3,
            1,
            None,
            whisker_kernels::Act::None,
        );
        (0..co * hw)
            .map(|i| out[(i % hw) * co + i / hw] as f64)
            .collect()
    }

    #[test]
    fn mixed_precision_convolutions_round_operands_and_keep_f32_gradients() {
        let device = Device::flex().autodiff();
        let (c, h, wd, co) = (3, 6, 5, 4);
        let val = |i: usize, s: f32| (i as f32 * s).sin() * (1.0 + (i % 7) as f32);
        let x: Vec<f32> = (0..c * h * wd).map(|i| val(i, 0.917)).collect();
        let w: Vec<f32> = (0..co * c * 9).map(|i| val(i, 1.303) * 0.1).collect();
        let b: Vec<f32> = (0..co).map(|i| 0.25 * i as f32 - 0.3).collect();
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let bf = |f: f32| half::bf16::from_f32(f).to_f32();
        let hf = |f: f32| half::f16::from_f32(f).to_f32();
        let exact = conv_ref(&x, &w, &b, [c, h, wd], co, &|f| f);
        // bf16 on burn-flex: f32 sums of the rounded operands, rounded once (one ulp); f16 on
        // burn-flex accumulates in half (GPUs' tensor cores in f32): each of the 27 additions
        // may round, so the bound is 28 ulp of Σ|x·w|
        for (dt, round, ulp, adds) in [
            (
                FloatDType::BF16,
                &bf as &dyn Fn(f32) -> f32,
                2f64.powi(-8),
                false,
            ),
            (FloatDType::F16, &hf, 2f64.powi(-11), true),
        ] {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, c, h, wd]), &device)
                .require_grad();
            let wt = Tensor::<4>::from_data(TensorData::new(w.clone(), [co, c, 3, 3]), &device)
                .require_grad();
            let bt = Tensor::<1>::from_data(TensorData::new(b.clone(), [co]), &device);
            let y = conv2d_in(
                Arith::Cast(dt),
                xt.clone(),
                wt.clone(),
                Some(bt),
                opts.clone(),
            );
            assert_eq!(y.dtype(), burn::tensor::DType::F32, "{dt:?}: f32 out");
            let got = crate::tensor::to_vec(y.clone()).unwrap();
            // the reduced-precision conv: f32 products of rounded operands, the sum rounded
            // once to the reduced type (one ulp of slack for the order of summation), then
            // the f32 bias
            let want = conv_ref(&x, &w, &vec![0.0; co], [c, h, wd], co, round);
            let abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let wabs: Vec<f32> = w.iter().map(|v| v.abs()).collect();
            let mag = conv_ref(&abs, &wabs, &vec![0.0; co], [c, h, wd], co, round);
            let mut moved = 0f64;
            for (i, g) in got.iter().enumerate() {
                let o = i / (h * wd);
                let (g, r) = (*g as f64 - b[o] as f64, want[i]);
                let bound = if adds {
                    28.0 * ulp * mag[i]
                } else {
                    1.01 * ulp * r.abs()
                };
                assert!((g - r).abs() <= bound + 1e-6, "{dt:?} {i}: {g} vs {r}");
                moved = moved.max((*got.get(i).unwrap() as f64 - exact[i]).abs());
            }
            // and it is not the f32 convolution
            assert!(
                moved > 1e-4,
                "{dt:?}: the operands were rounded ({moved:e})"
            );
            // gradients: f32 tensors of the f32 inputs, close to the f32 convolution's
            let r: Vec<f32> = (0..co * h * wd).map(|i| val(i, 0.51)).collect();
            let rt = Tensor::<4>::from_data(TensorData::new(r.clone(), [1, co, h, wd]), &device);
            let g = (y * rt.clone()).sum().backward();
            let (gx, gw) = (xt.grad(&g).unwrap(), wt.grad(&g).unwrap());
            assert_eq!(gw.dtype(), burn::tensor::DType::F32);
            assert_eq!(gx.dtype(), burn::tensor::DType::F32);
            let x32 = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, c, h, wd]), &device)
                .require_grad();
            let w32 = Tensor::<4>::from_data(TensorData::new(w.clone(), [co, c, 3, 3]), &device)
                .require_grad();
            let y32 = conv2d_in(Arith::F32, x32.clone(), w32.clone(), None, opts.clone());
            let g32 = (y32 * rt).sum().backward();
            for (a, e, what) in [
                (gx, x32.grad(&g32).unwrap().inner(), "input"),
                (gw, w32.grad(&g32).unwrap().inner(), "weight"),
            ] {
                let (a, e) = (
                    crate::tensor::to_vec(a).unwrap(),
                    crate::tensor::to_vec(e).unwrap(),
                );
                let scale = e.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let d = a
                    .iter()
                    .zip(&e)
                    .fold(0f64, |m, (p, q)| m.max((p - q).abs() as f64));
                assert!(
                    d > 1e-7 * scale && d < 16.0 * ulp * scale,
                    "{dt:?} {what} gradient: max |Δ| {d:e} of {scale:e}"
                );
            }
        }
        // linear: x·w + b with rounded operands
        let xl = Tensor::<2>::from_data(TensorData::new(x[..12].to_vec(), [2, 6]), &device);
        let wl = Tensor::<2>::from_data(TensorData::new(w[..18].to_vec(), [6, 3]), &device);
        let bl = Tensor::<1>::from_data(TensorData::new(b[..3].to_vec(), [3]), &device);
        let got = crate::tensor::to_vec(linear_in(Arith::Cast(FloatDType::BF16), xl, wl, Some(bl)))
            .unwrap();
        for r in 0..2 {
            for o in 0..3 {
                let want: f64 = (0..6)
                    .map(|k| bf(x[r * 6 + k]) as f64 * bf(w[k * 3 + o]) as f64)
                    .sum();
                let g = got[r * 3 + o] as f64 - b[o] as f64;
                assert!((g - want).abs() <= 1.01 * 2f64.powi(-8) * want.abs() + 1e-6);
            }
        }
    }
}

//! Vision Transformers ViT-B/16, ViT-B/32 and ViT-L/16 (Dosovitskiy et al. 2021),
//! torchvision's architecture and key names: a patch embedding (a p×p stride-p convolution),
//! a class token, learnt position embeddings, pre-LayerNorm encoder blocks (multi-head
//! self-attention, then a GELU MLP, each added to the residual stream), a final LayerNorm.
//!
//! The feature vector is the class token after the final LayerNorm (`heads.head`'s input).
//! Each block's tokens are tapped as maps on the patch grid (the class token left out), as
//! pytorch-grad-cam's reshape transform does.
//!
//! On the CPU engine: patch embedding, tokens, LayerNorm, pointwise layers and attention ops,
//! forward and backward (input gradients, fine-tuning).

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use super::layers::{Act, BatchNorm, Conv2d, ConvSpec, LayerNorm, Linear, Padding, Taps};
use super::plan::{Builder, Lowered, V};
use super::{Family, ModelSpec};
use crate::data::resize::{resize_matrix_rows, Filter};
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::{Loader, RawTensor};
use std::collections::BTreeMap;
use whisker_kernels::Act as KAct;

/// torchvision's LayerNorm epsilon for ViT.
const EPS: f64 = 1e-6;
/// The input size the position embeddings are learnt for.
const IMAGE: usize = 224;

/// Which ViT: patch size, width, depth, heads, MLP width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
}

/// Multi-head self-attention (PyTorch's `nn.MultiheadAttention`, one packed input
/// projection): `softmax(q·kᵀ/√d)·v` per head, heads concatenated, output projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// q, k and v stacked: `in_proj_weight` `[3C, C]` and `in_proj_bias`.
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    fn load(l: &mut Loader, p: &str, dim: usize, heads: usize) -> Result<Self> {
        Ok(Attention {
            qkv: Linear {
                weight: l.linear_weight(&format!("{p}.in_proj_weight"), 3 * dim, dim)?,
                bias: l.param(&format!("{p}.in_proj_bias"), [3 * dim])?,
            },
            proj: Linear::load(l, &format!("{p}.out_proj"), dim, dim)?,
            heads,
        })
    }

    /// `[N, T, C]` tokens → `[N, T, C]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_tapped(x, &mut Taps::none(), "", (0, 0))
    }

    /// [`Attention::forward`], offering the class token's attention to the patches of the
    /// `gh × gw` grid (the last tokens) under `name`: a map of one channel per head, each
    /// the softmax row of the class token's query (the DINO attention maps).
    pub fn forward_tapped(
        &self,
        x: Tensor<3>,
        taps: &mut Taps,
        name: &str,
        (gh, gw): (usize, usize),
    ) -> Tensor<3> {
        let [n, t, c] = x.dims();
        let (h, d) = (self.heads, c / self.heads);
        let qkv = self
            .qkv
            .forward(x.reshape([n * t, c]))
            .reshape([n, t, 3, h, d])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..n, 0..h, 0..t, 0..d])
                .reshape([n, h, t, d])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        // PyTorch scales q before the product
        let q = q * (1.0 / (d as f64).sqrt());
        let a = softmax(q.matmul(k.swap_dims(2, 3)), 3);
        if !name.is_empty() {
            // (not a map of the residual stream: no gradient taps)
            if taps.wants(name) && !taps.needs_graph() {
                let map = a
                    .clone()
                    .slice([0..n, 0..h, 0..1, t - gh * gw..t])
                    .reshape([n, h, gh, gw])
                    .detach();
                taps.tap(name, &map);
            } else {
                taps.note(name);
            }
        }
        let y = a.matmul(v).swap_dims(1, 2).reshape([n * t, c]);
        self.proj.forward(y).reshape([n, t, c])
    }
}

/// One pre-LayerNorm encoder block: `x + attn(ln_1(x))`, then `+ mlp(ln_2(·))`.
#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Block {
    fn load(l: &mut Loader, p: &str, c: Config) -> Result<Self> {
        Ok(Block {
            ln_1: LayerNorm::load(l, &format!("{p}.ln_1"), c.dim, EPS)?,
            attn: Attention::load(l, &format!("{p}.self_attention"), c.dim, c.heads)?,
            ln_2: LayerNorm::load(l, &format!("{p}.ln_2"), c.dim, EPS)?,
            fc1: Linear::load(l, &format!("{p}.mlp.0"), c.dim, c.mlp)?,
            fc2: Linear::load(l, &format!("{p}.mlp.3"), c.mlp, c.dim)?,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        taps: &mut Taps,
        name: &str,
        grid: (usize, usize),
    ) -> Tensor<3> {
        let [n, t, c] = x.dims();
        let x = x.clone()
            + self
                .attn
                .forward_tapped(self.ln_1.forward(x), taps, name, grid);
        let y = self.ln_2.forward(x.clone()).reshape([n * t, c]);
        let y = self.fc2.forward(Act::Gelu.apply(self.fc1.forward(y)));
        x + y.reshape([n, t, c])
    }
}

#[derive(Module, Debug)]
pub struct Vit {
    /// `conv_proj`: the patch embedding.
    pub patch: Conv2d,
    /// `class_token` `[1, 1, C]` and `encoder.pos_embedding` `[1, 1 + (224/p)², C]`.
    pub class_token: Param<Tensor<3>>,
    pub pos: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    /// `encoder.ln`.
    pub norm: LayerNorm,
    /// `heads.head`.
    pub head: Linear,
}

impl Vit {
    pub fn load(l: &mut Loader, c: Config) -> Result<Self> {
        let grid = IMAGE / c.patch;
        l.begin_unit("conv_proj");
        let patch = Conv2d::load(
            l,
            "conv_proj",
            ConvSpec::new(3, c.dim, c.patch, c.patch)
                .bias(true)
                .padding(Padding::Symmetric(0)),
        )?;
        let class_token = l.param("class_token", [1, 1, c.dim])?;
        let pos = l.param("encoder.pos_embedding", [1, 1 + grid * grid, c.dim])?;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let p = format!("encoder.layers.encoder_layer_{i}");
            l.begin_unit(&p);
            blocks.push(Block::load(l, &p, c)?);
        }
        l.begin_unit("heads");
        let norm = LayerNorm::load(l, "encoder.ln", c.dim, EPS)?;
        let head = Linear::load(l, "heads.head", c.dim, 1000)?;
        Ok(Vit {
            patch,
            class_token,
            pos,
            blocks,
            norm,
            head,
        })
    }
}

macro_rules! vit {
    ($name:literal, $patch:literal, $dim:literal, $depth:literal, $heads:literal, $resize:literal, $params:literal, $file:literal, $sha:literal) => {
        vit!(
            $name,
            $patch,
            $dim,
            $depth,
            $heads,
            $resize,
            $params,
            Normalization::ImageNet,
            Filter::Bilinear,
            tv!($file, $sha)
        )
    };
    ($name:literal, $patch:literal, $dim:literal, $depth:literal, $heads:literal, $resize:literal, $params:literal, $norm:expr, $filter:expr, $weights:expr) => {
        ModelSpec {
            name: $name,
            family: Family::Vit(Config {
                patch: $patch,
                dim: $dim,
                depth: $depth,
                heads: $heads,
                mlp: 4 * $dim,
            }),
            input_size: IMAGE,
            resize: $resize,
            norm: $norm,
            interpolation: $filter,
            params: $params,
            feature_dim: $dim,
            weights: $weights,
        }
    };
}

/// The models of the family, as `whisker models` lists them: torchvision's IMAGENET1K_V1
/// weights and their transforms (bilinear resize to 256, 242 for ViT-L/16, centre crop 224),
/// and timm's ViT-B/16 pretrained on ImageNet-21k and fine-tuned on ImageNet-1k with AugReg
/// (its transform: bicubic resize to 248 — crop fraction 0.9 —, crop 224, mean/std 0.5).
const MODELS: &[ModelSpec] = &[
    vit!(
        "vit_b_16",
        16,
        768,
        12,
        12,
        256,
        86_567_656,
        "vit_b_16-c867db91.pth",
        "c867db91"
    ),
    vit!(
        "vit_b_32",
        32,
        768,
        12,
        12,
        256,
        88_224_232,
        "vit_b_32-d86f8d99.pth",
        "d86f8d99"
    ),
    vit!(
        "vit_l_16",
        16,
        1024,
        24,
        16,
        242,
        304_326_632,
        "vit_l_16-852ce7e3.pth",
        "852ce7e3"
    ),
    vit!(
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        16,
        768,
        12,
        12,
        248,
        86_567_656,
        Normalization::Inception,
        Filter::Bicubic,
        hf!(
            "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
            "model.safetensors"
        )
    ),
];

/// timm's key of a ViT (`blocks.N.attn.qkv`…) → torchvision's; `None`: no timm key.
fn timm_key(k: &str) -> Option<String> {
    let top = [
        ("cls_token", "class_token".to_string()),
        ("pos_embed", "encoder.pos_embedding".to_string()),
    ];
    if let Some((_, to)) = top.iter().find(|(from, _)| *from == k) {
        return Some(to.clone());
    }
    let prefixes = [
        ("patch_embed.proj.", "conv_proj."),
        ("norm.", "encoder.ln."),
        ("head.", "heads.head."),
    ];
    for (from, to) in prefixes {
        if let Some(rest) = k.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = k.strip_prefix("blocks.")?;
    let (i, leaf) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let leaf = match leaf {
        "attn.qkv.weight" => "self_attention.in_proj_weight".to_string(),
        "attn.qkv.bias" => "self_attention.in_proj_bias".to_string(),
        _ => {
            let layers = [
                ("norm1.", "ln_1."),
                ("norm2.", "ln_2."),
                ("attn.proj.", "self_attention.out_proj."),
                ("mlp.fc1.", "mlp.0."),
                ("mlp.fc2.", "mlp.3."),
            ];
            let (from, to) = layers.iter().find(|(f, _)| leaf.starts_with(f))?;
            format!("{to}{}", &leaf[from.len()..])
        }
    };
    Some(format!("encoder.layers.encoder_layer_{i}.{leaf}"))
}

impl super::Definition for Vit {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "heads.head";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        Vit::load(l, c)
    }

    /// timm's key names (`vit_base_patch16_224.*` checkpoints) to torchvision's: the same
    /// network (packed q/k/v, LayerNorm ε 1e-6, exact GELU).
    fn map_keys(_model: &str, keys: &mut BTreeMap<String, RawTensor>) {
        if !keys.contains_key("cls_token") {
            return;
        }
        let old = std::mem::take(keys);
        for (k, v) in old {
            let k = timm_key(&k).unwrap_or(k);
            keys.insert(k, v);
        }
    }

    /// torchvision's `VisionTransformer` (its `vit_*` of the same name, or built from the
    /// sizes for timm's checkpoints); the keys are torchvision's.
    fn pytorch(spec: &ModelSpec, c: Config, _: &mut BTreeMap<String, RawTensor>) -> super::PyTorch {
        let named = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"];
        if named.contains(&spec.name) && spec.input_size == 224 {
            return super::PyTorch::torchvision(spec.name, Self::CLASSIFIER);
        }
        let mut p = super::PyTorch::torchvision("VisionTransformer", Self::CLASSIFIER);
        p.kwargs = vec![
            format!("image_size={}", spec.input_size),
            format!("patch_size={}", c.patch),
            format!("num_layers={}", c.depth),
            format!("num_heads={}", c.heads),
            format!("hidden_dim={}", c.dim),
            format!("mlp_dim={}", c.mlp),
        ];
        p
    }
}

/// The position embeddings `pos` (`[1, prefix + g², C]`: `prefix` leading tokens' — the class
/// token's —, then a `g × g` grid's) for a `gh × gw` patch grid: as they are on the grid they
/// were learnt for; on another, their grid resampled bicubically (Pillow's antialiased
/// filter, which is PyTorch's `interpolate(mode="bicubic", antialias=True)` and timm's
/// `resample_abs_pos_embed`), the leading tokens' left as they are.
pub(super) fn resample_pos(pos: Tensor<3>, prefix: usize, gh: usize, gw: usize) -> Tensor<3> {
    let [_, t, c] = pos.dims();
    let g = ((t - prefix) as f64).sqrt().round() as usize;
    if (gh, gw) == (g, g) {
        return pos;
    }
    let device = pos.device();
    let matrix = |out: usize| {
        let m = resize_matrix_rows(Filter::Bicubic, g, out, 0..out);
        Tensor::<2>::from_data(TensorData::new(m, [out, g]), &device)
    };
    let lead = pos.clone().slice([0..1, 0..prefix, 0..c]);
    let grid = pos.slice([0..1, prefix..t, 0..c]).reshape([g, g * c]);
    // rows, then columns
    let rows = matrix(gh).matmul(grid).reshape([gh, g, c]).swap_dims(0, 1);
    let cols = matrix(gw)
        .matmul(rows.reshape([g, gh * c]))
        .reshape([gw, gh, c]);
    let grid = cols.swap_dims(0, 1).reshape([1, gh * gw, c]);
    Tensor::cat(vec![lead, grid], 1)
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for Vit {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let [n, _, _, _] = x.dims();
        let y = self.patch.forward(x);
        let [_, c, gh, gw] = y.dims();
        let y = y.reshape([n, c, gh * gw]).swap_dims(1, 2);
        let cls = self.class_token.val().expand([n, 1, c]);
        let mut x = Tensor::cat(vec![cls, y], 1) + resample_pos(self.pos.val(), 1, gh, gw);
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("encoder.layers.encoder_layer_{i}");
            x = b.forward(x, taps, &format!("{p}.attention"), (gh, gw));
            x = taps.hook_tokens(&p, x, (gh, gw));
        }
        // the final tokens: `--layer encoder.ln --pool avg` is the mean patch token (timm's
        // `global_pool="avg"`), `--pool cls` the feature vector itself
        let x = taps.hook_tokens(super::FINAL_NORM[0], self.norm.forward(x), (gh, gw));
        x.slice([0..n, 0..1, 0..c]).reshape([n, c])
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.head.forward(f)
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        Vec::new()
    }

    fn fold_bn(&mut self) {}

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let grid = bl.conv(x, &self.patch, None, Act::None, None)?;
        let mut x = bl.tokens(grid, &self.class_token, &self.pos, None)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let y = bl.layer_norm(x, &b.ln_1)?;
            let qkv = bl.pointwise(y, &b.attn.qkv, KAct::None, None, None)?;
            let p = format!("encoder.layers.encoder_layer_{i}");
            bl.tap_attention(format!("{p}.attention"), qkv, b.attn.heads, grid);
            let a = bl.attention(qkv, b.attn.heads)?;
            let x1 = bl.pointwise(a, &b.attn.proj, KAct::None, None, Some(x))?;
            let y = bl.layer_norm(x1, &b.ln_2)?;
            let y = bl.pointwise(y, &b.fc1, KAct::Gelu, None, None)?;
            x = bl.pointwise(y, &b.fc2, KAct::None, None, Some(x1))?;
            bl.tap_tokens(p, x, grid);
        }
        let x = bl.layer_norm(x, &self.norm)?;
        bl.tap_tokens(super::FINAL_NORM[0], x, grid);
        let features = bl.class_token(x);
        bl.classify(features, &self.head)
    }
}

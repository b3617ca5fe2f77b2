//! DINOv2 ViT-S/14, ViT-B/14 and ViT-L/14 (Oquab et al. 2023), with and without register
//! tokens (Darcet et al. 2024): self-supervised vision transformers whose frozen features
//! transfer best. The official checkpoints' architecture and key names (`patch_embed.proj`,
//! `cls_token`, `pos_embed`, `register_tokens`, `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
//! norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm`); timm's (`vit_*_patch14_dinov2`,
//! `vit_*_patch14_reg4_dinov2`: `reg_token`, position embeddings without the class token's)
//! and the torch hub's linear classifiers (`backbone.*`, `linear_head.*`) are mapped to them.
//!
//! Pre-LayerNorm blocks with a layer scale on each branch: `x + γ₁ ⊙ attn(norm1(x))`, then
//! `+ γ₂ ⊙ mlp(norm2(·))`. Registers sit between the class token and the patches, without
//! position embeddings. The position embeddings are learnt for 518-pixel input (a 37×37 patch
//! grid) and resampled to the input's grid as timm does (bicubic, antialiased).
//!
//! The feature vector is DINOv2's linear-probe feature: the class token after the final
//! LayerNorm concatenated with the mean of the patch tokens (2 × width). The checkpoints are
//! feature extractors: the ImageNet classifier (`linear_head`, the official linear head on
//! that feature) is there only when the checkpoint has it; without it the "logits" are the
//! features themselves (timm's identity head) and `Model` refuses to name ImageNet classes.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use super::layers::{BatchNorm, Conv2d, ConvSpec, LayerNorm, Linear, Padding, Taps};
use super::plan::{Builder, Lowered, Scale, V};
use super::vit::{resample_pos, Attention};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::{Loader, RawTensor};
use whisker_kernels::Act as KAct;

/// DINOv2's LayerNorm epsilon.
const EPS: f64 = 1e-6;
const PATCH: usize = 14;
/// The patch grid the position embeddings are learnt for (518-pixel input).
const GRID: usize = 37;

/// Which DINOv2: width, depth, heads, register tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub registers: usize,
}

/// One block: `x + γ₁ ⊙ attn(norm1(x))`, then `+ γ₂ ⊙ mlp(norm2(·))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    /// `ls1.gamma` `[C]`.
    pub ls1: Param<Tensor<1>>,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// `ls2.gamma` `[C]`.
    pub ls2: Param<Tensor<1>>,
}

impl Block {
    fn load(l: &mut Loader, p: &str, c: Config) -> Result<Self> {
        let d = c.dim;
        Ok(Block {
            norm1: LayerNorm::load(l, &format!("{p}.norm1"), d, EPS)?,
            attn: Attention {
                qkv: Linear::load(l, &format!("{p}.attn.qkv"), d, 3 * d)?,
                proj: Linear::load(l, &format!("{p}.attn.proj"), d, d)?,
                heads: c.heads,
            },
            ls1: l.param(&format!("{p}.ls1.gamma"), [d])?,
            norm2: LayerNorm::load(l, &format!("{p}.norm2"), d, EPS)?,
            fc1: Linear::load(l, &format!("{p}.mlp.fc1"), d, 4 * d)?,
            fc2: Linear::load(l, &format!("{p}.mlp.fc2"), 4 * d, d)?,
            ls2: l.param(&format!("{p}.ls2.gamma"), [d])?,
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
        let scale = |g: &Param<Tensor<1>>| g.val().reshape([1, 1, c]);
        let a = self
            .attn
            .forward_tapped(self.norm1.forward(x.clone()), taps, name, grid);
        let x = x + a * scale(&self.ls1);
        let y = self.norm2.forward(x.clone()).reshape([n * t, c]);
        let y = self
            .fc2
            .forward(super::layers::Act::Gelu.apply(self.fc1.forward(y)));
        x + y.reshape([n, t, c]) * scale(&self.ls2)
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V, name: String, grid: V) -> Result<V> {
        let y = bl.layer_norm(x, &self.norm1)?;
        let qkv = bl.pointwise(y, &self.attn.qkv, KAct::None, None, None)?;
        bl.tap_attention(name, qkv, self.attn.heads, grid);
        let a = bl.attention(qkv, self.attn.heads)?;
        let x1 = bl.pointwise(
            a,
            &self.attn.proj,
            KAct::None,
            Some(Scale::of(&self.ls1)?),
            Some(x),
        )?;
        let y = bl.layer_norm(x1, &self.norm2)?;
        let y = bl.pointwise(y, &self.fc1, KAct::Gelu, None, None)?;
        bl.pointwise(
            y,
            &self.fc2,
            KAct::None,
            Some(Scale::of(&self.ls2)?),
            Some(x1),
        )
    }
}

#[derive(Module, Debug)]
pub struct Dinov2 {
    /// `patch_embed.proj`: the 14×14 stride-14 patch embedding.
    pub patch: Conv2d,
    /// `cls_token` `[1, 1, C]`, `pos_embed` `[1, 1 + 37², C]`, `register_tokens` `[1, R, C]`.
    pub cls_token: Param<Tensor<3>>,
    pub pos: Param<Tensor<3>>,
    pub registers: Option<Param<Tensor<3>>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    /// `linear_head`: the official ImageNet linear classifier on the feature `[2C → 1000]`,
    /// when the checkpoint has it.
    pub head: Option<Linear>,
}

impl Dinov2 {
    pub fn load(l: &mut Loader, c: Config) -> Result<Self> {
        l.begin_unit("patch_embed");
        let patch = Conv2d::load(
            l,
            "patch_embed.proj",
            ConvSpec::new(3, c.dim, PATCH, PATCH)
                .bias(true)
                .padding(Padding::Symmetric(0)),
        )?;
        let cls_token = l.param("cls_token", [1, 1, c.dim])?;
        let pos = l.param("pos_embed", [1, 1 + GRID * GRID, c.dim])?;
        let registers = match c.registers {
            0 => None,
            r => Some(l.param("register_tokens", [1, r, c.dim])?),
        };
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let p = format!("blocks.{i}");
            l.begin_unit(&p);
            blocks.push(Block::load(l, &p, c)?);
        }
        l.begin_unit("norm");
        let norm = LayerNorm::load(l, "norm", c.dim, EPS)?;
        // the last unit is the ImageNet classifier (empty without it)
        l.begin_unit("linear_head");
        let head = if l.has("linear_head.weight") {
            Some(Linear::load(l, "linear_head", 2 * c.dim, 1000)?)
        } else {
            None
        };
        Ok(Dinov2 {
            patch,
            cls_token,
            pos,
            registers,
            blocks,
            norm,
            head,
        })
    }

    fn prefix(&self) -> usize {
        1 + self.registers.as_ref().map_or(0, |r| r.dims()[1])
    }
}

macro_rules! dinov2 {
    ($name:literal, $dim:literal, $depth:literal, $heads:literal, $reg:literal, $params:literal, $repo:literal, $file:literal) => {
        ModelSpec {
            name: $name,
            family: Family::Dinov2(Config {
                dim: $dim,
                depth: $depth,
                heads: $heads,
                registers: $reg,
            }),
            input_size: 224,
            resize: 256,
            norm: Normalization::ImageNet,
            interpolation: Filter::Bicubic,
            params: $params,
            feature_dim: 2 * $dim,
            weights: hf!($repo, $file),
        }
    };
}

/// The models of the family, as `whisker models` lists them: timm's copies of the official
/// LVD-142M weights on the Hugging Face hub; DINOv2's evaluation transform (bicubic resize to
/// 256, centre crop 224). Parameters counted with the ImageNet linear head.
const MODELS: &[ModelSpec] = &[
    dinov2!(
        "dinov2_vits14",
        384,
        12,
        6,
        0,
        22_825_192,
        "timm/vit_small_patch14_dinov2.lvd142m",
        "model.safetensors"
    ),
    dinov2!(
        "dinov2_vitb14",
        768,
        12,
        12,
        0,
        88_116_712,
        "timm/vit_base_patch14_dinov2.lvd142m",
        "model.safetensors"
    ),
    dinov2!(
        "dinov2_vitl14",
        1024,
        24,
        16,
        0,
        306_416_616,
        "timm/vit_large_patch14_dinov2.lvd142m",
        "model.safetensors"
    ),
    dinov2!(
        "dinov2_vits14_reg",
        384,
        12,
        6,
        4,
        22_826_728,
        "timm/vit_small_patch14_reg4_dinov2.lvd142m",
        "model.safetensors"
    ),
    dinov2!(
        "dinov2_vitb14_reg",
        768,
        12,
        12,
        4,
        88_119_784,
        "timm/vit_base_patch14_reg4_dinov2.lvd142m",
        "model.safetensors"
    ),
    dinov2!(
        "dinov2_vitl14_reg",
        1024,
        24,
        16,
        4,
        306_420_712,
        "timm/vit_large_patch14_reg4_dinov2.lvd142m",
        "model.safetensors"
    ),
];

impl super::Definition for Dinov2 {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "linear_head";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        Dinov2::load(l, c)
    }

    /// timm's keys (`reg_token`; with registers, position embeddings without the class
    /// token's, which is folded into `cls_token`) and the torch hub's linear classifier
    /// (`backbone.*`, `linear_head.*`) to the official names; the unused `mask_token` dropped.
    fn map_keys(_model: &str, keys: &mut BTreeMap<String, RawTensor>) {
        let hub: Vec<String> = keys
            .keys()
            .filter(|k| k.starts_with("backbone."))
            .cloned()
            .collect();
        for k in hub {
            if let Some(t) = keys.remove(&k) {
                keys.insert(k["backbone.".len()..].to_string(), t);
            }
        }
        keys.remove("mask_token");
        if let Some(reg) = keys.remove("reg_token") {
            keys.insert("register_tokens".into(), reg);
            // timm: no position embedding for the class token (its own folded in); the
            // official layout has one, zero here
            if let Some(pos) = keys.get_mut("pos_embed") {
                if let [1, t, c] = pos.shape[..] {
                    if t == GRID * GRID {
                        let mut data = vec![0f32; c];
                        data.extend_from_slice(&pos.data);
                        *pos = RawTensor {
                            shape: vec![1, t + 1, c],
                            data,
                        };
                    }
                }
            }
        }
    }

    /// timm's `vit_*_patch14[_reg4]_dinov2` (input-size-dependent position embeddings:
    /// `dynamic_img_size=True`, resampled as whisker does) under `backbone.`, the ImageNet
    /// classifier under `linear_head.` (the torch hub classifiers' layout): timm's model gives
    /// tokens, whisker's feature (class token ⊕ mean patch token) is made by the wrapper. With
    /// registers, timm has no position embedding for the class token: it is added to
    /// `cls_token` (as timm's loader does).
    fn pytorch(_: &ModelSpec, c: Config, keys: &mut BTreeMap<String, RawTensor>) -> super::PyTorch {
        if c.registers > 0 {
            if let Some(reg) = keys.remove("register_tokens") {
                keys.insert("reg_token".into(), reg);
            }
            let row = keys
                .get_mut("pos_embed")
                .and_then(|pos| match pos.shape[..] {
                    [1, t, c] if t == 1 + GRID * GRID => {
                        let row: Vec<f32> = pos.data.drain(..c).collect();
                        pos.shape = vec![1, t - 1, c];
                        Some(row)
                    }
                    _ => None,
                });
            if let (Some(row), Some(cls)) = (row, keys.get_mut("cls_token")) {
                cls.data.iter_mut().zip(&row).for_each(|(a, b)| *a += b);
            }
        }
        *keys = std::mem::take(keys)
            .into_iter()
            .map(|(k, t)| {
                if k.starts_with("linear_head.") {
                    (k, t)
                } else {
                    (format!("backbone.{k}"), t)
                }
            })
            .collect();
        let size = match c.dim {
            384 => "small",
            768 => "base",
            1024 => "large",
            _ => "giant",
        };
        let reg = if c.registers > 0 {
            format!("_reg{}", c.registers)
        } else {
            String::new()
        };
        super::PyTorch {
            library: super::Library::Timm,
            constructor: format!("vit_{size}_patch{PATCH}{reg}_dinov2"),
            kwargs: vec!["dynamic_img_size=True".into()],
            classifier: Self::CLASSIFIER.into(),
            token_probe: true,
        }
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for Dinov2 {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let [n, _, _, _] = x.dims();
        let y = self.patch.forward(x);
        let [_, c, gh, gw] = y.dims();
        let y = y.reshape([n, c, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([n, 1, c]);
        let mut x = Tensor::cat(vec![cls, y], 1) + resample_pos(self.pos.val(), 1, gh, gw);
        if let Some(r) = &self.registers {
            let t = 1 + gh * gw;
            let nr = r.dims()[1];
            x = Tensor::cat(
                vec![
                    x.clone().slice([0..n, 0..1, 0..c]),
                    r.val().expand([n, nr, c]),
                    x.slice([0..n, 1..t, 0..c]),
                ],
                1,
            );
        }
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(x, taps, &format!("blocks.{i}.attn"), (gh, gw));
            x = taps.hook_tokens(&format!("blocks.{i}"), x, (gh, gw));
        }
        let x = self.norm.forward(x);
        // the final tokens: `--layer norm --pool cls` is the class token alone (DINOv2's
        // other probe feature), `--pool avg` the mean patch token
        let x = taps.hook_tokens(super::FINAL_NORM[1], x, (gh, gw));
        let [_, t, _] = x.dims();
        let cls = x.clone().slice([0..n, 0..1, 0..c]).reshape([n, c]);
        let mean = x
            .slice([0..n, self.prefix()..t, 0..c])
            .mean_dim(1)
            .reshape([n, c]);
        Tensor::cat(vec![cls, mean], 1)
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        match &self.head {
            Some(h) => h.forward(f),
            None => f,
        }
    }

    fn has_classifier(&self) -> bool {
        self.head.is_some()
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        Vec::new()
    }

    fn fold_bn(&mut self) {}

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let grid = bl.conv(x, &self.patch, None, super::layers::Act::None, None)?;
        let mut x = bl.tokens(grid, &self.cls_token, &self.pos, self.registers.as_ref())?;
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.lower(bl, x, format!("blocks.{i}.attn"), grid)?;
            bl.tap_tokens(format!("blocks.{i}"), x, grid);
        }
        let x = bl.layer_norm(x, &self.norm)?;
        bl.tap_tokens(super::FINAL_NORM[1], x, grid);
        let features = bl.class_and_mean(x, self.prefix());
        match &self.head {
            Some(h) => bl.classify(features, h),
            None => Ok(bl.no_classifier(features)),
        }
    }
}

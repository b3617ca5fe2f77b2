//! ConvNeXt-T/S/B/L (Liu et al. 2022, "A ConvNet for the 2020s"), torchvision's architecture
//! and key names: a 4×4 stride-4 stem, four stages of blocks (7×7 depthwise convolution,
//! LayerNorm over channels, a 4× pointwise MLP with GELU, a per-channel layer scale, the
//! residual), LayerNorm + 2×2 stride-2 convolutions between stages.
//!
//! The feature vector is the input of `classifier.2`: the pooled map after the head's
//! LayerNorm. Stochastic depth is a training-time regulariser of the pretraining; whisker's
//! fine-tuning runs the blocks whole (as torchvision does in `eval()`).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use super::layers::{global_avg_pool, Act, BatchNorm, Conv2d, ConvSpec, LayerNorm, Linear, Taps};
use super::plan::{Builder, Lowered, Scale, V};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::Loader;
use whisker_kernels::Act as KAct;

/// torchvision's LayerNorm epsilon for ConvNeXt.
const EPS: f64 = 1e-6;

/// Channels per stage and blocks per stage of each size.
fn config(size: Size) -> ([usize; 4], [usize; 4]) {
    match size {
        Size::Tiny => ([96, 192, 384, 768], [3, 3, 9, 3]),
        Size::Small => ([96, 192, 384, 768], [3, 3, 27, 3]),
        Size::Base => ([128, 256, 512, 1024], [3, 3, 27, 3]),
        Size::Large => ([192, 384, 768, 1536], [3, 3, 27, 3]),
    }
}

/// One ConvNeXt block: `x + γ ⊙ pw2(gelu(pw1(norm(dw(x)))))`.
#[derive(Module, Debug)]
pub struct Block {
    pub dw: Conv2d,
    pub norm: LayerNorm,
    pub pw1: Linear,
    pub pw2: Linear,
    /// The layer scale γ, `[dim, 1, 1]` as in the checkpoint.
    pub layer_scale: Param<Tensor<3>>,
}

impl Block {
    fn load(l: &mut Loader, p: &str, dim: usize) -> Result<Self> {
        Ok(Block {
            dw: Conv2d::load(
                l,
                &format!("{p}.block.0"),
                ConvSpec::new(dim, dim, 7, 1).groups(dim).bias(true),
            )?,
            norm: LayerNorm::load(l, &format!("{p}.block.2"), dim, EPS)?,
            pw1: Linear::load(l, &format!("{p}.block.3"), dim, 4 * dim)?,
            pw2: Linear::load(l, &format!("{p}.block.5"), 4 * dim, dim)?,
            layer_scale: l.param(&format!("{p}.layer_scale"), [dim, 1, 1])?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let y = self.dw.forward(x.clone()).permute([0, 2, 3, 1]);
        let y = self.norm.forward(y).reshape([n * h * w, c]);
        let y = self.pw2.forward(Act::Gelu.apply(self.pw1.forward(y)));
        let y = y.reshape([n, h, w, c]).permute([0, 3, 1, 2]);
        x + self.layer_scale.val().reshape([1, c, 1, 1]) * y
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<V> {
        let y = bl.conv(x, &self.dw, None, Act::None, None)?;
        let y = bl.layer_norm(y, &self.norm)?;
        let y = bl.pointwise(y, &self.pw1, KAct::Gelu, None, None)?;
        bl.pointwise(
            y,
            &self.pw2,
            KAct::None,
            Some(Scale::of(&self.layer_scale)?),
            Some(x),
        )
    }
}

/// A LayerNorm over channels, then a 2×2 stride-2 convolution (between stages).
#[derive(Module, Debug)]
pub struct Downsample {
    pub norm: LayerNorm,
    pub conv: Conv2d,
}

#[derive(Module, Debug)]
pub struct ConvNeXt {
    /// The 4×4 stride-4 stem and its LayerNorm (`features.0`).
    pub stem: Conv2d,
    pub stem_norm: LayerNorm,
    /// Stage `s` is `features.{2s+1}`; the downsampling after it `features.{2s+2}`.
    pub stages: Vec<Vec<Block>>,
    pub downsample: Vec<Downsample>,
    /// The head's LayerNorm (`classifier.0`) and the classification layer (`classifier.2`).
    pub head_norm: LayerNorm,
    pub fc: Linear,
}

impl ConvNeXt {
    pub fn load(l: &mut Loader, size: Size) -> Result<Self> {
        let (dims, depths) = config(size);
        let patch = |cin, cout, k| {
            ConvSpec::new(cin, cout, k, k)
                .bias(true)
                .padding(super::layers::Padding::Symmetric(0))
        };
        l.begin_unit("features.0");
        let stem = Conv2d::load(l, "features.0.0", patch(3, dims[0], 4))?;
        let stem_norm = LayerNorm::load(l, "features.0.1", dims[0], EPS)?;
        let (mut stages, mut downsample) = (Vec::new(), Vec::new());
        for s in 0..4 {
            let mut blocks = Vec::new();
            for b in 0..depths[s] {
                let p = format!("features.{}.{b}", 2 * s + 1);
                l.begin_unit(&p);
                blocks.push(Block::load(l, &p, dims[s])?);
            }
            stages.push(blocks);
            if s < 3 {
                let p = format!("features.{}", 2 * s + 2);
                l.begin_unit(&p);
                downsample.push(Downsample {
                    norm: LayerNorm::load(l, &format!("{p}.0"), dims[s], EPS)?,
                    conv: Conv2d::load(l, &format!("{p}.1"), patch(dims[s], dims[s + 1], 2))?,
                });
            }
        }
        l.begin_unit("classifier");
        let head_norm = LayerNorm::load(l, "classifier.0", dims[3], EPS)?;
        let fc = Linear::load(l, "classifier.2", dims[3], 1000)?;
        Ok(ConvNeXt {
            stem,
            stem_norm,
            stages,
            downsample,
            head_norm,
            fc,
        })
    }
}

/// The sizes torchvision offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Tiny,
    Small,
    Base,
    Large,
}

/// Which ConvNeXt: its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub size: Size,
}

macro_rules! convnext {
    ($name:literal, $size:ident, $resize:literal, $params:literal, $dim:literal, $file:literal, $sha:literal) => {
        ModelSpec {
            name: $name,
            family: Family::ConvNeXt(Config { size: Size::$size }),
            input_size: 224,
            resize: $resize,
            norm: Normalization::ImageNet,
            interpolation: Filter::Bilinear,
            params: $params,
            feature_dim: $dim,
            weights: tv!($file, $sha),
        }
    };
}

/// The models of the family, as `whisker models` lists them (torchvision's IMAGENET1K_V1
/// weights and their transforms: bilinear resize to 236/230/232, centre crop 224).
const MODELS: &[ModelSpec] = &[
    convnext!(
        "convnext_tiny",
        Tiny,
        236,
        28_589_128,
        768,
        "convnext_tiny-983f1562.pth",
        "983f1562"
    ),
    convnext!(
        "convnext_small",
        Small,
        230,
        50_223_688,
        768,
        "convnext_small-0c510722.pth",
        "0c510722"
    ),
    convnext!(
        "convnext_base",
        Base,
        232,
        88_591_464,
        1024,
        "convnext_base-6075fbad.pth",
        "6075fbad"
    ),
    convnext!(
        "convnext_large",
        Large,
        232,
        197_767_336,
        1536,
        "convnext_large-ea097f82.pth",
        "ea097f82"
    ),
];

impl super::Definition for ConvNeXt {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "classifier.2";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        ConvNeXt::load(l, c.size)
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for ConvNeXt {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let mut x = self.stem_norm.forward_channels(self.stem.forward(x));
        x = taps.hook("features.0", x);
        for (s, blocks) in self.stages.iter().enumerate() {
            for b in blocks {
                x = b.forward(x);
            }
            x = taps.hook(&format!("features.{}", 2 * s + 1), x);
            if let Some(d) = self.downsample.get(s) {
                x = d.conv.forward(d.norm.forward_channels(x));
                x = taps.hook(&format!("features.{}", 2 * s + 2), x);
            }
        }
        self.head_norm.forward(global_avg_pool(x))
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc.forward(f)
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        Vec::new()
    }

    fn fold_bn(&mut self) {}

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let x = bl.conv(x, &self.stem, None, Act::None, None)?;
        let mut x = bl.layer_norm(x, &self.stem_norm)?;
        bl.tap("features.0", x);
        for (s, blocks) in self.stages.iter().enumerate() {
            for b in blocks {
                x = b.lower(bl, x)?;
            }
            bl.tap(format!("features.{}", 2 * s + 1), x);
            if let Some(d) = self.downsample.get(s) {
                let y = bl.layer_norm(x, &d.norm)?;
                x = bl.conv(y, &d.conv, None, Act::None, None)?;
                bl.tap(format!("features.{}", 2 * s + 2), x);
            }
        }
        let pooled = bl.gap(x);
        let features = bl.layer_norm(pooled, &self.head_norm)?;
        bl.classify(features, &self.fc)
    }
}

//! RegNetY (Radosavovic et al. 2020, "Designing Network Design Spaces"), torchvision's
//! architecture and key names: a 3×3 stride-2 stem to 32 channels, four stages of residual
//! bottlenecks (1×1, 3×3 grouped convolution with the stage's group width, squeeze-excitation
//! to a quarter of the block's input width, 1×1; a 1×1 projection of the shortcut where the
//! width or stride changes; ReLU after the sum), average pooling, one linear layer.
//! BatchNorm eps 1e-5, momentum 0.1.
//!
//! The feature vector is the pooled output of the last stage (`fc`'s input).

use burn::module::Module;
use burn::tensor::Tensor;

use super::inverted_residual::SqueezeExcite;
use super::layers::{global_avg_pool, Act, BatchNorm, ConvBnAct, ConvSpec, Linear, Taps};
use super::plan::{Builder, Lowered, V};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::Loader;

const EPS: f64 = 1e-5;
/// The stem's output channels.
const STEM: usize = 32;

/// Which RegNetY: each stage's width and depth, and the group width of the 3×3
/// convolutions (torchvision's `BlockParams.from_init_params`, evaluated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub widths: [usize; 4],
    pub depths: [usize; 4],
    pub group_width: usize,
}

/// One residual bottleneck (torchvision's `ResBottleneckBlock`, bottleneck ratio 1).
#[derive(Module, Debug)]
pub struct Block {
    /// The shortcut's 1×1 projection (and stride), where the width or resolution changes.
    pub proj: Option<ConvBnAct>,
    pub a: ConvBnAct,
    pub b: ConvBnAct,
    pub se: SqueezeExcite,
    /// The last 1×1 convolution, BatchNorm, no activation (ReLU comes after the sum).
    pub c: ConvBnAct,
}

impl Block {
    fn load(
        l: &mut Loader,
        p: &str,
        w_in: usize,
        w_out: usize,
        stride: usize,
        gw: usize,
    ) -> Result<Self> {
        let cba = |l: &mut Loader, key: &str, spec: ConvSpec, act: Act| {
            ConvBnAct::load(
                l,
                &format!("{p}.{key}.0"),
                &format!("{p}.{key}.1"),
                spec,
                EPS,
                act,
            )
        };
        let proj = if w_in != w_out || stride != 1 {
            Some(cba(
                l,
                "proj",
                ConvSpec::new(w_in, w_out, 1, stride),
                Act::None,
            )?)
        } else {
            None
        };
        let a = cba(l, "f.a", ConvSpec::new(w_in, w_out, 1, 1), Act::Relu)?;
        let groups = w_out / gw;
        let b = cba(
            l,
            "f.b",
            ConvSpec::new(w_out, w_out, 3, stride).groups(groups),
            Act::Relu,
        )?;
        // torchvision: `int(round(se_ratio · width_in))`, se_ratio 0.25
        let squeeze = ((w_in as f64) * 0.25).round_ties_even() as usize;
        let se = SqueezeExcite::load(
            l,
            &format!("{p}.f.se"),
            w_out,
            squeeze,
            Act::Relu,
            Act::Sigmoid,
        )?;
        let c = cba(l, "f.c", ConvSpec::new(w_out, w_out, 1, 1), Act::None)?;
        Ok(Block { proj, a, b, se, c })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.proj {
            Some(p) => p.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.se.forward(self.b.forward(self.a.forward(x)));
        Act::Relu.apply(shortcut + self.c.forward(y))
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<V> {
        let shortcut = match &self.proj {
            Some(p) => bl.cba(x, p, None)?,
            None => x,
        };
        let y = bl.cba(x, &self.a, None)?;
        let y = bl.cba(y, &self.b, None)?;
        bl.squeeze_excite(y, &self.se)?;
        // ReLU(c(y) + shortcut): the sum in the convolution's epilogue, before its activation
        bl.conv(y, &self.c.conv, Some(&self.c.bn), Act::Relu, Some(shortcut))
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = Vec::with_capacity(4);
        v.extend(self.proj.as_mut().map(|p| &mut p.bn));
        v.extend([&mut self.a.bn, &mut self.b.bn, &mut self.c.bn]);
        v
    }

    fn fold(&mut self) {
        if let Some(p) = &mut self.proj {
            p.fold();
        }
        self.a.fold();
        self.b.fold();
        self.c.fold();
    }
}

#[derive(Module, Debug)]
pub struct RegNet {
    pub stem: ConvBnAct,
    /// `trunk_output.block{s+1}`.
    pub stages: Vec<Vec<Block>>,
    pub fc: Linear,
}

impl RegNet {
    pub fn load(l: &mut Loader, c: Config) -> Result<Self> {
        let stem = ConvBnAct::load(
            l,
            "stem.0",
            "stem.1",
            ConvSpec::new(3, STEM, 3, 2),
            EPS,
            Act::Relu,
        )?;
        let mut stages = Vec::new();
        let mut w_in = STEM;
        for s in 0..4 {
            let mut blocks = Vec::new();
            for i in 0..c.depths[s] {
                let p = format!("trunk_output.block{}.block{}-{i}", s + 1, s + 1);
                l.begin_unit(&p);
                let stride = if i == 0 { 2 } else { 1 };
                blocks.push(Block::load(
                    l,
                    &p,
                    w_in,
                    c.widths[s],
                    stride,
                    c.group_width,
                )?);
                w_in = c.widths[s];
            }
            stages.push(blocks);
        }
        l.begin_unit("fc");
        let fc = Linear::load(l, "fc", c.widths[3], 1000)?;
        Ok(RegNet { stem, stages, fc })
    }
}

macro_rules! regnet {
    ($name:literal, $widths:expr, $depths:expr, $gw:literal, $params:literal, $file:literal, $sha:literal) => {
        ModelSpec {
            name: $name,
            family: Family::RegNet(Config {
                widths: $widths,
                depths: $depths,
                group_width: $gw,
            }),
            input_size: 224,
            resize: 232,
            norm: Normalization::ImageNet,
            interpolation: Filter::Bilinear,
            params: $params,
            feature_dim: $widths[3],
            weights: tv!($file, $sha),
        }
    };
}

/// The models of the family, as `whisker models` lists them (torchvision's IMAGENET1K_V2
/// weights, its default, and their transforms: bilinear resize to 232, centre crop 224).
const MODELS: &[ModelSpec] = &[
    regnet!(
        "regnet_y_400mf",
        [48, 104, 208, 440],
        [1, 3, 6, 6],
        8,
        4_344_144,
        "regnet_y_400mf-e6988f5f.pth",
        "e6988f5f"
    ),
    regnet!(
        "regnet_y_800mf",
        [64, 144, 320, 784],
        [1, 3, 8, 2],
        16,
        6_432_512,
        "regnet_y_800mf-58fc7688.pth",
        "58fc7688"
    ),
    regnet!(
        "regnet_y_1_6gf",
        [48, 120, 336, 888],
        [2, 6, 17, 2],
        24,
        11_202_430,
        "regnet_y_1_6gf-0d7bc02a.pth",
        "0d7bc02a"
    ),
    regnet!(
        "regnet_y_3_2gf",
        [72, 216, 576, 1512],
        [2, 5, 13, 1],
        24,
        19_436_338,
        "regnet_y_3_2gf-9180c971.pth",
        "9180c971"
    ),
    regnet!(
        "regnet_y_8gf",
        [224, 448, 896, 2016],
        [2, 4, 10, 1],
        56,
        39_381_472,
        "regnet_y_8gf-dc2b1b54.pth",
        "dc2b1b54"
    ),
    regnet!(
        "regnet_y_16gf",
        [224, 448, 1232, 3024],
        [2, 4, 11, 1],
        112,
        83_590_140,
        "regnet_y_16gf-3e4a00f9.pth",
        "3e4a00f9"
    ),
    regnet!(
        "regnet_y_32gf",
        [232, 696, 1392, 3712],
        [2, 5, 12, 1],
        232,
        145_046_770,
        "regnet_y_32gf-8db6d4b5.pth",
        "8db6d4b5"
    ),
];

impl super::Definition for RegNet {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "fc";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        RegNet::load(l, c)
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for RegNet {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        x = taps.hook("stem", x);
        for (s, blocks) in self.stages.iter().enumerate() {
            for b in blocks {
                x = b.forward(x);
            }
            x = taps.hook(&format!("trunk_output.block{}", s + 1), x);
        }
        global_avg_pool(x)
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc.forward(f)
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = vec![&mut self.stem.bn];
        for b in self.stages.iter_mut().flatten() {
            v.extend(b.batchnorms());
        }
        v
    }

    fn fold_bn(&mut self) {
        self.stem.fold();
        self.stages.iter_mut().flatten().for_each(Block::fold);
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let mut x = bl.cba(x, &self.stem, None)?;
        bl.tap("stem", x);
        for (s, blocks) in self.stages.iter().enumerate() {
            for b in blocks {
                x = b.lower(bl, x)?;
            }
            bl.tap(format!("trunk_output.block{}", s + 1), x);
        }
        let features = bl.gap(x);
        bl.classify(features, &self.fc)
    }
}

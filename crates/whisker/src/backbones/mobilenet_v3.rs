//! MobileNetV3 Large and Small (Howard et al. 2019), torchvision's architecture and key
//! names (`features.N.block.*`, `classifier.{0,3}`). BatchNorm eps is 1e-3.
//!
//! The feature vector is the output of `classifier.1` (Hardswish after the first linear
//! layer), the input of the final classification layer.

use burn::module::Module;
use burn::tensor::Tensor;

use super::inverted_residual::{fold_network, network_batchnorms, InvertedResidual, SqueezeExcite};
use super::layers::{global_avg_pool, Act, ConvBnAct, ConvSpec, Linear, Taps};
use super::plan::{Builder, Lowered, V};
use super::Arch as _;
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::Loader;
use whisker_kernels::Act as KAct;

const EPS: f64 = 1e-3;
/// BatchNorm momentum of the running statistics (`--train-bn`), as torchvision's.
const MOMENTUM: f64 = 0.01;

/// One block: in, kernel, expanded, out channels, squeeze-excitation, hardswish, stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cfg {
    pub cin: usize,
    pub kernel: usize,
    pub mid: usize,
    pub cout: usize,
    pub se: bool,
    pub hardswish: bool,
    pub stride: usize,
}

const fn c(
    cin: usize,
    kernel: usize,
    mid: usize,
    cout: usize,
    se: bool,
    hardswish: bool,
    stride: usize,
) -> Cfg {
    Cfg {
        cin,
        kernel,
        mid,
        cout,
        se,
        hardswish,
        stride,
    }
}

const LARGE: [Cfg; 15] = [
    c(16, 3, 16, 16, false, false, 1),
    c(16, 3, 64, 24, false, false, 2),
    c(24, 3, 72, 24, false, false, 1),
    c(24, 5, 72, 40, true, false, 2),
    c(40, 5, 120, 40, true, false, 1),
    c(40, 5, 120, 40, true, false, 1),
    c(40, 3, 240, 80, false, true, 2),
    c(80, 3, 200, 80, false, true, 1),
    c(80, 3, 184, 80, false, true, 1),
    c(80, 3, 184, 80, false, true, 1),
    c(80, 3, 480, 112, true, true, 1),
    c(112, 3, 672, 112, true, true, 1),
    c(112, 5, 672, 160, true, true, 2),
    c(160, 5, 960, 160, true, true, 1),
    c(160, 5, 960, 160, true, true, 1),
];

const SMALL: [Cfg; 11] = [
    c(16, 3, 16, 16, true, false, 2),
    c(16, 3, 72, 24, false, false, 2),
    c(24, 3, 88, 24, false, false, 1),
    c(24, 5, 96, 40, true, true, 2),
    c(40, 5, 240, 40, true, true, 1),
    c(40, 5, 240, 40, true, true, 1),
    c(40, 5, 120, 48, true, true, 1),
    c(48, 5, 144, 48, true, true, 1),
    c(48, 5, 288, 96, true, true, 2),
    c(96, 5, 576, 96, true, true, 1),
    c(96, 5, 576, 96, true, true, 1),
];

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> usize {
    let new = ((v + 4.0) as usize / 8 * 8).max(8);
    if (new as f64) < 0.9 * v {
        new + 8
    } else {
        new
    }
}

/// A block with torchvision's MobileNetV3 key names (`features.N.block.*`).
fn load_block(l: &mut Loader, p: &str, c: Cfg) -> Result<InvertedResidual> {
    let Cfg {
        cin,
        kernel: k,
        mid,
        cout,
        se,
        hardswish: hs,
        stride,
    } = c;
    let act = if hs { Act::Hardswish } else { Act::Relu };
    let mut i = 0;
    let expand = if mid != cin {
        let e = ConvBnAct::load(
            l,
            &format!("{p}.block.0.0"),
            &format!("{p}.block.0.1"),
            ConvSpec::new(cin, mid, 1, 1),
            EPS,
            act,
        )?;
        i += 1;
        Some(e)
    } else {
        None
    };
    let depthwise = ConvBnAct::load(
        l,
        &format!("{p}.block.{i}.0"),
        &format!("{p}.block.{i}.1"),
        ConvSpec::new(mid, mid, k, stride).groups(mid),
        EPS,
        act,
    )?;
    i += 1;
    let se = if se {
        let sq = make_divisible((mid / 4) as f64);
        let s = SqueezeExcite::load(
            l,
            &format!("{p}.block.{i}"),
            mid,
            sq,
            Act::Relu,
            Act::Hardsigmoid,
        )?;
        i += 1;
        Some(s)
    } else {
        None
    };
    let project = ConvBnAct::load(
        l,
        &format!("{p}.block.{i}.0"),
        &format!("{p}.block.{i}.1"),
        ConvSpec::new(mid, cout, 1, 1),
        EPS,
        Act::None,
    )?;
    Ok(InvertedResidual {
        expand,
        depthwise,
        se,
        project,
        residual: stride == 1 && cin == cout,
    })
}

#[derive(Module, Debug)]
pub struct MobileNetV3 {
    pub stem: ConvBnAct,
    pub blocks: Vec<InvertedResidual>,
    pub head: ConvBnAct,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl MobileNetV3 {
    pub fn load(l: &mut Loader, large: bool) -> Result<Self> {
        let cfgs: &[Cfg] = if large { &LARGE } else { &SMALL };
        let (last, hidden) = if large { (960, 1280) } else { (576, 1024) };
        let stem = ConvBnAct::load(
            l,
            "features.0.0",
            "features.0.1",
            ConvSpec::new(3, 16, 3, 2),
            EPS,
            Act::Hardswish,
        )?;
        let mut blocks = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            l.begin_unit(&format!("features.{}", i + 1));
            blocks.push(load_block(l, &format!("features.{}", i + 1), *c)?);
        }
        let n = cfgs.len() + 1;
        let cin = cfgs[cfgs.len() - 1].cout;
        l.begin_unit(&format!("features.{n}"));
        let head = ConvBnAct::load(
            l,
            &format!("features.{n}.0"),
            &format!("features.{n}.1"),
            ConvSpec::new(cin, last, 1, 1),
            EPS,
            Act::Hardswish,
        )?;
        let mut m = MobileNetV3 {
            stem,
            blocks,
            head,
            fc1: {
                l.begin_unit("classifier.0");
                Linear::load(l, "classifier.0", last, hidden)?
            },
            fc2: {
                l.begin_unit("classifier.3");
                Linear::load(l, "classifier.3", hidden, 1000)?
            },
        };
        // torchvision's MobileNetV3 BatchNorms: momentum 0.01
        for bn in m.batchnorms() {
            bn.momentum = MOMENTUM;
        }
        Ok(m)
    }
}

/// Which MobileNetV3: large or small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub large: bool,
}

/// The models of the family, as `whisker models` lists them.
const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "mobilenet_v3_large",
        family: Family::MobileNetV3(Config { large: true }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 5_483_032,
        feature_dim: 1280,
        weights: tv!("mobilenet_v3_large-8738ca79.pth", "8738ca79"),
    },
    ModelSpec {
        name: "mobilenet_v3_small",
        family: Family::MobileNetV3(Config { large: false }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 2_542_856,
        feature_dim: 1024,
        weights: tv!("mobilenet_v3_small-047dcff4.pth", "047dcff4"),
    },
];

impl super::Definition for MobileNetV3 {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "classifier.3";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        MobileNetV3::load(l, c.large)
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for MobileNetV3 {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        x = taps.hook("features.0", x);
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(x);
            if taps.active() {
                x = taps.hook(&format!("features.{}", i + 1), x);
            }
        }
        x = self.head.forward(x);
        if taps.active() {
            x = taps.hook(&format!("features.{}", self.blocks.len() + 1), x);
        }
        Act::Hardswish.apply(self.fc1.forward(global_avg_pool(x)))
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(f)
    }

    /// Every BatchNorm, in network order.
    fn batchnorms(&mut self) -> Vec<&mut crate::backbones::layers::BatchNorm> {
        network_batchnorms(&mut self.stem, &mut self.blocks, &mut self.head)
    }

    /// Fold every BatchNorm into its convolution (inference only).
    fn fold_bn(&mut self) {
        fold_network(&mut self.stem, &mut self.blocks, &mut self.head);
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let x = bl.mbconv_net(x, &self.stem, &self.blocks, &self.head, &|i| {
            format!("features.{i}")
        })?;
        let g = bl.gap(x);
        let features = bl.linear(g, &self.fc1, KAct::Hardswish, None)?;
        bl.classify(features, &self.fc2)
    }
}

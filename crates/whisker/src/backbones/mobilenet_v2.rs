//! MobileNetV2 (Sandler et al. 2018), torchvision's architecture and key names
//! (`features.N.conv.*`, `classifier.1`).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;

use super::inverted_residual::{fold_network, network_batchnorms, InvertedResidual};
use super::layers::{global_avg_pool, Act, BatchNorm, ConvBnAct, ConvSpec, Linear, Taps};
use super::plan::{Builder, Lowered, V};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::keymap::{parse_block, rename_timm, split_leaf, TimmBlocks};
use crate::weights::{Loader, RawTensor};

const EPS: f64 = 1e-5;
/// One stage of MobileNetV2 (the paper's table 2).
struct Stage {
    /// Expansion ratio t.
    expand: usize,
    /// Output channels c.
    cout: usize,
    /// Repeats n.
    repeats: usize,
    /// Stride s of the first block.
    stride: usize,
}

const fn stage(expand: usize, cout: usize, repeats: usize, stride: usize) -> Stage {
    Stage {
        expand,
        cout,
        repeats,
        stride,
    }
}

const SETTINGS: [Stage; 7] = [
    stage(1, 16, 1, 1),
    stage(6, 24, 2, 2),
    stage(6, 32, 3, 2),
    stage(6, 64, 4, 2),
    stage(6, 96, 3, 1),
    stage(6, 160, 3, 2),
    stage(6, 320, 1, 1),
];

/// A block with torchvision's MobileNetV2 key names (`features.N.conv.*`).
fn load_block(
    l: &mut Loader,
    p: &str,
    cin: usize,
    cout: usize,
    stride: usize,
    t: usize,
) -> Result<InvertedResidual> {
    let mid = cin * t;
    let (expand, base) = if t != 1 {
        let e = ConvBnAct::load(
            l,
            &format!("{p}.conv.0.0"),
            &format!("{p}.conv.0.1"),
            ConvSpec::new(cin, mid, 1, 1),
            EPS,
            Act::Relu6,
        )?;
        (Some(e), 1)
    } else {
        (None, 0)
    };
    let depthwise = ConvBnAct::load(
        l,
        &format!("{p}.conv.{base}.0"),
        &format!("{p}.conv.{base}.1"),
        ConvSpec::new(mid, mid, 3, stride).groups(mid),
        EPS,
        Act::Relu6,
    )?;
    let project = ConvBnAct::load(
        l,
        &format!("{p}.conv.{}", base + 1),
        &format!("{p}.conv.{}", base + 2),
        ConvSpec::new(mid, cout, 1, 1),
        EPS,
        Act::None,
    )?;
    Ok(InvertedResidual {
        expand,
        depthwise,
        se: None,
        project,
        residual: stride == 1 && cin == cout,
    })
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub stem: ConvBnAct,
    pub blocks: Vec<InvertedResidual>,
    pub head: ConvBnAct,
    pub fc: Linear,
}

impl MobileNetV2 {
    pub fn load(l: &mut Loader) -> Result<Self> {
        let stem = ConvBnAct::load(
            l,
            "features.0.0",
            "features.0.1",
            ConvSpec::new(3, 32, 3, 2),
            EPS,
            Act::Relu6,
        )?;
        let mut blocks = Vec::new();
        let mut cin = 32;
        let mut idx = 1;
        for Stage {
            expand: t,
            cout: c,
            repeats: n,
            stride: s,
        } in SETTINGS
        {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                l.begin_unit(&format!("features.{idx}"));
                blocks.push(load_block(
                    l,
                    &format!("features.{idx}"),
                    cin,
                    c,
                    stride,
                    t,
                )?);
                cin = c;
                idx += 1;
            }
        }
        l.begin_unit(&format!("features.{idx}"));
        let head = ConvBnAct::load(
            l,
            &format!("features.{idx}.0"),
            &format!("features.{idx}.1"),
            ConvSpec::new(cin, 1280, 1, 1),
            EPS,
            Act::Relu6,
        )?;
        l.begin_unit("classifier.1");
        let fc = Linear::load(l, "classifier.1", 1280, 1000)?;
        Ok(MobileNetV2 {
            stem,
            blocks,
            head,
            fc,
        })
    }
}

/// MobileNetV2 has one configuration (width 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config;

/// The models of the family, as `whisker models` lists them.
const MODELS: &[ModelSpec] = &[ModelSpec {
    name: "mobilenet_v2",
    family: Family::MobileNetV2(Config),
    input_size: 224,
    resize: 256,
    norm: Normalization::ImageNet,
    interpolation: Filter::Bilinear,
    params: 3_504_872,
    feature_dim: 1280,
    weights: tv!("mobilenet_v2-b0353104.pth", "b0353104"),
}];

impl super::Definition for MobileNetV2 {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "classifier.1";

    fn map_keys(_model: &str, keys: &mut BTreeMap<String, RawTensor>) {
        rename_timm(keys, timm_mnv2);
    }

    fn build(l: &mut Loader, _: Config) -> Result<Self> {
        MobileNetV2::load(l)
    }
}

/// timm's `mobilenetv2_100` key → torchvision's name.
fn timm_mnv2(k: &str, blocks: &TimmBlocks) -> Option<String> {
    let nblocks = blocks.len();
    let top = [
        ("conv_stem.", "features.0.0.".to_string()),
        ("bn1.", "features.0.1.".to_string()),
        ("conv_head.", format!("features.{}.0.", nblocks + 1)),
        ("bn2.", format!("features.{}.1.", nblocks + 1)),
        ("classifier.", "classifier.1.".to_string()),
    ];
    for (a, b) in top {
        if let Some(r) = k.strip_prefix(a) {
            return Some(format!("{b}{r}"));
        }
    }
    let (s, i, rest) = parse_block(k)?;
    let n = blocks.flat(s, i) + 1;
    let (layer, leaf) = split_leaf(rest);
    let first = s == 0;
    let name = match (first, layer) {
        (true, "conv_dw") => "conv.0.0",
        (true, "bn1") => "conv.0.1",
        (true, "conv_pw") => "conv.1",
        (true, "bn2") => "conv.2",
        (false, "conv_pw") => "conv.0.0",
        (false, "bn1") => "conv.0.1",
        (false, "conv_dw") => "conv.1.0",
        (false, "bn2") => "conv.1.1",
        (false, "conv_pwl") => "conv.2",
        (false, "bn3") => "conv.3",
        _ => return None,
    };
    Some(format!("features.{n}.{name}.{leaf}"))
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for MobileNetV2 {
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
        global_avg_pool(x)
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc.forward(f)
    }

    /// Every BatchNorm, in network order.
    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
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
        let features = bl.gap(x);
        bl.classify(features, &self.fc)
    }
}

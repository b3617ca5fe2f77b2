//! EfficientNetV2-S/M/L (Tan & Le 2021), torchvision's architecture and key names: a 3×3
//! stride-2 stem, stages of fused MBConv blocks (a full k×k convolution in place of the 1×1
//! expansion and the depthwise convolution) then stages of MBConv blocks with
//! squeeze-excitation, a 1×1 head to 1280 channels; SiLU throughout, BatchNorm eps 1e-3.
//!
//! The feature vector is the pooled map after the head (`classifier.1`'s input).
//! Stochastic depth is a training-time regulariser of the pretraining; whisker's fine-tuning
//! runs the blocks whole (as torchvision does in `eval()`).

use burn::module::Module;
use burn::tensor::Tensor;

use super::inverted_residual::{InvertedResidual, SqueezeExcite};
use super::layers::{global_avg_pool, Act, BatchNorm, ConvBnAct, ConvSpec, Linear, Taps};
use super::plan::{Builder, Lowered, V};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::Loader;

const EPS: f64 = 1e-3;

/// One stage: fused or not, expansion ratio, kernel, stride, in and out channels, blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub fused: bool,
    pub expand: usize,
    pub kernel: usize,
    pub stride: usize,
    pub cin: usize,
    pub cout: usize,
    pub blocks: usize,
}

const fn f(
    expand: usize,
    kernel: usize,
    stride: usize,
    cin: usize,
    cout: usize,
    n: usize,
) -> Stage {
    Stage {
        fused: true,
        expand,
        kernel,
        stride,
        cin,
        cout,
        blocks: n,
    }
}

const fn m(
    expand: usize,
    kernel: usize,
    stride: usize,
    cin: usize,
    cout: usize,
    n: usize,
) -> Stage {
    Stage {
        fused: false,
        ..f(expand, kernel, stride, cin, cout, n)
    }
}

/// torchvision's `_efficientnet_conf` for each size.
const S: [Stage; 6] = [
    f(1, 3, 1, 24, 24, 2),
    f(4, 3, 2, 24, 48, 4),
    f(4, 3, 2, 48, 64, 4),
    m(4, 3, 2, 64, 128, 6),
    m(6, 3, 1, 128, 160, 9),
    m(6, 3, 2, 160, 256, 15),
];
const M: [Stage; 7] = [
    f(1, 3, 1, 24, 24, 3),
    f(4, 3, 2, 24, 48, 5),
    f(4, 3, 2, 48, 80, 5),
    m(4, 3, 2, 80, 160, 7),
    m(6, 3, 1, 160, 176, 14),
    m(6, 3, 2, 176, 304, 18),
    m(6, 3, 1, 304, 512, 5),
];
const L: [Stage; 7] = [
    f(1, 3, 1, 32, 32, 4),
    f(4, 3, 2, 32, 64, 7),
    f(4, 3, 2, 64, 96, 7),
    m(4, 3, 2, 96, 192, 10),
    m(6, 3, 1, 192, 224, 19),
    m(6, 3, 2, 224, 384, 25),
    m(6, 3, 1, 384, 640, 7),
];

/// The head's channels (`last_channel`).
const HEAD: usize = 1280;

/// The sizes torchvision offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    S,
    M,
    L,
}

/// The stages of a size.
pub fn stages(size: Size) -> &'static [Stage] {
    match size {
        Size::S => &S,
        Size::M => &M,
        Size::L => &L,
    }
}

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: usize) -> usize {
    let new = ((v + 4) / 8 * 8).max(8);
    if (new as f64) < 0.9 * v as f64 {
        new + 8
    } else {
        new
    }
}

/// A fused MBConv block: a k×k convolution (with the stride) expanding the channels, SiLU,
/// then a linear 1×1 projection — or, without expansion, the k×k convolution alone (SiLU
/// after it) — and the identity added when the shapes allow.
#[derive(Module, Debug)]
pub struct FusedMBConv {
    pub expand: ConvBnAct,
    pub project: Option<ConvBnAct>,
    pub residual: bool,
}

impl FusedMBConv {
    fn load(l: &mut Loader, p: &str, s: Stage, cin: usize, stride: usize) -> Result<Self> {
        let k = s.kernel;
        let cba = |l: &mut Loader, i: usize, spec: ConvSpec, act: Act| {
            ConvBnAct::load(
                l,
                &format!("{p}.block.{i}.0"),
                &format!("{p}.block.{i}.1"),
                spec,
                EPS,
                act,
            )
        };
        let (expand, project) = if s.expand == 1 {
            (
                cba(l, 0, ConvSpec::new(cin, s.cout, k, stride), Act::Silu)?,
                None,
            )
        } else {
            let mid = make_divisible(cin * s.expand);
            let e = cba(l, 0, ConvSpec::new(cin, mid, k, stride), Act::Silu)?;
            let p = cba(l, 1, ConvSpec::new(mid, s.cout, 1, 1), Act::None)?;
            (e, Some(p))
        };
        Ok(FusedMBConv {
            expand,
            project,
            residual: stride == 1 && cin == s.cout,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = self.expand.forward(x.clone());
        if let Some(p) = &self.project {
            y = p.forward(y);
        }
        if self.residual {
            y + x
        } else {
            y
        }
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<V> {
        let res = self.residual.then_some(x);
        match &self.project {
            // the residual joins the projection's epilogue (no activation after it)
            Some(p) => {
                let y = bl.cba(x, &self.expand, None)?;
                bl.cba(y, p, res)
            }
            // the residual comes after the SiLU: an addition of its own
            None => {
                let y = bl.cba(x, &self.expand, None)?;
                match res {
                    Some(r) => bl.add(y, r),
                    None => Ok(y),
                }
            }
        }
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = vec![&mut self.expand.bn];
        v.extend(self.project.as_mut().map(|p| &mut p.bn));
        v
    }

    fn fold(&mut self) {
        self.expand.fold();
        if let Some(p) = &mut self.project {
            p.fold();
        }
    }
}

/// An MBConv block with torchvision's key names: 1×1 expansion (`block.0`), depthwise
/// (`block.1`), squeeze-excitation to a quarter of the block's input channels (`block.2`,
/// SiLU and sigmoid), 1×1 projection (`block.3`).
fn load_mbconv(
    l: &mut Loader,
    p: &str,
    s: Stage,
    cin: usize,
    stride: usize,
) -> Result<InvertedResidual> {
    let mid = make_divisible(cin * s.expand);
    let cba = |l: &mut Loader, i: usize, spec: ConvSpec, act: Act| {
        ConvBnAct::load(
            l,
            &format!("{p}.block.{i}.0"),
            &format!("{p}.block.{i}.1"),
            spec,
            EPS,
            act,
        )
    };
    let expand = cba(l, 0, ConvSpec::new(cin, mid, 1, 1), Act::Silu)?;
    let depthwise = cba(
        l,
        1,
        ConvSpec::new(mid, mid, s.kernel, stride).groups(mid),
        Act::Silu,
    )?;
    let se = SqueezeExcite::load(
        l,
        &format!("{p}.block.2"),
        mid,
        (cin / 4).max(1),
        Act::Silu,
        Act::Sigmoid,
    )?;
    let project = cba(l, 3, ConvSpec::new(mid, s.cout, 1, 1), Act::None)?;
    Ok(InvertedResidual {
        expand: Some(expand),
        depthwise,
        se: Some(se),
        project,
        residual: stride == 1 && cin == s.cout,
    })
}

#[derive(Module, Debug)]
pub struct EfficientNetV2 {
    /// `features.0`.
    pub stem: ConvBnAct,
    /// The fused stages (`features.1` …), then the MBConv stages after them.
    pub fused: Vec<Vec<FusedMBConv>>,
    pub mbconv: Vec<Vec<InvertedResidual>>,
    /// The 1×1 head to 1280 channels (the last `features.N`).
    pub head: ConvBnAct,
    /// `classifier.1`.
    pub fc: Linear,
}

impl EfficientNetV2 {
    pub fn load(l: &mut Loader, size: Size) -> Result<Self> {
        let st = stages(size);
        l.begin_unit("features.0");
        let stem = ConvBnAct::load(
            l,
            "features.0.0",
            "features.0.1",
            ConvSpec::new(3, st[0].cin, 3, 2),
            EPS,
            Act::Silu,
        )?;
        let (mut fused, mut mbconv) = (Vec::new(), Vec::new());
        for (i, s) in st.iter().enumerate() {
            let (mut fb, mut mb) = (Vec::new(), Vec::new());
            for j in 0..s.blocks {
                let p = format!("features.{}.{j}", i + 1);
                l.begin_unit(&p);
                let (cin, stride) = if j == 0 {
                    (s.cin, s.stride)
                } else {
                    (s.cout, 1)
                };
                if s.fused {
                    fb.push(FusedMBConv::load(l, &p, *s, cin, stride)?);
                } else {
                    mb.push(load_mbconv(l, &p, *s, cin, stride)?);
                }
            }
            if s.fused {
                fused.push(fb);
            } else {
                mbconv.push(mb);
            }
        }
        let n = st.len() + 1;
        l.begin_unit(&format!("features.{n}"));
        let head = ConvBnAct::load(
            l,
            &format!("features.{n}.0"),
            &format!("features.{n}.1"),
            ConvSpec::new(st[st.len() - 1].cout, HEAD, 1, 1),
            EPS,
            Act::Silu,
        )?;
        l.begin_unit("classifier.1");
        let fc = Linear::load(l, "classifier.1", HEAD, 1000)?;
        Ok(EfficientNetV2 {
            stem,
            fused,
            mbconv,
            head,
            fc,
        })
    }

    /// The tap name of stage `s` (0: the stem; the last: the head).
    fn stage_name(s: usize) -> String {
        format!("features.{s}")
    }
}

/// Which EfficientNetV2: its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub size: Size,
}

macro_rules! effnetv2 {
    ($name:literal, $size:ident, $input:literal, $norm:ident, $filter:ident, $params:literal, $file:literal, $sha:literal) => {
        ModelSpec {
            name: $name,
            family: Family::EfficientNetV2(Config { size: Size::$size }),
            input_size: $input,
            resize: $input,
            norm: Normalization::$norm,
            interpolation: Filter::$filter,
            params: $params,
            feature_dim: HEAD,
            weights: tv!($file, $sha),
        }
    };
}

/// The models of the family, as `whisker models` lists them (torchvision's IMAGENET1K_V1
/// weights and their transforms: resize to the crop size itself, then the crop; V2-L's
/// bicubic with mean/std 0.5).
const MODELS: &[ModelSpec] = &[
    effnetv2!(
        "efficientnet_v2_s",
        S,
        384,
        ImageNet,
        Bilinear,
        21_458_488,
        "efficientnet_v2_s-dd5fe13b.pth",
        "dd5fe13b"
    ),
    effnetv2!(
        "efficientnet_v2_m",
        M,
        480,
        ImageNet,
        Bilinear,
        54_139_356,
        "efficientnet_v2_m-dc08266a.pth",
        "dc08266a"
    ),
    effnetv2!(
        "efficientnet_v2_l",
        L,
        480,
        Inception,
        Bicubic,
        118_515_272,
        "efficientnet_v2_l-59c71312.pth",
        "59c71312"
    ),
];

impl super::Definition for EfficientNetV2 {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "classifier.1";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        EfficientNetV2::load(l, c.size)
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for EfficientNetV2 {
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        x = taps.hook(&Self::stage_name(0), x);
        let mut s = 1;
        for stage in &self.fused {
            for b in stage {
                x = b.forward(x);
            }
            x = taps.hook(&Self::stage_name(s), x);
            s += 1;
        }
        for stage in &self.mbconv {
            for b in stage {
                x = b.forward(x);
            }
            x = taps.hook(&Self::stage_name(s), x);
            s += 1;
        }
        x = self.head.forward(x);
        x = taps.hook(&Self::stage_name(s), x);
        global_avg_pool(x)
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc.forward(f)
    }

    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = vec![&mut self.stem.bn];
        for b in self.fused.iter_mut().flatten() {
            v.extend(b.batchnorms());
        }
        for b in self.mbconv.iter_mut().flatten() {
            v.extend(b.batchnorms());
        }
        v.push(&mut self.head.bn);
        v
    }

    fn fold_bn(&mut self) {
        self.stem.fold();
        self.fused.iter_mut().flatten().for_each(FusedMBConv::fold);
        self.mbconv
            .iter_mut()
            .flatten()
            .for_each(InvertedResidual::fold);
        self.head.fold();
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let mut x = bl.cba(x, &self.stem, None)?;
        bl.tap(Self::stage_name(0), x);
        let mut s = 1;
        for stage in &self.fused {
            for b in stage {
                x = b.lower(bl, x)?;
            }
            bl.tap(Self::stage_name(s), x);
            s += 1;
        }
        for stage in &self.mbconv {
            for b in stage {
                x = bl.inverted_residual(x, b)?;
            }
            bl.tap(Self::stage_name(s), x);
            s += 1;
        }
        x = bl.cba(x, &self.head, None)?;
        bl.tap(Self::stage_name(s), x);
        let features = bl.gap(x);
        bl.classify(features, &self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expanded channels torchvision computes (`_make_divisible(cin · ratio, 8)`).
    #[test]
    fn expanded_channels_are_torchvisions() {
        assert_eq!(make_divisible(24 * 4), 96);
        assert_eq!(make_divisible(3), 8);
        assert_eq!(make_divisible(13), 16);
        // stage counts: S 40 blocks, M 57, L 79
        let blocks = |s: Size| stages(s).iter().map(|s| s.blocks).sum::<usize>();
        assert_eq!(
            (blocks(Size::S), blocks(Size::M), blocks(Size::L)),
            (40, 57, 79)
        );
    }
}

//! MobileNetV3 Large and Small (Howard et al. 2019), torchvision's architecture and key
//! names (`features.N.block.*`, `classifier.{0,3}`). BatchNorm eps is 1e-3.
//!
//! The feature vector is the output of `classifier.1` (Hardswish after the first linear
//! layer), the input of the final classification layer.

use burn::module::Module;
use burn::tensor::Tensor;

use super::layers::{global_avg_pool, hardsigmoid, Act, Conv2d, ConvBnAct, ConvSpec, Linear, Taps};
use crate::error::Result;
use crate::weights::Loader;

const EPS: f64 = 1e-3;

/// (in, kernel, expanded, out, squeeze-excite, hardswish, stride)
type Cfg = (usize, usize, usize, usize, bool, bool, usize);

const LARGE: [Cfg; 15] = [
    (16, 3, 16, 16, false, false, 1),
    (16, 3, 64, 24, false, false, 2),
    (24, 3, 72, 24, false, false, 1),
    (24, 5, 72, 40, true, false, 2),
    (40, 5, 120, 40, true, false, 1),
    (40, 5, 120, 40, true, false, 1),
    (40, 3, 240, 80, false, true, 2),
    (80, 3, 200, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 480, 112, true, true, 1),
    (112, 3, 672, 112, true, true, 1),
    (112, 5, 672, 160, true, true, 2),
    (160, 5, 960, 160, true, true, 1),
    (160, 5, 960, 160, true, true, 1),
];

const SMALL: [Cfg; 11] = [
    (16, 3, 16, 16, true, false, 2),
    (16, 3, 72, 24, false, false, 2),
    (24, 3, 88, 24, false, false, 1),
    (24, 5, 96, 40, true, true, 2),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 120, 48, true, true, 1),
    (48, 5, 144, 48, true, true, 1),
    (48, 5, 288, 96, true, true, 2),
    (96, 5, 576, 96, true, true, 1),
    (96, 5, 576, 96, true, true, 1),
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

#[derive(Module, Debug)]
pub struct SqueezeExcite {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
}

impl SqueezeExcite {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, _, _] = x.dims();
        let s = global_avg_pool(x.clone()).reshape([n, c, 1, 1]);
        let s = Act::Relu.apply(self.fc1.forward(s));
        let s = hardsigmoid(self.fc2.forward(s));
        x * s
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub expand: Option<ConvBnAct>,
    pub depthwise: ConvBnAct,
    pub se: Option<SqueezeExcite>,
    pub project: ConvBnAct,
    pub residual: bool,
}

impl Block {
    fn load(l: &mut Loader, p: &str, c: Cfg) -> Result<Self> {
        let (cin, k, mid, cout, se, hs, stride) = c;
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
            let s = SqueezeExcite {
                fc1: Conv2d::load(
                    l,
                    &format!("{p}.block.{i}.fc1"),
                    ConvSpec::new(mid, sq, 1, 1).bias(true),
                )?,
                fc2: Conv2d::load(
                    l,
                    &format!("{p}.block.{i}.fc2"),
                    ConvSpec::new(sq, mid, 1, 1).bias(true),
                )?,
            };
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
        Ok(Block {
            expand,
            depthwise,
            se,
            project,
            residual: stride == 1 && cin == cout,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let Some(e) = &self.expand {
            y = e.forward(y);
        }
        y = self.depthwise.forward(y);
        if let Some(se) = &self.se {
            y = se.forward(y);
        }
        y = self.project.forward(y);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV3 {
    pub stem: ConvBnAct,
    pub blocks: Vec<Block>,
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
            blocks.push(Block::load(l, &format!("features.{}", i + 1), *c)?);
        }
        let n = cfgs.len() + 1;
        let cin = cfgs[cfgs.len() - 1].3;
        l.begin_unit(&format!("features.{n}"));
        let head = ConvBnAct::load(
            l,
            &format!("features.{n}.0"),
            &format!("features.{n}.1"),
            ConvSpec::new(cin, last, 1, 1),
            EPS,
            Act::Hardswish,
        )?;
        Ok(MobileNetV3 {
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
        })
    }

    pub fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        taps.tap("features.0", &x);
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(x);
            if taps.active() {
                taps.tap(&format!("features.{}", i + 1), &x);
            }
        }
        x = self.head.forward(x);
        if taps.active() {
            taps.tap(&format!("features.{}", self.blocks.len() + 1), &x);
        }
        Act::Hardswish.apply(self.fc1.forward(global_avg_pool(x)))
    }

    pub fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(f)
    }

    /// Every BatchNorm, in network order.
    pub fn batchnorms(&mut self) -> Vec<&mut crate::backbones::layers::BatchNorm> {
        let mut v = vec![&mut self.stem.bn];
        for b in self.blocks.iter_mut() {
            if let Some(e) = &mut b.expand {
                v.push(&mut e.bn);
            }
            v.push(&mut b.depthwise.bn);
            v.push(&mut b.project.bn);
        }
        v.push(&mut self.head.bn);
        v
    }

    /// Fold every BatchNorm into its convolution (inference only).
    pub fn fold_bn(&mut self) {
        self.stem.fold();
        self.head.fold();
        for b in self.blocks.iter_mut() {
            if let Some(e) = &mut b.expand {
                e.fold();
            }
            b.depthwise.fold();
            b.project.fold();
        }
    }
}

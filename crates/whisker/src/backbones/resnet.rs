//! ResNet-18/34/50/101/152 (He et al. 2016), torchvision's architecture ("v1.5": the stride
//! of a bottleneck is on its 3×3 conv) and checkpoint key names.

use burn::module::Module;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::Tensor;

use super::layers::{fold_bn, global_avg_pool, Act, BatchNorm, Conv2d, ConvSpec, Linear, Taps};
use super::plan::{Builder, Lowered, V};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::Loader;

const EPS: f64 = 1e-5;

/// Depth → (bottleneck?, blocks per stage).
pub fn config(depth: usize) -> Option<(bool, [usize; 4])> {
    Some(match depth {
        18 => (false, [2, 2, 2, 2]),
        34 => (false, [3, 4, 6, 3]),
        50 => (true, [3, 4, 6, 3]),
        101 => (true, [3, 4, 23, 3]),
        152 => (true, [3, 8, 36, 3]),
        _ => return None,
    })
}

#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// A basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1) residual block.
#[derive(Module, Debug)]
pub struct Block {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    pub downsample: Option<Downsample>,
}

impl Block {
    fn load(
        l: &mut Loader,
        p: &str,
        bottleneck: bool,
        inplanes: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Self> {
        let expansion = if bottleneck { 4 } else { 1 };
        let out = planes * expansion;
        let downsample = if stride != 1 || inplanes != out {
            Some(Downsample {
                conv: Conv2d::load(
                    l,
                    &format!("{p}.downsample.0"),
                    ConvSpec::new(inplanes, out, 1, stride),
                )?,
                bn: BatchNorm::load(l, &format!("{p}.downsample.1"), out, EPS)?,
            })
        } else {
            None
        };
        if bottleneck {
            Ok(Block {
                conv1: Conv2d::load(
                    l,
                    &format!("{p}.conv1"),
                    ConvSpec::new(inplanes, planes, 1, 1),
                )?,
                bn1: BatchNorm::load(l, &format!("{p}.bn1"), planes, EPS)?,
                conv2: Conv2d::load(
                    l,
                    &format!("{p}.conv2"),
                    ConvSpec::new(planes, planes, 3, stride),
                )?,
                bn2: BatchNorm::load(l, &format!("{p}.bn2"), planes, EPS)?,
                conv3: Some(Conv2d::load(
                    l,
                    &format!("{p}.conv3"),
                    ConvSpec::new(planes, out, 1, 1),
                )?),
                bn3: Some(BatchNorm::load(l, &format!("{p}.bn3"), out, EPS)?),
                downsample,
            })
        } else {
            Ok(Block {
                conv1: Conv2d::load(
                    l,
                    &format!("{p}.conv1"),
                    ConvSpec::new(inplanes, planes, 3, stride),
                )?,
                bn1: BatchNorm::load(l, &format!("{p}.bn1"), planes, EPS)?,
                conv2: Conv2d::load(
                    l,
                    &format!("{p}.conv2"),
                    ConvSpec::new(planes, planes, 3, 1),
                )?,
                bn2: BatchNorm::load(l, &format!("{p}.bn2"), planes, EPS)?,
                conv3: None,
                bn3: None,
                downsample,
            })
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let relu = Act::Relu;
        let mut y = relu.apply(self.bn1.forward(self.conv1.forward(x.clone())));
        y = self.bn2.forward(self.conv2.forward(y));
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            y = b3.forward(c3.forward(relu.apply(y)));
        }
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x)),
            None => x,
        };
        relu.apply(y + identity)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub layer1: Vec<Block>,
    pub layer2: Vec<Block>,
    pub layer3: Vec<Block>,
    pub layer4: Vec<Block>,
    pub fc: Linear,
}

impl ResNet {
    pub fn load(l: &mut Loader, depth: usize) -> Result<Self> {
        let (bottleneck, counts) = config(depth).ok_or_else(|| {
            crate::error::Error::Invalid(format!("resnet depth {depth} is not 18/34/50/101/152"))
        })?;
        let expansion = if bottleneck { 4 } else { 1 };
        let conv1 = Conv2d::load(l, "conv1", ConvSpec::new(3, 64, 7, 2))?;
        let bn1 = BatchNorm::load(l, "bn1", 64, EPS)?;
        let mut inplanes = 64;
        let mut layers: Vec<Vec<Block>> = Vec::new();
        for (s, (&n, planes)) in counts.iter().zip([64, 128, 256, 512]).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..n {
                let stride = if b == 0 && s > 0 { 2 } else { 1 };
                let p = format!("layer{}.{b}", s + 1);
                l.begin_unit(&p);
                blocks.push(Block::load(l, &p, bottleneck, inplanes, planes, stride)?);
                inplanes = planes * expansion;
            }
            layers.push(blocks);
        }
        l.begin_unit("fc");
        let fc = Linear::load(l, "fc", 512 * expansion, 1000)?;
        let mut it = layers.into_iter();
        Ok(ResNet {
            conv1,
            bn1,
            layer1: it.next().unwrap_or_default(),
            layer2: it.next().unwrap_or_default(),
            layer3: it.next().unwrap_or_default(),
            layer4: it.next().unwrap_or_default(),
            fc,
        })
    }
}

/// Which ResNet: its depth (18, 34, 50, 101 or 152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub depth: usize,
}

/// The models of the family, as `whisker models` lists them.
const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "resnet18",
        family: Family::ResNet(Config { depth: 18 }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 11_689_512,
        feature_dim: 512,
        weights: tv!("resnet18-f37072fd.pth", "f37072fd"),
    },
    ModelSpec {
        name: "resnet34",
        family: Family::ResNet(Config { depth: 34 }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 21_797_672,
        feature_dim: 512,
        weights: tv!("resnet34-b627a593.pth", "b627a593"),
    },
    ModelSpec {
        name: "resnet50",
        family: Family::ResNet(Config { depth: 50 }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 25_557_032,
        feature_dim: 2048,
        weights: tv!("resnet50-0676ba61.pth", "0676ba61"),
    },
    ModelSpec {
        name: "resnet101",
        family: Family::ResNet(Config { depth: 101 }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 44_549_160,
        feature_dim: 2048,
        weights: tv!("resnet101-63fe2227.pth", "63fe2227"),
    },
    ModelSpec {
        name: "resnet152",
        family: Family::ResNet(Config { depth: 152 }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 60_192_808,
        feature_dim: 2048,
        weights: tv!("resnet152-394f9c45.pth", "394f9c45"),
    },
];

impl super::Definition for ResNet {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "fc";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        ResNet::load(l, c.depth)
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for ResNet {
    /// Pooled features `[N, 512·expansion]` (the input of `fc`).
    fn features(&self, x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        let x = taps.hook(
            "relu",
            Act::Relu.apply(self.bn1.forward(self.conv1.forward(x))),
        );
        let mut x = max_pool2d(
            x,
            MaxPoolOptions::new([3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1]),
        );
        x = taps.hook("maxpool", x);
        for (s, layer) in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .enumerate()
        {
            for (b, block) in layer.iter().enumerate() {
                x = block.forward(x);
                if taps.active() {
                    x = taps.hook(&format!("layer{}.{b}", s + 1), x);
                }
            }
            if taps.active() {
                x = taps.hook(&format!("layer{}", s + 1), x);
            }
        }
        global_avg_pool(x)
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc.forward(f)
    }

    /// Every BatchNorm, in network order.
    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = vec![&mut self.bn1];
        for layer in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ] {
            for b in layer.iter_mut() {
                v.push(&mut b.bn1);
                v.push(&mut b.bn2);
                if let Some(n) = &mut b.bn3 {
                    v.push(n);
                }
                if let Some(d) = &mut b.downsample {
                    v.push(&mut d.bn);
                }
            }
        }
        v
    }

    /// Fold every BatchNorm into its convolution (inference only).
    fn fold_bn(&mut self) {
        fold_bn(&mut self.conv1, &mut self.bn1);
        for layer in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ] {
            for b in layer.iter_mut() {
                fold_bn(&mut b.conv1, &mut b.bn1);
                fold_bn(&mut b.conv2, &mut b.bn2);
                if let (Some(c), Some(n)) = (&mut b.conv3, &mut b.bn3) {
                    fold_bn(c, n);
                }
                if let Some(d) = &mut b.downsample {
                    fold_bn(&mut d.conv, &mut d.bn);
                }
            }
        }
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let mut x = bl.conv(x, &self.conv1, Some(&self.bn1), Act::Relu, None)?;
        bl.tap("relu", x);
        x = bl.max_pool(x, 3, 2, 1);
        bl.tap("maxpool", x);
        for (s, layer) in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .enumerate()
        {
            for (i, blk) in layer.iter().enumerate() {
                let identity = match &blk.downsample {
                    Some(d) => bl.conv(x, &d.conv, Some(&d.bn), Act::None, None)?,
                    None => x,
                };
                let y = bl.conv(x, &blk.conv1, Some(&blk.bn1), Act::Relu, None)?;
                x = match (&blk.conv3, &blk.bn3) {
                    (Some(c3), Some(b3)) => {
                        let y = bl.conv(y, &blk.conv2, Some(&blk.bn2), Act::Relu, None)?;
                        bl.conv(y, c3, Some(b3), Act::Relu, Some(identity))?
                    }
                    _ => bl.conv(y, &blk.conv2, Some(&blk.bn2), Act::Relu, Some(identity))?,
                };
                bl.tap(format!("layer{}.{i}", s + 1), x);
            }
            bl.tap(format!("layer{}", s + 1), x);
        }
        let features = bl.gap(x);
        bl.classify(features, &self.fc)
    }
}

//! VGG-16/19 with and without BatchNorm (Simonyan & Zisserman 2014), torchvision's
//! architecture and key names (`features.N`, `classifier.{0,3,6}`).
//!
//! The feature vector is the 4096-d output of the second fully connected layer after its
//! ReLU (`classifier.4`): the input of the final classification layer, the layer transfer
//! learning replaces.

use burn::module::Module;
use burn::tensor::module::{adaptive_avg_pool2d, max_pool2d};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::Tensor;

use super::layers::{fold_bn, Act, BatchNorm, Conv2d, ConvSpec, Linear, Taps};
use super::plan::{Builder, Lowered, V};
use super::{Family, ModelSpec};
use crate::data::resize::Filter;
use crate::data::transforms::Normalization;
use crate::error::Result;
use crate::weights::Loader;
use whisker_kernels::Act as KAct;

const M: usize = 0;

fn cfg(depth: usize) -> crate::Result<&'static [usize]> {
    match depth {
        19 => Ok(&[
            64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512,
            512, M,
        ]),
        16 => Ok(&[
            64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
        ]),
        _ => Err(crate::Error::Invalid(format!(
            "VGG-{depth} is not in the zoo (VGG-16 and VGG-19)"
        ))),
    }
}

#[derive(Module, Debug)]
pub struct VggConv {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
    /// Index of this layer's ReLU in `features` (its tap name).
    pub relu_index: usize,
    /// Index of the max-pool that follows, if one does.
    pub pool_index: Option<usize>,
}

#[derive(Module, Debug)]
pub struct Vgg {
    pub features: Vec<VggConv>,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
}

impl Vgg {
    pub fn load(l: &mut Loader, depth: usize, bn: bool) -> Result<Self> {
        let mut features: Vec<VggConv> = Vec::new();
        let mut idx = 0;
        let mut cin = 3;
        for &v in cfg(depth)? {
            if v == M {
                if let Some(last) = features.last_mut() {
                    last.pool_index = Some(idx);
                }
                idx += 1;
                continue;
            }
            l.begin_unit(&format!("features.{idx}"));
            let conv = Conv2d::load(
                l,
                &format!("features.{idx}"),
                ConvSpec::new(cin, v, 3, 1).bias(true),
            )?;
            let bnl = if bn {
                Some(BatchNorm::load(
                    l,
                    &format!("features.{}", idx + 1),
                    v,
                    1e-5,
                )?)
            } else {
                None
            };
            let relu_index = idx + if bn { 2 } else { 1 };
            features.push(VggConv {
                conv,
                bn: bnl,
                relu_index,
                pool_index: None,
            });
            idx = relu_index + 1;
            cin = v;
        }
        l.begin_unit("classifier.0");
        let fc1 = Linear::load(l, "classifier.0", 512 * 7 * 7, 4096)?;
        l.begin_unit("classifier.3");
        let fc2 = Linear::load(l, "classifier.3", 4096, 4096)?;
        l.begin_unit("classifier.6");
        let fc3 = Linear::load(l, "classifier.6", 4096, 1000)?;
        Ok(Vgg {
            features,
            fc1,
            fc2,
            fc3,
        })
    }
}

/// Which VGG: its depth (16 or 19) and whether it has BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub depth: usize,
    pub bn: bool,
}

/// The models of the family, as `whisker models` lists them.
const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "vgg16",
        family: Family::Vgg(Config {
            depth: 16,
            bn: false,
        }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 138_357_544,
        feature_dim: 4096,
        weights: tv!("vgg16-397923af.pth", "397923af"),
    },
    ModelSpec {
        name: "vgg19",
        family: Family::Vgg(Config {
            depth: 19,
            bn: false,
        }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 143_667_240,
        feature_dim: 4096,
        weights: tv!("vgg19-dcbb9e9d.pth", "dcbb9e9d"),
    },
    ModelSpec {
        name: "vgg16_bn",
        family: Family::Vgg(Config {
            depth: 16,
            bn: true,
        }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 138_365_992,
        feature_dim: 4096,
        weights: tv!("vgg16_bn-6c64b313.pth", "6c64b313"),
    },
    ModelSpec {
        name: "vgg19_bn",
        family: Family::Vgg(Config {
            depth: 19,
            bn: true,
        }),
        input_size: 224,
        resize: 256,
        norm: Normalization::ImageNet,
        interpolation: Filter::Bilinear,
        params: 143_678_248,
        feature_dim: 4096,
        weights: tv!("vgg19_bn-c79401a0.pth", "c79401a0"),
    },
];

impl super::Definition for Vgg {
    type Config = Config;
    const MODELS: &'static [ModelSpec] = MODELS;
    const CLASSIFIER: &'static str = "classifier.6";

    fn build(l: &mut Loader, c: Config) -> Result<Self> {
        Vgg::load(l, c.depth, c.bn)
    }
}

/// The burn forward and the CPU engine's lowering of the network, side by side.
impl super::Arch for Vgg {
    fn features(&self, mut x: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        for layer in &self.features {
            x = layer.conv.forward(x);
            if let Some(bn) = &layer.bn {
                x = bn.forward(x);
            }
            x = Act::Relu.apply(x);
            if taps.active() {
                x = taps.hook(&format!("features.{}", layer.relu_index), x);
            }
            if let Some(p) = layer.pool_index {
                x = max_pool2d(x, MaxPoolOptions::new([2, 2]));
                if taps.active() {
                    x = taps.hook(&format!("features.{p}"), x);
                }
            }
        }
        let x = adaptive_avg_pool2d(x, [7, 7]);
        let n = x.dims()[0];
        let x = x.reshape([n, 512 * 7 * 7]);
        let x = Act::Relu.apply(self.fc1.forward(x));
        Act::Relu.apply(self.fc2.forward(x))
    }

    fn classifier(&self, f: Tensor<2>) -> Tensor<2> {
        self.fc3.forward(f)
    }

    /// Every BatchNorm, in network order.
    fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        self.features
            .iter_mut()
            .filter_map(|l| l.bn.as_mut())
            .collect()
    }

    /// Fold every BatchNorm into its convolution (inference only).
    fn fold_bn(&mut self) {
        for l in self.features.iter_mut() {
            if let Some(bn) = &mut l.bn {
                fold_bn(&mut l.conv, bn);
            }
        }
    }

    fn lower(&self, bl: &mut Builder<'_>, x: V) -> Result<Lowered> {
        let mut x = x;
        for layer in &self.features {
            x = bl.conv(x, &layer.conv, layer.bn.as_ref(), Act::Relu, None)?;
            bl.tap(format!("features.{}", layer.relu_index), x);
            if let Some(p) = layer.pool_index {
                x = bl.max_pool(x, 2, 2, 0);
                bl.tap(format!("features.{p}"), x);
            }
        }
        let c = bl.channels_of(x);
        let pooled = bl.avg_pool(x, 7, 7);
        // NHWC flattening (p·c + ch) → the checkpoint's NCHW flattening (ch·49 + p)
        let perm: Vec<usize> = (0..49 * c).map(|i| (i % c) * 49 + i / c).collect();
        let f1 = bl.linear(pooled, &self.fc1, KAct::Relu, Some(&perm))?;
        let features = bl.linear(f1, &self.fc2, KAct::Relu, None)?;
        bl.classify(features, &self.fc3)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_depths_are_errors() {
        assert_eq!(super::cfg(16).unwrap().len(), 18);
        assert_eq!(super::cfg(19).unwrap().len(), 21);
        let e = super::cfg(11).unwrap_err().to_string();
        assert!(e.contains("VGG-11"), "{e}");
    }
}

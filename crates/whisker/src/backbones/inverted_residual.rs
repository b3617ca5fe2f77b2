//! The inverted-residual block (MBConv) of MobileNetV2, MobileNetV3 and EfficientNet-Lite,
//! written once: an optional 1×1 expansion, a depthwise convolution, an optional
//! squeeze-excitation, a linear 1×1 projection (BatchNorm, no activation), and the identity
//! added when the shapes allow. Each family loads it with its own checkpoint key names.

use burn::module::Module;
use burn::tensor::Tensor;

use super::layers::{global_avg_pool, Act, BatchNorm, Conv2d, ConvBnAct, ConvSpec};
use crate::error::Result;
use crate::weights::Loader;

/// Squeeze-excitation (torchvision's `SqueezeExcitation`): global average pool, 1×1 conv,
/// `act`, 1×1 conv, `gate`, channel-wise scale. MobileNetV3: ReLU and hard sigmoid;
/// EfficientNet(V2): SiLU and sigmoid; RegNetY: ReLU and sigmoid.
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
    #[module(skip)]
    pub act: Act,
    #[module(skip)]
    pub gate: Act,
}

impl SqueezeExcite {
    /// `fc1` and `fc2` (both with bias) under `{p}.fc1` and `{p}.fc2`: `c` channels squeezed
    /// to `squeeze`.
    pub fn load(
        l: &mut Loader,
        p: &str,
        c: usize,
        squeeze: usize,
        act: Act,
        gate: Act,
    ) -> Result<Self> {
        Ok(SqueezeExcite {
            fc1: Conv2d::load(
                l,
                &format!("{p}.fc1"),
                ConvSpec::new(c, squeeze, 1, 1).bias(true),
            )?,
            fc2: Conv2d::load(
                l,
                &format!("{p}.fc2"),
                ConvSpec::new(squeeze, c, 1, 1).bias(true),
            )?,
            act,
            gate,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, _, _] = x.dims();
        let s = global_avg_pool(x.clone()).reshape([n, c, 1, 1]);
        let s = self.act.apply(self.fc1.forward(s));
        let s = self.gate.apply(self.fc2.forward(s));
        x * s
    }
}

#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub expand: Option<ConvBnAct>,
    pub depthwise: ConvBnAct,
    pub se: Option<SqueezeExcite>,
    /// The linear projection (its activation is `Act::None`).
    pub project: ConvBnAct,
    pub residual: bool,
}

impl InvertedResidual {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
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

    /// Its BatchNorms, in network order.
    pub fn batchnorms(&mut self) -> Vec<&mut BatchNorm> {
        let mut v = Vec::with_capacity(3);
        if let Some(e) = &mut self.expand {
            v.push(&mut e.bn);
        }
        v.push(&mut self.depthwise.bn);
        v.push(&mut self.project.bn);
        v
    }

    /// Fold its BatchNorms into their convolutions (inference only).
    pub fn fold(&mut self) {
        if let Some(e) = &mut self.expand {
            e.fold();
        }
        self.depthwise.fold();
        self.project.fold();
    }
}

/// The BatchNorms of a stem → blocks → head network, in network order.
pub fn network_batchnorms<'a>(
    stem: &'a mut ConvBnAct,
    blocks: &'a mut [InvertedResidual],
    head: &'a mut ConvBnAct,
) -> Vec<&'a mut BatchNorm> {
    let mut v = vec![&mut stem.bn];
    for b in blocks.iter_mut() {
        v.extend(b.batchnorms());
    }
    v.push(&mut head.bn);
    v
}

/// Fold every BatchNorm of a stem → blocks → head network.
pub fn fold_network(stem: &mut ConvBnAct, blocks: &mut [InvertedResidual], head: &mut ConvBnAct) {
    stem.fold();
    head.fold();
    for b in blocks.iter_mut() {
        b.fold();
    }
}

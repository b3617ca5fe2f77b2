//! Looking inside a backbone: feature maps, adversarial examples.

pub mod attack;
pub mod dream;
pub mod featuremap;
pub mod robustness;

use burn::tensor::Tensor;

use crate::backbones::{Backbone, Taps};
use crate::train::model_file::Head;

/// Something that maps pixels in [0, 1] (`[N, 3, H, W]`) to class logits, differentiably:
/// a zoo backbone with its ImageNet head, or a trained whisker model.
pub trait Classifier {
    fn backbone(&self) -> &Backbone;
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2>;
}

impl Classifier for Backbone {
    fn backbone(&self) -> &Backbone {
        self
    }
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.forward(pixels, &mut Taps::none()).logits
    }
}

/// Adam (β = 0.9, 0.999, ε = 1e-8, no weight decay) on a flat vector of image parameters:
/// what `dream` and the Carlini–Wagner attack optimise with.
pub(crate) struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    pub(crate) fn new(n: usize) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One step of `params` down the gradient `grads` with learning rate `lr`.
    pub(crate) fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let (b1, b2) = (Self::B1, Self::B2);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for (i, p) in params.iter_mut().enumerate() {
            let gi = grads.get(i).copied().unwrap_or(0.0);
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * gi;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * gi * gi;
            *p -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + Self::EPS);
        }
    }
}

/// A trained whisker model: its backbone's features and its head.
pub struct Trained<'a> {
    pub backbone: &'a Backbone,
    pub head: &'a Head,
}

impl Classifier for Trained<'_> {
    fn backbone(&self) -> &Backbone {
        self.backbone
    }
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.head.logits_tensor(self.backbone.features(pixels))
    }
}

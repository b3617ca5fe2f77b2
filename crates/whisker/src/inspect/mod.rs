//! Looking inside a backbone: feature maps, class-activation maps, ideal class images,
//! adversarial examples.

pub mod attack;
pub mod cam;
mod cpu_op;
mod decorrelated;
pub mod dream;
pub mod featuremap;
pub mod robustness;
mod sample;

use burn::tensor::Tensor;

use crate::backbones::{Backbone, Taps};
use crate::train::model_file::Head;

/// Something that maps pixels in [0, 1] (`[N, 3, H, W]`) to class logits, differentiably:
/// a zoo backbone with its ImageNet head, or a trained whisker model.
pub trait Classifier {
    fn backbone(&self) -> &Backbone;
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2>;
    /// [`Classifier::logits`], offering the backbone's feature maps to `taps` (a map's
    /// gradient with [`Taps::grad`]).
    fn logits_tapped(&self, pixels: Tensor<4>, taps: &mut Taps) -> Tensor<2>;
    /// The backbone's features `[N, dim]` → class logits (the head alone).
    fn head_logits(&self, features: Tensor<2>) -> Tensor<2>;
}

impl Classifier for Backbone {
    fn backbone(&self) -> &Backbone {
        self
    }
    fn logits(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.forward(pixels, &mut Taps::none()).logits
    }
    fn logits_tapped(&self, pixels: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        self.forward(pixels, taps).logits
    }
    fn head_logits(&self, features: Tensor<2>) -> Tensor<2> {
        self.net.classifier(features)
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
    fn logits_tapped(&self, pixels: Tensor<4>, taps: &mut Taps) -> Tensor<2> {
        self.head
            .logits_tensor(self.backbone.features_with(pixels, taps))
    }
    fn head_logits(&self, features: Tensor<2>) -> Tensor<2> {
        self.head.logits_tensor(features)
    }
}

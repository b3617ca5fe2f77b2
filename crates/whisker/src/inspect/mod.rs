//! Looking inside a backbone: feature maps, adversarial examples.

pub mod attack;
pub mod dream;
pub mod featuremap;

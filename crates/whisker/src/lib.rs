//! # whisker
//!
//! Transfer learning for image classification in Rust: ImageNet-pretrained CNN backbones
//! that match PyTorch's numbers, exact preprocessing, weights loading and caching.
//!
//! The pipeline flows one way: image → tensor ([`data`]) → backbone ([`backbones`]) →
//! features / logits. Weights come from [`weights`].
//!
//! Tensors are burn 0.22 tensors: the device (CPU `Device::flex()` by default, CUDA with
//! the `cuda` feature) chooses the backend at run time.

pub mod backbones;
pub mod cache;
pub mod data;
pub mod error;
pub mod features;
pub mod inspect;
pub mod io;
pub mod learner;
pub mod model;
pub mod report;
pub mod run;
pub mod tensor;
pub mod train;
pub mod weights;

pub use backbones::{Backbone, ModelSpec, Taps, MODELS};
pub use error::{Error, Result};

/// The default compute device: CUDA when built with the `cuda` feature and
/// `WHISKER_DEVICE=cuda`, else the CPU (burn-flex).
pub fn default_device() -> burn::tensor::Device {
    #[cfg(feature = "cuda")]
    {
        if std::env::var("WHISKER_DEVICE")
            .map(|v| v.starts_with("cuda"))
            .unwrap_or(false)
        {
            return burn::tensor::Device::cuda(0usize);
        }
    }
    burn::tensor::Device::flex()
}

//! # whisker
//!
//! Transfer learning for image classification in Rust: ImageNet-pretrained CNN backbones
//! that match PyTorch's numbers, exact preprocessing, weights loading and caching.
//!
//! The pipeline flows one way: image → tensor ([`data`]) → backbone ([`backbones`]) →
//! features / logits. Weights come from [`weights`].
//!
//! Tensors are burn 0.22 tensors: the device ([`device`]: the CPU by default, CUDA with the
//! `cuda` feature, Vulkan / Metal with `wgpu`) chooses the backend at run time.

pub mod backbones;
pub mod cache;
pub mod data;
pub mod device;
pub mod error;
pub mod export;
pub mod extract;
pub mod features;
pub mod inspect;
pub mod io;
pub mod learner;
pub mod model;
pub mod report;
pub mod run;
pub mod similar;
pub mod tensor;
pub mod train;
pub mod weights;

pub use backbones::{models, Backbone, ModelSpec, Taps};
pub use error::{Error, Result};

pub use device::{
    default_device, open_device, parse_device, set_device, set_gpu_precision, GpuPrecision,
};

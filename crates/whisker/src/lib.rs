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
pub mod similar;
pub mod tensor;
pub mod train;
pub mod weights;

pub use backbones::{Backbone, ModelSpec, Taps, MODELS};
pub use error::{Error, Result};

static DEVICE: std::sync::OnceLock<burn::tensor::Device> = std::sync::OnceLock::new();

/// A compute device by name: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
/// A device this build lacks is an error naming the feature to build with.
pub fn parse_device(spec: &str) -> Result<burn::tensor::Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(burn::tensor::Device::flex());
    }
    if let Some(rest) = spec.strip_prefix("cuda") {
        let index: usize = match rest.strip_prefix(':') {
            Some(n) => n.parse().map_err(|_| {
                Error::Invalid(format!(
                    "device `{spec}`: the CUDA device index must be a number"
                ))
            })?,
            None if rest.is_empty() => 0,
            None => {
                return Err(Error::Invalid(format!(
                    "unknown device `{spec}` (cpu, cuda, cuda:N)"
                )))
            }
        };
        return cuda_device(spec, index);
    }
    Err(Error::Invalid(format!(
        "unknown device `{spec}` (cpu, cuda, cuda:N)"
    )))
}

#[cfg(feature = "cuda")]
fn cuda_device(_spec: &str, index: usize) -> Result<burn::tensor::Device> {
    Ok(burn::tensor::Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str, _index: usize) -> Result<burn::tensor::Device> {
    Err(Error::Invalid(format!(
        "device `{spec}`: this whisker was built without CUDA; build it with `cargo build --release --features cuda`"
    )))
}

/// Choose the device [`default_device`] returns for the rest of the process (once; later
/// calls with another device are an error).
pub fn set_device(spec: &str) -> Result<()> {
    let d = parse_device(spec)?;
    match DEVICE.set(d.clone()) {
        Ok(()) => Ok(()),
        Err(_) if DEVICE.get() == Some(&d) => Ok(()),
        Err(_) => Err(Error::Invalid(format!(
            "the device was already chosen ({:?})",
            DEVICE.get()
        ))),
    }
}

/// The compute device: the one chosen with [`set_device`], else `WHISKER_DEVICE` when it
/// names a device this build has, else the CPU (burn-flex).
pub fn default_device() -> burn::tensor::Device {
    if let Some(d) = DEVICE.get() {
        return d.clone();
    }
    std::env::var("WHISKER_DEVICE")
        .ok()
        .and_then(|v| parse_device(&v).ok())
        .unwrap_or_else(burn::tensor::Device::flex)
}

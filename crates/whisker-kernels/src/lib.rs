//! whisker's CPU inference kernels: raw `f32` buffers in, raw `f32` buffers out.
//!
//! - [`conv2d`]: dense convolutions (any kernel size, stride, asymmetric padding) as an
//!   implicit GEMM over NHWC activations with weights pre-packed at load ([`PackedConv`]);
//!   1×1 convolutions and linear layers are the same kernel. Bias, residual add and the
//!   activation ([`Act`]) are fused into the epilogue. 3×3 stride-1 convolutions can be packed
//!   for Winograd's F(2×2, 3×3) ([`PackedConv::winograd_from_oihw`]): 2.25× fewer multiplies,
//!   the same call. Convolutions over ≤ 8 input channels (the RGB stems) are computed
//!   directly on AVX2 / AVX-512 (pixels × channel vectors in registers).
//! - [`depthwise`]: depthwise convolutions vectorised across channels.
//! - [`inverted_residual`]: a MobileNet block (1×1 expansion, depthwise, 1×1 projection,
//!   residual) fused, a band of rows at a time, bit for bit the three convolutions' result.
//! - [`ConvBackward`], [`DepthwiseBackward`]: input gradients (frozen weights), each stride
//!   phase a stride-1 convolution on the same kernels.
//! - [`conv2d_weight_grad`], [`depthwise_weight_grad`]: weight and bias gradients, blocked
//!   two-level sums over the batch's pixels.
//! - [`batch_norm_train`], [`batch_norm_train_backward`]: BatchNorm with batch statistics
//!   (fine-tuning with `--train-bn`).
//! - [`layer_norm`], [`layer_norm_backward`]: LayerNorm over the last dimension (ConvNeXt's
//!   channels, a transformer's tokens); activations' GELU ([`Act::Gelu`]) in the epilogues.
//! - pooling, channel scaling (squeeze-excitation) and NCHW ↔ NHWC layout changes.
//! - [`buffers`]: a process-wide cache of the large buffers a training step reuses.
//!
//! Every kernel has an AVX-512F, an AVX2+FMA and a portable path, chosen at run time
//! ([`Isa::current`], `WHISKER_ISA=avx512|avx2|portable` to force a lower one), and is tested
//! against the naive [`reference`] on odd shapes on every path the CPU supports. Work is
//! split statically over rayon's current thread pool.

#![deny(unsafe_op_in_unsafe_fn)]

mod act;
mod attention;
mod backward;
pub mod buffers;
mod conv;
mod depthwise;
mod direct;
mod fused;
mod grouped;
mod isa;
mod layer_norm;
mod layout;
mod norm;
mod pool;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod simd;
mod weight_grad;
mod winograd;

pub use act::{
    act_backward, act_grad, act_in_place, erf, exp, flush, gelu, gelu_grad, sigmoid, silu, Act,
};
pub use attention::{attention, attention_backward, softmax_rows};
pub use backward::{ConvBackward, DepthwiseBackward};
pub use conv::{conv2d, ConvShape, PackedConv, NR};
pub use depthwise::{depthwise, PackedDepthwise};
pub use fused::{inverted_residual, InvertedResidual};
pub use grouped::{grouped_conv2d, grouped_weight_grad, GroupedBackward, PackedGrouped};
pub use isa::{cpu_description, Isa, IsaKind};
pub use layer_norm::{layer_norm, layer_norm_backward};
pub use layout::{nchw_to_nhwc_normalized, nhwc_to_nchw};
pub use norm::{batch_norm_train, batch_norm_train_backward, BatchStats};
pub use pool::{
    adaptive_avg_pool, adaptive_avg_pool_backward, global_avg_pool, max_pool, max_pool_backward,
    scale_channels,
};
pub use weight_grad::{conv2d_weight_grad, depthwise_weight_grad};

/// A buffer or shape that does not fit the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel shape mismatch: {0}")]
pub struct ShapeError(pub String);

//! Small tensor helpers shared by every layer of the pipeline.

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// The values of a float tensor, row-major, as f32. A failure (a tensor of another element
/// type) is an error, never a silently empty vector.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Internal(format!("tensor to f32 values: {e:?}")))
}

/// `f` of a float tensor's values, row-major: borrowed in place where the tensor is a
/// contiguous f32 one of the CPU backend (a fine-tuning step's weights: no copy of every
/// parameter per step), copied otherwise (other devices, other layouts).
pub fn with_values<const D: usize, R>(t: &Tensor<D>, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if let Ok(p) = t.clone().inner().try_into_primitive::<burn_flex::Flex>() {
        if let Some(v) = p.as_slice::<f32>() {
            return Ok(f(v));
        }
    }
    Ok(f(&to_vec(t.clone())?))
}

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

//! Images in: decoding by content, Pillow-exact resizing, centre crops, normalisation.

pub mod augment;
pub(crate) mod bmp;
pub mod datasets;
pub mod decode;
pub mod digits;
pub mod download;
pub(crate) mod pfm;
pub mod resize;
pub(crate) mod tiff;
pub mod transforms;

pub use decode::{decode_bytes, decode_file};
pub use transforms::{Normalization, Preprocess};

//! Preprocessing: resize, centre crop, to tensor, normalisation. Each backbone's weights
//! carry theirs ([`crate::backbones::ModelSpec::preprocess`]).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::decode::decode_file;
use super::resize::{
    resize_shorter_crop_with, resize_window_with, shorter_side_size, Filter, Window,
};
use crate::error::Result;

/// How pixels in [0, 1] become the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// torchvision: (x − mean) / std with ImageNet's mean (0.485, 0.456, 0.406) and std
    /// (0.229, 0.224, 0.225).
    ImageNet,
    /// TensorFlow-Lite style: (255·x − 127) / 128, i.e. (u8 − 127) / 128.
    Tf,
    /// Inception style, (x − 0.5) / 0.5 per channel (torchvision's EfficientNetV2-L weights,
    /// many of timm's).
    Inception,
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Normalization {
    /// Normalise `[N, 3, H, W]` pixels in [0, 1].
    pub fn normalize(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        match self {
            Normalization::ImageNet => {
                let mean = Tensor::<1>::from_floats(IMAGENET_MEAN, &device).reshape([1, 3, 1, 1]);
                let std = Tensor::<1>::from_floats(IMAGENET_STD, &device).reshape([1, 3, 1, 1]);
                (x - mean) / std
            }
            Normalization::Tf => (x * 255.0 - 127.0) / 128.0,
            // torchvision's normalize: (x − mean) / std, as written
            Normalization::Inception => (x - 0.5) / 0.5,
        }
    }

    /// The same normalisation as torchvision's `Normalize(mean, std)` of pixels in [0, 1].
    pub fn mean_std(&self) -> ([f64; 3], [f64; 3]) {
        match self {
            Normalization::ImageNet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Normalization::Tf => ([127.0 / 255.0; 3], [128.0 / 255.0; 3]),
            Normalization::Inception => ([0.5; 3], [0.5; 3]),
        }
    }

    /// A short description for humans.
    pub fn describe(&self) -> &'static str {
        match self {
            Normalization::ImageNet => "ImageNet mean/std",
            Normalization::Tf => "(x-127)/128",
            Normalization::Inception => "mean/std 0.5",
        }
    }
}

/// Resize (shorter side, with Pillow's filter), centre crop, normalise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocess {
    pub resize: usize,
    pub crop: usize,
    pub norm: Normalization,
    /// The resize's filter (torchvision's `interpolation`): bilinear for torchvision's
    /// weights, bicubic for timm's and DINOv2's.
    pub filter: Filter,
}

/// torchvision's `CenterCrop` offsets: `round((size − crop) / 2)`, half to even.
pub fn center_crop_offset(size: u32, crop: u32) -> u32 {
    center_crop_offset_usize(size as usize, crop as usize) as u32
}

/// [`center_crop_offset`] for sizes beyond `u32`.
pub fn center_crop_offset_usize(size: usize, crop: usize) -> usize {
    if size <= crop {
        return 0;
    }
    let d = size - crop;
    // round half to even of d / 2
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Centre crop to `crop × crop` (the image must be at least that large).
pub fn center_crop(img: &RgbImage, crop: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w < crop || h < crop {
        // torchvision pads with zeros in this case.
        let mut out = RgbImage::new(crop, crop);
        let (ox, oy) = ((crop - w.min(crop)) / 2, (crop - h.min(crop)) / 2);
        let (sx, sy) = (center_crop_offset(w, crop), center_crop_offset(h, crop));
        for y in 0..h.min(crop) {
            for x in 0..w.min(crop) {
                out.put_pixel(x + ox, y + oy, *img.get_pixel(x + sx, y + sy));
            }
        }
        return out;
    }
    let left = center_crop_offset(w, crop);
    let top = center_crop_offset(h, crop);
    image::imageops::crop_imm(img, left, top, crop, crop).to_image()
}

impl Preprocess {
    /// Resize and crop (u8 result). Only the kept pixels are computed, so an image of any
    /// aspect ratio costs the same memory.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        resize_shorter_crop_with(img, self.resize as u32, self.crop as u32, self.filter)
    }

    /// Decode, resize and crop a file.
    pub fn load(&self, path: &Path) -> Result<RgbImage> {
        Ok(self.apply(&decode_file(path)?))
    }
}

/// Images (all the same size) → `[N, 3, H, W]` pixels in [0, 1] (u8 / 255, as torchvision's
/// `ToTensor`).
pub fn to_tensor(images: &[RgbImage], device: &Device) -> Tensor<4> {
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((0, 0));
    let (w, h) = (w as usize, h as usize);
    let mut data = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        let raw = img.as_raw();
        for c in 0..3 {
            data.extend(raw.iter().skip(c).step_by(3).map(|&v| v as f32 / 255.0));
        }
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, h, w]), device)
}

/// Decode, resize and crop many files on all cores; one result per file, in order.
pub fn load_many(paths: &[std::path::PathBuf], pre: &Preprocess) -> Vec<Result<RgbImage>> {
    use rayon::prelude::*;
    paths.par_iter().map(|p| pre.load(p)).collect()
}

impl Preprocess {
    /// Test-time augmentation views of an image: the centre crop, its mirror image, and the
    /// four corner crops of the resized image (torchvision's `FiveCrop` plus a flip).
    pub fn tta_views(&self, img: &RgbImage) -> Vec<RgbImage> {
        let center = self.apply(img);
        let flipped = image::imageops::flip_horizontal(&center);
        let mut v = vec![center, flipped];
        let (w, h) = shorter_side_size(img.width(), img.height(), self.resize as u32);
        let c = self.crop;
        if w >= c && h >= c {
            for (x, y) in [(0, 0), (w - c, 0), (0, h - c), (w - c, h - c)] {
                let win = Window {
                    x,
                    y,
                    width: c,
                    height: c,
                };
                v.push(resize_window_with(img, w, h, win, self.filter));
            }
        }
        v
    }
}

/// The inverse of [`to_tensor`] for one image: `[3, H, W]` pixels in [0, 1] (row-major) → RGB
/// u8, rounded to nearest and clamped.
pub fn to_image(chw: &[f32], width: usize, height: usize) -> RgbImage {
    let plane = width * height;
    RgbImage::from_fn(width as u32, height as u32, |i, j| {
        let px = |c: usize| {
            (chw[c * plane + j as usize * width + i as usize] * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

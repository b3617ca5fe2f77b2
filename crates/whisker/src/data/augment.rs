//! Training-time augmentation on decoded images, deterministic for a given seed:
//! torchvision's `RandomResizedCrop` (same sampling algorithm), horizontal flip, colour
//! jitter (brightness, contrast, saturation) and a small rotation.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::datasets::SplitMix64;
use super::resize::resize_bilinear;

/// Augmentation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Augment {
    /// Output size (square).
    pub size: usize,
    /// Range of the crop's area as a fraction of the image.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// Mirror with probability 1/2.
    pub flip: bool,
    /// Brightness, contrast and saturation factors drawn from [1 − j, 1 + j].
    pub jitter: f64,
    /// Rotation drawn from [−r, r] degrees (bilinear, black fill).
    pub rotate: f64,
}

impl Augment {
    /// fastai-like defaults for fine-tuning on photos.
    pub fn new(size: usize) -> Self {
        Augment {
            size,
            scale: (0.35, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            jitter: 0.2,
            rotate: 10.0,
        }
    }

    /// The random generator for image `index` in `epoch`: every image gets its own stream,
    /// so results do not depend on batching or threads, and a resumed run repeats them.
    pub fn rng(seed: u64, epoch: usize, index: usize) -> SplitMix64 {
        let mut r = SplitMix64(seed ^ 0xA46_0000_0000);
        let a = r.next_u64() ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        SplitMix64(a ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
    }

    /// Augment one image.
    pub fn apply(&self, img: &RgbImage, rng: &mut SplitMix64) -> RgbImage {
        let (x, y, w, h) = self.crop_box(img.width(), img.height(), rng);
        let crop = image::imageops::crop_imm(img, x, y, w, h).to_image();
        let mut out = resize_bilinear(&crop, self.size as u32, self.size as u32);
        if self.flip && rng.next_f64() < 0.5 {
            out = image::imageops::flip_horizontal(&out);
        }
        if self.jitter > 0.0 {
            let j = self.jitter;
            let mut f = || 1.0 - j + 2.0 * j * rng.next_f64();
            let (b, c, s) = (f(), f(), f());
            jitter(&mut out, b as f32, c as f32, s as f32);
        }
        if self.rotate > 0.0 {
            let deg = (2.0 * rng.next_f64() - 1.0) * self.rotate;
            out = rotate(&out, deg.to_radians() as f32);
        }
        out
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a box of random area and
    /// aspect ratio, else a centre crop clamped to the ratio range.
    pub fn crop_box(&self, width: u32, height: u32, rng: &mut SplitMix64) -> (u32, u32, u32, u32) {
        let (wf, hf) = (width as f64, height as f64);
        let area = wf * hf;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * (self.scale.0 + (self.scale.1 - self.scale.0) * rng.next_f64());
            let aspect = (lr0 + (lr1 - lr0) * rng.next_f64()).exp();
            let w = (target * aspect).sqrt().round() as u32;
            let h = (target / aspect).sqrt().round() as u32;
            if w > 0 && h > 0 && w <= width && h <= height {
                let y = rng.below((height - h + 1) as usize) as u32;
                let x = rng.below((width - w + 1) as usize) as u32;
                return (x, y, w, h);
            }
        }
        let in_ratio = wf / hf;
        let (w, h) = if in_ratio < self.ratio.0 {
            (width, (wf / self.ratio.0).round() as u32)
        } else if in_ratio > self.ratio.1 {
            ((hf * self.ratio.1).round() as u32, height)
        } else {
            (width, height)
        };
        ((width - w) / 2, (height - h) / 2, w.max(1), h.max(1))
    }
}

/// Brightness (multiply), contrast (blend with the mean grey) and saturation (blend with the
/// pixel's grey), in that order, as torchvision's functional forms do.
pub fn jitter(img: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32) {
    let grey = |p: &Rgb<u8>| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    for p in img.pixels_mut() {
        for c in 0..3 {
            p[c] = clamp(p[c] as f32 * brightness).round() as u8;
        }
    }
    let n = (img.width() * img.height()).max(1) as f32;
    let mean = img.pixels().map(grey).sum::<f32>() / n;
    for p in img.pixels_mut() {
        for c in 0..3 {
            p[c] = clamp((p[c] as f32 - mean) * contrast + mean).round() as u8;
        }
        let g = grey(p);
        for c in 0..3 {
            p[c] = clamp((p[c] as f32 - g) * saturation + g).round() as u8;
        }
    }
}

/// Rotate about the centre by `angle` radians (counter-clockwise), bilinear, black outside.
pub fn rotate(img: &RgbImage, angle: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (s, c) = angle.sin_cos();
    let mut out = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            // inverse mapping: output pixel → source position
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let sx = c * dx - s * dy + cx;
            let sy = s * dx + c * dy + cy;
            if sx < 0.0 || sy < 0.0 || sx > (w - 1) as f32 || sy > (h - 1) as f32 {
                continue;
            }
            let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let mut px = [0u8; 3];
            for (ch, v) in px.iter_mut().enumerate() {
                let a = img.get_pixel(x0, y0)[ch] as f32 * (1.0 - fx)
                    + img.get_pixel(x1, y0)[ch] as f32 * fx;
                let b = img.get_pixel(x0, y1)[ch] as f32 * (1.0 - fx)
                    + img.get_pixel(x1, y1)[ch] as f32 * fx;
                *v = (a * (1.0 - fy) + b * fy).round().clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(x, y, Rgb(px));
        }
    }
    out
}

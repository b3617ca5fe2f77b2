//! Antialiased bilinear resizing, equal byte for byte to Pillow's
//! `Image.resize(size, Image.BILINEAR)` (what torchvision's `Resize` does to a PIL image).
//!
//! Pillow's algorithm: a triangle filter whose support grows with the downscaling factor;
//! coefficients computed in f64, normalised, then turned into 22-bit fixed point; two
//! separable passes (horizontal first, over only the rows the vertical pass will read),
//! each rounding to u8.

use image::RgbImage;
use rayon::prelude::*;

const PRECISION_BITS: u32 = 32 - 8 - 2;

struct Coeffs {
    /// Per output pixel: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Per output pixel, `ksize` fixed-point weights.
    k: Vec<i32>,
    ksize: usize,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's bilinear weights for one dimension, in floating point and normalised: per
/// output pixel, the first input index and the weights of the inputs from there; plus the
/// largest number of taps (Pillow's `ksize`).
fn float_weights(in_size: usize, out_size: usize) -> (usize, Vec<(usize, Vec<f64>)>) {
    let (in0, in1) = (0.0f64, in_size as f32 as f64);
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let rows = (0..out_size)
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (0..xmax.saturating_sub(xmin))
                .map(|x| triangle((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            (
                xmin,
                w.into_iter()
                    .map(|v| if ww != 0.0 { v / ww } else { v })
                    .collect(),
            )
        })
        .collect();
    (ksize, rows)
}

/// Pillow's bilinear resampling of one dimension as a dense `[out, in]` matrix of its
/// (normalised, floating-point) weights: the linear map the u8 resize approximates to within
/// rounding. Differentiable resizing (attacks through the preprocessing) is built from it.
pub fn bilinear_matrix(in_size: usize, out_size: usize) -> Vec<f32> {
    let mut m = vec![0f32; out_size * in_size];
    for (xx, (xmin, w)) in float_weights(in_size, out_size).1.into_iter().enumerate() {
        for (k, v) in w.into_iter().enumerate() {
            m[xx * in_size + xmin + k] = v as f32;
        }
    }
    m
}

/// The same weights in Pillow's 22-bit fixed point.
fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let (ksize, rows) = float_weights(in_size, out_size);
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    for (xx, (xmin, w)) in rows.into_iter().enumerate() {
        for (x, v) in w.iter().enumerate() {
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if *v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, w.len()));
    }
    Coeffs { bounds, k, ksize }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resize an RGB image to exactly `width × height`, as Pillow's BILINEAR does.
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    if iw == ow && ih == oh {
        return img.clone();
    }
    let src = img.as_raw();
    let need_h = iw != ow;
    let need_v = ih != oh;
    let horiz = precompute(iw, ow);
    let mut vert = precompute(ih, oh);
    let half = 1i32 << (PRECISION_BITS - 1);

    // Horizontal pass over the rows the vertical pass reads.
    let (tmp, tw, row_offset) = if need_h {
        let first = vert.bounds[0].0;
        let last = vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1;
        let rows = last - first;
        let mut tmp = vec![0u8; rows * ow * 3];
        tmp.par_chunks_mut(ow * 3).enumerate().for_each(|(y, out)| {
            let row = &src[(y + first) * iw * 3..(y + first + 1) * iw * 3];
            for (xx, px) in out.chunks_exact_mut(3).enumerate() {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.k[xx * horiz.ksize..xx * horiz.ksize + n];
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (x, &kx) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    s0 = s0.wrapping_add(p[0] as i32 * kx);
                    s1 = s1.wrapping_add(p[1] as i32 * kx);
                    s2 = s2.wrapping_add(p[2] as i32 * kx);
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        });
        for b in vert.bounds.iter_mut() {
            b.0 -= first;
        }
        (tmp, ow, 0usize)
    } else {
        (src.to_vec(), iw, 0usize)
    };
    if !need_v {
        return RgbImage::from_raw(ow as u32, oh as u32, tmp).expect("size matches");
    }
    let mut out = vec![0u8; ow * oh * 3];
    out.par_chunks_mut(ow * 3)
        .enumerate()
        .for_each(|(yy, orow)| {
            let (ymin, n) = vert.bounds[yy];
            let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
            for (xx, px) in orow.chunks_exact_mut(3).enumerate() {
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (y, &ky) in k.iter().enumerate() {
                    let i = ((ymin + y + row_offset) * tw + xx) * 3;
                    s0 = s0.wrapping_add(tmp[i] as i32 * ky);
                    s1 = s1.wrapping_add(tmp[i + 1] as i32 * ky);
                    s2 = s2.wrapping_add(tmp[i + 2] as i32 * ky);
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        });
    RgbImage::from_raw(ow as u32, oh as u32, out).expect("size matches")
}

/// The size torchvision's `Resize(size)` gives: shorter side `size`, longer side
/// `floor(size · long / short)`.
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= height {
        let h = (size as u64 * height as u64 / width as u64) as u32;
        (size, h)
    } else {
        let w = (size as u64 * width as u64 / height as u64) as u32;
        (w, size)
    }
}

/// Resize so the shorter side is `size` (Pillow BILINEAR).
pub fn resize_shorter(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = shorter_side_size(img.width(), img.height(), size);
    resize_bilinear(img, w, h)
}

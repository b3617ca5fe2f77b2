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

/// Pillow's bilinear weights for one dimension, in floating point and normalised: for each
/// output pixel in `outputs`, the first input index and the weights of the inputs from there;
/// plus the largest number of taps (Pillow's `ksize`). Each output pixel's weights depend only
/// on its own index, so computing a window of the output gives the same numbers as computing
/// all of it.
fn float_weights(
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
) -> (usize, Vec<(usize, Vec<f64>)>) {
    let (in0, in1) = (0.0f64, in_size as f32 as f64);
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let rows = outputs
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (0..xmax.saturating_sub(xmin))
                .map(|x| triangle((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            (
                xmin.min(in_size.saturating_sub(1)),
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
    bilinear_matrix_rows(in_size, out_size, 0..out_size)
}

/// The rows `outputs` of [`bilinear_matrix`]: `[outputs.len(), in]`, without building the
/// others (a centre crop needs only its own rows, whatever the image's aspect ratio).
pub fn bilinear_matrix_rows(
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
) -> Vec<f32> {
    let n = outputs.len();
    let mut m = vec![0f32; n * in_size];
    for (r, (xmin, w)) in float_weights(in_size, out_size, outputs)
        .1
        .into_iter()
        .enumerate()
    {
        for (k, v) in w.into_iter().enumerate() {
            m[r * in_size + xmin + k] = v as f32;
        }
    }
    m
}

/// The same weights in Pillow's 22-bit fixed point, for the outputs `outputs`.
fn precompute(in_size: usize, out_size: usize, outputs: std::ops::Range<usize>) -> Coeffs {
    let (ksize, rows) = float_weights(in_size, out_size, outputs);
    let mut bounds = Vec::with_capacity(rows.len());
    let mut k = vec![0i32; rows.len() * ksize];
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

/// A rectangle of an image: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Window {
    /// The whole of a `width × height` image.
    pub fn full(width: usize, height: usize) -> Self {
        Window {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// Resize an RGB image to exactly `width × height`, as Pillow's BILINEAR does.
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (width as usize, height as usize);
    resize_window(img, w, h, Window::full(w, h))
}

/// The window `win` of the image Pillow's BILINEAR resize to `out_w × out_h` would give, byte
/// for byte, computing only that window: memory and time follow the window, not the resized
/// image (a 1 × 20,000 strip resized to a shorter side of 256 is 5 million pixels long).
pub fn resize_window(img: &RgbImage, out_w: usize, out_h: usize, win: Window) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (out_w, out_h);
    assert!(
        win.x + win.width <= ow && win.y + win.height <= oh,
        "resize window outside the output"
    );
    let (cw, ch) = (win.width, win.height);
    if cw == 0 || ch == 0 || iw == 0 || ih == 0 {
        return RgbImage::new(cw as u32, ch as u32);
    }
    let src = img.as_raw();
    let need_h = iw != ow;
    let need_v = ih != oh;
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut vert = need_v.then(|| precompute(ih, oh, win.y..win.y + ch));
    // The input rows the vertical pass reads (or the window's rows when there is none).
    let (first, last) = match &vert {
        Some(v) => {
            let first = v.bounds.iter().map(|b| b.0).min().unwrap_or(0);
            let last = v.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
            (first, last.max(first + 1).min(ih))
        }
        None => (win.y, win.y + ch),
    };
    let rows = last - first;
    // Horizontal pass over those rows, only for the window's columns.
    let mut tmp = vec![0u8; rows * cw * 3];
    if need_h {
        let horiz = precompute(iw, ow, win.x..win.x + cw);
        tmp.par_chunks_mut(cw * 3).enumerate().for_each(|(y, out)| {
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
    } else {
        for (y, out) in tmp.chunks_exact_mut(cw * 3).enumerate() {
            let start = ((y + first) * iw + win.x) * 3;
            out.copy_from_slice(&src[start..start + cw * 3]);
        }
    }
    let Some(vert) = vert.as_mut() else {
        return RgbImage::from_raw(cw as u32, ch as u32, tmp).expect("size matches");
    };
    for b in vert.bounds.iter_mut() {
        b.0 -= first;
    }
    let mut out = vec![0u8; cw * ch * 3];
    out.par_chunks_mut(cw * 3)
        .enumerate()
        .for_each(|(yy, orow)| {
            let (ymin, n) = vert.bounds[yy];
            let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
            for (xx, px) in orow.chunks_exact_mut(3).enumerate() {
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (y, &ky) in k.iter().enumerate() {
                    let i = ((ymin + y) * cw + xx) * 3;
                    s0 = s0.wrapping_add(tmp[i] as i32 * ky);
                    s1 = s1.wrapping_add(tmp[i + 1] as i32 * ky);
                    s2 = s2.wrapping_add(tmp[i + 2] as i32 * ky);
                }
                px[0] = clip8(s0);
                px[1] = clip8(s1);
                px[2] = clip8(s2);
            }
        });
    RgbImage::from_raw(cw as u32, ch as u32, out).expect("size matches")
}

/// The size torchvision's `Resize(size)` gives: shorter side `size`, longer side
/// `floor(size · long / short)` (which can exceed `u32` for extreme aspect ratios).
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (usize, usize) {
    let (w, h, s) = (width.max(1) as u64, height.max(1) as u64, size as u64);
    if w <= h {
        (s as usize, (s * h / w) as usize)
    } else {
        ((s * w / h) as usize, s as usize)
    }
}

/// Resize so the shorter side is `size` (Pillow BILINEAR). The whole resized image is
/// built: for a centre crop of it use [`resize_shorter_crop`], whose memory does not grow
/// with the aspect ratio.
pub fn resize_shorter(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = shorter_side_size(img.width(), img.height(), size);
    resize_window(img, w, h, Window::full(w, h))
}

/// The window of the resized image (shorter side `size`) that a centre crop of `crop` keeps,
/// and the offsets at which it lands in the `crop × crop` result (non-zero only where the
/// resized image is smaller than the crop: torchvision pads with zeros).
pub fn center_window(
    width: u32,
    height: u32,
    size: u32,
    crop: u32,
) -> ((usize, usize), Window, (u32, u32)) {
    let (rw, rh) = shorter_side_size(width, height, size);
    let c = crop as usize;
    let axis = |n: usize| -> (usize, usize, u32) {
        if n >= c {
            (super::transforms::center_crop_offset_usize(n, c), c, 0)
        } else {
            (0, n, ((c - n) / 2) as u32)
        }
    };
    let (x, cw, px) = axis(rw);
    let (y, ch, py) = axis(rh);
    (
        (rw, rh),
        Window {
            x,
            y,
            width: cw,
            height: ch,
        },
        (px, py),
    )
}

/// Resize so the shorter side is `size`, then take the centre `crop × crop`, as torchvision's
/// `Resize(size)` + `CenterCrop(crop)` on a PIL image, computing only the pixels kept.
pub fn resize_shorter_crop(img: &RgbImage, size: u32, crop: u32) -> RgbImage {
    let ((rw, rh), win, (px, py)) = center_window(img.width(), img.height(), size, crop);
    let part = resize_window(img, rw, rh, win);
    if px == 0 && py == 0 && part.width() == crop && part.height() == crop {
        return part;
    }
    let mut out = RgbImage::new(crop, crop);
    image::imageops::replace(&mut out, &part, px as i64, py as i64);
    out
}

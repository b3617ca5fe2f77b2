//! Antialiased resizing, equal byte for byte to Pillow's `Image.resize(size, Image.BILINEAR)`
//! (what torchvision's `Resize` does to a PIL image) and `Image.BICUBIC` (timm's and DINOv2's
//! transforms).
//!
//! Pillow's algorithm: a filter (triangle, or the cubic convolution with a = −0.5) whose
//! support grows with the downscaling factor;
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

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Pillow's BILINEAR: the triangle filter, support 1.
    #[default]
    Bilinear,
    /// Pillow's BICUBIC: Keys' cubic convolution with a = −0.5, support 2.
    Bicubic,
}

impl Filter {
    /// The filter's half-width at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The filter's weight at distance `x`.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// The name Pillow and torchvision use (`bilinear`, `bicubic`).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
        }
    }
}

/// Pillow's weights of `filter` for one dimension, in floating point and normalised: for each
/// output pixel in `outputs`, the first input index and the weights of the inputs from there;
/// plus the largest number of taps (Pillow's `ksize`). Each output pixel's weights depend only
/// on its own index, so computing a window of the output gives the same numbers as computing
/// all of it.
fn float_weights(
    filter: Filter,
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
) -> (usize, Vec<(usize, Vec<f64>)>) {
    let (in0, in1) = (0.0f64, in_size as f32 as f64);
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let rows = outputs
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (0..xmax.saturating_sub(xmin))
                .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
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
    resize_matrix_rows(Filter::Bilinear, in_size, out_size, 0..out_size)
}

/// The rows `outputs` of the `[out, in]` matrix of `filter`'s weights (as
/// [`bilinear_matrix`] for any filter): `[outputs.len(), in]`, without building the others (a
/// centre crop needs only its own rows, whatever the image's aspect ratio).
pub fn resize_matrix_rows(
    filter: Filter,
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
) -> Vec<f32> {
    let n = outputs.len();
    let mut m = vec![0f32; n * in_size];
    for (r, (xmin, w)) in float_weights(filter, in_size, out_size, outputs)
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
fn precompute(
    filter: Filter,
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
) -> Coeffs {
    let (ksize, rows) = float_weights(filter, in_size, out_size, outputs);
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
    resize_with(img, width, height, Filter::Bilinear)
}

/// Resize an RGB image to exactly `width × height` with `filter`, as Pillow does.
pub fn resize_with(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (width as usize, height as usize);
    resize_window_with(img, w, h, Window::full(w, h), filter)
}

/// The window `win` of the image Pillow's BILINEAR resize to `out_w × out_h` would give, byte
/// for byte, computing only that window: memory and time follow the window, not the resized
/// image (a 1 × 20,000 strip resized to a shorter side of 256 is 5 million pixels long).
pub fn resize_window(img: &RgbImage, out_w: usize, out_h: usize, win: Window) -> RgbImage {
    resize_window_with(img, out_w, out_h, win, Filter::Bilinear)
}

/// [`resize_window`] with any of Pillow's filters.
///
/// The two passes run in Pillow 13's order: horizontal first, unless the height shrinks by
/// more than twice as many pixels as the width (then vertical first); each pass rounds to
/// u8, so the order is part of the result.
pub fn resize_window_with(
    img: &RgbImage,
    out_w: usize,
    out_h: usize,
    win: Window,
    filter: Filter,
) -> RgbImage {
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
    let shrink_h = ih as i64 - oh as i64;
    let vertical_first = shrink_h > 0 && shrink_h > (iw as i64 - ow as i64) * 2;
    let horiz = need_h.then(|| precompute(filter, iw, ow, win.x..win.x + cw));
    let vert = need_v.then(|| precompute(filter, ih, oh, win.y..win.y + ch));
    // the input span `[first, last)` a pass's coefficients read
    let span = |c: &Option<Coeffs>, start: usize, len: usize, size: usize| match c {
        Some(c) => {
            let first = c.bounds.iter().map(|b| b.0).min().unwrap_or(0);
            let last = c.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
            (first, last.max(first + 1).min(size))
        }
        None => (start, start + len),
    };
    if let (true, Some(v)) = (vertical_first, &vert) {
        // vertical pass over the input columns the horizontal pass will read, then the
        // horizontal pass over its rows
        let (c0, c1) = span(&horiz, win.x, cw, iw);
        let tw = c1 - c0;
        let tmp = vertical(src, iw, c0, tw, v, 0);
        let out = match &horiz {
            Some(h) => horizontal(&tmp, tw, 0..ch, h, c0),
            None => tmp,
        };
        return RgbImage::from_raw(cw as u32, ch as u32, out).expect("size matches");
    }
    // horizontal pass over only the input rows the vertical pass will read
    let (r0, r1) = span(&vert, win.y, ch, ih);
    let tmp = match &horiz {
        Some(h) => horizontal(src, iw, r0..r1, h, 0),
        None => copy_window(src, iw, win.x, r0, cw, r1 - r0),
    };
    let out = match &vert {
        Some(v) => vertical(&tmp, cw, 0, cw, v, r0),
        None => tmp,
    };
    RgbImage::from_raw(cw as u32, ch as u32, out).expect("size matches")
}

/// One output pixel of a pass: the taps `k` (22-bit fixed point) over the RGB pixels of
/// `src` at `at(0)`, `at(1)`, …, rounded and clipped to u8 as Pillow does.
#[inline(always)]
fn weighted_sum(src: &[u8], k: &[i32], at: impl Fn(usize) -> usize) -> [u8; 3] {
    let half = 1i32 << (PRECISION_BITS - 1);
    let (mut s0, mut s1, mut s2) = (half, half, half);
    for (t, &kt) in k.iter().enumerate() {
        let i = at(t);
        s0 = s0.wrapping_add(src[i] as i32 * kt);
        s1 = s1.wrapping_add(src[i + 1] as i32 * kt);
        s2 = s2.wrapping_add(src[i + 2] as i32 * kt);
    }
    [clip8(s0), clip8(s1), clip8(s2)]
}

/// The `w × h` block at `(x, y)` of an RGB buffer `stride` pixels wide.
fn copy_window(src: &[u8], stride: usize, x: usize, y: usize, w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * h * 3];
    for (r, o) in out.chunks_exact_mut(w * 3).enumerate() {
        let start = ((y + r) * stride + x) * 3;
        o.copy_from_slice(&src[start..start + w * 3]);
    }
    out
}

/// Pillow's horizontal pass: for the rows `rows` of `src` (`width` pixels a row), one output
/// pixel per coefficient row; `col0` is the input column the buffer's column 0 stands for.
fn horizontal(
    src: &[u8],
    width: usize,
    rows: std::ops::Range<usize>,
    h: &Coeffs,
    col0: usize,
) -> Vec<u8> {
    let n = h.bounds.len();
    let mut out = vec![0u8; rows.len() * n * 3];
    out.par_chunks_mut(n * 3).enumerate().for_each(|(y, o)| {
        let row = &src[(y + rows.start) * width * 3..(y + rows.start + 1) * width * 3];
        for (xx, px) in o.chunks_exact_mut(3).enumerate() {
            let (xmin, taps) = h.bounds[xx];
            let k = &h.k[xx * h.ksize..xx * h.ksize + taps];
            px.copy_from_slice(&weighted_sum(row, k, |x| (xmin - col0 + x) * 3));
        }
    });
    out
}

/// Pillow's vertical pass: for the columns `col0..col0 + cols` of `src` (`width` pixels a
/// row), one output row per coefficient row; `row0` is the input row the buffer's row 0
/// stands for.
fn vertical(
    src: &[u8],
    width: usize,
    col0: usize,
    cols: usize,
    v: &Coeffs,
    row0: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; v.bounds.len() * cols * 3];
    out.par_chunks_mut(cols * 3)
        .enumerate()
        .for_each(|(yy, orow)| {
            let (ymin, taps) = v.bounds[yy];
            let k = &v.k[yy * v.ksize..yy * v.ksize + taps];
            for (xx, px) in orow.chunks_exact_mut(3).enumerate() {
                let at = |y: usize| ((ymin - row0 + y) * width + col0 + xx) * 3;
                px.copy_from_slice(&weighted_sum(src, k, at));
            }
        });
    out
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
    resize_shorter_crop_with(img, size, crop, Filter::Bilinear)
}

/// [`resize_shorter_crop`] with any of Pillow's filters (torchvision's
/// `Resize(size, interpolation)`).
pub fn resize_shorter_crop_with(img: &RgbImage, size: u32, crop: u32, filter: Filter) -> RgbImage {
    let ((rw, rh), win, (px, py)) = center_window(img.width(), img.height(), size, crop);
    let part = resize_window_with(img, rw, rh, win, filter);
    if px == 0 && py == 0 && part.width() == crop && part.height() == crop {
        return part;
    }
    let mut out = RgbImage::new(crop, crop);
    image::imageops::replace(&mut out, &part, px as i64, py as i64);
    out
}

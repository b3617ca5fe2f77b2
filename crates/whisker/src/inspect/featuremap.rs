//! A picture of one layer's activations: the input crop beside a grid of the most active
//! channels, each scaled to its own range and coloured with a perceptual colour map.

use burn::tensor::Tensor;
use image::{imageops, Rgb, RgbImage};

use crate::backbones::{Backbone, Taps};
use crate::data::transforms::to_tensor;
use crate::error::{Error, Result};

/// The default layer to show: a mid-level one, the deepest whose maps are still at least
/// 1/8 of the input's size (28×28 for 224), where shapes and textures are recognisable; in a
/// network without one (a vision transformer's patch grid is 1/14 or 1/16), the deepest of
/// its widest maps (the last block's tokens, not an attention map of a few heads).
pub fn default_layer(b: &Backbone) -> String {
    let s = b.spec.input_size;
    let x = Tensor::<4>::zeros([1, 3, s, s], &b.device());
    let mut taps = Taps::all();
    let _ = b.forward(x, &mut taps);
    let widest = taps
        .maps
        .iter()
        .map(|(_, t)| t.dims()[1])
        .max()
        .unwrap_or(0);
    taps.maps
        .iter()
        .filter(|(_, t)| t.dims()[2] * 8 >= s)
        .map(|(n, _)| n.clone())
        .next_back()
        .or_else(|| {
            taps.maps
                .iter()
                .filter(|(n, t)| {
                    t.dims()[1] == widest && !crate::backbones::FINAL_NORM.contains(&n.as_str())
                })
                .map(|(n, _)| n.clone())
                .next_back()
        })
        .unwrap_or_else(|| taps.names.first().cloned().unwrap_or_default())
}

/// Channel activations of `layer` for one preprocessed image: `(channels, h, w, values)`.
pub fn activations(
    b: &Backbone,
    crop: &RgbImage,
    layer: &str,
) -> Result<(usize, usize, usize, Vec<f32>)> {
    let device = b.device();
    let mut taps = Taps::only(&[layer]);
    let _ = b.forward(to_tensor(std::slice::from_ref(crop), &device), &mut taps);
    let t: Tensor<4> = taps.get(layer).cloned().ok_or_else(|| {
        Error::Invalid(format!(
            "{} has no layer `{layer}`; its layers: {}",
            b.spec.name,
            taps.names.join(", ")
        ))
    })?;
    let [_, c, h, w] = t.dims();
    let v = t
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Internal(format!("{e:?}")))?;
    Ok((c, h, w, v))
}

/// Where a channel's tile is in [`render`]'s picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePos {
    pub channel: usize,
    pub x: u32,
    pub y: u32,
}

/// The picture: the input crop (left) and the `channels` most active channels (by mean
/// activation), tiles of `tile` pixels, each scaled to its own range; and where each
/// channel's tile is.
pub fn render(
    crop: &RgbImage,
    acts: &(usize, usize, usize, Vec<f32>),
    channels: usize,
    tile: u32,
) -> (RgbImage, Vec<TilePos>) {
    let (c, h, w, v) = acts;
    let plane = h * w;
    let mut order: Vec<usize> = (0..*c).collect();
    let mean = |k: usize| v[k * plane..(k + 1) * plane].iter().sum::<f32>() / plane.max(1) as f32;
    order.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)));
    order.truncate(channels.max(1).min(*c));
    let cols = (order.len() as f64).sqrt().ceil() as u32;
    let rows = (order.len() as u32).div_ceil(cols);
    let gap = 2;
    let side = rows * (tile + gap);
    let left = side.max(tile);
    let mut out = RgbImage::from_pixel(
        left + gap * 4 + cols * (tile + gap),
        side.max(left),
        Rgb([255, 255, 255]),
    );
    let input = imageops::resize(crop, left, left, imageops::FilterType::Triangle);
    let mut tiles = Vec::with_capacity(order.len());
    imageops::overlay(&mut out, &input, 0, 0);
    for (n, &k) in order.iter().enumerate() {
        let p = &v[k * plane..(k + 1) * plane];
        let (lo, hi) = p
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let range = if hi > lo { hi - lo } else { 1.0 };
        let small = RgbImage::from_fn(*w as u32, *h as u32, |x, y| {
            crate::report::colormap((p[y as usize * w + x as usize] - lo) / range)
        });
        let big = imageops::resize(&small, tile, tile, imageops::FilterType::Nearest);
        let (gx, gy) = ((n as u32) % cols, (n as u32) / cols);
        let (x, y) = (left + gap * 4 + gx * (tile + gap), gy * (tile + gap));
        imageops::overlay(&mut out, &big, x as i64, y as i64);
        tiles.push(TilePos { channel: k, x, y });
    }
    (out, tiles)
}

//! Moving between PyTorch's NCHW and the kernels' NHWC.

use rayon::prelude::*;

use crate::ShapeError;

/// `y[b, y, x, c] = (x[b, c, y, x] · scale − mean[c]) / std[c]`: NCHW pixels to normalised
/// NHWC input, in one pass (the same operations, in the same order, as the reference).
#[allow(clippy::too_many_arguments)]
pub fn nchw_to_nhwc_normalized(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    scale: f32,
    mean: &[f32],
    std: &[f32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    if x.len() != n * c * h * w || out.len() != x.len() || mean.len() != c || std.len() != c {
        return Err(ShapeError(format!(
            "normalising {} values as [{n}, {c}, {h}, {w}] into {}",
            x.len(),
            out.len()
        )));
    }
    let hw = h * w;
    if hw == 0 || c == 0 {
        return Ok(());
    }
    // runs of whole rows, a few per thread (a batch of one image is split too)
    let rows = n * h;
    let per = rows
        .div_ceil(4 * rayon::current_num_threads().max(1))
        .max(1);
    out.par_chunks_mut(per * w * c)
        .enumerate()
        .for_each(|(t, run)| {
            for (i, row) in run.chunks_exact_mut(w * c).enumerate() {
                let r = t * per + i;
                let (b, y) = (r / h, r % h);
                for ch in 0..c {
                    let (m, s) = (mean[ch], std[ch]);
                    let src = &x[(b * c + ch) * hw + y * w..][..w];
                    for (p, &v) in src.iter().enumerate() {
                        row[p * c + ch] = if scale == 1.0 {
                            (v - m) / s
                        } else {
                            (v * scale - m) / s
                        };
                    }
                }
            }
        });
    Ok(())
}

/// NHWC `[n, h, w, c]` to NCHW `[n, c, h, w]`.
pub fn nhwc_to_nchw(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    if x.len() != n * h * w * c || out.len() != x.len() {
        return Err(ShapeError(format!(
            "transposing {} values as [{n}, {h}, {w}, {c}] into {}",
            x.len(),
            out.len()
        )));
    }
    let hw = h * w;
    if hw == 0 || c == 0 {
        return Ok(());
    }
    out.par_chunks_mut(hw * c).enumerate().for_each(|(b, img)| {
        let src = &x[b * hw * c..(b + 1) * hw * c];
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                img[ch * hw + p] = v;
            }
        }
    });
    Ok(())
}

//! Multi-head self-attention over tokens, as PyTorch's `scaled_dot_product_attention`
//! computes it on the CPU: for each image and head, `softmax(q·kᵀ·scale)·v`.
//!
//! The input is the packed projection `[n, t, 3·c]` (q, k, v side by side, each `c = heads·d`
//! wide, heads side by side within each); the output `[n, t, c]` (heads side by side, ready
//! for the output projection). Per (image, head) — in parallel — the head's q, k and v are
//! gathered contiguous, both products run on the dense kernels (k and v packed as a 1×1
//! convolution's weights), and the softmax runs on vectors (exp as the activations' `exp`).

use rayon::prelude::*;

use crate::conv::{conv2d, PackedConv};
#[cfg(target_arch = "x86_64")]
use crate::simd::{Vf, F256, F512};
use crate::{Act, ConvShape, Isa, ShapeError};

/// Softmax of each row of `x` (`[rows, cols]`) in place, after scaling it by `scale`:
/// `e^(s·x − max) / Σ`, on the `isa` path (the vector paths run the scalar path's operations
/// in its order, with the row sums in lanes). Weights below the normal range are flushed to
/// zero ([`crate::act::flush`]).
pub fn softmax_rows(isa: Isa, x: &mut [f32], cols: usize, scale: f32) -> Result<(), ShapeError> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(ShapeError(format!(
            "softmax: {} values are not rows of {cols}",
            x.len()
        )));
    }
    x.par_chunks_mut(cols * 16.max(4096 / cols).min(256))
        .for_each(|rows| {
            for r in rows.chunks_exact_mut(cols) {
                softmax_row(isa, r, scale);
            }
        });
    Ok(())
}

fn softmax_row(isa: Isa, r: &mut [f32], scale: f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
        Isa::AVX512 => unsafe { softmax_avx512(r, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::AVX2 => unsafe { softmax_avx2(r, scale) },
        _ => {
            let mut m = f32::NEG_INFINITY;
            for v in r.iter_mut() {
                *v *= scale;
                m = m.max(*v);
            }
            let mut s = 0f32;
            for v in r.iter_mut() {
                *v = crate::act::exp(*v - m);
                s += *v;
            }
            let inv = 1.0 / s;
            r.iter_mut().for_each(|v| *v = crate::act::flush(*v * inv));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_avx512(r: &mut [f32], scale: f32) {
    // SAFETY: called only where the CPU has AVX-512F.
    unsafe { softmax_vec::<F512>(r, scale) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(r: &mut [f32], scale: f32) {
    // SAFETY: called only where the CPU has AVX2 and FMA.
    unsafe { softmax_vec::<F256>(r, scale) }
}

/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn softmax_vec<V: Vf>(r: &mut [f32], scale: f32) {
    // SAFETY: the caller's contract; whole vectors below `full`, scalars after.
    unsafe {
        let (len, p) = (r.len(), r.as_mut_ptr());
        let full = len - len % V::L;
        let sc = V::splat(scale);
        // scaled, and the row's maximum (vector lanes, then the tail)
        let mut mv = V::splat(f32::NEG_INFINITY);
        let mut i = 0;
        while i < full {
            let v = V::mul(V::load_n(p.add(i), V::L), sc);
            V::store_n(p.add(i), v, V::L);
            mv = V::max(mv, v);
            i += V::L;
        }
        let mut m = horizontal(mv).into_iter().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut r[full..] {
            *v *= scale;
            m = m.max(*v);
        }
        // e^(x − m) and its sum
        let mvec = V::splat(m);
        let mut sum = V::splat(0.0);
        let mut i = 0;
        while i < full {
            let e = V::exp(V::sub(V::load_n(p.add(i), V::L), mvec));
            V::store_n(p.add(i), e, V::L);
            sum = V::add(sum, e);
            i += V::L;
        }
        let mut s: f32 = horizontal(sum).iter().take(V::L).sum();
        for v in &mut r[full..] {
            *v = crate::act::exp(*v - m);
            s += *v;
        }
        let inv = 1.0 / s;
        let iv = V::splat(inv);
        let mut i = 0;
        while i < full {
            let w = V::mul(V::load_n(p.add(i), V::L), iv);
            V::store_n(p.add(i), V::flush(w), V::L);
            i += V::L;
        }
        for v in &mut r[full..] {
            *v = crate::act::flush(*v * inv);
        }
    }
}

/// The lanes of a vector (those past `L` are negative infinity).
///
/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn horizontal<V: Vf>(v: V) -> [f32; 16] {
    let mut lanes = [f32::NEG_INFINITY; 16];
    // SAFETY: the caller's contract; `L ≤ 16` lanes stored.
    unsafe { V::store_n(lanes.as_mut_ptr(), v, V::L) };
    lanes
}

/// Multi-head self-attention: `qkv` `[n, t, 3·heads·d]` → `out` `[n, t, heads·d]`, with the
/// products scaled by `scale` (`1/√d`). With `probs` (`[n, heads, t, t]`), the attention
/// weights (after the softmax) are kept there, for a backward pass.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    isa: Isa,
    qkv: &[f32],
    (n, t, heads, d): (usize, usize, usize, usize),
    scale: f32,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
) -> Result<(), ShapeError> {
    let c = heads * d;
    if qkv.len() != n * t * 3 * c || out.len() != n * t * c || t == 0 || c == 0 {
        return Err(ShapeError(format!(
            "attention: {} input and {} output values for {n} × {t} tokens, {heads} heads of {d}",
            qkv.len(),
            out.len()
        )));
    }
    if probs.as_ref().is_some_and(|p| p.len() != n * heads * t * t) {
        return Err(ShapeError(format!(
            "attention weights: {} values for {n} × {heads} × {t}²",
            probs.as_ref().map_or(0, |p| p.len())
        )));
    }
    let mut own = Vec::new();
    let probs = match probs {
        Some(p) => p,
        None => {
            own = crate::buffers::take(n * heads * t * t);
            &mut own[..]
        }
    };
    // each (image, head): its weights and its output columns
    let mut heads_out = crate::buffers::take(n * heads * t * d);
    let rows = ConvShape::symmetric(1, t, 1, 1, 0);
    probs
        .par_chunks_mut(t * t)
        .zip(heads_out.par_chunks_mut(t * d))
        .enumerate()
        .try_for_each(|(j, (s, o))| -> Result<(), ShapeError> {
            let (b, h) = (j / heads, j % heads);
            let img = &qkv[b * t * 3 * c..][..t * 3 * c];
            let part = |which: usize| {
                let mut v = vec![0f32; t * d];
                for (tok, dst) in v.chunks_exact_mut(d).enumerate() {
                    let at = tok * 3 * c + which * c + h * d;
                    dst.copy_from_slice(&img[at..at + d]);
                }
                v
            };
            let (q, k, v) = (part(0), part(1), part(2));
            // s = q·kᵀ: k as the weights `[t out, d in]` of a 1×1 convolution over t rows
            let kw = PackedConv::from_oihw(&k, None, t, d, 1, 1)?;
            conv2d(isa, &kw, &q, &rows, None, Act::None, s)?;
            softmax_row_block(isa, s, t, scale);
            // o = s·v: v as the weights `[t in, d out]`
            let vw = PackedConv::from_in_out(&v, None, t, d)?;
            conv2d(isa, &vw, s, &rows, None, Act::None, o)
        })?;
    // heads side by side
    out.par_chunks_mut(t * c).enumerate().for_each(|(b, dst)| {
        for h in 0..heads {
            let src = &heads_out[(b * heads + h) * t * d..][..t * d];
            for (tok, row) in src.chunks_exact(d).enumerate() {
                dst[tok * c + h * d..][..d].copy_from_slice(row);
            }
        }
    });
    crate::buffers::give(heads_out);
    if !own.is_empty() {
        crate::buffers::give(own);
    }
    Ok(())
}

/// [`softmax_rows`] on one head's `t × t` block, on this thread.
fn softmax_row_block(isa: Isa, s: &mut [f32], t: usize, scale: f32) {
    for r in s.chunks_exact_mut(t) {
        softmax_row(isa, r, scale);
    }
}

/// `[t, t]` transposed.
fn transpose(x: &[f32], t: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * t];
    for i in 0..t {
        for j in 0..t {
            y[j * t + i] = x[i * t + j];
        }
    }
    y
}

/// Multi-head self-attention's backward pass: from the input `qkv` (`[n, t, 3·heads·d]`),
/// the weights [`attention`] kept (`probs`, `[n, heads, t, t]`) and the output's gradient
/// `g` (`[n, t, heads·d]`), the input's gradient `dqkv` (written). Per image and head:
/// `dv = pᵀ·g`, `dp = g·vᵀ`, the softmax's `ds = p ⊙ (dp − Σ dp ⊙ p)·scale`, `dq = ds·k`,
/// `dk = dsᵀ·q`, the products on the dense kernels.
pub fn attention_backward(
    isa: Isa,
    qkv: &[f32],
    probs: &[f32],
    g: &[f32],
    (n, t, heads, d): (usize, usize, usize, usize),
    scale: f32,
    dqkv: &mut [f32],
) -> Result<(), ShapeError> {
    let c = heads * d;
    if qkv.len() != n * t * 3 * c
        || dqkv.len() != qkv.len()
        || g.len() != n * t * c
        || probs.len() != n * heads * t * t
        || t == 0
        || c == 0
    {
        return Err(ShapeError(format!(
            "attention backward: {} input, {} weights, {} gradient values for {n} × {t} tokens, {heads} heads of {d}",
            qkv.len(),
            probs.len(),
            g.len()
        )));
    }
    let rows = ConvShape::symmetric(1, t, 1, 1, 0);
    // per (image, head): dq, dk, dv side by side
    let mut parts = crate::buffers::take(n * heads * 3 * t * d);
    parts.par_chunks_mut(3 * t * d).enumerate().try_for_each(
        |(j, out)| -> Result<(), ShapeError> {
            let (b, h) = (j / heads, j % heads);
            let img = &qkv[b * t * 3 * c..][..t * 3 * c];
            let gather = |src: &[f32], stride: usize, off: usize| {
                let mut v = vec![0f32; t * d];
                for (tok, dst) in v.chunks_exact_mut(d).enumerate() {
                    dst.copy_from_slice(&src[tok * stride + off..][..d]);
                }
                v
            };
            let (q, k, v) = (
                gather(img, 3 * c, h * d),
                gather(img, 3 * c, c + h * d),
                gather(img, 3 * c, 2 * c + h * d),
            );
            let go = gather(&g[b * t * c..][..t * c], c, h * d);
            let p = &probs[j * t * t..][..t * t];
            let (dq, rest) = out.split_at_mut(t * d);
            let (dk, dv) = rest.split_at_mut(t * d);
            // dv = pᵀ·g
            let gw = PackedConv::from_in_out(&go, None, t, d)?;
            conv2d(isa, &gw, &transpose(p, t), &rows, None, Act::None, dv)?;
            // dp = g·vᵀ, then through the softmax and the scale
            let vw = PackedConv::from_oihw(&v, None, t, d, 1, 1)?;
            let mut ds = vec![0f32; t * t];
            conv2d(isa, &vw, &go, &rows, None, Act::None, &mut ds)?;
            for (dr, pr) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                let dot: f64 = dr
                    .iter()
                    .zip(pr)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let dot = dot as f32;
                for (dv, &pv) in dr.iter_mut().zip(pr) {
                    *dv = pv * (*dv - dot) * scale;
                }
            }
            // dq = ds·k, dk = dsᵀ·q
            let kw = PackedConv::from_in_out(&k, None, t, d)?;
            conv2d(isa, &kw, &ds, &rows, None, Act::None, dq)?;
            let qw = PackedConv::from_in_out(&q, None, t, d)?;
            conv2d(isa, &qw, &transpose(&ds, t), &rows, None, Act::None, dk)
        },
    )?;
    dqkv.par_chunks_mut(t * 3 * c)
        .enumerate()
        .for_each(|(b, dst)| {
            for h in 0..heads {
                let part = &parts[(b * heads + h) * 3 * t * d..][..3 * t * d];
                for (which, src) in part.chunks_exact(t * d).enumerate() {
                    for (tok, row) in src.chunks_exact(d).enumerate() {
                        dst[tok * 3 * c + which * c + h * d..][..d].copy_from_slice(row);
                    }
                }
            }
        });
    crate::buffers::give(parts);
    Ok(())
}

//! LayerNorm over the last dimension: `rows` rows of `c` values (a ConvNeXt's NHWC map:
//! one row a pixel, normalised over its channels; a transformer's tokens: one row a token),
//! each normalised by its own mean and biased variance, then `γ·x̂ + β`, as PyTorch's
//! `layer_norm`.
//!
//! Forward: per row, the mean, then the squared deviations from it (two passes, no
//! cancellation), each summed in vector lanes and the lanes added in `f64`; `1/√(σ²+ε)` in
//! `f64`; then `(x − μ)·r·γ + β` in one pass. Backward (PyTorch's `layer_norm_backward`):
//! with `x̂ = (x − μ)·r` and `d = g·γ`, `dx = r·(d − mean(d) − x̂·mean(d·x̂))`, `dγ = Σ g·x̂`,
//! `dβ = Σ g` over the rows (two-level sums).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::simd::{Vf, F256, F512};
use crate::{Isa, ShapeError};

/// Rows a parallel job takes.
const ROWS_PER_JOB: usize = 64;

fn check(what: &str, len: usize, want: usize) -> Result<(), ShapeError> {
    if len == want {
        Ok(())
    } else {
        Err(ShapeError(format!("{what}: {len} values, expected {want}")))
    }
}

/// LayerNorm of `x` (`[rows, c]`) into `out`, with `γ`, `β` (`[c]`) and `eps`. With `stats`
/// (`[rows, 2]`), each row's `(μ, 1/√(σ²+ε))` is written there, for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    isa: Isa,
    x: &[f32],
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    out: &mut [f32],
    stats: Option<&mut [f32]>,
) -> Result<(), ShapeError> {
    if c == 0 {
        return Err(ShapeError("layer norm over 0 values".into()));
    }
    let rows = x.len() / c;
    check("layer norm input", x.len(), rows * c)?;
    check("layer norm output", out.len(), rows * c)?;
    check("layer norm γ", gamma.len(), c)?;
    check("layer norm β", beta.len(), c)?;
    let mut own = Vec::new();
    let stats = match stats {
        Some(s) => {
            check("layer norm statistics", s.len(), rows * 2)?;
            s
        }
        None => {
            own.resize(rows * 2, 0f32);
            &mut own[..]
        }
    };
    out.par_chunks_mut(ROWS_PER_JOB * c)
        .zip(x.par_chunks(ROWS_PER_JOB * c))
        .zip(stats.par_chunks_mut(ROWS_PER_JOB * 2))
        .for_each(|((o, xs), st)| {
            for ((orow, xrow), s) in o
                .chunks_exact_mut(c)
                .zip(xs.chunks_exact(c))
                .zip(st.chunks_exact_mut(2))
            {
                let (m, r) = match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: an `Isa` token for this path exists only where the CPU has the
                    // feature.
                    Isa::AVX512 => unsafe { row_avx512(xrow, gamma, beta, eps, orow) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Isa::AVX2 => unsafe { row_avx2(xrow, gamma, beta, eps, orow) },
                    _ => row_portable(xrow, gamma, beta, eps, orow),
                };
                s[0] = m;
                s[1] = r;
            }
        });
    Ok(())
}

/// A row's average from a sum over its `c` values: the mean from the values' sum, the biased
/// variance from the squared deviations' sum.
fn moments(sum: f64, c: usize) -> f64 {
    sum / c as f64
}

fn row_portable(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64, out: &mut [f32]) -> (f32, f32) {
    let c = x.len();
    let m = moments(lanes_sum::<8>(x, |v| v), c);
    let mf = m as f32;
    let var = moments(lanes_sum::<8>(x, |v| (v - mf) * (v - mf)), c);
    let r = (1.0 / (var + eps).sqrt()) as f32;
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = ((v - mf) * r).mul_add(g, b);
    }
    (mf, r)
}

/// `Σ f(x)` in `L` `f32` lanes (element `i` into lane `i mod L`), the lanes added in `f64`:
/// the vector paths' order.
fn lanes_sum<const L: usize>(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; L];
    let mut chunks = x.chunks_exact(L);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v);
    }
    acc.iter().map(|&a| a as f64).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn row_avx512(x: &[f32], g: &[f32], b: &[f32], eps: f64, out: &mut [f32]) -> (f32, f32) {
    // SAFETY: called only where the CPU has AVX-512F (the caller's `Isa` token).
    unsafe { row::<F512>(x, g, b, eps, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(x: &[f32], g: &[f32], b: &[f32], eps: f64, out: &mut [f32]) -> (f32, f32) {
    // SAFETY: called only where the CPU has AVX2 and FMA (the caller's `Isa` token).
    unsafe { row::<F256>(x, g, b, eps, out) }
}

/// One row on a vector path: whole vectors of `V::L` values in the loops, a last partial one
/// after them through `load_n`/`store_n` (zeros outside the row add nothing to the sums; the
/// loops keep no vector on the stack: tools/check-spills.py).
///
/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row<V: Vf>(x: &[f32], g: &[f32], b: &[f32], eps: f64, out: &mut [f32]) -> (f32, f32) {
    // SAFETY: the caller's contract; every load and store stays within the row (whole vectors
    // below `full`, then `c − full < L` lanes).
    unsafe {
        let c = x.len();
        let full = c - c % V::L;
        let tail = c - full;
        let lanes = |v: V| -> f64 {
            let mut t = [0f32; 16];
            V::store_n(t.as_mut_ptr(), v, V::L);
            t[..V::L].iter().map(|&a| a as f64).sum()
        };
        let mut acc = V::splat(0.0);
        let mut i = 0;
        while i < full {
            acc = V::add(acc, V::load_n(x.as_ptr().add(i), V::L));
            i += V::L;
        }
        if tail > 0 {
            acc = V::add(acc, V::load_n(x.as_ptr().add(full), tail));
        }
        let mf = moments(lanes(acc), c) as f32;
        let m = V::splat(mf);
        let mut acc = V::splat(0.0);
        let mut i = 0;
        while i < full {
            let d = V::sub(V::load_n(x.as_ptr().add(i), V::L), m);
            acc = V::fma(d, d, acc);
            i += V::L;
        }
        let mut var = lanes(acc);
        for &v in &x[full..] {
            let d = v - mf;
            var += (d * d) as f64;
        }
        let r = (1.0 / (moments(var, c) + eps).sqrt()) as f32;
        let rv = V::splat(r);
        let mut i = 0;
        while i < full {
            let xh = V::mul(V::sub(V::load_n(x.as_ptr().add(i), V::L), m), rv);
            let y = V::fma(
                xh,
                V::load_n(g.as_ptr().add(i), V::L),
                V::load_n(b.as_ptr().add(i), V::L),
            );
            V::store_n(out.as_mut_ptr().add(i), y, V::L);
            i += V::L;
        }
        for j in full..c {
            out[j] = ((x[j] - mf) * r).mul_add(g[j], b[j]);
        }
        (mf, r)
    }
}

/// The backward pass of [`layer_norm`]: from the output gradient `g` (`[rows, c]`), the
/// input `x` and the forward pass's `stats`, the input gradient into `dx` (added to it with
/// `accumulate`) and `(dγ, dβ)`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &[f32],
    g: &[f32],
    c: usize,
    gamma: &[f32],
    stats: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) -> Result<(Vec<f32>, Vec<f32>), ShapeError> {
    if c == 0 {
        return Err(ShapeError("layer norm over 0 values".into()));
    }
    let rows = x.len() / c;
    check("layer norm input", x.len(), rows * c)?;
    check("layer norm gradient", g.len(), rows * c)?;
    check("layer norm input gradient", dx.len(), rows * c)?;
    check("layer norm γ", gamma.len(), c)?;
    check("layer norm statistics", stats.len(), rows * 2)?;
    dx.par_chunks_mut(ROWS_PER_JOB * c)
        .zip(x.par_chunks(ROWS_PER_JOB * c))
        .zip(g.par_chunks(ROWS_PER_JOB * c))
        .zip(stats.par_chunks(ROWS_PER_JOB * 2))
        .for_each(|(((d, xs), gs), st)| {
            for (((drow, xrow), grow), s) in d
                .chunks_exact_mut(c)
                .zip(xs.chunks_exact(c))
                .zip(gs.chunks_exact(c))
                .zip(st.chunks_exact(2))
            {
                let (m, r) = (s[0], s[1]);
                let (mut sd, mut sdx) = (0f64, 0f64);
                for ((&v, &gv), &ga) in xrow.iter().zip(grow).zip(gamma) {
                    let d = (gv * ga) as f64;
                    sd += d;
                    sdx += d * ((v - m) * r) as f64;
                }
                let (a, b) = (sd / c as f64, sdx / c as f64);
                for (((o, &v), &gv), &ga) in drow.iter_mut().zip(xrow).zip(grow).zip(gamma) {
                    let xh = ((v - m) * r) as f64;
                    let val = (r as f64 * ((gv * ga) as f64 - a - xh * b)) as f32;
                    *o = if accumulate { *o + val } else { val };
                }
            }
        });
    let sums = crate::norm::block_sums(rows, 2 * c, 256, |i, acc| {
        let (m, r) = (stats[2 * i], stats[2 * i + 1]);
        let (xrow, grow) = (&x[i * c..(i + 1) * c], &g[i * c..(i + 1) * c]);
        let (dg, db) = acc.split_at_mut(c);
        for (((dgj, dbj), &v), &gv) in dg.iter_mut().zip(db).zip(xrow).zip(grow) {
            *dgj += gv * ((v - m) * r);
            *dbj += gv;
        }
    });
    let (dg, db) = sums.split_at(c);
    Ok((
        dg.iter().map(|&v| v as f32).collect(),
        db.iter().map(|&v| v as f32).collect(),
    ))
}

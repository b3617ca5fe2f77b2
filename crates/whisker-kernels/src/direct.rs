//! Dense convolutions with few input channels (the RGB stems: 3×3 or 7×7 over 3 channels),
//! computed directly: for `P` output pixels and a group of output channels the accumulators
//! stay in registers while every tap and input channel goes by — one weight vector load, `P`
//! broadcast input values. The implicit GEMM would see inner loops 3 long, and its
//! im2col gather costs more than the products.
//!
//! The sums are the GEMM's (each output is Σ over taps in (ky, kx, channel) order, one fused
//! multiply-add each, from zero; then bias, residual, activation), minus the products with
//! the zero padding, which add nothing.

use crate::conv::{par_row_runs, rows_per_thread, ConvShape, PackedConv, NR};
use crate::Act;

/// Input channels up to which the direct path serves a convolution wider than 1×1.
pub(crate) const MAX_CIN: usize = 8;

struct Ctx<'a> {
    w: &'a PackedConv,
    x: &'a [f32],
    s: &'a ConvShape,
    oh: usize,
    ow: usize,
    residual: Option<&'a [f32]>,
    act: Act,
}

/// `out` `[n, oh, ow, cout]` of the convolution, the rows split over the threads. `None` when
/// this ISA has no direct path (the caller takes the GEMM's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: crate::Isa,
    w: &PackedConv,
    x: &[f32],
    s: &ConvShape,
    (oh, ow): (usize, usize),
    residual: Option<&[f32]>,
    act: Act,
    out: &mut [f32],
) -> Option<()> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::Isa;
        if !matches!(isa, Isa::AVX512 | Isa::AVX2) {
            return None;
        }
        let row = ow * w.cout;
        let rows = s.n * oh;
        if row == 0 || rows == 0 {
            return Some(());
        }
        let ctx = Ctx {
            w,
            x,
            s,
            oh,
            ow,
            residual,
            act,
        };
        par_row_runs(out, row, rows_per_thread(rows), |r0, r1, chunk| {
            // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
            unsafe {
                match isa {
                    Isa::AVX512 => x86::rows_avx512(&ctx, r0, r1, chunk),
                    _ => x86::rows_avx2(&ctx, r0, r1, chunk),
                }
            }
        });
        Some(())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, w, x, s, oh, ow, residual, act, out);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Ctx, NR};
    use crate::conv::tap_range;
    use crate::simd::{Vf, F256, F512};

    /// AVX-512F: a panel's 16–64 channels as 1–4 vectors, with 12, 8, 6 or 6 pixels.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn rows_avx512(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            for p in 0..ctx.w.widths.len() {
                match ctx.w.widths[p] / 16 {
                    1 => rows::<F512, 1, 12>(ctx, p, 0, r0, r1, out),
                    2 => rows::<F512, 2, 8>(ctx, p, 0, r0, r1, out),
                    3 => rows::<F512, 3, 6>(ctx, p, 0, r0, r1, out),
                    _ => rows::<F512, 4, 6>(ctx, p, 0, r0, r1, out),
                }
            }
        }
    }

    /// AVX2 + FMA: 16 channels (two vectors) and 6 pixels at a time (12 accumulators).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            for p in 0..ctx.w.widths.len() {
                for c0 in (0..ctx.w.widths[p]).step_by(16) {
                    rows::<F256, 2, 6>(ctx, p, c0, r0, r1, out);
                }
            }
        }
    }

    /// Output rows `[r0, r1)`, channels `[c0, c0 + NV·L)` of weight panel `p`.
    #[inline(always)]
    unsafe fn rows<V: Vf, const NV: usize, const P: usize>(
        ctx: &Ctx,
        p: usize,
        c0: usize,
        r0: usize,
        r1: usize,
        out: &mut [f32],
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let (w, s) = (ctx.w, ctx.s);
            let (kw, st, pad_l) = (w.kw, s.stride, s.pad[2]);
            let (ox_lo, ox_hi) = s.interior_cols(kw, ctx.ow);
            for r in r0..r1 {
                let (b, oy) = (r / ctx.oh, r % ctx.oh);
                let ky = tap_range(oy, st, s.pad[0], w.kh, s.h);
                let mut ox = 0;
                while ox < ctx.ow {
                    if ox >= ox_lo && ox + P <= ox_hi {
                        pixels::<V, NV, P>(ctx, p, c0, r, r0, b, oy, ox, ky, (0, kw), out);
                        ox += P;
                    } else {
                        let kx = tap_range(ox, st, pad_l, kw, s.w);
                        pixels::<V, NV, 1>(ctx, p, c0, r, r0, b, oy, ox, ky, kx, out);
                        ox += 1;
                    }
                }
            }
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pixels<V: Vf, const NV: usize, const N: usize>(
        ctx: &Ctx,
        p: usize,
        c0: usize,
        r: usize,
        r0: usize,
        b: usize,
        oy: usize,
        ox: usize,
        ky: (usize, usize),
        kx: (usize, usize),
        out: &mut [f32],
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let (w, s) = (ctx.w, ctx.s);
            let (cin, kw, st) = (w.cin, w.kw, s.stride);
            let (wp, col0) = (w.widths[p], p * NR + c0);
            let cols = w.cout.saturating_sub(col0).min(NV * V::L);
            if cols == 0 {
                return;
            }
            let bp = w.data.as_ptr().add(w.offsets[p] + c0);
            let xp = ctx.x.as_ptr();
            let x0 = (ox * st) as isize - s.pad[2] as isize;
            let zero = V::splat(0.0);
            let mut acc = [[zero; NV]; N];
            for ty in ky.0..ky.1 {
                let iy = oy * st + ty - s.pad[0];
                let row = xp
                    .add((b * s.h + iy) * s.w * cin)
                    .wrapping_offset(x0 * cin as isize);
                for tx in kx.0..kx.1 {
                    for ci in 0..cin {
                        let k = (ty * kw + tx) * cin + ci;
                        let wr = bp.add(k * wp);
                        let mut wv = [zero; NV];
                        for (v, x) in wv.iter_mut().enumerate() {
                            *x = V::load(V::mask(V::L), wr.add(v * V::L));
                        }
                        for (j, a) in acc.iter_mut().enumerate() {
                            let xv = V::splat(*row.wrapping_add((j * st + tx) * cin + ci));
                            for v in 0..NV {
                                a[v] = V::fma(xv, wv[v], a[v]);
                            }
                        }
                    }
                }
            }
            // the epilogue reads a copy: `acc` is indexed by constants only and stays in
            // registers through the taps (see conv.rs's micro-kernels)
            let mut done = [[zero; NV]; N];
            for j in 0..N {
                for v in 0..NV {
                    done[j][v] = acc[j][v];
                }
            }
            let cout = w.cout;
            let bias = w.bias.as_ptr().add(col0);
            for (j, a) in done.iter().enumerate() {
                let at = (r * ctx.ow + ox + j) * cout + col0;
                let o = out.as_mut_ptr().add(at - r0 * ctx.ow * cout);
                for (v, &y) in a.iter().enumerate() {
                    let n = cols.saturating_sub(v * V::L).min(V::L);
                    if n == 0 {
                        break;
                    }
                    let mut y = V::add(y, V::load(V::mask(V::L), bias.add(v * V::L)));
                    if let Some(res) = ctx.residual {
                        y = V::add(y, V::load_n(res.as_ptr().add(at + v * V::L), n));
                    }
                    V::store_n(o.add(v * V::L), V::act(ctx.act, y), n);
                }
            }
        }
    }
}

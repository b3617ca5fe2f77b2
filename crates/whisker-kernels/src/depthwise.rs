//! Depthwise convolution on NHWC activations, vectorised across channels: each output pixel
//! accumulates its `kh·kw` taps for a block of channels in registers, then bias and
//! activation are applied and the block is written once.

use crate::conv::{par_row_runs, rows_per_thread, tap_range};
use crate::{Act, ConvShape, Isa, ShapeError};

/// Depthwise weights `[kh·kw][c]` (tap-major, channels contiguous) and bias.
#[derive(Debug, Clone)]
pub struct PackedDepthwise {
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    /// `[kh·kw][c]`, tap-major (channels contiguous).
    pub(crate) w: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedDepthwise {
    /// From PyTorch's `[c, 1, kh, kw]` weight (and bias, zeros when `None`).
    pub fn from_oihw(
        weight: &[f32],
        bias: Option<&[f32]>,
        c: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self, ShapeError> {
        if weight.len() != c * kh * kw || c == 0 || kh == 0 || kw == 0 {
            return Err(ShapeError(format!(
                "weight of {} values for a depthwise [{c}, 1, {kh}, {kw}] convolution",
                weight.len()
            )));
        }
        if bias.is_some_and(|b| b.len() != c) {
            return Err(ShapeError(format!(
                "bias of the wrong length for {c} channels"
            )));
        }
        let mut w = vec![0f32; c * kh * kw];
        for ch in 0..c {
            for t in 0..kh * kw {
                w[t * c + ch] = weight[ch * kh * kw + t];
            }
        }
        Ok(PackedDepthwise {
            c,
            kh,
            kw,
            w,
            bias: bias.map(|b| b.to_vec()).unwrap_or_else(|| vec![0.0; c]),
        })
    }
}

/// `out[n, oy, ox, c] = act(bias[c] + Σ_taps w[tap, c] · x[n, iy, ix, c])`.
pub fn depthwise(
    isa: Isa,
    p: &PackedDepthwise,
    x: &[f32],
    s: &ConvShape,
    act: Act,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    // GELU, SiLU and sigmoid are a pass of their own over the result (see `Vf::act`)
    if act.is_pass() {
        depthwise_epilogue(isa, p, x, s, Act::None, out)?;
        crate::act::act_in_place(isa, act, out);
        return Ok(());
    }
    depthwise_epilogue(isa, p, x, s, act, out)
}

/// [`depthwise`] with an activation its kernels' epilogues apply.
fn depthwise_epilogue(
    isa: Isa,
    p: &PackedDepthwise,
    x: &[f32],
    s: &ConvShape,
    act: Act,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (oh, ow) = s.out_hw(p.kh, p.kw)?;
    if x.len() != s.n * s.h * s.w * p.c || out.len() != s.n * oh * ow * p.c {
        return Err(ShapeError(format!(
            "depthwise input of {} values / output of {} for [{}, {}, {}, {}] → {oh}×{ow}",
            x.len(),
            out.len(),
            s.n,
            s.h,
            s.w,
            p.c
        )));
    }
    let row = ow * p.c;
    if row == 0 {
        return Ok(());
    }
    let per = rows_per_thread(s.n * oh);
    par_row_runs(out, row, per, |r0, r1, chunk| {
        rows_serial(isa, p, x, s, (oh, ow), act, r0, r1, chunk)
    });
    Ok(())
}

/// Output rows `[r0, r1)` (of the `n · oh` rows) into `out`, on this thread; the shapes are
/// the caller's to check.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_serial(
    isa: Isa,
    p: &PackedDepthwise,
    x: &[f32],
    s: &ConvShape,
    (oh, ow): (usize, usize),
    act: Act,
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    // Narrow maps (7×7, 14×14): a large share of the pixels sit at a horizontal edge, where
    // the vector paths go one pixel at a time — one chain of dependent multiply-adds, bound by
    // their latency. Those rows read a copy of their images with the horizontal padding
    // written out as zeros instead, so every pixel takes the many-pixel path. A padded tap
    // adds w·0 = 0, which leaves every sum as it was (a −0 sum may read +0; a non-finite
    // weight gives NaN at the edge, as in a zero-padded convolution). Not at stride 2: there
    // the copy is four times the output, and measured slower.
    let (lo, hi) = s.interior_cols(p.kw, ow);
    let padded = s.stride == 1 && s.pad[2] + s.pad[3] > 0 && (ow - (hi - lo)) * 4 >= ow && r0 < r1;
    if padded && matches!(isa, Isa::AVX512 | Isa::AVX2) {
        let (b0, b1) = (r0 / oh, (r1 - 1) / oh + 1);
        let (c, wide) = (p.c, s.w + s.pad[2] + s.pad[3]);
        return PADDED.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            buf.resize((b1 - b0) * s.h * wide * c, 0.0);
            for (i, src) in x[b0 * s.h * s.w * c..b1 * s.h * s.w * c]
                .chunks_exact(s.w * c)
                .enumerate()
            {
                buf[(i * wide + s.pad[2]) * c..][..s.w * c].copy_from_slice(src);
            }
            let inner = ConvShape {
                n: b1 - b0,
                w: wide,
                pad: [s.pad[0], s.pad[1], 0, 0],
                ..*s
            };
            let ctx = Ctx {
                p,
                x: &buf,
                s: &inner,
                oh,
                ow,
                act,
            };
            dispatch(isa, &ctx, r0 - b0 * oh, r1 - b0 * oh, out)
        });
    }
    let ctx = Ctx {
        p,
        x,
        s,
        oh,
        ow,
        act,
    };
    dispatch(isa, &ctx, r0, r1, out)
}

thread_local! {
    /// The horizontally padded copy of [`rows_serial`]'s images, kept between calls.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output rows `[r0, r1)` of `ctx` on this ISA's path.
fn dispatch(isa: Isa, ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
        Isa::AVX512 => unsafe { x86::rows_avx512(ctx, r0, r1, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::AVX2 => unsafe { x86::rows_avx2(ctx, r0, r1, out) },
        _ => run_rows::<16, false>(ctx, r0, r1, out),
    }
}

struct Ctx<'a> {
    p: &'a PackedDepthwise,
    x: &'a [f32],
    s: &'a ConvShape,
    oh: usize,
    ow: usize,
    act: Act,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{block, tap_range, Ctx};
    use crate::simd::{Vf, F256, F512};

    /// Input bytes of a band of output rows (see `rows_k`).
    const BAND_BYTES: usize = 128 * 1024;

    /// AVX-512F: 16 channels a vector (the last one masked), 8 pixels at a time.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn rows_avx512(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { rows::<F512, 8>(ctx, r0, r1, out) }
    }

    /// AVX2 + FMA: 8 channels a vector (a channel tail in scalar code), 4 pixels at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { rows::<F256, 4>(ctx, r0, r1, out) }
    }

    /// Output rows `[r0, r1)`, with the kernel width and stride as constants for the common
    /// cases (the taps of a row unrolled; a stride-1 row loads each input vector once for
    /// all the pixels and taps that use it).
    #[inline(always)]
    unsafe fn rows<V: Vf, const P: usize>(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            match (ctx.p.kw, ctx.s.stride) {
                (3, 1) => rows_k::<V, P, 3, 1>(ctx, r0, r1, out),
                (3, 2) => rows_k::<V, P, 3, 2>(ctx, r0, r1, out),
                (5, 1) => rows_k::<V, P, 5, 1>(ctx, r0, r1, out),
                (5, 2) => rows_k::<V, P, 5, 2>(ctx, r0, r1, out),
                _ => rows_k::<V, P, 0, 0>(ctx, r0, r1, out),
            }
        }
    }

    /// Output rows `[r0, r1)`: `P` pixels at a time where every horizontal tap falls inside
    /// the input (their accumulators stay in registers while the taps go by), then 4 and 2,
    /// then one at a time, and one at a time at the edges. Each output value is `bias`, then
    /// the taps in row-major order, one fused multiply-add each: the same operations, in the
    /// same order, as the scalar path with FMA. `K`, `S`: the kernel width and stride when
    /// known at compile time (0: read from `ctx`).
    #[inline(always)]
    unsafe fn rows_k<V: Vf, const P: usize, const K: usize, const S: usize>(
        ctx: &Ctx,
        r0: usize,
        r1: usize,
        out: &mut [f32],
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let (p, s) = (ctx.p, ctx.s);
            let c = p.c;
            let kw = if K > 0 { K } else { p.kw };
            let st = if S > 0 { S } else { s.stride };
            let pad_l = s.pad[2];
            // columns whose horizontal taps are all inside the input
            let (ox_lo, ox_hi) = s.interior_cols(kw, ctx.ow);
            // Bands of rows whose input (every channel) fits in L2, and in a band one vector of
            // channels at a time over all the rows: the input lines under a row of outputs are
            // then few enough to stay in L1 for the next rows that read them.
            let vec_c = if V::MASKED { c } else { c / V::L * V::L };
            let band = (BAND_BYTES / (st * s.w * c * 4).max(1)).max(1);
            for rb in (r0..r1).step_by(band) {
                for cb in (0..vec_c).step_by(V::L) {
                    let m = V::mask(c - cb);
                    for r in rb..(rb + band).min(r1) {
                        let (b, oy) = (r / ctx.oh, r % ctx.oh);
                        let ky = tap_range(oy, st, s.pad[0], p.kh, s.h);
                        let orow = out.as_mut_ptr().add((r - r0) * ctx.ow * c + cb);
                        let mut ox = 0;
                        while ox < ctx.ow {
                            if ox >= ox_lo && ox + P <= ox_hi {
                                pixels::<V, P, K, S>(ctx, m, cb, b, oy, ox, ky, (0, kw), orow);
                                ox += P;
                            } else if P > 4 && ox >= ox_lo && ox + 4 <= ox_hi {
                                pixels::<V, 4, K, S>(ctx, m, cb, b, oy, ox, ky, (0, kw), orow);
                                ox += 4;
                            } else if ox >= ox_lo && ox + 2 <= ox_hi {
                                pixels::<V, 2, K, S>(ctx, m, cb, b, oy, ox, ky, (0, kw), orow);
                                ox += 2;
                            } else {
                                let kx = tap_range(ox, st, pad_l, kw, s.w);
                                pixels::<V, 1, K, S>(ctx, m, cb, b, oy, ox, ky, kx, orow);
                                ox += 1;
                            }
                        }
                    }
                }
            }
            // channels no whole vector covers (AVX2): one at a time
            if vec_c < c {
                for r in r0..r1 {
                    let (b, oy) = (r / ctx.oh, r % ctx.oh);
                    let ky = tap_range(oy, st, s.pad[0], p.kh, s.h);
                    for ox in 0..ctx.ow {
                        let kx = tap_range(ox, st, pad_l, kw, s.w);
                        let o = &mut out[((r - r0) * ctx.ow + ox) * c..][..c];
                        for c0 in vec_c..c {
                            block::<1, true>(ctx, c0, b, oy, ox, ky, kx, o);
                        }
                    }
                }
            }
        }
    }

    /// Channels `[cb, cb + V::L)` (`m` of them) of the output pixels `[ox, ox + N)` of row
    /// `oy` of image `b` (`orow`: the row's output at channel `cb`), over the taps `ky × kx`
    /// (valid for all `N` pixels).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pixels<V: Vf, const N: usize, const K: usize, const S: usize>(
        ctx: &Ctx,
        m: V::Mask,
        cb: usize,
        b: usize,
        oy: usize,
        ox: usize,
        ky: (usize, usize),
        kx: (usize, usize),
        orow: *mut f32,
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let (p, s) = (ctx.p, ctx.s);
            let c = p.c;
            let kw = if K > 0 { K } else { p.kw };
            let st = if S > 0 { S } else { s.stride };
            let (xp, wp) = (ctx.x.as_ptr(), p.w.as_ptr());
            // the input under tap 0 of pixel `ox` (left of the row when padded: only taps
            // inside it are read)
            let x0 = (ox * st) as isize - s.pad[2] as isize;
            let mut acc = [V::load(m, p.bias.as_ptr().add(cb)); N];
            for ty in ky.0..ky.1 {
                let iy = oy * st + ty - s.pad[0];
                let row = xp
                    .add((b * s.h + iy) * s.w * c + cb)
                    .wrapping_offset(x0 * c as isize);
                let wrow = wp.add(ty * kw * c + cb);
                for tx in kx.0..kx.1 {
                    let w = V::load(m, wrow.add(tx * c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = V::fma(w, V::load(m, row.wrapping_add((j * st + tx) * c)), *a);
                    }
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                V::store(m, orow.add((ox + j) * c), V::act(ctx.act, a));
            }
        }
    }
}

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Channels `[c0, c0 + W)` of one output pixel.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<const W: usize, const FMA: bool>(
    ctx: &Ctx,
    c0: usize,
    b: usize,
    oy: usize,
    ox: usize,
    ky: (usize, usize),
    kx: (usize, usize),
    out: &mut [f32],
) {
    let (p, s) = (ctx.p, ctx.s);
    let c = p.c;
    let mut acc: [f32; W] = p.bias[c0..c0 + W].try_into().unwrap_or([0.0; W]);
    for ty in ky.0..ky.1 {
        let iy = oy * s.stride + ty - s.pad[0];
        for tx in kx.0..kx.1 {
            let ix = ox * s.stride + tx - s.pad[2];
            let xo = ((b * s.h + iy) * s.w + ix) * c + c0;
            let wo = (ty * p.kw + tx) * c + c0;
            let xv: &[f32; W] = ctx.x[xo..xo + W].try_into().unwrap_or(&[0.0; W]);
            let wv: &[f32; W] = p.w[wo..wo + W].try_into().unwrap_or(&[0.0; W]);
            for j in 0..W {
                acc[j] = fma::<FMA>(wv[j], xv[j], acc[j]);
            }
        }
    }
    let act = ctx.act;
    for (o, a) in out[c0..c0 + W].iter_mut().zip(acc) {
        *o = act.apply(a);
    }
}

#[inline(always)]
fn run_rows<const W: usize, const FMA: bool>(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
    let (p, s) = (ctx.p, ctx.s);
    let c = p.c;
    for r in r0..r1 {
        let (b, oy) = (r / ctx.oh, r % ctx.oh);
        let ky = tap_range(oy, s.stride, s.pad[0], p.kh, s.h);
        for ox in 0..ctx.ow {
            let kx = tap_range(ox, s.stride, s.pad[2], p.kw, s.w);
            let o = &mut out[((r - r0) * ctx.ow + ox) * c..][..c];
            let mut c0 = 0;
            while c0 + W <= c {
                block::<W, FMA>(ctx, c0, b, oy, ox, ky, kx, o);
                c0 += W;
            }
            while c0 + 8 <= c {
                block::<8, FMA>(ctx, c0, b, oy, ox, ky, kx, o);
                c0 += 8;
            }
            while c0 < c {
                block::<1, FMA>(ctx, c0, b, oy, ox, ky, kx, o);
                c0 += 1;
            }
        }
    }
}

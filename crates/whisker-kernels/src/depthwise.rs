//! Depthwise convolution on NHWC activations, vectorised across channels: each output pixel
//! accumulates its `kh·kw` taps for a block of channels in registers, then bias and
//! activation are applied and the block is written once.

use rayon::prelude::*;

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
    let rows = s.n * oh;
    let threads = rayon::current_num_threads().max(1);
    let per = rows.div_ceil(threads).max(1);
    out.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(t, chunk)| {
            let r0 = t * per;
            let r1 = r0 + chunk.len() / row;
            let ctx = Ctx {
                p,
                x,
                s,
                oh,
                ow,
                act,
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: dispatched only when the CPU has the feature (`Isa::supported`).
                Isa::Avx512 => unsafe { rows_avx512(&ctx, r0, r1, chunk) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { rows_avx2(&ctx, r0, r1, chunk) },
                _ => run_rows::<16, false>(&ctx, r0, r1, chunk),
            }
        });
    Ok(())
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
#[target_feature(enable = "avx512f,fma")]
unsafe fn rows_avx512(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
    run_rows::<64, true>(ctx, r0, r1, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(ctx: &Ctx, r0: usize, r1: usize, out: &mut [f32]) {
    run_rows::<32, true>(ctx, r0, r1, out)
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

/// The valid taps `[lo, hi)` of output coordinate `o` along an axis of `size` inputs.
#[inline(always)]
fn tap_range(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = (-start).max(0) as usize;
    let hi = ((size as isize - start).max(0) as usize).min(k);
    (lo.min(hi), hi)
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

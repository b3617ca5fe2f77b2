//! Input gradients of the convolutions (frozen weights): `dx = ∂L/∂x` from `g = ∂L/∂out`.
//!
//! The gradient of a stride-`s` convolution is split into `s × s` phases by the parity of the
//! input coordinate: the inputs `x[s·q + r]` receive only the taps `k ≡ (r + pad) mod s`, and
//! over `q` that is a stride-1 convolution of `g` with those taps reversed. Each phase runs on
//! the forward kernels (implicit GEMM or Winograd, depthwise), with the reversed, transposed
//! sub-kernels packed once; its rows are then added into `dx` at stride `s`. No col2im, no
//! zero-dilated `g`.

use rayon::prelude::*;

use crate::{buffers, conv2d, Act, ConvShape, Isa, PackedConv, PackedDepthwise, ShapeError};

/// One phase's sub-kernel along one axis: the taps `k0, k0 + s, …` (`n` of them).
fn taps(k: usize, stride: usize, k0: usize) -> usize {
    if k0 >= k {
        0
    } else {
        (k - k0).div_ceil(stride)
    }
}

/// The geometry of phase `(ry, rx)` for a forward convolution `s` with a `kh × kw` kernel and
/// `oh × ow` outputs: the sub-kernel index, its padding and the phase's output size.
struct Phase {
    /// Sub-kernel: first taps `(ky0, kx0)`, tap counts.
    k0: (usize, usize),
    kn: (usize, usize),
    /// Input rows and columns of this phase: `x[s·q + r]` for `q < hq`.
    r: (usize, usize),
    hq: usize,
    wq: usize,
    /// The stride-1 convolution of `g` that gives the phase.
    shape: ConvShape,
}

fn phases(
    s: &ConvShape,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
) -> Result<Vec<Phase>, ShapeError> {
    let st = s.stride;
    let [pt, _, pl, _] = s.pad;
    let mut out = Vec::new();
    for ry in 0..st.min(s.h) {
        for rx in 0..st.min(s.w) {
            let (ky0, kx0) = ((ry + pt) % st, (rx + pl) % st);
            let (ny, nx) = (taps(kh, st, ky0), taps(kw, st, kx0));
            let (hq, wq) = ((s.h - ry).div_ceil(st), (s.w - rx).div_ceil(st));
            // x[s·qy + ry] gets g[qy + dy − j]·w[ky0 + s·j]: a correlation of g with the
            // reversed taps and `ny − 1 − dy` rows of zeros before
            let (dy, dx) = ((ry + pt - ky0) / st, (rx + pl - kx0) / st);
            if (ny > 0 && dy >= ny) || (nx > 0 && dx >= nx) {
                // it would need rows of g before the first: padding as large as the kernel
                return Err(ShapeError(format!(
                    "no input gradient for a {kh}×{kw} kernel with padding {:?}",
                    s.pad
                )));
            }
            let pad_t = if ny > 0 { ny - 1 - dy } else { 0 };
            let pad_l = if nx > 0 { nx - 1 - dx } else { 0 };
            let pad_b = (hq + ny).saturating_sub(oh + pad_t + 1);
            let pad_r = (wq + nx).saturating_sub(ow + pad_l + 1);
            out.push(Phase {
                k0: (ky0, kx0),
                kn: (ny, nx),
                r: (ry, rx),
                hq,
                wq,
                shape: ConvShape {
                    n: s.n,
                    h: oh,
                    w: ow,
                    stride: 1,
                    pad: [pad_t, pad_b, pad_l, pad_r],
                },
            });
        }
    }
    Ok(out)
}

/// The input gradient of a dense convolution (groups = 1), weights packed per phase.
#[derive(Debug, Clone)]
pub struct ConvBackward {
    pub cout: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// Sub-kernel `(ky0, kx0)` at `ky0·stride + kx0`: `None` when it has no taps.
    subs: Vec<Option<PackedConv>>,
    /// For a few input channels (an RGB stem): `g · W` as one GEMM into patch columns
    /// `[pixels, kh·kw·cin]`, scattered back into `dx` (col2im) — the phase convolutions
    /// would have `cin` output channels, a fraction of a register tile.
    cols: Option<PackedConv>,
}

/// Input channels below which the gradient goes through patch columns.
const COLS_BELOW: usize = 16;

impl ConvBackward {
    /// From PyTorch's `[cout, cin, kh, kw]` weight. `winograd`: 3×3 sub-kernels (stride 1)
    /// with 16 or more output channels run on Winograd's F(2×2, 3×3).
    pub fn from_oihw(
        weight: &[f32],
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        winograd: bool,
    ) -> Result<Self, ShapeError> {
        if weight.len() != cout * cin * kh * kw || stride == 0 || cout == 0 || cin == 0 {
            return Err(ShapeError(format!(
                "weight of {} values for a [{cout}, {cin}, {kh}, {kw}] convolution, stride {stride}",
                weight.len()
            )));
        }
        let mut cols = None;
        if cin < COLS_BELOW && kh * kw > 1 {
            // [kh·kw·cin, cout, 1, 1]: column (ky, kx, c) of output pixel p is Σ_o g[p, o]·w[o, c, ky, kx]
            let k = kh * kw * cin;
            cols = Some(PackedConv::pack(
                weight,
                None,
                k,
                cout,
                1,
                1,
                |r, o, _, _| {
                    let (t, c) = (r / cin, r % cin);
                    (o * cin + c) * kh * kw + t
                },
            )?);
        }
        // per stride phase, the flipped and transposed sub-kernel it applies: input channel
        // i, output channel o, tap (jy, jx) ↦ w[o, i, ky0 + stride·(ny−1−jy), kx0 + …]
        let subs = (0..stride * stride)
            .into_par_iter()
            .map(|phase| {
                let (ky0, kx0) = (phase / stride, phase % stride);
                let (ny, nx) = (taps(kh, stride, ky0), taps(kw, stride, kx0));
                if ny == 0 || nx == 0 || cols.is_some() {
                    return Ok(None);
                }
                let at = |i: usize, o: usize, jy: usize, jx: usize| {
                    let (ky, kx) = (ky0 + stride * (ny - 1 - jy), kx0 + stride * (nx - 1 - jx));
                    ((o * cin + i) * kh + ky) * kw + kx
                };
                Ok(Some(if winograd && (ny, nx) == (3, 3) && cout >= 16 {
                    PackedConv::winograd_with(None, cin, cout, |i, o, jy, jx| {
                        weight[at(i, o, jy, jx)]
                    })?
                } else {
                    PackedConv::pack(weight, None, cin, cout, ny, nx, at)?
                }))
            })
            .collect::<Result<Vec<_>, ShapeError>>()?;
        Ok(ConvBackward {
            cout,
            cin,
            kh,
            kw,
            stride,
            subs,
            cols,
        })
    }

    /// `dx (+)= ∂/∂x` for `g` `[n, oh, ow, cout]` of the forward convolution `s` (whose
    /// stride must be this one's); `accumulate` adds to `dx` instead of overwriting it.
    pub fn input_grad(
        &self,
        isa: Isa,
        g: &[f32],
        s: &ConvShape,
        dx: &mut [f32],
        accumulate: bool,
    ) -> Result<(), ShapeError> {
        let to = if accumulate { To::Add } else { To::Write };
        self.input_grad_to(isa, g, s, dx, to)
    }

    /// `dx = prev + ∂/∂x`: the input gradient added to another one (`prev`, the same size as
    /// `dx`) as it is written — where a stride-1 convolution's input also feeds a residual
    /// branch, no separate pass over the sum.
    pub fn input_grad_plus(
        &self,
        isa: Isa,
        g: &[f32],
        s: &ConvShape,
        prev: &[f32],
        dx: &mut [f32],
    ) -> Result<(), ShapeError> {
        if prev.len() != dx.len() {
            return Err(ShapeError(format!(
                "input gradient: {} values to add to {}",
                prev.len(),
                dx.len()
            )));
        }
        self.input_grad_to(isa, g, s, dx, To::Sum(prev))
    }

    fn input_grad_to(
        &self,
        isa: Isa,
        g: &[f32],
        s: &ConvShape,
        dx: &mut [f32],
        to: To,
    ) -> Result<(), ShapeError> {
        let (oh, ow) = s.out_hw(self.kh, self.kw)?;
        check(
            s,
            self.stride,
            g.len(),
            oh * ow * self.cout,
            dx.len(),
            self.cin,
        )?;
        if let Some(p) = &self.cols {
            return self.via_columns(isa, p, g, s, (oh, ow), dx, to);
        }
        run_phases(
            s,
            (self.kh, self.kw),
            (oh, ow),
            self.cin,
            dx,
            to,
            |ph, out, residual| {
                let i = ph.k0.0 * self.stride + ph.k0.1;
                match &self.subs[i] {
                    Some(p) => conv2d(isa, p, g, &ph.shape, residual, Act::None, out).map(|_| true),
                    None => Ok(false),
                }
            },
        )
    }
}

/// Where an input gradient goes: over `dx`, added to it, or `dx = prev + gradient`.
#[derive(Clone, Copy)]
enum To<'a> {
    Write,
    Add,
    Sum(&'a [f32]),
}

impl ConvBackward {
    /// Image by image: the patch columns of every output pixel (one GEMM), then each column
    /// added to the input pixel under its tap.
    #[allow(clippy::too_many_arguments)]
    fn via_columns(
        &self,
        isa: Isa,
        p: &PackedConv,
        g: &[f32],
        s: &ConvShape,
        (oh, ow): (usize, usize),
        dx: &mut [f32],
        to: To,
    ) -> Result<(), ShapeError> {
        let (cin, kh, kw) = (self.cin, self.kh, self.kw);
        let k = kh * kw * cin;
        let one = ConvShape::symmetric(1, oh, ow, 1, 0);
        let mut cols = vec![0f32; oh * ow * k];
        let per_in = s.h * s.w * cin;
        let per_out = oh * ow * self.cout;
        for (b, d) in dx.chunks_mut(per_in).enumerate() {
            conv2d(
                isa,
                p,
                &g[b * per_out..][..per_out],
                &one,
                None,
                Act::None,
                &mut cols,
            )?;
            match to {
                To::Write => d.fill(0.0),
                To::Add => {}
                To::Sum(prev) => d.copy_from_slice(&prev[b * per_in..][..per_in]),
            }
            // rows of the input in two bands, one per thread at most; a band takes the
            // columns of the output rows whose taps land in it
            let bands = rayon::current_num_threads().clamp(1, 2).min(s.h);
            let rows_per = s.h.div_ceil(bands);
            let cols = &cols;
            d.par_chunks_mut(rows_per * s.w * cin)
                .enumerate()
                .for_each(|(band, dd)| {
                    let (y0, y1) = (band * rows_per, ((band + 1) * rows_per).min(s.h));
                    for oy in 0..oh {
                        for ky in 0..kh {
                            let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                            if iy < y0 as isize || iy >= y1 as isize {
                                continue;
                            }
                            let row = (iy as usize - y0) * s.w;
                            for ox in 0..ow {
                                let c0 = (oy * ow + ox) * k + ky * kw * cin;
                                for kx in 0..kw {
                                    let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                                    if ix < 0 || ix >= s.w as isize {
                                        continue;
                                    }
                                    let o = (row + ix as usize) * cin;
                                    for c in 0..cin {
                                        dd[o + c] += cols[c0 + kx * cin + c];
                                    }
                                }
                            }
                        }
                    }
                });
        }
        Ok(())
    }
}

/// The input gradient of a depthwise convolution, in one pass: each input pixel gathers, for a
/// block of channels in registers, the gradients of the outputs whose windows hold it.
#[derive(Debug, Clone)]
pub struct DepthwiseBackward {
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// The weights in the forward kernel's tap-major `[kh·kw][c]` order (bias unused).
    packed: PackedDepthwise,
}

impl DepthwiseBackward {
    /// From PyTorch's `[c, 1, kh, kw]` weight.
    pub fn from_oihw(
        weight: &[f32],
        c: usize,
        kh: usize,
        kw: usize,
        stride: usize,
    ) -> Result<Self, ShapeError> {
        if weight.len() != c * kh * kw || stride == 0 || c == 0 || kh > 8 || kw > 8 {
            return Err(ShapeError(format!(
                "weight of {} values for a depthwise [{c}, 1, {kh}, {kw}] convolution, stride {stride} (kernels up to 8×8)",
                weight.len()
            )));
        }
        Ok(DepthwiseBackward {
            c,
            kh,
            kw,
            stride,
            packed: PackedDepthwise::from_oihw(weight, None, c, kh, kw)?,
        })
    }

    /// `dx (+)= ∂/∂x` for `g` `[n, oh, ow, c]` of the forward depthwise convolution `s`.
    pub fn input_grad(
        &self,
        isa: Isa,
        g: &[f32],
        s: &ConvShape,
        dx: &mut [f32],
        accumulate: bool,
    ) -> Result<(), ShapeError> {
        let (oh, ow) = s.out_hw(self.kh, self.kw)?;
        check(s, self.stride, g.len(), oh * ow * self.c, dx.len(), self.c)?;
        let ctx = DwCtx {
            p: self,
            g,
            s,
            oh,
            ow,
            accumulate,
        };
        let c = self.c;
        dx.par_chunks_mut(s.w * c)
            .enumerate()
            .for_each(|(row, d)| match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
                Isa::AVX512 => unsafe { dw_row_avx512(&ctx, row, d) },
                #[cfg(target_arch = "x86_64")]
                Isa::AVX2 => unsafe { dw_row_avx2(&ctx, row, d) },
                _ => dw_row::<16>(&ctx, row, d),
            });
        Ok(())
    }
}

struct DwCtx<'a> {
    p: &'a DepthwiseBackward,
    g: &'a [f32],
    s: &'a ConvShape,
    oh: usize,
    ow: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dw_row_avx512(ctx: &DwCtx, row: usize, d: &mut [f32]) {
    dw_row::<64>(ctx, row, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_row_avx2(ctx: &DwCtx, row: usize, d: &mut [f32]) {
    dw_row::<32>(ctx, row, d)
}

/// The taps `k` of an axis under which input coordinate `i` is seen, with their output
/// coordinates: `o·stride + k − pad = i`.
#[inline(always)]
fn taps_of(
    i: usize,
    pad: usize,
    k: usize,
    stride: usize,
    outs: usize,
) -> ([(usize, usize); 8], usize) {
    let mut t = [(0, 0); 8];
    let mut n = 0;
    for kk in 0..k.min(8) {
        let num = i as isize + pad as isize - kk as isize;
        if num >= 0 && (num as usize).is_multiple_of(stride) && (num as usize / stride) < outs {
            t[n] = (kk, num as usize / stride);
            n += 1;
        }
    }
    (t, n)
}

#[inline(always)]
fn dw_row<const W: usize>(ctx: &DwCtx, row: usize, d: &mut [f32]) {
    let (p, s) = (ctx.p, ctx.s);
    let c = p.c;
    let (b, iy) = (row / s.h, row % s.h);
    let (ty, ny) = taps_of(iy, s.pad[0], p.kh, p.stride, ctx.oh);
    for ix in 0..s.w {
        let (tx, nx) = taps_of(ix, s.pad[2], p.kw, p.stride, ctx.ow);
        let (ty, tx) = (&ty[..ny], &tx[..nx]);
        let o = &mut d[ix * c..(ix + 1) * c];
        let mut c0 = 0;
        while c0 + W <= c {
            dw_block::<W>(ctx, b, c0, ty, tx, o);
            c0 += W;
        }
        while c0 + 8 <= c {
            dw_block::<8>(ctx, b, c0, ty, tx, o);
            c0 += 8;
        }
        while c0 < c {
            dw_block::<1>(ctx, b, c0, ty, tx, o);
            c0 += 1;
        }
    }
}

/// Channels `[c0, c0 + W)` of one input pixel.
#[inline(always)]
fn dw_block<const W: usize>(
    ctx: &DwCtx,
    b: usize,
    c0: usize,
    ty: &[(usize, usize)],
    tx: &[(usize, usize)],
    o: &mut [f32],
) {
    let p = ctx.p;
    let c = p.c;
    let mut acc = [0f32; W];
    for &(ky, oy) in ty {
        for &(kx, ox) in tx {
            let go = ((b * ctx.oh + oy) * ctx.ow + ox) * c + c0;
            let wo = (ky * p.kw + kx) * c + c0;
            let gv: &[f32; W] = ctx.g[go..go + W].try_into().unwrap_or(&[0.0; W]);
            let wv: &[f32; W] = p.packed.w[wo..wo + W].try_into().unwrap_or(&[0.0; W]);
            for j in 0..W {
                acc[j] = wv[j].mul_add(gv[j], acc[j]);
            }
        }
    }
    let dst: &mut [f32; W] = (&mut o[c0..c0 + W])
        .try_into()
        .unwrap_or_else(|_| unreachable!());
    if ctx.accumulate {
        for j in 0..W {
            dst[j] += acc[j];
        }
    } else {
        *dst = acc;
    }
}

fn check(
    s: &ConvShape,
    stride: usize,
    g: usize,
    per_image_out: usize,
    dx: usize,
    cin: usize,
) -> Result<(), ShapeError> {
    if s.stride != stride || g != s.n * per_image_out || dx != s.n * s.h * s.w * cin {
        return Err(ShapeError(format!(
            "gradient of {g} values and input gradient of {dx} values for a stride-{} \
             convolution of [{}, {}, {}, {cin}] (weights packed for stride {stride})",
            s.stride, s.n, s.h, s.w
        )));
    }
    Ok(())
}

/// Runs each phase (`conv(phase, out, residual) → Ok(false)` when it has no taps) and writes,
/// adds or sums (`to`) its rows into `dx` at the phase's stride and offset.
fn run_phases(
    s: &ConvShape,
    (kh, kw): (usize, usize),
    (oh, ow): (usize, usize),
    c: usize,
    dx: &mut [f32],
    to: To,
    mut conv: impl FnMut(&Phase, &mut [f32], Option<&[f32]>) -> Result<bool, ShapeError>,
) -> Result<(), ShapeError> {
    let st = s.stride;
    let (n, h, w) = (s.n, s.h, s.w);
    for ph in phases(s, kh, kw, oh, ow)? {
        if ph.hq == 0 || ph.wq == 0 {
            continue;
        }
        let (ph_h, ph_w) = if ph.kn.0 == 0 || ph.kn.1 == 0 {
            (ph.hq, ph.wq)
        } else {
            ph.shape.out_hw(ph.kn.0, ph.kn.1)?
        };
        // stride 1, exact size: straight into dx (a sum through the kernel's residual input)
        if st == 1 && (ph_h, ph_w) == (h, w) {
            match to {
                To::Write => {
                    if !conv(&ph, dx, None)? {
                        dx.fill(0.0);
                    }
                    continue;
                }
                To::Sum(prev) => {
                    if !conv(&ph, dx, Some(prev))? {
                        dx.copy_from_slice(prev);
                    }
                    continue;
                }
                To::Add => {}
            }
        }
        let mut tmp = buffers::take(n * ph_h * ph_w * c);
        let has = conv(&ph, &mut tmp, None)?;
        let (ry, rx) = ph.r;
        let tmp_ref = &tmp;
        // rows of dx: (image, input row) pairs of this phase, in parallel
        dx.par_chunks_mut(w * c).enumerate().for_each(|(row, d)| {
            let (b, iy) = (row / h, row % h);
            if iy % st != ry {
                return;
            }
            let qy = iy / st;
            for qx in 0..ph.wq {
                let ix = qx * st + rx;
                let at = ix * c;
                let dst = &mut d[at..at + c];
                let src = &tmp_ref[((b * ph_h + qy) * ph_w + qx) * c..][..c];
                match (to, has) {
                    (To::Write, false) => dst.fill(0.0),
                    (To::Write, true) => dst.copy_from_slice(src),
                    (To::Add, false) => {}
                    (To::Add, true) => dst.iter_mut().zip(src).for_each(|(o, v)| *o += v),
                    (To::Sum(prev), has) => {
                        let p = &prev[row * w * c + at..][..c];
                        if has {
                            dst.iter_mut()
                                .zip(src.iter().zip(p))
                                .for_each(|(o, (v, q))| *o = q + v);
                        } else {
                            dst.copy_from_slice(p);
                        }
                    }
                }
            }
        });
        buffers::give(tmp);
    }
    Ok(())
}

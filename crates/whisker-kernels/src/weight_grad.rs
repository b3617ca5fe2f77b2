//! Weight gradients, for fine-tuning: of dense convolutions (linear layers are 1×1 ones) and
//! of depthwise convolutions, on NHWC activations.
//!
//! Dense: for each kernel tap `(ky, kx)`, `dW_tap[c, o] = Σ_p x_tap[p, c] · g[p, o]` — a GEMM
//! whose reduction runs over every output pixel of the batch (`p`, often 50,000 long). The
//! rows of `x` a tap reads are gathered into a panel (zeros where the tap falls in the
//! padding) block by block of [`KC`] pixels; register tiles of [`MR`] input × up to 64 output
//! channels sum one block from zero, then add into the accumulator: a two-level sum, whose
//! rounding error grows with `KC + P/KC` rather than with `P` (burn-flex's sequential sums are
//! 1000× less accurate than PyTorch on a ResNet stem; see the fine-tuning parity test). Both
//! GEMM operands are packed per block so that the tiles read them contiguously: the panel as
//! `[MR-row block][pixel][MR]`, the output gradient as column stripes `[pixel][stripe width]`
//! (power-of-two channel strides would otherwise map a tile's rows onto a few L1 sets).
//!
//! Work split: where the weight gradient is small next to the output gradient (large maps),
//! threads split the pixels, each summing into its own accumulator, added at the end; where it
//! is large (deep layers on small maps, linear layers), jobs split the input channels, each
//! owning its rows of the result over every tap and pixel. Accumulators and packed panels come
//! from the buffer cache ([`crate::buffers`]): fresh pages cost more than the arithmetic.
//!
//! Depthwise: `dW[c, tap] = Σ_p g[p, c] · x_tap[p, c]`, vectorised across channels, with the
//! same blocking.

use rayon::prelude::*;

use crate::{buffers, ConvShape, Isa, ShapeError};

/// Output pixels per block of the reduction.
const KC: usize = 128;

/// Input channels (rows of the weight gradient) per register tile.
const MR: usize = 6;

/// `dW` (PyTorch's `[cout, cin, kh, kw]`) and `db` (`[cout]`, when asked) of a dense
/// convolution with input `x` (`[n, h, w, cin]`) and output gradient `g` (`[n, oh, ow, cout]`,
/// the gradient of the linear output: activations already differentiated). Overwrites them.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_weight_grad(
    isa: Isa,
    x: &[f32],
    s: &ConvShape,
    cin: usize,
    g: &[f32],
    cout: usize,
    kh: usize,
    kw: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<(), ShapeError> {
    let (oh, ow) = s.out_hw(kh, kw)?;
    let p_total = s.n * oh * ow;
    if x.len() != s.n * s.h * s.w * cin
        || g.len() != p_total * cout
        || dw.len() != cout * cin * kh * kw
        || db.as_ref().is_some_and(|b| b.len() != cout)
    {
        return Err(ShapeError(format!(
            "weight gradient: x {} / g {} / dW {} values for [{}, {}, {}, {cin}] → [{oh}, {ow}, {cout}], {kh}×{kw}",
            x.len(),
            g.len(),
            dw.len(),
            s.n,
            s.h,
            s.w
        )));
    }
    let taps = kh * kw;
    let size = taps * cin * cout;
    let geo = Geo {
        x,
        g,
        s,
        cin,
        cout,
        kh,
        kw,
        oh,
        ow,
    };
    let threads = rayon::current_num_threads().max(1);
    let halo = Halo::of(&geo);
    let job =
        |taps: std::ops::Range<usize>, chans: std::ops::Range<usize>, p0, p1, acc: &mut [f32]| {
            let part = Part {
                taps,
                chans,
                p0,
                p1,
            };
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
                Isa::AVX512 => unsafe { dense_avx512(&geo, &part, acc) },
                #[cfg(target_arch = "x86_64")]
                Isa::AVX2 => unsafe { dense_avx2(&geo, &part, acc) },
                _ => dense_portable(&geo, &part, acc),
            }
        };
    let stem = cin < 16 && taps > 1;
    let one_thread = p_total * size < 1 << 16;
    // (first input channel, channels, accumulator [tap][channel][cout]) of each job
    let parts: Vec<(usize, usize, Vec<f32>)> =
        if !stem && p_total * size >= 1 << 16 && taps * cin * threads > p_total {
            // the result is larger than the output gradient: split it, input-channel ranges
            // over all taps and pixels (each job reads the output gradient once)
            let chunk = cin.div_ceil(2 * threads).next_multiple_of(MR).min(cin);
            (0..cin.div_ceil(chunk))
                .into_par_iter()
                .map(|i| {
                    let (c0, m) = (i * chunk, chunk.min(cin - i * chunk));
                    let mut acc = buffers::take_zeroed(taps * m * cout);
                    job(0..taps, c0..c0 + m, 0, p_total, &mut acc);
                    (c0, m, acc)
                })
                .collect()
        } else if let Some(h) = &halo {
            // row blocks as the work items
            per_thread_by(
                h.units(&geo),
                2,
                size,
                one_thread,
                |u0, u1, acc| match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
                    Isa::AVX512 => unsafe { halo_avx512(&geo, h, u0, u1, acc) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::AVX2 => unsafe { halo_avx2(&geo, h, u0, u1, acc) },
                    _ => halo_with(&geo, h, u0, u1, acc, PORTABLE),
                },
            )
            .into_iter()
            .map(|acc| (0, cin, acc))
            .collect()
        } else {
            per_thread(p_total, size, one_thread, |p0, p1, acc| {
                job(0..taps, 0..cin, p0, p1, acc)
            })
            .into_iter()
            .map(|acc| (0, cin, acc))
            .collect()
        };
    // [tap][c][o] accumulators → [o][c][ky][kx], 16 outputs at a time (whole cache lines read)
    dw.par_chunks_mut(16 * cin * taps)
        .enumerate()
        .for_each(|(ob, rows)| {
            rows.fill(0.0);
            let o0 = ob * 16;
            let no = rows.len() / (cin * taps);
            for (c0, m, acc) in &parts {
                for c in *c0..c0 + m {
                    for t in 0..taps {
                        let i = (t * m + c - c0) * cout + o0;
                        for (j, v) in acc[i..i + no].iter().enumerate() {
                            rows[j * cin * taps + c * taps + t] += v;
                        }
                    }
                }
            }
        });
    for (_, _, acc) in parts {
        buffers::give(acc);
    }
    if let Some(db) = db {
        bias_grad(g, cout, db);
    }
    Ok(())
}

/// The batch's `p_total` output pixels split over the threads (one thread when `one_thread`,
/// never more than blocks of [`KC`]), each summing its range into its own zeroed accumulator
/// of `size` values with `job(p0, p1, acc)`; the accumulators, to be added by the caller.
fn per_thread(
    p_total: usize,
    size: usize,
    one_thread: bool,
    job: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    per_thread_by(p_total, KC, size, one_thread, job)
}

/// [`per_thread`] of `items` work items, at least `grain` of them per thread.
fn per_thread_by(
    p_total: usize,
    grain: usize,
    size: usize,
    one_thread: bool,
    job: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    let threads = if one_thread {
        1
    } else {
        rayon::current_num_threads()
            .max(1)
            .min(p_total.div_ceil(grain))
            .max(1)
    };
    let per = p_total.div_ceil(threads);
    (0..threads)
        .into_par_iter()
        .map(|t| {
            let (p0, p1) = (t * per, ((t + 1) * per).min(p_total));
            let mut acc = buffers::take_zeroed(size);
            if p0 < p1 {
                job(p0, p1, &mut acc);
            }
            acc
        })
        .collect()
}

/// `db[o] = Σ_p g[p, o]`, in blocks of [`KC`] pixels (two-level sums).
fn bias_grad(g: &[f32], cout: usize, db: &mut [f32]) {
    let total = crate::norm::block_sums(g.len() / cout.max(1), cout, KC, |i, acc| {
        acc.iter_mut()
            .zip(&g[i * cout..(i + 1) * cout])
            .for_each(|(a, v)| *a += v)
    });
    for (d, t) in db.iter_mut().zip(total) {
        *d = t as f32;
    }
}

struct Geo<'a> {
    x: &'a [f32],
    g: &'a [f32],
    s: &'a ConvShape,
    cin: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

/// An output pixel: its image and position.
#[derive(Clone, Copy)]
struct Px {
    b: usize,
    oy: usize,
    ox: usize,
}

impl Geo<'_> {
    /// Output pixel `p` of the batch.
    fn px(&self, p: usize) -> Px {
        let (b, rem) = (p / (self.oh * self.ow), p % (self.oh * self.ow));
        Px {
            b,
            oy: rem / self.ow,
            ox: rem % self.ow,
        }
    }

    /// The next output pixel (no divisions: the gathers call it per pixel).
    #[inline(always)]
    fn next(&self, q: &mut Px) {
        q.ox += 1;
        if q.ox == self.ow {
            q.ox = 0;
            q.oy += 1;
            if q.oy == self.oh {
                q.oy = 0;
                q.b += 1;
            }
        }
    }

    /// The input row (`cin` values) tap `(ky, kx)` of output pixel `q` reads, if inside.
    #[inline(always)]
    fn row(&self, q: Px, ky: usize, kx: usize) -> Option<&[f32]> {
        let Px { b, oy, ox } = q;
        let iy = (oy * self.s.stride + ky) as isize - self.s.pad[0] as isize;
        let ix = (ox * self.s.stride + kx) as isize - self.s.pad[2] as isize;
        if iy < 0 || ix < 0 || iy >= self.s.h as isize || ix >= self.s.w as isize {
            return None;
        }
        let at = ((b * self.s.h + iy as usize) * self.s.w + ix as usize) * self.cin;
        Some(&self.x[at..at + self.cin])
    }
}

impl Geo<'_> {
    /// The whole input patch of output pixel `q` (`kh·kw·cin` values, tap-major, zeros in the
    /// padding), each kernel row copied in one piece.
    fn patch(&self, q: Px, dst: &mut [f32]) {
        let (s, cin, kw) = (self.s, self.cin, self.kw);
        let Px { b, oy, ox } = q;
        let ix0 = (ox * s.stride) as isize - s.pad[2] as isize;
        // the kernel columns inside the image
        let ka = (-ix0).clamp(0, kw as isize) as usize;
        let kb = (s.w as isize - ix0).clamp(0, kw as isize) as usize;
        for ky in 0..self.kh {
            let d = &mut dst[ky * kw * cin..(ky + 1) * kw * cin];
            let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
            if iy < 0 || iy >= s.h as isize || ka >= kb {
                d.fill(0.0);
                continue;
            }
            d[..ka * cin].fill(0.0);
            d[kb * cin..].fill(0.0);
            let at = ((b * s.h + iy as usize) * s.w + (ix0 + ka as isize) as usize) * cin;
            d[ka * cin..kb * cin].copy_from_slice(&self.x[at..at + (kb - ka) * cin]);
        }
    }
}

/// What one job sums: pixels `p0..p1` of taps `taps` and input channels `chans`, into an
/// accumulator `[tap in taps][c in chans][cout]`.
struct Part {
    taps: std::ops::Range<usize>,
    chans: std::ops::Range<usize>,
    p0: usize,
    p1: usize,
}

/// A path's GEMM on packed operands: `c[i, j] += Σ_p a[p, i] · b[p, j]` for `m` rows and `n`
/// columns, `kc` pixels; `a`'s [`MR`]-row blocks `ka` pixels apart (see [`put_a`]), `b`'s
/// column stripes `kb` pixels apart (see [`pack_b`]); `c` with rows `ldc` apart.
type Gemm = fn(&[f32], usize, usize, &[f32], usize, usize, usize, &mut [f32], usize);

/// A path: its GEMM, its column stripe width and the lane count stripes round up to.
#[derive(Clone, Copy)]
struct Path {
    gemm: Gemm,
    stripe: usize,
    lanes: usize,
}

impl Path {
    /// The width of the stripe that starts with `left` columns to go.
    #[inline(always)]
    fn width(&self, left: usize) -> usize {
        left.next_multiple_of(self.lanes).min(self.stripe)
    }
}

#[cfg(target_arch = "x86_64")]
const AVX512: Path = Path {
    // SAFETY: this path runs only where AVX-512F is supported.
    gemm: |a, ka, m, b, n, kc, kb, c, ldc| unsafe {
        simd::gemm_avx512(a, ka, m, b, n, kc, kb, c, ldc)
    },
    stripe: 64,
    lanes: 16,
};

#[cfg(target_arch = "x86_64")]
const AVX2: Path = Path {
    // SAFETY: this path runs only where AVX2 and FMA are supported.
    gemm: |a, ka, m, b, n, kc, kb, c, ldc| unsafe {
        simd::gemm_avx2(a, ka, m, b, n, kc, kb, c, ldc)
    },
    stripe: 16,
    lanes: 8,
};

const PORTABLE: Path = Path {
    gemm: gemm_portable,
    stripe: 8,
    lanes: 8,
};

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dense_avx512(geo: &Geo, part: &Part, acc: &mut [f32]) {
    dense_with(geo, part, acc, AVX512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_avx2(geo: &Geo, part: &Part, acc: &mut [f32]) {
    dense_with(geo, part, acc, AVX2)
}

fn dense_portable(geo: &Geo, part: &Part, acc: &mut [f32]) {
    dense_with(geo, part, acc, PORTABLE)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn halo_avx512(geo: &Geo, h: &Halo, u0: usize, u1: usize, acc: &mut [f32]) {
    halo_with(geo, h, u0, u1, acc, AVX512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn halo_avx2(geo: &Geo, h: &Halo, u0: usize, u1: usize, acc: &mut [f32]) {
    halo_with(geo, h, u0, u1, acc, AVX2)
}

/// Stride-1 kernels on maps wide enough: the input rows around a block of output rows packed
/// once, zero-padded, as a panel of "padded pixels" (`Wp = ow + kw − 1` a row); output pixel
/// `(r, ox)` of the block is padded pixel `r·Wp + ox`, and tap `(ky, kx)` reads padded pixel
/// `r·Wp + ox + ky·Wp + kx` — the same panel shifted, so every tap's GEMM reads it in place
/// instead of a gather per tap. The `kw − 1` padded pixels past each output row's end are
/// computed with a zero output gradient (they add nothing; the cost is `(kw − 1)/Wp` more
/// arithmetic, hence the width bound).
struct Halo {
    /// Output rows per block.
    rows: usize,
    /// Padded row width.
    wp: usize,
    /// Padded pixels between the panel's [`MR`]-channel blocks.
    ka: usize,
}

impl Halo {
    fn of(geo: &Geo) -> Option<Halo> {
        let s = geo.s;
        let taps = geo.kh * geo.kw;
        if s.stride != 1 || taps == 1 || geo.cin < 16 || geo.ow < 24 {
            return None;
        }
        let wp = geo.ow + geo.kw - 1;
        let rows = (KC / wp).max(1).min(geo.oh);
        Some(Halo {
            rows,
            wp,
            ka: (rows + geo.kh) * wp,
        })
    }

    /// Work items: (image, block of output rows) pairs.
    fn units(&self, geo: &Geo) -> usize {
        geo.s.n * geo.oh.div_ceil(self.rows)
    }
}

/// Row blocks `u0..u1` (see [`Halo`]) of every tap and input channel into `acc`
/// (`[tap][cin][cout]`).
#[inline(always)]
fn halo_with(geo: &Geo, h: &Halo, u0: usize, u1: usize, acc: &mut [f32], path: Path) {
    let (s, cin, cout) = (geo.s, geo.cin, geo.cout);
    let blocks = cin.div_ceil(MR);
    let kb = h.rows * h.wp;
    let mut b = buffers::take_zeroed(kb * cout.next_multiple_of(path.lanes));
    let mut a = buffers::take_zeroed(blocks * h.ka * MR);
    let per_image = geo.oh.div_ceil(h.rows);
    let (pt, pl) = (s.pad[0], s.pad[2]);
    for u in u0..u1 {
        let (img, oy0) = (u / per_image, (u % per_image) * h.rows);
        let rows = h.rows.min(geo.oh - oy0);
        let kc = rows * h.wp;
        // the output gradient: real pixels' rows, zeros past each row's end
        let gi = |k: usize| {
            let (r, ox) = (k / h.wp, k % h.wp);
            (ox < geo.ow).then(|| {
                let at = ((img * geo.oh + oy0 + r) * geo.ow + ox) * cout;
                &geo.g[at..at + cout]
            })
        };
        pack_b_rows(gi, cout, kc, kb, path, &mut b);
        // the input rows the block's taps read: halo row i is input row oy0 + i − pt
        for i in 0..rows + geo.kh - 1 {
            let iy = (oy0 + i) as isize - pt as isize;
            let inside = iy >= 0 && (iy as usize) < s.h;
            for ix in 0..s.w {
                let r = i * h.wp + pl + ix;
                let src = inside.then(|| {
                    let at = ((img * s.h + iy as usize) * s.w + ix) * cin;
                    &geo.x[at..at + cin]
                });
                put_a(&mut a, h.ka, r, src, cin);
            }
        }
        for ky in 0..geo.kh {
            for kx in 0..geo.kw {
                let t = ky * geo.kw + kx;
                let off = ky * h.wp + kx;
                let tap = &mut acc[t * cin * cout..][..cin * cout];
                (path.gemm)(&a[off * MR..], h.ka, cin, &b, cout, kc, kb, tap, cout);
            }
        }
    }
    buffers::give(a);
    buffers::give(b);
}

/// Row `r` of a packed panel of `m` columns (`None`: zeros): `[m/MR blocks][kb][MR]`.
#[inline(always)]
fn put_a(dst: &mut [f32], kb: usize, r: usize, row: Option<&[f32]>, m: usize) {
    let full = m / MR;
    // whole blocks as fixed-size copies (register moves, not memmove calls)
    for ib in 0..full {
        let d: &mut [f32; MR] = (&mut dst[(ib * kb + r) * MR..][..MR])
            .try_into()
            .expect("MR values");
        *d = match row {
            Some(src) => src[ib * MR..][..MR].try_into().expect("MR values"),
            None => [0.0; MR],
        };
    }
    let l = m - full * MR;
    if l > 0 {
        let d = &mut dst[(full * kb + r) * MR..][..l];
        match row {
            Some(src) => d.copy_from_slice(&src[full * MR..m]),
            None => d.fill(0.0),
        }
    }
}

/// `kc` rows of `n` values into column stripes: the stripe from column `j0` (width `w`) at
/// `j0·kb`, `[kb][w]`; the lanes past `n` are never written (zero from allocation).
#[inline(always)]
fn pack_b(src: &[f32], n: usize, kc: usize, kb: usize, path: Path, dst: &mut [f32]) {
    pack_b_rows(|r| Some(&src[r * n..(r + 1) * n]), n, kc, kb, path, dst)
}

/// [`pack_b`] of rows given one by one (`None`: zeros).
#[inline(always)]
fn pack_b_rows<'a>(
    row: impl Fn(usize) -> Option<&'a [f32]>,
    n: usize,
    kc: usize,
    kb: usize,
    path: Path,
    dst: &mut [f32],
) {
    let mut j0 = 0;
    while j0 < n {
        let w = path.width(n - j0);
        let cols = w.min(n - j0);
        let d = &mut dst[j0 * kb..][..kb * w];
        for r in 0..kc {
            let out = &mut d[r * w..r * w + cols];
            match row(r) {
                Some(src) => out.copy_from_slice(&src[j0..j0 + cols]),
                None => out.fill(0.0),
            }
        }
        j0 += w;
    }
}

/// One job's pixels into its accumulator: per block of [`KC`] pixels the output gradient
/// packed once, then per tap the rows it reads gathered into a packed panel (zeros in the
/// padding) and multiplied.
#[inline(always)]
fn dense_with(geo: &Geo, part: &Part, acc: &mut [f32], path: Path) {
    let (cin, cout) = (geo.cin, geo.cout);
    let stem = cin < 16 && geo.kh * geo.kw > 1;
    if stem && geo.s.stride * cin == MR {
        return rows_in_place(geo, part, acc, path);
    }
    let (p0, p1) = (part.p0, part.p1);
    let kb = KC.min(p1 - p0).max(1);
    let mut b = buffers::take_zeroed(kb * cout.next_multiple_of(path.lanes));
    // the stems (few input channels): whole patches as the rows, one GEMM of taps·cin rows
    // (the accumulator's [tap][cin] order) instead of taps thin ones
    let m = if stem {
        geo.kh * geo.kw * cin
    } else {
        part.chans.len()
    };
    let mut a = buffers::take_zeroed(m.div_ceil(MR) * MR * kb);
    let mut patch = vec![0f32; if stem { m } else { 0 }];
    let mut b0 = p0;
    while b0 < p1 {
        let kc = kb.min(p1 - b0);
        pack_b(
            &geo.g[b0 * cout..(b0 + kc) * cout],
            cout,
            kc,
            kb,
            path,
            &mut b,
        );
        if stem {
            let mut q = geo.px(b0);
            for r in 0..kc {
                geo.patch(q, &mut patch);
                put_a(&mut a, kb, r, Some(&patch), m);
                geo.next(&mut q);
            }
            (path.gemm)(&a, kb, m, &b, cout, kc, kb, acc, cout);
        } else {
            for (ti, t) in part.taps.clone().enumerate() {
                let (ky, kx) = (t / geo.kw, t % geo.kw);
                let mut any = false;
                let mut q = geo.px(b0);
                for r in 0..kc {
                    let row = geo.row(q, ky, kx).map(|src| &src[part.chans.clone()]);
                    any |= row.is_some();
                    put_a(&mut a, kb, r, row, m);
                    geo.next(&mut q);
                }
                if any {
                    let tap = &mut acc[ti * m * cout..][..m * cout];
                    (path.gemm)(&a, kb, m, &b, cout, kc, kb, tap, cout);
                }
            }
        }
        b0 += kc;
    }
    buffers::give(a);
    buffers::give(b);
}

/// A stem whose stride × input channels is [`MR`] (RGB at stride 2): along an output row,
/// kernel row `ky`'s patch values (`kw·cin` of them, `(kx, c)` order) for output pixel `ox`
/// are the zero-padded input row's from `MR·ox` on. So the packed panel the GEMM reads —
/// [`MR`]-row blocks, pixels [`MR`] values apart — is that padded row itself, its blocks one
/// pixel apart: one row copy per output row and kernel row instead of a gather per pixel.
#[inline(always)]
fn rows_in_place(geo: &Geo, part: &Part, acc: &mut [f32], path: Path) {
    let (s, cin, cout) = (geo.s, geo.cin, geo.cout);
    let m = geo.kw * cin;
    let blocks = m.div_ceil(MR);
    let kb = KC.min(geo.ow);
    let mut b = buffers::take_zeroed(kb * cout.next_multiple_of(path.lanes));
    // pad[2] zero columns, the input row, zeros up to the last pixel's last block
    let (left, width) = (s.pad[2] * cin, s.w * cin);
    let mut row = buffers::take_zeroed((MR * (geo.ow - 1 + blocks)).max(left + width));
    let mut p = part.p0;
    while p < part.p1 {
        let q = geo.px(p);
        // pixels of this output row, at most a block
        let kc = (geo.ow - q.ox).min(part.p1 - p).min(kb);
        pack_b(
            &geo.g[p * cout..(p + kc) * cout],
            cout,
            kc,
            kb,
            path,
            &mut b,
        );
        for ky in 0..geo.kh {
            let iy = (q.oy * s.stride + ky) as isize - s.pad[0] as isize;
            if iy < 0 || iy >= s.h as isize {
                continue;
            }
            let at = (q.b * s.h + iy as usize) * width;
            row[left..left + width].copy_from_slice(&geo.x[at..at + width]);
            let tap_rows = &mut acc[ky * m * cout..][..m * cout];
            (path.gemm)(&row[MR * q.ox..], 1, m, &b, cout, kc, kb, tap_rows, cout);
        }
        p += kc;
    }
    buffers::give(row);
    buffers::give(b);
}

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The portable GEMM on packed operands: [`MR`] × 8 tiles, plain multiply-adds.
#[allow(clippy::too_many_arguments)]
fn gemm_portable(
    a: &[f32],
    ka: usize,
    m: usize,
    b: &[f32],
    n: usize,
    kc: usize,
    kb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    for j0 in (0..n).step_by(8) {
        let cols = 8.min(n - j0);
        let bs = &b[j0 * kb..][..kb * 8];
        for (ib, i0) in (0..m).step_by(MR).enumerate() {
            let ab = &a[ib * ka * MR..][..kc * MR];
            let mut t = [[0f32; 8]; MR];
            for (ar, br) in ab.chunks_exact(MR).zip(bs.chunks_exact(8)).take(kc) {
                for i in 0..MR {
                    for j in 0..8 {
                        t[i][j] += ar[i] * br[j];
                    }
                }
            }
            for (i, row) in t.iter().enumerate().take(m - i0) {
                let dst = &mut c[(i0 + i) * ldc + j0..][..cols];
                for (d, v) in dst.iter_mut().zip(row) {
                    *d += v;
                }
            }
        }
    }
}

/// `dW` (PyTorch's `[c, 1, kh, kw]`) and `db` (`[c]`, when asked) of a depthwise convolution
/// with input `x` (`[n, h, w, c]`) and output gradient `g` (`[n, oh, ow, c]`). Overwrites them.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_weight_grad(
    isa: Isa,
    x: &[f32],
    s: &ConvShape,
    c: usize,
    g: &[f32],
    kh: usize,
    kw: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<(), ShapeError> {
    let (oh, ow) = s.out_hw(kh, kw)?;
    let p_total = s.n * oh * ow;
    if x.len() != s.n * s.h * s.w * c
        || g.len() != p_total * c
        || dw.len() != c * kh * kw
        || db.as_ref().is_some_and(|b| b.len() != c)
    {
        return Err(ShapeError(format!(
            "depthwise weight gradient: x {} / g {} / dW {} values for [{}, {}, {}, {c}] → [{oh}, {ow}], {kh}×{kw}",
            x.len(),
            g.len(),
            dw.len(),
            s.n,
            s.h,
            s.w
        )));
    }
    let taps = kh * kw;
    let geo = Geo {
        x,
        g,
        s,
        cin: c,
        cout: c,
        kh,
        kw,
        oh,
        ow,
    };
    let partials = per_thread(
        p_total,
        taps * c,
        p_total * taps * c < 1 << 15,
        |p0, p1, acc| {
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
                Isa::AVX512 => unsafe { dw_avx512(&geo, p0, p1, acc) },
                #[cfg(target_arch = "x86_64")]
                Isa::AVX2 => unsafe { dw_avx2(&geo, p0, p1, acc) },
                _ => dw_rows::<false>(&geo, p0, p1, acc),
            }
        },
    );
    for ch in 0..c {
        for t in 0..taps {
            dw[ch * taps + t] = partials.iter().map(|a| a[t * c + ch]).sum();
        }
    }
    if let Some(db) = db {
        bias_grad(g, c, db);
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dw_avx512(geo: &Geo, p0: usize, p1: usize, acc: &mut [f32]) {
    dw_rows::<true>(geo, p0, p1, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_avx2(geo: &Geo, p0: usize, p1: usize, acc: &mut [f32]) {
    dw_rows::<true>(geo, p0, p1, acc)
}

/// Pixels `p0..p1` into `acc` (`[tap][c]`), block by block.
#[inline(always)]
fn dw_rows<const FMA: bool>(geo: &Geo, p0: usize, p1: usize, acc: &mut [f32]) {
    let c = geo.cin;
    let mut part = vec![0f32; acc.len()];
    let mut b0 = p0;
    while b0 < p1 {
        let kc = KC.min(p1 - b0);
        part.fill(0.0);
        let mut q = geo.px(b0);
        for p in b0..b0 + kc {
            let gr = &geo.g[p * c..(p + 1) * c];
            let here = q;
            geo.next(&mut q);
            for ky in 0..geo.kh {
                for kx in 0..geo.kw {
                    if let Some(xr) = geo.row(here, ky, kx) {
                        let dst = &mut part[(ky * geo.kw + kx) * c..][..c];
                        for ((d, &gv), &xv) in dst.iter_mut().zip(gr).zip(xr) {
                            *d = fma::<FMA>(gv, xv, *d);
                        }
                    }
                }
            }
        }
        for (a, v) in acc.iter_mut().zip(&part) {
            *a += v;
        }
        b0 += kc;
    }
}

/// The register tiles of the dense weight gradient on packed operands: [`MR`] input channels
/// × up to 64 (AVX-512) or 16 (AVX2) output channels, summing a block of pixels from zero in
/// registers, then adding into the accumulator; column tails with masked stores, row tails
/// by storing only the valid rows.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::MR;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_avx512(
        a: &[f32],
        ka: usize,
        m: usize,
        b: &[f32],
        n: usize,
        kc: usize,
        kb: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            debug_assert!(a.len() >= ((m.div_ceil(MR) - 1) * ka + kc) * MR && kc <= kb);
            debug_assert!(b.len() >= n.next_multiple_of(16) * kb && c.len() >= (m - 1) * ldc + n);
            let mut j0 = 0;
            while j0 < n {
                let w = (n - j0).next_multiple_of(16).min(64);
                let cols = w.min(n - j0);
                let bp = b.as_ptr().add(j0 * kb);
                for (ib, i0) in (0..m).step_by(MR).enumerate() {
                    let rows = MR.min(m - i0);
                    let ap = a.as_ptr().add(ib * ka * MR);
                    let cp = c.as_mut_ptr().add(i0 * ldc + j0);
                    match w / 16 {
                        1 => tile512::<1>(ap, bp, kc, cp, ldc, rows, cols),
                        2 => tile512::<2>(ap, bp, kc, cp, ldc, rows, cols),
                        3 => tile512::<3>(ap, bp, kc, cp, ldc, rows, cols),
                        _ => tile512::<4>(ap, bp, kc, cp, ldc, rows, cols),
                    }
                }
                j0 += w;
            }
        }
    }

    #[inline(always)]
    unsafe fn tile512<const NV: usize>(
        a: *const f32,
        b: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(bp.add(v * 16));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(i));
                    for (x, &y) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, y, *x);
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(NV * 16);
            }
            for (i, row) in acc.iter().enumerate().take(rows) {
                for (v, &x) in row.iter().enumerate() {
                    let left = cols.saturating_sub(v * 16).min(16);
                    let mask = ((1u32 << left) - 1) as __mmask16;
                    let o = c.add(i * ldc + v * 16);
                    let y = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, o));
                    _mm512_mask_storeu_ps(o, mask, y);
                }
            }
        }
    }

    /// [`gemm_avx512`] with AVX2: stripes of 16 columns.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_avx2(
        a: &[f32],
        ka: usize,
        m: usize,
        b: &[f32],
        n: usize,
        kc: usize,
        kb: usize,
        c: &mut [f32],
        ldc: usize,
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            debug_assert!(a.len() >= ((m.div_ceil(MR) - 1) * ka + kc) * MR && kc <= kb);
            debug_assert!(b.len() >= n.next_multiple_of(8) * kb && c.len() >= (m - 1) * ldc + n);
            let mask = |w: usize| -> __m256i {
                let lanes: [i32; 8] = std::array::from_fn(|l| if l < w { -1 } else { 0 });
                _mm256_loadu_si256(lanes.as_ptr() as *const __m256i)
            };
            let mut j0 = 0;
            while j0 < n {
                let w = (n - j0).next_multiple_of(8).min(16);
                let cols = w.min(n - j0);
                let masks = [mask(cols.min(8)), mask(cols.saturating_sub(8))];
                let bp = b.as_ptr().add(j0 * kb);
                for (ib, i0) in (0..m).step_by(MR).enumerate() {
                    let rows = MR.min(m - i0);
                    let ap = a.as_ptr().add(ib * ka * MR);
                    let cp = c.as_mut_ptr().add(i0 * ldc + j0);
                    if w > 8 {
                        tile256::<2>(ap, bp, kc, masks, cp, ldc, rows);
                    } else {
                        tile256::<1>(ap, bp, kc, masks, cp, ldc, rows);
                    }
                }
                j0 += w;
            }
        }
    }

    #[inline(always)]
    unsafe fn tile256<const NV: usize>(
        a: *const f32,
        b: *const f32,
        kc: usize,
        masks: [__m256i; 2],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(bp.add(v * 8));
                }
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(i));
                    for (x, &y) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, y, *x);
                    }
                }
                ap = ap.add(MR);
                bp = bp.add(NV * 8);
            }
            for (i, row) in acc.iter().enumerate().take(rows) {
                for (v, &x) in row.iter().enumerate() {
                    let o = c.add(i * ldc + v * 8);
                    let y = _mm256_add_ps(x, _mm256_maskload_ps(o, masks[v]));
                    _mm256_maskstore_ps(o, masks[v], y);
                }
            }
        }
    }
}

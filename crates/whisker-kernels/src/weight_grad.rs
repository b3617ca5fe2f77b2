//! Weight gradients, for fine-tuning: of dense convolutions (linear layers are 1×1 ones) and
//! of depthwise convolutions, on NHWC activations.
//!
//! Dense: for each kernel tap `(ky, kx)`, `dW_tap[c, o] = Σ_p x_tap[p, c] · g[p, o]` — a GEMM
//! whose reduction runs over every output pixel of the batch (`p`, often 50,000 long). The
//! rows of `x` a tap reads are gathered into a panel (zeros where the tap falls in the
//! padding) block by block of [`KC`] pixels; register tiles of `MR` input × `NR` output
//! channels sum one block from zero, then add into the thread's accumulator: a two-level sum,
//! whose rounding error grows with `KC + P/KC` rather than with `P` (burn-flex's sequential
//! sums are 1000× less accurate than PyTorch on a ResNet stem; see the fine-tuning parity
//! test). Threads split the pixels and their accumulators are added at the end.
//!
//! Depthwise: `dW[c, tap] = Σ_p g[p, c] · x_tap[p, c]`, vectorised across channels, with the
//! same blocking.

use rayon::prelude::*;

use crate::{ConvShape, Isa, ShapeError};

/// Output pixels per block of the reduction.
const KC: usize = 256;

/// Accumulators of more than this many values per thread split the work by taps instead
/// of by pixels (none of the zoo's convolutions come near it).
const MAX_PARTIAL: usize = 1 << 24;

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
    let one_thread = p_total * size < 1 << 16 || size * rayon::current_num_threads() > MAX_PARTIAL;
    let partials = per_thread(p_total, size, one_thread, |p0, p1, acc| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: dispatched only when the CPU has the feature (`Isa::supported`).
        Isa::Avx512 => unsafe { dense_avx512(&geo, p0, p1, acc) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { dense_avx2(&geo, p0, p1, acc) },
        _ => dense::<4, 8, false>(&geo, p0, p1, acc),
    });
    // [tap][c][o] partials → [o][c][ky][kx]
    dw.par_chunks_mut(cin * taps)
        .enumerate()
        .for_each(|(o, row)| {
            for c in 0..cin {
                for t in 0..taps {
                    let i = (t * cin + c) * cout + o;
                    row[c * taps + t] = partials.iter().map(|a| a[i]).sum();
                }
            }
        });
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
    let threads = if one_thread {
        1
    } else {
        rayon::current_num_threads()
            .max(1)
            .min(p_total.div_ceil(KC))
            .max(1)
    };
    let per = p_total.div_ceil(threads);
    (0..threads)
        .into_par_iter()
        .map(|t| {
            let (p0, p1) = (t * per, ((t + 1) * per).min(p_total));
            let mut acc = vec![0f32; size];
            if p0 < p1 {
                job(p0, p1, &mut acc);
            }
            acc
        })
        .collect()
}

/// `db[o] = Σ_p g[p, o]`, in blocks (two-level sums).
fn bias_grad(g: &[f32], cout: usize, db: &mut [f32]) {
    let mut total = vec![0f64; cout];
    for block in g.chunks(KC * cout) {
        let mut part = vec![0f32; cout];
        for row in block.chunks_exact(cout) {
            for (a, v) in part.iter_mut().zip(row) {
                *a += v;
            }
        }
        for (t, v) in total.iter_mut().zip(&part) {
            *t += *v as f64;
        }
    }
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

impl Geo<'_> {
    /// The input row (`cin` values) tap `(ky, kx)` of output pixel `p` reads, if inside.
    #[inline(always)]
    fn row(&self, p: usize, ky: usize, kx: usize) -> Option<&[f32]> {
        let (b, rem) = (p / (self.oh * self.ow), p % (self.oh * self.ow));
        let (oy, ox) = (rem / self.ow, rem % self.ow);
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
    /// The whole input patch of output pixel `p` (`kh·kw·cin` values, tap-major, zeros in the
    /// padding), each kernel row copied in one piece.
    fn patch(&self, p: usize, dst: &mut [f32]) {
        let (s, cin, kw) = (self.s, self.cin, self.kw);
        let (b, rem) = (p / (self.oh * self.ow), p % (self.oh * self.ow));
        let (oy, ox) = (rem / self.ow, rem % self.ow);
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dense_avx512(geo: &Geo, p0: usize, p1: usize, acc: &mut [f32]) {
    dense_with(geo, p0, p1, acc, |a, m, b, n, kc, c| {
        // SAFETY: this function runs only where AVX-512F is supported.
        unsafe { simd::gemm_tn_avx512(a, m, b, n, kc, c) }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_avx2(geo: &Geo, p0: usize, p1: usize, acc: &mut [f32]) {
    dense_with(geo, p0, p1, acc, |a, m, b, n, kc, c| {
        // SAFETY: this function runs only where AVX2 and FMA are supported.
        unsafe { simd::gemm_tn_avx2(a, m, b, n, kc, c) }
    })
}

/// Pixels `p0..p1` into `acc` (`[tap][cin][cout]`), portably.
fn dense<const MR: usize, const NR: usize, const FMA: bool>(
    geo: &Geo,
    p0: usize,
    p1: usize,
    acc: &mut [f32],
) {
    dense_with(geo, p0, p1, acc, gemm_tn::<MR, NR, FMA>)
}

/// Pixels `p0..p1` into `acc` (`[tap][cin][cout]`): per block of [`KC`] pixels and per tap,
/// the rows the tap reads gathered into a panel (zeros in the padding), then
/// `gemm(panel, cin, g block, cout, kc, acc of the tap)`.
#[inline(always)]
fn dense_with(
    geo: &Geo,
    p0: usize,
    p1: usize,
    acc: &mut [f32],
    gemm: impl Fn(&[f32], usize, &[f32], usize, usize, &mut [f32]),
) {
    let (cin, cout) = (geo.cin, geo.cout);
    let taps = geo.kh * geo.kw;
    if cin < 16 && taps > 1 {
        // few input channels (the RGB stems): whole patches as the rows, one GEMM of
        // taps·cin rows (the accumulator's [tap][cin] order) instead of taps thin ones
        let m = taps * cin;
        let mut panel = vec![0f32; KC * m + 16];
        let mut b0 = p0;
        while b0 < p1 {
            let kc = KC.min(p1 - b0);
            for (r, dst) in panel.chunks_exact_mut(m).take(kc).enumerate() {
                geo.patch(b0 + r, dst);
            }
            let gblk = &geo.g[b0 * cout..(b0 + kc) * cout];
            gemm(&panel[..kc * m + 16], m, gblk, cout, kc, acc);
            b0 += kc;
        }
        return;
    }
    // a few values past the last row: the SIMD tiles read whole register rows
    let mut panel = vec![0f32; KC * cin + 16];
    let mut b0 = p0;
    while b0 < p1 {
        let kc = KC.min(p1 - b0);
        let gblk = &geo.g[b0 * cout..(b0 + kc) * cout];
        for ky in 0..geo.kh {
            for kx in 0..geo.kw {
                // the rows this tap reads, zeros in the padding
                let mut any = false;
                for (r, dst) in panel.chunks_exact_mut(cin).take(kc).enumerate() {
                    match geo.row(b0 + r, ky, kx) {
                        Some(src) => {
                            dst.copy_from_slice(src);
                            any = true;
                        }
                        None => dst.fill(0.0),
                    }
                }
                if !any {
                    continue;
                }
                let tap = &mut acc[(ky * geo.kw + kx) * cin * cout..][..cin * cout];
                gemm(&panel[..kc * cin + 16], cin, gblk, cout, kc, tap);
            }
        }
        b0 += kc;
    }
}

/// `c[i, j] += Σ_p a[p, i] · b[p, j]` for `a` `[kc, m]`, `b` `[kc, n]`, `c` `[m, n]`: register
/// tiles that sum the block from zero and add into `c` once.
#[inline(always)]
fn gemm_tn<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    m: usize,
    b: &[f32],
    n: usize,
    kc: usize,
    c: &mut [f32],
) {
    let mut j0 = 0;
    while j0 < n {
        let width = n - j0;
        let mut i0 = 0;
        while i0 + MR <= m {
            if width >= NR {
                tile::<MR, NR, FMA>(a, m, b, n, kc, i0, j0, c);
            } else if width >= 8 {
                tile::<MR, 8, FMA>(a, m, b, n, kc, i0, j0, c);
            } else {
                tile_any::<FMA>(a, m, b, n, kc, i0, MR, j0, width, c);
            }
            i0 += MR;
        }
        let step = if width >= NR {
            NR
        } else if width >= 8 {
            8
        } else {
            width
        };
        if i0 < m {
            tile_any::<FMA>(a, m, b, n, kc, i0, m - i0, j0, step, c);
        }
        j0 += step;
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

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    m: usize,
    b: &[f32],
    n: usize,
    kc: usize,
    i0: usize,
    j0: usize,
    c: &mut [f32],
) {
    let mut t = [[0f32; NR]; MR];
    for p in 0..kc {
        let br: &[f32; NR] = b[p * n + j0..p * n + j0 + NR].try_into().unwrap();
        let ar: &[f32; MR] = a[p * m + i0..p * m + i0 + MR].try_into().unwrap();
        for i in 0..MR {
            for j in 0..NR {
                t[i][j] = fma::<FMA>(ar[i], br[j], t[i][j]);
            }
        }
    }
    for (i, row) in t.iter().enumerate() {
        let dst = &mut c[(i0 + i) * n + j0..(i0 + i) * n + j0 + NR];
        for (d, v) in dst.iter_mut().zip(row) {
            *d += v;
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_any<const FMA: bool>(
    a: &[f32],
    m: usize,
    b: &[f32],
    n: usize,
    kc: usize,
    i0: usize,
    mr: usize,
    j0: usize,
    nr: usize,
    c: &mut [f32],
) {
    for i in i0..i0 + mr {
        for j in j0..j0 + nr {
            let mut t = 0f32;
            for p in 0..kc {
                t = fma::<FMA>(a[p * m + i], b[p * n + j], t);
            }
            c[i * n + j] += t;
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
                // SAFETY: dispatched only when the CPU has the feature (`Isa::supported`).
                Isa::Avx512 => unsafe { dw_avx512(&geo, p0, p1, acc) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { dw_avx2(&geo, p0, p1, acc) },
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
        for p in b0..b0 + kc {
            let gr = &geo.g[p * c..(p + 1) * c];
            for ky in 0..geo.kh {
                for kx in 0..geo.kw {
                    if let Some(xr) = geo.row(p, ky, kx) {
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

/// The register tiles of the dense weight gradient: 6 input channels × 32 (AVX-512) or 16
/// (AVX2) output channels, summing a block of pixels from zero in registers; column tails
/// with masked loads and stores, row tails by storing only the valid rows.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    const MR: usize = 6;

    /// `c[i, j] += Σ_p a[p·m + i] · b[p·n + j]`; `a` holds at least `MR` values past its
    /// last row's `m`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm_tn_avx512(
        a: &[f32],
        m: usize,
        b: &[f32],
        n: usize,
        kc: usize,
        c: &mut [f32],
    ) {
        debug_assert!(a.len() >= (kc - 1) * m + m + MR && b.len() >= kc * n && c.len() >= m * n);
        let mask = |w: usize| -> __mmask16 {
            if w >= 16 {
                0xffff
            } else {
                ((1u32 << w) - 1) as __mmask16
            }
        };
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(32);
            let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(MR);
                let (ap, bp) = (a.as_ptr().add(i0), b.as_ptr().add(j0));
                let cp = c.as_mut_ptr().add(i0 * n + j0);
                if cols > 16 {
                    tile512::<2>(ap, m, bp, n, kc, [m0, m1], cp, n, rows);
                } else {
                    tile512::<1>(ap, m, bp, n, kc, [m0, m1], cp, n, rows);
                }
                i0 += MR;
            }
            j0 += 32;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile512<const NV: usize>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        kc: usize,
        masks: [__mmask16; 2],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(masks[v], bp.add(v * 16));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                for (x, &y) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, y, *x);
                }
            }
            ap = ap.add(lda);
            bp = bp.add(ldb);
        }
        for (i, row) in acc.iter().enumerate().take(rows) {
            for (v, &x) in row.iter().enumerate() {
                let o = c.add(i * ldc + v * 16);
                let y = _mm512_add_ps(x, _mm512_maskz_loadu_ps(masks[v], o));
                _mm512_mask_storeu_ps(o, masks[v], y);
            }
        }
    }

    /// [`gemm_tn_avx512`] with AVX2: 6 × 16 tiles.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm_tn_avx2(
        a: &[f32],
        m: usize,
        b: &[f32],
        n: usize,
        kc: usize,
        c: &mut [f32],
    ) {
        debug_assert!(a.len() >= (kc - 1) * m + m + MR && b.len() >= kc * n && c.len() >= m * n);
        let mask = |w: usize| -> __m256i {
            let lanes: [i32; 8] = std::array::from_fn(|l| if l < w { -1 } else { 0 });
            _mm256_loadu_si256(lanes.as_ptr() as *const __m256i)
        };
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(16);
            let masks = [mask(cols), mask(cols.saturating_sub(8))];
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(MR);
                let (ap, bp) = (a.as_ptr().add(i0), b.as_ptr().add(j0));
                let cp = c.as_mut_ptr().add(i0 * n + j0);
                if cols > 8 {
                    tile256::<2>(ap, m, bp, n, kc, masks, cp, n, rows);
                } else {
                    tile256::<1>(ap, m, bp, n, kc, masks, cp, n, rows);
                }
                i0 += MR;
            }
            j0 += 16;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile256<const NV: usize>(
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        kc: usize,
        masks: [__m256i; 2],
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_maskload_ps(bp.add(v * 8), masks[v]);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i));
                for (x, &y) in row.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(av, y, *x);
                }
            }
            ap = ap.add(lda);
            bp = bp.add(ldb);
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

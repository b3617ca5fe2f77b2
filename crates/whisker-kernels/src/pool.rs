//! Pooling and channel-wise operations on NHWC activations.

use std::ops::Range;

use rayon::prelude::*;

use crate::ShapeError;

fn check(what: &str, got: usize, want: usize) -> Result<(), ShapeError> {
    if got != want {
        return Err(ShapeError(format!("{what}: {got} values, expected {want}")));
    }
    Ok(())
}

/// The output size of a `k × k` max pool (PyTorch's rules: padding at most half the window).
fn max_pool_out(
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<(usize, usize), ShapeError> {
    if stride == 0 || k == 0 || h + 2 * pad < k || w + 2 * pad < k || pad * 2 > k {
        return Err(ShapeError(format!(
            "max pool {k}×{k} stride {stride} pad {pad} on {h}×{w}"
        )));
    }
    Ok((
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    ))
}

/// Max pooling `k × k`, stride `stride`, `pad` on every side (padding never wins, as in
/// PyTorch). `x` `[n, h, w, c]` → `out` `[n, oh, ow, c]`.
#[allow(clippy::too_many_arguments)]
pub fn max_pool(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    out: &mut [f32],
) -> Result<(usize, usize), ShapeError> {
    let (oh, ow) = max_pool_out(h, w, k, stride, pad)?;
    check("max pool input", x.len(), n * h * w * c)?;
    check("max pool output", out.len(), n * oh * ow * c)?;
    if c == 0 || ow == 0 {
        return Ok((oh, ow));
    }
    out.par_chunks_mut(ow * c).enumerate().for_each(|(r, row)| {
        let (b, oy) = (r / oh, r % oh);
        let y0 = (oy * stride) as isize - pad as isize;
        for ox in 0..ow {
            let x0 = (ox * stride) as isize - pad as isize;
            let o = &mut row[ox * c..(ox + 1) * c];
            o.fill(f32::NEG_INFINITY);
            for iy in y0.max(0)..(y0 + k as isize).min(h as isize) {
                for ix in x0.max(0)..(x0 + k as isize).min(w as isize) {
                    let src = &x[((b * h + iy as usize) * w + ix as usize) * c..][..c];
                    max_into(o, src);
                }
            }
        }
    });
    Ok((oh, ow))
}

/// `o = max(o, src)` element-wise, NaN propagating as in PyTorch (branch-free, so the
/// compiler vectorises it).
#[inline]
fn max_into(o: &mut [f32], src: &[f32]) {
    for (m, &v) in o.iter_mut().zip(src) {
        let take = (v > *m) | v.is_nan();
        *m = if take { v } else { *m };
    }
}

/// PyTorch's adaptive average pooling to `oh × ow`: output cell `i` averages the inputs
/// `[floor(i·h/oh), ceil((i+1)·h/oh))`.
#[allow(clippy::too_many_arguments)]
pub fn adaptive_avg_pool(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    check("average pool input", x.len(), n * h * w * c)?;
    check("average pool output", out.len(), n * oh * ow * c)?;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(ShapeError(format!("average pool of {h}×{w} to {oh}×{ow}")));
    }
    if c == 0 {
        return Ok(());
    }
    out.par_chunks_mut(ow * c).enumerate().for_each(|(r, row)| {
        let (b, oy) = (r / oh, r % oh);
        let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
        for ox in 0..ow {
            let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
            let o = &mut row[ox * c..(ox + 1) * c];
            o.fill(0.0);
            for iy in y0..y1 {
                for ix in x0..x1 {
                    let src = &x[((b * h + iy) * w + ix) * c..][..c];
                    for (m, &v) in o.iter_mut().zip(src) {
                        *m += v;
                    }
                }
            }
            let inv = ((y1 - y0) * (x1 - x0)) as f32;
            for m in o.iter_mut() {
                *m /= inv;
            }
        }
    });
    Ok(())
}

/// Global average pooling `[n, hw, c]` → `[n, c]`.
pub fn global_avg_pool(
    x: &[f32],
    n: usize,
    hw: usize,
    c: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    adaptive_avg_pool(x, n, hw, 1, c, 1, 1, out)
}

/// Scale each channel of each image: `x[b, p, c] *= s[b, c]` (squeeze-excitation), subnormal
/// products flushed to zero ([`crate::act::flush`]).
pub fn scale_channels(
    x: &mut [f32],
    n: usize,
    hw: usize,
    c: usize,
    s: &[f32],
) -> Result<(), ShapeError> {
    check("scaled map", x.len(), n * hw * c)?;
    check("channel scales", s.len(), n * c)?;
    if c == 0 {
        return Ok(());
    }
    // a contiguous run of pixels a thread (not a task a pixel)
    let pixels = n * hw;
    let per = pixels.div_ceil(rayon::current_num_threads().max(1)).max(1);
    x.par_chunks_mut(per * c).enumerate().for_each(|(t, run)| {
        for (i, px) in run.chunks_exact_mut(c).enumerate() {
            let p = t * per + i;
            let sc = &s[(p / hw.max(1)) * c..][..c];
            for (v, f) in px.iter_mut().zip(sc) {
                *v = crate::act::flush(*v * f);
            }
        }
    });
    Ok(())
}

/// The input gradient of [`max_pool`]: each output's gradient goes to the input that won its
/// window (the first maximum in scan order, or a NaN, as PyTorch picks). `accumulate` adds
/// to `dx` instead of overwriting it. `relu_input`: `x` is a ReLU's output and `dx` is to be
/// that ReLU's input gradient — a gradient whose winner is not positive (zero, or NaN) is
/// dropped, as ReLU's backward would zero it (a pass over `dx` saved). `isa`: the
/// instruction-set path.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_backward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    g: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    relu_input: bool,
    isa: crate::Isa,
) -> Result<(), ShapeError> {
    let (oh, ow) = max_pool_out(h, w, k, stride, pad)?;
    check("max pool input", x.len(), n * h * w * c)?;
    check("max pool gradient", g.len(), n * oh * ow * c)?;
    check("max pool input gradient", dx.len(), n * h * w * c)?;
    if h * w > u32::MAX as usize {
        return Err(ShapeError(format!("max pool on {h}×{w}: too many pixels")));
    }
    if c == 0 || h == 0 || w == 0 {
        return Ok(());
    }
    // (image, channel block) jobs, each writing only its channels of its image; whole
    // images when the batch alone keeps the threads busy
    let per_image = (2 * rayon::current_num_threads().max(1)).div_ceil(n).max(1);
    let block = c.div_ceil(per_image).next_multiple_of(LANES).min(c);
    let blocks = c.div_ceil(block);
    let d = crate::conv::Ptr(dx.as_mut_ptr());
    (0..n * blocks).into_par_iter().for_each(|job| {
        let (b, c0) = (job / blocks, (job % blocks) * block);
        let j = PoolJob {
            x: &x[b * h * w * c..][..h * w * c],
            g: &g[b * oh * ow * c..][..oh * ow * c],
            dims: (h, w, c, oh, ow),
            window: (k, stride, pad),
            channels: c0..c0 + block.min(c - c0),
            accumulate,
            relu_input,
        };
        // SAFETY: image b's values; this job touches only its channels of them
        let db = unsafe { std::slice::from_raw_parts_mut(d.get().add(b * h * w * c), h * w * c) };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
            crate::Isa::AVX512 => unsafe { pool_job_avx512(&j, db) },
            #[cfg(target_arch = "x86_64")]
            crate::Isa::AVX2 => unsafe { pool_job_avx2(&j, db) },
            _ => pool_job::<8>(&j, db, pool_select::<8>),
        }
    });
    Ok(())
}

/// One image's max-pool backward for a block of its channels.
struct PoolJob<'a> {
    /// The image's input `[h, w, c]` and output gradient `[oh, ow, c]`.
    x: &'a [f32],
    g: &'a [f32],
    dims: (usize, usize, usize, usize, usize),
    /// Kernel, stride, padding.
    window: (usize, usize, usize),
    channels: std::ops::Range<usize>,
    accumulate: bool,
    relu_input: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pool_job_avx512(j: &PoolJob, db: &mut [f32]) {
    pool_job::<16>(j, db, |x, dx, g, at, ys, xs, relu| {
        // SAFETY: within this function's AVX-512 context
        unsafe { select_avx512(x, dx, g, at, ys, xs, relu) }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_job_avx2(j: &PoolJob, db: &mut [f32]) {
    pool_job::<8>(j, db, |x, dx, g, at, ys, xs, relu| {
        // SAFETY: within this function's AVX2 context
        unsafe { select_avx2(x, dx, g, at, ys, xs, relu) }
    })
}

/// Where a window's select works: `(w, c, ch, l)` — the image's width and channels, and `l`
/// channels from `ch` (see [`pool_select`]).
type Select = (usize, usize, usize, usize);

/// [`PoolJob`] with `L` channels a step (one vector register of the path), each window's
/// channels by `select`.
#[inline(always)]
fn pool_job<const L: usize>(
    j: &PoolJob,
    db: &mut [f32],
    select: impl Fn(&[f32], &mut [f32], &[f32], Select, Range<usize>, Range<usize>, bool),
) {
    let (h, w, c, oh, ow) = j.dims;
    let (k, stride, pad) = j.window;
    let (c0, cw) = (j.channels.start, j.channels.len());
    // without `accumulate`, input rows are zeroed just before their first window adds to
    // them (while they are in cache), not in a pass of their own
    let mut zeroed = 0;
    let mut zero_to = |db: &mut [f32], end: usize| {
        if !j.accumulate && end > zeroed {
            let rows = &mut db[zeroed * w * c..end * w * c];
            if cw == c {
                rows.fill(0.0);
            } else {
                rows.chunks_exact_mut(c)
                    .for_each(|px| px[c0..c0 + cw].fill(0.0));
            }
            zeroed = end;
        }
    };
    for oy in 0..oh {
        let y0 = (oy * stride) as isize - pad as isize;
        let ys = y0.max(0) as usize..(y0 + k as isize).min(h as isize) as usize;
        zero_to(db, ys.end);
        for ox in 0..ow {
            let x0 = (ox * stride) as isize - pad as isize;
            let xs = x0.max(0) as usize..(x0 + k as isize).min(w as isize) as usize;
            let gr = &j.g[(oy * ow + ox) * c..][..c];
            let mut ch = c0;
            while ch < c0 + cw {
                let l = L.min(c0 + cw - ch);
                select(
                    j.x,
                    db,
                    gr,
                    (w, c, ch, l),
                    ys.clone(),
                    xs.clone(),
                    j.relu_input,
                );
                ch += l;
            }
        }
    }
    zero_to(db, h);
}

/// Channels a max-pool backward job's block is a multiple of (one AVX-512 register).
const LANES: usize = 16;

/// Max-pool backward for one window and `l` ≤ `L` channels from `ch`: find each channel's
/// winner (first maximum in scan order, or the last NaN, as PyTorch) as its tap number in the
/// window, with branch-free selects on fixed-size arrays (registers; a tail of fewer channels
/// padded with −∞, which never wins), then add the output gradient to the winners tap by tap
/// (a select a tap, vectorised across channels, instead of one scattered add a channel).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pool_select<const L: usize>(
    x: &[f32],
    dx: &mut [f32],
    g: &[f32],
    (w, c, ch, l): Select,
    ys: Range<usize>,
    xs: Range<usize>,
    relu_input: bool,
) {
    let (mut best, mut arg) = ([f32::NEG_INFINITY; L], [0u32; L]);
    let mut tail = [f32::NEG_INFINITY; L];
    let mut t = 0u32;
    for iy in ys.clone() {
        for ix in xs.clone() {
            let p = iy * w + ix;
            let src: &[f32; L] = if l == L {
                x[p * c + ch..][..L].try_into().expect("L values")
            } else {
                tail[..l].copy_from_slice(&x[p * c + ch..][..l]);
                &tail
            };
            for j in 0..L {
                let take = (src[j] > best[j]) | src[j].is_nan();
                best[j] = if take { src[j] } else { best[j] };
                arg[j] = if take { t } else { arg[j] };
            }
            t += 1;
        }
    }
    // branch-free: after a ReLU about half the winners are zeros, in no predictable order
    let mut gv = [0f32; L];
    gv[..l].copy_from_slice(&g[ch..ch + l]);
    let gv: [f32; L] = std::array::from_fn(|j| {
        if !relu_input || best[j] > 0.0 {
            gv[j]
        } else {
            0.0
        }
    });
    let mut t = 0u32;
    for iy in ys {
        for ix in xs.clone() {
            let d = &mut dx[(iy * w + ix) * c + ch..][..l];
            if l == L {
                let d: &mut [f32; L] = d.try_into().expect("L values");
                for j in 0..L {
                    d[j] += if arg[j] == t { gv[j] } else { 0.0 };
                }
            } else {
                for j in 0..l {
                    d[j] += if arg[j] == t { gv[j] } else { 0.0 };
                }
            }
            t += 1;
        }
    }
}

/// [`pool_select`] in AVX-512 intrinsics (16 channels a register; a tail by masks): the
/// winners' tap numbers in a register, the gradient added to each tap's winners by a masked
/// add (the other channels' values untouched).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn select_avx512(
    x: &[f32],
    dx: &mut [f32],
    g: &[f32],
    (w, c, ch, l): Select,
    ys: Range<usize>,
    xs: Range<usize>,
    relu_input: bool,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        use std::arch::x86_64::*;
        debug_assert!(l <= 16);
        let lanes: __mmask16 = if l >= 16 { 0xffff } else { (1u16 << l) - 1 };
        let last = ((ys.end - 1) * w + xs.end - 1) * c + ch;
        assert!(ys.start < ys.end && xs.start < xs.end && last + l <= x.len().min(dx.len()));
        assert!(ch + l <= g.len());
        let (xp, dp) = (x.as_ptr(), dx.as_mut_ptr());
        let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut arg = _mm512_setzero_si512();
        let mut t = 0i32;
        for iy in ys.clone() {
            for ix in xs.clone() {
                // SAFETY: within `x` (checked above for the window's last pixel)
                let v = _mm512_maskz_loadu_ps(lanes, xp.add((iy * w + ix) * c + ch));
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                best = _mm512_mask_mov_ps(best, take, v);
                arg = _mm512_mask_mov_epi32(arg, take, _mm512_set1_epi32(t));
                t += 1;
            }
        }
        let keep = if relu_input {
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(best, _mm512_setzero_ps())
        } else {
            0xffff
        };
        let gv = _mm512_maskz_loadu_ps(lanes, g.as_ptr().add(ch));
        let mut t = 0i32;
        for iy in ys {
            for ix in xs.clone() {
                let won = lanes & keep & _mm512_cmpeq_epi32_mask(arg, _mm512_set1_epi32(t));
                let p = dp.add((iy * w + ix) * c + ch);
                let d = _mm512_maskz_loadu_ps(lanes, p);
                _mm512_mask_storeu_ps(p, lanes, _mm512_mask_add_ps(d, won, d, gv));
                t += 1;
            }
        }
    }
}

/// [`pool_select`] in AVX2 intrinsics for 8 channels (a tail of fewer by the portable
/// code): as [`select_avx512`], the gradient blended into each tap's winners.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn select_avx2(
    x: &[f32],
    dx: &mut [f32],
    g: &[f32],
    (w, c, ch, l): Select,
    ys: Range<usize>,
    xs: Range<usize>,
    relu_input: bool,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        use std::arch::x86_64::*;
        if l < 8 {
            return pool_select::<8>(x, dx, g, (w, c, ch, l), ys, xs, relu_input);
        }
        let last = ((ys.end - 1) * w + xs.end - 1) * c + ch;
        assert!(ys.start < ys.end && xs.start < xs.end && last + 8 <= x.len().min(dx.len()));
        assert!(ch + 8 <= g.len());
        let (xp, dp) = (x.as_ptr(), dx.as_mut_ptr());
        let mut best = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut arg = _mm256_setzero_ps();
        let mut t = 0i32;
        for iy in ys.clone() {
            for ix in xs.clone() {
                // SAFETY: within `x` (checked above for the window's last pixel)
                let v = _mm256_loadu_ps(xp.add((iy * w + ix) * c + ch));
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                );
                best = _mm256_blendv_ps(best, v, take);
                arg = _mm256_blendv_ps(arg, _mm256_castsi256_ps(_mm256_set1_epi32(t)), take);
                t += 1;
            }
        }
        let mut gv = _mm256_loadu_ps(g.as_ptr().add(ch));
        if relu_input {
            gv = _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(best, _mm256_setzero_ps()));
        }
        let arg = _mm256_castps_si256(arg);
        let mut t = 0i32;
        for iy in ys {
            for ix in xs.clone() {
                let won = _mm256_castsi256_ps(_mm256_cmpeq_epi32(arg, _mm256_set1_epi32(t)));
                if _mm256_movemask_ps(won) != 0 {
                    let p = dp.add((iy * w + ix) * c + ch);
                    let d = _mm256_loadu_ps(p);
                    _mm256_storeu_ps(p, _mm256_blendv_ps(d, _mm256_add_ps(d, gv), won));
                }
                t += 1;
            }
        }
    }
}

/// The input gradient of [`adaptive_avg_pool`]: each output's gradient spread evenly over its
/// cell. `accumulate` adds to `dx` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn adaptive_avg_pool_backward(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    g: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) -> Result<(), ShapeError> {
    check("average pool gradient", g.len(), n * oh * ow * c)?;
    check("average pool input gradient", dx.len(), n * h * w * c)?;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(ShapeError(format!("average pool of {h}×{w} to {oh}×{ow}")));
    }
    if c == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(h * w * c).enumerate().for_each(|(b, d)| {
        if !accumulate {
            d.fill(0.0);
        }
        for oy in 0..oh {
            let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                let inv = 1.0 / ((y1 - y0) * (x1 - x0)) as f32;
                let gr = &g[((b * oh + oy) * ow + ox) * c..][..c];
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let dst = &mut d[(iy * w + ix) * c..][..c];
                        for (o, &v) in dst.iter_mut().zip(gr) {
                            *o += v * inv;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

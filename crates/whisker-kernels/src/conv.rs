//! Dense convolution as an implicit GEMM on NHWC activations.
//!
//! The output `[pixels, cout]` is `A · B`, where row `p` of `A` is the concatenation, over the
//! kernel taps, of the `cin` input channels under tap `(ky, kx)` of output pixel `p`, and `B`
//! is the weight `[kh·kw·cin, cout]`. `A` is never materialised: for each tile of output
//! pixels the driver writes one pointer per (tap, pixel) — into the input, or to a row of
//! zeros where the tap falls in the padding — and the micro-kernel reads `cin` contiguous
//! values behind each. A 1×1 stride-1 convolution is the plain GEMM over `N·H·W` rows; a
//! linear layer is a 1×1 convolution over a 1×1 map.
//!
//! `B` is packed once, at load, into panels of [`NR`] output channels (`[K][NR]`, the last
//! panel narrower, a multiple of 16, zero-padded): the micro-kernel streams it with aligned
//! strides and never re-lays it out. Bias, residual add and activation are applied from the
//! registers, and each output value is written once.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::{Act, Isa, ShapeError};

/// Output channels per weight panel.
pub const NR: usize = 64;

/// The geometry of a convolution's input and its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input height and width.
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    /// Zeros before and after, vertically (top, bottom) and horizontally (left, right):
    /// PyTorch pads symmetrically, TensorFlow's 'SAME' may put one more after.
    pub pad: [usize; 4],
}

impl ConvShape {
    /// A shape with the same padding on every side.
    pub fn symmetric(n: usize, h: usize, w: usize, stride: usize, pad: usize) -> Self {
        ConvShape {
            n,
            h,
            w,
            stride,
            pad: [pad, pad, pad, pad],
        }
    }

    /// Output height and width for a `kh × kw` kernel.
    pub fn out_hw(&self, kh: usize, kw: usize) -> Result<(usize, usize), ShapeError> {
        let [t, b, l, r] = self.pad;
        let (hp, wp) = (self.h + t + b, self.w + l + r);
        if self.stride == 0 || hp < kh || wp < kw {
            return Err(ShapeError(format!(
                "a {kh}×{kw} kernel with stride {} does not fit a {}×{} input padded by {:?}",
                self.stride, self.h, self.w, self.pad
            )));
        }
        Ok(((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1))
    }
}

/// The valid taps `[lo, hi)` of output coordinate `o` along an axis of `size` inputs with
/// `pad` zeros before them (`k` taps, `stride`).
#[inline(always)]
pub(crate) fn tap_range(
    o: usize,
    stride: usize,
    pad: usize,
    k: usize,
    size: usize,
) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = (-start).max(0) as usize;
    let hi = ((size as isize - start).max(0) as usize).min(k);
    (lo.min(hi), hi)
}

impl ConvShape {
    /// The output columns `[lo, hi)` (of `ow`) whose `kw` horizontal taps all fall inside the
    /// input: the ones a kernel may compute without checking the edges.
    pub(crate) fn interior_cols(&self, kw: usize, ow: usize) -> (usize, usize) {
        let pad_l = self.pad[2];
        let lo = pad_l.div_ceil(self.stride).min(ow);
        let hi = if self.w + pad_l >= kw {
            ((self.w + pad_l - kw) / self.stride + 1).min(ow)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Convolution weights packed into the micro-kernel's panel order, with their bias.
#[derive(Debug, Clone)]
pub struct PackedConv {
    pub cout: usize,
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    /// Panels, one after the other; panel `p` starts at `offsets[p]` and is `widths[p]` wide.
    pub(crate) data: Vec<f32>,
    pub(crate) offsets: Vec<usize>,
    pub(crate) widths: Vec<usize>,
    /// Bias, zero-padded to the panels' total width.
    pub(crate) bias: Vec<f32>,
    /// For a 3×3 stride-1 convolution packed by [`PackedConv::winograd_from_oihw`]: the
    /// transformed weights (then `data` is empty and [`conv2d`] takes the Winograd path).
    pub(crate) winograd: Option<Box<crate::winograd::Transformed>>,
}

impl PackedConv {
    /// Pack PyTorch's `[cout, cin, kh, kw]` weight (and bias, zeros when `None`).
    pub fn from_oihw(
        weight: &[f32],
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self, ShapeError> {
        if weight.len() != cout * cin * kh * kw || cout == 0 || cin == 0 || kh == 0 || kw == 0 {
            return Err(ShapeError(format!(
                "weight of {} values for a [{cout}, {cin}, {kh}, {kw}] convolution",
                weight.len()
            )));
        }
        Self::pack(weight, bias, cout, cin, kh, kw, |o, c, ky, kx| {
            ((o * cin + c) * kh + ky) * kw + kx
        })
    }

    /// Pack a linear layer's weight stored `[in, out]` (burn's layout) as a 1×1 convolution.
    pub fn from_in_out(
        weight: &[f32],
        bias: Option<&[f32]>,
        inp: usize,
        out: usize,
    ) -> Result<Self, ShapeError> {
        if weight.len() != inp * out || inp == 0 || out == 0 {
            return Err(ShapeError(format!(
                "weight of {} values for a {inp}→{out} linear layer",
                weight.len()
            )));
        }
        Self::pack(weight, bias, out, inp, 1, 1, |o, c, _, _| c * out + o)
    }

    /// The panels of `cout` outputs over `k` products: their offsets, widths (multiples of
    /// 16, at most [`NR`]) and the values they take together.
    pub(crate) fn layout(cout: usize, k: usize) -> (Vec<usize>, Vec<usize>, usize) {
        let (mut offsets, mut widths) = (Vec::new(), Vec::new());
        let mut total = 0;
        let mut o0 = 0;
        while o0 < cout {
            let wp = (cout - o0).min(NR).div_ceil(16) * 16;
            offsets.push(total);
            widths.push(wp);
            total += k * wp;
            o0 += NR;
        }
        (offsets, widths, total)
    }

    /// `data` (of [`PackedConv::layout`]) cut into its panels.
    pub(crate) fn panels<'a>(
        data: &'a mut [f32],
        widths: &[usize],
        k: usize,
    ) -> Vec<&'a mut [f32]> {
        let mut panels = Vec::with_capacity(widths.len());
        let mut rest = data;
        for &wp in widths {
            let (panel, tail) = rest.split_at_mut(k * wp);
            panels.push(panel);
            rest = tail;
        }
        panels
    }

    /// Pack `cout × cin × kh × kw` weights read through `index(o, c, ky, kx)` (a position in
    /// `weight`), the panels in parallel.
    pub(crate) fn pack(
        weight: &[f32],
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        index: impl Fn(usize, usize, usize, usize) -> usize + Sync,
    ) -> Result<Self, ShapeError> {
        if let Some(b) = bias {
            if b.len() != cout {
                return Err(ShapeError(format!(
                    "bias of {} values for {cout} output channels",
                    b.len()
                )));
            }
        }
        let k = kh * kw * cin;
        let (offsets, widths, total) = Self::layout(cout, k);
        let mut data = vec![0f32; total];
        let panels = Self::panels(&mut data, &widths, k);
        // each panel row by row: contiguous writes
        panels.into_par_iter().enumerate().for_each(|(p, d)| {
            let wp = d.len() / k;
            let cols = wp.min(cout - p * NR);
            for ky in 0..kh {
                for kx in 0..kw {
                    for c in 0..cin {
                        let kk = (ky * kw + kx) * cin + c;
                        for (j, v) in d[kk * wp..kk * wp + cols].iter_mut().enumerate() {
                            *v = weight[index(p * NR + j, c, ky, kx)];
                        }
                    }
                }
            }
        });
        let mut padded_bias = vec![0f32; widths.iter().sum()];
        if let Some(b) = bias {
            for (o, &v) in b.iter().enumerate() {
                padded_bias[(o / NR) * NR + o % NR] = v;
            }
        }
        Ok(PackedConv {
            cout,
            cin,
            kh,
            kw,
            data,
            offsets,
            widths,
            bias: padded_bias,
            winograd: None,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.data.len() + self.bias.len()) * 4
            + self
                .winograd
                .as_ref()
                .map_or(0, |w| w.u.iter().map(PackedConv::bytes).sum())
    }

    /// Whether [`conv2d`] runs these weights with Winograd's F(2×2, 3×3).
    pub fn is_winograd(&self) -> bool {
        self.winograd.is_some()
    }
}

/// A raw pointer that may cross to the worker threads (each writes disjoint elements).
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T>(pub(crate) T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T: Copy> Ptr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> T {
        self.0
    }
}

thread_local! {
    /// Per-thread scratch: the tap pointers of a block of tiles, and a row of zeros.
    static SCRATCH: RefCell<(Vec<usize>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Pixel tiles per block: the tap pointers of a block are made once and reused for every
/// panel, and the block's input rows stay in the cache while the panels go by.
const TILES_PER_BLOCK: usize = 16;
/// A thread's range of at most this many tiles is one block when its weight panels are too
/// large to stay in L2 between blocks ([`STREAMED_WEIGHTS`]): each panel then goes by once for
/// all of them instead of once per 16 (a batch-1 ViT-B's 197 tokens, 33 tiles: its token GEMMs
/// 8–12 % faster on the AVX-512 Xeon, vit_b_16 5.4–5.7 → 6.1–6.3 images/s). Weights that stay in
/// L2 (dinov2_vits14's, ResNet-50's 14×14 layers) keep blocks of 16, whose rows stay in L1.
const ONE_BLOCK_TILES: usize = 3 * TILES_PER_BLOCK;
/// Bytes of one thread's weight panels above which they are streamed from L3 for every block
/// (1.5 MB: three quarters of the Xeon's L2; dinov2_vits14's 1.2 MB did not gain).
const STREAMED_WEIGHTS: usize = 3 << 19;

/// `out[p, o] = act(bias[o] + Σ x·w + residual[p, o])` for NHWC `x` `[n, h, w, cin]` and
/// `out`, `residual` `[n, oh, ow, cout]`.
pub fn conv2d(
    isa: Isa,
    wts: &PackedConv,
    x: &[f32],
    s: &ConvShape,
    residual: Option<&[f32]>,
    act: Act,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    // GELU, SiLU and sigmoid are a pass of their own over the result (see `Vf::act`)
    if act.is_pass() {
        conv2d_epilogue(isa, wts, x, s, residual, Act::None, out)?;
        crate::act::act_in_place(isa, act, out);
        return Ok(());
    }
    conv2d_epilogue(isa, wts, x, s, residual, act, out)
}

/// [`conv2d`] with an activation its micro-kernels' epilogues apply.
fn conv2d_epilogue(
    isa: Isa,
    wts: &PackedConv,
    x: &[f32],
    s: &ConvShape,
    residual: Option<&[f32]>,
    act: Act,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (oh, ow) = s.out_hw(wts.kh, wts.kw)?;
    let m = s.n * oh * ow;
    if x.len() != s.n * s.h * s.w * wts.cin {
        return Err(ShapeError(format!(
            "input of {} values for [{}, {}, {}, {}]",
            x.len(),
            s.n,
            s.h,
            s.w,
            wts.cin
        )));
    }
    if out.len() != m * wts.cout || residual.is_some_and(|r| r.len() != out.len()) {
        return Err(ShapeError(format!(
            "output of {} values (residual {:?}) for [{}, {oh}, {ow}, {}]",
            out.len(),
            residual.map(|r| r.len()),
            s.n,
            wts.cout
        )));
    }
    if m == 0 {
        return Ok(());
    }
    if let Some(t) = &wts.winograd {
        return crate::winograd::run(isa, wts, t, x, s, (oh, ow), residual, act, out);
    }
    if wts.cin <= crate::direct::MAX_CIN
        && wts.kh * wts.kw > 1
        && crate::direct::conv(isa, wts, x, s, (oh, ow), residual, act, out).is_some()
    {
        return Ok(());
    }
    let mr = isa.rows();
    let tiles = m.div_ceil(mr);
    let panels = wts.widths.len();
    let macs = m * wts.cout * wts.cin * wts.kh * wts.kw;
    let out_ptr = Ptr(out.as_mut_ptr());
    split_static(tiles, panels, macs, wts.cout >= m, |(t0, t1), (p0, p1)| {
        // SAFETY: each job writes the rows [t0·mr, t1·mr) ∩ [0, m) of the panels [p0, p1):
        // disjoint from every other job's.
        unsafe {
            run_range(
                isa,
                wts,
                x,
                s,
                (oh, ow),
                residual,
                act,
                out_ptr.get(),
                t0,
                t1,
                p0,
                p1,
            )
        };
    });
    Ok(())
}

/// The static split of a GEMM-shaped job over rayon's threads: `job(tiles, panels)` per
/// thread, over the row tiles when there are enough of them, else over the weight panels
/// (small batches through the classifier layers: each thread then reads only its share of
/// the weights). `weights_dominate` (more output channels than rows: the weights outweigh
/// the inputs, as in a small map at batch 1) splits a job of few rows over the panels
/// whenever there are enough of them, so each weight is read by one thread instead of every
/// one. One thread for tiny jobs (`macs`).
pub(crate) fn split_static(
    tiles: usize,
    panels: usize,
    macs: usize,
    weights_dominate: bool,
    job: impl Fn((usize, usize), (usize, usize)) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let threads = if macs < 1 << 16 { 1 } else { threads };
    // (with many rows — a batch — each weight is reused by enough of them either way)
    let split_rows =
        if weights_dominate && panels >= threads && tiles <= 2 * threads * TILES_PER_BLOCK {
            false
        } else {
            tiles >= 2 * threads || panels < threads
        };
    let run = |t: usize| {
        let (t0, t1, p0, p1) = if split_rows {
            let per = tiles.div_ceil(threads);
            (t * per, ((t + 1) * per).min(tiles), 0, panels)
        } else {
            let per = panels.div_ceil(threads);
            (0, tiles, t * per, ((t + 1) * per).min(panels))
        };
        if t0 < t1 && p0 < p1 {
            job((t0, t1), (p0, p1));
        }
    };
    if threads == 1 {
        run(0);
    } else {
        (0..threads).into_par_iter().for_each(run);
    }
}

/// Rows per thread when `rows` output rows are split evenly over rayon's threads.
pub(crate) fn rows_per_thread(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// `job(r0, r1, out_rows)` in parallel for each run of `per` output rows of `row` values
/// (the last run shorter): the row split of the kernels that work a row at a time.
pub(crate) fn par_row_runs(
    out: &mut [f32],
    row: usize,
    per: usize,
    job: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    out.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(t, chunk)| {
            let r0 = t * per;
            job(r0, r0 + chunk.len() / row, chunk)
        });
}

/// A 1×1 convolution over `m` pixels (`x` `[m, cin]`, `out` and `residual` `[m, cout]`) on
/// this thread: the same sums, in the same order, as [`conv2d`] of the same pixels.
pub(crate) fn pointwise_serial(
    isa: Isa,
    wts: &PackedConv,
    x: &[f32],
    m: usize,
    residual: Option<&[f32]>,
    act: Act,
    out: &mut [f32],
) {
    assert!(
        wts.kh == 1 && wts.kw == 1 && wts.winograd.is_none(),
        "a 1×1 convolution"
    );
    assert!(
        x.len() >= m * wts.cin
            && out.len() >= m * wts.cout
            && residual.is_none_or(|r| r.len() >= m * wts.cout),
        "buffers for {m} pixels"
    );
    if m == 0 {
        return;
    }
    let s = ConvShape::symmetric(1, 1, m, 1, 0);
    let tiles = m.div_ceil(isa.rows());
    // SAFETY: the buffers hold the m pixels (checked above); one thread writes them all.
    unsafe {
        run_range(
            isa,
            wts,
            x,
            &s,
            (1, m),
            residual,
            act,
            out.as_mut_ptr(),
            0,
            tiles,
            0,
            wts.widths.len(),
        )
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn run_range(
    isa: Isa,
    wts: &PackedConv,
    x: &[f32],
    s: &ConvShape,
    (oh, ow): (usize, usize),
    residual: Option<&[f32]>,
    act: Act,
    out: *mut f32,
    t0: usize,
    t1: usize,
    p0: usize,
    p1: usize,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let mr = isa.rows();
        let m = s.n * oh * ow;
        let (cin, kh, kw, cout) = (wts.cin, wts.kh, wts.kw, wts.cout);
        let taps = kh * kw;
        let [pad_t, _, pad_l, _] = s.pad;
        // A tiny `cin` (an RGB stem) would give the micro-kernel 3-long inner loops: gather each
        // tile's patches into contiguous rows instead (a small im2col per tile).
        let gather = cin < 16 && taps > 1;
        let (ktaps, kcin) = if gather { (1, taps * cin) } else { (taps, cin) };
        // a 1×1 stride-1 convolution without padding reads pixel p's channels at p·cin
        let plain = taps == 1 && s.stride == 1 && s.pad == [0; 4] && (oh, ow) == (s.h, s.w);
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            let (ptrs, zeros, patch) = &mut *sc;
            if zeros.len() < cin {
                zeros.resize(cin, 0.0);
            }
            let zero = zeros.as_ptr() as usize;
            let panel_bytes: usize = wts.widths[p0..p1]
                .iter()
                .map(|wp| wp * ktaps * kcin * 4)
                .sum();
            let block = if t1 - t0 <= ONE_BLOCK_TILES && panel_bytes > STREAMED_WEIGHTS {
                t1 - t0
            } else {
                TILES_PER_BLOCK
            };
            let mut tb = t0;
            while tb < t1 {
                let te = (tb + block).min(t1);
                // tap pointers of the block's tiles: [tile][tap][row]
                ptrs.clear();
                ptrs.resize((te - tb) * taps * mr, zero);
                if gather {
                    patch.clear();
                    patch.resize((te - tb) * mr * kcin, 0.0);
                }
                for tile in tb..te {
                    if plain {
                        let slots = &mut ptrs[(tile - tb) * mr..(tile - tb + 1) * mr];
                        for (i, slot) in slots.iter_mut().enumerate() {
                            let p = (tile * mr + i).min(m - 1);
                            *slot = x.as_ptr().add(p * cin) as usize;
                        }
                        continue;
                    }
                    for i in 0..mr {
                        let p = (tile * mr + i).min(m - 1);
                        let (b, rem) = (p / (oh * ow), p % (oh * ow));
                        let (oy, ox) = (rem / ow, rem % ow);
                        let ix0 = (ox * s.stride) as isize - pad_l as isize;
                        // the taps of one kernel row inside the input: [lo, hi)
                        let lo = (-ix0).clamp(0, kw as isize) as usize;
                        let hi = (s.w as isize - ix0).clamp(lo as isize, kw as isize) as usize;
                        for ky in 0..kh {
                            let iy = (oy * s.stride + ky) as isize - pad_t as isize;
                            if iy < 0 || iy as usize >= s.h || lo == hi {
                                continue;
                            }
                            // the input pixel under tap kx is at0 + kx (≥ 0 for kx ≥ lo)
                            let at0 = ((b * s.h + iy as usize) * s.w) as isize + ix0;
                            let at = |kx: usize| (at0 + kx as isize) as usize * cin;
                            if gather {
                                // one contiguous run of (hi − lo)·cin values per kernel row
                                let row = ((tile - tb) * mr + i) * kcin + ky * kw * cin;
                                patch[row + lo * cin..row + hi * cin]
                                    .copy_from_slice(&x[at(lo)..at(hi)]);
                            } else {
                                for kx in lo..hi {
                                    let slot = ((tile - tb) * taps + ky * kw + kx) * mr + i;
                                    ptrs[slot] = x.as_ptr().add(at(kx)) as usize;
                                }
                            }
                        }
                    }
                }
                if gather {
                    ptrs.clear();
                    for r in 0..(te - tb) * mr {
                        ptrs.push(patch.as_ptr().add(r * kcin) as usize);
                    }
                }
                for p in p0..p1 {
                    let (off, wp) = (wts.offsets[p], wts.widths[p]);
                    let col0 = p * NR;
                    let cols = (cout - col0).min(wp);
                    let bpanel = wts.data.as_ptr().add(off);
                    let bias = wts.bias.as_ptr().add(col0);
                    // K blocks: the whole K when its weights fit in L1, else one tap and at most
                    // KC channels at a time, accumulated in the output.
                    let whole = ktaps * kcin * wp * 4 <= L1_WEIGHTS;
                    let per_tap = kcin.div_ceil(KC);
                    let nk = if whole { 1 } else { ktaps * per_tap };
                    for kb in 0..nk {
                        let (tap, c0, c1) = if whole {
                            (0, 0, kcin)
                        } else {
                            let c0 = (kb % per_tap) * KC;
                            (kb / per_tap, c0, (c0 + KC).min(kcin))
                        };
                        for tile in tb..te {
                            let row0 = tile * mr;
                            let rows = (m - row0).min(mr);
                            let a = ptrs.as_ptr().add(((tile - tb) * ktaps + tap) * mr)
                                as *const *const f32;
                            let o = out.add(row0 * cout + col0);
                            let r = residual
                                .map_or(std::ptr::null(), |r| r.as_ptr().add(row0 * cout + col0));
                            let t = Tile {
                                a,
                                taps: if whole { ktaps } else { 1 },
                                cin: c1 - c0,
                                coff: c0,
                                b: bpanel.add((tap * kcin + c0) * wp),
                                ldb: wp,
                                bias,
                                out: o,
                                ldo: cout,
                                res: r,
                                rows,
                                cols,
                                act,
                                accumulate: kb > 0,
                                last: kb + 1 == nk,
                            };
                            micro(isa, &t, wp);
                        }
                    }
                }
                tb = te;
            }
        });
    }
}

/// Bytes of a weight panel's K block kept in L1 while a block of tiles goes by.
pub(crate) const L1_WEIGHTS: usize = 40 * 1024;
/// Channels per K block when the whole K does not fit.
pub(crate) const KC: usize = 128;

/// One micro-kernel call: `rows` × `cols` outputs from `taps` × `cin` products.
pub(crate) struct Tile {
    /// `taps × MR` row pointers; row `i` of tap `t` reads `a[t·MR + i][coff..coff + cin]`.
    pub a: *const *const f32,
    pub taps: usize,
    pub cin: usize,
    pub coff: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub bias: *const f32,
    pub out: *mut f32,
    pub ldo: usize,
    pub res: *const f32,
    pub rows: usize,
    pub cols: usize,
    pub act: Act,
    /// Start from the values in `out` (a later K block) instead of zero.
    pub accumulate: bool,
    /// The last K block: apply bias, residual and activation.
    pub last: bool,
}

pub(crate) unsafe fn micro(isa: Isa, t: &Tile, wp: usize) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // a tile of fewer rows (a batch-1 linear layer, a map's last pixels) computes only
            // those: no products for the rows that repeat the last one
            Isa::AVX512 => match (wp / 16, t.rows) {
                (1, 1) => x86::tile_avx512::<1, 1>(t),
                (1, 2) => x86::tile_avx512::<1, 2>(t),
                (1, _) => x86::tile_avx512::<1, 6>(t),
                (2, 1) => x86::tile_avx512::<2, 1>(t),
                (2, 2) => x86::tile_avx512::<2, 2>(t),
                (2, _) => x86::tile_avx512::<2, 6>(t),
                (3, 1) => x86::tile_avx512::<3, 1>(t),
                (3, 2) => x86::tile_avx512::<3, 2>(t),
                (3, _) => x86::tile_avx512::<3, 6>(t),
                (_, 1) => x86::tile_avx512::<4, 1>(t),
                (_, 2) => x86::tile_avx512::<4, 2>(t),
                (_, _) => x86::tile_avx512::<4, 6>(t),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::AVX2 => {
                for c in (0..wp).step_by(16) {
                    if c < t.cols {
                        match t.rows {
                            1 => x86::tile_avx2::<1>(&t.shifted(c)),
                            2 => x86::tile_avx2::<2>(&t.shifted(c)),
                            _ => x86::tile_avx2::<6>(&t.shifted(c)),
                        }
                    }
                }
            }
            _ => {
                for c in (0..wp).step_by(16) {
                    if c < t.cols {
                        tile_portable(&t.shifted(c));
                    }
                }
            }
        }
    }
}

impl Tile {
    /// The same tile restricted to the 16 columns from `c`.
    unsafe fn shifted(&self, c: usize) -> Tile {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            Tile {
                a: self.a,
                taps: self.taps,
                cin: self.cin,
                coff: self.coff,
                b: self.b.add(c),
                ldb: self.ldb,
                bias: self.bias.add(c),
                out: self.out.add(c),
                ldo: self.ldo,
                res: if self.res.is_null() {
                    self.res
                } else {
                    self.res.add(c)
                },
                rows: self.rows,
                cols: (self.cols - c).min(16),
                act: self.act,
                accumulate: self.accumulate,
                last: self.last,
            }
        }
    }
}

/// The portable micro-kernel: 4 pixels × 16 channels.
unsafe fn tile_portable(t: &Tile) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        const MR: usize = 4;
        let mut acc = [[0f32; 16]; MR];
        let mut bp = t.b;
        for tap in 0..t.taps {
            let p: [*const f32; MR] = std::array::from_fn(|i| (*t.a.add(tap * MR + i)).add(t.coff));
            for c in 0..t.cin {
                let b: &[f32; 16] = &*(bp as *const [f32; 16]);
                for i in 0..MR {
                    let a = *p[i].add(c);
                    for j in 0..16 {
                        acc[i][j] += a * b[j];
                    }
                }
                bp = bp.add(t.ldb);
            }
        }
        for (i, row) in acc.iter().enumerate().take(t.rows) {
            for (j, &v) in row.iter().enumerate().take(t.cols) {
                let o = t.out.add(i * t.ldo + j);
                let mut y = if t.accumulate { v + *o } else { v };
                if t.last {
                    y += *t.bias.add(j);
                    if !t.res.is_null() {
                        y += *t.res.add(i * t.ldo + j);
                    }
                    y = t.act.apply(y);
                }
                *o = y;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Tile;
    use crate::simd::{Vf, F256, F512};
    use std::arch::x86_64::*;

    /// `R` (≤ 6) pixels × `NV`·16 channels, AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512<const NV: usize, const R: usize>(t: &Tile) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            // the row pointers of a tap are 6 apart
            const STRIDE: usize = 6;
            const { assert!(R <= STRIDE) };
            let mut acc = [[_mm512_setzero_ps(); NV]; R];
            let mut bp = t.b;
            for tap in 0..t.taps {
                let p: [*const f32; R] =
                    std::array::from_fn(|i| (*t.a.add(tap * STRIDE + i)).add(t.coff));
                for c in 0..t.cin {
                    let mut b = [_mm512_setzero_ps(); NV];
                    for (v, bv) in b.iter_mut().enumerate() {
                        *bv = _mm512_loadu_ps(bp.add(v * 16));
                    }
                    for i in 0..R {
                        let a = _mm512_set1_ps(*p[i].add(c));
                        for v in 0..NV {
                            acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
                        }
                    }
                    bp = bp.add(t.ldb);
                }
            }
            // (LLVM keeps `acc` in registers here although the epilogue indexes it at run time;
            // it did not in `tile_avx2`: `tools/check-spills.py` watches both)
            for (i, row) in acc.iter().enumerate() {
                if i >= t.rows {
                    break;
                }
                for (v, &a) in row.iter().enumerate() {
                    let col = v * 16;
                    if col >= t.cols {
                        break;
                    }
                    let left = t.cols - col;
                    let mask: __mmask16 = if left >= 16 {
                        0xffff
                    } else {
                        (1u16 << left) - 1
                    };
                    let o = t.out.add(i * t.ldo + col);
                    let mut y = a;
                    if t.accumulate {
                        y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, o));
                    }
                    if t.last {
                        y = _mm512_add_ps(y, _mm512_loadu_ps(t.bias.add(col)));
                        if !t.res.is_null() {
                            y = _mm512_add_ps(
                                y,
                                _mm512_maskz_loadu_ps(mask, t.res.add(i * t.ldo + col)),
                            );
                        }
                        y = F512::act(t.act, F512(y)).0;
                    }
                    _mm512_mask_storeu_ps(o, mask, y);
                }
            }
        }
    }

    /// `R` (≤ 6) pixels × 16 channels, AVX2 + FMA.
    // indices, not iterators, over `acc`: constant indices keep it in registers
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<const R: usize>(t: &Tile) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            // the row pointers of a tap are 6 apart
            const STRIDE: usize = 6;
            const { assert!(R <= STRIDE) };
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut bp = t.b;
            for tap in 0..t.taps {
                let p: [*const f32; R] =
                    std::array::from_fn(|i| (*t.a.add(tap * STRIDE + i)).add(t.coff));
                for c in 0..t.cin {
                    let b0 = _mm256_loadu_ps(bp);
                    let b1 = _mm256_loadu_ps(bp.add(8));
                    for i in 0..R {
                        let a = _mm256_broadcast_ss(&*p[i].add(c));
                        acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
                        acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
                    }
                    bp = bp.add(t.ldb);
                }
            }
            if t.rows == R && t.cols == 16 && t.last {
                // a whole tile, the last K block: the same epilogue with constant indices only
                let bias = [_mm256_loadu_ps(t.bias), _mm256_loadu_ps(t.bias.add(8))];
                for i in 0..R {
                    for v in 0..2 {
                        let o = t.out.add(i * t.ldo + v * 8);
                        let mut y = acc[i][v];
                        if t.accumulate {
                            y = _mm256_add_ps(y, _mm256_loadu_ps(o));
                        }
                        y = _mm256_add_ps(y, bias[v]);
                        if !t.res.is_null() {
                            y = _mm256_add_ps(y, _mm256_loadu_ps(t.res.add(i * t.ldo + v * 8)));
                        }
                        _mm256_storeu_ps(o, F256::act(t.act, F256(y)).0);
                    }
                }
                return;
            }
            // Otherwise the epilogue indexes its rows at run time: it reads a copy made by a loop
            // small enough to unroll, so `acc` is only ever indexed by constants and stays in
            // registers through the K loop (indexed at run time, LLVM stored all 12 to the stack
            // after every multiply-add).
            let mut done = [[_mm256_setzero_ps(); 2]; R];
            for i in 0..R {
                for v in 0..2 {
                    done[i][v] = acc[i][v];
                }
            }
            for (i, row) in done.iter().enumerate() {
                if i >= t.rows {
                    break;
                }
                for (v, &a) in row.iter().enumerate() {
                    let col = v * 8;
                    if col >= t.cols {
                        break;
                    }
                    let left = t.cols - col;
                    let o = t.out.add(i * t.ldo + col);
                    if left >= 8 {
                        let mut y = a;
                        if t.accumulate {
                            y = _mm256_add_ps(y, _mm256_loadu_ps(o));
                        }
                        if t.last {
                            y = _mm256_add_ps(y, _mm256_loadu_ps(t.bias.add(col)));
                            if !t.res.is_null() {
                                y = _mm256_add_ps(y, _mm256_loadu_ps(t.res.add(i * t.ldo + col)));
                            }
                            y = F256::act(t.act, F256(y)).0;
                        }
                        _mm256_storeu_ps(o, y);
                    } else {
                        let mut tmp = [0f32; 8];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), a);
                        for (j, v) in tmp.iter().enumerate().take(left) {
                            let mut z = *v;
                            if t.accumulate {
                                z += *o.add(j);
                            }
                            if t.last {
                                z += *t.bias.add(col + j);
                                if !t.res.is_null() {
                                    z += *t.res.add(i * t.ldo + col + j);
                                }
                                z = t.act.apply(z);
                            }
                            *o.add(j) = z;
                        }
                    }
                }
            }
        }
    }
}

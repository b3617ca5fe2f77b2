//! Winograd's F(2×2, 3×3) for 3×3 stride-1 convolutions (Lavin & Gray, 2016).
//!
//! Each 2×2 block of outputs (a "tile") comes from the 4×4 input patch under it: the patch is
//! transformed (`V = Bᵀ d B`), multiplied with the transformed weights (`U = G g Gᵀ`, made
//! once at load, 16 values per pair of channels) and summed over the input channels — 16
//! independent GEMMs `[tiles, cin] × [cin, cout]`, run on the direct path's micro-kernel —
//! then transformed back (`Y = Aᵀ M A`). That is 16 multiplies per 4 outputs instead of 36:
//! 2.25× fewer. `Bᵀ` and `Aᵀ` hold only 0 and ±1 and `G`'s ½ is applied in f64 at load, so
//! the error stays close to the direct sum's (checked against the f64 reference in the tests
//! and on every backbone by the parity tests).
//!
//! Each thread works through its tiles in blocks: a block's transformed input
//! (`[16][rows][cin]`) and products (`[16][rows][cout]`) stay in the core's cache from the
//! input transform through the GEMMs to the output transform, which adds the bias and the
//! residual and applies the activation before each output value is written, once.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::conv::{micro, split_static, Ptr, Tile, KC, L1_WEIGHTS};
use crate::{Act, ConvShape, Isa, PackedConv, ShapeError, NR};

/// The transformed weights: one 1×1 pack `[cin] → [cout]` (no bias) per position of the
/// 4×4 transformed tile.
#[derive(Debug, Clone)]
pub(crate) struct Transformed {
    pub(crate) u: Vec<PackedConv>,
}

/// `G g Gᵀ` (row-major 4×4) with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`, by its
/// structure: the same values as the matrix products (halving is exact), a third the work.
#[inline(always)]
fn g_gt(g: &[[f64; 3]; 3]) -> [f64; 16] {
    let apply = |a: f64, b: f64, c: f64| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // t = G g: 4 rows × 3 columns, column by column
    let cols: [[f64; 4]; 3] = std::array::from_fn(|j| apply(g[0][j], g[1][j], g[2][j]));
    let mut u = [0f64; 16];
    for i in 0..4 {
        let row = apply(cols[0][i], cols[1][i], cols[2][i]);
        u[i * 4..i * 4 + 4].copy_from_slice(&row);
    }
    u
}

impl PackedConv {
    /// Pack a 3×3 convolution's `[cout, cin, 3, 3]` weight for Winograd's F(2×2, 3×3): only
    /// for stride 1 (any padding); [`conv2d`](crate::conv2d) then takes the Winograd path.
    pub fn winograd_from_oihw(
        weight: &[f32],
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
    ) -> Result<Self, ShapeError> {
        if weight.len() != cout * cin * 9 {
            return Err(ShapeError(format!(
                "weight of {} values for a [{cout}, {cin}, 3, 3] convolution",
                weight.len()
            )));
        }
        Self::winograd_with(bias, cout, cin, |o, c, ky, kx| {
            weight[((o * cin + c) * 3 + ky) * 3 + kx]
        })
    }

    /// [`PackedConv::winograd_from_oihw`] of the `[cout, cin, 3, 3]` weight whose values
    /// `at(o, c, ky, kx)` gives; transforms and packing in parallel.
    pub(crate) fn winograd_with(
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
        at: impl Fn(usize, usize, usize, usize) -> f32 + Sync,
    ) -> Result<Self, ShapeError> {
        if cout == 0 || cin == 0 {
            return Err(ShapeError(format!("a [{cout}, {cin}, 3, 3] convolution")));
        }
        if bias.is_some_and(|b| b.len() != cout) {
            return Err(ShapeError(format!(
                "bias of {} values for {cout} output channels",
                bias.map_or(0, <[f32]>::len)
            )));
        }
        // G g Gᵀ in f64 per (o, c), written straight into the 16 packed 1×1 weights, a
        // panel of outputs per job
        let (offsets, widths, total) = PackedConv::layout(cout, cin);
        let mut data: Vec<Vec<f32>> = (0..16).map(|_| vec![0f32; total]).collect();
        let mut per_panel: Vec<Vec<&mut [f32]>> = widths.iter().map(|_| Vec::new()).collect();
        for d in data.iter_mut() {
            for (p, panel) in PackedConv::panels(d, &widths, cin).into_iter().enumerate() {
                per_panel[p].push(panel);
            }
        }
        per_panel
            .into_par_iter()
            .enumerate()
            .for_each(|(p, mut planes)| {
                let wp = planes[0].len() / cin;
                let cols = wp.min(cout - p * NR);
                // blocks of 16 input channels: a weight row's 16 channels are read together,
                // and the 16·16 lines written stay in L1 while the panel's outputs go by
                for cb in (0..cin).step_by(16) {
                    for (j, c) in
                        (0..cols).flat_map(|j| (cb..(cb + 16).min(cin)).map(move |c| (j, c)))
                    {
                        let o = p * NR + j;
                        let g: [[f64; 3]; 3] = std::array::from_fn(|k| {
                            std::array::from_fn(|jj| at(o, c, k, jj) as f64)
                        });
                        let u = g_gt(&g);
                        for (plane, v) in planes.iter_mut().zip(u) {
                            plane[c * wp + j] = v as f32;
                        }
                    }
                }
            });
        let u: Vec<PackedConv> = data
            .into_iter()
            .map(|data| PackedConv {
                cout,
                cin,
                kh: 1,
                kw: 1,
                data,
                offsets: offsets.clone(),
                widths: widths.clone(),
                bias: vec![0f32; widths.iter().sum()],
                winograd: None,
            })
            .collect();
        let (offsets, widths) = (u[0].offsets.clone(), u[0].widths.clone());
        let mut padded_bias = vec![0f32; widths.iter().sum()];
        if let Some(b) = bias {
            padded_bias[..cout].copy_from_slice(b);
        }
        Ok(PackedConv {
            cout,
            cin,
            kh: 3,
            kw: 3,
            data: Vec::new(),
            offsets,
            widths,
            bias: padded_bias,
            winograd: Some(Box::new(Transformed { u })),
        })
    }
}

/// The geometry of one call.
struct Geo {
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
    pad_t: usize,
    pad_l: usize,
}

/// Per-thread scratch: transformed inputs, products, GEMM row pointers, a row of zeros.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    ptrs: Vec<usize>,
    zeros: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Tiles per block: enough rows that each transformed weight panel, streamed once per block,
/// serves many micro-kernel calls, few enough that the block's transforms stay in L2.
fn block_rows(mr: usize, cin: usize, cout: usize) -> usize {
    (24576 / (cin + cout)).clamp(16 * mr, 32 * mr) / mr * mr
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    isa: Isa,
    wts: &PackedConv,
    tr: &Transformed,
    x: &[f32],
    s: &ConvShape,
    (oh, ow): (usize, usize),
    residual: Option<&[f32]>,
    act: Act,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    if s.stride != 1 {
        return Err(ShapeError(format!(
            "Winograd weights are for stride 1, not {}",
            s.stride
        )));
    }
    let g = Geo {
        h: s.h,
        w: s.w,
        cin: wts.cin,
        cout: wts.cout,
        oh,
        ow,
        th: oh.div_ceil(2),
        tw: ow.div_ceil(2),
        pad_t: s.pad[0],
        pad_l: s.pad[2],
    };
    let tiles = s.n * g.th * g.tw;
    let mr = isa.rows();
    let panels = wts.widths.len();
    let out_ptr = Ptr(out.as_mut_ptr());
    // in micro-tile units, as the direct path counts them; the jobs get output tiles
    let units = tiles.div_ceil(mr);
    let weights_dominate = g.cout >= tiles;
    split_static(
        units,
        panels,
        tiles * g.cin * g.cout * 4,
        weights_dominate,
        |(u0, u1), p| {
            let (t0, t1) = (u0 * mr, (u1 * mr).min(tiles));
            // SAFETY: each job writes the outputs of its tiles in the channels of its panels:
            // disjoint from every other job's.
            unsafe {
                run_range(
                    isa,
                    wts,
                    tr,
                    x,
                    &g,
                    residual,
                    act,
                    out_ptr.get(),
                    (t0, t1),
                    p,
                )
            };
        },
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
unsafe fn run_range(
    isa: Isa,
    wts: &PackedConv,
    tr: &Transformed,
    x: &[f32],
    g: &Geo,
    residual: Option<&[f32]>,
    act: Act,
    out: *mut f32,
    (t0, t1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let mr = isa.rows();
        let (cin, cout) = (g.cin, g.cout);
        let rows_max = block_rows(mr, cin, cout);
        let (c0, c1) = (p0 * NR, (p1 * NR).min(cout));
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            let Scratch { v, m, ptrs, zeros } = &mut *sc;
            v.resize(16 * rows_max * cin, 0.0);
            m.resize(16 * rows_max * cout, 0.0);
            if zeros.len() < cin {
                zeros.resize(cin, 0.0);
            }
            let (vs, ms) = (rows_max * cin, rows_max * cout);
            let mut tb = t0;
            while tb < t1 {
                let te = (tb + rows_max).min(t1);
                let rows = te - tb;
                transform_input(isa, x, g, tb, te, v.as_mut_ptr(), vs, zeros.as_ptr());
                // row pointers of each position's GEMM, the last micro-tile padded with its last row
                let padded = rows.div_ceil(mr) * mr;
                ptrs.clear();
                for xi in 0..16 {
                    for r in 0..padded {
                        ptrs.push(v.as_ptr().add(xi * vs + r.min(rows - 1) * cin) as usize);
                    }
                }
                for (xi, u) in tr.u.iter().enumerate() {
                    for p in p0..p1 {
                        let (off, wp) = (u.offsets[p], u.widths[p]);
                        let col0 = p * NR;
                        let cols = (cout - col0).min(wp);
                        let whole = cin * wp * 4 <= L1_WEIGHTS;
                        let nk = if whole { 1 } else { cin.div_ceil(KC) };
                        for kb in 0..nk {
                            let (k0, k1) = if whole {
                                (0, cin)
                            } else {
                                (kb * KC, ((kb + 1) * KC).min(cin))
                            };
                            for tile in 0..padded / mr {
                                let row0 = tile * mr;
                                let t = Tile {
                                    a: ptrs.as_ptr().add(xi * padded + row0) as *const *const f32,
                                    taps: 1,
                                    cin: k1 - k0,
                                    coff: k0,
                                    b: u.data.as_ptr().add(off + k0 * wp),
                                    ldb: wp,
                                    bias: wts.bias.as_ptr(),
                                    out: m.as_mut_ptr().add(xi * ms + row0 * cout + col0),
                                    ldo: cout,
                                    res: std::ptr::null(),
                                    rows: (rows - row0).min(mr),
                                    cols,
                                    act: Act::None,
                                    accumulate: kb > 0,
                                    last: false,
                                };
                                micro(isa, &t, wp);
                            }
                        }
                    }
                }
                transform_output(
                    isa,
                    m.as_ptr(),
                    ms,
                    g,
                    tb,
                    te,
                    (c0, c1),
                    wts.bias.as_ptr(),
                    residual.map_or(std::ptr::null(), <[f32]>::as_ptr),
                    act,
                    out,
                );
                tb = te;
            }
        });
    }
}

/// `V = Bᵀ d B` for the tiles `[tb, te)`: `v[ξ·vs + (tile − tb)·cin + c]`.
#[allow(clippy::too_many_arguments)]
unsafe fn transform_input(
    isa: Isa,
    x: &[f32],
    g: &Geo,
    tb: usize,
    te: usize,
    v: *mut f32,
    vs: usize,
    zeros: *const f32,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::AVX512 => input_avx512(x, g, tb, te, v, vs, zeros),
            #[cfg(target_arch = "x86_64")]
            Isa::AVX2 => input_avx2(x, g, tb, te, v, vs, zeros),
            _ => input_tiles::<8>(x, g, tb, te, v, vs, zeros),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_avx512(
    x: &[f32],
    g: &Geo,
    tb: usize,
    te: usize,
    v: *mut f32,
    vs: usize,
    z: *const f32,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe { input_tiles::<16>(x, g, tb, te, v, vs, z) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_avx2(
    x: &[f32],
    g: &Geo,
    tb: usize,
    te: usize,
    v: *mut f32,
    vs: usize,
    z: *const f32,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe { input_tiles::<8>(x, g, tb, te, v, vs, z) }
}

#[inline(always)]
unsafe fn input_tiles<const W: usize>(
    x: &[f32],
    g: &Geo,
    tb: usize,
    te: usize,
    v: *mut f32,
    vs: usize,
    zeros: *const f32,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let cin = g.cin;
        for tile in tb..te {
            let (b, rem) = (tile / (g.th * g.tw), tile % (g.th * g.tw));
            let (ty, tx) = (rem / g.tw, rem % g.tw);
            let src: [*const f32; 16] = std::array::from_fn(|k| {
                let iy = (2 * ty + k / 4) as isize - g.pad_t as isize;
                let ix = (2 * tx + k % 4) as isize - g.pad_l as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                    x.as_ptr()
                        .add(((b * g.h + iy as usize) * g.w + ix as usize) * cin)
                } else {
                    zeros
                }
            });
            let dst = v.add((tile - tb) * cin);
            let mut c = 0;
            while c + W <= cin {
                input_tile::<W>(&src, c, dst, vs);
                c += W;
            }
            while c < cin {
                input_tile::<1>(&src, c, dst, vs);
                c += 1;
            }
        }
    }
}

/// One tile's 4×4 patch, channels `[c, c + W)`.
#[inline(always)]
unsafe fn input_tile<const W: usize>(src: &[*const f32; 16], c: usize, dst: *mut f32, vs: usize) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let d: [[f32; W]; 16] =
            std::array::from_fn(|k| std::ptr::read_unaligned(src[k].add(c) as *const [f32; W]));
        // Bᵀ d: along the rows of the patch
        let mut t = [[0f32; W]; 16];
        for q in 0..4 {
            for l in 0..W {
                let (d0, d1, d2, d3) = (d[q][l], d[4 + q][l], d[8 + q][l], d[12 + q][l]);
                t[q][l] = d0 - d2;
                t[4 + q][l] = d1 + d2;
                t[8 + q][l] = d2 - d1;
                t[12 + q][l] = d1 - d3;
            }
        }
        // (Bᵀ d) B: along the columns
        for r in 0..4 {
            let mut o = [[0f32; W]; 4];
            for l in 0..W {
                let (a0, a1, a2, a3) = (
                    t[4 * r][l],
                    t[4 * r + 1][l],
                    t[4 * r + 2][l],
                    t[4 * r + 3][l],
                );
                o[0][l] = a0 - a2;
                o[1][l] = a1 + a2;
                o[2][l] = a2 - a1;
                o[3][l] = a1 - a3;
            }
            for (j, oj) in o.iter().enumerate() {
                std::ptr::write_unaligned(dst.add((4 * r + j) * vs + c) as *mut [f32; W], *oj);
            }
        }
    }
}

/// `Y = Aᵀ M A` for the tiles `[tb, te)`, channels `[c0, c1)`, plus bias and residual, then
/// the activation, written to the outputs that exist (an odd height or width leaves the
/// last tiles half outside).
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output(
    isa: Isa,
    m: *const f32,
    ms: usize,
    g: &Geo,
    tb: usize,
    te: usize,
    cr: (usize, usize),
    bias: *const f32,
    res: *const f32,
    act: Act,
    out: *mut f32,
) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let a = OutArgs {
            m,
            ms,
            g,
            tb,
            te,
            cr,
            bias,
            res,
            act,
            out,
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::AVX512 => output_avx512(&a),
            #[cfg(target_arch = "x86_64")]
            Isa::AVX2 => output_avx2(&a),
            _ => output_tiles::<8>(&a),
        }
    }
}

struct OutArgs<'a> {
    m: *const f32,
    ms: usize,
    g: &'a Geo,
    tb: usize,
    te: usize,
    cr: (usize, usize),
    bias: *const f32,
    res: *const f32,
    act: Act,
    out: *mut f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_avx512(a: &OutArgs) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe { output_tiles::<16>(a) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_avx2(a: &OutArgs) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe { output_tiles::<8>(a) }
}

#[inline(always)]
unsafe fn output_tiles<const W: usize>(a: &OutArgs) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let g = a.g;
        let cout = g.cout;
        for tile in a.tb..a.te {
            let (b, rem) = (tile / (g.th * g.tw), tile % (g.th * g.tw));
            let (ty, tx) = (rem / g.tw, rem % g.tw);
            // output offsets of the tile's 4 pixels, usize::MAX where outside
            let at: [usize; 4] = std::array::from_fn(|k| {
                let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                if oy < g.oh && ox < g.ow {
                    ((b * g.oh + oy) * g.ow + ox) * cout
                } else {
                    usize::MAX
                }
            });
            let src = a.m.add((tile - a.tb) * cout);
            let mut c = a.cr.0;
            while c + W <= a.cr.1 {
                output_tile::<W>(a, src, &at, c);
                c += W;
            }
            while c < a.cr.1 {
                output_tile::<1>(a, src, &at, c);
                c += 1;
            }
        }
    }
}

#[inline(always)]
unsafe fn output_tile<const W: usize>(a: &OutArgs, src: *const f32, at: &[usize; 4], c: usize) {
    // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
    // every operation in it; the ISA paths are reached only through a checked `Isa` token.
    unsafe {
        let mm: [[f32; W]; 16] = std::array::from_fn(|k| {
            std::ptr::read_unaligned(src.add(k * a.ms + c) as *const [f32; W])
        });
        // Aᵀ M: two rows
        let mut s = [[0f32; W]; 8];
        for q in 0..4 {
            for l in 0..W {
                let (m0, m1, m2, m3) = (mm[q][l], mm[4 + q][l], mm[8 + q][l], mm[12 + q][l]);
                s[q][l] = m0 + m1 + m2;
                s[4 + q][l] = m1 - m2 - m3;
            }
        }
        let bias = std::ptr::read_unaligned(a.bias.add(c) as *const [f32; W]);
        for i in 0..2 {
            let mut y = [[0f32; W]; 2];
            for l in 0..W {
                let (s0, s1, s2, s3) = (
                    s[4 * i][l],
                    s[4 * i + 1][l],
                    s[4 * i + 2][l],
                    s[4 * i + 3][l],
                );
                y[0][l] = s0 + s1 + s2 + bias[l];
                y[1][l] = s1 - s2 - s3 + bias[l];
            }
            for (j, yj) in y.iter_mut().enumerate() {
                let o = at[2 * i + j];
                if o == usize::MAX {
                    continue;
                }
                if !a.res.is_null() {
                    let r = std::ptr::read_unaligned(a.res.add(o + c) as *const [f32; W]);
                    for l in 0..W {
                        yj[l] += r[l];
                    }
                }
                for v in yj.iter_mut() {
                    *v = a.act.apply(*v);
                }
                std::ptr::write_unaligned(a.out.add(o + c) as *mut [f32; W], *yj);
            }
        }
    }
}

//! Input gradients of the convolutions (frozen weights): `dx = ∂L/∂x` from `g = ∂L/∂out`.
//!
//! The gradient of a stride-`s` convolution is split into `s × s` phases by the parity of the
//! input coordinate: the inputs `x[s·q + r]` receive only the taps `k ≡ (r + pad) mod s`, and
//! over `q` that is a stride-1 convolution of `g` with those taps reversed. Each phase runs on
//! the forward kernels (implicit GEMM or Winograd, depthwise), with the reversed, transposed
//! sub-kernels packed once; its rows are then added into `dx` at stride `s`. No col2im, no
//! zero-dilated `g`.

use rayon::prelude::*;

use crate::{conv2d, depthwise, Act, ConvShape, Isa, PackedConv, PackedDepthwise, ShapeError};

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

/// The reversed sub-kernel `(ky0, kx0)` of `[cout, cin/groups, kh, kw]` weights, as
/// `[cin, cout, ny, nx]` (dense) or `[c, 1, ny, nx]` (depthwise).
fn sub_kernel(
    w: &[f32],
    (o_n, i_n): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    (ky0, kx0): (usize, usize),
    (ny, nx): (usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; i_n * o_n * ny * nx];
    for o in 0..o_n {
        for i in 0..i_n {
            for jy in 0..ny {
                for jx in 0..nx {
                    let ky = ky0 + stride * (ny - 1 - jy);
                    let kx = kx0 + stride * (nx - 1 - jx);
                    out[((i * o_n + o) * ny + jy) * nx + jx] =
                        w[((o * i_n + i) * kh + ky) * kw + kx];
                }
            }
        }
    }
    out
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
}

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
        let mut subs = Vec::new();
        for ky0 in 0..stride {
            for kx0 in 0..stride {
                let kn = (taps(kh, stride, ky0), taps(kw, stride, kx0));
                if kn.0 == 0 || kn.1 == 0 {
                    subs.push(None);
                    continue;
                }
                let w = sub_kernel(weight, (cout, cin), (kh, kw), stride, (ky0, kx0), kn);
                subs.push(Some(if winograd && kn == (3, 3) && cout >= 16 {
                    PackedConv::winograd_from_oihw(&w, None, cin, cout)?
                } else {
                    PackedConv::from_oihw(&w, None, cin, cout, kn.0, kn.1)?
                }));
            }
        }
        Ok(ConvBackward {
            cout,
            cin,
            kh,
            kw,
            stride,
            subs,
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
        let (oh, ow) = s.out_hw(self.kh, self.kw)?;
        check(
            s,
            self.stride,
            g.len(),
            oh * ow * self.cout,
            dx.len(),
            self.cin,
        )?;
        run_phases(
            s,
            (self.kh, self.kw),
            (oh, ow),
            self.cin,
            dx,
            accumulate,
            |ph, out| {
                let i = ph.k0.0 * self.stride + ph.k0.1;
                match &self.subs[i] {
                    Some(p) => conv2d(isa, p, g, &ph.shape, None, Act::None, out).map(|_| true),
                    None => Ok(false),
                }
            },
        )
    }
}

/// The input gradient of a depthwise convolution, weights packed per phase.
#[derive(Debug, Clone)]
pub struct DepthwiseBackward {
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    subs: Vec<Option<PackedDepthwise>>,
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
        if weight.len() != c * kh * kw || stride == 0 || c == 0 {
            return Err(ShapeError(format!(
                "weight of {} values for a depthwise [{c}, 1, {kh}, {kw}] convolution, stride {stride}",
                weight.len()
            )));
        }
        let mut subs = Vec::new();
        for ky0 in 0..stride {
            for kx0 in 0..stride {
                let kn = (taps(kh, stride, ky0), taps(kw, stride, kx0));
                if kn.0 == 0 || kn.1 == 0 {
                    subs.push(None);
                    continue;
                }
                // per channel: [1, 1, kh, kw] reversed, i.e. sub_kernel with one in, one out
                let mut w = Vec::with_capacity(c * kn.0 * kn.1);
                for ch in 0..c {
                    let wc = &weight[ch * kh * kw..(ch + 1) * kh * kw];
                    w.extend(sub_kernel(wc, (1, 1), (kh, kw), stride, (ky0, kx0), kn));
                }
                subs.push(Some(PackedDepthwise::from_oihw(&w, None, c, kn.0, kn.1)?));
            }
        }
        Ok(DepthwiseBackward {
            c,
            kh,
            kw,
            stride,
            subs,
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
        run_phases(
            s,
            (self.kh, self.kw),
            (oh, ow),
            self.c,
            dx,
            accumulate,
            |ph, out| {
                let i = ph.k0.0 * self.stride + ph.k0.1;
                match &self.subs[i] {
                    Some(p) => depthwise(isa, p, g, &ph.shape, Act::None, out).map(|_| true),
                    None => Ok(false),
                }
            },
        )
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

/// Runs each phase (`conv(phase, out) → Ok(false)` when it has no taps) and adds or writes its
/// rows into `dx` at the phase's stride and offset.
fn run_phases(
    s: &ConvShape,
    (kh, kw): (usize, usize),
    (oh, ow): (usize, usize),
    c: usize,
    dx: &mut [f32],
    accumulate: bool,
    mut conv: impl FnMut(&Phase, &mut [f32]) -> Result<bool, ShapeError>,
) -> Result<(), ShapeError> {
    let st = s.stride;
    let (n, h, w) = (s.n, s.h, s.w);
    let mut tmp = Vec::new();
    for ph in phases(s, kh, kw, oh, ow)? {
        if ph.hq == 0 || ph.wq == 0 {
            continue;
        }
        let (ph_h, ph_w) = if ph.kn.0 == 0 || ph.kn.1 == 0 {
            (ph.hq, ph.wq)
        } else {
            ph.shape.out_hw(ph.kn.0, ph.kn.1)?
        };
        // stride 1, overwriting, exact size: straight into dx
        if st == 1 && !accumulate && (ph_h, ph_w) == (h, w) {
            if !conv(&ph, dx)? {
                dx.fill(0.0);
            }
            continue;
        }
        tmp.clear();
        tmp.resize(n * ph_h * ph_w * c, 0.0);
        let has = conv(&ph, &mut tmp)?;
        let (ry, rx) = ph.r;
        let tmp = &tmp;
        // rows of dx: (image, input row) pairs of this phase, in parallel
        dx.par_chunks_mut(w * c).enumerate().for_each(|(row, d)| {
            let (b, iy) = (row / h, row % h);
            if iy % st != ry {
                return;
            }
            let qy = iy / st;
            for qx in 0..ph.wq {
                let ix = qx * st + rx;
                let dst = &mut d[ix * c..(ix + 1) * c];
                if !has {
                    if !accumulate {
                        dst.fill(0.0);
                    }
                    continue;
                }
                let src = &tmp[((b * ph_h + qy) * ph_w + qx) * c..][..c];
                if accumulate {
                    for (o, v) in dst.iter_mut().zip(src) {
                        *o += v;
                    }
                } else {
                    dst.copy_from_slice(src);
                }
            }
        });
    }
    Ok(())
}

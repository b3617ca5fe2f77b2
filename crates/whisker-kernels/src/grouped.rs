//! Grouped convolutions (RegNet's, ResNeXt's): each of `groups` slices of the input channels
//! convolved with its own weights into its own slice of the output channels.
//!
//! The dense kernels read an image's channels contiguously, so a grouped convolution runs as
//! `groups` dense convolutions over the input gathered group-major (`[groups][pixels][c/g]`),
//! in parallel, their outputs scattered back into the NHWC result. Forward, input gradient
//! and weight gradient, each the dense kernels' on every ISA path.

use rayon::prelude::*;

use crate::backward::ConvBackward;
use crate::conv::{conv2d, PackedConv};
use crate::weight_grad::conv2d_weight_grad;
use crate::{Act, ConvShape, Isa, ShapeError};

/// A grouped convolution's weights, one packed dense convolution per group.
#[derive(Debug, Clone)]
pub struct PackedGrouped {
    pub groups: usize,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    parts: Vec<PackedConv>,
}

/// `(cin/groups, cout/groups)`, or why the grouping does not divide the channels.
fn per_group(cin: usize, cout: usize, groups: usize) -> Result<(usize, usize), ShapeError> {
    if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
        return Err(ShapeError(format!(
            "{groups} groups of {cin} input and {cout} output channels"
        )));
    }
    Ok((cin / groups, cout / groups))
}

/// Group `g`'s rows of PyTorch's `[cout, cin/groups, kh, kw]` weight.
fn part(weight: &[f32], g: usize, opg: usize, per: usize) -> &[f32] {
    &weight[g * opg * per..(g + 1) * opg * per]
}

impl PackedGrouped {
    /// From PyTorch's `[cout, cin/groups, kh, kw]` weight and an optional bias. `winograd`
    /// (for a stride-1 convolution only, as [`PackedConv::winograd_from_oihw`]): 3×3 groups
    /// of 16 or more input channels on Winograd's F(2×2, 3×3).
    #[allow(clippy::too_many_arguments)]
    pub fn from_oihw(
        weight: &[f32],
        bias: Option<&[f32]>,
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        groups: usize,
        winograd: bool,
    ) -> Result<Self, ShapeError> {
        let (cpg, opg) = per_group(cin, cout, groups)?;
        if weight.len() != cout * cpg * kh * kw || bias.is_some_and(|b| b.len() != cout) {
            return Err(ShapeError(format!(
                "weight of {} values for a [{cout}, {cpg}, {kh}, {kw}] convolution in {groups} groups",
                weight.len()
            )));
        }
        let parts = (0..groups)
            .map(|g| {
                let w = part(weight, g, opg, cpg * kh * kw);
                let b = bias.map(|b| &b[g * opg..(g + 1) * opg]);
                if winograd && (kh, kw) == (3, 3) && cpg >= 16 {
                    PackedConv::winograd_from_oihw(w, b, opg, cpg)
                } else {
                    PackedConv::from_oihw(w, b, opg, cpg, kh, kw)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PackedGrouped {
            groups,
            cin,
            cout,
            kh,
            kw,
            parts,
        })
    }

    /// Whether its groups run on Winograd's transform (stride 1 only).
    pub fn is_winograd(&self) -> bool {
        self.parts.first().is_some_and(PackedConv::is_winograd)
    }
}

/// `[pixels, c]` → `[groups][pixels][c/groups]`.
fn gather(x: &[f32], c: usize, groups: usize) -> Vec<f32> {
    let (pixels, cpg) = (x.len() / c, c / groups);
    let mut out = crate::buffers::take(x.len());
    out.par_chunks_mut(pixels * cpg)
        .enumerate()
        .for_each(|(g, dst)| {
            for (d, s) in dst.chunks_exact_mut(cpg).zip(x.chunks_exact(c)) {
                d.copy_from_slice(&s[g * cpg..(g + 1) * cpg]);
            }
        });
    out
}

/// `[groups][pixels][c/groups]` → `[pixels, c]`, written or added.
fn scatter(src: &[f32], c: usize, groups: usize, out: &mut [f32], add: bool) {
    let (pixels, cpg) = (out.len() / c, c / groups);
    let rows = (pixels / (4 * rayon::current_num_threads()).max(1)).max(1);
    out.par_chunks_mut(rows * c)
        .enumerate()
        .for_each(|(chunk, dst)| {
            for (i, d) in dst.chunks_exact_mut(c).enumerate() {
                let p = chunk * rows + i;
                for g in 0..groups {
                    let s = &src[(g * pixels + p) * cpg..][..cpg];
                    let d = &mut d[g * cpg..(g + 1) * cpg];
                    if add {
                        d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                    } else {
                        d.copy_from_slice(s);
                    }
                }
            }
        });
}

/// `out = act(bias + grouped convolution of x)` for NHWC `x` `[n, h, w, cin]` and `out`
/// `[n, oh, ow, cout]`.
pub fn grouped_conv2d(
    isa: Isa,
    p: &PackedGrouped,
    x: &[f32],
    s: &ConvShape,
    act: Act,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (oh, ow) = s.out_hw(p.kh, p.kw)?;
    let (cpg, opg) = (p.cin / p.groups, p.cout / p.groups);
    if x.len() != s.n * s.h * s.w * p.cin || out.len() != s.n * oh * ow * p.cout {
        return Err(ShapeError(format!(
            "grouped convolution: {} input and {} output values for [{}, {}, {}, {}] → [{oh}, {ow}, {}]",
            x.len(),
            out.len(),
            s.n,
            s.h,
            s.w,
            p.cin,
            p.cout
        )));
    }
    let xg = gather(x, p.cin, p.groups);
    let (pin, pout) = (s.n * s.h * s.w * cpg, s.n * oh * ow * opg);
    let mut og = crate::buffers::take(out.len());
    og.par_chunks_mut(pout)
        .zip(p.parts.par_iter().enumerate())
        .try_for_each(|(o, (g, w))| conv2d(isa, w, &xg[g * pin..][..pin], s, None, act, o))?;
    scatter(&og, p.cout, p.groups, out, false);
    crate::buffers::give(xg);
    crate::buffers::give(og);
    Ok(())
}

/// A grouped convolution's input-gradient weights, one dense set per group.
#[derive(Debug)]
pub struct GroupedBackward {
    groups: usize,
    cin: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    parts: Vec<ConvBackward>,
}

impl GroupedBackward {
    /// From PyTorch's `[cout, cin/groups, kh, kw]` weight (see [`ConvBackward::from_oihw`]).
    #[allow(clippy::too_many_arguments)]
    pub fn from_oihw(
        weight: &[f32],
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        stride: usize,
        groups: usize,
        winograd: bool,
    ) -> Result<Self, ShapeError> {
        let (cpg, opg) = per_group(cin, cout, groups)?;
        if weight.len() != cout * cpg * kh * kw {
            return Err(ShapeError(format!(
                "weight of {} values for a [{cout}, {cpg}, {kh}, {kw}] convolution in {groups} groups",
                weight.len()
            )));
        }
        let parts = (0..groups)
            .map(|g| {
                let w = part(weight, g, opg, cpg * kh * kw);
                ConvBackward::from_oihw(w, opg, cpg, kh, kw, stride, winograd)
            })
            .collect::<Result<_, _>>()?;
        Ok(GroupedBackward {
            groups,
            cin,
            cout,
            kh,
            kw,
            parts,
        })
    }

    /// `dx` (`[n, h, w, cin]`) from the output gradient `g` (`[n, oh, ow, cout]`, activation
    /// already differentiated), written, or added to what `dx` holds (`accumulate`).
    pub fn input_grad(
        &self,
        isa: Isa,
        g: &[f32],
        s: &ConvShape,
        dx: &mut [f32],
        accumulate: bool,
    ) -> Result<(), ShapeError> {
        let (oh, ow) = s.out_hw(self.kh, self.kw)?;
        if g.len() != s.n * oh * ow * self.cout || dx.len() != s.n * s.h * s.w * self.cin {
            return Err(ShapeError(format!(
                "grouped input gradient: {} output and {} input gradient values",
                g.len(),
                dx.len()
            )));
        }
        let (cpg, opg) = (self.cin / self.groups, self.cout / self.groups);
        let (pin, pout) = (s.n * s.h * s.w * cpg, s.n * oh * ow * opg);
        let gg = gather(g, self.cout, self.groups);
        let mut dg = crate::buffers::take(dx.len());
        dg.par_chunks_mut(pin)
            .zip(self.parts.par_iter().enumerate())
            .try_for_each(|(d, (i, b))| b.input_grad(isa, &gg[i * pout..][..pout], s, d, false))?;
        scatter(&dg, self.cin, self.groups, dx, accumulate);
        crate::buffers::give(gg);
        crate::buffers::give(dg);
        Ok(())
    }
}

/// `dW` (`[cout, cin/groups, kh, kw]`) and `db` (`[cout]`, when asked) of a grouped
/// convolution with input `x` (`[n, h, w, cin]`) and output gradient `g` (`[n, oh, ow,
/// cout]`, activation already differentiated). Overwrites them.
#[allow(clippy::too_many_arguments)]
pub fn grouped_weight_grad(
    isa: Isa,
    x: &[f32],
    s: &ConvShape,
    cin: usize,
    g: &[f32],
    cout: usize,
    (kh, kw, groups): (usize, usize, usize),
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) -> Result<(), ShapeError> {
    let (cpg, opg) = per_group(cin, cout, groups)?;
    let (oh, ow) = s.out_hw(kh, kw)?;
    if x.len() != s.n * s.h * s.w * cin
        || g.len() != s.n * oh * ow * cout
        || dw.len() != cout * cpg * kh * kw
        || db.as_ref().is_some_and(|b| b.len() != cout)
    {
        return Err(ShapeError(format!(
            "grouped weight gradient: x {} / g {} / dW {} values for [{}, {}, {}, {cin}] → [{oh}, {ow}, {cout}], {kh}×{kw}, {groups} groups",
            x.len(),
            g.len(),
            dw.len(),
            s.n,
            s.h,
            s.w
        )));
    }
    let (pin, pout) = (s.n * s.h * s.w * cpg, s.n * oh * ow * opg);
    let (xg, gg) = (gather(x, cin, groups), gather(g, cout, groups));
    let per = opg * cpg * kh * kw;
    let mut dbs = vec![0f32; cout];
    dw.par_chunks_mut(per)
        .zip(dbs.par_chunks_mut(opg))
        .enumerate()
        .try_for_each(|(i, (dw, db))| {
            conv2d_weight_grad(
                isa,
                &xg[i * pin..][..pin],
                s,
                cpg,
                &gg[i * pout..][..pout],
                opg,
                kh,
                kw,
                dw,
                Some(db),
            )
        })?;
    if let Some(db) = db {
        db.copy_from_slice(&dbs);
    }
    crate::buffers::give(xg);
    crate::buffers::give(gg);
    Ok(())
}

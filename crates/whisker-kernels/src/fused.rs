//! An inverted residual block (MobileNetV2/V3, EfficientNet-Lite) in one pass: 1×1 expansion,
//! depthwise convolution, 1×1 projection (and the residual add), a band of output rows at a
//! time, so the expanded activations — the block's largest, 4–6× its input — live only in a
//! window of a few rows that stays in the core's L2 cache instead of going through memory
//! twice at full size.
//!
//! Each thread takes a contiguous range of the batch's output rows (whole images when there
//! are at least as many images as threads). Down its range it slides a window of expanded
//! rows: the rows a band shares with the next one are kept, so only a thread's first band
//! (and a new image) computes the rows above it again. Every output value is the same sum, in
//! the same order, as the three convolutions run one after the other ([`crate::conv2d`],
//! [`crate::depthwise`]): the result is bit for bit the same.

use crate::conv::{par_row_runs, pointwise_serial, rows_per_thread};
use crate::depthwise::rows_serial;
use crate::{Act, ConvShape, Isa, PackedConv, PackedDepthwise, ShapeError};

/// The three convolutions of an inverted residual block, packed (BatchNorm folded).
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    /// The 1×1 expansion and its activation (none when the expansion ratio is 1).
    pub expand: Option<(PackedConv, Act)>,
    pub depthwise: PackedDepthwise,
    pub depthwise_act: Act,
    /// The 1×1 projection and its activation (usually none).
    pub project: PackedConv,
    pub project_act: Act,
}

/// Bytes of expanded rows a band's window may hold (with the band's depthwise output, a
/// fraction of a core's L2).
const WINDOW_BYTES: usize = 384 * 1024;

impl InvertedResidual {
    /// Check that the convolutions chain: `expand` 1×1 `cin → e`, the depthwise over `e`,
    /// the projection 1×1 `e → cout`.
    pub fn new(
        expand: Option<(PackedConv, Act)>,
        depthwise: PackedDepthwise,
        depthwise_act: Act,
        project: PackedConv,
        project_act: Act,
    ) -> Result<Self, ShapeError> {
        let acts = [
            expand.as_ref().map(|x| x.1),
            Some(depthwise_act),
            Some(project_act),
        ];
        if let Some(a) = acts.iter().flatten().find(|a| a.is_pass()) {
            return Err(ShapeError(format!(
                "a fused block with {a:?} (not fused: a pass of its own)"
            )));
        }
        let e = depthwise.c;
        let one = |c: &PackedConv| c.kh == 1 && c.kw == 1 && !c.is_winograd();
        if let Some((x, _)) = &expand {
            if !one(x) || x.cout != e {
                return Err(ShapeError(format!(
                    "an expansion {}→{} {}×{} before a depthwise convolution over {e} channels",
                    x.cin, x.cout, x.kh, x.kw
                )));
            }
        }
        if !one(&project) || project.cin != e {
            return Err(ShapeError(format!(
                "a projection {}→{} {}×{} after a depthwise convolution over {e} channels",
                project.cin, project.cout, project.kh, project.kw
            )));
        }
        Ok(InvertedResidual {
            expand,
            depthwise,
            depthwise_act,
            project,
            project_act,
        })
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.expand
            .as_ref()
            .map_or(self.depthwise.c, |(x, _)| x.cin)
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.project.cout
    }
}

/// `out = project(dw(expand(x))) (+ x)` for NHWC `x` `[n, h, w, cin]` and `out`
/// `[n, oh, ow, cout]`; `s` is the depthwise convolution's geometry (stride, padding) on
/// `h × w`; `residual` adds `x` (same shape as `out`).
pub fn inverted_residual(
    isa: Isa,
    b: &InvertedResidual,
    x: &[f32],
    s: &ConvShape,
    residual: bool,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let dw = &b.depthwise;
    let (oh, ow) = s.out_hw(dw.kh, dw.kw)?;
    let (cin, e, cout) = (b.cin(), dw.c, b.cout());
    if x.len() != s.n * s.h * s.w * cin || out.len() != s.n * oh * ow * cout {
        return Err(ShapeError(format!(
            "block input of {} values / output of {} for [{}, {}, {}, {cin}] → [{oh}, {ow}, {cout}]",
            x.len(),
            out.len(),
            s.n,
            s.h,
            s.w
        )));
    }
    if residual && ((s.h, s.w) != (oh, ow) || cin != cout) {
        return Err(ShapeError(format!(
            "a residual add from [{}, {}, {cin}] to [{oh}, {ow}, {cout}]",
            s.h, s.w
        )));
    }
    let rows = s.n * oh;
    if rows == 0 || ow == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    // whole images per thread when there are enough of them, else rows
    let per = if s.n >= threads {
        s.n.div_ceil(threads) * oh
    } else {
        rows_per_thread(rows)
    };
    // output rows per band: as many as keep the window of expanded rows within its budget
    let row_bytes = s.w * e * 4;
    let in_rows = (WINDOW_BYTES / row_bytes.max(1)).max(dw.kh);
    let band = ((in_rows - dw.kh) / s.stride + 1).clamp(1, oh);
    let row = ow * cout;
    let job = Job {
        isa,
        b,
        x,
        s,
        oh,
        ow,
        residual,
        band,
    };
    par_row_runs(out, row, per, |r0, r1, chunk| job.run(r0, r1, chunk));
    Ok(())
}

struct Job<'a> {
    isa: Isa,
    b: &'a InvertedResidual,
    x: &'a [f32],
    s: &'a ConvShape,
    oh: usize,
    ow: usize,
    residual: bool,
    band: usize,
}

impl Job<'_> {
    /// Output rows `[r0, r1)` of the batch into `out` (their values, from row `r0`).
    fn run(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let (s, b) = (self.s, self.b);
        let (cin, e, cout) = (b.cin(), b.depthwise.c, b.cout());
        let (k, st, pad_t) = (b.depthwise.kh, s.stride, s.pad[0]);
        let in_row = s.w * cin;
        let e_row = s.w * e;
        // the window: expanded rows [wy0, wy1) of image `wimg`
        let mut window: Vec<f32> = Vec::new();
        let (mut wimg, mut wy0, mut wy1) = (usize::MAX, 0, 0);
        let mut dwout: Vec<f32> = Vec::new();
        let mut r = r0;
        while r < r1 {
            let (img, oy0) = (r / self.oh, r % self.oh);
            let oy1 = (oy0 + self.band).min(self.oh).min(oy0 + (r1 - r));
            let bo = oy1 - oy0;
            // the input rows under the band: [lo, hi)
            let lo = (oy0 * st).saturating_sub(pad_t);
            let hi = ((oy1 - 1) * st + k).saturating_sub(pad_t).min(s.h).max(lo);
            let x_img = &self.x[img * s.h * in_row..(img + 1) * s.h * in_row];
            let src: &[f32] = match &b.expand {
                None => &x_img[lo * in_row..hi * in_row],
                Some((xw, act)) => {
                    // keep the rows this band shares with the window, expand the others
                    let keep = if wimg == img && wy0 <= lo && lo < wy1 {
                        window.copy_within((lo - wy0) * e_row..(wy1 - wy0) * e_row, 0);
                        wy1 - lo
                    } else {
                        0
                    };
                    let from = lo + keep;
                    window.resize((hi - lo) * e_row, 0.0);
                    if from < hi {
                        pointwise_serial(
                            self.isa,
                            xw,
                            &x_img[from * in_row..hi * in_row],
                            (hi - from) * s.w,
                            None,
                            *act,
                            &mut window[keep * e_row..],
                        );
                    }
                    (wimg, wy0, wy1) = (img, lo, hi);
                    &window[..]
                }
            };
            // the depthwise convolution of the band, as one of a shorter image whose
            // padding above and below is what the full image has there
            let h = hi - lo;
            let top = pad_t.saturating_sub(oy0 * st);
            let bottom = ((bo - 1) * st + k).saturating_sub(h + top);
            let band_shape = ConvShape {
                n: 1,
                h,
                w: s.w,
                stride: st,
                pad: [top, bottom, s.pad[2], s.pad[3]],
            };
            dwout.resize(bo * self.ow * e, 0.0);
            rows_serial(
                self.isa,
                &b.depthwise,
                src,
                &band_shape,
                (bo, self.ow),
                b.depthwise_act,
                0,
                bo,
                &mut dwout,
            );
            // the projection, with the residual rows of the input
            let o = &mut out[(r - r0) * self.ow * cout..][..bo * self.ow * cout];
            let res = self.residual.then(|| &x_img[oy0 * in_row..oy1 * in_row]);
            pointwise_serial(
                self.isa,
                &b.project,
                &dwout,
                bo * self.ow,
                res,
                b.project_act,
                o,
            );
            r += bo;
        }
    }
}

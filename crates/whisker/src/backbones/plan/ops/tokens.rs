//! A vision transformer's input tokens: the class token, then the patch embeddings (a
//! `gh × gw` map, row by row), each plus its position embedding — learnt for a grid of
//! `grid × grid` patches, resampled bicubically to another (as the burn forward does) — and
//! register tokens (DINOv2's), without position embeddings, between the two.

use burn::module::ParamId;
use rayon::prelude::*;

use super::{Bwd, Fwd, Shapes, Step};
use crate::backbones::plan::grad::{hand_over, ParamGrad};
use crate::backbones::plan::V;
use crate::data::resize::{resize_matrix_rows, Filter};
use crate::error::Result;

#[derive(Debug)]
pub(in crate::backbones::plan) struct Tokens {
    /// The patch embeddings `(gh, gw, c)`.
    pub x: V,
    /// `(1 + r + gh·gw, 1, c)`.
    pub out: V,
    /// The class token `[c]`, the position embeddings `[1 + grid², c]` and the `r` register
    /// tokens `[r, c]` (none: empty).
    pub cls: Vec<f32>,
    pub pos: Vec<f32>,
    pub reg: Vec<f32>,
    pub grid: usize,
    /// The parameters, for their gradients.
    pub params: Option<TokenParams>,
}

/// The parameters of [`Tokens`].
#[derive(Debug, Clone, Copy)]
pub(in crate::backbones::plan) struct TokenParams {
    pub cls: ParamId,
    pub pos: ParamId,
    pub reg: Option<ParamId>,
}

/// `[out, g]` resampling matrices for a `g`-long side.
fn matrix(g: usize, out: usize) -> Vec<f32> {
    resize_matrix_rows(Filter::Bicubic, g, out, 0..out)
}

impl Tokens {
    /// The position embeddings of the patches on a `gh × gw` grid, `[gh·gw, c]`: rows then
    /// columns resampled (the burn forward's order).
    fn patch_pos(&self, gh: usize, gw: usize, c: usize) -> Vec<f32> {
        patch_pos(&self.pos, self.grid, gh, gw, c)
    }
}

/// The position embeddings `pos` (`[1 + grid², c]`, the class token's first) of the
/// patches on a `gh × gw` grid, `[gh·gw, c]`: rows then columns resampled bicubically (the
/// burn forward's order).
pub(in crate::backbones::plan) fn patch_pos(
    pos: &[f32],
    g: usize,
    gh: usize,
    gw: usize,
    c: usize,
) -> Vec<f32> {
    let learnt = &pos[c..];
    if (gh, gw) == (g, g) {
        return learnt.to_vec();
    }
    let (rh, rw) = (matrix(g, gh), matrix(g, gw));
    // rows: [gh, g, c]
    let mut rows = vec![0f32; gh * g * c];
    for i in 0..gh {
        for a in 0..g {
            let wgt = rh[i * g + a];
            if wgt != 0.0 {
                for b in 0..g {
                    let (src, dst) = (&learnt[(a * g + b) * c..][..c], (i * g + b) * c);
                    rows[dst..dst + c]
                        .iter_mut()
                        .zip(src)
                        .for_each(|(d, s)| *d += wgt * s);
                }
            }
        }
    }
    let mut out = vec![0f32; gh * gw * c];
    for i in 0..gh {
        for j in 0..gw {
            let dst = &mut out[(i * gw + j) * c..][..c];
            for b in 0..g {
                let wgt = rw[j * g + b];
                if wgt != 0.0 {
                    let src = &rows[(i * g + b) * c..][..c];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += wgt * s);
                }
            }
        }
    }
    out
}

impl Tokens {
    /// The learnt patch position embeddings' gradient `[grid², c]` from the gradient of the
    /// patches' on a `gh × gw` grid (`[gh·gw, c]`): [`Tokens::patch_pos`] transposed.
    fn patch_pos_grad(&self, d: &[f64], gh: usize, gw: usize, c: usize) -> Vec<f32> {
        let g = self.grid;
        if (gh, gw) == (g, g) {
            return d.iter().map(|&v| v as f32).collect();
        }
        let (rh, rw) = (matrix(g, gh), matrix(g, gw));
        // through the columns: [gh, g, c]
        let mut rows = vec![0f64; gh * g * c];
        for i in 0..gh {
            for j in 0..gw {
                let src = &d[(i * gw + j) * c..][..c];
                for b in 0..g {
                    let wgt = rw[j * g + b] as f64;
                    if wgt != 0.0 {
                        let dst = &mut rows[(i * g + b) * c..][..c];
                        dst.iter_mut().zip(src).for_each(|(o, s)| *o += wgt * s);
                    }
                }
            }
        }
        // through the rows: [g, g, c]
        let mut out = vec![0f64; g * g * c];
        for i in 0..gh {
            for a in 0..g {
                let wgt = rh[i * g + a] as f64;
                if wgt != 0.0 {
                    for b in 0..g {
                        let src = &rows[(i * g + b) * c..][..c];
                        let dst = &mut out[(a * g + b) * c..][..c];
                        dst.iter_mut().zip(src).for_each(|(o, s)| *o += wgt * s);
                    }
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }
}

impl Step for Tokens {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn param_ids(&self) -> Vec<ParamId> {
        self.params
            .map(|p| {
                [Some(p.cls), Some(p.pos), p.reg]
                    .into_iter()
                    .flatten()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        let (gh, gw, c) = shapes[self.x];
        Ok((1 + self.reg.len() / c.max(1) + gh * gw, 1))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        let (gh, gw, c) = cx.shapes[self.x];
        let pos = self.patch_pos(gh, gw, c);
        let first: Vec<f32> = self
            .cls
            .iter()
            .zip(&self.pos[..c])
            .map(|(a, b)| a + b)
            .collect();
        let (x, out, _) = cx.io(self.x, self.out, None);
        let lead = c + self.reg.len();
        let t = lead / c + gh * gw;
        out.par_chunks_mut(t * c)
            .zip(x.par_chunks(gh * gw * c))
            .for_each(|(o, x)| {
                o[..c].copy_from_slice(&first);
                o[c..lead].copy_from_slice(&self.reg);
                for ((o, x), p) in o[lead..].iter_mut().zip(x).zip(&pos) {
                    *o = x + p;
                }
            });
        Ok(())
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        let (gh, gw, c) = cx.shape(self.x);
        let lead = c + self.reg.len();
        let t = lead / c + gh * gw;
        if let (true, Some(p)) = (cx.want_params, self.params) {
            // summed over the batch, then (on another grid) through the resampling
            let mut dsum = vec![0f64; t * c];
            for img in g.chunks_exact(t * c) {
                dsum.iter_mut().zip(img).for_each(|(d, &v)| *d += v as f64);
            }
            let mut dpos: Vec<f32> = dsum[..c].iter().map(|&v| v as f32).collect();
            dpos.extend(self.patch_pos_grad(&dsum[lead..], gh, gw, c));
            cx.pgrads
                .push(ParamGrad::new(p.cls, vec![1, 1, c], dpos[..c].to_vec()));
            let g2 = self.grid * self.grid;
            cx.pgrads
                .push(ParamGrad::new(p.pos, vec![1, 1 + g2, c], dpos));
            if let Some(reg) = p.reg {
                let r = self.reg.len() / c;
                let dreg = dsum[c..lead].iter().map(|&v| v as f32).collect();
                cx.pgrads.push(ParamGrad::new(reg, vec![1, r, c], dreg));
            }
        }
        if cx.wants_input(self.x) {
            let mut dx = whisker_kernels::buffers::take(cx.len(self.x));
            dx.par_chunks_mut(gh * gw * c)
                .zip(g.par_chunks(t * c))
                .for_each(|(d, g)| d.copy_from_slice(&g[lead..]));
            hand_over(Some(&mut cx.grads[self.x]), dx);
        }
        whisker_kernels::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("tokens {:?} -> {:?}", shapes[self.x], shapes[self.out])
    }
}

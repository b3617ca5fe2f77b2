//! LayerNorm over channels (a ConvNeXt's NHWC map: one row a pixel) or over a token's
//! values (a transformer's), with its affine `γ`, `β`.

use burn::module::ParamId;
use whisker_kernels as k;

use super::{Bwd, Fwd, Kept, Shapes, Step};
use crate::backbones::plan::grad::ParamGrad;
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct LayerNorm {
    pub x: V,
    pub out: V,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f64,
    /// Its `(γ, β)`, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<(ParamId, ParamId)>,
}

impl LayerNorm {
    fn run(&self, cx: &mut Fwd<'_>, stats: Option<&mut [f32]>) -> Result<()> {
        let (isa, c) = (cx.isa, self.gamma.len());
        let (xb, ob, _) = cx.io(self.x, self.out, None);
        k::layer_norm(isa, xb, c, &self.gamma, &self.beta, self.eps, ob, stats).map_err(shape_err)
    }
}

impl Step for LayerNorm {
    fn inputs(&self) -> Vec<V> {
        vec![self.x]
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn param_ids(&self) -> Vec<ParamId> {
        self.params.map(|(g, b)| vec![g, b]).unwrap_or_default()
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        Ok((shapes[self.x].0, shapes[self.x].1))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        self.run(cx, None)
    }

    /// Keeps each row's mean and `1/√(σ²+ε)`.
    fn forward_kept(&self, cx: &mut Fwd<'_>) -> Result<Kept> {
        let rows = cx.len(self.x) / self.gamma.len().max(1);
        let mut stats = vec![0f32; rows * 2];
        self.run(cx, Some(&mut stats))?;
        Ok(Kept {
            bufs: vec![stats],
            ..Kept::default()
        })
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let Some(g) = cx.grads[self.out].take() else {
            return Ok(());
        };
        let [stats] = cx.kept.bufs.as_slice() else {
            return Err(Error::Internal("LayerNorm statistics not kept".into()));
        };
        let (c, len) = (self.gamma.len(), cx.len(self.x));
        let acc = cx.grads[self.x].is_some();
        let dx = cx.grads[self.x].get_or_insert_with(|| k::buffers::take(len));
        let (dg, db) =
            k::layer_norm_backward(&cx.tape.values[self.x], &g, c, &self.gamma, stats, dx, acc)
                .map_err(shape_err)?;
        if let (true, Some((gamma, beta))) = (cx.want_params, self.params) {
            cx.pgrads.push(ParamGrad::new(gamma, vec![c], dg));
            cx.pgrads.push(ParamGrad::new(beta, vec![c], db));
        }
        k::buffers::give(g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!("layernorm {:?}", shapes[self.x])
    }
}

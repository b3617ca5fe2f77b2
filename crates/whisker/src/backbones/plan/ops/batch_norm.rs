//! BatchNorm normalising with the batch's own statistics (fine-tuning with `--train-bn`),
//! then the residual and the activation; on a tape, the batch's statistics also update the
//! running ones (as PyTorch's training-mode forward does).

use burn::module::ParamId;
use whisker_kernels as k;
use whisker_kernels::Act as KAct;

use super::{Bwd, Fwd, Kept, Shapes, Step};
use crate::backbones::plan::grad::{act_grad, hand_over, ParamGrad};
use crate::backbones::plan::{shape_err, V};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(in crate::backbones::plan) struct BatchNorm {
    pub x: V,
    pub out: V,
    pub res: Option<V>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f64,
    pub act: KAct,
    /// The running statistics it trains.
    pub stats: crate::backbones::layers::TrainStats,
    pub momentum: f64,
    /// Its `(γ, β)`, for their gradients (`PlanOptions::weight_grads`).
    pub params: Option<(ParamId, ParamId)>,
}

impl BatchNorm {
    /// The step; the batch's statistics.
    fn run(&self, cx: &mut Fwd<'_>) -> Result<k::BatchStats> {
        let c = cx.shapes[self.x].2;
        let act = cx.act(self.act);
        let (xb, ob, rb) = cx.io(self.x, self.out, self.res);
        k::batch_norm_train(xb, c, &self.gamma, &self.beta, self.eps, rb, act, ob)
            .map_err(shape_err)
    }
}

impl Step for BatchNorm {
    fn inputs(&self) -> Vec<V> {
        std::iter::once(self.x).chain(self.res).collect()
    }

    fn output(&self) -> Option<V> {
        Some(self.out)
    }

    fn act(&self) -> KAct {
        self.act
    }

    fn param_ids(&self) -> Vec<ParamId> {
        self.params.map(|(g, b)| vec![g, b]).unwrap_or_default()
    }

    fn out_hw(&self, _: usize, shapes: Shapes<'_>) -> Result<(usize, usize)> {
        Ok((shapes[self.x].0, shapes[self.x].1))
    }

    fn forward(&self, cx: &mut Fwd<'_>) -> Result<()> {
        self.run(cx).map(|_| ())
    }

    fn forward_kept(&self, cx: &mut Fwd<'_>) -> Result<Kept> {
        let st = self.run(cx)?;
        crate::backbones::layers::update_running_values(
            &self.stats,
            self.momentum,
            &st.mean,
            &st.var,
            st.count,
        );
        Ok(Kept {
            stats: Some(st),
            ..Kept::default()
        })
    }

    fn backward(&self, cx: &mut Bwd<'_>) -> Result<()> {
        let (x, out) = (self.x, self.out);
        let Some(mut g) = cx.grads[out].take() else {
            return Ok(());
        };
        // ReLU's derivative in the kernel's first pass; others here
        let fused = matches!(self.act, KAct::Relu | KAct::Relu6);
        if !fused && !cx.premasked[out] {
            act_grad(
                cx.isa,
                self.act,
                &mut g,
                cx.tape.produced(out),
                cx.kept.pre_act.as_deref(),
            )?;
        }
        let mask = (fused && !cx.premasked[out]).then(|| (self.act, cx.tape.produced(out)));
        let st = cx
            .kept
            .stats
            .as_ref()
            .ok_or_else(|| Error::Internal("BatchNorm statistics not kept".into()))?;
        let len = cx.len(x);
        let c = cx.shape(x).2;
        let acc = cx.grads[x].is_some();
        let dx = cx.grads[x].get_or_insert_with(|| k::buffers::take(len));
        let (dg, db) = k::batch_norm_train_backward(
            &cx.tape.values[x],
            &mut g,
            mask,
            c,
            &self.gamma,
            st,
            dx,
            acc,
        )
        .map_err(shape_err)?;
        if let (true, Some((gamma, beta))) = (cx.want_params, self.params) {
            cx.pgrads.push(ParamGrad::new(gamma, vec![c], dg));
            cx.pgrads.push(ParamGrad::new(beta, vec![c], db));
        }
        hand_over(self.res.map(|r| &mut cx.grads[r]), g);
        Ok(())
    }

    fn describe(&self, shapes: Shapes<'_>) -> String {
        format!(
            "batchnorm (batch statistics) {:?} {:?}{}",
            shapes[self.x],
            self.act,
            if self.res.is_some() { " +res" } else { "" }
        )
    }
}

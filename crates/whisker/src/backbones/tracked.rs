//! The CPU engine inside autodiff: pixels → features as one tracked operation whose backward
//! pass is the engine's input gradient ([`Plan::input_grad`]). Used when the backbone's
//! weights are frozen (nothing asks for their gradients): `attack`, `dream`, `robustness`.
//! A backbone with trainable weights keeps burn's operations, which give weight gradients.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::Flex;

use super::plan::{Plan, Tape};

/// The tracked operation.
#[derive(Debug)]
struct EngineFeatures;

/// What the backward pass needs: the plan and the forward pass it kept.
#[derive(Debug, Clone)]
struct State {
    plan: Arc<Plan>,
    tape: Arc<Tape>,
}

impl Backward<Flex, 1> for EngineFeatures {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [Some(parent)] = ops.parents else {
            return;
        };
        let g = Tensor::<2>::from_primitive::<Flex>(g);
        let State { plan, tape } = ops.state;
        let dims = tape.input_dims();
        // The tape and the feature gradient come from the forward pass of this same plan, so
        // their shapes agree; a failure here is a bug, not bad input.
        let dx = crate::tensor::to_vec(g)
            .and_then(|gv| plan.input_grad(&tape, &gv))
            .expect("the engine's input gradient");
        let dx = Tensor::<4>::from_data(TensorData::new(dx, dims), &Device::flex())
            .try_into_primitive::<Flex>()
            .expect("a flex tensor");
        grads.register::<Flex>(parent.id, dx);
    }
}

/// Features `[n, dim]` of `x` (`[n, 3, h, w]` on the autodiff CPU device; pixels, or
/// normalised input when `normalized`), tracked so that gradients reach `x`. `None` when the
/// engine cannot serve it (the caller then uses burn).
pub(super) fn features(plan: &Arc<Plan>, x: Tensor<4>, normalized: bool) -> Option<Tensor<2>> {
    let dims = x.dims();
    let v = crate::tensor::to_vec(x.clone().inner()).ok()?;
    let tape = plan.forward_tape(&v, dims, normalized).ok()?;
    let n = tape.n();
    let f = tape.features().to_vec();
    let fd = f.len() / n.max(1);
    let out = Tensor::<2>::from_data(TensorData::new(f, [n, fd]), &Device::flex())
        .try_into_primitive::<Flex>()
        .ok()?;
    let xa = x.try_into_primitive::<Autodiff<Flex>>().ok()?;
    let y = match EngineFeatures
        .prepare::<NoCheckpointing>([xa.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                plan: plan.clone(),
                tape: Arc::new(tape),
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::<2>::from_primitive::<Autodiff<Flex>>(y))
}

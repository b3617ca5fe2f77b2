//! A one-input operation tracked by burn's autodiff whose forward and backward passes run on
//! the CPU in plain f32 buffers: the caller computes the output, and gives the map from the
//! output's gradient to the input's (the dream's random view and its decorrelated image).

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::Flex;

/// The output's gradient (flat) → the input's (flat).
pub(crate) type BackwardFn = Arc<dyn Fn(&[f32]) -> Vec<f32> + Send + Sync>;

#[derive(Clone)]
struct State<const DI: usize> {
    backward: BackwardFn,
    input_dims: [usize; DI],
}

impl<const DI: usize> std::fmt::Debug for State<DI> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("input_dims", &self.input_dims)
            .finish()
    }
}

#[derive(Debug)]
struct CpuOp<const DI: usize, const DO: usize>;

impl<const DI: usize, const DO: usize> Backward<Flex, 1> for CpuOp<DI, DO> {
    type State = State<DI>;

    fn backward(self, ops: Ops<State<DI>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [Some(parent)] = ops.parents else {
            return;
        };
        let g = crate::tensor::to_vec(Tensor::<DO>::from_primitive::<Flex>(g))
            .expect("the output's gradient");
        let dx = (ops.state.backward)(&g);
        let dx =
            Tensor::<DI>::from_data(TensorData::new(dx, ops.state.input_dims), &Device::flex())
                .try_into_primitive::<Flex>()
                .expect("a flex tensor");
        grads.register::<Flex>(parent.id, dx);
    }
}

/// `out` (of shape `dims`, computed from `x`'s values) as a result of `x` tracked by burn's
/// autodiff, its backward pass `backward`. `None` unless `x` is on the autodiff CPU device.
pub(crate) fn tracked<const DI: usize, const DO: usize>(
    x: &Tensor<DI>,
    out: Vec<f32>,
    dims: [usize; DO],
    backward: BackwardFn,
) -> Option<Tensor<DO>> {
    if !x.is_autodiff() || x.device() != Device::flex().autodiff() {
        return None;
    }
    let out = Tensor::<DO>::from_data(TensorData::new(out, dims), &Device::flex())
        .try_into_primitive::<Flex>()
        .ok()?;
    let xa = x.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let y = match CpuOp::<DI, DO>
        .prepare::<NoCheckpointing>([xa.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                backward,
                input_dims: x.dims(),
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::<DO>::from_primitive::<Autodiff<Flex>>(y))
}

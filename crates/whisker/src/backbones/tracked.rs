//! The CPU engine inside autodiff: pixels → features as one tracked operation. With frozen
//! weights (`attack`, `dream`, `robustness`) its backward pass is the engine's input gradient
//! ([`Plan::input_grad`]); when fine-tuning ([`train_features`]) it also gives every trainable
//! parameter its gradient ([`Plan::backward`]), BatchNorm folded or, with `--train-bn`,
//! normalising with batch statistics.

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
        // The tape and the feature gradient come from the forward pass of this same plan, so
        // their shapes agree; a failure here is a bug, not bad input.
        let dx = crate::tensor::to_vec(g)
            .and_then(|gv| plan.input_grad(&tape, &gv))
            .expect("the engine's input gradient");
        register(grads, parent.id, dx, &tape.input_dims());
    }
}

/// The flex backend's float tensor.
type FlexFloat = <Flex as burn_backend::BackendTypes>::FloatTensorPrimitive;

/// `plan`'s forward tape of `x` and its features `[n, dim]` as a flex tensor.
fn tape_and_features(plan: &Plan, x: &Tensor<4>, normalized: bool) -> Option<(Tape, FlexFloat)> {
    let v = crate::tensor::to_vec(x.clone().inner()).ok()?;
    let tape = plan.forward_tape(&v, x.dims(), normalized).ok()?;
    let n = tape.n();
    let f = tape.features().to_vec();
    let fd = f.len() / n.max(1);
    let out = Tensor::<2>::from_data(TensorData::new(f, [n, fd]), &Device::flex())
        .try_into_primitive::<Flex>()
        .ok()?;
    Some((tape, out))
}

/// Features `[n, dim]` of `x` (`[n, 3, h, w]` on the autodiff CPU device; pixels, or
/// normalised input when `normalized`), tracked so that gradients reach `x`. `None` when the
/// engine cannot serve it (the caller then uses burn).
pub(super) fn features(plan: &Arc<Plan>, x: Tensor<4>, normalized: bool) -> Option<Tensor<2>> {
    let (tape, out) = tape_and_features(plan, &x, normalized)?;
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

/// The engine for fine-tuning: pixels → features as one tracked operation whose backward pass
/// gives the input gradient (when the input takes one) and every trainable parameter's
/// gradient ([`Plan::backward`]), registered under the parameters' own autodiff nodes, where
/// burn's optimisers find them (`GradientsParams::from_module`).
#[derive(Debug)]
struct EngineTrain;

/// What the training backward pass needs: the plan, its tape, and the autodiff node of each
/// trainable parameter.
#[derive(Debug, Clone)]
struct TrainState {
    plan: Arc<Plan>,
    tape: Arc<Tape>,
    nodes: Arc<std::collections::HashMap<burn::module::ParamId, burn_autodiff::NodeId>>,
    input_grad: bool,
}

impl Backward<Flex, 2> for EngineTrain {
    type State = TrainState;

    fn backward(self, ops: Ops<TrainState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let g = Tensor::<2>::from_primitive::<Flex>(g);
        let TrainState {
            plan,
            tape,
            nodes,
            input_grad,
        } = ops.state;
        // The tape and the feature gradient come from the forward pass of this same plan, so
        // their shapes agree; a failure here is a bug, not bad input.
        let t = std::time::Instant::now();
        let (dx, pgrads) = crate::tensor::to_vec(g)
            .and_then(|gv| {
                // only the trainable parameters' gradients; nothing below the lowest of them
                let trainable = |id| nodes.contains_key(&id);
                plan.backward_for(&tape, &gv, input_grad, Some(&trainable))
            })
            .expect("the engine's backward pass");
        super::plan::profile_phase("backward", t);
        let t = std::time::Instant::now();
        for p in pgrads {
            if let Some(&id) = nodes.get(&p.id) {
                register(grads, id, p.values, &p.dims);
            }
        }
        if let (true, Some(parent)) = (input_grad, &ops.parents[0]) {
            register(grads, parent.id, dx, &tape.input_dims());
        }
        super::plan::profile_phase("gradients to burn", t);
    }
}

/// Register `values` (shaped `dims`, rank 1 to 4: the input and every parameter of the zoo,
/// a layer scale's `[c, 1, 1]` included) as the gradient of node `id`.
fn register(grads: &mut Gradients, id: burn_autodiff::NodeId, values: Vec<f32>, dims: &[usize]) {
    let d = TensorData::new(values, dims.to_vec());
    let device = Device::flex();
    let t = match dims.len() {
        1 => Tensor::<1>::from_data(d, &device).try_into_primitive::<Flex>(),
        2 => Tensor::<2>::from_data(d, &device).try_into_primitive::<Flex>(),
        3 => Tensor::<3>::from_data(d, &device).try_into_primitive::<Flex>(),
        4 => Tensor::<4>::from_data(d, &device).try_into_primitive::<Flex>(),
        r => panic!("a parameter of rank {r}"),
    };
    grads.register::<Flex>(id, t.expect("a flex tensor"));
}

/// Features `[n, dim]` of normalised input `x` (`[n, 3, h, w]`, on the CPU, taking no
/// gradient) through `net` compiled now with its current weights (BatchNorm folded with its
/// running statistics): the engine's forward pass alone. `None` when the engine cannot serve it.
pub(super) fn forward(
    net: &super::Net,
    norm: crate::data::transforms::Normalization,
    x: &Tensor<4>,
) -> Option<Tensor<2>> {
    run(&compile(net, norm)?, x)
}

/// `net` compiled for the engine's forward pass with its current weights (BatchNorm folded
/// with its running statistics); `None` when the engine cannot serve it.
pub(super) fn compile(
    net: &super::Net,
    norm: crate::data::transforms::Normalization,
) -> Option<Plan> {
    Plan::compile_net(net, norm, Default::default()).ok()
}

/// Features `[n, dim]` of `x` (on the CPU, taking no gradient) through a compiled `plan`.
pub(super) fn run(plan: &Plan, x: &Tensor<4>) -> Option<Tensor<2>> {
    let dims = x.dims();
    let v = if x.is_autodiff() {
        crate::tensor::to_vec(x.clone().inner()).ok()?
    } else {
        crate::tensor::to_vec(x.clone()).ok()?
    };
    let out = plan
        .run(
            &v,
            dims,
            true,
            false,
            &mut super::Taps::none(),
            &Device::flex(),
        )
        .ok()?;
    let fd = out.features.len() / out.n.max(1);
    let f = TensorData::new(out.features, [out.n, fd]);
    Some(Tensor::<2>::from_data(f, &x.device()))
}

/// `net` compiled now (its current weights), tracked so that every parameter of `net` that
/// takes gradients gets them from the engine; with `train_bn`, BatchNorms that train their
/// statistics use the batch's (and update their running ones). `None` when the engine cannot
/// serve it.
pub(super) fn train_features(
    net: &super::Net,
    norm: crate::data::transforms::Normalization,
    x: Tensor<4>,
    train_bn: bool,
) -> Option<Tensor<2>> {
    // the trainable parameters' own autodiff nodes (not of a view of them: a reshape would
    // be a new node)
    type Prim = <Autodiff<Flex> as burn_backend::BackendTypes>::FloatTensorPrimitive;
    struct Collect {
        nodes: std::collections::HashMap<burn::module::ParamId, burn_autodiff::NodeId>,
        first: Option<Prim>,
        failed: bool,
    }
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let v = p.val();
            if v.is_require_grad() {
                match v.try_into_primitive::<Autodiff<Flex>>() {
                    Ok(a) => {
                        self.nodes.insert(p.id, a.id());
                        self.first.get_or_insert(a);
                    }
                    Err(_) => self.failed = true,
                }
            }
        }
    }
    let mut c = Collect {
        nodes: std::collections::HashMap::new(),
        first: None,
        failed: false,
    };
    burn::module::Module::visit(net, &mut c);
    if c.failed {
        return None;
    }
    let (nodes, pa) = match (c.nodes, c.first) {
        (nodes, Some(pa)) => (nodes, pa),
        // nothing trainable (fastai's frozen first epoch) and no input gradient: the engine's
        // forward pass alone, its features a constant for the head
        (_, None) if !x.is_require_grad() => return forward(net, norm, &x),
        (_, None) => return None,
    };
    let opts = super::plan::PlanOptions {
        weight_grads: true,
        train_bn,
        ..Default::default()
    };
    let t = std::time::Instant::now();
    // told which parameters train: nothing below the lowest of them is packed for backward
    let input_grad = x.is_require_grad();
    let trains = |id| nodes.contains_key(&id);
    let trainable: Option<&dyn Fn(burn::module::ParamId) -> bool> =
        (!input_grad).then_some(&trains);
    let plan = Arc::new(Plan::compile_net_for(net, norm, opts, trainable).ok()?);
    super::plan::profile_phase("compile", t);
    let t = std::time::Instant::now();
    let (tape, out) = tape_and_features(&plan, &x, true)?;
    super::plan::profile_phase("forward tape", t);
    let xa = x.try_into_primitive::<Autodiff<Flex>>().ok()?;
    // a trainable parameter is the second parent: the op is tracked even when the images
    // take no gradient
    let y = match EngineTrain
        .prepare::<NoCheckpointing>([xa.node(), pa.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            TrainState {
                plan,
                tape: Arc::new(tape),
                nodes: Arc::new(nodes),
                input_grad,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::<2>::from_primitive::<Autodiff<Flex>>(y))
}

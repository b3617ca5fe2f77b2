//! Dynamic loss scaling for f16 mixed precision (`--precision f16`), as PyTorch's
//! `GradScaler`: IEEE half flushes magnitudes below 6e-8 to zero, where many of a network's
//! gradients live. The loss is multiplied by a large scale before the backward pass, and the
//! gradients divided by it before the optimizer sees them. A step whose gradients overflowed
//! (inf or NaN) is skipped and the scale halved; after [`GROWTH_INTERVAL`] good steps in a row
//! it doubles. bf16 keeps f32's exponent range and needs none of this.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbones::layers::{arith, Arith};
use crate::error::Result;

/// The first scale (PyTorch's default, 2^16).
pub const INIT_SCALE: f32 = 65536.0;
/// Good steps in a row before the scale doubles (PyTorch's default).
pub const GROWTH_INTERVAL: u32 = 2000;

/// The scale and the count of good steps since it last changed: part of a checkpoint, so a
/// resumed run continues with the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    pub good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }
}

/// Whether training on `device` needs loss scaling: its convolutions and matrix products run
/// in f16.
pub fn needed(device: &Device) -> bool {
    arith(device) == Arith::Cast(FloatDType::F16)
}

impl LossScaler {
    /// The loss to differentiate: `loss · scale`.
    pub fn scale_loss(&self, loss: Tensor<1>) -> Tensor<1> {
        loss * self.scale
    }

    /// Start dividing gradients by the scale (see [`Unscaling::apply`]).
    pub fn unscaling(&self) -> Unscaling {
        Unscaling {
            inv: 1.0 / self.scale,
            check: None,
        }
    }

    /// After a step: halve the scale when the gradients were not finite (the step was
    /// skipped), double it after [`GROWTH_INTERVAL`] good steps.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(f32::MAX / 2.0);
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(1.0 / 65536.0);
            self.good_steps = 0;
        }
    }
}

/// Gradients being divided by the scale, with one device value that turns NaN when any of
/// them is not finite (Σ g·0), read once at the end.
pub struct Unscaling {
    inv: f32,
    check: Option<Tensor<1>>,
}

impl Unscaling {
    /// Divide the gradients of `module`'s parameters in `grads` by the scale.
    pub fn apply<M: Module>(&mut self, grads: &mut GradientsParams, module: &M) {
        module.visit(&mut Visit { grads, u: self });
    }

    /// Whether every gradient was finite (one read from the device).
    pub fn finish(self) -> Result<bool> {
        match self.check {
            None => Ok(true),
            Some(c) => Ok(crate::tensor::to_vec(c)?
                .first()
                .is_some_and(|v| v.is_finite())),
        }
    }
}

struct Visit<'a> {
    grads: &'a mut GradientsParams,
    u: &'a mut Unscaling,
}

impl ModuleVisitor for Visit<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(p.id) {
            let g = g * self.u.inv;
            let zero = (g.clone() * 0.0).sum();
            self.u.check = Some(match self.u.check.take() {
                Some(c) => c + zero,
                None => zero,
            });
            self.grads.register(p.id, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_good_steps() {
        let mut s = LossScaler::default();
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!((s.scale, s.good_steps), (32768.0, GROWTH_INTERVAL - 1));
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
    }

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    #[test]
    fn gradients_are_divided_and_overflow_is_seen() {
        let device = Device::flex().autodiff();
        let t2 = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [2, 2]), &device);
        let m = Two {
            a: Param::from_tensor(t2(vec![1.0, 2.0, 3.0, 4.0])),
            b: Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(vec![0.5f32, -1.0], [2]),
                &device,
            )),
        };
        let s = LossScaler {
            scale: 1024.0,
            good_steps: 0,
        };
        let run = |big: f32| {
            // loss = big·Σa² + Σb: d/da = 2·big·a, d/db = 1
            let loss = (m.a.val() * m.a.val()).sum() * big + m.b.val().sum();
            let mut g = s.scale_loss(loss).backward();
            let mut g = GradientsParams::from_module(&mut g, &m);
            let mut u = s.unscaling();
            u.apply(&mut g, &m);
            let ga = crate::tensor::to_vec(g.get::<2>(m.a.id).unwrap()).unwrap();
            let gb = crate::tensor::to_vec(g.get::<1>(m.b.id).unwrap()).unwrap();
            (ga, gb, u.finish().unwrap())
        };
        let (ga, gb, ok) = run(1.0);
        assert_eq!(ga, vec![2.0, 4.0, 6.0, 8.0]);
        assert_eq!(gb, vec![1.0, 1.0]);
        assert!(ok);
        // 1e36 · 1024 · 8 overflows f32: the step must be seen as not finite
        let (_, _, ok) = run(1e36);
        assert!(!ok);
    }
}

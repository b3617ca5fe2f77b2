//! AdamW on flat f32 vectors, written once: the MLP head's optimiser, and the image
//! optimiser of `dream` and the Carlini–Wagner attack (no weight decay there). Moments are
//! stored in f32, the arithmetic is f64, as PyTorch's `AdamW` (decoupled weight decay,
//! bias-corrected moments). Fine-tuning uses burn's AdamW on the network's tensors.

use serde::{Deserialize, Serialize};

/// Adam's constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// One AdamW step (step number `t`, from 1) of `p` with gradient `g`; `m`, `v` are its
/// moments. A missing gradient entry counts as 0.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    t: i32,
    lr: f64,
    weight_decay: f64,
    a: AdamParams,
) {
    let (b1, b2) = (a.beta1, a.beta2);
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    for j in 0..p.len() {
        let gj = g.get(j).copied().unwrap_or(0.0) as f64;
        let mut pj = p[j] as f64 * (1.0 - lr * weight_decay);
        let mj = b1 * m[j] as f64 + (1.0 - b1) * gj;
        let vj = b2 * v[j] as f64 + (1.0 - b2) * gj * gj;
        m[j] = mj as f32;
        v[j] = vj as f32;
        pj -= lr * (mj / bc1) / ((vj / bc2).sqrt() + a.eps);
        p[j] = pj as f32;
    }
}

/// Adam (no weight decay) on one vector, keeping its own moments and step count.
#[derive(Debug, Clone)]
pub struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    pub fn new(n: usize) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One step of `params` down the gradient `grads`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        self.t += 1;
        adamw_step(
            params,
            &mut self.m,
            &mut self.v,
            grads,
            self.t,
            lr,
            0.0,
            AdamParams::default(),
        );
    }
}

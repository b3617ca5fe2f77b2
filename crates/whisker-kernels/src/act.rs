//! Activation functions applied in the epilogues, written as PyTorch computes them.

/// An activation fused into a kernel's epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    None,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x · min(max(x + 3, 0), 6) / 6`.
    Hardswish,
    /// `min(max(x + 3, 0), 6) / 6`.
    Hardsigmoid,
}

impl Act {
    /// The activation of one value (the reference every vector path matches).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::None => x,
            Act::Relu => x.max(0.0),
            Act::Relu6 => x.clamp(0.0, 6.0),
            Act::Hardswish => x * ((x + 3.0).clamp(0.0, 6.0) / 6.0),
            Act::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }
}

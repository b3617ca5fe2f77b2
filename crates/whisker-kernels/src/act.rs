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
    /// `x · Φ(x) = x/2 · (1 + erf(x/√2))`: PyTorch's default (exact) GELU, with erf as its CPU
    /// kernels compute it ([`erf`]).
    Gelu,
    /// SiLU (swish), `x · σ(x) = x / (1 + e^−x)`, as PyTorch's CPU kernels compute it.
    Silu,
    /// The logistic sigmoid `σ(x) = 1 / (1 + e^−x)`.
    Sigmoid,
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
            Act::Gelu => gelu(x),
            Act::Silu => silu(x),
            Act::Sigmoid => sigmoid(x),
        }
    }

    /// Whether the activation is a pass of its own over a kernel's result rather than part of
    /// its epilogue: the ones built on `exp` (GELU, SiLU, sigmoid), whose code inlined into a
    /// micro-kernel pushed its accumulators to the stack (see `simd::Vf::act`).
    pub fn is_pass(self) -> bool {
        matches!(self, Act::Gelu | Act::Silu | Act::Sigmoid)
    }
}

// erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), the formula and constants of
// PyTorch's vectorised CPU erf; the vector paths (`simd::Vf::erf`) run the same operations
// in the same order, so every path gives the same bits.
pub(crate) const ERF_P: f32 = 0.327_591_1;
pub(crate) const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152,
    1.061_405_4,
];
// exp by Cephes' `expf`: x = n·ln 2 + r (ln 2 in two parts), a degree-5 polynomial in r
pub(crate) const EXP_LO: f32 = -87.336_55;
pub(crate) const EXP_HI: f32 = 88.0;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
pub(crate) const EXP_C: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `eˣ` (Cephes' `expf`, within 2 ulp), x clamped to [−87.3, 88] (no infinities, no
/// subnormals): the scalar twin of
/// the vector paths' exp.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_C[0];
    for &c in &EXP_C[1..] {
        p = p.mul_add(r, c);
    }
    let y = (p * r).mul_add(r, r) + 1.0;
    y * pow2(n)
}

/// `2ⁿ` for an integral `n` in [−126, 127].
#[inline(always)]
pub(crate) fn pow2(n: f32) -> f32 {
    f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// erf (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7), as PyTorch's CPU kernels compute it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / ERF_P.mul_add(a, 1.0);
    let mut r = ERF_A[4];
    for &c in ERF_A[..4].iter().rev() {
        r = r.mul_add(t, c);
    }
    let r = r * t;
    let y = 1.0 - r * exp(-(a * a));
    y.copysign(x)
}

/// GELU, `x/2 · (1 + erf(x/√2))`. Not inlined: in a kernel's scalar tail LLVM vectorised it
/// and pushed the kernel's vectors to the stack (tools/check-spills.py).
#[inline(never)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU, `x / (1 + e^−x)` (PyTorch's CPU formula). Not inlined (see [`gelu`]).
#[inline(never)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The logistic sigmoid, `1 / (1 + e^−x)` (PyTorch's CPU formula), subnormal results flushed
/// to zero ([`flush`]: a gate below 1.2e-38 is closed either way). Not inlined (see [`gelu`]).
#[inline(never)]
pub fn sigmoid(x: f32) -> f32 {
    flush(1.0 / (1.0 + exp(-x)))
}

/// `x`, or zero where `x` is subnormal (|x| < 2⁻¹²⁶; NaN is kept). The outputs that can
/// fall below the normal range — a closed sigmoid gate, a channel scaled by it, a softmax
/// weight of a far-off token — are flushed where they are made: a subnormal operand costs
/// a microcode assist in every later multiply on Intel (efficientnet_v2_s, formula
/// weights, batch 1: 9.8 images/s with its squeeze-excitation outputs subnormal, 11.2
/// flushed), and Rust cannot soundly set the CPU's flush-to-zero mode instead. What is lost
/// is below 1.2e-38 in absolute value.
#[inline(always)]
pub fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// `act` over `out` in place, in parallel chunks, on the `isa` path: the same bits on every
/// path (the vector paths run [`Act::apply`]'s operations in its order).
pub fn act_in_place(isa: crate::Isa, act: Act, out: &mut [f32]) {
    use rayon::prelude::*;
    if act == Act::None {
        return;
    }
    out.par_chunks_mut(1 << 14).for_each(|c| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
        crate::Isa::AVX512 => unsafe { act_avx512(act, c) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        crate::Isa::AVX2 => unsafe { act_avx2(act, c) },
        _ => c.iter_mut().for_each(|v| *v = act.apply(*v)),
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn act_avx512(act: Act, c: &mut [f32]) {
    // SAFETY: called only where the CPU has AVX-512F.
    unsafe { act_vec::<crate::simd::F512>(act, c) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn act_avx2(act: Act, c: &mut [f32]) {
    // SAFETY: called only where the CPU has AVX2 and FMA.
    unsafe { act_vec::<crate::simd::F256>(act, c) }
}

/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn act_vec<V: crate::simd::Vf>(act: Act, c: &mut [f32]) {
    // SAFETY: the caller's contract covers the vector operations.
    unsafe {
        match act {
            Act::Gelu => map_vec::<V>(c, |v| V::gelu(v), gelu),
            Act::Silu => map_vec::<V>(c, |v| V::silu(v), silu),
            Act::Sigmoid => map_vec::<V>(c, |v| V::sigmoid(v), sigmoid),
            a => map_vec::<V>(c, |v| V::act(a, v), |x| a.apply(x)),
        }
    }
}

/// `c[i] ← f(c[i])`, whole vectors with `f`, the tail with its scalar twin `s`.
///
/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it; `f` uses only
/// that set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn map_vec<V: crate::simd::Vf>(c: &mut [f32], f: impl Fn(V) -> V, s: impl Fn(f32) -> f32) {
    // SAFETY: the caller's contract; whole vectors below `full`, scalars after.
    unsafe {
        let full = c.len() - c.len() % V::L;
        let p = c.as_mut_ptr();
        let mut i = 0;
        while i < full {
            V::store_n(p.add(i), f(V::load_n(p.add(i), V::L)), V::L);
            i += V::L;
        }
        for v in &mut c[full..] {
            *v = s(*v);
        }
    }
}

/// An activation's backward pass in place, from its input `z`: `g ← g · act′(z)`, in
/// parallel chunks on the `isa` path. GELU, SiLU and sigmoid run vectorised in f32 (erf and
/// exp as in the forward pass; within a few ulp of [`act_grad`]), the others as [`act_grad`].
pub fn act_backward(isa: crate::Isa, act: Act, g: &mut [f32], z: &[f32]) {
    use rayon::prelude::*;
    if act == Act::None {
        return;
    }
    g.par_chunks_mut(1 << 14)
        .zip(z.par_chunks(1 << 14))
        .for_each(|(g, z)| match (isa, act.is_pass()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Isa` token for this path exists only where the CPU has the feature.
            (crate::Isa::AVX512, true) => unsafe { bw_avx512(act, g, z) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (crate::Isa::AVX2, true) => unsafe { bw_avx2(act, g, z) },
            _ => g
                .iter_mut()
                .zip(z)
                .for_each(|(g, &z)| *g *= act_grad(act, z)),
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn bw_avx512(act: Act, g: &mut [f32], z: &[f32]) {
    // SAFETY: called only where the CPU has AVX-512F.
    unsafe { bw_vec::<crate::simd::F512>(act, g, z) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bw_avx2(act: Act, g: &mut [f32], z: &[f32]) {
    // SAFETY: called only where the CPU has AVX2 and FMA.
    unsafe { bw_vec::<crate::simd::F256>(act, g, z) }
}

/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bw_vec<V: crate::simd::Vf>(act: Act, g: &mut [f32], z: &[f32]) {
    // SAFETY: the caller's contract covers the vector operations.
    unsafe {
        let one = V::splat(1.0);
        match act {
            Act::Gelu => {
                let (half, rsqrt2) = (V::splat(0.5), V::splat(std::f32::consts::FRAC_1_SQRT_2));
                let inv_sqrt_2pi = V::splat(0.398_942_3);
                zip_vec::<V>(g, z, act, |x| {
                    // erf(x/√2) and, on the way, e^(−x²/2): φ's exponential
                    let (erf, e) = V::erf_exp(V::mul(x, rsqrt2));
                    let cdf = V::mul(half, V::add(one, erf));
                    V::fma(x, V::mul(inv_sqrt_2pi, e), cdf)
                })
            }
            // σ(z)·(1 + z·(1 − σ(z))), PyTorch's silu_backward
            Act::Silu => zip_vec::<V>(g, z, act, |x| {
                let s = V::sigmoid(x);
                V::mul(s, V::fma(x, V::sub(one, s), one))
            }),
            _ => zip_vec::<V>(g, z, act, |x| {
                let s = V::sigmoid(x);
                V::mul(s, V::sub(one, s))
            }),
        }
    }
}

/// `g[i] ← g[i] · d(z[i])`, whole vectors with `d`, the tail with [`act_grad`].
///
/// # Safety
/// Inside a function compiled for `V`'s instruction set, on a CPU that has it; `d` uses only
/// that set.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn zip_vec<V: crate::simd::Vf>(g: &mut [f32], z: &[f32], act: Act, d: impl Fn(V) -> V) {
    // SAFETY: the caller's contract; whole vectors below `full`, scalars after.
    unsafe {
        let n = g.len().min(z.len());
        let full = n - n % V::L;
        let (gp, zp) = (g.as_mut_ptr(), z.as_ptr());
        let mut i = 0;
        while i < full {
            let dv = d(V::load_n(zp.add(i), V::L));
            V::store_n(gp.add(i), V::mul(V::load_n(gp.add(i), V::L), dv), V::L);
            i += V::L;
        }
        for j in full..n {
            g[j] *= act_grad(act, z[j]);
        }
    }
}

/// An activation's derivative at its input `z` (PyTorch's conventions at the kinks: ReLU's
/// is 0 at 0; hardswish's as `hardswish_backward`); the transcendental ones in f64. Not
/// inlined (see [`gelu`]).
#[inline(never)]
pub fn act_grad(act: Act, z: f32) -> f32 {
    let s = || 1.0 / (1.0 + (-(z as f64)).exp());
    match act {
        Act::None => 1.0,
        Act::Relu => (z > 0.0) as u8 as f32,
        Act::Relu6 => (z > 0.0 && z < 6.0) as u8 as f32,
        Act::Hardswish => {
            if z < -3.0 {
                0.0
            } else if z <= 3.0 {
                z / 3.0 + 0.5
            } else {
                1.0
            }
        }
        Act::Hardsigmoid => {
            if z > -3.0 && z < 3.0 {
                1.0 / 6.0
            } else {
                0.0
            }
        }
        Act::Gelu => gelu_grad(z),
        Act::Silu => {
            let s = s();
            (s * (1.0 + z as f64 * (1.0 - s))) as f32
        }
        Act::Sigmoid => {
            let s = s();
            (s * (1.0 - s)) as f32
        }
    }
}

/// GELU's derivative `Φ(x) + x·φ(x)`, in f64 (backward passes). Not inlined (see [`gelu`]).
#[inline(never)]
pub fn gelu_grad(x: f32) -> f32 {
    let x = x as f64;
    let cdf = 0.5 * (1.0 + erf(x as f32 * std::f32::consts::FRAC_1_SQRT_2) as f64);
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (cdf + x * pdf) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf and exp against f64 references over their range: erf within A&S's bound plus
    /// f32 rounding, exp within a few ulp; GELU's derivative against a central difference.
    #[test]
    fn erf_exp_and_gelu_are_accurate() {
        let mut worst_erf = (0f64, 0f32);
        let mut worst_exp = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4; // [-6, 6]
            let e = erf(x) as f64;
            let d = (e - libm_erf(x as f64)).abs();
            if d > worst_erf.0 {
                worst_erf = (d, x);
            }
            let y = x * 14.0; // [-84, 84]
            let want = (y as f64).exp();
            worst_exp = worst_exp.max(((exp(y) as f64 - want) / want).abs());
        }
        // A&S's 1.5e-7, plus the formula evaluated in f32 (the alternating polynomial loses
        // a few ulp): PyTorch's vectorised erf is the same f32 formula
        assert!(worst_erf.0 <= 5e-7, "erf off by {worst_erf:?}");
        assert!(worst_exp <= 3.0e-7, "exp off by {worst_exp} (relative)");
        for i in -400..=400 {
            let x = i as f32 * 0.01;
            let h = 1e-3f64;
            let f = |v: f64| 0.5 * v * (1.0 + libm_erf(v / std::f64::consts::SQRT_2));
            let num = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
            assert!((gelu_grad(x) as f64 - num).abs() < 1e-5, "{x}");
            assert!((gelu(x) as f64 - f(x as f64)).abs() <= 1e-6 * (1.0 + (x as f64).abs()));
        }
        assert_eq!(exp(-1000.0), exp(EXP_LO));
        assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(-20.0), -0.0);
    }

    /// erf in f64 (W. J. Cody's rational approximations are not in std: a series and a
    /// continued fraction, accurate to ~1e-15 here).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 3.0 {
            // Maclaurin series
            let mut sum = 0f64;
            let mut term = a;
            let mut k = 0f64;
            while term.abs() > 1e-17 * sum.abs().max(1e-300) || k < 5.0 {
                sum += term / (2.0 * k + 1.0);
                k += 1.0;
                term *= -a * a / k;
                if k > 200.0 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // continued fraction for erfc
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        v.copysign(x)
    }
}

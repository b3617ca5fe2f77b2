//! A small vector abstraction over AVX-512F (16 lanes) and AVX2+FMA (8 lanes), so a kernel is
//! written once and instantiated per ISA inside a `#[target_feature]` function.
//!
//! Every method is `#[inline(always)]`: a kernel generic over [`Vf`] must itself be
//! `#[inline(always)]` and be called from a function compiled with the matching
//! `#[target_feature(enable = ...)]`, so the intrinsics inline into code that may use them.
//! Calling these methods from anywhere else is undefined behaviour on a CPU without the
//! feature (hence `unsafe`).

use std::arch::x86_64::*;

use crate::Act;

/// A vector of `f32` lanes.
pub(crate) trait Vf: Copy {
    /// Lanes.
    const L: usize;
    /// Whether partial vectors (the last `n < L` lanes) can be loaded and stored with a mask;
    /// when not, callers handle a channel tail with scalar code.
    const MASKED: bool;
    /// The lanes `[0, n)` selected (`n ≥ L`: all). Only meaningful when `MASKED`.
    type Mask: Copy;

    unsafe fn mask(n: usize) -> Self::Mask;
    unsafe fn splat(v: f32) -> Self;
    /// Load `L` lanes (those outside the mask read as zero, and are not touched in memory).
    unsafe fn load(m: Self::Mask, p: *const f32) -> Self;
    /// Store the lanes in the mask.
    unsafe fn store(m: Self::Mask, p: *mut f32, v: Self);
    /// Load the first `n ≤ L` lanes (the others read as zero, and are not touched in memory).
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            if n >= Self::L || Self::MASKED {
                Self::load(Self::mask(n), p)
            } else {
                let mut t = [0f32; 16];
                std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n);
                Self::load(Self::mask(Self::L), t.as_ptr())
            }
        }
    }
    /// Store the first `n ≤ L` lanes.
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: Self, n: usize) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            if n >= Self::L || Self::MASKED {
                Self::store(Self::mask(n), p, v)
            } else {
                let mut t = [0f32; 16];
                Self::store(Self::mask(Self::L), t.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
            }
        }
    }
    /// `a · b + c`, rounded once.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn div(a: Self, b: Self) -> Self;
    unsafe fn max(a: Self, b: Self) -> Self;
    unsafe fn min(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn abs(a: Self) -> Self;
    /// To the nearest integer, ties to even.
    unsafe fn round(a: Self) -> Self;
    /// `2ⁿ` for integral `n` in [−126, 127].
    unsafe fn pow2(n: Self) -> Self;
    /// `|mag|` with the sign of `sign`.
    unsafe fn copysign(mag: Self, sign: Self) -> Self;
    /// Subnormal lanes set to zero, the others (NaN too) kept: [`crate::act::flush`].
    unsafe fn flush(a: Self) -> Self;

    /// GELU, `x/2 · (1 + erf(x/√2))`, the operations of [`crate::act::gelu`] in its order.
    #[inline(always)]
    unsafe fn gelu(y: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let z = Self::mul(y, Self::splat(std::f32::consts::FRAC_1_SQRT_2));
            let h = Self::mul(Self::splat(0.5), y);
            Self::mul(h, Self::add(Self::splat(1.0), Self::erf(z)))
        }
    }

    /// SiLU, `x / (1 + e^−x)`, the operations of [`crate::act::silu`] in its order.
    #[inline(always)]
    unsafe fn silu(x: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let e = Self::exp(Self::sub(Self::splat(0.0), x));
            Self::div(x, Self::add(Self::splat(1.0), e))
        }
    }

    /// The sigmoid, `1 / (1 + e^−x)`, the operations of [`crate::act::sigmoid`] in its order.
    #[inline(always)]
    unsafe fn sigmoid(x: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let one = Self::splat(1.0);
            let e = Self::exp(Self::sub(Self::splat(0.0), x));
            Self::flush(Self::div(one, Self::add(one, e)))
        }
    }

    /// `eˣ`, the operations of [`crate::act::exp`] in its order (the same bits).
    #[inline(always)]
    unsafe fn exp(x: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            use crate::act::{EXP_C, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E};
            let x = Self::min(Self::max(x, Self::splat(EXP_LO)), Self::splat(EXP_HI));
            let n = Self::round(Self::mul(x, Self::splat(LOG2E)));
            let r = Self::fma(n, Self::splat(-LN2_HI), x);
            let r = Self::fma(n, Self::splat(-LN2_LO), r);
            let mut p = Self::splat(EXP_C[0]);
            for &c in &EXP_C[1..] {
                p = Self::fma(p, r, Self::splat(c));
            }
            let y = Self::add(Self::fma(Self::mul(p, r), r, r), Self::splat(1.0));
            Self::mul(y, Self::pow2(n))
        }
    }

    /// erf, the operations of [`crate::act::erf`] in its order (the same bits).
    #[inline(always)]
    unsafe fn erf(x: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { Self::erf_exp(x).0 }
    }

    /// `(erf(x), e^(−x²))`: erf as [`Vf::erf`], and the exponential it computes on the way.
    #[inline(always)]
    unsafe fn erf_exp(x: Self) -> (Self, Self) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            use crate::act::{ERF_A, ERF_P};
            let one = Self::splat(1.0);
            let a = Self::abs(x);
            let t = Self::div(one, Self::fma(Self::splat(ERF_P), a, one));
            let mut r = Self::splat(ERF_A[4]);
            for &c in ERF_A[..4].iter().rev() {
                r = Self::fma(r, t, Self::splat(c));
            }
            let r = Self::mul(r, t);
            let e = Self::exp(Self::sub(Self::splat(0.0), Self::mul(a, a)));
            let y = Self::sub(one, Self::mul(r, e));
            (Self::copysign(y, x), e)
        }
    }

    /// The activation, lane by lane, with the operations of [`Act::apply`] in its order (the
    /// same bits) — except the activations built on `exp` ([`Act::is_pass`]), which are not an
    /// epilogue's: they pass `y` through, and the kernels' entry points run
    /// [`crate::act::act_in_place`] after them.
    #[inline(always)]
    unsafe fn act(act: Act, y: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let zero = Self::splat(0.0);
            let six = Self::splat(6.0);
            match act {
                Act::None => y,
                Act::Relu => Self::max(y, zero),
                Act::Relu6 => Self::min(Self::max(y, zero), six),
                Act::Hardswish => {
                    let h = Self::min(Self::max(Self::add(y, Self::splat(3.0)), zero), six);
                    Self::mul(y, Self::div(h, six))
                }
                Act::Hardsigmoid => {
                    let h = Self::min(Self::max(Self::add(y, Self::splat(3.0)), zero), six);
                    Self::div(h, six)
                }
                // never applied in an epilogue: `conv2d` and `depthwise` run them as a pass
                // of their own over their output (`act::act_in_place`), and a fused block
                // refuses them. GELU's code inlined into a micro-kernel (or called from it) pushed
                // the live accumulators to the stack, halving the GEMM (tools/check-spills.py).
                Act::Gelu | Act::Silu | Act::Sigmoid => y,
            }
        }
    }
}

/// AVX-512F: 16 lanes, masked loads and stores.
#[derive(Clone, Copy)]
pub(crate) struct F512(pub(crate) __m512);

impl Vf for F512 {
    const L: usize = 16;
    const MASKED: bool = true;
    type Mask = __mmask16;

    #[inline(always)]
    unsafe fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(m: __mmask16, p: *const f32) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_maskz_loadu_ps(m, p)) }
    }
    #[inline(always)]
    unsafe fn store(m: __mmask16, p: *mut f32, v: Self) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { _mm512_mask_storeu_ps(p, m, v.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_fmadd_ps(a.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_mul_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_div_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_min_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_sub_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn abs(a: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F512(_mm512_abs_ps(a.0)) }
    }
    #[inline(always)]
    unsafe fn round(a: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            F512(_mm512_roundscale_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(a.0))
        }
    }
    #[inline(always)]
    unsafe fn pow2(n: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let i = _mm512_add_epi32(_mm512_cvtps_epi32(n.0), _mm512_set1_epi32(127));
            F512(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(i)))
        }
    }
    #[inline(always)]
    unsafe fn copysign(mag: Self, sign: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let m = _mm512_set1_epi32(i32::MIN);
            let s = _mm512_and_epi32(_mm512_castps_si512(sign.0), m);
            let a = _mm512_andnot_epi32(m, _mm512_castps_si512(mag.0));
            F512(_mm512_castsi512_ps(_mm512_or_epi32(a, s)))
        }
    }
    #[inline(always)]
    unsafe fn flush(a: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            // |a| < the smallest normal: ordered, so a NaN is not selected
            let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(
                _mm512_abs_ps(a.0),
                _mm512_set1_ps(f32::MIN_POSITIVE),
            );
            F512(_mm512_mask_mov_ps(a.0, tiny, _mm512_setzero_ps()))
        }
    }
}

/// AVX2 + FMA: 8 lanes, whole vectors only.
#[derive(Clone, Copy)]
pub(crate) struct F256(pub(crate) __m256);

impl Vf for F256 {
    const L: usize = 8;
    const MASKED: bool = false;
    type Mask = ();

    #[inline(always)]
    unsafe fn mask(_: usize) {}
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(_: (), p: *const f32) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(_: (), p: *mut f32, v: Self) {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { _mm256_storeu_ps(p, v.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_fmadd_ps(a.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_add_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_mul_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_div_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_max_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn min(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_min_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_sub_ps(a.0, b.0)) }
    }
    #[inline(always)]
    unsafe fn abs(a: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe { F256(_mm256_andnot_ps(_mm256_set1_ps(-0.0), a.0)) }
    }
    #[inline(always)]
    unsafe fn round(a: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            F256(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(a.0))
        }
    }
    #[inline(always)]
    unsafe fn pow2(n: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let i = _mm256_add_epi32(_mm256_cvtps_epi32(n.0), _mm256_set1_epi32(127));
            F256(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(i)))
        }
    }
    #[inline(always)]
    unsafe fn copysign(mag: Self, sign: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let m = _mm256_set1_ps(-0.0);
            F256(_mm256_or_ps(
                _mm256_andnot_ps(m, mag.0),
                _mm256_and_ps(m, sign.0),
            ))
        }
    }
    #[inline(always)]
    unsafe fn flush(a: Self) -> Self {
        // SAFETY: this function's own contract (its `# Safety` or the caller's checks) covers
        // every operation in it; the ISA paths are reached only through a checked `Isa` token.
        unsafe {
            let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), a.0);
            // |a| < the smallest normal: ordered, so a NaN is not selected
            let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(abs, _mm256_set1_ps(f32::MIN_POSITIVE));
            F256(_mm256_andnot_ps(tiny, a.0))
        }
    }
}

//! Naive reference implementations (NHWC, f64 accumulation) the tests compare every kernel
//! path against.

use crate::{Act, ConvShape};

/// Direct convolution, groups = 1 or depthwise (`groups == cin == cout`), weight
/// `[cout, cin/groups, kh, kw]`, NHWC in and out.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    s: &ConvShape,
    cin: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    cout: usize,
    kh: usize,
    kw: usize,
    groups: usize,
    residual: Option<&[f32]>,
    act: Act,
) -> Vec<f32> {
    let (oh, ow) = s.out_hw(kh, kw).expect("shape");
    let cpg = cin / groups;
    let opg = cout / groups;
    let mut out = vec![0f32; s.n * oh * ow * cout];
    for b in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..cout {
                    let g = o / opg;
                    let mut acc = bias.map(|b| b[o] as f64).unwrap_or(0.0);
                    for ky in 0..kh {
                        let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                            if ix < 0 || ix >= s.w as isize {
                                continue;
                            }
                            for c in 0..cpg {
                                let xv = x[((b * s.h + iy as usize) * s.w + ix as usize) * cin
                                    + g * cpg
                                    + c];
                                let wv = weight[((o * cpg + c) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let i = ((b * oh + oy) * ow + ox) * cout + o;
                    if let Some(r) = residual {
                        acc += r[i] as f64;
                    }
                    out[i] = act.apply(acc as f32);
                }
            }
        }
    }
    out
}

/// The input gradient of [`conv2d`] (no activation: `g` is the gradient of the linear output)
/// for `g` `[n, oh, ow, cout]`, NHWC `[n, h, w, cin]` out.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_input_grad(
    g: &[f32],
    s: &ConvShape,
    cin: usize,
    weight: &[f32],
    cout: usize,
    kh: usize,
    kw: usize,
    groups: usize,
) -> Vec<f32> {
    let (oh, ow) = s.out_hw(kh, kw).expect("shape");
    let cpg = cin / groups;
    let opg = cout / groups;
    let mut dx = vec![0f64; s.n * s.h * s.w * cin];
    for b in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..cout {
                    let gv = g[((b * oh + oy) * ow + ox) * cout + o] as f64;
                    let grp = o / opg;
                    for ky in 0..kh {
                        let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                            if ix < 0 || ix >= s.w as isize {
                                continue;
                            }
                            for c in 0..cpg {
                                let wv = weight[((o * cpg + c) * kh + ky) * kw + kx] as f64;
                                dx[((b * s.h + iy as usize) * s.w + ix as usize) * cin
                                    + grp * cpg
                                    + c] += gv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// The weight gradient of [`conv2d`] (`[cout, cin/groups, kh, kw]`) and its bias gradient,
/// for input `x` NHWC `[n, h, w, cin]` and output gradient `g` `[n, oh, ow, cout]`, in f64.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_weight_grad(
    x: &[f32],
    s: &ConvShape,
    cin: usize,
    g: &[f32],
    cout: usize,
    kh: usize,
    kw: usize,
    groups: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (oh, ow) = s.out_hw(kh, kw).expect("shape");
    let cpg = cin / groups;
    let opg = cout / groups;
    let mut dw = vec![0f64; cout * cpg * kh * kw];
    let mut db = vec![0f64; cout];
    for b in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..cout {
                    let gv = g[((b * oh + oy) * ow + ox) * cout + o] as f64;
                    db[o] += gv;
                    let grp = o / opg;
                    for ky in 0..kh {
                        let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * s.stride + kx) as isize - s.pad[2] as isize;
                            if ix < 0 || ix >= s.w as isize {
                                continue;
                            }
                            for c in 0..cpg {
                                let xv = x[((b * s.h + iy as usize) * s.w + ix as usize) * cin
                                    + grp * cpg
                                    + c] as f64;
                                dw[((o * cpg + c) * kh + ky) * kw + kx] += gv * xv;
                            }
                        }
                    }
                }
            }
        }
    }
    (
        dw.into_iter().map(|v| v as f32).collect(),
        db.into_iter().map(|v| v as f32).collect(),
    )
}

/// LayerNorm of each row of `x` (`[rows, c]`) in `f64`: `(x − μ)/√(σ²+ε)·γ + β`.
pub fn layer_norm(x: &[f32], c: usize, gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (o, row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
        let r = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            o[j] = ((row[j] as f64 - m) * r * gamma[j] as f64 + beta[j] as f64) as f32;
        }
    }
    out
}

/// The gradients of [`layer_norm`] in `f64`: `(dx, dγ, dβ)` from the output gradient `g`.
pub fn layer_norm_backward(
    x: &[f32],
    g: &[f32],
    c: usize,
    gamma: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    let (mut dg, mut db) = (vec![0f64; c], vec![0f64; c]);
    for ((d, row), grow) in dx
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(g.chunks_exact(c))
    {
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
        let r = 1.0 / (var + eps).sqrt();
        let xh: Vec<f64> = row.iter().map(|&v| (v as f64 - m) * r).collect();
        let dd: Vec<f64> = (0..c).map(|j| grow[j] as f64 * gamma[j] as f64).collect();
        let a = dd.iter().sum::<f64>() / c as f64;
        let b = dd.iter().zip(&xh).map(|(p, q)| p * q).sum::<f64>() / c as f64;
        for j in 0..c {
            d[j] = (r * (dd[j] - a - xh[j] * b)) as f32;
            dg[j] += grow[j] as f64 * xh[j];
            db[j] += grow[j] as f64;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (dx, f(dg), f(db))
}

/// Multi-head self-attention, naive, in `f64`: `qkv` `[n, t, 3·heads·d]` → `[n, t, heads·d]`,
/// `softmax(q·kᵀ·scale)·v` per image and head.
pub fn attention(qkv: &[f32], n: usize, t: usize, heads: usize, d: usize, scale: f32) -> Vec<f32> {
    let c = heads * d;
    let mut out = vec![0f32; n * t * c];
    let at = |b: usize, tok: usize, which: usize, h: usize, i: usize| {
        qkv[(b * t + tok) * 3 * c + which * c + h * d + i] as f64
    };
    for b in 0..n {
        for h in 0..heads {
            for i in 0..t {
                let s: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..d)
                            .map(|e| at(b, i, 0, h, e) * at(b, j, 1, h, e))
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for k in 0..d {
                    let v: f64 = (0..t).map(|j| e[j] / z * at(b, j, 2, h, k)).sum();
                    out[(b * t + i) * c + h * d + k] = v as f32;
                }
            }
        }
    }
    out
}

/// Multi-head self-attention's input gradient, naive, in `f64`: `g` `[n, t, heads·d]` →
/// `dqkv` `[n, t, 3·heads·d]`.
pub fn attention_backward(
    qkv: &[f32],
    g: &[f32],
    (n, t, heads, d): (usize, usize, usize, usize),
    scale: f32,
) -> Vec<f32> {
    let c = heads * d;
    let mut dqkv = vec![0f64; qkv.len()];
    let idx = |b: usize, tok: usize, which: usize, h: usize, i: usize| {
        (b * t + tok) * 3 * c + which * c + h * d + i
    };
    let sc = scale as f64;
    for b in 0..n {
        for h in 0..heads {
            let at = |tok, which, i| qkv[idx(b, tok, which, h, i)] as f64;
            let go = |tok: usize, i: usize| g[(b * t + tok) * c + h * d + i] as f64;
            for i in 0..t {
                let s: Vec<f64> = (0..t)
                    .map(|j| (0..d).map(|e| at(i, 0, e) * at(j, 1, e)).sum::<f64>() * sc)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|v| v / z).collect();
                // dv[j] += p[i, j]·g[i]; dp[i, j] = g[i]·v[j]
                let dp: Vec<f64> = (0..t)
                    .map(|j| (0..d).map(|k| go(i, k) * at(j, 2, k)).sum())
                    .collect();
                let dot: f64 = dp.iter().zip(&p).map(|(a, b)| a * b).sum();
                for j in 0..t {
                    for k in 0..d {
                        dqkv[idx(b, j, 2, h, k)] += p[j] * go(i, k);
                    }
                    let ds = p[j] * (dp[j] - dot) * sc;
                    for k in 0..d {
                        dqkv[idx(b, i, 0, h, k)] += ds * at(j, 1, k);
                        dqkv[idx(b, j, 1, h, k)] += ds * at(i, 0, k);
                    }
                }
            }
        }
    }
    dqkv.into_iter().map(|v| v as f32).collect()
}

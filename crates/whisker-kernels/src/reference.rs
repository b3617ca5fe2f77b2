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

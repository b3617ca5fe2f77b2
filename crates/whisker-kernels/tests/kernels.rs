//! Every kernel against the naive reference on odd shapes (sizes, strides, asymmetric
//! padding, channel counts that are not multiples of the vector width, batch 1 and 16), on
//! every instruction-set path this CPU supports.

use whisker_kernels::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// max |a − b| / max(1, max |b|).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: [usize; 4],
}

#[allow(clippy::too_many_arguments)]
const fn case(
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: [usize; 4],
) -> Case {
    Case {
        n,
        h,
        w,
        cin,
        cout,
        k,
        stride,
        pad,
    }
}

const DENSE: &[Case] = &[
    case(1, 7, 5, 3, 5, 3, 1, [1, 1, 1, 1]),
    case(2, 9, 11, 13, 70, 3, 2, [1, 1, 1, 1]),
    case(1, 13, 13, 3, 64, 7, 2, [3, 3, 3, 3]),
    case(16, 5, 5, 33, 17, 1, 1, [0, 0, 0, 0]),
    case(3, 8, 6, 24, 130, 1, 2, [0, 0, 0, 0]),
    case(1, 10, 9, 8, 40, 3, 2, [0, 1, 0, 1]),
    case(2, 6, 7, 19, 129, 5, 1, [2, 2, 2, 2]),
    case(1, 1, 1, 257, 1000, 1, 1, [0, 0, 0, 0]),
    case(16, 1, 1, 100, 33, 1, 1, [0, 0, 0, 0]),
    case(1, 4, 4, 64, 64, 3, 1, [1, 1, 1, 1]),
    // K split into blocks (tap by tap, 128 channels at a time, a partial last block)
    case(2, 5, 6, 200, 70, 3, 1, [1, 1, 1, 1]),
    case(1, 4, 4, 300, 16, 3, 2, [0, 1, 0, 1]),
    // a tiny cin (the RGB stems): computed directly on AVX2 / AVX-512, gathered into
    // contiguous patches on the portable path; rows wide enough for the groups of pixels
    case(3, 11, 10, 3, 32, 3, 2, [0, 1, 0, 1]),
    case(2, 9, 40, 3, 32, 3, 2, [0, 1, 0, 1]),
    case(1, 8, 37, 3, 16, 3, 2, [1, 1, 1, 1]),
    case(1, 12, 50, 3, 64, 7, 2, [3, 3, 3, 3]),
    case(1, 6, 30, 3, 24, 3, 1, [1, 1, 1, 1]),
    case(1, 5, 33, 4, 130, 3, 1, [1, 1, 1, 1]),
    case(2, 7, 29, 8, 48, 5, 2, [2, 2, 2, 2]),
    // ConvNeXt's stem (4×4 stride 4, no padding) and its downsampling (2×2 stride 2)
    case(2, 16, 12, 3, 96, 4, 4, [0, 0, 0, 0]),
    case(1, 8, 10, 40, 80, 2, 2, [0, 0, 0, 0]),
    // few rows against weights too large for L2 (over 1.5 MB a thread): all of a thread's
    // tiles in one block
    case(1, 10, 10, 520, 1600, 1, 1, [0, 0, 0, 0]),
    case(1, 9, 9, 96, 1100, 3, 2, [1, 1, 1, 1]),
];

#[test]
fn dense_convolutions_match_the_reference_on_every_path() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for isa in Isa::available() {
        for c in DENSE {
            let s = ConvShape {
                n: c.n,
                h: c.h,
                w: c.w,
                stride: c.stride,
                pad: c.pad,
            };
            let x = rng.vec(c.n * c.h * c.w * c.cin);
            let wt = rng.vec(c.cout * c.cin * c.k * c.k);
            let bias = rng.vec(c.cout);
            let (oh, ow) = s.out_hw(c.k, c.k).unwrap();
            let res = rng.vec(c.n * oh * ow * c.cout);
            for (act, with_res) in [
                (Act::None, false),
                (Act::Relu, true),
                (Act::Relu6, false),
                (Act::Hardswish, true),
                (Act::Gelu, false),
                (Act::Gelu, true),
                (Act::Silu, true),
                (Act::Sigmoid, false),
            ] {
                let r = with_res.then_some(res.as_slice());
                let want =
                    reference::conv2d(&x, &s, c.cin, &wt, Some(&bias), c.cout, c.k, c.k, 1, r, act);
                let p = PackedConv::from_oihw(&wt, Some(&bias), c.cout, c.cin, c.k, c.k).unwrap();
                let mut got = vec![f32::NAN; want.len()];
                conv2d(isa, &p, &x, &s, r, act, &mut got).unwrap();
                let e = rel_err(&got, &want);
                assert!(e < 2e-6, "{isa:?} {c:?} {act:?}: error {e}");
            }
        }
    }
}

/// 3×3 stride-1 cases for Winograd: odd and even sizes (half-outside last tiles), asymmetric
/// and no padding, channel counts off the vector width, K blocks (cin > 160), panel splits
/// (batch 1, few tiles, many output channels), batch 16.
const WINOGRAD: &[Case] = &[
    case(1, 7, 5, 3, 5, 3, 1, [1, 1, 1, 1]),
    case(2, 9, 11, 13, 70, 3, 1, [1, 1, 1, 1]),
    case(1, 6, 6, 64, 64, 3, 1, [1, 1, 1, 1]),
    case(16, 7, 7, 24, 40, 3, 1, [1, 1, 1, 1]),
    case(1, 10, 9, 17, 33, 3, 1, [0, 1, 0, 1]),
    case(2, 5, 8, 19, 129, 3, 1, [0, 0, 0, 0]),
    case(2, 5, 6, 200, 70, 3, 1, [1, 1, 1, 1]),
    case(1, 7, 7, 300, 260, 3, 1, [1, 1, 1, 1]),
    case(1, 1, 1, 16, 16, 3, 1, [1, 1, 1, 1]),
];

#[test]
fn winograd_matches_the_reference_on_every_path() {
    let mut rng = Rng(0x2545f4914f6cdd1d);
    for isa in Isa::available() {
        for c in WINOGRAD {
            let s = ConvShape {
                n: c.n,
                h: c.h,
                w: c.w,
                stride: 1,
                pad: c.pad,
            };
            let x = rng.vec(c.n * c.h * c.w * c.cin);
            let wt = rng.vec(c.cout * c.cin * 9);
            let bias = rng.vec(c.cout);
            let (oh, ow) = s.out_hw(3, 3).unwrap();
            let res = rng.vec(c.n * oh * ow * c.cout);
            let p = PackedConv::winograd_from_oihw(&wt, Some(&bias), c.cout, c.cin).unwrap();
            assert!(p.is_winograd());
            for (act, with_res) in [(Act::None, false), (Act::Relu, true), (Act::Relu6, true)] {
                let r = with_res.then_some(res.as_slice());
                let want =
                    reference::conv2d(&x, &s, c.cin, &wt, Some(&bias), c.cout, 3, 3, 1, r, act);
                let mut got = vec![f32::NAN; want.len()];
                conv2d(isa, &p, &x, &s, r, act, &mut got).unwrap();
                let e = rel_err(&got, &want);
                // the direct kernel's error on the same case: Winograd's stays within 3× of it
                let d = PackedConv::from_oihw(&wt, Some(&bias), c.cout, c.cin, 3, 3).unwrap();
                let mut direct = vec![f32::NAN; want.len()];
                conv2d(isa, &d, &x, &s, r, act, &mut direct).unwrap();
                let ed = rel_err(&direct, &want);
                assert!(
                    e < 8e-6 && e <= 3.0 * ed.max(3e-7),
                    "{isa:?} {c:?} {act:?}: Winograd error {e}, direct {ed}"
                );
            }
            // stride 2 is not Winograd's: an error, not a wrong number
            let s2 = ConvShape { stride: 2, ..s };
            let (oh2, ow2) = s2.out_hw(3, 3).unwrap();
            let mut o2 = vec![0.0; c.n * oh2 * ow2 * c.cout];
            assert!(conv2d(isa, &p, &x, &s2, None, Act::None, &mut o2).is_err());
        }
    }
}

/// Input gradients: every stride phase, TF-SAME asymmetric padding, 1×1 stride 2 (phases with
/// no taps), the 7×7 stem, Winograd sub-kernels, accumulation into an existing gradient.
#[test]
fn input_gradients_match_the_reference_on_every_path() {
    let mut rng = Rng(0x51ed270b27e5e6d3);
    let cases = [
        case(2, 7, 6, 5, 9, 3, 1, [1, 1, 1, 1]),
        case(1, 9, 11, 20, 24, 3, 2, [1, 1, 1, 1]),
        case(2, 8, 8, 16, 32, 3, 2, [0, 1, 0, 1]),
        case(1, 9, 9, 16, 32, 3, 2, [1, 1, 1, 1]),
        case(3, 6, 7, 24, 40, 1, 2, [0, 0, 0, 0]),
        case(1, 15, 13, 3, 64, 7, 2, [3, 3, 3, 3]),
        case(1, 10, 9, 8, 40, 5, 2, [1, 2, 1, 2]),
        case(2, 6, 6, 40, 24, 3, 1, [1, 1, 1, 1]),
        case(16, 5, 5, 33, 17, 1, 1, [0, 0, 0, 0]),
    ];
    for isa in Isa::available() {
        for c in &cases {
            let s = ConvShape {
                n: c.n,
                h: c.h,
                w: c.w,
                stride: c.stride,
                pad: c.pad,
            };
            let (oh, ow) = s.out_hw(c.k, c.k).unwrap();
            let g = rng.vec(c.n * oh * ow * c.cout);
            let wt = rng.vec(c.cout * c.cin * c.k * c.k);
            let want = reference::conv2d_input_grad(&g, &s, c.cin, &wt, c.cout, c.k, c.k, 1);
            let prior = rng.vec(want.len());
            for winograd in [false, true] {
                let b = ConvBackward::from_oihw(&wt, c.cout, c.cin, c.k, c.k, c.stride, winograd)
                    .unwrap();
                let mut got = vec![f32::NAN; want.len()];
                b.input_grad(isa, &g, &s, &mut got, false).unwrap();
                let e = rel_err(&got, &want);
                assert!(e < 4e-6, "{isa:?} {c:?} winograd {winograd}: error {e}");
                let mut acc = prior.clone();
                b.input_grad(isa, &g, &s, &mut acc, true).unwrap();
                let sum: Vec<f32> = want.iter().zip(&prior).map(|(a, b)| a + b).collect();
                let e = rel_err(&acc, &sum);
                assert!(e < 4e-6, "{isa:?} {c:?} accumulated: error {e}");
                // the sum written in one pass: the same values as adding afterwards
                let mut plus = vec![f32::NAN; want.len()];
                b.input_grad_plus(isa, &g, &s, &prior, &mut plus).unwrap();
                assert_eq!(plus, acc, "{isa:?} {c:?} winograd {winograd}: summed");
            }
            // depthwise (cin = cout)
            let ch = c.cin;
            let gd = rng.vec(c.n * oh * ow * ch);
            let wd = rng.vec(ch * c.k * c.k);
            let want = reference::conv2d_input_grad(&gd, &s, ch, &wd, ch, c.k, c.k, ch);
            let b = DepthwiseBackward::from_oihw(&wd, ch, c.k, c.k, c.stride).unwrap();
            let mut got = vec![f32::NAN; want.len()];
            b.input_grad(isa, &gd, &s, &mut got, false).unwrap();
            let e = rel_err(&got, &want);
            assert!(e < 4e-6, "{isa:?} depthwise {c:?}: error {e}");
        }
    }
}

/// Weight and bias gradients, dense and depthwise, against the f64 reference: odd channel
/// counts (tails of every tile width), padding, strides, the RGB stem, and batches whose
/// pixels span several reduction blocks and threads.
#[test]
fn weight_gradients_match_the_reference_on_every_path() {
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let cases = [
        case(2, 7, 6, 5, 9, 3, 1, [1, 1, 1, 1]),
        case(1, 9, 11, 20, 24, 3, 2, [1, 1, 1, 1]),
        case(3, 6, 7, 24, 40, 1, 2, [0, 0, 0, 0]),
        case(1, 15, 13, 3, 64, 7, 2, [3, 3, 3, 3]),
        case(1, 10, 9, 8, 40, 5, 2, [1, 2, 1, 2]),
        case(16, 5, 5, 33, 17, 1, 1, [0, 0, 0, 0]),
        case(16, 12, 12, 13, 70, 3, 1, [1, 1, 1, 1]),
        case(4, 20, 19, 32, 130, 1, 1, [0, 0, 0, 0]),
        case(2, 9, 9, 7, 3, 3, 2, [0, 1, 0, 1]),
        // stride × channels = 6: the padded input rows read in place (rows longer than a
        // reduction block, one-sided padding, stride 1)
        case(2, 9, 300, 3, 24, 3, 2, [0, 1, 0, 1]),
        case(1, 8, 9, 6, 20, 5, 1, [2, 2, 2, 2]),
        // stride 1 on wide maps: the rows around a block of output rows packed once, each
        // tap reading them shifted (uneven row blocks, channel tails, one-sided padding)
        case(2, 9, 30, 20, 24, 3, 1, [1, 1, 1, 1]),
        case(1, 7, 27, 17, 40, 5, 1, [2, 1, 0, 2]),
        // results larger than the output gradient: split by input channels, not pixels
        case(2, 4, 4, 64, 48, 3, 1, [1, 1, 1, 1]),
        case(5, 1, 1, 300, 70, 1, 1, [0, 0, 0, 0]),
    ];
    // both work splits on any machine: one thread and three
    let pools: Vec<_> = [1, 3]
        .map(|t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .into_iter()
        .collect();
    for (isa, pool) in Isa::available()
        .into_iter()
        .flat_map(|i| pools.iter().map(move |p| (i, p)))
    {
        pool.install(|| {
            for c in &cases {
                let s = ConvShape {
                    n: c.n,
                    h: c.h,
                    w: c.w,
                    stride: c.stride,
                    pad: c.pad,
                };
                let (oh, ow) = s.out_hw(c.k, c.k).unwrap();
                let x = rng.vec(c.n * c.h * c.w * c.cin);
                let g = rng.vec(c.n * oh * ow * c.cout);
                let (want_w, want_b) =
                    reference::conv2d_weight_grad(&x, &s, c.cin, &g, c.cout, c.k, c.k, 1);
                let mut dw = vec![f32::NAN; want_w.len()];
                let mut db = vec![f32::NAN; c.cout];
                conv2d_weight_grad(
                    isa,
                    &x,
                    &s,
                    c.cin,
                    &g,
                    c.cout,
                    c.k,
                    c.k,
                    &mut dw,
                    Some(&mut db),
                )
                .unwrap();
                let (ew, eb) = (rel_err(&dw, &want_w), rel_err(&db, &want_b));
                assert!(
                    ew < 4e-6 && eb < 4e-6,
                    "{isa:?} {c:?}: dW error {ew}, db error {eb}"
                );
                // depthwise (cin = cout)
                let ch = c.cin;
                let gd = rng.vec(c.n * oh * ow * ch);
                let (want_w, want_b) =
                    reference::conv2d_weight_grad(&x, &s, ch, &gd, ch, c.k, c.k, ch);
                let mut dw = vec![f32::NAN; want_w.len()];
                let mut db = vec![f32::NAN; ch];
                depthwise_weight_grad(isa, &x, &s, ch, &gd, c.k, c.k, &mut dw, Some(&mut db))
                    .unwrap();
                let (ew, eb) = (rel_err(&dw, &want_w), rel_err(&db, &want_b));
                assert!(
                    ew < 4e-6 && eb < 4e-6,
                    "{isa:?} depthwise {c:?}: dW error {ew}, db error {eb}"
                );
            }
        });
    }
}

/// The blocked sums stay accurate where the terms cancel: a stem-like layer over a batch of
/// 16 (≈ 50,000 pixels) with positive inputs and zero-mean gradients, as after a ReLU.
#[test]
fn weight_gradients_stay_accurate_over_long_cancelling_sums() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let s = ConvShape::symmetric(16, 112, 112, 2, 1);
    let (cin, cout, k) = (3, 16, 3);
    let (oh, ow) = s.out_hw(k, k).unwrap();
    let x: Vec<f32> = rng
        .vec(s.n * s.h * s.w * cin)
        .iter()
        .map(|v| v.abs() + 0.5)
        .collect();
    let g = rng.vec(s.n * oh * ow * cout);
    let (want, _) = reference::conv2d_weight_grad(&x, &s, cin, &g, cout, k, k, 1);
    for isa in Isa::available() {
        let mut dw = vec![0f32; want.len()];
        conv2d_weight_grad(isa, &x, &s, cin, &g, cout, k, k, &mut dw, None).unwrap();
        let num: f64 = dw
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        println!(
            "{isa:?}: relative L2 {rel:.2e} over {} pixels",
            s.n * oh * ow
        );
        assert!(rel < 2e-6, "{isa:?}: relative L2 {rel}");
    }
}

/// Pooling gradients against naive routing: max pool to the first maximum of each window
/// (padding never wins; a NaN does), average pool spread over each cell; accumulation adds.
#[test]
fn pooling_gradients_match_naive_routing() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for (n, h, w, c, k, stride, pad) in [
        (2, 7, 6, 5, 3, 2, 1),
        (1, 8, 8, 19, 2, 2, 0),
        (3, 5, 9, 33, 3, 1, 1),
        (4, 9, 9, 48, 3, 2, 1),
    ] {
        let (oh, ow) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        // quantised values, so that windows hold ties (the first one wins, as in PyTorch),
        // and a few NaNs (a NaN wins, the last one when a window has two, as in PyTorch)
        let x: Vec<f32> = rng
            .vec(n * h * w * c)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i % 37 == 5 {
                    f32::NAN
                } else {
                    (v * 3.0).round()
                }
            })
            .collect();
        let g = rng.vec(n * oh * ow * c);
        let mut want = vec![0f32; x.len()];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut best: Option<(f32, usize)> = None;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - pad as isize,
                                    (ox * stride + kx) as isize - pad as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let i = ((b * h + iy as usize) * w + ix as usize) * c + ch;
                                if best.is_none_or(|(m, _)| x[i] > m || x[i].is_nan()) {
                                    best = Some((x[i], i));
                                }
                            }
                        }
                        want[best.unwrap().1] += g[((b * oh + oy) * ow + ox) * c + ch];
                    }
                }
            }
        }
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; x.len()];
            max_pool_backward(
                &x, n, h, w, c, k, stride, pad, &g, &mut got, false, false, isa,
            )
            .unwrap();
            assert!(
                rel_err(&got, &want) < 1e-6,
                "{isa:?}: max pool {n} {h}x{w}x{c} k{k} s{stride}"
            );
            let mut acc = vec![1f32; x.len()];
            max_pool_backward(
                &x, n, h, w, c, k, stride, pad, &g, &mut acc, true, false, isa,
            )
            .unwrap();
            let plus: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
            assert!(rel_err(&acc, &plus) < 1e-6);
            // after a ReLU (its outputs: zeros where it clipped, some whole windows of them),
            // ReLU's backward fused: the same values as the pool's then ReLU's
            let y: Vec<f32> = x.iter().map(|&v| (v - 0.3).max(0.0)).collect();
            let mut pooled = vec![0f32; x.len()];
            max_pool_backward(
                &y,
                n,
                h,
                w,
                c,
                k,
                stride,
                pad,
                &g,
                &mut pooled,
                false,
                false,
                isa,
            )
            .unwrap();
            let relu_back: Vec<f32> = pooled
                .iter()
                .zip(&y)
                .map(|(&d, &v)| if v > 0.0 { d } else { 0.0 })
                .collect();
            let mut fused = vec![f32::NAN; x.len()];
            max_pool_backward(
                &y, n, h, w, c, k, stride, pad, &g, &mut fused, false, true, isa,
            )
            .unwrap();
            assert_eq!(
                fused, relu_back,
                "{isa:?}: max pool {n} {h}x{w}x{c}: ReLU fused"
            );
        }
        // adaptive average pool to 3×2
        let (ah, aw) = (3, 2);
        let ga = rng.vec(n * ah * aw * c);
        let mut want = vec![0f32; x.len()];
        for b in 0..n {
            for oy in 0..ah {
                let (y0, y1) = (oy * h / ah, ((oy + 1) * h).div_ceil(ah));
                for ox in 0..aw {
                    let (x0, x1) = (ox * w / aw, ((ox + 1) * w).div_ceil(aw));
                    let cnt = ((y1 - y0) * (x1 - x0)) as f32;
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            for ch in 0..c {
                                want[((b * h + iy) * w + ix) * c + ch] +=
                                    ga[((b * ah + oy) * aw + ox) * c + ch] / cnt;
                            }
                        }
                    }
                }
            }
        }
        let mut got = vec![f32::NAN; x.len()];
        adaptive_avg_pool_backward(n, h, w, c, ah, aw, &ga, &mut got, false).unwrap();
        assert!(rel_err(&got, &want) < 1e-6, "average pool {n} {h}x{w}x{c}");
    }
}

#[test]
fn linear_layers_are_1x1_convolutions() {
    let mut rng = Rng(7);
    for isa in Isa::available() {
        for (n, inp, out) in [(1, 5, 3), (16, 130, 1000), (3, 64, 65)] {
            let x = rng.vec(n * inp);
            let w_io = rng.vec(inp * out);
            let bias = rng.vec(out);
            let p = PackedConv::from_in_out(&w_io, Some(&bias), inp, out).unwrap();
            let mut got = vec![0f32; n * out];
            conv2d(
                isa,
                &p,
                &x,
                &ConvShape::symmetric(n, 1, 1, 1, 0),
                None,
                Act::None,
                &mut got,
            )
            .unwrap();
            let mut want = vec![0f32; n * out];
            for b in 0..n {
                for o in 0..out {
                    let mut acc = bias[o] as f64;
                    for i in 0..inp {
                        acc += x[b * inp + i] as f64 * w_io[i * out + o] as f64;
                    }
                    want[b * out + o] = acc as f32;
                }
            }
            let e = rel_err(&got, &want);
            assert!(e < 2e-6, "{isa:?} linear {n}×{inp}→{out}: {e}");
        }
    }
}

#[test]
fn depthwise_convolutions_match_the_reference_on_every_path() {
    let mut rng = Rng(11);
    let cases = [
        (1, 7, 7, 16, 3, 1, [1, 1, 1, 1]),
        (2, 9, 8, 72, 3, 2, [1, 1, 1, 1]),
        (1, 11, 11, 120, 5, 1, [2, 2, 2, 2]),
        (16, 6, 6, 13, 5, 2, [1, 2, 1, 2]),
        (1, 8, 8, 67, 3, 2, [0, 1, 0, 1]),
        (3, 3, 4, 200, 5, 1, [2, 2, 2, 2]),
        // rows wide enough for the vector paths' groups of pixels, and their remainders
        (1, 5, 40, 32, 3, 1, [1, 1, 1, 1]),
        (2, 7, 37, 24, 3, 2, [1, 1, 1, 1]),
        (1, 6, 29, 40, 5, 2, [1, 2, 1, 2]),
        (1, 9, 33, 20, 5, 1, [2, 2, 2, 2]),
        (1, 4, 2, 16, 3, 1, [1, 1, 1, 1]),
        (2, 8, 23, 7, 3, 1, [1, 1, 1, 1]),
        // ConvNeXt's 7×7
        (2, 14, 13, 48, 7, 1, [3, 3, 3, 3]),
        (1, 7, 40, 20, 7, 1, [3, 3, 3, 3]),
    ];
    for isa in Isa::available() {
        for (n, h, w, c, k, stride, pad) in cases {
            let s = ConvShape {
                n,
                h,
                w,
                stride,
                pad,
            };
            let x = rng.vec(n * h * w * c);
            let wt = rng.vec(c * k * k);
            let bias = rng.vec(c);
            for act in [
                Act::None,
                Act::Relu6,
                Act::Hardswish,
                Act::Relu,
                Act::Gelu,
                Act::Silu,
                Act::Sigmoid,
            ] {
                let want = reference::conv2d(&x, &s, c, &wt, Some(&bias), c, k, k, c, None, act);
                let p = PackedDepthwise::from_oihw(&wt, Some(&bias), c, k, k).unwrap();
                let mut got = vec![f32::NAN; want.len()];
                depthwise(isa, &p, &x, &s, act, &mut got).unwrap();
                let e = rel_err(&got, &want);
                assert!(
                    e < 2e-6,
                    "{isa:?} depthwise {n}×{h}×{w}×{c} k{k} s{stride} {pad:?} {act:?}: {e}"
                );
            }
        }
    }
}

#[test]
fn pooling_and_layout() {
    let mut rng = Rng(3);
    let (n, h, w, c) = (2, 9, 7, 5);
    let x = rng.vec(n * h * w * c);
    // max pool 3×3 stride 2 pad 1
    let mut out = vec![0f32; n * 5 * 4 * c];
    let (oh, ow) = max_pool(&x, n, h, w, c, 3, 2, 1, &mut out).unwrap();
    assert_eq!((oh, ow), (5, 4));
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut m = f32::NEG_INFINITY;
                    for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(h) {
                        for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(w) {
                            m = m.max(x[((b * h + iy) * w + ix) * c + ch]);
                        }
                    }
                    assert_eq!(out[((b * oh + oy) * ow + ox) * c + ch], m);
                }
            }
        }
    }
    // NaN propagates through max pooling, as in PyTorch
    let mut xn = x.clone();
    xn[0] = f32::NAN;
    max_pool(&xn, n, h, w, c, 3, 2, 1, &mut out).unwrap();
    assert!(out[0].is_nan() && !out[1].is_nan());
    // adaptive average pool 9×7 → 4×3 (overlapping windows, as PyTorch)
    let mut a = vec![0f32; n * 4 * 3 * c];
    adaptive_avg_pool(&x, n, h, w, c, 4, 3, &mut a).unwrap();
    let (y0, y1, x0, x1) = (
        9 / 4,
        (2 * 9usize).div_ceil(4),
        7 / 3,
        (2 * 7usize).div_ceil(3),
    );
    let mut s = 0f64;
    for iy in y0..y1 {
        for ix in x0..x1 {
            s += x[((h + iy) * w + ix) * c + 2] as f64;
        }
    }
    let want = s / ((y1 - y0) * (x1 - x0)) as f64;
    assert!((a[((4 + 1) * 3 + 1) * c + 2] as f64 - want).abs() < 1e-6);
    // global average pool and channel scaling
    let mut g = vec![0f32; n * c];
    global_avg_pool(&x, n, h * w, c, &mut g).unwrap();
    let m: f64 = (0..h * w)
        .map(|p| x[(h * w + p) * c + 4] as f64)
        .sum::<f64>()
        / (h * w) as f64;
    assert!((g[c + 4] as f64 - m).abs() < 1e-6);
    let mut y = x.clone();
    scale_channels(&mut y, n, h * w, c, &g).unwrap();
    assert_eq!(y[(h * w + 3) * c + 4], x[(h * w + 3) * c + 4] * g[c + 4]);
    // layout round trip with normalisation
    let nchw = rng.vec(n * 3 * h * w);
    let mut nhwc = vec![0f32; nchw.len()];
    nchw_to_nhwc_normalized(
        &nchw,
        n,
        3,
        h,
        w,
        255.0,
        &[127.0; 3],
        &[128.0; 3],
        &mut nhwc,
    )
    .unwrap();
    for b in 0..n {
        for ch in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(
                        nhwc[((b * h + y) * w + x) * 3 + ch],
                        (nchw[((b * 3 + ch) * h + y) * w + x] * 255.0 - 127.0) / 128.0,
                        "normalised pixel ({b}, {ch}, {y}, {x})"
                    );
                }
            }
        }
    }
    let mut back = vec![0f32; nchw.len()];
    nhwc_to_nchw(&nhwc, n, h, w, 3, &mut back).unwrap();
    assert_eq!(
        back[((3 + 1) * h + 2) * w + 3],
        nhwc[((h + 2) * w + 3) * 3 + 1]
    );
}

#[test]
fn shape_mismatches_are_errors_not_panics() {
    let p = PackedConv::from_oihw(&[0.0; 27], None, 1, 3, 3, 3).unwrap();
    let s = ConvShape::symmetric(1, 4, 4, 1, 1);
    let mut out = vec![0f32; 16];
    let e = conv2d(Isa::PORTABLE, &p, &[0.0; 5], &s, None, Act::None, &mut out).unwrap_err();
    assert!(e.to_string().contains("input of 5 values"), "{e}");
    assert!(PackedConv::from_oihw(&[0.0; 26], None, 1, 3, 3, 3).is_err());
    let tiny = ConvShape::symmetric(1, 1, 1, 1, 0);
    assert!(conv2d(
        Isa::PORTABLE,
        &p,
        &[0.0; 3],
        &tiny,
        None,
        Act::None,
        &mut out
    )
    .is_err());
    assert!(max_pool(&[0.0; 4], 1, 2, 2, 1, 3, 2, 0, &mut [0.0; 1]).is_err());
}

#[test]
fn isa_names_parse_and_only_supported_paths_become_tokens() {
    for k in [IsaKind::Portable, IsaKind::Avx2, IsaKind::Avx512] {
        assert_eq!(IsaKind::parse(k.name()), Some(k));
        // a token for a path exists exactly when the CPU runs it
        assert_eq!(Isa::new(k).is_some(), k.supported());
        assert_eq!(Isa::new(k).map(Isa::kind), k.supported().then_some(k));
    }
    assert!(Isa::best().kind().supported());
    assert!(Isa::current().kind().supported());
    assert!(Isa::available().contains(&Isa::PORTABLE));
    assert_eq!(Isa::PORTABLE.kind(), IsaKind::Portable);
}

/// BatchNorm with batch statistics, in f64: the output, and the gradient of Σ w·output with
/// respect to x, γ and β by central differences.
fn bn_reference(x: &[f64], c: usize, gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let p = x.len() / c;
    let mut out = vec![0f64; x.len()];
    for j in 0..c {
        let mean = (0..p).map(|i| x[i * c + j]).sum::<f64>() / p as f64;
        let var = (0..p).map(|i| (x[i * c + j] - mean).powi(2)).sum::<f64>() / p as f64;
        for i in 0..p {
            out[i * c + j] = (x[i * c + j] - mean) / (var + eps).sqrt() * gamma[j] + beta[j];
        }
    }
    out
}

/// Training-mode BatchNorm against an f64 reference: statistics, output (with residual and
/// activation), and the input, γ and β gradients against central differences.
#[test]
fn batch_norm_train_matches_the_reference_and_finite_differences() {
    let mut rng = Rng(0x51ed_270b_a5c3_9f17);
    for (p, c) in [(300, 19), (7, 64), (1030, 3)] {
        // an offset mean, so that the variance pass has something to cancel
        let x: Vec<f32> = rng.vec(p * c).iter().map(|v| v * 2.0 + 3.0).collect();
        let gamma: Vec<f32> = rng.vec(c).iter().map(|v| v + 1.0).collect();
        let beta = rng.vec(c);
        let res = rng.vec(p * c);
        let eps = 1e-5;
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (xd, gd, bd) = (f64s(&x), f64s(&gamma), f64s(&beta));
        let want = bn_reference(&xd, c, &gd, &bd, eps);
        let mut out = vec![f32::NAN; p * c];
        let stats =
            batch_norm_train(&x, c, &gamma, &beta, eps, Some(&res), Act::Relu, &mut out).unwrap();
        assert_eq!(stats.count, p);
        let want_out: Vec<f32> = want
            .iter()
            .zip(&res)
            .map(|(w, r)| (*w as f32 + r).max(0.0))
            .collect();
        assert!(rel_err(&out, &want_out) < 2e-6, "{p}×{c}: output");
        // backward of L = Σ w·bn(x) (the activation and residual are the caller's)
        let w = rng.vec(p * c);
        let mut dx = vec![0.5f32; p * c];
        let (dg, db) =
            batch_norm_train_backward(&x, &mut w.clone(), None, c, &gamma, &stats, &mut dx, true)
                .unwrap();
        let loss = |xd: &[f64], gd: &[f64], bd: &[f64]| -> f64 {
            bn_reference(xd, c, gd, bd, eps)
                .iter()
                .zip(&w)
                .map(|(o, &wv)| o * wv as f64)
                .sum()
        };
        let h = 1e-4;
        let diff = |v: &mut Vec<f64>, i: usize, which: usize| {
            let at = |v: &Vec<f64>| match which {
                0 => loss(v, &gd, &bd),
                1 => loss(&xd, v, &bd),
                _ => loss(&xd, &gd, v),
            };
            let keep = v[i];
            v[i] = keep + h;
            let up = at(v);
            v[i] = keep - h;
            let down = at(v);
            v[i] = keep;
            (up - down) / (2.0 * h)
        };
        let scale = |g: &[f32]| g.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let (sx, sg, sb) = (scale(&dx), scale(&dg), scale(&db));
        for i in (0..p * c).step_by((p * c / 23).max(1)) {
            let num = diff(&mut xd.clone(), i, 0);
            let got = dx[i] as f64 - 0.5;
            assert!(
                (got - num).abs() <= 1e-4 * sx.max(1.0),
                "{p}×{c}: dx[{i}] {got} vs {num}"
            );
        }
        for j in 0..c {
            let ng = diff(&mut gd.clone(), j, 1);
            let nb = diff(&mut bd.clone(), j, 2);
            assert!(
                (dg[j] as f64 - ng).abs() <= 1e-4 * sg.max(1.0),
                "{p}×{c}: dγ[{j}]"
            );
            assert!(
                (db[j] as f64 - nb).abs() <= 1e-4 * sb.max(1.0),
                "{p}×{c}: dβ[{j}]"
            );
        }
        // the ReLU's derivative fused into the sums' pass: the same numbers as applied
        // before, and the gradient left masked
        for act in [Act::Relu, Act::Relu6] {
            let y: Vec<f32> = out.iter().map(|&v| act.apply(v * 4.0)).collect();
            let keep = |v: f32| v > 0.0 && (act == Act::Relu || v < 6.0);
            let masked: Vec<f32> = w
                .iter()
                .zip(&y)
                .map(|(&g, &v)| if keep(v) { g } else { 0.0 })
                .collect();
            let (mut dx1, mut dx2) = (vec![0f32; p * c], vec![0f32; p * c]);
            let r1 = batch_norm_train_backward(
                &x,
                &mut masked.clone(),
                None,
                c,
                &gamma,
                &stats,
                &mut dx1,
                false,
            )
            .unwrap();
            let mut g = w.clone();
            let r2 = batch_norm_train_backward(
                &x,
                &mut g,
                Some((act, &y)),
                c,
                &gamma,
                &stats,
                &mut dx2,
                false,
            )
            .unwrap();
            assert_eq!((dx1, r1), (dx2, r2), "{p}×{c} {act:?}: fused");
            assert_eq!(g, masked, "{p}×{c} {act:?}: the gradient left masked");
        }
    }
}

/// The fused inverted residual block gives exactly (bit for bit) the three convolutions run
/// one after the other, on every path, for 1–3 threads: with and without the expansion and
/// the residual, strides 1 and 2, 3×3 and 5×5, TF-'SAME' padding, and windows of one to many
/// rows (wide expanded rows make the bands short).
#[test]
fn fused_inverted_residual_blocks_equal_their_three_convolutions() {
    let mut rng = Rng(21);
    // (n, h, w, cin, expanded, cout, k, stride, pad, expand, residual, activations)
    #[allow(clippy::type_complexity)]
    let cases: [(
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 4],
        bool,
        bool,
        [Act; 3],
    ); 9] = [
        (
            1,
            23,
            19,
            16,
            96,
            16,
            3,
            1,
            [1; 4],
            true,
            true,
            [Act::Relu6, Act::Relu6, Act::None],
        ),
        (
            3,
            17,
            17,
            24,
            144,
            32,
            3,
            2,
            [1; 4],
            true,
            false,
            [Act::Relu6, Act::Relu6, Act::None],
        ),
        (
            2,
            12,
            13,
            32,
            32,
            16,
            3,
            1,
            [1; 4],
            false,
            false,
            [Act::None, Act::Relu6, Act::None],
        ),
        (
            1,
            15,
            15,
            40,
            120,
            40,
            5,
            1,
            [2; 4],
            true,
            true,
            [Act::Hardswish, Act::Hardswish, Act::None],
        ),
        (
            1,
            16,
            16,
            24,
            72,
            40,
            5,
            2,
            [1, 2, 1, 2],
            true,
            false,
            [Act::Relu, Act::Relu, Act::None],
        ),
        (
            5,
            7,
            7,
            160,
            960,
            160,
            3,
            1,
            [1; 4],
            true,
            true,
            [Act::Relu6, Act::Relu6, Act::None],
        ),
        (
            1,
            48,
            40,
            40,
            240,
            40,
            3,
            1,
            [1; 4],
            true,
            true,
            [Act::Relu6, Act::Relu6, Act::None],
        ),
        (
            2,
            30,
            64,
            24,
            576,
            24,
            3,
            2,
            [1; 4],
            true,
            false,
            [Act::Relu6, Act::Relu6, Act::Relu],
        ),
        (
            1,
            9,
            70,
            16,
            600,
            16,
            5,
            1,
            [2; 4],
            true,
            true,
            [Act::Relu6, Act::Relu6, Act::None],
        ),
    ];
    for (n, h, w, cin, e, cout, k, stride, pad, expand, residual, acts) in cases {
        let x = rng.vec(n * h * w * cin);
        let xw = rng.vec(e * cin);
        let xb = rng.vec(e);
        let dw = rng.vec(e * k * k);
        let dwb = rng.vec(e);
        let pw = rng.vec(cout * e);
        let pb = rng.vec(cout);
        let s = ConvShape {
            n,
            h,
            w,
            stride,
            pad,
        };
        let (oh, ow) = s.out_hw(k, k).unwrap();
        let xpack = PackedConv::from_oihw(&xw, Some(&xb), e, cin, 1, 1).unwrap();
        let dpack = PackedDepthwise::from_oihw(&dw, Some(&dwb), e, k, k).unwrap();
        let ppack = PackedConv::from_oihw(&pw, Some(&pb), cout, e, 1, 1).unwrap();
        let block = InvertedResidual::new(
            expand.then(|| (xpack.clone(), acts[0])),
            dpack.clone(),
            acts[1],
            ppack.clone(),
            acts[2],
        )
        .unwrap();
        for isa in Isa::available() {
            // the three convolutions
            let whole = ConvShape::symmetric(n, h, w, 1, 0);
            let mut ex = vec![0f32; n * h * w * e];
            let ex = if expand {
                conv2d(isa, &xpack, &x, &whole, None, acts[0], &mut ex).unwrap();
                ex
            } else {
                x.clone()
            };
            let mut d = vec![0f32; n * oh * ow * e];
            depthwise(isa, &dpack, &ex, &s, acts[1], &mut d).unwrap();
            let mut want = vec![0f32; n * oh * ow * cout];
            let res = residual.then_some(&x[..]);
            let ds = ConvShape::symmetric(n, oh, ow, 1, 0);
            conv2d(isa, &ppack, &d, &ds, res, acts[2], &mut want).unwrap();
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut got = vec![f32::NAN; want.len()];
                pool.install(|| inverted_residual(isa, &block, &x, &s, residual, &mut got))
                    .unwrap();
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{isa:?}, {threads} thread(s): {n}×{h}×{w}×{cin} →{e}→ {cout} k{k} s{stride}: max diff {}",
                    rel_err(&got, &want)
                );
            }
        }
    }
    // a residual the shapes do not allow, and a projection that does not follow
    let dpack = PackedDepthwise::from_oihw(&[0.0; 16 * 9], None, 16, 3, 3).unwrap();
    let p = PackedConv::from_oihw(&[0.0; 16 * 16], None, 16, 16, 1, 1).unwrap();
    let b = InvertedResidual::new(None, dpack.clone(), Act::None, p, Act::None).unwrap();
    let s = ConvShape::symmetric(1, 8, 8, 2, 1);
    let mut out = vec![0f32; 4 * 4 * 16];
    let e = inverted_residual(Isa::PORTABLE, &b, &[0.0; 8 * 8 * 16], &s, true, &mut out);
    assert!(e.unwrap_err().0.contains("residual"));
    let p8 = PackedConv::from_oihw(&[0.0; 8 * 8], None, 8, 8, 1, 1).unwrap();
    let e = InvertedResidual::new(None, dpack, Act::None, p8, Act::None).unwrap_err();
    assert!(e.0.contains("projection"), "{e}");
}

/// LayerNorm over the last dimension, forward on every path and backward, against the f64
/// reference: row widths off and on the vector widths (ConvNeXt's 96…1536 channels, ViT's
/// 384/768 tokens' channels, odd ones), offset means (the two-pass variance), statistics
/// kept, gradients accumulated.
#[test]
fn layer_norm_matches_the_reference_on_every_path() {
    let mut rng = Rng(0x5eed);
    for isa in Isa::available() {
        for (rows, c) in [
            (1, 1),
            (3, 5),
            (70, 8),
            (33, 16),
            (9, 96),
            (5, 100),
            (200, 37),
            (4, 768),
        ] {
            let x: Vec<f32> = rng.vec(rows * c).iter().map(|v| v * 3.0 + 7.5).collect();
            let gamma: Vec<f32> = rng.vec(c).iter().map(|v| 1.0 + v).collect();
            let beta = rng.vec(c);
            let eps = 1e-6;
            let want = reference::layer_norm(&x, c, &gamma, &beta, eps);
            let mut got = vec![f32::NAN; rows * c];
            let mut stats = vec![0f32; rows * 2];
            layer_norm(isa, &x, c, &gamma, &beta, eps, &mut got, Some(&mut stats)).unwrap();
            let e = rel_err(&got, &want);
            assert!(e < 2e-6, "{isa:?} layer norm {rows}×{c}: error {e}");
            let g = rng.vec(rows * c);
            let (wdx, wdg, wdb) = reference::layer_norm_backward(&x, &g, c, &gamma, eps);
            let prev = rng.vec(rows * c);
            let mut dx = prev.clone();
            let (dg, db) = layer_norm_backward(&x, &g, c, &gamma, &stats, &mut dx, true).unwrap();
            let added: Vec<f32> = dx.iter().zip(&prev).map(|(a, b)| a - b).collect();
            if c > 1 {
                // (one value a row normalises to 0: its input gradient is 0 up to rounding)
                let e = rel_err(&added, &wdx);
                assert!(
                    e < 2e-5,
                    "{isa:?} layer norm backward {rows}×{c}: dx error {e}"
                );
            }
            assert!(rel_err(&dg, &wdg) < 2e-5, "{rows}×{c} dγ");
            assert!(rel_err(&db, &wdb) < 2e-6, "{rows}×{c} dβ");
        }
    }
    let mut out = vec![0f32; 6];
    let e = layer_norm(
        Isa::current(),
        &[0.0; 6],
        4,
        &[1.0; 4],
        &[0.0; 4],
        1e-5,
        &mut out,
        None,
    );
    assert!(e.is_err(), "6 values are not rows of 4");
}

/// Every activation as a pass of its own and its backward pass, on every path: the forward
/// the same bits as the scalar function, the backward within a few ulp of the f64-evaluated
/// derivative, which itself matches a central difference of the f64 function.
#[test]
fn activation_passes_match_the_scalar_functions_on_every_path() {
    let mut rng = Rng(0x6e1);
    let mut z: Vec<f32> = rng.vec(1000).iter().map(|v| v * 8.0).collect();
    // the kinks, and beyond exp's clamp
    z.extend([0.0, -3.0, 3.0, 6.0, -0.0, 90.0, -90.0, 1e-30]);
    let g = rng.vec(z.len());
    let acts = [
        Act::None,
        Act::Relu,
        Act::Relu6,
        Act::Hardswish,
        Act::Hardsigmoid,
        Act::Gelu,
        Act::Silu,
        Act::Sigmoid,
    ];
    for act in acts {
        for isa in Isa::available() {
            let mut y = z.clone();
            act_in_place(isa, act, &mut y);
            for (&a, &b) in y.iter().zip(&z) {
                // the same bits (a clamp of −0 may give either zero)
                let want = act.apply(b);
                assert!(
                    a.to_bits() == want.to_bits() || (a == 0.0 && want == 0.0),
                    "{isa:?} {act:?}({b}) = {a}, not {want}"
                );
            }
            let mut d = g.clone();
            act_backward(isa, act, &mut d, &z);
            let want: Vec<f32> = g
                .iter()
                .zip(&z)
                .map(|(g, &z)| g * act_grad(act, z))
                .collect();
            let e = rel_err(&d, &want);
            assert!(e < 1e-6, "{isa:?} {act:?} backward: error {e}");
        }
    }
    // SiLU and sigmoid against f64, their derivatives against central differences
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for i in -2000..=2000 {
        let x = i as f32 * 0.01;
        let xd = x as f64;
        assert!(
            (Act::Sigmoid.apply(x) as f64 - sig(xd)).abs() <= 3e-7,
            "sigmoid({x})"
        );
        let silu = |x: f64| x * sig(x);
        assert!(
            (Act::Silu.apply(x) as f64 - silu(xd)).abs() <= 3e-7 * (1.0 + xd.abs()),
            "silu({x})"
        );
        let h = 1e-4;
        for (act, f) in [
            (Act::Silu, &silu as &dyn Fn(f64) -> f64),
            (Act::Sigmoid, &sig),
        ] {
            let num = (f(xd + h) - f(xd - h)) / (2.0 * h);
            assert!(
                (act_grad(act, x) as f64 - num).abs() < 1e-6,
                "{act:?}'({x})"
            );
        }
    }
}

/// The outputs that can fall below f32's normal range are zero instead, on every path (a
/// subnormal operand slows every later multiply on x86), and a NaN stays a NaN.
#[test]
fn subnormal_outputs_are_flushed_on_every_path() {
    let tiny = f32::MIN_POSITIVE;
    assert_eq!(flush(tiny / 2.0).to_bits(), 0);
    assert_eq!(flush(-tiny / 4.0).to_bits(), 0);
    assert_eq!(flush(tiny), tiny);
    assert_eq!(flush(-1.5), -1.5);
    assert!(flush(f32::NAN).is_nan());
    for isa in Isa::available() {
        // a closed sigmoid gate: below 1.2e-38 from about −87.3 on
        let z = [-87.0f32, -88.0, -95.0, -200.0, -1e30, 0.5];
        let mut y = z.to_vec();
        act_in_place(isa, Act::Sigmoid, &mut y);
        for (&a, &x) in y.iter().zip(&z) {
            assert!(!a.is_subnormal(), "{isa:?} sigmoid({x}) = {a:e}");
            assert_eq!(
                a.to_bits(),
                Act::Sigmoid.apply(x).to_bits(),
                "{isa:?} sigmoid({x})"
            );
        }
        assert!(y[0] > 0.0 && y[3] == 0.0 && y[4] == 0.0, "{isa:?}: {y:?}");
        assert!((y[5] - 0.622_459_3).abs() < 1e-6);
        // squeeze-excitation: a channel scaled below the normal range is zero, a NaN stays
        let (n, hw, c) = (2, 5, 19);
        let mut x: Vec<f32> = (0..n * hw * c)
            .map(|i| 1e-20 * (1 + i % 7) as f32)
            .collect();
        x[3] = f32::NAN;
        x[c + 4] = 3.0;
        let s: Vec<f32> = (0..n * c)
            .map(|i| if i % 2 == 0 { 1e-20 } else { 1e20 })
            .collect();
        let mut out = x.clone();
        scale_channels(&mut out, n, hw, c, &s).unwrap();
        for (i, (&o, &v)) in out.iter().zip(&x).enumerate() {
            let f = s[(i / (hw * c)) * c + i % c];
            let want = v * f;
            if want.is_nan() {
                assert!(o.is_nan(), "{isa:?}: element {i}");
            } else if want.abs() < tiny {
                assert_eq!(o.to_bits(), 0, "{isa:?}: element {i} = {o:e}");
            } else {
                assert_eq!(o, want, "{isa:?}: element {i}");
            }
        }
        // softmax: a token far below the others weighs zero, not e^−87 / 40
        for cols in [41, 7, 100] {
            let mut row = vec![0f32; cols];
            row[cols - 2] = -200.0;
            row[1] = -95.0;
            softmax_rows(isa, &mut row, cols, 1.0).unwrap();
            assert!(
                row.iter().all(|v| !v.is_subnormal()),
                "{isa:?} {cols}: {row:?}"
            );
            assert_eq!(row[cols - 2], 0.0, "{isa:?} {cols}");
            let rest = 1.0 / (cols - 2) as f32;
            assert!((row[0] - rest).abs() < 1e-6, "{isa:?} {cols}: {}", row[0]);
        }
    }
}

/// A fused inverted-residual block refuses the activations that are passes of their own.
#[test]
fn a_fused_block_refuses_pass_activations() {
    let mut rng = Rng(9);
    let (c, e) = (8, 16);
    let pack = |cout, cin, rng: &mut Rng| {
        PackedConv::from_oihw(&rng.vec(cout * cin), None, cout, cin, 1, 1).unwrap()
    };
    for act in [Act::Gelu, Act::Silu, Act::Sigmoid] {
        for at in 0..3 {
            let a = |i| if i == at { act } else { Act::Relu6 };
            let dw = PackedDepthwise::from_oihw(&rng.vec(e * 9), None, e, 3, 3).unwrap();
            let r = InvertedResidual::new(
                Some((pack(e, c, &mut rng), a(0))),
                dw,
                a(1),
                pack(c, e, &mut rng),
                a(2),
            );
            assert!(r.is_err(), "{act:?} at {at} was fused");
        }
    }
    let dw = PackedDepthwise::from_oihw(&rng.vec(e * 9), None, e, 3, 3).unwrap();
    let ok = InvertedResidual::new(
        Some((pack(e, c, &mut rng), Act::Relu6)),
        dw,
        Act::Relu6,
        pack(c, e, &mut rng),
        Act::None,
    );
    assert!(ok.is_ok());
}

/// Grouped convolutions (RegNetY's 3×3 with 8- to 232-channel groups, stride 1 and 2, and a
/// 1×1): forward (direct and Winograd), input gradient (written and accumulated) and weight
/// and bias gradients against the naive reference, on every path.
#[test]
fn grouped_convolutions_match_the_reference_on_every_path() {
    let mut rng = Rng(0x9e0);
    // (n, h, w, cin, cout, groups, k, stride)
    let cases = [
        (2, 9, 7, 24, 24, 3, 3, 1),
        (1, 8, 8, 48, 48, 6, 3, 2),
        (2, 6, 5, 64, 64, 2, 3, 1),
        (1, 7, 7, 32, 64, 4, 1, 1),
        (3, 5, 6, 40, 40, 5, 3, 2),
    ];
    for isa in Isa::available() {
        for (n, h, w, cin, cout, groups, k, stride) in cases {
            let s = ConvShape::symmetric(n, h, w, stride, (k - 1) / 2);
            let cpg = cin / groups;
            let x = rng.vec(n * h * w * cin);
            let wt = rng.vec(cout * cpg * k * k);
            let bias = rng.vec(cout);
            let (oh, ow) = s.out_hw(k, k).unwrap();
            let case = format!("{isa:?} {n}×{h}×{w}×{cin}→{cout} g{groups} k{k} s{stride}");
            for (act, winograd) in [(Act::Relu, false), (Act::None, true), (Act::Silu, false)] {
                let want =
                    reference::conv2d(&x, &s, cin, &wt, Some(&bias), cout, k, k, groups, None, act);
                let p =
                    PackedGrouped::from_oihw(&wt, Some(&bias), cout, cin, k, k, groups, winograd)
                        .unwrap();
                let mut got = vec![f32::NAN; want.len()];
                grouped_conv2d(isa, &p, &x, &s, act, &mut got).unwrap();
                let e = rel_err(&got, &want);
                assert!(e < 2e-6, "{case} {act:?} winograd {winograd}: {e}");
            }
            let g = rng.vec(n * oh * ow * cout);
            let want = reference::conv2d_input_grad(&g, &s, cin, &wt, cout, k, k, groups);
            let b =
                GroupedBackward::from_oihw(&wt, cout, cin, k, k, stride, groups, false).unwrap();
            let mut got = vec![f32::NAN; want.len()];
            b.input_grad(isa, &g, &s, &mut got, false).unwrap();
            assert!(rel_err(&got, &want) < 2e-6, "{case}: input gradient");
            let prev = rng.vec(want.len());
            let mut acc = prev.clone();
            b.input_grad(isa, &g, &s, &mut acc, true).unwrap();
            let sum: Vec<f32> = prev.iter().zip(&want).map(|(a, b)| a + b).collect();
            assert!(
                rel_err(&acc, &sum) < 2e-6,
                "{case}: accumulated input gradient"
            );
            let (wdw, wdb) = reference::conv2d_weight_grad(&x, &s, cin, &g, cout, k, k, groups);
            let (mut dw, mut db) = (vec![f32::NAN; wdw.len()], vec![f32::NAN; cout]);
            grouped_weight_grad(
                isa,
                &x,
                &s,
                cin,
                &g,
                cout,
                (k, k, groups),
                &mut dw,
                Some(&mut db),
            )
            .unwrap();
            assert!(rel_err(&dw, &wdw) < 2e-6, "{case}: weight gradient");
            assert!(rel_err(&db, &wdb) < 2e-6, "{case}: bias gradient");
        }
    }
    // groups that do not divide the channels are refused
    assert!(PackedGrouped::from_oihw(&[0.0; 90], None, 10, 9, 3, 3, 2, false).is_err());
}

/// Multi-head self-attention (ViT-like and odd sizes: 197 tokens of 2 heads × 64, 5 tokens of
/// 3 heads × 7) against the naive f64 reference, on every path; the weights it keeps are
/// each row's softmax (rows summing to 1); its backward pass against the f64 reference's.
#[test]
fn attention_matches_the_reference_on_every_path() {
    let mut rng = Rng(0xa77);
    for (n, t, heads, d) in [(2, 197, 2, 64), (3, 5, 3, 7), (1, 50, 4, 16)] {
        let c = heads * d;
        let qkv: Vec<f32> = rng.vec(n * t * 3 * c).iter().map(|v| v * 2.0).collect();
        let scale = 1.0 / (d as f32).sqrt();
        let want = reference::attention(&qkv, n, t, heads, d, scale);
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; n * t * c];
            let mut probs = vec![f32::NAN; n * heads * t * t];
            attention(
                isa,
                &qkv,
                (n, t, heads, d),
                scale,
                &mut out,
                Some(&mut probs),
            )
            .unwrap();
            let e = rel_err(&out, &want);
            assert!(e < 2e-6, "{isa:?} attention {n}×{t} {heads}×{d}: {e}");
            for row in probs.chunks_exact(t) {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{isa:?}: a softmax row sums to {s}");
            }
            let g = rng.vec(n * t * c);
            let want = reference::attention_backward(&qkv, &g, (n, t, heads, d), scale);
            let mut got = vec![f32::NAN; qkv.len()];
            attention_backward(isa, &qkv, &probs, &g, (n, t, heads, d), scale, &mut got).unwrap();
            let e = rel_err(&got, &want);
            assert!(
                e < 5e-6,
                "{isa:?} attention backward {n}×{t} {heads}×{d}: {e}"
            );
        }
    }
    let mut x = vec![1.0, 2.0, 3.0, 4.0, 5.0];
    assert!(softmax_rows(Isa::current(), &mut x, 2, 1.0).is_err());
}

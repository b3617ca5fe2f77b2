//! Linear probe: multinomial logistic regression with L2 regularisation, fitted by L-BFGS on
//! standardised features, the regularisation strength chosen on the validation split
//! (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?").

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// A fitted linear classifier on standardised features:
/// `logits = ((x − mean) / std) · W + b`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinearHead {
    pub dim: usize,
    pub classes: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `[dim, classes]`, row-major.
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl LinearHead {
    /// Logits of `[n, dim]` features, `[n, classes]` row-major.
    pub fn logits(&self, x: &[f32], device: &Device) -> crate::Result<Vec<f32>> {
        let n = x.len() / self.dim;
        let f = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, self.dim]), device);
        crate::tensor::to_vec(self.logits_tensor(f))
    }

    /// Logits of a `[n, dim]` feature tensor, differentiably.
    pub fn logits_tensor(&self, f: Tensor<2>) -> Tensor<2> {
        let device = f.device();
        let t1 =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
        let w = Tensor::<2>::from_data(
            TensorData::new(self.w.clone(), [self.dim, self.classes]),
            &device,
        );
        let z = (f - t1(&self.mean).unsqueeze::<2>()) / t1(&self.std).unsqueeze::<2>();
        z.matmul(w) + t1(&self.b).unsqueeze::<2>()
    }
}

/// Per-feature means, and one scale for all features: the root-mean-square of their standard
/// deviations (returned per feature, all equal). Per-feature scaling would blow up the
/// sparse, heavy-tailed channels of pooled ReLU features (a channel almost always 0 on the
/// training set becomes huge on an unseen image); one global scale keeps the features'
/// relative geometry and gives the optimisers unit-scale inputs.
pub fn moments(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / dim).max(1);
    let mut mean = vec![0f64; dim];
    for row in x.chunks_exact(dim) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = 0f64;
    for row in x.chunks_exact(dim) {
        for (v, m) in row.iter().zip(&mean) {
            var += (*v as f64 - m).powi(2);
        }
    }
    let rms = (var / (n * dim) as f64).sqrt();
    let scale = if rms < 1e-12 { 1.0 } else { rms as f32 };
    (mean.iter().map(|m| *m as f32).collect(), vec![scale; dim])
}

pub fn standardize(x: &[f32], mean: &[f32], std: &[f32]) -> Vec<f32> {
    let dim = mean.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        out.extend(row.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s));
    }
    out
}

/// The regularised cross-entropy objective on fixed data.
struct Objective {
    x: Tensor<2>,
    xt: Tensor<2>,
    y: Tensor<2>,
    n: usize,
    d: usize,
    k: usize,
    l2: f64,
    device: Device,
}

impl Objective {
    fn new(z: &[f32], labels: &[usize], d: usize, k: usize, l2: f64, device: &Device) -> Self {
        let n = labels.len();
        let x = Tensor::<2>::from_data(TensorData::new(z.to_vec(), [n, d]), device);
        let xt = x.clone().transpose();
        let xt = Tensor::<2>::from_data(xt.into_data(), device);
        let mut onehot = vec![0f32; n * k];
        for (i, &l) in labels.iter().enumerate() {
            onehot[i * k + l] = 1.0;
        }
        let y = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), device);
        Objective {
            x,
            xt,
            y,
            n,
            d,
            k,
            l2,
            device: device.clone(),
        }
    }

    /// Loss and gradient at θ = [W (d·k), b (k)].
    fn eval(&self, theta: &[f64]) -> crate::Result<(f64, Vec<f64>)> {
        let (d, k) = (self.d, self.k);
        let w: Vec<f32> = theta[..d * k].iter().map(|v| *v as f32).collect();
        let b: Vec<f32> = theta[d * k..].iter().map(|v| *v as f32).collect();
        let wt = Tensor::<2>::from_data(TensorData::new(w, [d, k]), &self.device);
        let bt = Tensor::<1>::from_data(TensorData::new(b, [k]), &self.device);
        let logits = self.x.clone().matmul(wt) + bt.unsqueeze::<2>();
        let logp = burn::tensor::activation::log_softmax(logits, 1);
        let nll =
            -(logp.clone() * self.y.clone()).sum().into_scalar::<f32>() as f64 / self.n as f64;
        let diff = (logp.exp() - self.y.clone()) / self.n as f32;
        let gw: Vec<f32> = crate::tensor::to_vec(self.xt.clone().matmul(diff.clone()))?;
        let gb: Vec<f32> = crate::tensor::to_vec(diff.sum_dim(0))?;
        let mut reg = 0.0;
        let mut g = Vec::with_capacity(theta.len());
        for (i, gv) in gw.iter().enumerate() {
            reg += theta[i] * theta[i];
            g.push(*gv as f64 + self.l2 * theta[i]);
        }
        g.extend(gb.iter().map(|v| *v as f64));
        Ok((nll + 0.5 * self.l2 * reg, g))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimise with L-BFGS (memory 10, backtracking Armijo line search).
fn lbfgs(
    obj: &Objective,
    mut x: Vec<f64>,
    max_iter: usize,
) -> crate::Result<(Vec<f64>, f64, usize)> {
    let m = 10;
    let (mut f, mut g) = obj.eval(&x)?;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iters = 0;
    for it in 0..max_iter {
        iters = it + 1;
        let gmax = g.iter().fold(0f64, |a, v| a.max(v.abs()));
        if gmax < 1e-6 {
            break;
        }
        // two-loop recursion
        let mut q = g.clone();
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dot(&s_hist[i], &q);
            for (qj, yj) in q.iter_mut().zip(&y_hist[i]) {
                *qj -= alpha[i] * yj;
            }
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            _ => 1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            for (qj, sj) in q.iter_mut().zip(&s_hist[i]) {
                *qj += (alpha[i] - beta) * sj;
            }
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        let dir = if slope >= 0.0 {
            // not a descent direction: restart with steepest descent
            s_hist.clear();
            y_hist.clear();
            slope = -dot(&g, &g);
            g.iter().map(|v| -v).collect()
        } else {
            dir
        };
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..30 {
            let xn: Vec<f64> = x.iter().zip(&dir).map(|(a, d)| a + step * d).collect();
            let (fnew, gnew) = obj.eval(&xn)?;
            if fnew <= f + 1e-4 * step * slope {
                accepted = Some((xn, fnew, gnew));
                break;
            }
            step *= 0.5;
        }
        let Some((xn, fnew, gnew)) = accepted else {
            break;
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gnew.iter().zip(&g).map(|(a, b)| a - b).collect();
        if dot(&s, &yv) > 1e-12 {
            s_hist.push(s);
            y_hist.push(yv);
            if s_hist.len() > m {
                s_hist.remove(0);
                y_hist.remove(0);
            }
        }
        let rel = (f - fnew).abs() / f.abs().max(1.0);
        x = xn;
        f = fnew;
        g = gnew;
        if rel < 1e-10 {
            break;
        }
    }
    Ok((x, f, iters))
}

/// Result of a probe fit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeFit {
    pub head: LinearHead,
    /// The L2 strength chosen (on the mean cross-entropy).
    pub l2: f64,
    /// (l2, validation accuracy) for every value tried.
    pub search: Vec<(f64, f64)>,
    pub iterations: usize,
}

/// The L2 strengths tried, strongest first.
pub const L2_GRID: [f64; 11] = [
    1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5,
];

fn accuracy(logits: &[f32], labels: &[usize], k: usize) -> f64 {
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(i, &l)| super::metrics::top1(&logits[i * k..(i + 1) * k]) == Some(l))
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// Features `[n, dim]` (row-major) and their labels.
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    pub x: &'a [f32],
    pub y: &'a [usize],
}

/// Fit on `train`, choose the L2 strength on `val` (if it has images), then refit on
/// train + val with the chosen strength.
pub fn fit(
    train: Samples<'_>,
    val: Samples<'_>,
    dim: usize,
    classes: usize,
    device: &Device,
    max_iter: usize,
) -> crate::Result<ProbeFit> {
    let (train_x, train_y, val_x, val_y) = (train.x, train.y, val.x, val.y);
    let (mean, std) = moments(train_x, dim);
    let zt = standardize(train_x, &mean, &std);
    let head_of = |theta: &[f64], mean: &[f32], std: &[f32]| LinearHead {
        dim,
        classes,
        mean: mean.to_vec(),
        std: std.to_vec(),
        w: theta[..dim * classes].iter().map(|v| *v as f32).collect(),
        b: theta[dim * classes..].iter().map(|v| *v as f32).collect(),
    };
    let mut theta = vec![0f64; dim * classes + classes];
    let mut search = Vec::new();
    let mut best: Option<(f64, f64, Vec<f64>)> = None;
    let mut iterations = 0;
    let grid: &[f64] = if val_y.is_empty() { &[1e-3] } else { &L2_GRID };
    for &l2 in grid {
        let obj = Objective::new(&zt, train_y, dim, classes, l2, device);
        let (t, _, it) = lbfgs(&obj, theta.clone(), max_iter)?;
        iterations += it;
        theta = t;
        if val_y.is_empty() {
            best = Some((l2, 0.0, theta.clone()));
            break;
        }
        let acc = accuracy(
            &head_of(&theta, &mean, &std).logits(val_x, device)?,
            val_y,
            classes,
        );
        search.push((l2, acc));
        if best.as_ref().is_none_or(|b| acc > b.1) {
            best = Some((l2, acc, theta.clone()));
        }
    }
    let (l2, _, theta) = best.unwrap_or((1e-3, 0.0, theta));
    if val_y.is_empty() {
        return Ok(ProbeFit {
            head: head_of(&theta, &mean, &std),
            l2,
            search,
            iterations,
        });
    }
    // refit on train + val with the chosen strength
    let all_x: Vec<f32> = train_x.iter().chain(val_x).copied().collect();
    let all_y: Vec<usize> = train_y.iter().chain(val_y).copied().collect();
    let (mean2, std2) = moments(&all_x, dim);
    let z = standardize(&all_x, &mean2, &std2);
    let obj = Objective::new(&z, &all_y, dim, classes, l2, device);
    let (theta, _, it) = lbfgs(&obj, theta, max_iter)?;
    Ok(ProbeFit {
        head: head_of(&theta, &mean2, &std2),
        l2,
        search,
        iterations: iterations + it,
    })
}

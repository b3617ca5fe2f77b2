//! `whisker bench`: how fast a backbone runs on this machine and device (like timm's
//! benchmark.py): eval forward images/s at each batch size, and a fine-tuning step
//! (forward, cross-entropy, backward, SGD with momentum 0.9, every weight trainable,
//! BatchNorm frozen) images/s. Formula weights: speed does not depend on the values.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use whisker::backbones::Taps;
use whisker::Backbone;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Backbones (see `whisker models`) [default: resnet50 mobilenet_v2 efficientnet_lite0].
    models: Vec<String>,
    /// Batch sizes of the eval forward pass (comma-separated; 0: none).
    #[arg(long, value_delimiter = ',', default_value = "16", value_parser = crate::args::whole(0, crate::args::MAX_BATCH))]
    batch: Vec<usize>,
    /// Batch sizes of the training step (comma-separated; 0: none).
    #[arg(long, value_delimiter = ',', default_value = "16", value_parser = crate::args::whole(0, crate::args::MAX_BATCH))]
    train_batch: Vec<usize>,
    /// Time each case for at least this many seconds (after the warm-up).
    #[arg(long, default_value_t = 2.0, value_parser = crate::args::real(0.0, 3600.0, false))]
    min_seconds: f64,
    /// Untimed runs before timing (GPU kernels compile and tune on first use).
    #[arg(long, default_value_t = 2, value_parser = crate::args::whole(0, 1000))]
    warmup: usize,
    /// One JSON document on stdout.
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// One JSON object per case on stdout, printed as each one finishes (for long runs).
    #[arg(long)]
    jsonl: bool,
}

#[derive(serde::Serialize)]
struct Case {
    model: String,
    kind: &'static str,
    batch: usize,
    size: usize,
    iters: usize,
    ms_per_batch: f64,
    images_per_s: f64,
}

/// Deterministic pixels in [0, 1] (the same on every device).
fn pixels(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    let n = batch * 3 * size * size;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 999.0)
        .collect();
    Tensor::from_data(TensorData::new(v, [batch, 3, size, size]), device)
}

/// Seconds per call of `f`, after `warmup` calls, timed for at least `min_seconds` (and at
/// least twice). `f` must wait for the device (it reads a result back).
fn timed(
    warmup: usize,
    min_seconds: f64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, usize)> {
    for _ in 0..warmup {
        f()?;
    }
    let t = Instant::now();
    let mut iters = 0;
    while iters < 2 || t.elapsed().as_secs_f64() < min_seconds {
        f()?;
        iters += 1;
    }
    Ok((t.elapsed().as_secs_f64() / iters as f64, iters))
}

fn eval_case(name: &str, batch: usize, a: &BenchArgs, device: &Device) -> Result<Case> {
    let b = Backbone::with_formula_weights(name, device)?.fold_batchnorm();
    let size = b.spec.input_size;
    let x = pixels(batch, size, device);
    let (secs, iters) = timed(a.warmup, a.min_seconds, || {
        let out = b.forward(x.clone(), &mut Taps::none());
        // reading the logits back waits for the device
        whisker::tensor::to_vec(out.logits)?;
        Ok(())
    })?;
    Ok(case(name, "eval", batch, size, iters, secs))
}

fn train_case(name: &str, batch: usize, a: &BenchArgs, device: &Device) -> Result<Case> {
    let device = device.clone().autodiff();
    let b = Backbone::with_formula_weights(name, &device)?.set_trainable(true);
    let (size, norm) = (b.spec.input_size, b.spec.norm);
    let x = pixels(batch, size, &device);
    let labels: Vec<usize> = (0..batch).map(|i| (i * 389) % 1000).collect();
    let mut opt = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }))
        .init();
    let mut net = Some(b.net);
    let (secs, iters) = timed(a.warmup, a.min_seconds, || {
        let n = net.take().context("the network")?;
        let f = whisker::backbones::train_features(&n, norm, x.clone(), false);
        let logits = n.classifier(f);
        let loss = whisker::train::head::cross_entropy(logits, &labels, 1000, 0.0, &device);
        let mut grads = loss.backward();
        let gp = GradientsParams::from_module(&mut grads, &n);
        let n = opt.step(1e-4, n, gp);
        // a training loop reads its loss: that waits for the device
        let l = whisker::tensor::to_vec(loss)?;
        if !l[0].is_finite() {
            bail!("{name}: the loss is {}", l[0]);
        }
        net = Some(n);
        Ok(())
    })?;
    Ok(case(name, "train", batch, size, iters, secs))
}

fn case(
    model: &str,
    kind: &'static str,
    batch: usize,
    size: usize,
    iters: usize,
    secs: f64,
) -> Case {
    Case {
        model: model.to_string(),
        kind,
        batch,
        size,
        iters,
        ms_per_batch: (secs * 1e5).round() / 100.0,
        images_per_s: (batch as f64 / secs * 100.0).round() / 100.0,
    }
}

pub fn bench(a: BenchArgs, quiet: bool) -> Result<i32> {
    let device = whisker::default_device();
    let models = if a.models.is_empty() {
        vec![
            "resnet50".into(),
            "mobilenet_v2".into(),
            "efficientnet_lite0".into(),
        ]
    } else {
        a.models.clone()
    };
    // one batch of input pixels must fit in memory: refuse absurd batch sizes up front
    const MAX_INPUT: usize = 1 << 30; // f32 values: 4 GiB
    for m in &models {
        let size = whisker::backbones::spec(m)?.input_size;
        for &b in a.batch.iter().chain(&a.train_batch) {
            if b.saturating_mul(3 * size * size) > MAX_INPUT {
                bail!(
                    "{m}: a batch of {b} images of {size}×{size} is over 4 GiB of input; give smaller --batch / --train-batch sizes"
                );
            }
        }
    }
    let name = whisker::device::describe(&device);
    let threads = rayon::current_num_threads();
    let mut cases = Vec::new();
    let plan: Vec<(&String, &'static str, usize)> = models
        .iter()
        .flat_map(|m| {
            let evals = a
                .batch
                .iter()
                .filter(|&&b| b > 0)
                .map(move |&b| (m, "eval", b));
            let trains = a
                .train_batch
                .iter()
                .filter(|&&b| b > 0)
                .map(move |&b| (m, "train", b));
            evals.chain(trains)
        })
        .collect();
    let bar = crate::progress::bar(plan.len() as u64, "bench", quiet);
    if !a.json && !a.jsonl {
        let precision = if whisker::device::is_cpu(&device) {
            String::new()
        } else {
            let p = format!("{:?}", whisker::device::gpu_precision()).to_lowercase();
            format!(", GPU precision {p}")
        };
        bar.suspend(|| println!("device {name}, {threads} CPU threads{precision}"));
        bar.suspend(|| {
            println!(
                "{:<22} {:>5} {:>6} {:>10} {:>10}",
                "model", "kind", "batch", "ms/batch", "images/s"
            )
        });
    }
    for (m, kind, b) in plan {
        bar.set_message(format!("{m} {kind} batch {b}"));
        let c = match kind {
            "eval" => eval_case(m, b, &a, &device),
            _ => train_case(m, b, &a, &device),
        }
        .with_context(|| format!("{m}, {kind} batch {b}"))?;
        if a.jsonl {
            let mut line = serde_json::to_value(&c)?;
            line["device"] = name.clone().into();
            line["threads"] = threads.into();
            line["precision"] = serde_json::to_value(whisker::device::gpu_precision())?;
            bar.suspend(|| println!("{line}"));
        } else if !a.json {
            bar.suspend(|| {
                println!(
                    "{:<22} {:>5} {:>6} {:>10.2} {:>10.2}",
                    c.model, c.kind, c.batch, c.ms_per_batch, c.images_per_s
                )
            });
        }
        cases.push(c);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        let doc = serde_json::json!({
            "device": name,
            "threads": threads,
            "precision": whisker::device::gpu_precision(),
            "whisker": env!("CARGO_PKG_VERSION"),
            "results": cases,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(0)
}

//! Fine-tuning step speed: forward, cross-entropy, backward and an optimiser step (SGD with
//! momentum 0.9, or AdamW) of a backbone with its 1000-class classifier, at the backbone's
//! own input size, on the CPU, as whisker's fine-tuning runs it. Formula weights (speed does
//! not depend on the values). One JSON object per model.
//!
//!     cargo run --release --example bench_train -- --threads 2 --batch 16 --bn eval|train
//!         [--optim sgd|adamw] [--unfreeze K|all] [--min-seconds 1] [--keys FILE] [MODEL...]
//!
//! `--unfreeze K`: the classifier and the top K units of the backbone train (the rest is
//! frozen); `all` (the default): every parameter. `--bn train`: BatchNorm normalises with the
//! batch's statistics. `--keys FILE` writes the trainable parameters' checkpoint keys (one
//! per line), so that the PyTorch twin (`tools/bench/bench_train_torch.py`) trains the same
//! ones; `tools/bench/train.py` runs both alternately.

use std::collections::HashSet;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor};
use whisker::Backbone;

struct Trainable<'a>(&'a HashSet<ParamId>);

impl ModuleMapper for Trainable<'_> {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let on = self.0.contains(&p.id);
        p.set_require_grad(on)
    }
}

fn main() {
    let (mut threads, mut batch, mut min_seconds) = (2usize, 16usize, 1.0f64);
    let (mut bn, mut optim, mut unfreeze) = ("eval".to_string(), "sgd".to_string(), None);
    let mut keys_file = None;
    let mut models: Vec<String> = Vec::new();
    let fail = |m: String| -> ! {
        eprintln!("{m}");
        std::process::exit(2)
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if !a.starts_with("--") {
            models.push(a);
            continue;
        }
        let v = args
            .next()
            .unwrap_or_else(|| fail(format!("{a} needs a value")));
        let num = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| fail(format!("{a}: a number"))) };
        match a.as_str() {
            "--threads" => threads = num(&v) as usize,
            "--batch" => batch = num(&v) as usize,
            "--min-seconds" => min_seconds = num(&v),
            "--bn" if v == "eval" || v == "train" => bn = v,
            "--optim" if v == "sgd" || v == "adamw" => optim = v,
            "--unfreeze" => unfreeze = (v != "all").then(|| num(&v) as usize),
            "--keys" => keys_file = Some(v),
            _ => fail(format!("unknown option or value: {a} {v}")),
        }
    }
    if models.is_empty() {
        models = whisker::models()
            .iter()
            .map(|m| m.name.to_string())
            .collect();
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let device = Device::flex().autodiff();
    let mut keys_out = String::new();
    for name in models {
        let b =
            Backbone::with_formula_weights(&name, &device).unwrap_or_else(|e| fail(e.to_string()));
        let s = b.spec.input_size;
        let norm = b.spec.norm;
        // the classifier (the last unit) and the top `unfreeze` units of the backbone
        let n_units = b.units.len() - 1;
        let first = unfreeze.map(|k| n_units.saturating_sub(k)).unwrap_or(0);
        let trainable: Vec<_> = b
            .param_info
            .iter()
            .filter(|p| !p.buffer && p.unit >= first)
            .collect();
        for p in &trainable {
            keys_out.push_str(&format!("{name} {}\n", p.key));
        }
        let ids: HashSet<ParamId> = trainable.iter().map(|p| p.id).collect();
        let n_params = b.param_info.iter().filter(|p| ids.contains(&p.id)).count();
        let mut net = b.net.map(&mut Trainable(&ids));
        if bn == "train" {
            for m in net.batchnorms() {
                m.enable_train_stats();
            }
        }
        let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        let labels: Vec<usize> = (0..batch).map(|i| (i * 389) % 1000).collect();
        let mut opt = match optim.as_str() {
            "sgd" => SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .init(),
            _ => AdamWConfig::new().with_weight_decay(1e-2).init(),
        };
        let mut step = |net: whisker::backbones::Net| {
            let f = whisker::backbones::train_features(&net, norm, x.clone(), bn == "train");
            let logits = net.classifier(f);
            let loss = whisker::train::head::cross_entropy(logits, &labels, 1000, 0.0, &device);
            let mut grads = loss.backward();
            let gp = GradientsParams::from_module(&mut grads, &net);
            opt.step(1e-4, net, gp)
        };
        net = step(net); // warm-up
        let t = Instant::now();
        let mut iters = 0;
        while iters < 2 || t.elapsed().as_secs_f64() < min_seconds {
            net = step(net);
            iters += 1;
        }
        std::hint::black_box(&net);
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{{\"impl\": \"whisker\", \"model\": \"{name}\", \"threads\": {threads}, \"batch\": {batch}, \"size\": {s}, \"bn\": \"{bn}\", \"optim\": \"{optim}\", \"unfreeze\": \"{}\", \"trainable_tensors\": {n_params}, \"iters\": {iters}, \"ms_per_step\": {:.1}, \"images_per_s\": {:.2}}}",
            unfreeze.map(|k| k.to_string()).unwrap_or_else(|| "all".into()),
            secs * 1e3,
            batch as f64 / secs
        );
    }
    if let Some(f) = keys_file {
        std::fs::write(&f, keys_out).unwrap_or_else(|e| fail(format!("{f}: {e}")));
    }
}

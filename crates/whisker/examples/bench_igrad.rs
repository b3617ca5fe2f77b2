//! Input-gradient speed: d(logit)/d(pixels) through a frozen backbone (what `attack`,
//! `dream` and `robustness` compute every step), at the backbone's own input size. Formula
//! weights: speed does not depend on the values. One JSON object per model.
//!
//!     cargo run --release --example bench_igrad -- --threads 2 [--batch 1]
//!         [--min-seconds 1] [--engine auto|burn] [MODEL...]
//!
//! `--engine auto` (the default) runs the CPU engine's forward tape and backward pass;
//! `--engine burn` runs burn's autodiff (weights frozen too, so neither side computes weight
//! gradients). `tools/bench/igrad.py` runs this and the PyTorch twin alternately.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use whisker::backbones::plan::{set_engine, Engine};
use whisker::backbones::Taps;
use whisker::Backbone;

fn main() {
    let mut threads = 2usize;
    let mut batch = 1usize;
    let mut min_seconds = 1.0f64;
    let mut engine = "auto".to_string();
    let mut models: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    let fail = |m: String| -> ! {
        eprintln!("{m}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| fail(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--threads" => threads = val().parse().unwrap_or_else(|_| fail("--threads N".into())),
            "--batch" => batch = val().parse().unwrap_or_else(|_| fail("--batch N".into())),
            "--min-seconds" => {
                min_seconds = val()
                    .parse()
                    .unwrap_or_else(|_| fail("--min-seconds S".into()))
            }
            "--engine" => {
                engine = val();
                match engine.as_str() {
                    "auto" => set_engine(Engine::Auto),
                    "burn" => set_engine(Engine::Burn),
                    e => fail(format!("--engine auto|burn, not {e}")),
                }
            }
            m if m.starts_with("--") => fail(format!("unknown option {m}")),
            m => models.push(m.to_string()),
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
    for name in models {
        let b =
            Backbone::with_formula_weights(&name, &device).unwrap_or_else(|e| fail(e.to_string()));
        let s = b.spec.input_size;
        let x0 = Tensor::<4>::random([batch, 3, s, s], Distribution::Uniform(0.0, 1.0), &device);
        let step = || {
            let x = x0.clone().detach().require_grad();
            let logits = b.forward(x.clone(), &mut Taps::none()).logits;
            let grads = logits.slice([0..batch, 281..282]).sum().backward();
            let g = x
                .grad(&grads)
                .unwrap_or_else(|| fail("no input gradient".into()));
            std::hint::black_box(whisker::tensor::to_vec(g).expect("gradient"));
        };
        step(); // warm-up (compiles the engine's plan)
        let t = Instant::now();
        let mut iters = 0;
        while iters < 2 || t.elapsed().as_secs_f64() < min_seconds {
            step();
            iters += 1;
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{{\"impl\": \"whisker\", \"engine\": \"{engine}\", \"model\": \"{name}\", \"threads\": {threads}, \"batch\": {batch}, \"size\": {s}, \"iters\": {iters}, \"ms_per_step\": {:.2}}}",
            secs * 1e3
        );
    }
}

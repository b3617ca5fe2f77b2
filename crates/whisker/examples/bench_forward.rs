//! Forward-pass throughput of every backbone (eval mode, batch 16, 224×224 unless the
//! backbone's own input size is asked for), with a fixed thread count. Formula weights:
//! speed does not depend on the values. Prints one JSON object per line.
//!
//!     cargo run --release --example bench_forward -- --threads 2 [--batch 16] [--iters 3] [MODEL...]
//!
//! `tools/bench/compare.sh` runs this and the PyTorch twin (`tools/bench/bench_torch.py`) in
//! the same run and prints the ratio table of BENCHMARKS.md.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use whisker::backbones::Taps;
use whisker::{Backbone, MODELS};

fn main() {
    let mut threads = 2usize;
    let mut batch = 16usize;
    let mut iters = 3usize;
    let mut native = false;
    let mut fold = true;
    let mut models: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).unwrap_or(threads),
            "--batch" => batch = args.next().and_then(|v| v.parse().ok()).unwrap_or(batch),
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters),
            "--native-size" => native = true,
            "--no-fold" => fold = false,
            m => models.push(m.to_string()),
        }
    }
    if models.is_empty() {
        models = MODELS.iter().map(|m| m.name.to_string()).collect();
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let device = Device::flex();
    for name in models {
        let b = match Backbone::with_formula_weights(&name, &device) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let b = if fold { b.fold_batchnorm() } else { b };
        let s = if native { b.spec.input_size } else { 224 };
        let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Uniform(0.0, 1.0), &device);
        let run = || {
            let out = b.forward(x.clone(), &mut Taps::none());
            let _ = out.logits.into_data();
        };
        run(); // warm-up
        let t = Instant::now();
        for _ in 0..iters {
            run();
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{{\"impl\": \"whisker\", \"model\": \"{name}\", \"threads\": {threads}, \"batch\": {batch}, \"size\": {s}, \"seconds_per_batch\": {secs:.4}, \"images_per_s\": {:.2}}}",
            batch as f64 / secs
        );
    }
}

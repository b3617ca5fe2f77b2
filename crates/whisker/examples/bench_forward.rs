//! Forward-pass throughput of a backbone (eval mode), with a fixed thread count and batch, at
//! the backbone's own input size (224 for ResNet/VGG/MobileNet, 224–300 for Lite0–4).
//! Formula weights: speed does not depend on the values. Prints one JSON object per model.
//!
//!     cargo run --release --example bench_forward -- --threads 2 [--batch 16]
//!         [--min-seconds 1] [--size S] [--engine auto|burn] [--isa avx512|avx2|portable]
//!         [MODEL...]
//!
//! `--engine burn` runs burn's operations instead of whisker's CPU engine (BatchNorm folded
//! either way); `--isa` picks the engine's instruction-set path. `tools/bench/compare.py`
//! runs this, the PyTorch twin and ONNX Runtime alternately and prints the ratio tables.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use whisker::backbones::plan::{Isa, IsaKind, Plan};
use whisker::backbones::Taps;
use whisker::Backbone;

fn main() {
    let mut threads = 2usize;
    let mut batch = 16usize;
    let mut min_seconds = 1.0f64;
    let mut size: Option<usize> = None;
    let mut burn = false;
    let mut isa = Isa::current();
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
            "--size" => size = Some(val().parse().unwrap_or_else(|_| fail("--size N".into()))),
            "--engine" => {
                burn = match val().as_str() {
                    "burn" => true,
                    "auto" => false,
                    e => fail(format!("--engine auto|burn, not {e}")),
                }
            }
            "--isa" => {
                let v = val();
                let kind = IsaKind::parse(&v).unwrap_or_else(|| fail(format!("unknown ISA {v}")));
                isa = Isa::new(kind)
                    .unwrap_or_else(|| fail(format!("this CPU cannot run the {v} kernels")))
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
    let device = Device::flex();
    for name in models {
        let b = Backbone::with_formula_weights(&name, &device)
            .unwrap_or_else(|e| fail(e.to_string()))
            .fold_batchnorm();
        let s = size.unwrap_or(b.spec.input_size);
        let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Uniform(0.0, 1.0), &device);
        let dims = x.dims();
        let pixels = whisker::tensor::to_vec(x.clone()).expect("f32 pixels");
        let plan = (!burn).then(|| {
            Plan::compile(&b)
                .map(|p| p.with_isa(isa))
                .unwrap_or_else(|e| fail(e.to_string()))
        });
        let run = || match &plan {
            Some(p) => {
                let out = p
                    .run(&pixels, dims, false, true, &mut Taps::none(), &device)
                    .unwrap_or_else(|e| fail(e.to_string()));
                std::hint::black_box(out.logits);
            }
            None => {
                let out = b.net.classifier(
                    b.net
                        .features(b.spec.norm.normalize(x.clone()), &mut Taps::none()),
                );
                let _ = out.into_data();
            }
        };
        run(); // warm-up
        let t = Instant::now();
        let mut iters = 0;
        while iters < 2 || t.elapsed().as_secs_f64() < min_seconds {
            run();
            iters += 1;
        }
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{{\"impl\": \"whisker\", \"engine\": \"{}\", \"isa\": \"{}\", \"model\": \"{name}\", \"threads\": {threads}, \"batch\": {batch}, \"size\": {s}, \"iters\": {iters}, \"seconds_per_batch\": {secs:.5}, \"images_per_s\": {:.2}}}",
            if burn { "burn" } else { "engine" },
            if burn { "-" } else { isa.name() },
            batch as f64 / secs
        );
    }
}

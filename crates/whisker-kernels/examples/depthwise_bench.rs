//! Time of one depthwise convolution (hot caches: the same input again and again), on every
//! instruction-set path this CPU has, with the bytes it moves per second.
//!
//!     cargo run --release -p whisker-kernels --example depthwise_bench -- [--threads 2]
//!         [--batch 1] [--size 56] [--c 144] [--k 3] [--stride 1] [--seconds 0.5]

use std::time::Instant;

use whisker_kernels::*;

fn main() {
    let (mut threads, mut batch, mut size, mut c, mut k, mut stride) = (2, 1, 56, 144, 3, 1);
    let mut seconds = 0.5f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        let n = v.parse().ok();
        match (a.as_str(), n) {
            ("--threads", Some(n)) => threads = n,
            ("--batch", Some(n)) => batch = n,
            ("--size", Some(n)) => size = n,
            ("--c", Some(n)) => c = n,
            ("--k", Some(n)) => k = n,
            ("--stride", Some(n)) => stride = n,
            ("--seconds", _) => seconds = v.parse().unwrap_or(seconds),
            _ => {
                eprintln!("unknown option or value: {a} {v}");
                std::process::exit(2);
            }
        }
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let s = ConvShape::symmetric(batch, size, size, stride, k / 2);
    let (oh, ow) = s.out_hw(k, k).expect("shape");
    let x: Vec<f32> = (0..batch * size * size * c)
        .map(|i| (i % 97) as f32 / 97.0)
        .collect();
    let w: Vec<f32> = (0..c * k * k).map(|i| (i % 13) as f32 / 13.0).collect();
    let p = PackedDepthwise::from_oihw(&w, None, c, k, k).expect("weights");
    let mut out = vec![0f32; batch * oh * ow * c];
    let bytes = ((x.len() + out.len()) * 4) as f64;
    println!("{}", cpu_description());
    for isa in Isa::available() {
        depthwise(isa, &p, &x, &s, Act::Relu6, &mut out).expect("run");
        let t = Instant::now();
        let mut iters = 0;
        while iters < 3 || t.elapsed().as_secs_f64() < seconds {
            depthwise(isa, &p, &x, &s, Act::Relu6, &mut out).expect("run");
            iters += 1;
        }
        let sec = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{:>8}  {batch}×{size}×{size}×{c} k{k} s{stride}: {:8.3} ms  {:6.1} GB/s",
            isa.name(),
            sec * 1e3,
            bytes / sec / 1e9
        );
    }
}

//! Feature-extraction throughput (decode + resize + crop + forward, streamed, no cache) on
//! real photos, and the linear-probe fit time for 3,680 × 1,280 features and 37 classes
//! (the size of Oxford-IIIT Pet's trainval set with EfficientNet-Lite0).
//!
//!     cargo run --release --example bench_extract -- --threads 2 --images 96 --weights-dir DIR MODEL...
//!
//! MODEL weights are taken from the cache or `--weights-dir/<model>.pth`; a model without
//! real weights uses formula weights (speed does not depend on the values). Photos come from
//! `$WHISKER_TESTDATA` (tools/fetch-testdata.sh). One JSON object per line.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use whisker::cache::Cache;
use whisker::features::extract;
use whisker::train::probe;
use whisker::Backbone;

fn main() {
    let mut threads = 2usize;
    let mut images = 96usize;
    let mut models = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|v| v.parse().ok()).unwrap_or(threads),
            "--images" => images = args.next().and_then(|v| v.parse().ok()).unwrap_or(images),
            m => models.push(m.to_string()),
        }
    }
    if models.is_empty() {
        models = vec!["efficientnet_lite0".into(), "resnet50".into()];
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("pool");
    let data = std::env::var_os("WHISKER_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.testdata"));
    let photos = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];
    // distinct files, so nothing can be shared between them
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for i in 0..images {
        let src = data.join(photos[i % photos.len()]);
        let dst = dir
            .path()
            .join(format!("{i:04}-{}", photos[i % photos.len()]));
        std::fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("{}: {e} (run tools/fetch-testdata.sh)", src.display()));
        paths.push(dst);
    }
    let device = Device::flex();
    for name in &models {
        let b = match Cache::default().get(name).ok().flatten() {
            Some(c) => Backbone::from_file(name, &c.file, &device).expect("weights"),
            None => Backbone::with_formula_weights(name, &device).expect("model"),
        };
        let _ = extract(
            &b,
            &device,
            &paths[..16.min(paths.len())],
            None,
            16,
            &|_, _| {},
        ); // warm-up
        let t = Instant::now();
        let ex = extract(&b, &device, &paths, None, 16, &|_, _| {}).expect("extract");
        let secs = t.elapsed().as_secs_f64();
        assert!(ex.errors.iter().all(Option::is_none));
        println!(
            "{{\"impl\": \"whisker\", \"bench\": \"extract\", \"model\": \"{name}\", \"threads\": {threads}, \"images\": {images}, \"seconds\": {secs:.3}, \"images_per_s\": {:.2}}}",
            images as f64 / secs
        );
    }
    // probe fit: 3,680 x 1,280, 37 classes, 10 % held out for choosing L2
    let (n, d, k) = (3680usize, 1280usize, 37usize);
    let mut x = vec![0f32; n * d];
    let mut y = vec![0usize; n];
    for i in 0..n {
        y[i] = i % k;
        for j in 0..d {
            let noise = whisker::weights::formula::unit((i * d + j) as u64, 11) as f32;
            let centre = whisker::weights::formula::unit((y[i] * d + j) as u64, 12) as f32;
            x[i * d + j] = (noise + 0.6 * centre).max(0.0);
        }
    }
    let split = n * 9 / 10;
    let t = Instant::now();
    let fit = probe::fit(
        probe::Samples {
            x: &x[..split * d],
            y: &y[..split],
        },
        probe::Samples {
            x: &x[split * d..],
            y: &y[split..],
        },
        d,
        k,
        &device,
        300,
    )
    .unwrap();
    println!(
        "{{\"impl\": \"whisker\", \"bench\": \"probe_fit\", \"n\": {n}, \"dim\": {d}, \"classes\": {k}, \"threads\": {threads}, \"seconds\": {:.3}, \"lbfgs_iterations\": {}, \"l2_values\": {}}}",
        t.elapsed().as_secs_f64(),
        fit.iterations,
        fit.search.len() + 1
    );
}

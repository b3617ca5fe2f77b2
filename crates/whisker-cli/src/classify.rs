//! `whisker classify`

use std::path::PathBuf;

use anyhow::{Context, Result};
use whisker::backbones::{imagenet_classes, top_k, Taps};
use whisker::data::transforms::{load_many, to_tensor};
use whisker::weights::cache::{sha256_file, Cache};
use whisker::Backbone;

#[derive(clap::Args)]
pub struct Args {
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Backbone (see `whisker models`).
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Weights file (default: the cached weights of the backbone).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// How many classes to show.
    #[arg(long, short = 'k', default_value_t = 5, value_parser = crate::args::count)]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::count)]
    batch_size: usize,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, quiet: bool) -> Result<i32> {
    let device = whisker::default_device();
    let (path, sha) = match &a.weights {
        Some(w) => (w.clone(), sha256_file(w)?),
        None => {
            let c = Cache::default().require(&a.backbone)?;
            (c.file, c.sha256)
        }
    };
    let model = Backbone::from_file(&a.backbone, &path, &device)
        .with_context(|| format!("loading {} weights", a.backbone))?
        .fold_batchnorm();
    let pre = model.preprocess();
    let labels = imagenet_classes();
    let pb = crate::progress::bar(
        a.images.len() as u64,
        "classify",
        quiet || a.images.len() < 4,
    );
    let mut results = Vec::new();
    let mut failed = 0;
    for chunk in a.images.chunks(a.batch_size.max(1)) {
        let loaded = load_many(chunk, &pre);
        let ok: Vec<_> = loaded
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut tops = if ok.is_empty() {
            Vec::new()
        } else {
            let out = model.forward(to_tensor(&ok, &device), &mut Taps::none());
            top_k(out.logits, a.top, labels)
        }
        .into_iter();
        for (p, r) in chunk.iter().zip(loaded) {
            match r {
                Ok(_) => {
                    let top = tops.next().unwrap_or_default();
                    results.push(serde_json::json!({ "image": crate::path_str(p), "top": top }));
                }
                Err(e) => {
                    failed += 1;
                    results.push(
                        serde_json::json!({ "image": crate::path_str(p), "error": e.to_string() }),
                    );
                }
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    print_results(&a.backbone, &sha, &results, a.json)?;
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Print classification results: one JSON document, or a human listing.
pub fn print_results(
    backbone: &str,
    sha: &str,
    results: &[serde_json::Value],
    json: bool,
) -> Result<()> {
    if json {
        let doc = serde_json::json!({
            "backbone": backbone,
            "weights_sha256": sha,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for r in results {
            let img = r["image"].as_str().unwrap_or_default();
            if let Some(e) = r.get("error") {
                eprintln!("{img}: error: {}", e.as_str().unwrap_or_default());
                continue;
            }
            println!("{img}");
            for (i, t) in r["top"].as_array().into_iter().flatten().enumerate() {
                println!(
                    "  {}. {:<28} {:>6.2}%  (class {:>3}, logit {:.3})",
                    i + 1,
                    t["label"].as_str().unwrap_or_default(),
                    t["prob"].as_f64().unwrap_or(0.0) * 100.0,
                    t["index"],
                    t["logit"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}

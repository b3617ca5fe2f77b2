//! `whisker classify` (a zoo backbone, ImageNet classes), and the output both it and
//! `whisker predict` print: a listing streamed as batches finish, or one JSON document, and
//! optionally a CSV file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use whisker::model::{Model, PredictOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Images, or folders of images (searched recursively).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Backbone (see `whisker models`).
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Weights file (default: the cached weights of the backbone).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// How many classes to show.
    #[arg(long, short = 'k', default_value_t = 5, value_parser = crate::args::whole(1, 100_000))]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// Also write the results as CSV (image, rank, index, label, probability).
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, quiet: bool) -> Result<i32> {
    let device = whisker::default_device();
    let model = match &a.weights {
        Some(w) => Model::from_weights(&a.backbone, w, &device),
        None => Model::pretrained(&a.backbone, &device),
    }
    .with_context(|| format!("loading {} weights", a.backbone))?
    .for_inference();
    let images = expand(&a.images)?;
    run_model(
        &model,
        &images,
        &Output {
            top: a.top,
            json: a.json,
            csv: a.csv.clone(),
        },
        &PredictOptions {
            batch_size: a.batch_size,
            tta: false,
            cache: true,
        },
        quiet,
    )
}

/// How results are shown.
pub struct Output {
    pub top: usize,
    pub json: bool,
    pub csv: Option<PathBuf>,
}

/// Files as given, and every file inside folders (recursively, sorted): a file there that is
/// not an image is classified as a failure with its reason (listed, exit 1), not silently
/// left out. Hidden files (`.DS_Store`) are left out; links to folders already seen, or
/// outside the folder given, are not followed (said on stderr).
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in inputs {
        if p.is_dir() {
            let before = out.len();
            let root =
                std::fs::canonicalize(p).with_context(|| format!("reading {}", p.display()))?;
            let mut outside = Vec::new();
            whisker::io::walk_files(p, &root, &mut seen, &mut out, &mut outside, usize::MAX)?;
            for d in outside {
                eprintln!(
                    "whisker: {}: a link to a folder outside {}: not followed",
                    d.display(),
                    root.display()
                );
            }
            if out.len() == before {
                anyhow::bail!("{}: no files in this folder", p.display());
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Classify `images` with `model` in chunks: the listing is printed as each chunk finishes
/// (JSON at the end), with a progress bar. Exit code 1 if an image could not be read.
pub fn run_model(
    model: &Model,
    images: &[PathBuf],
    out: &Output,
    opts: &PredictOptions,
    quiet: bool,
) -> Result<i32> {
    let pb = crate::progress::bar(images.len() as u64, "images", quiet || images.len() < 4);
    let mut results = Vec::with_capacity(images.len());
    let mut csv = String::from("image,rank,index,label,probability,error\n");
    let mut failed = 0;
    let chunk = (opts.batch_size * 4).max(16);
    for (c, paths) in images.chunks(chunk).enumerate() {
        let base = (c * chunk) as u64;
        let p = model.predict_files(paths, opts, &|d, _| pb.set_position(base + d as u64))?;
        for (i, path) in paths.iter().enumerate() {
            let name = crate::path_str(path);
            let r = match &p.errors[i] {
                Some(e) => {
                    failed += 1;
                    csv.push_str(&format!("{},,,,,{}\n", csv_field(&name), csv_field(e)));
                    if !out.json {
                        // the error names the file already
                        pb.suspend(|| eprintln!("error: {e}"));
                    }
                    serde_json::json!({ "image": name, "error": e })
                }
                None => {
                    let top = model.top_k(&p, i, out.top);
                    for (rank, t) in top.iter().enumerate() {
                        csv.push_str(&format!(
                            "{},{},{},{},{},\n",
                            csv_field(&name),
                            rank + 1,
                            t.index,
                            csv_field(&t.label),
                            t.prob
                        ));
                    }
                    if !out.json {
                        pb.suspend(|| print_listing(&name, &top, p.tta));
                    }
                    let top: Vec<serde_json::Value> = top
                        .iter()
                        .map(|t| {
                            let mut v = serde_json::json!({"index": t.index, "label": t.label, "prob": t.prob});
                            if !p.tta {
                                v["logit"] = serde_json::json!(t.logit);
                            }
                            v
                        })
                        .collect();
                    serde_json::json!({ "image": name, "top": top })
                }
            };
            results.push(r);
        }
    }
    pb.finish_and_clear();
    if failed > 0 {
        eprintln!(
            "whisker: {failed} of {} files could not be classified (listed above{})",
            images.len(),
            if out.json { " in the JSON" } else { "" }
        );
    }
    if out.json {
        let doc = serde_json::json!({
            "backbone": model.backbone().spec.name,
            "weights_sha256": model.weights_sha256(),
            "tta": opts.tta,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if let Some(f) = &out.csv {
        whisker::io::write_atomic(f, csv.as_bytes())?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print_listing(name: &str, top: &[whisker::backbones::Ranked], tta: bool) {
    println!("{name}");
    for (i, t) in top.iter().enumerate() {
        if tta {
            println!(
                "  {}. {:<28} {:>6.2}%  (class {:>3}, mean of 6 views)",
                i + 1,
                t.label,
                t.prob * 100.0,
                t.index
            );
        } else {
            println!(
                "  {}. {:<28} {:>6.2}%  (class {:>3}, logit {:.3})",
                i + 1,
                t.label,
                t.prob * 100.0,
                t.index,
                t.logit
            );
        }
    }
}

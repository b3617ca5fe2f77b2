//! `whisker extract`: features of a dataset, a folder or a list of images, written to
//! Parquet or NumPy shards that a rerun resumes and several processes can share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use whisker::extract::{ExtractOptions, FileFormat, Input, Summary, Target};
use whisker::features::{Output, Pool};
use whisker::model::Model;

#[derive(clap::Args)]
pub struct ExtractArgs {
    /// A dataset folder (a folder per class, Oxford-IIIT Pet, Cats vs Dogs: labels are
    /// written), a folder of images (searched recursively), or a list: .txt (one path a
    /// line), .csv or .parquet (a `path` column, and optionally `label`); relative paths are
    /// relative to the list's folder.
    input: PathBuf,
    /// The output folder: part-IIIII.parquet (or .npy) per shard, with completion records.
    #[arg(long, short)]
    out: PathBuf,
    /// Backbone (see `whisker models`).
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Backbone weights file (default: the cache).
    #[arg(long, short, conflicts_with = "model")]
    weights: Option<PathBuf>,
    /// A trained run (or its model.safetensors): its backbone, fine-tuned or not.
    #[arg(long, conflicts_with = "backbone")]
    model: Option<PathBuf>,
    /// A layer's output instead of the feature vector (see `whisker featuremap
    /// --list-layers`).
    #[arg(long)]
    layer: Option<String>,
    /// How a layer's output becomes one vector: avg or max over positions (a transformer
    /// block's patch tokens), cls (a transformer block's class token), none (flattened)
    /// [default: avg].
    #[arg(long, requires = "layer", value_parser = ["avg", "max", "cls", "none"])]
    pool: Option<String>,
    /// File format of the shards.
    #[arg(long, default_value = "parquet", value_parser = ["parquet", "npy"])]
    format: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// Shards the sorted listing is cut into (the same for every process that shares --out).
    #[arg(long, default_value_t = 1, value_parser = crate::args::whole(1, 1_000_000))]
    num_shards: usize,
    /// Compute only this shard (0-based; e.g. a job array's task id) [default: every shard
    /// not complete yet].
    #[arg(long, value_parser = crate::args::whole(0, 999_999))]
    shard_id: Option<usize>,
    /// When every shard is complete, also write them as one file (Parquet, or .npy with its
    /// .csv index).
    #[arg(long, value_name = "FILE")]
    merge: Option<PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn extract(a: ExtractArgs, quiet: bool) -> Result<i32> {
    let device = whisker::default_device();
    let input = Input::open(&a.input)?;
    let model = match &a.model {
        Some(m) => Model::load(m, &device)?,
        None => Model::extractor(&a.backbone, a.weights.as_deref(), &device)
            .with_context(|| format!("loading {} weights", a.backbone))?,
    }
    .for_inference();
    let output = match &a.layer {
        None => Output::Features,
        Some(l) => Output::Layer {
            layer: l.clone(),
            pool: Pool::parse(a.pool.as_deref().unwrap_or("avg"))?,
        },
    };
    let opts = ExtractOptions {
        target: Target::Embedding(output),
        format: file_format(&a.format),
        batch_size: a.batch_size,
        num_shards: a.num_shards,
        shard_id: a.shard_id,
    };
    run_and_report(
        &model,
        &input,
        &a.out,
        &opts,
        a.merge.as_deref(),
        a.json,
        quiet,
    )
}

pub fn file_format(s: &str) -> FileFormat {
    if s == "npy" {
        FileFormat::Npy
    } else {
        FileFormat::Parquet
    }
}

/// Run an extraction (features or predictions) with a progress bar, merge when asked and
/// complete, and say what was done.
pub fn run_and_report(
    model: &Model,
    input: &Input,
    out: &Path,
    opts: &ExtractOptions,
    merge: Option<&Path>,
    json: bool,
    quiet: bool,
) -> Result<i32> {
    let pb = crate::progress::bar(0, "extracting", quiet);
    let s = whisker::extract::run(model, input, out, opts, &|done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let merged = match (merge, s.complete) {
        (Some(dest), true) => Some(whisker::extract::merge(out, dest)?),
        _ => None,
    };
    report(out, &s, merged.as_ref(), json);
    if merge.is_some() && !s.complete {
        eprintln!("whisker: not merged: shards are still to do");
    }
    Ok(0)
}

fn report(out: &Path, s: &Summary, merged: Option<&whisker::extract::Merged>, json: bool) {
    let rows: usize = s.records.iter().map(|r| r.rows).sum();
    let failed: Vec<&whisker::extract::FailedImage> =
        s.records.iter().flat_map(|r| &r.errors).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "out": crate::path_str(out),
                "manifest": s.manifest,
                "shards_computed": s.computed,
                "shards_skipped": s.skipped,
                "complete": s.complete,
                "images": rows,
                "failed": failed,
                "images_per_s": s.images_per_s,
                "merged": merged.map(|m| m.files.iter().map(|f| crate::path_str(f)).collect::<Vec<_>>()),
            }))
            .unwrap_or_default()
        );
    } else {
        let m = &s.manifest;
        println!(
            "{} images, {} in {}: {} shard(s) computed{}, {} already complete{}",
            rows,
            match &m.classes {
                Some(c) => format!("the probabilities of {} classes each", c.len()),
                None => format!(
                    "{} values each ({} {}, {} pooling)",
                    m.dim, m.backbone, m.layer, m.pool
                ),
            },
            out.display(),
            s.computed.len(),
            if s.computed.is_empty() {
                String::new()
            } else {
                format!(" ({:.1} images/s)", s.images_per_s)
            },
            s.skipped.len(),
            if s.complete {
                String::new()
            } else {
                format!(
                    "; {} of {} shards still to do",
                    (0..m.num_shards)
                        .filter(|&i| whisker::extract::complete_record(out, i).is_none())
                        .count(),
                    m.num_shards
                )
            }
        );
        if let Some(mg) = merged {
            println!(
                "merged: {}",
                mg.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !failed.is_empty() {
            eprintln!(
                "whisker: {} image(s) could not be used (their rows carry the reason in `error`):",
                failed.len()
            );
            for f in failed.iter().take(20) {
                eprintln!("  {}", f.error);
            }
            if failed.len() > 20 {
                eprintln!("  … and {} more", failed.len() - 20);
            }
        }
    }
}

//! `whisker predict` (a trained model) and `whisker lr-find`.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;
use whisker::learner::Learner;
use whisker::model::{Model, PredictOptions};

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A run directory (or its model.safetensors).
    model: PathBuf,
    /// Images, or folders of images (searched recursively).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// How many classes to show.
    #[arg(long, short = 'k', default_value_t = 5, value_parser = crate::args::whole(1, 100_000))]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// Test-time augmentation: average the probabilities of the centre crop, its mirror
    /// image and the four corner crops.
    #[arg(long)]
    tta: bool,
    /// Also write the results as CSV (image, rank, class, probability).
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Write the predictions of one input (a dataset, a folder or a list, as `whisker
    /// extract` reads) to Parquet or NumPy shards in this folder: path, label, prediction,
    /// probability, probabilities (every class), error.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tta", "csv"])]
    out: Option<PathBuf>,
    /// File format of the shards (with --out).
    #[arg(long, default_value = "parquet", value_parser = ["parquet", "npy"], requires = "out")]
    format: String,
    /// Shards the sorted listing is cut into (with --out).
    #[arg(long, default_value_t = 1, value_parser = crate::args::whole(1, 1_000_000), requires = "out")]
    num_shards: usize,
    /// Compute only this shard (with --out) [default: every shard not complete yet].
    #[arg(long, value_parser = crate::args::whole(0, 999_999), requires = "out")]
    shard_id: Option<usize>,
    /// When every shard is complete, also write them as one file (with --out).
    #[arg(long, value_name = "FILE", requires = "out")]
    merge: Option<PathBuf>,
}

pub fn predict(a: PredictArgs, quiet: bool) -> Result<i32> {
    let model = Model::load(&a.model, &whisker::default_device())?.for_inference();
    if let Some(out) = &a.out {
        let [input] = a.images.as_slice() else {
            anyhow::bail!(
                "--out takes one input (a dataset, a folder or a list of paths), not {}",
                a.images.len()
            );
        };
        let input = whisker::extract::Input::open(input)?;
        let opts = whisker::extract::ExtractOptions {
            target: whisker::extract::Target::Predictions,
            format: crate::extract::file_format(&a.format),
            batch_size: a.batch_size,
            num_shards: a.num_shards,
            shard_id: a.shard_id,
        };
        return crate::extract::run_and_report(
            &model,
            &input,
            out,
            &opts,
            a.merge.as_deref(),
            a.json,
            quiet,
        );
    }
    let images = crate::classify::expand(&a.images)?;
    crate::classify::run_model(
        &model,
        &images,
        &crate::classify::Output {
            top: a.top,
            json: a.json,
            csv: a.csv.clone(),
        },
        &PredictOptions {
            batch_size: a.batch_size,
            tta: a.tta,
            cache: true,
        },
        quiet,
    )
}

#[derive(clap::Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    data: crate::train::DataArgs,
    /// Backbone (see `whisker models`).
    #[arg(long, short, default_value = "efficientnet_lite0")]
    backbone: String,
    /// Backbone weights file (default: the cache).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// Where to write lr_find.png (default: the current directory).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Hidden units of the MLP head.
    #[arg(long, default_value_t = 512, value_parser = crate::args::whole(1, 1 << 16))]
    hidden: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64, value_parser = crate::args::whole(1, 1 << 16))]
    head_batch_size: usize,
    /// Smallest learning rate tried.
    #[arg(long, default_value_t = 1e-7, value_parser = crate::args::real(0.0, 1e3, false))]
    start_lr: f64,
    /// Largest learning rate tried.
    #[arg(long, default_value_t = 10.0, value_parser = crate::args::real(0.0, 1e3, false))]
    end_lr: f64,
    /// Learning rates tried (one mini-batch each).
    #[arg(long, default_value_t = 100, value_parser = crate::args::whole(1, crate::args::MAX_STEPS))]
    steps: usize,
    /// Seed of the split and the head's initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass during extraction.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// `whisker lr-find`: the learning-rate range test for the head, on cached features of the
/// training split.
pub fn lr_find(a: LrFindArgs, quiet: bool) -> Result<i32> {
    if a.start_lr >= a.end_lr {
        anyhow::bail!(
            "--start-lr {} must be below --end-lr {}",
            a.start_lr,
            a.end_lr
        );
    }
    let ds = a.data.open()?;
    let learner = Learner::new(whisker::learner::TrainConfig {
        mode: whisker::learner::Mode::Head,
        backbone: a.backbone.clone(),
        weights: a.weights.clone(),
        hidden: a.hidden,
        head_batch_size: a.head_batch_size,
        seed: a.seed,
        batch_size: a.batch_size,
        ..Default::default()
    });
    let bars = crate::progress::Bars::new(quiet);
    let curve = learner.lr_find(
        &ds,
        whisker::train::head::RangeTest {
            start: a.start_lr,
            end: a.end_lr,
            steps: a.steps,
        },
        &bars,
    )?;
    let (steep, min10) = whisker::train::head::lr_suggestions(&curve);
    std::fs::create_dir_all(&a.out)?;
    let png = a.out.join("lr_find.png");
    whisker::report::lr_find_plot(&curve, steep, &png)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "steepest": steep, "minimum_over_10": min10, "curve": curve,
                "plot": crate::path_str(&png)
            }))?
        );
    } else {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2e}")).unwrap_or_else(|| "-".into());
        println!(
            "suggested learning rate: {} (steepest descent), {} (minimum / 10); plot: {}",
            f(steep),
            f(min10),
            png.display()
        );
    }
    Ok(0)
}

//! `whisker report`: a run's `report.html`, drawn again (after `eval`, on another copy of the
//! dataset, with more top losses).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use whisker::data::datasets::{Dataset, Format, Labels};
use whisker::learner::report::{write_report, Evaluated, ReportOptions};
use whisker::learner::{evaluate_model, Subset};
use whisker::model::Model;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// A run directory (from `whisker train`).
    run: PathBuf,
    /// The dataset the run was trained on, evaluated for the metrics and the top losses
    /// [default: the run's own dataset folder, when it is still there].
    dataset: Option<PathBuf>,
    /// Dataset layout (default: as the run recorded, else detected).
    #[arg(long, value_parser = ["oxford-pets", "cats-vs-dogs", "image-folder"])]
    format: Option<String>,
    /// Which images: the run's test or validation split, or all of the dataset.
    #[arg(long, default_value = "test", value_parser = ["test", "val", "all"])]
    split: String,
    /// How many of the most confidently wrong images to show, with their Grad-CAM.
    #[arg(long, default_value_t = 12, value_parser = crate::args::whole(0, 1000))]
    top_losses: usize,
    /// No Grad-CAM overlays in the gallery (faster on big backbones).
    #[arg(long)]
    no_cam: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// The page [default: RUN/report.html].
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON document on stdout (the page's path and the metrics shown).
    #[arg(long)]
    json: bool,
}

/// The dataset of a run: as given, or the folder it recorded; its layout as recorded unless
/// told; Oxford-IIIT Pet with species labels when the model has two classes.
fn open_dataset(a: &ReportArgs, model: &Model) -> Result<Option<Dataset>> {
    let settings = model.trained().map(|t| &t.meta.settings);
    let recorded = settings
        .and_then(|s| s["dataset"].as_str())
        .map(PathBuf::from);
    let root = match (&a.dataset, recorded) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if d.is_dir() => d,
        _ => return Ok(None),
    };
    let format: Option<Format> = match &a.format {
        Some(f) => Some(f.parse()?),
        None => settings
            .and_then(|s| serde_json::from_value(s["format"].clone()).ok())
            .filter(|_| a.dataset.is_none()),
    };
    let ds = Dataset::open(&root, format, Labels::Breed)?;
    if ds.classes != model.labels() && ds.format == Format::OxfordPets {
        return Ok(Some(Dataset::open(
            &root,
            Some(ds.format),
            Labels::Species,
        )?));
    }
    Ok(Some(ds))
}

pub fn report(a: ReportArgs, quiet: bool) -> Result<i32> {
    let run = whisker::run::model_file(&a.run)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let model = Model::load(&run, &whisker::default_device())
        .with_context(|| format!("{}: not a complete whisker run", run.display()))?
        .for_inference();
    let ds = open_dataset(&a, &model)?;
    let bars = crate::progress::Bars::new(quiet);
    let progress =
        |phase: &str, d: usize, n: usize| whisker::learner::Observer::progress(&bars, phase, d, n);
    let ev = match &ds {
        Some(ds) => {
            let subset = match a.split.as_str() {
                "all" => Subset::All,
                p => Subset::Part(p.parse()?),
            };
            Some(evaluate_model(
                &model,
                &run,
                ds,
                subset,
                a.batch_size,
                &|d, n| progress("evaluate", d, n),
            )?)
        }
        None => {
            if !quiet && !a.json {
                eprintln!(
                    "whisker: the run's dataset is not there: the page shows the recorded test metrics, without the top losses (give DATASET to evaluate)"
                );
            }
            None
        }
    };
    whisker::learner::Observer::finished(&bars, "evaluate");
    let evaluated = match (&ev, &ds) {
        (Some(ev), Some(ds)) => Some(Evaluated {
            part: a.split.clone(),
            ev,
            ds,
        }),
        _ => None,
    };
    let opts = ReportOptions {
        top_losses: a.top_losses,
        cam: !a.no_cam,
        batch_size: a.batch_size,
    };
    let path = write_report(&run, None, evaluated, a.out.as_deref(), &opts, &progress)?;
    whisker::learner::Observer::finished(&bars, "top losses");
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "report": crate::path_str(&path),
                "split": ev.as_ref().map(|_| a.split.clone()),
                "metrics": ev.as_ref().map(|e| &e.metrics),
            }))?
        );
    } else {
        println!("{}", path.display());
    }
    Ok(0)
}

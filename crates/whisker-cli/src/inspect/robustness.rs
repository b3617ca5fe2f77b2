//! `whisker robustness`: clean and robust accuracy against a range of attack budgets.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;
use whisker::inspect::attack::{Method, Norm};

use super::load_model;

#[derive(clap::Args)]
pub struct RobustnessArgs {
    /// A trained whisker model (run directory or model.safetensors), or a zoo backbone name
    /// (then DATASET's class folders are ImageNet labels or indices).
    model: PathBuf,
    /// The dataset it was trained on (its saved split is used), or any folder per class.
    dataset: PathBuf,
    /// Comma-separated budgets in [0,1] pixel units (fractions like 4/255 accepted).
    #[arg(long, default_value = "0,1/255,2/255,4/255,8/255", value_parser = crate::args::epsilons)]
    eps: std::vec::Vec<f64>,
    /// Attack used at every budget.
    #[arg(long, default_value = "pgd", value_parser = ["fgsm", "bim", "pgd"])]
    method: String,
    /// Norm of the budgets.
    #[arg(long, default_value = "linf", value_parser = ["linf", "l2"])]
    norm: String,
    /// Attack iterations per image and budget.
    #[arg(long, default_value_t = 10, value_parser = crate::args::whole(1, whisker::inspect::attack::MAX_STEPS))]
    steps: usize,
    /// At most this many images of the split.
    #[arg(long, value_parser = crate::args::whole(1, 1_000_000_000))]
    limit: Option<usize>,
    /// Which images of a trained model's run: its test or validation split, or all.
    #[arg(long, default_value = "test", value_parser = ["test", "val", "all"])]
    split: String,
    /// Plot of accuracy against epsilon (default: RUN_DIR/robustness.png).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Replace the plot if it exists (otherwise an existing file is an error, before any
    /// attack runs).
    #[arg(long)]
    force: bool,
}

pub fn robustness_cmd(a: RobustnessArgs, quiet: bool) -> Result<i32> {
    use whisker::inspect::robustness::{robustness, RobustnessAttack};
    if a.norm != "l2" {
        for &e in &a.eps {
            crate::args::check_linf(e)?;
        }
    }
    let run_dir = if a.model.is_dir() {
        a.model.clone()
    } else {
        a.model.parent().map(PathBuf::from).unwrap_or_default()
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_dir.join("robustness.png"));
    if out.exists() && !a.force {
        bail!(
            "{}: already exists (an earlier robustness run?): pass --force to replace it, or --out for another file",
            out.display()
        );
    }
    let device = whisker::default_device().autodiff();
    // MODEL: a trained whisker model, or a zoo backbone name (then the dataset's class
    // folders must be ImageNet labels or indices, and the whole dataset is used)
    let zoo = !a.model.exists() && whisker::backbones::spec(&a.model.to_string_lossy()).is_ok();
    let subject = if zoo {
        load_model(None, &a.model.to_string_lossy(), None, &device)?
    } else {
        load_model(Some(&a.model), "", None, &device)?
    };
    let ds = whisker::data::datasets::Dataset::open(
        &a.dataset,
        None,
        whisker::data::datasets::Labels::Breed,
    )?;
    let class_map: Vec<usize> = if zoo {
        ds.classes
            .iter()
            .map(|c| subject.class_index(c))
            .collect::<whisker::Result<_>>()?
    } else {
        whisker::learner::check_classes(&ds.classes, subject.labels())?;
        (0..ds.classes.len()).collect()
    };
    let idx: Vec<usize> = if a.split != "all" && !zoo {
        let split: whisker::run::SplitFile = whisker::run::read_json(&run_dir.join("split.json"))?;
        split.indices(&ds, a.split.parse()?)
    } else {
        (0..ds.items.len()).collect()
    };
    let mut items: Vec<(PathBuf, usize)> = idx
        .iter()
        .map(|&i| (ds.items[i].path.clone(), class_map[ds.items[i].label]))
        .collect();
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    let data: Vec<(image::RgbImage, usize)> = items
        .iter()
        .filter_map(|(p, l)| whisker::data::decode_file(p).ok().map(|i| (i, *l)))
        .collect();
    if data.is_empty() {
        bail!(
            "no image of the {} split of {} could be read: nothing to evaluate",
            a.split,
            a.dataset.display()
        );
    }
    let eps: Vec<f64> = a.eps.clone();
    let method: Method = a.method.parse()?;
    let norm: Norm = a.norm.parse()?;
    let pb = crate::progress::bar((eps.len() * data.len()) as u64, "attacks", quiet);
    let t = std::time::Instant::now();
    let settings = RobustnessAttack {
        method,
        norm,
        steps: a.steps,
        seed: a.seed,
    };
    let r = robustness(&subject, &data, &eps, settings, &|d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let points: Vec<(f64, f64)> = r
        .rows
        .iter()
        .map(|row| (row.eps, row.robust_accuracy))
        .collect();
    whisker::report::robustness_plot(
        &points,
        &format!("robust accuracy, {} {} ({} images)", a.method, a.norm, r.n),
        &out,
    )?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["seconds"] = json!(t.elapsed().as_secs_f64());
        v["plot"] = json!(crate::path_str(&out));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} images, clean accuracy {:.2}%",
            r.n,
            r.clean_accuracy * 100.0
        );
        println!(
            "{:>10} {:>10} {:>14} {:>10} {:>8}",
            "eps", "robust acc", "attack success", "mean L∞", "mean L2"
        );
        for row in &r.rows {
            println!(
                "{:>10} {:>9.2}% {:>13.2}% {:>10.4} {:>8.3}",
                format!("{:.0}/255", row.eps * 255.0),
                row.robust_accuracy * 100.0,
                row.attack_success_rate * 100.0,
                row.mean_linf,
                row.mean_l2
            );
        }
        println!("plot: {}", out.display());
    }
    Ok(0)
}

//! `whisker eval`: a trained model on a part of the split saved with its run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;
use whisker::learner::{evaluate_model, Subset};
use whisker::model::Model;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A run directory (or its model.safetensors).
    model: PathBuf,
    #[command(flatten)]
    data: crate::train::DataArgs,
    /// Which images: the run's test or validation split, or all of the dataset.
    #[arg(long, default_value = "test", value_parser = ["test", "val", "all"])]
    split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::args::whole(1, crate::args::MAX_BATCH))]
    batch_size: usize,
    /// Where to write confusion.png, top_losses.png and report.html (default: RUN_DIR/eval-SPLIT).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How many of the most confidently wrong images to show.
    #[arg(long, default_value_t = 12, value_parser = crate::args::whole(0, 1000))]
    top_losses: usize,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn eval(a: EvalArgs, quiet: bool) -> Result<i32> {
    let model = Model::load(&a.model, &whisker::default_device())?.for_inference();
    let ds = a.data.open()?;
    let run_dir = whisker::run::model_file(&a.model)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let subset = match a.split.as_str() {
        "all" => Subset::All,
        p => Subset::Part(p.parse()?),
    };
    let pb = crate::progress::bar(0, "evaluate", quiet);
    let ev = evaluate_model(&model, &run_dir, &ds, subset, a.batch_size, &|d, n| {
        pb.set_length(n as u64);
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let m = &ev.metrics;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_dir.join(format!("eval-{}", a.split)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    whisker::report::confusion_matrix(m, &out.join("confusion.png"))?;
    let pre = model.preprocess();
    let losses = ev.top_losses(&ds, a.top_losses);
    let imgs: Vec<(image::RgbImage, Vec<String>)> = losses
        .iter()
        .filter_map(|t| {
            let item = &ds.items[t.item];
            let img = pre.load(&item.path).ok()?;
            let name = item
                .path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            Some((
                img,
                vec![
                    format!("{name}  loss {:.2}", t.loss),
                    format!("true: {}", ds.classes[item.label]),
                    format!(
                        "pred: {} ({})",
                        ds.classes[t.predicted],
                        whisker::report::probability_text(t.probability as f32)
                    ),
                ],
            ))
        })
        .collect();
    let sheet = out.join("top_losses.png");
    if !imgs.is_empty() {
        let tiles: Vec<whisker::report::Tile<'_>> = imgs
            .iter()
            .map(|(i, l)| whisker::report::Tile {
                image: i,
                lines: l.clone(),
            })
            .collect();
        whisker::report::contact_sheet(
            &tiles,
            "top losses: the most confidently wrong predictions",
            200,
            &sheet,
        )?;
    }
    let confused = m.most_confused(10);
    let page = whisker::learner::report::write_report(
        &run_dir,
        None,
        Some(whisker::learner::report::Evaluated {
            part: a.split.clone(),
            ev: &ev,
            ds: &ds,
        }),
        Some(&out.join("report.html")),
        &whisker::learner::report::ReportOptions {
            top_losses: a.top_losses,
            cam: true,
            batch_size: a.batch_size,
        },
        &|_, _, _| {},
    )?;
    if a.json {
        let mut v = serde_json::to_value(m)?;
        v["skipped"] = json!(ev.skipped);
        v["split"] = json!(a.split);
        v["most_confused"] = json!(confused
            .iter()
            .map(|c| json!({"true": c.0, "predicted": c.1, "count": c.2}))
            .collect::<Vec<_>>());
        v["pictures"] = json!(crate::path_str(&out));
        v["report"] = json!(crate::path_str(&page));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} images ({} split), {} skipped\naccuracy {:.2}%  mean per-class {:.2}%  top-3 {:.2}%  top-5 {:.2}%\n",
            m.n,
            a.split,
            ev.skipped,
            m.accuracy * 100.0,
            m.mean_per_class_accuracy * 100.0,
            m.top3 * 100.0,
            m.top5 * 100.0
        );
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>8}",
            "class", "precision", "recall", "f1", "support"
        );
        for c in &m.per_class {
            println!(
                "{:<24} {:>9.3} {:>9.3} {:>9.3} {:>8}",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        println!("\n{}", m.confusion_text());
        if !confused.is_empty() {
            println!("most confused (true → predicted, count):");
            for (t, p, n) in &confused {
                println!("  {t} → {p}: {n}");
            }
        }
        println!(
            "pictures: {}{}\nreport: {}",
            out.join("confusion.png").display(),
            if imgs.is_empty() {
                String::new()
            } else {
                format!(", {}", sheet.display())
            },
            page.display()
        );
    }
    Ok(0)
}

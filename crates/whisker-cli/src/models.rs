//! `whisker models`

use anyhow::Result;
use whisker::cache::Cache;

#[derive(clap::Args)]
pub struct Args {
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cache = Cache::default();
    let mut rows = Vec::new();
    for m in whisker::models() {
        let cached = cache.get(m.name)?;
        rows.push(serde_json::json!({
            "name": m.name,
            "params": m.params,
            "input_size": m.input_size,
            "resize": m.resize,
            "normalization": m.norm.describe(),
            "interpolation": m.interpolation.name(),
            "feature_dim": m.feature_dim,
            "weights_source": m.weights.describe(),
            "cached": cached.as_ref().map(|c| c.file.display().to_string()),
        }));
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "models": rows }))?
        );
        return Ok(());
    }
    // the name column as wide as the longest name (timm's names are long)
    let w = whisker::models()
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(20);
    println!(
        "{:<w$} {:>8} {:>6} {:>9} {:<27} {:>6}  weights",
        "name", "params", "input", "features", "preprocessing", "cached"
    );
    for m in whisker::models() {
        let cached = cache.get(m.name)?.is_some();
        println!(
            "{:<w$} {:>7.1}M {:>6} {:>9} {:<27} {:>6}  {}",
            m.name,
            m.params as f64 / 1e6,
            m.input_size,
            m.feature_dim,
            format!(
                "{}→{} {} {}",
                m.resize,
                m.input_size,
                m.interpolation.name(),
                short(m.norm)
            ),
            if cached { "yes" } else { "no" },
            m.weights.describe()
        );
    }
    Ok(())
}

fn short(n: whisker::data::Normalization) -> &'static str {
    match n {
        whisker::data::Normalization::ImageNet => "imagenet",
        whisker::data::Normalization::Tf => "tf",
        whisker::data::Normalization::Inception => "inception",
    }
}

#[derive(clap::Args)]
pub struct ClassesArgs {
    /// Only the classes whose name contains this (case-insensitive).
    pattern: Option<String>,
    /// A trained model (run directory or model.safetensors): its classes instead of
    /// ImageNet's.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// `whisker classes [PATTERN]`: the class names, with the indices `--target`, `--class` and
/// the outputs use. Example: `whisker classes cat`.
pub fn classes(a: ClassesArgs) -> Result<()> {
    let labels: Vec<String> = match &a.model {
        Some(m) => {
            whisker::train::model_file::TrainedModel::load(&whisker::run::model_file(m))?
                .meta
                .classes
        }
        None => whisker::backbones::imagenet_classes()
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let want = a.pattern.as_deref().map(str::to_lowercase);
    let hits: Vec<(usize, &String)> = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| want.as_ref().is_none_or(|w| l.to_lowercase().contains(w)))
        .collect();
    if hits.is_empty() {
        anyhow::bail!("no class name contains `{}`", a.pattern.unwrap_or_default());
    }
    if a.json {
        let v: Vec<serde_json::Value> = hits
            .iter()
            .map(|(i, l)| serde_json::json!({"index": i, "label": l}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (i, l) in hits {
            println!("{i:>4}  {l}");
        }
    }
    Ok(())
}

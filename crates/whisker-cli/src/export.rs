//! `whisker export`: a trained run or a zoo backbone as one ONNX model, or as a PyTorch
//! state dict with the Python that rebuilds it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use whisker::model::Model;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A trained run (its folder or model.safetensors), or a zoo backbone's name (see
    /// `whisker models`).
    source: String,
    /// The file to write (torch: `.safetensors`, or `.pth` / `.pt`).
    #[arg(long, short)]
    out: PathBuf,
    /// What to write: onnx (one self-contained graph: normalisation, backbone and head;
    /// input `pixels` N×3×H×W in [0, 1], outputs `logits` and `features`); torch (a state
    /// dict under torchvision's or timm's key names, the run's head in the classifier's
    /// place; the Python that rebuilds it is printed).
    #[arg(long, default_value = "onnx", value_parser = ["onnx", "torch"])]
    format: String,
    /// The backbone's weights file, when SOURCE is a backbone (default: the cache).
    #[arg(long, short)]
    weights: Option<PathBuf>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

pub fn export(a: ExportArgs, quiet: bool) -> Result<i32> {
    let torch = a.format == "torch";
    if torch {
        // (a wrong file name is refused before the weights are loaded)
        whisker::export::torch::TorchFormat::of(&a.out)?;
    }
    let device = whisker::default_device();
    let path = PathBuf::from(&a.source);
    let model = if path.exists() {
        if a.weights.is_some() {
            bail!(
                "--weights is for a zoo backbone; {} is a run (its weights are in it)",
                a.source
            );
        }
        Model::load(&path, &device)?
    } else {
        if whisker::backbones::spec(&a.source).is_err() {
            bail!(
                "{}: neither a run (no such file or folder) nor a backbone of the zoo (see `whisker models`)",
                a.source
            );
        }
        Model::extractor(&a.source, a.weights.as_deref(), &device)
            .with_context(|| format!("loading {} weights", a.source))?
    };
    // the ONNX graph folds BatchNorm; a state dict keeps every layer as loaded
    let model = if torch { model } else { model.for_inference() };
    let spinner = crate::progress::spinner(
        &format!("exporting {} to {}", a.source, a.out.display()),
        quiet,
    );
    let done = if torch {
        whisker::export::torch(&model, &a.out)
    } else {
        whisker::export::onnx(&model, &a.out)
    };
    spinner.finish_and_clear();
    let done = done.with_context(|| format!("exporting {} to {}", a.source, a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if let (Some(py), Some(m)) = (&done.python, &done.pytorch_model) {
        println!(
            "{} → {} ({:.1} MB, a PyTorch state dict ({}) for {m}): output {}; rebuild it in Python:\n",
            done.backbone,
            done.path,
            done.bytes as f64 / 1e6,
            done.format,
            done.outputs.join(", ")
        );
        print!("{py}");
    } else {
        println!(
            "{} → {} ({:.1} MB, ONNX opset {}): input pixels N×{}×{}×{} in [0, 1]; outputs {}",
            done.backbone,
            done.path,
            done.bytes as f64 / 1e6,
            done.opset.unwrap_or_default(),
            done.input[0],
            done.input[1],
            done.input[2],
            done.outputs.join(", ")
        );
    }
    Ok(0)
}

//! `whisker export`: a zoo backbone or a trained run as one self-contained ONNX model — the
//! backbone (fine-tuned weights when the run fine-tuned it), the head and the input
//! normalisation inside — made from the same description the CPU engine is compiled from
//! ([`crate::backbones::plan::graph`]); or as a PyTorch state dict under torchvision's or
//! timm's key names with the Python that rebuilds it ([`torch`]).

pub mod onnx;
mod proto;
pub mod torch;

use std::path::Path;

use crate::backbones::plan::Plan;
use crate::error::Result;
use crate::model::Model;
use crate::train::model_file::Head;

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exported {
    pub path: String,
    pub format: &'static str,
    pub bytes: u64,
    pub backbone: String,
    pub input: [usize; 3],
    /// The outputs, in order (`logits` absent for a headless backbone on its own).
    pub outputs: Vec<String>,
    pub classes: usize,
    pub feature_dim: usize,
    /// The ONNX opset (ONNX only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opset: Option<i64>,
    /// The library and model that rebuild it (PyTorch only): `torchvision.models.resnet18`,
    /// `timm:tf_efficientnet_lite0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pytorch_model: Option<String>,
    /// The Python that rebuilds the model and classifies a photo (PyTorch only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
}

/// The ONNX model of `model`: input `pixels` `[N, 3, crop, crop]`, RGB in [0, 1] (what
/// `whisker` feeds its own network after resizing and cropping), outputs `logits` (the
/// run's head, or the backbone's ImageNet classifier) and `features`; the classes and the
/// preprocessing in the metadata properties (`whisker.*`).
pub fn onnx_bytes(model: &Model) -> Result<Vec<u8>> {
    Ok(build(model)?.0)
}

/// The ONNX bytes, and whether the model has logits.
fn build(model: &Model) -> Result<(Vec<u8>, bool)> {
    let b = model.backbone();
    let graph = Plan::graph(&b.net, b.spec.norm)?;
    let head = model.trained().map(|t| match &t.head {
        Head::Linear(h) => onnx::HeadLayers {
            mean: &h.mean,
            std: &h.std,
            layers: vec![(&h.w[..], &h.b[..], h.dim, h.classes)],
        },
        Head::Mlp(h) => onnx::HeadLayers {
            mean: &h.mean,
            std: &h.std,
            layers: vec![
                (&h.w1[..], &h.b1[..], h.dim, h.hidden),
                (&h.w2[..], &h.b2[..], h.hidden, h.classes),
            ],
        },
    });
    let pre = model.preprocess();
    let preprocessing = preprocessing(
        &pre,
        "RGB in [0, 1], N×3×crop×crop (shorter side resized to `resize`, then the centre crop); the normalisation is inside the model",
        serde_json::json!({ "scale": graph.scale, "mean": graph.mean, "std": graph.std }),
    );
    let mut metadata = vec![
        ("whisker.backbone".to_string(), b.spec.name.to_string()),
        (
            "whisker.weights_sha256".to_string(),
            model.weights_sha256().to_string(),
        ),
        (
            "whisker.preprocessing".to_string(),
            preprocessing.to_string(),
        ),
        (
            "whisker.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ];
    let has_logits = head.is_some() || graph.has_classifier();
    if has_logits {
        metadata.push((
            "whisker.classes".to_string(),
            serde_json::to_string(model.labels()).unwrap_or_default(),
        ));
    }
    if let Some(s) = model.finetuned_sha256() {
        metadata.push(("whisker.finetuned_model_sha256".to_string(), s.to_string()));
    }
    let bytes = onnx::encode(&onnx::OnnxModel {
        graph: &graph,
        size: pre.crop,
        head,
        name: b.spec.name,
        metadata,
    })?;
    Ok((bytes, has_logits))
}

/// The `whisker.preprocessing` metadata: the resize, crop, filter and normalisation of
/// `pre`, what the model's `input` is, and the format's own normalisation fields (`norm`, an
/// object).
fn preprocessing(
    pre: &crate::data::transforms::Preprocess,
    input: &str,
    norm: serde_json::Value,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "resize": pre.resize,
        "crop": pre.crop,
        "interpolation": format!("{:?}", pre.filter).to_lowercase(),
        "normalization": format!("{:?}", pre.norm).to_lowercase(),
        "input": input,
    });
    if let (Some(o), serde_json::Value::Object(n)) = (v.as_object_mut(), norm) {
        o.extend(n);
    }
    v
}

/// Write `model` as ONNX to `out` (atomically: a failed export leaves nothing behind).
pub fn onnx(model: &Model, out: &Path) -> Result<Exported> {
    let (bytes, has_logits) = build(model)?;
    crate::io::write_atomic(out, &bytes)?;
    let b = model.backbone();
    let mut outputs = vec!["features".to_string()];
    if has_logits {
        outputs.insert(0, "logits".to_string());
    }
    let crop = model.preprocess().crop;
    Ok(Exported {
        path: out.display().to_string(),
        format: "onnx",
        bytes: bytes.len() as u64,
        backbone: b.spec.name.to_string(),
        input: [3, crop, crop],
        outputs,
        classes: if has_logits { model.labels().len() } else { 0 },
        feature_dim: b.spec.feature_dim,
        opset: Some(onnx::OPSET),
        pytorch_model: None,
        python: None,
    })
}

/// Write `model` as a PyTorch state dict to `out` (`.safetensors`, or `.pth` / `.pt`),
/// atomically; the rebuild code names the file as `out` does. `model` as loaded (not
/// [`Model::for_inference`]: its BatchNorm layers are kept).
pub fn torch(model: &Model, out: &Path) -> Result<Exported> {
    let format = torch::TorchFormat::of(out)?;
    let file = out.display().to_string();
    let m = torch::torch_model(model, &file, format)?;
    let bytes = match format {
        torch::TorchFormat::Safetensors => torch::safetensors_bytes(&m)?,
        torch::TorchFormat::Pth => torch::pth_bytes(&m)?,
    };
    crate::io::write_atomic(out, &bytes)?;
    let b = model.backbone();
    let crop = model.preprocess().crop;
    Ok(Exported {
        path: file,
        format: match format {
            torch::TorchFormat::Safetensors => "safetensors",
            torch::TorchFormat::Pth => "pth",
        },
        bytes: bytes.len() as u64,
        backbone: b.spec.name.to_string(),
        input: [3, crop, crop],
        outputs: vec![m.output.to_string()],
        classes: m.classes,
        feature_dim: b.spec.feature_dim,
        opset: None,
        pytorch_model: Some(match m.pytorch.library {
            crate::backbones::Library::Torchvision => {
                format!("torchvision.models.{}", m.pytorch.constructor)
            }
            crate::backbones::Library::Timm => format!("timm:{}", m.pytorch.constructor),
        }),
        python: Some(m.python),
    })
}

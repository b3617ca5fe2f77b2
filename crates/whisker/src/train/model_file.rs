//! The trained-model file: one safetensors file holding the head's tensors and, in its
//! metadata, everything `whisker predict` needs on another machine: backbone name and the
//! sha256 of its weights, preprocessing, class names, training settings and metrics.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::head::MlpHead;
use super::probe::LinearHead;
use crate::error::{Error, Result};

/// Metadata of a trained model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub backbone: String,
    pub weights_sha256: String,
    pub resize: usize,
    pub crop: usize,
    pub normalization: String,
    /// The resize's filter; files written before it was recorded used bilinear, the only
    /// one then.
    #[serde(default)]
    pub interpolation: crate::data::resize::Filter,
    pub classes: Vec<String>,
    pub head: String,
    pub settings: serde_json::Value,
    pub metrics: serde_json::Value,
}

/// The newest model-file version this build writes and reads.
pub const MODEL_VERSION: u32 = 2;

impl ModelMeta {
    /// The metadata is one this build can honour: its format and version, a known head kind
    /// and backbone, the backbone's own preprocessing (whisker applies the backbone's; a file
    /// that says otherwise was not written by whisker), a class list. The backbone's spec.
    pub fn check(&self) -> std::result::Result<&'static crate::backbones::ModelSpec, String> {
        if self.format != "whisker-model" {
            return Err(format!(
                "its format is `{}`, not `whisker-model`",
                self.format
            ));
        }
        if self.version == 0 || self.version > MODEL_VERSION {
            return Err(format!(
                "model file version {} (this build reads 1 to {MODEL_VERSION}: a newer whisker wrote it?)",
                self.version
            ));
        }
        if !["linear", "mlp", "finetune"].contains(&self.head.as_str()) {
            return Err(format!(
                "unknown head kind `{}` (linear, mlp or finetune)",
                self.head
            ));
        }
        let spec = crate::backbones::spec(&self.backbone).map_err(|e| e.to_string())?;
        let pre = spec.preprocess();
        if (
            self.resize,
            self.crop,
            self.normalization.as_str(),
            self.interpolation,
        ) != (pre.resize, pre.crop, pre.norm.describe(), pre.filter)
        {
            return Err(format!(
                "its preprocessing (resize {} {}, crop {}, {}) is not {}'s (resize {} {}, crop {}, {})",
                self.resize,
                self.interpolation.name(),
                self.crop,
                self.normalization,
                spec.name,
                pre.resize,
                pre.filter.name(),
                pre.crop,
                pre.norm.describe()
            ));
        }
        if self.weights_sha256.len() != 64
            || !self.weights_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("its weights sha256 is not 64 hexadecimal digits".into());
        }
        if self.classes.is_empty() {
            return Err("it has no classes".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(c) = self.classes.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(format!("class `{c}` is listed twice"));
        }
        Ok(spec)
    }
}

/// The classifier on top of the backbone's features.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    Linear(LinearHead),
    Mlp(MlpHead),
}

impl Head {
    /// Logits `[n, classes]` of `[n, dim]` features.
    pub fn logits(&self, x: &[f32], device: &burn::tensor::Device) -> Result<Vec<f32>> {
        match self {
            Head::Linear(h) => h.logits(x, device),
            Head::Mlp(h) => h.logits(x, device),
        }
    }
    /// Logits of a `[n, dim]` feature tensor, differentiably (for attacks and dreams on a
    /// trained model).
    pub fn logits_tensor(&self, f: burn::tensor::Tensor<2>) -> burn::tensor::Tensor<2> {
        match self {
            Head::Linear(h) => h.logits_tensor(f),
            Head::Mlp(h) => h.logits_tensor(f),
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Head::Linear(h) => h.classes,
            Head::Mlp(h) => h.classes,
        }
    }
}

/// A trained classifier: a backbone (named, by the sha256 of its pretrained weights; for a
/// fine-tuned model its trained weights are in the file) and a head.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    pub meta: ModelMeta,
    pub head: Head,
    /// The fine-tuned backbone (checkpoint key names), stored as `backbone.<key>`.
    pub backbone_weights: Option<crate::weights::StateDict>,
}

impl PartialEq for TrainedModel {
    fn eq(&self, o: &Self) -> bool {
        self.meta == o.meta
            && self.head == o.head
            && self.backbone_weights.as_ref().map(|s| &s.tensors)
                == o.backbone_weights.as_ref().map(|s| &s.tensors)
    }
}

use crate::weights::f32_to_le as f32_bytes;

impl TrainedModel {
    /// Write atomically as safetensors (with a content checksum). A model holding NaN or
    /// infinity is refused: it would predict nothing.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(&str, Vec<u8>, Vec<usize>)> = match &self.head {
            Head::Linear(h) => vec![
                ("head.weight", f32_bytes(&h.w), vec![h.dim, h.classes]),
                ("head.bias", f32_bytes(&h.b), vec![h.classes]),
                ("input.mean", f32_bytes(&h.mean), vec![h.dim]),
                ("input.std", f32_bytes(&h.std), vec![h.dim]),
            ],
            Head::Mlp(h) => vec![
                ("head.fc1.weight", f32_bytes(&h.w1), vec![h.dim, h.hidden]),
                ("head.fc1.bias", f32_bytes(&h.b1), vec![h.hidden]),
                (
                    "head.fc2.weight",
                    f32_bytes(&h.w2),
                    vec![h.hidden, h.classes],
                ),
                ("head.fc2.bias", f32_bytes(&h.b2), vec![h.classes]),
                ("input.mean", f32_bytes(&h.mean), vec![h.dim]),
                ("input.std", f32_bytes(&h.std), vec![h.dim]),
            ],
        };
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .into_iter()
            .map(|(k, b, s)| (k.to_string(), b, s))
            .collect();
        if let Some(sd) = &self.backbone_weights {
            for (k, t) in &sd.tensors {
                tensors.push((format!("backbone.{k}"), f32_bytes(&t.data), t.shape.clone()));
            }
        }
        for (k, b, _) in &tensors {
            if let Some(reason) =
                crate::weights::non_finite_tensor(k, &crate::weights::f32_from_le(b))
            {
                return Err(Error::NonFinite(format!(
                    "{}: not written (training diverged): {reason}",
                    path.display()
                )));
            }
        }
        let mut md = HashMap::new();
        md.insert(
            "whisker".to_string(),
            serde_json::to_string(&self.meta).map_err(|e| Error::Internal(e.to_string()))?,
        );
        let bytes = crate::weights::serialize_f32(&tensors, Some(md))?;
        crate::io::write_atomic(path, &bytes)
    }

    /// Read a model file written by [`TrainedModel::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::io::read_regular(path, crate::io::MAX_WEIGHTS_FILE)?;
        let bad = |reason: String| Error::NotACheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a whisker model file: {e}")))?;
        let meta_json = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get("whisker"))
            .ok_or_else(|| {
                bad("a safetensors file, but not a whisker model (no `whisker` metadata)".into())
            })?;
        let meta: ModelMeta = serde_json::from_str(meta_json)
            .map_err(|e| bad(format!("invalid whisker metadata: {e}")))?;
        let spec = meta.check().map_err(bad)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let checked = crate::weights::verify_checksum(path, &st, &bytes)?;
        if !checked && meta.version >= 2 {
            return Err(bad(
                "its content checksum is missing: the file is damaged".into()
            ));
        }
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}; whisker model files hold f32",
                    view.dtype()
                )));
            }
            let v = crate::weights::f32_from_le(view.data());
            if let Some(reason) = crate::weights::non_finite_tensor(&name, &v) {
                return Err(bad(reason));
            }
        }
        let get = |k: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(k)
                .map_err(|_| bad(format!("missing tensor `{k}`")))?;
            Ok(crate::weights::f32_from_le(t.data()))
        };
        let mean = get("input.mean")?;
        let std = get("input.std")?;
        let dim = mean.len();
        if dim != spec.feature_dim {
            return Err(bad(format!(
                "its head takes {dim} features, but {} gives {}",
                spec.name, spec.feature_dim
            )));
        }
        // a feature's scale divides it: 0 gives infinities, and NaN probabilities after them
        if let Some(i) = std
            .iter()
            .position(|v| v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return Err(bad(format!(
                "input.std[{i}] is {}: a feature scale must be above 0",
                std[i]
            )));
        }
        let inconsistent =
            || bad("tensor shapes do not agree with each other or with the class list".into());
        let head = if meta.head == "mlp" {
            let (w1, b1) = (get("head.fc1.weight")?, get("head.fc1.bias")?);
            let (w2, b2) = (get("head.fc2.weight")?, get("head.fc2.bias")?);
            let (hidden, classes) = (b1.len(), b2.len());
            if w1.len() != dim * hidden
                || w2.len() != hidden * classes
                || std.len() != dim
                || classes != meta.classes.len()
            {
                return Err(inconsistent());
            }
            Head::Mlp(MlpHead {
                dim,
                hidden,
                classes,
                mean,
                std,
                w1,
                b1,
                w2,
                b2,
            })
        } else {
            let (w, b) = (get("head.weight")?, get("head.bias")?);
            let classes = b.len();
            if w.len() != dim * classes || std.len() != dim || classes != meta.classes.len() {
                return Err(inconsistent());
            }
            Head::Linear(LinearHead {
                dim,
                classes,
                mean,
                std,
                w,
                b,
            })
        };
        let backbone_weights = if meta.head == "finetune" {
            let mut sd = crate::weights::StateDict {
                source: path.display().to_string(),
                tensors: Default::default(),
            };
            for (name, view) in st.tensors() {
                if let Some(k) = name.strip_prefix("backbone.") {
                    let data = crate::weights::f32_from_le(view.data());
                    sd.tensors.insert(
                        k.to_string(),
                        crate::weights::RawTensor {
                            shape: view.shape().to_vec(),
                            data,
                        },
                    );
                }
            }
            Some(sd)
        } else {
            None
        };
        Ok(TrainedModel {
            meta,
            head,
            backbone_weights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_json() -> serde_json::Value {
        serde_json::json!({
            "format": "whisker-model", "version": 2, "backbone": "resnet18",
            "weights_sha256": "ab".repeat(32), "resize": 256, "crop": 224,
            "normalization": "ImageNet mean/std", "classes": ["cat", "dog"],
            "head": "linear", "settings": {}, "metrics": {}
        })
    }

    /// The resize filter is part of the preprocessing a model file must agree on: files
    /// written before it was recorded read as bilinear (all of them were), a file naming
    /// another filter than its backbone's is refused with both named.
    #[test]
    fn the_resize_filter_is_checked_and_defaults_to_bilinear() {
        let old: ModelMeta = serde_json::from_value(meta_json()).unwrap();
        assert_eq!(old.interpolation, crate::data::resize::Filter::Bilinear);
        assert_eq!(old.check().unwrap().name, "resnet18");
        let mut j = meta_json();
        j["interpolation"] = "bicubic".into();
        let other: ModelMeta = serde_json::from_value(j).unwrap();
        let e = other.check().unwrap_err();
        assert!(
            e.contains("resize 256 bicubic") && e.contains("resize 256 bilinear"),
            "{e}"
        );
        let mut j = meta_json();
        j["interpolation"] = "lanczos".into();
        assert!(serde_json::from_value::<ModelMeta>(j).is_err());
    }
}
